/* The validation VM: a transient domain made from the domain XML saved with
 * the backup, its disks replaced by throwaway qcow2 overlays backed by the
 * backup's files, with no network, no host devices and VNC on loopback. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "chain.h"
#include "lock.h"
#include "log.h"
#include "util.h"
#include "validate.h"
#include "virt.h"

/* Devices a validation VM never gets: they reach the network, the host's
 * hardware, or files that belong to the original VM. */
static const char *const dropped_devices[] = {
  "interface", "hostdev", "redirdev", "redirfilter", "smartcard", "filesystem", "lease",
  "shmem", "vsock", "tpm", "parallel", "serial", "console", "channel", "graphics", "hub",
  "crypto", NULL,
};

static bool in_list(const char *s, const char *const *list)
{
  for (; *list; list++)
    if (KB_STREQ(s, *list))
      return true;
  return false;
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
  for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
    if (c->type == XML_ELEMENT_NODE && xmlStrEqual(c->name, BAD_CAST name))
      return c;
  return NULL;
}

static void remove_children(xmlNodePtr n, const char *name)
{
  xmlNodePtr c = n->children, next;
  for (; c; c = next) {
    next = c->next;
    if (c->type == XML_ELEMENT_NODE && xmlStrEqual(c->name, BAD_CAST name)) {
      xmlUnlinkNode(c);
      xmlFreeNode(c);
    }
  }
}

static void set_text_child(xmlNodePtr parent, const char *name, const char *text)
{
  xmlNodePtr c = child(parent, name);
  if (c)
    xmlNodeSetContent(c, BAD_CAST text);
  else
    xmlNewTextChild(parent, NULL, BAD_CAST name, BAD_CAST text);
}

static unsigned long long to_kib(xmlNodePtr n)
{
  xmlChar *txt = xmlNodeGetContent(n), *unit = xmlGetProp(n, BAD_CAST "unit");
  unsigned long long v = txt ? strtoull((const char *) txt, NULL, 10) : 0;
  const char *u = unit ? (const char *) unit : "KiB";

  if (KB_STREQ(u, "b") || KB_STREQ(u, "bytes"))
    v /= 1024;
  else if (KB_STREQ(u, "MiB") || KB_STREQ(u, "M"))
    v *= 1024;
  else if (KB_STREQ(u, "GiB") || KB_STREQ(u, "G"))
    v *= 1024 * 1024;
  else if (KB_STREQ(u, "KB"))
    v = v * 1000 / 1024;
  else if (KB_STREQ(u, "MB"))
    v = v * 1000 * 1000 / 1024;
  else if (KB_STREQ(u, "GB"))
    v = v * 1000 * 1000 * 1000 / 1024;
  xmlFree(txt);
  xmlFree(unit);
  return v;
}

