#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "doc.h"
#include "util.h"

/* What the system inih (Debian's build) can read back: a line of at most
 * INI_MAX_LINE - 1 bytes counting its newline, no inline ";" comment, no
 * leading or trailing blanks (stripped). kb_doc_set refuses values that
 * would not survive kb_doc_format + kb_doc_parse unchanged. */
#define KB_DOC_MAX_LINE 198

struct kv {
  char *key;
  char *value;
};

struct section {
  char *name;
  struct kv *kv;
  size_t nkv, cap;
};

struct kb_doc {
  struct section *sec;
  size_t nsec, cap;
  unsigned ninvalid;         /* values dropped by kb_doc_parse */
  char *first_invalid;       /* "section/key" of the first */
  /* Where the catalog read it from (lib/meta.c): the base of a
   * read-modify-write. */
  char *origin;
  unsigned long long origin_gen;
  char *origin_text;
};

struct kb_doc *kb_doc_new(void)
{
  return calloc(1, sizeof(struct kb_doc));
}

static void section_clear(struct section *s)
{
  size_t i;

  for (i = 0; i < s->nkv; i++) {
    free(s->kv[i].key);
    free(s->kv[i].value);
  }
  free(s->kv);
  free(s->name);
}

void kb_doc_free(struct kb_doc *doc)
{
  size_t i;

  if (!doc)
    return;
  free(doc->first_invalid);
  for (i = 0; i < doc->nsec; i++)
    section_clear(&doc->sec[i]);
  free(doc->sec);
  free(doc->origin);
  free(doc->origin_text);
  free(doc);
}

int kb_doc_set_origin(const struct kb_doc *cdoc, const char *where, unsigned long long gen,
                      const char *text)
{
  struct kb_doc *doc = (struct kb_doc *) cdoc;   /* bookkeeping, not content */
  char *w = where ? strdup(where) : NULL, *t = text ? strdup(text) : NULL;

  if ((where && !w) || (text && !t)) {
    free(w);
    free(t);
    return -ENOMEM;
  }
  free(doc->origin);
  free(doc->origin_text);
  doc->origin = w;
  doc->origin_gen = gen;
  doc->origin_text = t;
  return 0;
}

bool kb_doc_get_origin(const struct kb_doc *doc, const char *where, unsigned long long *ret_gen,
                       const char **ret_text)
{
  if (!doc->origin || !where || !KB_STREQ(doc->origin, where) || !doc->origin_text)
    return false;
  *ret_gen = doc->origin_gen;
  *ret_text = doc->origin_text;
  return true;
}

static struct section *find_section(const struct kb_doc *doc, const char *name)
{
  size_t i;

  for (i = 0; i < doc->nsec; i++)
    if (KB_STREQ(doc->sec[i].name, name))
      return &doc->sec[i];
  return NULL;
}

static struct kv *find_key(const struct section *s, const char *key)
{
  size_t i;

  for (i = 0; i < s->nkv; i++)
    if (KB_STREQ(s->kv[i].key, key))
      return &s->kv[i];
  return NULL;
}

/* Section names: "global", "disk:vda", "account:x y"... anything inih reads
 * back: printable, no "[];#", no blanks at either end. "" is the part before
 * the first header. */
static bool section_ok(const char *s)
{
  size_t n = strlen(s);
  const char *p;

  if (n == 0)
    return true;
  if (n + 2 > KB_DOC_MAX_LINE || isspace((unsigned char) s[0]) || isspace((unsigned char) s[n - 1]))
    return false;
  for (p = s; *p; p++)
    if (!isprint((unsigned char) *p) || strchr("[];#", *p))
      return false;
  return true;
}

static bool key_ok(const char *k)
{
  const char *p;

  if (!*k || strlen(k) > 128)
    return false;
  for (p = k; *p; p++)
    if (!(isalnum((unsigned char) *p) || strchr("._-", *p)))
      return false;
  return true;
}

/* STRICT (what kboss writes) also refuses control characters; a value
 * read back keeps them (they are escaped where printed) but must survive
 * kb_doc_format + kb_doc_parse like any other. */
