/* Quick restore: overlays on primary storage backed by the backup on
 * secondary storage, the VM started at once, then consolidation (block
 * stream) while the guest runs, or offline if the guest stops. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "log.h"
#include "qcow2.h"
#include "restore.h"
#include "util.h"
#include "watchdog.h"

/* Does the overlay at PATH (primary storage) still have a backing file?
 * 1 yes, 0 no.  Read with our own reader: no qemu process opens it. */
static int has_backing(const char *path)
{
  struct kb_qcow2 *img = NULL;
  int r = kb_qcow2_open(path, &img, NULL);

  if (r < 0)
    return r;
  r = kb_qcow2_get_info(img)->backing_file ? 1 : 0;
  kb_qcow2_close(img);
  return r;
}

/* Spell CHAIN under the disk TARGET of the VM's persistent definition as
 * nested <backingStore> elements ending in an empty one, so libvirt hands
 * qemu exactly the validated files instead of probing the export's
 * headers; CHAIN NULL removes them (the disk stands alone again). */
static int set_disk_chain(struct rs_ctx *c, const char *target, const struct kb_chain *chain, char **ret_error)
{
  CLEANUP_FREE char *xml = virDomainGetXMLDesc(c->dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
  xmlDocPtr doc = NULL;
  xmlNodePtr disk = NULL, dev, n, next, parent;
  xmlChar *out = NULL;
  virDomainPtr dom;
  int len, r = -EINVAL;
  size_t i;

  if (!xml || !(doc = xmlReadMemory(xml, (int) strlen(xml), "domain.xml", NULL, XML_PARSE_NONET | XML_PARSE_NOERROR)))
    goto out;
  dev = xmlDocGetRootElement(doc);
  for (dev = dev ? dev->children : NULL; dev && !xmlStrEqual(dev->name, (const xmlChar *) "devices"); dev = dev->next)
    ;
  for (n = dev ? dev->children : NULL; n && !disk; n = n->next) {
    xmlNodePtr t;
    if (n->type != XML_ELEMENT_NODE || !xmlStrEqual(n->name, (const xmlChar *) "disk"))
      continue;
    for (t = n->children; t; t = t->next)
      if (t->type == XML_ELEMENT_NODE && xmlStrEqual(t->name, (const xmlChar *) "target")) {
        xmlChar *d = xmlGetProp(t, (const xmlChar *) "dev");
        if (d && KB_STREQ((const char *) d, target))
          disk = n;
        xmlFree(d);
      }
  }
  if (!disk)
    goto out;
  for (n = disk->children; n; n = next) {
    next = n->next;
    if (n->type == XML_ELEMENT_NODE && xmlStrEqual(n->name, (const xmlChar *) "backingStore")) {
      xmlUnlinkNode(n);
      xmlFreeNode(n);
    }
  }
  r = -ENOMEM;
  parent = disk;
  for (i = 0; chain && i < chain->n; i++) {
    xmlNodePtr bs = xmlNewChild(parent, NULL, (const xmlChar *) "backingStore", NULL), f, src;
    if (!bs || !xmlNewProp(bs, (const xmlChar *) "type", (const xmlChar *) "file") ||
        !(f = xmlNewChild(bs, NULL, (const xmlChar *) "format", NULL)) ||
        !xmlNewProp(f, (const xmlChar *) "type", (const xmlChar *) "qcow2") ||
        !(src = xmlNewChild(bs, NULL, (const xmlChar *) "source", NULL)) ||
        !xmlNewProp(src, (const xmlChar *) "file", (const xmlChar *) chain->files[i]))
      goto out;
    parent = bs;
  }
  if (chain && !xmlNewChild(parent, NULL, (const xmlChar *) "backingStore", NULL))
    goto out;
  xmlDocDumpMemory(doc, &out, &len);
  if (!out)
    goto out;
  dom = virDomainDefineXML(c->conn, (const char *) out);
  if (!dom) {
    *ret_error = kb_printf("VM %s: disk %s: cannot %s its backing chain in its definition: %s", c->vm_name, target,
                           chain ? "spell out" : "remove", kb_virt_error());
    r = -EIO;
    goto out;
  }
  virDomainFree(dom);
  r = 0;
out:
  if (r == -EINVAL)
    *ret_error = kb_printf("VM %s: cannot find disk %s in its definition", c->vm_name, target);
  else if (r == -ENOMEM && !*ret_error)
    *ret_error = strdup("out of memory");
  xmlFree(out);
  xmlFreeDoc(doc);
  return r;
}

static int consolidate_offline(struct rs_ctx *c, const char *target, const char *path, const struct kb_chain *chain,
                               char **ret_error)
{
  /* Safe rebase onto nothing copies in everything the backing chain held;
   * the chain is the validated one, spelled node by node. */
  CLEANUP_FREE char *spec = kb_chain_qemu_json(chain, path);
  const char *argv[] = { QEMU_IMG, "rebase", "-b", "", spec, NULL };
  CLEANUP_FREE char *out = NULL;

  if (!spec)
    return -ENOMEM;
  kb_info("VM %s is not running: consolidating disk %s offline", c->vm_name, target);
  if (kb_run(argv, &out) != 0) {
    *ret_error = kb_printf("VM %s: disk %s: offline consolidation failed: %s", c->vm_name, target, out ? out : "");
    return -EIO;
  }
  return 0;
}

static int consolidate_disk(struct rs_ctx *c, const struct rs_disk *d, unsigned long bandwidth, char **ret_error)
{
  const char *target = d->target, *path = d->dest;
  struct kb_progress p;
  bool started = false;
  int r;

  r = has_backing(path);
  if (r <= 0)
    return r;
  kb_progress_start(&p, target, 0);
  for (;;) {
    virDomainBlockJobInfo info;
    int k;

    if (rs_cancel) {
      kb_progress_end(&p);
      *ret_error = kb_printf("VM %s: consolidation interrupted; resume it with kboss-restore --consolidate %s",
                             c->vm_name, c->vm_name);
      return -EINTR;
    }
    if (virDomainIsActive(c->dom) != 1)
      break;
    k = virDomainGetBlockJobInfo(c->dom, target, &info, 0);
    if (k == 1) {
      p.total = info.end;
      kb_progress_update(&p, info.cur);
    } else if (k == 0) {
      if (started)
        break;    /* the job ended */
      if (virDomainBlockPull(c->dom, target, bandwidth, 0) < 0) {
        if (virDomainIsActive(c->dom) != 1)
          break;
        kb_progress_end(&p);
        *ret_error = kb_printf("VM %s: disk %s: cannot start consolidation: %s", c->vm_name, target,
                               kb_virt_error());
        return -EIO;
      }
      started = true;
    } else if (virDomainIsActive(c->dom) != 1)
      break;
    usleep(200 * 1000);
  }
  kb_progress_end(&p);
  /* The job ended.  Either it finished (no backing file any more), or the
   * guest is stopping: qemu drops its block jobs before libvirt reports the
   * domain inactive, so give it time to go, then finish offline. */
  for (int waited = 0;; waited++) {
    r = has_backing(path);
    if (r <= 0)
      return r;
    if (virDomainIsActive(c->dom) != 1)
      return consolidate_offline(c, target, path, d->chain, ret_error);
    if (waited == 150) {     /* 30 s */
      *ret_error = kb_printf("VM %s: disk %s: the consolidation job ended but the disk still has a backing file "
                             "(was the job cancelled?); resume it with kboss-restore --consolidate %s",
                             c->vm_name, target, c->vm_name);
      return -EIO;
    }
    usleep(200 * 1000);
  }
}

/* A guest boots faster when the block pull does not compete with it for the
 * host's CPU and disk: wait until its agent answers, at most BOOT_WAIT
 * seconds, before consolidating.  A domain without an agent channel gives no
 * sign of having booted, so it does not wait. */
static void wait_for_guest(struct rs_ctx *c, int boot_wait)
{
  int64_t deadline = kb_mono_ms() + (int64_t) boot_wait * 1000;
  bool said = false;

  while (boot_wait > 0 && !rs_cancel && virDomainIsActive(c->dom) == 1) {
    char *reply = virDomainQemuAgentCommand(c->dom, "{\"execute\":\"guest-ping\"}", 2, 0);
    virErrorPtr e;

    if (reply) {
      free(reply);
      if (said)
        kb_info("VM %s: the guest agent answers; consolidating", c->vm_name);
      return;
    }
    e = virGetLastError();
    if (e && e->code == VIR_ERR_ARGUMENT_UNSUPPORTED)
      return;   /* no agent channel */
    if (kb_mono_ms() >= deadline) {
      kb_info("VM %s: no answer from the guest agent in %d s; consolidating anyway", c->vm_name, boot_wait);
      return;
    }
    if (!said)
      kb_info("VM %s: waiting for the guest to boot (its agent to answer, at most %d s) before consolidating",
              c->vm_name, boot_wait);
    said = true;
    usleep(500 * 1000);
  }
}

int rs_consolidate(struct rs_ctx *c, const struct rs_opts *o, char **ret_error)
{
  const char *state = kb_doc_get(c->rec, "vm", "state");
  const char *disks = kb_doc_get(c->rec, "consolidation", "disks");
  const char *bid = kb_doc_get(c->rec, "consolidation", "backup");
  CLEANUP_FREE char *list = disks ? strdup(disks) : NULL;
  struct rs_opts all = *o;
  struct rs_disk *d = NULL;
  size_t n = 0, i;
  char *save = NULL, *tok;
  int64_t t0 = kb_mono_ms();
  int r = 0;

  if (!state || !KB_STREQ(state, KB_VM_CONSOLIDATING) || !list) {
    *ret_error = kb_printf("VM %s has no consolidation to finish (state %s)", c->vm_name, state ? state : "?");
    return -EINVAL;
  }
  /* The record lives on the export: it names the backup, never a path.
   * The disks come from libvirt's definition of the VM, their chains from
   * the validator. */
  if (!c->ref.id) {
    if (!bid || !kb_name_ok(bid) || kb_backup_find(c->cat, bid, &c->ref) < 0) {
      *ret_error = kb_printf("VM %s: the consolidation record names no usable backup (%s)", c->vm_name,
                             bid ? bid : "none");
      return -EINVAL;
    }
  } else if (!bid || !KB_STREQ(bid, c->ref.id)) {
    *ret_error = kb_printf("VM %s: the consolidation record is damaged (backup)", c->vm_name);
    return -EINVAL;
  }
  wait_for_guest(c, o->boot_wait);
  for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    CLEANUP_FREE char *key = kb_name_ok(tok) ? kb_printf("path.%s", tok) : NULL;
    const char *path = key ? kb_doc_get(c->rec, "consolidation", key) : NULL;
    struct rs_disk *di = NULL;

    rs_disks_free(d, n);
    d = NULL;
    n = 0;
    all.disk = tok;
    if (path) {
      r = rs_plan_disks(c, &all, &d, &n, ret_error);
      if (r < 0)
        goto out;
    }
    for (i = 0; i < n; i++)
      if (KB_STREQ(d[i].target, tok))
        di = &d[i];
    if (!path || !di) {
      *ret_error = kb_printf("VM %s: the consolidation record is damaged (disk %s)", c->vm_name, tok);
      r = -EINVAL;
      goto out;
    }
    if (!KB_STREQ(path, di->dest)) {
      *ret_error = kb_printf("VM %s: disk %s: the consolidation record names %s, but the VM's disk is %s; refusing",
                             c->vm_name, tok, path, di->dest);
      r = -EPERM;
      goto out;
    }
    r = consolidate_disk(c, di, o->bandwidth, ret_error);
    /* qemu syncs the pulled data before it rewrites the disk's header
     * without the backing file, but leaves that header write in the page
     * cache (strace of qemu during a consolidation): a crash before it
     * reaches storage brings back a disk that reads through the backup.
     * The backup is released only once the disk's file is synced. */
    if (r == 0) {
      r = kb_fsync_path(di->dest);
      if (r < 0)
        *ret_error = kb_printf("VM %s: disk %s: cannot sync %s after consolidation: %s", c->vm_name, tok,
                               di->dest, strerror(-r));
    }
    if (r == 0)
      r = set_disk_chain(c, tok, NULL, ret_error);
    if (r < 0) {
      (void) kb_doc_set_text(c->rec, "vm", "last_error", *ret_error);
      (void) kb_vm_save(c->cat, c->uuid, c->rec);
      goto out;
    }
  }
  (void) rs_mark_in_use(c, c->uuid, false);
  (void) kb_doc_remove_section(c->rec, "consolidation");
  r = rs_set_state(c, KB_VM_READY, NULL);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: consolidated, but its record could not be updated: %s", c->vm_name,
                           strerror(-r));
    goto out;
  }
  printf("VM %s: consolidation finished in %.1f s; its disks no longer depend on the backup\n", c->vm_name,
         (kb_mono_ms() - t0) / 1000.0);
