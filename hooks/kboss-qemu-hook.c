/* kboss-qemu-hook: libvirt's qemu hook, installed as
 * /etc/libvirt/hooks/qemu.d/kboss.
 *
 * libvirt runs it as  kboss  DOMAIN OPERATION SUB-OPERATION EXTRA  with the
 * domain XML on stdin, holding the domain's job while it runs. So the hook
 * never calls into libvirt (that would deadlock), prints nothing on stdout
 * (for migrate and restore, stdout would replace the domain XML), uses
 * absolute paths only (PATH is scrubbed), returns at once and exits 0
 * except where refusing is the point.
 *
 * It never touches secondary storage: a hung NFS export must not block the
 * start of any VM. Whether a domain concerns kboss, and whether it is being
 * restored, it decides from local facts (localstate.h): kboss's element in
 * the domain's <metadata>, the VM's file in the local state folder and its
 * restoring marker in the run folder.
 * Domains that are none of kboss's business get nothing at all (no
 * configuration, no catalog). Whatever needs the catalog runs detached
 * (double fork + setsid), after libvirt has finished with the domain:
 * the hook re-runs itself as  kboss-qemu-hook --deferred EVENT DOMAIN UUID,
 * which reads the catalog (bounded by storage.timeout) and starts the
 * helper that applies.
 *
 * Reactions:
 *   prepare begin      VM being restored (live local marker): exit 1
 *   started / reconnect  checkpoint libvirt forgot: kboss-backup --redefine-checkpoints
 *   stopped end        Consolidating, no live holder: kboss-restore --consolidate
 *                      BackingUp/BackupError, no live holder: kboss-backup --normalize
 *   release end        validation VM (kboss-val-*): kboss-validate --cleanup
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "catalog.h"
#include "kbconfig.h"
#include "localstate.h"
#include "lock.h"
#include "log.h"
#include "record.h"
#include "store.h"
#include "util.h"

#ifndef SBINDIR
#define SBINDIR "/usr/local/sbin"
#endif
/* The default log under $(localstatedir), set by hooks/Makefile.am. */
#ifndef HOOK_LOG
#error "HOOK_LOG must be defined by the build"
#endif

#define VALIDATION_PREFIX "kboss-val-"
#define MAX_XML (16 * 1024 * 1024)

static const char *domain_name;

/* Where notes and the detached helpers' output go. */
static const char *log_path(void)
{
  const char *p = getenv("KBOSS_HOOK_LOG");
  return p && *p == '/' ? p : HOOK_LOG;
}

static int open_log(void)
{
  const char *path = log_path();
  CLEANUP_FREE char *dir = strdup(path);
  char *slash;
  int fd;

  if (dir && (slash = strrchr(dir, '/')) && slash != dir) {
    *slash = '\0';
    (void) kb_mkdir_p(dir, 0700);
  }
  fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
  return fd;
}

/* A line in the hook log (never stdout). */
static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
  int fd = open_log();
  char when[32];
  va_list ap;
  CLEANUP_FREE char *msg = NULL;

  if (fd < 0)
    return;
  va_start(ap, fmt);
  if (vasprintf(&msg, fmt, ap) < 0)
    msg = NULL;
  va_end(ap);
  kb_format_time(kb_now(), when, sizeof when);
  if (msg)
    dprintf(fd, "%s kboss-qemu-hook[%d] %s: %s\n", when, (int) getpid(),
            domain_name ? domain_name : "-", msg);
  close(fd);
}

static const char *sbindir(void)
{
  /* Tests install a wrapper as the hook that exports this (libvirt
   * scrubs the environment, so it never comes from libvirt itself). */
  const char *d = getenv("KBOSS_SBINDIR");
  return d && *d == '/' ? d : SBINDIR;
}

/* Run SBINDIR/PROG ARGS... detached: double fork, new session, stdin
 * /dev/null, stdout/stderr to the hook log, every other fd closed. The
 * hook only waits for the first child, which exits at once. */
