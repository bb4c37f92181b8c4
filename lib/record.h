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
