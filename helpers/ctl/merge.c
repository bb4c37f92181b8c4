/* kbossctl prune: merge forward ("synthetic full").
 *
 * When the oldest backups of a chain are due but a kept backup T depends
 * on them, T is rewritten as a full that holds the same guest bytes, and
 * the older backups can go. Per disk of T whose file has a backing file:
 *
 *  1. the disk's chain is validated (lib/chain.c) and must consist of T's
 *     file and files of the backups being merged, nothing else;
 *  2. qemu-img convert reads exactly that chain (the json: description,
 *     every node spelled out, "backing": null at the base: qemu follows no
 *     name from the export) into ".kbmerge-<file>" in T's folder, a file we
 *     created 0600 with O_EXCL|O_NOFOLLOW (the same type of compression as
 *     T's file when T was compressed: qemu-img's own for zstd, kboss's
 *     writer for zlib); qemu-img compare proves it reads
 *     the same as the chain; it is fsync'ed and hashed;
 *  3. the intent goes into T's record (kb_backup_merge_intent: "merge" and
 *     each disk's hash_new); from now on the merge only goes forward;
 *  4. each temporary file is renamed over T's file, the folder fsync'ed;
 *  5. the record says what T now is (kb_backup_merge_done: a full, no
 *     parent, new hashes and sizes).
 * The caller then removes the merged backups and updates the chain.
 *
 * A kill at any point leaves every backup restorable: before 4 T's files
 * are untouched (a temporary file is just removed by the next prune);
 * from 3 on T's record accepts the old and the new hash of each disk, and
 * both files read the same guest bytes; the next prune
 * (ctl_merge_recover) renames the proven temporary files that are left,
 * then records what the files are. Test hook: KBOSS_TEST_PRUNE_KILL=POINT
 * (ctl_prune_point). */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "chain.h"
#include "ctl.h"
#include "hash.h"
#include "lock.h"
#include "log.h"
#include "qcow2.h"
#include "record.h"
#include "util.h"

#define MERGE_PREFIX ".kbmerge-"

void ctl_prune_point(const char *point)
{
  const char *k = getenv("KBOSS_TEST_PRUNE_KILL");

  if (k && KB_STREQ(k, point)) {
    kb_debug("test: killed at %s", point);
    (void) kill(getpid(), SIGKILL);
  }
}

bool ctl_job_running(const struct kb_catalog *cat, const char *id)
{
  static const char *const types[] = { KB_JOB_COMPRESSION, KB_JOB_VALIDATION, KB_JOB_HASH };

  for (size_t t = 0; t < KB_ARRAY_SIZE(types); t++) {
    CLEANUP_FREE char *jid = kb_printf("%s-%s", types[t], id);
    if (!jid || kb_catalog_lock_probe(cat, KB_LOCK_JOB, jid, NULL) != 0)
      return true;
  }
  return false;
}

/* Why the pending merge of IDS[K] cannot be finished now (its file is
 * replaced by a rename): a quick restore runs on it, or a backup built on
 * it is locked or has a job running (a validation or extract of it may
 * hold the file open, on another host too). NULL: it can. */
static const char *finish_blocked(const struct kb_catalog *cat, const struct kb_doc *doc, char *const *ids,
                                  size_t k)
{
  if (kb_backup_in_use_by(doc))
    return "a quick restore runs on it";
  if (ctl_job_running(cat, ids[k]))
    return "a job runs on it";
  /* Ids sort by time: what is built on it is newer. */
  for (size_t i = k + 1; ids[i]; i++)
    if (kb_catalog_lock_probe(cat, KB_LOCK_BACKUP, ids[i], NULL) != 0 || ctl_job_running(cat, ids[i]))
      return "a backup built on it is in use";
  return NULL;
}

/* "<dir>/.kbmerge-<file>" beside PATH. */
static char *merge_temp(const char *path)
{
  const char *slash = strrchr(path, '/');

  return slash ? kb_printf("%.*s/" MERGE_PREFIX "%s", (int) (slash - path), path, slash + 1) : NULL;
}

/* Remove our temporary files from a backup's data folder: ours, and the
 * compressing writer's temporary names built on ours (".<out>.kbtmp-<hex>"). */
static void remove_temps(const struct kb_catalog *cat, const struct kb_backup_ref *ref)
{
  CLEANUP_FREE char *dir = kb_backup_data_dir(cat, ref);

  if (dir)
    kb_remove_prefixed(dir, MERGE_PREFIX);
}

