/* kboss's own qcow2 reader and compressing qcow2 writer.
 *
 * The reader understands what kboss backups contain (qcow2 v2 and v3,
 * standard, zero and compressed clusters, zlib or zstd) and refuses, with
 * -ENOTSUP and a message, everything it does not understand rather than
 * misread it: encryption, external data files, extended L2 entries
 * (subclusters), internal snapshots, dirty or corrupt images, unknown
 * incompatible feature bits.  Every offset and length read from the file
 * is checked against the file size before use.
 *
 * The writer (kb_qcow2_compress) turns one qcow2 image into a compressed
 * qcow2 v3 image that qemu reads directly: same virtual size, cluster size,
 * backing file string and backing format; unallocated clusters stay
 * unallocated (they still fall through to the backing file) and zero
 * clusters stay zero clusters.  See docs/compression.md. */
#ifndef KBOSS_QCOW2_H
#define KBOSS_QCOW2_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kb_qcow2_ctype {
  KB_QCOW2_ZLIB = 0,   /* raw deflate; qemu inflates a cluster in one call (window bits -12) */
  KB_QCOW2_ZSTD = 1,   /* one zstd frame per cluster */
};

struct kb_qcow2_info {
  uint32_t version;              /* 2 or 3 */
  uint32_t cluster_bits;
  uint64_t cluster_size;
  uint64_t virtual_size;
  uint64_t nb_clusters;          /* guest clusters, the last may be partial */
  uint64_t file_size;
  uint32_t refcount_order;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  enum kb_qcow2_ctype compression_type;
  const char *backing_file;      /* as stored in the image, NULL if none */
  const char *backing_format;    /* NULL if the image names none */
  size_t nb_bitmaps;             /* persistent dirty bitmaps (names below) */
  const char *const *bitmap_names;
};

enum kb_qcow2_kind {
  KB_QCOW2_UNALLOCATED = 0,      /* falls through to the backing file */
  KB_QCOW2_ZERO,                 /* reads as zeros (v3 zero flag) */
  KB_QCOW2_DATA,                 /* a whole host cluster at host_offset */
  KB_QCOW2_COMPRESSED,           /* host_len bytes at host_offset */
};

struct kb_qcow2_cluster {
  enum kb_qcow2_kind kind;
  uint64_t host_offset;
  /* DATA: bytes present in the file (cluster_size unless cut by EOF);
   * COMPRESSED: the sector-rounded extent from the L2 entry, cut at EOF. */
  uint64_t host_len;
};

struct kb_qcow2;

/* Open PATH read-only (not through a symlink).  On error returns negative
 * errno and, when ERRMSG is not NULL, a malloc'd message in *ERRMSG. */
int kb_qcow2_open(const char *path, struct kb_qcow2 **ret, char **errmsg);
/* The same on an open descriptor; the handle dups FD. */
int kb_qcow2_open_fd(int fd, struct kb_qcow2 **ret, char **errmsg);
void kb_qcow2_close(struct kb_qcow2 *img);

const struct kb_qcow2_info *kb_qcow2_get_info(const struct kb_qcow2 *img);

/* What guest cluster INDEX is.  -EINVAL (with a message through
 * kb_qcow2_last_error) when its L1/L2 entries are corrupt. */
int kb_qcow2_cluster_at(struct kb_qcow2 *img, uint64_t index, struct kb_qcow2_cluster *ret);

/* Guest cluster INDEX into BUF (cluster_size bytes), decompressing if
 * needed.  Zero clusters read as zeros; unallocated ones also read as
 * zeros and set *RET_KIND to KB_QCOW2_UNALLOCATED so the caller can go to
 * the backing file.  RET_KIND may be NULL. */
int kb_qcow2_read_cluster(struct kb_qcow2 *img, uint64_t index, void *buf, enum kb_qcow2_kind *ret_kind);

/* Read raw bytes of the image file; beyond EOF reads as zeros. */
int kb_qcow2_pread(struct kb_qcow2 *img, void *buf, size_t len, uint64_t offset);

