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

/* The file is read a chunk at a time with read() (faulting in a mapping
 * page by page was 3-4 times slower than xxhsum on a cached file). Chunks
 * that were not in the page cache before we read them (mincore() on a
 * mapping that is never touched) are dropped again afterwards, so a
 * re-check of a large backup neither evicts the host's working set nor
 * leaves the backup occupying memory. */
#define CHUNK (1u << 20)

static bool have_avx2(void)
{
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  static int known = -1;
  if (known < 0) {
    __builtin_cpu_init();
    known = __builtin_cpu_supports("avx2") && kb_hash_avx2_built();
  }
  return known > 0;
#else
  return false;
#endif
}

int kb_hash_file(const char *path, char ret_hex[KB_HASH_HEX_LEN + 1], uint64_t *ret_bytes)
{
  CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  XXH3_state_t *st;
  XXH128_hash_t h;
  XXH128_canonical_t c;
  struct stat sb;
  unsigned char *map = NULL, *vec = NULL, *buf = NULL;
  long page = sysconf(_SC_PAGESIZE);
  uint64_t off = 0;
  int r = 0, i;
  bool avx2 = have_avx2();

  if (fd < 0)
    return -errno;
  if (fstat(fd, &sb) < 0)
    return -errno;
  if (!S_ISREG(sb.st_mode))
    return -EINVAL;
  st = XXH3_createState();
  buf = aligned_alloc((size_t) page, CHUNK);
  vec = malloc(CHUNK / page + 1);
  if (!st || !buf || !vec) {
    r = -ENOMEM;
    goto out;
  }
  XXH3_128bits_reset(st);
  (void) posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  if (sb.st_size > 0) {
    /* Only for mincore(): never read through. */
    map = mmap(NULL, sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
      map = NULL;
  }
  for (;;) {
    size_t want = CHUNK, got = 0;
    bool was_cached = false;

    if (map && off < (uint64_t) sb.st_size) {
      size_t len = (uint64_t) sb.st_size - off < CHUNK ? (size_t) (sb.st_size - off) : CHUNK;
      size_t pages = (len + page - 1) / page, p;
      if (mincore(map + off, len, vec) == 0) {
        was_cached = true;
        for (p = 0; p < pages; p++)
          if (!(vec[p] & 1)) {
            was_cached = false;
            break;
          }
      }
    }
    while (got < want) {
      ssize_t n = read(fd, buf + got, want - got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0) {
        r = -errno;
        goto out;
      }
      if (n == 0)
        break;
      got += (size_t) n;
    }
    if (got == 0)
      break;
    if (avx2)
      (void) kb_hash_update_avx2(st, buf, got);
    else
      XXH3_128bits_update(st, buf, got);
    if (!was_cached)
      (void) posix_fadvise(fd, (off_t) off, (off_t) got, POSIX_FADV_DONTNEED);
    off += got;
    if (got < want)
      break;
  }
  h = XXH3_128bits_digest(st);
  XXH128_canonicalFromHash(&c, h);
  for (i = 0; i < 16; i++)
    sprintf(ret_hex + 2 * i, "%02x", c.digest[i]);
  if (ret_bytes)
    *ret_bytes = off;
out:
  if (map)
    munmap(map, sb.st_size);
  free(vec);
  free(buf);
  XXH3_freeState(st);
  return r;
}

struct kb_hash {
  XXH3_state_t *st;
  bool avx2;
};

struct kb_hash *kb_hash_new(void)
{
  struct kb_hash *h = calloc(1, sizeof *h);

  if (!h)
    return NULL;
  h->st = XXH3_createState();
  if (!h->st) {
    free(h);
    return NULL;
  }
  h->avx2 = have_avx2();
  XXH3_128bits_reset(h->st);
  return h;
}

void kb_hash_update(struct kb_hash *h, const void *buf, size_t len)
{
  if (h->avx2)
    (void) kb_hash_update_avx2(h->st, buf, len);
  else
    XXH3_128bits_update(h->st, buf, len);
}

void kb_hash_finish(struct kb_hash *h, char ret_hex[KB_HASH_HEX_LEN + 1])
{
  XXH128_canonical_t c;
  int i;

  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(h->st));
  for (i = 0; i < 16; i++)
    sprintf(ret_hex + 2 * i, "%02x", c.digest[i]);
  XXH3_freeState(h->st);
  free(h);
}
