/* What the parts of the configuration module share (not for programs):
 *   config-file.c      reading the INI files: text checks, line reader, inih handler, loading
 *   config-offering.c  offerings.d: fields, validation step names, lookups
 *   config-lookup.c    resolving a setting through the scopes; stores; VM settings
 *   config-vms.c       editing vms.d/VM.conf
 * settings.c holds the table of settings (type, scope, default, range). */
#ifndef KBOSS_CONFIG_INTERNAL_H
#define KBOSS_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "kbconfig.h"

/* Longest line accepted (base64 expected results can be long). */
#define KB_CONFIG_MAX_LINE 65536

struct kbc_entry {
  char *section;    /* "global", "zone", "cluster", "account:X", "store:X", "offering", "vm" */
  char *key;
  char *value;
  int line;
};

struct kbc_entries {
  struct kbc_entry *v;
  size_t n, cap;
};

struct kbc_vm {
  char *name;
  char *file;
  char *section;    /* "vm:NAME", for origins */
  struct kbc_entries e;
};

struct kb_config {
  char *path;
  char *dir;
  struct kbc_entries main;
  struct kb_offering *offerings;
  size_t n_offerings;
  struct kb_store *stores;
  size_t n_stores;
  int *store_lines;       /* header line of each [store:X] */
  struct kbc_vm *vms;
  size_t n_vms;
  char **vm_names;        /* NULL-terminated */
};

enum kbc_file_kind { KBC_FILE_MAIN, KBC_FILE_OFFERING, KBC_FILE_VM };

/* The state of parsing one file; errors of every file go to ERRS. */
struct kbc_parse {
  struct kb_config *cfg;
  enum kbc_file_kind kind;
  const char *file;         /* as shown in messages */
  const char *stem;         /* file name without .conf (offerings, VMs) */
  const char *text;
  size_t len, pos;
  int line;
  bool at_line_start;
  bool section_ok;          /* the current section is known */
  int section_line;
  struct kbc_entries *out;
  struct kb_offering *off;  /* KBC_FILE_OFFERING */
  FILE *errs;               /* error messages, one a line */
  size_t n_errs;
  int enomem;
};

/* "FILE:LINE: KEY: what" (LINE 0: "FILE: ..."; KEY NULL: no key part). */
void kbc_error(struct kbc_parse *p, int line, const char *key, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));

int kbc_entries_add(struct kbc_entries *es, const char *section, const char *key,
                    const char *value, int line);
void kbc_entries_free(struct kbc_entries *es);
const struct kbc_entry *kbc_entries_find(const struct kbc_entries *es, const char *section,
                                         const char *key);

/* Replace *DST by a copy of VALUE. */
int kbc_set_str(char **dst, const char *value);
/* Parse a bool field into *OUT, or report it. */
bool kbc_bool_field(struct kbc_parse *p, const char *key, const char *value, bool *out);

/* Parse TEXT (LEN bytes) as P->kind. Text that is not clean (a NUL, a
 * control character, bytes that are not UTF-8) is reported line by line and
 * not parsed. 0, or -ENOMEM. */
int kbc_parse_text(struct kbc_parse *p, const char *text, size_t len);
/* Read PATH whole (bounded); a failure is reported, the -errno returned. */
int kbc_read_text(struct kbc_parse *p, const char *path, char **ret, size_t *ret_len);

/* Offerings (config-offering.c). */
void kbc_offering_field(struct kbc_parse *p, const char *key, const char *value);
void kbc_offering_clear(struct kb_offering *o);
int kbc_load_offering(struct kbc_parse *p, const char *path, const char *stem);

/* VM files (config-file.c). */
int kbc_parse_vm_text(struct kbc_parse *p, const char *path, const char *name, const char *text,
                      size_t len, struct kbc_vm *ret);
void kbc_vm_clear(struct kbc_vm *vc);
struct kbc_vm *kbc_find_vm(const struct kb_config *cfg, const char *vm);
int kbc_build_vm_names(struct kb_config *cfg);

#endif
