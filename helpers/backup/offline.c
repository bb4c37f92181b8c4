/* Backing up a stopped VM without starting QEMU.
 *
 * The disks are closed, so kboss reads them itself: the persistent dirty
 * bitmap of the previous checkpoint comes from the qcow2 bitmap directory,
 * the dirty clusters are read through the disk's backing chain with the
 * project's reader and written into a new qcow2 whose backing file is the
 * previous backup's copy (relative, as the push job makes them).  A full
 * copy is `qemu-img convert`.  While the data is read, an OFD lock on each
 * disk (the byte qemu tests before opening an image for writing) keeps any
 * qemu from starting the VM: its start fails with "Failed to get write
 * lock".  Then the checkpoint is redefined in libvirt and the bitmap of
 * the new checkpoint is added with `qemu-img bitmap --add`, so the next
 * backup, running or stopped, continues from this one. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "backup.h"
#include "log.h"
#include "qcow2.h"
#include "qcow2-format.h"
#include "util.h"

#define OUT_CLUSTER_BITS 16
#define OUT_CLUSTER ((uint64_t) 1 << OUT_CLUSTER_BITS)
#define MAX_CHAIN 64
#define BITMAP_FLAG_IN_USE 1u
#define BITMAP_FLAG_AUTO 2u
/* qemu's image locking (file-posix): perm bytes from 100, "not shared"
 * bytes from 200; bit 0 consistent read, bit 1 write. */
#define QEMU_LOCK_PERM_READ 100
#define QEMU_LOCK_UNSHARE_WRITE 201

/* ---- the bitmap directory ---- */

struct bm_entry {
  uint64_t table_offset;
  uint32_t table_size;
  uint32_t flags;
  uint8_t type, granularity_bits;
};

/* Find bitmap NAME in IMG's directory. 0 found, -ENOENT absent. */
static int find_bitmap(struct kb_qcow2 *img, const char *name, struct bm_entry *ret, bool *ret_consistent)
{
  const struct kb_qcow2_info *info = kb_qcow2_get_info(img);
  uint8_t hdr[112];
  uint64_t pos, end, dir_off = 0, dir_size = 0;
  uint32_t nb = 0, i;
  uint8_t *dir = NULL;
  int r;

  *ret_consistent = (info->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) != 0;
  if (info->version < 3)
    return -ENOENT;
  r = kb_qcow2_pread(img, hdr, sizeof hdr, 0);
  if (r < 0)
    return r;
  pos = kb_be32(hdr + 100);
  end = info->cluster_size;
  while (pos + 8 <= end) {
    uint8_t eh[8], ext[24];
    uint32_t type, len;
    if ((r = kb_qcow2_pread(img, eh, 8, pos)) < 0)
      return r;
    type = kb_be32(eh);
    len = kb_be32(eh + 4);
    if (type == QCOW2_EXT_END)
      break;
    if (type == QCOW2_EXT_BITMAPS && len >= 24) {
      if ((r = kb_qcow2_pread(img, ext, 24, pos + 8)) < 0)
        return r;
      nb = kb_be32(ext);
      dir_size = kb_be64(ext + 8);
      dir_off = kb_be64(ext + 16);
    }
    pos += 8 + (((uint64_t) len + 7) & ~UINT64_C(7));
  }
  if (nb == 0 || dir_size == 0)
    return -ENOENT;
  if (nb > QCOW2_MAX_BITMAPS || dir_size > QCOW2_MAX_BITMAP_DIR || dir_off + dir_size > info->file_size)
    return -EINVAL;
  dir = malloc(dir_size);
  if (!dir)
    return -ENOMEM;
  r = kb_qcow2_pread(img, dir, dir_size, dir_off);
  for (i = 0, pos = 0; r == 0 && i < nb; i++) {
    uint32_t extra, nsz;
    if (pos > dir_size || dir_size - pos < 24) {
      r = -EINVAL;
      break;
    }
    nsz = kb_be16(dir + pos + 18);
    extra = kb_be32(dir + pos + 20);
    if (24 + (uint64_t) extra + nsz > dir_size - pos) {
      r = -EINVAL;
      break;
    }
    if (nsz == strlen(name) && memcmp(dir + pos + 24 + extra, name, nsz) == 0) {
      ret->table_offset = kb_be64(dir + pos);
      ret->table_size = kb_be32(dir + pos + 8);
      ret->flags = kb_be32(dir + pos + 12);
      ret->type = dir[pos + 16];
      ret->granularity_bits = dir[pos + 17];
      free(dir);
      return 0;
    }
    pos += (24 + (uint64_t) extra + nsz + 7) & ~(uint64_t) 7;
  }
  free(dir);
  return r < 0 ? r : -ENOENT;
}

