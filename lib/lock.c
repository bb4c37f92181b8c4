#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"
#include "util.h"

/* See docs/storage.md for the protocol. In short: a lock is a file created
 * with O_EXCL (NFSv3 and v4 both do exclusive create on the server); its
 * content names the holder; its mtime, set by the server (futimens with
 * NULL times), is the heartbeat. */

struct kb_lock {
  char *path;
  int fd;
  dev_t dev;
  ino_t ino;
  pid_t pid;               /* the process that took it; a forked child does not own it */
  char token[33];
  bool lost;               /* the heartbeat found the file gone */
  struct kb_lock *next;    /* heartbeat list */
};

struct holder {
  bool parsed;
  char host[HOST_NAME_MAX + 1];
  long long pid;
  unsigned long long start_time;
  char boot_id[64];
  char purpose[256];
  char taken_at[32];
  char token[33];
  struct timespec mtime;
  dev_t dev;
  ino_t ino;
};

int kb_lock_lease_seconds(void)
{
  const char *env = getenv("KBOSS_LOCK_LEASE");
  long long v;

  if (env && kb_parse_ll(env, &v) == 0 && v >= 1 && v <= 86400)
    return (int) v;
  return 120;
}

/* --- Who am I --- */

static int read_small(const char *path, char *buf, size_t len)
{
  CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n;

  if (fd < 0)
    return -errno;
  n = read(fd, buf, len - 1);
  if (n < 0)
    return -errno;
  buf[n] = '\0';
  return 0;
}

static const char *boot_id(void)
{
  static char id[64];

  if (!id[0]) {
    char buf[64];
    if (read_small("/proc/sys/kernel/random/boot_id", buf, sizeof buf) == 0) {
      buf[strcspn(buf, "\n")] = '\0';
      snprintf(id, sizeof id, "%s", buf);
    } else
      snprintf(id, sizeof id, "unknown");
  }
  return id;
}

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot. With
 * the boot id it tells a live process from a later one that reused its pid. */
static int proc_start_time(long long pid, unsigned long long *ret)
{
  char path[64], buf[1024];
  char *p;
  int field, r;

  snprintf(path, sizeof path, "/proc/%lld/stat", pid);
  r = read_small(path, buf, sizeof buf);
  if (r < 0)
    return r;
  p = strrchr(buf, ')');   /* comm may hold spaces and parentheses */
  if (!p)
    return -EINVAL;
  p++;
  for (field = 3; field <= 22; field++) {
    char *end;
    while (*p == ' ')
      p++;
    if (!*p)
      return -EINVAL;
    if (field == 22) {
      errno = 0;
      *ret = strtoull(p, &end, 10);
      return errno || end == p ? -EINVAL : 0;
    }
    p = strchr(p, ' ');
    if (!p)
      return -EINVAL;
  }
  return -EINVAL;
}

/* --- Heartbeat: one thread per process, started with the first lock --- */

static pthread_mutex_t hb_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hb_cond;
static pthread_once_t hb_once = PTHREAD_ONCE_INIT;
static bool hb_started;
static struct kb_lock *hb_list;

static void hb_prepare(void) { pthread_mutex_lock(&hb_mutex); }
static void hb_parent(void) { pthread_mutex_unlock(&hb_mutex); }

static void hb_child(void)
{
  /* The thread did not come along; the parent's locks are not ours. */
  pthread_mutex_unlock(&hb_mutex);
  hb_started = false;
  hb_list = NULL;
}

static void hb_init(void)
{
  pthread_condattr_t ca;

  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&hb_cond, &ca);
  pthread_condattr_destroy(&ca);
  pthread_atfork(hb_prepare, hb_parent, hb_child);
}

static void *hb_thread(void *arg)
{
  long interval_ms = kb_lock_lease_seconds() * 1000L / 4;

  if (interval_ms < 100)
    interval_ms = 100;
  pthread_mutex_lock(&hb_mutex);
  for (;;) {
    struct timespec ts;
    struct kb_lock *l;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += interval_ms / 1000;
    ts.tv_nsec += (interval_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    while (pthread_cond_timedwait(&hb_cond, &hb_mutex, &ts) == 0)
      ;   /* woken for nothing in particular: keep the rhythm */
    for (l = hb_list; l; l = l->next) {
      struct stat st;
      /* NULL times: the NFS server stamps its own clock. */
      if (futimens(l->fd, NULL) < 0 || fstat(l->fd, &st) < 0 || st.st_nlink == 0)
        l->lost = true;
    }
  }
  return NULL;
}

static int hb_add(struct kb_lock *lock)
{
  int r = 0;

  pthread_once(&hb_once, hb_init);
  pthread_mutex_lock(&hb_mutex);
  if (!hb_started) {
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);   /* signals stay with the program's threads */
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    r = -pthread_create(&t, &attr, hb_thread, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r == 0)
      hb_started = true;
  }
  if (r == 0) {
    lock->next = hb_list;
    hb_list = lock;
  }
  pthread_mutex_unlock(&hb_mutex);
  return r;
}

