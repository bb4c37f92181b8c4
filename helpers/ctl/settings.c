/* kbossctl settings: every effective setting with its origin; VM settings
 * changed in vms.d/VM.conf; --check validates the whole configuration. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "jsonout.h"
#include "log.h"
#include "util.h"

static void settings_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s settings [VM] [--json]\n"
          "       %s settings VM --set KEY=VALUE [--user] [--set ...] [--unset KEY ...]\n"
          "       %s settings --check\n"
          "\n"
          "Print every setting's effective value (for VM, or at global level) and\n"
          "where it comes from: FILE:LINE [section], or \"default\".\n"
          "\n"
          "  --json            print JSON\n"
          "  --set KEY=VALUE   set a VM setting (or account=, offering=) in vms.d/VM.conf\n"
          "  --unset KEY       remove a VM setting from vms.d/VM.conf\n"
          "  --user            act as a non-admin user: keys in user.vm.readonly.details are refused\n"
          "  --check           validate the configuration; exit 1 and print the errors if bad\n"
          "  --config FILE     configuration file\n",
          kb_progname, kb_progname, kb_progname);
}

struct change {
  const char *key;    /* points into argv, '=' replaced */
  const char *value;  /* NULL: unset */
};

static void origin_text(const struct kb_value *v, const char *key, char *buf, size_t len)
{
  if (!v->file)
    snprintf(buf, len, "default");
  else if (strcmp(v->key, key) != 0)
    snprintf(buf, len, "%s:%d [%s] %s", v->file, v->line, v->section, v->key);
  else
    snprintf(buf, len, "%s:%d [%s]", v->file, v->line, v->section);
}

static void print_text(const struct kb_config *cfg, const char *vm)
{
  const struct kb_setting_def *d;
  int width = 0;

  for (d = kb_setting_defs; d->key; d++)
    if ((vm || d->scope != KB_SCOPE_VM) && (int) strlen(d->key) > width)
      width = strlen(d->key);
  if (vm) {
    const char *account = kb_config_vm_account(cfg, vm);
    const char *offering = kb_config_vm_offering(cfg, vm);
    printf("%-*s  %s\n", width, "vm", vm);
    printf("%-*s  %s\n", width, "account", account ? account : "-");
    printf("%-*s  %s\n", width, "offering", offering ? offering : "-");
    printf("\n");
  }
  printf("%-*s  %-8s %-24s %s\n", width, "KEY", "SCOPE", "VALUE", "ORIGIN");
  for (d = kb_setting_defs; d->key; d++) {
    struct kb_value v;
    char origin[1024];

    if (!vm && d->scope == KB_SCOPE_VM)
      continue;
    if (kb_config_lookup(cfg, vm, d->key, &v) < 0) {
      printf("%-*s  %-8s %-24s %s\n", width, d->key, kb_scope_name(d->scope), "-", "unset");
      continue;
    }
    origin_text(&v, d->key, origin, sizeof origin);
    printf("%-*s  %-8s %-24s %s\n", width, d->key, kb_scope_name(d->scope), v.value, origin);
  }
}

static void print_json(const struct kb_config *cfg, const char *vm)
{
  json_object *root = json_object_new_object(), *arr = json_object_new_array();

  json_object_object_add(root, "config", kb_json_str(kb_config_path(cfg)));
  json_object_object_add(root, "vm", kb_json_str(vm));
  if (vm) {
    json_object_object_add(root, "account", kb_json_str(kb_config_vm_account(cfg, vm)));
    json_object_object_add(root, "offering", kb_json_str(kb_config_vm_offering(cfg, vm)));
  }
  for (const struct kb_setting_def *d = kb_setting_defs; d->key; d++) {
    json_object *o, *origin = NULL;
    struct kb_value v;
    int r;

    if (!vm && d->scope == KB_SCOPE_VM)
      continue;
    r = kb_config_lookup(cfg, vm, d->key, &v);
    o = json_object_new_object();
    json_object_object_add(o, "key", kb_json_str(d->key));
    json_object_object_add(o, "type", kb_json_str(kb_type_name(d->type)));
    json_object_object_add(o, "scope", kb_json_str(kb_scope_name(d->scope)));
    json_object_object_add(o, "value", kb_json_str(r < 0 ? NULL : v.value));
    json_object_object_add(o, "default", kb_json_str(d->def));
    if (r == 0) {
      origin = json_object_new_object();
      json_object_object_add(origin, "file", kb_json_str(v.file));
      json_object_object_add(origin, "line", json_object_new_int(v.line));
      json_object_object_add(origin, "section", kb_json_str(v.section));
      json_object_object_add(origin, "key", kb_json_str(v.key));
    }
    json_object_object_add(o, "origin", origin);
    json_object_array_add(arr, o);
  }
  json_object_object_add(root, "settings", arr);
  kb_json_print(root);
}

int ctl_settings(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "json", no_argument, NULL, 'j' },
    { "set", required_argument, NULL, 's' },
    { "unset", required_argument, NULL, 'u' },
    { "user", no_argument, NULL, 'U' },
    { "check", no_argument, NULL, 'C' },
    { NULL, 0, NULL, 0 },
  };
  CLEANUP_FREE struct change *changes = calloc(argc, sizeof *changes);
  size_t n_changes = 0;
  bool json = false, as_user = false, check = false;
  const char *vm = NULL;
  struct kb_config *cfg;
  int c, status = 0;

  if (!changes) {
    kb_err("out of memory");
    return 1;
  }
  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG:
      ctl_config_path = optarg;
      break;
    case CTL_OPT_HELP:
      settings_usage(stdout);
      return 0;
    case 'j':
      json = true;
      break;
    case 's': {
      char *eq = strchr(optarg, '=');
      if (!eq || eq == optarg) {
        kb_err("--set wants KEY=VALUE, not \"%s\"", optarg);
        return 2;
      }
      *eq = '\0';
      changes[n_changes].key = optarg;
      changes[n_changes++].value = eq + 1;
      break;
    }
    case 'u':
      changes[n_changes].key = optarg;
      changes[n_changes++].value = NULL;
      break;
    case 'U':
      as_user = true;
      break;
    case 'C':
      check = true;
      break;
    default:
      settings_usage(stderr);
      return 2;
    }
  }
  if (optind < argc)
    vm = argv[optind++];
  if (optind < argc) {
    kb_err("settings: too many arguments (see %s settings --help)", kb_progname);
    return 2;
  }
  if (vm && !kb_name_ok(vm)) {
    kb_err("settings: \"%s\" is not a valid VM name", vm);
    return 2;
  }
  if (n_changes && !vm) {
    kb_err("settings: --set and --unset need a VM");
    return 2;
  }
  if (as_user && !n_changes) {
    kb_err("settings: --user goes with --set or --unset");
    return 2;
  }

  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  if (check) {
    printf("%s: configuration is valid\n", kb_config_path(cfg));
    kb_config_free(cfg);
    return 0;
  }
  for (size_t i = 0; i < n_changes; i++) {
    CLEANUP_FREE char *err = NULL;
    int r = kb_config_vm_set(cfg, vm, changes[i].key, changes[i].value, as_user, &err);
    if (r < 0) {
      if (err) {
        char *save = NULL;
        for (char *line = strtok_r(err, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
          kb_err("%s", line);
      } else
        kb_err("%s: %s", changes[i].key, strerror(-r));
      status = 1;
      break;
    }
  }
  if (!n_changes) {
    if (json)
      print_json(cfg, vm);
    else
      print_text(cfg, vm);
  }
  kb_config_free(cfg);
  return status;
}
