/* The table of every kboss setting: key, type, scope, default and range.
 * Keys, defaults and scopes are the spec's; where the spec gives no scope
 * the choice is documented in docs/configuration.md. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kbconfig.h"
#include "util.h"

#define ANY -INFINITY, INFINITY
/* Every integer setting has a finite range, so that what programs compute
 * from one (seconds * 1000, hours * 3600, MB/s * 2^20) fits its type. The
 * one real setting needs no upper bound: a double does not overflow into
 * undefined behaviour, and infinity and NaN are refused. (A huge multiple
 * of free space is how tests make a store too small.)
 * Concurrency limits: below 1 means no limit; at most 1024 slots. */
#define SLOTS -1, 1024

const struct kb_setting_def kb_setting_defs[] = {
  /* The framework. */
  { "backup.framework.enabled", KB_TYPE_BOOL, KB_SCOPE_ZONE, "false", ANY,
    "Whether the backup framework is enabled; kboss programs refuse to work when false." },
  { "backup.framework.provider.plugin", KB_TYPE_STRING, KB_SCOPE_ZONE, "dummy", ANY,
    "Backup provider; kboss programs require \"kboss\"." },
  { "backup.chain.size", KB_TYPE_INT, KB_SCOPE_ZONE, "8", 1, 1000,
    "Backups in an incremental chain (the full one included); an offering's backup_chain_size overrides it." },

  /* Compression. */
  { "backup.compression.task.enabled", KB_TYPE_BOOL, KB_SCOPE_ZONE, "true", ANY,
    "Whether compression jobs are scheduled and run." },
  { "backup.compression.max.concurrent.operations.per.host", KB_TYPE_INT, KB_SCOPE_CLUSTER, "5", SLOTS,
    "Compression jobs running at once on one host; below 1 means no limit." },
  { "backup.compression.max.concurrent.operations", KB_TYPE_INT, KB_SCOPE_ZONE, "10", SLOTS,
    "Compression jobs running at once in the zone; below 1 means no limit." },
  { "backup.compression.max.job.retries", KB_TYPE_INT, KB_SCOPE_ZONE, "2", 0, 100,
    "Attempts at a compression job before it is given up." },
  { "backup.compression.retry.interval", KB_TYPE_INT, KB_SCOPE_ZONE, "60", 0, 10080,
    "Minutes between attempts at a compression job." },
  { "backup.compression.timeout", KB_TYPE_INT, KB_SCOPE_ZONE, "28800", 1, 604800,
    "Seconds a compression job may run." },
  { "backup.compression.minimum.free.storage", KB_TYPE_REAL, KB_SCOPE_ZONE, "1", 0, INFINITY,
    "Free space needed on the store to compress, as a multiple of the backup's size." },
  { "backup.compression.coroutines", KB_TYPE_INT, KB_SCOPE_CLUSTER, "1", 1, 64,
    "Compression threads per job." },
  { "backup.compression.rate.limit", KB_TYPE_INT, KB_SCOPE_CLUSTER, "0", -1, 1048576,
    "Compression rate limit in MB/s; below 1 means no limit." },
  { "backup.compression.cluster.size", KB_TYPE_INT, KB_SCOPE_ZONE, "1024", 64, 2048,
    "Cluster size in KiB of a compressed full backup (a power of two; incrementals keep theirs)." },

  /* Validation. */
  { "backup.validation.task.enabled", KB_TYPE_BOOL, KB_SCOPE_ACCOUNT, "true", ANY,
    "Whether validation jobs are scheduled and run." },
  { "backup.validation.interval", KB_TYPE_INT, KB_SCOPE_ACCOUNT, "24", 1, 8760,
    "Hours between two hash checks of the same validated backup." },
  { "backup.validation.max.concurrent.operations", KB_TYPE_INT, KB_SCOPE_ZONE, "10", SLOTS,
    "Validation jobs running at once in the zone; below 1 means no limit." },
  { "backup.validation.max.concurrent.operations.per.host", KB_TYPE_INT, KB_SCOPE_CLUSTER, "1", SLOTS,
    "Validation jobs running at once on one host; below 1 means no limit." },
  { "backup.validation.boot.default.timeout", KB_TYPE_INT, KB_SCOPE_ACCOUNT, "240", 1, 86400,
    "Seconds the wait_for_boot step waits; the VM setting backupValidationBootTimeout overrides it." },
  { "backup.validation.script.default.timeout", KB_TYPE_INT, KB_SCOPE_ACCOUNT, "60", 1, 86400,
    "Seconds the execute_command step waits; the VM setting backupValidationCommandTimeout overrides it." },
  { "backup.validation.screenshot.default.wait", KB_TYPE_INT, KB_SCOPE_ACCOUNT, "60", 0, 3600,
    "Seconds before the screenshot step; the VM setting backupValidationScreenshotWait overrides it." },
  { "backup.validation.end.chain.on.fail", KB_TYPE_BOOL, KB_SCOPE_ACCOUNT, "true", ANY,
    "End the backup's chain when its validation fails." },
  { "enforce.resource.limit.on.backup.validation.vm", KB_TYPE_BOOL, KB_SCOPE_ACCOUNT, "false", ANY,
    "Count validation VMs against account.max.vcpus and account.max.memory." },

  /* Account resource limits (for enforce.resource.limit.on.backup.validation.vm). */
  { "account.max.vcpus", KB_TYPE_INT, KB_SCOPE_ACCOUNT, "-1", -1, 1048576,
    "vCPUs an account's running VMs may use; -1 means unlimited." },
  { "account.max.memory", KB_TYPE_INT, KB_SCOPE_ACCOUNT, "-1", -1, 1073741824,
    "Memory in MiB an account's running VMs may use; -1 means unlimited." },

  /* Host and site. */
  { "zone.name", KB_TYPE_STRING, KB_SCOPE_ZONE, "default", ANY,
    "This host's zone; offerings whose zone is set apply only to the zone of that name." },
  { "user.vm.readonly.details", KB_TYPE_LIST, KB_SCOPE_GLOBAL,
    "backupValidationCommandTimeout,backupValidationScreenshotWait,backupValidationBootTimeout", ANY,
    "VM settings that non-admin users may not change (comma-separated)." },
  { "secondary.path", KB_TYPE_PATH, KB_SCOPE_GLOBAL, "/mnt/secondary", ANY,
    "Where secondary storage is mounted; the store \"default\" when no [store:NAME] exists." },
  { "storage.timeout", KB_TYPE_INT, KB_SCOPE_GLOBAL, "60", 5, 3600,
    "Seconds any kboss program waits on secondary storage before it gives up with "
    "\"secondary storage not responding\" (the VM is left as it was)." },
  { "scratch.path", KB_TYPE_PATH, KB_SCOPE_GLOBAL, "/var/lib/kboss/scratch", ANY,
    "Local folder for temporary files (validation overlays, partial downloads)." },
  { "libvirt.uri", KB_TYPE_STRING, KB_SCOPE_GLOBAL, "qemu:///system", ANY,
    "libvirt connection URI." },

  /* Operator visibility. */
  { "notify.command", KB_TYPE_STRING, KB_SCOPE_GLOBAL, NULL, ANY,
    "Program (absolute path, then arguments split on blanks, no shell) run on every failure event "
    "with the event's fields in its environment; unset: none." },
  { "notify.timeout", KB_TYPE_INT, KB_SCOPE_GLOBAL, "10", 1, 300,
    "Seconds notify.command may run before it is killed." },
  { "metrics.path", KB_TYPE_STRING, KB_SCOPE_GLOBAL, "/var/lib/prometheus/node-exporter/kboss.prom", ANY,
    "Prometheus text file the programs rewrite at the end of each job (node-exporter's textfile "
    "collector); \"none\": no file." },

  /* VM settings: only in vms.d/VM.conf, section [vm]. */
  { "backupValidationCommand", KB_TYPE_STRING, KB_SCOPE_VM, NULL, ANY,
    "Command run in the guest by the execute_command step; the step is skipped without it." },
  { "backupValidationCommandArguments", KB_TYPE_STRING, KB_SCOPE_VM, NULL, ANY,
    "Arguments of backupValidationCommand (split on blanks)." },
  { "backupValidationCommandExpectedResult", KB_TYPE_BASE64, KB_SCOPE_VM, NULL, ANY,
    "Expected output of the command, base64; without it the exit code must be 0." },
  { "backupValidationCommandTimeout", KB_TYPE_INT, KB_SCOPE_VM, NULL, 1, 86400,
    "Overrides backup.validation.script.default.timeout for this VM." },
  { "backupValidationScreenshotWait", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 3600,
    "Overrides backup.validation.screenshot.default.wait for this VM." },
  { "backupValidationBootTimeout", KB_TYPE_INT, KB_SCOPE_VM, NULL, 1, 86400,
    "Overrides backup.validation.boot.default.timeout for this VM." },
  { "backupRetentionKeepLast", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 100000,
    "Overrides the offering's keep_last for this VM (kbossctl prune)." },
  { "backupRetentionKeepHourly", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 100000,
    "Overrides the offering's keep_hourly for this VM." },
  { "backupRetentionKeepDaily", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 100000,
    "Overrides the offering's keep_daily for this VM." },
  { "backupRetentionKeepWeekly", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 100000,
    "Overrides the offering's keep_weekly for this VM." },
  { "backupRetentionKeepMonthly", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 100000,
    "Overrides the offering's keep_monthly for this VM." },
  { "backupRetentionKeepYearly", KB_TYPE_INT, KB_SCOPE_VM, NULL, 0, 100000,
    "Overrides the offering's keep_yearly for this VM." },

  { NULL, 0, 0, NULL, 0, 0, NULL },
};

