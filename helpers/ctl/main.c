/* kbossctl: dispatch to a subcommand. To add one, write its function in
 * its own file, declare it in ctl.h and add a line to `commands'. */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "util.h"

const char *ctl_config_path;

static const struct ctl_command commands[] = {
  { "settings", ctl_settings, "show effective settings and where they come from; set VM settings" },
  { "offerings", ctl_offerings, "list, show, create or delete backup offerings" },
  { "backups", ctl_backups, "list the backups in the catalog" },
  { "assign", ctl_assign, "assign a backup offering to a VM" },
  { "finish-chain", ctl_finish_chain, "end a VM's backup chain; its next backup is full" },
  { "delete", ctl_delete, "delete a backup (and the backups depending on it)" },
  { "extract", ctl_extract, "copy a file out of a backup" },
  { "schedule", ctl_schedule, "set, remove or list scheduled backups (systemd timers)" },
  { "screenshot", ctl_screenshot, "write the screenshot of a backup's last validation to a file" },
  { "jobs", ctl_jobs, "list compression, validation and hash jobs (listBackupServiceJobs)" },
  { "prune", ctl_prune, "apply the retention policy: remove the backups no keep_* rule keeps" },
  { "status", ctl_status, "what needs attention: failed or overdue backups, Invalid backups, jobs, space" },
  { "init-store", ctl_init_store, "mark a folder that is not a mount point as a secondary store" },
};

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: %s [--config FILE] COMMAND [ARGS...]\n"
          "       %s COMMAND --help\n"
          "\n"
          "Operator view and control of kboss backups.\n"
          "\n"
          "Commands:\n", kb_progname, kb_progname);
  for (size_t i = 0; i < KB_ARRAY_SIZE(commands); i++)
    fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
  fprintf(f,
          "\n"
          "Options:\n"
          "  --config FILE  configuration (default $KBOSS_CONF or %s)\n"
          "  -v, --verbose  say more\n"
          "  -h, --help     this help\n"
          "  --version      print the version\n", kb_config_default_path());
}

struct kb_config *ctl_load_config(void)
{
  struct kb_config *cfg = NULL;
  CLEANUP_FREE char *errors = NULL;
  int r = kb_config_load(ctl_config_path, &cfg, &errors);

  if (r < 0) {
    if (errors) {
      char *save = NULL;
      for (char *line = strtok_r(errors, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        kb_err("%s", line);
    } else
      kb_err("loading the configuration: %s", strerror(-r));
    return NULL;
  }
  return cfg;
}

int main(int argc, char **argv)
{
  static const struct option long_options[] = {
    { "config", required_argument, NULL, 'c' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  kb_log_init(argv[0]);
  /* "+": stop at the subcommand, whose options are its own. */
  while ((c = getopt_long(argc, argv, "+vh", long_options, NULL)) != -1) {
    switch (c) {
    case 'c':
      ctl_config_path = optarg;
      break;
    case 'v':
      kb_verbosity++;
      break;
    case 'h':
      usage(stdout);
      return 0;
    case 'V':
      printf("%s %s\n", kb_progname, PACKAGE_VERSION);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return 2;
  }
  for (size_t i = 0; i < KB_ARRAY_SIZE(commands); i++) {
    if (strcmp(argv[optind], commands[i].name) == 0) {
      int sub_argc = argc - optind;
      char **sub_argv = argv + optind;
      optind = 0;   /* reinitialise getopt for the subcommand */
      return commands[i].run(sub_argc, sub_argv);
    }
  }
  kb_err("unknown command \"%s\" (see %s --help)", argv[optind], kb_progname);
  return 2;
}
