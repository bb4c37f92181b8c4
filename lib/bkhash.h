/* Hashes of a backup's stored files, kept in its backup.ini:
 *   [backup]   hashed = <time of the last recording>
 *   [disk:vda] hash = <XXH3-128, the digits `xxhsum -H2` prints>
 *              hash_new = <the same, of a file a compression swap is putting
 *                          in place; present only while the swap is pending>
 * Recorded after the first successful validation; re-checked by the
 * periodic hash jobs. The caller holds the backup's lock
 * (locks/backup-<id>.lock) so its files are not swapped meanwhile. */
#ifndef KBOSS_BKHASH_H
#define KBOSS_BKHASH_H

#include <stdbool.h>

#include "record.h"

/* Whether the record holds hashes. */
bool kb_backup_has_hash(const struct kb_doc *backup);

/* Hash every stored file of REF and record the hashes in REF->doc, then
 * save it. *RET_ERROR (caller frees) says what failed. */
int kb_backup_hash_record(const struct kb_catalog *cat, struct kb_backup_ref *ref, char **ret_error);

/* For a program that legitimately rewrote the backup's files (the
 * compressor, after its swap): record the hashes again when the backup
 * already has some; nothing to do (0) when it has none yet. Reloads the
 * record first so fields written meanwhile are kept. */
int kb_backup_rehash(const struct kb_catalog *cat, struct kb_backup_ref *ref, char **ret_error);

/* Hash the files again and compare with the record (a disk with hash_new
 * may match either hash): 0 all equal, 1 a
 * mismatch (*RET_DETAIL says which file, recorded and found hashes),
 * negative errno when a file cannot be read (*RET_DETAIL says which). */
int kb_backup_hash_verify(const struct kb_catalog *cat, const struct kb_backup_ref *ref,
                          char **ret_detail);

#endif
