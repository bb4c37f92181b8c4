/* kboss configuration: resolution through the scopes, every kind of error
 * with its file and line, offerings, stores, and writing VM settings. Each
 * test builds its own configuration tree in a temporary folder. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "kbconfig.h"
#include "util.h"

static char tmpdir[256];
static char conf[300];

static void setup(void)
{
  strcpy(tmpdir, "/tmp/kboss-test-config-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  snprintf(conf, sizeof conf, "%s/kboss.conf", tmpdir);
}

static void teardown(void)
{
  (void) kb_rm_rf(tmpdir);
}

TestSuite(config, .init = setup, .fini = teardown);

/* Write REL (under tmpdir) with the given text. */
static void put(const char *rel, const char *text)
{
  char path[512];
  FILE *f;
  char *slash;

  snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
  slash = strrchr(path, '/');
  *slash = '\0';
  cr_assert_eq(kb_mkdir_p(path, 0700), 0);
  *slash = '/';
  f = fopen(path, "w");
  cr_assert_not_null(f, "%s", path);
  fputs(text, f);
  fclose(f);
}

static struct kb_config *load_ok(void)
{
  struct kb_config *cfg = NULL;
  char *errors = NULL;
  int r = kb_config_load(conf, &cfg, &errors);

  cr_assert_eq(r, 0, "load failed: %d: %s", r, errors ? errors : "(no message)");
  cr_assert_null(errors);
  return cfg;
}

/* Load, expect failure, and return the messages. */
static char *load_bad(void)
{
  struct kb_config *cfg = NULL;
  char *errors = NULL;
  int r = kb_config_load(conf, &cfg, &errors);

  cr_assert_eq(r, -EINVAL, "load should fail with -EINVAL, got %d", r);
  cr_assert_null(cfg);
  cr_assert_not_null(errors);
  return errors;
}