/* The message of the last failure on IMG ("" when none). */
const char *kb_qcow2_last_error(const struct kb_qcow2 *img);

/* Decompress one compressed cluster the way qemu accepts it: SRC may carry
 * trailing bytes (sector padding, the next cluster's data); DST must come
 * out exactly DST_LEN bytes.  Thread-safe; -EIO on bad data. */
int kb_qcow2_decompress(enum kb_qcow2_ctype type, const void *src, size_t src_len,
                        void *dst, size_t dst_len);

/* ---- The compressing writer ---- */

/* Called from the writer thread with guest bytes done so far; a non-zero
 * return cancels the run (-ECANCELED). */
typedef int (*kb_compress_progress_fn)(uint64_t done, uint64_t total, void *opaque);

struct kb_compress_opts {
  enum kb_qcow2_ctype algorithm; /* start from kb_compress_opts_init(): zstd */
  /* Compressions in flight, >= 1: the ring holds 2 x threads + 2 batches,
   * and as many threads compress, but never more than the CPUs the
   * process may run on (sched_getaffinity). */
  unsigned threads;
  uint64_t rate_limit;           /* input bytes read per second, 0 = none */
  int zstd_level;                /* default 3 */
  int zstd_hash_log;             /* ZSTD_c_hashLog, default 16 (level 3's is 17); 0: the level's */
  int zlib_level;                /* libdeflate level 1..12, default 6 */
  bool replace_original;         /* OUT may exist (e.g. OUT == IN) and is replaced */
  kb_compress_progress_fn progress;
  void *progress_opaque;
  volatile sig_atomic_t *cancel; /* set non-zero (e.g. from SIGINT) to stop */
  int64_t deadline_ms;           /* kb_mono_ms() deadline, 0 = none -> -ETIMEDOUT */
  /* Output cluster size as log2 (9..21); 0 keeps the input's.  Only an
   * image without a backing file gets larger clusters (a partly allocated
   * large cluster would need the backing file's data); a smaller value
   * than the input's keeps the input's. */
  unsigned cluster_bits;
  bool hash;                     /* fill stats->hash with the output's XXH3-128 */
  /* Run `qemu-img check` on the finished output alone (no backing file
   * opened) while it is fsync'd and hashed; a failure fails the job with
   * -EIO and qemu-img's words in *ERRMSG. */
  bool qemu_img_check;
};

struct kb_compress_stats {
  uint64_t virtual_size;
  uint64_t input_file_size;
  uint64_t output_file_size;
  uint64_t clusters_unallocated;
  uint64_t clusters_zero;
  uint64_t clusters_compressed;
  uint64_t clusters_uncompressed; /* did not shrink, stored as they were */
  uint64_t bytes_read;            /* input data bytes read */
  uint64_t cluster_size;          /* of the output */
  unsigned threads;               /* compressing threads (opts->threads, capped at the CPUs) */
  int64_t elapsed_ms;
  /* With opts->hash: XXH3-128 of the whole output file, the digits
   * `xxhsum -H2` prints (as the catalog records hashes). */
  char hash[33];
};

/* zstd, 1 thread, level 3 (hash log 16) / 6, no limit, no replace, input cluster size,
 * no hash.  Every compressed cluster is always decompressed again right
 * after compressing and compared with its input in memory (-EIO when it
 * differs): the output's data is proven without reading it back. */
void kb_compress_opts_init(struct kb_compress_opts *opts);

/* Compress qcow2 image IN into OUT.  The result is written to a temporary
 * file beside OUT (O_EXCL, 0600), fsync'd and only then moved to OUT; OUT
 * must not exist unless opts->replace_original.  On any failure (including
 * cancel, timeout, ENOSPC/EFBIG) the temporary file is removed and IN is
 * left untouched.  Returns 0 or negative errno with *ERRMSG (malloc'd) set
 * when ERRMSG is not NULL.  STATS may be NULL. */
int kb_qcow2_compress(const char *in, const char *out, const struct kb_compress_opts *opts,
                      struct kb_compress_stats *stats, char **errmsg);

#endif
