/* Compression jobs: who runs which job, within which limits, and what an
 * attempt's outcome does to the job document.
 *
 * A job is run by whoever holds its lock (locks/job-<id>.lock) for the
 * whole attempt. A job "Executing" whose lock has no live holder was
 * interrupted (the runner was killed or its host died): the next run
 * counts that as a failed attempt and removes the temporary files. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "compress.h"
#include "lock.h"
#include "event.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define KIND "compression"

void cp_settings_load(const struct kb_config *cfg, const char *vm, struct cp_settings *s)
{
  s->task_enabled = kb_config_bool(cfg, vm, "backup.compression.task.enabled");
  s->per_host = kb_config_int(cfg, vm, "backup.compression.max.concurrent.operations.per.host");
  s->zone = kb_config_int(cfg, vm, "backup.compression.max.concurrent.operations");
  s->max_retries = kb_config_int(cfg, vm, "backup.compression.max.job.retries");
  s->retry_minutes = kb_config_int(cfg, vm, "backup.compression.retry.interval");
  s->timeout_s = kb_config_int(cfg, vm, "backup.compression.timeout");
  s->min_free = kb_config_real(cfg, vm, "backup.compression.minimum.free.storage");
  s->coroutines = kb_config_int(cfg, vm, "backup.compression.coroutines");
  s->rate_mb = kb_config_int(cfg, vm, "backup.compression.rate.limit");
  s->cluster_kib = kb_config_int(cfg, vm, "backup.compression.cluster.size");
  if (s->max_retries < 1)
    s->max_retries = 1;
}

void cp_test_log(const char *what, const char *job_id)
{
  const char *path = getenv("KBOSS_TEST_JOB_LOG");
  CLEANUP_FREE char *line = NULL;
  struct timespec ts;
  int fd;

  if (!path || !*path)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  line = kb_printf("%s %lld %s %s\n", what, (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
                   kb_hostname(), job_id);
  fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0 && line)
    (void) kb_write_all(fd, line, strlen(line));
  if (fd >= 0)
    close(fd);
}

/* A failed attempt: scheduled again after the retry interval, or Failed
 * once the attempts are used up. The attempt was already counted. */
static void record_failure(struct kb_doc *job, const struct cp_settings *s, const char *why)
{
  long long attempts = kb_doc_get_ll(job, "job", "attempts", 0);
  char now[32];

  kb_format_time(kb_now(), now, sizeof now);
  (void) kb_doc_set_text(job, "job", "last_error", why);
  (void) kb_doc_set(job, "job", "finished", now);
  (void) kb_doc_set(job, "job", "pid", NULL);
  if (attempts >= s->max_retries) {
    (void) kb_doc_set(job, "job", "state", KB_JOB_FAILED);
    (void) kb_doc_set(job, "job", "next_attempt", NULL);
  } else {
    (void) kb_doc_set(job, "job", "state", KB_JOB_SCHEDULED);
    (void) kb_doc_set_ll(job, "job", "next_attempt", kb_now() + s->retry_minutes * 60);
  }
}

/* End JOB for good: STATE (Done or Failed), WHY its last error (NULL: none). */
static void job_finish(struct kb_doc *job, const char *state, const char *why)
{
  char now[32];

  kb_format_time(kb_now(), now, sizeof now);
  if (why)
    (void) kb_doc_set_text(job, "job", "last_error", why);
  else
    (void) kb_doc_set(job, "job", "last_error", NULL);
  (void) kb_doc_set(job, "job", "finished", now);
  (void) kb_doc_set(job, "job", "state", state);
  (void) kb_doc_set(job, "job", "next_attempt", NULL);
  (void) kb_doc_set(job, "job", "pid", NULL);
}

static void final_failure(struct kb_doc *job, const char *why)
{
  job_finish(job, KB_JOB_FAILED, why);
}

/* JOB is Executing and we hold its lock: its runner died. Returns true
 * when that counts as a failed attempt, false when the runner had got as
 * far as the swap (finished here if it was left pending): the job is Done. */
