/* Header parsing and refusal of corrupt or unsupported qcow2 images,
 * built byte by byte in temporary files. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"
#include "qcow2-format.h"

#define CS 65536u

/* A valid, empty 1 MiB v3 image: header, L1 at cluster 1 (all zero). */
static uint8_t *make_image(size_t *len)
{
  uint8_t *b = calloc(1, 3 * CS);

  kb_put_be32(b, QCOW2_MAGIC);
  kb_put_be32(b + 4, 3);
  kb_put_be32(b + 20, 16);
  kb_put_be64(b + 24, 1024 * 1024);
  kb_put_be32(b + 36, 1);
  kb_put_be64(b + 40, CS);
  kb_put_be64(b + 48, 2 * CS);
  kb_put_be32(b + 56, 1);
  kb_put_be32(b + 96, 4);
  kb_put_be32(b + 100, 112);
  *len = 3 * CS;
  return b;
}

static int open_buf(const uint8_t *b, size_t len, struct kb_qcow2 **img, char **err)
{
  char path[] = "/tmp/kboss-test-qcow2-XXXXXX";
  int fd = mkstemp(path), r;

  cr_assert(fd >= 0);
  unlink(path);
  cr_assert_eq(write(fd, b, len), (ssize_t) len);
  r = kb_qcow2_open_fd(fd, img, err);
  close(fd);
  return r;
}

static void expect_refused(const uint8_t *b, size_t len, int err, const char *words)
{
  struct kb_qcow2 *img = NULL;
  char *msg = NULL;
  int r = open_buf(b, len, &img, &msg);

  cr_assert_eq(r, err, "expected %d, got %d (%s)", err, r, msg ? msg : "");
  cr_assert_null(img);
  cr_assert_not_null(msg);
  cr_assert(strstr(msg, words), "message '%s' lacks '%s'", msg, words);
  free(msg);
}

Test(qcow2, valid_empty_image)
{
  size_t len;
  uint8_t *b = make_image(&len);
  struct kb_qcow2 *img = NULL;
  struct kb_qcow2_cluster c;
  char *msg = NULL;

  cr_assert_eq(open_buf(b, len, &img, &msg), 0, "%s", msg ? msg : "");
  const struct kb_qcow2_info *in = kb_qcow2_get_info(img);
  cr_assert_eq(in->version, 3);
  cr_assert_eq(in->virtual_size, 1024 * 1024);
  cr_assert_eq(in->cluster_size, CS);
  cr_assert_eq(in->nb_clusters, 16);
  cr_assert_null(in->backing_file);
  cr_assert_eq(kb_qcow2_cluster_at(img, 15, &c), 0);
  cr_assert_eq(c.kind, KB_QCOW2_UNALLOCATED);
  cr_assert_eq(kb_qcow2_cluster_at(img, 16, &c), -EINVAL);
  kb_qcow2_close(img);
  free(b);
}

Test(qcow2, backing_file_and_format)
{
  size_t len;
  uint8_t *b = make_image(&len);
  struct kb_qcow2 *img = NULL;

  kb_put_be32(b + 112, QCOW2_EXT_BACKING_FORMAT);
  kb_put_be32(b + 116, 5);
  memcpy(b + 120, "qcow2", 5);
  memcpy(b + 136, "../base.qcow2", 13);
  kb_put_be64(b + 8, 136);
  kb_put_be32(b + 16, 13);
  cr_assert_eq(open_buf(b, len, &img, NULL), 0);
  cr_assert_str_eq(kb_qcow2_get_info(img)->backing_file, "../base.qcow2");
  cr_assert_str_eq(kb_qcow2_get_info(img)->backing_format, "qcow2");
  kb_qcow2_close(img);
  free(b);
}

Test(qcow2, bad_magic)
{
  size_t len;
  uint8_t *b = make_image(&len);
  b[0] = 'X';
  expect_refused(b, len, -EINVAL, "bad magic");
  free(b);
}

Test(qcow2, short_file)
{
  size_t len;
  uint8_t *b = make_image(&len);
  expect_refused(b, 40, -EINVAL, "too short");
  free(b);
}

Test(qcow2, bad_version)
{
  size_t len;
  uint8_t *b = make_image(&len);
  kb_put_be32(b + 4, 4);
  expect_refused(b, len, -ENOTSUP, "version 4");
  free(b);
}

Test(qcow2, cluster_bits_out_of_range)
{
  size_t len;
  uint8_t *b = make_image(&len);
  kb_put_be32(b + 20, 40);
  expect_refused(b, len, -EINVAL, "cluster_bits");
  free(b);
}

