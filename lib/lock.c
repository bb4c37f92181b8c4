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
 * content names the holder (host name, machine id, boot id, pid namespace,
 * pid and its start time) and ends with a beat counter. The holder's
 * heartbeat rewrites the counter and stamps the mtime. Nobody compares
 * clocks: a lock is broken only by a taker that has itself watched the
 * file stay unchanged for a whole lease on its own monotonic clock, or at
 * once when the holder is a dead process of this very kernel. */

#define XXH_INLINE_ALL
#include <xxhash.h>

#define MAX_LOCK_FILE 4096
#define BEAT_DIGITS 20

struct kb_lock {
  char *path;
  int fd;
  dev_t dev;
  ino_t ino;
  pid_t pid;               /* the process that took it; a forked child does not own it */
  char token[33];
  off_t beat_off;          /* offset of the beat counter's digits */
  unsigned long long beat;
  bool lost;               /* the file was found gone or replaced */
  int64_t ok_at;           /* monotonic ms when the last good beat began */
  struct kb_lock *next;    /* heartbeat list */
};

struct holder {
  bool parsed;             /* every line up to the beat counter is there */
  char host[HOST_NAME_MAX + 1];
  char machine_id[40];
  char boot_id[64];
  char pid_ns[64];
  long long pid;
  unsigned long long start_time;
  char purpose[256];
  char taken_at[32];
  char token[33];
  struct timespec mtime;
  dev_t dev;
  ino_t ino;
  uint64_t obs;            /* what a watcher compares: content and attributes */
};

int kb_lock_lease_seconds(void)
{
  const char *env = getenv("KBOSS_LOCK_LEASE");
  long long v;

  if (env && kb_parse_ll(env, &v) == 0 && v >= 1 && v <= 86400)
    return (int) v;
  return 120;
}