#define file_usage kb_file_usage

/* Whether the qcow2 file PATH has no backing file (1), has one (0), or
 * cannot be read (-errno). */
static int is_full(const char *path)
{
  struct kb_qcow2 *img = NULL;
  int r = kb_qcow2_open(path, &img, NULL);

  if (r < 0)
    return r;
  r = kb_qcow2_get_info(img)->backing_file == NULL;
  kb_qcow2_close(img);
  return r;
}

/* Whether REL ("<backup>/<file>") is a file of a backup in IDS. */
static bool rel_in(const char *rel, const char *target, const char *const *ids)
{
  size_t l = strlen(target);

  if (strncmp(rel, target, l) == 0 && rel[l] == '/')
    return true;
  for (size_t i = 0; ids[i]; i++) {
    l = strlen(ids[i]);
    if (strncmp(rel, ids[i], l) == 0 && rel[l] == '/')
      return true;
  }
  return false;
}

/* Write the merged image of the validated chain CH into TMP (created here);
 * on success *RET_HASH is its hash. COMPRESS: NULL, "zstd" or "zlib".
 * By the numbers in docs/operations.md ("Merge forward"): qemu-img convert
 * writes the file, compressing it itself for zstd; for zlib it writes an
 * uncompressed file that kboss's writer compresses (libdeflate level 4,
 * as the compression job: three times faster than qemu's zlib and 4 %
 * smaller). */
static int write_merged(const struct kb_chain *ch, const char *orig, const char *tmp, const char *compress,
                        char ret_hash[KB_HASH_HEX_LEN + 1], char **ret_error)
{
  bool own_writer = compress && KB_STREQ(compress, "zlib");
  CLEANUP_FREE char *spec = kb_chain_qemu_json(ch, NULL), *tspec = kb_qemu_json_single(tmp);
  CLEANUP_FREE char *opts = NULL, *out = NULL, *raw = own_writer ? kb_printf("%s.raw", tmp) : NULL;
  const char *target = own_writer ? raw : tmp;
  CLEANUP_CLOSE int fd = -1;
  struct kb_qcow2 *img = NULL;
  struct stat a, b;
  uint64_t cs = 65536;
  int r;

  if (!spec || !tspec || (own_writer && !raw))
    return -ENOMEM;
  if (kb_qcow2_open(orig, &img, NULL) == 0) {
    cs = kb_qcow2_get_info(img)->cluster_size;
    kb_qcow2_close(img);
  }
  opts = compress && !own_writer
    ? kb_printf("cluster_size=%llu,compression_type=%s", (unsigned long long) cs, compress)
    : kb_printf("cluster_size=%llu", (unsigned long long) cs);
  if (!opts)
    return -ENOMEM;
  (void) unlink(tmp);
  if (raw)
    (void) unlink(raw);
  fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    r = -errno;
    *ret_error = kb_printf("cannot create %s: %s", target, strerror(-r));
    return r;
  }
  ctl_prune_point("temp-created");
  {
    const char *argv[12];
    size_t na = 0;
    argv[na++] = QEMU_IMG;
    argv[na++] = "convert";
    argv[na++] = "-q";
    argv[na++] = "-O";
    argv[na++] = "qcow2";
    argv[na++] = "-o";
    argv[na++] = opts;
    if (compress && !own_writer)
      argv[na++] = "-c";
    argv[na++] = spec;
    argv[na++] = target;
    argv[na] = NULL;
    r = kb_run(argv, &out);
  }
  if (r != 0) {
    *ret_error = kb_printf("qemu-img convert into %s failed (status %d): %s", target, r, out ? out : "");
    return -EIO;
  }
  /* Still the file we created (nobody swapped a name under us). */
  if (fstat(fd, &a) < 0 || lstat(target, &b) < 0 || !S_ISREG(b.st_mode) || a.st_ino != b.st_ino ||
      a.st_dev != b.st_dev) {
    *ret_error = kb_printf("%s was replaced while it was written", target);
    return -EPERM;
  }
  if (own_writer) {
    struct kb_compress_opts o;
    CLEANUP_FREE char *msg = NULL;

    kb_compress_opts_init(&o);
    o.algorithm = KB_QCOW2_ZLIB;
    o.zlib_level = 4;
    o.threads = 2;
    /* The writer creates TMP itself (O_EXCL, 0600, fsync'ed). */
    r = kb_qcow2_compress(raw, tmp, &o, NULL, &msg);
    (void) unlink(raw);
    if (r < 0) {
      *ret_error = kb_printf("compressing %s: %s", tmp, msg ? msg : strerror(-r));
      return r;
    }
    close(fd);
    fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &a) < 0 || !S_ISREG(a.st_mode)) {
      *ret_error = kb_printf("%s: not a regular file after compressing", tmp);
      return -EPERM;
    }
  }
  ctl_prune_point("disk-copied");
  r = is_full(tmp);
  if (r != 1) {
    *ret_error = kb_printf("%s: the merged file is not a full qcow2 image (%s)", tmp,
                           r < 0 ? strerror(-r) : "it has a backing file");
    return r < 0 ? r : -EIO;
  }
  free(out);
  out = NULL;
  {
    /* The independent proof: qemu reads the same guest bytes from both. */
    const char *argv[] = { QEMU_IMG, "compare", "-q", spec, tspec, NULL };
    r = kb_run(argv, &out);
  }
  if (r != 0) {
    *ret_error = kb_printf("qemu-img compare of the chain and %s: %s (status %d) %s", tmp,
                           r == 1 ? "they differ" : "failed", r, out ? out : "");
    return -EIO;
  }
  if ((r = kb_copy_owner(orig, fd)) < 0) {
    *ret_error = kb_printf("cannot give %s the owner of %s: %s", tmp, orig, strerror(-r));
    return r;
  }
  if (fsync(fd) < 0) {
    r = -errno;
    *ret_error = kb_printf("fsync %s: %s", tmp, strerror(-r));
    return r;
  }
  r = kb_hash_file(tmp, ret_hash, NULL);
  if (r < 0)
    *ret_error = kb_printf("cannot hash %s: %s", tmp, strerror(-r));
  return r;
}

