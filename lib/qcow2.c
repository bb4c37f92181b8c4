/* The qcow2 reader: header, extensions, L1/L2 lookups, decompression.
 * Written from the format description (qemu's docs/interop/qcow2.txt). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"
#include "qcow2-format.h"
#include "util.h"

struct kb_qcow2 {
  int fd;
  struct kb_qcow2_info info;
  uint64_t l1_offset;
  uint32_t l1_size;
  uint64_t *l1;               /* host order */
  uint64_t l2_entries;        /* entries per L2 table */
  uint64_t *l2;               /* cached L2 table, host order */
  uint64_t l2_cached;         /* L1 index of the cached table, UINT64_MAX none */
  unsigned csize_shift;       /* x in the spec */
  uint64_t csize_mask;
  uint64_t coffset_mask;
  char *backing_file;
  char *backing_format;
  char **bitmap_names;
  char errbuf[256];
};

static int img_error(struct kb_qcow2 *img, int err, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static int img_error(struct kb_qcow2 *img, int err, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(img->errbuf, sizeof img->errbuf, fmt, ap);
  va_end(ap);
  return err;
}

const char *kb_qcow2_last_error(const struct kb_qcow2 *img)
{
  return img ? img->errbuf : "";
}

const struct kb_qcow2_info *kb_qcow2_get_info(const struct kb_qcow2 *img)
{
  return &img->info;
}

int kb_qcow2_pread(struct kb_qcow2 *img, void *buf, size_t len, uint64_t offset)
{
  char *p = buf;

  while (len > 0) {
    ssize_t r = pread(img->fd, p, len, (off_t) offset);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0) {
      memset(p, 0, len);
      return 0;
    }
    p += r;
    len -= (size_t) r;
    offset += (uint64_t) r;
  }
  return 0;
}

/* Is [off, off+len) inside the file? */
static bool in_file(const struct kb_qcow2 *img, uint64_t off, uint64_t len)
{
  return off <= img->info.file_size && len <= img->info.file_size - off;
}

static int parse_bitmaps_ext(struct kb_qcow2 *img, const uint8_t *d, uint32_t len)
{
  uint32_t nb;
  uint64_t dir_size, dir_off, pos = 0;
  CLEANUP_FREE uint8_t *dir = NULL;
  size_t i;

  if (len < 24)
    return img_error(img, -EINVAL, "bitmaps extension too short (%u bytes)", len);
  nb = kb_be32(d);
  dir_size = kb_be64(d + 8);
  dir_off = kb_be64(d + 16);
  if (nb == 0 || nb > QCOW2_MAX_BITMAPS)
    return img_error(img, -EINVAL, "bitmaps extension: %u bitmaps", nb);
  if (dir_size > QCOW2_MAX_BITMAP_DIR || dir_size < (uint64_t) nb * 24)
    return img_error(img, -EINVAL, "bitmap directory size %llu is invalid",
                     (unsigned long long) dir_size);
  if ((dir_off & (img->info.cluster_size - 1)) || !in_file(img, dir_off, dir_size))
    return img_error(img, -EINVAL, "bitmap directory at %llu is outside the image",
                     (unsigned long long) dir_off);
  dir = malloc(dir_size);
  img->bitmap_names = calloc(nb + 1, sizeof(char *));
  if (!dir || !img->bitmap_names)
    return -ENOMEM;
  if (kb_qcow2_pread(img, dir, dir_size, dir_off) < 0)
    return img_error(img, -EIO, "cannot read the bitmap directory");
  for (i = 0; i < nb; i++) {
    uint16_t name_size;
    uint32_t extra;
    uint64_t entry;

    /* POS may have stepped past the end with the last entry's padding. */
    if (pos > dir_size || dir_size - pos < 24)
      return img_error(img, -EINVAL, "bitmap directory entry %zu is truncated", i);
    name_size = kb_be16(dir + pos + 18);
    extra = kb_be32(dir + pos + 20);
    entry = 24 + (uint64_t) extra + name_size;
    if (entry > dir_size - pos || name_size == 0 ||
        memchr(dir + pos + 24 + extra, 0, name_size))
      return img_error(img, -EINVAL, "bitmap directory entry %zu is invalid", i);
    img->bitmap_names[i] = strndup((const char *) dir + pos + 24 + extra, name_size);
    if (!img->bitmap_names[i])
      return -ENOMEM;
    img->info.nb_bitmaps = i + 1;
    pos += (entry + 7) & ~(uint64_t) 7;
  }
  img->info.bitmap_names = (const char *const *) img->bitmap_names;
  return 0;
}

