/* Compress one backup: every disk file is compressed into a temporary file
 * beside it. The writer proves each compressed cluster in memory (it
 * decompresses it again and compares) and hashes the file it wrote;
 * qemu-img check then checks the metadata. Only then, under the backup
 * lock and if no restore uses the backup, are the files renamed over the
 * originals.
 *
 * The swap of several files cannot be one atomic step, so it is recorded
 * before it starts: backup.ini gets "swap = compression" and, per disk,
 * "hash_new" (the new file's hash) beside "hash" (the old one). While a
 * swap is pending a hash check accepts either hash for a disk, and the next
 * kboss-compress run finishes it (renames what is left, records what the
 * files now are). A kill at any point therefore never leaves a backup
 * whose files disagree with its record. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bkhash.h"
#include "chain.h"
#include "compress.h"
#include "hash.h"
#include "lock.h"
#include "log.h"
#include "qcow2.h"
#include "util.h"

#define TMP_PREFIX ".kbcompress-"

const char *cp_library(const struct kb_config *cfg, const struct kb_backup_ref *ref)
{
  const char *name = kb_doc_get(ref->doc, "backup", "offering");
  const struct kb_offering *off = name ? kb_config_offering(cfg, name) : NULL;

  if (!off)
    off = kb_config_vm_offering_def(cfg, kb_doc_get(ref->doc, "backup", "vm_name"));
  if (off && off->compression_library && KB_STREQ(off->compression_library, "zlib"))
    return "zlib";
  return "zstd";
}

/* "<dir>/.kbcompress-<file>" beside ORIG. */
static char *temp_path(const char *orig)
{
  const char *slash = strrchr(orig, '/');

  if (!slash)
    return NULL;
  return kb_printf("%.*s/" TMP_PREFIX "%s", (int) (slash - orig), orig, slash + 1);
}

void cp_remove_temps(const struct kb_catalog *cat, const struct kb_backup_ref *ref)
{
  CLEANUP_FREE char *dir = kb_backup_data_dir(cat, ref);

  /* Ours, and the writer's own temporary names built on ours
   * (".<out>.kbtmp-<hex>"). */
  if (dir)
    kb_remove_prefixed(dir, TMP_PREFIX);
}

#define file_usage kb_file_usage

/* The new file takes the original's owner and mode: qemu (validation,
 * quick restore) reads backups as its own user. */
static int copy_owner(const char *orig, const char *tmp)
{
  CLEANUP_CLOSE int fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

  return fd < 0 ? -errno : kb_copy_owner(orig, fd);
}

#define swap_in kb_rename_over

void cp_test_point(const char *point)
{
  const char *k = getenv("KBOSS_TEST_SWAP_KILL");

  if (k && KB_STREQ(k, point)) {
    kb_debug("test: killed at %s", point);
    (void) kill(getpid(), SIGKILL);
  }
}

static char *disk_section(const char *disk)
{
  return kb_printf("disk:%s", disk);
}

bool cp_swap_pending(const struct kb_doc *backup)
{
  return kb_doc_get(backup, "backup", "swap") != NULL;
}

/* Write into DOC what the files now are, once the swap has ended (or was
 * found ended): SWAPPED[i] says whether disk i holds its new file. Each
 * swapped disk gets its size and, when hashes were recorded, its new hash;
 * the pending fields go. Only when every disk was swapped is the backup
 * compressed; otherwise the job compresses it again (the disks already
 * swapped hold complete images of the same data). */
static int record_swap(const struct kb_catalog *cat, const struct kb_backup_ref *ref, struct kb_doc *doc,
                       char **disks, const bool *swapped, uint64_t *ret_total)
{
  const char *library = kb_doc_get(doc, "backup", "swap_library");
  long long before = kb_doc_get_ll(doc, "backup", "swap_uncompressed_size", 0);
  uint64_t total = 0;
  bool all = true;
  size_t i;
  int r = 0;

  for (i = 0; disks[i] && r == 0; i++) {
    CLEANUP_FREE char *sec = disk_section(disks[i]);
    CLEANUP_FREE char *path = kb_backup_disk_path(cat, ref, disks[i]);
    CLEANUP_FREE char *hash_new = NULL;
    uint64_t sz = path ? file_usage(path) : 0;

    if (!sec)
      return -ENOMEM;
    total += sz;
    if (kb_doc_get(doc, sec, "hash_new") && !(hash_new = strdup(kb_doc_get(doc, sec, "hash_new"))))
      return -ENOMEM;
    if (!swapped[i]) {
      all = false;
    } else {
      r = kb_doc_set_ll(doc, sec, "size", (long long) sz);
      if (r == 0 && hash_new && kb_doc_get(doc, sec, "hash"))
        r = kb_doc_set(doc, sec, "hash", hash_new);
    }
    if (r == 0)
      r = kb_doc_set(doc, sec, "hash_new", NULL);
  }
  if (r == 0 && all) {
    char now[32];
    kb_format_time(kb_now(), now, sizeof now);
    r = kb_doc_set(doc, "backup", "compressed", "true");
    if (r == 0) r = kb_doc_set(doc, "backup", "compression_library", library ? library : "zstd");
    if (r == 0) r = kb_doc_set(doc, "backup", "compressed_at", now);
    if (r == 0 && before > 0) r = kb_doc_set_ll(doc, "backup", "uncompressed_size", before);
  }
  if (r == 0) r = kb_doc_set_ll(doc, "backup", "size", (long long) total);
  if (r == 0) r = kb_doc_set(doc, "backup", "swap", NULL);
  if (r == 0) r = kb_doc_set(doc, "backup", "swap_library", NULL);
  if (r == 0) r = kb_doc_set(doc, "backup", "swap_uncompressed_size", NULL);
  if (r == 0) r = kb_backup_save(cat, ref->vm_uuid, ref->chain, ref->id, doc);
  if (ret_total)
    *ret_total = total;
  return r;
}