static void hb_remove(struct kb_lock *lock)
{
  struct kb_lock **pp;

  pthread_once(&hb_once, hb_init);
  pthread_mutex_lock(&hb_mutex);
  for (pp = &hb_list; *pp; pp = &(*pp)->next)
    if (*pp == lock) {
      *pp = lock->next;
      break;
    }
  pthread_mutex_unlock(&hb_mutex);
}

/* --- Lock files --- */

static void lock_free(struct kb_lock *lock)
{
  if (!lock)
    return;
  if (lock->fd >= 0)
    close(lock->fd);
  free(lock->path);
  free(lock);
}

/* Create PATH with O_EXCL and write the holder's description. -EEXIST
 * when it is there already. */
static int lock_create(const char *path, const char *purpose, struct kb_lock **ret)
{
  struct kb_lock *lock;
  unsigned long long start = 0;
  char when[32], purp[200], *content;
  struct stat st;
  size_t i;
  int r;

  lock = calloc(1, sizeof *lock);
  if (!lock)
    return -ENOMEM;
  lock->fd = -1;
  lock->pid = getpid();
  lock->path = strdup(path);
  if (!lock->path || kb_random_hex(lock->token, 16) < 0) {
    lock_free(lock);
    return -ENOMEM;
  }
  snprintf(purp, sizeof purp, "%s", purpose ? purpose : "");
  for (i = 0; purp[i]; i++)
    if (purp[i] == '\n' || purp[i] == '\r')
      purp[i] = ' ';
  (void) proc_start_time(lock->pid, &start);
  kb_format_time(kb_now(), when, sizeof when);
  content = kb_printf("host=%s\npid=%lld\nstart_time=%llu\nboot_id=%s\npurpose=%s\ntaken_at=%s\ntoken=%s\n",
                      kb_hostname(), (long long) lock->pid, start, boot_id(), purp, when, lock->token);
  if (!content) {
    lock_free(lock);
    return -ENOMEM;
  }
  lock->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock->fd < 0) {
    r = -errno;
    free(content);
    lock_free(lock);
    return r;
  }
  r = kb_write_all(lock->fd, content, strlen(content));
  free(content);
  if (r == 0 && fstat(lock->fd, &st) < 0)
    r = -errno;
  if (r < 0) {
    (void) unlink(path);
    lock_free(lock);
    return r;
  }
  lock->dev = st.st_dev;
  lock->ino = st.st_ino;
  *ret = lock;
  return 0;
}

static int holder_read(const char *path, struct holder *h)
{
  CLEANUP_CLOSE int fd = -1;
  char buf[2048], *line, *save = NULL;
  struct stat st;
  ssize_t n;
  int seen = 0;

  memset(h, 0, sizeof *h);
  fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return -EINVAL;
  h->mtime = st.st_mtim;
  h->dev = st.st_dev;
  h->ino = st.st_ino;
  n = read(fd, buf, sizeof buf - 1);
  if (n < 0)
    return -errno;
  buf[n] = '\0';
  for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *eq = strchr(line, '=');
    const char *v;
    if (!eq)
      continue;
    *eq = '\0';
    v = eq + 1;
    if (KB_STREQ(line, "host") && snprintf(h->host, sizeof h->host, "%s", v) > 0)
      seen |= 1;
    else if (KB_STREQ(line, "pid") && kb_parse_ll(v, &h->pid) == 0)
      seen |= 2;
    else if (KB_STREQ(line, "start_time")) {
      long long t;
      if (kb_parse_ll(v, &t) == 0) {
        h->start_time = t;
        seen |= 4;
      }
    } else if (KB_STREQ(line, "boot_id") && snprintf(h->boot_id, sizeof h->boot_id, "%s", v) > 0)
      seen |= 8;
    else if (KB_STREQ(line, "purpose"))
      snprintf(h->purpose, sizeof h->purpose, "%s", v);
    else if (KB_STREQ(line, "taken_at"))
      snprintf(h->taken_at, sizeof h->taken_at, "%s", v);
    else if (KB_STREQ(line, "token") && snprintf(h->token, sizeof h->token, "%s", v) > 0)
      seen |= 16;
  }
  /* Complete only with the last line: a holder that died while writing
   * the content is judged by the lease like a foreign one. */
  h->parsed = seen == 31;
  return 0;
}

