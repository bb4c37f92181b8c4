/* kbossctl offerings: list the backup offerings, or show one. */
#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "jsonout.h"
#include "log.h"
#include "util.h"

static void offerings_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s offerings [NAME] [--json]\n"
          "       %s offerings create NAME KEY=VALUE...\n"
          "       %s offerings delete NAME\n"
          "\n"
          "List the backup offerings of offerings.d, or show every field of one;\n"
          "create one (offerings.d/NAME.conf, fields checked as kboss reads them:\n"
          "description, zone, allow_user_driven_backups, public, domain, compress,\n"
          "compression_library, validate, validation_steps, allow_extract_file,\n"
          "allow_quick_restore, backup_chain_size, keep_last, keep_hourly, keep_daily,\n"
          "keep_weekly, keep_monthly, keep_yearly), or delete one no VM is assigned to.\n"
          "\n"
          "  --json         print JSON\n"
          "  --config FILE  configuration file\n", kb_progname, kb_progname, kb_progname);
}

static void steps_text(const struct kb_offering *o, char *buf, size_t len)
{
  size_t used = 0;

  buf[0] = '\0';
  for (char **s = o->validation_steps; s && *s; s++) {
    int n = snprintf(buf + used, len - used, "%s%s", used ? "," : "", *s);
    if (n < 0 || (size_t) n >= len - used)
      break;
    used += n;
  }
  if (!used)
    snprintf(buf, len, "-");
}

static json_object *json_offering(const struct kb_offering *o)
{
  json_object *j = json_object_new_object(), *steps = json_object_new_array();

  json_object_object_add(j, "name", kb_json_str(o->name));
  json_object_object_add(j, "description", kb_json_str(o->description));
  json_object_object_add(j, "zone", kb_json_str(o->zone));
  json_object_object_add(j, "allow_user_driven_backups", json_object_new_boolean(o->allow_user_driven_backups));
  json_object_object_add(j, "public", json_object_new_boolean(o->public_));
  json_object_object_add(j, "domain", kb_json_str(o->domain));
  json_object_object_add(j, "compress", json_object_new_boolean(o->compress));
  json_object_object_add(j, "compression_library", kb_json_str(o->compression_library));
  json_object_object_add(j, "validate", json_object_new_boolean(o->validate));
  for (char **s = o->validation_steps; s && *s; s++)
    json_object_array_add(steps, kb_json_str(*s));
  json_object_object_add(j, "validation_steps", steps);
  json_object_object_add(j, "allow_extract_file", json_object_new_boolean(o->allow_extract_file));
  json_object_object_add(j, "allow_quick_restore", json_object_new_boolean(o->allow_quick_restore));
  json_object_object_add(j, "backup_chain_size",
                         o->backup_chain_size > 0 ? json_object_new_int64(o->backup_chain_size) : NULL);
  for (size_t i = 0; i < 6; i++)
    json_object_object_add(j, kb_offering_keep_fields[i], json_object_new_int64(o->keep[i]));
  json_object_object_add(j, "file", kb_json_str(o->file));
  return j;
}

static void show_offering(const struct kb_offering *o)
{
  char steps[256];

  steps_text(o, steps, sizeof steps);
  printf("name                       %s\n", o->name);
  printf("description                %s\n", o->description ? o->description : "");
  printf("zone                       %s\n", o->zone ? o->zone : "-");
  printf("allow_user_driven_backups  %s\n", o->allow_user_driven_backups ? "true" : "false");
  printf("public                     %s\n", o->public_ ? "true" : "false");
  printf("domain                     %s\n", o->domain ? o->domain : "-");
  printf("compress                   %s\n", o->compress ? "true" : "false");
  printf("compression_library        %s\n", o->compression_library);
  printf("validate                   %s\n", o->validate ? "true" : "false");
  printf("validation_steps           %s\n", steps);
  printf("allow_extract_file         %s\n", o->allow_extract_file ? "true" : "false");
  printf("allow_quick_restore        %s\n", o->allow_quick_restore ? "true" : "false");
  if (o->backup_chain_size > 0)
    printf("backup_chain_size          %lld\n", o->backup_chain_size);
  else
    printf("backup_chain_size          - (backup.chain.size)\n");
  for (size_t i = 0; i < 6; i++)
    if (o->keep[i])
      printf("%-26s %lld\n", kb_offering_keep_fields[i], o->keep[i]);
  printf("file                       %s\n", o->file);
}

int ctl_offerings(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "json", no_argument, NULL, 'j' },
    { NULL, 0, NULL, 0 },
  };
  const struct kb_offering *o;
  const char *name = NULL;
  struct kb_config *cfg;
  bool json = false;
  int c;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG:
      ctl_config_path = optarg;
      break;
    case CTL_OPT_HELP:
      offerings_usage(stdout);
      return 0;
    case 'j':
      json = true;
      break;
    default:
      offerings_usage(stderr);
      return 2;
    }
  }
  if (optind < argc && KB_STREQ(argv[optind], "create")) {
    if (argc - optind < 2) {
      offerings_usage(stderr);
      return 2;
    }
    return ctl_offerings_create(argv[optind + 1], argc - optind - 2, argv + optind + 2);
  }
  if (optind < argc && KB_STREQ(argv[optind], "delete")) {
    if (argc - optind != 2) {
      offerings_usage(stderr);
      return 2;
    }
    return ctl_offerings_delete(argv[optind + 1]);
  }
  if (optind < argc)
    name = argv[optind++];
  if (optind < argc) {
    kb_err("offerings: too many arguments");
    return 2;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  if (name) {
    o = kb_config_offering(cfg, name);
    if (!o) {
      kb_err("offerings: no offering \"%s\"", name);
      kb_config_free(cfg);
      return 1;
    }
    if (json)
      kb_json_print(json_offering(o));
    else
      show_offering(o);
  } else if (json) {
    json_object *arr = json_object_new_array();
    for (unsigned i = 0; (o = kb_config_offering_at(cfg, i)); i++)
      json_object_array_add(arr, json_offering(o));
    kb_json_print(arr);
  } else {
    printf("%-20s %-8s %-8s %-9s %-12s %s\n", "NAME", "ZONE", "COMPRESS", "VALIDATE",
           "QUICKRESTORE", "DESCRIPTION");
    for (unsigned i = 0; (o = kb_config_offering_at(cfg, i)); i++)
      printf("%-20s %-8s %-8s %-9s %-12s %s\n", o->name, o->zone ? o->zone : "-",
             o->compress ? o->compression_library : "no", o->validate ? "yes" : "no",
             o->allow_quick_restore ? "yes" : "no", o->description ? o->description : "");
  }
  kb_config_free(cfg);
  return 0;
}
