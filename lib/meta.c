#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "catalog.h"
#include "util.h"

/* Catalog metadata as generation files (docs/storage.md explains why):
 *
 *   documents  DIR/NAME.<gen>.ini      INI text + "# kboss-checksum: <xxh64>" trailer
 *   files      DIR/BASE.<gen>.<xxh64>  the bytes as given; the hash is in the name
 *
 * A writer removes every generation but the newest complete one, then
 * creates generation max+1 with O_EXCL and writes it whole. A reader takes
 * the highest generation that verifies. Nothing is renamed,
 * nothing relies on fsync: a torn file simply does not verify. */

#define GEN_WIDTH 9
#define TRAILER_PREFIX "# kboss-checksum: "
#define TRAILER_LEN (sizeof TRAILER_PREFIX - 1 + 16 + 1)
#define MAX_GENS 4096

enum kind { DOC, FILE_ };

struct gen {
  unsigned long long gen;
  uint64_t hash;   /* FILE_ only */
};

static int hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

static bool parse_hex16(const char *s, uint64_t *ret)
{
  uint64_t v = 0;
  int i;

  for (i = 0; i < 16; i++) {
    int d = hexval(s[i]);
    if (d < 0)
      return false;
    v = v << 4 | (uint64_t) d;
  }
  *ret = v;
  return true;
}

/* "NAME.<digits>.ini" or "BASE.<digits>.<16 hex>": the generation of NAME
 * that ENTRY is, or false. */
static bool parse_entry(const char *entry, const char *name, enum kind kind, struct gen *ret)
{
  size_t n = strlen(name);
  const char *p, *digits;
  unsigned long long g = 0;

  if (strncmp(entry, name, n) != 0 || entry[n] != '.')
    return false;
  p = digits = entry + n + 1;
  while (*p >= '0' && *p <= '9') {
    if (g > (~0ULL - 9) / 10)
      return false;
    g = g * 10 + (unsigned) (*p - '0');
    p++;
  }
  if (p == digits || *p != '.')
    return false;
  p++;
  if (kind == DOC) {
    if (!KB_STREQ(p, "ini"))
      return false;
    ret->hash = 0;
  } else if (strlen(p) != 16 || !parse_hex16(p, &ret->hash))
    return false;
  ret->gen = g;
  return true;
}

static int gen_cmp_desc(const void *a, const void *b)
{
  const struct gen *x = a, *y = b;

  return x->gen < y->gen ? 1 : x->gen > y->gen ? -1 : 0;
}

/* One readdir: the generations of NAME in DFD, highest first. */
static int list_gens(int dfd, const char *name, enum kind kind, struct gen **ret, size_t *ret_n)
{
  int fd = dup(dfd);
  struct gen *v = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  DIR *d;

  if (fd < 0)
    return -errno;
  d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  rewinddir(d);
  while ((de = readdir(d))) {
    struct gen g;
    if (!parse_entry(de->d_name, name, kind, &g))
      continue;
    if (n == cap) {
      size_t c = cap ? cap * 2 : 8;
      struct gen *nv;
      if (c > MAX_GENS || !(nv = realloc(v, c * sizeof *nv))) {
        free(v);
        closedir(d);
        return -ENOMEM;
      }
      v = nv;
      cap = c;
    }
    v[n++] = g;
  }
  closedir(d);
  qsort(v, n, sizeof *v, gen_cmp_desc);
  *ret = v;
  *ret_n = n;
  return 0;
}

static void gen_name(char *buf, size_t len, const char *name, enum kind kind, const struct gen *g)
{
  if (kind == DOC)
    snprintf(buf, len, "%s.%0*llu.ini", name, GEN_WIDTH, g->gen);
  else
    snprintf(buf, len, "%s.%0*llu.%016" PRIx64, name, GEN_WIDTH, g->gen, g->hash);
}

static int read_at(int dfd, const char *fname, char **ret, size_t *ret_len)
{
  CLEANUP_CLOSE int fd = openat(dfd, fname, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);

  if (fd < 0)
    return -errno;
  return kb_read_fd(fd, ret, ret_len);
}

/* Length of the document before its trailer, or -1 if the trailer is
 * missing or does not match. */
static ssize_t doc_verify(const char *buf, size_t len)
{
  size_t body;
  uint64_t want;

  if (len < TRAILER_LEN || buf[len - 1] != '\n')
    return -1;
  body = len - TRAILER_LEN;
  if (body > 0 && buf[body - 1] != '\n')
    return -1;
  if (memcmp(buf + body, TRAILER_PREFIX, sizeof TRAILER_PREFIX - 1) != 0 ||
      !parse_hex16(buf + body + sizeof TRAILER_PREFIX - 1, &want))
    return -1;
  if (XXH64(buf, body, 0) != want)
    return -1;
  return (ssize_t) body;
}

static int open_dir(const char *dir)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

  struct stat st;

  if (fd >= 0)
    return fd;
  /* O_DIRECTORY may answer ENOTDIR for a symlink before O_NOFOLLOW's ELOOP. */
  if (errno == ENOTDIR && lstat(dir, &st) == 0 && S_ISLNK(st.st_mode))
    return -ELOOP;
  return -errno;
}

