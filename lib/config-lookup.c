/* Resolving a setting for a VM through the scopes (vm -> account ->
 * cluster -> zone -> global -> built-in default), stores, VM settings. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config-internal.h"
#include "util.h"

static bool from_entry(const struct kbc_entry *e, const char *file, const char *section,
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

static const struct kbc_entry *find_account(const struct kb_config *cfg, const char *account,
                                           const char *key, const char **ret_section)
{
  for (size_t i = 0; i < cfg->main.n; i++) {
    const struct kbc_entry *e = &cfg->main.v[i];
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
  const struct kbc_vm *vc = kbc_find_vm(cfg, vm);
  const char *override, *section;
  const struct kbc_entry *e;

  if (!d)
    return -ENOENT;
  if (d->scope == KB_SCOPE_VM) {
    if (vc && from_entry(kbc_entries_find(&vc->e, "vm", key), vc->file, vc->section, ret))
      return 0;
    return -ENOENT;
  }
  if (vc) {
    override = kb_setting_vm_override(key);
    if (override && from_entry(kbc_entries_find(&vc->e, "vm", override), vc->file, vc->section, ret))
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
    if (from_entry(kbc_entries_find(&cfg->main, levels[level], key), cfg->path, levels[level], ret))
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
  const struct kbc_vm *vc = kbc_find_vm(cfg, vm);
  const struct kbc_entry *e = vc ? kbc_entries_find(&vc->e, "vm", key) : NULL;
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

const char *const *kb_config_vm_names(const struct kb_config *cfg)
{
  static const char *const none[] = { NULL };
  return cfg->vm_names ? (const char *const *) cfg->vm_names : none;
}

