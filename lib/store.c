#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

/* mountinfo escapes blanks and backslashes as \ooo. */
static void unescape_octal(char *s)
{
  char *w = s;

  for (; *s; s++) {
    if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
        s[3] <= '7') {
      *w++ = (char) ((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
      s += 3;
    } else
      *w++ = *s;
  }
  *w = '\0';
}

/* Is PATH (absolute, no trailing slash) listed as a mount point? Catches
 * bind mounts of the parent's own filesystem, whose st_dev is the same. */
static bool listed_in_mountinfo(const char *path)
{
  FILE *f = fopen("/proc/self/mountinfo", "re");
  char *line = NULL;
  size_t cap = 0;
  bool found = false;

  if (!f)
    return false;
  while (!found && getline(&line, &cap, f) > 0) {
    /* id parent major:minor root MOUNT-POINT ... */
    char *save = NULL, *tok = strtok_r(line, " ", &save);
    for (int i = 0; tok && i < 4; i++)
      tok = strtok_r(NULL, " ", &save);
    if (tok) {
      unescape_octal(tok);
      found = KB_STREQ(tok, path);
    }
  }
  free(line);
  fclose(f);
  return found;
}

static char *strip(const char *path)
{
  size_t n = strlen(path);

  while (n > 1 && path[n - 1] == '/')
    n--;
  return strndup(path, n);
}

static int is_mount_point(const char *path, const struct stat *st)
{
  CLEANUP_FREE char *parent = NULL;
  struct stat pst;

  if (KB_STREQ(path, "/"))
    return 1;
  parent = kb_printf("%s/..", path);
  if (!parent)
    return -ENOMEM;
  if (stat(parent, &pst) < 0)
    return -errno;
  if (pst.st_dev != st->st_dev)
    return 1;
  return listed_in_mountinfo(path) ? 1 : 0;
}

static int marked(const char *path)
{
  CLEANUP_FREE char *m = kb_printf("%s/" KB_STORE_MARKER, path);
  struct stat st;

  if (!m)
    return -ENOMEM;
  if (lstat(m, &st) < 0)
    return errno == ENOENT ? 0 : -errno;
  return S_ISREG(st.st_mode) ? 1 : 0;
}

int kb_store_check(const char *path)
{
  CLEANUP_FREE char *p = NULL;
  struct stat st;
  int r;

  if (!path || path[0] != '/')
    return -EINVAL;
  p = strip(path);
  if (!p)
    return -ENOMEM;
  if (stat(p, &st) < 0)
    return -errno;
  if (!S_ISDIR(st.st_mode))
    return -ENOTDIR;
  r = is_mount_point(p, &st);
  if (r != 0)
    return r < 0 ? r : 0;
  r = marked(p);
  if (r < 0)
    return r;
  return r ? 0 : -ENOMEDIUM;
}

int kb_store_init(const char *path, int *ret_mounted)
{
  CLEANUP_FREE char *p = NULL, *m = NULL, *text = NULL;
  char when[32];
  struct stat st;
  int fd, r, mounted;

  if (!path || path[0] != '/')
    return -EINVAL;
  p = strip(path);
  if (!p)
    return -ENOMEM;
  if (lstat(p, &st) < 0)
    return -errno;
  if (!S_ISDIR(st.st_mode))
    return -ENOTDIR;
  mounted = is_mount_point(p, &st);
  if (mounted < 0)
    return mounted;
  if (ret_mounted)
    *ret_mounted = mounted;
  m = kb_printf("%s/" KB_STORE_MARKER, strcmp(p, "/") ? p : "");
  kb_format_time(kb_now(), when, sizeof when);
  text = kb_printf("# kboss secondary store: kboss may write its catalog and backups here even\n"
                   "# though this folder is not a mount point (kbossctl init-store).\n"
                   "created = %s\nhost = %s\n",
                   when, kb_hostname());
  if (!m || !text)
    return -ENOMEM;
  fd = open(m, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST)
      return marked(p) == 1 ? 0 : -EEXIST;
    return -errno;
  }
  r = kb_write_all(fd, text, strlen(text));
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r < 0)
    (void) unlink(m);
  return r;
}

const char *kb_store_strerror(int r)
{
  if (r == -ENOMEDIUM)
    return "not a mount point, and not marked as a store by kbossctl init-store (is the export mounted?)";
  return strerror(r < 0 ? -r : r);
}