struct disks {
  char **names;   /* disk targets */
  char **path;    /* T's file for each */
  char **tmp;     /* its temporary merged file */
  char **hash;    /* the merged file's hash, NULL: the disk is full already */
  bool *done;
  long long *size;
  size_t n;
};

static void disks_free(struct disks *d)
{
  kb_strv_free(d->names);
  for (size_t i = 0; i < d->n; i++) {
    free(d->path ? d->path[i] : NULL);
    free(d->tmp ? d->tmp[i] : NULL);
    free(d->hash ? d->hash[i] : NULL);
  }
  free(d->path);
  free(d->tmp);
  free(d->hash);
  free(d->done);
  free(d->size);
  memset(d, 0, sizeof *d);
}

static int disks_load(const struct kb_catalog *cat, const struct kb_backup_ref *ref, struct disks *d)
{
  int r;

  memset(d, 0, sizeof *d);
  r = kb_backup_disks(ref->doc, &d->names);
  if (r < 0)
    return r;
  while (d->names[d->n])
    d->n++;
  d->path = calloc(d->n + 1, sizeof *d->path);
  d->tmp = calloc(d->n + 1, sizeof *d->tmp);
  d->hash = calloc(d->n + 1, sizeof *d->hash);
  d->done = calloc(d->n + 1, sizeof *d->done);
  d->size = calloc(d->n + 1, sizeof *d->size);
  if (!d->path || !d->tmp || !d->hash || !d->done || !d->size)
    return -ENOMEM;
  for (size_t i = 0; i < d->n; i++) {
    d->path[i] = kb_backup_disk_path(cat, ref, d->names[i]);
    d->tmp[i] = d->path[i] ? merge_temp(d->path[i]) : NULL;
    if (!d->tmp[i])
      return -EINVAL;
  }
  return 0;
}

/* Record in REF->doc what D's files now are and save it. */
static int record_done(const struct kb_catalog *cat, struct kb_backup_ref *ref, struct disks *d)
{
  bool all_full = true;

  for (size_t i = 0; i < d->n; i++) {
    d->size[i] = (long long) file_usage(d->path[i]);
    if (is_full(d->path[i]) != 1)
      all_full = false;
  }
  int r = kb_backup_merge_done(ref->doc, d->names, d->done, d->size, all_full);
  if (r == 0)
    r = kb_backup_save(cat, ref->vm_uuid, ref->chain, ref->id, ref->doc);
  return r;
}

