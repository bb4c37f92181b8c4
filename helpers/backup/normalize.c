/* Repair: what a failed or killed backup left behind, checkpoints and
 * bitmaps nobody needs, and the end of a chain. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "log.h"
#include "record.h"
#include "util.h"

int bk_checkpoint_delete(struct bk_vm *v, const char *name)
{
  virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(v->dom, name, 0);
  struct kb_disks disks = { NULL, 0 };
  struct kb_block_nodes *nodes = NULL;
  CLEANUP_FREE char *xml = NULL;
  int r = 0, active;
  size_t i;

  bk_vm_forget_nodes(v);   /* bitmaps go */
  if (cp) {
    /* libvirt deletes checkpoints of running domains only. */
    int del = virDomainIsActive(v->dom) == 1 ? virDomainCheckpointDelete(cp, 0) : -1;
    if (del == 0) {
      /* libvirt removed the checkpoint's bitmaps of the running VM with
       * it (it fails otherwise): nothing to look for below. */
      virDomainCheckpointFree(cp);
      return 0;
    }
    {
      /* libvirt refuses when a bitmap is already gone (or the domain is
       * stopped): drop the metadata and remove what bitmaps remain below. */
      kb_debug("deleting checkpoint %s: removing its metadata only", name);
      if (virDomainCheckpointDelete(cp, VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY) < 0)
        r = -EIO;
    }
    virDomainCheckpointFree(cp);
  }
  xml = virDomainGetXMLDesc(v->dom, 0);
  if (!xml || kb_disks_parse(xml, &disks) < 0)
    return r ? r : -EIO;
  active = virDomainIsActive(v->dom);
  if (active == 1 && kb_virt_block_nodes(v->dom, &nodes) < 0)
    nodes = NULL;
  for (i = 0; i < disks.n; i++) {
    const struct kb_disk *d = &disks.v[i];
    if (!kb_disk_is_backed_up(d) || kb_disk_unsupported(d) || !d->format || !KB_STREQ(d->format, "qcow2"))
      continue;
    if (active == 1) {
      struct kb_bitmap_state st;
      if (nodes && kb_block_nodes_bitmap_state(nodes, d->source, name, &st) == 0 && st.present &&
          kb_virt_bitmap_remove(v->dom, d->source, name) < 0)
        r = -EIO;
    } else {
      const char *argv[] = { QEMU_IMG, "bitmap", "--remove", "-f", "qcow2", d->source, name, NULL };
      CLEANUP_FREE char *out = NULL;
      CLEANUP_FREE char *why = NULL;
      struct kb_bitmap_state st;
      /* Read with kboss's reader (offline.c): no qemu-img info process. */
      int rs = bk_offline_bitmap_state(d->source, name, &st, &why);
      /* An image the reader refuses: let qemu-img try (absent is fine). */
      if ((rs < 0 || st.present) && kb_run_to_end(argv, &out) != 0 && rs == 0)
        r = -EIO;
    }
  }
  kb_disks_clear(&disks);
  kb_block_nodes_free(nodes);
  return r;
}

/* The catalog's copy of checkpoint NAME's XML (run.c saves it while the
 * job runs), once the checkpoint is gone. */
static void forget_checkpoint_xml(struct bk_vm *v, const char *name)
{
  CLEANUP_FREE char *path = kb_backup_id_ok(name) ? kb_catalog_checkpoint_path(v->cat, v->uuid, name) : NULL;

  if (path)
    (void) kb_meta_remove_file(path);
}

