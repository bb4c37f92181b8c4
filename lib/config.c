/* Loading and resolving kboss's INI configuration (see kbconfig.h and
 * docs/configuration.md).
 *
 * inih does the key = value parsing. The handler of the packaged inih gets
 * no line number, so the files are fed to ini_parse_stream() through a
 * reader that counts lines; the same reader checks section headers and line
 * syntax, so that every error is reported with its line, not only the first. */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "kbconfig.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

/* Longest line accepted (base64 expected results can be long). */
#define KB_CONFIG_MAX_LINE 65536

struct entry {
  char *section;    /* "global", "zone", "cluster", "account:X", "store:X", "offering", "vm" */
  char *key;
  char *value;
  int line;
};

struct entries {
  struct entry *v;
  size_t n, cap;
};

struct vmconf {
  char *name;
  char *file;
  char *section;    /* "vm:NAME", for origins */
  struct entries e;
};

struct kb_config {
  char *path;
  char *dir;
  struct entries main;
  struct kb_offering *offerings;
  size_t n_offerings;
  struct kb_store *stores;
  size_t n_stores;
  int *store_lines;       /* header line of each [store:X] */
  struct vmconf *vms;
  size_t n_vms;
  char **vm_names;        /* NULL-terminated */
};

enum file_kind { FILE_MAIN, FILE_OFFERING, FILE_VM };

struct parse {
  struct kb_config *cfg;
  enum file_kind kind;
  const char *file;         /* as shown in messages */
  const char *stem;         /* file name without .conf (offerings, VMs) */
  const char *text;
  size_t pos;
  int line;
  bool at_line_start;
  bool section_ok;          /* the current section is known */
  int section_line;
  struct entries *out;
  struct kb_offering *off;  /* FILE_OFFERING */
  FILE *errs;               /* error messages, one a line */
  size_t n_errs;
  int enomem;
};

static void add_error(struct parse *p, int line, const char *key, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));

static void add_error(struct parse *p, int line, const char *key, const char *fmt, ...)
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

