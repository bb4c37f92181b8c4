/* Compress one backup: every disk file is compressed into a temporary file
 * beside it, the result is checked (qemu-img check for the metadata, our
 * reader for every guest cluster against the original), and only then,
 * under the backup lock and if no restore uses the backup, renamed over
 * the original. A failure anywhere leaves the originals and removes the
 * temporary files. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bkhash.h"
#include "chain.h"
#include "compress.h"
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
  struct dirent *de;
  DIR *d;
  int fd;

  if (!dir)
    return;
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return;
  d = fdopendir(fd);
  if (!d) {
    close(fd);
    return;
  }
  /* Ours, and the writer's own temporary names built on ours
   * (".<out>.kbtmp-<hex>"). */
  while ((de = readdir(d)))
    if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0 ||
        strncmp(de->d_name, "." TMP_PREFIX, strlen(TMP_PREFIX) + 1) == 0)
      (void) unlinkat(fd, de->d_name, 0);
  closedir(d);
}

static uint64_t file_usage(const char *path)
{
  struct stat st;

  if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode))
    return 0;
  return (uint64_t) st.st_blocks * 512;
}

/* Our reader re-reads every guest cluster of both images: what is
 * allocated, zero or unallocated must match and the bytes must be equal. */
static int verify_same(const char *orig, const char *tmp, int64_t deadline_ms, char **ret_error)
{
  struct kb_qcow2 *a = NULL, *b = NULL;
  CLEANUP_FREE char *ea = NULL, *eb = NULL;
  CLEANUP_FREE uint8_t *ba = NULL, *bb = NULL;
  const struct kb_qcow2_info *ia, *ib;
  uint64_t i;
  int r;

  r = kb_qcow2_open(orig, &a, &ea);
  if (r < 0) {
    *ret_error = kb_printf("re-reading %s: %s", orig, ea ? ea : strerror(-r));
    return r;
  }
  r = kb_qcow2_open(tmp, &b, &eb);
  if (r < 0) {
    *ret_error = kb_printf("reading the compressed %s: %s", tmp, eb ? eb : strerror(-r));
    kb_qcow2_close(a);
    return r;
  }
  ia = kb_qcow2_get_info(a);
  ib = kb_qcow2_get_info(b);
  r = -EIO;
  if (ia->virtual_size != ib->virtual_size || ia->cluster_size != ib->cluster_size) {
    *ret_error = kb_printf("the compressed %s differs in size or cluster size", tmp);
    goto out;
  }
  if ((ia->backing_file == NULL) != (ib->backing_file == NULL) ||
      (ia->backing_file && strcmp(ia->backing_file, ib->backing_file) != 0)) {
    *ret_error = kb_printf("the compressed %s names another backing file", tmp);
    goto out;
  }
  ba = malloc(ia->cluster_size);
  bb = malloc(ia->cluster_size);
  if (!ba || !bb) {
    r = -ENOMEM;
    *ret_error = kb_printf("out of memory");
    goto out;
  }
  for (i = 0; i < ia->nb_clusters; i++) {
    enum kb_qcow2_kind ka, kb;
    if ((i & 255) == 0) {
      if (cp_cancel) {
        r = -ECANCELED;
        *ret_error = kb_printf("cancelled while checking %s", tmp);
        goto out;
      }
      if (deadline_ms && kb_mono_ms() > deadline_ms) {
        r = -ETIMEDOUT;
        *ret_error = kb_printf("timed out while checking %s", tmp);
        goto out;
      }
    }
    if ((r = kb_qcow2_read_cluster(a, i, ba, &ka)) < 0) {
      *ret_error = kb_printf("re-reading %s: %s", orig, kb_qcow2_last_error(a));
      goto out;
    }
    if ((r = kb_qcow2_read_cluster(b, i, bb, &kb)) < 0) {
      *ret_error = kb_printf("reading the compressed %s: %s", tmp, kb_qcow2_last_error(b));
      goto out;
    }
    if ((ka == KB_QCOW2_UNALLOCATED) != (kb == KB_QCOW2_UNALLOCATED) ||
        memcmp(ba, bb, ia->cluster_size) != 0) {
      r = -EIO;
      *ret_error = kb_printf("the compressed %s differs from the original at cluster %llu", tmp,
                             (unsigned long long) i);
      goto out;
    }
  }
  r = 0;
out:
  kb_qcow2_close(a);
  kb_qcow2_close(b);
  return r;
}

static int qemu_img_check(const char *tmp, char **ret_error)
{
  /* This one image alone ("backing": null): qemu-img check would otherwise
   * open the whole chain its header names. */
  CLEANUP_FREE char *spec = kb_printf("json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"%s\"},"
                                      "\"backing\":null}", tmp);
  const char *argv[] = { QEMU_IMG, "check", "-q", spec, NULL };
  CLEANUP_FREE char *out = NULL;
  int r;

  if (!spec || strpbrk(tmp, "\"\\"))
    return -EINVAL;
  r = kb_run(argv, &out);

  if (r == 0)
    return 0;
  *ret_error = kb_printf("qemu-img check of %s failed (status %d): %s", tmp, r, out ? out : "");
  return -EIO;
}

/* The new file takes the original's owner and mode: qemu (validation,
 * quick restore) reads backups as its own user. */
