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

static void teardown(void)
{
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
  pid = fork();
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
  pid = fork();
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
    pids[i] = fork();
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
