/* kboss configuration: INI files that mirror a cloud's scopes.
 *
 *   kboss.conf          [global] [zone] [cluster] [account:NAME] [store:NAME]
 *   offerings.d/N.conf  [offering] name=, description=, zone=, ...
 *   vms.d/VM.conf       [vm] account=, offering=, backupValidation*=...
 *
 * offerings.d and vms.d are looked for beside kboss.conf. A lookup for a VM
 * resolves vm -> account -> cluster -> zone -> global -> built-in default,
 * only through the levels the key's scope allows (a key of scope S may be
 * set at level S and at every less specific level). */
#ifndef KBOSS_KBCONFIG_H
#define KBOSS_KBCONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kb_scope {
  KB_SCOPE_GLOBAL = 0,
  KB_SCOPE_ZONE,
  KB_SCOPE_CLUSTER,
  KB_SCOPE_ACCOUNT,
  KB_SCOPE_VM,          /* VM settings, vms.d only */
};

enum kb_type {
  KB_TYPE_BOOL,
  KB_TYPE_INT,
  KB_TYPE_REAL,
  KB_TYPE_STRING,
  KB_TYPE_PATH,         /* absolute path */
  KB_TYPE_BASE64,
  KB_TYPE_LIST,         /* comma-separated list of non-empty words */
};

struct kb_setting_def {
  const char *key;
  enum kb_type type;
  enum kb_scope scope;
  const char *def;      /* built-in default as text; NULL = unset */
  double min, max;      /* for INT and REAL; min > max means unbounded */
  const char *help;
};

/* The table of every setting (NULL-key terminated), in settings.c. */
extern const struct kb_setting_def kb_setting_defs[];
const struct kb_setting_def *kb_setting_find(const char *key);
const char *kb_scope_name(enum kb_scope scope);
const char *kb_type_name(enum kb_type type);

/* The VM setting that overrides KEY for one VM (backupValidationBootTimeout
 * for backup.validation.boot.default.timeout, ...), or NULL. */
const char *kb_setting_vm_override(const char *key);

/* Check VALUE against DEF's type and range. Returns 0, or -EINVAL with a
 * short reason ("must be an integer from 1 to 64") in WHY. */
int kb_setting_check(const struct kb_setting_def *def, const char *value,
                     char *why, size_t whylen);

/* Whether S is well-formed base64 (RFC 4648, padded, no blanks). */
bool kb_base64_ok(const char *s);

struct kb_offering {
  char *name;
  char *description;
  char *zone;
  bool allow_user_driven_backups;
  bool public_;
  char *domain;
  bool compress;
  char *compression_library;   /* "zstd" or "zlib" */
  bool validate;
  char **validation_steps;     /* NULL-terminated: wait_for_boot execute_command screenshot fs_check */
  bool allow_extract_file;
  bool allow_quick_restore;
  long long backup_chain_size; /* 0 = not set, use backup.chain.size */
  /* Retention (kbossctl prune): keep_last, keep_hourly, keep_daily,
   * keep_weekly, keep_monthly, keep_yearly; 0 = that rule keeps nothing,
   * all 0 = no policy (nothing pruned). */
  long long keep[6];
  char *file;                  /* where it was read from */
};

/* The offering fields of kb_offering.keep[], in order. */
extern const char *const kb_offering_keep_fields[6];

/* The validation step names (NULL-terminated), in the order documented,
 * and the steps run when an offering lists none (validation_steps unset
 * and validate = true, or a backup of no known offering). */
extern const char *const kb_validation_steps[];
extern const char *const kb_validation_default_steps[];
/* The steps to run for a backup of offering OFF (NULL: unknown). */
const char *const *kb_offering_steps(const struct kb_offering *off);

struct kb_store {
  char *name;
  char *path;
  bool backups_only;
};

struct kb_config;

/* Where a value came from. */
struct kb_value {
  const char *value;     /* text; never NULL on success */
  const char *file;      /* NULL for the built-in default */
  int line;              /* 0 for the built-in default */
  const char *section;   /* "global", "zone", "cluster", "account:X", "vm:X", or "default" */
  const char *key;       /* the key that was set: the one asked for, or the VM
                          * setting that overrides it (backupValidationBootTimeout) */
};

