/* The compressing qcow2 writer.
 *
 * Pipeline: the calling thread reads batches of guest clusters from the
 * input (coalescing contiguous host runs into one pread), N worker threads
 * decompress/compress the clusters of a batch, and one writer thread takes
 * finished batches strictly in order and lays them out sequentially in the
 * output (compressed clusters packed byte by byte, uncompressed ones and L2
 * tables cluster-aligned), buffering writes into large pwrites.  At the end
 * the writer appends the L1 table, the refcount table and blocks, and then
 * writes the header cluster.  Every compressed cluster is decompressed
 * again by its worker and compared with the input before it goes to the
 * writer; with opts->hash the finished file is hashed from the pages just
 * written.  The output's clusters may be larger than the input's (an image
 * without a backing file): then one output cluster gathers several input
 * clusters.  See docs/compression.md. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libdeflate.h>
#include <zstd.h>

#include "chain.h"
#include "hash.h"
#include "qcow2.h"
#include "qcow2-format.h"
#include "util.h"

#define BATCH_BYTES (2u * 1024 * 1024)
#define BATCH_MAX_CLUSTERS 512u
#define WBUF_FLUSH (8u * 1024 * 1024)
#define REFCOUNT_MAX 0xffffu         /* refcount_order 4 */

enum out_kind { OUT_UNALLOC, OUT_ZERO, OUT_RAW, OUT_COMPRESSED };
enum slot_state { SLOT_FREE, SLOT_READY, SLOT_BUSY, SLOT_DONE };

struct job {
  enum slot_state state;
  uint64_t seq;
  uint64_t first;               /* first output cluster */
  unsigned n;                   /* output clusters */
  unsigned nin;                 /* input clusters (n * ratio, fewer at the end) */
  uint64_t bytes_read;
  uint8_t *kind;                /* nin: enum kb_qcow2_kind of the input */
  uint8_t *okind;               /* n: enum out_kind */
  uint8_t *data;                /* n * cs: input data (DATA clusters), decompressed data */
  uint8_t **cin;                /* nin: compressed input extents */
  size_t *cin_len;
  uint8_t *out;                 /* n * cs: compressed output */
  size_t *out_len;
};

struct ctx {
  const struct kb_compress_opts *opts;
  struct kb_qcow2 *img;
  const struct kb_qcow2_info *info;
  uint64_t cs;                  /* output cluster size */
  unsigned cbits;
  uint64_t ics;                 /* input cluster size */
  unsigned ratio;               /* cs / ics */
  uint64_t nb_clusters;         /* output clusters */
  unsigned batch;               /* output clusters per batch */
  uint64_t nb_batches;
  int out_fd;

  pthread_mutex_t lock;
  pthread_cond_t cond_ready, cond_done, cond_free;
  struct job *jobs;
  unsigned nslots;
  uint64_t next_fill, next_compress, next_write;
  bool stop;                    /* an error, cancel or timeout: everyone leaves */
  bool producer_done;
  int err;
  char errmsg[512];

  /* Output I/O: the writer fills one buffer while the I/O thread writes
   * the other, so a slow pwrite (dirty-page throttling on a busy disk)
   * does not stall the ordered writer and with it the whole pipeline. */
  pthread_mutex_t io_lock;
  pthread_cond_t io_cond;
  uint8_t *io_buf;              /* handed over, being written */
  size_t io_len;
  uint64_t io_off;
  bool io_pending, io_quit;
  int io_err;
  uint8_t *wbuf_spare;          /* the buffer the writer does not fill */

  /* Input readahead (a descriptor only for posix_fadvise). */
  int ra_fd;
  uint64_t ra_end;              /* advised up to here */

  /* Writer state, touched only by the writer thread. */
  uint8_t *wbuf;
  size_t wbuf_len, wbuf_cap;
  uint64_t wbuf_off;            /* file offset of wbuf[0] */
  uint64_t pos;                 /* next free byte of the output */
  uint64_t gap_off, gap_len;    /* unused tail of a compressed cluster, still in wbuf */
  uint16_t *rc;                 /* refcount per host cluster */
  uint64_t rc_len;
  uint64_t *l1;
  uint64_t l1_size;
  uint64_t *l2;                 /* L2 table being filled (host order) */
  uint64_t l2_index;            /* its L1 index, UINT64_MAX none */
  bool l2_used;
  uint64_t l2_entries;
  uint64_t csize_shift;
  struct kb_compress_stats st;
  int64_t start_ms;
  uint64_t read_done;
};