int vl_domain_xml(const char *saved, const char *name, const char *description,
                  char *const *targets, char *const *overlays, const char *scratch,
                  char **ret_xml, unsigned *ret_vcpus, unsigned long long *ret_mem_kib,
                  char **ret_error)
{
  xmlDocPtr doc;
  xmlNodePtr root, devs, os, n, next, g, l;
  xmlChar *out = NULL;
  int outlen = 0;
  bool have_video = false;
  size_t ndisks = 0;

  doc = xmlReadMemory(saved, (int) strlen(saved), "domain.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc) {
    *ret_error = strdup("the saved domain XML does not parse");
    return -EINVAL;
  }
  root = xmlDocGetRootElement(doc);
  if (!root || !xmlStrEqual(root->name, BAD_CAST "domain") || !(devs = child(root, "devices"))) {
    xmlFreeDoc(doc);
    *ret_error = strdup("the saved domain XML has no <domain>/<devices>");
    return -EINVAL;
  }
  xmlUnsetProp(root, BAD_CAST "id");
  remove_children(root, "uuid");       /* libvirt makes a new one */
  remove_children(root, "seclabel");   /* a static label belongs to the original */
  set_text_child(root, "name", name);
  set_text_child(root, "description", description);
  set_text_child(root, "on_poweroff", "destroy");
  set_text_child(root, "on_crash", "destroy");

  /* UEFI variables: a copy of the template in the scratch folder, never
   * the original VM's store. */
  os = child(root, "os");
  if (os && (n = child(os, "nvram"))) {
    CLEANUP_FREE char *nv = kb_printf("%s/nvram.fd", scratch);
    if (!nv)
      goto nomem;
    xmlNodeSetContent(n, BAD_CAST nv);
  }

  for (n = devs->children; n; n = next) {
    next = n->next;
    if (n->type != XML_ELEMENT_NODE)
      continue;
    if (in_list((const char *) n->name, dropped_devices)) {
      xmlUnlinkNode(n);
      xmlFreeNode(n);
      continue;
    }
    if (xmlStrEqual(n->name, BAD_CAST "video"))
      have_video = true;
    if (xmlStrEqual(n->name, BAD_CAST "disk")) {
      xmlChar *device = xmlGetProp(n, BAD_CAST "device");
      xmlNodePtr t = child(n, "target");
      xmlChar *dev = t ? xmlGetProp(t, BAD_CAST "dev") : NULL;
      const char *overlay = NULL;
      size_t i;

      if (dev && (!device || xmlStrEqual(device, BAD_CAST "disk")))
        for (i = 0; targets[i]; i++)
          if (KB_STREQ(targets[i], (const char *) dev))
            overlay = overlays[i];
      xmlFree(device);
      xmlFree(dev);
      if (!overlay) {
        /* Not in the backup (cdrom, an excluded disk): not in the VM. */
        xmlUnlinkNode(n);
        xmlFreeNode(n);
        continue;
      }
      xmlSetProp(n, BAD_CAST "type", BAD_CAST "file");
      xmlSetProp(n, BAD_CAST "device", BAD_CAST "disk");
      remove_children(n, "source");
      remove_children(n, "backingStore");
      remove_children(n, "driver");
      remove_children(n, "mirror");
      remove_children(n, "readonly");
      remove_children(n, "shareable");
      remove_children(n, "auth");
      remove_children(n, "encryption");
      remove_children(n, "seclabel");
      g = xmlNewChild(n, NULL, BAD_CAST "driver", NULL);
      xmlSetProp(g, BAD_CAST "name", BAD_CAST "qemu");
      xmlSetProp(g, BAD_CAST "type", BAD_CAST "qcow2");
      l = xmlNewChild(n, NULL, BAD_CAST "source", NULL);
      xmlSetProp(l, BAD_CAST "file", BAD_CAST overlay);
      ndisks++;
    }
  }
  if (ndisks == 0) {
    xmlFreeDoc(doc);
    *ret_error = strdup("no disk of the saved domain XML is in the backup");
    return -EINVAL;
  }
  /* The guest agent (its socket path chosen by libvirt), VNC on loopback. */
  n = xmlNewChild(devs, NULL, BAD_CAST "channel", NULL);
  xmlSetProp(n, BAD_CAST "type", BAD_CAST "unix");
  l = xmlNewChild(n, NULL, BAD_CAST "target", NULL);
  xmlSetProp(l, BAD_CAST "type", BAD_CAST "virtio");
  xmlSetProp(l, BAD_CAST "name", BAD_CAST "org.qemu.guest_agent.0");
  g = xmlNewChild(devs, NULL, BAD_CAST "graphics", NULL);
  xmlSetProp(g, BAD_CAST "type", BAD_CAST "vnc");
  xmlSetProp(g, BAD_CAST "port", BAD_CAST "-1");
  xmlSetProp(g, BAD_CAST "autoport", BAD_CAST "yes");
  xmlSetProp(g, BAD_CAST "listen", BAD_CAST "127.0.0.1");
  l = xmlNewChild(g, NULL, BAD_CAST "listen", NULL);
  xmlSetProp(l, BAD_CAST "type", BAD_CAST "address");
  xmlSetProp(l, BAD_CAST "address", BAD_CAST "127.0.0.1");
  if (!have_video) {
    n = xmlNewChild(devs, NULL, BAD_CAST "video", NULL);
    l = xmlNewChild(n, NULL, BAD_CAST "model", NULL);
    xmlSetProp(l, BAD_CAST "type", BAD_CAST "vga");
  }

  *ret_vcpus = 1;
  if ((n = child(root, "vcpu"))) {
    xmlChar *t = xmlNodeGetContent(n);
    if (t && atoi((const char *) t) > 0)
      *ret_vcpus = (unsigned) atoi((const char *) t);
    xmlFree(t);
  }
  *ret_mem_kib = 0;
  if ((n = child(root, "currentMemory")) || (n = child(root, "memory")))
    *ret_mem_kib = to_kib(n);

  xmlDocDumpMemory(doc, &out, &outlen);
  xmlFreeDoc(doc);
  if (!out)
    goto nomem_nodoc;
  *ret_xml = strdup((const char *) out);
  xmlFree(out);
  if (!*ret_xml)
    goto nomem_nodoc;
  return 0;
nomem:
  xmlFreeDoc(doc);
nomem_nodoc:
  *ret_error = strdup("out of memory");
  return -ENOMEM;
}