int bk_discard_backup(struct bk_vm *v, const char *chain, const char *backup, char **ret_error)
{
  struct kb_backup_ref ref = { NULL, NULL, NULL, NULL };
  int r;

  ref.vm_uuid = strdup(v->uuid);
  ref.chain = strdup(chain);
  ref.id = strdup(backup);
  r = kb_backup_load(v->cat, v->uuid, chain, backup, &ref.doc);
  if (r < 0 && r != -ENOENT) {
    kb_backup_ref_clear(&ref);
    *ret_error = kb_printf("backup %s: cannot read its record: %s", backup, strerror(-r));
    return r;
  }
  if (ref.doc) {
    /* The VM may still run paused for a killed backup of a stopped VM. */
    if (kb_doc_get_bool(ref.doc, "backup", "started_paused", false) && virDomainIsActive(v->dom) == 1) {
      int state = 0, reason = 0;
      if (virDomainGetState(v->dom, &state, &reason, 0) == 0 && state == VIR_DOMAIN_PAUSED)
        (void) virDomainDestroy(v->dom);
    }
  }
  if (kb_doc_get(ref.doc, "backup", "checkpoint") || !ref.doc) {
    if (kb_backup_id_ok(backup) && bk_checkpoint_delete(v, backup) < 0) {
      *ret_error = kb_printf("backup %s: cannot remove its checkpoint from VM %s", backup, v->name);
      kb_backup_ref_clear(&ref);
      return -EIO;
    }
    forget_checkpoint_xml(v, backup);
  }
  r = ref.vm_uuid && ref.chain && ref.id ? kb_backup_remove(v->cat, &ref) : -ENOMEM;
  kb_backup_ref_clear(&ref);
  if (r < 0)
    *ret_error = kb_printf("backup %s: cannot remove its files", backup);
  return r;
}

int bk_finish_chain(struct bk_vm *v, const char *reason, char **ret_error)
{
  int r = kb_chain_end(v->cat, v->uuid, v->rec, reason);

  if (r < 0)
    *ret_error = kb_printf("VM %s: cannot end its chain: %s", v->name, strerror(-r));
  return r;
}

/* Leftover domain jobs of a killed run (the libvirt job outlives us). */
static void abort_stale_job(struct bk_vm *v, bool active)
{
  virDomainJobInfo info;
  int k;

  if (!active || virDomainGetJobInfo(v->dom, &info) < 0 ||
      info.type == VIR_DOMAIN_JOB_NONE)
    return;
  kb_info("VM %s: aborting a job left by a killed run", v->name);
  (void) virDomainAbortJob(v->dom);
  for (k = 0; k < 100; k++) {
    if (virDomainGetJobInfo(v->dom, &info) < 0 || info.type == VIR_DOMAIN_JOB_NONE)
      break;
    usleep(100 * 1000);
  }
}

