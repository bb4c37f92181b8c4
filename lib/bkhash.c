#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bkhash.h"
#include "hash.h"
#include "util.h"

bool kb_backup_has_hash(const struct kb_doc *backup)
{
  char **disks = NULL;
  bool any = false;
  size_t i;

  if (kb_backup_disks(backup, &disks) < 0)
    return false;
  for (i = 0; disks[i]; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", disks[i]);
    if (sec && kb_doc_get(backup, sec, "hash"))
      any = true;
  }
  kb_strv_free(disks);
  return any;
}

int kb_backup_hash_record(const struct kb_catalog *cat, struct kb_backup_ref *ref, char **ret_error)
{
  char **disks = NULL;
  char now[32];
  size_t i;
  int r;

  r = kb_backup_disks(ref->doc, &disks);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot list its disks: %s", ref->id, strerror(-r));
    return r;
  }
  for (i = 0; disks[i] && r == 0; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", disks[i]);
    CLEANUP_FREE char *path = kb_backup_disk_path(cat, ref, disks[i]);
    char hex[KB_HASH_HEX_LEN + 1];

    if (!sec || !path) {
      *ret_error = kb_printf("backup %s: no valid file for disk %s", ref->id, disks[i]);
      r = -EINVAL;
      break;
    }
    r = kb_hash_file(path, hex, NULL);
    if (r < 0) {
      *ret_error = kb_printf("backup %s: cannot hash %s: %s", ref->id, path, strerror(-r));
      break;
    }
    r = kb_doc_set(ref->doc, sec, "hash", hex);
  }
  kb_strv_free(disks);
  if (r < 0) {
    if (!*ret_error)
      *ret_error = kb_printf("backup %s: %s", ref->id, strerror(-r));
    return r;
  }
  kb_format_time(kb_now(), now, sizeof now);
  r = kb_doc_set(ref->doc, "backup", "hashed", now);
  if (r == 0)
    r = kb_backup_save(cat, ref->vm_uuid, ref->chain, ref->id, ref->doc);
  if (r < 0)
    *ret_error = kb_printf("backup %s: cannot save its record: %s", ref->id, strerror(-r));
  return r;
}

int kb_backup_rehash(const struct kb_catalog *cat, struct kb_backup_ref *ref, char **ret_error)
{
  struct kb_doc *fresh = NULL;
  int r;

  r = kb_backup_load(cat, ref->vm_uuid, ref->chain, ref->id, &fresh);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot read its record: %s", ref->id, strerror(-r));
    return r;
  }
  kb_doc_free(ref->doc);
  ref->doc = fresh;
  if (!kb_backup_has_hash(ref->doc))
    return 0;
  return kb_backup_hash_record(cat, ref, ret_error);
}

int kb_backup_hash_verify(const struct kb_catalog *cat, const struct kb_backup_ref *ref,
                          char **ret_detail)
{
  char **disks = NULL;
  size_t i;
  int r, result = 0;

  r = kb_backup_disks(ref->doc, &disks);
  if (r < 0) {
    *ret_detail = kb_printf("cannot list the disks: %s", strerror(-r));
    return r;
  }
  for (i = 0; disks[i]; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", disks[i]);
    CLEANUP_FREE char *path = kb_backup_disk_path(cat, ref, disks[i]);
    const char *want = sec ? kb_doc_get(ref->doc, sec, "hash") : NULL;
    /* A compression swap in progress (or interrupted, until the next
     * kboss-compress run finishes it) may have put the new file in place. */
    const char *want_new = sec ? kb_doc_get(ref->doc, sec, "hash_new") : NULL;
    char hex[KB_HASH_HEX_LEN + 1];

    if (!want)
      continue;
    if (!path) {
      *ret_detail = kb_printf("disk %s: no valid file name in the record", disks[i]);
      result = -EINVAL;
      break;
    }
    r = kb_hash_file(path, hex, NULL);
    if (r < 0) {
      *ret_detail = kb_printf("disk %s: cannot read %s: %s", disks[i], path, strerror(-r));
      result = r;
      break;
    }
    if (strcmp(hex, want) != 0 && !(want_new && strcmp(hex, want_new) == 0)) {
      *ret_detail = kb_printf("disk %s: %s hashes to %s, recorded %s", disks[i], path, hex, want);
      result = 1;
      break;
    }
  }
  kb_strv_free(disks);
  return result;
}
