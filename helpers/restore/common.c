/* What normal and quick restores share: the VM, its lock and record, the
 * disks to restore, the end of the chain, and a new VM for --as. */
#include <config.h>

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "chain.h"
#include "domxml.h"
#include "localstate.h"
#include "lock.h"
#include "log.h"
#include "restore.h"
#include "util.h"
#include "watchdog.h"

int rs_open_vm(struct rs_ctx *c, const char *vm_uuid, const char *purpose, char **ret_error)
{
  const char *uri = kb_config_str(c->cfg, NULL, "libvirt.uri");
  int r;

  if (!c->conn && kb_virt_connect(uri, &c->conn) < 0) {
    *ret_error = kb_printf("cannot connect to libvirt at %s: %s", uri, kb_virt_error());
    return -ECONNREFUSED;
  }
  if (!c->dom && kb_virt_lookup(c->conn, vm_uuid, &c->dom) < 0) {
    *ret_error = kb_printf("VM %s: no such domain in libvirt (%s)", vm_uuid, uri);
    return -ENOENT;
  }
  if (virDomainGetUUIDString(c->dom, c->uuid) < 0 || !(c->vm_name = strdup(virDomainGetName(c->dom)))) {
    *ret_error = kb_printf("VM %s: %s", vm_uuid, kb_virt_error());
    return -EIO;
  }
  r = kb_catalog_lock_vm(c->cat, c->uuid, purpose, 0, &c->lock);
  if (r < 0) {
    *ret_error = r == -EBUSY ? kb_printf("VM %s is busy: another kboss operation holds it", c->vm_name)
                             : kb_printf("VM %s: cannot take its lock: %s", c->vm_name, strerror(-r));
    return r;
  }
  /* Local facts for the qemu hook, which must not read the export. */
  (void) kb_local_mark_vm(c->uuid);
  (void) kb_virt_mark_domain(c->dom);
  r = kb_vm_load(c->cat, c->uuid, &c->rec);
  if (r == -ENOENT) {
    c->rec = kb_doc_new();
    r = c->rec ? kb_doc_set(c->rec, "vm", "uuid", c->uuid) : -ENOMEM;
    if (r == 0)
      r = kb_doc_set(c->rec, "vm", "name", c->vm_name);
    if (r == 0)
      r = kb_doc_set(c->rec, "vm", "state", KB_VM_READY);
  }
  if (r < 0)
    *ret_error = kb_printf("VM %s: cannot read its catalog record: %s", c->vm_name, strerror(-r));
  return r;
}

int rs_set_state(struct rs_ctx *c, const char *state, const char *error)
{
  int r;

  /* While Restoring, the local marker makes the hook refuse a start
   * without asking the export; it is there before the record says so. */
  if (KB_STREQ(state, KB_VM_RESTORING)) {
    r = kb_local_restoring_begin(c->uuid);
    if (r < 0)
      return r;
    kb_watchdog_note("restoring", c->uuid);
  }
  r = kb_vm_set_state(c->cat, c->uuid, c->rec, state, error);
  if (!KB_STREQ(state, KB_VM_RESTORING) || r < 0)
    kb_local_restoring_end(c->uuid);
  return r;
}

/* The restored disks no longer match the VM's bitmaps: end the chain and
 * drop libvirt's checkpoint metadata (the bitmaps went with the old disks). */
int rs_end_chain(struct rs_ctx *c, const char *reason)
{
  virDomainCheckpointPtr *cps = NULL;
  int i, n;

  n = virDomainListAllCheckpoints(c->dom, &cps, 0);
  for (i = 0; i < n; i++) {
    (void) virDomainCheckpointDelete(cps[i], VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY);
    virDomainCheckpointFree(cps[i]);
  }
  free(cps);
  return kb_chain_end(c->cat, c->uuid, c->rec, reason);
}

int rs_take_owner(const struct rs_disk *d, char **ret_error)
{
  struct stat st;

  if (stat(d->dest, &st) == 0) {
    if (chown(d->tmp, st.st_uid, st.st_gid) < 0 || chmod(d->tmp, st.st_mode & 07777) < 0) {
      int r = -errno;
      *ret_error = kb_printf("disk %s: cannot give %s the old disk's owner and mode: %s", d->target, d->tmp,
                             strerror(-r));
      return r;
    }
  } else if (chmod(d->tmp, 0600) < 0)
    return -errno;
  return 0;
}

void rs_disks_free(struct rs_disk *d, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++) {
    free(d[i].target);
    free(d[i].backup_file);
    free(d[i].dest);
    free(d[i].format);
    kb_chain_free(d[i].chain);
    if (d[i].tmp)
      (void) unlink(d[i].tmp);
    free(d[i].tmp);
  }
  free(d);
}

