/* Retention policies: a week of backups (four a day, each day a chain of a
 * full and three incrementals) pruned by keep-last and GFS rules keeps
 * exactly the documented set, plus everything a kept backup depends on
 * and every backup in use with its own dependencies. */
#include <config.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "retention.h"

#define N 28

/* Backups at 00, 06, 12, 18 UTC for seven days from START (a date). */
static void week(struct kb_retention_item *it, int64_t start)
{
  memset(it, 0, N * sizeof *it);
  for (int i = 0; i < N; i++) {
    it[i].time = start + (i / 4) * 86400 + (i % 4) * 6 * 3600;
    it[i].parent = i % 4 ? i - 1 : -1;
    it[i].ready = it[i].eligible = true;
  }
}

static int64_t day(int y, int m, int d)
{
  struct tm tm = { .tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d };
  return (int64_t) timegm(&tm);
}

static void kept_set(const struct kb_retention_item *it, char *buf, size_t len)
{
  size_t o = 0;
  buf[0] = '\0';
  for (int i = 0; i < N; i++)
    if (it[i].keep)
      o += (size_t) snprintf(buf + o, len - o, "%s%d", o ? " " : "", i);
}

Test(retention, last_and_daily_keep_their_chains)
{
  struct kb_retention_item it[N];
  struct kb_retention p = { .keep_last = 2, .keep_daily = 3, .keep_weekly = 1 };
  char got[256], why[128];

  week(it, day(2026, 11, 23));   /* a Monday: one ISO week */
  kb_retention_apply(&p, it, N);
  kept_set(it, got, sizeof got);
  cr_assert_str_eq(got, "16 17 18 19 20 21 22 23 24 25 26 27");
  cr_assert_str_eq(kb_retention_reasons(it[27].keep, why, sizeof why), "last,daily,weekly");
  cr_assert_str_eq(kb_retention_reasons(it[26].keep, why, sizeof why), "last,dependency");
  cr_assert_str_eq(kb_retention_reasons(it[23].keep, why, sizeof why), "daily");
  cr_assert_str_eq(kb_retention_reasons(it[20].keep, why, sizeof why), "dependency");
  cr_assert_eq(it[20].needed_by, 23);
  cr_assert_str_eq(kb_retention_reasons(it[15].keep, why, sizeof why), "prune");
}

Test(retention, weekly_uses_iso_weeks)
{
  struct kb_retention_item it[N];
  struct kb_retention p = { .keep_weekly = 2 };
  char got[256];

  week(it, day(2026, 11, 26));   /* Thursday to Wednesday: two ISO weeks */
  kb_retention_apply(&p, it, N);
  kept_set(it, got, sizeof got);
  /* newest of week 49 (Wed 2 Dec 18:00) and of week 48 (Sun 29 Nov 18:00) */
  cr_assert_str_eq(got, "12 13 14 15 24 25 26 27");
}

Test(retention, monthly_and_yearly)
{
  struct kb_retention_item it[N];
  struct kb_retention p = { .keep_monthly = 2, .keep_yearly = 3 };
  char got[256];

  week(it, day(2026, 12, 28));   /* 28 Dec 2026 to 3 Jan 2027 */
  kb_retention_apply(&p, it, N);
  kept_set(it, got, sizeof got);
  /* newest of January 2027 (27) and of December 2026 (31 Dec 18:00: 15) */
  cr_assert_str_eq(got, "12 13 14 15 24 25 26 27");
}

Test(retention, in_use_and_not_ready_are_kept_and_not_counted)
{
  struct kb_retention_item it[N];
  struct kb_retention p = { .keep_last = 1 };
  char got[256], why[128];

  week(it, day(2026, 11, 23));
  it[27].ready = it[27].eligible = false;   /* a backup still Running */
  it[5].in_use = true;                      /* a quick restore runs on it */
  kb_retention_apply(&p, it, N);
  kept_set(it, got, sizeof got);
  cr_assert_str_eq(got, "4 5 24 25 26 27");
  /* the Running backup is built on it too */
  cr_assert_str_eq(kb_retention_reasons(it[26].keep, why, sizeof why), "last,dependency");
  cr_assert_str_eq(kb_retention_reasons(it[27].keep, why, sizeof why), "not-ready");
  cr_assert_str_eq(kb_retention_reasons(it[5].keep, why, sizeof why), "in-use");
  cr_assert_str_eq(kb_retention_reasons(it[4].keep, why, sizeof why), "dependency");
}