static int64_t lease_ms(void)
{
  return kb_lock_lease_seconds() * 1000LL;
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

/* The pid namespace: a pid means something only inside the namespace that
 * gave it out. */
static const char *pid_ns(void)
{
  static char ns[64];

  if (!ns[0]) {
    ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1);
    if (n <= 0)
      snprintf(ns, sizeof ns, "unknown");
    else
      ns[n] = '\0';
  }
  return ns;
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

/* Stamp FD's times. NULL times: on NFS the server stamps its own clock.
 * KBOSS_TEST_CLOCK_SKEW (seconds, see kb_now()) makes this host stamp its
 * own wall clock shifted by that much instead, as a host with a wrong clock
 * would on a file system without a common clock: the protocol must not care. */
static int stamp(int fd)
{
  struct timespec ts[2];

  if (!getenv("KBOSS_TEST_CLOCK_SKEW"))
    return futimens(fd, NULL) < 0 ? -errno : 0;
  clock_gettime(CLOCK_REALTIME, &ts[0]);
  ts[0].tv_sec += (time_t) kb_clock_skew();
  ts[1] = ts[0];
  return futimens(fd, ts) < 0 ? -errno : 0;
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

/* One beat: a new counter in the file, then new times. Either change is
 * seen by a watcher; the counter does not depend on any clock. Called with
 * hb_mutex held. */
static int beat(struct kb_lock *l)
{
  char digits[BEAT_DIGITS + 1];
  int64_t began = kb_mono_ms();
  struct stat st;
  ssize_t n;
  int r;

  snprintf(digits, sizeof digits, "%0*llu", BEAT_DIGITS, ++l->beat);
  n = pwrite(l->fd, digits, BEAT_DIGITS, l->beat_off);
  if (n != BEAT_DIGITS)
    return n < 0 ? -errno : -EIO;
  if (fdatasync(l->fd) < 0)
    return -errno;
  r = stamp(l->fd);
  if (r < 0)
    return r;
  if (fstat(l->fd, &st) < 0)
    return -errno;
  if (st.st_nlink == 0)
    return -ENOLCK;   /* our file was unlinked: somebody broke the lock */
  if (lstat(l->path, &st) < 0 || st.st_dev != l->dev || st.st_ino != l->ino)
    return -ENOLCK;   /* the name is somebody else's file now */
  /* Our open file is still under the name (its inode cannot be reused
   * while we hold it open), and nobody can break it before having watched
   * a whole lease from this beat on. */
  __atomic_store_n(&l->ok_at, began, __ATOMIC_SEQ_CST);
  return 0;
}

static void *hb_thread(void *arg)
{
  long interval_ms = kb_lock_lease_seconds() * 1000L / 4;

  (void) arg;
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
    for (l = hb_list; l; l = l->next)
      if (!__atomic_load_n(&l->lost, __ATOMIC_SEQ_CST) && beat(l) == -ENOLCK)
        __atomic_store_n(&l->lost, true, __ATOMIC_SEQ_CST);
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
  size_t i, len;
  int r;

  r = kb_host_identity_check();
  if (r < 0)
    return r;
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
  content = kb_printf("host=%s\nmachine_id=%s\nboot_id=%s\npid_ns=%s\npid=%lld\nstart_time=%llu\n"
                      "purpose=%s\ntaken_at=%s\ntoken=%s\nbeat=%0*d\n",
                      kb_hostname(), kb_machine_id(), boot_id(), pid_ns(), (long long) lock->pid,
                      start, purp, when, lock->token, BEAT_DIGITS, 0);
  if (!content) {
    lock_free(lock);
    return -ENOMEM;
  }
  len = strlen(content);
  lock->beat_off = (off_t) (len - 1 - BEAT_DIGITS);
  lock->ok_at = kb_mono_ms();   /* before the file exists: nobody watched it earlier */
  lock->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock->fd < 0) {
    r = -errno;
    free(content);
    lock_free(lock);
    return r;
  }
  r = kb_write_all(lock->fd, content, len);
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
  char buf[MAX_LOCK_FILE + 1], *line, *save = NULL;
  struct stat st;
  ssize_t n;
  int seen = 0;
  struct { dev_t dev; ino_t ino; off_t size; struct timespec m, c; } attrs;

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
  n = read(fd, buf, sizeof buf - 1);   /* a lock file is small: more is junk, cut */
  if (n < 0)
    return -errno;
  buf[n] = '\0';
  memset(&attrs, 0, sizeof attrs);
  attrs.dev = st.st_dev;
  attrs.ino = st.st_ino;
  attrs.size = st.st_size;
  attrs.m = st.st_mtim;
  attrs.c = st.st_ctim;
  h->obs = XXH64(buf, (size_t) n, XXH64(&attrs, sizeof attrs, 0));
  for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *eq = strchr(line, '=');
    const char *v;
    if (!eq)
      continue;
    *eq = '\0';
    v = eq + 1;
    if (KB_STREQ(line, "host") && snprintf(h->host, sizeof h->host, "%s", v) > 0)
      seen |= 1;
    else if (KB_STREQ(line, "machine_id"))
      snprintf(h->machine_id, sizeof h->machine_id, "%s", v);
    else if (KB_STREQ(line, "pid_ns"))
      snprintf(h->pid_ns, sizeof h->pid_ns, "%s", v);
    else if (KB_STREQ(line, "pid") && kb_parse_ll(v, &h->pid) == 0)
      seen |= 2;
    else if (KB_STREQ(line, "start_time")) {
      long long t;
      if (kb_parse_ll(v, &t) == 0) {
        h->start_time = (unsigned long long) t;
        seen |= 4;
      }
    } else if (KB_STREQ(line, "boot_id") && snprintf(h->boot_id, sizeof h->boot_id, "%s", v) > 0)
      seen |= 8;
    else if (KB_STREQ(line, "purpose"))
      snprintf(h->purpose, sizeof h->purpose, "%s", v);
    else if (KB_STREQ(line, "taken_at"))
      snprintf(h->taken_at, sizeof h->taken_at, "%s", v);
    else if (KB_STREQ(line, "token") && strlen(v) == 32 &&
             snprintf(h->token, sizeof h->token, "%s", v) > 0)
      seen |= 16;
    else if (KB_STREQ(line, "beat"))
      seen |= 32;
  }
  /* Complete only with the last line: a holder that died while writing
   * the content is judged by watching, like a foreign one. */
  h->parsed = seen == 63;
  return 0;
}