/* Load PATH (NULL: $KBOSS_CONF, else SYSCONFDIR/kboss/kboss.conf) with its
 * offerings.d and vms.d. A bad configuration returns -EINVAL and sets
 * *ret_errors (caller frees) to every problem found, newline-separated, each
 * "FILE:LINE: KEY: what is wrong" ("FILE: ..." for file-level problems such
 * as a bad file name). An unreadable kboss.conf returns its -errno with
 * "FILE: cannot read: ..." in *ret_errors; -ENOMEM has no message.
 *
 * Note: the packaged inih is configured through globals (ini_use_stack,
 * ini_max_line, ini_allow_multiline...); loading sets them, so do not load
 * from two threads at once. */
int kb_config_load(const char *path, struct kb_config **ret, char **ret_errors);
/* SYSCONFDIR/kboss/kboss.conf: what kb_config_load reads without PATH or
 * $KBOSS_CONF (for --help texts). */
const char *kb_config_default_path(void);
void kb_config_free(struct kb_config *cfg);
const char *kb_config_path(const struct kb_config *cfg);
const char *kb_config_dir(const struct kb_config *cfg);

/* The offering a VM is assigned to (NULL if none or unknown). */
const struct kb_offering *kb_config_vm_offering_def(const struct kb_config *cfg, const char *vm);

/* backup.chain.size for VM: its offering's backup_chain_size when set,
 * else the resolved setting. */
long long kb_config_chain_size(const struct kb_config *cfg, const char *vm);

/* Resolve KEY for VM (VM may be NULL: no vm/account level). Returns 0 or
 * -ENOENT for an unknown key / a key with no value anywhere. The strings in
 * *RET belong to CFG and stay valid until kb_config_vm_set() changes that VM
 * or CFG is freed. */
int kb_config_lookup(const struct kb_config *cfg, const char *vm, const char *key,
                     struct kb_value *ret);

/* Typed lookups of keys that have defaults; an unknown key aborts (a bug). */
long long kb_config_int(const struct kb_config *cfg, const char *vm, const char *key);
double kb_config_real(const struct kb_config *cfg, const char *vm, const char *key);
bool kb_config_bool(const struct kb_config *cfg, const char *vm, const char *key);
const char *kb_config_str(const struct kb_config *cfg, const char *vm, const char *key);

/* Offerings and stores. */
const struct kb_offering *kb_config_offering(const struct kb_config *cfg, const char *name);
const struct kb_offering *kb_config_offering_at(const struct kb_config *cfg, unsigned n);
/* Where offering NAME's file is or would be: offerings.d/NAME.conf beside
 * kboss.conf (NULL for a bad name). */
char *kb_config_offering_path(const struct kb_config *cfg, const char *name);
const struct kb_store *kb_config_store(const struct kb_config *cfg, const char *name);
const struct kb_store *kb_config_store_at(const struct kb_config *cfg, unsigned n);

/* Per-VM file vms.d/VM.conf: the assigned offering and account (NULL if
 * none) and a VM setting (backupValidationCommand, ...; NULL if unset). */
const char *kb_config_vm_offering(const struct kb_config *cfg, const char *vm);
const char *kb_config_vm_account(const struct kb_config *cfg, const char *vm);
const char *kb_config_vm_setting(const struct kb_config *cfg, const char *vm, const char *key);

/* Names of VMs that have a vms.d file (NULL-terminated, owned by cfg). */
const char *const *kb_config_vm_names(const struct kb_config *cfg);

/* Write or change a VM setting in vms.d/VM.conf (creating it 0600, vms.d
 * 0700), keeping the file's other lines and comments; KEY may also be
 * "account" or "offering" (which must exist). The value is checked first;
 * the file is written to a temporary name and renamed (local /etc, not NFS).
 * AS_USER true: a non-admin caller, refused (-EPERM) for the keys listed
 * in user.vm.readonly.details and for account/offering. VALUE NULL removes
 * the key. On error *RET_ERROR (caller frees) says why: "KEY: ...". CFG is
 * updated to match the file. */
int kb_config_vm_set(struct kb_config *cfg, const char *vm, const char *key,
                     const char *value, bool as_user, char **ret_error);

#endif