int bk_offline_bitmap_state(const char *path, const char *name, struct kb_bitmap_state *ret, char **ret_why)
{
  struct kb_qcow2 *img = NULL;
  struct bm_entry e;
  CLEANUP_FREE char *msg = NULL;
  bool consistent;
  int r;

  memset(ret, 0, sizeof *ret);
  r = kb_qcow2_open(path, &img, &msg);
  if (r < 0) {
    *ret_why = kb_printf("cannot read it offline: %s", msg ? msg : strerror(-r));
    return r;
  }
  r = find_bitmap(img, name, &e, &consistent);
  kb_qcow2_close(img);
  if (r == -ENOENT)
    return 0;
  if (r < 0) {
    *ret_why = kb_printf("cannot read its bitmap directory: %s", strerror(-r));
    return r;
  }
  ret->present = true;
  ret->persistent = true;
  ret->recording = (e.flags & BITMAP_FLAG_AUTO) != 0;
  /* An image last opened by a qemu that does not know bitmaps clears the
   * autoclear bit: every bitmap in it is then stale. */
  ret->inconsistent = (e.flags & BITMAP_FLAG_IN_USE) != 0 || !consistent || e.type != 1 ||
                      e.granularity_bits < 9 || e.granularity_bits > 31;
  return 0;
}

/* ---- reading a disk through its backing chain ---- */

struct chain {
  struct kb_qcow2 *img[MAX_CHAIN];
  uint8_t *buf[MAX_CHAIN];
  int n;
};

static void chain_close(struct chain *c)
{
  for (int i = 0; i < c->n; i++) {
    kb_qcow2_close(c->img[i]);
    free(c->buf[i]);
  }
  c->n = 0;
}

static int chain_open(struct chain *c, const char *path, char **ret_why)
{
  CLEANUP_FREE char *cur = strdup(path);
  int r;

  memset(c, 0, sizeof *c);
  if (!cur)
    return -ENOMEM;
  for (;;) {
    const struct kb_qcow2_info *info;
    CLEANUP_FREE char *msg = NULL;
    char *next, *slash;

    if (c->n == MAX_CHAIN) {
      *ret_why = kb_printf("backing chain of %s is longer than %d", path, MAX_CHAIN);
      return -ELOOP;
    }
    r = kb_qcow2_open(cur, &c->img[c->n], &msg);
    if (r < 0) {
      *ret_why = kb_printf("%s: %s", cur, msg ? msg : strerror(-r));
      return r;
    }
    info = kb_qcow2_get_info(c->img[c->n]);
    c->buf[c->n] = malloc(info->cluster_size);
    c->n++;
    if (!c->buf[c->n - 1])
      return -ENOMEM;
    if (!info->backing_file)
      return 0;
    if (info->backing_format && !KB_STREQ(info->backing_format, "qcow2")) {
      *ret_why = kb_printf("%s: backing file of format %s", cur, info->backing_format);
      return -ENOTSUP;
    }
    slash = strrchr(cur, '/');
    if (info->backing_file[0] == '/' || !slash)
      next = strdup(info->backing_file);
    else
      next = kb_printf("%.*s/%s", (int) (slash - cur), cur, info->backing_file);
    if (!next)
      return -ENOMEM;
    free(cur);
    cur = next;
  }
}

/* LEN guest bytes at OFF as layer L and those below it show them. */
static int chain_read(struct chain *c, int l, uint64_t off, uint64_t len, uint8_t *dst)
{
  while (len > 0) {
    const struct kb_qcow2_info *info;
    enum kb_qcow2_kind kind;
    uint64_t in, take;
    int r;

    if (l >= c->n) {
      memset(dst, 0, len);
      return 0;
    }
    info = kb_qcow2_get_info(c->img[l]);
    if (off >= info->virtual_size) {
      memset(dst, 0, len);   /* beyond a shorter backing file */
      return 0;
    }
    in = off % info->cluster_size;
    take = info->cluster_size - in;
    if (take > len)
      take = len;
    if (take > info->virtual_size - off)
      take = info->virtual_size - off;
    r = kb_qcow2_read_cluster(c->img[l], off / info->cluster_size, c->buf[l], &kind);
    if (r < 0)
      return r;
    if (kind == KB_QCOW2_UNALLOCATED)
      r = chain_read(c, l + 1, off, take, dst);
    else
      memcpy(dst, c->buf[l] + in, take);
    if (r < 0)
      return r;
    off += take;
    dst += take;
    len -= take;
  }
  return 0;
}