static struct kb_lock *take_backup_lock(const struct kb_catalog *cat, const char *id, const char *purpose,
                                        int *ret)
{
  struct kb_lock *lock = NULL;

  *ret = kb_catalog_lock(cat, KB_LOCK_BACKUP, id, purpose, 60 * 1000, &lock);
  return *ret < 0 ? NULL : lock;
}

int cp_finish_swap(const struct kb_catalog *cat, const struct kb_backup_ref *ref, char **ret_error)
{
  struct kb_doc *doc = NULL;
  struct kb_lock *lock;
  char **disks = NULL;
  bool *swapped = NULL;
  size_t n = 0, i, nswapped = 0;
  int r;

  lock = take_backup_lock(cat, ref->id, "compression swap recovery", &r);
  if (!lock) {
    *ret_error = kb_printf("backup %s: cannot take its lock to finish an interrupted swap: %s", ref->id,
                           strerror(-r));
    return r;
  }
  r = kb_backup_load(cat, ref->vm_uuid, ref->chain, ref->id, &doc);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot read its record: %s", ref->id, strerror(-r));
    goto out;
  }
  if (!cp_swap_pending(doc))
    goto out;
  r = kb_backup_disks(doc, &disks);
  if (r < 0)
    goto out;
  while (disks[n])
    n++;
  swapped = calloc(n + 1, sizeof *swapped);
  if (!swapped) {
    r = -ENOMEM;
    goto out;
  }
  /* For each disk: a temporary file that is the proven new file (its hash
   * is the one recorded before the swap began) is renamed over the
   * original; then the original either is the new file or it is not. */
  for (i = 0; i < n; i++) {
    CLEANUP_FREE char *sec = disk_section(disks[i]);
    CLEANUP_FREE char *orig = kb_backup_disk_path(cat, ref, disks[i]);
    CLEANUP_FREE char *tmp = orig ? temp_path(orig) : NULL;
    const char *want = sec ? kb_doc_get(doc, sec, "hash_new") : NULL;
    char hex[KB_HASH_HEX_LEN + 1];
    struct stat st;

    if (!want || !orig || !tmp)
      continue;
    if (lstat(tmp, &st) == 0 && S_ISREG(st.st_mode) && kb_hash_file(tmp, hex, NULL) == 0 &&
        KB_STREQ(hex, want)) {
      r = swap_in(tmp, orig);
      if (r < 0) {
        *ret_error = kb_printf("backup %s: disk %s: cannot rename %s over %s: %s", ref->id, disks[i], tmp,
                               orig, strerror(-r));
        goto out;
      }
      kb_info("backup %s: disk %s: finished the interrupted swap", ref->id, disks[i]);
    }
    cp_test_point("recovery-renamed");
    r = kb_hash_file(orig, hex, NULL);
    if (r < 0) {
      *ret_error = kb_printf("backup %s: disk %s: cannot hash %s: %s", ref->id, disks[i], orig, strerror(-r));
      goto out;
    }
    swapped[i] = KB_STREQ(hex, want);
    if (swapped[i])
      nswapped++;
  }
  r = record_swap(cat, ref, doc, disks, swapped, NULL);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot save its record: %s", ref->id, strerror(-r));
    goto out;
  }
  kb_info("backup %s: interrupted compression swap %s (%zu of %zu disks compressed)", ref->id,
          nswapped == n ? "finished" : "ended", nswapped, n);
out:
  kb_lock_release(lock);
  kb_doc_free(doc);
  kb_strv_free(disks);
  free(swapped);
  return r;
}

unsigned cp_cluster_bits(long long kib)
{
  unsigned bits = 16;

  while (bits < 21 && (1LL << (bits + 1 - 10)) <= kib)
    bits++;
  return bits;
}

