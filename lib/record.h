/* The catalog's records: what vm.ini, chain.ini, backup.ini and job files
 * hold, and the operations every program shares on them. Built on doc.h
 * documents stored with kb_meta_write()/kb_meta_read(). */
#ifndef KBOSS_RECORD_H
#define KBOSS_RECORD_H

#include <stdbool.h>
#include <stdint.h>

#include "catalog.h"
#include "doc.h"

/* VM states (vm.ini [vm] state). */
#define KB_VM_READY "Ready"
#define KB_VM_BACKING_UP "BackingUp"
#define KB_VM_BACKUP_ERROR "BackupError"
#define KB_VM_RESTORING "Restoring"
#define KB_VM_CONSOLIDATING "Consolidating"

/* Backup states (backup.ini [backup] state). Only Ready and Invalid
 * backups are listed as backups; Running is a backup under way (or the
 * leftover of a killed one, cleaned by the next run). */
#define KB_BACKUP_RUNNING "Running"
#define KB_BACKUP_READY "Ready"
#define KB_BACKUP_INVALID "Invalid"

/* A backup's last validation (backup.ini [validation] state). */
#define KB_VALIDATION_RUNNING "Running"
#define KB_VALIDATION_PASSED "Passed"
#define KB_VALIDATION_FAILED "Failed"
#define KB_VALIDATION_INTERRUPTED "Interrupted"

/* Load/save the records; load returns -ENOENT when absent. */
int kb_vm_load(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc **ret);
int kb_vm_save(const struct kb_catalog *cat, const char *vm_uuid, const struct kb_doc *doc);
int kb_chain_load(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                  struct kb_doc **ret);
int kb_chain_save(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                  const struct kb_doc *doc);
int kb_backup_load(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                   const char *backup, struct kb_doc **ret);
int kb_backup_save(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                   const char *backup, const struct kb_doc *doc);

/* Set vm.ini's state (and last_error, NULL clears it) and save it. */
int kb_vm_set_state(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec,
                    const char *state, const char *error);
/* End the VM's current chain (chain.ini ended = true with REASON; vm.ini
 * current_chain and last_checkpoint cleared and saved): the next backup
 * is full. */
int kb_chain_end(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec,
                 const char *reason);

/* A backup located in the catalog. */
struct kb_backup_ref {
  char *vm_uuid;
  char *chain;
  char *id;
  struct kb_doc *doc;     /* backup.ini */
};
void kb_backup_ref_clear(struct kb_backup_ref *ref);

/* Find BACKUP (an id) anywhere in the catalog and load its record. */
int kb_backup_find(const struct kb_catalog *cat, const char *backup_id, struct kb_backup_ref *ret);

/* Folder holding the backup's data files on its store, and the path of
 * one disk's file (checked to stay inside that folder). */
char *kb_backup_data_dir(const struct kb_catalog *cat, const struct kb_backup_ref *ref);
char *kb_backup_disk_path(const struct kb_catalog *cat, const struct kb_backup_ref *ref,
                          const char *disk);

/* The chain of backups a backup depends on, oldest (the full) first,
 * ending with the backup itself: ids in a NULL-terminated array. Follows
 * "parent" links inside the chain folder only. */
int kb_backup_lineage(const struct kb_catalog *cat, const struct kb_backup_ref *ref, char ***ret_ids);

/* Disks of a backup record: NULL-terminated target names ("vda"). */
int kb_backup_disks(const struct kb_doc *backup, char ***ret);

/* --- State of a backup record --- */

/* Complete: Ready or Invalid (not Running, not a record without state). */
bool kb_backup_complete(const struct kb_doc *backup);
/* The VM a quick restore runs on the backup (in_use_by), or NULL. */
const char *kb_backup_in_use_by(const struct kb_doc *backup);

/* --- Record transitions: every change of vm.ini, chain.ini and backup.ini
 * that more than one program makes, or that touches more than one record --- */

/* Add a backup: BACKUP_ID (already saved Ready) becomes CHAIN's newest:
 * chain.ini (CHAIN_REC) length + 1 and last_backup, ended once ISOLATED or
 * CHAIN_SIZE backups long, saved; vm.ini (VM_REC: not saved, the caller
 * saves it with the VM's state) last_backup, last_backup_time and, unless
 * ISOLATED, current_chain and last_checkpoint. */