static void fail(struct ctx *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Record the first failure and make everyone stop.  Caller holds no lock. */
static void fail(struct ctx *c, int err, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock(&c->lock);
  if (!c->err) {
    c->err = err;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
  }
  c->stop = true;
  pthread_cond_broadcast(&c->cond_ready);
  pthread_cond_broadcast(&c->cond_done);
  pthread_cond_broadcast(&c->cond_free);
  pthread_mutex_unlock(&c->lock);
}

/* Cancel flag or deadline: 0 or the error already recorded. */
static int check_interrupt(struct ctx *c)
{
  const struct kb_compress_opts *o = c->opts;

  if (o->cancel && *o->cancel) {
    fail(c, -ECANCELED, "cancelled");
    return -ECANCELED;
  }
  if (o->deadline_ms > 0 && kb_mono_ms() >= o->deadline_ms) {
    fail(c, -ETIMEDOUT, "timed out");
    return -ETIMEDOUT;
  }
  return 0;
}

static bool is_zero(const uint8_t *p, size_t len)
{
  static const uint8_t z[64];

  if (len < 64)
    return memcmp(p, z, len) == 0;
  return memcmp(p, z, 64) == 0 && memcmp(p, p + 64, len - 64) == 0;
}

/* ---- workers ---- */

struct worker {
  struct ctx *c;
  ZSTD_CCtx *zc;
  ZSTD_DCtx *zd;
  struct libdeflate_compressor *dc;
  struct libdeflate_decompressor *dd;
  uint8_t *check;               /* one cluster: the compressed data decompressed again */
};

static size_t compress_one(struct worker *w, const uint8_t *src, uint8_t *dst)
{
  struct ctx *c = w->c;
  size_t limit = c->cs - 1;     /* must come out smaller than a cluster */

  if (c->opts->algorithm == KB_QCOW2_ZSTD) {
    size_t r = ZSTD_compress2(w->zc, dst, limit, src, c->cs);
    return ZSTD_isError(r) ? 0 : r;
  } else {
    /* Raw deflate, as qemu's zlib type.  libdeflate returns 0 when the
     * result would not fit in limit bytes. */
    return libdeflate_deflate_compress(w->dc, src, c->cs, dst, limit);
  }
}

/* Does the compressed cluster SRC decompress to exactly DATA? */
static bool decompresses_to(struct worker *w, const uint8_t *src, size_t len, const uint8_t *data)
{
  struct ctx *c = w->c;

  if (c->opts->algorithm == KB_QCOW2_ZSTD) {
    size_t r = ZSTD_decompressDCtx(w->zd, w->check, c->cs, src, len);
    if (ZSTD_isError(r) || r != c->cs)
      return false;
  } else {
    size_t got = 0;
    if (libdeflate_deflate_decompress(w->dd, src, len, w->check, c->cs, &got) != LIBDEFLATE_SUCCESS ||
        got != c->cs)
      return false;
  }
  return memcmp(w->check, data, c->cs) == 0;
}

static int process_job(struct worker *w, struct job *j)
{
  struct ctx *c = w->c;
  unsigned o, k;

  for (o = 0; o < j->n; o++) {
    uint8_t *data = j->data + (size_t) o * c->cs;
    unsigned nalloc = 0, nzero = 0;

    /* The input clusters this output cluster gathers (one, unless the
     * output's clusters are larger; then there is no backing file and an
     * unallocated input cluster reads as zeros). */
    for (k = 0; k < c->ratio; k++) {
      unsigned i = o * c->ratio + k;
      uint8_t *sub = data + (size_t) k * c->ics;

      switch (i < j->nin ? j->kind[i] : KB_QCOW2_UNALLOCATED) {
      case KB_QCOW2_ZERO:
        nzero++;
        /* fall through */
      case KB_QCOW2_UNALLOCATED:
        if (c->ratio > 1)
          memset(sub, 0, c->ics);
        break;
      case KB_QCOW2_COMPRESSED:
        if (kb_qcow2_decompress(c->info->compression_type, j->cin[i], j->cin_len[i], sub, c->ics) < 0) {
          fail(c, -EIO, "input cluster %llu does not decompress",
               (unsigned long long) ((j->first * c->ratio) + i));
          return -EIO;
        }
        free(j->cin[i]);
        j->cin[i] = NULL;
        nalloc++;
        break;
      default:
        nalloc++;
        break;
      }
    }
    if (!nalloc) {
      j->okind[o] = nzero ? OUT_ZERO : OUT_UNALLOC;
      continue;
    }
    /* The part of the last cluster beyond the virtual size reads as zeros. */
    if ((j->first + o + 1) * c->cs > c->info->virtual_size) {
      uint64_t keep = c->info->virtual_size - (j->first + o) * c->cs;
      memset(data + keep, 0, c->cs - keep);
    }
    if (is_zero(data, c->cs)) {
      j->okind[o] = OUT_ZERO;
      continue;
    }
    j->out_len[o] = compress_one(w, data, j->out + (size_t) o * c->cs);
    j->okind[o] = j->out_len[o] ? OUT_COMPRESSED : OUT_RAW;
    /* Proven here, in memory, so the output never has to be read back. */
    if (j->out_len[o] && !decompresses_to(w, j->out + (size_t) o * c->cs, j->out_len[o], data)) {
      fail(c, -EIO, "cluster %llu: the compressed data does not decompress to the input",
           (unsigned long long) (j->first + o));
      return -EIO;
    }
  }
  return 0;
}

static void *worker_main(void *arg)
{
  struct worker *w = arg;
  struct ctx *c = w->c;

  pthread_mutex_lock(&c->lock);
  for (;;) {
    struct job *j;
    int r;

    /* Slots in [next_compress, next_fill) are READY. */
    while (!c->stop && c->next_compress >= c->next_fill && !c->producer_done)
      pthread_cond_wait(&c->cond_ready, &c->lock);
    if (c->stop || c->next_compress >= c->next_fill)
      break;
    j = &c->jobs[c->next_compress % c->nslots];
    j->state = SLOT_BUSY;
    c->next_compress++;
    pthread_mutex_unlock(&c->lock);
    r = process_job(w, j);
    pthread_mutex_lock(&c->lock);
    if (r < 0)
      break;
    j->state = SLOT_DONE;
    pthread_cond_broadcast(&c->cond_done);
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

/* ---- writer ---- */

static void *io_main(void *arg)
{
  struct ctx *c = arg;

  pthread_mutex_lock(&c->io_lock);
  for (;;) {
    while (!c->io_pending && !c->io_quit)
      pthread_cond_wait(&c->io_cond, &c->io_lock);
    if (!c->io_pending)
      break;
    {
      uint8_t *buf = c->io_buf;
      size_t len = c->io_len, done = 0;
      uint64_t off = c->io_off;
      int err = 0;

      pthread_mutex_unlock(&c->io_lock);
      while (done < len && !err) {
        ssize_t r = pwrite(c->out_fd, buf + done, len - done, (off_t) (off + done));
        if (r < 0 && errno != EINTR)
          err = -errno;
        else if (r > 0)
          done += (size_t) r;
      }
      /* Start writing back what was just written: the fsync at the end
       * then finds little left to write (it was 0.1-0.15 s of a 2.8 s job,
       * all of it after the last cluster was compressed). Only a hint. */
      if (!err)
        (void) sync_file_range(c->out_fd, (off_t) off, (off_t) len, SYNC_FILE_RANGE_WRITE);
      pthread_mutex_lock(&c->io_lock);
      if (err && !c->io_err)
        c->io_err = err;
      c->io_pending = false;
      pthread_cond_broadcast(&c->io_cond);
    }
  }
  pthread_mutex_unlock(&c->io_lock);
  return NULL;
}

/* Wait until the I/O thread has written what it was given: 0 or the
 * first write error. */
static int io_drain(struct ctx *c)
{
  int r;

  pthread_mutex_lock(&c->io_lock);
  while (c->io_pending)
    pthread_cond_wait(&c->io_cond, &c->io_lock);
  r = c->io_err;
  pthread_mutex_unlock(&c->io_lock);
  return r;
}

/* Hand the filled buffer to the I/O thread and continue in the other. */
static int wbuf_flush(struct ctx *c)
{
  uint8_t *full;
  int r;

  if (c->wbuf_len) {
    r = io_drain(c);
    if (r < 0)
      return r;
    full = c->wbuf;
    c->wbuf = c->wbuf_spare;
    c->wbuf_spare = full;
    pthread_mutex_lock(&c->io_lock);
    c->io_buf = full;
    c->io_len = c->wbuf_len;
    c->io_off = c->wbuf_off;
    c->io_pending = true;
    pthread_cond_broadcast(&c->io_cond);
    pthread_mutex_unlock(&c->io_lock);
  }
  c->wbuf_off += c->wbuf_len;
  c->wbuf_len = 0;
  c->gap_len = 0;
  return 0;
}

static int wbuf_append(struct ctx *c, const void *src, size_t len)
{
  int r;

  if (c->wbuf_len + len > c->wbuf_cap) {
    r = wbuf_flush(c);
    if (r < 0)
      return r;
  }
  if (src)
    memcpy(c->wbuf + c->wbuf_len, src, len);
  else
    memset(c->wbuf + c->wbuf_len, 0, len);
  c->wbuf_len += len;
  c->pos += len;
  return 0;
}

static int align_pos(struct ctx *c)
{
  uint64_t rem = c->pos & (c->cs - 1);
  return rem ? wbuf_append(c, NULL, c->cs - rem) : 0;
}

static int rc_grow(struct ctx *c, uint64_t cluster)
{
  if (cluster >= c->rc_len) {
    uint64_t n = c->rc_len ? c->rc_len : 1024;
    uint16_t *p;

    while (n <= cluster)
      n *= 2;
    p = realloc(c->rc, n * sizeof *p);
    if (!p)
      return -ENOMEM;
    memset(p + c->rc_len, 0, (n - c->rc_len) * sizeof *p);
    c->rc = p;
    c->rc_len = n;
  }
  return 0;
}

/* Allocate one whole cluster at the (aligned) end; its offset. */
static int alloc_cluster(struct ctx *c, const void *src, uint64_t *ret)
{
  uint64_t gap_off = c->pos, gap_len = (c->cs - (c->pos & (c->cs - 1))) & (c->cs - 1);
  int r;

  if (c->wbuf_len + gap_len + c->cs > c->wbuf_cap) {
    r = wbuf_flush(c);
    if (r < 0)
      return r;
  }
  r = align_pos(c);
  if (r < 0)
    return r;
  /* Like qemu, later compressed clusters may fill the skipped tail. */
  if (gap_len) {
    c->gap_off = gap_off;
    c->gap_len = gap_len;
  }
  r = rc_grow(c, c->pos >> c->cbits);
  if (r < 0)
    return r;
  c->rc[c->pos >> c->cbits] = 1;
  *ret = c->pos;
  return wbuf_append(c, src, c->cs);
}

/* Bytes of a metadata cluster worth writing: up to its last non-zero
 * byte, in 4 KiB blocks.  With clusters above 64 KiB the rest is left as a
 * hole (it reads as zeros): an L2 table, L1 table or refcount block of a
 * 2 MiB cluster is mostly empty, and written out whole they would add
 * megabytes to every backup. */
#define META_SPARSE_MIN (128u * 1024)
static size_t meta_used(const struct ctx *c, const uint8_t *p)
{
  size_t n = c->cs;

  if (c->cs < META_SPARSE_MIN)
    return c->cs;
  while (n > 0 && p[n - 1] == 0)
    n--;
  n = (n + 4095) & ~(size_t) 4095;
  return n ? n : 4096;
}

/* A metadata cluster (L2, L1, refcount table or block) at the aligned end. */
static int alloc_meta(struct ctx *c, const uint8_t *src, uint64_t *ret)
{
  size_t used = meta_used(c, src);
  int r;

  if (used == c->cs)
    return alloc_cluster(c, src, ret);
  if (c->pos & (c->cs - 1)) {
    /* The rest of the current cluster becomes a hole too. */
    r = wbuf_flush(c);
    if (r < 0)
      return r;
    c->pos = (c->pos + c->cs - 1) & ~(c->cs - 1);
    c->wbuf_off = c->pos;
  }
  r = rc_grow(c, c->pos >> c->cbits);
  if (r < 0)
    return r;
  c->rc[c->pos >> c->cbits] = 1;
  *ret = c->pos;
  r = wbuf_append(c, src, used);
  if (r == 0)
    r = wbuf_flush(c);
  if (r < 0)
    return r;
  c->pos += c->cs - used;       /* a hole */
  c->wbuf_off = c->pos;
  return 0;
}

static int flush_l2(struct ctx *c)
{
  CLEANUP_FREE uint8_t *be = NULL;
  uint64_t i, off;
  int r;

  if (c->l2_index == UINT64_MAX || !c->l2_used)
    return 0;
  be = malloc(c->cs);
  if (!be)
    return -ENOMEM;
  for (i = 0; i < c->l2_entries; i++)
    kb_put_be64(be + i * 8, c->l2[i]);
  r = alloc_meta(c, be, &off);
  if (r < 0)
    return r;
  c->l1[c->l2_index] = off | QCOW2_OFLAG_COPIED;
  return 0;
}

static int set_l2(struct ctx *c, uint64_t cluster, uint64_t entry)
{
  uint64_t l1i = cluster / c->l2_entries;
  int r;

  if (l1i != c->l2_index) {
    r = flush_l2(c);
    if (r < 0)
      return r;
    memset(c->l2, 0, c->cs);
    c->l2_index = l1i;
    c->l2_used = false;
  }
  if (entry) {
    c->l2[cluster % c->l2_entries] = entry;
    c->l2_used = true;
  }
  return 0;
}

static int place_compressed(struct ctx *c, const uint8_t *data, size_t len, uint64_t *ret_entry)
{
  uint64_t off, first, last, k, nsec;
  int r;

  r = rc_grow(c, (c->pos >> c->cbits) + 2);
  if (r < 0)
    return r;
  if (c->gap_len >= len && c->gap_off >= c->wbuf_off &&
      c->rc[c->gap_off >> c->cbits] < REFCOUNT_MAX) {
    off = c->gap_off;
    memcpy(c->wbuf + (off - c->wbuf_off), data, len);
    c->gap_off += len;
    c->gap_len -= len;
    c->rc[off >> c->cbits]++;   /* the gap lies within one host cluster */
    nsec = ((off + len - 1) >> 9) - (off >> 9);
    *ret_entry = QCOW2_OFLAG_COMPRESSED | (nsec << c->csize_shift) | off;
    return 0;
  }
  /* A host cluster whose refcount is full takes no more compressed data. */
  if (c->rc[c->pos >> c->cbits] >= REFCOUNT_MAX) {
    r = align_pos(c);
    if (r < 0)
      return r;
  }
  off = c->pos;
  first = off >> c->cbits;
  last = (off + len - 1) >> c->cbits;
  r = rc_grow(c, last + 1);
  if (r < 0)
    return r;
  for (k = first; k <= last; k++)
    c->rc[k]++;
  nsec = ((off + len - 1) >> 9) - (off >> 9);
  *ret_entry = QCOW2_OFLAG_COMPRESSED | (nsec << c->csize_shift) | off;
  return wbuf_append(c, data, len);
}

static int write_job(struct ctx *c, struct job *j)
{
  unsigned i;
  int r;

  for (i = 0; i < j->n; i++) {
    uint64_t cl = j->first + i, entry = 0, off;

    switch (j->okind[i]) {
    case OUT_UNALLOC:
      c->st.clusters_unallocated++;
      break;
    case OUT_ZERO:
      entry = QCOW2_OFLAG_ZERO;
      c->st.clusters_zero++;
      break;
    case OUT_RAW:
      r = alloc_cluster(c, j->data + (size_t) i * c->cs, &off);
      if (r < 0)
        return r;
      entry = off | QCOW2_OFLAG_COPIED;
      c->st.clusters_uncompressed++;
      break;
    case OUT_COMPRESSED:
      r = place_compressed(c, j->out + (size_t) i * c->cs, j->out_len[i], &entry);
      if (r < 0)
        return r;
      c->st.clusters_compressed++;
      break;
    }
    r = set_l2(c, cl, entry);
    if (r < 0)
      return r;
  }
  return 0;
}

static void rate_limit(struct ctx *c)
{
  uint64_t rate = c->opts->rate_limit;

  if (!rate)
    return;
  for (;;) {
    int64_t due = c->start_ms + (int64_t) (c->read_done * 1000 / rate);
    int64_t now = kb_mono_ms();
    struct timespec ts;
    int64_t ms;

    if (now >= due || c->stop)
      return;
    if (check_interrupt(c) < 0)
      return;
    ms = due - now > 100 ? 100 : due - now;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000;
    nanosleep(&ts, NULL);
  }
}

static int write_metadata(struct ctx *c);

static void *writer_main(void *arg)
{
  struct ctx *c = arg;
  uint64_t b;
  int r;

  for (b = 0; b < c->nb_batches; b++) {
    struct job *j = &c->jobs[b % c->nslots];

    pthread_mutex_lock(&c->lock);
    while (!c->stop && !(c->next_write == b && b < c->next_fill && j->state == SLOT_DONE))
      pthread_cond_wait(&c->cond_done, &c->lock);
    bool stop = c->stop;
    pthread_mutex_unlock(&c->lock);
    if (stop)
      return NULL;

    r = write_job(c, j);
    if (r < 0) {
      fail(c, r, "cannot write the output: %s", strerror(-r));
      return NULL;
    }
    c->read_done += j->bytes_read;

    pthread_mutex_lock(&c->lock);
    j->state = SLOT_FREE;
    c->next_write++;
    pthread_cond_broadcast(&c->cond_free);
    pthread_mutex_unlock(&c->lock);

    if (c->opts->progress) {
      uint64_t done = (j->first + j->n) * c->cs;
      if (done > c->info->virtual_size)
        done = c->info->virtual_size;
      if (c->opts->progress(done, c->info->virtual_size, c->opts->progress_opaque) != 0) {
        fail(c, -ECANCELED, "cancelled");
        return NULL;
      }
    }
    if (check_interrupt(c) < 0)
      return NULL;
    rate_limit(c);
  }
  r = write_metadata(c);
  if (r < 0)
    fail(c, r, "cannot write the output: %s", strerror(-r));
  return NULL;
}

/* The header cluster: header, extensions, backing file name. */
static int build_header(struct ctx *c, uint8_t *h, uint64_t l1_off, uint64_t rt_off, uint64_t rt_clusters)
{
  const struct kb_qcow2_info *in = c->info;
  size_t pos = QCOW2_V3_HEADER_LEN;
  size_t bf_len = in->backing_file ? strlen(in->backing_file) : 0;

  memset(h, 0, c->cs);
  kb_put_be32(h, QCOW2_MAGIC);
  kb_put_be32(h + 4, 3);
  kb_put_be32(h + 20, c->cbits);
  kb_put_be64(h + 24, in->virtual_size);
  kb_put_be32(h + 36, (uint32_t) c->l1_size);
  kb_put_be64(h + 40, l1_off);
  kb_put_be64(h + 48, rt_off);
  kb_put_be32(h + 56, (uint32_t) rt_clusters);
  if (c->opts->algorithm == KB_QCOW2_ZSTD) {
    kb_put_be64(h + 72, QCOW2_INCOMPAT_COMPRESSION);
    h[104] = KB_QCOW2_ZSTD;
  }
  kb_put_be32(h + 96, 4);
  kb_put_be32(h + 100, QCOW2_V3_HEADER_LEN);
  if (in->backing_format) {
    size_t fl = strlen(in->backing_format);
    if (pos + 8 + ((fl + 7) & ~(size_t) 7) > c->cs)
      return -ENAMETOOLONG;
    kb_put_be32(h + pos, QCOW2_EXT_BACKING_FORMAT);
    kb_put_be32(h + pos + 4, (uint32_t) fl);
    memcpy(h + pos + 8, in->backing_format, fl);
    pos += 8 + ((fl + 7) & ~(size_t) 7);
  }
  pos += 8;                     /* end of extensions */
  if (bf_len) {
    if (pos + bf_len > c->cs)
      return -ENAMETOOLONG;
    memcpy(h + pos, in->backing_file, bf_len);
    kb_put_be64(h + 8, pos);
    kb_put_be32(h + 16, (uint32_t) bf_len);
  }
  return 0;
}

static int write_metadata(struct ctx *c)
{
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t l1_off, l1_bytes, i, n0, n_rb = 0, n_rt = 0, total, per_block = c->cs / 2;
  int r;

  r = flush_l2(c);
  if (r < 0)
    return r;
  r = align_pos(c);
  if (r < 0)
    return r;

  /* L1 table (at least one cluster, so the offset is never 0). */
  l1_off = c->pos;
  l1_bytes = c->l1_size * 8;
  buf = calloc(1, c->cs);
  if (!buf)
    return -ENOMEM;
  for (i = 0; i == 0 || i * c->cs < l1_bytes; i++) {
    uint64_t e, off;
    memset(buf, 0, c->cs);
    for (e = 0; e < c->l2_entries && i * c->l2_entries + e < c->l1_size; e++)
      kb_put_be64(buf + e * 8, c->l1[i * c->l2_entries + e]);
    r = alloc_meta(c, buf, &off);
    if (r < 0)
      return r;
  }

  /* Refcount table and blocks cover everything, themselves included. */
  n0 = c->pos >> c->cbits;
  for (;;) {
    uint64_t rb, rt;
    total = n0 + n_rb + n_rt;
    rb = (total + per_block - 1) / per_block;
    rt = (rb * 8 + c->cs - 1) / c->cs;
    if (rb == n_rb && rt == n_rt)
      break;
    n_rb = rb;
    n_rt = rt;
  }
  r = rc_grow(c, total);
  if (r < 0)
    return r;
  for (i = n0; i < total; i++)
    c->rc[i] = 1;
  uint64_t rt_off = c->pos;
  for (i = 0; i < n_rt; i++) {
    uint64_t e, off;
    memset(buf, 0, c->cs);
    for (e = 0; e < c->cs / 8; e++) {
      uint64_t blk = i * (c->cs / 8) + e;
      if (blk < n_rb)
        kb_put_be64(buf + e * 8, (n0 + n_rt + blk) << c->cbits);
    }
    r = alloc_meta(c, buf, &off);
    if (r < 0)
      return r;
  }
  for (i = 0; i < n_rb; i++) {
    uint64_t e, off;
    memset(buf, 0, c->cs);
    for (e = 0; e < per_block; e++) {
      uint64_t cl = i * per_block + e;
      if (cl < total)
        kb_put_be16(buf + e * 2, c->rc[cl]);
    }
    r = alloc_meta(c, buf, &off);
    if (r < 0)
      return r;
  }
  r = wbuf_flush(c);
  if (r == 0)
    r = io_drain(c);
  if (r < 0)
    return r;
  /* A trailing hole still belongs to the file. */
  if (ftruncate(c->out_fd, (off_t) c->pos) < 0)
    return -errno;

  /* The header last: until it is written the file is not a valid image. */
  r = build_header(c, buf, l1_off, rt_off, n_rt);
  if (r < 0)
    return r;
  {
    size_t used = meta_used(c, buf);
    if (pwrite(c->out_fd, buf, used, 0) != (ssize_t) used)
      return errno ? -errno : -EIO;
  }
  c->st.output_file_size = c->pos;
  return 0;
}

/* ---- producer (the calling thread) ---- */

/* Ask the kernel to read ahead of the producer: it reads one batch at a
 * time and waits for each, so without this a cold input is read with one
 * request in flight. Backups are laid out mostly in guest order. */
#define READAHEAD_BYTES (32u << 20)
static void readahead_from(struct ctx *c, uint64_t host_off)
{
  uint64_t from;

  if (c->ra_fd < 0)
    return;
  if (host_off + READAHEAD_BYTES / 2 < c->ra_end && host_off < c->ra_end)
    return;
  from = host_off > c->ra_end ? host_off : c->ra_end;
  if (host_off + READAHEAD_BYTES < from) /* far behind what was advised: a jump back */
    from = host_off;
  (void) posix_fadvise(c->ra_fd, (off_t) from, (off_t) (host_off + READAHEAD_BYTES - from), POSIX_FADV_WILLNEED);
  c->ra_end = host_off + READAHEAD_BYTES;
}

static int read_batch(struct ctx *c, struct job *j, uint64_t b)
{
  uint64_t run_host = 0, in_first;
  unsigned run_start = 0, run_len = 0, i;
  int r;

  j->first = b * c->batch;
  j->n = c->batch;
  if (j->first + j->n > c->nb_clusters)
    j->n = (unsigned) (c->nb_clusters - j->first);
  in_first = j->first * c->ratio;
  j->nin = j->n * c->ratio;
  if (in_first + j->nin > c->info->nb_clusters)
    j->nin = (unsigned) (c->info->nb_clusters - in_first);
  j->bytes_read = 0;

  for (i = 0; i <= j->nin; i++) {
    struct kb_qcow2_cluster cl = { .kind = KB_QCOW2_UNALLOCATED };

    if (i < j->nin) {
      r = kb_qcow2_cluster_at(c->img, in_first + i, &cl);
      if (r < 0) {
        fail(c, r, "%s", kb_qcow2_last_error(c->img));
        return r;
      }
      j->kind[i] = (uint8_t) cl.kind;
    }
    /* Extend or flush the run of host-contiguous data clusters. */
    if (cl.kind == KB_QCOW2_DATA && run_len && run_host + (uint64_t) run_len * c->ics == cl.host_offset) {
      run_len++;
      continue;
    }
    if (run_len) {
      size_t len = (size_t) run_len * c->ics;
      r = kb_qcow2_pread(c->img, j->data + (size_t) run_start * c->ics, len, run_host);
      if (r < 0) {
        fail(c, r, "cannot read the input: %s", strerror(-r));
        return r;
      }
      j->bytes_read += len;
      run_len = 0;
    }
    if (cl.kind == KB_QCOW2_DATA) {
      readahead_from(c, cl.host_offset);
      run_host = cl.host_offset;
      run_start = i;
      run_len = 1;
    } else if (cl.kind == KB_QCOW2_COMPRESSED) {
      readahead_from(c, cl.host_offset);
      j->cin[i] = malloc(cl.host_len);
      if (!j->cin[i]) {
        fail(c, -ENOMEM, "out of memory");
        return -ENOMEM;
      }
      j->cin_len[i] = cl.host_len;
      r = kb_qcow2_pread(c->img, j->cin[i], cl.host_len, cl.host_offset);
      if (r < 0) {
        fail(c, r, "cannot read the input: %s", strerror(-r));
        return r;
      }
      j->bytes_read += cl.host_len;
    }
  }
  return 0;
}

static void producer(struct ctx *c)
{
  uint64_t b;

  for (b = 0; b < c->nb_batches; b++) {
    struct job *j = &c->jobs[b % c->nslots];

    pthread_mutex_lock(&c->lock);
    while (!c->stop && j->state != SLOT_FREE)
      pthread_cond_wait(&c->cond_free, &c->lock);
    bool stop = c->stop;
    pthread_mutex_unlock(&c->lock);
    if (stop || check_interrupt(c) < 0)
      break;
    if (read_batch(c, j, b) < 0)
      break;
    pthread_mutex_lock(&c->lock);
    j->seq = b;
    j->state = SLOT_READY;
    c->next_fill = b + 1;
    pthread_cond_broadcast(&c->cond_ready);
    pthread_mutex_unlock(&c->lock);
  }
  pthread_mutex_lock(&c->lock);
  c->producer_done = true;
  pthread_cond_broadcast(&c->cond_ready);
  pthread_mutex_unlock(&c->lock);
}

/* ---- entry point ---- */

void kb_compress_opts_init(struct kb_compress_opts *opts)
{
  memset(opts, 0, sizeof *opts);
  opts->algorithm = KB_QCOW2_ZSTD;
  opts->threads = 1;
  opts->zstd_level = 3;
  opts->zstd_hash_log = 16;
  opts->zlib_level = 6;
}

static int set_err(char **errmsg, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int set_err(char **errmsg, int r, const char *fmt, ...)
{
  va_list ap;

  if (errmsg) {
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
      s = NULL;
    va_end(ap);
    free(*errmsg);
    *errmsg = s;
  }
  return r;
}

static int fsync_dir_of(const char *path)
{
  CLEANUP_FREE char *copy = strdup(path);
  CLEANUP_CLOSE int dfd = -1;

  if (!copy)
    return -ENOMEM;
  dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) < 0)
    return -errno;
  return 0;
}

/* XXH3-128 of the finished file.  The header cluster at offset 0 is
 * written last (it points to the metadata at the end), so the file cannot
 * be hashed in order while it is written; its pages are hashed right after
 * the fsync instead, while they are still in the page cache. */
static int hash_output(int fd, char hex[KB_HASH_HEX_LEN + 1])
{
  struct kb_hash *h;
  struct stat st;
  uint8_t *map;
  size_t off, step = 8u << 20;

  if (fstat(fd, &st) < 0)
    return -errno;
  h = kb_hash_new();
  if (!h)
    return -ENOMEM;
  if (st.st_size == 0) {
    kb_hash_finish(h, hex);
    return 0;
  }
  /* MAP_POPULATE: the pages are in the page cache; mapping them all in
   * one call is much cheaper than a page fault every few pages. */
  map = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (map == MAP_FAILED) {
    int r = -errno;
    kb_hash_finish(h, hex);
    return r;
  }
  (void) madvise(map, (size_t) st.st_size, MADV_SEQUENTIAL);
  for (off = 0; off < (size_t) st.st_size; off += step)
    kb_hash_update(h, map + off, (size_t) st.st_size - off < step ? (size_t) st.st_size - off : step);
  munmap(map, (size_t) st.st_size);
  kb_hash_finish(h, hex);
  return 0;
}

struct fsync_arg {
  int fd;
  int err;
};

static void *fsync_main(void *arg)
{
  struct fsync_arg *fa = arg;

  fa->err = fsync(fa->fd) < 0 ? -errno : 0;
  return NULL;
}

static void free_jobs(struct ctx *c)
{
  unsigned s, i;

  if (!c->jobs)
    return;
  for (s = 0; s < c->nslots; s++) {
    struct job *j = &c->jobs[s];
    if (j->cin)
      for (i = 0; i < c->batch * c->ratio; i++)
        free(j->cin[i]);
    free(j->cin);
    free(j->cin_len);
    free(j->kind);
    free(j->okind);
    free(j->data);
    free(j->out);
    free(j->out_len);
  }
  free(c->jobs);
}

/* How many threads compress: the parallelism asked for, but no more than
 * the CPUs this process may run on.  More would only take turns on the
 * same cores, each turn bringing its own zstd tables and cluster buffers
 * (about 3 MiB a thread) back into the caches: on the 2-core test
 * machine 8 threads used 10-15 % more CPU than 2 and took 17 % longer
 * (docs/compression.md, "Fourth round").  The ring still holds
 * 2 x threads + 2 batches of the parallelism asked for. */
static unsigned worker_count(unsigned asked)
{
  cpu_set_t set;
  int n;

  if (sched_getaffinity(0, sizeof set, &set) < 0)
    return asked;
  n = CPU_COUNT(&set);
  return n >= 1 && (unsigned) n < asked ? (unsigned) n : asked;
}

static int run_pipeline(struct ctx *c)
{
  unsigned nthreads = worker_count(c->opts->threads), t, started = 0;
  struct worker *workers = calloc(nthreads, sizeof *workers);
  pthread_t *tids = calloc(nthreads, sizeof *tids);
  pthread_t wtid;
  bool writer_started = false;
  int r = 0;

  if (!workers || !tids) {
    r = -ENOMEM;
    goto out;
  }
  c->st.threads = nthreads;
  for (t = 0; t < nthreads; t++) {
    struct worker *w = &workers[t];
    w->c = c;
    w->check = malloc(c->cs);
    if (!w->check) {
      r = -ENOMEM;
      goto out;
    }
    if (c->opts->algorithm == KB_QCOW2_ZSTD) {
      w->zc = ZSTD_createCCtx();
      w->zd = ZSTD_createDCtx();
      if (!w->zc || !w->zd ||
          ZSTD_isError(ZSTD_CCtx_setParameter(w->zc, ZSTD_c_compressionLevel, c->opts->zstd_level)) ||
          (c->opts->zstd_hash_log &&
           ZSTD_isError(ZSTD_CCtx_setParameter(w->zc, ZSTD_c_hashLog, c->opts->zstd_hash_log)))) {
        r = -ENOMEM;
        goto out;
      }
    } else {
      w->dc = libdeflate_alloc_compressor(c->opts->zlib_level);
      w->dd = libdeflate_alloc_decompressor();
      if (!w->dc || !w->dd) {
        r = -ENOMEM;
        goto out;
      }
    }
  }
  for (t = 0; t < nthreads; t++) {
    if (pthread_create(&tids[t], NULL, worker_main, &workers[t]) != 0) {
      fail(c, -EAGAIN, "cannot start a compression thread");
      break;
    }
    started++;
  }
  if (started == nthreads) {
    if (pthread_create(&wtid, NULL, writer_main, c) != 0)
      fail(c, -EAGAIN, "cannot start the writer thread");
    else
      writer_started = true;
  }
  if (writer_started) {
    producer(c);
    pthread_join(wtid, NULL);
  }
  /* The writer is done (or failed): wake workers still waiting for work. */
  pthread_mutex_lock(&c->lock);
  c->producer_done = true;
  c->stop = true;
  pthread_cond_broadcast(&c->cond_ready);
  pthread_mutex_unlock(&c->lock);
  for (t = 0; t < started; t++)
    pthread_join(tids[t], NULL);

out:
  if (workers)
    for (t = 0; t < nthreads; t++) {
      if (workers[t].zc)
        ZSTD_freeCCtx(workers[t].zc);
      if (workers[t].zd)
        ZSTD_freeDCtx(workers[t].zd);
      if (workers[t].dc)
        libdeflate_free_compressor(workers[t].dc);
      if (workers[t].dd)
        libdeflate_free_decompressor(workers[t].dd);
      free(workers[t].check);
    }
  free(workers);
  free(tids);
  return r;
}

int kb_qcow2_compress(const char *in, const char *out, const struct kb_compress_opts *opts,
                      struct kb_compress_stats *stats, char **errmsg)
{
  struct ctx c;
  pthread_t io_tid;
  bool io_started = false;
  struct stat st;
  CLEANUP_FREE char *tmp = NULL, *outcopy = NULL, *imgerr = NULL;
  char hex[17];
  unsigned s;
  int r;

  if (errmsg)
    *errmsg = NULL;
  memset(&c, 0, sizeof c);
  c.out_fd = -1;
  c.ra_fd = -1;
  if (!opts || opts->threads < 1 || opts->threads > 256 ||
      (opts->cluster_bits && (opts->cluster_bits < 9 || opts->cluster_bits > 21)) ||
      (opts->algorithm != KB_QCOW2_ZSTD && opts->algorithm != KB_QCOW2_ZLIB) ||
      (opts->algorithm == KB_QCOW2_ZLIB && (opts->zlib_level < 1 || opts->zlib_level > 12)))
    return set_err(errmsg, -EINVAL, "invalid compression options");
  c.opts = opts;
  c.start_ms = kb_mono_ms();

  r = kb_qcow2_open(in, &c.img, &imgerr);
  if (r < 0)
    return set_err(errmsg, r, "%s: %s", in, imgerr ? imgerr : strerror(-r));
  c.info = kb_qcow2_get_info(c.img);
  c.ics = c.info->cluster_size;
  c.cbits = c.info->cluster_bits;
  if (opts->cluster_bits > c.cbits && !c.info->backing_file)
    c.cbits = opts->cluster_bits;
  c.cs = UINT64_C(1) << c.cbits;
  c.ratio = (unsigned) (c.cs / c.ics);
  c.nb_clusters = (c.info->virtual_size + c.cs - 1) / c.cs;
  c.l2_entries = c.cs / 8;
  c.csize_shift = 62 - (c.cbits - 8);
  c.batch = BATCH_BYTES / c.cs;
  if (c.batch < 1)
    c.batch = 1;
  if (c.batch > BATCH_MAX_CLUSTERS)
    c.batch = BATCH_MAX_CLUSTERS;
  c.nb_batches = (c.nb_clusters + c.batch - 1) / c.batch;
  c.l1_size = (c.nb_clusters + c.l2_entries - 1) / c.l2_entries;
  c.st.virtual_size = c.info->virtual_size;
  c.st.cluster_size = c.cs;
  c.st.input_file_size = c.info->file_size;

  if (!opts->replace_original && lstat(out, &st) == 0) {
    kb_qcow2_close(c.img);
    return set_err(errmsg, -EEXIST, "%s already exists", out);
  }

  /* The header cluster must hold the backing file name and format. */
  {
    CLEANUP_FREE uint8_t *h = malloc(c.cs);
    if (!h || (r = build_header(&c, h, 0, 0, 0)) < 0) {
      kb_qcow2_close(c.img);
      return set_err(errmsg, h ? r : -ENOMEM, "the backing file name does not fit in a %llu-byte header cluster",
                     (unsigned long long) c.cs);
    }
  }

  if (kb_random_hex(hex, 8) < 0)
    snprintf(hex, sizeof hex, "%08x", (unsigned) getpid());
  outcopy = strdup(out);
  tmp = outcopy ? kb_printf("%s/.%s.kbtmp-%s", dirname(outcopy), strrchr(out, '/') ? strrchr(out, '/') + 1 : out, hex) : NULL;
  if (!tmp) {
    kb_qcow2_close(c.img);
    return set_err(errmsg, -ENOMEM, "out of memory");
  }
  /* Read access too: the hash is taken from the pages just written. */
  c.out_fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (c.out_fd < 0) {
    r = -errno;
    kb_qcow2_close(c.img);
    return set_err(errmsg, r, "cannot create %s: %s", tmp, strerror(-r));
  }

  /* Only for readahead hints; a failure costs speed, nothing else. */
  c.ra_fd = open(in, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (c.ra_fd >= 0)
    (void) posix_fadvise(c.ra_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  pthread_mutex_init(&c.lock, NULL);
  pthread_mutex_init(&c.io_lock, NULL);
  pthread_cond_init(&c.io_cond, NULL);
  pthread_cond_init(&c.cond_ready, NULL);
  pthread_cond_init(&c.cond_done, NULL);
  pthread_cond_init(&c.cond_free, NULL);
  c.nslots = 2 * opts->threads + 2;
  c.jobs = calloc(c.nslots, sizeof *c.jobs);
  c.wbuf_cap = WBUF_FLUSH + c.cs;
  c.wbuf = malloc(c.wbuf_cap);
  c.wbuf_spare = malloc(c.wbuf_cap);
  c.l1 = calloc(c.l1_size ? c.l1_size : 1, 8);
  c.l2 = calloc(1, c.cs);
  c.l2_index = UINT64_MAX;
  r = (c.jobs && c.wbuf && c.wbuf_spare && c.l1 && c.l2) ? 0 : -ENOMEM;
  for (s = 0; r == 0 && s < c.nslots; s++) {
    struct job *j = &c.jobs[s];
    j->kind = calloc((size_t) c.batch * c.ratio, 1);
    j->okind = calloc(c.batch, 1);
    j->data = malloc((size_t) c.batch * c.cs);
    j->out = malloc((size_t) c.batch * c.cs);
    j->cin = calloc((size_t) c.batch * c.ratio, sizeof *j->cin);
    j->cin_len = calloc((size_t) c.batch * c.ratio, sizeof *j->cin_len);
    j->out_len = calloc(c.batch, sizeof *j->out_len);
    if (!j->kind || !j->okind || !j->data || !j->out || !j->cin || !j->cin_len || !j->out_len)
      r = -ENOMEM;
  }
  if (r == 0)
    r = rc_grow(&c, 0);
  if (r < 0) {
    set_err(errmsg, r, "out of memory");
    goto out;
  }
  c.rc[0] = 1;                  /* the header cluster */
  c.pos = c.wbuf_off = c.cs;

  if (pthread_create(&io_tid, NULL, io_main, &c) != 0) {
    r = -EAGAIN;
    set_err(errmsg, r, "cannot start the output thread");
    goto out;
  }
  io_started = true;
  r = run_pipeline(&c);
  /* Whatever happened, the I/O thread finishes its buffer and leaves. */
  {
    int ir = io_drain(&c);
    pthread_mutex_lock(&c.io_lock);
    c.io_quit = true;
    pthread_cond_broadcast(&c.io_cond);
    pthread_mutex_unlock(&c.io_lock);
    pthread_join(io_tid, NULL);
    io_started = false;
    if (r == 0 && c.err == 0 && ir < 0)
      r = ir;
  }
  if (r == 0)
    r = c.err;
  if (r < 0) {
    set_err(errmsg, r, "%s", c.errmsg[0] ? c.errmsg : strerror(-r));
    goto out;
  }
  /* The fsync (writing the output back to disk), the hash (reading it
   * from the page cache) and qemu-img check (reading its metadata) overlap:
   * each would otherwise leave the cores idle while the others wait. The
   * file is complete: the writer has written its metadata and header. */
  {
    struct fsync_arg fa = { .fd = c.out_fd };
    pthread_t ftid;
    bool threaded;
    int hr = 0, cr = 0;
    struct kb_child check = { .pid = -1, .out_fd = -1 };
    CLEANUP_FREE char *check_spec = NULL, *check_out = NULL;

    if (opts->qemu_img_check) {
      /* This one image alone: qemu-img check would otherwise open the
       * chain its header names. */
      check_spec = kb_qemu_json_single(tmp);
      const char *argv[] = { QEMU_IMG, "check", "-q", check_spec, NULL };
      cr = check_spec ? kb_spawn(argv, true, &check) : -ENOMEM;
      if (cr < 0) {
        r = cr;
        set_err(errmsg, r, "cannot run qemu-img check of %s: %s", tmp, strerror(-r));
        goto out;
      }
    }
    threaded = pthread_create(&ftid, NULL, fsync_main, &fa) == 0;
    if (!threaded)
      fsync_main(&fa);
    if (opts->hash)
      hr = hash_output(c.out_fd, c.st.hash);
    if (threaded)
      pthread_join(ftid, NULL);
    if (opts->qemu_img_check)
      cr = kb_spawn_wait(&check, &check_out);
    if (fa.err < 0) {
      r = fa.err;
      set_err(errmsg, r, "fsync %s: %s", tmp, strerror(-r));
      goto out;
    }
    if (hr < 0) {
      r = hr;
      set_err(errmsg, r, "cannot hash %s: %s", tmp, strerror(-r));
      goto out;
    }
    if (cr != 0) {
      r = -EIO;
      set_err(errmsg, r, "qemu-img check of %s failed (status %d): %s", tmp, cr, check_out ? check_out : "");
      goto out;
    }
  }
  r = close(c.out_fd);
  c.out_fd = -1;
  if (r < 0) {
    r = -errno;
    set_err(errmsg, r, "close %s: %s", tmp, strerror(-r));
    goto out;
  }
  if (opts->replace_original) {
    if (rename(tmp, out) < 0) {
      r = -errno;
      set_err(errmsg, r, "rename %s to %s: %s", tmp, out, strerror(-r));
      goto out;
    }
  } else {
    /* link() refuses to replace a file that appeared meanwhile. */
    if (link(tmp, out) < 0) {
      r = -errno;
      set_err(errmsg, r, "cannot create %s: %s", out, strerror(-r));
      goto out;
    }
    (void) unlink(tmp);
  }
  (void) fsync_dir_of(out);
  c.st.elapsed_ms = kb_mono_ms() - c.start_ms;
  c.st.bytes_read = c.read_done;
  if (stats)
    *stats = c.st;
  r = 0;

out:
  if (c.out_fd >= 0)
    close(c.out_fd);
  if (r < 0)
    (void) unlink(tmp);
  free_jobs(&c);
  free(c.wbuf);
  free(c.rc);
  free(c.l1);
  free(c.l2);
  kb_qcow2_close(c.img);
  (void) io_started;
  pthread_mutex_destroy(&c.lock);
  pthread_mutex_destroy(&c.io_lock);
  pthread_cond_destroy(&c.io_cond);
  if (c.ra_fd >= 0)
    close(c.ra_fd);
  free(c.wbuf_spare);
  pthread_cond_destroy(&c.cond_ready);
  pthread_cond_destroy(&c.cond_done);
  pthread_cond_destroy(&c.cond_free);
  return r;
}