static int parse_extensions(struct kb_qcow2 *img, const uint8_t *hdr, uint64_t start, uint64_t end)
{
  uint64_t pos = start;

  while (pos + 8 <= end) {
    uint32_t type = kb_be32(hdr + pos);
    uint32_t len = kb_be32(hdr + pos + 4);
    const uint8_t *data = hdr + pos + 8;
    int r;

    if (type == QCOW2_EXT_END)
      return 0;
    if (len > end - pos - 8)
      return img_error(img, -EINVAL, "header extension 0x%08x overruns the header", type);
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
      if (len == 0 || len > 63 || memchr(data, 0, len))
        return img_error(img, -EINVAL, "invalid backing format extension");
      img->backing_format = strndup((const char *) data, len);
      if (!img->backing_format)
        return -ENOMEM;
      break;
    case QCOW2_EXT_CRYPTO:
      return img_error(img, -ENOTSUP, "encrypted images are not supported");
    case QCOW2_EXT_DATA_FILE:
      return img_error(img, -ENOTSUP, "images with an external data file are not supported");
    case QCOW2_EXT_BITMAPS:
      /* Only meaningful while the autoclear bit says it is consistent. */
      if (img->info.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) {
        r = parse_bitmaps_ext(img, data, len);
        if (r < 0)
          return r;
      }
      break;
    default:
      break;                  /* feature names and unknown ones: skip */
    }
    pos += 8 + (((uint64_t) len + 7) & ~(uint64_t) 7);
  }
  return 0;
}

