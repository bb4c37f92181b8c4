/* kbossctl delete: remove a backup (and, on request, the backups of its
 * chain that depend on it) from the store and the catalog. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "record.h"
#include "util.h"

static void delete_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s delete BACKUP [--with-descendants]\n"
          "\n"
          "Delete a backup's files on its store and its catalog record. A backup that\n"
          "later backups of its chain depend on is refused unless --with-descendants\n"
          "deletes them all with it; a backup in use by a quick restore is refused.\n"
          "Deleting a chain's newest backup ends the chain (the next backup is full).\n"
          "\n"
          "  --with-descendants  also delete every backup that depends on BACKUP\n"
          "  --config FILE       configuration file\n", kb_progname);
}

struct chain_view {
  char **ids;                  /* every backup of the chain, oldest first */
  struct kb_doc **docs;
  bool *del;
  size_t n;
};

static void chain_view_clear(struct chain_view *cv)
{
  for (size_t i = 0; i < cv->n; i++)
    kb_doc_free(cv->docs[i]);
  free(cv->docs);
  free(cv->del);
  kb_strv_free(cv->ids);
  memset(cv, 0, sizeof *cv);
}

static int chain_view_load(const struct kb_catalog *cat, const char *uuid, const char *chain,
                           struct chain_view *cv)
{
  int r = kb_catalog_list_backups(cat, uuid, chain, &cv->ids);

  if (r < 0)
    return r;
  while (cv->ids[cv->n])
    cv->n++;
  cv->docs = calloc(cv->n + 1, sizeof *cv->docs);
  cv->del = calloc(cv->n + 1, sizeof *cv->del);
  if (!cv->docs || !cv->del)
    return -ENOMEM;
  for (size_t i = 0; i < cv->n; i++)
    (void) kb_backup_load(cat, uuid, chain, cv->ids[i], &cv->docs[i]);
  return 0;
}

static int remove_jobs(const struct kb_catalog *cat, const char *id)
{
  static const char *const types[] = { KB_JOB_COMPRESSION, KB_JOB_VALIDATION, KB_JOB_HASH };
  for (size_t t = 0; t < KB_ARRAY_SIZE(types); t++) {
    CLEANUP_FREE char *job = kb_printf("%s-%s", types[t], id);
    if (job)
      (void) kb_job_remove(cat, job);
  }
  return 0;
}

