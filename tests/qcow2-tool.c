/* qcow2-tool: drives lib/qcow2 for tests and benchmarks (not installed).
 *   qcow2-tool compress [-a zstd|zlib] [-t THREADS] [-r MBPS] [-l LEVEL] [--replace] IN OUT
 *   qcow2-tool info IMG
 *   qcow2-tool read IMG OFFSET LEN      guest bytes of IMG alone to stdout */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "qcow2.h"
#include "util.h"

static volatile sig_atomic_t cancelled;

static void on_signal(int sig)
{
  (void) sig;
  cancelled = 1;
}

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: qcow2-tool compress [-a zstd|zlib] [-t THREADS] [-r MB/S] [-l LEVEL]\n"
          "                           [-c CLUSTER_KIB] [--hash] [--timeout SECONDS] [--replace] IN OUT\n"
          "       qcow2-tool info IMG\n"
          "       qcow2-tool read IMG OFFSET LEN\n"
          "LEVEL: zstd -9..22 (default 3), zlib 1..12 (libdeflate, default 6)\n");
}

static int progress_cb(uint64_t done, uint64_t total, void *opaque)
{
  struct kb_progress *p = opaque;

  p->total = total;
  kb_progress_update(p, done);
  return 0;
}

static int cmd_compress(int argc, char **argv)
{
  static const struct option longopts[] = {
    { "algorithm", required_argument, NULL, 'a' },
    { "threads", required_argument, NULL, 't' },
    { "rate", required_argument, NULL, 'r' },
    { "level", required_argument, NULL, 'l' },
    { "timeout", required_argument, NULL, 'T' },
    { "replace", no_argument, NULL, 'R' },
    { "cluster-size", required_argument, NULL, 'c' },
    { "hash", no_argument, NULL, 'H' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
  };
  struct kb_compress_opts o;
  struct kb_compress_stats st;
  struct kb_progress prog;
  struct sigaction sa;
  CLEANUP_FREE char *err = NULL;
  long long v;
  double d;
  int c, r, level = -1;

  kb_compress_opts_init(&o);
  optind = 1;
  while ((c = getopt_long(argc, argv, "a:t:r:l:c:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'a':
      if (KB_STREQ(optarg, "zstd"))
        o.algorithm = KB_QCOW2_ZSTD;
      else if (KB_STREQ(optarg, "zlib"))
        o.algorithm = KB_QCOW2_ZLIB;
      else {
        kb_err("unknown algorithm '%s' (zstd or zlib)", optarg);
        return 2;
      }
      break;
    case 't':
      if (kb_parse_ll(optarg, &v) < 0 || v < 1 || v > 256) {
        kb_err("threads must be 1-256");
        return 2;
      }
      o.threads = (unsigned) v;
      break;
    case 'r':
      if (kb_parse_double(optarg, &d) < 0 || d < 0) {
        kb_err("rate must be MB/s >= 0");
        return 2;
      }
      o.rate_limit = (uint64_t) (d * 1000000);
      break;
    case 'l':
      if (kb_parse_ll(optarg, &v) < 0 || v < -9 || v > 22) {
        kb_err("invalid level '%s'", optarg);
        return 2;
      }
      level = (int) v;
      break;
    case 'T':
      if (kb_parse_ll(optarg, &v) < 0 || v < 1) {
        kb_err("invalid timeout '%s'", optarg);
        return 2;
      }
      o.deadline_ms = kb_mono_ms() + v * 1000;
      break;
    case 'R':
      o.replace_original = true;
      break;
    case 'c':
      if (kb_parse_ll(optarg, &v) < 0 || v < 1 || v > 2048 || (v & (v - 1))) {
        kb_err("cluster size must be a power of two in KiB, 1-2048");
        return 2;
      }
      o.cluster_bits = 10;
      while ((1LL << (o.cluster_bits - 10)) < v)
        o.cluster_bits++;
      break;
    case 'H':
      o.hash = true;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (argc - optind != 2) {
    usage(stderr);
    return 2;
  }
  if (level != -1) {
    if (o.algorithm == KB_QCOW2_ZSTD)
      o.zstd_level = level;
    else
      o.zlib_level = level;
  }

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* A file size limit must surface as EFBIG, not kill us mid-write. */
  signal(SIGXFSZ, SIG_IGN);
  o.cancel = &cancelled;
  kb_progress_start(&prog, "compress", 0);
  if (prog.enabled) {
    o.progress = progress_cb;
    o.progress_opaque = &prog;
  }

  r = kb_qcow2_compress(argv[optind], argv[optind + 1], &o, &st, &err);
  if (prog.enabled)
    kb_progress_end(&prog);
  if (r < 0) {
    kb_err("compress: %s", err ? err : strerror(-r));
    return 1;
  }
  printf("virtual_size %" PRIu64 "\ninput_size %" PRIu64 "\noutput_size %" PRIu64 "\n"
         "clusters_unallocated %" PRIu64 "\nclusters_zero %" PRIu64 "\n"
         "clusters_compressed %" PRIu64 "\nclusters_uncompressed %" PRIu64 "\n"
         "bytes_read %" PRIu64 "\nelapsed_ms %" PRId64 "\ncluster_size %" PRIu64 "\nthreads %u\n",
         st.virtual_size, st.input_file_size, st.output_file_size, st.clusters_unallocated,
         st.clusters_zero, st.clusters_compressed, st.clusters_uncompressed, st.bytes_read,
         st.elapsed_ms, st.cluster_size, st.threads);
  if (o.hash)
    printf("hash %s\n", st.hash);
  return 0;
}

static int open_img(const char *path, struct kb_qcow2 **img)
{
  CLEANUP_FREE char *err = NULL;
  int r = kb_qcow2_open(path, img, &err);

  if (r < 0)
    kb_err("%s: %s", path, err ? err : strerror(-r));
  return r;
}

static int cmd_info(int argc, char **argv)
{
  struct kb_qcow2 *img;
  const struct kb_qcow2_info *in;
  uint64_t i, count[4] = { 0 };
  size_t b;

  if (argc != 2) {
    usage(stderr);
    return 2;
  }
  if (open_img(argv[1], &img) < 0)
    return 1;
  in = kb_qcow2_get_info(img);
  for (i = 0; i < in->nb_clusters; i++) {
    struct kb_qcow2_cluster c;
    if (kb_qcow2_cluster_at(img, i, &c) < 0) {
      kb_err("%s: %s", argv[1], kb_qcow2_last_error(img));
      kb_qcow2_close(img);
      return 1;
    }
    count[c.kind]++;
  }
  printf("version %u\nvirtual_size %" PRIu64 "\ncluster_size %" PRIu64 "\n"
         "compression_type %s\nbacking_file %s\nbacking_format %s\n"
         "clusters %" PRIu64 "\nunallocated %" PRIu64 "\nzero %" PRIu64 "\n"
         "data %" PRIu64 "\ncompressed %" PRIu64 "\nbitmaps %zu\n",
         in->version, in->virtual_size, in->cluster_size,
         in->compression_type == KB_QCOW2_ZSTD ? "zstd" : "zlib",
         in->backing_file ? in->backing_file : "-", in->backing_format ? in->backing_format : "-",
         in->nb_clusters, count[KB_QCOW2_UNALLOCATED], count[KB_QCOW2_ZERO],
         count[KB_QCOW2_DATA], count[KB_QCOW2_COMPRESSED], in->nb_bitmaps);
  for (b = 0; b < in->nb_bitmaps; b++)
    printf("bitmap %s\n", in->bitmap_names[b]);
  kb_qcow2_close(img);
  return 0;
}

static int cmd_read(int argc, char **argv)
{
  struct kb_qcow2 *img;
  const struct kb_qcow2_info *in;
  CLEANUP_FREE uint8_t *buf = NULL;
  long long off, len;
  int rc = 0;

  if (argc != 4 || kb_parse_ll(argv[2], &off) < 0 || kb_parse_ll(argv[3], &len) < 0 || off < 0 || len < 0) {
    usage(stderr);
    return 2;
  }
  if (open_img(argv[1], &img) < 0)
    return 1;
  in = kb_qcow2_get_info(img);
  if ((uint64_t) off > in->virtual_size || (uint64_t) len > in->virtual_size - (uint64_t) off) {
    kb_err("range beyond the virtual size %" PRIu64, in->virtual_size);
    kb_qcow2_close(img);
    return 1;
  }
  buf = malloc(in->cluster_size);
  while (buf && len > 0) {
    uint64_t idx = (uint64_t) off / in->cluster_size, within = (uint64_t) off % in->cluster_size;
    uint64_t n = in->cluster_size - within;
    if (n > (uint64_t) len)
      n = (uint64_t) len;
    if (kb_qcow2_read_cluster(img, idx, buf, NULL) < 0) {
      kb_err("%s: %s", argv[1], kb_qcow2_last_error(img));
      rc = 1;
      break;
    }
    if (fwrite(buf + within, 1, n, stdout) != n) {
      kb_err("write: %m");
      rc = 1;
      break;
    }
    off += (long long) n;
    len -= (long long) n;
  }
  kb_qcow2_close(img);
  return rc;
}

int main(int argc, char **argv)
{
  kb_log_init(argv[0]);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (KB_STREQ(argv[1], "--help") || KB_STREQ(argv[1], "-h")) {
    usage(stdout);
    return 0;
  }
  if (KB_STREQ(argv[1], "--version")) {
    printf("qcow2-tool %s\n", PACKAGE_VERSION);
    return 0;
  }
  if (KB_STREQ(argv[1], "compress"))
    return cmd_compress(argc - 1, argv + 1);
  if (KB_STREQ(argv[1], "info"))
    return cmd_info(argc - 1, argv + 1);
  if (KB_STREQ(argv[1], "read"))
    return cmd_read(argc - 1, argv + 1);
  usage(stderr);
  return 2;
}