static bool recover_stale(const struct kb_config *cfg, const struct kb_catalog *cat, const char *job_id,
                          struct kb_doc *job)
{
  struct kb_backup_ref ref;
  struct cp_settings s;
  CLEANUP_FREE char *why = kb_printf("interrupted: the run on %s (pid %s) ended without finishing the job",
                                     kb_doc_get(job, "job", "host") ? kb_doc_get(job, "job", "host") : "?",
                                     kb_doc_get(job, "job", "pid") ? kb_doc_get(job, "job", "pid") : "?");

  cp_settings_load(cfg, kb_doc_get(job, "job", "vm_name"), &s);
  bool finished = false, pending_left = false;

  memset(&ref, 0, sizeof ref);
  if (kb_doc_get(job, "job", "backup") && kb_backup_find(cat, kb_doc_get(job, "job", "backup"), &ref) == 0) {
    /* A swap it left pending is finished first (it needs the temporary
     * files that are then removed). */
    struct kb_backup_ref again;
    if (cp_swap_pending(ref.doc)) {
      CLEANUP_FREE char *err = NULL;
      if (cp_finish_swap(cat, &ref, &err) < 0)
        kb_warn("job %s: %s", job_id, err ? err : "cannot finish the interrupted swap");
    }
    memset(&again, 0, sizeof again);
    pending_left = cp_swap_pending(ref.doc);
    if (kb_backup_find(cat, ref.id, &again) == 0) {
      pending_left = cp_swap_pending(again.doc);
      finished = !pending_left && kb_doc_get_bool(again.doc, "backup", "compressed", false);
      kb_backup_ref_clear(&again);
    }
    if (!pending_left)
      cp_remove_temps(cat, &ref);
    kb_backup_ref_clear(&ref);
  }
  if (finished) {
    job_finish(job, KB_JOB_DONE, NULL);
    kb_warn("job %s: %s after the backup was compressed; the job is done", job_id, why);
    return false;
  }
  record_failure(job, &s, why);
  kb_warn("job %s: %s; %s", job_id, why,
          KB_STREQ(kb_doc_get(job, "job", "state"), KB_JOB_FAILED) ? "no attempts left" : "scheduled again");
  return true;
}

static int find_in_use(const struct kb_doc *b, char **ret_error)
{
  const char *user = kb_doc_get(b, "backup", "in_use_by");

  if (kb_backup_merge_pending(b)) {
    *ret_error = kb_printf("backup %s has a merge forward pending (the next kbossctl prune finishes it)",
                           kb_doc_get(b, "backup", "id"));
    return CP_POSTPONED;
  }
  if (!user)
    return 0;
  *ret_error = kb_printf("backup %s is in use by VM %s (quick restore)", kb_doc_get(b, "backup", "id"), user);
  return CP_POSTPONED;
}

static int check_free_space(const struct kb_catalog *cat, const struct kb_backup_ref *ref,
                            const struct cp_settings *s, char **ret_error)
{
  CLEANUP_FREE char *dir = kb_backup_data_dir(cat, ref);
  long long size = kb_doc_get_ll(ref->doc, "backup", "size", 0);
  struct statvfs sv;
  double need, avail;
  char a[32], n[32];

  if (!dir || statvfs(dir, &sv) < 0) {
    int r = dir ? -errno : -ENOMEM;
    *ret_error = kb_printf("cannot see the free space of the backup's store: %s", strerror(-r));
    return r;
  }
  avail = (double) sv.f_bavail * sv.f_frsize;
  need = s->min_free * (double) size;
  if (avail >= need)
    return 0;
  kb_format_size((uint64_t) avail, a, sizeof a);
  kb_format_size(need > 1e18 ? (uint64_t) 1e18 : (uint64_t) need, n, sizeof n);
  *ret_error = kb_printf("not enough free space on store %s: %s available, %s needed "
                         "(backup.compression.minimum.free.storage %g x backup size %lld)",
                         kb_doc_get(ref->doc, "backup", "store"), a, n, s->min_free, size);
  return -ENOSPC;
}

/* Codes of one attempt, also the exit codes of the forked runner. */
enum { AT_DONE = 0, AT_FAILED = 1, AT_SKIPPED = 10, AT_POSTPONED = 11, AT_NO_SLOT = 12 };

/* Whether the job's backup can be compressed now (true: REF loaded). If
 * not, *RET_CODE says what becomes of the job: AT_DONE (already
 * compressed), AT_FAILED (gone or Invalid: the job fails for good),
 * AT_POSTPONED (not Ready yet, in use), with the reason in *RET_ERR. */
