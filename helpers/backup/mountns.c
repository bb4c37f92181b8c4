/* Why qemu cannot open a backup target that kboss has just created: libvirt
 * runs each qemu in a mount namespace of its own (qemu.conf "namespaces",
 * on by default), copied from the host's when the VM started. A store
 * mounted later reaches that namespace only through shared mount
 * propagation; without it qemu looks at the folder under the mount point
 * and finds nothing there. In push mode qemu opens the target itself. */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

#define CMDLINE_MAX (256 * 1024)

/* Is /proc/PID a qemu process (by its executable's name) whose command line
 * holds the arguments "-uuid UUID"? BUF has CMDLINE_MAX bytes. */
static bool is_qemu_of(const char *pid, const char *uuid, char *buf)
{
  char path[64], exe[PATH_MAX];
  const char *base;
  CLEANUP_CLOSE int fd = -1;
  size_t len = 0, i;
  ssize_t n;

  snprintf(path, sizeof path, "/proc/%s/exe", pid);
  n = readlink(path, exe, sizeof exe - 1);
  if (n < 0)
    return false;
  exe[n] = '\0';
  base = strrchr(exe, '/');
  base = base ? base + 1 : exe;
  if (strncmp(base, "qemu-system-", 12) != 0 && strncmp(base, "qemu-kvm", 8) != 0)
    return false;
  snprintf(path, sizeof path, "/proc/%s/cmdline", pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  while (len < CMDLINE_MAX - 1 && (n = read(fd, buf + len, CMDLINE_MAX - 1 - len)) > 0)
    len += (size_t) n;
  buf[len] = '\0';
  for (i = 0; i < len; i += strlen(buf + i) + 1)
    if (KB_STREQ(buf + i, "-uuid") && i + 6 < len && KB_STREQ(buf + i + 6, uuid))
      return true;
  return false;
}

/* The pid of the qemu process running the domain with UUID, or -1. libvirt
 * has no API for it; every qemu it starts carries "-uuid UUID". */
static long find_qemu_pid(const char *uuid)
{
  CLEANUP_FREE char *buf = malloc(CMDLINE_MAX);
  DIR *d;
  struct dirent *e;
  long found = -1;

  if (!buf || !(d = opendir("/proc")))
    return -1;
  while ((e = readdir(d))) {
    if (!isdigit((unsigned char) e->d_name[0]))
      continue;
    if (is_qemu_of(e->d_name, uuid, buf)) {
      found = strtol(e->d_name, NULL, 10);
      break;
    }
  }
  closedir(d);
  return found;
}

static bool same_mount_ns(long pid)
{
  char a[64], b[64], path[64];
  ssize_t n1, n2;

  snprintf(path, sizeof path, "/proc/%ld/ns/mnt", pid);
  n1 = readlink("/proc/self/ns/mnt", a, sizeof a - 1);
  n2 = readlink(path, b, sizeof b - 1);
  if (n1 < 0 || n2 < 0)
    return true;   /* cannot tell: say nothing */
  a[n1] = b[n2] = '\0';
  return KB_STREQ(a, b);
}

char *bk_explain_unseen_target(struct bk_vm *v, const char *path, const char *store_name,
                               const char *store_path)
{
  CLEANUP_FREE char *theirs = NULL;
  struct stat ours, seen;
  bool missing;
  long pid;

  if (!path || path[0] != '/' || stat(path, &ours) < 0)
    return NULL;
  pid = find_qemu_pid(v->uuid);
  if (pid < 0 || same_mount_ns(pid))
    return NULL;
  theirs = kb_printf("/proc/%ld/root%s", pid, path);
  if (!theirs)
    return NULL;
  if (stat(theirs, &seen) == 0) {
    if (seen.st_dev == ours.st_dev && seen.st_ino == ours.st_ino)
      return NULL;
    missing = false;
  } else if (errno == ENOENT || errno == ENOTDIR)
    missing = true;
  else
    return NULL;
  return kb_printf("VM %s: qemu cannot open the backup target %s, which kboss has just created on store '%s' "
                   "(%s): the VM's qemu (pid %ld) runs in a mount namespace of its own (libvirt's qemu.conf "
                   "'namespaces'), and there that path %s. The store was most likely mounted after the VM "
                   "started, under a mount point whose propagation is not shared, so the mount never "
                   "reached qemu. Mount the store before VMs start, below a mount point with shared "
                   "propagation (findmnt -o TARGET,PROPAGATION; mount --make-rshared), or stop and start "
                   "the VM (a reboot inside the guest keeps the same qemu); then back up again",
                   v->name, path, store_name, store_path, pid,
                   missing ? "does not exist" : "is another file");
}