/* The holder is a process of this very kernel (same host identity, boot
 * and pid namespace): its pid can be asked about directly. */
static bool holder_is_local(const struct holder *h)
{
  return h->parsed && h->host[0] && KB_STREQ(h->host, kb_hostname()) &&
         h->machine_id[0] && KB_STREQ(h->machine_id, kb_machine_id()) &&
         KB_STREQ(h->boot_id, boot_id()) && KB_STREQ(h->pid_ns, pid_ns()) &&
         !KB_STREQ(h->boot_id, "unknown") && !KB_STREQ(h->pid_ns, "unknown");
}

/* A zombie (dead, not yet reaped: an orphan whose reaper does not reap,
 * as in some containers) answers kill(0) but holds nothing any more. */
static bool proc_is_zombie(long long pid)
{
  char path[64], buf[1024];
  const char *p;

  snprintf(path, sizeof path, "/proc/%lld/stat", pid);
  if (read_small(path, buf, sizeof buf) < 0 || !(p = strrchr(buf, ')')))
    return false;
  return p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static bool pid_alive(long long pid, unsigned long long start_time)
{
  unsigned long long now_start;

  if (pid <= 0 || pid > INT_MAX)
    return false;
  if (kill((pid_t) pid, 0) < 0 && errno == ESRCH)
    return false;
  if (proc_is_zombie(pid))
    return false;
  if (proc_start_time(pid, &now_start) == 0 && now_start != start_time)
    return false;   /* the pid was reused */
  return true;      /* alive, or we cannot tell: never break a live lock */
}

/* The server's idea of "now": stamp a probe file of our own in DIR and read
 * it back. Used only as a hint of whether a lock looks silent (both times
 * come from the same clock); never to decide that it is. */
static int server_now(const char *dir, struct timespec *ret)
{
  CLEANUP_FREE char *probe = kb_printf("%s/.clock-%s", dir, kb_hostname());
  CLEANUP_CLOSE int fd = -1;
  struct stat st;
  int r;

  if (!probe)
    return -ENOMEM;
  fd = open(probe, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return -EINVAL;
  r = stamp(fd);
  if (r < 0)
    return r;
  if (fstat(fd, &st) < 0)
    return -errno;
  *ret = st.st_mtim;
  return 0;
}

/* Does H look silent (last stamped more than LEASES leases away from the
 * server's now, either way)? A hint that makes a single try worth a watch,
 * and what a probe reports; never a reason to break. */
static bool looks_silent(const char *path, const struct holder *h, double leases)
{
  CLEANUP_FREE char *dir = kb_dirname(path);
  struct timespec now = { 0, 0 };
  double age;

  if (!dir || server_now(dir, &now) < 0)
    return false;
  age = (double) (now.tv_sec - h->mtime.tv_sec) + (now.tv_nsec - h->mtime.tv_nsec) / 1e9;
  return age > kb_lock_lease_seconds() * leases || age < -kb_lock_lease_seconds() * leases;
}

/* --- Watching: a lock is broken only after we saw it unchanged for a
 * whole lease on our monotonic clock, looking at least every half lease
 * (a gap, e.g. while the export did not answer us, starts the watch over:
 * the holder could not beat either). --- */

struct watch {
  char *path;
  uint64_t obs;
  int64_t first, last;
  struct watch *next;
};

static pthread_mutex_t watch_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct watch *watches;

/* Record an observation of PATH; returns how long (ms) it has been seen
 * unchanged. */
static int64_t watch_update(const char *path, uint64_t obs)
{
  int64_t now = kb_mono_ms(), unchanged = 0;
  struct watch *w;

  pthread_mutex_lock(&watch_mutex);
  for (w = watches; w; w = w->next)
    if (KB_STREQ(w->path, path))
      break;
  if (!w) {
    w = calloc(1, sizeof *w);
    if (w && !(w->path = strdup(path))) {
      free(w);
      w = NULL;
    }
    if (w) {
      w->obs = obs;
      w->first = w->last = now;
      w->next = watches;
      watches = w;
    }
  }
  if (w) {
    if (w->obs != obs || now - w->last > lease_ms() / 2) {
      w->obs = obs;
      w->first = now;
    }
    w->last = now;
    unchanged = now - w->first;
  }
  pthread_mutex_unlock(&watch_mutex);
  return unchanged;
}

static void watch_forget(const char *path)
{
  struct watch **pp, *w;

  pthread_mutex_lock(&watch_mutex);
  for (pp = &watches; (w = *pp); pp = &w->next)
    if (KB_STREQ(w->path, path)) {
      *pp = w->next;
      free(w->path);
      free(w);
      break;
    }
  pthread_mutex_unlock(&watch_mutex);
}

/* How a holder is judged: */
enum verdict { LIVE, DEAD_LOCAL, SILENT };

static enum verdict judge(const char *path, const struct holder *h, int64_t *ret_unchanged)
{
  int64_t unchanged;

  if (holder_is_local(h))
    return pid_alive(h->pid, h->start_time) ? LIVE : DEAD_LOCAL;
  unchanged = watch_update(path, h->obs);
  if (ret_unchanged)
    *ret_unchanged = unchanged;
  return unchanged >= lease_ms() ? SILENT : LIVE;
}

/* Unlink PATH only if it is still the file H describes. */
static int unlink_if_same(const char *path, const struct holder *h)
{
  struct holder now;
  int r = holder_read(path, &now);

  if (r < 0)
    return r == -ENOENT ? 0 : r;
  if (now.obs != h->obs)
    return -EAGAIN;
  if (unlink(path) < 0 && errno != ENOENT)
    return -errno;
  return 0;
}

static void sleep_ms(long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
    ;
}

/* Back off with jitter so competing takers do not march in step, never
 * longer than a quarter lease (a watcher must look every half lease). */
static long backoff_ms(int tries)
{
  char hex[3] = "00";
  long wait, cap = (long) (lease_ms() / 4);

  (void) kb_random_hex(hex, 1);
  wait = (tries < 5 ? 20L << tries : 500) + (long) (strtoul(hex, NULL, 16) % 50);
  return wait < cap ? wait : cap;
}

/* Serialise breakers, releasers and fencing checks of PATH with
 * PATH.break, itself an O_EXCL lock file (not heartbeated: it is held for
 * milliseconds). A guard whose holder died is removed: at once when it was
 * a process of this kernel, after a watched lease otherwise. Waits until
 * DEADLINE (monotonic ms); -EAGAIN when it could not be had. */
static int guard_take(const char *path, int64_t deadline, struct kb_lock **ret)
{
  CLEANUP_FREE char *bpath = kb_printf("%s.break", path);
  int tries = 0;

  if (!bpath)
    return -ENOMEM;
  for (;;) {
    struct holder h;
    int64_t left;
    int r = lock_create(bpath, "break", ret);

    if (r != -EEXIST)
      return r;
    r = holder_read(bpath, &h);
    if (r == -ENOENT)
      continue;
    if (r < 0)
      return r;
    if (judge(bpath, &h, NULL) != LIVE) {
      r = unlink_if_same(bpath, &h);
      if (r < 0 && r != -EAGAIN)
        return r;
      watch_forget(bpath);
      continue;
    }
    left = deadline - kb_mono_ms();
    if (left <= 0)
      return -EAGAIN;
    {
      long wait = tries < 3 ? 5 : backoff_ms(tries - 3);
      sleep_ms(wait < left ? wait : (long) left);
    }
    tries++;
  }
}

static void guard_release(struct kb_lock *g)
{
  struct holder h;
  struct stat st;

  if (!g)
    return;
  if (lstat(g->path, &st) == 0 && st.st_dev == g->dev && st.st_ino == g->ino &&
      holder_read(g->path, &h) == 0 && KB_STREQ(h.token, g->token))
    (void) unlink(g->path);
  lock_free(g);
}

/* Remove PATH if it is still the file judged by JUDGED (VERDICT). Under
 * the guard, so that no fencing check or release of the holder runs in
 * between: 0 when it is gone or was removed, -EBUSY when it changed (a
 * live holder), -EAGAIN when the guard was busy. */
static int break_stale(const char *path, const struct holder *judged, enum verdict verdict)
{
  struct kb_lock *guard = NULL;
  struct holder h;
  int r;

  r = guard_take(path, kb_mono_ms() + 2000, &guard);
  if (r < 0)
    return r;
  r = holder_read(path, &h);
  if (r == -ENOENT)
    r = 0;
  else if (r == 0) {
    if (verdict == DEAD_LOCAL ? !holder_is_local(&h) || !KB_STREQ(h.token, judged->token) ||
                                 pid_alive(h.pid, h.start_time)
                              : h.obs != judged->obs)
      r = -EBUSY;     /* another file, or it moved: judge again */
    else if (unlink(path) < 0 && errno != ENOENT)
      r = -errno;
  }
  guard_release(guard);
  if (r == 0)
    watch_forget(path);
  return r;
}

/* The loop behind kb_lock_take and kb_lock_try. WATCH: a taker that may
 * wait watches silent-looking holders for a lease even past its timeout. */
static int take(const char *path, const char *purpose, int timeout_ms, bool watch,
                struct kb_lock **ret)
{
  int64_t deadline = timeout_ms < 0 ? INT64_MAX : kb_mono_ms() + timeout_ms;
  int tries = 0;
  bool hinted = false;

  for (;;) {
    struct kb_lock *lock = NULL;
    struct holder h;
    enum verdict v;
    int64_t left, unchanged = 0;
    int r = lock_create(path, purpose, &lock);

    if (r == 0) {
      r = hb_add(lock);
      if (r < 0) {
        (void) unlink(path);
        lock_free(lock);
        return r;
      }
      watch_forget(path);
      *ret = lock;
      return 0;
    }
    if (r != -EEXIST)
      return r;
    r = holder_read(path, &h);
    if (r == -ENOENT)
      continue;              /* released meanwhile */
    if (r < 0)
      return r;
    v = judge(path, &h, &unchanged);
    if (v != LIVE) {
      r = break_stale(path, &h, v);
      if (r == 0)
        continue;
      if (r != -EBUSY && r != -EAGAIN)
        return r;
    } else if (watch && !hinted && !holder_is_local(&h)) {
      /* A holder that looks silent is watched for a whole lease even by a
       * single try: otherwise a dead host's lock would never go. */
      hinted = true;
      if (looks_silent(path, &h, 0.5)) {
        int64_t until = kb_mono_ms() + lease_ms() - unchanged + 1000;
        if (until > deadline)
          deadline = until;
      }
    }
    left = deadline - kb_mono_ms();
    if (left <= 0)
      return -EBUSY;
    {
      long wait = backoff_ms(tries++);
      sleep_ms(wait < left ? wait : (long) left);
    }
  }
}

int kb_lock_take(const char *path, const char *purpose, int timeout_ms, struct kb_lock **ret)
{
  return take(path, purpose, timeout_ms, true, ret);
}

int kb_lock_try(const char *path, const char *purpose, struct kb_lock **ret)
{
  return take(path, purpose, 0, false, ret);
}

/* Is PATH still our file (same inode, our token)? Marks LOCK lost if not. */
static int still_ours(struct kb_lock *lock)
{
  struct holder h;
  struct stat st;
  int r = 0;

  if (lstat(lock->path, &st) < 0)
    r = errno == ENOENT ? -ENOLCK : -errno;
  else if (st.st_dev != lock->dev || st.st_ino != lock->ino)
    r = -ENOLCK;
  else if ((r = holder_read(lock->path, &h)) == 0 && !KB_STREQ(h.token, lock->token))
    r = -ENOLCK;
  else if (r == -ENOENT)
    r = -ENOLCK;
  if (r == -ENOLCK)
    __atomic_store_n(&lock->lost, true, __ATOMIC_SEQ_CST);
  return r;
}

void kb_lock_release(struct kb_lock *lock)
{
  struct kb_lock *guard = NULL;

  if (!lock)
    return;
  if (lock->pid != getpid()) {   /* a forked child's copy: not ours */
    lock_free(lock);
    return;
  }
  hb_remove(lock);
  /* Only under the guard, so a breaker cannot replace the file between
   * our check and our unlink. If the guard stays busy, the file is left:
   * with no more beats it is broken after a lease like a dead holder's. */
  if (guard_take(lock->path, kb_mono_ms() + 2000, &guard) == 0) {
    if (still_ours(lock) == 0)
      (void) unlink(lock->path);
    guard_release(guard);
  }
  lock_free(lock);
}

int kb_lock_fence(struct kb_lock *lock)
{
  struct kb_lock *guard = NULL;
  int r;

  if (!lock || lock->pid != getpid())
    return 0;                    /* a forked child writes under its parent's lock */
  if (kb_lock_lost(lock))
    return -ENOLCK;
  /* A beat that began less than a quarter lease ago proves as much as a
   * new one would: skip the I/O (a long pause since fails this test). */
  if (kb_mono_ms() - __atomic_load_n(&lock->ok_at, __ATOMIC_SEQ_CST) < lease_ms() / 4)
    return 0;
  r = guard_take(lock->path, kb_mono_ms() + lease_ms() + 2000, &guard);
  if (r < 0)
    return r == -EAGAIN ? -EBUSY : r;
  r = still_ours(lock);
  if (r == 0) {
    /* A beat under the guard: a breaker that watched us so far starts
     * over and needs a whole new lease of silence. */
    pthread_mutex_lock(&hb_mutex);
    r = beat(lock);
    if (r == -ENOLCK)
      __atomic_store_n(&lock->lost, true, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&hb_mutex);
  }
  guard_release(guard);
  return r;
}

int kb_lock_fence_all(void)
{
  struct kb_lock *held[64];
  size_t n = 0, i;
  struct kb_lock *l;
  int r = 0;

  pthread_once(&hb_once, hb_init);
  pthread_mutex_lock(&hb_mutex);
  for (l = hb_list; l && n < KB_ARRAY_SIZE(held); l = l->next)
    held[n++] = l;
  pthread_mutex_unlock(&hb_mutex);
  for (i = 0; i < n && r == 0; i++)
    r = kb_lock_fence(held[i]);
  return r;
}

int kb_lock_probe(const char *path, char **ret_holder)
{
  struct holder h;
  int r = holder_read(path, &h);

  if (r == -ENOENT)
    return 0;
  if (r < 0)
    return r;
  if (holder_is_local(&h) ? !pid_alive(h.pid, h.start_time) : looks_silent(path, &h, 1.0))
    return 0;
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
  /* No mutex: the heartbeat may be stuck in I/O holding it. */
  return __atomic_load_n(&lock->lost, __ATOMIC_SEQ_CST);
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

const char *kb_pid_ns(void)
{
  return pid_ns();
}

int kb_proc_alive(const char *host, const char *machine_id, const char *boot, const char *ns,
                  long long pid, unsigned long long start_time)
{
  if (!host || !KB_STREQ(host, kb_hostname()) || !machine_id || !KB_STREQ(machine_id, kb_machine_id()))
    return -EREMOTE;
  if (!boot || !KB_STREQ(boot, boot_id()))
    return 0;
  if (!ns || !KB_STREQ(ns, pid_ns()))
    return 1;   /* its pid means nothing here */
  return pid_alive(pid, start_time) ? 1 : 0;
}