static bool backup_ready(const struct kb_catalog *cat, struct kb_doc *job, const char *job_id,
                         struct kb_backup_ref *ref, int *ret_code, char **ret_err)
{
  const char *id = kb_doc_get(job, "job", "backup"), *st;

  if (kb_backup_find(cat, id ? id : "", ref) < 0) {
    *ret_err = kb_printf("backup %s no longer exists", id);
    final_failure(job, *ret_err);
    *ret_code = AT_FAILED;
    return false;
  }
  if (cp_swap_pending(ref->doc)) {
    /* Left by a run that was killed and whose recovery could not finish
     * it then (e.g. the backup was locked): finish it now. */
    if (cp_finish_swap(cat, ref, ret_err) < 0) {
      *ret_code = AT_POSTPONED;
      return false;
    }
    kb_backup_ref_clear(ref);
    if (kb_backup_find(cat, id, ref) < 0) {
      *ret_err = kb_printf("backup %s no longer exists", id);
      final_failure(job, *ret_err);
      *ret_code = AT_FAILED;
      return false;
    }
  }
  if (kb_doc_get_bool(ref->doc, "backup", "compressed", false)) {
    (void) kb_doc_set(job, "job", "state", KB_JOB_DONE);
    (void) kb_doc_set(job, "job", "last_error", NULL);
    kb_info("job %s: backup %s is already compressed", job_id, ref->id);
    *ret_code = AT_DONE;
    return false;
  }
  st = kb_doc_get(ref->doc, "backup", "state");
  if (st && KB_STREQ(st, KB_BACKUP_INVALID)) {
    *ret_err = kb_printf("backup %s is Invalid", ref->id);
    final_failure(job, *ret_err);
    *ret_code = AT_FAILED;
    return false;
  }
  *ret_code = AT_POSTPONED;
  if (!st || !KB_STREQ(st, KB_BACKUP_READY)) {
    *ret_err = kb_printf("backup %s is %s, not Ready", ref->id, st ? st : "in no state");
    return false;
  }
  return find_in_use(ref->doc, ret_err) == 0;
}

/* From here on it is an attempt: counted, with this host and process. */
static void begin_attempt(struct kb_doc *job)
{
  char now[32];

  kb_format_time(kb_now(), now, sizeof now);
  (void) kb_doc_set_ll(job, "job", "attempts", kb_doc_get_ll(job, "job", "attempts", 0) + 1);
  (void) kb_doc_set(job, "job", "host", kb_hostname());
  (void) kb_doc_set_ll(job, "job", "pid", getpid());
  (void) kb_doc_set(job, "job", "started", now);
  (void) kb_doc_set(job, "job", "finished", NULL);
  (void) kb_doc_set(job, "job", "postponed", NULL);
}

/* The job after cp_compress_backup() returned R: AT_DONE, AT_POSTPONED
 * (the attempt is not counted) or AT_FAILED (retried later or given up). */
static int end_attempt(struct kb_doc *job, int r, const struct cp_result *res, const struct cp_settings *s,
                       const struct kb_backup_ref *ref, const char *err)
{
  char b[32], a[32];

  if (r == CP_DONE) {
    job_finish(job, KB_JOB_DONE, NULL);
    kb_format_size(res->size_before, b, sizeof b);
    kb_format_size(res->size_after, a, sizeof a);
    printf("backup %s compressed: %s -> %s in %.1fs\n", ref->id, b, a, res->elapsed_ms / 1000.0);
    return AT_DONE;
  }
  if (r == CP_POSTPONED) {
    (void) kb_doc_set_ll(job, "job", "attempts", kb_doc_get_ll(job, "job", "attempts", 1) - 1);
    (void) kb_doc_set(job, "job", "pid", NULL);
    return AT_POSTPONED;
  }
  record_failure(job, s, err ? err : strerror(-r));
  return AT_FAILED;
}

