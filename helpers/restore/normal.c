/* A normal restore: each disk flattened from the backup's chain into a new
 * file beside the VM's disk, moved over it only when complete. */
#include <config.h>

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jsonout.h"
#include "log.h"
#include "restore.h"
#include "util.h"
#include "watchdog.h"

/* qemu-img convert, its progress shown on a terminal; cancellable.  The
 * source is the validated chain spelled node by node (lib/chain.h), so
 * qemu-img never follows a backing name from the export; the new file is
 * created 0600 (umask in the child) and takes the old disk's owner and
 * mode only when complete. */
static int convert(const struct rs_disk *d, char **ret_error)
{
  CLEANUP_FREE char *source = kb_chain_qemu_json(d->chain, NULL);
  const char *argv[24];
  int n = 0, status;
  pid_t pid, parent;
  bool tty = isatty(STDERR_FILENO) && kb_verbosity >= 1;

  argv[n++] = QEMU_IMG;
  argv[n++] = "convert";
  if (tty)
    argv[n++] = "-p";
  argv[n++] = "-W";        /* out-of-order writes: the target is new */
  argv[n++] = "-m";
  argv[n++] = "8";
  argv[n++] = "-O";
  argv[n++] = d->format;
  if (KB_STREQ(d->format, "qcow2")) {
    argv[n++] = "-o";
    argv[n++] = "cluster_size=65536";
  }
  if (!source)
    return -ENOMEM;
  argv[n++] = source;
  argv[n++] = d->tmp;
  argv[n] = NULL;
  parent = getpid();
  pid = fork();
  if (pid < 0)
    return -errno;
  if (pid == 0) {
    int nul = open("/dev/null", O_RDWR);
    /* A restore killed with -9 takes its copy with it: no orphan keeps
     * writing a temporary file next to the VM's disk. */
    (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127);
    dup2(nul, 0);
    if (!tty)
      dup2(nul, 1);
    umask(077);
    execv(argv[0], (char *const *) argv);
    _exit(127);
  }
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      return -errno;
    if (rs_cancel)
      (void) kill(pid, SIGTERM);
  }
  if (rs_cancel) {
    *ret_error = kb_printf("disk %s: restore interrupted", d->target);
    return -EINTR;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    *ret_error = kb_printf("disk %s: qemu-img convert of %s failed", d->target, d->backup_file);
    return -EIO;
  }
  return 0;
}

/* qemu-img convert exits with its output in the page cache (its cache
 * mode for the output is "unsafe": it never flushes).  Each restored disk
 * is on storage (fsync: data, owner and mode) before the first swap: a
 * crash after the swap must find the backup's data, not a file whose
 * blocks were never written. */
static int sync_disk(const struct rs_disk *d, char **ret_error)
{
  int r = kb_fsync_path(d->tmp);

  if (r < 0)
    *ret_error = kb_printf("disk %s: cannot write the restored disk %s to storage: %s", d->target, d->tmp,
                           strerror(-r));
  return r;
}

/* The old disk's name while its blocks are freed: renaming the new disk
 * over a large old one would free them inside rename() (2 s for 700 MB
 * here), so the old inode is kept by a second link and released after the
 * restore, by a detached child. */
static char *old_name(const char *dest)
{
  return kb_printf("%s.kboss-restore.old", dest);
}

static void release_old_disks(char **olds, size_t n)
{
  pid_t pid = fork();

  if (pid == 0) {
    if (fork() == 0) {
      /* Holds nothing of the run: no lock, catalog or libvirt descriptor. */
      for (int fd = 3; fd < 4096; fd++)
        (void) close(fd);
      (void) setsid();
      for (size_t i = 0; i < n; i++)
        if (olds[i])
          (void) unlink(olds[i]);
      _exit(0);
    }
    _exit(0);
  }
  if (pid > 0)
    (void) waitpid(pid, NULL, 0);
  else
    for (size_t i = 0; i < n; i++)
      if (olds[i])
        (void) unlink(olds[i]);
}

