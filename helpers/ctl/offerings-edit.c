/* kbossctl offerings create / delete: write or remove offerings.d/NAME.conf.
 * A new file is checked by loading the configuration with it, so the
 * fields are checked exactly as every kboss program reads them. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "log.h"
#include "util.h"

static bool key_ok(const char *k, size_t n)
{
  if (n == 0)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!((k[i] >= 'a' && k[i] <= 'z') || k[i] == '_'))
      return false;
  return true;
}

int ctl_offerings_create(const char *name, int nkv, char **kv)
{
  struct kb_config *cfg = NULL, *check = NULL;
  CLEANUP_FREE char *path = NULL, *dir = NULL, *text = NULL, *errors = NULL;
  size_t len = 0;
  FILE *m;
  int fd, r;

  if (!kb_name_ok(name)) {
    kb_err("offerings create: \"%s\" is not a valid offering name", name);
    return 2;
  }
  m = open_memstream(&text, &len);
  if (!m)
    return 1;
  fprintf(m, "# Written by kbossctl offerings create.\n[offering]\nname = %s\n", name);
  for (int i = 0; i < nkv; i++) {
    const char *eq = strchr(kv[i], '=');
    size_t kl = eq ? (size_t) (eq - kv[i]) : 0;
    while (kl && kv[i][kl - 1] == ' ')
      kl--;
    if (!eq || !key_ok(kv[i], kl) || strpbrk(eq + 1, "\n\r")) {
      fclose(m);
      kb_err("offerings create: \"%s\" is not KEY=VALUE", kv[i]);
      return 2;
    }
    if (kl == 4 && strncmp(kv[i], "name", 4) == 0) {
      fclose(m);
      kb_err("offerings create: the name is the NAME argument, not a field");
      return 2;
    }
    fprintf(m, "%.*s = %s\n", (int) kl, kv[i], eq + 1 + strspn(eq + 1, " "));
  }
  if (fclose(m) != 0)
    return 1;
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  if (kb_config_offering(cfg, name)) {
    kb_err("offerings create: offering \"%s\" exists (%s)", name, kb_config_offering(cfg, name)->file);
    kb_config_free(cfg);
    return 1;
  }
  path = kb_config_offering_path(cfg, name);
  dir = path ? kb_dirname(path) : NULL;
  if (!path || kb_mkdir_p(dir, 0700) < 0) {
    kb_err("offerings create: cannot create %s: %m", dir ? dir : "offerings.d");
    kb_config_free(cfg);
    return 1;
  }
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    kb_err("offerings create: cannot create %s: %m", path);
    kb_config_free(cfg);
    return 1;
  }
  r = kb_write_all(fd, text, len);
  if (close(fd) < 0 && r == 0)
    r = -errno;
  if (r == 0) {
    r = kb_config_load(kb_config_path(cfg), &check, &errors);
    if (r < 0) {
      char *save = NULL;
      for (char *line = errors ? strtok_r(errors, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save))
        kb_err("offerings create: %s", line);
      if (!errors)
        kb_err("offerings create: %s", strerror(-r));
    }
  } else
    kb_err("offerings create: cannot write %s: %s", path, strerror(-r));
  if (r < 0)
    (void) unlink(path);
  else
    printf("offering %s created (%s)\n", name, path);
  kb_config_free(check);
  kb_config_free(cfg);
  return r < 0 ? 1 : 0;
}

int ctl_offerings_delete(const char *name)
{
  struct kb_config *cfg = ctl_load_config();
  const struct kb_offering *o;
  const char *const *vms;
  char users[512];
  size_t used = 0;
  int rc = 1;

  if (!cfg)
    return 1;
  o = kb_config_offering(cfg, name);
  if (!o) {
    kb_err("offerings delete: no offering \"%s\"", name);
    goto out;
  }
  users[0] = '\0';
  vms = kb_config_vm_names(cfg);
  for (size_t i = 0; vms && vms[i]; i++) {
    const char *a = kb_config_vm_offering(cfg, vms[i]);
    if (a && KB_STREQ(a, name)) {
      int k = snprintf(users + used, sizeof users - used, "%s%s", used ? ", " : "", vms[i]);
      if (k > 0 && (size_t) k < sizeof users - used)
        used += (size_t) k;
    }
  }
  if (used) {
    kb_err("offerings delete: offering \"%s\" is assigned to VM(s) %s; assign them another offering first",
           name, users);
    goto out;
  }
  if (unlink(o->file) < 0) {
    kb_err("offerings delete: cannot remove %s: %m", o->file);
    goto out;
  }
  printf("offering %s deleted\n", name);
  rc = 0;
out:
  kb_config_free(cfg);
  return rc;
}
