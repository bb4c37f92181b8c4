#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>

#include "localstate.h"
#include "lock.h"
#include "util.h"

#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR "/var"
#endif

static const char *dir_from_env(const char *var, const char *def)
{
  const char *d = getenv(var);
  return d && d[0] == '/' ? d : def;
}

static const char *state_dir(void)
{
  return dir_from_env("KBOSS_STATE_DIR", LOCALSTATEDIR "/lib/kboss");
}

static const char *run_dir(void)
{
  return dir_from_env("KBOSS_RUN_DIR", "/run/kboss");
}

bool kb_xml_has_kboss_metadata(const char *xml)
{
  xmlDocPtr doc;
  xmlXPathContextPtr ctx = NULL;
  xmlXPathObjectPtr obj = NULL;
  bool found = false;

  if (!xml || !*xml)
    return false;
  doc = xmlReadMemory(xml, (int) strlen(xml), "domain.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc)
    return false;
  ctx = xmlXPathNewContext(doc);
  if (ctx && xmlXPathRegisterNs(ctx, BAD_CAST "k", BAD_CAST KB_DOMAIN_NS) == 0)
    obj = xmlXPathEvalExpression(BAD_CAST "/domain/metadata/k:vm", ctx);
  found = obj && obj->type == XPATH_NODESET && obj->nodesetval && obj->nodesetval->nodeNr > 0;
  xmlXPathFreeObject(obj);
  xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);
  return found;
}

static char *vm_file(const char *uuid)
{
  if (!kb_uuid_ok(uuid)) {
    errno = EINVAL;
    return NULL;
  }
  return kb_printf("%s/vms/%s", state_dir(), uuid);
}

static char *restoring_file(const char *uuid)
{
  if (!kb_uuid_ok(uuid)) {
    errno = EINVAL;
    return NULL;
  }
  return kb_printf("%s/restoring/%s", run_dir(), uuid);
}

static int write_new(const char *path, const char *text)
{
  CLEANUP_FREE char *dir = kb_dirname(path);
  int fd, r;

  if (!dir)
    return -ENOMEM;
  r = kb_mkdir_p(dir, 0700);
  if (r < 0)
    return r;
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  r = text ? kb_write_all(fd, text, strlen(text)) : 0;
  if (close(fd) < 0 && r == 0)
    r = -errno;
  return r;
}

int kb_local_mark_vm(const char *uuid)
{
  CLEANUP_FREE char *p = vm_file(uuid);
  struct stat st;

  if (!p)
    return -errno;
  if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
    return 0;
  return write_new(p, NULL);
}

bool kb_local_vm_known(const char *uuid)
{
  CLEANUP_FREE char *p = vm_file(uuid);
  struct stat st;

  return p && lstat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int kb_local_forget_vm(const char *uuid)
{
  CLEANUP_FREE char *p = vm_file(uuid);

  if (!p)
    return -errno;
  return unlink(p) < 0 && errno != ENOENT ? -errno : 0;
}

/* Field 22 of /proc/PID/stat (start time since boot): tells a live process
 * from a later one that reused its pid. */
static int start_time(long pid, unsigned long long *ret)
{
  char path[64], buf[1024];
  CLEANUP_CLOSE int fd = -1;
  ssize_t n;
  char *p;

  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  n = read(fd, buf, sizeof buf - 1);
  if (n <= 0)
    return -EIO;
  buf[n] = '\0';
  p = strrchr(buf, ')');
  if (!p)
    return -EINVAL;
  p++;
  for (int field = 3; field < 22; field++) {
    p = strchr(p + 1, ' ');
    if (!p)
      return -EINVAL;
  }
  *ret = strtoull(p + 1, NULL, 10);
  return 0;
}

int kb_local_restoring_begin(const char *uuid)
{
  CLEANUP_FREE char *p = restoring_file(uuid), *text = NULL;
  unsigned long long st = 0;

  if (!p)
    return -errno;
  (void) start_time((long) getpid(), &st);
  text = kb_printf("pid=%ld\nstart_time=%llu\n", (long) getpid(), st);
  return text ? write_new(p, text) : -ENOMEM;
}

static int read_marker(const char *path, long *ret_pid, unsigned long long *ret_start)
{
  CLEANUP_FREE char *text = NULL;
  char *s;
  size_t len;
  int r;

  r = kb_read_file(path, &text, &len);
  if (r < 0)
    return r;
  s = strstr(text, "pid=");
  if (!s || (s != text && s[-1] != '\n'))
    return -EINVAL;
  *ret_pid = strtol(s + 4, NULL, 10);
  s = strstr(text, "start_time=");
  *ret_start = s ? strtoull(s + 11, NULL, 10) : 0;
  return *ret_pid > 0 ? 0 : -EINVAL;
}

void kb_local_restoring_end(const char *uuid)
{
  CLEANUP_FREE char *p = restoring_file(uuid);
  unsigned long long st;
  long pid;

  if (p && read_marker(p, &pid, &st) == 0 && pid == (long) getpid())
    (void) unlink(p);
}

void kb_local_restoring_clear(const char *uuid)
{
  CLEANUP_FREE char *p = restoring_file(uuid);

  if (p)
    (void) unlink(p);
}

int kb_local_restoring(const char *uuid, long *ret_pid)
{
  CLEANUP_FREE char *p = restoring_file(uuid);
  unsigned long long want, have;
  long pid;
  int r;

  if (!p)
    return -errno;
  r = read_marker(p, &pid, &want);
  if (r == -ENOENT)
    return 0;
  if (r < 0)
    return r;
  if (!want && start_time(pid, &have) == 0)
    want = have;  /* no start time recorded: any process of that pid */
  /* Gone, reused, or a zombie: not restoring. */
  if (kb_proc_alive(kb_hostname(), kb_machine_id(), kb_boot_id(), kb_pid_ns(), pid, want) == 0)
    return 0;
  if (ret_pid)
    *ret_pid = pid;
  return 1;
}
