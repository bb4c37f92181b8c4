/* kboss-compress: run due compression jobs, or compress one backup now. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "compress.h"
#include "kbconfig.h"
#include "event.h"
#include "log.h"
#include "util.h"
#include "store.h"
#include "watchdog.h"

volatile sig_atomic_t cp_cancel;

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: %s [OPTION]... run\n"
          "       %s [OPTION]... BACKUP\n"
          "Compress backups into qcow2 files with zstd or zlib compressed clusters.\n"
          "\n"
          "  run      run the compression jobs that are due, within the limits of the\n"
          "           backup.compression.* settings (what the timer calls); a job left\n"
          "           Executing by a runner that died counts as a failed attempt\n"
          "  BACKUP   compress this backup now (queues its job if it has none), under\n"
          "           the same limits; ignores the job's schedule and the task switch\n"
          "\n"
          "Each disk file is compressed beside the original under a temporary name\n"
          "(every cluster decompressed again and compared in memory, the file hashed\n"
          "as written, then qemu-img check), and renamed over the original under the\n"
          "backup's lock; a swap cut short by a crash is finished by the next run.\n"
          "\n"
          "  -c, --config FILE    configuration (default $KBOSS_CONF or %s)\n"
          "  -v, --verbose        more messages;  --quiet: errors only\n"
          "  -h, --help           this help;  -V, --version: the version\n"
          "\n"
          "Exit status: 0 success, 1 a job failed, 2 bad usage or configuration,\n"
          "3 (BACKUP) not compressed now: no free slot, in use, or run elsewhere.\n",
          kb_progname, kb_progname, kb_config_default_path());
}

int main(int argc, char **argv)
{
  enum { OPT_QUIET = 256 };
  static const struct option longopts[] = {
    { "config", required_argument, NULL, 'c' },
    { "verbose", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, OPT_QUIET },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *config = NULL;
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  CLEANUP_FREE char *errors = NULL;
  int c, r;

  kb_log_init(argv[0]);
  while ((c = getopt_long(argc, argv, "c:vhV", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': config = optarg; break;
    case 'v': kb_verbosity++; break;
    case OPT_QUIET: kb_verbosity = 0; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("%s %s\n", kb_progname, PACKAGE_VERSION); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s: expected \"run\" or one backup id; see --help\n", kb_progname);
    return 2;
  }
  if (!KB_STREQ(argv[optind], "run") && !kb_name_ok(argv[optind])) {
    fprintf(stderr, "%s: \"%s\" is not a backup id\n", kb_progname, argv[optind]);
    return 2;
  }
  r = kb_config_load(config, &cfg, &errors);
  if (r < 0) {
    fprintf(stderr, "%s: configuration errors:\n%s\n", kb_progname, errors ? errors : strerror(-r));
    return 2;
  }
  kb_event_configure(cfg);
  /* A hung export fails the run within storage.timeout (lib/watchdog.h). */
  r = kb_watchdog_start(cfg, NULL);
  if (r < 0) {
    kb_err("cannot start the export watchdog: %s", strerror(-r));
    kb_config_free(cfg);
    return 1;
  }
  r = kb_catalog_open(cfg, &cat);
  if (r < 0) {
    kb_err("cannot open the catalog under %s: %s", kb_config_str(cfg, NULL, "secondary.path"), kb_store_strerror(r));
    kb_config_free(cfg);
    return 1;
  }
  kb_catch_signals(&cp_cancel);
  /* A file size limit must surface as EFBIG (a failed attempt), not kill us. */
  signal(SIGXFSZ, SIG_IGN);

  if (KB_STREQ(argv[optind], "run"))
    r = cp_run(cfg, cat);
  else
    r = cp_one(cfg, cat, argv[optind]);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return r;
}