/* Folders qemu must reach: 0710 with qemu's group (see kboss-backup). */
static int open_to_qemu(const char *dir)
{
  gid_t gid = kb_qemu_gid();
  struct stat st;

  if (lstat(dir, &st) < 0)
    return -errno;
  if (!S_ISDIR(st.st_mode))
    return -ENOTDIR;
  if (gid == (gid_t) -1)
    return 0;
  if (st.st_gid != gid && lchown(dir, (uid_t) -1, gid) < 0)
    return -errno;
  if ((st.st_mode & 07777) != 0710 && (st.st_mode & 07777) != 0711 &&
      (st.st_mode & 07777) != 0755 && chmod(dir, 0710) < 0)
    return -errno;
  return 0;
}

int vl_vm_prepare(struct vl_ctx *c, const struct kb_backup_ref *ref, struct vl_vm *vm, char **ret_error)
{
  const char *scratch = kb_config_str(c->cfg, NULL, "scratch.path");
  CLEANUP_FREE char *xmlpath = NULL, *saved = NULL, *data = NULL, *chaindir = NULL, *desc = NULL;
  char **disks = NULL;
  size_t i, n;
  int r;

  memset(vm, 0, sizeof *vm);
  vm->name = kb_printf(VL_DOMAIN_PREFIX "%s", ref->id);
  vm->scratch = kb_printf("%s/%s", scratch, vm->name);
  xmlpath = kb_catalog_backup_domain_path(c->cat, ref->vm_uuid, ref->chain, ref->id);
  data = kb_backup_data_dir(c->cat, ref);
  if (!vm->name || !vm->scratch || !xmlpath || !data) {
    *ret_error = kb_printf("backup %s: bad names or paths in its record", ref->id);
    return -EINVAL;
  }
  chaindir = strdup(data);
  if (!chaindir)
    return -ENOMEM;
  *strrchr(chaindir, '/') = '\0';
  r = kb_meta_read_file(xmlpath, &saved, NULL);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot read its saved domain XML: %s", ref->id, strerror(-r));
    return r;
  }
  r = kb_backup_disks(ref->doc, &disks);
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot list its disks", ref->id);
    return r;
  }
  for (n = 0; disks[n]; n++)
    ;
  vm->targets = disks;
  vm->overlays = calloc(n + 1, sizeof *vm->overlays);
  vm->files = calloc(n + 1, sizeof *vm->files);
  vm->chains = calloc(n + 1, sizeof *vm->chains);
  if (!vm->overlays || !vm->files || !vm->chains)
    return -ENOMEM;

  /* scratch.path 0700 (then opened to qemu's group), the VM's folder inside. */
  r = kb_mkdir_p(scratch, 0700);
  if (r == 0)
    r = open_to_qemu(scratch);
  if (r == 0 && mkdir(vm->scratch, 0700) < 0 && errno != EEXIST)
    r = -errno;
  if (r == 0)
    r = open_to_qemu(vm->scratch);
  if (r < 0) {
    *ret_error = kb_printf("cannot make the overlay folder %s: %s", vm->scratch, strerror(-r));
    return r;
  }
  for (i = 0; i < n; i++) {
    const char *argv[] = { QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b", NULL, NULL, NULL, NULL };
    CLEANUP_FREE char *out = NULL, *size = NULL;
    int fd;

    vm->files[i] = kb_backup_disk_path(c->cat, ref, disks[i]);
    vm->overlays[i] = kb_printf("%s/%s.qcow2", vm->scratch, disks[i]);
    if (!vm->files[i] || !vm->overlays[i]) {
      *ret_error = kb_printf("backup %s: no valid file for disk %s", ref->id, disks[i]);
      return -EINVAL;
    }
    /* Our own reader walks the chain; qemu (through the domain XML's
     * <backingStore> elements) and libguestfs get only what passed. */
    r = kb_chain_validate(chaindir, vm->files[i], &vm->chains[i], ret_error);
    if (r < 0) {
      char *why = *ret_error;
      *ret_error = kb_printf("backup %s: disk %s: refusing its backing chain: %s", ref->id, disks[i],
                             why ? why : strerror(-r));
      free(why);
      return r;
    }
    size = kb_printf("%llu", (unsigned long long) vm->chains[i]->virtual_size);
    if (!size)
      return -ENOMEM;
    /* Created 0600 first so it is never readable by others. */
    fd = open(vm->overlays[i], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      *ret_error = kb_printf("cannot create %s: %m", vm->overlays[i]);
      return -errno;
    }
    close(fd);
    argv[9] = vm->files[i];
    argv[10] = vm->overlays[i];
    argv[11] = size;        /* -u: qemu-img does not open the chain */
    r = kb_run(argv, &out);
    if (r != 0) {
      *ret_error = kb_printf("qemu-img create %s failed: %s", vm->overlays[i], out ? out : "");
      return -EIO;
    }
    (void) chmod(vm->overlays[i], 0600);
  }
  desc = kb_printf("kboss validation VM of backup %s (catalog %s)", ref->id, kb_catalog_root(c->cat));
  if (!desc)
    return -ENOMEM;
  return vl_domain_xml(saved, vm->name, desc, vm->targets, vm->overlays, vm->scratch, &vm->xml,
                       &vm->vcpus, &vm->mem_kib, ret_error);
}