int bk_normalize(struct bk_vm *v, bool before_backup, char **ret_error)
{
  const char *state0 = kb_doc_get(v->rec, "vm", "state");
  bool was_ready = state0 && KB_STREQ(state0, KB_VM_READY);
  CLEANUP_FREE char *err = NULL;
  const char *keep = kb_doc_get(v->rec, "vm", "last_checkpoint");
  char **chains = NULL;
  struct bk_fs_probe probe;
  size_t c;
  bool clean = true;
  int r;

  /* Asked once for the steps below (a paused VM a discarded backup
   * started is stopped again on the way: its QMP queries then fail). */
  bool active = virDomainIsActive(v->dom) == 1;

  abort_stale_job(v, active);
  /* A killed quiesced backup may have left the guest frozen; a freeze
   * kboss did not record is someone else's and stays. The agent is asked
   * now and answers while the catalog and checkpoints are looked at. */
  bk_normalize_freeze_start(v, active, &probe);
  r = kb_catalog_list_chains(v->cat, v->uuid, &chains);
  if (r < 0 && r != -ENOENT) {
    bk_normalize_freeze_finish(v, &probe);
    *ret_error = kb_printf("VM %s: cannot list its chains: %s", v->name, strerror(-r));
    return r;
  }
  for (c = 0; chains && chains[c]; c++) {
    char **backups = NULL;
    size_t b;
    bool any = false;

    if (kb_catalog_list_backups(v->cat, v->uuid, chains[c], &backups) < 0)
      continue;
    for (b = 0; backups && backups[b]; b++) {
      struct kb_doc *doc = NULL;
      int lr = kb_backup_load(v->cat, v->uuid, chains[c], backups[b], &doc);
      const char *st = lr == 0 ? kb_doc_get(doc, "backup", "state") : NULL;
      if (lr == -ENOENT || (st && KB_STREQ(st, KB_BACKUP_RUNNING))) {
        kb_info("VM %s: removing backup %s left by a failed or killed run", v->name, backups[b]);
        if (bk_discard_backup(v, chains[c], backups[b], &err) < 0) {
          kb_err("%s", err);
          free(err);
          err = NULL;
          clean = false;
        }
      } else
        any = true;
      kb_doc_free(doc);
    }
    kb_strv_free(backups);
    /* A chain whose only backup never completed. */
    if (!any)
      (void) kb_chain_remove(v->cat, v->uuid, chains[c], NULL, v->rec);
  }
  kb_strv_free(chains);
  keep = kb_doc_get(v->rec, "vm", "last_checkpoint");

  /* Checkpoints libvirt still has that no completed backup needs. */
  {
    virDomainCheckpointPtr *cps = NULL;
    int i, n = virDomainListAllCheckpoints(v->dom, &cps, 0);
    for (i = 0; i < n; i++) {
      CLEANUP_FREE char *name = strdup(virDomainCheckpointGetName(cps[i]));
      virDomainCheckpointFree(cps[i]);
      if (name && kb_backup_id_ok(name) && (!keep || !KB_STREQ(name, keep))) {
        kb_info("VM %s: removing checkpoint %s that no backup needs", v->name, name);
        if (bk_checkpoint_delete(v, name) < 0)
          clean = false;
        else
          forget_checkpoint_xml(v, name);
      }
    }
    free(cps);
  }
  /* Bitmaps of kboss checkpoints libvirt no longer knows (its metadata was
   * lost): they would only pile up. */
  if (active) {
    CLEANUP_FREE char *xml = virDomainGetXMLDesc(v->dom, 0);
    struct kb_disks disks = { NULL, 0 };
    size_t i, k;
    struct kb_block_nodes *nodes = NULL;
    bool removed = false;
    /* One query for every disk; kept for the backup's own checks (run.c)
     * unless a bitmap is removed here. */
    bk_vm_forget_nodes(v);
    if (xml && kb_disks_parse(xml, &disks) == 0 && kb_virt_block_nodes(v->dom, &nodes) == 0) {
      for (i = 0; i < disks.n; i++) {
        char **names = NULL;
        const struct kb_disk *d = &disks.v[i];
        if (!kb_disk_is_backed_up(d) || kb_disk_unsupported(d) ||
            kb_block_nodes_bitmap_names(nodes, d->source, &names) < 0)
          continue;
        for (k = 0; names[k]; k++) {
          virDomainCheckpointPtr cp;
          if (!kb_backup_id_ok(names[k]) || (keep && KB_STREQ(names[k], keep)))
            continue;
          cp = virDomainCheckpointLookupByName(v->dom, names[k], 0);
          if (cp) {
            virDomainCheckpointFree(cp);
            continue;
          }
          kb_info("VM %s: disk %s: removing orphan bitmap %s", v->name, d->target, names[k]);
          removed = true;
          if (kb_virt_bitmap_remove(v->dom, d->source, names[k]) < 0)
            clean = false;
        }
        kb_strv_free(names);
      }
    }
    kb_disks_clear(&disks);
    if (removed)
      kb_block_nodes_free(nodes);
    else
      v->nodes = nodes;
  }
  bk_normalize_freeze_finish(v, &probe);
  /* A Ready VM that stays Ready before a backup: the backup's own record
   * (BackingUp, or Ready with its error) follows at once. */
  if (clean && was_ready && before_backup)
    return 0;
  r = bk_vm_set_state(v, clean ? KB_VM_READY : KB_VM_BACKUP_ERROR,
                      clean ? NULL : "normalization could not remove everything; see the log");
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot update its record: %s", v->name, strerror(-r));
    return r;
  }
  if (!clean) {
    *ret_error = kb_printf("VM %s stays in BackupError: some leftovers could not be removed", v->name);
    return -EIO;
  }
  return 0;
}
