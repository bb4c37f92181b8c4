/* kboss-validate: validate backups by booting them, and re-check their hashes. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "log.h"
#include "util.h"
#include "validate.h"
#include "virt.h"
#include "store.h"
#include "watchdog.h"

volatile sig_atomic_t vl_cancel;

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: %s [OPTION]... run [--now]\n"
          "       %s [OPTION]... BACKUP\n"
          "       %s [OPTION]... --check-hash BACKUP\n"
          "Validate backups in a throwaway VM and re-check their hashes.\n"
          "\n"
          "  run                  run the due validation and hash jobs (the timer's job)\n"
          "      --now            with run: treat every scheduled job as due\n"
          "  BACKUP               validate that backup now\n"
          "      --check-hash     re-check the hashes of BACKUP now\n"
          "  -c, --config FILE    configuration (default $KBOSS_CONF or %s)\n"
          "  -v, --verbose        more messages;  --quiet: errors only\n"
          "  -h, --help           this help;  -V, --version: the version\n"
          "\n"
          "Exit status: 0 success, 1 a validation or check failed, 2 bad usage or\n"
          "configuration, 3 not possible now (limits, backup in use).\n",
          kb_progname, kb_progname, kb_progname, kb_config_default_path());
}

int main(int argc, char **argv)
{
  enum { OPT_NOW = 256, OPT_QUIET, OPT_HASH };
  static const struct option longopts[] = {
    { "now", no_argument, NULL, OPT_NOW },
    { "check-hash", no_argument, NULL, OPT_HASH },
    { "config", required_argument, NULL, 'c' },
    { "verbose", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, OPT_QUIET },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct vl_ctx c = { 0 };
  const char *config = NULL;
  CLEANUP_FREE char *errors = NULL;
  CLEANUP_FREE char *err = NULL;
  bool check_hash = false;
  int ch, r, status;

  kb_log_init(argv[0]);
  while ((ch = getopt_long(argc, argv, "c:vhV", longopts, NULL)) != -1) {
    switch (ch) {
    case OPT_NOW: c.now = true; break;
    case OPT_HASH: check_hash = true; break;
    case 'c': config = optarg; break;
    case 'v': kb_verbosity++; break;
    case OPT_QUIET: kb_verbosity = 0; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("%s %s\n", kb_progname, PACKAGE_VERSION); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s: expected \"run\" or one BACKUP id; see --help\n", kb_progname);
    return 2;
  }
  if (KB_STREQ(argv[optind], "run") ? check_hash : c.now) {
    fprintf(stderr, "%s: --now goes with run, --check-hash with a BACKUP\n", kb_progname);
    return 2;
  }
  if (!KB_STREQ(argv[optind], "run") && !kb_name_ok(argv[optind])) {
    fprintf(stderr, "%s: %s: not a backup id\n", kb_progname, argv[optind]);
    return 2;
  }
  r = kb_config_load(config, &c.cfg, &errors);
  if (r < 0) {
    fprintf(stderr, "%s: configuration errors:\n%s\n", kb_progname, errors ? errors : strerror(-r));
    return 2;
  }
  kb_catch_signals(&vl_cancel);
  /* A libvirtd that goes away must give an error, not kill us silently
   * in the middle of a write to its socket. */
  signal(SIGPIPE, SIG_IGN);
  /* A hung export fails the run within storage.timeout (lib/watchdog.h);
   * the validation VM is started with AUTODESTROY, so libvirt removes it
   * when the killed worker's connection closes. */
  kb_event_configure(c.cfg);
  r = kb_watchdog_start(c.cfg, NULL);
  if (r < 0) {
    kb_err("cannot start the export watchdog: %s", strerror(-r));
    kb_config_free(c.cfg);
    return 1;
  }

  r = kb_catalog_open(c.cfg, &c.cat);
  if (r < 0) {
    kb_err("cannot open the catalog under %s: %s", kb_config_str(c.cfg, NULL, "secondary.path"), kb_store_strerror(r));
    kb_config_free(c.cfg);
    return 1;
  }
  if (!check_hash) {
    r = kb_virt_connect(kb_config_str(c.cfg, NULL, "libvirt.uri"), &c.conn);
    if (r < 0) {
      kb_err("cannot connect to libvirt: %s", kb_virt_error());
      kb_catalog_free(c.cat);
      kb_config_free(c.cfg);
      return 1;
    }
  }

  if (KB_STREQ(argv[optind], "run"))
    status = vl_run_jobs(&c);
  else {
    if (check_hash)
      r = vl_hash_check(&c, argv[optind], &err);
    else {
      vl_cleanup_leftovers(&c);
      r = vl_validate_backup(&c, argv[optind], false, &err);
    }
    if (r == 0) {
      printf("backup %s: %s\n", argv[optind], check_hash ? "hashes match" : "validation passed");
      status = 0;
    } else {
      kb_err("%s", err ? err : strerror(-r));
      status = r == 1 ? 1 : r == -EAGAIN ? 3 : 1;
    }
  }
  if (c.conn)
    virConnectClose(c.conn);
  kb_catalog_free(c.cat);
  kb_config_free(c.cfg);
  return status;
}