/* Output clusters (64 KiB) that bitmap NAME of the top image marks dirty. */
static int dirty_map(struct kb_qcow2 *img, const char *name, uint64_t size, uint8_t **ret_map,
                     uint64_t *ret_count, char **ret_why)
{
  const struct kb_qcow2_info *info = kb_qcow2_get_info(img);
  uint64_t ncl = (size + OUT_CLUSTER - 1) / OUT_CLUSTER, gran, ngran, per, need, i, count = 0;
  uint64_t *table = NULL;
  uint8_t *map = NULL, *data = NULL;
  struct bm_entry e;
  bool consistent;
  int r;

  r = find_bitmap(img, name, &e, &consistent);
  if (r < 0) {
    *ret_why = kb_printf("bitmap %s: %s", name, r == -ENOENT ? "missing" : strerror(-r));
    return r;
  }
  if ((e.flags & BITMAP_FLAG_IN_USE) || !consistent || e.type != 1 || e.granularity_bits < 9 ||
      e.granularity_bits > 31) {
    *ret_why = kb_printf("bitmap %s is inconsistent", name);
    return -EINVAL;
  }
  gran = (uint64_t) 1 << e.granularity_bits;
  ngran = (info->virtual_size + gran - 1) / gran;
  per = info->cluster_size * 8;           /* granules per bitmap data cluster */
  need = (ngran + per - 1) / per;
  if (e.table_size < need || e.table_size > 1u << 24 ||
      e.table_offset + (uint64_t) e.table_size * 8 > info->file_size) {
    *ret_why = kb_printf("bitmap %s: its table is invalid", name);
    return -EINVAL;
  }
  table = malloc((size_t) e.table_size * 8);
  map = calloc((ncl + 7) / 8 + 1, 1);
  data = malloc(info->cluster_size);
  if (!table || !map || !data) {
    r = -ENOMEM;
    goto out;
  }
  r = kb_qcow2_pread(img, table, (size_t) e.table_size * 8, e.table_offset);
  for (i = 0; r == 0 && i < need; i++) {
    uint64_t ent = kb_be64((uint8_t *) &table[i]), off = ent & QCOW2_OFFSET_MASK, b, first, last;

    if (off == 0 && !(ent & 1))
      continue;                           /* all clean */
    if (off) {
      if (off + info->cluster_size > info->file_size) {
        *ret_why = kb_printf("bitmap %s: data cluster outside the image", name);
        r = -EINVAL;
        break;
      }
      r = kb_qcow2_pread(img, data, info->cluster_size, off);
      if (r < 0)
        break;
    } else
      memset(data, 0xff, info->cluster_size);
    first = i * per;
    last = first + per < ngran ? first + per : ngran;
    for (b = first; b < last; b++) {
      uint64_t k = b - first, s, en, cl;
      if (!(data[k / 8] & (1u << (k % 8)))) {
        if ((k % 8) == 0 && data[k / 8] == 0)
          b += 7;
        continue;
      }
      s = b * gran;
      en = s + gran < size ? s + gran : size;
      for (cl = s / OUT_CLUSTER; s < en && cl <= (en - 1) / OUT_CLUSTER; cl++)
        if (!(map[cl / 8] & (1u << (cl % 8)))) {
          map[cl / 8] |= (uint8_t) (1u << (cl % 8));
          count++;
        }
    }
  }
out:
  free(table);
  free(data);
  if (r < 0) {
    free(map);
    return r;
  }
  *ret_map = map;
  *ret_count = count;
  return 0;
}

/* ---- a new qcow2 v3 holding the copied clusters ----
 * Laid out in one pass: header cluster, data clusters as they come, then
 * the L2 tables, the L1 table and the refcounts; the header goes last. */

struct out {
  int fd;
  uint64_t size, l1_size, next;          /* next: host cluster for data */
  uint64_t **l2;                         /* per L1 entry, NULL if none */
  uint8_t *wbuf;
  size_t wlen;
  uint64_t wstart;                       /* host cluster of wbuf[0] */
};
#define WBUF_CLUSTERS 32
#define L2_ENTRIES (OUT_CLUSTER / 8)

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
  const uint8_t *p = buf;
  while (len) {
    ssize_t w = pwrite(fd, p, len, (off_t) off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += w;
    len -= (size_t) w;
    off += (uint64_t) w;
  }
  return 0;
}

static int out_flush(struct out *o)
{
  int r = 0;
  if (o->wlen)
    r = pwrite_all(o->fd, o->wbuf, o->wlen, o->wstart * OUT_CLUSTER);
  o->wlen = 0;
  return r;
}

static bool all_zero(const uint8_t *p, size_t n)
{
  static const uint8_t z[256];
  for (; n >= sizeof z; n -= sizeof z, p += sizeof z)
    if (memcmp(p, z, sizeof z))
      return false;
  return n == 0 || memcmp(p, z, n) == 0;
}

