/* The validation VM: a transient domain built by kboss (lib/domxml.c) with
 * a few checked values of the domain XML saved with the backup, its disks
 * throwaway qcow2 overlays backed by the backup's validated chain, spelled
 * out in the XML, with no network, no host devices and VNC on loopback. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "domxml.h"
#include "lock.h"
#include "log.h"
#include "util.h"
#include "validate.h"
#include "virt.h"

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
  CLEANUP_FREE char *nvram = NULL;
  CLEANUP_FREE struct kb_domxml_disk *disk_opts = NULL;
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
  nvram = kb_printf("%s/nvram.fd", vm->scratch);
  disk_opts = calloc(n + 1, sizeof *disk_opts);
  if (!desc || !nvram || !disk_opts)
    return -ENOMEM;
  for (i = 0; i < n; i++) {
    disk_opts[i].target = disks[i];
    disk_opts[i].file = vm->overlays[i];
    disk_opts[i].format = "qcow2";
    disk_opts[i].chain = vm->chains[i]->files;   /* qemu opens exactly these */
  }
  {
    struct kb_domxml_opts o = {
      .name = vm->name, .description = desc, .disks = disk_opts, .ndisks = n,
      .network = false, .destroy_on_reboot = false, .nvram = nvram,
    };
    struct kb_domxml_info info;
    char **notices = NULL, *why = NULL;

    r = kb_domxml_build(saved, &o, &vm->xml, &info, &notices, &why);
    if (r < 0) {
      *ret_error = kb_printf("backup %s: %s", ref->id, why ? why : strerror(-r));
      free(why);
      return r;
    }
    for (i = 0; notices[i]; i++)
      kb_info("backup %s: %s", ref->id, notices[i]);
    kb_strv_free(notices);
    vm->vcpus = info.vcpus;
    vm->mem_kib = info.mem_kib;
  }
  return 0;
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