int rs_plan_disks(struct rs_ctx *c, const struct rs_opts *o, struct rs_disk **ret, size_t *ret_n,
                  char **ret_error)
{
  CLEANUP_FREE char *xml = virDomainGetXMLDesc(c->dom, VIR_DOMAIN_XML_INACTIVE);
  CLEANUP_FREE char *chain_dir = NULL;
  struct kb_disks vmdisks = { NULL, 0 };
  char **targets = NULL;
  struct rs_disk *d = NULL;
  size_t i, n = 0;
  int r;

  if (!xml || kb_disks_parse(xml, &vmdisks) < 0) {
    *ret_error = kb_printf("VM %s: cannot read its definition: %s", c->vm_name, kb_virt_error());
    return -EIO;
  }
  r = kb_backup_disks(c->ref.doc, &targets);
  if (r < 0)
    goto out;
  for (i = 0; targets[i]; i++)
    ;
  d = calloc(i + 1, sizeof *d);
  if (!d) {
    r = -ENOMEM;
    goto out;
  }
  {
    CLEANUP_FREE char *data = kb_backup_data_dir(c->cat, &c->ref);
    chain_dir = data ? strdup(dirname(data)) : NULL;
  }
  for (i = 0; targets[i]; i++) {
    const struct kb_disk *vd;
    struct stat st;

    if (o->disk && !KB_STREQ(o->disk, targets[i]))
      continue;
    vd = kb_disks_find(&vmdisks, targets[i]);
    if (!vd || !vd->source || kb_disk_unsupported(vd)) {
      *ret_error = kb_printf("VM %s has no file-based disk %s to restore into", c->vm_name, targets[i]);
      r = -ENOENT;
      goto out;
    }
    d[n].target = strdup(targets[i]);
    d[n].backup_file = kb_backup_disk_path(c->cat, &c->ref, targets[i]);
    d[n].dest = strdup(vd->source);
    d[n].format = strdup(vd->format ? vd->format : "raw");
    d[n].tmp = NULL;
    n++;
    if (!d[n - 1].target || !d[n - 1].backup_file || !d[n - 1].dest || !d[n - 1].format) {
      r = -ENOMEM;
      goto out;
    }
    if (stat(d[n - 1].backup_file, &st) < 0) {
      *ret_error = kb_printf("backup %s: disk %s: %s: %s (is the store mounted?)", c->ref.id, targets[i],
                             d[n - 1].backup_file, strerror(errno));
      r = -ENOENT;
      goto out;
    }
    if (!chain_dir) {
      r = -ENOMEM;
      goto out;
    }
    /* Our own reader walks the chain; qemu gets only what passed. */
    r = kb_chain_validate(chain_dir, d[n - 1].backup_file, &d[n - 1].chain, ret_error);
    if (r < 0) {
      char *why = *ret_error;
      *ret_error = kb_printf("backup %s: disk %s: refusing its backing chain: %s", c->ref.id, targets[i],
                             why ? why : strerror(-r));
      free(why);
      goto out;
    }
  }
  if (n == 0) {
    *ret_error = o->disk ? kb_printf("backup %s has no disk %s", c->ref.id, o->disk)
                         : kb_printf("backup %s holds no disk", c->ref.id);
    r = -ENOENT;
    goto out;
  }
  *ret = d;
  *ret_n = n;
  d = NULL;
  n = 0;
out:
  if (d)
    rs_disks_free(d, n);
  kb_strv_free(targets);
  kb_disks_clear(&vmdisks);
  return r;
}

int rs_mark_in_use(struct rs_ctx *c, const char *vm_uuid, bool in_use)
{
  return kb_backup_mark_in_use(c->cat, &c->ref, in_use ? vm_uuid : NULL);
}

/* ---- a new VM for --as ---- */

/* Where the new VM's disks go: beside the original VM's disk of the same
 * target as this host's libvirt defines it, else beside its first file
 * disk, else in libvirt's "default" pool. Never a folder named by the
 * saved domain XML, which comes from the export. */
