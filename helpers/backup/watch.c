/* kboss-backup under the export watchdog (lib/watchdog.h): what the
 * supervisor undoes after it killed a worker that hung on secondary
 * storage. It uses libvirt only, never the export: the guest is thawed if
 * the worker froze it, the backup job is aborted, the job's new checkpoint
 * deleted, and a VM started paused for the backup stopped again. The
 * catalog still says BackingUp; the next run normalizes it. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
  if (kb_watchdog_get("job")) {
    virDomainJobInfo info;
    int k;
    (void) virDomainAbortJob(v.dom);
    for (k = 0; k < 150; k++) {
      if (virDomainGetJobInfo(v.dom, &info) < 0 || info.type == VIR_DOMAIN_JOB_NONE)
        break;
      usleep(100 * 1000);
    }
    add(&did, "%s", k < 150 ? "the backup job was aborted" : "the backup job was told to abort but still runs");
  }
  if (cp && kb_name_ok(cp)) {
    if (bk_checkpoint_delete(&v, cp) < 0)
      add(&did, "its checkpoint %s could not be removed (the next backup removes it)", cp);
    else
      add(&did, "its checkpoint %s was removed", cp);
  }
  if (kb_watchdog_get("started-paused") && virDomainIsActive(v.dom) == 1) {
    if (virDomainDestroy(v.dom) < 0)
      add(&did, "the VM, started paused for the backup, could not be stopped (%s)", kb_virt_error());
    else
      add(&did, "%s", "the VM, started paused for the backup, was stopped again");
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
