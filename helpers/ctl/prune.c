/* kbossctl prune: apply a VM's retention policy (its offering's keep_*
 * fields, the VM's settings over them, a schedule's own keep values for
 * that schedule's backups) to its backups: what no rule keeps goes, unless
 * it is in use by a quick restore, still Running, or its lock is held by
 * another operation; what a kept backup depends on is merged forward into
 * it (merge.c) and then goes too. This file decides and removes; the
 * policy itself is lib/retention.c. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "catalog.h"
#include "ctl.h"
#include "event.h"
#include "jsonout.h"
#include "log.h"
#include "metrics.h"
#include "record.h"
#include "retention.h"
#include "util.h"

static void prune_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s prune [VM] [--dry-run] [--json]\n"
          "\n"
          "Apply the retention policy of each VM's offering (keep_last, keep_hourly,\n"
          "keep_daily, keep_weekly, keep_monthly, keep_yearly; the VM settings\n"
          "backupRetentionKeepLast... override them) to its backups, or to VM's only.\n"
          "The backups a schedule took (kbossctl schedule --name N --keep-...) are\n"
          "ranked among themselves by that schedule's own keep values, when it has\n"
          "any. Backups that no rule keeps but a kept backup depends on are merged\n"
          "forward into the oldest kept backup of their chain (it becomes a full\n"
          "holding the same guest bytes, compressed as it was) and then removed. A\n"
          "backup in use by a quick restore, one still being taken and one whose lock\n"
          "another operation holds (or a job runs on) is kept, with what it depends\n"
          "on. A VM with no policy (no keep_* field in its offering, settings or\n"
          "schedules) is left alone. A merge a killed prune left pending is finished\n"
          "first.\n"
          "\n"
          "  --dry-run       say what would be removed, remove nothing\n"
          "  --json          print the decision for every backup as JSON\n"
          "  --config FILE   configuration file\n", kb_progname);
}

struct vm_plan {
  struct kb_chain_view *cvs;
  char **chains;
  size_t nchains;
  struct kb_retention_item *items;
  size_t n;
  /* pols[0]: the VM's policy; pols[k > 0]: schedule sched[k]'s own */
  struct kb_retention *pols;
  const char **sched;
  size_t npol;
};

static void plan_clear(struct vm_plan *p)
{
  for (size_t c = 0; c < p->nchains; c++)
    kb_chain_view_clear(&p->cvs[c]);
  free(p->cvs);
  kb_strv_free(p->chains);
  free(p->items);
  free(p->pols);
  free(p->sched);
  memset(p, 0, sizeof *p);
}

/* Index of item (chain C, position I). */
static size_t item_index(const struct vm_plan *p, size_t c, size_t i)
{
  size_t k = 0;
  for (size_t x = 0; x < c; x++)
    k += p->cvs[x].n;
  return k + i;
}

/* The VM's policy: its offering's keep_* fields, each overridden by the
 * VM's setting (backupRetentionKeep...). */
static void vm_policy(const struct kb_config *cfg, const char *name, const struct kb_offering *off,
                      struct kb_retention *pol)
{
  static const char *const vm_keys[6] = { "backupRetentionKeepLast", "backupRetentionKeepHourly",
                                          "backupRetentionKeepDaily", "backupRetentionKeepWeekly",
                                          "backupRetentionKeepMonthly", "backupRetentionKeepYearly" };
  unsigned *dst[6];

  memset(pol, 0, sizeof *pol);
  kb_retention_fields(pol, dst);
  for (size_t i = 0; i < 6; i++) {
    struct kb_value v;
    long long x;
    *dst[i] = off ? (unsigned) off->keep[i] : 0;
    if (name && kb_config_lookup(cfg, name, vm_keys[i], &v) == 0 && v.file && kb_parse_ll(v.value, &x) == 0 &&
        x >= 0)
      *dst[i] = (unsigned) x;
  }
}

static const char *doc_schedule(const struct kb_doc *d)
{
  const char *s = d ? kb_doc_get(d, "backup", "schedule") : NULL;
  return s && kb_schedule_name_ok(s) ? s : NULL;
}

