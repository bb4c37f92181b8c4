/* Reading kboss's INI files (see kbconfig.h and docs/configuration.md):
 * kboss.conf, offerings.d/ and vms.d/, every problem reported with its file
 * and line.
 *
 * inih does the key = value parsing. The handler of the packaged inih gets
 * no line number, so the files are fed to ini_parse_stream() through a
 * reader that counts lines; the same reader checks section headers and line
 * syntax, so that every error is reported with its line, not only the first.
 * Before that, the whole text is checked to be text: a NUL would end it
 * early for inih, and control characters have no place in a setting. */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "config-internal.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

void kbc_error(struct kbc_parse *p, int line, const char *key, const char *fmt, ...)
{
  va_list ap;

  if (line > 0)
    fprintf(p->errs, "%s:%d: ", p->file, line);
  else
    fprintf(p->errs, "%s: ", p->file);
  if (key)
    fprintf(p->errs, "%s: ", key);
  va_start(ap, fmt);
  vfprintf(p->errs, fmt, ap);
  va_end(ap);
  fputc('\n', p->errs);
  p->n_errs++;
}

int kbc_entries_add(struct kbc_entries *es, const char *section, const char *key,
                       const char *value, int line)
{
  struct kbc_entry *e;

  if (es->n == es->cap) {
    size_t cap = es->cap ? es->cap * 2 : 16;
    struct kbc_entry *v = realloc(es->v, cap * sizeof *v);
    if (!v)
      return -ENOMEM;
    es->v = v;
    es->cap = cap;
  }
  e = &es->v[es->n];
  e->section = strdup(section);
  e->key = strdup(key);
  e->value = strdup(value);
  e->line = line;
  if (!e->section || !e->key || !e->value) {
    free(e->section);
    free(e->key);
    free(e->value);
    return -ENOMEM;
  }
  es->n++;
  return 0;
}

void kbc_entries_free(struct kbc_entries *es)
{
  for (size_t i = 0; i < es->n; i++) {
    free(es->v[i].section);
    free(es->v[i].key);
    free(es->v[i].value);
  }
  free(es->v);
  es->v = NULL;
  es->n = es->cap = 0;
}

const struct kbc_entry *kbc_entries_find(const struct kbc_entries *es, const char *section,
                                        const char *key)
{
  for (size_t i = 0; i < es->n; i++)
    if (strcmp(es->v[i].section, section) == 0 && strcmp(es->v[i].key, key) == 0)
      return &es->v[i];
  return NULL;
}

/* The level a kboss.conf section stands for, or -1 when it holds no settings. */
static int section_level(const char *section)
{
  if (strcmp(section, "global") == 0)
    return KB_SCOPE_GLOBAL;
  if (strcmp(section, "zone") == 0)
    return KB_SCOPE_ZONE;
  if (strcmp(section, "cluster") == 0)
    return KB_SCOPE_CLUSTER;
  if (strncmp(section, "account:", 8) == 0)
    return KB_SCOPE_ACCOUNT;
  return -1;
}

bool kbc_bool_field(struct kbc_parse *p, const char *key, const char *value, bool *out)
{
  if (kb_parse_bool(value, out) < 0) {
    kbc_error(p, p->line, key, "must be true or false, not \"%s\"", value);
    return false;
  }
  return true;
}

int kbc_set_str(char **dst, const char *value)
{
  char *s = strdup(value);
  if (!s)
    return -ENOMEM;
  free(*dst);
  *dst = s;
  return 0;
}

/* ---- the reader and the handler ---- */