static int spawn_detached(const char *prog, const char *const args[])
{
  CLEANUP_FREE char *path = prog[0] == '/' ? strdup(prog) : kb_printf("%s/%s", sbindir(), prog);
  const char *argv[16];
  size_t n = 0;
  pid_t pid;
  int status;

  if (!path)
    return -ENOMEM;
  if (access(path, X_OK) < 0) {
    note("%s is not installed: cannot run it (%s)", path, strerror(errno));
    return -ENOENT;
  }
  argv[n++] = path;
  for (size_t i = 0; args[i] && n < KB_ARRAY_SIZE(argv) - 1; i++)
    argv[n++] = args[i];
  argv[n] = NULL;

  pid = fork();
  if (pid < 0)
    return -errno;
  if (pid == 0) {
    pid_t pid2;
    int fd;

    if (setsid() < 0)
      _exit(1);
    pid2 = fork();
    if (pid2 < 0)
      _exit(1);
    if (pid2 > 0)
      _exit(0);
    fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || dup2(fd, 0) < 0)
      _exit(1);
    fd = open_log();
    if (fd < 0)
      fd = open("/dev/null", O_WRONLY);
    if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
      _exit(1);
    for (int k = 3; k < 1024; k++)
      close(k);
    if (chdir("/") < 0)
      _exit(1);
    umask(077);
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
    execv(argv[0], (char *const *) argv);
    _exit(127);
  }
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  {
    char line[512];
    size_t used = 0;
    line[0] = '\0';
    for (size_t i = 0; argv[i] && used < sizeof line; i++) {
      int k = snprintf(line + used, sizeof line - used, "%s%s", i ? " " : "", argv[i]);
      if (k < 0)
        break;
      used += (size_t) k;
    }
    note("started %s", line);
  }
  return 0;
}

/* The whole of stdin (libvirt writes the domain XML there; read it all so
 * libvirt never sees a broken pipe). */
static char *read_stdin(void)
{
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);

  if (!buf)
    return NULL;
  for (;;) {
    ssize_t k;
    if (len + 1 >= cap) {
      char *nb;
      if (cap >= MAX_XML)
        break;
      cap *= 2;
      nb = realloc(buf, cap);
      if (!nb) {
        free(buf);
        return NULL;
      }
      buf = nb;
    }
    k = read(0, buf + len, cap - 1 - len);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      break;
    len += (size_t) k;
  }
  buf[len] = '\0';
  return buf;
}

/* /domain/uuid of the XML, or NULL. */
static char *domain_uuid(const char *xml)
{
  xmlDocPtr doc;
  xmlXPathContextPtr ctx = NULL;
  xmlXPathObjectPtr obj = NULL;
  char *uuid = NULL;

  if (!xml || !*xml)
    return NULL;
  doc = xmlReadMemory(xml, (int) strlen(xml), "domain.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc)
    return NULL;
  ctx = xmlXPathNewContext(doc);
  if (ctx)
    obj = xmlXPathEvalExpression(BAD_CAST "string(/domain/uuid)", ctx);
  if (obj && obj->type == XPATH_STRING && obj->stringval && kb_uuid_ok((const char *) obj->stringval))
    uuid = strdup((const char *) obj->stringval);
  xmlXPathFreeObject(obj);
  xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);
  return uuid;
}

struct vm_view {
  struct kb_config *cfg;
  struct kb_catalog *cat;
  struct kb_doc *rec;          /* vm.ini, NULL if the catalog does not know the VM */
  int holder_live;             /* 1: a live process holds the VM lock */
  char *holder;
};

static void vm_view_clear(struct vm_view *v)
{
  kb_doc_free(v->rec);
  kb_catalog_free(v->cat);
  kb_config_free(v->cfg);
  free(v->holder);
  memset(v, 0, sizeof *v);
}

