/* XXH3 built for AVX2, used by hash.c when the CPU has it (the rest of
 * kboss is built for baseline x86-64: SSE2 hashes ~25% slower than
 * `xxhsum -H2`). */
#include <config.h>

#include <errno.h>
#include <stddef.h>

#include "hash.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2")
#include <immintrin.h>
#define XXH_INLINE_ALL
#define XXH_VECTOR 2   /* XXH_AVX2 */
#include <xxhash.h>

bool kb_hash_avx2_built(void)
{
  return true;
}

int kb_hash_update_avx2(void *state, const void *buf, size_t len)
{
  return XXH3_128bits_update(state, buf, len) == XXH_OK ? 0 : -EINVAL;
}
#else
bool kb_hash_avx2_built(void)
{
  return false;
}

int kb_hash_update_avx2(void *state, const void *buf, size_t len)
{
  (void) state;
  (void) buf;
  (void) len;
  return -ENOTSUP;
}
#endif