/* The account-scope defaults a VM setting overrides. */
static const struct {
  const char *key;
  const char *vm_key;
} vm_overrides[] = {
  { "backup.validation.boot.default.timeout", "backupValidationBootTimeout" },
  { "backup.validation.script.default.timeout", "backupValidationCommandTimeout" },
  { "backup.validation.screenshot.default.wait", "backupValidationScreenshotWait" },
};

const struct kb_setting_def *kb_setting_find(const char *key)
{
  const struct kb_setting_def *d;

  if (!key)
    return NULL;
  for (d = kb_setting_defs; d->key; d++)
    if (strcmp(d->key, key) == 0)
      return d;
  return NULL;
}

const char *kb_setting_vm_override(const char *key)
{
  size_t i;

  for (i = 0; i < sizeof vm_overrides / sizeof vm_overrides[0]; i++)
    if (strcmp(vm_overrides[i].key, key) == 0)
      return vm_overrides[i].vm_key;
  return NULL;
}

const char *kb_scope_name(enum kb_scope scope)
{
  switch (scope) {
  case KB_SCOPE_GLOBAL: return "global";
  case KB_SCOPE_ZONE: return "zone";
  case KB_SCOPE_CLUSTER: return "cluster";
  case KB_SCOPE_ACCOUNT: return "account";
  case KB_SCOPE_VM: return "vm";
  }
  return "?";
}