int vl_vm_start(struct vl_ctx *c, struct vl_vm *vm, char **ret_error)
{
  /* AUTODESTROY: if this process dies, libvirt destroys the VM when our
   * connection closes; the next run removes the overlays. */
  vm->dom = virDomainCreateXML(c->conn, vm->xml, VIR_DOMAIN_START_AUTODESTROY);
  if (!vm->dom) {
    *ret_error = kb_printf("cannot start the validation VM %s: %s", vm->name, kb_virt_error());
    return -EIO;
  }
  vm->started_ms = kb_mono_ms();
  return 0;
}

void vl_vm_teardown(struct vl_vm *vm)
{
  if (vm->dom) {
    (void) virDomainDestroy(vm->dom);
    virDomainFree(vm->dom);
    vm->dom = NULL;
  }
  if (vm->scratch)
    (void) kb_rm_rf(vm->scratch);
  free(vm->name);
  free(vm->scratch);
  kb_strv_free(vm->overlays);
  kb_strv_free(vm->files);
  for (size_t i = 0; vm->chains && vm->chains[i]; i++)
    kb_chain_free(vm->chains[i]);
  free(vm->chains);
  kb_strv_free(vm->targets);
  free(vm->xml);
  memset(vm, 0, sizeof *vm);
}

/* Is a validation of BACKUP under way (its backup lock held by a live
 * holder)? Validation VMs are only run under that lock. */
static bool backup_busy(struct vl_ctx *c, const char *backup)
{
  return kb_catalog_lock_probe(c->cat, KB_LOCK_BACKUP, backup, NULL) != 0;
}

