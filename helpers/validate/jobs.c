/* Validations and hash re-checks: one backup now, or every due job. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bkhash.h"
#include "event.h"
#include "metrics.h"
#include "lock.h"
#include "log.h"
#include "util.h"
#include "validate.h"


static const char *status_word(enum vl_status s)
{
  return s == VL_OK ? "ok" : s == VL_FAILED ? "failed" : "skipped";
}

/* Tests: "start|end <ms> <host> <backup>" lines appended to
 * $KBOSS_TEST_JOB_LOG while a validation holds its slots (the format of
 * kboss-compress's), to check the concurrency limits. */
static void test_log(const char *what, const char *backup)
{
  const char *path = getenv("KBOSS_TEST_JOB_LOG");
  CLEANUP_FREE char *line = NULL;
  CLEANUP_CLOSE int fd = -1;
  struct timespec ts;

  if (!path || !*path)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  line = kb_printf("%s %lld %s %s\n", what, (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
                   kb_hostname(), backup);
  fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0 && line)
    (void) kb_write_all(fd, line, strlen(line));
}

static struct kb_lock *backup_lock(struct vl_ctx *c, const char *id, const char *purpose)
{
  struct kb_lock *l = NULL;

  if (kb_catalog_lock(c->cat, KB_LOCK_BACKUP, id, purpose, 0, &l) < 0)
    return NULL;
  return l;
}

/* End the VM's current chain when BACKUP belongs to it (as kboss-backup
 * --finish-chain does), under the VM lock. */
static void end_chain(struct vl_ctx *c, const struct kb_backup_ref *ref, const char *reason)
{
  struct kb_lock *lock = NULL;
  int r;

  if (kb_doc_get_bool(ref->doc, "backup", "isolated", false))
    return;
  r = kb_catalog_lock_vm(c->cat, ref->vm_uuid, "validate: end chain", 60000, &lock);
  if (r < 0) {
    kb_err("backup %s: cannot lock its VM to end the chain: %s", ref->id, strerror(-r));
    return;
  }
  r = kb_chain_end_if_current(c->cat, ref->vm_uuid, ref->chain, reason);
  if (r < 0)
    kb_err("VM %s: cannot end chain %s: %s", ref->vm_uuid, ref->chain, strerror(-r));
  else if (r == 1)
    kb_warn("VM %s: chain %s ended (%s); the next backup is full",
            kb_doc_get(ref->doc, "backup", "vm_name"), ref->chain, reason);
  kb_lock_release(lock);
}

/* Reload the record (others may have written it) and apply the results. */
static int save_results(struct vl_ctx *c, struct kb_backup_ref *ref, struct vl_step *steps, size_t n,
                        const char *state, const char *started, const char *summary)
{
  struct kb_doc *fresh = NULL;
  char now[32];
  size_t i;
  int r;

  r = kb_backup_load(c->cat, ref->vm_uuid, ref->chain, ref->id, &fresh);
  if (r < 0)
    return r;
  kb_doc_free(ref->doc);
  ref->doc = fresh;
  kb_format_time(kb_now(), now, sizeof now);
  (void) kb_doc_remove_section(ref->doc, "validation");
  r = kb_doc_set(ref->doc, "validation", "state", state);
  if (r == 0) r = kb_doc_set(ref->doc, "validation", "host", kb_hostname());
  if (r == 0) r = kb_doc_set(ref->doc, "validation", "started", started);
  if (r == 0) r = kb_doc_set(ref->doc, "validation", "finished", KB_STREQ(state, KB_VALIDATION_RUNNING) ? NULL : now);
  if (r == 0) r = kb_doc_set_text(ref->doc, "validation", "result", summary);
  for (i = 0; i < n && r == 0; i++) {
    CLEANUP_FREE char *key = kb_printf("step.%s", steps[i].name);
    CLEANUP_FREE char *val = kb_printf("%s %.1fs %s", status_word(steps[i].status), steps[i].seconds,
                                       steps[i].message ? steps[i].message : "");
    if (!key || !val)
      return -ENOMEM;
    r = kb_doc_set_text(ref->doc, "validation", key, val);
  }
  if (r == 0 && KB_STREQ(state, KB_VALIDATION_PASSED)) {
    r = kb_doc_set(ref->doc, "backup", "validated", "true");
    if (r == 0) r = kb_doc_set(ref->doc, "backup", "validated_at", now);
  }
  if (r == 0)
    r = kb_backup_save(c->cat, ref->vm_uuid, ref->chain, ref->id, ref->doc);
  return r;
}