/* Which policy ranks each backup: a schedule's own keep values (those its
 * newest backup recorded, kboss-backup --keep-*) for that schedule's
 * backups when it has any, else the VM's (pols[0]). */
static int plan_policies(struct vm_plan *p, const struct kb_retention *vm_pol)
{
  const struct kb_doc **newest = calloc(p->n + 1, sizeof *newest);
  int64_t *newest_t = calloc(p->n + 1, sizeof *newest_t);
  size_t nsched = 0, k = 0;

  p->pols = calloc(p->n + 1, sizeof *p->pols);
  p->sched = calloc(p->n + 1, sizeof *p->sched);
  if (!newest || !newest_t || !p->pols || !p->sched) {
    free(newest);
    free(newest_t);
    return -ENOMEM;
  }
  p->pols[0] = *vm_pol;
  p->npol = 1;
  /* each schedule's newest record (sched[1..nsched]) */
  for (size_t c = 0; c < p->nchains; c++)
    for (size_t i = 0; i < p->cvs[c].n; i++, k++) {
      const char *s = doc_schedule(p->cvs[c].docs[i]);
      size_t g = 1;
      if (!s)
        continue;
      while (g <= nsched && !KB_STREQ(p->sched[g], s))
        g++;
      if (g > nsched) {
        p->sched[++nsched] = s;
        newest_t[g] = INT64_MIN;
      }
      if (p->items[k].time >= newest_t[g]) {
        newest_t[g] = p->items[k].time;
        newest[g] = p->cvs[c].docs[i];
      }
    }
  /* those with keep values of their own become policies */
  for (size_t g = 1; g <= nsched; g++) {
    struct kb_retention pol = { 0 };
    unsigned *dst[6];
    kb_retention_fields(&pol, dst);
    for (size_t i = 0; i < 6; i++) {
      CLEANUP_FREE char *key = kb_printf("schedule_keep_%s", kb_retention_field_names[i]);
      long long x = key ? kb_doc_get_ll(newest[g], "backup", key, 0) : 0;
      *dst[i] = x > 0 && x <= KB_RETENTION_MAX ? (unsigned) x : 0;
    }
    if (kb_retention_empty(&pol))
      continue;
    p->sched[p->npol] = p->sched[g];
    p->pols[p->npol++] = pol;
  }
  k = 0;
  for (size_t c = 0; c < p->nchains; c++)
    for (size_t i = 0; i < p->cvs[c].n; i++, k++) {
      const char *s = doc_schedule(p->cvs[c].docs[i]);
      p->items[k].policy = 0;
      for (size_t g = 1; s && g < p->npol; g++)
        if (KB_STREQ(p->sched[g], s))
          p->items[k].policy = g;
    }
  free(newest);
  free(newest_t);
  return 0;
}

static int plan_load(const struct kb_catalog *cat, const char *uuid, const struct kb_retention *pol,
                     struct vm_plan *p)
{
  int r;

  memset(p, 0, sizeof *p);
  r = kb_catalog_list_chains(cat, uuid, &p->chains);
  if (r < 0)
    return r;
  while (p->chains[p->nchains])
    p->nchains++;
  p->cvs = calloc(p->nchains + 1, sizeof *p->cvs);
  if (!p->cvs)
    return -ENOMEM;
  for (size_t c = 0; c < p->nchains; c++) {
    r = kb_chain_view_load(cat, uuid, p->chains[c], &p->cvs[c]);
    if (r < 0)
      return r;
    p->n += p->cvs[c].n;
  }
  p->items = calloc(p->n + 1, sizeof *p->items);
  if (!p->items)
    return -ENOMEM;
  for (size_t c = 0; c < p->nchains; c++) {
    const struct kb_chain_view *cv = &p->cvs[c];
    for (size_t i = 0; i < cv->n; i++) {
      struct kb_retention_item *it = &p->items[item_index(p, c, i)];
      const struct kb_doc *d = cv->docs[i];
      const char *st = d ? kb_doc_get(d, "backup", "state") : NULL;
      const char *parent = d ? kb_doc_get(d, "backup", "parent") : NULL;
      it->parent = -1;
      it->time = d ? kb_parse_time(kb_doc_get(d, "backup", "created")) : -1;
      it->ready = st && KB_STREQ(st, KB_BACKUP_READY) && it->time >= 0;
      it->eligible = st && (KB_STREQ(st, KB_BACKUP_READY) || KB_STREQ(st, KB_BACKUP_INVALID));
      it->in_use = d && kb_backup_in_use_by(d) != NULL;
      for (size_t j = 0; parent && j < cv->n; j++)
        if (KB_STREQ(cv->ids[j], parent))
          it->parent = (ssize_t) item_index(p, c, j);
      if (parent && it->parent < 0)
        it->eligible = false;   /* a parent we cannot see: leave it */
    }
  }
  r = plan_policies(p, pol);
  if (r < 0)
    return r;
  kb_retention_apply_set(p->pols, p->npol, p->items, p->n);
  return 0;
}