static int parse_header(struct kb_qcow2 *img)
{
  CLEANUP_FREE uint8_t *hdr = NULL;
  uint8_t fixed[QCOW2_V3_HEADER_LEN];
  uint64_t size, l1_off, bf_off, ext_end, min_l1, incompat;
  uint32_t bf_size, hdr_len, l1_size;
  struct kb_qcow2_info *in = &img->info;
  int r;

  if (in->file_size < QCOW2_V2_HEADER_LEN)
    return img_error(img, -EINVAL, "not a qcow2 image (file too short)");
  r = kb_qcow2_pread(img, fixed, sizeof fixed, 0);
  if (r < 0)
    return img_error(img, r, "cannot read the header: %s", strerror(-r));
  if (kb_be32(fixed) != QCOW2_MAGIC)
    return img_error(img, -EINVAL, "not a qcow2 image (bad magic)");
  in->version = kb_be32(fixed + 4);
  if (in->version != 2 && in->version != 3)
    return img_error(img, -ENOTSUP, "qcow2 version %u is not supported", in->version);
  bf_off = kb_be64(fixed + 8);
  bf_size = kb_be32(fixed + 16);
  in->cluster_bits = kb_be32(fixed + 20);
  size = kb_be64(fixed + 24);
  if (in->cluster_bits < QCOW2_MIN_CLUSTER_BITS || in->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return img_error(img, -EINVAL, "cluster_bits %u is out of range", in->cluster_bits);
  in->cluster_size = UINT64_C(1) << in->cluster_bits;
  if (kb_be32(fixed + 32) != 0)
    return img_error(img, -ENOTSUP, "encrypted images are not supported");
  l1_size = kb_be32(fixed + 36);
  l1_off = kb_be64(fixed + 40);
  if (kb_be32(fixed + 60) != 0)
    return img_error(img, -ENOTSUP, "images with internal snapshots are not supported (%u found)",
                     kb_be32(fixed + 60));
  in->refcount_order = 4;
  hdr_len = QCOW2_V2_HEADER_LEN;
  in->compression_type = KB_QCOW2_ZLIB;
  if (in->version == 3) {
    in->incompatible_features = kb_be64(fixed + 72);
    in->compatible_features = kb_be64(fixed + 80);
    in->autoclear_features = kb_be64(fixed + 88);
    in->refcount_order = kb_be32(fixed + 96);
    hdr_len = kb_be32(fixed + 100);
    if (hdr_len < 104 || hdr_len > in->cluster_size || hdr_len > in->file_size)
      return img_error(img, -EINVAL, "header length %u is invalid", hdr_len);
    if (in->refcount_order > 6)
      return img_error(img, -EINVAL, "refcount order %u is invalid", in->refcount_order);
  }
  incompat = in->incompatible_features;
  if (incompat & QCOW2_INCOMPAT_DIRTY)
    return img_error(img, -ENOTSUP, "the image is marked dirty (its writer did not finish); "
                     "run 'qemu-img check -r all' first");
  if (incompat & QCOW2_INCOMPAT_CORRUPT)
    return img_error(img, -ENOTSUP, "the image is marked corrupt");
  if (incompat & QCOW2_INCOMPAT_DATA_FILE)
    return img_error(img, -ENOTSUP, "images with an external data file are not supported");
  if (incompat & QCOW2_INCOMPAT_EXTL2)
    return img_error(img, -ENOTSUP, "images with extended L2 entries (subclusters) are not supported");
  if (incompat & ~(uint64_t) QCOW2_INCOMPAT_KNOWN)
    return img_error(img, -ENOTSUP, "unknown incompatible features 0x%llx",
                     (unsigned long long) (incompat & ~(uint64_t) QCOW2_INCOMPAT_KNOWN));
  if (hdr_len > 104) {
    uint8_t ct = fixed[104];
    if (ct > KB_QCOW2_ZSTD)
      return img_error(img, -ENOTSUP, "compression type %u is not supported", ct);
    if ((ct != 0) != ((incompat & QCOW2_INCOMPAT_COMPRESSION) != 0))
      return img_error(img, -EINVAL, "compression type field and feature bit disagree");
    in->compression_type = ct;
  } else if (incompat & QCOW2_INCOMPAT_COMPRESSION)
    return img_error(img, -EINVAL, "compression type feature bit without the field");

  /* Sizes: the L1 table must cover the virtual size and stay sane. */
  if (size > QCOW2_MAX_VIRTUAL_SIZE)
    return img_error(img, -EINVAL, "virtual size %llu is too large", (unsigned long long) size);
  in->virtual_size = size;
  in->nb_clusters = (size + in->cluster_size - 1) >> in->cluster_bits;
  img->l2_entries = in->cluster_size / 8;
  min_l1 = (in->nb_clusters + img->l2_entries - 1) / img->l2_entries;
  if (l1_size > QCOW2_MAX_L1_BYTES / 8)
    return img_error(img, -EINVAL, "L1 table too large (%u entries)", l1_size);
  if (l1_size < min_l1)
    return img_error(img, -EINVAL, "L1 table too small for the virtual size");
  if (l1_size > 0 && ((l1_off & (in->cluster_size - 1)) || l1_off == 0 ||
                      !in_file(img, l1_off, (uint64_t) l1_size * 8)))
    return img_error(img, -EINVAL, "L1 table at %llu (%u entries) is outside the image",
                     (unsigned long long) l1_off, l1_size);
  img->l1_offset = l1_off;
  img->l1_size = l1_size;

  /* Header cluster: extensions and backing file name live in it. */
  ext_end = in->cluster_size < in->file_size ? in->cluster_size : in->file_size;
  if (bf_off) {
    if (bf_size == 0 || bf_size > 1023 || bf_off < hdr_len || bf_off > in->cluster_size ||
        bf_size > in->cluster_size - bf_off || !in_file(img, bf_off, bf_size))
      return img_error(img, -EINVAL, "backing file name at %llu (%u bytes) is invalid",
                       (unsigned long long) bf_off, bf_size);
    ext_end = bf_off;
  }
  hdr = malloc(in->cluster_size);
  if (!hdr)
    return -ENOMEM;
  r = kb_qcow2_pread(img, hdr, in->cluster_size, 0);
  if (r < 0)
    return img_error(img, r, "cannot read the header cluster");
  if (in->version == 3) {
    r = parse_extensions(img, hdr, hdr_len, ext_end);
    if (r < 0)
      return r;
  }
  if (bf_off) {
    if (memchr(hdr + bf_off, 0, bf_size))
      return img_error(img, -EINVAL, "backing file name contains a NUL byte");
    img->backing_file = strndup((const char *) hdr + bf_off, bf_size);
    if (!img->backing_file)
      return -ENOMEM;
  }
  in->backing_file = img->backing_file;
  in->backing_format = img->backing_format;

  /* Geometry of compressed descriptors. */
  img->csize_shift = 62 - (in->cluster_bits - 8);
  img->csize_mask = (UINT64_C(1) << (in->cluster_bits - 8)) - 1;
  img->coffset_mask = (UINT64_C(1) << img->csize_shift) - 1;

  if (l1_size) {
    uint32_t i;

    img->l1 = malloc((size_t) l1_size * 8);
    if (!img->l1)
      return -ENOMEM;
    r = kb_qcow2_pread(img, img->l1, (size_t) l1_size * 8, l1_off);
    if (r < 0)
      return img_error(img, r, "cannot read the L1 table");
    for (i = 0; i < l1_size; i++)
      img->l1[i] = kb_be64((uint8_t *) &img->l1[i]);
  }
  img->l2 = malloc(in->cluster_size);
  if (!img->l2)
    return -ENOMEM;
  img->l2_cached = UINT64_MAX;
  return 0;
}

static void set_errmsg(char **errmsg, const char *msg)
{
  if (errmsg)
    *errmsg = strdup(msg && *msg ? msg : "unknown error");
}

int kb_qcow2_open_fd(int fd, struct kb_qcow2 **ret, char **errmsg)
{
  struct kb_qcow2 *img;
  struct stat st;
  int r;

  if (errmsg)
    *errmsg = NULL;
  img = calloc(1, sizeof *img);
  if (!img)
    return -ENOMEM;
  img->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (img->fd < 0) {
    r = -errno;
    snprintf(img->errbuf, sizeof img->errbuf, "dup: %s", strerror(-r));
    goto fail;
  }
  if (fstat(img->fd, &st) < 0) {
    r = img_error(img, -errno, "stat: %s", strerror(errno));
    goto fail;
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    r = img_error(img, -EINVAL, "not a regular file");
    goto fail;
  }
  img->info.file_size = (uint64_t) st.st_size;
  r = parse_header(img);
  if (r < 0) {
    if (r == -ENOMEM && !img->errbuf[0])
      img_error(img, r, "out of memory");
    goto fail;
  }
  *ret = img;
  return 0;

fail:
  set_errmsg(errmsg, img->errbuf);
  kb_qcow2_close(img);
  return r;
}

int kb_qcow2_open(const char *path, struct kb_qcow2 **ret, char **errmsg)
{
  CLEANUP_CLOSE int fd = -1;

  if (errmsg)
    *errmsg = NULL;
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);   /* a FIFO must not block us */
  if (fd < 0) {
    int r = -errno;
    if (errmsg)
      *errmsg = kb_printf("%s: %s", path, strerror(-r));
    return r;
  }
  return kb_qcow2_open_fd(fd, ret, errmsg);
}

