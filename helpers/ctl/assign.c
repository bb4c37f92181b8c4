/* kbossctl assign: give a VM a backup offering (vms.d/VM.conf). */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "util.h"

static void assign_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s assign VM OFFERING\n"
          "       %s assign VM --none\n"
          "\n"
          "Assign the backup offering OFFERING (which must exist in offerings.d) to\n"
          "VM, writing offering = OFFERING into vms.d/VM.conf; --none removes the\n"
          "assignment (the VM's backups stay).\n"
          "\n"
          "  --config FILE  configuration file\n", kb_progname, kb_progname);
}

int ctl_assign(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "none", no_argument, NULL, 'n' },
    { NULL, 0, NULL, 0 },
  };
  CLEANUP_FREE char *err = NULL;
  struct kb_config *cfg;
  bool none = false;
  const char *vm, *off;
  int c, r;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: assign_usage(stdout); return 0;
    case 'n': none = true; break;
    default: assign_usage(stderr); return 2;
    }
  }
  if (argc - optind != (none ? 1 : 2)) {
    assign_usage(stderr);
    return 2;
  }
  vm = argv[optind];
  off = none ? NULL : argv[optind + 1];
  if (!kb_name_ok(vm)) {
    kb_err("assign: \"%s\" is not a VM name", vm);
    return 2;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  if (off && !kb_config_offering(cfg, off)) {
    kb_err("assign: no offering \"%s\" (see %s offerings)", off, kb_progname);
    kb_config_free(cfg);
    return 1;
  }
  r = kb_config_vm_set(cfg, vm, "offering", off, false, &err);
  if (r < 0)
    kb_err("assign: %s", err ? err : strerror(-r));
  else if (off)
    printf("VM %s: offering %s\n", vm, off);
  else
    printf("VM %s: no offering\n", vm);
  kb_config_free(cfg);
  return r < 0 ? 1 : 0;
}
