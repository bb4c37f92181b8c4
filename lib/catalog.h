/* The catalog on secondary storage: the truth every host of a zone shares.
 *
 *   <secondary>/kboss/vms/<vm-uuid>/vm.ini
 *   <secondary>/kboss/vms/<vm-uuid>/domain.xml
 *   <secondary>/kboss/vms/<vm-uuid>/checkpoints/<name>.xml
 *   <secondary>/kboss/vms/<vm-uuid>/chains/<chain>/chain.ini
 *   <secondary>/kboss/vms/<vm-uuid>/chains/<chain>/<backup>/backup.ini
 *   <store>/kboss/vms/<vm-uuid>/chains/<chain>/<backup>/<disk>.qcow2
 *   <secondary>/kboss/jobs/<job>.ini
 *   <secondary>/kboss/locks/vm-<vm-uuid>.lock, backup-<backup>.lock, job-<job>.lock
 *   <secondary>/kboss/locks/<kind>.zone.<i>, <kind>.host-<host>.<i>   (slots)
 *
 * This module and record.h own every one of these names: programs ask for
 * a path, a lock or a record change and never spell one.
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
struct kb_store;

/* Open (creating as needed) the catalog under secondary.path. The mount
 * point itself must exist (-ENOENT otherwise) and be a mount point or
 * carry the kbossctl init-store marker (-ENOMEDIUM otherwise, nothing
 * created; see store.h and kb_store_strerror): never create the catalog
 * on a host's local disk because an NFS mount failed. */
int kb_catalog_open(const struct kb_config *cfg, struct kb_catalog **ret);
/* The same without a configuration (kb_catalog_open is a wrapper, in
 * catalog-config.c): SECONDARY_PATH and the data stores, copied. */
int kb_catalog_open_at(const char *secondary_path, const struct kb_store *stores, size_t nstores,
                       struct kb_catalog **ret);
void kb_catalog_free(struct kb_catalog *cat);
const char *kb_catalog_root(const struct kb_catalog *cat);   /* <secondary>/kboss */

/* --- Metadata documents (generation files, torn writes never seen) --- */

/* Write DOC as DIR/NAME (NAME like "vm", "backup", "chain", "job-x").
 * Old generations but the previous one are removed. A DOC read from
 * DIR/NAME by kb_meta_read is a read-modify-write: if another generation
 * was written since, the caller's changes are applied to it (and DOC
 * updated to what was written) instead of overwriting it. Every lock the
 * process holds is checked before and after (-ENOLCK: a lock was lost,
 * nothing written). An error reading the newest generation fails the
 * write (nothing removed). -EFBIG above 16 MiB. */
int kb_meta_write(const char *dir, const char *name, const struct kb_doc *doc);
/* The newest complete generation; -ENOENT when there is none; the error
 * (EIO...) when a generation could not be read, never an older one in its
 * place; -EOVERFLOW when more than 4096 junk generations hide any valid
 * one. */
int kb_meta_read(const char *dir, const char *name, struct kb_doc **ret);
/* Remove every generation of DIR/NAME. */
int kb_meta_remove(const char *dir, const char *name);
/* Plain files (domain.xml, checkpoint XML) written with the same care, as
 * generations "BASE.<gen>.<xxh64 of the content>" beside PATH; the bytes
 * are stored as given. Read them back only with kb_meta_read_file (PATH
 * itself never exists). */
int kb_meta_write_file(const char *path, const char *content, size_t len);
/* The newest complete generation of PATH, NUL-terminated; -ENOENT if none. */
int kb_meta_read_file(const char *path, char **ret, size_t *ret_len);
int kb_meta_remove_file(const char *path);
/* Names in DIR that have document (kb_meta_list) or file
 * (kb_meta_list_files) generations: sorted, NULL-terminated, kb_strv_free.
 * 0, or 1 when DIR held more than 131072 generation names and the list is
 * partial (junk on the export must not make every listing fail). */
int kb_meta_list(const char *dir, char ***ret_names);
int kb_meta_list_files(const char *dir, char ***ret_names);

/* --- Paths (malloc'd; NULL on a bad name or ENOMEM) --- */
char *kb_catalog_vm_dir(const struct kb_catalog *cat, const char *vm_uuid);
char *kb_catalog_chain_dir(const struct kb_catalog *cat, const char *vm_uuid, const char *chain);
char *kb_catalog_backup_dir(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            const char *backup);
/* Data folder of a backup on the store named STORE (resolved through this
 * host's configuration). */
