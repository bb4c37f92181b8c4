/* A tiny PNG writer for validation screenshots: libvirt hands screenshots
 * over as PPM, operators want PNG. */
#ifndef KBOSS_PNG_H
#define KBOSS_PNG_H

#include <stddef.h>

/* Convert a binary PPM (P6, maxval 1-255) to an 8-bit RGB PNG. Returns 0
 * with a malloc'd *RET_PNG of *RET_LEN bytes and the image size, -EINVAL
 * for input that is not such a PPM, -ENOMEM. */
int kb_png_from_ppm(const unsigned char *ppm, size_t len, unsigned char **ret_png, size_t *ret_len,
                    unsigned *ret_width, unsigned *ret_height);

/* Width and height from a PNG's IHDR; -EINVAL if it is not a PNG. */
int kb_png_size(const unsigned char *png, size_t len, unsigned *ret_width, unsigned *ret_height);

#endif