/* What the catalog says about VM UUID; 0 when it knows the VM. */
static int vm_view_load(const char *uuid, struct vm_view *v)
{
  CLEANUP_FREE char *errors = NULL;
  int r;

  memset(v, 0, sizeof *v);
  r = kb_config_load(NULL, &v->cfg, &errors);
  if (r < 0) {
    note("cannot load the kboss configuration: %s", errors ? errors : strerror(-r));
    return r;
  }
  /* Detached, but a hung export must not pile these up: SIGALRM ends us. */
  alarm((unsigned) kb_config_int(v->cfg, NULL, "storage.timeout"));
  r = kb_catalog_open(v->cfg, &v->cat);
  if (r < 0) {
    note("cannot open the catalog under %s: %s", kb_config_str(v->cfg, NULL, "secondary.path"),
         kb_store_strerror(r));
    return r;
  }
  r = kb_vm_load(v->cat, uuid, &v->rec);
  if (r < 0)
    return r;     /* -ENOENT: not a kboss VM; nothing to do */
  v->holder_live = kb_catalog_lock_probe(v->cat, KB_LOCK_VM, uuid, &v->holder);
  if (v->holder_live < 0 && v->holder_live != -ENOENT)
    note("cannot probe the VM lock: %s", strerror(-v->holder_live));
  if (v->holder_live < 0)
    v->holder_live = 0;
  return 0;
}

static bool state_is(const struct vm_view *v, const char *s)
{
  const char *st = kb_doc_get(v->rec, "vm", "state");
  return st && KB_STREQ(st, s);
}

static int on_prepare(const char *uuid)
{
  long pid = 0;

  if (kb_local_restoring(uuid, &pid) == 1) {
    /* stderr is what libvirt reports as the reason the start failed. */
    fprintf(stderr, "kboss: VM %s is being restored (kboss-restore, pid %ld); it may start when the "
            "restore has finished\n", domain_name, pid);
    note("refused to start: the VM is being restored (pid %ld)", pid);
    return 1;
  }
  return 0;
}

static void deferred_started(const char *uuid)
{
  struct vm_view v;

  if (vm_view_load(uuid, &v) == 0) {
    const char *cp = kb_doc_get(v.rec, "vm", "last_checkpoint");
    /* A live holder (a backup starting a stopped VM paused, a quick
     * restore) deals with checkpoints itself. */
    if (cp && *cp && v.holder_live != 1 && !state_is(&v, KB_VM_RESTORING) &&
        !state_is(&v, KB_VM_CONSOLIDATING)) {
      const char *args[] = { "--redefine-checkpoints", "--quiet", domain_name, NULL };
      (void) spawn_detached("kboss-backup", args);
    }
  }
  vm_view_clear(&v);
}

static void deferred_stopped(const char *uuid)
{
  struct vm_view v;
  int r;

  /* A short-lived holder, such as the kboss-backup --redefine-checkpoints
   * that a start just before this stop spawned, is waited for, so that the
   * state is judged once it has let go; a holder still there after 30 s
   * (a running backup or restore) deals with the VM itself. */
  for (int tries = 0;; tries++) {
    r = vm_view_load(uuid, &v);
    if (r < 0 || v.holder_live != 1 || tries >= 30)
      break;
    vm_view_clear(&v);
    sleep(1);
  }
  if (r == 0 && v.holder_live != 1) {
    if (state_is(&v, KB_VM_CONSOLIDATING)) {
      const char *args[] = { "--consolidate", domain_name, NULL };
      note("the VM stopped during consolidation; finishing it offline");
      (void) spawn_detached("kboss-restore", args);
    } else if (state_is(&v, KB_VM_BACKING_UP) || state_is(&v, KB_VM_BACKUP_ERROR)) {
      const char *args[] = { "--normalize", "--quiet", domain_name, NULL };
      note("the VM stopped with an unfinished backup; normalizing it");
      (void) spawn_detached("kboss-backup", args);
    }
  }
  vm_view_clear(&v);
}

static void on_release(void)
{
  if (strncmp(domain_name, VALIDATION_PREFIX, strlen(VALIDATION_PREFIX)) != 0)
    return;
  {
    CLEANUP_FREE char *path = kb_printf("%s/kboss-validate", sbindir());
    const char *args[] = { "--cleanup", NULL };
    if (path && access(path, X_OK) == 0)
      (void) spawn_detached("kboss-validate", args);
    else
      note("validation VM released; kboss-validate is not installed, so its scratch overlays "
           "stay until it is (look under scratch.path)");
  }
}

