/* Offerings (offerings.d/NAME.conf): their fields, the validation step
 * names, and finding them. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-internal.h"
#include "util.h"

const char *const kb_validation_steps[] = {
  "wait_for_boot", "execute_command", "screenshot", "fs_check", NULL
};
const char *const kb_validation_default_steps[] = {
  "wait_for_boot", "execute_command", "screenshot", NULL
};

static const char *const no_steps[] = { NULL };

const char *const *kb_offering_steps(const struct kb_offering *off)
{
  if (off && off->validation_steps && off->validation_steps[0])
    return (const char *const *) off->validation_steps;
  return kb_validation_default_steps;
}

void kbc_offering_clear(struct kb_offering *o)
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
  const char *list[KB_ARRAY_SIZE(kb_validation_steps)];
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
    for (k = 0; kb_validation_steps[k]; k++)
      if (strlen(kb_validation_steps[k]) == z - a && strncmp(kb_validation_steps[k], p + a, z - a) == 0) {
        found = true;
        break;
      }
    if (!found) {
      size_t w = (size_t) snprintf(why, whylen, "unknown step \"%.*s\" (known:", (int) (z - a), p + a);
      for (k = 0; kb_validation_steps[k] && w < whylen; k++)
        w += (size_t) snprintf(why + w, whylen - w, "%s %s", k ? "," : "", kb_validation_steps[k]);
      if (w < whylen)
        snprintf(why + w, whylen - w, ")");
      return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
      if (list[i] == kb_validation_steps[k]) {
        snprintf(why, whylen, "step %s is listed twice", kb_validation_steps[k]);
        return -EINVAL;
      }
    list[n++] = kb_validation_steps[k];
    if (!p[len])
      break;
    p += len + 1;
  }
  list[n] = NULL;
  *ret = steps_dup(list);
  return *ret ? 0 : -ENOMEM;
}

void kbc_offering_field(struct kbc_parse *p, const char *key, const char *value)
{
  struct kb_offering *o = p->off;
  char why[256];

  if (strcmp(key, "name") == 0) {
    if (!kb_name_ok(value))
      kbc_error(p, p->line, key, "\"%s\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)", value);
    else if (strcmp(value, p->stem) != 0)
      kbc_error(p, p->line, key, "\"%s\" does not match the file name (%s.conf)", value, p->stem);
  } else if (strcmp(key, "description") == 0) {
    if (kbc_set_str(&o->description, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "zone") == 0) {
    if (!*value)
      kbc_error(p, p->line, key, "must not be empty");
    else if (kbc_set_str(&o->zone, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "allow_user_driven_backups") == 0)
    kbc_bool_field(p, key, value, &o->allow_user_driven_backups);
  else if (strcmp(key, "public") == 0)
    kbc_bool_field(p, key, value, &o->public_);
  else if (strcmp(key, "domain") == 0) {
    if (!*value)
      kbc_error(p, p->line, key, "must not be empty");
    else if (kbc_set_str(&o->domain, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "compress") == 0)
    kbc_bool_field(p, key, value, &o->compress);
  else if (strcmp(key, "compression_library") == 0) {
    if (strcmp(value, "zstd") != 0 && strcmp(value, "zlib") != 0)
      kbc_error(p, p->line, key, "must be zstd or zlib, not \"%s\"", value);
    else if (kbc_set_str(&o->compression_library, value) < 0)
      p->enomem = 1;
  } else if (strcmp(key, "validate") == 0)
    kbc_bool_field(p, key, value, &o->validate);
  else if (strcmp(key, "validation_steps") == 0) {
    char **steps = NULL;
    int r = parse_steps(value, &steps, why, sizeof why);
    if (r == -ENOMEM)
      p->enomem = 1;
    else if (r < 0)
      kbc_error(p, p->line, key, "%s", why);
    else {
      if (o->validation_steps)
        for (char **s = o->validation_steps; *s; s++)
          free(*s);
      free(o->validation_steps);
      o->validation_steps = steps;
    }
  } else if (strcmp(key, "allow_extract_file") == 0)
    kbc_bool_field(p, key, value, &o->allow_extract_file);
  else if (strcmp(key, "allow_quick_restore") == 0)
    kbc_bool_field(p, key, value, &o->allow_quick_restore);
  else if (strcmp(key, "backup_chain_size") == 0) {
    /* The same range as backup.chain.size, which it overrides. */
    long long v;
    if (kb_setting_check(kb_setting_find("backup.chain.size"), value, why, sizeof why) < 0)
      kbc_error(p, p->line, key, "%s", why);
    else if (kb_parse_ll(value, &v) == 0)
      o->backup_chain_size = v;
  } else {
    for (size_t i = 0; i < 6; i++)
      if (strcmp(key, kb_offering_keep_fields[i]) == 0) {
        long long v;
        if (kb_parse_ll(value, &v) < 0 || v < 0 || v > 100000)
          kbc_error(p, p->line, key, "must be an integer from 0 to 100000");
        else
          o->keep[i] = v;
        return;
      }
    kbc_error(p, p->line, key, "unknown offering field");
  }
}

const char *const kb_offering_keep_fields[6] = { "keep_last", "keep_hourly", "keep_daily",
                                                 "keep_weekly", "keep_monthly", "keep_yearly" };

int kbc_load_offering(struct kbc_parse *p, const char *path, const char *stem)
{
  struct kb_config *cfg = p->cfg;
  CLEANUP_FREE char *text = NULL;
  size_t len = 0;
  struct kbc_entries es = { 0 };
  struct kb_offering o = { 0 }, *v;
  const struct kbc_entry *e;
  int r;

  p->kind = KBC_FILE_OFFERING;
  p->file = path;
  p->stem = stem;
  p->out = &es;
  p->off = &o;
  if (!kb_name_ok(stem)) {
    kbc_error(p, 0, NULL, "\"%s\" is not a valid offering name (1-128 of A-Z a-z 0-9 . _ -)", stem);
    return 0;
  }
  if (kbc_read_text(p, path, &text, &len) < 0)
    return 0;
  o.public_ = true;
  o.allow_user_driven_backups = true;
  r = kbc_parse_text(p, text, len);
  if (r < 0)
    goto out;

  if (!o.public_ && !o.domain) {
    e = kbc_entries_find(&es, "offering", "public");
    kbc_error(p, e ? e->line : 0, "domain", "is required when public is false");
  } else if (o.public_ && o.domain) {
    e = kbc_entries_find(&es, "offering", "domain");
    kbc_error(p, e ? e->line : 0, "domain", "is only for offerings with public = false");
  }
  if (!o.compression_library && kbc_set_str(&o.compression_library, "zstd") < 0)
    r = -ENOMEM;
  if (!o.validation_steps)
    o.validation_steps = steps_dup(o.validate ? kb_validation_default_steps : no_steps);
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
  kbc_offering_clear(&o);
  kbc_entries_free(&es);
  return r;
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

char *kb_config_offering_path(const struct kb_config *cfg, const char *name)
{
  if (!kb_name_ok(name))
    return NULL;
  return kb_printf("%s/offerings.d/%s.conf", cfg->dir, name);
}

const struct kb_offering *kb_config_offering_at(const struct kb_config *cfg, unsigned n)
{
  return n < cfg->n_offerings ? &cfg->offerings[n] : NULL;
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