/* A compression job of the backup that is not finished yet. */
static bool compression_pending(struct vl_ctx *c, const struct kb_backup_ref *ref)
{
  const char *offname = kb_doc_get(ref->doc, "backup", "offering");
  const struct kb_offering *off = offname ? kb_config_offering(c->cfg, offname) : NULL;
  CLEANUP_FREE char *jid = kb_printf("%s-%s", KB_JOB_COMPRESSION, ref->id);
  struct kb_doc *job = NULL;
  bool pending = false;

  if (!off || !off->compress || !jid || kb_doc_get_bool(ref->doc, "backup", "compressed", false))
    return false;
  if (kb_job_load(c->cat, jid, &job) == 0) {
    const char *st = kb_doc_get(job, "job", "state");
    pending = st && (KB_STREQ(st, KB_JOB_SCHEDULED) || KB_STREQ(st, KB_JOB_EXECUTING));
    kb_doc_free(job);
  }
  return pending;
}

static bool step_needs_vm(const char *name)
{
  return !KB_STREQ(name, "fs_check");
}

/* The steps the backup's offering lists (the default ones for an unknown
 * offering), all Skipped until run. Returns how many; *RET_NEED_VM when
 * one of them needs the validation VM. */
static size_t plan_steps(struct vl_ctx *c, const struct kb_backup_ref *ref, struct vl_step *steps,
                         size_t max, bool *ret_need_vm)
{
  const char *offname = kb_doc_get(ref->doc, "backup", "offering");
  const char *const *names = kb_offering_steps(offname ? kb_config_offering(c->cfg, offname) : NULL);
  size_t n;

  *ret_need_vm = false;
  for (n = 0; names[n] && n < max; n++) {
    steps[n].name = names[n];
    steps[n].status = VL_SKIPPED;
    if (step_needs_vm(names[n]))
      *ret_need_vm = true;
  }
  return n;
}

/* The zone-wide and this host's validation slots, then the backup's lock.
 * -EAGAIN (with the reason) when any is taken. */
static int take_slots_and_lock(struct vl_ctx *c, const char *backup_id, const char *vm_name,
                               struct kb_lock **zslot, struct kb_lock **hslot, struct kb_lock **lock,
                               char **ret_error)
{
  int r = kb_catalog_take_slot(c->cat, "validation", NULL,
                               kb_config_int(c->cfg, vm_name, "backup.validation.max.concurrent.operations"),
                               backup_id, zslot);
  if (r == 0)
    r = kb_catalog_take_slot(c->cat, "validation", kb_hostname(),
                             kb_config_int(c->cfg, vm_name, "backup.validation.max.concurrent.operations.per.host"),
                             backup_id, hslot);
  if (r < 0) {
    *ret_error = r == -EBUSY ? kb_printf("backup %s: the limit of concurrent validations is reached", backup_id)
                             : kb_printf("backup %s: cannot take a validation slot: %s", backup_id, strerror(-r));
    return r == -EBUSY ? -EAGAIN : r;
  }
  *lock = backup_lock(c, backup_id, "validation");
  if (!*lock) {
    *ret_error = kb_printf("backup %s is in use (compression, validation or restore)", backup_id);
    return -EAGAIN;
  }
  return 0;
}

/* The steps that need the VM, in the listed order; the VM is destroyed after. */
static void run_vm_steps(struct vl_ctx *c, const char *vm_name, const char *png_path, struct vl_vm *vm,
                         struct vl_step *steps, size_t n)
{
  for (size_t i = 0; i < n && !vl_cancel; i++) {
    int64_t t0 = kb_mono_ms();
    if (!step_needs_vm(steps[i].name))
      continue;
    if (KB_STREQ(steps[i].name, "wait_for_boot"))
      vl_step_wait_for_boot(c, vm_name, vm, &steps[i]);
    else if (KB_STREQ(steps[i].name, "execute_command"))
      vl_step_execute_command(c, vm_name, vm, &steps[i]);
    else if (KB_STREQ(steps[i].name, "screenshot"))
      vl_step_screenshot(c, vm_name, png_path, vm, &steps[i]);
    else {
      steps[i].status = VL_SKIPPED;
      steps[i].message = strdup("unknown step");
    }
    steps[i].seconds = (kb_mono_ms() - t0) / 1000.0;
  }
  if (vm->dom) {
    (void) virDomainDestroy(vm->dom);
    virDomainFree(vm->dom);
    vm->dom = NULL;
  }
}