int ctl_delete(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "with-descendants", no_argument, NULL, 'd' },
    { NULL, 0, NULL, 0 },
  };
  struct kb_backup_ref ref = { NULL, NULL, NULL, NULL };
  struct chain_view cv = { NULL, NULL, NULL, 0 };
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  struct kb_lock *vmlock = NULL;
  struct kb_lock **blocks = NULL;
  struct kb_doc *vmrec = NULL, *chrec = NULL;
  CLEANUP_FREE char *uuid = NULL, *chain = NULL, *chain_data = NULL;
  const char *id, *vm_name;
  bool with_desc = false, changed;
  size_t ndel = 0, remaining = 0, i;
  int c, r, rc = 1;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: delete_usage(stdout); return 0;
    case 'd': with_desc = true; break;
    default: delete_usage(stderr); return 2;
    }
  }
  if (argc - optind != 1) {
    delete_usage(stderr);
    return 2;
  }
  id = argv[optind];
  if (!kb_name_ok(id)) {
    kb_err("delete: \"%s\" is not a backup id", id);
    return 2;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  cat = ctl_open_catalog(cfg);
  if (!cat)
    goto out;
  if (ctl_find_backup(cat, id, "delete", &ref) < 0)
    goto out;
  uuid = strdup(ref.vm_uuid);
  chain = strdup(ref.chain);
  if (!uuid || !chain)
    goto out;
  vm_name = kb_doc_get(ref.doc, "backup", "vm_name");
  if (ctl_lock_vm(cat, uuid, vm_name ? vm_name : uuid, "delete", &vmlock) < 0)
    goto out;
  /* Under the lock: what the chain holds now. */
  r = chain_view_load(cat, uuid, chain, &cv);
  if (r < 0) {
    kb_err("delete: backup %s: cannot list its chain %s: %s", id, chain, strerror(-r));
    goto out;
  }
  for (i = 0; i < cv.n; i++)
    if (KB_STREQ(cv.ids[i], id))
      cv.del[i] = true;
  do {
    changed = false;
    for (i = 0; i < cv.n; i++) {
      const char *parent = cv.docs[i] ? kb_doc_get(cv.docs[i], "backup", "parent") : NULL;
      if (cv.del[i] || !parent)
        continue;
      for (size_t k = 0; k < cv.n; k++)
        if (cv.del[k] && KB_STREQ(cv.ids[k], parent)) {
          cv.del[i] = changed = true;
          break;
        }
    }
  } while (changed);
  for (i = 0; i < cv.n; i++)
    ndel += cv.del[i];
  if (ndel == 0) {
    kb_err("delete: backup %s is gone (deleted meanwhile?)", id);
    goto out;
  }
  if (ndel > 1 && !with_desc) {
    char list[512];
    size_t used = 0;
    list[0] = '\0';
    for (i = 0; i < cv.n; i++) {
      int k;
      if (!cv.del[i] || KB_STREQ(cv.ids[i], id))
        continue;
      k = snprintf(list + used, sizeof list - used, "%s%s", used ? ", " : "", cv.ids[i]);
      if (k < 0 || (size_t) k >= sizeof list - used)
        break;
      used += (size_t) k;
    }
    kb_err("delete: backup %s: %zu later backup(s) of its chain depend on it (%s); "
           "use --with-descendants to delete them with it", id, ndel - 1, list);
    goto out;
  }
  blocks = calloc(cv.n + 1, sizeof *blocks);
  if (!blocks)
    goto out;
  for (i = 0; i < cv.n; i++) {
    const char *in_use, *st;
    CLEANUP_FREE char *locks = NULL, *path = NULL;
    if (!cv.del[i])
      continue;
    in_use = cv.docs[i] ? kb_doc_get(cv.docs[i], "backup", "in_use_by") : NULL;
    st = cv.docs[i] ? kb_doc_get(cv.docs[i], "backup", "state") : NULL;
    if (in_use && *in_use) {
      kb_err("delete: backup %s is in use by a quick restore of VM %s; it can be deleted once that "
             "consolidation has finished", cv.ids[i], in_use);
      goto out;
    }
    if (st && KB_STREQ(st, KB_BACKUP_RUNNING)) {
      kb_err("delete: backup %s is still being taken", cv.ids[i]);
      goto out;
    }
    locks = kb_catalog_locks_dir(cat);
    path = locks ? kb_printf("%s/backup-%s.lock", locks, cv.ids[i]) : NULL;
    if (!path)
      goto out;
    r = kb_lock_take(path, "delete", 0, &blocks[i]);
    if (r < 0) {
      CLEANUP_FREE char *holder = NULL;
      (void) kb_lock_probe(path, &holder);
      kb_err("delete: backup %s is busy (%s)", cv.ids[i],
             r == -EBUSY ? (holder ? holder : "compression or validation under way") : strerror(-r));
      goto out;
    }
  }

  /* Newest first, so a failure never leaves a backup without its parent. */
  for (i = cv.n; i-- > 0;) {
    struct kb_backup_ref one = { uuid, chain, cv.ids[i], cv.docs[i] };
    CLEANUP_FREE char *data = NULL, *meta = NULL;
    if (!cv.del[i])
      continue;
    data = cv.docs[i] ? kb_backup_data_dir(cat, &one) : NULL;
    meta = kb_catalog_backup_dir(cat, uuid, chain, cv.ids[i]);
    if (data && !chain_data) {
      CLEANUP_FREE char *copy = strdup(data);
      chain_data = copy ? strdup(dirname(copy)) : NULL;
    }
    if ((data && kb_rm_rf(data) < 0) || !meta || kb_rm_rf(meta) < 0) {
      kb_err("delete: backup %s: cannot remove its files (%s)", cv.ids[i], data ? data : "?");
      goto out;
    }
    remove_jobs(cat, cv.ids[i]);
    kb_print_escaped("deleted backup %s\n", cv.ids[i]);
  }

  /* The chain and the VM record. */
  r = kb_vm_load(cat, uuid, &vmrec);
  if (r < 0) {
    kb_err("delete: VM %s: cannot read its record: %s", uuid, strerror(-r));
    goto out;
  }
  (void) kb_chain_load(cat, uuid, chain, &chrec);
  for (i = 0; i < cv.n; i++)
    remaining += !cv.del[i];
  {
    const char *cur = kb_doc_get(vmrec, "vm", "current_chain");
    const char *last = chrec ? kb_doc_get(chrec, "chain", "last_backup") : NULL;
    const char *lastcp = kb_doc_get(vmrec, "vm", "last_checkpoint");
    const char *lastbk = kb_doc_get(vmrec, "vm", "last_backup");
    bool current = cur && KB_STREQ(cur, chain);
    bool head_gone = remaining == 0;
    bool cp_gone = false;

    for (i = 0; i < cv.n; i++) {
      if (!cv.del[i])
        continue;
      if (last && KB_STREQ(last, cv.ids[i]))
        head_gone = true;
      if (lastcp && KB_STREQ(lastcp, cv.ids[i]))
        cp_gone = true;
      if (lastbk && KB_STREQ(lastbk, cv.ids[i]))
        (void) kb_doc_set(vmrec, "vm", "last_backup", NULL);
    }
    if (remaining == 0) {
      CLEANUP_FREE char *cd = kb_catalog_chain_dir(cat, uuid, chain);
      if (chain_data)
        (void) kb_rm_rf(chain_data);
      if (cd)
        (void) kb_rm_rf(cd);
      kb_print_escaped("chain %s is empty and was removed\n", chain);
    } else if (chrec) {
      const char *newest = NULL;
      for (i = 0; i < cv.n; i++)
        if (!cv.del[i])
          newest = cv.ids[i];
      r = kb_doc_set(chrec, "chain", "last_backup", newest);
      if (r == 0)
        r = kb_doc_set_ll(chrec, "chain", "length", (long long) remaining);
      if (r == 0 && head_gone && !kb_doc_get_bool(chrec, "chain", "ended", false)) {
        r = kb_doc_set(chrec, "chain", "ended", "true");
        if (r == 0)
          r = kb_doc_set(chrec, "chain", "end_reason", "its newest backup was deleted");
      }
      if (r == 0)
        r = kb_chain_save(cat, uuid, chain, chrec);
      if (r < 0)
        kb_err("delete: chain %s: cannot update its record: %s", chain, strerror(-r));
    }
    /* The VM's checkpoint belonged to a deleted backup: nothing can be
     * incremental on it any more, so the chain ends here. */
    if (current && (head_gone || cp_gone)) {
      (void) kb_doc_set(vmrec, "vm", "current_chain", NULL);
      if (remaining > 0)
        kb_print_escaped("chain %s ended: its newest backup was deleted; the next backup of the VM is full\n", chain);
    }
    if (cp_gone) {
      CLEANUP_FREE char *vmdir = kb_catalog_vm_dir(cat, uuid);
      CLEANUP_FREE char *cpx = vmdir ? kb_printf("%s/checkpoints/%s.xml", vmdir, lastcp) : NULL;
      if (cpx)
        (void) kb_meta_remove_file(cpx);
      (void) kb_doc_set(vmrec, "vm", "last_checkpoint", NULL);
    }
    r = kb_vm_save(cat, uuid, vmrec);
    if (r < 0) {
      kb_err("delete: VM %s: cannot update its record: %s", uuid, strerror(-r));
      goto out;
    }
  }
  rc = 0;
out:
  if (blocks) {
    for (i = 0; i < cv.n; i++)
      kb_lock_release(blocks[i]);
    free(blocks);
  }
  kb_doc_free(chrec);
  kb_doc_free(vmrec);
  chain_view_clear(&cv);
  kb_lock_release(vmlock);
  kb_backup_ref_clear(&ref);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
