/* Record transitions (record.h): the changes of vm.ini, chain.ini and
 * backup.ini that programs share, in one place, so that a rule such as
 * "a chain whose newest backup is deleted ends" lives once. And the words
 * of the common catalog errors. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lock.h"
#include "record.h"
#include "util.h"

/* ---- state ---- */

bool kb_backup_complete(const struct kb_doc *backup)
{
  const char *st = backup ? kb_doc_get(backup, "backup", "state") : NULL;

  return st && !KB_STREQ(st, KB_BACKUP_RUNNING);
}

const char *kb_backup_in_use_by(const struct kb_doc *backup)
{
  const char *v = backup ? kb_doc_get(backup, "backup", "in_use_by") : NULL;

  return v && *v ? v : NULL;
}

/* ---- adding ---- */

int kb_chain_add_backup(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                        struct kb_doc *chain_rec, struct kb_doc *vm_rec, const char *backup_id,
                        bool isolated, long long chain_size)
{
  long long len = kb_doc_get_ll(chain_rec, "chain", "length", 0) + 1;
  bool ended = isolated || len >= chain_size;
  char now[32];
  int r;

  kb_format_time(kb_now(), now, sizeof now);
  r = kb_doc_set_ll(chain_rec, "chain", "length", len);
  if (r == 0) r = kb_doc_set(chain_rec, "chain", "last_backup", backup_id);
  if (r == 0 && ended) {
    r = kb_doc_set(chain_rec, "chain", "ended", "true");
    if (r == 0)
      r = kb_doc_set(chain_rec, "chain", "end_reason", isolated ? "isolated backup" : "chain size reached");
  }
  if (r == 0)
    r = kb_chain_save(cat, vm_uuid, chain, chain_rec);
  if (r == 0 && !isolated) {
    r = kb_doc_set(vm_rec, "vm", "current_chain", chain);
    if (r == 0) r = kb_doc_set(vm_rec, "vm", "last_checkpoint", backup_id);
  }
  if (r == 0) r = kb_doc_set(vm_rec, "vm", "last_backup", backup_id);
  if (r == 0) r = kb_doc_set(vm_rec, "vm", "last_backup_time", now);
  return r;
}

/* ---- removing ---- */

static void remove_jobs(const struct kb_catalog *cat, const char *id)
{
  static const char *const types[] = { KB_JOB_COMPRESSION, KB_JOB_VALIDATION, KB_JOB_HASH };

  for (size_t t = 0; t < KB_ARRAY_SIZE(types); t++) {
    CLEANUP_FREE char *job = kb_printf("%s-%s", types[t], id);
    if (job)
      (void) kb_job_remove(cat, job);
  }
}

int kb_backup_remove(const struct kb_catalog *cat, const struct kb_backup_ref *ref)
{
  CLEANUP_FREE char *data = ref->doc ? kb_backup_data_dir(cat, ref) : NULL;
  CLEANUP_FREE char *meta = kb_catalog_backup_dir(cat, ref->vm_uuid, ref->chain, ref->id);

  if (!meta)
    return -EINVAL;
  if (data && kb_rm_rf(data) < 0)
    return -EIO;
  if (kb_rm_rf(meta) < 0)
    return -EIO;
  remove_jobs(cat, ref->id);
  return 0;
}

int kb_chain_remove(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                    const char *store, struct kb_doc *vm_rec)
{
  CLEANUP_FREE char *cd = kb_catalog_chain_dir(cat, vm_uuid, chain);
  CLEANUP_FREE char *dd = NULL;
  struct kb_doc *ch = NULL;
  int r = 0;

  if (!cd)
    return -EINVAL;
  if (!store && kb_chain_load(cat, vm_uuid, chain, &ch) == 0)
    store = kb_doc_get(ch, "chain", "store");
  dd = store ? kb_catalog_data_chain_dir(cat, store, vm_uuid, chain) : NULL;
  if (dd && kb_rm_rf(dd) < 0)
    r = -EIO;
  kb_doc_free(ch);
  if (kb_rm_rf(cd) < 0)
    r = -EIO;
  if (vm_rec) {
    const char *cur = kb_doc_get(vm_rec, "vm", "current_chain");
    if (cur && KB_STREQ(cur, chain)) {
      (void) kb_doc_set(vm_rec, "vm", "current_chain", NULL);
      (void) kb_doc_set(vm_rec, "vm", "last_checkpoint", NULL);
    }
  }
  return r;
}

