/* kbossctl init-store: mark a folder as a secondary store on purpose, for
 * a store that is not a mount point of its own (a local test bed, the
 * demo, a store inside a bigger filesystem). Without the mark, kboss
 * refuses a secondary path that is not a mount point (lib/store.h). */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "store.h"
#include "util.h"

static void init_store_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s init-store PATH\n"
          "\n"
          "Mark the existing folder PATH as a kboss secondary store by writing the\n"
          "file PATH/%s. kboss uses a secondary path (secondary.path, a\n"
          "[store:NAME] path) only when it is a mount point or carries this mark,\n"
          "so that an NFS export that failed to mount never becomes a catalog on\n"
          "the host's own disk. Mark a folder only when it is meant to hold the\n"
          "backups itself; a mounted export needs no mark.\n"
          "\n"
          "  --config FILE  accepted for symmetry; not read\n", kb_progname, KB_STORE_MARKER);
}

int ctl_init_store(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  const char *path;
  int c, r, mounted = 0;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: init_store_usage(stdout); return 0;
    default: init_store_usage(stderr); return 2;
    }
  }
  if (argc - optind != 1) {
    init_store_usage(stderr);
    return 2;
  }
  path = argv[optind];
  if (path[0] != '/') {
    kb_err("init-store: %s: give an absolute path", path);
    return 2;
  }
  r = kb_store_init(path, &mounted);
  if (r < 0) {
    kb_err("init-store: %s: %s", path,
           r == -EEXIST ? KB_STORE_MARKER " exists but is not a regular file" : strerror(-r));
    return 1;
  }
  printf("%s is marked as a kboss secondary store%s\n", path,
         mounted ? " (it is a mount point as well)" : "");
  return 0;
}
