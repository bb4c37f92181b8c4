/* What an operator watches, gathered from the catalog: per VM the last
 * successful and failed backup, the last backup's size and duration, the
 * backups kept, their validation; jobs; store space. Written as Prometheus
 * text for node-exporter's textfile collector (metrics.path) and shown by
 * kbossctl status. */
#ifndef KBOSS_METRICS_H
#define KBOSS_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct kb_config;
struct kb_catalog;

struct kb_vm_health {
  char *uuid;
  char *name;
  char *state;               /* vm.ini state */
  char *last_error;
  int64_t last_success;      /* 0: never */
  int64_t last_failure;      /* 0: never */
  long long failures;        /* failed backup runs recorded */
  long long last_size;       /* bytes, -1 unknown */
  long long last_duration;   /* seconds, -1 unknown */
  unsigned kept, invalid, validated, validation_failed;
  char **invalid_ids;        /* NULL-terminated */
};

struct kb_job_health {
  char *id, *type, *state, *backup, *host, *last_error;
  bool stuck;                /* Executing but nobody holds its lock */
};

struct kb_store_health {
  char *name, *path;
  long long free_bytes, size_bytes;   /* -1 unknown */
};

struct kb_health {
  struct kb_vm_health *vms;
  size_t nvms;
  struct kb_job_health *jobs;   /* Failed, Executing */
  size_t njobs;
  unsigned jobs_running, jobs_failed, jobs_stuck;
  struct kb_store_health *stores;
  size_t nstores;
};

int kb_health_load(const struct kb_config *cfg, const struct kb_catalog *cat, struct kb_health *ret);
void kb_health_clear(struct kb_health *h);

/* Prometheus text exposition of H (malloc'd). */
char *kb_metrics_text(const struct kb_health *h);
/* Gather and write metrics.path atomically (0600 is too tight for
 * node-exporter: 0644). 0 also when metrics.path is "none" or its folder
 * does not exist (no collector on this host). */
int kb_metrics_write(const struct kb_config *cfg, const struct kb_catalog *cat);

/* Record a failed backup run in vm.ini (last_failure_time, failures): the
 * caller holds the VM lock. */
struct kb_doc;
int kb_vm_note_failure(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec);

/* ISO 8601 UTC "2026-11-26T10:01:39Z" to seconds; -1 when malformed. */
int64_t kb_parse_time(const char *s);

#endif
