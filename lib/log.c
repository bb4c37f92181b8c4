#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

const char *kb_progname = "kboss";
int kb_verbosity = 1;

void kb_log_init(const char *argv0)
{
  const char *slash = strrchr(argv0, '/');
  const char *v = getenv("KBOSS_DEBUG");

  kb_progname = slash ? slash + 1 : argv0;
  if (v && *v && strcmp(v, "0") != 0)
    kb_verbosity = 3;
}

void kb_log(int priority, const char *fmt, ...)
{
  int saved = errno;
  va_list ap;
  char msg[4096];

  if (priority >= LOG_INFO && kb_verbosity < (priority == LOG_DEBUG ? 3 : 1))
    return;
  if (priority == LOG_NOTICE && kb_verbosity < 2)
    return;
  va_start(ap, fmt);
  errno = saved;  /* so that %m works */
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (isatty(STDERR_FILENO))
    fprintf(stderr, "%s: %s\n", kb_progname, msg);
  else
    fprintf(stderr, "<%d>%s: %s\n", priority, kb_progname, msg);
  errno = saved;
}

void kb_progress_start(struct kb_progress *p, const char *what, uint64_t total)
{
  const char *env = getenv("KBOSS_PROGRESS");

  p->what = what;
  p->total = total;
  p->start_ms = kb_mono_ms();
  p->last_ms = 0;
  if (env && *env)
    p->enabled = strcmp(env, "0") != 0;
  else
    p->enabled = isatty(STDERR_FILENO) && kb_verbosity >= 1;
}

void kb_progress_update(struct kb_progress *p, uint64_t done)
{
  int64_t now = kb_mono_ms();
  double secs, rate;
  char d[32], t[32];

  if (!p->enabled || now - p->last_ms < 250)
    return;
  p->last_ms = now;
  secs = (now - p->start_ms) / 1000.0;
  rate = secs > 0 ? done / secs / 1048576.0 : 0;
  kb_format_size(done, d, sizeof d);
  kb_format_size(p->total, t, sizeof t);
  if (p->total)
    fprintf(stderr, "\r%s: %s: %s / %s (%.0f%%), %.1f MiB/s   ", kb_progname, p->what, d, t,
            100.0 * done / p->total, rate);
  else
    fprintf(stderr, "\r%s: %s: %s, %.1f MiB/s   ", kb_progname, p->what, d, rate);
  if (!isatty(STDERR_FILENO))
    fputc('\n', stderr);
}

void kb_progress_end(struct kb_progress *p)
{
  if (p->enabled && p->last_ms && isatty(STDERR_FILENO))
    fputc('\n', stderr);
}