/* ---- ending ---- */

int kb_chain_end_if_current(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            const char *reason)
{
  struct kb_doc *vm = NULL;
  const char *cur;
  int r = kb_vm_load(cat, vm_uuid, &vm);

  if (r < 0)
    return r;
  cur = kb_doc_get(vm, "vm", "current_chain");
  if (cur && KB_STREQ(cur, chain)) {
    r = kb_chain_end(cat, vm_uuid, vm, reason);
    if (r == 0)
      r = 1;
  }
  kb_doc_free(vm);
  return r;
}

/* ---- marks ---- */

int kb_backup_mark_in_use(const struct kb_catalog *cat, struct kb_backup_ref *ref, const char *vm_uuid)
{
  char **ids = NULL;
  int r = kb_backup_lineage(cat, ref, &ids);

  if (r < 0)
    return r;
  for (size_t i = 0; ids[i]; i++) {
    struct kb_doc *doc = NULL;
    struct kb_lock *lock = NULL;

    r = kb_catalog_lock(cat, KB_LOCK_BACKUP, ids[i], vm_uuid ? "quick-restore" : "consolidated",
                        120000, &lock);
    if (r < 0)
      break;
    if (kb_backup_load(cat, ref->vm_uuid, ref->chain, ids[i], &doc) < 0) {
      kb_lock_release(lock);
      continue;
    }
    r = kb_doc_set(doc, "backup", "in_use_by", vm_uuid);
    if (r == 0)
      r = kb_backup_save(cat, ref->vm_uuid, ref->chain, ids[i], doc);
    if (r == 0 && KB_STREQ(ids[i], ref->id))
      (void) kb_doc_set(ref->doc, "backup", "in_use_by", vm_uuid);
    kb_doc_free(doc);
    kb_lock_release(lock);
    if (r < 0)
      break;
  }
  kb_strv_free(ids);
  return r;
}

int kb_backup_mark_invalid(struct kb_doc *backup)
{
  int r = kb_doc_set(backup, "backup", "state", KB_BACKUP_INVALID);

  if (r == 0)
    r = kb_doc_set(backup, "backup", "validated", "false");
  return r;
}

/* ---- a chain's backups, for removing some ---- */

void kb_chain_view_clear(struct kb_chain_view *cv)
{
  if (cv->docs)
    for (size_t i = 0; i < cv->n; i++)
      kb_doc_free(cv->docs[i]);
  free(cv->docs);
  kb_strv_free(cv->ids);
  memset(cv, 0, sizeof *cv);
}

int kb_chain_view_load(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                       struct kb_chain_view *ret)
{
  struct kb_chain_view cv = { NULL, NULL, 0 };
  int r = kb_catalog_list_backups(cat, vm_uuid, chain, &cv.ids);

  if (r < 0)
    return r;
  while (cv.ids[cv.n])
    cv.n++;
  cv.docs = calloc(cv.n + 1, sizeof *cv.docs);
  if (!cv.docs) {
    kb_chain_view_clear(&cv);
    return -ENOMEM;
  }
  for (size_t i = 0; i < cv.n; i++)
    (void) kb_backup_load(cat, vm_uuid, chain, cv.ids[i], &cv.docs[i]);
  *ret = cv;
  return 0;
}