static const char *id_of(const struct vm_plan *p, size_t k)
{
  for (size_t c = 0; c < p->nchains; c++) {
    if (k < p->cvs[c].n)
      return p->cvs[c].ids[k];
    k -= p->cvs[c].n;
  }
  return "?";
}

/* The merge forward planned for chain C: the oldest backup kept for its
 * own sake (a rule, not only as a dependency) whose older backups are all
 * kept only because it depends on them. Returns its position in the chain
 * (MERGE[i] set for those older backups), or -1; *RET_WHY says why there
 * are dependencies but no merge. */
static ssize_t plan_merge(const struct vm_plan *p, size_t c, bool *merge, const char **ret_why)
{
  const struct kb_chain_view *cv = &p->cvs[c];
  size_t base = item_index(p, c, 0);

  *ret_why = NULL;
  for (size_t i = 0; i < cv->n; i++) {
    const struct kb_retention_item *it = &p->items[base + i];
    ssize_t j;

    if (!(it->keep & ~KB_KEEP_DEPENDENCY))
      continue;
    if (it->parent < 0)
      return -1;          /* a full: nothing depends on older backups */
    if (it->keep & (KB_KEEP_IN_USE | KB_KEEP_NOT_READY)) {
      *ret_why = "the backup depending on it is in use or not Ready";
      return -1;
    }
    j = it->parent;
    for (size_t steps = 0; j >= 0 && steps < cv->n; steps++) {
      const struct kb_retention_item *a = &p->items[j];
      const char *why = a->keep != KB_KEEP_DEPENDENCY ? "an older backup is kept for another reason"
                        : !a->ready ? "an older backup is not Ready (Invalid)"
                        : (size_t) j < base || (size_t) j >= base + cv->n ? "its parent is in another chain"
                        : NULL;
      if (why) {
        memset(merge, 0, cv->n * sizeof *merge);
        *ret_why = why;
        return -1;
      }
      merge[(size_t) j - base] = true;
      j = a->parent;
    }
    return (ssize_t) i;
  }
  return -1;
}

/* Whether backup I of chain C is built on backup T of that chain. */
static bool depends_on(const struct vm_plan *p, size_t c, size_t i, size_t t)
{
  size_t base = item_index(p, c, 0);
  ssize_t j = p->items[base + i].parent;

  for (size_t steps = 0; j >= 0 && steps < p->cvs[c].n; steps++) {
    if ((size_t) j == base + t)
      return true;
    j = p->items[j].parent;
  }
  return false;
}

/* Take backup ID's lock for prune (once, not waiting), unless a job runs
 * on it. */
static int lock_backup(const struct kb_catalog *cat, const char *id, struct kb_lock **ret)
{
  if (ctl_job_running(cat, id))
    return -EBUSY;
  return kb_catalog_lock(cat, KB_LOCK_BACKUP, id, "prune", 0, ret);
}

static void checkpoint_point(void)
{
  ctl_prune_point("checkpoint-xml");
}

static int strv_push(char ***v, size_t *n, const char *s)
{
  char **nv = realloc(*v, (*n + 2) * sizeof **v);

  if (!nv)
    return -ENOMEM;
  *v = nv;
  if (!(nv[*n] = strdup(s)))
    return -ENOMEM;
  nv[++*n] = NULL;
  return 0;
}

