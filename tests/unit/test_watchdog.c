/* The export watchdog and the hook's local facts, with real processes: a
 * worker's exit status passes through the supervisor; when the probe stops
 * answering (SIGSTOP, as a probe blocked on a hung mount would) the worker
 * is killed, the recovery sees what the worker noted, and the supervisor
 * exits 1 within storage.timeout; a long job on an answering export is left
 * alone. Restoring markers count only while their process lives. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kbconfig.h"
#include "localstate.h"
#include "util.h"
#include "watchdog.h"

#define VM1 "6a1f4c2e-9b3d-4e5f-8a7b-1c2d3e4f5a6b"

static char tmpdir[64];
static char conf[128], recovered[128];

static void setup(void)
{
  char sec[128];
  FILE *f;

  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-wd-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  snprintf(sec, sizeof sec, "%s/secondary", tmpdir);
  cr_assert_eq(mkdir(sec, 0700), 0);
  snprintf(conf, sizeof conf, "%s/kboss.conf", tmpdir);
  snprintf(recovered, sizeof recovered, "%s/recovered", tmpdir);
  f = fopen(conf, "w");
  cr_assert_not_null(f);
  fprintf(f, "[global]\nsecondary.path = %s\nstorage.timeout = 5\n", sec);
  fclose(f);
  /* Orphaned workers come back to us, so none is left a zombie. */
  (void) prctl(PR_SET_CHILD_SUBREAPER, 1);
}

static void teardown(void)
{
  kb_rm_rf(tmpdir);
}

TestSuite(watchdog, .init = setup, .fini = teardown, .timeout = 60);

static struct kb_config *load(void)
{
  struct kb_config *cfg = NULL;
  char *errors = NULL;

  cr_assert_eq(kb_config_load(conf, &cfg, &errors), 0, "%s", errors ? errors : "");
  return cfg;
}

static char *recover_to_file(void)
{
  FILE *f = fopen(recovered, "w");
  const char *vm = kb_watchdog_get("vm"), *fr = kb_watchdog_get("frozen");
  const char *cp = kb_watchdog_get("checkpoint"), *t0 = kb_watchdog_get_prefixed("tmp.", 0);

  if (f) {
    fprintf(f, "vm=%s frozen=%s checkpoint=%s tmp=%s\n", vm ? vm : "-", fr ? fr : "-", cp ? cp : "-",
            t0 ? t0 : "-");
    fclose(f);
  }
  return strdup("recovered");
}

/* The supervisor's children other than WORKER: the probe. */
static pid_t find_probe(pid_t sup, pid_t worker)
{
  char path[96], buf[256];
  FILE *f;
  long p;

  snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int) sup, (int) sup);
  for (int k = 0; k < 50; k++) {
    f = fopen(path, "r");
    if (f) {
      size_t n = fread(buf, 1, sizeof buf - 1, f);
      char *s = buf, *end;
      fclose(f);
      buf[n] = '\0';
      while ((p = strtol(s, &end, 10)) > 0) {
        if (p != worker)
          return (pid_t) p;
        s = end;
      }
    }
    usleep(100 * 1000);
  }
  return -1;
}

static void reap_all(void)
{
  while (waitpid(-1, NULL, WNOHANG) > 0)
    ;
}

Test(watchdog, the_workers_exit_status_passes_through)
{
  struct kb_config *cfg = load();
  int st;
  pid_t sup = fork();

  cr_assert_geq(sup, 0);
  if (sup == 0) {
    if (kb_watchdog_start(cfg, NULL) < 0)
      _exit(99);
    _exit(kb_watchdog_active() ? 3 : 98);
  }
  cr_assert_eq(waitpid(sup, &st, 0), sup);
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), 3);
  kb_config_free(cfg);
  reap_all();
}