int ctl_merge_forward(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                      const char *target, const char *const *merged, char **ret_error)
{
  struct kb_backup_ref ref = { (char *) vm_uuid, (char *) chain, (char *) target, NULL };
  CLEANUP_FREE char *chaindir = NULL;
  struct disks d;
  const char *store, *compress = NULL;
  bool intent = false;
  int r;

  memset(&d, 0, sizeof d);
  /* The caller holds the locks of TARGET and MERGED: read T afresh. */
  r = kb_backup_load(cat, vm_uuid, chain, target, &ref.doc);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot read its record: %s", target, strerror(-r));
    return r;
  }
  if (!KB_STREQ(kb_doc_get(ref.doc, "backup", "state") ? kb_doc_get(ref.doc, "backup", "state") : "", KB_BACKUP_READY) ||
      kb_backup_in_use_by(ref.doc) || kb_doc_get(ref.doc, "backup", "swap") || kb_backup_merge_pending(ref.doc)) {
    *ret_error = kb_printf("backup %s is not Ready, in use, or has a compression swap or merge pending", target);
    r = -EBUSY;
    goto out;
  }
  if (kb_doc_get_bool(ref.doc, "backup", "compressed", false)) {
    const char *lib = kb_doc_get(ref.doc, "backup", "compression_library");
    compress = lib && KB_STREQ(lib, "zlib") ? "zlib" : "zstd";
  }
  store = kb_doc_get(ref.doc, "backup", "store");
  chaindir = store ? kb_catalog_data_chain_dir(cat, store, vm_uuid, chain) : NULL;
  if (!chaindir || (r = disks_load(cat, &ref, &d)) < 0) {
    *ret_error = kb_printf("backup %s: bad store or disk names in its record", target);
    r = r < 0 ? r : -EINVAL;
    goto out;
  }
  remove_temps(cat, &ref);
  ctl_prune_point("planned");

  for (size_t i = 0; i < d.n; i++) {
    struct kb_chain *ch = NULL;
    CLEANUP_FREE char *why = NULL;
    char hex[KB_HASH_HEX_LEN + 1];

    r = kb_chain_validate(chaindir, d.path[i], &ch, &why);
    if (r < 0) {
      *ret_error = kb_printf("disk %s: refusing its backing chain: %s", d.names[i], why ? why : strerror(-r));
      goto out;
    }
    if (ch->n == 1) {   /* this disk is a full already */
      kb_chain_free(ch);
      continue;
    }
    for (size_t k = 0; k < ch->n; k++)
      if (!rel_in(ch->rel[k], target, merged)) {
        *ret_error = kb_printf("disk %s: its chain reaches %s, which is not being merged", d.names[i], ch->rel[k]);
        kb_chain_free(ch);
        r = -EPERM;
        goto out;
      }
    r = write_merged(ch, d.path[i], d.tmp[i], compress, hex, ret_error);
    kb_chain_free(ch);
    if (r < 0)
      goto out;
    if (!(d.hash[i] = strdup(hex))) {
      r = -ENOMEM;
      goto out;
    }
  }
  ctl_prune_point("synced");

  /* The intent: from here the merge goes forward only. */
  r = kb_backup_merge_intent(ref.doc, merged, d.names, d.hash);
  if (r == 0)
    r = kb_backup_save(cat, vm_uuid, chain, target, ref.doc);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot record the merge: %s", target, strerror(-r));
    goto out;
  }
  intent = true;
  ctl_prune_point("intent");

  for (size_t i = 0, k = 0; i < d.n; i++) {
    if (!d.hash[i])
      continue;
    r = kb_rename_over(d.tmp[i], d.path[i]);
    if (r < 0) {
      *ret_error = kb_printf("disk %s: cannot rename %s over %s: %s", d.names[i], d.tmp[i], d.path[i],
                             strerror(-r));
      goto out;
    }
    d.done[i] = true;
    if (k++ == 0)
      ctl_prune_point("renamed-first");
  }
  for (size_t i = 0; i < d.n; i++)
    if (d.done[i]) {
      (void) kb_fsync_parent(d.path[i]);
      break;
    }
  ctl_prune_point("renamed");

  r = record_done(cat, &ref, &d);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: files merged but the record could not be written (the next prune "
                           "finishes it): %s", target, strerror(-r));
    goto out;
  }
  ctl_prune_point("recorded");
out:
  /* A pending merge keeps its proven temporary files for the next prune. */
  if (!intent)
    for (size_t i = 0; d.tmp && i < d.n; i++)
      if (d.tmp[i])
        (void) unlink(d.tmp[i]);
  disks_free(&d);
  kb_doc_free(ref.doc);
  return r;
}