int cp_compress_backup(const struct kb_config *cfg, const struct kb_catalog *cat,
                       const struct kb_backup_ref *ref, const struct cp_settings *s,
                       const struct kb_lock *job_lock, int64_t deadline_ms,
                       struct cp_result *ret, char **ret_error)
{
  const char *library = cp_library(cfg, ref);
  char **disks = NULL, **orig = NULL, **tmp = NULL, **hash = NULL;
  bool *swapped = NULL;
  struct kb_lock *lock = NULL;
  struct kb_doc *fresh = NULL;
  struct kb_compress_opts opts;
  uint64_t total_after = 0;
  int64_t t0 = kb_mono_ms();
  size_t n = 0, i;
  bool swapping = false;
  int r;

  memset(ret, 0, sizeof *ret);
  r = kb_backup_disks(ref->doc, &disks);
  if (r < 0)
    return r;
  while (disks[n])
    n++;
  orig = calloc(n + 1, sizeof *orig);
  tmp = calloc(n + 1, sizeof *tmp);
  hash = calloc(n + 1, sizeof *hash);
  swapped = calloc(n + 1, sizeof *swapped);
  if (!orig || !tmp || !hash || !swapped) {
    r = -ENOMEM;
    goto out;
  }
  for (i = 0; i < n; i++) {
    orig[i] = kb_backup_disk_path(cat, ref, disks[i]);
    tmp[i] = orig[i] ? temp_path(orig[i]) : NULL;
    if (!tmp[i]) {
      r = -EINVAL;
      *ret_error = kb_printf("backup %s: disk %s: bad file path", ref->id, disks[i]);
      goto out;
    }
    ret->size_before += file_usage(orig[i]);
  }
  /* Only a chain that passes the validator (lib/chain.h) is compressed. */
  for (i = 0; i < n; i++) {
    CLEANUP_FREE char *data = kb_backup_data_dir(cat, ref), *why = NULL;
    struct kb_chain *chain = NULL;

    if (data && strrchr(data, '/'))
      *strrchr(data, '/') = '\0';
    r = data ? kb_chain_validate(data, orig[i], &chain, &why) : -ENOMEM;
    kb_chain_free(chain);
    if (r < 0) {
      *ret_error = kb_printf("disk %s: refusing its backing chain: %s", disks[i], why ? why : strerror(-r));
      goto out;
    }
  }
  cp_remove_temps(cat, ref);

  kb_compress_opts_init(&opts);
  opts.algorithm = KB_STREQ(library, "zlib") ? KB_QCOW2_ZLIB : KB_QCOW2_ZSTD;
  opts.threads = (unsigned) (s->coroutines >= 1 ? s->coroutines : 1);
  opts.rate_limit = s->rate_mb >= 1 ? (uint64_t) s->rate_mb * 1024 * 1024 : 0;
  opts.cancel = &cp_cancel;
  opts.deadline_ms = deadline_ms;
  opts.cluster_bits = cp_cluster_bits(s->cluster_kib);
  /* libdeflate level 4 for the zlib type: 30 % less CPU than level 6 for
   * 3 % more bytes, still 11 % fewer than qemu-img writes (numbers in
   * docs/compression.md, "Why libdeflate for the zlib type"). */
  opts.zlib_level = 4;
  opts.hash = true;
  opts.qemu_img_check = true;
  for (i = 0; i < n; i++) {
    struct kb_compress_stats st;
    CLEANUP_FREE char *msg = NULL;
    r = kb_qcow2_compress(orig[i], tmp[i], &opts, &st, &msg);
    if (r < 0) {
      /* Job records keep one short line: name the file, not its whole path. */
      const char *m = msg ? msg : strerror(-r);
      size_t ol = strlen(orig[i]);
      if (strncmp(m, orig[i], ol) == 0)
        m += ol - strlen(strrchr(orig[i], '/') + 1);
      *ret_error = r == -ETIMEDOUT
        ? kb_printf("disk %s: timed out after %llds (backup.compression.timeout)", disks[i], s->timeout_s)
        : kb_printf("disk %s: %s", disks[i], m);
      goto out;
    }
    kb_debug("disk %s: %llu -> %llu bytes, %llu-byte clusters, %u compressing threads, in %.1fs", disks[i],
             (unsigned long long) st.input_file_size, (unsigned long long) st.output_file_size,
             (unsigned long long) st.cluster_size, st.threads, st.elapsed_ms / 1000.0);
    hash[i] = strdup(st.hash);
    if (!hash[i]) {
      r = -ENOMEM;
      goto out;
    }
    cp_test_point("compressed");
    /* The data was proven by the writer; qemu-img check, the independent
     * oracle for the metadata, ran in it too, beside the fsync and the
     * hash (opts.qemu_img_check). */
    if (deadline_ms && kb_mono_ms() > deadline_ms) {
      r = -ETIMEDOUT;
      *ret_error = kb_printf("disk %s: timed out after %llds while checking (backup.compression.timeout)",
                             disks[i], s->timeout_s);
    }
    if (r == 0 && (r = copy_owner(orig[i], tmp[i])) < 0)
      *ret_error = kb_printf("disk %s: cannot give the compressed file the original's owner: %s",
                             disks[i], strerror(-r));
    if (r < 0)
      goto out;
  }
  cp_test_point("checked");