size_t kb_chain_view_dependents(const struct kb_chain_view *cv, const char *backup, bool *del)
{
  size_t i, n = 0;
  bool changed;

  for (i = 0; i < cv->n; i++)
    if (KB_STREQ(cv->ids[i], backup))
      del[i] = true;
  do {
    changed = false;
    for (i = 0; i < cv->n; i++) {
      const char *parent = cv->docs[i] ? kb_doc_get(cv->docs[i], "backup", "parent") : NULL;
      if (del[i] || !parent)
        continue;
      for (size_t k = 0; k < cv->n; k++)
        if (del[k] && KB_STREQ(cv->ids[k], parent)) {
          del[i] = changed = true;
          break;
        }
    }
  } while (changed);
  for (i = 0; i < cv->n; i++)
    n += del[i];
  return n;
}

/* Whether a removed backup (DEL) is called ID. */
static bool removed(const struct kb_chain_view *cv, const bool *del, const char *id)
{
  if (!id)
    return false;
  for (size_t i = 0; i < cv->n; i++)
    if (del[i] && KB_STREQ(cv->ids[i], id))
      return true;
  return false;
}

int kb_chain_forget(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                    const struct kb_chain_view *cv, const bool *del, struct kb_forget_result *ret)
{
  struct kb_doc *vmrec = NULL, *chrec = NULL;
  const char *store = NULL, *cur, *lastcp, *last;
  size_t remaining = 0, i;
  bool head_gone, cp_gone;
  int r;

  memset(ret, 0, sizeof *ret);
  r = kb_vm_load(cat, vm_uuid, &vmrec);
  if (r < 0)
    return r;
  (void) kb_chain_load(cat, vm_uuid, chain, &chrec);
  for (i = 0; i < cv->n; i++) {
    remaining += !del[i];
    if (del[i] && !store && cv->docs[i])
      store = kb_doc_get(cv->docs[i], "backup", "store");
  }
  last = chrec ? kb_doc_get(chrec, "chain", "last_backup") : NULL;
  cur = kb_doc_get(vmrec, "vm", "current_chain");
  lastcp = kb_doc_get(vmrec, "vm", "last_checkpoint");
  head_gone = remaining == 0 || removed(cv, del, last);
  cp_gone = removed(cv, del, lastcp);
  if (removed(cv, del, kb_doc_get(vmrec, "vm", "last_backup")))
    (void) kb_doc_set(vmrec, "vm", "last_backup", NULL);

  if (remaining == 0) {
    (void) kb_chain_remove(cat, vm_uuid, chain, store, NULL);
    ret->chain_removed = true;
  } else if (chrec) {
    const char *newest = NULL;
    for (i = 0; i < cv->n; i++)
      if (!del[i])
        newest = cv->ids[i];
    r = kb_doc_set(chrec, "chain", "last_backup", newest);
    if (r == 0)
      r = kb_doc_set_ll(chrec, "chain", "length", (long long) remaining);
    if (r == 0 && head_gone && !kb_doc_get_bool(chrec, "chain", "ended", false)) {
      r = kb_doc_set(chrec, "chain", "ended", "true");
      if (r == 0)
        r = kb_doc_set(chrec, "chain", "end_reason", "its newest backup was deleted");
    }
    if (r == 0)
      r = kb_chain_save(cat, vm_uuid, chain, chrec);
    if (r < 0)
      goto out;
  }
  /* The VM's checkpoint belonged to a removed backup: nothing can be
   * incremental on it any more, so the chain ends here. */
  if (cur && KB_STREQ(cur, chain) && (head_gone || cp_gone)) {
    ret->chain_ended = remaining > 0;
    (void) kb_doc_set(vmrec, "vm", "current_chain", NULL);
  }
  if (cp_gone) {
    CLEANUP_FREE char *cpx = kb_catalog_checkpoint_path(cat, vm_uuid, lastcp);
    if (cpx)
      (void) kb_meta_remove_file(cpx);
    (void) kb_doc_set(vmrec, "vm", "last_checkpoint", NULL);
  }
  r = kb_vm_save(cat, vm_uuid, vmrec);
out:
  kb_doc_free(chrec);
  kb_doc_free(vmrec);
  return r;
}