void vl_cleanup_leftovers(struct vl_ctx *c)
{
  const char *scratch = kb_config_str(c->cfg, NULL, "scratch.path");
  CLEANUP_FREE char *mark = kb_printf("(catalog %s)", kb_catalog_root(c->cat));
  virDomainPtr *doms = NULL;
  DIR *d;
  int n, i;

  n = virConnectListAllDomains(c->conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
  for (i = 0; i < n; i++) {
    const char *name = virDomainGetName(doms[i]);
    char *desc;
    if (name && strncmp(name, VL_DOMAIN_PREFIX, strlen(VL_DOMAIN_PREFIX)) == 0 &&
        (desc = virDomainGetMetadata(doms[i], VIR_DOMAIN_METADATA_DESCRIPTION, NULL, 0))) {
      /* Only VMs of this catalog, and only when nobody validates them. */
      if (mark && strstr(desc, mark) && !backup_busy(c, name + strlen(VL_DOMAIN_PREFIX))) {
        kb_info("destroying %s, left by a killed validation", name);
        (void) virDomainDestroy(doms[i]);
      }
      free(desc);
    }
    virDomainFree(doms[i]);
  }
  free(doms);

  d = opendir(scratch);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (strncmp(e->d_name, VL_DOMAIN_PREFIX, strlen(VL_DOMAIN_PREFIX)) != 0)
        continue;
      const char *id = e->d_name + strlen(VL_DOMAIN_PREFIX);
      CLEANUP_FREE char *vmu = NULL, *chain = NULL;
      /* Folders of backups of this catalog nobody works on. */
      if (!kb_name_ok(id) || kb_catalog_find_backup(c->cat, id, &vmu, &chain) < 0 || backup_busy(c, id))
        continue;
      CLEANUP_FREE char *p = kb_printf("%s/%s", scratch, e->d_name);
      if (p) {
        kb_info("removing %s, left by a killed validation", p);
        (void) kb_rm_rf(p);
      }
    }
    closedir(d);
  }
}

char *vl_resource_check(struct vl_ctx *c, const struct kb_backup_ref *ref, const struct vl_vm *vm)
{
  const char *vm_name = kb_doc_get(ref->doc, "backup", "vm_name");
  const char *account = kb_doc_get(ref->doc, "backup", "account");
  long long max_vcpus, max_mem;
  unsigned long long used_vcpus = 0, used_kib = 0;
  virDomainPtr *doms = NULL;
  int n, i;

  if (!kb_config_bool(c->cfg, vm_name, "enforce.resource.limit.on.backup.validation.vm") || !account)
    return NULL;
  max_vcpus = kb_config_int(c->cfg, vm_name, "account.max.vcpus");
  max_mem = kb_config_int(c->cfg, vm_name, "account.max.memory");
  if (max_vcpus < 0 && max_mem < 0)
    return NULL;
  /* What the account's running VMs (and its validation VMs) use on this host. */
  n = virConnectListAllDomains(c->conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
  for (i = 0; i < n; i++) {
    const char *name = virDomainGetName(doms[i]);
    const char *acc = NULL;
    struct kb_backup_ref other = { 0 };
    virDomainInfo info;

    if (name && strncmp(name, VL_DOMAIN_PREFIX, strlen(VL_DOMAIN_PREFIX)) == 0) {
      if (kb_backup_find(c->cat, name + strlen(VL_DOMAIN_PREFIX), &other) == 0)
        acc = kb_doc_get(other.doc, "backup", "account");
    } else if (name)
      acc = kb_config_vm_account(c->cfg, name);
    if (acc && KB_STREQ(acc, account) && virDomainGetInfo(doms[i], &info) == 0) {
      used_vcpus += info.nrVirtCpu;
      used_kib += info.memory;
    }
    kb_backup_ref_clear(&other);
    virDomainFree(doms[i]);
  }
  free(doms);
  if (max_vcpus >= 0 && used_vcpus + vm->vcpus > (unsigned long long) max_vcpus)
    return kb_printf("account %s: the validation VM needs %u vCPU(s), the account uses %llu of "
                     "account.max.vcpus %lld", account, vm->vcpus, used_vcpus, max_vcpus);
  if (max_mem >= 0 && (used_kib + vm->mem_kib) / 1024 > (unsigned long long) max_mem)
    return kb_printf("account %s: the validation VM needs %llu MiB, the account uses %llu of "
                     "account.max.memory %lld MiB", account, vm->mem_kib / 1024, used_kib / 1024, max_mem);
  return NULL;
}
