/* libFuzzer target for the qcow2 reader: the input is an image file; open
 * it, walk the clusters and read (decompress) each.  Any crash, hang,
 * sanitizer report or out-of-bounds access is a bug: the reader must
 * refuse bad input with an error instead.  Built and run by `make fuzz`. */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"

#define MAX_CLUSTERS_WALKED 2048

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct kb_qcow2 *img = NULL;
  char *err = NULL;
  int fd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
  uint64_t i, n;
  uint8_t *buf;

  if (fd < 0)
    abort();
  if (size && write(fd, data, size) != (ssize_t) size)
    abort();
  if (kb_qcow2_open_fd(fd, &img, &err) < 0) {
    if (!err || !*err)
      abort();                  /* every refusal must say why */
    free(err);
    close(fd);
    return 0;
  }
  close(fd);
  const struct kb_qcow2_info *in = kb_qcow2_get_info(img);
  for (size_t b = 0; b < in->nb_bitmaps; b++)
    if (!in->bitmap_names[b] || strlen(in->bitmap_names[b]) == 0)
      abort();
  buf = malloc(in->cluster_size);
  if (!buf)
    abort();
  n = in->nb_clusters < MAX_CLUSTERS_WALKED ? in->nb_clusters : MAX_CLUSTERS_WALKED;
  for (i = 0; i < n; i++) {
    struct kb_qcow2_cluster c;
    if (kb_qcow2_cluster_at(img, i, &c) == 0) {
      if (c.kind == KB_QCOW2_DATA || c.kind == KB_QCOW2_COMPRESSED)
        if (c.host_offset >= in->file_size || c.host_len > in->file_size - c.host_offset)
          abort();              /* bounds promised by the API */
      (void) kb_qcow2_read_cluster(img, i, buf, NULL);
    }
  }
  /* The last cluster too, wherever it is. */
  if (in->nb_clusters > n)
    (void) kb_qcow2_read_cluster(img, in->nb_clusters - 1, buf, NULL);
  free(buf);
  kb_qcow2_close(img);
  return 0;
}
