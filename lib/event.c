#include <config.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

#include "event.h"
#include "kbconfig.h"
#include "log.h"
#include "util.h"

static const struct {
  const char *name;
  const char *id;
  int priority;
} kinds[] = {
  [KB_EV_BACKUP_DONE] = { "backup-done", "b03804225ef44e22b2915f93def22bea", LOG_INFO },
  [KB_EV_BACKUP_FAILED] = { "backup-failed", "605010e7c71f4ae2a679e0330ef41966", LOG_ERR },
  [KB_EV_VALIDATION_PASSED] = { "validation-passed", "8c5d023ca09048ef8bf565384d10c9b7", LOG_INFO },
  [KB_EV_VALIDATION_FAILED] = { "validation-failed", "8daf4c62c2c74ab4be49195bcbb1c21f", LOG_ERR },
  [KB_EV_HASH_MISMATCH] = { "hash-mismatch", "8d09ce5aa3bc469ea387c9b64eedfb3f", LOG_ERR },
  [KB_EV_COMPRESSION_DONE] = { "compression-done", "72a1bf80546341aab91e5ae796fe5c2b", LOG_INFO },
  [KB_EV_COMPRESSION_FAILED] = { "compression-failed", "9bf133aaacf748999cfccbcacd83d788", LOG_ERR },
  [KB_EV_PRUNE] = { "prune", "232e0727e0ce4483b979125d9fa9eb76", LOG_INFO },
  [KB_EV_VM_BACKUP_ERROR] = { "vm-backup-error", "3fb9868deba746888868aaac17219fdd", LOG_ERR },
};

static char *notify_command;
static int notify_timeout = 10;

const char *kb_event_name(enum kb_event_kind kind)
{
  return (unsigned) kind < KB_ARRAY_SIZE(kinds) ? kinds[kind].name : "unknown";
}

const char *kb_event_message_id(enum kb_event_kind kind)
{
  return (unsigned) kind < KB_ARRAY_SIZE(kinds) ? kinds[kind].id : "00000000000000000000000000000000";
}

bool kb_event_is_failure(enum kb_event_kind kind)
{
  return (unsigned) kind < KB_ARRAY_SIZE(kinds) && kinds[kind].priority <= LOG_ERR;
}

void kb_event_configure(const struct kb_config *cfg)
{
  struct kb_value v;
  const char *c = cfg && kb_config_lookup(cfg, NULL, "notify.command", &v) == 0 ? v.value : NULL;

  free(notify_command);
  notify_command = c && *c ? strdup(c) : NULL;
  if (cfg)
    notify_timeout = (int) kb_config_int(cfg, NULL, "notify.timeout");
}

/* libsystemd (with libgcrypt, liblzma, liblz4 and libcap behind it) is
 * loaded only when an event goes to the journal: linked, it added five
 * libraries to the start of every run (docs/performance.md). */
static __typeof__(sd_journal_send) *journal_send(void)
{
  static __typeof__(sd_journal_send) *fn;
  static bool tried;
  void *h;

  if (!tried) {
    tried = true;
    h = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (h)
      fn = (__typeof__(sd_journal_send) *) dlsym(h, "sd_journal_send");
  }
  return fn;
}

static int to_journal(const struct kb_event *ev, int priority, const char *text)
{
  __typeof__(sd_journal_send) *send;

  /* sd_journal_send() drops the entry silently when no journald listens. */
  if (access("/run/systemd/journal/socket", F_OK) < 0)
    return -errno;
  send = journal_send();
  if (!send)
    return -ENOSYS;
  return send("MESSAGE=%s: %s", kb_progname, text, "PRIORITY=%d", priority,
                         "SYSLOG_IDENTIFIER=%s", kb_progname, "MESSAGE_ID=%s", kb_event_message_id(ev->kind),
                         "KBOSS_EVENT=%s", kb_event_name(ev->kind), "KBOSS_VM=%s", ev->vm ? ev->vm : "",
                         "KBOSS_VM_NAME=%s", ev->vm_name ? ev->vm_name : "", "KBOSS_BACKUP=%s",
                         ev->backup ? ev->backup : "", "KBOSS_JOB=%s", ev->job ? ev->job : "",
                         "KBOSS_HOST=%s", kb_hostname(), NULL);
}

