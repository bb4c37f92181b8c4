/* kbossctl delete: remove a backup (and, on request, the backups of its
 * chain that depend on it) from the store and the catalog. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
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

/* Refuse when BACKUP (chain position I of CV) may not go now; else take
 * its lock into *RET. */
static int claim_backup(const struct kb_catalog *cat, const struct kb_chain_view *cv, size_t i,
                        struct kb_lock **ret)
{
  const char *in_use = kb_backup_in_use_by(cv->docs[i]);
  const char *st = cv->docs[i] ? kb_doc_get(cv->docs[i], "backup", "state") : NULL;
  CLEANUP_FREE char *label = kb_printf("backup %s", cv->ids[i]);
  CLEANUP_FREE char *msg = NULL;
  int r;

  if (in_use) {
    kb_err("delete: backup %s is in use by a quick restore of VM %s; it can be deleted once that "
           "consolidation has finished", cv->ids[i], in_use);
    return -EBUSY;
  }
  if (st && KB_STREQ(st, KB_BACKUP_RUNNING)) {
    kb_err("delete: backup %s is still being taken", cv->ids[i]);
    return -EBUSY;
  }
  r = kb_catalog_lock(cat, KB_LOCK_BACKUP, cv->ids[i], "delete", 0, ret);
  if (r < 0) {
    msg = label ? kb_msg_lock(cat, KB_LOCK_BACKUP, cv->ids[i], label, r) : NULL;
    kb_err("delete: %s", msg ? msg : strerror(-r));
  }
  return r;
}

/* "a, b, c": the backups DEL marks other than ID. */
static void list_dependents(const struct kb_chain_view *cv, const bool *del, const char *id,
                            char *list, size_t size)
{
  size_t used = 0;

  list[0] = '\0';
  for (size_t i = 0; i < cv->n; i++) {
    int k;
    if (!del[i] || KB_STREQ(cv->ids[i], id))
      continue;
    k = snprintf(list + used, size - used, "%s%s", used ? ", " : "", cv->ids[i]);
    if (k < 0 || (size_t) k >= size - used)
      break;
    used += (size_t) k;
  }
}

int ctl_delete(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "with-descendants", no_argument, NULL, 'd' },
    { NULL, 0, NULL, 0 },
  };
  struct kb_backup_ref ref = { NULL, NULL, NULL, NULL };
  struct kb_chain_view cv = { NULL, NULL, 0 };
  struct kb_forget_result res;
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  struct kb_lock *vmlock = NULL;
  struct kb_lock **blocks = NULL;
  bool *del = NULL;
  CLEANUP_FREE char *uuid = NULL, *chain = NULL;
  const char *id, *vm_name;
  bool with_desc = false;
  size_t ndel, i;
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
  r = kb_chain_view_load(cat, uuid, chain, &cv);
  if (r < 0) {
    kb_err("delete: backup %s: cannot list its chain %s: %s", id, chain, strerror(-r));
    goto out;
  }
  del = calloc(cv.n + 1, sizeof *del);
  blocks = calloc(cv.n + 1, sizeof *blocks);
  if (!del || !blocks)
    goto out;
  ndel = kb_chain_view_dependents(&cv, id, del);
  if (ndel == 0) {
    kb_err("delete: backup %s is gone (deleted meanwhile?)", id);
    goto out;
  }
  if (ndel > 1 && !with_desc) {
    char list[512];
    list_dependents(&cv, del, id, list, sizeof list);
    kb_err("delete: backup %s: %zu later backup(s) of its chain depend on it (%s); "
           "use --with-descendants to delete them with it", id, ndel - 1, list);
    goto out;
  }
  for (i = 0; i < cv.n; i++)
    if (del[i] && claim_backup(cat, &cv, i, &blocks[i]) < 0)
      goto out;

  /* Newest first, so a failure never leaves a backup without its parent. */
  for (i = cv.n; i-- > 0;) {
    struct kb_backup_ref one = { uuid, chain, cv.ids[i], cv.docs[i] };
    if (!del[i])
      continue;
    if (kb_backup_remove(cat, &one) < 0) {
      CLEANUP_FREE char *data = cv.docs[i] ? kb_backup_data_dir(cat, &one) : NULL;
      kb_err("delete: backup %s: cannot remove its files (%s)", cv.ids[i], data ? data : "?");
      goto out;
    }
    kb_print_escaped("deleted backup %s\n", cv.ids[i]);
  }

  /* The chain and the VM record. */
  r = kb_chain_forget(cat, uuid, chain, &cv, del, &res);
  if (res.chain_removed)
    kb_print_escaped("chain %s is empty and was removed\n", chain);
  if (res.chain_ended)
    kb_print_escaped("chain %s ended: its newest backup was deleted; the next backup of the VM is full\n", chain);
  if (r < 0) {
    kb_err("delete: VM %s: cannot update its records: %s", uuid, strerror(-r));
    goto out;
  }
  rc = 0;
out:
  if (blocks) {
    for (i = 0; i < cv.n; i++)
      kb_lock_release(blocks[i]);
    free(blocks);
  }
  free(del);
  kb_chain_view_clear(&cv);
  kb_lock_release(vmlock);
  kb_backup_ref_clear(&ref);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