  /* The swap: nobody may be reading the backup through a restore. */
  lock = take_backup_lock(cat, ref->id, "compression swap", &r);
  if (r == -EBUSY) {
    *ret_error = kb_printf("backup %s is locked by another operation", ref->id);
    r = CP_POSTPONED;
    goto out;
  }
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot take its lock: %s", ref->id, strerror(-r));
    goto out;
  }
  r = kb_backup_load(cat, ref->vm_uuid, ref->chain, ref->id, &fresh);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot read its record: %s", ref->id, strerror(-r));
    goto out;
  }
  if (kb_doc_get(fresh, "backup", "in_use_by")) {
    *ret_error = kb_printf("backup %s is in use by VM %s (quick restore)", ref->id,
                           kb_doc_get(fresh, "backup", "in_use_by"));
    r = CP_POSTPONED;
    goto out;
  }
  {
    /* kbossctl prune may have merged the backup forward (its file is now a
     * full) since we read it, or left such a merge pending: what we
     * compressed is not what is there any more. */
    const char *p0 = kb_doc_get(ref->doc, "backup", "parent"), *p1 = kb_doc_get(fresh, "backup", "parent");
    if (kb_backup_merge_pending(fresh) || (p0 && !p1) || (!p0 && p1) || (p0 && p1 && !KB_STREQ(p0, p1))) {
      *ret_error = kb_printf("backup %s was merged forward by kbossctl prune meanwhile; compressing it again later",
                             ref->id);
      r = CP_POSTPONED;
      goto out;
    }
  }
  if (cp_cancel) {
    r = -ECANCELED;
    *ret_error = kb_printf("cancelled");
    goto out;
  }
  if (job_lock && kb_lock_lost(job_lock)) {
    /* Another host judged us dead and may be running the job itself. */
    r = -ENOLCK;
    *ret_error = kb_printf("lost the job lock (lease ran out); not swapping");
    goto out;
  }
  cp_test_point("locked");

  /* Record the swap before it starts (see the top of this file). */
  for (i = 0; i < n && r == 0; i++) {
    CLEANUP_FREE char *sec = disk_section(disks[i]);
    r = sec ? kb_doc_set(fresh, sec, "hash_new", hash[i]) : -ENOMEM;
  }
  if (r == 0) r = kb_doc_set(fresh, "backup", "swap", "compression");
  if (r == 0) r = kb_doc_set(fresh, "backup", "swap_library", library);
  if (r == 0) r = kb_doc_set_ll(fresh, "backup", "swap_uncompressed_size", (long long) ret->size_before);
  if (r == 0) r = kb_backup_save(cat, ref->vm_uuid, ref->chain, ref->id, fresh);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot record the swap: %s", ref->id, strerror(-r));
    goto out;
  }
  swapping = true;
  cp_test_point("pending");

  for (i = 0; i < n; i++) {
    r = swap_in(tmp[i], orig[i]);
    if (r < 0) {
      *ret_error = kb_printf("disk %s: cannot rename %s over %s: %s", disks[i], tmp[i], orig[i], strerror(-r));
      break;
    }
    swapped[i] = true;
    cp_test_point(i == 0 ? "renamed-first" : "renamed-next");
  }
  cp_test_point("renamed");
  {
    int rr = record_swap(cat, ref, fresh, disks, swapped, &total_after);
    if (rr < 0) {
      /* The record still says "swap pending": the next run finishes it. */
      if (!*ret_error)
        *ret_error = kb_printf("backup %s: files compressed but the record could not be written: %s",
                               ref->id, strerror(-rr));
      if (r == 0)
        r = rr;
    } else
      swapping = false;
  }
  cp_test_point("recorded");
  ret->size_after = total_after;
  ret->elapsed_ms = kb_mono_ms() - t0;

out:
  /* A swap still pending keeps its proven temporary files for the next
   * run; every other way out removes them. */
  for (i = 0; tmp && i < n; i++)
    if (tmp[i] && !swapping)
      (void) unlink(tmp[i]);
  kb_lock_release(lock);
  kb_doc_free(fresh);
  kb_strv_free(disks);
  kb_strv_free(orig);
  kb_strv_free(tmp);
  for (i = 0; hash && i < n; i++)
    free(hash[i]);
  free(hash);
  free(swapped);
  return r;
}