Test(qcow2, huge_virtual_size)
{
  size_t len;
  uint8_t *b = make_image(&len);
  kb_put_be64(b + 24, UINT64_MAX);
  expect_refused(b, len, -EINVAL, "too large");
  kb_put_be64(b + 24, UINT64_C(1) << 50);   /* needs a bigger L1 than 1 entry */
  expect_refused(b, len, -EINVAL, "L1 table too small");
  free(b);
}

Test(qcow2, l1_beyond_eof)
{
  size_t len;
  uint8_t *b = make_image(&len);
  kb_put_be64(b + 40, 100 * CS);
  expect_refused(b, len, -EINVAL, "outside the image");
  kb_put_be64(b + 40, CS + 8);              /* misaligned */
  expect_refused(b, len, -EINVAL, "outside the image");
  kb_put_be64(b + 40, CS);
  kb_put_be32(b + 36, 0x10000000);          /* more than 32 MiB of L1 */
  expect_refused(b, len, -EINVAL, "L1 table too large");
  free(b);
}

Test(qcow2, l2_beyond_eof_is_corrupt)
{
  size_t len;
  uint8_t *b = make_image(&len);
  struct kb_qcow2 *img = NULL;
  struct kb_qcow2_cluster c;

  kb_put_be64(b + CS, (UINT64_C(1000) * CS) | QCOW2_OFLAG_COPIED);
  cr_assert_eq(open_buf(b, len, &img, NULL), 0);
  cr_assert_eq(kb_qcow2_cluster_at(img, 0, &c), -EINVAL);
  cr_assert(strstr(kb_qcow2_last_error(img), "L2 table"));
  kb_qcow2_close(img);
  free(b);
}

Test(qcow2, l2_entries_checked)
{
  size_t len;
  uint8_t *b = make_image(&len);
  struct kb_qcow2 *img = NULL;
  struct kb_qcow2_cluster c;
  uint8_t buf[CS];

  kb_put_be64(b + CS, 2 * CS);              /* L2 table in cluster 2 */
  kb_put_be64(b + 2 * CS, 0);               /* 0: unallocated */
  kb_put_be64(b + 2 * CS + 8, 1);           /* 1: zero */
  kb_put_be64(b + 2 * CS + 16, 2 * CS + 512); /* 2: misaligned data */
  kb_put_be64(b + 2 * CS + 24, 50 * CS);    /* 3: data beyond EOF */
  kb_put_be64(b + 2 * CS + 32, QCOW2_OFLAG_COMPRESSED | (UINT64_C(1) << 40)); /* 4: compressed beyond EOF */
  kb_put_be64(b + 2 * CS + 40, QCOW2_OFLAG_COMPRESSED | (2 * CS)); /* 5: garbage, won't decompress */
  kb_put_be64(b + 2 * CS + 48, 2 * CS | 0x10); /* 6: reserved bit */
  cr_assert_eq(open_buf(b, len, &img, NULL), 0);
  cr_assert_eq(kb_qcow2_cluster_at(img, 0, &c), 0);
  cr_assert_eq(c.kind, KB_QCOW2_UNALLOCATED);
  cr_assert_eq(kb_qcow2_cluster_at(img, 1, &c), 0);
  cr_assert_eq(c.kind, KB_QCOW2_ZERO);
  cr_assert_eq(kb_qcow2_cluster_at(img, 2, &c), -EINVAL);
  cr_assert_eq(kb_qcow2_cluster_at(img, 3, &c), -EINVAL);
  cr_assert_eq(kb_qcow2_cluster_at(img, 4, &c), -EINVAL);
  cr_assert_eq(kb_qcow2_cluster_at(img, 5, &c), 0);
  cr_assert_eq(c.kind, KB_QCOW2_COMPRESSED);
  cr_assert_eq(kb_qcow2_read_cluster(img, 5, buf, NULL), -EIO);
  cr_assert_eq(kb_qcow2_cluster_at(img, 6, &c), -EINVAL);
  kb_qcow2_close(img);
  free(b);
}

