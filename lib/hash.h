/* Hashing of stored backup files (XXH3-128), reading without evicting the
 * host's page cache. */
#ifndef KBOSS_HASH_H
#define KBOSS_HASH_H

#include <stddef.h>
#include <stdint.h>

#define KB_HASH_HEX_LEN 32

/* Hash the whole file at PATH into RET_HEX (33 bytes, lower-case hex, the
 * same digits `xxhsum -H2` prints). RET_BYTES gets the size read. */
int kb_hash_file(const char *path, char ret_hex[KB_HASH_HEX_LEN + 1], uint64_t *ret_bytes);

/* The same hash over bytes handed in pieces, in file order (for a writer
 * hashing what it wrote). kb_hash_new() returns NULL without memory;
 * kb_hash_finish() writes the hex digits and frees the state. */
struct kb_hash;
struct kb_hash *kb_hash_new(void);
void kb_hash_update(struct kb_hash *h, const void *buf, size_t len);
void kb_hash_finish(struct kb_hash *h, char ret_hex[KB_HASH_HEX_LEN + 1]);

/* Internal (hash-avx2.c): XXH3_128bits_update() built for AVX2; call it
 * only when the CPU has AVX2. -ENOTSUP where it is not built. */
#include <stdbool.h>
#include <stddef.h>
bool kb_hash_avx2_built(void);
int kb_hash_update_avx2(void *state, const void *buf, size_t len);

#endif
