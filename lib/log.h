/* Logging for kboss programs. Library code does not log except through
 * these; messages go to stderr as plain text, with "<N>" priority prefixes
 * only when stderr is the journal (kb_log_journal), so that journald files
 * them at the right level and a person reads plain lines. */
#ifndef KBOSS_LOG_H
#define KBOSS_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

extern const char *kb_progname;
extern int kb_verbosity;   /* 0 quiet, 1 normal, 2 verbose, 3 debug */

void kb_log_init(const char *argv0);
/* Whether stderr is the systemd journal: $JOURNAL_STREAM names the device
 * and inode of our own stderr. */
bool kb_log_journal(void);
/* S for a terminal or a log: every C0 control character (but '\n' and
 * '\t' when KEEP_NEWLINES), DEL, C1 control, bidirectional override and
 * byte that is not valid UTF-8 shown as \xNN, so that values read from
 * the export cannot drive a terminal or forge lines. The one escaping
 * function for tables, JSON and logs. Returns a new string, NULL on ENOMEM. */
char *kb_escape_text(const char *s, bool keep_newlines);
/* printf to stdout through kb_escape_text (newlines kept): table rows. */
void kb_print_escaped(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void kb_log(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define kb_err(...) kb_log(LOG_ERR, __VA_ARGS__)
#define kb_warn(...) kb_log(LOG_WARNING, __VA_ARGS__)
#define kb_info(...) kb_log(LOG_INFO, __VA_ARGS__)
#define kb_debug(...) kb_log(LOG_DEBUG, __VA_ARGS__)

/* Progress of long work: at most a few lines a second, on by default only
 * when stderr is a terminal (KBOSS_PROGRESS=1 forces it on). */
struct kb_progress {
  const char *what;
  uint64_t total;
  int64_t last_ms;
  int64_t start_ms;
  int enabled;
};

void kb_progress_start(struct kb_progress *p, const char *what, uint64_t total);
void kb_progress_update(struct kb_progress *p, uint64_t done);
void kb_progress_end(struct kb_progress *p);

#endif
