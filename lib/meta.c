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
#include "lock.h"
#include "util.h"

/* Catalog metadata as generation files (docs/storage.md explains why):
 *
 *   documents  DIR/NAME.<gen>.ini      INI text + "# kboss-checksum: <xxh64>" trailer
 *   files      DIR/BASE.<gen>.<xxh64>  the bytes as given; the hash is in the name
 *
 * A writer removes every generation but the newest complete one, then
 * creates generation max+1 with O_EXCL and writes it whole. A reader takes
 * the highest generation that verifies. Nothing is renamed,
 * nothing relies on fsync: a torn file simply does not verify.
 *
 * Failures are told apart: content that was read and does not verify (or
 * cannot be ours: oversized, a symlink, not a regular file) is skipped by
 * readers and pruned by writers; an error reading a generation (EIO,
 * ESTALE, EACCES...) goes to the caller, and nothing is pruned or written
 * on the strength of a generation that could not be read. */

#define GEN_WIDTH 9
#define TRAILER_PREFIX "# kboss-checksum: "
#define TRAILER_LEN (sizeof TRAILER_PREFIX - 1 + 16 + 1)
/* Generations of one name kept in view: beyond, the lowest are left for a
 * later writer to prune (junk names must not make everything fail). */
#define MAX_GENS 4096
/* kboss never writes a larger document or file; a larger one is junk. */
#define MAX_META_SIZE (16u << 20)
#define MAX_GEN 999999999999999999ULL
/* Read-modify-write retries after another writer got in between. */
#define MAX_MERGES 10

enum kind { DOC, FILE_ };

struct gen {
  unsigned long long gen;
  uint64_t hash;   /* FILE_ only */
};

