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

  if (r < 0) {
    CLEANUP_FREE char *msg = kb_msg_backup_find(id, r);
    kb_err("%s: %s", verb, msg ? msg : strerror(-r));
  }
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
  int r = kb_catalog_lock(cat, KB_LOCK_VM, uuid, purpose, 10000, ret);

  if (r < 0) {
    CLEANUP_FREE char *label = kb_printf("VM %s", vm);
    CLEANUP_FREE char *msg = label ? kb_msg_lock(cat, KB_LOCK_VM, uuid, label, r) : NULL;
    kb_err("%s", msg ? msg : strerror(-r));
  }
  return r;
}
