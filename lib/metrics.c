#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "kbconfig.h"
#include "metrics.h"
#include "record.h"
#include "util.h"

int64_t kb_parse_time(const char *s)
{
  struct tm tm = { 0 };
  char *end;

  if (!s)
    return -1;
  end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (!end || (*end != 'Z' && *end != '.' && *end != '\0'))
    return -1;
  return (int64_t) timegm(&tm);
}

static char *dup0(const char *s)
{
  return s ? strdup(s) : NULL;
}

int kb_vm_note_failure(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec)
{
  char now[32];
  int r;

  kb_format_time(kb_now(), now, sizeof now);
  r = kb_doc_set(rec, "vm", "last_failure_time", now);
  if (r == 0) r = kb_doc_set_ll(rec, "vm", "failures", kb_doc_get_ll(rec, "vm", "failures", 0) + 1);
  if (r == 0) r = kb_vm_save(cat, vm_uuid, rec);
  return r;
}

static void load_vm(const struct kb_catalog *cat, const char *uuid, struct kb_vm_health *v)
{
  struct kb_doc *rec = NULL;
  char **chains = NULL;
  size_t ninv = 0;

  v->uuid = strdup(uuid);
  v->last_size = v->last_duration = -1;
  if (kb_vm_load(cat, uuid, &rec) == 0) {
    v->name = dup0(kb_doc_get(rec, "vm", "name"));
    v->state = dup0(kb_doc_get(rec, "vm", "state"));
    v->last_error = dup0(kb_doc_get(rec, "vm", "last_error"));
    v->last_success = kb_parse_time(kb_doc_get(rec, "vm", "last_backup_time"));
    v->last_failure = kb_parse_time(kb_doc_get(rec, "vm", "last_failure_time"));
    v->failures = kb_doc_get_ll(rec, "vm", "failures", 0);
    if (v->last_success < 0) v->last_success = 0;
    if (v->last_failure < 0) v->last_failure = 0;
    const char *last = kb_doc_get(rec, "vm", "last_backup");
    struct kb_backup_ref ref = { 0 };
    if (last && kb_backup_find(cat, last, &ref) == 0 && ref.doc) {
      v->last_size = kb_doc_get_ll(ref.doc, "backup", "size", -1);
      int64_t a = kb_parse_time(kb_doc_get(ref.doc, "backup", "created"));
      int64_t b = kb_parse_time(kb_doc_get(ref.doc, "backup", "completed"));
      if (a >= 0 && b >= a)
        v->last_duration = b - a;
    }
    kb_backup_ref_clear(&ref);
  }
  kb_doc_free(rec);
  if (kb_catalog_list_chains(cat, uuid, &chains) < 0)
    return;
  for (size_t c = 0; chains[c]; c++) {
    struct kb_chain_view cv = { 0 };
    if (kb_chain_view_load(cat, uuid, chains[c], &cv) < 0)
      continue;
    for (size_t i = 0; i < cv.n; i++) {
      const char *st = cv.docs[i] ? kb_doc_get(cv.docs[i], "backup", "state") : NULL;
      const char *vs = cv.docs[i] ? kb_doc_get(cv.docs[i], "validation", "state") : NULL;
      if (!st || !(KB_STREQ(st, KB_BACKUP_READY) || KB_STREQ(st, KB_BACKUP_INVALID)))
        continue;
      v->kept++;
      if (vs && KB_STREQ(vs, KB_VALIDATION_PASSED))
        v->validated++;
      if (vs && KB_STREQ(vs, KB_VALIDATION_FAILED))
        v->validation_failed++;
      if (KB_STREQ(st, KB_BACKUP_INVALID)) {
        char **n = realloc(v->invalid_ids, (ninv + 2) * sizeof *n);
        if (!n)
          continue;
        v->invalid_ids = n;
        n[ninv++] = strdup(cv.ids[i]);
        n[ninv] = NULL;
        v->invalid++;
      }
    }
    kb_chain_view_clear(&cv);
  }
  kb_strv_free(chains);
}