void kb_event(const struct kb_event *ev)
{
  int priority = (unsigned) ev->kind < KB_ARRAY_SIZE(kinds) ? kinds[ev->kind].priority : LOG_INFO;
  CLEANUP_FREE char *text = kb_escape_text(ev->message ? ev->message : kb_event_name(ev->kind), false);
  int r;

  if (!text)
    return;
  if (!kb_log_journal() || to_journal(ev, priority, text) < 0)
    kb_log(priority, "%s", text);
  if (kb_event_is_failure(ev->kind) && notify_command) {
    r = kb_event_run_notify(notify_command, notify_timeout, ev);
    if (r == -ETIME)
      kb_warn("notify.command did not finish in %d s: killed", notify_timeout);
    else if (r < 0)
      kb_warn("notify.command failed: %s", r == -EIO ? "it exited with an error" : strerror(-r));
  }
}

static int push_env(char **env, size_t *n, const char *key, const char *value)
{
  CLEANUP_FREE char *esc = kb_escape_text(value ? value : "", false);

  if (!esc || !(env[*n] = kb_printf("%s=%s", key, esc)))
    return -ENOMEM;
  (*n)++;
  return 0;
}

int kb_event_run_notify(const char *command, int timeout_s, const struct kb_event *ev)
{
  char *argv[33], *env[16] = { NULL }, *copy, *save = NULL, *t, tbuf[32];
  size_t argc = 0, n = 0;
  int r = 0, status;
  pid_t pid;
  int64_t deadline;

  if (!command || command[0] != '/')
    return -EINVAL;
  copy = strdup(command);
  if (!copy)
    return -ENOMEM;
  for (t = strtok_r(copy, " \t", &save); t && argc < KB_ARRAY_SIZE(argv) - 1; t = strtok_r(NULL, " \t", &save))
    argv[argc++] = t;
  argv[argc] = NULL;
  kb_format_time(kb_now(), tbuf, sizeof tbuf);
  if (r == 0) r = push_env(env, &n, "KBOSS_EVENT", kb_event_name(ev->kind));
  if (r == 0) r = push_env(env, &n, "KBOSS_MESSAGE_ID", kb_event_message_id(ev->kind));
  if (r == 0) r = push_env(env, &n, "KBOSS_VM", ev->vm);
  if (r == 0) r = push_env(env, &n, "KBOSS_VM_NAME", ev->vm_name);
  if (r == 0) r = push_env(env, &n, "KBOSS_BACKUP", ev->backup);
  if (r == 0) r = push_env(env, &n, "KBOSS_JOB", ev->job);
  if (r == 0) r = push_env(env, &n, "KBOSS_MESSAGE", ev->message);
  if (r == 0) r = push_env(env, &n, "KBOSS_HOST", kb_hostname());
  if (r == 0) r = push_env(env, &n, "KBOSS_PROGRAM", kb_progname);
  if (r == 0) r = push_env(env, &n, "KBOSS_TIME", tbuf);
  if (r == 0) r = push_env(env, &n, "PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
  if (r < 0)
    goto out;
  fflush(NULL);
  pid = fork();
  if (pid < 0) {
    r = -errno;
    goto out;
  }
  if (pid == 0) {
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    setpgid(0, 0);
    if (fd >= 0) {
      dup2(fd, STDIN_FILENO);
      dup2(fd, STDOUT_FILENO);
    }
    signal(SIGPIPE, SIG_DFL);
    execve(argv[0], argv, env);
    _exit(127);
  }
  setpgid(pid, pid);
  deadline = kb_mono_ms() + (int64_t) timeout_s * 1000;
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      r = WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
      break;
    }
    if (w < 0 && errno != EINTR) {
      r = -errno;
      break;
    }
    if (kb_mono_ms() >= deadline) {
      kill(-pid, SIGKILL);
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
      r = -ETIME;
      break;
    }
    struct timespec ts = { 0, 20 * 1000 * 1000 };
    nanosleep(&ts, NULL);
  }
out:
  for (size_t i = 0; i < n; i++)
    free(env[i]);
  free(copy);
  return r;
}
