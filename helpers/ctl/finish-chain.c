/* kbossctl finish-chain: end a VM's current chain; its next backup is
 * full. Works on the catalog alone (the VM need not exist on this host). */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "record.h"
#include "util.h"

static void finish_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s finish-chain VM\n"
          "\n"
          "End VM's current backup chain (the finishBackupChain API): the next backup\n"
          "of VM is full and starts a new chain. VM is a name or UUID in the catalog.\n"
          "\n"
          "  --config FILE  configuration file\n", kb_progname);
}

int ctl_finish_chain(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  CLEANUP_FREE char *uuid = NULL;
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  struct kb_lock *lock = NULL;
  struct kb_doc *rec = NULL;
  const char *vm;
  int c, r, rc = 1;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: finish_usage(stdout); return 0;
    default: finish_usage(stderr); return 2;
    }
  }
  if (argc - optind != 1) {
    finish_usage(stderr);
    return 2;
  }
  vm = argv[optind];
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  cat = ctl_open_catalog(cfg);
  if (!cat)
    goto out;
  r = ctl_find_vm(cat, vm, &uuid);
  if (r < 0) {
    kb_err("finish-chain: VM %s: %s", vm, r == -ENOENT ? "not in the catalog (never backed up)" : strerror(-r));
    goto out;
  }
  if (ctl_lock_vm(cat, uuid, vm, "finish-chain", &lock) < 0)
    goto out;
  r = kb_vm_load(cat, uuid, &rec);
  if (r < 0) {
    kb_err("finish-chain: VM %s: cannot read its record: %s", vm, strerror(-r));
    goto out;
  }
  if (!kb_doc_get(rec, "vm", "current_chain")) {
    kb_print_escaped("VM %s has no open chain; its next backup is full\n", vm);
    rc = 0;
    goto out;
  }
  r = kb_chain_end(cat, uuid, rec, "finished by the operator");
  if (r < 0) {
    kb_err("finish-chain: VM %s: cannot end its chain: %s", vm, strerror(-r));
    goto out;
  }
  kb_print_escaped("VM %s: chain ended; the next backup is full\n", vm);
  rc = 0;
out:
  kb_doc_free(rec);
  kb_lock_release(lock);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
