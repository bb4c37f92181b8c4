#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "kbconfig.h"
#include "store.h"
#include "util.h"

struct kb_catalog {
  char *secondary;   /* secondary.path: the mount point, ours from kboss/ down */
  char *root;        /* <secondary>/kboss */
  struct kb_store *stores;
  size_t nstores;
};

/* Every component of PATH below BASE must be a real directory: a symlink
 * is -ELOOP, anything else -ENOTDIR. Components that do not exist yet are
 * fine (CREATE: made 0700 on the way). */
static int walk_under(const char *base, const char *path, bool create)
{
  size_t blen = strlen(base);
  CLEANUP_FREE char *copy = NULL;
  char *p;

  if (strncmp(path, base, blen) != 0 || (path[blen] != '/' && path[blen] != '\0'))
    return -EINVAL;
  copy = strdup(path);
  if (!copy)
    return -ENOMEM;
  if (!copy[blen])
    return 0;
  for (p = copy + blen + 1; ; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      struct stat st;
      *p = '\0';
      if (create && mkdir(copy, 0700) < 0 && errno != EEXIST)
        return -errno;
      if (lstat(copy, &st) < 0)
        return errno == ENOENT && !create ? 0 : -errno;
      if (S_ISLNK(st.st_mode))
        return -ELOOP;
      if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
      *p = saved;
      if (saved == '\0')
        break;
    }
  }
  return 0;
}

static const char *base_of(const struct kb_catalog *cat, const char *path)
{
  size_t i;
  size_t rlen = strlen(cat->root);

  if (strncmp(path, cat->root, rlen) == 0 && (path[rlen] == '/' || path[rlen] == '\0'))
    return cat->secondary;
  for (i = 0; i < cat->nstores; i++) {
    size_t n = strlen(cat->stores[i].path);
    if (strncmp(path, cat->stores[i].path, n) == 0 && (path[n] == '/' || path[n] == '\0'))
      return cat->stores[i].path;
  }
  return NULL;
}

int kb_catalog_mkdirs(const struct kb_catalog *cat, const char *dir)
{
  const char *base = base_of(cat, dir);

  return base ? walk_under(base, dir, true) : -EINVAL;
}

/* A path checked on the way out: NULL with errno set when a component is a
 * symlink or not a directory. */
static char *checked(const char *base, char *path)
{
  int r;

  if (!path) {
    errno = ENOMEM;
    return NULL;
  }
  r = walk_under(base, path, false);
  if (r < 0) {
    free(path);
    errno = -r;
    return NULL;
  }
  return path;
}

static void stores_free(struct kb_store *s, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++) {
    free(s[i].name);
    free(s[i].path);
  }
  free(s);
}

void kb_catalog_free(struct kb_catalog *cat)
{
  if (!cat)
    return;
  free(cat->secondary);
  free(cat->root);
  stores_free(cat->stores, cat->nstores);
  free(cat);
}

static char *strip_slashes(const char *p)
{
  size_t n = strlen(p);

  while (n > 1 && p[n - 1] == '/')
    n--;
  return strndup(p, n);
}

int kb_catalog_open_at(const char *secondary_path, const struct kb_store *stores, size_t nstores,
                       struct kb_catalog **ret)
{
  static const char *const subdirs[] = { "vms", "jobs", "locks" };
  struct kb_catalog *cat;
  size_t i;
  int r;