/* Say why the attempt failed, and whether another one follows. */
static void report_failure(const struct kb_doc *job, const char *job_id, const struct cp_settings *s,
                           const char *err)
{
  const char *st = kb_doc_get(job, "job", "state");
  char when[32];

  if (st && KB_STREQ(st, KB_JOB_FAILED)) {
    CLEANUP_FREE char *msg = kb_printf("job %s failed after %lld attempt(s): %s", job_id,
                                       kb_doc_get_ll(job, "job", "attempts", 0), err);
    struct kb_event ev = { KB_EV_COMPRESSION_FAILED, kb_doc_get(job, "job", "vm"), kb_doc_get(job, "job", "vm_name"),
                           kb_doc_get(job, "job", "backup"), job_id, msg };
    kb_event(&ev);
    return;
  }
  kb_format_time(kb_doc_get_ll(job, "job", "next_attempt", 0), when, sizeof when);
  kb_err("job %s: attempt %lld of %lld failed: %s; next attempt at %s", job_id,
         kb_doc_get_ll(job, "job", "attempts", 0), s->max_retries, err, when);
}

/* One attempt at JOB_ID. MANUAL: kboss-compress BACKUP (ignores the
 * schedule and the task switch, not the limits). */
static int attempt(const struct kb_config *cfg, const struct kb_catalog *cat, const char *job_id, bool manual)
{
  CLEANUP_FREE char *err = NULL;
  struct kb_lock *job_lock = NULL, *zone_slot = NULL, *host_slot = NULL;
  struct kb_doc *job = NULL;
  struct kb_backup_ref ref;
  struct cp_settings s;
  struct cp_result res;
  const char *st, *vm_name;
  int code = AT_SKIPPED, r;

  memset(&ref, 0, sizeof ref);
  r = kb_catalog_lock(cat, KB_LOCK_JOB, job_id, "compression job", 0, &job_lock);
  if (r < 0) {
    if (manual) {
      CLEANUP_FREE char *holder = NULL;
      (void) kb_catalog_lock_probe(cat, KB_LOCK_JOB, job_id, &holder);
      kb_err("job %s is being run elsewhere: %s", job_id, holder ? holder : strerror(-r));
    }
    return r == -EBUSY ? AT_SKIPPED : AT_FAILED;
  }
  r = kb_job_load(cat, job_id, &job);
  if (r < 0) {
    kb_err("job %s: cannot read it: %s", job_id, strerror(-r));
    code = AT_FAILED;
    goto out;
  }
  vm_name = kb_doc_get(job, "job", "vm_name");
  cp_settings_load(cfg, vm_name, &s);
  st = kb_doc_get(job, "job", "state");
  if (st && KB_STREQ(st, KB_JOB_EXECUTING)) {
    recover_stale(cfg, cat, job_id, job);
    if ((r = kb_job_save(cat, job_id, job)) < 0) {
      kb_err("job %s: cannot save it: %s", job_id, strerror(-r));
      code = AT_FAILED;
      goto out;
    }
    st = kb_doc_get(job, "job", "state");
  }
  if (!st || !KB_STREQ(st, KB_JOB_SCHEDULED))
    goto out;
  if (!manual && (kb_doc_get_ll(job, "job", "next_attempt", 0) > kb_now() || !s.task_enabled))
    goto out;

  if (!backup_ready(cat, job, job_id, &ref, &code, &err)) {
    if (code == AT_POSTPONED)
      goto postpone;
    goto save;
  }

  /* The limits: zone-wide slots any host may take, then this host's. */
  r = kb_catalog_take_slot(cat, KIND, NULL, s.zone, job_id, &zone_slot);
  if (r == 0)
    r = kb_catalog_take_slot(cat, KIND, kb_hostname(), s.per_host, job_id, &host_slot);
  if (r == -EBUSY) {
    if (manual)
      kb_err("job %s: no compression slot is free (limits: %lld in the zone, %lld on this host); "
             "the job stays scheduled", job_id, s.zone, s.per_host);
    code = AT_NO_SLOT;
    goto out;
  }
  if (r < 0) {
    kb_err("job %s: cannot take a compression slot: %s", job_id, strerror(-r));
    code = AT_FAILED;
    goto out;
  }

  begin_attempt(job);
  r = check_free_space(cat, &ref, &s, &err);
  if (r < 0) {
    record_failure(job, &s, err);
    code = AT_FAILED;
    goto save;
  }
  (void) kb_doc_set(job, "job", "state", KB_JOB_EXECUTING);
  if ((r = kb_job_save(cat, job_id, job)) < 0) {
    kb_err("job %s: cannot save it: %s", job_id, strerror(-r));
    code = AT_FAILED;
    goto out;
  }

  cp_test_point("executing");
  cp_test_log("start", job_id);
  kb_info("job %s: compressing backup %s of VM %s (%s)", job_id, ref.id, vm_name ? vm_name : "?",
          cp_library(cfg, &ref));
  r = cp_compress_backup(cfg, cat, &ref, &s, job_lock, kb_mono_ms() + s.timeout_s * 1000, &res, &err);
  cp_test_log("end", job_id);
  cp_test_point("returned");
  kb_lock_release(host_slot);
  kb_lock_release(zone_slot);
  host_slot = zone_slot = NULL;

  code = end_attempt(job, r, &res, &s, &ref, err);
  if (code != AT_POSTPONED)
    goto save;

postpone:
  /* Not an attempt: the schedule stays as it is, the reason is shown. */
  (void) kb_doc_set(job, "job", "state", KB_JOB_SCHEDULED);
  (void) kb_doc_set_text(job, "job", "postponed", err);
  kb_info("job %s postponed: %s", job_id, err);
save:
  if (code == AT_FAILED && err)
    report_failure(job, job_id, &s, err);
  if ((r = kb_job_save(cat, job_id, job)) < 0) {
    kb_err("job %s: cannot save it: %s", job_id, strerror(-r));
    code = AT_FAILED;
  }
  if (code == AT_DONE) {
    CLEANUP_FREE char *msg = kb_printf("job %s: backup %s compressed", job_id, ref.id);
    struct kb_event ev = { KB_EV_COMPRESSION_DONE, ref.vm_uuid, vm_name, ref.id, job_id, msg };
    kb_event(&ev);
  }
  if ((r = kb_metrics_write(cfg, cat)) < 0)
    kb_warn("cannot write metrics.path: %s", strerror(-r));
out:
  kb_lock_release(host_slot);
  kb_lock_release(zone_slot);
  kb_lock_release(job_lock);
  kb_backup_ref_clear(&ref);
  kb_doc_free(job);
  return code;
}