static char *new_disk_folder(struct rs_ctx *c, const char *target)
{
  virDomainPtr orig = NULL;
  struct kb_disks disks = { NULL, 0 };
  char *dir = NULL;

  if (kb_virt_lookup(c->conn, c->ref.vm_uuid, &orig) == 0) {
    CLEANUP_FREE char *xml = virDomainGetXMLDesc(orig, VIR_DOMAIN_XML_INACTIVE);
    if (xml && kb_disks_parse(xml, &disks) == 0) {
      const struct kb_disk *d = kb_disks_find(&disks, target);
      size_t i;
      for (i = 0; (!d || !d->source || !d->type || !KB_STREQ(d->type, "file")) && i < disks.n; i++)
        d = &disks.v[i];
      if (d && d->source && d->type && KB_STREQ(d->type, "file") && d->source[0] == '/')
        dir = kb_dirname(d->source);
    }
    kb_disks_clear(&disks);
    virDomainFree(orig);
  }
  if (!dir) {
    virStoragePoolPtr pool = virStoragePoolLookupByName(c->conn, "default");
    CLEANUP_FREE char *pxml = pool ? virStoragePoolGetXMLDesc(pool, 0) : NULL;
    if (pxml) {
      xmlDocPtr doc = xmlReadMemory(pxml, (int) strlen(pxml), "pool.xml", NULL,
                                    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
      xmlXPathContextPtr ctx = doc ? xmlXPathNewContext(doc) : NULL;
      xmlXPathObjectPtr o = ctx ? xmlXPathEvalExpression((const xmlChar *) "string(/pool/target/path)", ctx) : NULL;
      if (o && o->type == XPATH_STRING && o->stringval && o->stringval[0] == '/')
        dir = strdup((const char *) o->stringval);
      if (o)
        xmlXPathFreeObject(o);
      if (ctx)
        xmlXPathFreeContext(ctx);
      if (doc)
        xmlFreeDoc(doc);
    }
    if (pool)
      virStoragePoolFree(pool);
  }
  return dir;
}

int rs_define_new_vm(struct rs_ctx *c, const struct rs_opts *o, char **ret_error)
{
  CLEANUP_FREE char *path = kb_catalog_backup_domain_path(c->cat, c->ref.vm_uuid, c->ref.chain, c->ref.id);
  CLEANUP_FREE char *saved = NULL, *xml = NULL, *desc = NULL, *err = NULL;
  struct kb_domxml_disk *disks = NULL;
  char **targets = NULL, **files = NULL, **notices = NULL;
  virDomainPtr existing;
  size_t i, n = 0;
  int r;

  if (!kb_name_ok(o->as)) {
    *ret_error = kb_printf("'%s' is not a valid VM name (letters, digits, '.', '_', '-')", o->as);
    return -EINVAL;
  }
  existing = virDomainLookupByName(c->conn, o->as);
  if (existing) {
    virDomainFree(existing);
    *ret_error = kb_printf("a VM named %s exists already", o->as);
    return -EEXIST;
  }
  if (!path || kb_meta_read_file(path, &saved, NULL) < 0) {
    *ret_error = kb_printf("backup %s: its domain XML is missing (%s)", c->ref.id, path ? path : "?");
    return -ENOENT;
  }
  r = kb_backup_disks(c->ref.doc, &targets);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot list its disks", c->ref.id);
    return r;
  }
  for (n = 0; targets[n]; n++)
    ;
  disks = calloc(n + 1, sizeof *disks);
  files = calloc(n + 1, sizeof *files);
  desc = kb_printf("restored by kboss from backup %s", c->ref.id);
  if (!disks || !files || !desc) {
    r = -ENOMEM;
    goto out;
  }
  for (i = 0; i < n; i++) {
    CLEANUP_FREE char *folder = new_disk_folder(c, targets[i]);
    if (!folder) {
      *ret_error = kb_printf("VM %s: no folder for its disk %s: the original VM is not defined on this host "
                             "and libvirt has no \"default\" storage pool", o->as, targets[i]);
      r = -ENOENT;
      goto out;
    }
    files[i] = kb_printf("%s/%s-%s.qcow2", folder, o->as, targets[i]);
    if (!files[i]) {
      r = -ENOMEM;
      goto out;
    }
    disks[i].target = targets[i];
    disks[i].file = files[i];
    disks[i].format = "qcow2";
  }
  {
    /* New name, new UUID and MAC addresses (libvirt makes them), kboss's
     * disks, NICs on the saved networks, a few checked values. */
    struct kb_domxml_opts opts = {
      .name = o->as, .description = desc, .disks = disks, .ndisks = n, .network = true,
    };
    r = kb_domxml_build(saved, &opts, &xml, NULL, &notices, &err);
  }
  if (r < 0) {
    *ret_error = kb_printf("backup %s: %s", c->ref.id, err ? err : strerror(-r));
    goto out;
  }
  for (i = 0; notices[i]; i++)
    kb_info("VM %s: %s", o->as, notices[i]);
  c->dom = virDomainDefineXML(c->conn, xml);
  if (!c->dom) {
    *ret_error = kb_printf("cannot define VM %s: %s", o->as, kb_virt_error());
    r = -EIO;
  }
out:
  kb_strv_free(notices);
  kb_strv_free(targets);
  kb_strv_free(files);
  free(disks);
  return r;
}