  if (!secondary_path || secondary_path[0] != '/')
    return -EINVAL;
  /* A mount point, or marked by kbossctl init-store: creating the catalog
   * in the empty folder of a failed NFS mount would put host-local locks
   * and backups on the host's own disk. */
  r = kb_store_check(secondary_path);
  if (r < 0)
    return r;
  cat = calloc(1, sizeof *cat);
  if (!cat)
    return -ENOMEM;
  cat->secondary = strip_slashes(secondary_path);
  cat->root = cat->secondary ? kb_printf("%s/kboss", strcmp(cat->secondary, "/") ? cat->secondary : "") : NULL;
  cat->stores = calloc(nstores + 1, sizeof *cat->stores);
  if (!cat->root || !cat->stores) {
    kb_catalog_free(cat);
    return -ENOMEM;
  }
  for (i = 0; i < nstores; i++) {
    if (!kb_name_ok(stores[i].name) || !stores[i].path || stores[i].path[0] != '/') {
      kb_catalog_free(cat);
      return -EINVAL;
    }
    cat->stores[i].name = strdup(stores[i].name);
    cat->stores[i].path = strip_slashes(stores[i].path);
    cat->stores[i].backups_only = stores[i].backups_only;
    cat->nstores++;
    if (!cat->stores[i].name || !cat->stores[i].path) {
      kb_catalog_free(cat);
      return -ENOMEM;
    }
  }
  for (i = 0; i < KB_ARRAY_SIZE(subdirs); i++) {
    CLEANUP_FREE char *d = kb_printf("%s/%s", cat->root, subdirs[i]);
    r = d ? walk_under(cat->secondary, d, true) : -ENOMEM;
    if (r < 0) {
      kb_catalog_free(cat);
      return r;
    }
  }
  *ret = cat;
  return 0;
}

const char *kb_catalog_root(const struct kb_catalog *cat)
{
  return cat->root;
}

/* --- Paths --- */

static char *bad_name(void)
{
  errno = EINVAL;
  return NULL;
}

/* <root>/vms/<uuid>[/SUB], checked. */
static char *under_vm(const struct kb_catalog *cat, const char *vm_uuid, const char *sub)
{
  if (!kb_uuid_ok(vm_uuid))
    return bad_name();
  return checked(cat->secondary, sub ? kb_printf("%s/vms/%s/%s", cat->root, vm_uuid, sub)
                                     : kb_printf("%s/vms/%s", cat->root, vm_uuid));
}

/* <root>/vms/<uuid>/chains/<chain>/<backup>[/FILE], checked. */
static char *under_backup(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                          const char *backup, const char *file)
{
  CLEANUP_FREE char *sub = NULL;

  if (!kb_name_ok(chain) || !kb_name_ok(backup))
    return bad_name();
  sub = file ? kb_printf("chains/%s/%s/%s", chain, backup, file) : kb_printf("chains/%s/%s", chain, backup);
  return sub ? under_vm(cat, vm_uuid, sub) : NULL;
}

char *kb_catalog_vm_dir(const struct kb_catalog *cat, const char *vm_uuid)
{
  return under_vm(cat, vm_uuid, NULL);
}

char *kb_catalog_chain_dir(const struct kb_catalog *cat, const char *vm_uuid, const char *chain)
{
  CLEANUP_FREE char *sub = kb_name_ok(chain) ? kb_printf("chains/%s", chain) : NULL;

  if (!kb_name_ok(chain))
    return bad_name();
  return sub ? under_vm(cat, vm_uuid, sub) : NULL;
}

char *kb_catalog_backup_dir(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            const char *backup)
{
  return under_backup(cat, vm_uuid, chain, backup, NULL);
}

char *kb_catalog_checkpoints_dir(const struct kb_catalog *cat, const char *vm_uuid)
{
  return under_vm(cat, vm_uuid, "checkpoints");
}

char *kb_catalog_checkpoint_path(const struct kb_catalog *cat, const char *vm_uuid, const char *name)
{
  CLEANUP_FREE char *sub = kb_name_ok(name) ? kb_printf("checkpoints/%s.xml", name) : NULL;

  if (!kb_name_ok(name))
    return bad_name();
  return sub ? under_vm(cat, vm_uuid, sub) : NULL;
}

char *kb_catalog_vm_domain_path(const struct kb_catalog *cat, const char *vm_uuid)
{
  return under_vm(cat, vm_uuid, "domain.xml");
}

char *kb_catalog_backup_domain_path(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                                    const char *backup)
{
  return under_backup(cat, vm_uuid, chain, backup, "domain.xml");
}

char *kb_catalog_screenshot_path(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                                 const char *backup)
{
  return under_backup(cat, vm_uuid, chain, backup, "screenshot.png");
}