static bool is_compression_job(const struct kb_doc *job)
{
  const char *t = kb_doc_get(job, "job", "type");
  return t && KB_STREQ(t, KB_JOB_COMPRESSION);
}

struct child {
  pid_t pid;
  char *job;
};

int cp_run(const struct kb_config *cfg, const struct kb_catalog *cat)
{
  char **ids = NULL, **queue = NULL;
  struct child *kids = NULL;
  size_t nq = 0, head = 0, nkids = 0, qcap, i;
  long long cap = kb_config_int(cfg, NULL, "backup.compression.max.concurrent.operations.per.host");
  bool blocked = false;
  int failures = 0, r;

  r = kb_job_list(cat, &ids);
  if (r < 0) {
    kb_err("cannot list the jobs: %s", strerror(-r));
    return 1;
  }
  for (i = 0; ids[i]; i++)
    ;
  qcap = i + 1;
  queue = calloc(qcap, sizeof *queue);
  kids = calloc(cap >= 1 ? (size_t) cap : 64, sizeof *kids);
  if (!queue || !kids) {
    kb_err("out of memory");
    r = 1;
    goto out;
  }
  if (cap < 1 || cap > 64)
    cap = 64;

  /* Stale holders first (each found one is a failed attempt), then what is due. */
  for (i = 0; ids[i]; i++) {
    struct kb_doc *job = NULL;
    const char *st;
    if (kb_job_load(cat, ids[i], &job) < 0)
      continue;
    st = kb_doc_get(job, "job", "state");
    if (is_compression_job(job) && st && KB_STREQ(st, KB_JOB_EXECUTING)) {
      if (kb_catalog_lock_probe(cat, KB_LOCK_JOB, ids[i], NULL) == 0) {
        struct kb_lock *l = NULL;
        if (kb_catalog_lock(cat, KB_LOCK_JOB, ids[i], "compression job recovery", 0, &l) == 0) {
          struct kb_doc *again = NULL;
          if (kb_job_load(cat, ids[i], &again) == 0 && kb_doc_get(again, "job", "state") &&
              KB_STREQ(kb_doc_get(again, "job", "state"), KB_JOB_EXECUTING)) {
            if (recover_stale(cfg, cat, ids[i], again))
              failures++;
            if (kb_job_save(cat, ids[i], again) < 0)
              kb_err("job %s: cannot save it", ids[i]);
          }
          kb_doc_free(again);
          kb_lock_release(l);
        }
      }
      kb_doc_free(job);
      if (kb_job_load(cat, ids[i], &job) < 0)
        continue;
      st = kb_doc_get(job, "job", "state");
    }
    if (is_compression_job(job) && st && KB_STREQ(st, KB_JOB_SCHEDULED) &&
        kb_doc_get_ll(job, "job", "next_attempt", 0) <= kb_now()) {
      struct cp_settings s;
      cp_settings_load(cfg, kb_doc_get(job, "job", "vm_name"), &s);
      if (s.task_enabled)
        queue[nq++] = ids[i];
      else
        kb_debug("job %s: backup.compression.task.enabled is false for VM %s", ids[i],
                 kb_doc_get(job, "job", "vm_name"));
    }
    kb_doc_free(job);
  }

  /* Up to CAP runners at once; the slots decide who really runs. A job
   * that found no slot waits for one of ours to end, or for the next run
   * when none of ours is running (other hosts hold the slots). */
  fflush(stdout);
  while ((head < nq && !cp_cancel) || nkids) {
    int status;
    pid_t pid;
    if (head < nq && !blocked && (long long) nkids < cap && !cp_cancel) {
      const char *id = queue[head++];
      pid = fork();
      if (pid < 0) {
        kb_err("fork: %m");
        failures++;
        break;
      }
      if (pid == 0) {
        int code = attempt(cfg, cat, id, false);
        fflush(stdout);
        _exit(code);
      }
      kids[nkids].pid = pid;
      kids[nkids].job = (char *) id;
      nkids++;
      continue;
    }
    if (!nkids)
      break;
    pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    for (i = 0; i < nkids; i++) {
      if (kids[i].pid != pid)
        continue;
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : AT_FAILED;
      char *job = kids[i].job;
      kids[i] = kids[--nkids];
      if (code == AT_FAILED)
        failures++;
      if (code == AT_NO_SLOT) {
        /* Another runner of ours may free one: try it again later. */
        if (nkids) {
          if (nq == qcap) {
            memmove(queue, queue + head, (nq - head) * sizeof *queue);
            nq -= head;
            head = 0;
          }
          queue[nq++] = job;
          blocked = true;
        }
      } else
        blocked = false;
      break;
    }
  }
  r = failures ? 1 : 0;
out:
  free(queue);
  free(kids);
  kb_strv_free(ids);
  return r;
}

