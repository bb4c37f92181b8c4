#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

void kb_cleanup_free(void *ptr)
{
  free(*(void **) ptr);
}

void kb_cleanup_close(int *fd)
{
  if (*fd >= 0)
    (void) close(*fd);
}

void kb_cleanup_fclose(FILE **fp)
{
  if (*fp)
    (void) fclose(*fp);
}

bool kb_name_ok(const char *name)
{
  size_t n;

  if (!name || !*name || name[0] == '.' || name[0] == '-')
    return false;
  for (n = 0; name[n]; n++) {
    unsigned char c = name[n];
    if (!(isalnum(c) || c == '.' || c == '_' || c == '-'))
      return false;
    if (n >= 128)
      return false;
  }
  return true;
}

bool kb_uuid_ok(const char *uuid)
{
  static const int dash[] = { 8, 13, 18, 23 };
  size_t i, d = 0;

  if (!uuid || strlen(uuid) != 36)
    return false;
  for (i = 0; i < 36; i++) {
    if (d < 4 && (int) i == dash[d]) {
      if (uuid[i] != '-')
        return false;
      d++;
    } else if (!isxdigit((unsigned char) uuid[i]))
      return false;
  }
  return true;
}

char *kb_printf(const char *fmt, ...)
{
  va_list ap;
  char *s;
  int r;

  va_start(ap, fmt);
  r = vasprintf(&s, fmt, ap);
  va_end(ap);
  return r < 0 ? NULL : s;
}

int kb_mkdir_p(const char *dir, mode_t mode)
{
  CLEANUP_FREE char *copy = strdup(dir);
  struct stat st;
  char *p;

  if (!copy)
    return -ENOMEM;
  for (p = copy + 1; ; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      *p = '\0';
      if (mkdir(copy, mode) < 0 && errno != EEXIST)
        return -errno;
      if (lstat(copy, &st) < 0)
        return -errno;
      if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
      *p = saved;
      if (saved == '\0')
        break;
    }
  }
  return 0;
}

int kb_read_fd(int fd, char **ret, size_t *ret_len)
{
  struct stat st;
  char *buf;
  size_t len = 0, cap;

  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return -EINVAL;
  /* A planted huge (or sparse) file is refused before any allocation. */
  if (st.st_size < 0 || (uint64_t) st.st_size > KB_READ_MAX)
    return -EFBIG;
  cap = (size_t) st.st_size + 1;
  buf = malloc(cap);
  if (!buf)
    return -ENOMEM;
  for (;;) {
    ssize_t r;
    if (len + 1 >= cap) {
      char *n;
      if (cap > KB_READ_MAX) {    /* it grew while we read */
        free(buf);
        return -EFBIG;
      }
      n = realloc(buf, cap * 2);
      if (!n) {
        free(buf);
        return -ENOMEM;
      }
      buf = n;
      cap *= 2;
    }
    r = read(fd, buf + len, cap - len - 1);
    if (r < 0) {
      int e = errno;
      if (e == EINTR)
        continue;
      free(buf);
      return -e;
    }
    if (r == 0)
      break;
    len += (size_t) r;
  }
  buf[len] = '\0';
  *ret = buf;
  if (ret_len)
    *ret_len = len;
  return 0;
}

int kb_read_file(const char *path, char **ret, size_t *ret_len)
{
  CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

  if (fd < 0)
    return -errno;
  return kb_read_fd(fd, ret, ret_len);
}

char *kb_dirname(const char *path)
{
  const char *slash = strrchr(path, '/');

  if (!slash)
    return strdup(".");
  if (slash == path)
    return strdup("/");
  return strndup(path, slash - path);
}

int kb_write_all(int fd, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = write(fd, p, len);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int kb_write_file_atomic(const char *path, const void *buf, size_t len, unsigned mode)
{
  CLEANUP_FREE char *dir = kb_dirname(path);
  CLEANUP_FREE char *tmp = NULL;
  const char *base;
  char rnd[17];
  int fd, dfd, r;

  if (!dir)
    return -ENOMEM;
  r = kb_random_hex(rnd, 8);
  if (r < 0)
    return r;
  base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
  tmp = kb_printf("%s/.%s.%s.tmp", dir, base, rnd);
  if (!tmp)
    return -ENOMEM;
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  r = kb_write_all(fd, buf, len);
  if (r == 0 && fchmod(fd, (mode_t) mode) < 0)
    r = -errno;
  if (r == 0 && fsync(fd) < 0)
    r = -errno;
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r == 0 && rename(tmp, path) < 0)
    r = -errno;
  if (r < 0) {
    (void) unlink(tmp);
    return r;
  }
  /* The rename itself is durable once the folder is. */
  dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void) fsync(dfd);
    (void) close(dfd);
  }
  return 0;
}