Test(watchdog, a_silent_probe_stops_the_worker_and_runs_the_recovery)
{
  struct kb_config *cfg = load();
  int pfd[2], st;
  pid_t sup, worker = 0, probe;
  int64_t t0;
  char *text = NULL;
  size_t len;

  cr_assert_eq(pipe(pfd), 0);
  sup = fork();
  cr_assert_geq(sup, 0);
  if (sup == 0) {
    pid_t me;
    close(pfd[0]);
    if (kb_watchdog_start(cfg, recover_to_file) < 0)
      _exit(99);
    me = getpid();
    kb_watchdog_note("vm", VM1);
    kb_watchdog_note("frozen", "1");
    kb_watchdog_note("checkpoint", "cp1");
    kb_watchdog_note("frozen", NULL);      /* thawed again */
    kb_watchdog_note("tmp.vda", "/x/vda.tmp");
    (void) !write(pfd[1], &me, sizeof me);
    for (;;)
      pause();                             /* as if blocked on the export */
  }
  close(pfd[1]);
  cr_assert_eq(read(pfd[0], &worker, sizeof worker), (ssize_t) sizeof worker);
  close(pfd[0]);
  probe = find_probe(sup, worker);
  cr_assert_gt(probe, 0, "no probe process");
  usleep(300 * 1000);
  t0 = kb_mono_ms();
  cr_assert_eq(kill(probe, SIGSTOP), 0);
  cr_assert_eq(waitpid(sup, &st, 0), sup);
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), 1);
  cr_assert_leq(kb_mono_ms() - t0, 5000 + 3000, "took %lld ms", (long long) (kb_mono_ms() - t0));
  cr_assert_geq(kb_mono_ms() - t0, 2500, "gave up too early: %lld ms", (long long) (kb_mono_ms() - t0));
  /* The worker and the probe are gone. */
  for (int k = 0; k < 50 && (waitpid(worker, NULL, WNOHANG) == 0); k++)
    usleep(100 * 1000);
  (void) waitpid(probe, NULL, WNOHANG);
  cr_assert(kill(worker, 0) < 0 && errno == ESRCH, "the worker still lives");
  cr_assert_eq(kb_read_file(recovered, &text, &len), 0);
  cr_assert_str_eq(text, "vm=" VM1 " frozen=- checkpoint=cp1 tmp=/x/vda.tmp\n");
  free(text);
  kb_config_free(cfg);
  reap_all();
}

Test(watchdog, a_long_job_on_an_answering_export_is_left_alone)
{
  struct kb_config *cfg = load();
  int st;
  pid_t sup = fork();

  cr_assert_geq(sup, 0);
  if (sup == 0) {
    if (kb_watchdog_start(cfg, NULL) < 0)
      _exit(99);
    sleep(7);                              /* longer than storage.timeout */
    _exit(0);
  }
  cr_assert_eq(waitpid(sup, &st, 0), sup);
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), 0);
  kb_config_free(cfg);
  reap_all();
}

Test(watchdog, restoring_markers_and_local_marks)
{
  char state[128], run[128], marker[200];
  long pid = 0;
  FILE *f;
  pid_t dead;

  snprintf(state, sizeof state, "%s/state", tmpdir);
  snprintf(run, sizeof run, "%s/run", tmpdir);
  setenv("KBOSS_STATE_DIR", state, 1);
  setenv("KBOSS_RUN_DIR", run, 1);

  cr_assert_not(kb_local_vm_known(VM1));
  cr_assert_eq(kb_local_mark_vm(VM1), 0);
  cr_assert(kb_local_vm_known(VM1));
  cr_assert_eq(kb_local_mark_vm("../etc"), -EINVAL);
  cr_assert_eq(kb_local_forget_vm(VM1), 0);
  cr_assert_not(kb_local_vm_known(VM1));

  cr_assert_eq(kb_local_restoring(VM1, &pid), 0);
  cr_assert_eq(kb_local_restoring_begin(VM1), 0);
  cr_assert_eq(kb_local_restoring(VM1, &pid), 1);
  cr_assert_eq(pid, (long) getpid());
  kb_local_restoring_end(VM1);
  cr_assert_eq(kb_local_restoring(VM1, NULL), 0);

  /* A marker whose process is gone does not refuse anything. */
  dead = fork();
  if (dead == 0)
    _exit(0);
  waitpid(dead, NULL, 0);
  snprintf(marker, sizeof marker, "%s/restoring/%s", run, VM1);
  f = fopen(marker, "w");
  cr_assert_not_null(f);
  fprintf(f, "pid=%d\nstart_time=1\n", (int) dead);
  fclose(f);
  cr_assert_eq(kb_local_restoring(VM1, NULL), 0);
  kb_local_restoring_clear(VM1);
  cr_assert_eq(access(marker, F_OK), -1);
  unsetenv("KBOSS_STATE_DIR");
  unsetenv("KBOSS_RUN_DIR");
}

Test(watchdog, kboss_metadata_in_domain_xml)
{
  cr_assert(kb_xml_has_kboss_metadata(
    "<domain><name>a</name><metadata><k:vm xmlns:k='urn:kboss:domain:1'/></metadata></domain>"));
  cr_assert_not(kb_xml_has_kboss_metadata(
    "<domain><name>a</name><metadata><k:vm xmlns:k='urn:other:1'/></metadata></domain>"));
  cr_assert_not(kb_xml_has_kboss_metadata("<domain><name>a</name></domain>"));
  cr_assert_not(kb_xml_has_kboss_metadata("<domain><vm xmlns='urn:kboss:domain:1'/></domain>"));
  cr_assert_not(kb_xml_has_kboss_metadata("not xml"));
}
