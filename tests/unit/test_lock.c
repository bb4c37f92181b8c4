/* O_EXCL lease locks among real processes: exclusion, a dead holder's lock
 * is broken at once on the same host, a silent foreign holder's lock only
 * after its lease (server clock), and racing breakers never let two in. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "doc.h"
#include "lock.h"
#include "util.h"

static char tmpdir[64];
static char lockpath[128];

static void setup(void)
{
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-lock-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  snprintf(lockpath, sizeof lockpath, "%s/vm-x.lock", tmpdir);
  setenv("KBOSS_LOCK_LEASE", "2", 1);
}

/* Children of a test, killed by the teardown even when an assertion
 * failed: a stopped child left behind would hold the test's output open. */
static pid_t kids[64];
static size_t nkids;

static pid_t track(pid_t pid)
{
  if (pid > 0 && nkids < KB_ARRAY_SIZE(kids))
    kids[nkids++] = pid;
  return pid;
}

static void teardown(void)
{
  size_t i;

  for (i = 0; i < nkids; i++) {
    kill(kids[i], SIGKILL);
    kill(kids[i], SIGCONT);
    (void) waitpid(kids[i], NULL, WNOHANG);
  }
  nkids = 0;
  kb_rm_rf(tmpdir);
}

TestSuite(lock, .init = setup, .fini = teardown, .timeout = 60);

static void sleep_ms(long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  nanosleep(&ts, NULL);
}

static int wait_child(pid_t pid)
{
  int status;

  cr_assert_eq(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Fork a child that takes the lock, says so on a pipe, then either waits
 * to be killed (HOLD) or exits without releasing. */
static pid_t child_holder(const char *path, const char *host, bool hold)
{
  int p[2];
  char c;
  pid_t pid;

  cr_assert_eq(pipe(p), 0);
  pid = track(fork());
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    struct kb_lock *l = NULL;
    close(p[0]);
    if (host)
      setenv("KBOSS_HOSTNAME", host, 1);
    if (kb_lock_take(path, "child holder", 0, &l) < 0)
      _exit(1);
    (void) !write(p[1], "x", 1);
    if (hold)
      for (;;)
        pause();
    _exit(0);
  }
  close(p[1]);
  cr_assert_eq(read(p[0], &c, 1), 1, "the child could not take the lock");
  close(p[0]);
  return pid;
}

Test(lock, file_names_its_holder_and_goes_on_release)
{
  struct kb_lock *l = NULL;
  char *text = NULL, *holder = NULL, want[64];

  cr_assert_eq(kb_lock_take(lockpath, "backup web-01", 0, &l), 0);
  cr_assert_eq(kb_read_file(lockpath, &text, NULL), 0);
  snprintf(want, sizeof want, "\npid=%d\n", (int) getpid());
  cr_assert_not_null(strstr(text, want), "%s", text);
  cr_assert_not_null(strstr(text, "host="));
  cr_assert_not_null(strstr(text, "\nstart_time="));
  cr_assert_not_null(strstr(text, "\nboot_id="));
  cr_assert_not_null(strstr(text, "\npurpose=backup web-01\n"));
  cr_assert_not_null(strstr(text, "\ntaken_at="));
  cr_assert_eq(kb_lock_probe(lockpath, &holder), 1);
  cr_assert_not_null(strstr(holder, "backup web-01"), "%s", holder);
  cr_assert_eq(kb_lock_take(lockpath, "again", 0, &l), -EBUSY, "not reentrant");
  kb_lock_release(l);
  cr_assert_eq(access(lockpath, F_OK), -1);
  cr_assert_eq(kb_lock_probe(lockpath, NULL), 0);
  free(text);
  free(holder);
}

Test(lock, excludes_another_process)
{
  struct kb_lock *l = NULL;
  pid_t pid;

  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), 0);
  pid = track(fork());
  if (pid == 0) {
    struct kb_lock *cl = NULL;
    int64_t t0 = kb_mono_ms();
    if (kb_lock_take(lockpath, "child", 0, &cl) != -EBUSY)
      _exit(1);
    if (kb_lock_take(lockpath, "child", 500, &cl) != -EBUSY)
      _exit(2);
    if (kb_mono_ms() - t0 < 450)
      _exit(3);
    _exit(0);
  }
  cr_assert_eq(wait_child(pid), 0);
  kb_lock_release(l);

  /* And a waiter gets it as soon as it is released. */
  pid = child_holder(lockpath, NULL, true);
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), -EBUSY);
  kill(pid, SIGKILL);
  wait_child(pid);
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), 0, "dead holder's lock not broken");
  kb_lock_release(l);
}