/* ERRORS holds a line that is exactly "CONF-or-tmpdir/REL:LINE: REST". */
static void assert_error(const char *errors, const char *rel, int line, const char *rest)
{
  char want[1024];
  const char *p;
  size_t n;

  if (line > 0)
    snprintf(want, sizeof want, "%s/%s:%d: %s", tmpdir, rel, line, rest);
  else
    snprintf(want, sizeof want, "%s/%s: %s", tmpdir, rel, rest);
  n = strlen(want);
  for (p = errors; (p = strstr(p, want)); p++)
    if ((p == errors || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
      return;
  cr_assert_fail("no error line\n  %s\nin\n%s", want, errors);
}

static int count_lines(const char *s)
{
  int n = 1;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

static void assert_value(struct kb_config *cfg, const char *vm, const char *key,
                         const char *value, const char *section, int line)
{
  struct kb_value v;

  cr_assert_eq(kb_config_lookup(cfg, vm, key, &v), 0, "lookup %s", key);
  cr_assert_str_eq(v.value, value, "%s", key);
  cr_assert_str_eq(v.section, section, "%s", key);
  cr_assert_eq(v.line, line, "%s", key);
  if (line == 0)
    cr_assert_null(v.file);
}

/* ---- resolution ---- */

static const char layered[] =
  "[global]\n"                                           /* 1 */
  "backup.validation.interval = 1\n"                     /* 2 */
  "backup.chain.size = 3\n"                              /* 3 */
  "\n"                                                   /* 4 */
  "[zone]\n"                                             /* 5 */
  "backup.validation.interval = 2\n"                     /* 6 */
  "backup.chain.size = 5\n"                              /* 7 */
  "\n"                                                   /* 8 */
  "[cluster]\n"                                          /* 9 */
  "backup.validation.interval = 3\n"                     /* 10 */
  "backup.compression.coroutines = 7\n"                  /* 11 */
  "\n"                                                   /* 12 */
  "[account:acme]\n"                                     /* 13 */
  "backup.validation.interval = 4\n"                     /* 14 */
  "backup.validation.boot.default.timeout = 500\n";      /* 15 */

Test(config, vm_account_cluster_zone_global_default)
{
  struct kb_config *cfg;

  put("kboss.conf", layered);
  put("vms.d/web1.conf", "[vm]\naccount = acme\nbackupValidationBootTimeout = 33\n");
  put("vms.d/web2.conf", "[vm]\naccount = other\n");
  cfg = load_ok();

  /* Account beats cluster, cluster beats zone, zone beats global. */
  assert_value(cfg, "web1", "backup.validation.interval", "4", "account:acme", 14);
  assert_value(cfg, "web2", "backup.validation.interval", "3", "cluster", 10);
  assert_value(cfg, NULL, "backup.validation.interval", "3", "cluster", 10);
  /* Unknown VM: no vm or account level. */
  assert_value(cfg, "nosuchvm", "backup.validation.interval", "3", "cluster", 10);
  /* The VM setting beats the account. */
  assert_value(cfg, "web1", "backup.validation.boot.default.timeout", "33", "vm:web1", 3);
  assert_value(cfg, "web2", "backup.validation.boot.default.timeout", "240", "default", 0);
  /* Built-in default. */
  assert_value(cfg, "web1", "backup.compression.timeout", "28800", "default", 0);
  cr_assert_eq(kb_config_int(cfg, "web1", "backup.validation.interval"), 4);
  cr_assert_eq(kb_config_int(cfg, NULL, "backup.compression.coroutines"), 7);
  kb_config_free(cfg);
}

Test(config, zone_key_comes_only_from_zone_or_global)
{
  struct kb_config *cfg;
  struct kb_value v;

  put("kboss.conf", layered);
  put("vms.d/web1.conf", "[vm]\naccount = acme\n");
  cfg = load_ok();
  assert_value(cfg, "web1", "backup.chain.size", "5", "zone", 7);
  cr_assert_eq(kb_config_lookup(cfg, "web1", "backup.chain.size", &v), 0);
  cr_assert_str_eq(v.file, conf);
  kb_config_free(cfg);

  put("kboss.conf", "[global]\nbackup.chain.size = 3\n");
  cfg = load_ok();
  assert_value(cfg, NULL, "backup.chain.size", "3", "global", 2);
  kb_config_free(cfg);
}

Test(config, vm_settings_override_the_defaults)
{
  struct kb_config *cfg;
  struct kb_value v;

  put("kboss.conf", "[account:acme]\nbackup.validation.script.default.timeout = 90\n");
  put("vms.d/web1.conf",
      "[vm]\n"
      "account = acme\n"
      "backupValidationCommandTimeout = 11\n"
      "backupValidationScreenshotWait = 0\n"
      "backupValidationBootTimeout = 13\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_lookup(cfg, "web1", "backup.validation.script.default.timeout", &v), 0);
  cr_assert_str_eq(v.value, "11");
  cr_assert_str_eq(v.key, "backupValidationCommandTimeout");
  cr_assert_eq(v.line, 3);
  cr_assert_eq(kb_config_int(cfg, "web1", "backup.validation.screenshot.default.wait"), 0);
  cr_assert_eq(kb_config_int(cfg, "web1", "backup.validation.boot.default.timeout"), 13);
  /* Without a VM the account value does not apply either. */
  assert_value(cfg, NULL, "backup.validation.script.default.timeout", "60", "default", 0);
  /* The VM setting itself. */
  assert_value(cfg, "web1", "backupValidationBootTimeout", "13", "vm:web1", 5);
  cr_assert_eq(kb_config_lookup(cfg, "web1", "backupValidationCommand", &v), -ENOENT);
  cr_assert_eq(kb_config_lookup(cfg, NULL, "no.such.key", &v), -ENOENT);
  kb_config_free(cfg);
}

Test(config, every_default_passes_its_own_check)
{
  char why[256];

  for (const struct kb_setting_def *d = kb_setting_defs; d->key; d++)
    if (d->def)
      cr_expect_eq(kb_setting_check(d, d->def, why, sizeof why), 0, "%s: %s", d->key, why);
}

Test(config, empty_tree_uses_defaults)
{
  struct kb_config *cfg;

  put("kboss.conf", "; nothing set\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_bool(cfg, NULL, "backup.framework.enabled"), false);
  cr_assert_str_eq(kb_config_str(cfg, NULL, "backup.framework.provider.plugin"), "dummy");
  cr_assert_eq(kb_config_real(cfg, NULL, "backup.compression.minimum.free.storage"), 1.0);
  cr_assert_str_eq(kb_config_str(cfg, NULL, "libvirt.uri"), "qemu:///system");
  cr_assert_null(kb_config_vm_names(cfg)[0]);
  kb_config_free(cfg);
}

/* ---- errors ---- */

Test(config, unknown_key)
{
  put("kboss.conf", "[global]\nbackup.chain.size = 3\nbackup.chian.size = 4\n");
  char *e = load_bad();
  assert_error(e, "kboss.conf", 3, "backup.chian.size: unknown key");
  free(e);
}

Test(config, out_of_range_and_wrong_type)
{
  put("kboss.conf",
      "[zone]\n"
      "backup.chain.size = 0\n"                          /* 2 */
      "backup.compression.timeout = soon\n"              /* 3 */
      "backup.framework.enabled = maybe\n"               /* 4 */
      "backup.compression.minimum.free.storage = -1\n"   /* 5 */
      "[cluster]\n"
      "backup.compression.coroutines = 65\n"             /* 7 */
      "[global]\n"
      "secondary.path = relative/dir\n");                /* 9 */
  char *e = load_bad();
  assert_error(e, "kboss.conf", 2, "backup.chain.size: must be an integer from 1 to 1000");
  assert_error(e, "kboss.conf", 3, "backup.compression.timeout: must be an integer from 1 to 604800");
  assert_error(e, "kboss.conf", 4, "backup.framework.enabled: must be true or false, not \"maybe\"");
  assert_error(e, "kboss.conf", 5,
               "backup.compression.minimum.free.storage: must be a number of at least 0");
  assert_error(e, "kboss.conf", 7, "backup.compression.coroutines: must be an integer from 1 to 64");
  assert_error(e, "kboss.conf", 9, "secondary.path: must be an absolute path");
  cr_assert_eq(count_lines(e), 6, "all errors, not only the first:\n%s", e);
  free(e);
}

Test(config, key_below_its_scope)
{
  put("kboss.conf",
      "[account:acme]\n"
      "backup.compression.coroutines = 2\n"              /* 2: cluster key */
      "backup.validation.interval = 5\n"                 /* 3: fine */
      "[cluster]\n"
      "backup.chain.size = 4\n"                          /* 5: zone key */
      "[zone]\n"
      "libvirt.uri = qemu:///session\n");                /* 7: global key */
  char *e = load_bad();
  assert_error(e, "kboss.conf", 2,
               "backup.compression.coroutines: has cluster scope: it cannot be set in [account:acme]");
  assert_error(e, "kboss.conf", 5, "backup.chain.size: has zone scope: it cannot be set in [cluster]");
  assert_error(e, "kboss.conf", 7, "libvirt.uri: has global scope: it cannot be set in [zone]");
  cr_assert_eq(count_lines(e), 3, "%s", e);
  free(e);
}

Test(config, vm_setting_outside_vms_d_and_account_key_in_vm)
{
  put("kboss.conf", "[global]\nbackupValidationCommand = /bin/true\n");
  put("vms.d/web1.conf", "[vm]\nbackup.validation.interval = 3\n");
  char *e = load_bad();
  assert_error(e, "kboss.conf", 2, "backupValidationCommand: is a VM setting: set it in vms.d/VM.conf");
  assert_error(e, "vms.d/web1.conf", 2,
               "backup.validation.interval: has account scope: it cannot be set per VM");
  free(e);
}

Test(config, unknown_section)
{
  put("kboss.conf",
      "[global]\n"
      "libvirt.uri = qemu:///system\n"
      "[host]\n"                                          /* 3 */
      "whatever = 1\n"
      "[account:]\n"                                      /* 5 */
      "[account:../etc]\n");                              /* 6 */
  put("offerings.d/gold.conf", "[offer]\nname = gold\n");
  put("vms.d/web1.conf", "[machine]\naccount = a\n");
  char *e = load_bad();
  assert_error(e, "kboss.conf", 3,
               "[host]: unknown section (expected [global], [zone], [cluster], [account:NAME] or [store:NAME])");
  assert_error(e, "kboss.conf", 5, "[account:]: \"\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)");
  assert_error(e, "kboss.conf", 6,
               "[account:../etc]: \"../etc\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)");
  assert_error(e, "offerings.d/gold.conf", 1,
               "[offer]: unknown section (an offering file has only [offering])");
  assert_error(e, "vms.d/web1.conf", 1, "[machine]: unknown section (a VM file has only [vm])");
  /* Keys under a bad section are not reported again. */
  cr_assert_eq(count_lines(e), 5, "%s", e);
  free(e);
}

Test(config, duplicate_key)
{
  put("kboss.conf",
      "[zone]\n"
      "backup.chain.size = 4\n"
      "[global]\n"
      "backup.chain.size = 4\n"                           /* other section: fine */
      "[zone]\n"
      "backup.chain.size = 6\n");                         /* 6 */
  put("vms.d/web1.conf", "[vm]\naccount = a\naccount = b\n");
  char *e = load_bad();
  assert_error(e, "kboss.conf", 6, "backup.chain.size: set twice in [zone] (first at line 2)");
  assert_error(e, "vms.d/web1.conf", 3, "account: set twice in [vm] (first at line 2)");
  cr_assert_eq(count_lines(e), 2, "%s", e);
  free(e);
}

Test(config, syntax_errors_and_keys_outside_sections)
{
  put("kboss.conf",
      "backup.chain.size = 4\n"                           /* 1 */
      "[global\n"                                         /* 2 */
      "[zone]\n"
      "just some words\n");                               /* 4 */
  char *e = load_bad();
  assert_error(e, "kboss.conf", 1, "backup.chain.size: is outside any section");
  assert_error(e, "kboss.conf", 2, "section header without ]");
  assert_error(e, "kboss.conf", 4, "expected KEY = VALUE or [section], not \"just some words\"");
  free(e);
}

Test(config, bad_base64_and_vm_values)
{
  put("kboss.conf", "");
  put("vms.d/web1.conf",
      "[vm]\n"
      "backupValidationCommandExpectedResult = aGVsbG8=\n"     /* fine */
      "backupValidationCommandTimeout = 0\n"                   /* 3 */
      "offering = bad/name\n");                                /* 4 */
  put("vms.d/web2.conf", "[vm]\nbackupValidationCommandExpectedResult = not base64!\n");
  put("vms.d/web3.conf", "[vm]\nbackupValidationCommandExpectedResult = aGVsbG8\n");
  char *e = load_bad();
  assert_error(e, "vms.d/web1.conf", 3, "backupValidationCommandTimeout: must be an integer from 1 to 86400");
  assert_error(e, "vms.d/web1.conf", 4,
               "offering: \"bad/name\" is not a valid name (1-128 of A-Z a-z 0-9 . _ -)");
  assert_error(e, "vms.d/web2.conf", 2,
               "backupValidationCommandExpectedResult: must be base64 (A-Z a-z 0-9 + /, padded with =)");
  assert_error(e, "vms.d/web3.conf", 2,
               "backupValidationCommandExpectedResult: must be base64 (A-Z a-z 0-9 + /, padded with =)");
  cr_assert_eq(count_lines(e), 4, "%s", e);
  free(e);
}

Test(config, base64_check)
{
  cr_assert(kb_base64_ok(""));
  cr_assert(kb_base64_ok("aGVsbG8="));
  cr_assert(kb_base64_ok("aGk+Lw=="));
  cr_assert(kb_base64_ok("aGVsbG8h"));
  cr_assert_not(kb_base64_ok("aGVsbG8"));
  cr_assert_not(kb_base64_ok("aG=sbG8="));
  cr_assert_not(kb_base64_ok("a==="));
  cr_assert_not(kb_base64_ok("aGVs bG8="));
}

Test(config, bad_file_names)
{
  put("kboss.conf", "");
  put("vms.d/web 1.conf", "[vm]\n");
  put("offerings.d/-gold.conf", "[offering]\n");
  put("offerings.d/notes.txt", "ignored: not .conf\n");
  char *e = load_bad();
  assert_error(e, "vms.d/web 1.conf", 0,
               "\"web 1\" is not a valid VM name (1-128 of A-Z a-z 0-9 . _ -)");
  assert_error(e, "offerings.d/-gold.conf", 0,
               "\"-gold\" is not a valid offering name (1-128 of A-Z a-z 0-9 . _ -)");
  cr_assert_eq(count_lines(e), 2, "%s", e);
  free(e);
}

Test(config, vm_with_missing_offering)
{
  put("kboss.conf", "");
  put("vms.d/web1.conf", "[vm]\naccount = nobody\noffering = silver\n");
  char *e = load_bad();
  assert_error(e, "vms.d/web1.conf", 3, "offering: no offering \"silver\" (offerings.d/silver.conf)");
  cr_assert_eq(count_lines(e), 1, "a missing [account:X] is no error:\n%s", e);
  free(e);
}

Test(config, missing_file)
{
  struct kb_config *cfg = NULL;
  char *errors = NULL;

  cr_assert_eq(kb_config_load(conf, &cfg, &errors), -ENOENT);
  cr_assert_null(cfg);
  assert_error(errors, "kboss.conf", 0, "cannot read: No such file or directory");
  free(errors);
}

/* ---- offerings ---- */

Test(config, offering_fields)
{
  struct kb_config *cfg;
  const struct kb_offering *o;

  put("kboss.conf", "[zone]\nbackup.chain.size = 6\n");
  put("offerings.d/gold.conf",
      "; the gold offering\n"
      "[offering]\n"
      "name = gold\n"
      "description = Gold: compressed; validated\n"
      "zone = zone1\n"
      "allow_user_driven_backups = true\n"
      "public = false\n"
      "domain = ROOT/customers\n"
      "compress = yes\n"
      "compression_library = zlib\n"
      "validate = true\n"
      "validation_steps = wait_for_boot, fs_check\n"
      "allow_extract_file = false\n"
      "allow_quick_restore = on\n"
      "backup_chain_size = 3\n");
  put("offerings.d/basic.conf", "[offering]\nvalidate = true\n");
  put("vms.d/web1.conf", "[vm]\noffering = gold\n");
  put("vms.d/web2.conf", "[vm]\noffering = basic\n");
  cfg = load_ok();

  o = kb_config_offering(cfg, "gold");
  cr_assert_not_null(o);
  cr_assert_str_eq(o->name, "gold");
  cr_assert_str_eq(o->description, "Gold: compressed; validated");
  cr_assert_str_eq(o->zone, "zone1");
  cr_assert(o->allow_user_driven_backups);
  cr_assert_not(o->public_);
  cr_assert_str_eq(o->domain, "ROOT/customers");
  cr_assert(o->compress);
  cr_assert_str_eq(o->compression_library, "zlib");
  cr_assert(o->validate);
  cr_assert_str_eq(o->validation_steps[0], "wait_for_boot");
  cr_assert_str_eq(o->validation_steps[1], "fs_check");
  cr_assert_null(o->validation_steps[2]);
  cr_assert_not(o->allow_extract_file);
  cr_assert(o->allow_quick_restore);
  cr_assert_eq(o->backup_chain_size, 3);
  cr_assert_eq(kb_config_chain_size(cfg, "web1"), 3);

  /* Defaults; offerings come in name order. */
  o = kb_config_offering_at(cfg, 0);
  cr_assert_str_eq(o->name, "basic");
  cr_assert(o->public_);
  cr_assert_null(o->domain);
  cr_assert_not(o->compress);
  cr_assert_str_eq(o->compression_library, "zstd");
  cr_assert_str_eq(o->validation_steps[0], "wait_for_boot");
  cr_assert_str_eq(o->validation_steps[1], "execute_command");
  cr_assert_str_eq(o->validation_steps[2], "screenshot");
  cr_assert_null(o->validation_steps[3]);
  cr_assert_eq(o->backup_chain_size, 0);
  cr_assert_eq(kb_config_chain_size(cfg, "web2"), 6);
  cr_assert_null(kb_config_offering_at(cfg, 2));
  cr_assert_str_eq(kb_config_vm_offering(cfg, "web1"), "gold");
  cr_assert_eq(kb_config_vm_offering_def(cfg, "web1"), kb_config_offering(cfg, "gold"));
  kb_config_free(cfg);
}

Test(config, bad_offering_fields)
{
  put("kboss.conf", "");
  put("offerings.d/gold.conf",
      "[offering]\n"
      "name = silver\n"                                       /* 2 */
      "compression_library = lz4\n"                           /* 3 */
      "validation_steps = wait_for_boot, reboot\n"            /* 4 */
      "backup_chain_size = 0\n"                               /* 5 */
      "compress = sometimes\n"                                /* 6 */
      "colour = blue\n"                                       /* 7 */
      "public = false\n");                                    /* 8 */
  put("offerings.d/bronze.conf", "[offering]\ndomain = ROOT\nvalidation_steps = screenshot,screenshot\n");
  char *e = load_bad();
  assert_error(e, "offerings.d/gold.conf", 2, "name: \"silver\" does not match the file name (gold.conf)");
  assert_error(e, "offerings.d/gold.conf", 3, "compression_library: must be zstd or zlib, not \"lz4\"");
  assert_error(e, "offerings.d/gold.conf", 4,
               "validation_steps: unknown step \"reboot\" (known: wait_for_boot, execute_command, "
               "screenshot, fs_check)");
  assert_error(e, "offerings.d/gold.conf", 5, "backup_chain_size: must be an integer from 1 to 1000");
  assert_error(e, "offerings.d/gold.conf", 6, "compress: must be true or false, not \"sometimes\"");
  assert_error(e, "offerings.d/gold.conf", 7, "colour: unknown offering field");
  assert_error(e, "offerings.d/gold.conf", 8, "domain: is required when public is false");
  assert_error(e, "offerings.d/bronze.conf", 2, "domain: is only for offerings with public = false");
  assert_error(e, "offerings.d/bronze.conf", 3, "validation_steps: step screenshot is listed twice");
  cr_assert_eq(count_lines(e), 9, "%s", e);
  free(e);
}

/* ---- stores ---- */

Test(config, implicit_default_store)
{
  struct kb_config *cfg;
  const struct kb_store *s;

  put("kboss.conf", "[global]\nsecondary.path = /srv/nfs\n");
  cfg = load_ok();
  s = kb_config_store(cfg, "default");
  cr_assert_not_null(s);
  cr_assert_str_eq(s->path, "/srv/nfs");
  cr_assert_not(s->backups_only);
  cr_assert_null(kb_config_store_at(cfg, 1));
  kb_config_free(cfg);
}

Test(config, named_stores)
{
  struct kb_config *cfg;
  const struct kb_store *s;

  put("kboss.conf",
      "[store:nfs1]\npath = /mnt/nfs1\n"
      "[store:backups]\npath = /mnt/backups\nbackups_only = true\n");
  cfg = load_ok();
  cr_assert_null(kb_config_store(cfg, "default"));
  s = kb_config_store_at(cfg, 0);
  cr_assert_str_eq(s->name, "nfs1");
  cr_assert_str_eq(s->path, "/mnt/nfs1");
  cr_assert_not(s->backups_only);
  s = kb_config_store(cfg, "backups");
  cr_assert_str_eq(s->path, "/mnt/backups");
  cr_assert(s->backups_only);
  kb_config_free(cfg);
}

Test(config, bad_stores)
{
  put("kboss.conf",
      "[store:a]\n"                 /* 1: no path */
      "backups_only = true\n"
      "[store:b]\n"
      "path = mnt/b\n"              /* 4 */
      "size = 10\n"                 /* 5 */
      "[store:a]\n");               /* 6 */
  char *e = load_bad();
  assert_error(e, "kboss.conf", 1, "path: missing in [store:a]");
  assert_error(e, "kboss.conf", 4, "path: must be an absolute path");
  assert_error(e, "kboss.conf", 5, "size: unknown key in [store:b] (known: path, backups_only)");
  assert_error(e, "kboss.conf", 6, "[store:a]: section repeated (first at line 1)");
  free(e);
}

/* ---- writing VM settings ---- */

static char *slurp(const char *rel)
{
  char path[512];
  char *text = NULL;

  snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
  cr_assert_eq(kb_read_file(path, &text, NULL), 0, "%s", path);
  return text;
}

Test(config, vm_set_creates_edits_and_removes)
{
  struct kb_config *cfg, *again;
  char *err = NULL, *text;
  char path[512];
  struct stat st;

  put("kboss.conf", "");
  put("offerings.d/gold.conf", "[offering]\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommand", "/bin/echo", false, &err), 0,
               "%s", err ? err : "");
  snprintf(path, sizeof path, "%s/vms.d/web1.conf", tmpdir);
  cr_assert_eq(lstat(path, &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0600);
  snprintf(path, sizeof path, "%s/vms.d", tmpdir);
  cr_assert_eq(lstat(path, &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0700);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "offering", "gold", false, &err), 0);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationBootTimeout", "99", false, &err), 0);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommand", "/bin/true", false, &err), 0);
  /* The in-memory configuration follows. */
  cr_assert_eq(kb_config_int(cfg, "web1", "backup.validation.boot.default.timeout"), 99);
  cr_assert_str_eq(kb_config_vm_names(cfg)[0], "web1");
  text = slurp("vms.d/web1.conf");
  cr_assert_str_eq(text,
                   "[vm]\n"
                   "backupValidationCommand = /bin/true\n"
                   "offering = gold\n"
                   "backupValidationBootTimeout = 99\n");
  free(text);

  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommand", NULL, false, &err), 0);
  cr_assert_null(kb_config_vm_setting(cfg, "web1", "backupValidationCommand"));
  kb_config_free(cfg);

  /* What was written loads back. */
  again = load_ok();
  cr_assert_str_eq(kb_config_vm_offering(again, "web1"), "gold");
  cr_assert_null(kb_config_vm_setting(again, "web1", "backupValidationCommand"));
  cr_assert_str_eq(kb_config_vm_setting(again, "web1", "backupValidationBootTimeout"), "99");
  kb_config_free(again);
  /* No temporary file left behind. */
  text = NULL;
  {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s/vms.d | wc -l) -eq 1", tmpdir);
    cr_assert_eq(system(cmd), 0, "stray files in vms.d");
  }
}

Test(config, vm_set_keeps_comments_and_other_keys)
{
  struct kb_config *cfg;
  char *err = NULL, *text;

  put("kboss.conf", "");
  put("vms.d/db1.conf",
      "# database server\n"
      "[vm]\n"
      "account = acme\n"
      "backupValidationScreenshotWait = 5\n"
      "; end\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_vm_set(cfg, "db1", "backupValidationScreenshotWait", "7", false, &err), 0);
  text = slurp("vms.d/db1.conf");
  cr_assert_str_eq(text,
                   "# database server\n"
                   "[vm]\n"
                   "account = acme\n"
                   "backupValidationScreenshotWait = 7\n"
                   "; end\n");
  free(text);
  kb_config_free(cfg);
}

Test(config, vm_set_refuses_readonly_details_for_users)
{
  struct kb_config *cfg;
  char *err = NULL, *text;

  put("kboss.conf", "");
  put("vms.d/web1.conf", "[vm]\nbackupValidationBootTimeout = 10\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationBootTimeout", "20", true, &err), -EPERM);
  cr_assert_str_eq(err, "backupValidationBootTimeout: read-only for users (user.vm.readonly.details)");
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationBootTimeout", NULL, true, &err), -EPERM);
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "offering", "x", true, &err), -EPERM);
  free(err);
  /* The file is untouched; a user may set the command. */
  text = slurp("vms.d/web1.conf");
  cr_assert_str_eq(text, "[vm]\nbackupValidationBootTimeout = 10\n");
  free(text);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommand", "/bin/true", true, &err), 0);
  /* An admin may change the timeout. */
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationBootTimeout", "20", false, &err), 0);
  kb_config_free(cfg);

  /* The list is configurable: an empty list lets users change everything. */
  put("kboss.conf", "[global]\nuser.vm.readonly.details =\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationBootTimeout", "30", true, &err), 0);
  cr_assert_eq(kb_config_int(cfg, "web1", "backup.validation.boot.default.timeout"), 30);
  kb_config_free(cfg);
}