/* The steps on the backup's own files (fs_check), once the VM is gone. */
static void run_file_steps(struct vl_ctx *c, const struct kb_backup_ref *ref, struct vl_step *steps, size_t n)
{
  const char *store = kb_doc_get(ref->doc, "backup", "store");
  CLEANUP_FREE char *chaindir = store ? kb_catalog_data_chain_dir(c->cat, store, ref->vm_uuid, ref->chain) : NULL;

  for (size_t i = 0; i < n && !vl_cancel; i++) {
    int64_t t0 = kb_mono_ms();
    char **disks = NULL, **files = NULL;
    size_t k, nd;

    if (step_needs_vm(steps[i].name))
      continue;
    if (kb_backup_disks(ref->doc, &disks) == 0) {
      for (nd = 0; disks[nd]; nd++)
        ;
      files = calloc(nd + 1, sizeof *files);
      for (k = 0; files && k < nd; k++)
        files[k] = kb_backup_disk_path(c->cat, ref, disks[k]);
      if (files && chaindir)
        vl_step_fs_check(chaindir, files, &steps[i]);
      kb_strv_free(files);
      kb_strv_free(disks);
    }
    steps[i].seconds = (kb_mono_ms() - t0) / 1000.0;
  }
}

/* Log and save the results; on failure end the chain if so configured; on
 * the first success record the hashes. 0 passed, 1 failed, -EINTR, -errno. */
static int record_outcome(struct vl_ctx *c, struct kb_backup_ref *ref, struct vl_step *steps, size_t n,
                          const char *started, const char *vm_name, char **ret_error)
{
  CLEANUP_FREE char *summary = NULL;
  size_t i, failed = 0;
  int r;

  for (i = 0; i < n; i++) {
    if (steps[i].status == VL_FAILED)
      failed++;
    kb_info("backup %s: %s %s %.1fs %s", ref->id, steps[i].name, status_word(steps[i].status),
            steps[i].seconds, steps[i].message ? steps[i].message : "");
  }
  if (vl_cancel) {
    *ret_error = kb_printf("backup %s: validation interrupted", ref->id);
    (void) save_results(c, ref, steps, n, KB_VALIDATION_INTERRUPTED, started, "interrupted");
    return -EINTR;
  }
  for (i = 0; i < n; i++)
    if (steps[i].status == VL_FAILED) {
      summary = kb_printf("%s failed: %s", steps[i].name, steps[i].message ? steps[i].message : "");
      break;
    }
  r = save_results(c, ref, steps, n, failed ? KB_VALIDATION_FAILED : KB_VALIDATION_PASSED, started,
                   failed ? summary : "every step passed");
  if (r < 0) {
    *ret_error = kb_printf("backup %s: cannot save the results: %s", ref->id, strerror(-r));
    return r;
  }
  if (failed) {
    *ret_error = kb_printf("backup %s: validation failed: %s", ref->id, summary ? summary : "");
    if (kb_config_bool(c->cfg, vm_name, "backup.validation.end.chain.on.fail"))
      end_chain(c, ref, "backup validation failed");
    return 1;
  }
  /* First success: record the hashes and schedule their re-checks. */
  if (!kb_backup_has_hash(ref->doc)) {
    char *err = NULL;
    r = kb_backup_hash_record(c->cat, ref, &err);
    if (r < 0) {
      *ret_error = err;
      return r;
    }
  }
  {
    int64_t due = kb_now() + 3600 * kb_config_int(c->cfg, vm_name, "backup.validation.interval");
    if (kb_job_queue(c->cat, KB_JOB_HASH, ref, due, NULL) < 0)
      kb_warn("backup %s: cannot schedule its hash re-check", ref->id);
  }
  return 0;
}