void kb_qcow2_close(struct kb_qcow2 *img)
{
  size_t i;

  if (!img)
    return;
  if (img->fd >= 0)
    close(img->fd);
  free(img->l1);
  free(img->l2);
  free(img->backing_file);
  free(img->backing_format);
  if (img->bitmap_names) {
    for (i = 0; img->bitmap_names[i]; i++)
      free(img->bitmap_names[i]);
    free(img->bitmap_names);
  }
  free(img);
}

static int load_l2(struct kb_qcow2 *img, uint64_t l1_index)
{
  uint64_t l1e = img->l1[l1_index];
  uint64_t off = l1e & QCOW2_OFFSET_MASK;
  uint64_t i;
  int r;

  if (img->l2_cached == l1_index)
    return 0;
  if (l1e & QCOW2_L1_RESERVED)
    return img_error(img, -EINVAL, "L1 entry %llu has reserved bits set",
                     (unsigned long long) l1_index);
  if ((off & (img->info.cluster_size - 1)) || off < img->info.cluster_size ||
      !in_file(img, off, img->info.cluster_size))
    return img_error(img, -EINVAL, "L2 table at %llu (L1 entry %llu) is outside the image",
                     (unsigned long long) off, (unsigned long long) l1_index);
  img->l2_cached = UINT64_MAX;
  r = kb_qcow2_pread(img, img->l2, img->info.cluster_size, off);
  if (r < 0)
    return img_error(img, r, "cannot read an L2 table: %s", strerror(-r));
  for (i = 0; i < img->l2_entries; i++)
    img->l2[i] = kb_be64((uint8_t *) &img->l2[i]);
  img->l2_cached = l1_index;
  return 0;
}