/* Tests set KBOSS_TEST_WRITE_CHUNK to write in small pieces, so that a
 * SIGKILL lands in the middle of a file. */
static int write_chunked(int fd, const char *buf, size_t len)
{
  const char *env = getenv("KBOSS_TEST_WRITE_CHUNK");
  long long chunk = 0;

  if (!env || kb_parse_ll(env, &chunk) < 0 || chunk <= 0)
    return kb_write_all(fd, buf, len);
  while (len > 0) {
    size_t n = len < (size_t) chunk ? len : (size_t) chunk;
    int r = kb_write_all(fd, buf, n);
    if (r < 0)
      return r;
    buf += n;
    len -= n;
  }
  return 0;
}

static bool gen_ok(int dfd, const char *name, enum kind kind, const struct gen *g)
{
  CLEANUP_FREE char *buf = NULL;
  char fname[512];
  size_t len;

  gen_name(fname, sizeof fname, name, kind, g);
  if (read_at(dfd, fname, &buf, &len) < 0)
    return false;
  if (kind == DOC)
    return doc_verify(buf, len) >= 0;
  return XXH64(buf, len, 0) == g->hash;
}

/* Create the next generation of NAME in DFD holding BUF. First every
 * generation but the newest complete one goes (older ones and torn
 * leftovers), so that after the write exactly two remain: the previous
 * and the new. A writer killed at any point leaves at most those two.
 * Numbers are never reused: the new one is above every name listed, torn
 * or not, so no NFS client can hold cached pages of an older file under
 * the same name. */
static int write_gen(int dfd, const char *name, enum kind kind, const char *buf, size_t len,
                     uint64_t hash)
{
  struct gen *gens = NULL;
  size_t n = 0, i;
  bool kept = false;
  struct gen g;
  char fname[512];
  int fd = -1, r, tries;

  r = list_gens(dfd, name, kind, &gens, &n);
  if (r < 0)
    return r;
  g.gen = n ? gens[0].gen + 1 : 1;
  g.hash = hash;
  for (i = 0; i < n; i++) {
    if (!kept && gen_ok(dfd, name, kind, &gens[i])) {
      kept = true;
      continue;
    }
    gen_name(fname, sizeof fname, name, kind, &gens[i]);
    (void) unlinkat(dfd, fname, 0);
  }
  free(gens);
  /* The caller's lock serialises writers; a collision all the same (a
   * directory listing from an NFS cache) moves on to the next number. */
  for (tries = 0; tries < 1000; tries++, g.gen++) {
    gen_name(fname, sizeof fname, name, kind, &g);
    fd = openat(dfd, fname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0 || errno != EEXIST)
      break;
  }
  if (fd < 0)
    return -errno;
  r = write_chunked(fd, buf, len);
  /* On NFS close() flushes and reports what the server refused. */
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r < 0)
    (void) unlinkat(dfd, fname, 0);
  return r;
}


int kb_meta_write(const char *dir, const char *name, const struct kb_doc *doc)
{
  CLEANUP_CLOSE int dfd = -1;
  CLEANUP_FREE char *text = NULL;
  CLEANUP_FREE char *all = NULL;

  if (!kb_name_ok(name))
    return -EINVAL;
  text = kb_doc_format(doc);
  if (!text)
    return -ENOMEM;
  all = kb_printf("%s" TRAILER_PREFIX "%016" PRIx64 "\n", text, (uint64_t) XXH64(text, strlen(text), 0));
  if (!all)
    return -ENOMEM;
  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd;
  return write_gen(dfd, name, DOC, all, strlen(all), 0);
}

/* The newest generation that verifies. A generation that vanishes between
 * the listing and the open was pruned by a writer: list again. */
static int read_newest(const char *dir, const char *name, enum kind kind, char **ret, size_t *ret_len)
{
  CLEANUP_CLOSE int dfd = -1;
  int attempt;

  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd;
  for (attempt = 0; attempt < 5; attempt++) {
    struct gen *gens = NULL;
    size_t n = 0, i;
    bool relist = false;
    int r = list_gens(dfd, name, kind, &gens, &n);

    if (r < 0)
      return r;
    for (i = 0; i < n && !relist; i++) {
      char fname[512];
      char *buf;
      size_t len;
      ssize_t body;

      gen_name(fname, sizeof fname, name, kind, &gens[i]);
      r = read_at(dfd, fname, &buf, &len);
      if (r == -ENOENT) {
        relist = true;
        break;
      }
      if (r == -ENOMEM) {
        free(gens);
        return r;
      }
      if (r < 0)
        continue;      /* not a regular file (a symlink...): not ours */
      body = kind == DOC ? doc_verify(buf, len)
                         : XXH64(buf, len, 0) == gens[i].hash ? (ssize_t) len : -1;
      if (body < 0) {
        free(buf);
        continue;      /* torn: an older generation is still there */
      }
      buf[body] = '\0';
      free(gens);
      *ret = buf;
      *ret_len = (size_t) body;
      return 0;
    }
    free(gens);
    if (!relist)
      return -ENOENT;
  }
  return -EAGAIN;
}