Test(config, vm_set_validates)
{
  struct kb_config *cfg;
  char *err = NULL;
  char path[512];

  put("kboss.conf", "");
  cfg = load_ok();
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationBootTimeout", "0", false, &err), -EINVAL);
  cr_assert_str_eq(err, "backupValidationBootTimeout: must be an integer from 1 to 86400");
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommandExpectedResult", "abc", false, &err),
               -EINVAL);
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backup.chain.size", "3", false, &err), -EINVAL);
  cr_assert_str_eq(err, "backup.chain.size: not a VM setting");
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "../web1", "backupValidationCommand", "x", false, &err), -EINVAL);
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommand", "a\nb", false, &err), -EINVAL);
  free(err);
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "offering", "nosuch", false, &err), -ENOENT);
  free(err);
  snprintf(path, sizeof path, "%s/vms.d/web1.conf", tmpdir);
  cr_assert_eq(access(path, F_OK), -1, "nothing written for refused values");
  kb_config_free(cfg);
}

Test(config, long_values_and_indented_lines)
{
  struct kb_config *cfg;
  char *big = malloc(5000 + 64);
  const char *v;

  put("kboss.conf", "  [global]\n   libvirt.uri = qemu:///session\n");
  strcpy(big, "[vm]\nbackupValidationCommandExpectedResult = ");
  memset(big + strlen(big), 'Q', 4000);
  strcpy(big + strlen("[vm]\nbackupValidationCommandExpectedResult = ") + 4000, "\naccount = a\n");
  put("vms.d/web1.conf", big);
  cfg = load_ok();
  v = kb_config_vm_setting(cfg, "web1", "backupValidationCommandExpectedResult");
  cr_assert_eq(strlen(v), 4000);
  assert_value(cfg, "web1", "account.max.vcpus", "-1", "default", 0);
  cr_assert_str_eq(kb_config_vm_account(cfg, "web1"), "a");
  cr_assert_str_eq(kb_config_str(cfg, NULL, "libvirt.uri"), "qemu:///session");
  kb_config_free(cfg);
  free(big);
}