/* Hand EVENT of the kboss domain UUID to a detached copy of ourselves. */
static void defer(const char *event, const char *uuid)
{
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  const char *args[] = { "--deferred", event, domain_name, uuid, NULL };

  if (n <= 0) {
    note("cannot find the hook's own program: %s", strerror(errno));
    return;
  }
  self[n] = '\0';
  (void) spawn_detached(self, args);
}

/* kboss-qemu-hook --deferred EVENT DOMAIN UUID: what used to be done inside
 * the hook, now detached from libvirtd. */
static int run_deferred(const char *event, const char *name, const char *uuid)
{
  if (!kb_name_ok(name) || !kb_uuid_ok(uuid))
    return 2;
  domain_name = name;
  if (KB_STREQ(event, "started"))
    deferred_started(uuid);
  else if (KB_STREQ(event, "stopped"))
    deferred_stopped(uuid);
  else
    return 2;
  return 0;
}

static void usage(FILE *f)
{
  fprintf(f,
          "Usage: %s DOMAIN OPERATION SUB-OPERATION [EXTRA]   (domain XML on stdin)\n"
          "\n"
          "libvirt's qemu hook for kboss; install it as %s/libvirt/hooks/qemu.d/kboss.\n"
          "It prints nothing on stdout, never calls libvirt, never touches secondary\n"
          "storage, returns at once and hands longer work to detached kboss helpers\n"
          "from %s. It exits 1 only in \"prepare begin\" of a VM that kboss is\n"
          "restoring on this host.\n"
          "\n"
          "Environment (not passed by libvirt; for a wrapper script):\n"
          "  KBOSS_CONF      configuration (default %s)\n"
          "  KBOSS_SBINDIR   where the kboss helpers are (default %s)\n"
          "  KBOSS_HOOK_LOG  log of notes and helper output (default %s)\n",
          kb_progname, SYSCONFDIR, SBINDIR, kb_config_default_path(), SBINDIR, HOOK_LOG);
}

int main(int argc, char **argv)
{
  CLEANUP_FREE char *xml = NULL;
  CLEANUP_FREE char *uuid = NULL;
  const char *op, *sub;
  int devnull;

  kb_log_init(argv[0]);
  if (argc == 2 && (KB_STREQ(argv[1], "--help") || KB_STREQ(argv[1], "-h"))) {
    usage(stdout);
    return 0;
  }
  if (argc == 2 && KB_STREQ(argv[1], "--version")) {
    printf("%s %s\n", kb_progname, PACKAGE_VERSION);
    return 0;
  }
  if (argc == 5 && KB_STREQ(argv[1], "--deferred"))
    return run_deferred(argv[2], argv[3], argv[4]);
  /* From here on nothing may reach stdout: for migrate and restore,
   * libvirt would take it as the new domain XML. */
  fflush(stdout);
  devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (devnull >= 0) {
    (void) dup2(devnull, 1);
    close(devnull);
  }
  xml = read_stdin();
  if (argc < 4)
    return 0;
  domain_name = argv[1];
  op = argv[2];
  sub = argv[3];
  if (!kb_name_ok(domain_name))
    return 0;

  /* The XML passes through unchanged: nothing to do for these. */
  if (KB_STREQ(op, "migrate") || KB_STREQ(op, "restore"))
    return 0;

  if (KB_STREQ(op, "release") && KB_STREQ(sub, "end")) {
    on_release();
    return 0;
  }
  uuid = domain_uuid(xml);
  if (!uuid)
    return 0;
  /* Local facts only: a domain kboss never touched on this host, and
   * whose definition does not carry kboss's element, is left alone. */
  if (!kb_xml_has_kboss_metadata(xml) && !kb_local_vm_known(uuid) && kb_local_restoring(uuid, NULL) != 1)
    return 0;
  if (KB_STREQ(op, "prepare") && KB_STREQ(sub, "begin"))
    return on_prepare(uuid);
  if ((KB_STREQ(op, "started") || KB_STREQ(op, "reconnect")) && KB_STREQ(sub, "begin"))
    defer("started", uuid);
  else if (KB_STREQ(op, "stopped") && KB_STREQ(sub, "end"))
    defer("stopped", uuid);
  return 0;
}