int kb_meta_read(const char *dir, const char *name, struct kb_doc **ret)
{
  CLEANUP_FREE char *buf = NULL;
  size_t len;
  int r, line = 0;

  if (!kb_name_ok(name))
    return -EINVAL;
  r = read_newest(dir, name, DOC, &buf, &len);
  if (r < 0)
    return r;
  if (strlen(buf) != len)
    return -EINVAL;
  return kb_doc_parse(buf, ret, &line);
}

static int remove_all(const char *dir, const char *name, enum kind kind)
{
  CLEANUP_CLOSE int dfd = -1;
  struct gen *gens = NULL;
  size_t n = 0, i;
  int r;

  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd == -ENOENT ? 0 : dfd;
  r = list_gens(dfd, name, kind, &gens, &n);
  if (r < 0)
    return r;
  for (i = 0; i < n; i++) {
    char fname[512];
    gen_name(fname, sizeof fname, name, kind, &gens[i]);
    if (unlinkat(dfd, fname, 0) < 0 && errno != ENOENT && r == 0)
      r = -errno;
  }
  free(gens);
  return r;
}

int kb_meta_remove(const char *dir, const char *name)
{
  if (!kb_name_ok(name))
    return -EINVAL;
  return remove_all(dir, name, DOC);
}

static int split_path(const char *path, char **ret_dir, const char **ret_base)
{
  const char *slash = strrchr(path, '/');

  if (!slash || !kb_name_ok(slash + 1))
    return -EINVAL;
  *ret_dir = slash == path ? strdup("/") : strndup(path, (size_t) (slash - path));
  if (!*ret_dir)
    return -ENOMEM;
  *ret_base = slash + 1;
  return 0;
}

int kb_meta_write_file(const char *path, const char *content, size_t len)
{
  CLEANUP_FREE char *dir = NULL;
  CLEANUP_CLOSE int dfd = -1;
  const char *base;
  int r;

  r = split_path(path, &dir, &base);
  if (r < 0)
    return r;
  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd;
  return write_gen(dfd, base, FILE_, content, len, XXH64(content, len, 0));
}

int kb_meta_read_file(const char *path, char **ret, size_t *ret_len)
{
  CLEANUP_FREE char *dir = NULL;
  const char *base;
  size_t len;
  int r;

  r = split_path(path, &dir, &base);
  if (r < 0)
    return r;
  r = read_newest(dir, base, FILE_, ret, &len);
  if (r == 0 && ret_len)
    *ret_len = len;
  return r;
}

int kb_meta_remove_file(const char *path)
{
  CLEANUP_FREE char *dir = NULL;
  const char *base;
  int r;

  r = split_path(path, &dir, &base);
  if (r < 0)
    return r;
  return remove_all(dir, base, FILE_);
}

static int strcmp_p(const void *a, const void *b)
{
  return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Names in DIR that have generations of KIND, sorted, distinct. */
static int list_names(const char *dir, enum kind kind, char ***ret)
{
  CLEANUP_CLOSE int dfd = -1;
  char **v = NULL;
  size_t n = 0, cap = 0, i, j;
  struct dirent *de;
  DIR *d;

  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd;
  d = fdopendir(dfd);
  if (!d)
    return -errno;
  dfd = -1;
  while ((de = readdir(d))) {
    /* The name is what precedes ".<digits>.<suffix>". */
    char *copy = strdup(de->d_name), *dot;
    struct gen g;
    if (!copy)
      goto oom;
    dot = strrchr(copy, '.');
    if (dot && dot != copy) {
      *dot = '\0';
      dot = strrchr(copy, '.');
    }
    if (!dot || dot == copy) {
      free(copy);
      continue;
    }
    *dot = '\0';
    if (!kb_name_ok(copy) || !parse_entry(de->d_name, copy, kind, &g)) {
      free(copy);
      continue;
    }
    if (n + 2 > cap) {
      size_t c = cap ? cap * 2 : 16;
      char **nv = realloc(v, c * sizeof *nv);
      if (!nv) {
        free(copy);
        goto oom;
      }
      v = nv;
      cap = c;
    }
    v[n++] = copy;
  }
  closedir(d);
  if (!v && !(v = calloc(1, sizeof *v)))
    return -ENOMEM;
  qsort(v, n, sizeof *v, strcmp_p);
  for (i = 0, j = 0; i < n; i++) {
    if (j > 0 && KB_STREQ(v[j - 1], v[i]))
      free(v[i]);
    else
      v[j++] = v[i];
  }
  v[j] = NULL;
  *ret = v;
  return 0;
oom:
  closedir(d);
  for (i = 0; i < n; i++)
    free(v[i]);
  free(v);
  return -ENOMEM;
}

int kb_meta_list(const char *dir, char ***ret_names)
{
  return list_names(dir, DOC, ret_names);
}

int kb_meta_list_files(const char *dir, char ***ret_names)
{
  return list_names(dir, FILE_, ret_names);
}