/* ---- text and ranges (issue 12, point 5) ---- */

/* Write REL with LEN raw bytes (NULs included). */
static void put_bytes(const char *rel, const char *bytes, size_t len)
{
  char path[512];
  FILE *f;

  snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
  f = fopen(path, "w");
  cr_assert_not_null(f, "%s", path);
  cr_assert_eq(fwrite(bytes, 1, len, f), len);
  fclose(f);
}

Test(config, embedded_nul_is_an_error_not_the_end_of_the_file)
{
  /* Before, inih stopped at the NUL: secondary.path fell back to its
   * default and the file was called valid. */
  static const char text[] = "[global]\nlibvirt.uri = qemu:///system\x00\nsecondary.path = /srv/sec\n";
  put_bytes("kboss.conf", text, sizeof text - 1);
  char *e = load_bad();
  assert_error(e, "kboss.conf", 2, "holds a NUL byte: not a text file");
  cr_assert_eq(count_lines(e), 1, "%s", e);
  free(e);
}

Test(config, control_characters_and_non_utf8_are_errors_with_their_line)
{
  static const char text[] =
    "[global]\n"                                    /* 1 */
    "zone.name = a\x1b[31mred\n"                    /* 2: ESC */
    "libvirt.uri = qemu:///system\n"                /* 3 */
    "scratch.path = /var/\xff\xfe\n"                /* 4: not UTF-8 */
    "; caf\xc3\xa9 is fine in a comment\n"          /* 5: UTF-8 */
    "secondary.path = /mnt/\xc0\xaf\n"              /* 6: overlong '/' */
    "\tbackup.chain.size = 3\r\n"                   /* 7: tab and CR are text */
    "zone.name = b\x7f\n";                          /* 8: DEL (and set twice, unseen) */
  put_bytes("kboss.conf", text, sizeof text - 1);
  char *e = load_bad();
  assert_error(e, "kboss.conf", 2, "holds the control character 0x1b: not allowed in a configuration file");
  assert_error(e, "kboss.conf", 4, "holds bytes that are not UTF-8 text");
  assert_error(e, "kboss.conf", 6, "holds bytes that are not UTF-8 text");
  assert_error(e, "kboss.conf", 8, "holds the control character 0x7f: not allowed in a configuration file");
  cr_assert_eq(count_lines(e), 4, "one error a bad line, and the file not parsed:\n%s", e);
  free(e);
}