/* The server's idea of "now": stamp a probe file of our own in DIR with the
 * server's clock and read it back. Never compare a remote mtime with the
 * local clock. */
static int server_now(const char *dir, struct timespec *ret)
{
  CLEANUP_FREE char *probe = kb_printf("%s/.clock-%s", dir, kb_hostname());
  CLEANUP_CLOSE int fd = -1;
  struct stat st;

  if (!probe)
    return -ENOMEM;
  fd = open(probe, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  if (futimens(fd, NULL) < 0 || fstat(fd, &st) < 0)
    return -errno;
  *ret = st.st_mtim;
  return 0;
}

static bool pid_alive(long long pid, unsigned long long start_time)
{
  unsigned long long now_start;

  if (pid <= 0 || pid > INT_MAX)
    return false;
  if (kill((pid_t) pid, 0) < 0 && errno == ESRCH)
    return false;
  if (proc_start_time(pid, &now_start) == 0 && now_start != start_time)
    return false;   /* the pid was reused */
  return true;      /* alive, or we cannot tell: never break a live lock */
}

/* 1 stale, 0 live, -ENOENT gone, other negative errno. */
static int holder_stale(const char *path, const struct holder *h)
{
  struct timespec now = { 0, 0 };
  CLEANUP_FREE char *dir = NULL;
  double age;
  int r;

  if (h->parsed && KB_STREQ(h->host, kb_hostname())) {
    if (!KB_STREQ(h->boot_id, boot_id()))
      return 1;
    return pid_alive(h->pid, h->start_time) ? 0 : 1;
  }
  dir = kb_dirname(path);
  if (!dir)
    return -ENOMEM;
  r = server_now(dir, &now);
  if (r < 0)
    return r;
  age = (double) (now.tv_sec - h->mtime.tv_sec) + (now.tv_nsec - h->mtime.tv_nsec) / 1e9;
  return age > kb_lock_lease_seconds() ? 1 : 0;
}

static int lock_stale(const char *path, struct holder *h)
{
  int r = holder_read(path, h);

  if (r < 0)
    return r;
  return holder_stale(path, h);
}

/* Unlink PATH only if it is still the file H describes. */
static int unlink_if_same(const char *path, const struct holder *h)
{
  struct stat st;

  if (lstat(path, &st) < 0)
    return -errno;
  if (st.st_dev != h->dev || st.st_ino != h->ino ||
      st.st_mtim.tv_sec != h->mtime.tv_sec || st.st_mtim.tv_nsec != h->mtime.tv_nsec)
    return -EAGAIN;
  if (unlink(path) < 0 && errno != ENOENT)
    return -errno;
  return 0;
}

static void lock_unlink_own(struct kb_lock *lock)
{
  struct holder h;
  struct stat st;

  if (lstat(lock->path, &st) < 0 || st.st_dev != lock->dev || st.st_ino != lock->ino)
    return;
  if (holder_read(lock->path, &h) < 0 || !KB_STREQ(h.token, lock->token))
    return;
  (void) unlink(lock->path);
}

/* Serialise breakers (and releasers) of PATH with PATH.break, itself an
 * O_EXCL lock. Returns 0 with *ret set, or -EAGAIN to try again later. */
static int break_guard_take(const char *path, struct kb_lock **ret)
{
  CLEANUP_FREE char *bpath = kb_printf("%s.break", path);
  struct holder h;
  int r;

  if (!bpath)
    return -ENOMEM;
  r = lock_create(bpath, "break", ret);
  if (r != -EEXIST)
    return r;
  /* A breaker holds .break for milliseconds; one that is stale died
   * holding it. Removing it is checked against the very file we judged. */
  r = lock_stale(bpath, &h);
  if (r == 1)
    (void) unlink_if_same(bpath, &h);
  else if (r < 0 && r != -ENOENT)
    return r;
  return -EAGAIN;
}

static void break_guard_release(struct kb_lock *g)
{
  if (!g)
    return;
  lock_unlink_own(g);
  lock_free(g);
}

/* Remove PATH if (still) stale. 0 when it is gone or was removed,
 * -EBUSY when live, -EAGAIN when another breaker is at it. */
static int break_stale(const char *path)
{
  struct kb_lock *guard = NULL;
  struct holder h;
  int r;

  r = break_guard_take(path, &guard);
  if (r < 0)
    return r;
  /* Another breaker may have removed the stale file and taken the lock
   * since we looked: judge again, under the guard. */
  r = lock_stale(path, &h);
  if (r == 1)
    r = unlink(path) < 0 && errno != ENOENT ? -errno : 0;
  else if (r == 0)
    r = -EBUSY;
  else if (r == -ENOENT)
    r = 0;
  break_guard_release(guard);
  return r;
}

static void sleep_ms(long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
    ;
}

int kb_lock_take(const char *path, const char *purpose, int timeout_ms, struct kb_lock **ret)
{
  int64_t deadline = timeout_ms < 0 ? INT64_MAX : kb_mono_ms() + timeout_ms;
  struct kb_lock *lock = NULL;
  int tries = 0;

  for (;;) {
    struct holder h;
    unsigned char rnd;
    long wait;
    int64_t left;
    int r = lock_create(path, purpose, &lock);

    if (r == 0) {
      r = hb_add(lock);
      if (r < 0) {
        lock_unlink_own(lock);
        lock_free(lock);
        return r;
      }
      *ret = lock;
      return 0;
    }
    if (r != -EEXIST)
      return r;
    r = lock_stale(path, &h);
    if (r == -ENOENT)
      continue;              /* released meanwhile */
    if (r < 0)
      return r;
    if (r == 1) {
      r = break_stale(path);
      if (r == 0)
        continue;
      if (r != -EBUSY && r != -EAGAIN)
        return r;
    }
    left = deadline - kb_mono_ms();
    if (left <= 0)
      return -EBUSY;
    /* Back off with jitter so competing takers do not march in step. */
    {
      char hex[3] = "00";
      (void) kb_random_hex(hex, 1);
      rnd = (unsigned char) strtoul(hex, NULL, 16);
    }
    wait = (tries < 5 ? 20L << tries : 500) + rnd % 50;
    tries++;
    sleep_ms(wait < left ? wait : (long) left);
  }
}

void kb_lock_release(struct kb_lock *lock)
{
  struct kb_lock *guard = NULL;
  int64_t until;

  if (!lock)
    return;
  if (lock->pid != getpid()) {   /* a forked child's copy: not ours */
    lock_free(lock);
    return;
  }
  hb_remove(lock);
  /* Under the break guard, so a breaker cannot replace the file between
   * our check and our unlink. If the guard stays busy, go ahead anyway. */
  until = kb_mono_ms() + 2000;
  while (break_guard_take(lock->path, &guard) == -EAGAIN && kb_mono_ms() < until)
    sleep_ms(10);
  lock_unlink_own(lock);
  break_guard_release(guard);
  lock_free(lock);
}

int kb_lock_probe(const char *path, char **ret_holder)
{
  struct holder h;
  int r = lock_stale(path, &h);

  if (r == -ENOENT || r == 1)
    return 0;
  if (r < 0)
    return r;
  if (ret_holder) {
    char *s = h.parsed ? kb_printf("%s %lld %s %s", h.host, h.pid, h.purpose, h.taken_at)
                       : strdup("unknown holder (lock file incomplete)");
    if (!s)
      return -ENOMEM;
    *ret_holder = s;
  }
  return 1;
}

const char *kb_lock_path(const struct kb_lock *lock)
{
  return lock->path;
}

bool kb_lock_lost(const struct kb_lock *lock)
{
  bool lost;

  pthread_mutex_lock(&hb_mutex);
  lost = lock->lost;
  pthread_mutex_unlock(&hb_mutex);
  return lost;
}

/* --- Processes named in records --- */

const char *kb_boot_id(void)
{
  return boot_id();
}

int kb_proc_start_time(long long pid, unsigned long long *ret)
{
  return proc_start_time(pid, ret);
}

int kb_proc_alive(const char *host, const char *boot, long long pid, unsigned long long start_time)
{
  if (!host || !KB_STREQ(host, kb_hostname()))
    return -EREMOTE;
  if (!boot || !KB_STREQ(boot, boot_id()))
    return 0;
  return pid_alive(pid, start_time) ? 1 : 0;
}
