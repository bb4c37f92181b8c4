/* kbossctl jobs: the compression, validation and hash jobs of the catalog
 * (listBackupServiceJobs). */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "ctl.h"
#include "jsonout.h"
#include "lock.h"
#include "log.h"
#include "record.h"
#include "util.h"
#include "store.h"
#include "watchdog.h"

static void jobs_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s jobs [OPTION]...\n"
          "\n"
          "List the backup service jobs (compression, validation, hash), sorted by id\n"
          "(type, then backup: oldest first within a type).\n"
          "A job shown \"Executing*\" has no live runner any more: the next run of its\n"
          "program counts that as a failed attempt.\n"
          "\n"
          "  --id JOB        only this job\n"
          "  --backup ID     only the jobs of this backup\n"
          "  --host HOST     only jobs last run by HOST\n"
          "  --zone ZONE     only jobs of backups of ZONE\n"
          "  --type TYPE     compression, validation or hash\n"
          "  --executing     only jobs being executed\n"
          "  --scheduled     only jobs waiting for their next attempt\n"
          "  --json          print JSON\n"
          "  --config FILE   configuration file\n", kb_progname);
}

struct filter {
  const char *id, *backup, *host, *zone, *type;
  bool executing, scheduled;
};

static bool match(const char *want, const char *have)
{
  return !want || (have && KB_STREQ(want, have));
}

int ctl_jobs(int argc, char **argv)
{
  enum { O_ID = 1, O_BACKUP, O_HOST, O_ZONE, O_TYPE, O_EXEC, O_SCHED, O_JSON };
  static const struct option longopts[] = {
    { "id", required_argument, NULL, O_ID },
    { "backup", required_argument, NULL, O_BACKUP },
    { "host", required_argument, NULL, O_HOST },
    { "zone", required_argument, NULL, O_ZONE },
    { "type", required_argument, NULL, O_TYPE },
    { "executing", no_argument, NULL, O_EXEC },
    { "scheduled", no_argument, NULL, O_SCHED },
    { "json", no_argument, NULL, O_JSON },
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct filter f;
  bool json = false;
  struct kb_config *cfg;
  struct kb_catalog *cat = NULL;
  char **ids = NULL;
  json_object *arr = NULL;
  unsigned shown = 0;
  int c, r, rc = 0;

  memset(&f, 0, sizeof f);
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case O_ID: f.id = optarg; break;
    case O_BACKUP: f.backup = optarg; break;
    case O_HOST: f.host = optarg; break;
    case O_ZONE: f.zone = optarg; break;
    case O_TYPE: f.type = optarg; break;
    case O_EXEC: f.executing = true; break;
    case O_SCHED: f.scheduled = true; break;
    case O_JSON: json = true; break;
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: jobs_usage(stdout); return 0;
    default: jobs_usage(stderr); return 2;
    }
  }
  if (optind != argc) {
    jobs_usage(stderr);
    return 2;
  }
  if (f.type && !KB_STREQ(f.type, KB_JOB_COMPRESSION) && !KB_STREQ(f.type, KB_JOB_VALIDATION) &&
      !KB_STREQ(f.type, KB_JOB_HASH)) {
    kb_err("--type: \"%s\" is not compression, validation or hash", f.type);
    return 2;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 2;
  r = kb_watchdog_start(cfg, NULL);   /* a hung export fails within storage.timeout */
  if (r == 0)
    r = kb_catalog_open(cfg, &cat);
  if (r < 0) {
    kb_err("cannot open the catalog under %s: %s", kb_config_str(cfg, NULL, "secondary.path"), kb_store_strerror(r));
    kb_config_free(cfg);
    return 1;
  }
  r = kb_job_list(cat, &ids);
  if (r < 0) {
    kb_err("cannot list the jobs: %s", strerror(-r));
    rc = 1;
    goto out;
  }
  if (json)
    arr = json_object_new_array();
  else
    kb_print_escaped("%-48s %-11s %-10s %-20s %-16s %8s %-20s %s\n", "ID", "TYPE", "STATE", "VM", "HOST",
           "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR");
  for (char **id = ids; *id; id++) {
    struct kb_doc *doc = NULL;
    const char *st;
    bool stale = false;
    char next[32] = "-";
    long long na;

    if (f.id && !KB_STREQ(f.id, *id))
      continue;
    if (kb_job_load(cat, *id, &doc) < 0)
      continue;
    st = kb_doc_get(doc, "job", "state");
    if (!match(f.backup, kb_doc_get(doc, "job", "backup")) || !match(f.host, kb_doc_get(doc, "job", "host")) ||
        !match(f.zone, kb_doc_get(doc, "job", "zone")) || !match(f.type, kb_doc_get(doc, "job", "type")) ||
        (f.executing && !match(KB_JOB_EXECUTING, st)) || (f.scheduled && !match(KB_JOB_SCHEDULED, st))) {
      kb_doc_free(doc);
      continue;
    }
    if (st && KB_STREQ(st, KB_JOB_EXECUTING))
      stale = kb_catalog_lock_probe(cat, KB_LOCK_JOB, *id, NULL) == 0;
    na = kb_doc_get_ll(doc, "job", "next_attempt", 0);
    if (kb_doc_get(doc, "job", "next_attempt"))
      kb_format_time(na, next, sizeof next);
    if (json) {
      json_object *all = kb_doc_to_json(doc), *job = NULL;
      if (all && json_object_object_get_ex(all, "job", &job)) {
        json_object_get(job);
        json_object_object_add(job, "holder_alive",
                               st && KB_STREQ(st, KB_JOB_EXECUTING) ? json_object_new_boolean(!stale) : NULL);
        json_object_object_add(job, "next_attempt_time",
                               kb_doc_get(doc, "job", "next_attempt") ? json_object_new_string(next) : NULL);
        json_object_array_add(arr, job);
      }
      json_object_put(all);
    } else {
      char state[16];
      snprintf(state, sizeof state, "%s%s", st ? st : "?", stale ? "*" : "");
      const char *pp = kb_doc_get(doc, "job", "postponed");
      kb_print_escaped("%-48s %-11s %-10s %-20s %-16s %8lld %-20s %s%s\n", *id,
             kb_doc_get(doc, "job", "type") ? kb_doc_get(doc, "job", "type") : "?", state,
             kb_doc_get(doc, "job", "vm_name") ? kb_doc_get(doc, "job", "vm_name") : "-",
             kb_doc_get(doc, "job", "host") ? kb_doc_get(doc, "job", "host") : "-",
             kb_doc_get_ll(doc, "job", "attempts", 0), next,
             kb_doc_get(doc, "job", "last_error") ? "" : pp ? "postponed: " : "",
             kb_doc_get(doc, "job", "last_error") ? kb_doc_get(doc, "job", "last_error") : pp ? pp : "");
    }
    shown++;
    kb_doc_free(doc);
  }
  if (json)
    kb_json_print(arr);
  if (f.id && !shown) {
    kb_err("no job %s", f.id);
    rc = 1;
  }
out:
  kb_strv_free(ids);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