static int out_cluster(struct out *o, uint64_t cl, const uint8_t *data)
{
  uint64_t l1 = cl / L2_ENTRIES, entry;

  if (!o->l2[l1] && !(o->l2[l1] = calloc(L2_ENTRIES, 8)))
    return -ENOMEM;
  if (all_zero(data, OUT_CLUSTER))
    entry = QCOW2_OFLAG_ZERO;
  else {
    if (o->wlen == WBUF_CLUSTERS * OUT_CLUSTER) {
      int r = out_flush(o);
      if (r < 0)
        return r;
    }
    if (o->wlen == 0)
      o->wstart = o->next;
    memcpy(o->wbuf + o->wlen, data, OUT_CLUSTER);
    o->wlen += OUT_CLUSTER;
    entry = (o->next++ * OUT_CLUSTER) | QCOW2_OFLAG_COPIED;
  }
  o->l2[l1][cl % L2_ENTRIES] = entry;
  return 0;
}

/* The header cluster (C, a cluster-sized buffer): qcow2 v3, 64 KiB
 * clusters, 16-bit refcounts, BACKING (qcow2) when not NULL. */
static int write_header(int fd, uint8_t *c, uint64_t size, uint64_t l1_size, uint64_t l1_at, uint64_t rt_at,
                        uint64_t rtc, const char *backing)
{
  size_t blen = backing ? strlen(backing) : 0;

  memset(c, 0, OUT_CLUSTER);
  kb_put_be32(c, QCOW2_MAGIC);
  kb_put_be32(c + 4, 3);
  if (backing) {
    kb_put_be64(c + 8, 128);
    kb_put_be32(c + 16, (uint32_t) blen);
  }
  kb_put_be32(c + 20, OUT_CLUSTER_BITS);
  kb_put_be64(c + 24, size);
  kb_put_be32(c + 36, (uint32_t) l1_size);
  kb_put_be64(c + 40, l1_at * OUT_CLUSTER);
  kb_put_be64(c + 48, rt_at * OUT_CLUSTER);
  kb_put_be32(c + 56, (uint32_t) rtc);
  kb_put_be32(c + 96, 4);                     /* 16-bit refcounts */
  kb_put_be32(c + 100, 104);
  if (backing) {
    kb_put_be32(c + 104, QCOW2_EXT_BACKING_FORMAT);
    kb_put_be32(c + 108, 5);
    memcpy(c + 112, "qcow2", 5);
    /* end extension at 120 (zeros), backing name at 128 */
    memcpy(c + 128, backing, blen);
  }
  return pwrite_all(fd, c, OUT_CLUSTER, 0);
}

/* A table of N_CLUSTERS clusters at cluster AT whose first N entries
 * point to the consecutive clusters from FIRST (with FLAGS). */
static int write_table(int fd, uint8_t *c, uint64_t at, uint64_t n_clusters, uint64_t n, uint64_t first,
                       uint64_t flags)
{
  uint64_t i;
  int r = 0;

  for (i = 0; r == 0 && i < n_clusters * L2_ENTRIES; i++) {
    if (i % L2_ENTRIES == 0)
      memset(c, 0, OUT_CLUSTER);
    if (i < n)
      kb_put_be64(c + (i % L2_ENTRIES) * 8, ((first + i) * OUT_CLUSTER) | flags);
    if (i % L2_ENTRIES == L2_ENTRIES - 1)
      r = pwrite_all(fd, c, OUT_CLUSTER, (at + i / L2_ENTRIES) * OUT_CLUSTER);
  }
  return r;
}

/* The refcount table (RTC clusters at RT_AT) of RBC blocks at RB_AT, and
 * the blocks that count the clusters below USED once each (the others
 * stay holes: free clusters). */
static int write_refcounts(int fd, uint8_t *c, uint64_t rt_at, uint64_t rtc, uint64_t rb_at, uint64_t rbc,
                           uint64_t used)
{
  const uint64_t per = OUT_CLUSTER / 2;      /* 16-bit refcounts per block */
  uint64_t i, e;
  int r = write_table(fd, c, rt_at, rtc, rbc, rb_at, 0);

  for (i = 0; r == 0 && i < rbc && i * per < used; i++) {
    memset(c, 0, OUT_CLUSTER);
    for (e = 0; e < per && i * per + e < used; e++)
      kb_put_be16(c + e * 2, 1);
    r = pwrite_all(fd, c, OUT_CLUSTER, (rb_at + i) * OUT_CLUSTER);
  }
  return r;
}