char *kb_catalog_data_chain_dir(const struct kb_catalog *cat, const char *store, const char *vm_uuid,
                                const char *chain)
{
  size_t i;

  if (!kb_name_ok(store) || !kb_uuid_ok(vm_uuid) || !kb_name_ok(chain))
    return bad_name();
  for (i = 0; i < cat->nstores; i++)
    if (KB_STREQ(cat->stores[i].name, store)) {
      const char *sp = strcmp(cat->stores[i].path, "/") ? cat->stores[i].path : "";
      return checked(cat->stores[i].path, kb_printf("%s/kboss/vms/%s/chains/%s", sp, vm_uuid, chain));
    }
  errno = ENOENT;
  return NULL;
}

char *kb_catalog_data_dir(const struct kb_catalog *cat, const char *store, const char *vm_uuid,
                          const char *chain, const char *backup)
{
  CLEANUP_FREE char *dir = NULL;
  size_t i;

  if (!kb_name_ok(backup))
    return bad_name();
  dir = kb_catalog_data_chain_dir(cat, store, vm_uuid, chain);
  if (!dir)
    return NULL;
  for (i = 0; i < cat->nstores; i++)
    if (KB_STREQ(cat->stores[i].name, store))
      return checked(cat->stores[i].path, kb_printf("%s/%s", dir, backup));
  errno = ENOENT;
  return NULL;
}

char *kb_catalog_jobs_dir(const struct kb_catalog *cat)
{
  return checked(cat->secondary, kb_printf("%s/jobs", cat->root));
}

char *kb_catalog_locks_dir(const struct kb_catalog *cat)
{
  return checked(cat->secondary, kb_printf("%s/locks", cat->root));
}

/* --- Listing --- */

void kb_strv_free(char **v)
{
  char **p;

  if (!v)
    return;
  for (p = v; *p; p++)
    free(*p);
  free(v);
}

static int strcmp_p(const void *a, const void *b)
{
  return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Listings cut at KB_CATALOG_LIST_MAX entries (kb_catalog_list_cut). */
static unsigned list_cut;

unsigned kb_catalog_list_cut(void)
{
  return list_cut;
}

/* Subdirectories of DIR whose names pass OK, sorted. Symlinks and other
 * files are not listed. MISSING_OK: a missing DIR is an empty list.  A
 * folder planted with more than KB_CATALOG_LIST_MAX names is listed up to
 * that many (and the cut counted) rather than exhausting memory. */
static int list_subdirs(const char *dir, bool (*ok)(const char *), bool missing_ok, char ***ret)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  char **v = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  DIR *d;

  if (fd < 0) {
    if (errno == ENOENT && missing_ok) {
      v = calloc(1, sizeof *v);
      if (!v)
        return -ENOMEM;
      *ret = v;
      return 0;
    }
    return -errno;
  }
  d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  while ((de = readdir(d))) {
    struct stat st;
    if (!ok(de->d_name))
      continue;
    if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
      continue;
    if (n == KB_CATALOG_LIST_MAX) {
      list_cut++;
      break;
    }
    if (n + 2 > cap) {
      size_t c = cap ? cap * 2 : 16;
      char **nv = realloc(v, c * sizeof *nv);
      if (!nv)
        goto oom;
      v = nv;
      cap = c;
    }
    if (!(v[n] = strdup(de->d_name)))
      goto oom;
    v[++n] = NULL;
  }
  closedir(d);
  if (!v && !(v = calloc(1, sizeof *v)))
    return -ENOMEM;
  qsort(v, n, sizeof *v, strcmp_p);
  *ret = v;
  return 0;
oom:
  closedir(d);
  if (v) {
    v[n] = NULL;
    kb_strv_free(v);
  }
  return -ENOMEM;
}

int kb_catalog_list_vms(const struct kb_catalog *cat, char ***ret_uuids)
{
  CLEANUP_FREE char *dir = checked(cat->secondary, kb_printf("%s/vms", cat->root));

  if (!dir)
    return -errno;
  return list_subdirs(dir, kb_uuid_ok, true, ret_uuids);
}

