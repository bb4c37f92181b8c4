/* kbossctl: the operator's view and control of kboss. main.c parses the
 * global options and dispatches to one function per subcommand; each
 * subcommand lives in its own file and parses its own options. */
#ifndef KBOSS_CTL_H
#define KBOSS_CTL_H

#include <stdbool.h>
#include <stdio.h>

#include "kbconfig.h"

/* A subcommand: NAME, the function that runs it (ARGV[0] is NAME; returns
 * the exit status: 0 fine, 1 failed, 2 bad usage) and a one-line help. */
struct ctl_command {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *help;
};

/* --config FILE given before or after the subcommand (NULL: default). */
extern const char *ctl_config_path;

/* Options every subcommand accepts (getopt_long values): */
#define CTL_OPT_CONFIG 0x1000
#define CTL_OPT_HELP 'h'
#define CTL_COMMON_LONG_OPTIONS \
  { "config", required_argument, NULL, CTL_OPT_CONFIG }, \
  { "help", no_argument, NULL, CTL_OPT_HELP }

/* Load the configuration; on errors print each one and return NULL. */
struct kb_config *ctl_load_config(void);

/* Print S as a JSON string (quoted, escaped); NULL prints null. */
void ctl_json_str(FILE *f, const char *s);

/* The subcommands. */
int ctl_settings(int argc, char **argv);
int ctl_offerings(int argc, char **argv);
int ctl_screenshot(int argc, char **argv);
int ctl_jobs(int argc, char **argv);

#endif
