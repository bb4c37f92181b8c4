/* Give libvirt back the checkpoint it forgot (its metadata was lost, the
 * VM was migrated in or defined anew) from the XML saved in the catalog,
 * so the next backup can be incremental. Run by the qemu hook, detached,
 * after a VM starts. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "domxml.h"
#include "log.h"
#include "record.h"
#include "util.h"

int bk_redefine_checkpoints(struct bk_vm *v, char **ret_error)
{
  const char *name = kb_doc_get(v->rec, "vm", "last_checkpoint");
  CLEANUP_FREE char *path = NULL, *saved = NULL, *redef = NULL;
  virDomainCheckpointPtr cp;
  int r;

  if (!name || !*name || !kb_name_ok(name)) {
    kb_info("VM %s: no checkpoint to keep", v->name);
    return 0;
  }
  cp = virDomainCheckpointLookupByName(v->dom, name, 0);
  if (cp) {
    virDomainCheckpointFree(cp);
    kb_info("VM %s: libvirt knows checkpoint %s", v->name, name);
    return 0;
  }
  path = kb_catalog_checkpoint_path(v->cat, v->uuid, name);
  if (!path)
    return -ENOMEM;
  r = kb_meta_read_file(path, &saved, NULL);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: checkpoint %s is unknown to libvirt and its XML is not in the catalog (%s)",
                           v->name, name, strerror(-r));
    return r;
  }
  /* Its parent checkpoint was pruned after the backup that followed it
   * (kboss keeps one checkpoint): libvirt refuses an unknown parent, so
   * the checkpoint is redefined alone, as kboss-backup does. */
  r = kb_checkpoint_redefine_xml(saved, name, &redef);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: the saved XML of checkpoint %s is not usable: %s", v->name, name,
                           strerror(-r));
    return r;
  }
  cp = virDomainCheckpointCreateXML(v->dom, redef, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE);
  if (!cp) {
    *ret_error = kb_printf("VM %s: cannot redefine checkpoint %s: %s", v->name, name, kb_virt_error());
    return -EIO;
  }
  virDomainCheckpointFree(cp);
  kb_info("VM %s: redefined checkpoint %s from the catalog", v->name, name);
  return 0;
}