Test(lock, dead_holder_on_this_host_is_broken_at_once)
{
  struct kb_lock *l = NULL;
  char *text = NULL, want[64];
  pid_t pid = child_holder(lockpath, NULL, false);   /* exits holding it */

  cr_assert_eq(wait_child(pid), 0);
  cr_assert_eq(access(lockpath, F_OK), 0, "the dead child's file is still there");
  cr_assert_eq(kb_lock_probe(lockpath, NULL), 0, "a dead holder does not count");
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), 0);
  cr_assert_eq(kb_read_file(lockpath, &text, NULL), 0);
  snprintf(want, sizeof want, "\npid=%d\n", (int) getpid());
  cr_assert_not_null(strstr(text, want));
  cr_assert_eq(access(tmpdir, F_OK), 0);
  kb_lock_release(l);
  free(text);
}

Test(lock, foreign_holder_lives_by_heartbeat_and_dies_by_lease)
{
  struct kb_lock *l = NULL;
  pid_t pid = child_holder(lockpath, "otherhost", true);
  int64_t t0;

  /* Well past the 2 s lease: the heartbeat keeps the lock alive. */
  sleep_ms(3500);
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), -EBUSY);
  cr_assert_eq(kb_lock_probe(lockpath, NULL), 1);

  /* The holder goes silent (its pid means nothing to us: other host). */
  kill(pid, SIGKILL);
  wait_child(pid);
  t0 = kb_mono_ms();
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), -EBUSY, "broken before its lease ran out");
  cr_assert_eq(kb_lock_take(lockpath, "parent", 10000, &l), 0);
  cr_log_info("taken %lld ms after the foreign holder died", (long long) (kb_mono_ms() - t0));
  cr_assert_geq(kb_mono_ms() - t0, 1000);
  cr_assert_leq(kb_mono_ms() - t0, 4000);
  kb_lock_release(l);
}

Test(lock, incomplete_lock_file_judged_by_server_mtime)
{
  struct kb_lock *l = NULL;
  struct timespec old[2];
  int fd = open(lockpath, O_WRONLY | O_CREAT | O_EXCL, 0600);   /* holder died before writing */

  cr_assert_geq(fd, 0);
  close(fd);
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), -EBUSY);
  clock_gettime(CLOCK_REALTIME, &old[0]);
  old[0].tv_sec -= 10;
  old[1] = old[0];
  cr_assert_eq(utimensat(AT_FDCWD, lockpath, old, 0), 0);
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), 0);
  kb_lock_release(l);
}

Test(lock, release_leaves_someone_elses_file)
{
  struct kb_lock *l = NULL;
  char *text = NULL;
  int fd;

  cr_assert_eq(kb_lock_take(lockpath, "mine", 0, &l), 0);
  cr_assert_eq(unlink(lockpath), 0);   /* as a breaker would */
  fd = open(lockpath, O_WRONLY | O_CREAT | O_EXCL, 0600);
  cr_assert_eq(write(fd, "host=elsewhere\n", 15), 15);
  close(fd);
  kb_lock_release(l);
  cr_assert_eq(kb_read_file(lockpath, &text, NULL), 0, "release removed a lock that was not ours");
  cr_assert_str_eq(text, "host=elsewhere\n");
  free(text);
}

struct shared {
  int cur, max, taken;
};

