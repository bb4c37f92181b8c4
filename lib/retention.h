/* Retention policies: which backups of a VM a keep-last / grandfather-
 * father-son policy keeps. Pure computation on a list of backups; the
 * caller reads the catalog and removes what is not kept. */
#ifndef KBOSS_RETENTION_H
#define KBOSS_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kb_retention {
  /* Counts; 0: that rule keeps nothing. All 0: no policy, all kept. */
  unsigned keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly;
};

/* Why a backup is kept (bits). */
enum {
  KB_KEEP_LAST = 1 << 0,
  KB_KEEP_HOURLY = 1 << 1,
  KB_KEEP_DAILY = 1 << 2,
  KB_KEEP_WEEKLY = 1 << 3,
  KB_KEEP_MONTHLY = 1 << 4,
  KB_KEEP_YEARLY = 1 << 5,
  KB_KEEP_NO_POLICY = 1 << 6,
  KB_KEEP_IN_USE = 1 << 7,       /* in a quick restore's lineage, or locked */
  KB_KEEP_DEPENDENCY = 1 << 8,   /* a kept backup depends on it */
  KB_KEEP_NOT_READY = 1 << 9,    /* Running or unreadable: never touched */
};

struct kb_retention_item {
  int64_t time;       /* when the backup was taken (UTC seconds) */
  size_t policy;      /* kb_retention_apply_set: which of the policies ranks it */
  ssize_t parent;     /* index of the backup it depends on, -1 none */
  bool ready;         /* Ready (rules count it); others are not counted */
  bool in_use;        /* must not be touched */
  bool eligible;      /* Ready or Invalid: may be removed; false: kept as NOT_READY */
  /* out */
  unsigned keep;      /* KB_KEEP_* bits; 0: to be removed */
  ssize_t needed_by;  /* for DEPENDENCY: a kept backup that depends on it */
};

/* Fill ITEMS[i].keep for the N backups of one VM under P: the rules pick,
 * newest first, the newest Ready backup of each of the last N hours,
 * days, ISO weeks, months and years (UTC) that have one, and the N newest
 * (keep_last); then everything a kept backup depends on, and every backup
 * in use and its dependencies, is kept too. */
void kb_retention_apply(const struct kb_retention *p, struct kb_retention_item *items, size_t n);
/* The same with several policies: ITEMS[i].policy names the one of the
 * NPOL policies whose rules rank it, among the backups of that policy only
 * (a schedule's own keep values rank that schedule's backups). An empty
 * policy, or an index out of range, keeps its backups (NO_POLICY). The
 * dependencies and the backups in use are then kept across all of them:
 * chains mix the backups of several schedules. */
void kb_retention_apply_set(const struct kb_retention *pols, size_t npol, struct kb_retention_item *items,
                            size_t n);
/* A line for KEEP ("daily,dependency"); static storage per call site is
 * the caller's BUF. */
const char *kb_retention_reasons(unsigned keep, char *buf, size_t len);
bool kb_retention_empty(const struct kb_retention *p);

/* The keep_* fields in order (last, hourly, daily, weekly, monthly,
 * yearly), as pointers into P. */
void kb_retention_fields(struct kb_retention *p, unsigned *ret[6]);
/* Their names without "keep_" ("last", ..., "yearly"). */
extern const char *const kb_retention_field_names[6];

/* getopt_long entries for --keep-last ... --keep-yearly (values BASE to
 * BASE + 5, in kb_retention_field_names order; the caller includes
 * <getopt.h>), and their argument: a count from 0 to KB_RETENTION_MAX.
 * kb_retention_parse_count returns 0 or -EINVAL. */
#define KB_RETENTION_MAX 100000
#define KB_RETENTION_LONG_OPTIONS(base)                                                               \
  { "keep-last", required_argument, NULL, (base) }, { "keep-hourly", required_argument, NULL, (base) + 1 }, \
  { "keep-daily", required_argument, NULL, (base) + 2 }, { "keep-weekly", required_argument, NULL, (base) + 3 }, \
  { "keep-monthly", required_argument, NULL, (base) + 4 }, { "keep-yearly", required_argument, NULL, (base) + 5 }
int kb_retention_parse_count(const char *s, unsigned *ret);

/* A schedule's name (kbossctl schedule --name, kboss-backup --schedule):
 * 1-32 of A-Z a-z 0-9 _ -, starting with a letter or digit. It becomes
 * part of unit names and is written into backup records. */
#define KB_SCHEDULE_NAME_MAX 32
bool kb_schedule_name_ok(const char *name);

#endif
