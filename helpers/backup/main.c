/* kboss-backup: take full, incremental and isolated backups of a VM. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "event.h"
#include "metrics.h"
#include "log.h"
#include "record.h"
#include "retention.h"
#include "util.h"

volatile sig_atomic_t bk_cancel;

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: %s [OPTION]... VM\n"
          "       %s --finish-chain VM\n"
          "       %s --normalize VM\n"
          "       %s --redefine-checkpoints VM\n"
          "Back up every disk of a libvirt VM (running or stopped) to secondary storage.\n"
          "\n"
          "The first backup of a chain is full; the next ones copy only what the VM's\n"
          "qcow2 dirty bitmaps mark, until backup.chain.size (or the offering's\n"
          "backup_chain_size) ends the chain.\n"
          "\n"
          "  -f, --full           start a new chain with a full backup\n"
          "  -i, --isolated       a full backup that belongs to no chain; the current\n"
          "                       chain goes on untouched\n"
          "  -q, --quiesce        freeze the guest's filesystems (guest agent) while the\n"
          "                       backup starts; fails if the agent does not answer\n"
          "                       or another tool has frozen them (kboss thaws only\n"
          "                       a freeze it made)\n"
          "  -b, --bandwidth N    copy at most N MiB/s (default: no limit)\n"
          "      --schedule NAME  record that schedule NAME takes this backup (the\n"
          "                       units of kbossctl schedule pass it); 1-32 of\n"
          "                       A-Z a-z 0-9 _ -\n"
          "      --keep-last N, --keep-hourly N, --keep-daily N, --keep-weekly N,\n"
          "      --keep-monthly N, --keep-yearly N\n"
          "                       with --schedule: that schedule's own retention,\n"
          "                       recorded with the backup; kbossctl prune ranks the\n"
          "                       schedule's backups by the values of its newest one\n"
          "      --finish-chain   end the VM's current chain: the next backup is full\n"
          "      --normalize      repair a VM in BackupError (leftovers of failed runs,\n"
          "                       a freeze a killed kboss run left)\n"
          "      --redefine-checkpoints  give libvirt back the VM's last checkpoint from\n"
          "                       the catalog if it forgot it (run by the qemu hook)\n"
          "      --json           print the backup's record as JSON\n"
          "  -c, --config FILE    configuration (default $KBOSS_CONF or %s)\n"
          "  -v, --verbose        more messages;  --quiet: errors only\n"
          "  -h, --help           this help;  -V, --version: the version\n"
          "\n"
          "Exit status: 0 success, 1 failure, 2 bad usage or configuration.\n",
          kb_progname, kb_progname, kb_progname, kb_progname, kb_config_default_path());
}

int main(int argc, char **argv)
{
  enum { OPT_FINISH = 256, OPT_NORMALIZE, OPT_JSON, OPT_QUIET, OPT_REDEFINE, OPT_SCHEDULE, OPT_KEEP };
  static const struct option longopts[] = {
    { "full", no_argument, NULL, 'f' },
    { "isolated", no_argument, NULL, 'i' },
    { "quiesce", no_argument, NULL, 'q' },
    { "bandwidth", required_argument, NULL, 'b' },
    { "finish-chain", no_argument, NULL, OPT_FINISH },
    { "normalize", no_argument, NULL, OPT_NORMALIZE },
    { "redefine-checkpoints", no_argument, NULL, OPT_REDEFINE },
    { "schedule", required_argument, NULL, OPT_SCHEDULE },
    KB_RETENTION_LONG_OPTIONS(OPT_KEEP),
    { "json", no_argument, NULL, OPT_JSON },
    { "config", required_argument, NULL, 'c' },
    { "verbose", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, OPT_QUIET },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  struct bk_opts opts = { 0 };
  bool any_keep = false;
  const char *config = NULL;
  bool finish = false, normalize = false, redefine = false;
  struct kb_config *cfg = NULL;
  CLEANUP_FREE char *errors = NULL;
  CLEANUP_FREE char *err = NULL;
  struct bk_vm v = { 0 };
  int c, r;

  kb_log_init(argv[0]);
  while ((c = getopt_long(argc, argv, "fiqb:c:vhV", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': opts.full = true; break;
    case 'i': opts.isolated = true; break;
    case 'q': opts.quiesce = true; break;
    case 'b': {
      long long bw;
      if (kb_parse_ll(optarg, &bw) < 0 || bw <= 0 || bw > 1024 * 1024) {
        fprintf(stderr, "%s: --bandwidth takes MiB/s, a whole number from 1\n", kb_progname);
        return 2;
      }
      opts.bandwidth = (unsigned long) bw;
      break;
    }
    case OPT_FINISH: finish = true; break;
    case OPT_NORMALIZE: normalize = true; break;
    case OPT_REDEFINE: redefine = true; break;
    case OPT_JSON: opts.json = true; break;
    case OPT_SCHEDULE:
      if (!kb_schedule_name_ok(optarg)) {
        fprintf(stderr, "%s: --schedule: \"%s\" is not a schedule name (1-%d of A-Z a-z 0-9 _ -)\n", kb_progname,
                optarg, KB_SCHEDULE_NAME_MAX);
        return 2;
      }
      opts.schedule = optarg;
      break;
    case OPT_KEEP: case OPT_KEEP + 1: case OPT_KEEP + 2: case OPT_KEEP + 3: case OPT_KEEP + 4: case OPT_KEEP + 5:
      if (kb_retention_parse_count(optarg, &opts.keep[c - OPT_KEEP]) < 0) {
        fprintf(stderr, "%s: --keep-%s takes a whole number from 0 to %d\n", kb_progname,
                kb_retention_field_names[c - OPT_KEEP], KB_RETENTION_MAX);
        return 2;
      }
      any_keep = true;
      break;
    case 'c': config = optarg; break;
    case 'v': kb_verbosity++; break;
    case OPT_QUIET: kb_verbosity = 0; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("%s %s\n", kb_progname, PACKAGE_VERSION); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s: expected exactly one VM (name or UUID); see --help\n", kb_progname);
    return 2;
  }
  if (any_keep && !opts.schedule) {
    fprintf(stderr, "%s: --keep-* options belong to a schedule: give --schedule NAME too\n", kb_progname);
    return 2;
  }
  if ((finish || normalize || redefine) &&
      (opts.full || opts.isolated || opts.quiesce || opts.schedule || finish + normalize + redefine > 1)) {
    fprintf(stderr, "%s: --finish-chain, --normalize and --redefine-checkpoints take no other backup option\n",
            kb_progname);
    return 2;
  }
  if (opts.full && opts.isolated)
    opts.full = false;  /* an isolated backup is a full one anyway */

  r = kb_config_load(config, &cfg, &errors);
  if (r < 0) {
    fprintf(stderr, "%s: configuration errors:\n%s\n", kb_progname, errors ? errors : strerror(-r));
    return 2;
  }
  kb_event_configure(cfg);
  kb_catch_signals(&bk_cancel);
  r = bk_watch_start(cfg);
  if (r < 0) {
    kb_err("cannot start the export watchdog: %s", strerror(-r));
    kb_config_free(cfg);
    return 1;
  }

  r = bk_vm_open(cfg, argv[optind],
                 finish ? "finish-chain" : normalize ? "normalize" : redefine ? "redefine-checkpoints" : "backup",
                 !(finish || normalize || redefine), &v, &err);
  if (r < 0) {
    if (!(finish || normalize || redefine)) {
      CLEANUP_FREE char *msg = kb_printf("VM %s: backup failed: %s", argv[optind], err ? err : strerror(-r));
      struct kb_event ev = { KB_EV_BACKUP_FAILED, v.uuid[0] ? v.uuid : NULL, argv[optind], NULL, NULL, msg };
      kb_event(&ev);
    } else
      kb_err("%s", err);
    kb_config_free(cfg);
    return 1;
  }
  if (finish) {
    r = bk_finish_chain(&v, "finished by the operator", &err);
    if (r == 0)
      printf("VM %s: chain ended; the next backup is full\n", v.name);
  } else if (redefine) {
    r = bk_redefine_checkpoints(&v, &err);
  } else if (normalize) {
    r = bk_normalize(&v, false, &err);
    if (r == 0)
      printf("VM %s is Ready\n", v.name);
  } else {
    const char *state = kb_doc_get(v.rec, "vm", "state");
    if (state && (KB_STREQ(state, KB_VM_RESTORING) || KB_STREQ(state, KB_VM_CONSOLIDATING))) {
      err = kb_printf("VM %s is %s: no backup until that finishes", v.name, state);
      r = -EBUSY;
    } else {
      /* Whatever a killed or failed run left is cleaned first; the lock
       * we hold says no other run is under way. */
      if (state && !KB_STREQ(state, KB_VM_READY)) {
        kb_info("VM %s is %s: normalizing it first", v.name, state);
        r = bk_normalize(&v, true, &err);
        if (r < 0)
          goto out;
      } else
        (void) bk_normalize(&v, true, &err);
      free(err);
      err = NULL;
      r = bk_run(&v, &opts, &err);
    }
  }
