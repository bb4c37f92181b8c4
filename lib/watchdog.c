#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kbconfig.h"
#include "log.h"
#include "util.h"
#include "watchdog.h"

#define PROBE_INTERVAL_MS 2000
#define RECOVER_LIMIT_S 45     /* the recovery itself may meet a hung libvirt */
#define MAX_NOTES 32

static int note_fd = -1;       /* worker: write end of the notes pipe */
static char **probe_paths;     /* supervisor: what the probe opens */
static size_t n_probe_paths;

struct note {
  char *key, *value;
};
static struct note notes[MAX_NOTES];
static size_t n_notes;

static volatile sig_atomic_t pending_signal;

const char *kb_watchdog_get(const char *key)
{
  for (size_t i = 0; i < n_notes; i++)
    if (KB_STREQ(notes[i].key, key))
      return notes[i].value;
  return NULL;
}

const char *kb_watchdog_get_prefixed(const char *prefix, size_t n)
{
  for (size_t i = 0; i < n_notes; i++)
    if (notes[i].value && strncmp(notes[i].key, prefix, strlen(prefix)) == 0 && n-- == 0)
      return notes[i].value;
  return NULL;
}

static void set_note(const char *key, const char *value)
{
  size_t i;

  for (i = 0; i < n_notes; i++)
    if (KB_STREQ(notes[i].key, key))
      break;
  if (i == n_notes) {
    if (n_notes == MAX_NOTES || !value)
      return;
    notes[i].key = strdup(key);
    notes[i].value = NULL;
    if (!notes[i].key)
      return;
    n_notes++;
  }
  free(notes[i].value);
  notes[i].value = value ? strdup(value) : NULL;
}

bool kb_watchdog_active(void)
{
  return note_fd >= 0;
}

void kb_watchdog_wait_export(void)
{
  for (size_t i = 0; i < n_probe_paths; i++) {
    int d = open(probe_paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d >= 0)
      close(d);
  }
}

void kb_watchdog_note(const char *key, const char *value)
{
  CLEANUP_FREE char *line = NULL;

  if (note_fd < 0 || !key || strchr(key, ' ') || strchr(key, '\n') || (value && strchr(value, '\n')))
    return;
  line = value ? kb_printf("%s %s\n", key, value) : kb_printf("%s\n", key);
  if (line)
    (void) kb_write_all(note_fd, line, strlen(line));
}

/* --- the probe --- */

