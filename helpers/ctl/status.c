/* kbossctl status: one screen for an operator: VMs without a recent
 * successful backup, VMs in BackupError, Invalid backups, failed or stuck
 * jobs, store space. --json the same as JSON; --metrics the Prometheus text
 * (also written to metrics.path). */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "ctl.h"
#include "jsonout.h"
#include "log.h"
#include "metrics.h"
#include "record.h"
#include "util.h"

static void status_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s status [--json | --metrics] [--unit-dir DIR]\n"
          "\n"
          "What needs an operator's attention: VMs with a schedule but no successful\n"
          "backup within 1.25 times its period (of several schedules, the most\n"
          "frequent), VMs in BackupError, Invalid backups,\n"
          "failed jobs and Executing jobs without a live runner (stuck), and the free\n"
          "space of each store. Exits 0 when nothing needs attention, 1 otherwise.\n"
          "\n"
          "  --json          print JSON\n"
          "  --metrics       print the Prometheus metrics and write metrics.path\n"
          "  --unit-dir DIR  where schedules are (default $KBOSS_UNIT_DIR or\n"
          "                  %s/systemd/system)\n"
          "  --config FILE   configuration file\n", kb_progname, SYSCONFDIR);
}

/* Seconds between two runs of a systemd calendar expression, for the
 * common shorthands; other expressions count as daily. */
static long long calendar_period(const char *cal)
{
  static const struct {
    const char *name;
    long long secs;
  } table[] = {
    { "minutely", 60 }, { "hourly", 3600 }, { "daily", 86400 }, { "weekly", 7 * 86400 },
    { "monthly", 31 * 86400 }, { "quarterly", 92 * 86400 }, { "semiannually", 183 * 86400 },
    { "yearly", 366 * 86400 }, { "annually", 366 * 86400 },
  };
  for (size_t i = 0; i < KB_ARRAY_SIZE(table); i++)
    if (strcasecmp(cal, table[i].name) == 0)
      return table[i].secs;
  return 86400;
}

/* The calendar of VM's most frequent schedule, or NULL. */
static char *schedule_of(const char *unitdir, const char *vm)
{
  char **cals = NULL, *best = NULL;

  if (!kb_name_ok(vm) || ctl_schedule_calendars(unitdir, vm, &cals) < 0)
    return NULL;
  for (size_t i = 0; cals[i]; i++)
    if (!best || calendar_period(cals[i]) < calendar_period(best))
      best = cals[i];
  best = best ? strdup(best) : NULL;
  kb_strv_free(cals);
  return best;
}

struct overdue {
  char *calendar;
  long long period;
  bool late;
};