int kb_chain_add_backup(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                        struct kb_doc *chain_rec, struct kb_doc *vm_rec, const char *backup_id,
                        bool isolated, long long chain_size);

/* Remove a backup: its data folder on its store, its catalog folder, its
 * jobs. REF->doc NULL (an unreadable record): the catalog folder only. */
int kb_backup_remove(const struct kb_catalog *cat, const struct kb_backup_ref *ref);

/* Remove a chain: its catalog folder and its data folder on STORE (NULL:
 * the store chain.ini names). When it is VM_REC's current chain,
 * current_chain and last_checkpoint are cleared in VM_REC (not saved). */
int kb_chain_remove(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                    const char *store, struct kb_doc *vm_rec);

/* End CHAIN (kb_chain_end) if it is the VM's current chain, under the
 * caller's VM lock: 1 ended, 0 not the current chain, or -errno. */
int kb_chain_end_if_current(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            const char *reason);

/* Mark a backup and every backup it depends on as in use by a quick
 * restore running on VM_UUID (NULL: no longer in use), each under its
 * backup lock (so a compression cannot swap files between its own check
 * and its rename). REF->doc is updated too. */
int kb_backup_mark_in_use(const struct kb_catalog *cat, struct kb_backup_ref *ref, const char *vm_uuid);

/* Mark a backup record Invalid (its files no longer match their hashes):
 * state Invalid, validated false. The caller saves it. */
int kb_backup_mark_invalid(struct kb_doc *backup);

/* Every backup of a chain with its record, for removing some of them. */
struct kb_chain_view {
  char **ids;               /* oldest first */
  struct kb_doc **docs;     /* NULL where unreadable */
  size_t n;
};
int kb_chain_view_load(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                       struct kb_chain_view *ret);
void kb_chain_view_clear(struct kb_chain_view *cv);
/* Set DEL[i] for BACKUP and every backup of CV depending on it (through
 * parent links); returns how many are set. */
size_t kb_chain_view_dependents(const struct kb_chain_view *cv, const char *backup, bool *del);

/* What kb_chain_forget() changed, for the caller to say. */
struct kb_forget_result {
  bool chain_removed;       /* no backup was left: the chain is gone */
  bool chain_ended;         /* the VM's current chain ended, backups remain */
};
/* After the backups DEL marks were removed (kb_backup_remove): chain.ini
 * gets its newest remaining backup and length (ended when its newest went),
 * or the empty chain is removed; vm.ini loses last_backup, current_chain
 * and last_checkpoint (and that checkpoint's saved XML) where they named a
 * removed backup. Call under the VM lock. */
int kb_chain_forget(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                    const struct kb_chain_view *cv, const bool *del, struct kb_forget_result *ret);

/* --- Merge forward (kbossctl prune, "synthetic full") ---
 * A backup whose older backups are due is rewritten as a full holding the
 * same guest bytes. Its record says so in two steps, each saved by the
 * caller under the backup's lock:
 *   [backup] merge = <ids merged into it, oldest first, space-separated>
 *   [disk:X] hash_new = <hash of the proven merged file for disk X>
 * is the intent, written before any file is renamed; while it is there a
 * hash check accepts either hash of a disk (as for a compression swap) and
 * kboss-compress leaves the backup alone. kb_backup_merge_done() then
 * records what the files now are. */

/* Whether a merge is recorded and not finished. */
bool kb_backup_merge_pending(const struct kb_doc *backup);
/* The intent: MERGED (ids, oldest first), and for each disk DISKS[i] with
 * HASHES[i] not NULL its new file's hash. */
int kb_backup_merge_intent(struct kb_doc *backup, const char *const *merged, char *const *disks,
                           char *const *hashes);
/* The end: each disk with DONE[i] holds its merged file (SIZES[i] bytes on
 * the store; mode full, no backing, hash = hash_new); hash_new goes from
 * every disk. When every disk is now full (ALL_FULL) the backup becomes a
 * full with no parent: type full, parent and since_checkpoint cleared,
 * merged_from and merged_at set. size is the sum of the disks' sizes. The
 * merge field goes. */
int kb_backup_merge_done(struct kb_doc *backup, char *const *disks, const bool *done,
                         const long long *sizes, bool all_full);