int rs_restore(struct rs_ctx *c, const struct rs_opts *o, char **ret_error)
{
  char **olds = NULL;
  struct rs_disk *d = NULL;
  size_t n = 0, i;
  int64_t t0 = kb_mono_ms();
  int r;

  r = rs_plan_disks(c, o, &d, &n, ret_error);
  if (r < 0)
    return r;
  r = rs_set_state(c, KB_VM_RESTORING, NULL);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot update its record: %s", c->vm_name, strerror(-r));
    goto out;
  }
  /* Every disk is written completely before the first is swapped in. */
  for (i = 0; i < n; i++) {
    d[i].tmp = kb_printf("%s.kboss-restore.tmp", d[i].dest);
    if (d[i].tmp) {
      CLEANUP_FREE char *key = kb_printf("tmp.%s", d[i].target);
      if (key)
        kb_watchdog_note(key, d[i].tmp);
    }
    if (!d[i].tmp) {
      r = -ENOMEM;
      goto fail;
    }
    (void) unlink(d[i].tmp);   /* left by a killed restore */
    {
      CLEANUP_FREE char *old = old_name(d[i].dest);
      if (old)
        (void) unlink(old);      /* likewise */
    }
    kb_info("restoring disk %s of VM %s from backup %s", d[i].target, c->vm_name, c->ref.id);
    r = convert(&d[i], ret_error);
    if (r < 0)
      goto fail;
    r = rs_take_owner(&d[i], ret_error);
    if (r == 0)
      r = sync_disk(&d[i], ret_error);
    if (r < 0)
      goto fail;
  }
  olds = calloc(n + 1, sizeof *olds);
  for (i = 0; i < n; i++) {
    kb_watchdog_note("swapping", "1");
    /* Swap atomically: the old disk keeps its blocks under the temporary
     * name (a rename over it would free them, and ext4 would flush the
     * new file first); where the file system cannot swap, a second link
     * keeps them. */
    if (olds && renameat2(AT_FDCWD, d[i].tmp, AT_FDCWD, d[i].dest, RENAME_EXCHANGE) == 0) {
      /* The old disk leaves the temporary name at once (a rename to a
       * free name frees nothing). */
      olds[i] = old_name(d[i].dest);
      if (!olds[i] || rename(d[i].tmp, olds[i]) < 0) {
        free(olds[i]);
        olds[i] = d[i].tmp;
      } else
        free(d[i].tmp);
      d[i].tmp = NULL;
      continue;
    }
    if (olds) {
      olds[i] = old_name(d[i].dest);
      if (olds[i] && link(d[i].dest, olds[i]) < 0) {
        free(olds[i]);             /* no second link: rename frees it */
        olds[i] = NULL;
      }
    }
    if (rename(d[i].tmp, d[i].dest) < 0) {
      r = -errno;
      *ret_error = kb_printf("disk %s: cannot move the restored disk into place at %s: %s", d[i].target,
                             d[i].dest, strerror(errno));
      goto fail;
    }
    free(d[i].tmp);
    d[i].tmp = NULL;
  }
  /* The swaps themselves are durable once each disk's folder is. */
  for (i = 0; i < n; i++)
    (void) kb_fsync_parent(d[i].dest);
  kb_watchdog_note("swapping", NULL);
  kb_watchdog_note("swapped", c->vm_name);
  r = rs_end_chain(c, "VM restored");
  if (r == 0)
    r = kb_doc_set(c->rec, "vm", "last_restore", c->ref.id);
  if (r == 0)
    r = rs_set_state(c, KB_VM_READY, NULL);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: disks restored, but its record could not be updated: %s", c->vm_name,
                           strerror(-r));
    goto out;
  }
  if (o->json) {
    json_object *j = json_object_new_object(), *disks = json_object_new_array();
    json_object_object_add(j, "vm", json_object_new_string(c->vm_name));
    json_object_object_add(j, "backup", json_object_new_string(c->ref.id));
    for (i = 0; i < n; i++) {
      json_object *dj = json_object_new_object();
      json_object_object_add(dj, "disk", json_object_new_string(d[i].target));
      json_object_object_add(dj, "path", json_object_new_string(d[i].dest));
      json_object_array_add(disks, dj);
    }
    json_object_object_add(j, "disks", disks);
    json_object_object_add(j, "seconds", json_object_new_double((kb_mono_ms() - t0) / 1000.0));
    kb_json_print(j);
  } else {
    printf("VM %s restored from backup %s (%zu disk%s) in %.1f s; its next backup will be full\n", c->vm_name,
           c->ref.id, n, n == 1 ? "" : "s", (kb_mono_ms() - t0) / 1000.0);
  }
  goto out;
fail:
  (void) rs_set_state(c, KB_VM_READY, *ret_error);
out:
  if (olds) {
    release_old_disks(olds, n);
    for (i = 0; i < n; i++)
      free(olds[i]);
    free(olds);
  }
  rs_disks_free(d, n);
  return r;
}
