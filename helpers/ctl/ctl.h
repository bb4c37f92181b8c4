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

/* The subcommands. */
int ctl_settings(int argc, char **argv);
int ctl_offerings(int argc, char **argv);
int ctl_screenshot(int argc, char **argv);
int ctl_jobs(int argc, char **argv);
int ctl_init_store(int argc, char **argv);
int ctl_backups(int argc, char **argv);
int ctl_assign(int argc, char **argv);
int ctl_finish_chain(int argc, char **argv);
int ctl_delete(int argc, char **argv);
int ctl_extract(int argc, char **argv);
int ctl_schedule(int argc, char **argv);
/* The calendars (OnCalendar=) of VM's schedules (its unnamed one and its
 * named ones) in UNITDIR, NULL-terminated (kb_strv_free). */
int ctl_schedule_calendars(const char *unitdir, const char *vm, char ***ret);
int ctl_status(int argc, char **argv);
int ctl_prune(int argc, char **argv);

struct kb_catalog;
/* merge.c: merge forward for prune (see the top of merge.c). Merge the
 * backups MERGED (ids, oldest first, NULL-terminated) of CHAIN into
 * TARGET, which depends on them: TARGET becomes a full with the same guest
 * bytes. The caller holds the VM lock and the backup locks of TARGET and
 * MERGED, and removes MERGED afterwards. 0, or -errno with *RET_ERROR. */
int ctl_merge_forward(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                      const char *target, const char *const *merged, char **ret_error);
/* Under the VM lock: finish every merge a killed prune left pending on the
 * VM's backups and remove temporary files of merges never recorded.
 * *RET_FINISHED counts the merges finished. 0, or 1 when one could not be. */
int ctl_merge_recover(const struct kb_catalog *cat, const char *vm_uuid, unsigned *ret_finished);
/* A compression, validation or hash job runs on backup ID (its job lock
 * has a live holder). */
bool ctl_job_running(const struct kb_catalog *cat, const char *id);
/* Test hook: KBOSS_TEST_PRUNE_KILL=POINT makes prune SIGKILL itself there. */
void ctl_prune_point(const char *point);

/* offerings-edit.c: offerings create / delete (exit status). */
int ctl_offerings_create(const char *name, int nkv, char **kv);
int ctl_offerings_delete(const char *name);

/* vmref.c: helpers on the catalog. */
struct kb_catalog;
struct kb_doc;
struct kb_lock;
struct kb_backup_ref;
/* Open the configured catalog; prints the error and returns NULL. */
struct kb_catalog *ctl_open_catalog(const struct kb_config *cfg);
/* The UUID of VM (a name as last recorded, or a UUID) in the catalog;
 * -ENOENT when the catalog does not know it. */
int ctl_find_vm(const struct kb_catalog *cat, const char *vm, char **ret_uuid);
/* Find backup ID in the catalog; on failure prints "VERB: backup ID: why"
 * and returns the negative errno (-ENOENT: not in the catalog). */
int ctl_find_backup(const struct kb_catalog *cat, const char *id, const char *verb, struct kb_backup_ref *ref);
/* Take the VM lock (waits up to 10 s); prints why it failed. */
int ctl_lock_vm(const struct kb_catalog *cat, const char *uuid, const char *vm, const char *purpose,
                struct kb_lock **ret);

#endif