static int entries_add(struct entries *es, const char *section, const char *key,
                       const char *value, int line)
{
  struct entry *e;

  if (es->n == es->cap) {
    size_t cap = es->cap ? es->cap * 2 : 16;
    struct entry *v = realloc(es->v, cap * sizeof *v);
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

static void entries_free(struct entries *es)
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

static const struct entry *entries_find(const struct entries *es, const char *section,
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

/* ---- offerings ---- */

static const char *const all_steps[] = {
  "wait_for_boot", "execute_command", "screenshot", "fs_check", NULL
};
static const char *const default_steps[] = {
  "wait_for_boot", "execute_command", "screenshot", NULL
};

static void offering_clear(struct kb_offering *o)
{
  free(o->name);
  free(o->description);
  free(o->zone);
  free(o->domain);
  free(o->compression_library);
  if (o->validation_steps)
    for (char **s = o->validation_steps; *s; s++)
      free(*s);
  free(o->validation_steps);
  free(o->file);
  memset(o, 0, sizeof *o);
}

static char **steps_dup(const char *const *src)
{
  size_t n = 0;
  char **v;

  while (src[n])
    n++;
  v = calloc(n + 1, sizeof *v);
  if (!v)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    v[i] = strdup(src[i]);
    if (!v[i]) {
      for (size_t j = 0; j < i; j++)
        free(v[j]);
      free(v);
      return NULL;
    }
  }
  return v;
}

/* Parse "a, b,c" into a NULL-terminated list of known steps. */
static int parse_steps(const char *value, char ***ret, char *why, size_t whylen)
{
  const char *list[KB_ARRAY_SIZE(all_steps)];
  size_t n = 0;
  const char *p = value;

  if (!*value) {
    snprintf(why, whylen, "must name at least one step");
    return -EINVAL;
  }
  for (;;) {
    size_t len = strcspn(p, ","), a = 0, z = len, k;
    bool found = false;

    while (a < z && isspace((unsigned char) p[a]))
      a++;
    while (z > a && isspace((unsigned char) p[z - 1]))
      z--;
    for (k = 0; all_steps[k]; k++)
      if (strlen(all_steps[k]) == z - a && strncmp(all_steps[k], p + a, z - a) == 0) {
        found = true;
        break;
      }
    if (!found) {
      snprintf(why, whylen, "unknown step \"%.*s\" (known: wait_for_boot, execute_command, "
               "screenshot, fs_check)", (int) (z - a), p + a);
      return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
      if (list[i] == all_steps[k]) {
        snprintf(why, whylen, "step %s is listed twice", all_steps[k]);
        return -EINVAL;
      }
    list[n++] = all_steps[k];
    if (!p[len])
      break;
    p += len + 1;
  }
  list[n] = NULL;
  *ret = steps_dup(list);
  return *ret ? 0 : -ENOMEM;
}

static bool bool_field(struct parse *p, const char *key, const char *value, bool *out)
{
  if (kb_parse_bool(value, out) < 0) {
    add_error(p, p->line, key, "must be true or false, not \"%s\"", value);
    return false;
  }
  return true;
}

static int set_str(char **dst, const char *value)
{
  char *s = strdup(value);
  if (!s)
    return -ENOMEM;
  free(*dst);
  *dst = s;
  return 0;
}

static void offering_field(struct parse *p, const char *key, const char *value)
{
  struct kb_offering *o = p->off;
  char why[256];

  if (strcmp(key, "name") == 0) {
    if (!kb_name_ok(value))
      add_error(p, p->line, key, "\"%s\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)", value);
    else if (strcmp(value, p->stem) != 0)
      add_error(p, p->line, key, "\"%s\" does not match the file name (%s.conf)", value, p->stem);
  } else if (strcmp(key, "description") == 0) {
    if (set_str(&o->description, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "zone") == 0) {
    if (!*value)
      add_error(p, p->line, key, "must not be empty");
    else if (set_str(&o->zone, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "allow_user_driven_backups") == 0)
    bool_field(p, key, value, &o->allow_user_driven_backups);
  else if (strcmp(key, "public") == 0)
    bool_field(p, key, value, &o->public_);
  else if (strcmp(key, "domain") == 0) {
    if (!*value)
      add_error(p, p->line, key, "must not be empty");
    else if (set_str(&o->domain, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "compress") == 0)
    bool_field(p, key, value, &o->compress);
  else if (strcmp(key, "compression_library") == 0) {
    if (strcmp(value, "zstd") != 0 && strcmp(value, "zlib") != 0)
      add_error(p, p->line, key, "must be zstd or zlib, not \"%s\"", value);
    else if (set_str(&o->compression_library, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "validate") == 0)
    bool_field(p, key, value, &o->validate);
  else if (strcmp(key, "validation_steps") == 0) {
    char **steps = NULL;
    int r = parse_steps(value, &steps, why, sizeof why);
    if (r == -ENOMEM)
      p->enomem = 1;
    else if (r < 0)
      add_error(p, p->line, key, "%s", why);
    else {
      if (o->validation_steps)
        for (char **s = o->validation_steps; *s; s++)
          free(*s);
      free(o->validation_steps);
      o->validation_steps = steps;
    }
  } else if (strcmp(key, "allow_extract_file") == 0)
    bool_field(p, key, value, &o->allow_extract_file);
  else if (strcmp(key, "allow_quick_restore") == 0)
    bool_field(p, key, value, &o->allow_quick_restore);
  else if (strcmp(key, "backup_chain_size") == 0) {
    long long v;
    if (kb_parse_ll(value, &v) < 0 || v < 1)
      add_error(p, p->line, key, "must be an integer of at least 1");
    else
      o->backup_chain_size = v;
  } else
    add_error(p, p->line, key, "unknown offering field");
}

/* ---- the reader and the handler ---- */

static bool section_known(struct parse *p, const char *name, int line)
{
  switch (p->kind) {
  case FILE_MAIN:
    if (section_level(name) >= 0 || strncmp(name, "store:", 6) == 0) {
      const char *colon = strchr(name, ':');
      if (colon && !kb_name_ok(colon + 1)) {
        add_error(p, line, NULL, "[%s]: \"%s\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)",
                  name, colon + 1);
        return false;
      }
      return true;
    }
    add_error(p, line, NULL, "[%s]: unknown section (expected [global], [zone], [cluster], "
              "[account:NAME] or [store:NAME])", name);
    return false;
  case FILE_OFFERING:
    if (strcmp(name, "offering") == 0)
      return true;
    add_error(p, line, NULL, "[%s]: unknown section (an offering file has only [offering])", name);
    return false;
  case FILE_VM:
    if (strcmp(name, "vm") == 0)
      return true;
    add_error(p, line, NULL, "[%s]: unknown section (a VM file has only [vm])", name);
    return false;
  }
  return false;
}

static void store_section(struct parse *p, const char *name, int line)
{
  struct kb_config *cfg = p->cfg;
  struct kb_store *s;
  int *lines;

  for (size_t i = 0; i < cfg->n_stores; i++)
    if (strcmp(cfg->stores[i].name, name) == 0) {
      add_error(p, line, NULL, "[store:%s]: section repeated (first at line %d)", name,
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
static void check_line(struct parse *p, const char *s, size_t len)
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
      add_error(p, p->line, NULL, "section header without ]");
      return;
    }
    n = close - (s + a + 1);
    if (n >= sizeof name) {
      add_error(p, p->line, NULL, "section name too long");
      return;
    }
    memcpy(name, s + a + 1, n);
    name[n] = '\0';
    p->section_ok = section_known(p, name, p->line);
    if (p->section_ok && p->kind == FILE_MAIN && strncmp(name, "store:", 6) == 0)
      store_section(p, name + 6, p->line);
    return;
  }
  if (!memchr(s + a, '=', z - a) && !memchr(s + a, ':', z - a))
    add_error(p, p->line, NULL, "expected KEY = VALUE or [section], not \"%.*s\"",
              (int) (z - a > 60 ? 60 : z - a), s + a);
}

static char *reader(char *str, int num, void *stream)
{
  struct parse *p = stream;
  const char *s = p->text + p->pos;
  size_t len, n;

  if (!*s || num < 2)
    return NULL;
  len = strcspn(s, "\n");
  if (s[len] == '\n')
    len++;
  if (p->at_line_start) {
    p->line++;
    if (len > KB_CONFIG_MAX_LINE - 2)
      add_error(p, p->line, NULL, "line longer than %d characters", KB_CONFIG_MAX_LINE - 2);
    check_line(p, s, len);
  }
  n = len < (size_t) num - 1 ? len : (size_t) num - 1;
  memcpy(str, s, n);
  str[n] = '\0';
  p->pos += n;
  p->at_line_start = n > 0 && str[n - 1] == '\n';
  return str;
}

static void main_key(struct parse *p, const char *section, const char *key, const char *value)
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
        add_error(p, p->line, key, "must be an absolute path");
      else if (set_str(&st->path, value) < 0)
        p->enomem = 1;
    } else if (strcmp(key, "backups_only") == 0) {
      bool_field(p, key, value, &st->backups_only);
    } else
      add_error(p, p->line, key, "unknown key in [%s] (known: path, backups_only)", section);
    return;
  }

  d = kb_setting_find(key);
  if (!d) {
    add_error(p, p->line, key, "unknown key");
    return;
  }
  if (d->scope == KB_SCOPE_VM) {
    add_error(p, p->line, key, "is a VM setting: set it in vms.d/VM.conf");
    return;
  }
  level = section_level(section);
  if (level > (int) d->scope) {
    add_error(p, p->line, key, "has %s scope: it cannot be set in [%s]",
              kb_scope_name(d->scope), section);
    return;
  }
  if (kb_setting_check(d, value, why, sizeof why) < 0)
    add_error(p, p->line, key, "%s", why);
}

static void vm_key(struct parse *p, const char *key, const char *value)
{
  const struct kb_setting_def *d;
  char why[256];

  if (strcmp(key, "account") == 0 || strcmp(key, "offering") == 0) {
    if (!kb_name_ok(value))
      add_error(p, p->line, key, "\"%s\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)", value);
    return;
  }
  d = kb_setting_find(key);
  if (!d) {
    add_error(p, p->line, key, "unknown key");
    return;
  }
  if (d->scope != KB_SCOPE_VM) {
    add_error(p, p->line, key, "has %s scope: it cannot be set per VM", kb_scope_name(d->scope));
    return;
  }
  if (kb_setting_check(d, value, why, sizeof why) < 0)
    add_error(p, p->line, key, "%s", why);
}

static int handler(void *user, const char *section, const char *key, const char *value)
{
  struct parse *p = user;
  const struct entry *prev;
  size_t before = p->n_errs;

  if (!*section) {
    add_error(p, p->line, key, "is outside any section");
    return 1;
  }
  if (!p->section_ok)
    return 1;  /* the section header was reported */

  prev = entries_find(p->out, section, key);
  if (prev) {
    add_error(p, p->line, key, "set twice in [%s] (first at line %d)", section, prev->line);
    return 1;
  }
  switch (p->kind) {
  case FILE_MAIN: main_key(p, section, key, value); break;
  case FILE_OFFERING: offering_field(p, key, value); break;
  case FILE_VM: vm_key(p, key, value); break;
  }
  /* Keep bad values out, so that nothing ever resolves to them. */
  if (p->n_errs == before && entries_add(p->out, section, key, value, p->line) < 0)
    p->enomem = 1;
  return 1;
}

static int parse_text(struct parse *p, const char *text)
{
  int r;

  p->text = text;
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

static int read_text(struct parse *p, const char *path, char **ret)
{
  int r = kb_read_file(path, ret, NULL);
  if (r < 0) {
    add_error(p, 0, NULL, "cannot read: %s", strerror(-r));
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

static int load_offering(struct parse *p, const char *path, const char *stem)
{
  struct kb_config *cfg = p->cfg;
  CLEANUP_FREE char *text = NULL;
  struct entries es = { 0 };
  struct kb_offering o = { 0 }, *v;
  const struct entry *e;
  int r;

  p->kind = FILE_OFFERING;
  p->file = path;
  p->stem = stem;
  p->out = &es;
  p->off = &o;
  if (!kb_name_ok(stem)) {
    add_error(p, 0, NULL, "\"%s\" is not a valid offering name (1-128 of A-Z a-z 0-9 . _ -)", stem);
    return 0;
  }
  if (read_text(p, path, &text) < 0)
    return 0;
  o.public_ = true;
  o.allow_user_driven_backups = true;
  r = parse_text(p, text);
  if (r < 0)
    goto out;

  if (!o.public_ && !o.domain) {
    e = entries_find(&es, "offering", "public");
    add_error(p, e ? e->line : 0, "domain", "is required when public is false");
  } else if (o.public_ && o.domain) {
    e = entries_find(&es, "offering", "domain");
    add_error(p, e ? e->line : 0, "domain", "is only for offerings with public = false");
  }
  if (!o.compression_library && set_str(&o.compression_library, "zstd") < 0)
    r = -ENOMEM;
  if (!o.validation_steps)
    o.validation_steps = steps_dup(o.validate ? default_steps : all_steps + 4);
  o.name = strdup(stem);
  o.file = strdup(path);
  if (!o.name || !o.file || !o.validation_steps || r < 0) {
    r = -ENOMEM;
    goto out;
  }
  v = realloc(cfg->offerings, (cfg->n_offerings + 1) * sizeof *v);
  if (!v) {
    r = -ENOMEM;
    goto out;
  }
  cfg->offerings = v;
  cfg->offerings[cfg->n_offerings++] = o;
  memset(&o, 0, sizeof o);
 out:
  offering_clear(&o);
  entries_free(&es);
  return r;
}

static int parse_vm_text(struct parse *p, const char *path, const char *name, const char *text,
                         struct vmconf *ret)
{
  struct vmconf vc = { 0 };
  int r;

  p->kind = FILE_VM;
  p->file = path;
  p->stem = name;
  p->out = &vc.e;
  r = parse_text(p, text);
  vc.name = strdup(name);
  vc.file = strdup(path);
  vc.section = kb_printf("vm:%s", name);
  if (r < 0 || !vc.name || !vc.file || !vc.section) {
    free(vc.name);
    free(vc.file);
    free(vc.section);
    entries_free(&vc.e);
    return -ENOMEM;
  }
  *ret = vc;
  return 0;
}

static void vmconf_clear(struct vmconf *vc)
{
  free(vc->name);
  free(vc->file);
  free(vc->section);
  entries_free(&vc->e);
}

static int load_vm(struct parse *p, const char *path, const char *name)
{
  struct kb_config *cfg = p->cfg;
  CLEANUP_FREE char *text = NULL;
  struct vmconf vc, *v;
  int r;

  p->file = path;
  if (!kb_name_ok(name)) {
    add_error(p, 0, NULL, "\"%s\" is not a valid VM name (1-128 of A-Z a-z 0-9 . _ -)", name);
    return 0;
  }
  if (read_text(p, path, &text) < 0)
    return 0;
  r = parse_vm_text(p, path, name, text, &vc);
  if (r < 0)
    return r;
  v = realloc(cfg->vms, (cfg->n_vms + 1) * sizeof *v);
  if (!v) {
    vmconf_clear(&vc);
    return -ENOMEM;
  }
  cfg->vms = v;
  cfg->vms[cfg->n_vms++] = vc;
  return 0;
}

/* Each NAME.conf of DIR (missing DIR is fine), in name order. */
static int load_dir(struct parse *p, const char *dir, bool offerings)
{
  struct dirent **list = NULL;
  int n, r = 0;

  n = scandir(dir, &list, conf_filter, alphasort);
  if (n < 0) {
    if (errno == ENOENT)
      return 0;
    p->file = dir;
    add_error(p, 0, NULL, "cannot read: %s", strerror(errno));
    return 0;
  }
  for (int i = 0; i < n; i++) {
    CLEANUP_FREE char *stem = stem_of(list[i]->d_name);
    CLEANUP_FREE char *path = kb_printf("%s/%s", dir, list[i]->d_name);
    if (r == 0) {
      if (!stem || !path)
        r = -ENOMEM;
      else
        r = offerings ? load_offering(p, path, stem) : load_vm(p, path, stem);
    }
    free(list[i]);
  }
  free(list);
  return r;
}

static struct vmconf *find_vm(const struct kb_config *cfg, const char *vm)
{
  if (!vm)
    return NULL;
  for (size_t i = 0; i < cfg->n_vms; i++)
    if (strcmp(cfg->vms[i].name, vm) == 0)
      return &cfg->vms[i];
  return NULL;
}

static int build_vm_names(struct kb_config *cfg)
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
static int check_whole(struct parse *p)
{
  struct kb_config *cfg = p->cfg;

  p->file = cfg->path;
  for (size_t i = 0; i < cfg->n_stores; i++)
    if (!cfg->stores[i].path)
      add_error(p, cfg->store_lines[i], "path", "missing in [store:%s]", cfg->stores[i].name);
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
    const struct entry *e = entries_find(&cfg->vms[i].e, "vm", "offering");
    if (e && !kb_config_offering(cfg, e->value)) {
      p->file = cfg->vms[i].file;
      add_error(p, e->line, "offering", "no offering \"%s\" (offerings.d/%s.conf)", e->value,
                e->value);
    }
  }
  return 0;
}

int kb_config_load(const char *path, struct kb_config **ret, char **ret_errors)
{
  struct kb_config *cfg;
  struct parse p = { 0 };
  CLEANUP_FREE char *text = NULL;
  CLEANUP_FREE char *offdir = NULL;
  CLEANUP_FREE char *vmdir = NULL;
  char *errbuf = NULL;
  size_t errlen = 0;
  int r = 0;

  if (ret_errors)
    *ret_errors = NULL;
  if (!path || !*path)
    path = getenv("KBOSS_CONF");
  if (!path || !*path)
    path = SYSCONFDIR "/kboss/kboss.conf";

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

  p.kind = FILE_MAIN;
  p.file = cfg->path;
  p.out = &cfg->main;
  r = kb_read_file(path, &text, NULL);
  if (r < 0) {
    add_error(&p, 0, NULL, "cannot read: %s", strerror(-r));
    goto out;
  }
  r = parse_text(&p, text);
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
    r = build_vm_names(cfg);
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
  entries_free(&cfg->main);
  for (size_t i = 0; i < cfg->n_offerings; i++)
    offering_clear(&cfg->offerings[i]);
  free(cfg->offerings);
  for (size_t i = 0; i < cfg->n_stores; i++) {
    free(cfg->stores[i].name);
    free(cfg->stores[i].path);
  }
  free(cfg->stores);
  free(cfg->store_lines);
  for (size_t i = 0; i < cfg->n_vms; i++)
    vmconf_clear(&cfg->vms[i]);
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

/* ---- lookups ---- */

static bool from_entry(const struct entry *e, const char *file, const char *section,
                       struct kb_value *ret)
{
  if (!e)
    return false;
  ret->value = e->value;
  ret->file = file;
  ret->line = e->line;
  ret->section = section;
  ret->key = e->key;
  return true;
}

static const struct entry *find_account(const struct kb_config *cfg, const char *account,
                                        const char *key, const char **ret_section)
{
  for (size_t i = 0; i < cfg->main.n; i++) {
    const struct entry *e = &cfg->main.v[i];
    if (strncmp(e->section, "account:", 8) == 0 && strcmp(e->section + 8, account) == 0 &&
        strcmp(e->key, key) == 0) {
      *ret_section = e->section;
      return e;
    }
  }
  return NULL;
}

int kb_config_lookup(const struct kb_config *cfg, const char *vm, const char *key,
                     struct kb_value *ret)
{
  static const char *const levels[] = { "global", "zone", "cluster" };
  const struct kb_setting_def *d = kb_setting_find(key);
  const struct vmconf *vc = find_vm(cfg, vm);
  const char *override, *section;
  const struct entry *e;

  if (!d)
    return -ENOENT;
  if (d->scope == KB_SCOPE_VM) {
    if (vc && from_entry(entries_find(&vc->e, "vm", key), vc->file, vc->section, ret))
      return 0;
    return -ENOENT;
  }
  if (vc) {
    override = kb_setting_vm_override(key);
    if (override && from_entry(entries_find(&vc->e, "vm", override), vc->file, vc->section, ret))
      return 0;
    if (d->scope >= KB_SCOPE_ACCOUNT) {
      const char *account = kb_config_vm_account(cfg, vm);
      if (account && (e = find_account(cfg, account, key, &section)) &&
          from_entry(e, cfg->path, section, ret))
        return 0;
    }
  }
  for (int level = KB_SCOPE_CLUSTER; level >= KB_SCOPE_GLOBAL; level--) {
    if (level > (int) d->scope)
      continue;
    if (from_entry(entries_find(&cfg->main, levels[level], key), cfg->path, levels[level], ret))
      return 0;
  }
  if (!d->def)
    return -ENOENT;
  ret->value = d->def;
  ret->file = NULL;
  ret->line = 0;
  ret->section = "default";
  ret->key = d->key;
  return 0;
}

static const char *must_lookup(const struct kb_config *cfg, const char *vm, const char *key,
                               enum kb_type type)
{
  struct kb_value v;
  const struct kb_setting_def *d = kb_setting_find(key);

  if (!d || d->type != type || kb_config_lookup(cfg, vm, key, &v) < 0)
    abort();   /* a bug in the caller: the key has no default or another type */
  return v.value;
}

long long kb_config_int(const struct kb_config *cfg, const char *vm, const char *key)
{
  long long v = 0;
  (void) kb_parse_ll(must_lookup(cfg, vm, key, KB_TYPE_INT), &v);
  return v;
}

double kb_config_real(const struct kb_config *cfg, const char *vm, const char *key)
{
  double v = 0;
  (void) kb_parse_double(must_lookup(cfg, vm, key, KB_TYPE_REAL), &v);
  return v;
}

bool kb_config_bool(const struct kb_config *cfg, const char *vm, const char *key)
{
  bool v = false;
  (void) kb_parse_bool(must_lookup(cfg, vm, key, KB_TYPE_BOOL), &v);
  return v;
}

const char *kb_config_str(const struct kb_config *cfg, const char *vm, const char *key)
{
  struct kb_value v;
  const struct kb_setting_def *d = kb_setting_find(key);

  if (!d || d->type == KB_TYPE_BOOL || d->type == KB_TYPE_INT || d->type == KB_TYPE_REAL ||
      kb_config_lookup(cfg, vm, key, &v) < 0)
    abort();
  return v.value;
}

const struct kb_offering *kb_config_offering(const struct kb_config *cfg, const char *name)
{
  if (!name)
    return NULL;
  for (size_t i = 0; i < cfg->n_offerings; i++)
    if (strcmp(cfg->offerings[i].name, name) == 0)
      return &cfg->offerings[i];
  return NULL;
}

const struct kb_offering *kb_config_offering_at(const struct kb_config *cfg, unsigned n)
{
  return n < cfg->n_offerings ? &cfg->offerings[n] : NULL;
}

const struct kb_store *kb_config_store(const struct kb_config *cfg, const char *name)
{
  if (!name)
    return NULL;
  for (size_t i = 0; i < cfg->n_stores; i++)
    if (strcmp(cfg->stores[i].name, name) == 0)
      return &cfg->stores[i];
  return NULL;
}

const struct kb_store *kb_config_store_at(const struct kb_config *cfg, unsigned n)
{
  return n < cfg->n_stores ? &cfg->stores[n] : NULL;
}

const char *kb_config_vm_setting(const struct kb_config *cfg, const char *vm, const char *key)
{
  const struct vmconf *vc = find_vm(cfg, vm);
  const struct entry *e = vc ? entries_find(&vc->e, "vm", key) : NULL;
  return e ? e->value : NULL;
}

const char *kb_config_vm_offering(const struct kb_config *cfg, const char *vm)
{
  return kb_config_vm_setting(cfg, vm, "offering");
}

const char *kb_config_vm_account(const struct kb_config *cfg, const char *vm)
{
  return kb_config_vm_setting(cfg, vm, "account");
}

const struct kb_offering *kb_config_vm_offering_def(const struct kb_config *cfg, const char *vm)
{
  return kb_config_offering(cfg, kb_config_vm_offering(cfg, vm));
}

long long kb_config_chain_size(const struct kb_config *cfg, const char *vm)
{
  const struct kb_offering *o = kb_config_vm_offering_def(cfg, vm);

  if (o && o->backup_chain_size > 0)
    return o->backup_chain_size;
  return kb_config_int(cfg, vm, "backup.chain.size");
}

const char *const *kb_config_vm_names(const struct kb_config *cfg)
{
  static const char *const none[] = { NULL };
  return cfg->vm_names ? (const char *const *) cfg->vm_names : none;
}

/* ---- writing vms.d/VM.conf ---- */

static bool in_list(const char *list, const char *word)
{
  const char *p = list;
  size_t wl = strlen(word);

  for (;;) {
    size_t len = strcspn(p, ","), a = 0, z = len;
    while (a < z && isspace((unsigned char) p[a]))
      a++;
    while (z > a && isspace((unsigned char) p[z - 1]))
      z--;
    if (z - a == wl && strncmp(p + a, word, wl) == 0)
      return true;
    if (!p[len])
      return false;
    p += len + 1;
  }
}

/* The key of an INI line "  key = value", or false. */
static bool line_key(const char *s, size_t len, const char **ret_key, size_t *ret_len)
{
  size_t a = 0, z;

  while (a < len && isspace((unsigned char) s[a]))
    a++;
  if (a == len || s[a] == ';' || s[a] == '#' || s[a] == '[')
    return false;
  z = a;
  while (z < len && s[z] != '=' && s[z] != ':')
    z++;
  if (z == len)
    return false;
  while (z > a && isspace((unsigned char) s[z - 1]))
    z--;
  *ret_key = s + a;
  *ret_len = z - a;
  return true;
}

/* OLD with every KEY line of [vm] dropped, and KEY = VALUE added to [vm]. */
static char *edit_vm_text(const char *old, const char *key, const char *value)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  const char *s = old;
  bool in_vm = false, seen_vm = false, written = false;

  if (!f)
    return NULL;
  while (*s) {
    size_t n = strcspn(s, "\n");
    const char *k;
    size_t kl, a = 0;

    while (a < n && isspace((unsigned char) s[a]))
      a++;
    if (a < n && s[a] == '[') {
      if (in_vm && value && !written) {
        fprintf(f, "%s = %s\n", key, value);
        written = true;
      }
      in_vm = strncmp(s + a, "[vm]", 4) == 0;
      seen_vm |= in_vm;
    }
    if (!(in_vm && line_key(s, n, &k, &kl) && kl == strlen(key) && strncmp(k, key, kl) == 0)) {
      fwrite(s, 1, n, f);
      fputc('\n', f);
    } else if (value && !written) {
      fprintf(f, "%s = %s\n", key, value);
      written = true;
    }
    s += n;
    if (*s == '\n')
      s++;
  }
  if (value && !written) {
    if (!seen_vm)
      fputs("[vm]\n", f);
    else if (!in_vm)
      fputs("[vm]\n", f);   /* a second [vm] block is read as the same section */
    fprintf(f, "%s = %s\n", key, value);
  }
  if (fclose(f) != 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

static int write_file_replace(const char *dir, const char *name, const char *text)
{
  CLEANUP_FREE char *path = kb_printf("%s/%s", dir, name);
  CLEANUP_FREE char *tmp = NULL;
  char rnd[17];
  int fd, r;

  if (!path)
    return -ENOMEM;
  r = kb_random_hex(rnd, 8);
  if (r < 0)
    return r;
  tmp = kb_printf("%s/.%s.%s.tmp", dir, name, rnd);
  if (!tmp)
    return -ENOMEM;
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return -errno;
  r = kb_write_all(fd, text, strlen(text));
  if (r == 0 && fsync(fd) < 0)
    r = -errno;
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r == 0 && rename(tmp, path) < 0)
    r = -errno;
  if (r < 0)
    (void) unlink(tmp);
  return r;
}

int kb_config_vm_set(struct kb_config *cfg, const char *vm, const char *key, const char *value,
                     bool as_user, char **ret_error)
{
  const struct kb_setting_def *d = kb_setting_find(key);
  bool special = key && (strcmp(key, "account") == 0 || strcmp(key, "offering") == 0);
  CLEANUP_FREE char *dir = NULL;
  CLEANUP_FREE char *path = NULL;
  CLEANUP_FREE char *name = NULL;
  CLEANUP_FREE char *old = NULL;
  CLEANUP_FREE char *text = NULL;
  char why[256];
  struct vmconf vc, *slot;
  struct parse p = { 0 };
  char *errbuf = NULL;
  size_t errlen = 0;
  int r;

#define FAIL(err, ...) do { if (ret_error) *ret_error = kb_printf(__VA_ARGS__); return (err); } while (0)
  if (ret_error)
    *ret_error = NULL;
  if (!kb_name_ok(vm))
    FAIL(-EINVAL, "\"%s\" is not a valid VM name", vm ? vm : "");
  if (!special && (!d || d->scope != KB_SCOPE_VM))
    FAIL(-EINVAL, "%s: not a VM setting", key ? key : "");
  if (as_user && special)
    FAIL(-EPERM, "%s: only an administrator may change it", key);
  if (as_user && in_list(kb_config_str(cfg, NULL, "user.vm.readonly.details"), key))
    FAIL(-EPERM, "%s: read-only for users (user.vm.readonly.details)", key);
  if (value) {
    size_t n = strlen(value);
    if (strpbrk(value, "\n\r") || (n && (isspace((unsigned char) value[0]) ||
                                         isspace((unsigned char) value[n - 1]))) ||
        strstr(value, " ;") || strstr(value, "\t;") || n > KB_CONFIG_MAX_LINE / 2)
      FAIL(-EINVAL, "%s: the value cannot be stored in an INI file (line breaks, blanks at "
           "either end, \" ;\", or too long)", key);
    if (special) {
      if (!kb_name_ok(value))
        FAIL(-EINVAL, "%s: \"%s\" is not a valid name", key, value);
      if (strcmp(key, "offering") == 0 && !kb_config_offering(cfg, value))
        FAIL(-ENOENT, "offering: no offering \"%s\"", value);
    } else if (kb_setting_check(d, value, why, sizeof why) < 0)
      FAIL(-EINVAL, "%s: %s", key, why);
  }

  dir = kb_printf("%s/vms.d", cfg->dir);
  name = kb_printf("%s.conf", vm);
  path = kb_printf("%s/%s.conf", dir ? dir : "", vm);
  if (!dir || !name || !path)
    return -ENOMEM;
  r = kb_read_file(path, &old, NULL);
  if (r == -ENOENT) {
    if (!value)
      return 0;   /* nothing to remove */
    old = strdup("[vm]\n");
    if (!old)
      return -ENOMEM;
  } else if (r < 0)
    FAIL(r, "%s: cannot read: %s", path, strerror(-r));
  text = edit_vm_text(old, key, value);
  if (!text)
    return -ENOMEM;

  /* Parse what would be written before writing it. */
  p.cfg = cfg;
  p.errs = open_memstream(&errbuf, &errlen);
  if (!p.errs)
    return -ENOMEM;
  r = parse_vm_text(&p, path, vm, text, &vc);
  fclose(p.errs);
  if (r == 0 && p.n_errs > 0) {
    vmconf_clear(&vc);
    if (ret_error) {
      *ret_error = errbuf;
      errbuf = NULL;
    }
    free(errbuf);
    return -EINVAL;
  }
  free(errbuf);
  if (r < 0)
    return r;

  r = kb_mkdir_p(dir, 0700);
  if (r == 0)
    r = write_file_replace(dir, name, text);
  if (r < 0) {
    vmconf_clear(&vc);
    FAIL(r, "%s: cannot write: %s", path, strerror(-r));
  }

  slot = find_vm(cfg, vm);
  if (slot) {
    vmconf_clear(slot);
    *slot = vc;
  } else {
    slot = realloc(cfg->vms, (cfg->n_vms + 1) * sizeof *slot);
    if (!slot) {
      vmconf_clear(&vc);
      return -ENOMEM;
    }
    cfg->vms = slot;
    cfg->vms[cfg->n_vms++] = vc;
  }
  return build_vm_names(cfg);
#undef FAIL
}
