/* Editing vms.d/VM.conf: one key changed, the file's other lines and
 * comments kept, what would be written parsed first, then replaced
 * atomically. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-internal.h"
#include "util.h"

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

/* Whether KEY may be set to VALUE (NULL: removed) for VM by this caller. */
static int check_vm_value(const struct kb_config *cfg, const char *vm, const char *key, const char *value,
                          bool as_user, char **ret_error)
{
  const struct kb_setting_def *d = kb_setting_find(key);
  bool special = key && (strcmp(key, "account") == 0 || strcmp(key, "offering") == 0);
  char why[256];

#define FAIL(err, ...) do { if (ret_error) *ret_error = kb_printf(__VA_ARGS__); return (err); } while (0)
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
  return 0;
#undef FAIL
}

int kb_config_vm_set(struct kb_config *cfg, const char *vm, const char *key, const char *value,
                     bool as_user, char **ret_error)
{
  CLEANUP_FREE char *dir = NULL;
  CLEANUP_FREE char *path = NULL;
  CLEANUP_FREE char *old = NULL;
  CLEANUP_FREE char *text = NULL;
  struct kbc_vm vc, *slot;
  struct kbc_parse p = { 0 };
  char *errbuf = NULL;
  size_t errlen = 0, old_len = 0;
  int r;

#define FAIL(err, ...) do { if (ret_error) *ret_error = kb_printf(__VA_ARGS__); return (err); } while (0)
  if (ret_error)
    *ret_error = NULL;
  r = check_vm_value(cfg, vm, key, value, as_user, ret_error);
  if (r < 0)
    return r;

  dir = kb_printf("%s/vms.d", cfg->dir);
  path = kb_printf("%s/%s.conf", dir ? dir : "", vm);
  if (!dir || !path)
    return -ENOMEM;
  r = kb_read_file(path, &old, &old_len);
  if (r == -ENOENT) {
    if (!value)
      return 0;   /* nothing to remove */
    old = strdup("[vm]\n");
    if (!old)
      return -ENOMEM;
  } else if (r < 0)
    FAIL(r, "%s: cannot read: %s", path, strerror(-r));
  else if (memchr(old, '\0', old_len))
    FAIL(-EINVAL, "%s: holds a NUL byte: not a text file", path);
  text = edit_vm_text(old, key, value);
  if (!text)
    return -ENOMEM;

  /* Parse what would be written before writing it. */
  p.cfg = cfg;
  p.errs = open_memstream(&errbuf, &errlen);
  if (!p.errs)
    return -ENOMEM;
  r = kbc_parse_vm_text(&p, path, vm, text, strlen(text), &vc);
  fclose(p.errs);
  if (r == 0 && p.n_errs > 0) {
    kbc_vm_clear(&vc);
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
    r = kb_write_file_atomic(path, text, strlen(text), 0600);
  if (r < 0) {
    kbc_vm_clear(&vc);
    FAIL(r, "%s: cannot write: %s", path, strerror(-r));
  }

  slot = kbc_find_vm(cfg, vm);
  if (slot) {
    kbc_vm_clear(slot);
    *slot = vc;
  } else {
    slot = realloc(cfg->vms, (cfg->n_vms + 1) * sizeof *slot);
    if (!slot) {
      kbc_vm_clear(&vc);
      return -ENOMEM;
    }
    cfg->vms = slot;
    cfg->vms[cfg->n_vms++] = vc;
  }
  return kbc_build_vm_names(cfg);
#undef FAIL
}
