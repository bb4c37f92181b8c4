/* What several kbossctl subcommands share: the catalog, finding a VM in
 * it by name or UUID, and the VM lock. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "record.h"
#include "util.h"
#include "store.h"
#include "watchdog.h"

struct kb_catalog *ctl_open_catalog(const struct kb_config *cfg)
{
  struct kb_catalog *cat = NULL;
  int r;

  /* A hung export fails the command within storage.timeout. */
  r = kb_watchdog_start(cfg, NULL);
  if (r < 0) {
    kb_err("cannot start the export watchdog: %s", strerror(-r));
    return NULL;
  }
  r = kb_catalog_open(cfg, &cat);
  if (r < 0) {
    kb_err("cannot open the catalog under %s: %s", kb_config_str(cfg, NULL, "secondary.path"), kb_store_strerror(r));
    return NULL;
  }
  return cat;
}

int ctl_find_backup(const struct kb_catalog *cat, const char *id, const char *verb, struct kb_backup_ref *ref)
{
  int r = kb_backup_find(cat, id, ref);

  if (r < 0)
    kb_err("%s: backup %s: %s", verb, id, r == -ENOENT ? "no such backup in the catalog" : strerror(-r));
  return r;
}

int ctl_find_vm(const struct kb_catalog *cat, const char *vm, char **ret_uuid)
{
  char **uuids = NULL;
  int r;

  if (kb_uuid_ok(vm)) {
    struct kb_doc *doc = NULL;
    r = kb_vm_load(cat, vm, &doc);
    kb_doc_free(doc);
    if (r == 0) {
      *ret_uuid = strdup(vm);
      return *ret_uuid ? 0 : -ENOMEM;
    }
  }
  r = kb_catalog_list_vms(cat, &uuids);
  if (r < 0)
    return r == -ENOENT ? -ENOENT : r;
  r = -ENOENT;
  for (size_t i = 0; uuids[i]; i++) {
    struct kb_doc *doc = NULL;
    if (kb_vm_load(cat, uuids[i], &doc) == 0) {
      const char *name = kb_doc_get(doc, "vm", "name");
      if (name && KB_STREQ(name, vm)) {
        *ret_uuid = strdup(uuids[i]);
        r = *ret_uuid ? 0 : -ENOMEM;
      }
    }
    kb_doc_free(doc);
    if (r != -ENOENT)
      break;
  }
  kb_strv_free(uuids);
  return r;
}

int ctl_lock_vm(const struct kb_catalog *cat, const char *uuid, const char *vm, const char *purpose,
                struct kb_lock **ret)
{
  int r = kb_catalog_lock_vm(cat, uuid, purpose, 10000, ret);

  if (r == -EBUSY) {
    CLEANUP_FREE char *dir = kb_catalog_locks_dir(cat);
    CLEANUP_FREE char *path = dir ? kb_printf("%s/vm-%s.lock", dir, uuid) : NULL;
    CLEANUP_FREE char *holder = NULL;
    if (path)
      (void) kb_lock_probe(path, &holder);
    kb_err("VM %s is busy: another kboss operation holds it (%s)", vm, holder ? holder : "holder unknown");
  } else if (r < 0)
    kb_err("VM %s: cannot take its lock: %s", vm, strerror(-r));
  return r;
}