int vl_validate_backup(struct vl_ctx *c, const char *backup_id, bool from_job, char **ret_error)
{
  struct kb_backup_ref ref = { 0 };
  struct kb_lock *lock = NULL, *zslot = NULL, *hslot = NULL;
  struct vl_vm vm = { 0 };
  struct vl_step steps[16];
  CLEANUP_FREE char *png = NULL, *vm_name = NULL;
  const char *hold = getenv("KBOSS_TEST_VALIDATE_HOLD_MS");
  char started[32];
  size_t n, i;
  bool need_vm;
  int r;

  (void) from_job;
  memset(steps, 0, sizeof steps);
  r = kb_backup_find(c->cat, backup_id, &ref);
  if (r < 0) {
    *ret_error = kb_msg_backup_find(backup_id, r);
    return r;
  }
  if (!kb_backup_complete(ref.doc)) {
    *ret_error = kb_msg_backup_incomplete(backup_id, ref.doc);
    r = -EAGAIN;
    goto out;
  }
  if (compression_pending(c, &ref)) {
    *ret_error = kb_printf("backup %s: waiting for its compression job to finish", backup_id);
    r = -EAGAIN;
    goto out;
  }
  /* A copy: save_results() replaces ref.doc. */
  vm_name = kb_doc_get(ref.doc, "backup", "vm_name") ? strdup(kb_doc_get(ref.doc, "backup", "vm_name")) : NULL;
  if (!vm_name) {
    *ret_error = kb_printf("backup %s: no vm_name in its record", backup_id);
    r = -EINVAL;
    goto out;
  }
  n = plan_steps(c, &ref, steps, KB_ARRAY_SIZE(steps), &need_vm);
  png = kb_catalog_screenshot_path(c->cat, ref.vm_uuid, ref.chain, ref.id);
  if (!png) {
    r = -EINVAL;
    *ret_error = kb_printf("backup %s: bad catalog path", backup_id);
    goto out;
  }
  r = take_slots_and_lock(c, backup_id, vm_name, &zslot, &hslot, &lock, ret_error);
  if (r < 0)
    goto out;

  /* Tests of the limits: hold the slots for this long instead of running
   * the steps (booting real VMs side by side is too slow for them). */
  if (hold && *hold) {
    test_log("start", backup_id);
    usleep((useconds_t) atoi(hold) * 1000);
    test_log("end", backup_id);
    for (i = 0; i < n; i++)
      steps[i].message = strdup("not run (KBOSS_TEST_VALIDATE_HOLD_MS)");
    kb_format_time(kb_now(), started, sizeof started);
    r = record_outcome(c, &ref, steps, n, started, vm_name, ret_error);
    goto out;
  }
  if (need_vm) {
    char *why;
    r = vl_vm_prepare(c, &ref, &vm, ret_error);
    if (r < 0)
      goto out;
    why = vl_resource_check(c, &ref, &vm);
    if (why) {
      *ret_error = kb_printf("backup %s: validation VM not started: %s", backup_id, why);
      free(why);
      r = -EAGAIN;
      goto out;
    }
  }
  kb_format_time(kb_now(), started, sizeof started);
  (void) save_results(c, &ref, steps, 0, KB_VALIDATION_RUNNING, started, NULL);
  kb_info("backup %s: validating (%zu steps)", backup_id, n);
  if (need_vm) {
    r = vl_vm_start(c, &vm, ret_error);
    if (r < 0)
      goto out;
  }
  run_vm_steps(c, vm_name, png, &vm, steps, n);
  /* libvirtd went away (restarted): it destroyed the autodestroy VM. That
   * says nothing about the backup: not a failed validation, try later. */
  if (need_vm && !vl_cancel && virConnectIsAlive(c->conn) != 1) {
    *ret_error = kb_printf("backup %s: the connection to libvirtd was lost during the validation "
                           "(libvirtd restarted?); it will be run again", backup_id);
    (void) save_results(c, &ref, steps, 0, KB_VALIDATION_INTERRUPTED, started, "the connection to libvirtd was lost");
    r = -EAGAIN;
    goto out;
  }
  run_file_steps(c, &ref, steps, n);
  r = record_outcome(c, &ref, steps, n, started, vm_name, ret_error);
out:
  vl_vm_teardown(&vm);
  kb_lock_release(lock);
  kb_lock_release(hslot);
  kb_lock_release(zslot);
  for (i = 0; i < KB_ARRAY_SIZE(steps); i++)
    free(steps[i].message);
  kb_backup_ref_clear(&ref);
  return r;
}

/* Every disk's chain passes the validator (lib/chain.h): 0, -EPERM with
 * *RET_DETAIL naming the file and the rule, or another -errno. */