Test(qcow2, unsupported_features_refused)
{
  size_t len;
  uint8_t *b = make_image(&len);

  kb_put_be32(b + 32, 2);
  expect_refused(b, len, -ENOTSUP, "encrypted");
  kb_put_be32(b + 32, 0);
  kb_put_be32(b + 60, 1);
  expect_refused(b, len, -ENOTSUP, "internal snapshots");
  kb_put_be32(b + 60, 0);
  kb_put_be64(b + 72, QCOW2_INCOMPAT_DIRTY);
  expect_refused(b, len, -ENOTSUP, "dirty");
  kb_put_be64(b + 72, QCOW2_INCOMPAT_CORRUPT);
  expect_refused(b, len, -ENOTSUP, "corrupt");
  kb_put_be64(b + 72, QCOW2_INCOMPAT_DATA_FILE);
  expect_refused(b, len, -ENOTSUP, "external data file");
  kb_put_be64(b + 72, QCOW2_INCOMPAT_EXTL2);
  expect_refused(b, len, -ENOTSUP, "extended L2");
  kb_put_be64(b + 72, UINT64_C(1) << 20);
  expect_refused(b, len, -ENOTSUP, "unknown incompatible");
  kb_put_be64(b + 72, QCOW2_INCOMPAT_COMPRESSION);
  expect_refused(b, len, -EINVAL, "disagree");
  b[104] = 7;
  expect_refused(b, len, -ENOTSUP, "compression type 7");
  free(b);
}

Test(qcow2, extensions_bounded)
{
  size_t len;
  uint8_t *b = make_image(&len);

  kb_put_be32(b + 112, 0x12345678);
  kb_put_be32(b + 116, 0xfffffff0);          /* runs past the header cluster */
  expect_refused(b, len, -EINVAL, "overruns");
  kb_put_be32(b + 112, QCOW2_EXT_BACKING_FORMAT);
  kb_put_be32(b + 116, 200);
  expect_refused(b, len, -EINVAL, "backing format");
  kb_put_be32(b + 112, 0);
  kb_put_be64(b + 8, CS - 4);               /* name crosses the header cluster */
  kb_put_be32(b + 16, 100);
  expect_refused(b, len, -EINVAL, "backing file name");
  free(b);
}

Test(qcow2, bitmap_names)
{
  size_t len;
  uint8_t *b = make_image(&len);
  struct kb_qcow2 *img = NULL;
  char *msg = NULL;
  uint8_t *d = b + 2 * CS + 4096;            /* directory inside the file */

  kb_put_be64(b + 88, QCOW2_AUTOCLEAR_BITMAPS);
  kb_put_be32(b + 112, QCOW2_EXT_BITMAPS);
  kb_put_be32(b + 116, 24);
  kb_put_be32(b + 120, 1);
  kb_put_be64(b + 128, 32);
  kb_put_be64(b + 136, 2 * CS);
  memset(b + 2 * CS, 0, 4096);
  d = b + 2 * CS;
  kb_put_be16(d + 18, 5);
  memcpy(d + 24, "chk-1", 5);
  cr_assert_eq(open_buf(b, len, &img, &msg), 0, "%s", msg ? msg : "");
  cr_assert_eq(kb_qcow2_get_info(img)->nb_bitmaps, 1);
  cr_assert_str_eq(kb_qcow2_get_info(img)->bitmap_names[0], "chk-1");
  kb_qcow2_close(img);
  kb_put_be16(d + 18, 60000);               /* name runs past the directory */
  expect_refused(b, len, -EINVAL, "bitmap directory entry");
  free(b);
}

Test(qcow2, decompress_rejects_short_output)
{
  uint8_t out[4096];
  static const uint8_t junk[64] = { 1, 2, 3 };

  cr_assert_eq(kb_qcow2_decompress(KB_QCOW2_ZSTD, junk, sizeof junk, out, sizeof out), -EIO);
  cr_assert_eq(kb_qcow2_decompress(KB_QCOW2_ZLIB, junk, sizeof junk, out, sizeof out), -EIO);
}

/* issue 12: two entries in a 49-byte directory.  The first entry fills it
 * (24 + 25-byte name), its padding carries the position past the end; the
 * second must be refused, not read from beyond the directory (this read
 * out of bounds under ASan before the fix). */
Test(qcow2, bitmap_directory_position_past_the_end)
{
  size_t len;
  uint8_t *b = make_image(&len);
  uint8_t *d = b + 2 * CS;

  kb_put_be64(b + 88, QCOW2_AUTOCLEAR_BITMAPS);
  kb_put_be32(b + 112, QCOW2_EXT_BITMAPS);
  kb_put_be32(b + 116, 24);
  kb_put_be32(b + 120, 2);
  kb_put_be64(b + 128, 49);
  kb_put_be64(b + 136, 2 * CS);
  memset(d, 0, 4096);
  kb_put_be16(d + 18, 25);
  memset(d + 24, 'a', 25);
  expect_refused(b, len, -EINVAL, "bitmap directory entry 1 is truncated");
  free(b);
}