static bool section_known(struct kbc_parse *p, const char *name, int line)
{
  switch (p->kind) {
  case KBC_FILE_MAIN:
    if (section_level(name) >= 0 || strncmp(name, "store:", 6) == 0) {
      const char *colon = strchr(name, ':');
      if (colon && !kb_name_ok(colon + 1)) {
        kbc_error(p, line, NULL, "[%s]: \"%s\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)",
                  name, colon + 1);
        return false;
      }
      return true;
    }
    kbc_error(p, line, NULL, "[%s]: unknown section (expected [global], [zone], [cluster], "
              "[account:NAME] or [store:NAME])", name);
    return false;
  case KBC_FILE_OFFERING:
    if (strcmp(name, "offering") == 0)
      return true;
    kbc_error(p, line, NULL, "[%s]: unknown section (an offering file has only [offering])", name);
    return false;
  case KBC_FILE_VM:
    if (strcmp(name, "vm") == 0)
      return true;
    kbc_error(p, line, NULL, "[%s]: unknown section (a VM file has only [vm])", name);
    return false;
  }
  return false;
}

static void store_section(struct kbc_parse *p, const char *name, int line)
{
  struct kb_config *cfg = p->cfg;
  struct kb_store *s;
  int *lines;

  for (size_t i = 0; i < cfg->n_stores; i++)
    if (strcmp(cfg->stores[i].name, name) == 0) {
      kbc_error(p, line, NULL, "[store:%s]: section repeated (first at line %d)", name,
                cfg->store_lines[i]);
      return;
    }
  s = realloc(cfg->stores, (cfg->n_stores + 1) * sizeof *s);
  if (!s) {
    p->enomem = 1;
    return;
  }
  cfg->stores = s;
  lines = realloc(cfg->store_lines, (cfg->n_stores + 1) * sizeof *lines);
  if (!lines) {
    p->enomem = 1;
    return;
  }
  cfg->store_lines = lines;
  s = &cfg->stores[cfg->n_stores];
  memset(s, 0, sizeof *s);
  s->name = strdup(name);
  if (!s->name) {
    p->enomem = 1;
    return;
  }
  lines[cfg->n_stores] = line;
  cfg->n_stores++;
}

/* Look at a whole line before inih does: count it, check a section header
 * or that it is KEY = VALUE. */
static void check_line(struct kbc_parse *p, const char *s, size_t len)
{
  size_t a = 0, z = len;

  while (a < z && isspace((unsigned char) s[a]))
    a++;
  while (z > a && isspace((unsigned char) s[z - 1]))
    z--;
  if (a == z || s[a] == ';' || s[a] == '#')
    return;
  if (s[a] == '[') {
    const char *close = memchr(s + a, ']', z - a);
    char name[256];
    size_t n;

    p->section_ok = false;
    p->section_line = p->line;
    if (!close) {
      kbc_error(p, p->line, NULL, "section header without ]");
      return;
    }
    n = close - (s + a + 1);
    if (n >= sizeof name) {
      kbc_error(p, p->line, NULL, "section name too long");
      return;
    }
    memcpy(name, s + a + 1, n);
    name[n] = '\0';
    p->section_ok = section_known(p, name, p->line);
    if (p->section_ok && p->kind == KBC_FILE_MAIN && strncmp(name, "store:", 6) == 0)
      store_section(p, name + 6, p->line);
    return;
  }
  if (!memchr(s + a, '=', z - a) && !memchr(s + a, ':', z - a))
    kbc_error(p, p->line, NULL, "expected KEY = VALUE or [section], not \"%.*s\"",
              (int) (z - a > 60 ? 60 : z - a), s + a);
}

static char *reader(char *str, int num, void *stream)
{
  struct kbc_parse *p = stream;
  const char *s = p->text + p->pos;
  size_t left = p->len - p->pos, len, n;
  const char *nl;

  if (!left || num < 2)
    return NULL;
  nl = memchr(s, '\n', left);
  len = nl ? (size_t) (nl - s) + 1 : left;
  if (p->at_line_start) {
    p->line++;
    if (len > KB_CONFIG_MAX_LINE - 2)
      kbc_error(p, p->line, NULL, "line longer than %d characters", KB_CONFIG_MAX_LINE - 2);
    check_line(p, s, len);
  }
  n = len < (size_t) num - 1 ? len : (size_t) num - 1;
  memcpy(str, s, n);
  str[n] = '\0';
  p->pos += n;
  p->at_line_start = n > 0 && str[n - 1] == '\n';
  return str;
}