char *kb_catalog_data_dir(const struct kb_catalog *cat, const char *store, const char *vm_uuid,
                          const char *chain, const char *backup);
/* The folder of a chain's data on STORE (every backup's data folder is in it). */
char *kb_catalog_data_chain_dir(const struct kb_catalog *cat, const char *store, const char *vm_uuid,
                                const char *chain);
/* Saved XML: the VM's domain (<vm>/domain.xml), a backup's copy of it
 * (<backup>/domain.xml), libvirt checkpoints (<vm>/checkpoints/<name>.xml).
 * These are kb_meta_write_file() paths: read them with kb_meta_read_file(). */
char *kb_catalog_vm_domain_path(const struct kb_catalog *cat, const char *vm_uuid);
char *kb_catalog_backup_domain_path(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                                    const char *backup);
/* The PNG of a backup's last validation screenshot (<backup>/screenshot.png,
 * a kb_meta_write_file() path). */
char *kb_catalog_screenshot_path(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                                 const char *backup);
char *kb_catalog_checkpoints_dir(const struct kb_catalog *cat, const char *vm_uuid);
char *kb_catalog_checkpoint_path(const struct kb_catalog *cat, const char *vm_uuid, const char *name);
char *kb_catalog_jobs_dir(const struct kb_catalog *cat);
char *kb_catalog_locks_dir(const struct kb_catalog *cat);
/* The path builders check that no existing component below the mount point
 * (or store path) is a symlink: NULL with errno ELOOP (ENOTDIR for another
 * kind of file). Create DIR (under the catalog or a store) and its parents
 * 0700 with the same checks. */
int kb_catalog_mkdirs(const struct kb_catalog *cat, const char *dir);

/* --- Listing --- */
/* NULL-terminated arrays of names, sorted; free with kb_strv_free.  At most
 * KB_CATALOG_LIST_MAX names per folder: a folder holding more (junk planted
 * on the export) is listed that far, and kb_catalog_list_cut() counts the
 * listings of this process that were cut, for the caller to report. */
#define KB_CATALOG_LIST_MAX 65536
unsigned kb_catalog_list_cut(void);
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
/* Whether ID has exactly that shape (kboss made it: a backup, a chain, or
 * the libvirt checkpoint named after a backup). Lookups of an existing
 * record only need kb_name_ok(). */
bool kb_backup_id_ok(const char *id);

/* --- Locks --- */
/* The catalog's named locks: a VM (by UUID: backup, restore, delete, the
 * hook's probe), a backup (by id: its files are swapped, read or removed),
 * a job (by id: whoever holds it runs the job). */
enum kb_lock_kind { KB_LOCK_VM, KB_LOCK_BACKUP, KB_LOCK_JOB };
/* Its lock file (NULL, errno EINVAL, on a bad name). */
char *kb_catalog_lock_path(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name);
/* Take it (kb_lock_take: TIMEOUT_MS 0 tries once; -EBUSY when held). */
int kb_catalog_lock(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name,
                    const char *purpose, int timeout_ms, struct kb_lock **ret);
/* Held by a live holder? 1 yes, 0 no, -errno (kb_lock_probe). */
int kb_catalog_lock_probe(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name,
                          char **ret_holder);
/* kb_catalog_lock(cat, KB_LOCK_VM, ...). */
int kb_catalog_lock_vm(const struct kb_catalog *cat, const char *vm_uuid, const char *purpose,
                       int timeout_ms, struct kb_lock **ret);
/* A concurrency slot: zone-wide (HOST NULL) "locks/<kind>.zone.<i>" or per
 * host "locks/<kind>.host-<host>.<i>", i < LIMIT. LIMIT < 1: no limit
 * (returns 0 with *ret NULL). -EBUSY when all are taken. */
int kb_catalog_take_slot(const struct kb_catalog *cat, const char *kind, const char *host,
                         long long limit, const char *purpose, struct kb_lock **ret);
/* How many slots of KIND (zone-wide, or HOST's) live holders have now. */
int kb_catalog_count_slots(const struct kb_catalog *cat, const char *kind, const char *host,
                           unsigned *ret_held);

#endif