out:
  if (!(finish || normalize || redefine)) {
    /* The job's result: an event (journal fields, notify.command on
     * failure), vm.ini's failure record, the metrics file. */
    const char *state = v.rec ? kb_doc_get(v.rec, "vm", "state") : NULL;
    CLEANUP_FREE char *msg = r < 0 ? kb_printf("VM %s: backup failed: %s", v.name, err ? err : strerror(-r))
                                   : kb_printf("VM %s: backup %s done", v.name,
                                               v.rec && kb_doc_get(v.rec, "vm", "last_backup")
                                                 ? kb_doc_get(v.rec, "vm", "last_backup") : "");
    struct kb_event ev = { r < 0 ? KB_EV_BACKUP_FAILED : KB_EV_BACKUP_DONE, v.uuid, v.name,
                           r < 0 ? NULL : v.rec ? kb_doc_get(v.rec, "vm", "last_backup") : NULL, NULL, msg };
    if (r < 0 && v.rec)
      (void) kb_vm_note_failure(v.cat, v.uuid, v.rec);
    kb_event(&ev);
    if (state && KB_STREQ(state, KB_VM_BACKUP_ERROR)) {
      CLEANUP_FREE char *m2 = kb_printf("VM %s is in BackupError: %s", v.name,
                                        kb_doc_get(v.rec, "vm", "last_error") ? kb_doc_get(v.rec, "vm", "last_error") : "");
      struct kb_event ev2 = { KB_EV_VM_BACKUP_ERROR, v.uuid, v.name, NULL, NULL, m2 };
      kb_event(&ev2);
    }
    if (v.cat) {
      int m = kb_metrics_write(cfg, v.cat);
      if (m < 0)
        kb_warn("cannot write metrics.path %s: %s", kb_config_str(cfg, NULL, "metrics.path"), strerror(-m));
    }
  } else if (r < 0)
    kb_err("%s", err ? err : strerror(-r));
  bk_vm_close(&v);
  kb_config_free(cfg);
  return r < 0 ? 1 : 0;
}