static int out_finish(struct out *o, const char *backing)
{
  uint64_t nl2 = 0, l1c, rbc = 0, rtc = 0, total, prev = 0, l2_at, l1_at, rt_at, rb_at, i;
  uint8_t *c = calloc(1, OUT_CLUSTER);
  int r = out_flush(o);

  if (!c)
    return -ENOMEM;
  for (i = 0; i < o->l1_size; i++)
    nl2 += o->l2[i] != NULL;
  l1c = (o->l1_size * 8 + OUT_CLUSTER - 1) / OUT_CLUSTER;
  if (l1c == 0)
    l1c = 1;
  do {
    prev = rbc + rtc;
    total = o->next + nl2 + l1c + rtc + rbc;
    rbc = (total + (OUT_CLUSTER / 2) - 1) / (OUT_CLUSTER / 2);
    rtc = (rbc * 8 + OUT_CLUSTER - 1) / OUT_CLUSTER;
  } while (rbc + rtc != prev);
  total = o->next + nl2 + l1c + rtc + rbc;
  l2_at = o->next;
  l1_at = l2_at + nl2;
  rt_at = l1_at + l1c;
  rb_at = rt_at + rtc;

  {
    /* L2 tables, then L1 (one cluster at a time through C). */
    uint64_t *l1 = calloc(l1c * L2_ENTRIES, 8), k = 0;
    if (!l1)
      r = -ENOMEM;
    for (i = 0; r == 0 && i < o->l1_size; i++) {
      if (!o->l2[i])
        continue;
      for (uint64_t e = 0; e < L2_ENTRIES; e++)
        kb_put_be64(c + e * 8, o->l2[i][e]);
      r = pwrite_all(o->fd, c, OUT_CLUSTER, (l2_at + k) * OUT_CLUSTER);
      kb_put_be64((uint8_t *) &l1[i], ((l2_at + k) * OUT_CLUSTER) | QCOW2_OFLAG_COPIED);
      k++;
    }
    if (r == 0)
      r = pwrite_all(o->fd, l1, l1c * OUT_CLUSTER, l1_at * OUT_CLUSTER);
    free(l1);
  }
  /* Refcount table and blocks: every cluster below TOTAL is used once. */
  if (r == 0)
    r = write_refcounts(o->fd, c, rt_at, rtc, rb_at, rbc, total);
  if (r == 0 && fdatasync(o->fd) < 0)
    r = -errno;
  if (r == 0)
    r = write_header(o->fd, c, o->size, o->l1_size, l1_at, rt_at, rtc, backing);
  if (r == 0 && fdatasync(o->fd) < 0)
    r = -errno;
  free(c);
  return r;
}

static void out_free(struct out *o)
{
  if (o->l2)
    for (uint64_t i = 0; i < o->l1_size; i++)
      free(o->l2[i]);
  free(o->l2);
  free(o->wbuf);
  if (o->fd >= 0)
    close(o->fd);
}

/* Copy the clusters bitmap SINCE marks dirty from disk SOURCE into a new
 * image at PATH backed by BACKING. */
/* Sleep so that DONE bytes since START_MS take at least DONE / BW. */
static void throttle(unsigned long bw_mib, uint64_t done, int64_t start_ms)
{
  int64_t due, now;

  if (!bw_mib)
    return;
  due = start_ms + (int64_t) (done * 1000 / ((uint64_t) bw_mib << 20));
  while (!bk_cancel && (now = kb_mono_ms()) < due)
    usleep((useconds_t) ((due - now > 100 ? 100 : due - now) * 1000));
}