int kb_catalog_list_chains(const struct kb_catalog *cat, const char *vm_uuid, char ***ret)
{
  CLEANUP_FREE char *vm = kb_catalog_vm_dir(cat, vm_uuid);
  CLEANUP_FREE char *dir = NULL;
  struct stat st;

  if (!vm)
    return -errno;
  if (lstat(vm, &st) < 0)
    return -errno;
  dir = checked(cat->secondary, kb_printf("%s/chains", vm));
  if (!dir)
    return -errno;
  return list_subdirs(dir, kb_name_ok, true, ret);
}

int kb_catalog_list_backups(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                            char ***ret)
{
  CLEANUP_FREE char *dir = kb_catalog_chain_dir(cat, vm_uuid, chain);

  if (!dir)
    return -errno;
  return list_subdirs(dir, kb_name_ok, false, ret);
}

int kb_catalog_find_backup(const struct kb_catalog *cat, const char *backup_id,
                           char **ret_vm_uuid, char **ret_chain)
{
  char **vms = NULL;
  size_t i, j;
  int r;

  if (!kb_name_ok(backup_id))
    return -EINVAL;
  r = kb_catalog_list_vms(cat, &vms);
  if (r < 0)
    return r;
  for (i = 0; vms[i]; i++) {
    char **chains = NULL;
    if (kb_catalog_list_chains(cat, vms[i], &chains) < 0)
      continue;
    for (j = 0; chains[j]; j++) {
      CLEANUP_FREE char *dir = kb_catalog_backup_dir(cat, vms[i], chains[j], backup_id);
      struct stat st;
      if (dir && lstat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        char *vm = strdup(vms[i]), *ch = strdup(chains[j]);
        kb_strv_free(chains);
        kb_strv_free(vms);
        if (!vm || !ch) {
          free(vm);
          free(ch);
          return -ENOMEM;
        }
        if (ret_vm_uuid)
          *ret_vm_uuid = vm;
        else
          free(vm);
        if (ret_chain)
          *ret_chain = ch;
        else
          free(ch);
        return 0;
      }
    }
    kb_strv_free(chains);
  }
  kb_strv_free(vms);
  return -ENOENT;
}

int kb_catalog_new_id(char *buf, size_t len)
{
  time_t t = (time_t) kb_now();   /* the same clock as the record's created */
  struct tm tm;
  char hex[7];
  int r;

  if (len < 24)
    return -ERANGE;
  r = kb_random_hex(hex, 3);
  if (r < 0)
    return r;
  gmtime_r(&t, &tm);
  strftime(buf, len, "%Y%m%dT%H%M%SZ", &tm);
  snprintf(buf + 16, len - 16, "-%s", hex);
  return 0;
}

bool kb_backup_id_ok(const char *id)
{
  /* What kb_catalog_new_id() makes: YYYYmmddTHHMMSSZ-xxxxxx. */
  static const char shape[] = "ddddddddTddddddZ-hhhhhh";
  size_t i;

  if (!id || strlen(id) != sizeof shape - 1)
    return false;
  for (i = 0; shape[i]; i++) {
    char c = id[i];
    switch (shape[i]) {
    case 'd':
      if (c < '0' || c > '9')
        return false;
      break;
    case 'h':
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
        return false;
      break;
    default:
      if (c != shape[i])
        return false;
    }
  }
  return true;
}

/* --- Locks --- */

char *kb_catalog_lock_path(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name)
{
  CLEANUP_FREE char *locks = NULL;

  switch (kind) {
  case KB_LOCK_VM:
    if (!kb_uuid_ok(name))
      return bad_name();
    break;
  case KB_LOCK_BACKUP:
  case KB_LOCK_JOB:
    if (!kb_name_ok(name))
      return bad_name();
    break;
  default:
    return bad_name();
  }
  locks = kb_catalog_locks_dir(cat);
  if (!locks)
    return NULL;
  return kb_printf("%s/%s-%s.lock", locks,
                   kind == KB_LOCK_VM ? "vm" : kind == KB_LOCK_BACKUP ? "backup" : "job", name);
}

int kb_catalog_lock(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name,
                    const char *purpose, int timeout_ms, struct kb_lock **ret)
{
  CLEANUP_FREE char *locks = kb_catalog_locks_dir(cat);
  CLEANUP_FREE char *path = kb_catalog_lock_path(cat, kind, name);
  int r;

  if (!locks || !path)
    return errno ? -errno : -ENOMEM;
  r = kb_catalog_mkdirs(cat, locks);
  if (r < 0)
    return r;
  return kb_lock_take(path, purpose, timeout_ms, ret);
}

