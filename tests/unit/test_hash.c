/* kb_hash_file(): the digits `xxhsum -H2` prints (XXH3-128, canonical),
 * whatever the file's size against the read chunk, with or without AVX2. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "hash.h"
#include "util.h"

static void expect(const unsigned char *data, size_t len)
{
  char path[] = "/tmp/kboss-hash-XXXXXX", hex[KB_HASH_HEX_LEN + 1], want[KB_HASH_HEX_LEN + 1];
  int fd = mkstemp(path);
  XXH128_canonical_t c;
  uint64_t bytes = 0;

  cr_assert_geq(fd, 0);
  cr_assert_eq(kb_write_all(fd, data, len), 0);
  close(fd);
  XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
  for (int i = 0; i < 16; i++)
    sprintf(want + 2 * i, "%02x", c.digest[i]);
  cr_assert_eq(kb_hash_file(path, hex, &bytes), 0);
  unlink(path);
  cr_assert_str_eq(hex, want, "size %zu", len);
  cr_assert_eq(bytes, len);
}

Test(hash, sizes_around_the_chunk)
{
  size_t sizes[] = { 0, 1, 240, 241, 4096, (1u << 20) - 1, 1u << 20, (1u << 20) + 17, 3u << 20 };
  unsigned char *data = malloc((3u << 20) + 1);

  cr_assert_not_null(data);
  for (size_t i = 0; i < (3u << 20); i++)
    data[i] = (unsigned char) (i * 2654435761u >> 13);
  for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
    expect(data, sizes[k]);
  free(data);
}

Test(hash, known_value)
{
  /* printf abc | xxhsum -H2 */
  char path[] = "/tmp/kboss-hash-XXXXXX", hex[KB_HASH_HEX_LEN + 1];
  int fd = mkstemp(path);

  cr_assert_eq(kb_write_all(fd, "abc", 3), 0);
  close(fd);
  cr_assert_eq(kb_hash_file(path, hex, NULL), 0);
  unlink(path);
  cr_assert_str_eq(hex, "06b05ab6733a618578af5f94892f3950");
}

Test(hash, refuses_non_files)
{
  char hex[KB_HASH_HEX_LEN + 1];
  cr_assert_eq(kb_hash_file("/tmp", hex, NULL), -EINVAL);
  cr_assert_eq(kb_hash_file("/nonexistent/kboss", hex, NULL), -ENOENT);
}
