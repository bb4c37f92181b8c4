/* kbossctl screenshot: fetch the screenshot a validation took of a backup
 * (the spec's downloadValidationScreenshot). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "ctl.h"
#include "log.h"
#include "record.h"
#include "util.h"

static void screenshot_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s screenshot BACKUP DEST\n"
          "\n"
          "Write the PNG screenshot taken by the last validation of BACKUP to DEST\n"
          "(created 0600; an existing DEST is replaced, a symlink is refused).\n"
          "\n"
          "  --config FILE  configuration file\n", kb_progname);
}

int ctl_screenshot(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct kb_config *cfg;
  struct kb_catalog *cat = NULL;
  struct kb_backup_ref ref = { 0 };
  CLEANUP_FREE char *path = NULL, *png = NULL;
  size_t len = 0;
  int c, r, fd, status = 1;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: screenshot_usage(stdout); return 0;
    default: screenshot_usage(stderr); return 2;
    }
  }
  if (argc - optind != 2) {
    kb_err("screenshot: expected BACKUP and DEST; see --help");
    return 2;
  }
  if (!kb_name_ok(argv[optind])) {
    kb_err("screenshot: %s: not a backup id", argv[optind]);
    return 2;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 2;
  cat = ctl_open_catalog(cfg);
  if (!cat || ctl_find_backup(cat, argv[optind], "screenshot", &ref) < 0)
    goto out;
  path = kb_catalog_screenshot_path(cat, ref.vm_uuid, ref.chain, ref.id);
  if (!path) {
    kb_err("screenshot: backup %s: bad catalog path", ref.id);
    goto out;
  }
  r = kb_meta_read_file(path, &png, &len);
  if (r < 0) {
    kb_err("screenshot: backup %s: %s", ref.id,
           r == -ENOENT ? "no screenshot (not validated with the screenshot step yet)" : strerror(-r));
    goto out;
  }
  fd = open(argv[optind + 1], O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    kb_err("screenshot: %s: %m", argv[optind + 1]);
    goto out;
  }
  (void) fchmod(fd, 0600);
  r = kb_write_all(fd, png, len);
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r < 0) {
    kb_err("screenshot: %s: %s", argv[optind + 1], strerror(-r));
    goto out;
  }
  status = 0;
out:
  kb_backup_ref_clear(&ref);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return status;
}
