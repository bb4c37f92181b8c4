#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "retention.h"
#include "util.h"

bool kb_retention_empty(const struct kb_retention *p)
{
  return !p->keep_last && !p->keep_hourly && !p->keep_daily && !p->keep_weekly && !p->keep_monthly &&
         !p->keep_yearly;
}

/* The period of rule R (0 hour, 1 day, 2 ISO week, 3 month, 4 year, UTC)
 * that T falls in, as a number. */
static int64_t bucket(int64_t t, int r)
{
  int64_t days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
  time_t tt = (time_t) t;
  struct tm tm;

  switch (r) {
  case 0: return t >= 0 ? t / 3600 : -((-t + 3599) / 3600);
  case 1: return days;
  case 2: {   /* 1970-01-01 was a Thursday: weeks start on Mondays */
    int64_t d = days + 3;
    return d >= 0 ? d / 7 : -((-d + 6) / 7);
  }
  }
  gmtime_r(&tt, &tm);
  return r == 3 ? (int64_t) tm.tm_year * 12 + tm.tm_mon : (int64_t) tm.tm_year;
}

/* Newest first without moving ITEMS: an order of indices. */
static const struct kb_retention_item *sort_items;
static int by_time_desc(const void *a, const void *b)
{
  int64_t ta = sort_items[*(const size_t *) a].time, tb = sort_items[*(const size_t *) b].time;
  if (ta != tb)
    return ta > tb ? -1 : 1;
  return *(const size_t *) a > *(const size_t *) b ? -1 : 1;
}

/* The rules of P over the items of policy G (ORDER: newest first). */
static void rank(const struct kb_retention *p, size_t g, struct kb_retention_item *items, const size_t *order,
                 size_t n)
{
  static const unsigned rules[] = { KB_KEEP_HOURLY, KB_KEEP_DAILY, KB_KEEP_WEEKLY, KB_KEEP_MONTHLY,
                                    KB_KEEP_YEARLY };
  unsigned counts[] = { p->keep_hourly, p->keep_daily, p->keep_weekly, p->keep_monthly, p->keep_yearly };
  unsigned last = 0;

  for (size_t k = 0; k < n && last < p->keep_last; k++)
    if (items[order[k]].ready && items[order[k]].policy == g) {
      items[order[k]].keep |= KB_KEEP_LAST;
      last++;
    }
  for (size_t r = 0; r < KB_ARRAY_SIZE(rules); r++) {
    int64_t prev = 0, cur;
    bool first = true;
    unsigned kept = 0;
    for (size_t k = 0; k < n && kept < counts[r]; k++) {
      struct kb_retention_item *it = &items[order[k]];
      if (!it->ready || it->policy != g)
        continue;
      cur = bucket(it->time, (int) r);
      if (first || cur != prev) {
        it->keep |= rules[r];
        kept++;
        prev = cur;
        first = false;
      }
    }
  }
}

void kb_retention_apply(const struct kb_retention *p, struct kb_retention_item *items, size_t n)
{
  for (size_t i = 0; i < n; i++)
    items[i].policy = 0;
  kb_retention_apply_set(p, 1, items, n);
}

void kb_retention_apply_set(const struct kb_retention *pols, size_t npol, struct kb_retention_item *items,
                            size_t n)
{
  size_t *order = calloc(n ? n : 1, sizeof *order);

  for (size_t i = 0; i < n; i++) {
    items[i].keep = 0;
    items[i].needed_by = -1;
    if (!items[i].eligible)
      items[i].keep |= KB_KEEP_NOT_READY;
    if (items[i].in_use)
      items[i].keep |= KB_KEEP_IN_USE;
    if (items[i].policy >= npol || kb_retention_empty(&pols[items[i].policy]))
      items[i].keep |= KB_KEEP_NO_POLICY;
  }
  if (!order) {   /* out of memory: keep everything */
    for (size_t i = 0; i < n; i++)
      items[i].keep |= KB_KEEP_NO_POLICY;
    return;
  }
  for (size_t i = 0; i < n; i++)
    order[i] = i;
  sort_items = items;
  qsort(order, n, sizeof *order, by_time_desc);
  for (size_t g = 0; g < npol; g++)
    rank(&pols[g], g, items, order, n);
  /* Dependencies: whatever a kept backup needs is kept (bounded walk). */
  for (size_t i = 0; i < n; i++) {
    if (!items[i].keep)
      continue;
    ssize_t j = items[i].parent;
    for (size_t steps = 0; j >= 0 && (size_t) j < n && steps < n; steps++) {
      if (!(items[j].keep & KB_KEEP_DEPENDENCY) || items[j].needed_by < 0)
        items[j].needed_by = (ssize_t) i;
      items[j].keep |= KB_KEEP_DEPENDENCY;
      j = items[j].parent;
    }
  }
  free(order);
}

const char *const kb_retention_field_names[6] = { "last", "hourly", "daily", "weekly", "monthly", "yearly" };

void kb_retention_fields(struct kb_retention *p, unsigned *ret[6])
{
  ret[0] = &p->keep_last;
  ret[1] = &p->keep_hourly;
  ret[2] = &p->keep_daily;
  ret[3] = &p->keep_weekly;
  ret[4] = &p->keep_monthly;
  ret[5] = &p->keep_yearly;
}

int kb_retention_parse_count(const char *s, unsigned *ret)
{
  long long n;

  if (kb_parse_ll(s, &n) < 0 || n < 0 || n > KB_RETENTION_MAX)
    return -EINVAL;
  *ret = (unsigned) n;
  return 0;
}

bool kb_schedule_name_ok(const char *name)
{
  size_t n = name ? strlen(name) : 0;

  if (n < 1 || n > KB_SCHEDULE_NAME_MAX || name[0] == '_' || name[0] == '-')
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return false;
  }
  return true;
}

const char *kb_retention_reasons(unsigned keep, char *buf, size_t len)
{
  static const struct {
    unsigned bit;
    const char *name;
  } names[] = {
    { KB_KEEP_LAST, "last" }, { KB_KEEP_HOURLY, "hourly" }, { KB_KEEP_DAILY, "daily" },
    { KB_KEEP_WEEKLY, "weekly" }, { KB_KEEP_MONTHLY, "monthly" }, { KB_KEEP_YEARLY, "yearly" },
    { KB_KEEP_NO_POLICY, "no-policy" }, { KB_KEEP_IN_USE, "in-use" }, { KB_KEEP_DEPENDENCY, "dependency" },
    { KB_KEEP_NOT_READY, "not-ready" },
  };
  size_t o = 0;

  if (!len)
    return buf;
  buf[0] = '\0';
  for (size_t i = 0; i < KB_ARRAY_SIZE(names); i++)
    if (keep & names[i].bit) {
      int w = snprintf(buf + o, len - o, "%s%s", o ? "," : "", names[i].name);
      if (w < 0 || (size_t) w >= len - o)
        break;
      o += (size_t) w;
    }
  if (!o)
    snprintf(buf, len, "prune");
  return buf;
}