/* ---- merge forward ---- */

bool kb_backup_merge_pending(const struct kb_doc *backup)
{
  const char *m = backup ? kb_doc_get(backup, "backup", "merge") : NULL;

  return m && *m;
}

static char *disk_sec(const char *disk)
{
  return kb_printf("disk:%s", disk);
}

int kb_backup_merge_intent(struct kb_doc *backup, const char *const *merged, char *const *disks,
                           char *const *hashes)
{
  CLEANUP_FREE char *list = NULL;
  size_t len = 1, i;
  int r = 0;

  for (i = 0; merged[i]; i++)
    len += strlen(merged[i]) + 1;
  if (!(list = calloc(len, 1)))
    return -ENOMEM;
  for (i = 0; merged[i]; i++) {
    if (i)
      strcat(list, " ");
    strcat(list, merged[i]);
  }
  if (!*list)
    return -EINVAL;
  for (i = 0; disks[i] && r == 0; i++) {
    CLEANUP_FREE char *sec = disk_sec(disks[i]);
    if (!sec)
      return -ENOMEM;
    r = kb_doc_set(backup, sec, "hash_new", hashes[i]);
  }
  if (r == 0)
    r = kb_doc_set(backup, "backup", "merge", list);
  return r;
}

int kb_backup_merge_done(struct kb_doc *backup, char *const *disks, const bool *done,
                         const long long *sizes, bool all_full)
{
  const char *merged = kb_doc_get(backup, "backup", "merge");
  CLEANUP_FREE char *from = merged ? strdup(merged) : NULL;
  long long total = 0;
  char now[32];
  int r = 0;

  if (merged && !from)
    return -ENOMEM;
  for (size_t i = 0; disks[i] && r == 0; i++) {
    CLEANUP_FREE char *sec = disk_sec(disks[i]);
    const char *hn;
    if (!sec)
      return -ENOMEM;
    hn = kb_doc_get(backup, sec, "hash_new");
    if (done[i]) {
      if (hn)
        r = kb_doc_set(backup, sec, "hash", hn);
      if (r == 0) r = kb_doc_set_ll(backup, sec, "size", sizes[i]);
      if (r == 0) r = kb_doc_set(backup, sec, "mode", "full");
      if (r == 0) r = kb_doc_set(backup, sec, "backing", NULL);
      if (r == 0 && from) r = kb_doc_set_text(backup, sec, "reason", "merged forward by kbossctl prune");
    }
    if (r == 0)
      r = kb_doc_set(backup, sec, "hash_new", NULL);
    total += kb_doc_get_ll(backup, sec, "size", 0);
  }
  kb_format_time(kb_now(), now, sizeof now);
  if (r == 0 && all_full) {
    r = kb_doc_set(backup, "backup", "type", "full");
    if (r == 0) r = kb_doc_set(backup, "backup", "parent", NULL);
    if (r == 0) r = kb_doc_set(backup, "backup", "since_checkpoint", NULL);
    if (r == 0) r = kb_doc_set(backup, "backup", "full_disks", NULL);
    if (r == 0 && from) r = kb_doc_set(backup, "backup", "merged_from", from);
    if (r == 0 && from) r = kb_doc_set(backup, "backup", "merged_at", now);
  } else if (r == 0 && from) {
    /* Some disks are full now, the others still need the parent. */
    r = kb_doc_set(backup, "backup", "full_disks", "true");
  }
  if (r == 0) r = kb_doc_set_ll(backup, "backup", "size", total);
  if (r == 0 && from) r = kb_doc_set(backup, "backup", "hashed", now);
  if (r == 0) r = kb_doc_set(backup, "backup", "merge", NULL);
  return r;
}