/* Prune one VM. Returns 0, or 1 when something could not be removed. */
static int prune_vm(const struct kb_config *cfg, const struct kb_catalog *cat, const char *uuid, bool dry,
                    json_object *jout, unsigned *ret_removed, unsigned *ret_merged)
{
  struct kb_doc *rec = NULL;
  const char *name;
  const struct kb_offering *off;
  struct kb_retention pol;
  struct kb_lock *vmlock = NULL;
  struct vm_plan p;
  char why[160], sfx[64];
  char **gone = NULL;
  size_t ngone = 0;
  int r, rc = 0;
  unsigned removed = 0, merged = 0;

  if (kb_vm_load(cat, uuid, &rec) < 0)
    return 0;
  name = kb_doc_get(rec, "vm", "name");
  off = name ? kb_config_vm_offering_def(cfg, name) : NULL;
  vm_policy(cfg, name, off, &pol);
  if (kb_retention_empty(&pol)) {
    /* still a policy when one of its schedules has keep values */
    bool sched = plan_load(cat, uuid, &pol, &p) == 0 && p.npol > 1;
    plan_clear(&p);
    if (!sched) {
      if (!jout)
        kb_print_escaped("VM %s: no retention policy (neither offering %s, the VM nor a schedule sets a keep_* "
                         "field)\n", name ? name : uuid, off ? off->name : "none");
      kb_doc_free(rec);
      return 0;
    }
  }
  if (!dry && ctl_lock_vm(cat, uuid, name ? name : uuid, "prune", &vmlock) < 0) {
    kb_doc_free(rec);
    return 1;
  }
  /* First what a killed prune left: pending merges are finished, temporary
   * files of merges never recorded removed. */
  if (!dry) {
    unsigned fin = 0;
    rc |= ctl_merge_recover(cat, uuid, &fin);
    if (fin && !jout)
      kb_print_escaped("VM %s: finished %u merge(s) a previous prune left pending\n", name ? name : uuid, fin);
  }
  r = plan_load(cat, uuid, &pol, &p);
  if (r < 0) {
    kb_err("prune: VM %s: cannot read its backups: %s", name ? name : uuid, strerror(-r));
    plan_clear(&p);
    kb_lock_release(vmlock);
    kb_doc_free(rec);
    return 1;
  }
  for (size_t c = 0; c < p.nchains; c++) {
    struct kb_chain_view *cv = &p.cvs[c];
    bool *del = calloc(cv->n + 1, sizeof *del), *merge = calloc(cv->n + 1, sizeof *merge);
    struct kb_lock **locks = calloc(cv->n + 1, sizeof *locks);
    const char **mids = calloc(cv->n + 1, sizeof *mids);
    const char *nomerge = NULL;
    ssize_t t;
    size_t ndel = 0, nm = 0;

    if (!del || !locks || !merge || !mids) {
      free(del);
      free(merge);
      free(locks);
      free(mids);
      rc = 1;
      break;
    }
    t = plan_merge(&p, c, merge, &nomerge);
    for (size_t i = 0; i < cv->n; i++)
      if (merge[i])
        mids[nm++] = cv->ids[i];
    if (t >= 0 && !dry) {
      /* The target, every backup merged into it and every backup built on
       * the target (a validation or extract of one reads the merged
       * backups' files too), locked, no job on them. */
      bool ok = lock_backup(cat, cv->ids[t], &locks[t]) == 0;
      for (size_t i = 0; ok && i < cv->n; i++)
        if ((merge[i] || depends_on(&p, c, i, (size_t) t)) && lock_backup(cat, cv->ids[i], &locks[i]) < 0)
          ok = false;
      if (!ok) {
        for (size_t i = 0; i < cv->n; i++) {
          kb_lock_release(locks[i]);
          locks[i] = NULL;
          if (merge[i])
            p.items[item_index(&p, c, i)].keep |= KB_KEEP_IN_USE;
        }
        memset(merge, 0, cv->n * sizeof *merge);
        t = -1;
        nm = 0;
        nomerge = "a backup of it is locked by another operation or a job runs on it";
      }
    }
    mids[nm] = NULL;
    for (size_t i = 0; i < cv->n; i++) {
      struct kb_retention_item *it = &p.items[item_index(&p, c, i)];
      const char *verdict = merge[i] ? "merge" : it->keep ? "keep" : "remove";
      if (!it->keep && !dry) {
        r = lock_backup(cat, cv->ids[i], &locks[i]);
        if (r < 0) {
          it->keep |= KB_KEEP_IN_USE;
          verdict = "keep";
        } else {
          del[i] = true;
          ndel++;
        }
      }
      kb_retention_reasons(it->keep, why, sizeof why);
      snprintf(sfx, sizeof sfx, "%s%s%s", it->policy ? " [schedule " : "", it->policy ? p.sched[it->policy] : "",
               it->policy ? "]" : "");
      if (jout) {
        json_object *x = json_object_new_object();
        json_object_object_add(x, "vm", kb_json_str(uuid));
        json_object_object_add(x, "vm_name", kb_json_str(name));
        json_object_object_add(x, "chain", kb_json_str(p.chains[c]));
        json_object_object_add(x, "backup", kb_json_str(cv->ids[i]));
        json_object_object_add(x, "action", kb_json_str(verdict));
        json_object_object_add(x, "reasons", kb_json_str(it->keep && !merge[i] ? why : NULL));
        json_object_object_add(x, "schedule", kb_json_str(doc_schedule(cv->docs[i])));
        json_object_object_add(x, "policy", kb_json_str(it->policy ? "schedule" : "vm"));
        json_object_object_add(x, "needed_by",
                               kb_json_str(it->needed_by >= 0 ? id_of(&p, (size_t) it->needed_by) : NULL));
        json_object_object_add(x, "merge_into", kb_json_str(merge[i] ? cv->ids[t] : NULL));
        json_object_object_add(x, "merge_target", json_object_new_boolean((ssize_t) i == t));
        json_object_array_add(jout, x);
      } else if (merge[i])
        kb_print_escaped("VM %s: %s %s into %s (no rule keeps it; %s depends on it)%s\n", name ? name : uuid,
                         dry ? "would merge" : "merge ", cv->ids[i], cv->ids[t], cv->ids[t], sfx);
      else if ((ssize_t) i == t)
        kb_print_escaped("VM %s: keep   %s (%s), the merge target: it %s a full%s\n", name ? name : uuid,
                         cv->ids[i], why, dry ? "would become" : "becomes", sfx);
      else if (it->needed_by >= 0 && !(it->keep & ~KB_KEEP_DEPENDENCY))
        kb_print_escaped("VM %s: keep   %s (%s: %s depends on it; not merged: %s)%s\n", name ? name : uuid,
                         cv->ids[i], why, id_of(&p, (size_t) it->needed_by),
                         nomerge ? nomerge : "a newer kept backup is not the oldest of its chain", sfx);
      else
        kb_print_escaped("VM %s: %s %s (%s)%s\n", name ? name : uuid, it->keep ? "keep  " : dry ? "would remove" : "remove",
                         cv->ids[i], it->keep ? why : "no rule keeps it", sfx);
    }
    if (t >= 0 && !dry) {
      CLEANUP_FREE char *err = NULL;
      r = ctl_merge_forward(cat, uuid, p.chains[c], cv->ids[t], mids, &err);
      if (r < 0) {
        kb_err("prune: VM %s: cannot merge %zu backup(s) into %s: %s", name ? name : uuid, nm, cv->ids[t],
               err ? err : strerror(-r));
        rc = 1;
      } else {
        merged++;
        for (size_t i = 0; i < cv->n; i++)
          if (merge[i]) {
            del[i] = true;
            ndel++;
          }
        if (!jout)
          kb_print_escaped("VM %s: merged %zu backup(s) into %s: it is a full now\n", name ? name : uuid, nm,
                           cv->ids[t]);
      }
    }
    /* Newest first, so a failure never leaves a backup without its parent. */
    for (size_t i = cv->n; ndel && i-- > 0;) {
      struct kb_backup_ref one = { (char *) uuid, p.chains[c], cv->ids[i], cv->docs[i] };
      if (!del[i])
        continue;
      if (kb_backup_remove(cat, &one) < 0) {
        kb_err("prune: backup %s: cannot remove it: %m", cv->ids[i]);
        rc = 1;
        /* what was removed is recorded below; this one and older stay */
        for (size_t j = 0; j <= i; j++)
          del[j] = false;
        break;
      }
      if (strv_push(&gone, &ngone, cv->ids[i]) < 0)
        rc = 1;
      if (removed++ == 0)
        ctl_prune_point("removed-one");
    }
    if (ndel) {
      struct kb_forget_result res;
      bool any = false;
      ctl_prune_point("removed");
      for (size_t i = 0; i < cv->n; i++)
        any |= del[i];
      if (any && kb_chain_forget(cat, uuid, p.chains[c], cv, del, &res) < 0) {
        kb_err("prune: VM %s: cannot update its records: %m", name ? name : uuid);
        rc = 1;
      }
      ctl_prune_point("forgotten");
    }
    for (size_t i = 0; i < cv->n; i++)
      kb_lock_release(locks[i]);
    free(locks);
    free(del);
    free(merge);
    free(mids);
  }
  if (!dry) {
    /* Saved checkpoint XML of removed backups (and any a killed prune or an
     * older version left); never the VM's last checkpoint. */
    r = kb_vm_forget_checkpoints(cat, uuid, (const char *const *) gone, checkpoint_point);
    if (r < 0)
      kb_warn("prune: VM %s: cannot remove saved checkpoint XML: %s", name ? name : uuid, strerror(-r));
  }
  if (!dry && (removed || merged)) {
    CLEANUP_FREE char *msg = kb_printf("VM %s: pruned %u backup(s), merged forward into %u", name ? name : uuid,
                                       removed, merged);
    struct kb_event ev = { KB_EV_PRUNE, uuid, name, NULL, NULL, msg };
    kb_event(&ev);
  }
  *ret_removed += removed;
  *ret_merged += merged;
  kb_strv_free(gone);
  plan_clear(&p);
  kb_lock_release(vmlock);
  kb_doc_free(rec);
  return rc;
}

