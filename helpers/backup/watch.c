/* kboss-backup under the export watchdog (lib/watchdog.h): what the
 * supervisor undoes after it killed a worker that hung on secondary
 * storage. It uses libvirt only, never the export: the guest is thawed if
 * the worker froze it; a VM started paused for the backup is stopped again
 * (which ends its job); the backup job of a running VM is aborted, and the
 * job's new checkpoint deleted, by a detached process as soon as the
 * export answers again (an abort while qemu's writes hang on the export
 * blocks qemu's monitor, and with it the guest agent). The catalog still
 * says BackingUp; the next run normalizes it. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backup.h"
#include "log.h"
#include "util.h"
#include "watchdog.h"

static char *watch_uri;

static void add(char **text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(char **text, const char *fmt, ...)
{
  CLEANUP_FREE char *part = NULL;
  va_list ap;
  char *n;

  va_start(ap, fmt);
  if (vasprintf(&part, fmt, ap) < 0)
    part = NULL;
  va_end(ap);
  if (!part)
    return;
  n = kb_printf("%s%s%s", *text ? *text : "", *text ? ", " : "", part);
  if (n) {
    free(*text);
    *text = n;
  }
}

/* Detached (double fork, new session): wait until the export answers,
 * then abort the VM's backup job and remove checkpoint CP. */
static int finish_later(const char *uuid, const char *cp)
{
  pid_t pid = fork();
  int status;

  if (pid < 0)
    return -errno;
  if (pid == 0) {
    virConnectPtr conn = NULL;
    virDomainPtr dom = NULL;
    int fd;

    if (setsid() < 0 || (pid = fork()) < 0)
      _exit(1);
    if (pid > 0)
      _exit(0);
    fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      (void) dup2(fd, 0);
      (void) dup2(fd, 1);
    }
    alarm(0);
    kb_watchdog_wait_export();
    if (kb_virt_connect(watch_uri, &conn) == 0 && kb_virt_lookup(conn, uuid, &dom) == 0) {
      struct bk_vm v;
      virDomainJobInfo info;

      memset(&v, 0, sizeof v);
      v.conn = conn;
      v.dom = dom;
      v.name = (char *) virDomainGetName(dom);
      (void) virDomainAbortJob(dom);
      for (int k = 0; k < 600; k++) {
        if (virDomainGetJobInfo(dom, &info) < 0 || info.type == VIR_DOMAIN_JOB_NONE)
          break;
        usleep(100 * 1000);
      }
      if (cp && kb_name_ok(cp))
        (void) bk_checkpoint_delete(&v, cp);
      virDomainFree(dom);
    }
    if (conn)
      virConnectClose(conn);
    _exit(0);
  }
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -ECHILD;
}

static char *bk_recover(void)
{
  const char *uuid = kb_watchdog_get("vm");
  const char *cp = kb_watchdog_get("checkpoint");
  virConnectPtr conn = NULL;
  struct bk_vm v;
  char *did = NULL;

  if (!uuid)
    return strdup("no VM had been touched");
  memset(&v, 0, sizeof v);
  if (kb_virt_connect(watch_uri, &conn) < 0 || kb_virt_lookup(conn, uuid, &v.dom) < 0) {
    add(&did, "VM %s could not be reached in libvirt to check it", uuid);
    goto out;
  }
  v.conn = conn;
  v.name = (char *) virDomainGetName(v.dom);
  if (kb_watchdog_get("frozen")) {
    /* Only a freeze this backup made, and before anything that may wait. */
    (void) virDomainAgentSetResponseTimeout(v.dom, 10, 0);
    if (virDomainFSThaw(v.dom, NULL, 0, 0) < 0)
      add(&did, "its filesystems could NOT be thawed (%s)", kb_virt_error());
    else
      add(&did, "%s", "its filesystems were thawed");
  }
  if (kb_watchdog_get("started-paused") && virDomainIsActive(v.dom) == 1) {
    /* Stopping the paused VM ends its job too; qemu dies even with
     * requests stuck on the export. */
    if (virDomainDestroy(v.dom) < 0)
      add(&did, "the VM, started paused for the backup, could not be stopped (%s)", kb_virt_error());
    else
      add(&did, "%s", "the VM, started paused for the backup, was stopped again");
  } else if (kb_watchdog_get("job")) {
    /* Aborting now would make qemu wait for the writes stuck on the export
     * while it holds its monitor, and libvirt the guest agent: the job
     * keeps waiting instead, and is aborted (its checkpoint removed) as
     * soon as the export answers again. */
    if (finish_later(uuid, cp) == 0) {
      add(&did, "%s", "its backup job is aborted and its checkpoint removed as soon as the export answers again");
      cp = NULL;
    } else
      add(&did, "%s", "its backup job could not be handed over: abort it with virsh domjobabort");
  }
  if (cp && kb_name_ok(cp)) {
    if (bk_checkpoint_delete(&v, cp) < 0)
      add(&did, "its checkpoint %s could not be removed (the next backup removes it)", cp);
    else
      add(&did, "its checkpoint %s was removed", cp);
  }
  if (!did)
    add(&did, "VM %s was not changed", v.name);
  add(&did, "%s", "the next backup cleans up the catalog");
out:
  if (v.dom)
    virDomainFree(v.dom);
  if (conn)
    virConnectClose(conn);
  return did;
}

int bk_watch_start(const struct kb_config *cfg)
{
  const char *uri = kb_config_str(cfg, NULL, "libvirt.uri");

  watch_uri = uri ? strdup(uri) : NULL;
  return kb_watchdog_start(cfg, bk_recover);
}