const char *kb_type_name(enum kb_type type)
{
  switch (type) {
  case KB_TYPE_BOOL: return "bool";
  case KB_TYPE_INT: return "int";
  case KB_TYPE_REAL: return "real";
  case KB_TYPE_STRING: return "string";
  case KB_TYPE_PATH: return "path";
  case KB_TYPE_BASE64: return "base64";
  case KB_TYPE_LIST: return "list";
  }
  return "?";
}

bool kb_base64_ok(const char *s)
{
  size_t n, pad = 0;

  if (!s)
    return false;
  n = strlen(s);
  if (n % 4 != 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = s[i];
    if (c == '=') {
      /* Padding only at the very end, at most two. */
      if (i < n - 2)
        return false;
      pad++;
    } else if (pad || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '+' || c == '/'))
      return false;
  }
  return true;
}

static void describe_range(const struct kb_setting_def *d, const char *what, char *why,
                           size_t whylen)
{
  if (d->min > d->max || (isinf(d->min) && isinf(d->max)))
    snprintf(why, whylen, "must be %s", what);
  else if (isinf(d->max))
    snprintf(why, whylen, "must be %s of at least %g", what, d->min);
  else if (isinf(d->min))
    snprintf(why, whylen, "must be %s of at most %g", what, d->max);
  else if (d->type == KB_TYPE_INT)   /* in full: "1073741824", not "1.07374e+09" */
    snprintf(why, whylen, "must be %s from %.0f to %.0f", what, d->min, d->max);
  else
    snprintf(why, whylen, "must be %s from %g to %g", what, d->min, d->max);
}

static bool in_range(const struct kb_setting_def *d, double v)
{
  if (d->min > d->max)
    return true;
  return v >= d->min && v <= d->max;
}

int kb_setting_check(const struct kb_setting_def *d, const char *value, char *why,
                     size_t whylen)
{
  long long ll;
  double dv;
  bool b;

  if (!value) {
    snprintf(why, whylen, "has no value");
    return -EINVAL;
  }
  switch (d->type) {
  case KB_TYPE_BOOL:
    if (kb_parse_bool(value, &b) < 0) {
      snprintf(why, whylen, "must be true or false, not \"%s\"", value);
      return -EINVAL;
    }
    return 0;
  case KB_TYPE_INT:
    if (kb_parse_ll(value, &ll) < 0 || !in_range(d, (double) ll)) {
      describe_range(d, "an integer", why, whylen);
      return -EINVAL;
    }
    return 0;
  case KB_TYPE_REAL:
    if (kb_parse_double(value, &dv) < 0 || isinf(dv) || !in_range(d, dv)) {
      describe_range(d, "a number", why, whylen);
      return -EINVAL;
    }
    return 0;
  case KB_TYPE_STRING:
    if (!*value) {
      snprintf(why, whylen, "must not be empty");
      return -EINVAL;
    }
    return 0;
  case KB_TYPE_PATH:
    if (value[0] != '/') {
      snprintf(why, whylen, "must be an absolute path");
      return -EINVAL;
    }
    return 0;
  case KB_TYPE_BASE64:
    if (!kb_base64_ok(value)) {
      snprintf(why, whylen, "must be base64 (A-Z a-z 0-9 + /, padded with =)");
      return -EINVAL;
    }
    return 0;
  case KB_TYPE_LIST: {
    /* Words separated by commas (blanks around them allowed), none empty;
     * an empty value is the empty list. */
    const char *p = value;
    if (!*value)
      return 0;
    for (;;) {
      size_t len = strcspn(p, ",");
      size_t a = 0, z = len;
      while (a < z && isspace((unsigned char) p[a]))
        a++;
      while (z > a && isspace((unsigned char) p[z - 1]))
        z--;
      if (a == z) {
        snprintf(why, whylen, "must be a comma-separated list without empty items");
        return -EINVAL;
      }
      if (!p[len])
        break;
      p += len + 1;
    }
    return 0;
  }
  }
  snprintf(why, whylen, "has an unknown type");
  return -EINVAL;
}