static int value_check_mode(const char *key, const char *v, bool strict)
{
  size_t n = strlen(v);
  const char *p;

  if (strpbrk(v, "\n\r"))
    return -EINVAL;
  if (n && (isspace((unsigned char) v[0]) || isspace((unsigned char) v[n - 1])))
    return -EINVAL;
  for (p = v; *p; p++) {
    if (strict && !isprint((unsigned char) *p) && !(*p & 0x80) && *p != '\t')
      return -EINVAL;
    /* inih starts an inline comment at ";" after a blank (or at the start
     * of the value, which follows "key = "). */
    if (*p == ';' && (p == v || isspace((unsigned char) p[-1])))
      return -EINVAL;
  }
  if (strlen(key) + 3 + n > KB_DOC_MAX_LINE)
    return -E2BIG;
  return 0;
}

static int value_check(const char *key, const char *v)
{
  return value_check_mode(key, v, true);
}

static struct section *add_section(struct kb_doc *doc, const char *name)
{
  struct section *s;

  if (doc->nsec == doc->cap) {
    size_t cap = doc->cap ? doc->cap * 2 : 8;
    struct section *n = realloc(doc->sec, cap * sizeof *n);
    if (!n)
      return NULL;
    doc->sec = n;
    doc->cap = cap;
  }
  s = &doc->sec[doc->nsec];
  memset(s, 0, sizeof *s);
  s->name = strdup(name);
  if (!s->name)
    return NULL;
  doc->nsec++;
  return s;
}

static int put(struct kb_doc *doc, const char *section, const char *key, const char *value)
{
  struct section *s = find_section(doc, section);
  struct kv *kv;
  char *v;

  if (!s && !(s = add_section(doc, section)))
    return -ENOMEM;
  v = strdup(value);
  if (!v)
    return -ENOMEM;
  kv = find_key(s, key);
  if (kv) {
    free(kv->value);
    kv->value = v;
    return 0;
  }
  if (s->nkv == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    struct kv *n = realloc(s->kv, cap * sizeof *n);
    if (!n) {
      free(v);
      return -ENOMEM;
    }
    s->kv = n;
    s->cap = cap;
  }
  s->kv[s->nkv].key = strdup(key);
  if (!s->kv[s->nkv].key) {
    free(v);
    return -ENOMEM;
  }
  s->kv[s->nkv].value = v;
  s->nkv++;
  return 0;
}

struct parse_state {
  struct kb_doc *doc;
  int err;
};

/* ---- what a value read from the catalog may be ----
 * Catalog documents come from the shared export, where any host may have
 * written them (docs/security.md).  Values of the fields below have a
 * shape; one that does not fit is dropped when the document is read, as if
 * the key were absent, and counted (kb_doc_invalid).  Free text (errors,
 * results, names of VMs) keeps any byte; it is escaped where printed. */
enum rule { R_TEXT, R_NAME, R_NAMES, R_UUID, R_UINT, R_BOOL, R_TIME, R_HEX };

static const struct {
  const char *key;
  enum rule rule;
} field_rules[] = {
  { "id", R_NAME }, { "parent", R_NAME }, { "chain", R_NAME }, { "current_chain", R_NAME },
  { "last_backup", R_NAME }, { "backup", R_NAME }, { "checkpoint", R_NAME }, { "last_checkpoint", R_NAME },
  { "since_checkpoint", R_NAME }, { "last_restore", R_NAME }, { "file", R_NAME }, { "backing", R_NAME },
  { "state", R_NAME }, { "type", R_NAME }, { "mode", R_NAME }, { "format", R_NAME }, { "bus", R_NAME },
  { "compression_library", R_NAME }, { "host", R_NAME }, { "schedule", R_NAME },
  { "disks", R_NAMES },
  { "uuid", R_UUID }, { "vm_uuid", R_UUID }, { "in_use_by", R_UUID },
  { "size", R_UINT }, { "virtual_size", R_UINT }, { "uncompressed_size", R_UINT }, { "length", R_UINT },
  { "pid", R_UINT }, { "attempts", R_UINT }, { "next_attempt", R_UINT },
  { "schedule_keep_last", R_UINT }, { "schedule_keep_hourly", R_UINT }, { "schedule_keep_daily", R_UINT },
  { "schedule_keep_weekly", R_UINT }, { "schedule_keep_monthly", R_UINT }, { "schedule_keep_yearly", R_UINT },
  { "ended", R_BOOL }, { "isolated", R_BOOL }, { "full_disks", R_BOOL }, { "quiesced", R_BOOL },
  { "vm_was_running", R_BOOL }, { "started_paused", R_BOOL }, { "compressed", R_BOOL }, { "validated", R_BOOL },
  { "created", R_TIME }, { "started", R_TIME }, { "finished", R_TIME }, { "updated", R_TIME },
  { "validated_at", R_TIME }, { "compressed_at", R_TIME }, { "last_backup_time", R_TIME }, { "hashed", R_TIME },
  { "hash_checked", R_TIME }, { "completed", R_TIME }, { "last_failure_time", R_TIME }, { "failures", R_UINT },
  { "hash", R_HEX },
};