static int chains_ok(struct vl_ctx *c, const struct kb_backup_ref *ref, char **ret_detail)
{
  CLEANUP_FREE char *data = kb_backup_data_dir(c->cat, ref);
  char **disks = NULL;
  int r;

  if (!data || !strrchr(data, '/'))
    return -ENOMEM;
  *strrchr(data, '/') = '\0';
  r = kb_backup_disks(ref->doc, &disks);
  for (size_t i = 0; r == 0 && disks[i]; i++) {
    CLEANUP_FREE char *file = kb_backup_disk_path(c->cat, ref, disks[i]), *why = NULL;
    struct kb_chain *chain = NULL;

    r = file ? kb_chain_validate(data, file, &chain, &why) : -EINVAL;
    kb_chain_free(chain);
    if (r < 0)
      *ret_detail = kb_printf("disk %s: its backing chain: %s", disks[i], why ? why : strerror(-r));
  }
  kb_strv_free(disks);
  return r;
}

int vl_hash_check(struct vl_ctx *c, const char *backup_id, char **ret_error)
{
  struct kb_backup_ref ref = { 0 };
  struct kb_lock *lock = NULL;
  CLEANUP_FREE char *detail = NULL;
  int r;

  r = kb_backup_find(c->cat, backup_id, &ref);
  if (r < 0) {
    *ret_error = kb_msg_backup_find(backup_id, r);
    return r;
  }
  lock = backup_lock(c, backup_id, "hash check");
  if (!lock) {
    *ret_error = kb_printf("backup %s is in use", backup_id);
    r = -EAGAIN;
    goto out;
  }
  /* Reload under the lock: a compression may have re-recorded the hashes. */
  kb_backup_ref_clear(&ref);
  r = kb_backup_find(c->cat, backup_id, &ref);
  if (r < 0)
    goto out;
  if (!kb_backup_has_hash(ref.doc)) {
    *ret_error = kb_printf("backup %s has no recorded hash (not validated yet)", backup_id);
    r = -ENOENT;
    goto out;
  }
  /* A chain that breaks a rule was tampered with, whatever its hashes say. */
  r = chains_ok(c, &ref, &detail);
  if (r == -EPERM)
    r = 1;
  else if (r == 0)
    r = kb_backup_hash_verify(c->cat, &ref, &detail);
  {
    char now[32];
    kb_format_time(kb_now(), now, sizeof now);
    (void) kb_doc_set(ref.doc, "backup", "hash_checked", now);
  }
  if (r == 0) {
    (void) kb_doc_set(ref.doc, "backup", "hash_check", "ok");
    (void) kb_backup_save(c->cat, ref.vm_uuid, ref.chain, ref.id, ref.doc);
  } else {
    const char *vm_name = kb_doc_get(ref.doc, "backup", "vm_name");
    *ret_error = kb_printf("backup %s: %s: %s", backup_id, r == 1 ? "hash mismatch" : "hash check failed",
                           detail ? detail : strerror(-r));
    (void) kb_doc_set(ref.doc, "backup", "hash_check", r == 1 ? "mismatch" : "error");
    (void) kb_doc_set_text(ref.doc, "backup", "hash_error", *ret_error);
    if (r == 1)
      (void) kb_backup_mark_invalid(ref.doc);
    (void) kb_backup_save(c->cat, ref.vm_uuid, ref.chain, ref.id, ref.doc);
    if (r == 1 && kb_config_bool(c->cfg, vm_name, "backup.validation.end.chain.on.fail"))
      end_chain(c, &ref, "a backup of the chain failed its hash re-check");
  }
out:
  kb_lock_release(lock);
  kb_backup_ref_clear(&ref);
  return r;
}