static int copy_owner(const char *orig, const char *tmp)
{
  struct stat st;
  CLEANUP_CLOSE int fd = -1;

  if (lstat(orig, &st) < 0)
    return -errno;
  fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fchown(fd, st.st_uid, st.st_gid) < 0 && errno != EPERM)
    return -errno;
  if (fchmod(fd, st.st_mode & 07777) < 0)
    return -errno;
  return 0;
}

/* rename() that tolerates a lost NFS reply: if the temporary file is gone
 * and the target is now the file we wrote (same inode), it happened. */
static int swap_in(const char *tmp, const char *orig)
{
  struct stat before, after;

  if (lstat(tmp, &before) < 0)
    return -errno;
  if (rename(tmp, orig) == 0)
    return 0;
  if (errno == ENOENT && lstat(tmp, &after) < 0 && lstat(orig, &after) == 0 &&
      after.st_ino == before.st_ino && after.st_dev == before.st_dev)
    return 0;
  return -errno;
}

int cp_compress_backup(const struct kb_config *cfg, const struct kb_catalog *cat,
                       const struct kb_backup_ref *ref, const struct cp_settings *s,
                       const struct kb_lock *job_lock, int64_t deadline_ms,
                       struct cp_result *ret, char **ret_error)
{
  const char *library = cp_library(cfg, ref);
  char **disks = NULL, **orig = NULL, **tmp = NULL;
  struct kb_lock *lock = NULL;
  struct kb_doc *fresh = NULL;
  struct kb_compress_opts opts;
  uint64_t total_after = 0;
  int64_t t0 = kb_mono_ms();
  size_t n = 0, i;
  int r;

  memset(ret, 0, sizeof *ret);
  r = kb_backup_disks(ref->doc, &disks);
  if (r < 0)
    return r;
  while (disks[n])
    n++;
  orig = calloc(n + 1, sizeof *orig);
  tmp = calloc(n + 1, sizeof *tmp);
  if (!orig || !tmp) {
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
    kb_debug("disk %s: %llu -> %llu bytes in %.1fs", disks[i], (unsigned long long) st.input_file_size,
             (unsigned long long) st.output_file_size, st.elapsed_ms / 1000.0);
    r = qemu_img_check(tmp[i], ret_error);
    if (r == 0)
      r = verify_same(orig[i], tmp[i], deadline_ms, ret_error);
    if (r == 0 && (r = copy_owner(orig[i], tmp[i])) < 0)
      *ret_error = kb_printf("disk %s: cannot give the compressed file the original's owner: %s",
                             disks[i], strerror(-r));
    if (r < 0) {
      if (r == -ETIMEDOUT) {
        free(*ret_error);
        *ret_error = kb_printf("disk %s: timed out after %llds while checking (backup.compression.timeout)",
                               disks[i], s->timeout_s);
      }
      goto out;
    }
  }

  /* The swap: nobody may be reading the backup through a restore. */
  r = kb_catalog_lock(cat, KB_LOCK_BACKUP, ref->id, "compression swap", 60 * 1000, &lock);
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
  for (i = 0; i < n; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", disks[i]);
    uint64_t sz;
    r = swap_in(tmp[i], orig[i]);
    if (r < 0) {
      *ret_error = kb_printf("disk %s: cannot rename %s over %s: %s", disks[i], tmp[i], orig[i], strerror(-r));
      goto out;
    }
    sz = file_usage(orig[i]);
    total_after += sz;
    if (!sec || (r = kb_doc_set_ll(fresh, sec, "size", (long long) sz)) < 0)
      goto out_record;
  }
  {
    char now[32];
    kb_format_time(kb_now(), now, sizeof now);
    r = kb_doc_set(fresh, "backup", "compressed", "true");
    if (r == 0) r = kb_doc_set(fresh, "backup", "compression_library", library);
    if (r == 0) r = kb_doc_set(fresh, "backup", "compressed_at", now);
    if (r == 0) r = kb_doc_set_ll(fresh, "backup", "uncompressed_size", (long long) ret->size_before);
    if (r == 0) r = kb_doc_set_ll(fresh, "backup", "size", (long long) total_after);
    if (r == 0) r = kb_backup_save(cat, ref->vm_uuid, ref->chain, ref->id, fresh);
  }
  if (r == 0) {
    /* New files: record the hashes of a validated backup again, still
     * under the backup lock (kb_backup_rehash does nothing without any). */
    struct kb_backup_ref hr = *ref;
    hr.doc = NULL;
    r = kb_backup_rehash(cat, &hr, ret_error);
    kb_doc_free(hr.doc);
  }
out_record:
  if (r < 0 && !*ret_error)
    *ret_error = kb_printf("backup %s: files compressed but the record could not be written: %s",
                           ref->id, strerror(-r));
  ret->size_after = total_after;
  ret->elapsed_ms = kb_mono_ms() - t0;

out:
  for (i = 0; tmp && i < n; i++)
    if (tmp[i])
      (void) unlink(tmp[i]);
  kb_lock_release(lock);
  kb_doc_free(fresh);
  kb_strv_free(disks);
  kb_strv_free(orig);
  kb_strv_free(tmp);
  return r;
}
