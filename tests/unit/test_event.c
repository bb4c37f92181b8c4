/* Events: plain lines off the journal, <N> prefixes on it (and the line
 * when no journald listens), notify.command run once with the event's
 * fields in its environment and killed after its timeout. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "event.h"
#include "log.h"
#include "util.h"

static char tmpl[] = "/tmp/kboss-test-event-XXXXXX";

/* Run EV with stderr redirected to a file (as the journal when JOURNAL);
 * return what was written. */
static char *capture(const struct kb_event *ev, bool journal)
{
  char path[64], buf[8192];
  int fd, saved;
  struct stat st;
  ssize_t n;

  snprintf(path, sizeof path, "%s/err", tmpl);
  fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert(fd >= 0);
  fstat(fd, &st);
  if (journal) {
    char v[64];
    snprintf(v, sizeof v, "%llu:%llu", (unsigned long long) st.st_dev, (unsigned long long) st.st_ino);
    setenv("JOURNAL_STREAM", v, 1);
  } else
    unsetenv("JOURNAL_STREAM");
  fflush(stderr);
  saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  kb_log_init(journal ? "/x/prog-journal" : "/x/prog-plain");
  kb_event(ev);
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  n = pread(fd, buf, sizeof buf - 1, 0);
  close(fd);
  buf[n > 0 ? n : 0] = '\0';
  return strdup(buf);
}

Test(event, plain_off_the_journal_prefixed_on_it)
{
  struct kb_event ev = { KB_EV_BACKUP_FAILED, NULL, "web1", NULL, NULL, "VM web1: backup failed: disk full" };
  char *out;

  cr_assert(mkdtemp(tmpl));
  kb_event_configure(NULL);
  out = capture(&ev, false);
  cr_assert_str_eq(out, "prog-plain: VM web1: backup failed: disk full\n");
  free(out);
  if (access("/run/systemd/journal/socket", F_OK) == 0)
    return;   /* a journald would take the event */
  out = capture(&ev, true);
  cr_assert_str_eq(out, "<3>prog-journal: VM web1: backup failed: disk full\n");
  free(out);
}

Test(event, notify_command_gets_the_fields_and_is_bounded)
{
  char script[128], out[128], cmd[300];
  struct kb_event ev = { KB_EV_HASH_MISMATCH, "0e2c4b1a-0000-4000-8000-000000000001", "web1",
                         "20261201T000000Z-abcdef", "hash-20261201T000000Z-abcdef", "hash mismatch\nforged" };
  CLEANUP_FREE char *text = NULL;
  FILE *f;
  int64_t t0;

  cr_assert(mkdtemp(tmpl) || errno == EEXIST || 1);
  snprintf(script, sizeof script, "%s/notify.sh", tmpl);
  snprintf(out, sizeof out, "%s/notify.out", tmpl);
  f = fopen(script, "w");
  cr_assert(f);
  fprintf(f, "#!/bin/sh\necho \"$1 $KBOSS_EVENT $KBOSS_VM $KBOSS_BACKUP $KBOSS_JOB $KBOSS_MESSAGE\" >> %s\n"
             "[ \"$1\" = slow ] && sleep 30\nexit 0\n", out);
  fclose(f);
  chmod(script, 0700);
  snprintf(cmd, sizeof cmd, "%s fast", script);
  cr_assert_eq(kb_event_run_notify(cmd, 5, &ev), 0);
  cr_assert_eq(kb_read_file(out, &text, NULL), 0);
  cr_assert_str_eq(text, "fast hash-mismatch 0e2c4b1a-0000-4000-8000-000000000001 20261201T000000Z-abcdef "
                         "hash-20261201T000000Z-abcdef hash mismatch\\x0aforged\n");
  snprintf(cmd, sizeof cmd, "%s slow", script);
  t0 = kb_mono_ms();
  cr_assert_eq(kb_event_run_notify(cmd, 1, &ev), -ETIME);
  cr_assert_lt(kb_mono_ms() - t0, 5000, "the slow command was killed after its timeout");
  cr_assert_eq(kb_event_run_notify("relative/path", 1, &ev), -EINVAL);
}