Test(config, utf8_text_is_accepted)
{
  struct kb_config *cfg;

  put("kboss.conf", "[global]\nzone.name = z\xc3\xbcrich\n");
  put("offerings.d/gold.conf", "[offering]\ndescription = \xe2\x82\xac 5, \xf0\x9f\x92\xbe daily\n");
  cfg = load_ok();
  cr_assert_str_eq(kb_config_str(cfg, NULL, "zone.name"), "z\xc3\xbcrich");
  cr_assert_str_eq(kb_config_offering(cfg, "gold")->description, "\xe2\x82\xac 5, \xf0\x9f\x92\xbe daily");
  kb_config_free(cfg);
}

Test(config, bad_bytes_in_offering_and_vm_files)
{
  static const char off[] = "[offering]\ncompress = true\x00garbage\n";
  static const char vm[] = "[vm]\nbackupValidationCommand = ls\x01\n";
  put("kboss.conf", "");
  put("offerings.d/x", "");   /* makes the folder */
  put_bytes("offerings.d/gold.conf", off, sizeof off - 1);
  put("vms.d/x", "");
  put_bytes("vms.d/web1.conf", vm, sizeof vm - 1);
  char *e = load_bad();
  assert_error(e, "offerings.d/gold.conf", 2, "holds a NUL byte: not a text file");
  assert_error(e, "vms.d/web1.conf", 2,
               "holds the control character 0x01: not allowed in a configuration file");
  cr_assert_eq(count_lines(e), 2, "%s", e);
  free(e);
}

