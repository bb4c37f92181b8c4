/* Finding the VM, the checks before any work, its lock and record. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "lock.h"
#include "record.h"
#include "util.h"
#include "localstate.h"
#include "store.h"
#include "watchdog.h"

static int fail(char **ret_error, int r, char *msg)
{
  *ret_error = msg;
  return r;
}

int bk_vm_open(struct kb_config *cfg, const char *vm, const char *purpose, bool need_offering,
               struct bk_vm *ret, char **ret_error)
{
  struct bk_vm v;
  const char *off_name, *uri;
  int r;

  memset(&v, 0, sizeof v);
  v.cfg = cfg;
  if (!kb_config_bool(cfg, vm, "backup.framework.enabled"))
    return fail(ret_error, -EPERM,
                kb_printf("the backup framework is disabled: set backup.framework.enabled = true in [global] or [zone] of %s",
                          kb_config_path(cfg)));
  if (!KB_STREQ(kb_config_str(cfg, vm, "backup.framework.provider.plugin"), "kboss"))
    return fail(ret_error, -EPERM,
                kb_printf("the backup provider is '%s', not kboss: set backup.framework.provider.plugin = kboss in %s",
                          kb_config_str(cfg, vm, "backup.framework.provider.plugin"), kb_config_path(cfg)));
  if (need_offering) {
    const struct kb_offering *off;
    off_name = kb_config_vm_offering(cfg, vm);
    if (!off_name)
      return fail(ret_error, -EPERM,
                  kb_printf("VM %s has no backup offering assigned (kbossctl assign %s OFFERING)", vm, vm));
    off = kb_config_offering(cfg, off_name);
    if (!off)
      return fail(ret_error, -ENOENT, kb_printf("VM %s: offering '%s' does not exist", vm, off_name));
    if (!off->allow_user_driven_backups)
      return fail(ret_error, -EPERM,
                  kb_printf("VM %s: offering '%s' does not allow user driven backups (allow_user_driven_backups = false in %s)",
                            vm, off_name, off->file));
  }
  uri = kb_config_str(cfg, NULL, "libvirt.uri");
  r = kb_virt_connect(uri, &v.conn);
  if (r < 0)
    return fail(ret_error, r, kb_printf("cannot connect to libvirt at %s: %s", uri, kb_virt_error()));
  r = kb_virt_lookup(v.conn, vm, &v.dom);
  if (r < 0) {
    bk_vm_close(&v);
    return fail(ret_error, r, kb_printf("VM %s: no such domain in libvirt (%s)", vm, uri));
  }
  if (virDomainGetUUIDString(v.dom, v.uuid) < 0 || !(v.name = strdup(virDomainGetName(v.dom)))) {
    bk_vm_close(&v);
    return fail(ret_error, -EIO, kb_printf("VM %s: %s", vm, kb_virt_error()));
  }
  kb_watchdog_note("vm", v.uuid);
  r = kb_catalog_open(cfg, &v.cat);
  if (r < 0) {
    bk_vm_close(&v);
    return fail(ret_error, r, kb_printf("cannot open the catalog under %s: %s",
                                        kb_config_str(cfg, NULL, "secondary.path"), kb_store_strerror(r)));
  }
  r = kb_catalog_lock_vm(v.cat, v.uuid, purpose, 0, &v.lock);
  if (r < 0) {
    CLEANUP_FREE char *label = kb_printf("VM %s", vm);
    char *msg = label ? kb_msg_lock(v.cat, KB_LOCK_VM, v.uuid, label, r) : NULL;
    bk_vm_close(&v);
    return fail(ret_error, r, msg);
  }
  /* Local facts for the qemu hook, which must not read the export. */
  (void) kb_local_mark_vm(v.uuid);
  (void) kb_virt_mark_domain(v.dom);
  r = kb_vm_load(v.cat, v.uuid, &v.rec);
  if (r == -ENOENT) {
    v.rec = kb_doc_new();
    if (!v.rec)
      r = -ENOMEM;
    else {
      r = kb_doc_set(v.rec, "vm", "uuid", v.uuid);
      if (r == 0)
        r = kb_doc_set(v.rec, "vm", "state", KB_VM_READY);
    }
  }
  if (r < 0) {
    bk_vm_close(&v);
    return fail(ret_error, r, kb_printf("VM %s: cannot read its catalog record: %s", vm, strerror(-r)));
  }
  /* The record describes itself: name, account and offering as of now. */
  (void) kb_doc_set(v.rec, "vm", "name", v.name);
  (void) kb_doc_set(v.rec, "vm", "account", kb_config_vm_account(cfg, v.name));
  (void) kb_doc_set(v.rec, "vm", "offering", kb_config_vm_offering(cfg, v.name));
  *ret = v;
  return 0;
}

void bk_vm_forget_nodes(struct bk_vm *v)
{
  kb_block_nodes_free(v->nodes);
  v->nodes = NULL;
}

void bk_vm_close(struct bk_vm *v)
{
  bk_vm_forget_nodes(v);
  kb_lock_release(v->lock);
  kb_doc_free(v->rec);
  kb_catalog_free(v->cat);
  if (v->dom)
    virDomainFree(v->dom);
  if (v->conn)
    virConnectClose(v->conn);
  free(v->name);
  memset(v, 0, sizeof *v);
}

int bk_vm_set_state(struct bk_vm *v, const char *state, const char *error)
{
  return kb_vm_set_state(v->cat, v->uuid, v->rec, state, error);
}