static void probe_loop(int fd, char **paths, size_t n)
{
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
  for (;;) {
    bool all = true;
    for (size_t i = 0; i < n; i++) {
      /* Opening the folder makes an NFS client ask the server
       * (close-to-open), where a stat could be answered from its cache. */
      int d = open(paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      struct stat st;
      if (d < 0 || fstat(d, &st) < 0)
        all = false;   /* missing or refused: an answer all the same */
      if (d >= 0)
        close(d);
    }
    (void) all;
    if (write(fd, "b", 1) < 0 && errno == EPIPE)
      _exit(0);
    usleep(PROBE_INTERVAL_MS * 1000);
  }
}

/* --- the supervisor --- */

static void forward(int sig)
{
  pending_signal = sig;
}

static void recover_overdue(int sig)
{
  static const char msg[] = "kboss: secondary storage not responding; cleaning up after the hung job "
                            "did not finish either\n";
  (void) sig;
  (void) !write(2, msg, sizeof msg - 1);
  _exit(1);
}

static void read_notes(int fd, char *buf, size_t *used, size_t cap, bool *eof)
{
  ssize_t k = read(fd, buf + *used, cap - 1 - *used);
  char *line, *nl;

  if (k == 0)
    *eof = true;
  if (k <= 0)
    return;
  *used += (size_t) k;
  buf[*used] = '\0';
  line = buf;
  while ((nl = strchr(line, '\n'))) {
    char *sp;
    *nl = '\0';
    sp = strchr(line, ' ');
    if (sp) {
      *sp = '\0';
      set_note(line, sp + 1);
    } else
      set_note(line, NULL);
    line = nl + 1;
  }
  *used -= (size_t) (line - buf);
  memmove(buf, line, *used);
  if (*used == cap - 1)
    *used = 0;   /* an over-long line: dropped */
}

static int exit_status(int status)
{
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return 1;
}

static void supervise(pid_t worker, pid_t probe, int notes_rd, int beats_rd, unsigned timeout_s,
                      char **paths, size_t npaths, kb_watchdog_recover_fn recover)
{
  char buf[4096];
  size_t used = 0;
  bool notes_eof = false;
  int64_t last_beat = kb_mono_ms();
  struct sigaction sa;
  /* Readable when the worker has ended: its end is seen at once. */
  int worker_fd = pidfd_open(worker, 0);

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  for (;;) {
    struct pollfd p[3] = { { notes_eof ? -1 : notes_rd, POLLIN, 0 }, { beats_rd, POLLIN, 0 },
                           { worker_fd, POLLIN, 0 } };
    int status;
    pid_t w;

    if (pending_signal) {
      (void) kill(worker, pending_signal);
      pending_signal = 0;
    }
    /* After the notes pipe's EOF the worker is exiting: without a pidfd,
     * look for its end often, or its last poll would add up to half a
     * second to the run. */
    if (poll(p, 3, notes_eof && worker_fd < 0 ? 5 : 500) > 0) {
      if (!notes_eof && (p[0].revents & (POLLIN | POLLHUP)))
        read_notes(notes_rd, buf, &used, sizeof buf, &notes_eof);
      if (p[1].revents & POLLIN) {
        char b[64];
        if (read(beats_rd, b, sizeof b) > 0)
          last_beat = kb_mono_ms();
      }
    }
    w = waitpid(worker, &status, WNOHANG);
    if (w == worker) {
      /* Notes written just before the end are of no use any more. */
      (void) kill(probe, SIGKILL);
      (void) waitpid(probe, NULL, 0);
      exit(exit_status(status));
    }
    if (kb_mono_ms() - last_beat > (int64_t) timeout_s * 1000) {
      CLEANUP_FREE char *done = NULL;
      CLEANUP_FREE char *where = NULL;

      (void) kill(-worker, SIGKILL);
      (void) kill(worker, SIGKILL);
      (void) kill(probe, SIGKILL);
      /* Take whatever the worker still said before it died. */
      while (!notes_eof && poll(p, 1, 0) > 0 && (p[0].revents & (POLLIN | POLLHUP)))
        read_notes(notes_rd, buf, &used, sizeof buf, &notes_eof);
      for (size_t i = 0; i < npaths; i++) {
        char *nw = kb_printf("%s%s%s", where ? where : "", where ? ", " : "", paths[i]);
        free(where);
        where = nw;
      }
      signal(SIGALRM, recover_overdue);
      alarm(RECOVER_LIMIT_S);
      done = recover ? recover() : NULL;
      kb_err("secondary storage not responding: no answer from %s for %u s (storage.timeout); "
             "the job was stopped%s%s",
             where ? where : "the export", timeout_s, done ? "; " : "", done ? done : "");
      /* A worker stuck in the kernel may not be gone yet: do not wait for it. */
      for (int k = 0; k < 20 && waitpid(worker, NULL, WNOHANG) == 0; k++)
        usleep(100 * 1000);
      _exit(1);
    }
  }
}

int kb_watchdog_start(const struct kb_config *cfg, kb_watchdog_recover_fn recover)
{
  const char *no = getenv("KBOSS_NO_WATCHDOG");
  const char *secondary = kb_config_str(cfg, NULL, "secondary.path");
  long long timeout = kb_config_int(cfg, NULL, "storage.timeout");
  char *paths[33];
  size_t npaths = 0;
  const struct kb_store *s;
  int notes_p[2], beats_p[2];
  pid_t worker, probe;

  if ((no && KB_STREQ(no, "1")) || note_fd >= 0)
    return 0;   /* off, or we are a worker already */
  if (timeout < 1)
    timeout = 60;
  if (secondary && *secondary)
    paths[npaths++] = strdup(secondary);
  for (unsigned i = 0; (s = kb_config_store_at(cfg, i)) && npaths < KB_ARRAY_SIZE(paths); i++) {
    bool dup = false;
    for (size_t k = 0; k < npaths; k++)
      if (paths[k] && KB_STREQ(paths[k], s->path))
        dup = true;
    if (!dup && s->path)
      paths[npaths++] = strdup(s->path);
  }
  for (size_t k = 0; k < npaths; k++)
    if (!paths[k])
      return -ENOMEM;
  if (npaths == 0)
    return 0;
  if (pipe2(notes_p, O_CLOEXEC) < 0)
    return -errno;
  if (pipe2(beats_p, O_CLOEXEC) < 0) {
    close(notes_p[0]);
    close(notes_p[1]);
    return -errno;
  }
  fflush(NULL);
  worker = fork();
  if (worker < 0)
    return -errno;
  if (worker == 0) {
    /* A group of its own: the qemu-img and other children it runs go
     * with it when the supervisor kills it. */
    (void) setpgid(0, 0);
    close(notes_p[0]);
    close(beats_p[0]);
    close(beats_p[1]);
    note_fd = notes_p[1];
    /* The supervisor forwards SIGINT and SIGTERM; if it dies without
     * forwarding (kill -9, a crash), the worker dies the same way, so that
     * killing the program an operator started kills its job, as it did
     * before the supervisor existed. */
    (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
      _exit(1);   /* the supervisor died before the line above */
    for (size_t k = 0; k < npaths; k++)
      free(paths[k]);
    return 0;
  }
  (void) setpgid(worker, worker);
  probe = fork();
  if (probe < 0) {
    /* No probe, no guard: let the worker do its job unguarded. */
    close(beats_p[1]);
    probe = 0;
  } else if (probe == 0) {
    close(notes_p[0]);
    close(notes_p[1]);
    close(beats_p[0]);
    probe_loop(beats_p[1], paths, npaths);
    _exit(0);
  }
  close(notes_p[1]);
  close(beats_p[1]);
  if (probe == 0) {
    int status;
    while (waitpid(worker, &status, 0) < 0 && errno == EINTR)
      ;
    exit(exit_status(status));
  }
  probe_paths = paths;
  n_probe_paths = npaths;
  supervise(worker, probe, notes_p[0], beats_p[0], (unsigned) timeout, paths, npaths, recover);
  _exit(1);
}