int kb_qcow2_cluster_at(struct kb_qcow2 *img, uint64_t index, struct kb_qcow2_cluster *ret)
{
  const struct kb_qcow2_info *in = &img->info;
  uint64_t l1_index, e, off;
  int r;

  memset(ret, 0, sizeof *ret);
  if (index >= in->nb_clusters)
    return img_error(img, -EINVAL, "cluster %llu is beyond the virtual size",
                     (unsigned long long) index);
  l1_index = index / img->l2_entries;
  if (l1_index >= img->l1_size || (img->l1[l1_index] & QCOW2_OFFSET_MASK) == 0) {
    if (l1_index < img->l1_size && (img->l1[l1_index] & QCOW2_L1_RESERVED))
      return img_error(img, -EINVAL, "L1 entry %llu has reserved bits set",
                       (unsigned long long) l1_index);
    ret->kind = KB_QCOW2_UNALLOCATED;
    return 0;
  }
  r = load_l2(img, l1_index);
  if (r < 0)
    return r;
  e = img->l2[index % img->l2_entries];

  if (e & QCOW2_OFLAG_COMPRESSED) {
    uint64_t nsec, csize;

    if (e & QCOW2_OFLAG_COPIED)
      return img_error(img, -EINVAL, "compressed cluster %llu has the copied flag",
                       (unsigned long long) index);
    off = e & img->coffset_mask;
    nsec = ((e >> img->csize_shift) & img->csize_mask) + 1;
    csize = nsec * 512 - (off & 511);
    if (off < in->cluster_size || off >= in->file_size)
      return img_error(img, -EINVAL, "compressed cluster %llu at %llu is outside the image",
                       (unsigned long long) index, (unsigned long long) off);
    if (csize > in->file_size - off)
      csize = in->file_size - off;
    ret->kind = KB_QCOW2_COMPRESSED;
    ret->host_offset = off;
    ret->host_len = csize;
    return 0;
  }
  if (e & QCOW2_L2_RESERVED)
    return img_error(img, -EINVAL, "L2 entry of cluster %llu has reserved bits set",
                     (unsigned long long) index);
  off = e & QCOW2_OFFSET_MASK;
  if (e & QCOW2_OFLAG_ZERO) {
    if (in->version < 3)
      return img_error(img, -EINVAL, "zero flag in a version 2 image (cluster %llu)",
                       (unsigned long long) index);
    ret->kind = KB_QCOW2_ZERO;
    return 0;
  }
  if (off == 0) {
    ret->kind = KB_QCOW2_UNALLOCATED;
    return 0;
  }
  if ((off & (in->cluster_size - 1)) || off < in->cluster_size || off >= in->file_size)
    return img_error(img, -EINVAL, "data cluster %llu at %llu is misaligned or outside the image",
                     (unsigned long long) index, (unsigned long long) off);
  ret->kind = KB_QCOW2_DATA;
  ret->host_offset = off;
  ret->host_len = in->file_size - off < in->cluster_size ? in->file_size - off : in->cluster_size;
  return 0;
}