static int copy_dirty(const struct bk_offline_disk *d, struct kb_progress *pr, uint64_t *done,
                      unsigned long bw, int64_t start_ms, char **ret_why)
{
  struct chain ch;
  struct out o;
  uint8_t *map = NULL, *buf = NULL;
  uint64_t ncl = (d->capacity + OUT_CLUSTER - 1) / OUT_CLUSTER, count = 0, cl;
  int r;

  memset(&o, 0, sizeof o);
  o.fd = -1;
  if (strlen(d->backing) > 1000) {
    *ret_why = kb_printf("backing file name too long");
    return -ENAMETOOLONG;
  }
  r = chain_open(&ch, d->source, ret_why);
  if (r == 0)
    r = dirty_map(ch.img[0], d->since, d->capacity, &map, &count, ret_why);
  if (r < 0)
    goto out;
  pr->total = *done + count * OUT_CLUSTER;
  o.size = d->capacity;
  o.l1_size = (ncl + L2_ENTRIES - 1) / L2_ENTRIES;
  o.next = 1;
  o.l2 = calloc(o.l1_size ? o.l1_size : 1, sizeof *o.l2);
  o.wbuf = malloc(WBUF_CLUSTERS * OUT_CLUSTER);
  buf = malloc(OUT_CLUSTER);
  if (!o.l2 || !o.wbuf || !buf) {
    r = -ENOMEM;
    goto out;
  }
  o.fd = open(d->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (o.fd < 0) {
    r = -errno;
    *ret_why = kb_printf("cannot create %s: %s", d->path, strerror(errno));
    goto out;
  }
  for (cl = 0; cl < ncl && r == 0; cl++) {
    uint64_t off = cl * OUT_CLUSTER, len = OUT_CLUSTER;
    if (!(map[cl / 8] & (1u << (cl % 8)))) {
      if (map[cl / 8] == 0 && cl % 8 == 0)
        cl += 7;
      continue;
    }
    if (off + len > d->capacity) {
      len = d->capacity - off;
      memset(buf + len, 0, OUT_CLUSTER - len);
    }
    r = chain_read(&ch, 0, off, len, buf);
    if (r < 0) {
      *ret_why = kb_printf("cannot read %s: %s", d->source, kb_qcow2_last_error(ch.img[0]));
      break;
    }
    r = out_cluster(&o, cl, buf);
    *done += len;
    kb_progress_update(pr, *done);
    throttle(bw, *done, start_ms);
    if (bk_cancel)
      r = -EINTR;
  }
  if (r == 0)
    r = out_finish(&o, d->backing);
  if (r < 0 && !*ret_why)
    *ret_why = kb_printf("cannot write %s: %s", d->path, strerror(-r));
out:
  chain_close(&ch);
  out_free(&o);
  free(map);
  free(buf);
  return r;
}

static int copy_full(const struct bk_offline_disk *d, unsigned long bw, char **ret_why)
{
  char rate[32];
  const char *argv[16] = { QEMU_IMG, "convert", "-q", "-W", "-f", d->format ? d->format : "raw", "-O", "qcow2",
                           "-o", "cluster_size=65536" };
  int n = 10, r;
  CLEANUP_FREE char *out = NULL;

  if (bw) {
    snprintf(rate, sizeof rate, "%luM", bw);
    argv[n++] = "-r";
    argv[n++] = rate;
  }
  argv[n++] = d->source;
  argv[n++] = d->path;
  argv[n] = NULL;

  if (kb_run(argv, &out) != 0) {
    *ret_why = kb_printf("qemu-img convert failed: %s", out && *out ? out : "?");
    return -EIO;
  }
  if (chmod(d->path, 0600) < 0)
    return -errno;
  /* qemu-img convert never flushes its output (cache mode "unsafe"): the
   * copy is on storage before the backup is recorded Ready, as the
   * incremental's own writer and the push job's target close make theirs. */
  r = kb_fsync_path(d->path);
  if (r < 0)
    *ret_why = kb_printf("cannot write %s to storage: %s", d->path, strerror(-r));
  return r;
}

/* Hold what a qemu reading the image holds and refuse writers: a qemu
 * starting the VM cannot get its write lock while this is held. */
static int lock_disk(const char *path, int *ret_fd)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct flock fl;

  if (fd < 0)
    return -errno;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = QEMU_LOCK_PERM_READ;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
    fl.l_start = QEMU_LOCK_UNSHARE_WRITE;
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
      /* Nobody may hold the write permission byte either. */
      struct flock t = fl;
      t.l_type = F_WRLCK;
      t.l_start = QEMU_LOCK_PERM_READ + 1;
      if (fcntl(fd, F_OFD_GETLK, &t) == 0 && t.l_type == F_UNLCK) {
        *ret_fd = fd;
        return 0;
      }
    }
  }
  close(fd);
  return -EBUSY;
}

/* Tests: KBOSS_TEST_HOLD_OFFLINE_MS holds the disks locked that long
 * before copying, so that a test can try to start the VM meanwhile. */
static void test_hold(void)
{
  const char *env = getenv("KBOSS_TEST_HOLD_OFFLINE_MS");
  long long ms;

  if (!env || kb_parse_ll(env, &ms) < 0 || ms <= 0)
    return;
  for (; ms > 0 && !bk_cancel; ms -= 50)
    usleep(50 * 1000);
}

