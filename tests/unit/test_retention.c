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