Test(retention, no_policy_keeps_everything)
{
  struct kb_retention_item it[N];
  struct kb_retention p = { 0 };

  week(it, day(2026, 11, 23));
  kb_retention_apply(&p, it, N);
  for (int i = 0; i < N; i++)
    cr_assert(it[i].keep & KB_KEEP_NO_POLICY);
}

/* Two policies: the backups at 06:00 and 18:00 (a schedule with keep values
 * of its own) are ranked among themselves, those at 00:00 and 12:00 by the
 * VM's policy; dependencies cross them (one chain a day holds both). */
Test(retention, a_schedule_ranks_its_own_backups)
{
  struct kb_retention_item it[N];
  struct kb_retention pols[2] = { { .keep_last = 2 }, { .keep_last = 1, .keep_daily = 3 } };
  char got[256], why[128];

  week(it, day(2026, 11, 23));
  for (int i = 0; i < N; i++)
    it[i].policy = i % 2;   /* 06:00 and 18:00: the schedule's */
  kb_retention_apply_set(pols, 2, it, N);
  kept_set(it, got, sizeof got);
  cr_assert_str_eq(got, "16 17 18 19 20 21 22 23 24 25 26 27");
  /* the VM's keep_last = 2 counts only its own: 12:00 and 00:00 of the last day */
  cr_assert_str_eq(kb_retention_reasons(it[26].keep, why, sizeof why), "last,dependency");
  cr_assert_str_eq(kb_retention_reasons(it[24].keep, why, sizeof why), "last,dependency");
  /* the schedule's: its newest by keep_last, the 18:00 of three days by keep_daily */
  cr_assert_str_eq(kb_retention_reasons(it[27].keep, why, sizeof why), "last,daily");
  cr_assert_str_eq(kb_retention_reasons(it[23].keep, why, sizeof why), "daily");
  cr_assert_str_eq(kb_retention_reasons(it[19].keep, why, sizeof why), "daily");
  /* 06:00 of the last day: no rule of its schedule picks it, 26 and 27 need it */
  cr_assert_str_eq(kb_retention_reasons(it[25].keep, why, sizeof why), "dependency");
  cr_assert_eq(it[25].needed_by, 26);
  cr_assert_eq(it[15].keep, 0);
}

/* An empty policy (a schedule without keep values would not be one; an
 * index out of range is a caller's bug) keeps its backups. */
Test(retention, empty_or_unknown_policy_keeps)
{
  struct kb_retention_item it[N];
  struct kb_retention pols[2] = { { .keep_last = 1 }, { 0 } };
  char got[256];

  week(it, day(2026, 11, 23));
  for (int i = 0; i < N; i++)
    it[i].policy = i < 4 ? 1 : i < 8 ? 7 : 0;
  kb_retention_apply_set(pols, 2, it, N);
  kept_set(it, got, sizeof got);
  cr_assert_str_eq(got, "0 1 2 3 4 5 6 7 24 25 26 27");
  cr_assert(it[2].keep & KB_KEEP_NO_POLICY);
  cr_assert(it[6].keep & KB_KEEP_NO_POLICY);
  cr_assert(!(it[27].keep & KB_KEEP_NO_POLICY));
}

Test(retention, schedule_names)
{
  cr_assert(kb_schedule_name_ok("hourly"));
  cr_assert(kb_schedule_name_ok("default"));
  cr_assert(kb_schedule_name_ok("Daily_2-b"));
  cr_assert(kb_schedule_name_ok("0123456789abcdef0123456789abcdef"));
  cr_assert(!kb_schedule_name_ok("0123456789abcdef0123456789abcdef0"));
  cr_assert(!kb_schedule_name_ok(""));
  cr_assert(!kb_schedule_name_ok(NULL));
  cr_assert(!kb_schedule_name_ok("-x"));
  cr_assert(!kb_schedule_name_ok("_x"));
  cr_assert(!kb_schedule_name_ok("a:b"));
  cr_assert(!kb_schedule_name_ok("a.b"));
  cr_assert(!kb_schedule_name_ok("../x"));
  cr_assert(!kb_schedule_name_ok("a b"));
  cr_assert(!kb_schedule_name_ok("a\nb"));
  cr_assert(!kb_schedule_name_ok("a\\x2db"));
}
