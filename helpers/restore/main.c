/* kboss-restore: restore a VM from a backup, normally or quickly. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "localstate.h"
#include "lock.h"
#include "log.h"
#include "restore.h"
#include "util.h"
#include "store.h"
#include "watchdog.h"

volatile sig_atomic_t rs_cancel;

/* After the export watchdog killed a hung worker (lib/watchdog.h): the
 * partial disks it wrote beside the VM's (primary storage) go, and so does
 * its restoring marker. The VM's own disks were not replaced yet. */
static char *rs_recover(void)
{
  const char *uuid = kb_watchdog_get("restoring");
  const char *tmp;
  size_t n = 0;

  for (size_t i = 0; (tmp = kb_watchdog_get_prefixed("tmp.", i)); i++)
    if (tmp[0] == '/' && unlink(tmp) == 0)
      n++;
  if (uuid && kb_uuid_ok(uuid))
    kb_local_restoring_clear(uuid);
  if (kb_watchdog_get("quick"))
    return kb_printf("VM %s runs on overlays of the backup; kboss-restore --consolidate %s finishes the "
                     "consolidation when the export answers", kb_watchdog_get("quick"), kb_watchdog_get("quick"));
  if (kb_watchdog_get("swapped"))
    return kb_printf("VM %s has its restored disks; its catalog record was not updated (its next backup is "
                     "full anyway: run kbossctl finish-chain %s when the export answers)",
                     kb_watchdog_get("swapped"), kb_watchdog_get("swapped"));
  if (kb_watchdog_get("swapping"))
    return strdup("it stopped while moving restored disks into place: check the VM's disks, then restore again");
  return kb_printf("the VM's disks were not replaced (%zu partial file%s removed); restore again when the "
                   "export answers", n, n == 1 ? "" : "s");
}

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: %s [OPTION]... BACKUP\n"
          "       %s --consolidate VM\n"
          "Restore a VM's disks to exactly the content of BACKUP (a backup id, see\n"
          "kbossctl backups), whatever its depth in its chain, compressed or not.\n"
          "\n"
          "The VM must be stopped. Each disk is written beside the old one and moved\n"
          "over it only when complete; a failed restore leaves the old disks as they\n"
          "were. The VM's chain ends: its next backup is full.\n"
          "\n"
          "  -d, --disk DISK     restore only this disk (vda, ...)\n"
          "  -a, --as NAME       define a new VM NAME from checked values of the backup's\n"
          "                      saved definition (new UUID and MAC addresses, the rest\n"
          "                      dropped with a notice) and restore into it\n"
          "  -Q, --quick         quick restore: the VM starts at once on overlays backed\n"
          "                      by the backup, and its disks are consolidated while it\n"
          "                      runs (the backup's offering must allow quick restore)\n"
          "      --consolidate   finish an interrupted quick-restore consolidation of VM\n"
          "  -b, --bandwidth N   limit consolidation to N MiB/s (default: no limit)\n"
          "      --boot-wait S   start consolidating once the guest agent answers, at\n"
          "                      most S seconds after the start (default 120; 0: at once)\n"
          "      --json          print the result as JSON\n"
          "  -c, --config FILE   configuration (default $KBOSS_CONF or %s)\n"
          "  -v, --verbose       more messages;  --quiet: errors only\n"
          "  -h, --help          this help;  -V, --version: the version\n",
          kb_progname, kb_progname, kb_config_default_path());
}