int cp_one(const struct kb_config *cfg, const struct kb_catalog *cat, const char *backup_id)
{
  struct kb_backup_ref ref;
  CLEANUP_FREE char *job_id = NULL;
  int r, code;

  memset(&ref, 0, sizeof ref);
  r = kb_backup_find(cat, backup_id, &ref);
  if (r < 0) {
    CLEANUP_FREE char *msg = kb_msg_backup_find(backup_id, r);
    kb_err("%s", msg ? msg : strerror(-r));
    return 1;
  }
  if (kb_doc_get_bool(ref.doc, "backup", "compressed", false)) {
    printf("backup %s is already compressed (%s)\n", ref.id,
           kb_doc_get(ref.doc, "backup", "compression_library") ? kb_doc_get(ref.doc, "backup", "compression_library") : "?");
    kb_backup_ref_clear(&ref);
    return 0;
  }
  r = kb_job_queue(cat, KB_JOB_COMPRESSION, &ref, kb_now(), &job_id);
  kb_backup_ref_clear(&ref);
  if (r < 0) {
    kb_err("backup %s: cannot queue its compression job: %s", backup_id, strerror(-r));
    return 1;
  }
  code = attempt(cfg, cat, job_id, true);
  switch (code) {
  case AT_DONE: return 0;
  case AT_SKIPPED:
  case AT_POSTPONED:
  case AT_NO_SLOT: return 3;
  default: return 1;
  }
}
