#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

const char *kb_progname = "kboss";
int kb_verbosity = 1;

bool kb_log_journal(void)
{
  const char *env;
  unsigned long long dev, ino;
  struct stat st;
  char end;

  /* Not cached: a program may redirect its stderr. */
  env = getenv("JOURNAL_STREAM");
  /* systemd sets JOURNAL_STREAM=DEV:INODE of the stream it connected to
   * stderr; a child whose stderr was redirected inherits the variable, so
   * the numbers must match our own stderr. */
  if (env && sscanf(env, "%llu:%llu%c", &dev, &ino, &end) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
      (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino)
    return true;
  return false;
}

void kb_log_init(const char *argv0)
{
  const char *slash = strrchr(argv0, '/');
  const char *v = getenv("KBOSS_DEBUG");

  kb_progname = slash ? slash + 1 : argv0;
  if (v && *v && strcmp(v, "0") != 0)
    kb_verbosity = 3;
}

/* Length of the valid UTF-8 sequence at S that is printable text (not a
 * C1 control nor a bidirectional override), or 0. */
static size_t utf8_printable(const unsigned char *s)
{
  uint32_t cp;
  size_t n, i;

  if (s[0] < 0x80)
    return 0;
  if ((s[0] & 0xe0) == 0xc0) {
    n = 2;
    cp = s[0] & 0x1f;
  } else if ((s[0] & 0xf0) == 0xe0) {
    n = 3;
    cp = s[0] & 0x0f;
  } else if ((s[0] & 0xf8) == 0xf0) {
    n = 4;
    cp = s[0] & 0x07;
  } else
    return 0;
  for (i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;  /* overlong, surrogate, out of range */
  if (cp < 0xa0 || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x2028 ||
      cp == 0x2029)
    return 0;
  return n;
}

char *kb_escape_text(const char *s, bool keep_newlines)
{
  const unsigned char *p = (const unsigned char *) (s ? s : "");
  size_t len = strlen((const char *) p), o = 0, k;
  char *out = malloc(len * 4 + 1);

  if (!out)
    return NULL;
  while (*p) {
    if ((*p >= 0x20 && *p < 0x7f) || (keep_newlines && (*p == '\n' || *p == '\t')))
      out[o++] = (char) *p++;
    else if ((k = utf8_printable(p)) > 0) {
      memcpy(out + o, p, k);
      o += k;
      p += k;
    } else {
      static const char hex[] = "0123456789abcdef";
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
      p++;
    }
  }
  out[o] = '\0';
  return out;
}

void kb_print_escaped(const char *fmt, ...)
{
  va_list ap;
  char *s = NULL, *e;

  va_start(ap, fmt);
  if (vasprintf(&s, fmt, ap) < 0)
    s = NULL;
  va_end(ap);
  e = s ? kb_escape_text(s, true) : NULL;
  if (e)
    fputs(e, stdout);
  free(e);
  free(s);
}

void kb_log(int priority, const char *fmt, ...)
{
  int saved = errno;
  va_list ap;
  char msg[4096], *esc;

  if (priority >= LOG_INFO && kb_verbosity < (priority == LOG_DEBUG ? 3 : 1))
    return;
  if (priority == LOG_NOTICE && kb_verbosity < 2)
    return;
  va_start(ap, fmt);
  errno = saved;  /* so that %m works */
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* Messages carry values read from the export: no control bytes. */
  esc = kb_escape_text(msg, true);
  if (kb_log_journal())
    fprintf(stderr, "<%d>%s: %s\n", priority, kb_progname, esc ? esc : "(out of memory)");
  else
    fprintf(stderr, "%s: %s\n", kb_progname, esc ? esc : "(out of memory)");
  free(esc);
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
  if (p->total && rate > 0 && done <= p->total) {
    long long eta = (long long) ((p->total - done) / (rate * 1048576.0) + 0.5);
    fprintf(stderr, "\r%s: %s: %s / %s (%.0f%%), %.1f MiB/s, ETA %lld:%02lld   ", kb_progname, p->what, d, t,
            100.0 * done / p->total, rate, eta / 60, eta % 60);
  } else if (p->total)
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
