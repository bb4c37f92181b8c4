/* libFuzzer target for the qcow2 bitmap directory: the input is one byte
 * choosing the number of bitmaps (1-8) followed by the directory itself.
 * It is placed in an otherwise valid image (bitmaps extension, autoclear
 * bit set) and the image opened: the reader must either list names that
 * are non-empty strings or refuse with a message, never read outside the
 * directory (ASan) or overflow (UBSan).  Built and run by `make fuzz`. */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2-format.h"

#define CS 65536u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static uint8_t hdr[3 * CS];
  struct kb_qcow2 *img = NULL;
  char *err = NULL;
  size_t dir_size;
  uint32_t nb;
  int fd;

  if (size < 1 || size > 1 + 16 * CS)
    return 0;
  nb = 1 + data[0] % 8;
  dir_size = size - 1;
  memset(hdr, 0, sizeof hdr);
  kb_put_be32(hdr, QCOW2_MAGIC);
  kb_put_be32(hdr + 4, 3);
  kb_put_be32(hdr + 20, 16);                 /* cluster_bits */
  kb_put_be64(hdr + 24, 1024 * 1024);        /* virtual size */
  kb_put_be32(hdr + 36, 1);                  /* L1 entries */
  kb_put_be64(hdr + 40, CS);                 /* L1 at cluster 1 */
  kb_put_be64(hdr + 48, 2 * CS);             /* refcount table */
  kb_put_be32(hdr + 56, 1);
  kb_put_be64(hdr + 88, QCOW2_AUTOCLEAR_BITMAPS);
  kb_put_be32(hdr + 96, 4);
  kb_put_be32(hdr + 100, 112);
  kb_put_be32(hdr + 112, QCOW2_EXT_BITMAPS);
  kb_put_be32(hdr + 116, 24);
  kb_put_be32(hdr + 120, nb);
  kb_put_be64(hdr + 128, dir_size);
  kb_put_be64(hdr + 136, 3 * CS);            /* the directory follows the header clusters */
  fd = memfd_create("fuzz-bitmap-dir", MFD_CLOEXEC);
  if (fd < 0)
    abort();
  if (write(fd, hdr, sizeof hdr) != (ssize_t) sizeof hdr ||
      (dir_size && write(fd, data + 1, dir_size) != (ssize_t) dir_size))
    abort();
  if (kb_qcow2_open_fd(fd, &img, &err) < 0) {
    if (!err || !*err)
      abort();                               /* every refusal says why */
    free(err);
    close(fd);
    return 0;
  }
  close(fd);
  {
    const struct kb_qcow2_info *in = kb_qcow2_get_info(img);
    if (in->nb_bitmaps != nb)
      abort();
    for (size_t b = 0; b < in->nb_bitmaps; b++)
      if (!in->bitmap_names[b] || !in->bitmap_names[b][0])
        abort();
  }
  kb_qcow2_close(img);
  return 0;
}
