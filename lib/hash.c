#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "hash.h"
#include "util.h"

/* The file is hashed straight from a read-only mapping, a chunk at a time.
 * Chunks that were not in the page cache before we touched them are dropped
 * again afterwards, so a re-check of a large backup neither evicts the
 * host's working set nor leaves the backup occupying memory. */
#define CHUNK (8u << 20)

int kb_hash_file(const char *path, char ret_hex[KB_HASH_HEX_LEN + 1], uint64_t *ret_bytes)
{
  CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  XXH3_state_t *st;
  XXH128_hash_t h;
  XXH128_canonical_t c;
  struct stat sb;
  unsigned char *map = NULL, *vec = NULL;
  long page = sysconf(_SC_PAGESIZE);
  uint64_t off;
  int r = 0, i;

  if (fd < 0)
    return -errno;
  if (fstat(fd, &sb) < 0)
    return -errno;
  if (!S_ISREG(sb.st_mode))
    return -EINVAL;
  st = XXH3_createState();
  if (!st)
    return -ENOMEM;
  XXH3_128bits_reset(st);
  if (sb.st_size > 0) {
    map = mmap(NULL, sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      r = -errno;
      goto out;
    }
    (void) madvise(map, sb.st_size, MADV_SEQUENTIAL);
    vec = malloc(CHUNK / page + 1);
    if (!vec) {
      r = -ENOMEM;
      goto out;
    }
  }
  for (off = 0; off < (uint64_t) sb.st_size; off += CHUNK) {
    size_t len = (uint64_t) sb.st_size - off < CHUNK ? (size_t) (sb.st_size - off) : CHUNK;
    size_t pages = (len + page - 1) / page, p;
    bool was_cached = true;

    if (mincore(map + off, len, vec) == 0) {
      for (p = 0; p < pages; p++)
        if (!(vec[p] & 1)) {
          was_cached = false;
          break;
        }
    } else
      was_cached = false;
    XXH3_128bits_update(st, map + off, len);
    if (!was_cached) {
      (void) madvise(map + off, len, MADV_DONTNEED);
      (void) posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED);
    }
  }
  h = XXH3_128bits_digest(st);
  XXH128_canonicalFromHash(&c, h);
  for (i = 0; i < 16; i++)
    sprintf(ret_hex + 2 * i, "%02x", c.digest[i]);
  if (ret_bytes)
    *ret_bytes = sb.st_size;
out:
  if (map && map != MAP_FAILED)
    munmap(map, sb.st_size);
  free(vec);
  XXH3_freeState(st);
  return r;
}