/* Finish the merge recorded in REF's record (held under its lock). */
static int finish_one(const struct kb_catalog *cat, struct kb_backup_ref *ref, char **ret_error)
{
  struct disks d;
  size_t n = 0, ndone = 0;
  int r;

  r = disks_load(cat, ref, &d);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: bad disk names in its record", ref->id);
    disks_free(&d);
    return r;
  }
  for (size_t i = 0; i < d.n; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", d.names[i]);
    const char *want = sec ? kb_doc_get(ref->doc, sec, "hash_new") : NULL;
    char hex[KB_HASH_HEX_LEN + 1];
    struct stat st;

    if (!want)
      continue;
    n++;
    /* A proven temporary file left: put it in place. */
    if (lstat(d.tmp[i], &st) == 0 && S_ISREG(st.st_mode) && kb_hash_file(d.tmp[i], hex, NULL) == 0 &&
        KB_STREQ(hex, want)) {
      r = kb_rename_over(d.tmp[i], d.path[i]);
      if (r < 0) {
        *ret_error = kb_printf("backup %s: disk %s: cannot rename %s over %s: %s", ref->id, d.names[i],
                               d.tmp[i], d.path[i], strerror(-r));
        disks_free(&d);
        return r;
      }
      (void) kb_fsync_parent(d.path[i]);
      ctl_prune_point("recovery-renamed");
    }
    r = kb_hash_file(d.path[i], hex, NULL);
    if (r < 0) {
      *ret_error = kb_printf("backup %s: disk %s: cannot hash %s: %s", ref->id, d.names[i], d.path[i],
                             strerror(-r));
      disks_free(&d);
      return r;
    }
    d.done[i] = KB_STREQ(hex, want);
    ndone += d.done[i];
  }
  r = record_done(cat, ref, &d);
  if (r < 0)
    *ret_error = kb_printf("backup %s: cannot save its record: %s", ref->id, strerror(-r));
  else
    kb_info("backup %s: finished an interrupted merge forward (%zu of %zu disks merged)", ref->id, ndone, n);
  remove_temps(cat, ref);
  disks_free(&d);
  return r;
}

int ctl_merge_recover(const struct kb_catalog *cat, const char *vm_uuid, unsigned *ret_finished)
{
  char **chains = NULL;
  int r, rc = 0;

  r = kb_catalog_list_chains(cat, vm_uuid, &chains);
  if (r < 0)
    return r;
  for (size_t c = 0; chains[c]; c++) {
    char **ids = NULL;
    if (kb_catalog_list_backups(cat, vm_uuid, chains[c], &ids) < 0)
      continue;
    for (size_t i = 0; ids[i]; i++) {
      struct kb_backup_ref ref = { (char *) vm_uuid, chains[c], ids[i], NULL };
      struct kb_lock *lock = NULL;
      CLEANUP_FREE char *err = NULL;

      if (kb_backup_load(cat, vm_uuid, chains[c], ids[i], &ref.doc) < 0)
        continue;
      if (!kb_backup_merge_pending(ref.doc)) {
        /* A prune killed before it recorded a merge: its files go. */
        remove_temps(cat, &ref);
        kb_doc_free(ref.doc);
        continue;
      }
      {
        const char *why = finish_blocked(cat, ref.doc, ids, i);
        if (why) {
          kb_warn("backup %s: a merge forward is pending, not finished now (%s); its files and record "
                  "stay consistent meanwhile", ids[i], why);
          kb_doc_free(ref.doc);
          continue;
        }
      }
      kb_doc_free(ref.doc);
      ref.doc = NULL;
      r = kb_catalog_lock(cat, KB_LOCK_BACKUP, ids[i], "prune: finish a merge", 60000, &lock);
      if (r < 0) {
        kb_warn("backup %s: a merge forward is pending but its lock is held; the next prune finishes it",
                ids[i]);
        rc = 1;
        continue;
      }
      if (kb_backup_load(cat, vm_uuid, chains[c], ids[i], &ref.doc) == 0 && kb_backup_merge_pending(ref.doc) &&
          !kb_backup_in_use_by(ref.doc)) {
        if (finish_one(cat, &ref, &err) < 0) {
          kb_err("prune: %s", err ? err : "cannot finish a merge");
          rc = 1;
        } else if (ret_finished)
          (*ret_finished)++;
      }
      kb_doc_free(ref.doc);
      kb_lock_release(lock);
    }
    kb_strv_free(ids);
  }
  kb_strv_free(chains);
  return rc;
}