/* Remove the saved libvirt checkpoint XML (vms/<uuid>/checkpoints/) that no
 * backup of the VM needs: that of every id in REMOVED, and any left by a
 * backup no longer in the catalog, but never the VM's last_checkpoint (the
 * next incremental may need it redefined). Call under the VM lock.
 * AFTER_EACH (may be NULL) is called after each removal (a test hook).
 * Returns how many were removed, or -errno. */
int kb_vm_forget_checkpoints(const struct kb_catalog *cat, const char *vm_uuid,
                             const char *const *removed, void (*after_each)(void));

/* --- How every program words the common catalog errors (malloc'd) --- */

/* A failed kb_backup_find(): "backup ID: no such backup in the catalog"
 * (-ENOENT), "backup ID: not a backup id" (-EINVAL), "backup ID: <errno>". */
char *kb_msg_backup_find(const char *id, int err);
/* A lock not taken: "LABEL is busy: another kboss operation holds it
 * (HOLDER)" for -EBUSY (the holder read from the lock), else "LABEL:
 * cannot take its lock: <errno>". LABEL: "VM web1", "backup ID". */
char *kb_msg_lock(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name,
                  const char *label, int err);
/* "backup ID is not complete (STATE)". */
char *kb_msg_backup_incomplete(const char *id, const struct kb_doc *backup);

/* --- Jobs (compression, validation, hash check) --- */
#define KB_JOB_COMPRESSION "compression"
#define KB_JOB_VALIDATION "validation"
#define KB_JOB_HASH "hash"

#define KB_JOB_SCHEDULED "Scheduled"
#define KB_JOB_EXECUTING "Executing"
#define KB_JOB_DONE "Done"
#define KB_JOB_FAILED "Failed"

/* Queue a job of TYPE for a backup, due at DUE (epoch seconds). The job id
 * is "<type>-<backup>" (one job of a type per backup); an existing job is
 * left as it is unless it is Done/Failed, then it is scheduled again. */
int kb_job_queue(const struct kb_catalog *cat, const char *type, const struct kb_backup_ref *ref,
                 int64_t due, char **ret_id);
int kb_job_load(const struct kb_catalog *cat, const char *job_id, struct kb_doc **ret);
int kb_job_save(const struct kb_catalog *cat, const char *job_id, const struct kb_doc *doc);
int kb_job_list(const struct kb_catalog *cat, char ***ret_ids);
int kb_job_remove(const struct kb_catalog *cat, const char *job_id);

/* --- A guest freeze kboss made (vm.ini [freeze]) ---
 * Recorded before kboss freezes a guest's filesystems and removed once it
 * has thawed them, so that a later run tells kboss's own freeze left by a
 * killed run (thaw it) from another tool's (leave it alone). */
struct kb_freeze {
  const char *host, *machine_id, *boot_id, *pid_ns;  /* the freezing process (lock.h) */
  long long pid;
  unsigned long long start_time;
  const char *by;              /* what froze: a backup id */
  const char *since;           /* when */
};
/* Record that this process is about to freeze the guest for BY, and save
 * vm.ini; freeze only once this succeeded. */
int kb_vm_mark_frozen(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec,
                      const char *by);
/* Remove the record (after the thaw, or when the guest is found thawed or
 * stopped) and save vm.ini. The record is gone from REC even on error. */
int kb_vm_clear_frozen(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec);
/* The freeze recorded in REC (pointers into REC): 0, or -ENOENT. No I/O. */
int kb_vm_frozen_by(const struct kb_doc *rec, struct kb_freeze *ret);

enum kb_freeze_owner {
  KB_FREEZE_NONE,      /* no freeze recorded */
  KB_FREEZE_SELF,      /* this process made it */
  KB_FREEZE_LIVE,      /* another process on this host that still runs */
  KB_FREEZE_GONE,      /* its process is dead (or this host rebooted) */
  KB_FREEZE_REMOTE,    /* made on another host: the VM lock tells */
};
/* Who owns the freeze recorded in REC; with RET_DESC (may be NULL) a
 * description "backup ID, pid N on HOST, since TIME". */
enum kb_freeze_owner kb_vm_freeze_owner(const struct kb_doc *rec, char **ret_desc);

#endif
