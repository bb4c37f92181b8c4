/* LD_PRELOAD shim for tests: read(), pread() and readv() on a file whose
 * path contains $KBOSS_EIO_MATCH fail with EIO, as an NFS client reports a
 * server-side read error. With $KBOSS_EIO_SWITCH set, only while that file
 * exists (a test turns the fault on and off without restarting anything).
 * And readdir() leaves out names containing $KBOSS_HIDE_MATCH, as a stale
 * NFS directory cache would (the file itself can still be opened by name).
 * Nothing else changes: opening, stat and writes work. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int faulty(int fd)
{
  const char *match = getenv("KBOSS_EIO_MATCH");
  const char *sw = getenv("KBOSS_EIO_SWITCH");
  char link[64], path[4096];
  ssize_t n;
  int saved = errno;

  if (!match || !*match)
    return 0;
  if (sw && *sw && access(sw, F_OK) != 0) {
    errno = saved;
    return 0;
  }
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof path - 1);
  errno = saved;
  if (n <= 0)
    return 0;
  path[n] = '\0';
  return strstr(path, match) != NULL;
}

ssize_t read(int fd, void *buf, size_t len)
{
  static ssize_t (*real)(int, void *, size_t);

  if (!real)
    real = (ssize_t (*)(int, void *, size_t)) dlsym(RTLD_NEXT, "read");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd, buf, len);
}

ssize_t pread(int fd, void *buf, size_t len, off_t off)
{
  static ssize_t (*real)(int, void *, size_t, off_t);

  if (!real)
    real = (ssize_t (*)(int, void *, size_t, off_t)) dlsym(RTLD_NEXT, "pread");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd, buf, len, off);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off)
{
  static ssize_t (*real)(int, void *, size_t, off_t);

  if (!real)
    real = (ssize_t (*)(int, void *, size_t, off_t)) dlsym(RTLD_NEXT, "pread64");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd, buf, len, off);
}

ssize_t readv(int fd, const struct iovec *iov, int n)
{
  static ssize_t (*real)(int, const struct iovec *, int);

  if (!real)
    real = (ssize_t (*)(int, const struct iovec *, int)) dlsym(RTLD_NEXT, "readv");
  if (faulty(fd)) {
    errno = EIO;
    return -1;
  }
  return real(fd, iov, n);
}

static int hidden(const char *name)
{
  const char *match = getenv("KBOSS_HIDE_MATCH");

  return match && *match && strstr(name, match) != NULL;
}

struct dirent *readdir(DIR *d)
{
  static struct dirent *(*real)(DIR *);
  struct dirent *de;

  if (!real)
    real = (struct dirent *(*)(DIR *)) dlsym(RTLD_NEXT, "readdir");
  while ((de = real(d)) && hidden(de->d_name))
    ;
  return de;
}

struct dirent64 *readdir64(DIR *d)
{
  static struct dirent64 *(*real)(DIR *);
  struct dirent64 *de;

  if (!real)
    real = (struct dirent64 *(*)(DIR *)) dlsym(RTLD_NEXT, "readdir64");
  while ((de = real(d)) && hidden(de->d_name))
    ;
  return de;
}