Test(config, vm_set_refuses_control_characters_and_files_with_nul)
{
  struct kb_config *cfg;
  char *err = NULL;
  static const char vm[] = "[vm]\naccount = a\x00\nbackupValidationCommand = ls\n";

  put("kboss.conf", "");
  cfg = load_ok();
  cr_assert_eq(kb_config_vm_set(cfg, "web1", "backupValidationCommand", "ls\x1b[2J", false, &err),
               -EINVAL);
  cr_assert_not_null(strstr(err, "holds the control character 0x1b"), "%s", err);
  free(err);
  put("vms.d/x", "");
  put_bytes("vms.d/web2.conf", vm, sizeof vm - 1);
  cr_assert_eq(kb_config_vm_set(cfg, "web2", "backupValidationBootTimeout", "30", false, &err), -EINVAL);
  cr_assert_not_null(strstr(err, "vms.d/web2.conf: holds a NUL byte: not a text file"), "%s", err);
  free(err);
  kb_config_free(cfg);
}

Test(config, every_integer_setting_has_a_finite_range)
{
  char why[256];

  /* The real setting has no upper end, but infinity is not a number. */
  cr_assert_eq(kb_setting_check(kb_setting_find("backup.compression.minimum.free.storage"), "inf", why,
                                sizeof why), -EINVAL);
  cr_assert_eq(kb_setting_check(kb_setting_find("backup.compression.minimum.free.storage"), "1e300", why,
                                sizeof why), 0);
  for (const struct kb_setting_def *d = kb_setting_defs; d->key; d++) {
    if (d->type != KB_TYPE_INT)
      continue;
    cr_expect(d->min <= d->max && d->min > -1e12 && d->max < 1e12, "%s: no finite range", d->key);
    /* What programs compute from them fits: ms from seconds in an int,
     * bytes/s from MB/s and KiB from MiB in 64 bits. */
    if (d->type == KB_TYPE_INT)
      cr_expect(d->max * 1000.0 * 1024 * 1024 < 9.2e18, "%s: max too large", d->key);
  }
}