static void main_key(struct kbc_parse *p, const char *section, const char *key, const char *value)
{
  const struct kb_setting_def *d;
  char why[256];
  int level;

  if (strncmp(section, "store:", 6) == 0) {
    struct kb_store *st = NULL;
    for (size_t i = 0; i < p->cfg->n_stores; i++)
      if (strcmp(p->cfg->stores[i].name, section + 6) == 0)
        st = &p->cfg->stores[i];
    if (!st)
      return;
    if (strcmp(key, "path") == 0) {
      if (value[0] != '/')
        kbc_error(p, p->line, key, "must be an absolute path");
      else if (kbc_set_str(&st->path, value) < 0)
        p->enomem = 1;
    } else if (strcmp(key, "backups_only") == 0) {
      kbc_bool_field(p, key, value, &st->backups_only);
    } else
      kbc_error(p, p->line, key, "unknown key in [%s] (known: path, backups_only)", section);
    return;
  }

  d = kb_setting_find(key);
  if (!d) {
    kbc_error(p, p->line, key, "unknown key");
    return;
  }
  if (d->scope == KB_SCOPE_VM) {
    kbc_error(p, p->line, key, "is a VM setting: set it in vms.d/VM.conf");
    return;
  }
  level = section_level(section);
  if (level > (int) d->scope) {
    kbc_error(p, p->line, key, "has %s scope: it cannot be set in [%s]",
              kb_scope_name(d->scope), section);
    return;
  }
  if (kb_setting_check(d, value, why, sizeof why) < 0)
    kbc_error(p, p->line, key, "%s", why);
}

static void vm_key(struct kbc_parse *p, const char *key, const char *value)
{
  const struct kb_setting_def *d;
  char why[256];

  if (strcmp(key, "account") == 0 || strcmp(key, "offering") == 0) {
    if (!kb_name_ok(value))
      kbc_error(p, p->line, key, "\"%s\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)", value);
    return;
  }
  d = kb_setting_find(key);
  if (!d) {
    kbc_error(p, p->line, key, "unknown key");
    return;
  }
  if (d->scope != KB_SCOPE_VM) {
    kbc_error(p, p->line, key, "has %s scope: it cannot be set per VM", kb_scope_name(d->scope));
    return;
  }
  if (kb_setting_check(d, value, why, sizeof why) < 0)
    kbc_error(p, p->line, key, "%s", why);
}

static int handler(void *user, const char *section, const char *key, const char *value)
{
  struct kbc_parse *p = user;
  const struct kbc_entry *prev;
  size_t before = p->n_errs;

  if (!*section) {
    kbc_error(p, p->line, key, "is outside any section");
    return 1;
  }
  if (!p->section_ok)
    return 1;  /* the section header was reported */

  prev = kbc_entries_find(p->out, section, key);
  if (prev) {
    kbc_error(p, p->line, key, "set twice in [%s] (first at line %d)", section, prev->line);
    return 1;
  }
  switch (p->kind) {
  case KBC_FILE_MAIN: main_key(p, section, key, value); break;
  case KBC_FILE_OFFERING: kbc_offering_field(p, key, value); break;
  case KBC_FILE_VM: vm_key(p, key, value); break;
  }
  /* Keep bad values out, so that nothing ever resolves to them. */
  if (p->n_errs == before && kbc_entries_add(p->out, section, key, value, p->line) < 0)
    p->enomem = 1;
  return 1;
}