int kb_copy_owner(const char *from, int fd)
{
  struct stat st;

  if (lstat(from, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return -EPERM;
  if (fchown(fd, st.st_uid, st.st_gid) < 0 && errno != EPERM)
    return -errno;
  if (fchmod(fd, st.st_mode & 07777) < 0)
    return -errno;
  return 0;
}

int kb_rename_over(const char *tmp, const char *dst)
{
  struct stat before, after;

  if (lstat(tmp, &before) < 0)
    return -errno;
  if (rename(tmp, dst) == 0)
    return 0;
  if (errno == ENOENT && lstat(tmp, &after) < 0 && lstat(dst, &after) == 0 &&
      after.st_ino == before.st_ino && after.st_dev == before.st_dev)
    return 0;
  return -errno;
}

void kb_remove_prefixed(const char *dir, const char *prefix)
{
  size_t pl = strlen(prefix);
  struct dirent *de;
  DIR *d;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

  if (fd < 0)
    return;
  if (!(d = fdopendir(fd))) {
    close(fd);
    return;
  }
  while ((de = readdir(d)))
    if (strncmp(de->d_name, prefix, pl) == 0 || (de->d_name[0] == '.' && strncmp(de->d_name + 1, prefix, pl) == 0))
      (void) unlinkat(fd, de->d_name, 0);
  closedir(d);
}

uint64_t kb_file_usage(const char *path)
{
  struct stat st;

  if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode))
    return 0;
  return (uint64_t) st.st_blocks * 512;
}

int kb_fsync_path(const char *path)
{
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC), r = 0;

  if (fd < 0)
    return -errno;
  if (fsync(fd) < 0)
    r = -errno;
  (void) close(fd);
  return r;
}

int kb_fsync_parent(const char *path)
{
  CLEANUP_FREE char *dir = kb_dirname(path);
  int fd, r = 0;

  if (!dir)
    return -ENOMEM;
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fsync(fd) < 0 && errno != EINVAL)
    r = -errno;
  close(fd);
  return r;
}

const char *kb_hostname(void)
{
  static char name[HOST_NAME_MAX + 1];
  const char *env = getenv("KBOSS_HOSTNAME");  /* tests pose as several hosts */

  if (env)
    return kb_name_ok(env) ? env : "";
  if (name[0])
    return name;
  /* No fallback: a made-up name ("localhost") shared by several hosts would
   * let them take each other's locks as their own. "" means unknown. */
  if (gethostname(name, sizeof name - 1) < 0 || !kb_name_ok(name))
    name[0] = '\0';
  return name;
}

static bool machine_id_ok(const char *s)
{
  size_t i;

  for (i = 0; i < 32; i++)
    if (!isxdigit((unsigned char) s[i]) || isupper((unsigned char) s[i]))
      return false;
  return s[32] == '\0';
}