int kb_health_load(const struct kb_config *cfg, const struct kb_catalog *cat, struct kb_health *h)
{
  char **uuids = NULL, **jobs = NULL;
  size_t n = 0;
  int r;

  memset(h, 0, sizeof *h);
  r = kb_catalog_list_vms(cat, &uuids);
  if (r < 0)
    return r;
  while (uuids[n])
    n++;
  h->vms = calloc(n ? n : 1, sizeof *h->vms);
  if (!h->vms) {
    kb_strv_free(uuids);
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++)
    load_vm(cat, uuids[i], &h->vms[h->nvms++]);
  kb_strv_free(uuids);

  if (kb_job_list(cat, &jobs) == 0) {
    for (size_t i = 0; jobs[i]; i++) {
      struct kb_doc *j = NULL;
      if (kb_job_load(cat, jobs[i], &j) < 0)
        continue;
      const char *st = kb_doc_get(j, "job", "state");
      bool running = st && KB_STREQ(st, KB_JOB_EXECUTING), failed = st && KB_STREQ(st, KB_JOB_FAILED);
      if (running || failed) {
        struct kb_job_health *nj = realloc(h->jobs, (h->njobs + 1) * sizeof *nj);
        if (nj) {
          h->jobs = nj;
          struct kb_job_health *x = &h->jobs[h->njobs++];
          memset(x, 0, sizeof *x);
          x->id = strdup(jobs[i]);
          x->type = dup0(kb_doc_get(j, "job", "type"));
          x->state = dup0(st);
          x->backup = dup0(kb_doc_get(j, "job", "backup"));
          x->host = dup0(kb_doc_get(j, "job", "host"));
          x->last_error = dup0(kb_doc_get(j, "job", "last_error"));
          if (running && kb_catalog_lock_probe(cat, KB_LOCK_JOB, jobs[i], NULL) == 0) {
            x->stuck = true;
            h->jobs_stuck++;
          }
        }
        if (running) h->jobs_running++;
        if (failed) h->jobs_failed++;
      }
      kb_doc_free(j);
    }
    kb_strv_free(jobs);
  }

  for (unsigned i = 0; kb_config_store_at(cfg, i); i++)
    ;
  for (unsigned i = 0;; i++) {
    const struct kb_store *s = kb_config_store_at(cfg, i);
    struct statvfs sv;
    if (!s)
      break;
    struct kb_store_health *ns = realloc(h->stores, (h->nstores + 1) * sizeof *ns);
    if (!ns)
      break;
    h->stores = ns;
    struct kb_store_health *x = &h->stores[h->nstores++];
    x->name = strdup(s->name);
    x->path = strdup(s->path);
    x->free_bytes = x->size_bytes = -1;
    if (statvfs(s->path, &sv) == 0) {
      x->free_bytes = (long long) sv.f_bavail * (long long) sv.f_frsize;
      x->size_bytes = (long long) sv.f_blocks * (long long) sv.f_frsize;
    }
  }
  return 0;
}

void kb_health_clear(struct kb_health *h)
{
  for (size_t i = 0; i < h->nvms; i++) {
    struct kb_vm_health *v = &h->vms[i];
    free(v->uuid); free(v->name); free(v->state); free(v->last_error);
    kb_strv_free(v->invalid_ids);
  }
  for (size_t i = 0; i < h->njobs; i++) {
    struct kb_job_health *j = &h->jobs[i];
    free(j->id); free(j->type); free(j->state); free(j->backup); free(j->host); free(j->last_error);
  }
  for (size_t i = 0; i < h->nstores; i++) {
    free(h->stores[i].name);
    free(h->stores[i].path);
  }
  free(h->vms); free(h->jobs); free(h->stores);
  memset(h, 0, sizeof *h);
}

/* A label value: backslash, double quote and newline escaped. */
static void label(FILE *f, const char *s)
{
  for (; s && *s; s++) {
    if (*s == '\\' || *s == '"')
      fprintf(f, "\\%c", *s);
    else if (*s == '\n')
      fputs("\\n", f);
    else
      fputc(*s, f);
  }
}

static void vm_line(FILE *f, const char *metric, const struct kb_vm_health *v, long long value)
{
  fprintf(f, "%s{vm=\"", metric);
  label(f, v->uuid);
  fputs("\",name=\"", f);
  label(f, v->name ? v->name : "");
  fprintf(f, "\"} %lld\n", value);
}

static void head(FILE *f, const char *metric, const char *type, const char *help)
{
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", metric, help, metric, type);
}