int bk_offline_copy(struct bk_vm *v, struct bk_offline_disk *d, size_t n, struct kb_progress *pr,
                    unsigned long bandwidth, char **ret_error)
{
  int64_t start_ms = kb_mono_ms();
  int *fds = calloc(n + 1, sizeof *fds);
  uint64_t done = 0;
  size_t i, locked = 0;
  int r = 0;

  if (!fds)
    return -ENOMEM;
  for (i = 0; i < n && r == 0; i++) {
    r = lock_disk(d[i].source, &fds[i]);
    if (r < 0)
      *ret_error = kb_printf("VM %s: disk %s (%s) is in use by another process (%s)", v->name, d[i].target,
                             d[i].source, strerror(-r));
    else
      locked++;
  }
  if (r == 0 && virDomainIsActive(v->dom) != 0) {
    *ret_error = kb_printf("VM %s started while its offline backup began", v->name);
    r = -EBUSY;
  }
  if (r == 0)
    test_hold();
  for (i = 0; i < n && r == 0; i++) {
    CLEANUP_FREE char *why = NULL;
    int64_t t0 = kb_mono_ms();

    r = d[i].since ? copy_dirty(&d[i], pr, &done, bandwidth, start_ms, &why) : copy_full(&d[i], bandwidth, &why);
    if (r < 0)
      *ret_error = kb_printf("VM %s: disk %s: offline copy failed: %s", v->name, d[i].target,
                             why ? why : strerror(-r));
    else
      kb_debug("disk %s: offline %s copy in %lld ms", d[i].target, d[i].since ? "incremental" : "full",
               (long long) (kb_mono_ms() - t0));
  }
  for (i = 0; i < locked; i++)
    close(fds[i]);
  free(fds);
  return r;
}

/* The checkpoint libvirt would have made: the creation XML with its time. */
static char *redefine_xml(const char *cpxml)
{
  xmlDocPtr doc = xmlReadMemory(cpxml, (int) strlen(cpxml), "checkpoint.xml", NULL, XML_PARSE_NONET);
  xmlNodePtr root = doc ? xmlDocGetRootElement(doc) : NULL;
  xmlChar *mem = NULL;
  char *ret = NULL, t[32];
  int len = 0;

  if (!root) {
    xmlFreeDoc(doc);
    return NULL;
  }
  snprintf(t, sizeof t, "%lld", (long long) time(NULL));
  if (xmlNewTextChild(root, NULL, BAD_CAST "creationTime", BAD_CAST t)) {
    xmlDocDumpMemory(doc, &mem, &len);
    if (mem)
      ret = strndup((const char *) mem, (size_t) len);
  }
  xmlFree(mem);
  xmlFreeDoc(doc);
  return ret;
}

static int qemu_img_bitmap(const char *op, const char *path, const char *name, char **ret_out)
{
  const char *argv[] = { QEMU_IMG, "bitmap", op, "-f", "qcow2", path, name, NULL };
  return kb_run_to_end(argv, ret_out) == 0 ? 0 : -EIO;
}

/* `qemu-img bitmap OP` on every disk D[i] with WANT[i] at once (one
 * process per disk, started together: most of their time is start-up);
 * OK[i] tells which succeeded. */
static void qemu_img_bitmap_all(const char *op, struct bk_offline_disk *d, const char *const *names,
                                size_t n, bool *ok)
{
  pid_t *pids = calloc(n + 1, sizeof *pids);
  size_t i;

  for (i = 0; i < n; i++) {
    ok[i] = true;
    if (!names[i])
      continue;
    ok[i] = false;
    if (!pids)
      continue;
    pids[i] = fork();
    if (pids[i] == 0) {
      const char *argv[] = { QEMU_IMG, "bitmap", op, "-f", "qcow2", d[i].source, names[i], NULL };
      int nul = open("/dev/null", O_RDWR);
      if (nul >= 0) {
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(nul, 2);
      }
      execv(argv[0], (char *const *) argv);
      _exit(127);
    }
  }
  for (i = 0; pids && i < n; i++) {
    int status;
    if (!names[i] || pids[i] <= 0)
      continue;
    while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR)
      ;
    ok[i] = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  free(pids);
}