int ctl_prune(int argc, char **argv)
{
  enum { O_DRY = 1, O_JSON };
  static const struct option longopts[] = {
    { "dry-run", no_argument, NULL, O_DRY },
    { "json", no_argument, NULL, O_JSON },
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  bool dry = false, json = false;
  struct kb_config *cfg;
  struct kb_catalog *cat;
  char **uuids = NULL;
  json_object *jout = NULL;
  unsigned removed = 0, merged = 0;
  int c, r, rc = 0;

  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case O_DRY: dry = true; break;
    case O_JSON: json = true; break;
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: prune_usage(stdout); return 0;
    default: prune_usage(stderr); return 2;
    }
  }
  if (argc - optind > 1) {
    prune_usage(stderr);
    return 2;
  }
  if (!(cfg = ctl_load_config()))
    return 1;
  kb_event_configure(cfg);
  if (!(cat = ctl_open_catalog(cfg))) {
    kb_config_free(cfg);
    return 1;
  }
  if (optind < argc) {
    CLEANUP_FREE char *uuid = NULL;
    r = ctl_find_vm(cat, argv[optind], &uuid);
    if (r < 0) {
      kb_err("prune: VM %s: %s", argv[optind], r == -ENOENT ? "not in the catalog" : strerror(-r));
      rc = 1;
      goto out;
    }
    uuids = calloc(2, sizeof *uuids);
    if (!uuids || !(uuids[0] = strdup(uuid))) {
      rc = 1;
      goto out;
    }
  } else if ((r = kb_catalog_list_vms(cat, &uuids)) < 0) {
    kb_err("prune: cannot list the VMs: %s", strerror(-r));
    rc = 1;
    goto out;
  }
  if (json)
    jout = json_object_new_array();
  for (size_t i = 0; uuids[i]; i++)
    rc |= prune_vm(cfg, cat, uuids[i], dry, jout, &removed, &merged);
  if (jout) {
    kb_json_print(jout);
    jout = NULL;
  } else if (!dry)
    printf("%u backup(s) removed, %u merge(s) forward\n", removed, merged);
  if (!dry && (r = kb_metrics_write(cfg, cat)) < 0)
    kb_warn("cannot write metrics.path: %s", strerror(-r));
out:
  if (jout)
    json_object_put(jout);
  kb_strv_free(uuids);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