const char *kb_machine_id(void)
{
  static const char *const files[] = { "/etc/machine-id", "/var/lib/dbus/machine-id" };
  static char id[33];
  const char *env = getenv("KBOSS_MACHINE_ID");   /* tests pose as several hosts */
  size_t i;

  if (env)
    return machine_id_ok(env) ? env : "";
  if (id[0])
    return id;
  for (i = 0; i < KB_ARRAY_SIZE(files) && !id[0]; i++) {
    char buf[64];
    int fd = open(files[i], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
      continue;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
      continue;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    if (machine_id_ok(buf))
      memcpy(id, buf, sizeof id);
  }
  return id;
}

int kb_host_identity_check(void)
{
  return kb_hostname()[0] && kb_machine_id()[0] ? 0 : -ENXIO;
}

const char *kb_run_dir(void)
{
  const char *env = getenv("KBOSS_RUN_DIR");   /* tests */

  return env && env[0] == '/' ? env : "/run/kboss";
}

int64_t kb_clock_skew(void)
{
  const char *env = getenv("KBOSS_TEST_CLOCK_SKEW");
  long long skew;

  return env && kb_parse_ll(env, &skew) == 0 ? (int64_t) skew : 0;
}

int64_t kb_now(void)
{
  return (int64_t) time(NULL) + kb_clock_skew();
}

int64_t kb_mono_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kb_format_time(int64_t t, char *buf, size_t len)
{
  time_t tt = (time_t) t;
  struct tm tm;

  gmtime_r(&tt, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int kb_parse_ll(const char *s, long long *ret)
{
  char *end;
  long long v;

  if (!s || !*s)
    return -EINVAL;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno || *end || end == s)
    return -EINVAL;
  *ret = v;
  return 0;
}

int kb_parse_double(const char *s, double *ret)
{
  char *end;
  double v;

  if (!s || !*s)
    return -EINVAL;
  errno = 0;
  v = strtod(s, &end);
  if (errno || *end || end == s || v != v)
    return -EINVAL;
  *ret = v;
  return 0;
}

int kb_parse_bool(const char *s, bool *ret)
{
  static const char *const yes[] = { "true", "yes", "on", "1" };
  static const char *const no[] = { "false", "no", "off", "0" };
  size_t i;

  if (!s)
    return -EINVAL;
  for (i = 0; i < KB_ARRAY_SIZE(yes); i++) {
    if (strcasecmp(s, yes[i]) == 0) {
      *ret = true;
      return 0;
    }
    if (strcasecmp(s, no[i]) == 0) {
      *ret = false;
      return 0;
    }
  }
  return -EINVAL;
}

int kb_random_hex(char *buf, size_t nbytes)
{
  unsigned char raw[64];
  size_t i;

  if (nbytes > sizeof raw)
    return -EINVAL;
  if (getrandom(raw, nbytes, 0) != (ssize_t) nbytes)
    return -errno;
  for (i = 0; i < nbytes; i++)
    sprintf(buf + 2 * i, "%02x", raw[i]);
  return 0;
}

static int rm_rf_at(int parent, const char *name)
{
  struct stat st;
  int fd, r = 0;
  DIR *d;
  struct dirent *de;

  if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
    return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(st.st_mode))
    return unlinkat(parent, name, 0) < 0 && errno != ENOENT ? -errno : 0;
  fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  while ((de = readdir(d))) {
    if (KB_STREQ(de->d_name, ".") || KB_STREQ(de->d_name, ".."))
      continue;
    int k = rm_rf_at(dirfd(d), de->d_name);
    if (k < 0 && r == 0)
      r = k;
  }
  closedir(d);
  if (unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
    r = -errno;
  return r;
}

int kb_rm_rf(const char *path)
{
  return rm_rf_at(AT_FDCWD, path);
}

void kb_format_size(uint64_t bytes, char *buf, size_t len)
{
  static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = (double) bytes;
  size_t u = 0;

  while (v >= 1024 && u + 1 < KB_ARRAY_SIZE(unit)) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%llu B", (unsigned long long) bytes);
  else
    snprintf(buf, len, "%.1f %s", v, unit[u]);
}

static int spawn_program(const char *const argv[], bool want_output, bool die_with_parent, struct kb_child *ret)
{
  int pipefd[2] = { -1, -1 };
  pid_t pid, parent;

  ret->pid = -1;
  ret->out_fd = -1;
  if (want_output && pipe2(pipefd, O_CLOEXEC) < 0)
    return -errno;
  parent = getpid();
  pid = fork();
  if (pid < 0) {
    int e = errno;
    if (pipefd[0] >= 0) {
      close(pipefd[0]);
      close(pipefd[1]);
    }
    return -e;
  }
  if (pid == 0) {
    int fd = want_output ? pipefd[1] : open("/dev/null", O_WRONLY);
    int nul = open("/dev/null", O_RDONLY);
    /* Killed with -9, the caller takes the program with it: no orphan
     * qemu-img keeps writing a temporary file. */
    if (die_with_parent)
      (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (fd < 0 || nul < 0 || (die_with_parent && getppid() != parent))
      _exit(127);
    dup2(nul, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    execv(argv[0], (char *const *) argv);
    _exit(127);
  }
  if (want_output)
    close(pipefd[1]);
  ret->pid = pid;
  ret->out_fd = pipefd[0];
  return 0;
}

int kb_spawn(const char *const argv[], bool want_output, struct kb_child *ret)
{
  return spawn_program(argv, want_output, true, ret);
}

int kb_spawn_wait(struct kb_child *child, char **ret_output)
{
  char *out = NULL;
  size_t len = 0, cap = 0;
  int status;

  if (child->pid <= 0)
    return -ECHILD;
  if (child->out_fd >= 0) {
    for (;;) {
      ssize_t r;
      if (len + 4096 + 1 > cap) {
        char *n = realloc(out, cap ? cap * 2 : 8192);
        if (!n)
          break;
        out = n;
        cap = cap ? cap * 2 : 8192;
      }
      r = read(child->out_fd, out + len, cap - len - 1);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        break;
      len += r;
    }
    close(child->out_fd);
    child->out_fd = -1;
  }
  while (waitpid(child->pid, &status, 0) < 0) {
    if (errno != EINTR) {
      int e = errno;
      free(out);
      child->pid = -1;
      return -e;
    }
  }
  child->pid = -1;
  if (ret_output) {
    if (!out)
      out = strdup("");
    else
      out[len] = '\0';
    *ret_output = out;
  } else {
    free(out);
  }
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

static int run_program(const char *const argv[], char **ret_output, bool die_with_parent)
{
  struct kb_child child;
  int r = spawn_program(argv, ret_output != NULL, die_with_parent, &child);

  return r < 0 ? r : kb_spawn_wait(&child, ret_output);
}

int kb_run(const char *const argv[], char **ret_output)
{
  return run_program(argv, ret_output, true);
}

int kb_run_to_end(const char *const argv[], char **ret_output)
{
  return run_program(argv, ret_output, false);
}

static volatile sig_atomic_t *signal_flag;

static void on_signal(int sig)
{
  (void) sig;
  if (signal_flag)
    *signal_flag = 1;
}

void kb_catch_signals(volatile sig_atomic_t *flag)
{
  struct sigaction sa;

  signal_flag = flag;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
}