int bk_offline_checkpoint(struct bk_vm *v, const char *id, const char *cpxml, struct bk_offline_disk *d,
                          size_t n, char **ret_error)
{
  CLEANUP_FREE char *xml = cpxml ? redefine_xml(cpxml) : NULL;
  virDomainCheckpointPtr cp;
  size_t i;

  const char **names = calloc(n + 1, sizeof *names);
  bool *ok = calloc(n + 1, sizeof *ok);

  if (!names || !ok) {
    free(names);
    free(ok);
    return -ENOMEM;
  }
  /* Unusable old bitmaps go first (no use to any later backup). */
  for (i = 0; i < n; i++)
    names[i] = d[i].drop;
  qemu_img_bitmap_all("--remove", d, names, n, ok);
  for (i = 0; i < n; i++)
    if (!ok[i])
      kb_warn("VM %s: disk %s: cannot remove its unusable bitmap %s", v->name, d[i].target, d[i].drop);
  if (!cpxml || !xml) {
    free(names);
    free(ok);
    return cpxml ? -ENOMEM : 0;      /* isolated: no checkpoint */
  }
  /* libvirt cannot create a checkpoint of a stopped domain, but takes a
   * redefinition; the bitmaps follow (a kill -9 between leaves a
   * checkpoint that normalisation removes, with any bitmap). */
  cp = virDomainCheckpointCreateXML(v->dom, xml, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE);
  if (!cp) {
    *ret_error = kb_printf("VM %s: cannot define checkpoint %s: %s", v->name, id, kb_virt_error());
    free(names);
    free(ok);
    return -EIO;
  }
  virDomainCheckpointFree(cp);
  for (i = 0; i < n; i++)
    names[i] = d[i].bitmap ? id : NULL;
  qemu_img_bitmap_all("--add", d, names, n, ok);
  for (i = 0; i < n; i++) {
    CLEANUP_FREE char *out = NULL;
    if (ok[i])
      continue;
    /* Again, alone, for qemu-img's message. */
    if (qemu_img_bitmap("--add", d[i].source, id, &out) < 0) {
      *ret_error = kb_printf("VM %s: disk %s: cannot add bitmap %s: %s", v->name, d[i].target, id,
                             out && *out ? out : "qemu-img bitmap failed");
      free(names);
      free(ok);
      return -EIO;
    }
  }
  /* The previous checkpoint's bitmaps go now, all at once (its libvirt
   * metadata goes with the pruning after the records): should the
   * records fail, that checkpoint has no bitmaps and the next backup is
   * a full copy, never a wrong incremental. */
  for (i = 0; i < n; i++)
    names[i] = d[i].since && d[i].bitmap && !d[i].drop ? d[i].since : NULL;
  qemu_img_bitmap_all("--remove", d, names, n, ok);
  free(names);
  free(ok);
  return 0;
}

/* A new empty image laid out for qemu to fill without allocating any
 * metadata: the L1 table points to every L2 table the virtual size needs,
 * and the refcount table to refcount blocks covering the file as large as
 * the whole disk's data can make it.  qemu allocates an L2 table or a
 * refcount block with synchronous writes (an fdatasync of the whole file,
 * with all the data written so far, while the copy waits): a full push
 * backup of 3 GB stalled 6 to 8 times for about 0.27 s each
 * (docs/performance.md).  The L2 tables and the refcount blocks that count
 * nothing are holes in the file (all zeros: unallocated entries, free
 * clusters), so the image costs the same on disk as an empty one. */
int bk_qcow2_create(const char *path, unsigned long long size, const char *backing)
{
  const uint64_t per_rb = OUT_CLUSTER / 2;    /* 16-bit refcounts per block */
  uint64_t ncl = (size + OUT_CLUSTER - 1) / OUT_CLUSTER, l1_size = (ncl + L2_ENTRIES - 1) / L2_ENTRIES;
  uint64_t l1c = (l1_size * 8 + OUT_CLUSTER - 1) / OUT_CLUSTER, rbc = 1, rtc = 1, meta = 0, prev;
  uint64_t l1_at, rt_at, rb_at, l2_at, end;
  uint8_t *c = NULL;
  int fd, r = 0;

  if (backing && strlen(backing) > 1000)
    return -ENAMETOOLONG;
  if (l1c == 0)
    l1c = 1;
  /* Refcount blocks for the metadata and every data cluster, plus room
   * for a few more clusters qemu may want (a bitmap, a new L1). */
  do {
    prev = rbc + rtc;
    meta = 1 + l1c + rtc + rbc + l1_size;
    rbc = (meta + ncl + ncl / 64 + 64 + per_rb - 1) / per_rb;
    rtc = (rbc * 8 + OUT_CLUSTER - 1) / OUT_CLUSTER;
  } while (rbc + rtc != prev);
  l1_at = 1;
  rt_at = l1_at + l1c;
  rb_at = rt_at + rtc;
  l2_at = rb_at + rbc;
  end = l2_at + l1_size;

  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  c = malloc(OUT_CLUSTER);
  if (!c)
    r = -ENOMEM;
  if (r == 0 && ftruncate(fd, (off_t) (end * OUT_CLUSTER)) < 0)
    r = -errno;
  /* L1: every entry to its L2 table (a hole, all unallocated); then the
   * refcounts of the metadata. */
  if (r == 0)
    r = write_table(fd, c, l1_at, l1c, l1_size, l2_at, QCOW2_OFLAG_COPIED);
  if (r == 0)
    r = write_refcounts(fd, c, rt_at, rtc, rb_at, rbc, end);
  if (r == 0)
    r = write_header(fd, c, size, l1_size, l1_at, rt_at, rtc, backing);
  if (r == 0 && fdatasync(fd) < 0)
    r = -errno;
  free(c);
  close(fd);
  if (r < 0)
    (void) unlink(path);
  return r;
}