/* Length of the UTF-8 sequence at S (at most N bytes), or 0 if it is not
 * one: no overlong forms, surrogates or code points above U+10FFFF. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
  size_t len;
  unsigned cp;

  if (s[0] < 0x80)
    return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf) {
    len = 2;
    cp = s[0] & 0x1f;
  } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
    len = 3;
    cp = s[0] & 0x0f;
  } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
    len = 4;
    cp = s[0] & 0x07;
  } else
    return 0;
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
      (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return len;
}

/* Report each line of TEXT that holds a byte no INI text has: NUL (inih
 * would stop there and silently drop the rest), another control character
 * than tab and line ends, or bytes that are not UTF-8. True if clean. */
static bool text_clean(struct kbc_parse *p, const char *text, size_t len)
{
  const unsigned char *s = (const unsigned char *) text;
  size_t before = p->n_errs, i = 0;
  int line = 1;

  while (i < len) {
    unsigned char c = s[i];
    size_t n;

    if (c == '\n') {
      line++;
      i++;
      continue;
    }
    if (c == 0 || (c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
      if (c == 0)
        kbc_error(p, line, NULL, "holds a NUL byte: not a text file");
      else
        kbc_error(p, line, NULL, "holds the control character 0x%02x: not allowed in a "
                  "configuration file", c);
    } else if (!(n = utf8_len(s + i, len - i))) {
      kbc_error(p, line, NULL, "holds bytes that are not UTF-8 text");
    } else {
      i += n;
      continue;
    }
    /* One report a line: skip to its end. */
    while (i < len && s[i] != '\n')
      i++;
  }
  return p->n_errs == before;
}

int kbc_parse_text(struct kbc_parse *p, const char *text, size_t len)
{
  int r;

  if (!text_clean(p, text, len))
    return 0;
  p->text = text;
  p->len = len;
  p->pos = 0;
  p->line = 0;
  p->at_line_start = true;
  p->section_ok = false;
  p->section_line = 0;
  /* The packaged inih reads these at run time: lines of any length, no
   * continuation lines (an indented line is an ordinary line). */
  ini_use_stack = false;
  ini_allow_realloc = true;
  ini_max_line = KB_CONFIG_MAX_LINE;
  ini_allow_multiline = false;
  ini_stop_on_first_error = false;
  r = ini_parse_stream(reader, p, handler, p);
  if (r == -2 || p->enomem)
    return -ENOMEM;
  /* r > 0 is a syntax error, already reported by check_line(). */
  return 0;
}

/* ---- loading ---- */

int kbc_read_text(struct kbc_parse *p, const char *path, char **ret, size_t *ret_len)
{
  int r = kb_read_file(path, ret, ret_len);
  if (r < 0) {
    kbc_error(p, 0, NULL, "cannot read: %s", strerror(-r));
    return r;
  }
  return 0;
}

static char *stem_of(const char *name)
{
  size_t n = strlen(name);
  if (n <= 5 || strcmp(name + n - 5, ".conf") != 0 || name[0] == '.')
    return NULL;
  return strndup(name, n - 5);
}

static int conf_filter(const struct dirent *de)
{
  size_t n = strlen(de->d_name);
  return de->d_name[0] != '.' && n > 5 && strcmp(de->d_name + n - 5, ".conf") == 0;
}

int kbc_parse_vm_text(struct kbc_parse *p, const char *path, const char *name, const char *text,
                      size_t len, struct kbc_vm *ret)
{
  struct kbc_vm vc = { 0 };
  int r;

  p->kind = KBC_FILE_VM;
  p->file = path;
  p->stem = name;
  p->out = &vc.e;
  r = kbc_parse_text(p, text, len);
  vc.name = strdup(name);
  vc.file = strdup(path);
  vc.section = kb_printf("vm:%s", name);
  if (r < 0 || !vc.name || !vc.file || !vc.section) {
    free(vc.name);
    free(vc.file);
    free(vc.section);
    kbc_entries_free(&vc.e);
    return -ENOMEM;
  }
  *ret = vc;
  return 0;
}

void kbc_vm_clear(struct kbc_vm *vc)
{
  free(vc->name);
  free(vc->file);
  free(vc->section);
  kbc_entries_free(&vc->e);
}

static int load_vm(struct kbc_parse *p, const char *path, const char *name)
{
  struct kb_config *cfg = p->cfg;
  CLEANUP_FREE char *text = NULL;
  size_t len = 0;
  struct kbc_vm vc, *v;
  int r;

  p->file = path;
  if (!kb_name_ok(name)) {
    kbc_error(p, 0, NULL, "\"%s\" is not a valid VM name (1-128 of A-Z a-z 0-9 . _ -)", name);
    return 0;
  }
  if (kbc_read_text(p, path, &text, &len) < 0)
    return 0;
  r = kbc_parse_vm_text(p, path, name, text, len, &vc);
  if (r < 0)
    return r;
  v = realloc(cfg->vms, (cfg->n_vms + 1) * sizeof *v);
  if (!v) {
    kbc_vm_clear(&vc);
    return -ENOMEM;
  }
  cfg->vms = v;
  cfg->vms[cfg->n_vms++] = vc;
  return 0;
}

/* Each NAME.conf of DIR (missing DIR is fine), in name order. */
static int load_dir(struct kbc_parse *p, const char *dir, bool offerings)
{
  struct dirent **list = NULL;
  int n, r = 0;

  n = scandir(dir, &list, conf_filter, alphasort);
  if (n < 0) {
    if (errno == ENOENT)
      return 0;
    p->file = dir;
    kbc_error(p, 0, NULL, "cannot read: %s", strerror(errno));
    return 0;
  }
  for (int i = 0; i < n; i++) {
    CLEANUP_FREE char *stem = stem_of(list[i]->d_name);
    CLEANUP_FREE char *path = kb_printf("%s/%s", dir, list[i]->d_name);
    if (r == 0) {
      if (!stem || !path)
        r = -ENOMEM;
      else
        r = offerings ? kbc_load_offering(p, path, stem) : load_vm(p, path, stem);
    }
    free(list[i]);
  }
  free(list);
  return r;
}

struct kbc_vm *kbc_find_vm(const struct kb_config *cfg, const char *vm)
{
  if (!vm)
    return NULL;
  for (size_t i = 0; i < cfg->n_vms; i++)
    if (strcmp(cfg->vms[i].name, vm) == 0)
      return &cfg->vms[i];
  return NULL;
}

int kbc_build_vm_names(struct kb_config *cfg)
{
  char **names = calloc(cfg->n_vms + 1, sizeof *names);

  if (!names)
    return -ENOMEM;
  for (size_t i = 0; i < cfg->n_vms; i++)
    names[i] = cfg->vms[i].name;   /* owned by vms[] */
  free(cfg->vm_names);
  cfg->vm_names = names;
  return 0;
}

/* Checks that need every file: stores complete, VMs' offerings exist. */
static int check_whole(struct kbc_parse *p)
{
  struct kb_config *cfg = p->cfg;

  p->file = cfg->path;
  for (size_t i = 0; i < cfg->n_stores; i++)
    if (!cfg->stores[i].path)
      kbc_error(p, cfg->store_lines[i], "path", "missing in [store:%s]", cfg->stores[i].name);
  if (cfg->n_stores == 0) {
    const char *path = kb_config_str(cfg, NULL, "secondary.path");
    cfg->stores = calloc(1, sizeof *cfg->stores);
    cfg->store_lines = calloc(1, sizeof *cfg->store_lines);
    if (!cfg->stores || !cfg->store_lines)
      return -ENOMEM;
    cfg->stores[0].name = strdup("default");
    cfg->stores[0].path = strdup(path);
    if (!cfg->stores[0].name || !cfg->stores[0].path)
      return -ENOMEM;
    cfg->n_stores = 1;
  }
  for (size_t i = 0; i < cfg->n_vms; i++) {
    const struct kbc_entry *e = kbc_entries_find(&cfg->vms[i].e, "vm", "offering");
    if (e && !kb_config_offering(cfg, e->value)) {
      p->file = cfg->vms[i].file;
      kbc_error(p, e->line, "offering", "no offering \"%s\" (offerings.d/%s.conf)", e->value,
                e->value);
    }
  }
  return 0;
}

const char *kb_config_default_path(void)
{
  return SYSCONFDIR "/kboss/kboss.conf";
}

int kb_config_load(const char *path, struct kb_config **ret, char **ret_errors)
{
  struct kb_config *cfg;
  struct kbc_parse p = { 0 };
  CLEANUP_FREE char *text = NULL;
  CLEANUP_FREE char *offdir = NULL;
  CLEANUP_FREE char *vmdir = NULL;
  char *errbuf = NULL;
  size_t errlen = 0, len = 0;
  int r = 0;

  if (ret_errors)
    *ret_errors = NULL;
  if (!path || !*path)
    path = getenv("KBOSS_CONF");
  if (!path || !*path)
    path = kb_config_default_path();

  cfg = calloc(1, sizeof *cfg);
  if (!cfg)
    return -ENOMEM;
  cfg->path = strdup(path);
  cfg->dir = kb_dirname(path);
  p.errs = open_memstream(&errbuf, &errlen);
  if (!cfg->path || !cfg->dir || !p.errs) {
    r = -ENOMEM;
    goto out;
  }
  p.cfg = cfg;

  p.kind = KBC_FILE_MAIN;
  p.file = cfg->path;
  p.out = &cfg->main;
  r = kb_read_file(path, &text, &len);
  if (r < 0) {
    kbc_error(&p, 0, NULL, "cannot read: %s", strerror(-r));
    goto out;
  }
  r = kbc_parse_text(&p, text, len);
  if (r < 0)
    goto out;

  offdir = kb_printf("%s/offerings.d", cfg->dir);
  vmdir = kb_printf("%s/vms.d", cfg->dir);
  if (!offdir || !vmdir) {
    r = -ENOMEM;
    goto out;
  }
  r = load_dir(&p, offdir, true);
  if (r == 0)
    r = load_dir(&p, vmdir, false);
  if (r == 0)
    r = kbc_build_vm_names(cfg);
  if (r == 0)
    r = check_whole(&p);

 out:
  if (p.errs)
    fclose(p.errs);
  if (r == 0 && p.n_errs > 0)
    r = -EINVAL;
  if (r < 0) {
    if (ret_errors && errbuf && *errbuf) {
      /* No trailing newline: callers print it as one message. */
      size_t n = strlen(errbuf);
      if (n && errbuf[n - 1] == '\n')
        errbuf[n - 1] = '\0';
      *ret_errors = errbuf;
      errbuf = NULL;
    }
    free(errbuf);
    kb_config_free(cfg);
    return r;
  }
  free(errbuf);
  *ret = cfg;
  return 0;
}

void kb_config_free(struct kb_config *cfg)
{
  if (!cfg)
    return;
  free(cfg->path);
  free(cfg->dir);
  kbc_entries_free(&cfg->main);
  for (size_t i = 0; i < cfg->n_offerings; i++)
    kbc_offering_clear(&cfg->offerings[i]);
  free(cfg->offerings);
  for (size_t i = 0; i < cfg->n_stores; i++) {
    free(cfg->stores[i].name);
    free(cfg->stores[i].path);
  }
  free(cfg->stores);
  free(cfg->store_lines);
  for (size_t i = 0; i < cfg->n_vms; i++)
    kbc_vm_clear(&cfg->vms[i]);
  free(cfg->vms);
  free(cfg->vm_names);
  free(cfg);
}

const char *kb_config_path(const struct kb_config *cfg)
{
  return cfg->path;
}

const char *kb_config_dir(const struct kb_config *cfg)
{
  return cfg->dir;
}