char *kb_metrics_text(const struct kb_health *h)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  static const struct {
    const char *metric, *type, *help;
  } vm_metrics[] = {
    { "kboss_vm_last_success_timestamp_seconds", "gauge", "Time of the VM's last successful backup (0: never)." },
    { "kboss_vm_last_failure_timestamp_seconds", "gauge", "Time of the VM's last failed backup (0: never)." },
    { "kboss_vm_backup_failures_total", "counter", "Failed backup runs of the VM." },
    { "kboss_vm_last_backup_size_bytes", "gauge", "Size of the VM's last backup." },
    { "kboss_vm_last_backup_duration_seconds", "gauge", "Duration of the VM's last backup." },
    { "kboss_vm_backups", "gauge", "Backups of the VM kept in the catalog." },
    { "kboss_vm_backups_invalid", "gauge", "Backups of the VM marked Invalid." },
    { "kboss_vm_backups_validated", "gauge", "Backups of the VM whose last validation passed." },
    { "kboss_vm_backups_validation_failed", "gauge", "Backups of the VM whose last validation failed." },
    { "kboss_vm_backup_error", "gauge", "1 when the VM is in BackupError." },
  };

  if (!f)
    return NULL;
  for (size_t m = 0; m < KB_ARRAY_SIZE(vm_metrics); m++) {
    head(f, vm_metrics[m].metric, vm_metrics[m].type, vm_metrics[m].help);
    for (size_t i = 0; i < h->nvms; i++) {
      const struct kb_vm_health *v = &h->vms[i];
      long long x;
      switch (m) {
      case 0: x = v->last_success; break;
      case 1: x = v->last_failure; break;
      case 2: x = v->failures; break;
      case 3: x = v->last_size; break;
      case 4: x = v->last_duration; break;
      case 5: x = v->kept; break;
      case 6: x = v->invalid; break;
      case 7: x = v->validated; break;
      case 8: x = v->validation_failed; break;
      default: x = v->state && KB_STREQ(v->state, KB_VM_BACKUP_ERROR); break;
      }
      if ((m == 3 || m == 4) && x < 0)
        continue;
      vm_line(f, vm_metrics[m].metric, v, x);
    }
  }
  head(f, "kboss_jobs", "gauge", "Compression, validation and hash jobs by state (Executing, Failed, stuck).");
  fprintf(f, "kboss_jobs{state=\"running\"} %u\n", h->jobs_running);
  fprintf(f, "kboss_jobs{state=\"failed\"} %u\n", h->jobs_failed);
  fprintf(f, "kboss_jobs{state=\"stuck\"} %u\n", h->jobs_stuck);
  head(f, "kboss_store_free_bytes", "gauge", "Free space on each store.");
  for (size_t i = 0; i < h->nstores; i++)
    if (h->stores[i].free_bytes >= 0) {
      fputs("kboss_store_free_bytes{store=\"", f);
      label(f, h->stores[i].name);
      fprintf(f, "\"} %lld\n", h->stores[i].free_bytes);
    }
  head(f, "kboss_store_size_bytes", "gauge", "Size of each store.");
  for (size_t i = 0; i < h->nstores; i++)
    if (h->stores[i].size_bytes >= 0) {
      fputs("kboss_store_size_bytes{store=\"", f);
      label(f, h->stores[i].name);
      fprintf(f, "\"} %lld\n", h->stores[i].size_bytes);
    }
  head(f, "kboss_metrics_timestamp_seconds", "gauge", "When this file was written.");
  fprintf(f, "kboss_metrics_timestamp_seconds %lld\n", (long long) kb_now());
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

int kb_metrics_write(const struct kb_config *cfg, const struct kb_catalog *cat)
{
  const char *path = kb_config_str(cfg, NULL, "metrics.path");
  struct kb_health h;
  CLEANUP_FREE char *text = NULL;
  int r;

  CLEANUP_FREE char *dir = NULL;
  struct stat st;

  if (!path || !*path || KB_STREQ(path, "none"))
    return 0;
  if (path[0] != '/')
    return -EINVAL;
  /* No folder: no collector on this host (node-exporter creates it). */
  dir = strdup(path);
  if (!dir)
    return -ENOMEM;
  *strrchr(dir, '/') = '\0';
  if (*dir && stat(dir, &st) < 0 && errno == ENOENT)
    return 0;
  r = kb_health_load(cfg, cat, &h);
  if (r < 0)
    return r;
  text = kb_metrics_text(&h);
  kb_health_clear(&h);
  if (!text)
    return -ENOMEM;
  return kb_write_file_atomic(path, text, strlen(text), 0644);
}