/* Run one job under its lock. Returns 0 done, 1 failed, -EAGAIN left for later. */
static int run_job(struct vl_ctx *c, const char *jid)
{
  CLEANUP_FREE char *err = NULL, *backup = NULL;
  struct kb_lock *lock = NULL;
  struct kb_doc *job = NULL;
  const char *type, *state, *vm_name;
  bool is_hash;
  int64_t now = kb_now();
  int r, m;

  if (kb_catalog_lock(c->cat, KB_LOCK_JOB, jid, "validate", 0, &lock) < 0)
    return -EAGAIN;
  r = kb_job_load(c->cat, jid, &job);
  if (r < 0)
    goto out;
  type = kb_doc_get(job, "job", "type");
  state = kb_doc_get(job, "job", "state");
  vm_name = kb_doc_get(job, "job", "vm_name");
  backup = kb_doc_get(job, "job", "backup") ? strdup(kb_doc_get(job, "job", "backup")) : NULL;
  if (!type || !state || !backup || !(KB_STREQ(type, KB_JOB_VALIDATION) || KB_STREQ(type, KB_JOB_HASH))) {
    r = -EAGAIN;
    goto out;
  }
  is_hash = KB_STREQ(type, KB_JOB_HASH);
  /* Executing with its lock free: the run that had it was killed. */
  if (!(KB_STREQ(state, KB_JOB_SCHEDULED) || KB_STREQ(state, KB_JOB_EXECUTING)) ||
      (!c->now && kb_doc_get_ll(job, "job", "next_attempt", 0) > now) ||
      !kb_config_bool(c->cfg, vm_name, "backup.validation.task.enabled")) {
    r = -EAGAIN;
    goto out;
  }
  (void) kb_doc_set(job, "job", "state", KB_JOB_EXECUTING);
  (void) kb_doc_set(job, "job", "host", kb_hostname());
  (void) kb_doc_set_ll(job, "job", "attempts", kb_doc_get_ll(job, "job", "attempts", 0) + 1);
  (void) kb_job_save(c->cat, jid, job);

  r = is_hash ? vl_hash_check(c, backup, &err) : vl_validate_backup(c, backup, true, &err);
  if (r == -EAGAIN) {
    (void) kb_doc_set(job, "job", "state", KB_JOB_SCHEDULED);
    (void) kb_doc_set_ll(job, "job", "next_attempt", kb_now() + 60);
    (void) kb_doc_set_text(job, "job", "last_error", err);
    kb_info("%s", err ? err : "deferred");
  } else if (r == 0 && is_hash) {
    /* The next re-check one interval from now. */
    (void) kb_doc_set(job, "job", "state", KB_JOB_SCHEDULED);
    (void) kb_doc_set_ll(job, "job", "next_attempt",
                         kb_now() + 3600 * kb_config_int(c->cfg, vm_name, "backup.validation.interval"));
    (void) kb_doc_set(job, "job", "last_error", NULL);
    (void) kb_doc_set(job, "job", "last_result", "hashes match");
  } else if (r == 0) {
    (void) kb_doc_set(job, "job", "state", KB_JOB_DONE);
    (void) kb_doc_set(job, "job", "last_error", NULL);
    (void) kb_doc_set(job, "job", "last_result", "every step passed");
    CLEANUP_FREE char *msg = kb_printf("backup %s: validation passed", backup);
    struct kb_event ev = { KB_EV_VALIDATION_PASSED, kb_doc_get(job, "job", "vm"), vm_name, backup, jid, msg };
    kb_event(&ev);
  } else {
    (void) kb_doc_set(job, "job", "state", KB_JOB_FAILED);
    (void) kb_doc_set_text(job, "job", "last_error", err ? err : strerror(-r));
    struct kb_event ev = { is_hash && err && strstr(err, "hash mismatch") ? KB_EV_HASH_MISMATCH : KB_EV_VALIDATION_FAILED,
                           kb_doc_get(job, "job", "vm"), vm_name, backup, jid, err ? err : strerror(-r) };
    kb_event(&ev);
    r = 1;
  }
  {
    char t[32];
    kb_format_time(kb_now(), t, sizeof t);
    (void) kb_doc_set(job, "job", "finished", r == -EAGAIN ? NULL : t);
  }
  if (kb_job_save(c->cat, jid, job) < 0)
    kb_err("job %s: cannot save it", jid);
  if (r != -EAGAIN && (m = kb_metrics_write(c->cfg, c->cat)) < 0)
    kb_warn("cannot write metrics.path: %s", strerror(-m));
out:
  kb_doc_free(job);
  kb_lock_release(lock);
  return r;
}

int vl_run_jobs(struct vl_ctx *c)
{
  char **ids = NULL;
  size_t i;
  int r, status = 0;

  vl_cleanup_leftovers(c);
  r = kb_job_list(c->cat, &ids);
  if (r < 0) {
    kb_err("cannot list jobs: %s", strerror(-r));
    return 1;
  }
  for (i = 0; ids[i] && !vl_cancel; i++) {
    if (c->conn && virConnectIsAlive(c->conn) != 1) {
      kb_err("the connection to libvirtd was lost; the remaining jobs wait for the next run");
      status = 1;
      break;
    }
    if (strncmp(ids[i], KB_JOB_VALIDATION "-", strlen(KB_JOB_VALIDATION) + 1) != 0 &&
        strncmp(ids[i], KB_JOB_HASH "-", strlen(KB_JOB_HASH) + 1) != 0)
      continue;
    if (run_job(c, ids[i]) == 1)
      status = 1;
  }
  kb_strv_free(ids);
  return status;
}