struct gens {
  struct gen *v;
  size_t n;
  unsigned long long max;   /* over every name listed, kept or not */
  bool truncated;           /* more than MAX_GENS: only the highest kept */
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

/* One readdir: the generations of NAME in DFD, highest first, at most
 * MAX_GENS of them (the highest). EXTRA: NEXTRA generations known to exist
 * although the listing may not show them yet (NFS caches); 0 is none. */
static int list_gens(int dfd, const char *name, enum kind kind, const struct gen *extra,
                     size_t nextra, struct gens *ret)
{
  int fd = dup(dfd);
  struct gens g = { NULL, 0, 0, false };
  struct dirent *de;
  size_t i, j;
  DIR *d;

  if (fd < 0)
    return -errno;
  d = fdopendir(fd);
  if (!d) {
    close(fd);
    return -errno;
  }
  g.v = malloc(MAX_GENS * sizeof *g.v);
  if (!g.v) {
    closedir(d);
    return -ENOMEM;
  }
  for (i = 0; i < nextra; i++)
    if (extra[i].gen) {
      g.v[g.n++] = extra[i];
      if (extra[i].gen > g.max)
        g.max = extra[i].gen;
    }
  rewinddir(d);
  errno = 0;
  while ((de = readdir(d))) {
    struct gen e;
    if (!parse_entry(de->d_name, name, kind, &e))
      continue;
    if (e.gen > g.max)
      g.max = e.gen;
    if (g.n == MAX_GENS) {
      /* Keep the highest half and go on. */
      qsort(g.v, g.n, sizeof *g.v, gen_cmp_desc);
      g.n = MAX_GENS / 2;
      g.truncated = true;
    }
    g.v[g.n++] = e;
  }
  if (errno) {
    int e = errno;
    closedir(d);
    free(g.v);
    return -e;
  }
  closedir(d);
  qsort(g.v, g.n, sizeof *g.v, gen_cmp_desc);
  /* EXTRA may also be listed: one entry per generation. */
  for (i = 0, j = 0; i < g.n; i++)
    if (j == 0 || g.v[j - 1].gen != g.v[i].gen || g.v[j - 1].hash != g.v[i].hash)
      g.v[j++] = g.v[i];
  g.n = j;
  *ret = g;
  return 0;
}

static void gen_name(char *buf, size_t len, const char *name, enum kind kind, const struct gen *g)
{
  if (kind == DOC)
    snprintf(buf, len, "%s.%0*llu.ini", name, GEN_WIDTH, g->gen);
  else
    snprintf(buf, len, "%s.%0*llu.%016" PRIx64, name, GEN_WIDTH, g->gen, g->hash);
}

/* Read a generation, at most MAX_META_SIZE bytes. -EFBIG when larger,
 * -ELOOP for a symlink, -EMEDIUMTYPE for anything but a regular file. */
static int read_at(int dfd, const char *fname, char **ret, size_t *ret_len)
{
  CLEANUP_CLOSE int fd = openat(dfd, fname, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  struct stat st;
  char *buf;
  size_t len = 0, cap;

  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return -EMEDIUMTYPE;
  if (st.st_size > (off_t) MAX_META_SIZE)
    return -EFBIG;
  cap = (size_t) st.st_size + 2;
  buf = malloc(cap);
  if (!buf)
    return -ENOMEM;
  for (;;) {
    ssize_t n;
    if (len + 1 >= cap) {
      char *nb;
      if (cap > MAX_META_SIZE + 1) {
        free(buf);
        return -EFBIG;   /* grew while we read */
      }
      nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        return -ENOMEM;
      }
      buf = nb;
      cap *= 2;
    }
    n = read(fd, buf + len, cap - len - 1);
    if (n < 0) {
      int e = errno;
      if (e == EINTR)
        continue;
      free(buf);
      return -e;
    }
    if (n == 0)
      break;
    len += (size_t) n;
  }
  if (len > MAX_META_SIZE) {
    free(buf);
    return -EFBIG;
  }
  buf[len] = '\0';
  *ret = buf;
  *ret_len = len;
  return 0;
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

/* What reading one generation found. */
enum found { VALID, JUNK, VANISHED };

/* Read generation G: VALID with the content (its body, NUL-terminated) in
 * *RET, JUNK (read and not verifying, or something kboss never writes:
 * oversized, a symlink, not a regular file), VANISHED (pruned by another
 * writer since the listing), or a negative errno: the generation could
 * not be read, and nothing may be concluded from it. */
static int read_gen(int dfd, const char *name, enum kind kind, const struct gen *g, char **ret,
                    size_t *ret_len)
{
  char fname[512];
  char *buf = NULL;
  size_t len = 0;
  ssize_t body;
  int r;

  gen_name(fname, sizeof fname, name, kind, g);
  r = read_at(dfd, fname, &buf, &len);
  if (r == -ENOENT)
    return VANISHED;
  if (r == -EFBIG || r == -ELOOP || r == -EMEDIUMTYPE)
    return JUNK;
  if (r < 0)
    return r;
  body = kind == DOC ? doc_verify(buf, len) : XXH64(buf, len, 0) == g->hash ? (ssize_t) len : -1;
  if (body < 0) {
    free(buf);
    return JUNK;
  }
  buf[body] = '\0';
  if (ret) {
    *ret = buf;
    *ret_len = (size_t) body;
  } else
    free(buf);
  return VALID;
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

/* The newest generation that verifies: 0 with its content (and generation
 * in *RET_GEN), -ENOENT when none does, or the error that kept one from
 * being read. A generation that vanishes between the listing and the open
 * was pruned by a writer: list again. EXTRA: see list_gens. */
static int read_newest_at(int dfd, const char *name, enum kind kind, const struct gen *extra,
                          size_t nextra, char **ret, size_t *ret_len, unsigned long long *ret_gen)
{
  int attempt;

  for (attempt = 0; attempt < 5; attempt++) {
    struct gens gl;
    bool relist = false;
    size_t i;
    int r = list_gens(dfd, name, kind, extra, attempt == 0 ? nextra : 0, &gl);

    if (r < 0)
      return r;
    for (i = 0; i < gl.n; i++) {
      r = read_gen(dfd, name, kind, &gl.v[i], ret, ret_len);
      if (r == JUNK)
        continue;      /* torn or planted: an older generation is still there */
      if (r == VANISHED) {
        relist = true;
        break;
      }
      if (r == VALID && ret_gen)
        *ret_gen = gl.v[i].gen;
      free(gl.v);
      return r == VALID ? 0 : r;
    }
    free(gl.v);
    if (!relist)
      /* Junk above every generation we could keep in view. */
      return gl.truncated ? -EOVERFLOW : -ENOENT;
  }
  return -EAGAIN;
}

/* Create the next generation of NAME in DFD holding BUF. First every
 * generation but the newest complete one goes (older ones and torn
 * leftovers), so that after the write exactly two remain: the previous
 * and the new. A writer killed at any point leaves at most those two.
 * Numbers are never reused: the new one is above every name listed, torn
 * or not, so no NFS client can hold cached pages of an older file under
 * the same name.
 *
 * KNOWN: a generation known to exist that the listing may not show yet.
 * BASE (a read-modify-write): the generation the content was made from.
 * If the newest complete generation is another one, or the create meets
 * an existing file (a listing that did not show a newer generation yet),
 * nothing is written and -ESTALE returned, with *RET_SEEN set to the
 * generation found, for the caller to re-read, merge and try again. Without BASE,
 * an existing file moves on to the next number.
 *
 * Every lock this process holds is checked before (kb_lock_fence_all):
 * a write made under a lock that was lost is refused with -ENOLCK; and
 * after: a write that raced with the loss is removed again. */
static int write_gen(int dfd, const char *name, enum kind kind, const char *buf, size_t len,
                     uint64_t hash, const unsigned long long *base, const struct gen *known,
                     unsigned long long *ret_seen, unsigned long long *ret_gen)
{
  struct gens gl;
  size_t i;
  ssize_t valid = -1;
  bool *prune = NULL;
  struct gen g;
  char fname[512];
  int fd = -1, r, tries;

  if (len > MAX_META_SIZE)
    return -EFBIG;
  r = kb_lock_fence_all();
  if (r < 0)
    return r;
  r = list_gens(dfd, name, kind, known, known ? 1 : 0, &gl);
  if (r < 0)
    return r;
  prune = calloc(gl.n ? gl.n : 1, sizeof *prune);
  if (!prune) {
    free(gl.v);
    return -ENOMEM;
  }
  /* Find the newest complete generation, top down; stop at any error
   * before anything is removed. */
  for (i = 0; i < gl.n; i++) {
    r = read_gen(dfd, name, kind, &gl.v[i], NULL, NULL);
    if (r == VALID) {
      valid = (ssize_t) i;
      break;
    }
    if (r == JUNK)
      prune[i] = true;
    else if (r < 0)
      goto out;
  }
  if (base && (valid < 0 ? *base != 0 : gl.v[valid].gen != *base)) {
    *ret_seen = valid < 0 ? 0 : gl.v[valid].gen;
    r = -ESTALE;
    goto out;
  }
  if (valid >= 0)
    for (i = (size_t) valid + 1; i < gl.n; i++)
      prune[i] = true;   /* older than the newest complete one */
  for (i = 0; i < gl.n; i++)
    if (prune[i]) {
      gen_name(fname, sizeof fname, name, kind, &gl.v[i]);
      (void) unlinkat(dfd, fname, 0);
    }
  if (gl.max >= MAX_GEN) {
    r = -EOVERFLOW;
    goto out;
  }
  g.gen = gl.max + 1;
  g.hash = hash;
  for (tries = 0; tries < 1000; tries++, g.gen++) {
    gen_name(fname, sizeof fname, name, kind, &g);
    fd = openat(dfd, fname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0 || errno != EEXIST)
      break;
    if (base) {
      /* Somebody wrote a generation our listing did not show: what we
       * based this write on may be old. */
      *ret_seen = g.gen;
      r = -ESTALE;
      goto out;
    }
  }
  if (fd < 0) {
    r = -errno;
    goto out;
  }
  r = write_chunked(fd, buf, len);
  /* On NFS close() flushes and reports what the server refused. */
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r == 0)
    r = kb_lock_fence_all();
  if (r < 0)
    (void) unlinkat(dfd, fname, 0);
  else if (ret_gen)
    *ret_gen = g.gen;
out:
  free(prune);
  free(gl.v);
  return r;
}

static bool same(const char *a, const char *b)
{
  return a == b || (a && b && KB_STREQ(a, b));
}

static bool has_section(const struct kb_doc *doc, const char *sec)
{
  const char *s;
  unsigned i;

  for (i = 0; (s = kb_doc_section_name(doc, i)); i++)
    if (KB_STREQ(s, sec))
      return true;
  return false;
}

/* Apply to THEIRS every change OURS made to BASE, as if the caller's
 * read-modify-write had been run again on THEIRS: where both changed the
 * same key, ours is the later write and wins; keys only they changed stay. */
static int merge_into(const struct kb_doc *base, const struct kb_doc *ours, struct kb_doc *theirs)
{
  const struct kb_doc *both[2] = { base, ours };
  unsigned d, si, ki;
  int r;

  for (d = 0; d < 2; d++) {
    const char *sec;
    for (si = 0; (sec = kb_doc_section_name(both[d], si)); si++) {
      const char *key;
      for (ki = 0; kb_doc_key_at(both[d], sec, ki, &key, NULL); ki++) {
        const char *b = kb_doc_get(base, sec, key), *o = kb_doc_get(ours, sec, key);
        const char *t = kb_doc_get(theirs, sec, key);
        if (same(o, b) || same(t, o))
          continue;
        r = kb_doc_set(theirs, sec, key, o);
        if (r < 0)
          return r;
      }
    }
  }
  /* Sections we removed whole go too, once none of their keys is left. */
  for (si = 0; kb_doc_section_name(base, si); si++) {
    const char *sec = kb_doc_section_name(base, si);
    if (!has_section(ours, sec) && has_section(theirs, sec) &&
        !kb_doc_key_at(theirs, sec, 0, NULL, NULL))
      (void) kb_doc_remove_section(theirs, sec);
  }
  return 0;
}

/* Make OURS (the caller's document) show what was written: THEIRS. Only
 * keys that differ are touched. */
static int adopt(struct kb_doc *ours, const struct kb_doc *theirs)
{
  const struct kb_doc *both[2] = { theirs, ours };
  unsigned d, si, ki;
  int r;

  for (d = 0; d < 2; d++) {
    const char *sec;
    for (si = 0; (sec = kb_doc_section_name(both[d], si)); si++) {
      const char *key;
      for (ki = 0; kb_doc_key_at(both[d], sec, ki, &key, NULL); ki++) {
        const char *t = kb_doc_get(theirs, sec, key);
        if (same(t, kb_doc_get(ours, sec, key)))
          continue;
        r = kb_doc_set(ours, sec, key, t);
        if (r < 0)
          return r;
        if (!t)
          ki--;   /* removed: the next key moved down */
      }
    }
  }
  return 0;
}

static char *doc_text(const struct kb_doc *doc, char **ret_body)
{
  char *text = kb_doc_format(doc), *all;

  if (!text)
    return NULL;
  all = kb_printf("%s" TRAILER_PREFIX "%016" PRIx64 "\n", text, (uint64_t) XXH64(text, strlen(text), 0));
  if (!all || !ret_body)
    free(text);
  else
    *ret_body = text;
  return all;
}

int kb_meta_write(const char *dir, const char *name, const struct kb_doc *doc)
{
  CLEANUP_CLOSE int dfd = -1;
  CLEANUP_FREE char *where = NULL;
  CLEANUP_FREE char *base_text = NULL;
  struct kb_doc *cur = (struct kb_doc *) doc;   /* updated only after a merge */
  unsigned long long base = 0, newgen = 0;
  struct gen known = { 0, 0 };
  const char *otext;
  bool rmw;
  int attempt, r = -ESTALE;

  if (!kb_name_ok(name))
    return -EINVAL;
  where = kb_printf("%s/%s", dir, name);
  if (!where)
    return -ENOMEM;
  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd;
  rmw = kb_doc_get_origin(doc, where, &base, &otext);
  if (rmw && !(base_text = strdup(otext)))
    return -ENOMEM;
  for (attempt = 0; attempt < MAX_MERGES; attempt++) {
    CLEANUP_FREE char *body = NULL;
    CLEANUP_FREE char *all = doc_text(cur, &body);
    unsigned long long seen = 0;
    struct gen extra[2];
    struct kb_doc *b = NULL, *t = NULL;
    char *ttext = NULL;
    size_t tlen;
    int line;

    if (!all)
      return -ENOMEM;
    r = write_gen(dfd, name, DOC, all, strlen(all), 0, rmw ? &base : NULL, known.gen ? &known : NULL,
                  &seen, &newgen);
    if (r == 0)
      return kb_doc_set_origin(doc, where, newgen, body);
    if (r != -ESTALE)
      return r;
    /* Somebody else wrote since we read: read theirs again and carry our
     * changes over (the read-modify-write, run again on the newest). */
    extra[0].gen = seen;
    extra[1] = known;
    extra[0].hash = 0;
    r = read_newest_at(dfd, name, DOC, extra, 2, &ttext, &tlen, &seen);
    if (r == -ENOENT) {
      seen = 0;
      t = kb_doc_new();
      r = t ? 0 : -ENOMEM;
    } else if (r == 0)
      r = kb_doc_parse(ttext, &t, &line);
    if (r == 0)
      r = kb_doc_parse(base_text, &b, &line);
    if (r == 0)
      r = merge_into(b, cur, t);
    if (r == 0)
      r = adopt(cur, t);
    kb_doc_free(b);
    kb_doc_free(t);
    free(base_text);
    base_text = ttext ? ttext : strdup("");
    if (r < 0)
      return r;
    if (!base_text)
      return -ENOMEM;
    base = seen;
    /* A stale listing may go on hiding what we just read: count it in. */
    if (seen > known.gen)
      known.gen = seen;
  }
  return -ESTALE;
}

/* The newest generation that verifies, or an error: see read_newest_at. */
static int read_newest(const char *dir, const char *name, enum kind kind, char **ret, size_t *ret_len,
                       unsigned long long *ret_gen)
{
  CLEANUP_CLOSE int dfd = -1;

  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd;
  return read_newest_at(dfd, name, kind, NULL, 0, ret, ret_len, ret_gen);
}

int kb_meta_read(const char *dir, const char *name, struct kb_doc **ret)
{
  CLEANUP_FREE char *buf = NULL;
  CLEANUP_FREE char *where = NULL;
  unsigned long long gen = 0;
  struct kb_doc *doc = NULL;
  size_t len;
  int r, line = 0;

  if (!kb_name_ok(name))
    return -EINVAL;
  where = kb_printf("%s/%s", dir, name);
  if (!where)
    return -ENOMEM;
  r = read_newest(dir, name, DOC, &buf, &len, &gen);
  if (r < 0)
    return r;
  if (strlen(buf) != len)
    return -EINVAL;
  r = kb_doc_parse(buf, &doc, &line);
  if (r < 0)
    return r;
  r = kb_doc_set_origin(doc, where, gen, buf);
  if (r < 0) {
    kb_doc_free(doc);
    return r;
  }
  *ret = doc;
  return 0;
}

static int remove_all(const char *dir, const char *name, enum kind kind)
{
  CLEANUP_CLOSE int dfd = -1;
  struct gens gl;
  size_t i;
  int r;

  dfd = open_dir(dir);
  if (dfd < 0)
    return dfd == -ENOENT ? 0 : dfd;
  r = kb_lock_fence_all();
  if (r < 0)
    return r;
  r = list_gens(dfd, name, kind, NULL, 0, &gl);
  if (r < 0)
    return r;
  for (i = 0; i < gl.n; i++) {
    char fname[512];
    gen_name(fname, sizeof fname, name, kind, &gl.v[i]);
    if (unlinkat(dfd, fname, 0) < 0 && errno != ENOENT && r == 0)
      r = -errno;
  }
  if (r == 0 && gl.truncated)
    r = -EAGAIN;   /* more than we could see at once: call again */
  free(gl.v);
  return r;
}

int kb_meta_remove(const char *dir, const char *name)
{
  int r, i;

  if (!kb_name_ok(name))
    return -EINVAL;
  for (i = 0; (r = remove_all(dir, name, DOC)) == -EAGAIN && i < 1000; i++)
    ;
  return r;
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
  return write_gen(dfd, base, FILE_, content, len, XXH64(content, len, 0), NULL, NULL, NULL, NULL);
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
  r = read_newest(dir, base, FILE_, ret, &len, NULL);
  if (r == 0 && ret_len)
    *ret_len = len;
  return r;
}

int kb_meta_remove_file(const char *path)
{
  CLEANUP_FREE char *dir = NULL;
  const char *base;
  int r, i;

  r = split_path(path, &dir, &base);
  if (r < 0)
    return r;
  for (i = 0; (r = remove_all(dir, base, FILE_)) == -EAGAIN && i < 1000; i++)
    ;
  return r;
}

static int strcmp_p(const void *a, const void *b)
{
  return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Entries (generations of any name) a listing takes in: beyond, the rest
 * is left out and the listing says so. */
#define MAX_LIST_ENTRIES 131072

/* Names in DIR that have generations of KIND, sorted, distinct. 1 when
 * the folder held more than MAX_LIST_ENTRIES and the list is partial. */
static int list_names(const char *dir, enum kind kind, char ***ret)
{
  CLEANUP_CLOSE int dfd = -1;
  char **v = NULL;
  size_t n = 0, cap = 0, i, j;
  bool truncated = false;
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
    if (n >= MAX_LIST_ENTRIES) {
      free(copy);
      truncated = true;
      break;
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
  return truncated ? 1 : 0;
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