int ctl_status(int argc, char **argv)
{
  enum { O_JSON = 1, O_METRICS, O_UNITDIR };
  static const struct option longopts[] = {
    { "json", no_argument, NULL, O_JSON },
    { "metrics", no_argument, NULL, O_METRICS },
    { "unit-dir", required_argument, NULL, O_UNITDIR },
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  const char *unitdir = getenv("KBOSS_UNIT_DIR");
  bool json = false, metrics = false;
  struct kb_config *cfg;
  struct kb_catalog *cat;
  struct kb_health h;
  struct overdue *od = NULL;
  unsigned attention = 0;
  int64_t now = kb_now();
  int c, r;

  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case O_JSON: json = true; break;
    case O_METRICS: metrics = true; break;
    case O_UNITDIR: unitdir = optarg; break;
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: status_usage(stdout); return 0;
    default: status_usage(stderr); return 2;
    }
  }
  if (optind != argc || (json && metrics)) {
    status_usage(stderr);
    return 2;
  }
  if (!unitdir || !*unitdir)
    unitdir = SYSCONFDIR "/systemd/system";
  if (!(cfg = ctl_load_config()))
    return 1;
  if (!(cat = ctl_open_catalog(cfg))) {
    kb_config_free(cfg);
    return 1;
  }
  r = kb_health_load(cfg, cat, &h);
  if (r < 0) {
    kb_err("status: cannot read the catalog: %s", strerror(-r));
    kb_catalog_free(cat);
    kb_config_free(cfg);
    return 1;
  }
  if (metrics) {
    CLEANUP_FREE char *text = kb_metrics_text(&h);
    const char *path = kb_config_str(cfg, NULL, "metrics.path");
    r = 0;
    if (text)
      fputs(text, stdout);
    if (text && path && *path && !KB_STREQ(path, "none") && (r = kb_write_file_atomic(path, text, strlen(text), 0644)) < 0)
      kb_err("status: cannot write %s: %s", path, strerror(-r));
    kb_health_clear(&h);
    kb_catalog_free(cat);
    kb_config_free(cfg);
    return text && r == 0 ? 0 : 1;
  }

  od = calloc(h.nvms ? h.nvms : 1, sizeof *od);
  for (size_t i = 0; od && i < h.nvms; i++) {
    const struct kb_vm_health *v = &h.vms[i];
    od[i].calendar = v->name ? schedule_of(unitdir, v->name) : NULL;
    if (!od[i].calendar)
      od[i].calendar = schedule_of(unitdir, v->uuid);
    if (od[i].calendar) {
      od[i].period = calendar_period(od[i].calendar);
      od[i].late = now - v->last_success > od[i].period + od[i].period / 4;
    }
    attention += od[i].late + (v->state && KB_STREQ(v->state, KB_VM_BACKUP_ERROR)) + v->invalid;
  }
  attention += h.jobs_failed + h.jobs_stuck;

  if (json) {
    json_object *o = json_object_new_object(), *a;
    a = json_object_new_array();
    for (size_t i = 0; i < h.nvms; i++) {
      const struct kb_vm_health *v = &h.vms[i];
      json_object *x = json_object_new_object(), *inv = json_object_new_array();
      json_object_object_add(x, "uuid", kb_json_str(v->uuid));
      json_object_object_add(x, "name", kb_json_str(v->name));
      json_object_object_add(x, "state", kb_json_str(v->state));
      json_object_object_add(x, "last_error", kb_json_str(v->last_error));
      json_object_object_add(x, "last_success", json_object_new_int64(v->last_success));
      json_object_object_add(x, "last_failure", json_object_new_int64(v->last_failure));
      json_object_object_add(x, "failures", json_object_new_int64(v->failures));
      json_object_object_add(x, "backups", json_object_new_int64(v->kept));
      json_object_object_add(x, "schedule", kb_json_str(od ? od[i].calendar : NULL));
      json_object_object_add(x, "overdue", json_object_new_boolean(od && od[i].late));
      for (size_t k = 0; v->invalid_ids && v->invalid_ids[k]; k++)
        json_object_array_add(inv, kb_json_str(v->invalid_ids[k]));
      json_object_object_add(x, "invalid_backups", inv);
      json_object_array_add(a, x);
    }
    json_object_object_add(o, "vms", a);
    a = json_object_new_array();
    for (size_t i = 0; i < h.njobs; i++) {
      const struct kb_job_health *j = &h.jobs[i];
      json_object *x = json_object_new_object();
      json_object_object_add(x, "id", kb_json_str(j->id));
      json_object_object_add(x, "type", kb_json_str(j->type));
      json_object_object_add(x, "state", kb_json_str(j->state));
      json_object_object_add(x, "stuck", json_object_new_boolean(j->stuck));
      json_object_object_add(x, "backup", kb_json_str(j->backup));
      json_object_object_add(x, "host", kb_json_str(j->host));
      json_object_object_add(x, "last_error", kb_json_str(j->last_error));
      json_object_array_add(a, x);
    }
    json_object_object_add(o, "jobs", a);
    a = json_object_new_array();
    for (size_t i = 0; i < h.nstores; i++) {
      json_object *x = json_object_new_object();
      json_object_object_add(x, "name", kb_json_str(h.stores[i].name));
      json_object_object_add(x, "path", kb_json_str(h.stores[i].path));
      json_object_object_add(x, "free_bytes", json_object_new_int64(h.stores[i].free_bytes));
      json_object_object_add(x, "size_bytes", json_object_new_int64(h.stores[i].size_bytes));
      json_object_array_add(a, x);
    }
    json_object_object_add(o, "stores", a);
    json_object_object_add(o, "attention", json_object_new_int64(attention));
    kb_json_print(o);
  } else {
    char when[32], fb[32], sb[32];
    for (size_t i = 0; i < h.nvms; i++) {
      const struct kb_vm_health *v = &h.vms[i];
      const char *name = v->name ? v->name : v->uuid;
      if (v->state && KB_STREQ(v->state, KB_VM_BACKUP_ERROR))
        kb_print_escaped("VM %s: BackupError: %s\n", name, v->last_error ? v->last_error : "");
      if (od && od[i].late) {
        if (v->last_success) {
          kb_format_time(v->last_success, when, sizeof when);
          kb_print_escaped("VM %s: no successful backup since %s (schedule %s)\n", name, when, od[i].calendar);
        } else
          kb_print_escaped("VM %s: never backed up successfully (schedule %s)\n", name, od[i].calendar);
      }
      if (v->last_failure > v->last_success) {
        kb_format_time(v->last_failure, when, sizeof when);
        kb_print_escaped("VM %s: last backup failed at %s (%lld failures)\n", name, when, v->failures);
        attention++;
      }
      for (size_t k = 0; v->invalid_ids && v->invalid_ids[k]; k++)
        kb_print_escaped("VM %s: backup %s is Invalid\n", name, v->invalid_ids[k]);
    }
    for (size_t i = 0; i < h.njobs; i++) {
      const struct kb_job_health *j = &h.jobs[i];
      if (j->stuck)
        kb_print_escaped("job %s: Executing on %s but its runner is gone (stuck)\n", j->id, j->host ? j->host : "?");
      else if (KB_STREQ(j->state, KB_JOB_FAILED))
        kb_print_escaped("job %s: Failed: %s\n", j->id, j->last_error ? j->last_error : "");
    }
    for (size_t i = 0; i < h.nstores; i++) {
      kb_format_size(h.stores[i].free_bytes < 0 ? 0 : (uint64_t) h.stores[i].free_bytes, fb, sizeof fb);
      kb_format_size(h.stores[i].size_bytes < 0 ? 0 : (uint64_t) h.stores[i].size_bytes, sb, sizeof sb);
      if (h.stores[i].free_bytes < 0)
        kb_print_escaped("store %s (%s): cannot read its free space\n", h.stores[i].name, h.stores[i].path);
      else
        kb_print_escaped("store %s (%s): %s free of %s\n", h.stores[i].name, h.stores[i].path, fb, sb);
    }
    printf("%zu VM(s), %u job(s) running, %u failed, %u stuck; %s\n", h.nvms, h.jobs_running, h.jobs_failed,
           h.jobs_stuck, attention ? "needs attention" : "all well");
  }
  for (size_t i = 0; od && i < h.nvms; i++)
    free(od[i].calendar);
  free(od);
  kb_health_clear(&h);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return attention ? 1 : 0;
}