int main(int argc, char **argv)
{
  enum { OPT_CONSOLIDATE = 256, OPT_JSON, OPT_QUIET, OPT_BOOT_WAIT };
  static const struct option longopts[] = {
    { "disk", required_argument, NULL, 'd' },
    { "as", required_argument, NULL, 'a' },
    { "quick", no_argument, NULL, 'Q' },
    { "consolidate", no_argument, NULL, OPT_CONSOLIDATE },
    { "bandwidth", required_argument, NULL, 'b' },
    { "boot-wait", required_argument, NULL, OPT_BOOT_WAIT },
    { "json", no_argument, NULL, OPT_JSON },
    { "config", required_argument, NULL, 'c' },
    { "verbose", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, OPT_QUIET },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct rs_opts o = { false, false, NULL, NULL, 0, 120 };
  struct rs_ctx c;
  const char *config = NULL;
  bool consolidate = false;
  CLEANUP_FREE char *errors = NULL;
  CLEANUP_FREE char *err = NULL;
  int ch, r;

  kb_log_init(argv[0]);
  memset(&c, 0, sizeof c);
  while ((ch = getopt_long(argc, argv, "d:a:Qb:c:vhV", longopts, NULL)) != -1) {
    switch (ch) {
    case 'd': o.disk = optarg; break;
    case 'a': o.as = optarg; break;
    case 'Q': o.quick = true; break;
    case 'b': {
      long long v;
      if (kb_parse_ll(optarg, &v) < 0 || v < 0) {
        fprintf(stderr, "%s: --bandwidth takes MiB/s, a whole number\n", kb_progname);
        return 2;
      }
      o.bandwidth = (unsigned long) v;
      break;
    }
    case OPT_BOOT_WAIT: {
      long long v;
      if (kb_parse_ll(optarg, &v) < 0 || v < 0 || v > 86400) {
        fprintf(stderr, "%s: --boot-wait takes seconds, 0 to 86400\n", kb_progname);
        return 2;
      }
      o.boot_wait = (int) v;
      break;
    }
    case OPT_CONSOLIDATE: consolidate = true; break;
    case OPT_JSON: o.json = true; break;
    case 'c': config = optarg; break;
    case 'v': kb_verbosity++; break;
    case OPT_QUIET: kb_verbosity = 0; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("%s %s\n", kb_progname, PACKAGE_VERSION); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s: expected exactly one %s; see --help\n", kb_progname, consolidate ? "VM" : "BACKUP");
    return 2;
  }
  if (consolidate && (o.quick || o.disk || o.as)) {
    fprintf(stderr, "%s: --consolidate takes no other restore option\n", kb_progname);
    return 2;
  }
  if (o.disk && !kb_name_ok(o.disk)) {
    fprintf(stderr, "%s: '%s' is not a disk name\n", kb_progname, o.disk);
    return 2;
  }
  r = kb_config_load(config, &c.cfg, &errors);
  if (r < 0) {
    fprintf(stderr, "%s: configuration errors:\n%s\n", kb_progname, errors ? errors : strerror(-r));
    return 2;
  }
  kb_catch_signals(&rs_cancel);
  /* A libvirtd that restarts mid-consolidation must give an error, not
   * kill us silently in a write to its socket (seen as exit 141). */
  signal(SIGPIPE, SIG_IGN);
  r = kb_watchdog_start(c.cfg, rs_recover);
  if (r < 0) {
    kb_err("cannot start the export watchdog: %s", strerror(-r));
    kb_config_free(c.cfg);
    return 1;
  }

  r = kb_catalog_open(c.cfg, &c.cat);
  if (r < 0) {
    err = kb_printf("cannot open the catalog under %s: %s", kb_config_str(c.cfg, NULL, "secondary.path"),
                    kb_store_strerror(r));
    goto out;
  }
  if (consolidate) {
    r = rs_open_vm(&c, argv[optind], "consolidate", &err);
    if (r == 0)
      r = rs_consolidate(&c, &o, &err);
    goto out;
  }
  r = kb_backup_find(c.cat, argv[optind], &c.ref);
  if (r < 0) {
    err = kb_msg_backup_find(argv[optind], r);
    goto out;
  }
  if (!kb_backup_complete(c.ref.doc)) {
    err = kb_msg_backup_incomplete(c.ref.id, c.ref.doc);
    r = -EINVAL;
    goto out;
  }
  if (o.as) {
    r = kb_virt_connect(kb_config_str(c.cfg, NULL, "libvirt.uri"), &c.conn);
    if (r == 0)
      r = rs_define_new_vm(&c, &o, &err);
    if (r < 0) {
      if (!err)
        err = kb_printf("cannot connect to libvirt: %s", kb_virt_error());
      goto out;
    }
    {
      char uuid[VIR_UUID_STRING_BUFLEN];
      virDomainGetUUIDString(c.dom, uuid);
      r = rs_open_vm(&c, uuid, "restore", &err);
    }
  } else
    r = rs_open_vm(&c, c.ref.vm_uuid, "restore", &err);
  if (r < 0)
    goto out;
  if (virDomainIsActive(c.dom) == 1) {
    err = kb_printf("VM %s is running: stop it before restoring", c.vm_name);
    r = -EBUSY;
    goto out;
  }
  {
    const char *st = kb_doc_get(c.rec, "vm", "state");
    if (st && KB_STREQ(st, KB_VM_CONSOLIDATING)) {
      err = kb_printf("VM %s is still consolidating a quick restore: kboss-restore --consolidate %s first",
                      c.vm_name, c.vm_name);
      r = -EBUSY;
      goto out;
    }
  }
  r = o.quick ? rs_quick_restore(&c, &o, &err) : rs_restore(&c, &o, &err);
  if (r < 0 && o.as && c.dom) {
    /* Nothing of a new VM stays behind when its restore failed. */
    (void) virDomainUndefineFlags(c.dom, VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA);
  }
out:
  if (r < 0)
    kb_err("%s", err ? err : strerror(-r));
  if (c.uuid[0])
    kb_local_restoring_end(c.uuid);
  kb_lock_release(c.lock);
  kb_backup_ref_clear(&c.ref);
  kb_doc_free(c.rec);
  kb_catalog_free(c.cat);
  if (c.dom)
    virDomainFree(c.dom);
  if (c.conn)
    virConnectClose(c.conn);
  free(c.vm_name);
  kb_config_free(c.cfg);
  return r < 0 ? 1 : 0;
}