int kb_catalog_lock_probe(const struct kb_catalog *cat, enum kb_lock_kind kind, const char *name,
                          char **ret_holder)
{
  CLEANUP_FREE char *path = kb_catalog_lock_path(cat, kind, name);

  if (ret_holder)
    *ret_holder = NULL;
  if (!path)
    return errno ? -errno : -ENOMEM;
  return kb_lock_probe(path, ret_holder);
}

int kb_catalog_lock_vm(const struct kb_catalog *cat, const char *vm_uuid, const char *purpose,
                       int timeout_ms, struct kb_lock **ret)
{
  return kb_catalog_lock(cat, KB_LOCK_VM, vm_uuid, purpose, timeout_ms, ret);
}

/* "<kind>.zone." or "<kind>.host-<host>." */
static char *slot_prefix(const char *kind, const char *host)
{
  if (!kb_name_ok(kind) || (host && !kb_name_ok(host)))
    return NULL;
  return host ? kb_printf("%s.host-%s.", kind, host) : kb_printf("%s.zone.", kind);
}

/* Zone-wide slots live on the export; per-host slots need nothing shared
 * and live under the host's own run directory (a local tmpfs), where a
 * dead holder is always a process of this kernel. */
static char *slot_dir(const struct kb_catalog *cat, const char *host, bool create)
{
  char *dir;
  int r;

  if (!host)
    return kb_catalog_locks_dir(cat);
  dir = kb_printf("%s/locks", kb_run_dir());
  if (!dir) {
    errno = ENOMEM;
    return NULL;
  }
  if (create && (r = kb_mkdir_p(dir, 0700)) < 0) {
    free(dir);
    errno = -r;
    return NULL;
  }
  return dir;
}

int kb_catalog_take_slot(const struct kb_catalog *cat, const char *kind, const char *host,
                         long long limit, const char *purpose, struct kb_lock **ret)
{
  CLEANUP_FREE char *locks = NULL;
  CLEANUP_FREE char *prefix = slot_prefix(kind, host);
  long long i;
  int pass;

  if (!prefix)
    return -EINVAL;
  if (limit < 1) {
    *ret = NULL;
    return 0;
  }
  locks = slot_dir(cat, host, true);
  if (!locks)
    return -errno;
  /* First a plain try of each slot; only when all are held, a silent
   * holder's slot is watched (up to a lease) before it is broken. */
  for (pass = 0; pass < 2; pass++)
    for (i = 0; i < limit; i++) {
      CLEANUP_FREE char *path = kb_printf("%s/%s%lld", locks, prefix, i);
      int r;
      if (!path)
        return -ENOMEM;
      r = pass == 0 ? kb_lock_try(path, purpose, ret) : kb_lock_take(path, purpose, 0, ret);
      if (r != -EBUSY)
        return r;
    }
  return -EBUSY;
}

int kb_catalog_count_slots(const struct kb_catalog *cat, const char *kind, const char *host,
                           unsigned *ret_held)
{
  CLEANUP_FREE char *locks = NULL;
  CLEANUP_FREE char *prefix = slot_prefix(kind, host);
  unsigned held = 0;
  size_t plen;
  struct dirent *de;
  DIR *d;
  int fd;

  if (!prefix)
    return -EINVAL;
  locks = slot_dir(cat, host, false);
  if (!locks)
    return -errno;
  fd = open(locks, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT && host) {
      *ret_held = 0;
      return 0;
    }
    return -errno;
  }
  d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  plen = strlen(prefix);
  while ((de = readdir(d))) {
    const char *p = de->d_name + plen;
    CLEANUP_FREE char *path = NULL;
    if (strncmp(de->d_name, prefix, plen) != 0 || !*p || strspn(p, "0123456789") != strlen(p))
      continue;
    path = kb_printf("%s/%s", locks, de->d_name);
    if (path && kb_lock_probe(path, NULL) == 1)
      held++;
  }
  closedir(d);
  *ret_held = held;
  return 0;
}