/* Every backup id of the VM (any chain), sorted; NULL-terminated. */
static int vm_backup_ids(const struct kb_catalog *cat, const char *vm_uuid, char ***ret)
{
  char **chains = NULL, **all = NULL;
  size_t n = 0;
  int r = kb_catalog_list_chains(cat, vm_uuid, &chains);

  if (r < 0)
    return r;
  all = calloc(1, sizeof *all);
  for (size_t c = 0; all && chains[c]; c++) {
    char **ids = NULL;
    if (kb_catalog_list_backups(cat, vm_uuid, chains[c], &ids) < 0)
      continue;
    for (size_t i = 0; ids[i]; i++) {
      char **nv = realloc(all, (n + 2) * sizeof *all);
      if (!nv) {
        r = -ENOMEM;
        break;
      }
      all = nv;
      all[n] = ids[i];
      ids[i] = NULL;
      all[++n] = NULL;
    }
    kb_strv_free(ids);
  }
  kb_strv_free(chains);
  if (!all || r < 0) {
    kb_strv_free(all);
    return r < 0 ? r : -ENOMEM;
  }
  *ret = all;
  return 0;
}

static bool strv_has(char *const *v, const char *s)
{
  for (size_t i = 0; v && v[i]; i++)
    if (KB_STREQ(v[i], s))
      return true;
  return false;
}

int kb_vm_forget_checkpoints(const struct kb_catalog *cat, const char *vm_uuid,
                             const char *const *removed, void (*after_each)(void))
{
  CLEANUP_FREE char *dir = kb_catalog_checkpoints_dir(cat, vm_uuid);
  struct kb_doc *vm = NULL;
  char **names = NULL, **ids = NULL;
  const char *keep;
  int r, n = 0;

  if (!dir)
    return -EINVAL;
  r = kb_vm_load(cat, vm_uuid, &vm);
  if (r < 0)
    return r;
  keep = kb_doc_get(vm, "vm", "last_checkpoint");
  r = kb_meta_list_files(dir, &names);
  if (r == -ENOENT)
    r = 0;
  if (r >= 0 && names)
    r = vm_backup_ids(cat, vm_uuid, &ids);
  for (size_t i = 0; r >= 0 && names && names[i]; i++) {
    /* "<id>.xml": only names kboss gave its checkpoints. */
    size_t l = strlen(names[i]);
    CLEANUP_FREE char *id = l > 4 && KB_STREQ(names[i] + l - 4, ".xml") ? strndup(names[i], l - 4) : NULL;
    CLEANUP_FREE char *path = NULL;
    if (!id || !kb_backup_id_ok(id) || (keep && KB_STREQ(id, keep)))
      continue;
    if (strv_has(ids, id) && !strv_has((char *const *) removed, id))
      continue;
    path = kb_catalog_checkpoint_path(cat, vm_uuid, id);
    if (path && kb_meta_remove_file(path) == 0) {
      n++;
      if (after_each)
        after_each();
    }
  }
  kb_strv_free(names);
  kb_strv_free(ids);
  kb_doc_free(vm);
  return r < 0 ? r : n;
}

/* ---- words ---- */

char *kb_msg_backup_find(const char *id, int err)
{
  if (err == -ENOENT)
    return kb_printf("backup %s: no such backup in the catalog", id);
  if (err == -EINVAL)
    return kb_printf("backup %s: not a backup id", id);
  return kb_printf("backup %s: %s", id, strerror(-err));
}

char *kb_msg_lock(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name,
                  const char *label, int err)
{
  CLEANUP_FREE char *holder = NULL;

  if (err != -EBUSY)
    return kb_printf("%s: cannot take its lock: %s", label, strerror(-err));
  (void) kb_catalog_lock_probe(cat, kind, name, &holder);
  return kb_printf("%s is busy: another kboss operation holds it (%s)", label,
                   holder ? holder : "holder unknown");
}

char *kb_msg_backup_incomplete(const char *id, const struct kb_doc *backup)
{
  const char *st = backup ? kb_doc_get(backup, "backup", "state") : NULL;

  return kb_printf("backup %s is not complete (%s)", id, st ? st : "no state");
}