Test(config, integers_out_of_range_and_overflowing_are_errors)
{
  put("kboss.conf",
      "[zone]\n"
      "backup.compression.timeout = 604801\n"                     /* 2 */
      "backup.compression.max.concurrent.operations = 99999999999999999999\n"  /* 3: overflows */
      "backup.compression.retry.interval = 9223372036854775807\n" /* 4 */
      "backup.validation.interval = 8761\n"                       /* 5 */
      "[cluster]\n"
      "backup.compression.rate.limit = -2\n"                      /* 7 */
      "[account:acme]\n"
      "account.max.memory = 1073741825\n");                       /* 9 */
  put("vms.d/web1.conf", "[vm]\nbackupValidationCommandTimeout = 86401\nbackupValidationScreenshotWait = 3601\n");
  put("offerings.d/gold.conf", "[offering]\nbackup_chain_size = 1001\n");
  char *e = load_bad();
  assert_error(e, "kboss.conf", 2, "backup.compression.timeout: must be an integer from 1 to 604800");
  assert_error(e, "kboss.conf", 3,
               "backup.compression.max.concurrent.operations: must be an integer from -1 to 1024");
  assert_error(e, "kboss.conf", 4, "backup.compression.retry.interval: must be an integer from 0 to 10080");
  assert_error(e, "kboss.conf", 5, "backup.validation.interval: must be an integer from 1 to 8760");
  assert_error(e, "kboss.conf", 7, "backup.compression.rate.limit: must be an integer from -1 to 1048576");
  assert_error(e, "kboss.conf", 9, "account.max.memory: must be an integer from -1 to 1073741824");
  assert_error(e, "vms.d/web1.conf", 2, "backupValidationCommandTimeout: must be an integer from 1 to 86400");
  assert_error(e, "vms.d/web1.conf", 3, "backupValidationScreenshotWait: must be an integer from 0 to 3600");
  assert_error(e, "offerings.d/gold.conf", 2, "backup_chain_size: must be an integer from 1 to 1000");
  cr_assert_eq(count_lines(e), 9, "%s", e);
  free(e);
}