static bool all_of(const char *v, const char *set, size_t max)
{
  size_t n = strlen(v);
  return n > 0 && n <= max && strspn(v, set) == n;
}

static bool value_fits(const char *key, const char *v)
{
  size_t i;

  for (i = 0; i < KB_ARRAY_SIZE(field_rules); i++) {
    if (!KB_STREQ(field_rules[i].key, key))
      continue;
    switch (field_rules[i].rule) {
    case R_TEXT:
      return true;
    case R_NAME:
      return kb_name_ok(v);
    case R_NAMES: {
      CLEANUP_FREE char *copy = strdup(v);
      char *save = NULL, *t;
      if (!copy)
        return false;
      for (t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (!kb_name_ok(t))
          return false;
      return true;
    }
    case R_UUID:
      return kb_uuid_ok(v);
    case R_UINT: {
      long long x;
      return kb_parse_ll(v, &x) == 0 && x >= 0;
    }
    case R_BOOL: {
      bool b;
      return kb_parse_bool(v, &b) == 0;
    }
    case R_TIME:
      return all_of(v, "0123456789-:TZ.+", 40);
    case R_HEX:
      return all_of(v, "0123456789abcdefABCDEF", 128);
    }
  }
  return true;
}

static int handler(void *user, const char *section, const char *key, const char *value)
{
  struct parse_state *ps = user;
  int r;

  if (!key_ok(key))
    return 0;   /* inih reports this line */
  if (!value_fits(key, value) || value_check_mode(key, value, false) < 0) {
    if (ps->doc->ninvalid++ == 0 && !(ps->doc->first_invalid = kb_printf("%s/%s", section, key))) {
      ps->err = -ENOMEM;
      return 0;
    }
    return 1;
  }
  r = put(ps->doc, section, key, value);
  if (r < 0) {
    ps->err = r;
    return 0;
  }
  return 1;
}

/* inih splits lines longer than its buffer and folds indented lines into the
 * previous value; both would silently change a document, so such lines are
 * refused here with their line number before inih sees the text. */
static int precheck(const char *text)
{
  const char *p = text;
  int line = 1;

  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t) (nl - p) : strlen(p);
    const char *q = p;

    if (len > KB_DOC_MAX_LINE)
      return line;
    while (q < p + len && (*q == ' ' || *q == '\t'))
      q++;
    if (q > p && q < p + len && *q != ';' && *q != '#' && *q != '\r')
      return line;
    if (!nl)
      break;
    p = nl + 1;
    line++;
  }
  return 0;
}

int kb_doc_parse(const char *text, struct kb_doc **ret, int *ret_line)
{
  struct parse_state ps = { .doc = kb_doc_new(), .err = 0 };
  int r;

  if (!ps.doc)
    return -ENOMEM;
  r = precheck(text);
  if (r == 0)
    r = ini_parse_string(text, handler, &ps);
  if (ps.err < 0 && ps.err != -EINVAL) {
    kb_doc_free(ps.doc);
    return ps.err;
  }
  if (r != 0) {
    kb_doc_free(ps.doc);
    if (ret_line)
      *ret_line = r;
    return r < 0 ? -ENOMEM : -EINVAL;
  }
  *ret = ps.doc;
  return 0;
}

struct buf {
  char *p;
  size_t len, cap;
  bool oom;
};

