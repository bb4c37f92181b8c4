/* The catalog on secondary storage: the truth every host of a zone shares.
 *
 *   <secondary>/kboss/vms/<vm-uuid>/vm.ini
 *   <secondary>/kboss/vms/<vm-uuid>/domain.xml
 *   <secondary>/kboss/vms/<vm-uuid>/checkpoints/<name>.xml
 *   <secondary>/kboss/vms/<vm-uuid>/chains/<chain>/chain.ini
 *   <secondary>/kboss/vms/<vm-uuid>/chains/<chain>/<backup>/backup.ini
 *   <store>/kboss/vms/<vm-uuid>/chains/<chain>/<backup>/<disk>.qcow2
 *   <secondary>/kboss/jobs/<job>.ini
 *   <secondary>/kboss/locks/...
 *
 * "name.ini" above is really a set of generations (see docs/storage.md):
 * metadata is written without relying on atomic rename or fsync, as NFS
 * needs. Paths are built only from names that pass kb_name_ok()/kb_uuid_ok();
 * nothing follows a symlink. Directories are 0700, files 0600. */
#ifndef KBOSS_CATALOG_H
#define KBOSS_CATALOG_H

#include <stdbool.h>
#include <stdint.h>

#include "doc.h"
#include "lock.h"

struct kb_config;
struct kb_catalog;

/* Open (creating as needed) the catalog under secondary.path. */
int kb_catalog_open(const struct kb_config *cfg, struct kb_catalog **ret);
void kb_catalog_free(struct kb_catalog *cat);
const char *kb_catalog_root(const struct kb_catalog *cat);   /* <secondary>/kboss */

/* --- Metadata documents (generation files, torn writes never seen) --- */

/* Write DOC as DIR/NAME (NAME like "vm", "backup", "chain", "job-x").
 * Old generations but the previous one are removed. */
int kb_meta_write(const char *dir, const char *name, const struct kb_doc *doc);
/* The newest complete generation; -ENOENT when there is none. */
int kb_meta_read(const char *dir, const char *name, struct kb_doc **ret);
/* Remove every generation of DIR/NAME. */
int kb_meta_remove(const char *dir, const char *name);
/* Plain files (domain.xml, checkpoint XML) written with the same care:
 * temp name, complete, then in place; never torn. */
int kb_meta_write_file(const char *path, const char *content, size_t len);

/* --- Paths (malloc'd; NULL on a bad name or ENOMEM) --- */
char *kb_catalog_vm_dir(const struct kb_catalog *cat, const char *vm_uuid);
char *kb_catalog_chain_dir(const struct kb_catalog *cat, const char *vm_uuid, const char *chain);
char *kb_catalog_backup_dir(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            const char *backup);
/* Data folder of a backup on the store named STORE (resolved through this
 * host's configuration). */
char *kb_catalog_data_dir(const struct kb_catalog *cat, const char *store, const char *vm_uuid,
                          const char *chain, const char *backup);
char *kb_catalog_jobs_dir(const struct kb_catalog *cat);
char *kb_catalog_locks_dir(const struct kb_catalog *cat);

/* --- Listing --- */
/* NULL-terminated arrays of names, sorted; free with kb_strv_free. */
int kb_catalog_list_vms(const struct kb_catalog *cat, char ***ret_uuids);
int kb_catalog_list_chains(const struct kb_catalog *cat, const char *vm_uuid, char ***ret);
int kb_catalog_list_backups(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            char ***ret);
void kb_strv_free(char **v);

/* Find a backup by id anywhere in the catalog. */
int kb_catalog_find_backup(const struct kb_catalog *cat, const char *backup_id,
                           char **ret_vm_uuid, char **ret_chain);

/* New ids: chains and backups are "YYYYmmddTHHMMSSZ-xxxxxx" (time-sortable). */
int kb_catalog_new_id(char *buf, size_t len);

/* --- Locks --- */
/* Per-VM exclusive lock (locks/vm-<uuid>.lock). */
int kb_catalog_lock_vm(const struct kb_catalog *cat, const char *vm_uuid, const char *purpose,
                       int timeout_ms, struct kb_lock **ret);
/* A concurrency slot: zone-wide (HOST NULL) "locks/<kind>.zone.<i>" or per
 * host "locks/<kind>.host-<host>.<i>", i < LIMIT. LIMIT < 1: no limit
 * (returns 0 with *ret NULL). -EBUSY when all are taken. */
int kb_catalog_take_slot(const struct kb_catalog *cat, const char *kind, const char *host,
                         long long limit, const char *purpose, struct kb_lock **ret);

#endif