Test(config, range_ends_are_accepted)
{
  struct kb_config *cfg;

  put("kboss.conf",
      "[zone]\nbackup.compression.timeout = 604800\nbackup.chain.size = 1000\n"
      "[cluster]\nbackup.compression.max.concurrent.operations.per.host = -1\n");
  put("offerings.d/gold.conf", "[offering]\nbackup_chain_size = 1000\n");
  put("vms.d/web1.conf", "[vm]\noffering = gold\nbackupValidationBootTimeout = 86400\n");
  cfg = load_ok();
  cr_assert_eq(kb_config_int(cfg, NULL, "backup.compression.timeout"), 604800);
  cr_assert_eq(kb_config_int(cfg, "web1", "backup.validation.boot.default.timeout"), 86400);
  cr_assert_eq(kb_config_chain_size(cfg, "web1"), 1000);
  cr_assert_eq(kb_config_chain_size(cfg, "other"), 1000);
  kb_config_free(cfg);
}

Test(config, one_list_of_validation_steps)
{
  struct kb_config *cfg;
  const char *const *st;

  put("kboss.conf", "");
  put("offerings.d/v.conf", "[offering]\nvalidate = true\n");
  put("offerings.d/n.conf", "[offering]\n");
  put("offerings.d/f.conf", "[offering]\nvalidation_steps = fs_check\n");
  cfg = load_ok();
  /* Unset, not validating, unknown offering: the documented default. */
  for (int i = 0; i < 3; i++) {
    const struct kb_offering *o = i == 0 ? kb_config_offering(cfg, "v")
                                  : i == 1 ? kb_config_offering(cfg, "n") : NULL;
    st = kb_offering_steps(o);
    cr_assert_eq(st, (const char *const *) (o && o->validation_steps[0] ? (const char *const *) o->validation_steps
                                                                          : kb_validation_default_steps));
    cr_assert_str_eq(st[0], "wait_for_boot");
    cr_assert_str_eq(st[2], "screenshot");
    cr_assert_null(st[3]);
  }
  st = kb_offering_steps(kb_config_offering(cfg, "f"));
  cr_assert_str_eq(st[0], "fs_check");
  cr_assert_null(st[1]);
  kb_config_free(cfg);
}