static void buf_add(struct buf *b, const char *s)
{
  size_t n = strlen(s);

  if (b->oom)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    char *np;
    while (cap < b->len + n + 1)
      cap *= 2;
    np = realloc(b->p, cap);
    if (!np) {
      b->oom = true;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

static void format_section(struct buf *b, const struct section *s, bool blank_before)
{
  size_t i;

  if (*s->name) {
    if (blank_before)
      buf_add(b, "\n");
    buf_add(b, "[");
    buf_add(b, s->name);
    buf_add(b, "]\n");
  }
  for (i = 0; i < s->nkv; i++) {
    buf_add(b, s->kv[i].key);
    buf_add(b, " = ");
    buf_add(b, s->kv[i].value);
    buf_add(b, "\n");
  }
}

char *kb_doc_format(const struct kb_doc *doc)
{
  struct buf b = { 0 };
  const struct section *top = find_section(doc, "");
  size_t i;

  buf_add(&b, "");
  if (top)
    format_section(&b, top, false);
  for (i = 0; i < doc->nsec; i++)
    if (*doc->sec[i].name)
      format_section(&b, &doc->sec[i], b.len > 0);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

const char *kb_doc_get(const struct kb_doc *doc, const char *section, const char *key)
{
  const struct section *s = find_section(doc, section);
  const struct kv *kv = s ? find_key(s, key) : NULL;

  return kv ? kv->value : NULL;
}

long long kb_doc_get_ll(const struct kb_doc *doc, const char *section, const char *key, long long fallback)
{
  long long v;

  if (kb_parse_ll(kb_doc_get(doc, section, key), &v) < 0)
    return fallback;
  return v;
}

bool kb_doc_get_bool(const struct kb_doc *doc, const char *section, const char *key, bool fallback)
{
  bool v;

  if (kb_parse_bool(kb_doc_get(doc, section, key), &v) < 0)
    return fallback;
  return v;
}

int kb_doc_set(struct kb_doc *doc, const char *section, const char *key, const char *value)
{
  struct section *s;
  int r;

  if (!section_ok(section) || !key_ok(key))
    return -EINVAL;
  if (!value) {
    struct kv *kv;
    s = find_section(doc, section);
    if (!s || !(kv = find_key(s, key)))
      return 0;
    free(kv->key);
    free(kv->value);
    memmove(kv, kv + 1, (s->nkv - (kv - s->kv) - 1) * sizeof *kv);
    s->nkv--;
    return 0;
  }
  r = value_check(key, value);
  if (r < 0)
    return r;
  return put(doc, section, key, value);
}

int kb_doc_set_ll(struct kb_doc *doc, const char *section, const char *key, long long value)
{
  char buf[32];

  snprintf(buf, sizeof buf, "%lld", value);
  return kb_doc_set(doc, section, key, buf);
}

int kb_doc_remove_section(struct kb_doc *doc, const char *section)
{
  struct section *s = find_section(doc, section);

  if (!s)
    return 0;
  section_clear(s);
  memmove(s, s + 1, (doc->nsec - (s - doc->sec) - 1) * sizeof *s);
  doc->nsec--;
  return 0;
}

const char *kb_doc_section_name(const struct kb_doc *doc, unsigned n)
{
  return n < doc->nsec ? doc->sec[n].name : NULL;
}

bool kb_doc_key_at(const struct kb_doc *doc, const char *section, unsigned n,
                   const char **ret_key, const char **ret_value)
{
  const struct section *s = find_section(doc, section);

  if (!s || n >= s->nkv)
    return false;
  if (ret_key)
    *ret_key = s->kv[n].key;
  if (ret_value)
    *ret_value = s->kv[n].value;
  return true;
}

int kb_doc_set_text(struct kb_doc *doc, const char *section, const char *key, const char *text)
{
  size_t max, n, i, o = 0;
  char *buf;
  int r;

  if (!text)
    return kb_doc_set(doc, section, key, NULL);
  max = KB_DOC_MAX_LINE > strlen(key) + 3 ? KB_DOC_MAX_LINE - strlen(key) - 3 : 0;
  n = strlen(text);
  buf = malloc(n + 1);
  if (!buf)
    return -ENOMEM;
  for (i = 0; i < n; i++) {
    char c = text[i];
    if (c == '\n' || c == '\r' || c == '\t' || (!isprint((unsigned char) c) && !(c & 0x80)))
      c = ' ';
    if (c == ';' && (o == 0 || buf[o - 1] == ' '))
      c = ',';
    if (c == ' ' && (o == 0 || buf[o - 1] == ' '))
      continue;
    buf[o++] = c;
  }
  while (o > 0 && buf[o - 1] == ' ')
    o--;
  if (o > max && max > 3) {
    o = max - 3;
    while (o > 0 && buf[o - 1] == ' ')
      o--;
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o] = '\0';
  r = kb_doc_set(doc, section, key, buf);
  free(buf);
  return r;
}

unsigned kb_doc_invalid(const struct kb_doc *doc, const char **ret_first)
{
  if (ret_first)
    *ret_first = doc->first_invalid;
  return doc->ninvalid;
}
