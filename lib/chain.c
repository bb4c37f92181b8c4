/* The backing-chain validator (see chain.h for the rules). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "chain.h"
#include "qcow2.h"
#include "qcow2-format.h"
#include "util.h"

#define MAX_COMPONENTS 32

/* A path inside the chain folder, as normalized components. */
struct relpath {
  size_t n;
  const char *c[MAX_COMPONENTS];
};

static int fail(char **ret_error, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char **ret_error, int err, const char *fmt, ...)
{
  va_list ap;

  if (ret_error) {
    char *m = NULL;
    va_start(ap, fmt);
    if (vasprintf(&m, fmt, ap) < 0)
      m = NULL;
    va_end(ap);
    free(*ret_error);
    *ret_error = m;
  }
  return err;
}

/* Append the '/'-separated NAME (modified in place) to P: "." and empty
 * parts vanish, ".." drops the last part and may not leave the folder,
 * anything else must be a plain name.  -EPERM when a rule is broken. */
static int rel_append(struct relpath *p, char *name)
{
  char *save = NULL, *part;

  for (part = strtok_r(name, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
    if (KB_STREQ(part, "."))
      continue;
    if (KB_STREQ(part, "..")) {
      if (p->n == 0)
        return -EPERM;
      p->n--;
      continue;
    }
    if (!kb_name_ok(part) || p->n == MAX_COMPONENTS)
      return -EPERM;
    p->c[p->n++] = part;
  }
  return p->n > 0 ? 0 : -EPERM;
}

static char *rel_join(const struct relpath *p)
{
  size_t i, len = 0;
  char *s, *q;

  for (i = 0; i < p->n; i++)
    len += strlen(p->c[i]) + 1;
  s = malloc(len + 1);
  if (!s)
    return NULL;
  q = s;
  for (i = 0; i < p->n; i++) {
    size_t l = strlen(p->c[i]);
    if (i)
      *q++ = '/';
    memcpy(q, p->c[i], l);
    q += l;
  }
  *q = '\0';
  return s;
}

/* Open REL below DIRFD without following a symlink anywhere; the file
 * itself non-blocking, so a planted FIFO cannot stall us. */
static int open_member(int dirfd, const struct relpath *p)
{
  int cur = dirfd, fd;
  size_t i;

  for (i = 0; i + 1 < p->n; i++) {
    int next = openat(cur, p->c[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    if (cur != dirfd)
      close(cur);
    if (next < 0)
      return -e;
    cur = next;
  }
  fd = openat(cur, p->c[p->n - 1], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    fd = -errno;
  if (cur != dirfd)
    close(cur);
  return fd;
}

void kb_chain_free(struct kb_chain *c)
{
  size_t i;

  if (!c)
    return;
  for (i = 0; i < c->n; i++) {
    free(c->files[i]);
    free(c->rel[i]);
  }
  free(c->files);
  free(c->rel);
  free(c->virtual_sizes);
  free(c->dir);
  free(c);
}

static int chain_add(struct kb_chain *c, const char *rel, uint64_t vsize)
{
  c->rel[c->n] = strdup(rel);
  c->files[c->n] = kb_printf("%s/%s", c->dir, rel);
  if (!c->rel[c->n] || !c->files[c->n]) {
    free(c->rel[c->n]);
    free(c->files[c->n]);
    return -ENOMEM;
  }
  c->virtual_sizes[c->n] = vsize;
  c->n++;
  return 0;
}

int kb_chain_validate(const char *dir, const char *top, struct kb_chain **ret, char **ret_error)
{
  struct kb_chain *c = NULL;
  struct relpath p = { 0, { NULL } };
  CLEANUP_FREE char *namebuf = NULL, *cur_rel = NULL;
  CLEANUP_CLOSE int dirfd = -1;
  dev_t devs[KB_CHAIN_MAX_DEPTH];
  ino_t inos[KB_CHAIN_MAX_DEPTH];
  size_t dl;
  int r;

  if (ret_error)
    *ret_error = NULL;
  *ret = NULL;
  dl = strlen(dir);
  while (dl > 1 && dir[dl - 1] == '/')
    dl--;
  if (strncmp(top, dir, dl) == 0 && top[dl] == '/')
    namebuf = strdup(top + dl + 1);
  else if (top[0] != '/')
    namebuf = strdup(top);
  else
    return fail(ret_error, -EPERM, "%s: not inside the chain folder %.*s", top, (int) dl, dir);
  if (!namebuf)
    return -ENOMEM;
  if (rel_append(&p, namebuf) < 0)
    return fail(ret_error, -EPERM, "%s: not a plain path inside the chain folder %.*s", top, (int) dl, dir);

  /* The folder itself must not be a symlink planted on the export. */
  dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dirfd < 0) {
    r = errno == ELOOP || errno == ENOTDIR ? -EPERM : -errno;
    return fail(ret_error, r, "chain folder %s: %s", dir,
                errno == ELOOP || errno == ENOTDIR ? "is a symlink or not a folder" : strerror(errno));
  }

  c = calloc(1, sizeof *c);
  if (!c || !(c->dir = strndup(dir, dl)) || !(c->files = calloc(KB_CHAIN_MAX_DEPTH + 1, sizeof(char *))) ||
      !(c->rel = calloc(KB_CHAIN_MAX_DEPTH + 1, sizeof(char *))) ||
      !(c->virtual_sizes = calloc(KB_CHAIN_MAX_DEPTH, sizeof(uint64_t)))) {
    r = -ENOMEM;
    goto out;
  }
  cur_rel = rel_join(&p);
  if (!cur_rel) {
    r = -ENOMEM;
    goto out;
  }

  for (;;) {
    struct kb_qcow2 *img = NULL;
    const struct kb_qcow2_info *in;
    CLEANUP_FREE char *errmsg = NULL, *bname = NULL;
    CLEANUP_CLOSE int fd = -1;
    struct stat st;
    size_t i;

    fd = open_member(dirfd, &p);
    if (fd < 0) {
      r = fd == -ELOOP || fd == -ENOTDIR ? -EPERM : fd;
      fail(ret_error, r, "%s/%s: %s", c->dir, cur_rel,
           fd == -ELOOP ? "is a symlink (chain members are opened without following symlinks)" :
           fd == -ENOTDIR ? "a folder on its path is a symlink or not a folder" : strerror(-fd));
      goto out;
    }
    if (fstat(fd, &st) < 0) {
      r = -errno;
      fail(ret_error, r, "%s/%s: %s", c->dir, cur_rel, strerror(-r));
      goto out;
    }
    if (!S_ISREG(st.st_mode)) {
      r = -EPERM;
      fail(ret_error, r, "%s/%s: not a regular file", c->dir, cur_rel);
      goto out;
    }
    for (i = 0; i < c->n; i++)
      if (devs[i] == st.st_dev && inos[i] == st.st_ino) {
        r = -EPERM;
        fail(ret_error, r, "%s/%s: the backing chain loops (it is also %s)", c->dir, cur_rel, c->files[i]);
        goto out;
      }
    if (c->n == KB_CHAIN_MAX_DEPTH) {
      r = -EPERM;
      fail(ret_error, r, "%s: the backing chain is longer than %d images", c->files[0], KB_CHAIN_MAX_DEPTH);
      goto out;
    }
    devs[c->n] = st.st_dev;
    inos[c->n] = st.st_ino;

    r = kb_qcow2_open_fd(fd, &img, &errmsg);
    if (r < 0) {
      if (r != -ENOMEM)
        r = -EPERM;
      fail(ret_error, r, "%s/%s: not a qcow2 image kboss accepts: %s", c->dir, cur_rel,
           errmsg ? errmsg : strerror(-r));
      goto out;
    }
    in = kb_qcow2_get_info(img);
    /* The reader refuses these already; say so here too, as a rule. */
    if (in->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
      kb_qcow2_close(img);
      r = -EPERM;
      fail(ret_error, r, "%s/%s: has an external data file", c->dir, cur_rel);
      goto out;
    }
    r = chain_add(c, cur_rel, in->virtual_size);
    if (r < 0 || !in->backing_file) {
      kb_qcow2_close(img);
      if (r < 0)
        goto out;
      break;                  /* the base */
    }
    if (!in->backing_format || !KB_STREQ(in->backing_format, "qcow2")) {
      r = -EPERM;
      fail(ret_error, r, "%s/%s: its backing file %s has %s%s; kboss requires an explicit qcow2 backing format",
           c->dir, cur_rel, in->backing_file, in->backing_format ? "format " : "no backing format",
           in->backing_format ? in->backing_format : "");
      kb_qcow2_close(img);
      goto out;
    }
    bname = strdup(in->backing_file);
    if (!bname) {
      kb_qcow2_close(img);
      r = -ENOMEM;
      goto out;
    }
    if (bname[0] == '/' || strchr(bname, ':')) {
      r = -EPERM;
      fail(ret_error, r, "%s/%s: backing file name \"%s\" is %s; only relative names inside the chain folder are followed",
           c->dir, cur_rel, in->backing_file, bname[0] == '/' ? "absolute" : "a json:/protocol name");
      kb_qcow2_close(img);
      goto out;
    }
    /* Resolve it relative to the member's own folder. */
    p.n--;
    r = rel_append(&p, bname);
    if (r < 0) {
      fail(ret_error, -EPERM, "%s/%s: backing file name \"%s\" leaves the chain folder %s or is not a plain name",
           c->dir, cur_rel, in->backing_file, c->dir);
      r = -EPERM;
      kb_qcow2_close(img);
      goto out;
    }
    kb_qcow2_close(img);
    {
      /* P points into NAMEBUF and BNAME: rebuild it on one buffer. */
      char *joined = rel_join(&p);
      if (!joined) {
        r = -ENOMEM;
        goto out;
      }
      free(cur_rel);
      cur_rel = joined;
      free(namebuf);
      namebuf = strdup(joined);
      if (!namebuf) {
        r = -ENOMEM;
        goto out;
      }
      p.n = 0;
      (void) rel_append(&p, namebuf);
    }
  }
  c->virtual_size = c->virtual_sizes[0];
  *ret = c;
  return 0;

out:
  kb_chain_free(c);
  return r;
}

char *kb_chain_qemu_json(const struct kb_chain *c, const char *overlay)
{
  json_object *node = NULL;
  char *s = NULL;
  size_t i = c->n;
  bool top_done = overlay == NULL;

  for (;;) {
    json_object *o = json_object_new_object(), *file = json_object_new_object();
    const char *fn;

    if (i == 0 && top_done) {
      json_object_put(o);
      json_object_put(file);
      break;
    }
    fn = i > 0 ? c->files[--i] : (top_done = true, overlay);
    if (!o || !file) {
      json_object_put(o);
      json_object_put(file);
      json_object_put(node);
      return NULL;
    }
    json_object_object_add(file, "driver", json_object_new_string("file"));
    json_object_object_add(file, "filename", json_object_new_string(fn));
    json_object_object_add(o, "driver", json_object_new_string("qcow2"));
    json_object_object_add(o, "file", file);
    json_object_object_add(o, "backing", node);   /* NULL at the base: "backing": null */
    node = o;
  }
  s = kb_printf("json:%s", json_object_to_json_string_ext(node, JSON_C_TO_STRING_PLAIN |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put(node);
  return s;
}

char *kb_qemu_json_single(const char *path)
{
  char *files[2] = { (char *) path, NULL };
  struct kb_chain one = { .n = 1, .files = files };

  return kb_chain_qemu_json(&one, NULL);
}

/* Has the server started listening on SOCK? */
static bool nbd_listening(const char *sock)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd, r;

  if (strlen(sock) >= sizeof sa.sun_path)
    return false;
  strcpy(sa.sun_path, sock);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  r = connect(fd, (struct sockaddr *) &sa, sizeof sa);
  close(fd);
  return r == 0;
}

/* qemu-nbd runs as our child, not daemonised (--fork): it gets SIGTERM when
 * this process dies in any way, kill -9 included, so no server is left
 * holding the backup's files open. */
int kb_chain_nbd_start(const struct kb_chain *c, struct kb_chain_nbd *ret, char **ret_error)
{
  CLEANUP_FREE char *spec = kb_chain_qemu_json(c, NULL);
  CLEANUP_FREE char *sockopt = NULL;
  const char *tmp = getenv("TMPDIR");
  const struct timespec step = { 0, 20 * 1000 * 1000 };
  pid_t parent = getpid(), pid;
  int r, status;

  if (ret_error)
    *ret_error = NULL;
  memset(ret, 0, sizeof *ret);
  ret->dir = kb_printf("%s/kboss-nbd-XXXXXX", tmp && tmp[0] == '/' ? tmp : "/tmp");
  if (!spec || !ret->dir)
    goto nomem;
  if (!mkdtemp(ret->dir)) {
    r = -errno;
    free(ret->dir);
    ret->dir = NULL;
    return fail(ret_error, r, "cannot make a folder for the NBD socket: %s", strerror(-r));
  }
  ret->sock = kb_printf("%s/sock", ret->dir);
  sockopt = ret->sock ? kb_printf("--socket=%s", ret->sock) : NULL;
  if (!sockopt)
    goto nomem;
  {
    const char *argv[] = { QEMU_NBD, "--read-only", "--persistent", "--shared=4", sockopt, spec, NULL };

    pid = fork();
    if (pid < 0) {
      r = -errno;
      kb_chain_nbd_stop(ret);
      return fail(ret_error, r, "cannot start qemu-nbd: %s", strerror(-r));
    }
    if (pid == 0) {
      int nul = open("/dev/null", O_RDWR);
      (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent || nul < 0)
        _exit(127);
      dup2(nul, 0);
      dup2(nul, 1);
      dup2(nul, 2);
      execv(argv[0], (char *const *) argv);
      _exit(127);
    }
  }
  ret->pid = pid;
  /* Wait (at most 30 s) until it listens, or has exited. */
  for (int i = 0; i < 1500; i++) {
    if (nbd_listening(ret->sock))
      return 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      ret->pid = 0;
      break;
    }
    nanosleep(&step, NULL);
  }
  kb_chain_nbd_stop(ret);
  return fail(ret_error, -EIO, "qemu-nbd could not serve the chain of %s", c->files[0]);
nomem:
  kb_chain_nbd_stop(ret);
  return -ENOMEM;
}

void kb_chain_nbd_stop(struct kb_chain_nbd *s)
{
  if (s->pid > 1 && kill(s->pid, SIGTERM) == 0) {
    const struct timespec step = { 0, 20 * 1000 * 1000 };
    int i;
    for (i = 0; i < 250 && waitpid(s->pid, NULL, WNOHANG) == 0; i++)
      nanosleep(&step, NULL);
    if (i == 250) {   /* 5 s: it does not stop */
      (void) kill(s->pid, SIGKILL);
      (void) waitpid(s->pid, NULL, 0);
    }
  }
  if (s->dir)
    (void) kb_rm_rf(s->dir);
  free(s->dir);
  free(s->sock);
  memset(s, 0, sizeof *s);
}