int kb_qcow2_decompress(enum kb_qcow2_ctype type, const void *src, size_t src_len,
                        void *dst, size_t dst_len)
{
  if (type == KB_QCOW2_ZLIB) {
    z_stream z;
    int zr;

    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -12) != Z_OK)
      return -ENOMEM;
    z.next_in = (Bytef *) src;
    z.avail_in = (uInt) src_len;
    z.next_out = dst;
    z.avail_out = (uInt) dst_len;
    zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* Trailing bytes after the stream end are sector padding. */
    if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR) && z.avail_out == 0)
      return 0;
    return -EIO;
  }
  if (type == KB_QCOW2_ZSTD) {
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer zin = { src, src_len, 0 };
    ZSTD_outBuffer zout = { dst, dst_len, 0 };
    size_t zr = 0;
    int r = 0;

    if (!dctx)
      return -ENOMEM;
    /* Frames until the cluster is full; what follows is padding. */
    while (zout.pos < zout.size) {
      size_t in_before = zin.pos, out_before = zout.pos;

      zr = ZSTD_decompressStream(dctx, &zout, &zin);
      if (ZSTD_isError(zr) || (zin.pos == in_before && zout.pos == out_before)) {
        r = -EIO;
        break;
      }
    }
    if (r == 0 && zr != 0)
      r = -EIO;               /* the frame holds more than one cluster */
    ZSTD_freeDCtx(dctx);
    return r;
  }
  return -ENOTSUP;
}

int kb_qcow2_read_cluster(struct kb_qcow2 *img, uint64_t index, void *buf, enum kb_qcow2_kind *ret_kind)
{
  struct kb_qcow2_cluster c;
  uint64_t cs = img->info.cluster_size;
  int r;

  r = kb_qcow2_cluster_at(img, index, &c);
  if (r < 0)
    return r;
  if (ret_kind)
    *ret_kind = c.kind;
  switch (c.kind) {
  case KB_QCOW2_UNALLOCATED:
  case KB_QCOW2_ZERO:
    memset(buf, 0, cs);
    return 0;
  case KB_QCOW2_DATA:
    r = kb_qcow2_pread(img, buf, cs, c.host_offset);
    if (r < 0)
      return img_error(img, r, "read of cluster %llu failed: %s",
                       (unsigned long long) index, strerror(-r));
    return 0;
  case KB_QCOW2_COMPRESSED: {
    CLEANUP_FREE void *cbuf = malloc(c.host_len);

    if (!cbuf)
      return -ENOMEM;
    r = kb_qcow2_pread(img, cbuf, c.host_len, c.host_offset);
    if (r < 0)
      return img_error(img, r, "read of cluster %llu failed: %s",
                       (unsigned long long) index, strerror(-r));
    r = kb_qcow2_decompress(img->info.compression_type, cbuf, c.host_len, buf, cs);
    if (r < 0)
      return img_error(img, r, "compressed cluster %llu does not decompress",
                       (unsigned long long) index);
    return 0;
  }
  }
  return -EINVAL;
}