out:
  rs_disks_free(d, n);
  return r;
}

int rs_quick_restore(struct rs_ctx *c, const struct rs_opts *o, char **ret_error)
{
  const char *off_name = kb_doc_get(c->ref.doc, "backup", "offering");
  const struct kb_offering *off = off_name ? kb_config_offering(c->cfg, off_name) : NULL;
  struct rs_disk *d = NULL;
  size_t n = 0, i;
  CLEANUP_FREE char *names = NULL;
  int64_t t0 = kb_mono_ms();
  int r;

  if (!off || !off->allow_quick_restore) {
    *ret_error = kb_printf("backup %s: its offering '%s' does not allow quick restore", c->ref.id,
                           off_name ? off_name : "(none)");
    return -EPERM;
  }
  r = rs_plan_disks(c, o, &d, &n, ret_error);
  if (r < 0)
    return r;
  for (i = 0; i < n; i++)
    if (!KB_STREQ(d[i].format, "qcow2")) {
      *ret_error = kb_printf("VM %s: disk %s is %s; quick restore needs qcow2 disks (use a normal restore)",
                             c->vm_name, d[i].target, d[i].format);
      r = -ENOTSUP;
      goto out;
    }
  r = rs_set_state(c, KB_VM_RESTORING, NULL);
  if (r < 0)
    goto out;
  for (i = 0; i < n; i++) {
    CLEANUP_FREE char *out = NULL;
    CLEANUP_FREE char *size = NULL;
    struct kb_doc *bk = c->ref.doc;
    CLEANUP_FREE char *sec = kb_printf("disk:%s", d[i].target);
    long long recorded = kb_doc_get_ll(bk, sec, "virtual_size", -1);
    const char *argv[20];
    int k = 0, fd;

    /* The size is the validated top image's; a record that disagrees or an
     * empty image is refused rather than giving the VM a 0-byte disk. */
    if (d[i].chain->virtual_size == 0 ||
        (recorded >= 0 && (unsigned long long) recorded != d[i].chain->virtual_size)) {
      *ret_error = kb_printf("backup %s: disk %s: its size is unknown or disagrees with its record "
                             "(image %llu bytes, record %lld); refusing to quick-restore it",
                             c->ref.id, d[i].target, (unsigned long long) d[i].chain->virtual_size, recorded);
      r = -EINVAL;
      goto fail;
    }
    size = kb_printf("%llu", (unsigned long long) d[i].chain->virtual_size);
    d[i].tmp = kb_printf("%s.kboss-quick.tmp", d[i].dest);
    if (d[i].tmp) {
      CLEANUP_FREE char *key = kb_printf("tmp.%s", d[i].target);
      if (key)
        kb_watchdog_note(key, d[i].tmp);
    }
    if (!d[i].tmp || !size) {
      r = -ENOMEM;
      goto fail;
    }
    (void) unlink(d[i].tmp);
    /* Created 0600 here; qemu-img create keeps the mode of a file it truncates. */
    fd = open(d[i].tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      r = -errno;
      *ret_error = kb_printf("disk %s: cannot create the overlay %s: %s", d[i].target, d[i].tmp, strerror(-r));
      goto fail;
    }
    close(fd);
    argv[k++] = QEMU_IMG;
    argv[k++] = "create";
    argv[k++] = "-q";
    argv[k++] = "-f";
    argv[k++] = "qcow2";
    argv[k++] = "-o";
    argv[k++] = "cluster_size=65536";
    argv[k++] = "-u";               /* do not open the chain: the size is known */
    argv[k++] = "-b";
    argv[k++] = d[i].backup_file;   /* absolute: the overlay lives on primary storage */
    argv[k++] = "-F";
    argv[k++] = "qcow2";
    argv[k++] = d[i].tmp;
    argv[k++] = size;
    argv[k] = NULL;
    if (kb_run(argv, &out) != 0) {
      *ret_error = kb_printf("disk %s: cannot create the overlay %s: %s", d[i].target, d[i].tmp, out ? out : "");
      r = -EIO;
      goto fail;
    }
    r = rs_take_owner(&d[i], ret_error);
    if (r < 0)
      goto fail;
  }
  /* From here the backup's files are in use until consolidation ends. */
  r = rs_mark_in_use(c, c->uuid, true);
  if (r < 0) {
    (void) rs_mark_in_use(c, c->uuid, false);
    *ret_error = r == -EBUSY
                   ? kb_printf("backup %s (or one it depends on) is being compressed or validated; try again later", c->ref.id)
                   : kb_printf("backup %s: cannot mark it in use: %s", c->ref.id, strerror(-r));
    goto fail;
  }
  (void) kb_doc_remove_section(c->rec, "consolidation");
  r = kb_doc_set(c->rec, "consolidation", "backup", c->ref.id);
  for (i = 0; i < n && r == 0; i++) {
    CLEANUP_FREE char *key = kb_printf("path.%s", d[i].target);
    CLEANUP_FREE char *nn = kb_printf("%s%s%s", names ? names : "", names ? "," : "", d[i].target);
    r = key && nn ? kb_doc_set(c->rec, "consolidation", key, d[i].dest) : -ENOMEM;
    free(names);
    names = nn;
    nn = NULL;
  }
  if (r == 0)
    r = kb_doc_set(c->rec, "consolidation", "disks", names);
  if (r == 0)
    r = rs_end_chain(c, "VM quick-restored");
  if (r == 0)
    r = kb_doc_set(c->rec, "vm", "last_restore", c->ref.id);
  if (r == 0)
    r = rs_set_state(c, KB_VM_CONSOLIDATING, NULL);
  if (r < 0) {
    (void) rs_mark_in_use(c, c->uuid, false);
    goto fail;
  }
  for (i = 0; i < n; i++) {
    kb_watchdog_note("swapping", "1");
    if (rename(d[i].tmp, d[i].dest) < 0) {
      r = -errno;
      *ret_error = kb_printf("disk %s: cannot move the overlay into place: %s", d[i].target, strerror(errno));
      goto out;
    }
    free(d[i].tmp);
    d[i].tmp = NULL;
    r = set_disk_chain(c, d[i].target, d[i].chain, ret_error);
    if (r < 0)
      goto out;
  }
  kb_watchdog_note("swapping", NULL);
  kb_watchdog_note("quick", c->vm_name);
  if (virDomainCreate(c->dom) < 0) {
    *ret_error = kb_printf("VM %s: overlays are in place but the VM did not start: %s; "
                           "kboss-restore --consolidate %s finishes offline",
                           c->vm_name, kb_virt_error(), c->vm_name);
    r = -EIO;
    goto out;
  }
  printf("VM %s is running from backup %s (%.1f s); consolidating its disks in the background of the guest\n",
         c->vm_name, c->ref.id, (kb_mono_ms() - t0) / 1000.0);
  fflush(stdout);
  rs_disks_free(d, n);
  return rs_consolidate(c, o, ret_error);
fail:
  (void) rs_set_state(c, KB_VM_READY, *ret_error);
out:
  rs_disks_free(d, n);
  return r;
}
