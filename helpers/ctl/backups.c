/* kbossctl backups: the backups of the catalog, one line each. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "jsonout.h"
#include "log.h"
#include "record.h"
#include "util.h"

static void backups_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s backups [--vm VM] [--json]\n"
          "\n"
          "List the completed backups (Ready or Invalid) in the catalog, oldest first:\n"
          "id, VM, chain, parent, type, isolated, state, creation time, size, size of\n"
          "each disk's file, and whether it is compressed and validated.\n"
          "\n"
          "  --vm VM        only the backups of VM (name or UUID)\n"
          "  --json         print JSON: every field of each backup's record\n"
          "  --config FILE  configuration file\n", kb_progname);
}

static void disk_sizes(const struct kb_doc *doc, char *buf, size_t len)
{
  char **disks = NULL;
  size_t used = 0;

  buf[0] = '\0';
  if (kb_backup_disks(doc, &disks) < 0)
    return;
  for (size_t i = 0; disks[i]; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", disks[i]);
    char sz[32];
    int n;
    kb_format_size((uint64_t) kb_doc_get_ll(doc, sec, "size", 0), sz, sizeof sz);
    n = snprintf(buf + used, len - used, "%s%s=%s", used ? "," : "", disks[i], sz);
    if (n < 0 || (size_t) n >= len - used)
      break;
    used += (size_t) n;
  }
  kb_strv_free(disks);
  /* "vda=1.5GiB": no blanks inside the column */
  {
    char *w = buf;
    for (const char *p = buf; *p; p++)
      if (*p != ' ')
        *w++ = *p;
    *w = '\0';
  }
}

static const char *or_dash(const char *s)
{
  return s && *s ? s : "-";
}

static const char *yes_no(const struct kb_doc *doc, const char *key)
{
  return kb_doc_get_bool(doc, "backup", key, false) ? "yes" : "no";
}

int ctl_backups(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "json", no_argument, NULL, 'j' },
    { "vm", required_argument, NULL, 'm' },
    { NULL, 0, NULL, 0 },
  };
  const char *vm = NULL;
  CLEANUP_FREE char *want_uuid = NULL;
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  json_object *arr = NULL;
  char **uuids = NULL;
  bool json = false;
  int c, r, rc = 0;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: backups_usage(stdout); return 0;
    case 'j': json = true; break;
    case 'm': vm = optarg; break;
    default: backups_usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    kb_err("backups: unexpected argument \"%s\"", argv[optind]);
    return 2;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  cat = ctl_open_catalog(cfg);
  if (!cat) {
    kb_config_free(cfg);
    return 1;
  }
  if (vm) {
    r = ctl_find_vm(cat, vm, &want_uuid);
    if (r < 0) {
      kb_err("backups: VM %s: %s", vm, r == -ENOENT ? "not in the catalog (never backed up)" : strerror(-r));
      rc = 1;
      goto out;
    }
  }
  r = kb_catalog_list_vms(cat, &uuids);
  if (r < 0 && r != -ENOENT) {
    kb_err("backups: cannot list the catalog: %s", strerror(-r));
    rc = 1;
    goto out;
  }
  if (json)
    arr = json_object_new_array();
  else
    kb_print_escaped("%-23s %-16s %-23s %-23s %-11s %-8s %-7s %-20s %-10s %-28s %-10s %s\n", "ID", "VM", "CHAIN",
           "PARENT", "TYPE", "ISOLATED", "STATE", "CREATED", "SIZE", "DISKS", "COMPRESSED", "VALIDATED");
  for (size_t i = 0; uuids && uuids[i]; i++) {
    char **chains = NULL;
    if (want_uuid && !KB_STREQ(want_uuid, uuids[i]))
      continue;
    if (kb_catalog_list_chains(cat, uuids[i], &chains) < 0)
      continue;
    for (size_t k = 0; chains[k]; k++) {
      char **ids = NULL;
      if (kb_catalog_list_backups(cat, uuids[i], chains[k], &ids) < 0)
        continue;
      for (size_t b = 0; ids[b]; b++) {
        struct kb_doc *doc = NULL;
        const char *st;
        if (kb_backup_load(cat, uuids[i], chains[k], ids[b], &doc) < 0)
          continue;
        st = kb_doc_get(doc, "backup", "state");
        {
          const char *first = NULL;
          unsigned bad = kb_doc_invalid(doc, &first);
          if (bad)
            kb_warn("backups: backup %s: %u value%s of its record do not fit their field and were ignored "
                    "(first: %s); was the export tampered with?", ids[b], bad, bad == 1 ? "" : "s", first);
        }
        if (st && (KB_STREQ(st, KB_BACKUP_READY) || KB_STREQ(st, KB_BACKUP_INVALID))) {
          if (json)
            json_object_array_add(arr, kb_doc_to_json(doc));
          else {
            char size[32], disks[256];
            kb_format_size((uint64_t) kb_doc_get_ll(doc, "backup", "size", 0), size, sizeof size);
            disk_sizes(doc, disks, sizeof disks);
            kb_print_escaped("%-23s %-16s %-23s %-23s %-11s %-8s %-7s %-20s %-10s %-28s %-10s %s\n", ids[b],
                   or_dash(kb_doc_get(doc, "backup", "vm_name")), chains[k],
                   or_dash(kb_doc_get(doc, "backup", "parent")), or_dash(kb_doc_get(doc, "backup", "type")),
                   yes_no(doc, "isolated"), st, or_dash(kb_doc_get(doc, "backup", "created")), size,
                   or_dash(disks), yes_no(doc, "compressed"), yes_no(doc, "validated"));
          }
        }
        kb_doc_free(doc);
      }
      kb_strv_free(ids);
    }
    kb_strv_free(chains);
  }
  if (json)
    kb_json_print(arr);
  if (kb_catalog_list_cut())
    kb_warn("backups: a catalog folder holds more than %d entries (junk on the export?); the listing is incomplete",
            KB_CATALOG_LIST_MAX);
out:
  kb_strv_free(uuids);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