/* A dead holder's lock and many takers at once: at most one is ever in. */
Test(lock, racing_breakers_admit_one)
{
  struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  pid_t pids[10];
  int go[2], i;
  pid_t dead;

  cr_assert_neq(sh, MAP_FAILED);
  memset(sh, 0, sizeof *sh);
  dead = child_holder(lockpath, NULL, false);
  wait_child(dead);
  cr_assert_eq(pipe(go), 0);
  for (i = 0; i < 10; i++) {
    pids[i] = track(fork());
    if (pids[i] == 0) {
      struct kb_lock *l = NULL;
      char c;
      close(go[1]);
      (void) !read(go[0], &c, 1);   /* all start together */
      if (kb_lock_take(lockpath, "racer", 0, &l) == 0) {
        int now = __atomic_add_fetch(&sh->cur, 1, __ATOMIC_SEQ_CST);
        int m = __atomic_load_n(&sh->max, __ATOMIC_SEQ_CST);
        while (now > m && !__atomic_compare_exchange_n(&sh->max, &m, now, false,
                                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
          ;
        __atomic_add_fetch(&sh->taken, 1, __ATOMIC_SEQ_CST);
        sleep_ms(1500);
        __atomic_sub_fetch(&sh->cur, 1, __ATOMIC_SEQ_CST);
        kb_lock_release(l);
      }
      _exit(0);
    }
  }
  close(go[0]);
  close(go[1]);
  for (i = 0; i < 10; i++)
    cr_assert_eq(wait_child(pids[i]), 0);
  cr_assert_eq(sh->max, 1, "two processes held the lock at once");
  cr_assert_geq(sh->taken, 1, "nobody broke the dead holder's lock");
  cr_assert_eq(access(lockpath, F_OK), -1);
  munmap(sh, sizeof *sh);
}

Test(lock, stale_break_guard_is_broken_too)
{
  struct kb_lock *l = NULL;
  char guard[160];

  snprintf(guard, sizeof guard, "%s.break", lockpath);
  wait_child(child_holder(lockpath, NULL, false));
  wait_child(child_holder(guard, NULL, false));   /* a breaker that died mid-break */
  cr_assert_eq(kb_lock_take(lockpath, "parent", 2000, &l), 0);
  cr_assert_eq(access(guard, F_OK), -1);
  kb_lock_release(l);
}

Test(lock, lease_from_environment)
{
  setenv("KBOSS_LOCK_LEASE", "7", 1);
  cr_assert_eq(kb_lock_lease_seconds(), 7);
  setenv("KBOSS_LOCK_LEASE", "soon", 1);
  cr_assert_eq(kb_lock_lease_seconds(), 120);
  unsetenv("KBOSS_LOCK_LEASE");
  cr_assert_eq(kb_lock_lease_seconds(), 120);
}

/* --- Host identity, watching instead of comparing clocks, fencing --- */

Test(lock, no_stable_host_identity_no_lock)
{
  struct kb_lock *l = NULL;

  setenv("KBOSS_MACHINE_ID", "", 1);
  cr_assert_eq(kb_lock_take(lockpath, "x", 0, &l), -ENXIO);
  setenv("KBOSS_MACHINE_ID", "not-a-machine-id", 1);
  cr_assert_eq(kb_lock_take(lockpath, "x", 0, &l), -ENXIO);
  setenv("KBOSS_MACHINE_ID", "0123456789abcdef0123456789abcdef", 1);
  setenv("KBOSS_HOSTNAME", "bad name", 1);
  cr_assert_eq(kb_host_identity_check(), -ENXIO);
  cr_assert_str_eq(kb_hostname(), "", "no made-up host name");
  cr_assert_eq(kb_lock_take(lockpath, "x", 0, &l), -ENXIO);
  cr_assert_eq(access(lockpath, F_OK), -1, "nothing created");
  setenv("KBOSS_HOSTNAME", "host-a", 1);
  cr_assert_eq(kb_lock_take(lockpath, "x", 0, &l), 0);
  kb_lock_release(l);
}

/* A lock naming this host but another boot (a clone, or a reboot) is not
 * broken at once: it is watched for a whole lease like a foreign one. */
Test(lock, another_boot_of_this_host_is_watched_not_broken_at_once)
{
  struct kb_lock *l = NULL;
  char *text = kb_printf("host=%s\nmachine_id=%s\nboot_id=00000000-0000-0000-0000-000000000000\n"
                         "pid_ns=x\npid=1\nstart_time=1\npurpose=clone\ntaken_at=now\n"
                         "token=0123456789abcdef0123456789abcdef\nbeat=00000000000000000000\n",
                         kb_hostname(), kb_machine_id());
  int fd = open(lockpath, O_WRONLY | O_CREAT | O_EXCL, 0600);
  int64_t t0;

  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
  close(fd);
  t0 = kb_mono_ms();
  cr_assert_eq(kb_lock_take(lockpath, "parent", 0, &l), -EBUSY, "broken on one look at its boot id");
  cr_assert_eq(kb_lock_take(lockpath, "parent", 10000, &l), 0);
  cr_log_info("taken after %lld ms", (long long) (kb_mono_ms() - t0));
  cr_assert_geq(kb_mono_ms() - t0, 2000, "broken before a whole lease of watching");
  kb_lock_release(l);
  free(text);
}

/* Fork a holder posing as HOST that beats and, once it holds the lock,
 * stops itself (SIGSTOP). When continued it tries a catalog write in DIR
 * and reports on the pipe: 'L' lock lost and write refused, 'W' it wrote. */
static pid_t paused_holder(const char *path, const char *host, const char *dir, int *ret_fd)
{
  int p[2];
  char c;
  pid_t pid;

  cr_assert_eq(pipe(p), 0);
  pid = track(fork());
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    struct kb_lock *l = NULL;
    struct kb_doc *doc = kb_doc_new();
    int r;
    close(p[0]);
    setenv("KBOSS_HOSTNAME", host, 1);
    if (kb_lock_take(path, "paused holder", 0, &l) < 0)
      _exit(1);
    kb_doc_set(doc, "vm", "writer", "old holder");
    if (kb_meta_write(dir, "vm", doc) < 0)
      _exit(2);
    (void) !write(p[1], "x", 1);
    raise(SIGSTOP);
    r = kb_meta_write(dir, "vm", doc);
    (void) !write(p[1], r == -ENOLCK && kb_lock_lost(l) ? "L" : "W", 1);
    kb_lock_release(l);
    _exit(0);
  }
  close(p[1]);
  cr_assert_eq(read(p[0], &c, 1), 1, "the holder could not take the lock");
  *ret_fd = p[0];
  return pid;
}

Test(lock, holder_paused_past_its_lease_loses_it_and_its_writes_are_refused)
{
  struct kb_lock *l = NULL;
  struct kb_doc *doc = kb_doc_new(), *got = NULL;
  char c, dir[160];
  int status, fd;
  int64_t t0;
  pid_t pid;

  snprintf(dir, sizeof dir, "%s/vm", tmpdir);
  cr_assert_eq(mkdir(dir, 0700), 0);
  pid = paused_holder(lockpath, "host-a", dir, &fd);
  cr_assert_eq(waitpid(pid, &status, WUNTRACED), pid);
  cr_assert(WIFSTOPPED(status));
  setenv("KBOSS_HOSTNAME", "host-b", 1);
  t0 = kb_mono_ms();
  cr_assert_eq(kb_lock_take(lockpath, "new holder", 10000, &l), 0);
  cr_assert_geq(kb_mono_ms() - t0, 2000, "broken before a whole lease of watching");
  kb_doc_set(doc, "vm", "writer", "new holder");
  cr_assert_eq(kb_meta_write(dir, "vm", doc), 0);

  kill(pid, SIGCONT);
  cr_assert_eq(read(fd, &c, 1), 1);
  cr_assert_eq(c, 'L', "the old holder's write after losing the lock was not refused");
  cr_assert_eq(wait_child(pid), 0);
  cr_assert_eq(kb_lock_probe(lockpath, NULL), 1, "the old holder's release removed the new lock");
  cr_assert_eq(kb_lock_fence(l), 0);
  cr_assert_eq(kb_meta_read(dir, "vm", &got), 0);
  cr_assert_str_eq(kb_doc_get(got, "vm", "writer"), "new holder");
  kb_lock_release(l);
  kb_doc_free(doc);
  kb_doc_free(got);
  close(fd);
}

/* A holder paused for less than a lease keeps its lock. */
Test(lock, short_pause_is_not_a_death)
{
  struct kb_lock *l = NULL;
  pid_t pid = child_holder(lockpath, "host-a", true);

  setenv("KBOSS_HOSTNAME", "host-b", 1);
  kill(pid, SIGSTOP);
  sleep_ms(1200);
  kill(pid, SIGCONT);
  cr_assert_eq(kb_lock_take(lockpath, "b", 3000, &l), -EBUSY, "a live holder's lock was broken");
  kill(pid, SIGKILL);
  wait_child(pid);
}

/* An outage longer than a lease, seen by holder and taker alike (both
 * stopped, as both would hang on a hard mount): when it ends, the taker's
 * first look must not break the lock before the holder could beat again.
 * One look before and one after an outage is not a watched lease. */
Test(lock, an_outage_longer_than_the_lease_breaks_no_live_lock)
{
  int p[2];
  char c;
  pid_t holder = child_holder(lockpath, "host-a", true), taker;

  cr_assert_eq(pipe(p), 0);
  taker = track(fork());
  cr_assert_neq(taker, -1);
  if (taker == 0) {
    struct kb_lock *l = NULL;
    close(p[0]);
    setenv("KBOSS_HOSTNAME", "host-b", 1);
    (void) !write(p[1], kb_lock_take(lockpath, "taker", 6000, &l) == 0 ? "T" : "B", 1);
    _exit(0);
  }
  close(p[1]);
  sleep_ms(500);             /* the taker is watching */
  kill(holder, SIGSTOP);     /* the export stops answering the holder... */
  sleep_ms(700);             /* ...the taker sees its last beat... */
  kill(taker, SIGSTOP);      /* ...and then stops getting answers too */
  sleep_ms(3000);            /* the "outage": longer than the 2 s lease */
  kill(taker, SIGCONT);      /* the taker looks first (its back-off is at most 0.5 s) */
  sleep_ms(800);
  kill(holder, SIGCONT);
  if (read(p[0], &c, 1) != 1)
    c = '?';
  kill(holder, SIGKILL);
  wait_child(holder);
  cr_assert_eq(wait_child(taker), 0);
  close(p[0]);
  cr_assert_eq(c, 'B', "a live lock was broken on the first look after an outage");
}

/* A FIFO planted as this host's clock probe does not hang a taker. */
Test(lock, planted_fifo_clock_probe_does_not_hang)
{
  struct kb_lock *l = NULL;
  struct timespec old[2];
  char probe[160];
  int fd = open(lockpath, O_WRONLY | O_CREAT | O_EXCL, 0600);
  int64_t t0;

  cr_assert_geq(fd, 0);
  close(fd);
  clock_gettime(CLOCK_REALTIME, &old[0]);
  old[0].tv_sec -= 100;
  old[1] = old[0];
  cr_assert_eq(utimensat(AT_FDCWD, lockpath, old, 0), 0);
  snprintf(probe, sizeof probe, "%s/.clock-%s", tmpdir, kb_hostname());
  cr_assert_eq(mkfifo(probe, 0600), 0);
  t0 = kb_mono_ms();
  (void) kb_lock_take(lockpath, "x", 0, &l);
  (void) kb_lock_probe(lockpath, NULL);
  cr_assert_lt(kb_mono_ms() - t0, 5000);
  kb_lock_release(l);
}

/* Release never unlinks without the guard: with the guard held, the file
 * stays (and expires) rather than risk removing a new holder's lock. */
Test(lock, release_without_the_guard_leaves_the_file)
{
  struct kb_lock *l = NULL;
  char guard[160];
  pid_t pid;

  snprintf(guard, sizeof guard, "%s.break", lockpath);
  cr_assert_eq(kb_lock_take(lockpath, "mine", 0, &l), 0);
  pid = child_holder(guard, NULL, true);   /* a live breaker at work */
  kb_lock_release(l);
  cr_assert_eq(access(lockpath, F_OK), 0, "unlinked without the guard");
  kill(pid, SIGKILL);
  wait_child(pid);
}

/* --- Many processes posing as three hosts with clocks 60 s apart, holders
 * stopping themselves past their lease: never two holders at once. --- */

#define WORKERS 9

static void worker(const char *logpath, int id)
{
  static const char *const hosts[] = { "host-a", "host-b", "host-c" };
  static const char *const skews[] = { "-60", "60", "0" };
  int64_t end = kb_mono_ms() + 14000;
  int acq = 0, logfd = open(logpath, O_WRONLY | O_APPEND);
  char hex[3];

  setenv("KBOSS_HOSTNAME", hosts[id % 3], 1);
  setenv("KBOSS_TEST_CLOCK_SKEW", skews[id % 3], 1);
  if (logfd < 0)
    _exit(10);
  while (kb_mono_ms() < end) {
    struct kb_lock *l = NULL;
    int i;
    if (kb_lock_take(lockpath, "worker", 3000, &l) < 0)
      continue;
    acq++;
    kb_random_hex(hex, 1);
    for (i = 0; i < 5; i++) {
      char line[64];
      int n;
      if (kb_lock_fence(l) < 0) {
        n = snprintf(line, sizeof line, "lost %d.%d\n", id, acq);
        (void) !write(logfd, line, (size_t) n);
        break;
      }
      n = snprintf(line, sizeof line, "in %d.%d %d\n", id, acq, i);
      if (write(logfd, line, (size_t) n) != n)
        _exit(11);
      sleep_ms(30);
      /* About one acquisition in four stops itself past the lease. */
      if (i == 2 && strtoul(hex, NULL, 16) % 4 == 0)
        raise(SIGSTOP);
    }
    kb_lock_release(l);
    sleep_ms(20);
  }
  _exit(0);
}

Test(lock, three_hosts_skewed_clocks_and_paused_holders_never_overlap, .timeout = 120)
{
  char logpath[160], *log = NULL, *line, *save = NULL;
  char closed[WORKERS * 200][16], cur[16] = "";
  size_t nclosed = 0, i;
  int lines = 0, lost = 0, stops = 0, running = WORKERS;
  pid_t pids[WORKERS];
  int64_t stopped_at[WORKERS];
  int w;

  snprintf(logpath, sizeof logpath, "%s/log", tmpdir);
  close(open(logpath, O_WRONLY | O_CREAT, 0600));
  for (w = 0; w < WORKERS; w++) {
    pids[w] = track(fork());
    cr_assert_neq(pids[w], -1);
    if (pids[w] == 0)
      worker(logpath, w);
    stopped_at[w] = 0;
  }
  /* Continue stopped workers after 2.5 leases (5 s). */
  while (running > 0) {
    int status;
    pid_t pid = waitpid(-1, &status, WUNTRACED | WNOHANG);
    for (w = 0; w < WORKERS; w++)
      if (stopped_at[w] && kb_mono_ms() - stopped_at[w] > 5000) {
        kill(pids[w], SIGCONT);
        stopped_at[w] = 0;
      }
    if (pid <= 0) {
      sleep_ms(50);
      continue;
    }
    for (w = 0; w < WORKERS && pids[w] != pid; w++)
      ;
    cr_assert_lt(w, WORKERS);
    if (WIFSTOPPED(status)) {
      stopped_at[w] = kb_mono_ms();
      stops++;
    } else {
      cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d failed", w);
      running--;
    }
  }
  cr_assert_eq(kb_read_file(logpath, &log, NULL), 0);
  for (line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char acq[16];
    if (sscanf(line, "lost %15s", acq) == 1) {
      lost++;
      continue;
    }
    cr_assert_eq(sscanf(line, "in %15s", acq), 1, "%s", line);
    lines++;
    if (KB_STREQ(acq, cur))
      continue;
    for (i = 0; i < nclosed; i++)
      cr_assert_str_neq(closed[i], acq, "holder %s wrote again after %s had the lock", acq, cur);
    if (cur[0] && nclosed < KB_ARRAY_SIZE(closed))
      snprintf(closed[nclosed++], sizeof closed[0], "%s", cur);
    snprintf(cur, sizeof cur, "%s", acq);
  }
  cr_log_info("%d writes by %zu holders, %d stops past the lease, %d writes refused as lost",
              lines, nclosed + 1, stops, lost);
  cr_assert_gt(nclosed, 5, "too few handovers to mean anything");
  cr_assert_gt(stops, 0, "no holder was paused");
  cr_assert_gt(lost, 0, "no paused holder found its lock lost");
  free(log);
}
