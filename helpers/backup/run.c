/* Taking one backup: plan (full or incremental, disk by disk), targets on
 * the store, the libvirt push-mode job with its checkpoint, and the catalog
 * records; everything undone again when any step fails. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "backup.h"
#include "jsonout.h"
#include "domxml.h"
#include "log.h"
#include "record.h"
#include "retention.h"
#include "util.h"
#include "store.h"
#include "watchdog.h"

struct bk_disk {
  const struct kb_disk *d;
  bool incremental;          /* else a full copy of this disk */
  const char *reason;        /* why full (static text or owned by why) */
  char *why;
  bool bitmap;               /* carries a bitmap in the new checkpoint */
  bool drop_bitmap;          /* its old bitmap is present but unusable */
  char *file;                /* "vda.qcow2" */
  char *path;                /* target on the store */
  char *backing;             /* incremental: relative backing file */
  unsigned long long capacity;
};

struct bk_job {
  struct bk_vm *v;
  const struct bk_opts *opts;
  const struct kb_offering *off;
  char *live_xml, *inactive_xml;
  struct kb_disks disks;
  struct bk_disk *bd;
  size_t nbd;
  char id[64];
  char *chain;
  bool new_chain;
  char *store;
  char *parent;              /* parent backup id (incremental) */
  char *since;               /* checkpoint the incremental is based on */
  struct kb_doc *chain_rec;
  struct kb_doc *rec;        /* backup.ini */
  char *meta_dir, *data_dir;
  bool offline;              /* stopped VM: offline.c, no qemu */
  bool was_active, started_paused, frozen, job_begun, recorded;
  bool xml_saved;            /* save_job_xml() done */
  bool cp_xml_written;       /* the checkpoint's XML may be in the catalog */
  struct kb_progress progress;
};

static void job_clear(struct bk_job *j)
{
  size_t i;

  for (i = 0; i < j->nbd; i++) {
    free(j->bd[i].why);
    free(j->bd[i].file);
    free(j->bd[i].path);
    free(j->bd[i].backing);
  }
  free(j->bd);
  kb_disks_clear(&j->disks);
  free(j->live_xml);
  free(j->inactive_xml);
  free(j->chain);
  free(j->store);
  free(j->parent);
  free(j->since);
  kb_doc_free(j->chain_rec);
  kb_doc_free(j->rec);
  free(j->meta_dir);
  free(j->data_dir);
}

/* ---- stores ---- */

static bool store_available(const struct kb_store *s, bool need_kboss_dir)
{
  struct stat st;
  CLEANUP_FREE char *k = kb_printf("%s/kboss", s->path);

  /* A mount point or a folder marked by kbossctl init-store (store.h). */
  if (kb_store_check(s->path) < 0)
    return false;
  if (need_kboss_dir && (!k || lstat(k, &st) < 0 || !S_ISDIR(st.st_mode)))
    return false;
  return true;
}

static int pick_store(struct bk_job *j, char **ret_error)
{
  const struct kb_store *s, *best = NULL;
  unsigned long long best_free = 0;
  bool have_dedicated = false;
  unsigned i;

  for (i = 0; (s = kb_config_store_at(j->v->cfg, i)); i++)
    if (s->backups_only)
      have_dedicated = true;
  for (i = 0; (s = kb_config_store_at(j->v->cfg, i)); i++) {
    struct statvfs sv;
    unsigned long long avail;

    if (have_dedicated && !s->backups_only)
      continue;
    if (!store_available(s, false) || statvfs(s->path, &sv) < 0)
      continue;
    avail = (unsigned long long) sv.f_bavail * sv.f_frsize;
    if (!best || avail > best_free) {
      best = s;
      best_free = avail;
    }
  }
  if (!best) {
    *ret_error = kb_printf("no %ssecondary store is available (is it mounted?)",
                           have_dedicated ? "backups-only " : "");
    return -ENOENT;
  }
  j->store = strdup(best->name);
  return j->store ? 0 : -ENOMEM;
}

/* Folders qemu writes into: 0710 with qemu's group, from <store>/kboss down. */
static int open_folder_to_qemu(const char *store_path, const char *dir)
{
  gid_t gid = kb_qemu_gid();
  CLEANUP_FREE char *p = strdup(dir);
  size_t base = strlen(store_path);
  char *c;

  if (!p)
    return -ENOMEM;
  if (gid == (gid_t) -1)
    return 0;
  for (c = p + base + 1;; c++) {
    if (*c == '/' || *c == '\0') {
      char saved = *c;
      struct stat st;
      *c = '\0';
      if (lstat(p, &st) < 0)
        return -errno;
      if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
      if (st.st_gid != gid && lchown(p, (uid_t) -1, gid) < 0)
        return -errno;
      if ((st.st_mode & 07777) != 0710 && chmod(p, 0710) < 0)
        return -errno;
      *c = saved;
      if (!saved)
        break;
    }
  }
  return 0;
}

/* ---- planning ---- */

static long long chain_size(struct bk_job *j)
{
  return kb_config_chain_size(j->v->cfg, j->v->name);
}

static int plan_chain(struct bk_job *j, char **ret_error)
{
  struct bk_vm *v = j->v;
  const char *cur = kb_doc_get(v->rec, "vm", "current_chain");
  const char *last_cp = kb_doc_get(v->rec, "vm", "last_checkpoint");
  int r;

  if (!j->opts->isolated && !j->opts->full && cur && *cur && last_cp && *last_cp) {
    r = kb_chain_load(v->cat, v->uuid, cur, &j->chain_rec);
    if (r < 0 && r != -ENOENT) {
      *ret_error = kb_printf("VM %s: cannot read chain %s: %s", v->name, cur, strerror(-r));
      return r;
    }
    if (r == 0 && !kb_doc_get(j->chain_rec, "chain", "last_backup"))
      kb_warn("VM %s: chain %s names no (valid) last backup; starting a new chain", v->name, cur);
    else if (r == 0 && !kb_doc_get_bool(j->chain_rec, "chain", "ended", false) &&
             kb_doc_get_ll(j->chain_rec, "chain", "length", 0) < chain_size(j)) {
      const char *store = kb_doc_get(j->chain_rec, "chain", "store");
      const struct kb_store *s = store ? kb_config_store(v->cfg, store) : NULL;

      if (!s) {
        *ret_error = kb_printf("VM %s: chain %s lives on store '%s', which this host's configuration does not define",
                               v->name, cur, store ? store : "?");
        return -ENOENT;
      }
      if (!store_available(s, true)) {
        *ret_error = kb_printf("VM %s: store '%s' (%s) holding chain %s is not available (not mounted?); "
                               "refusing to continue the chain elsewhere",
                               v->name, s->name, s->path, cur);
        return -ENOENT;
      }
      j->chain = strdup(cur);
      j->store = strdup(s->name);
      j->parent = strdup(kb_doc_get(j->chain_rec, "chain", "last_backup"));
      j->since = strdup(last_cp);
      return j->chain && j->store && j->parent && j->since ? 0 : -ENOMEM;
    }
    kb_doc_free(j->chain_rec);
    j->chain_rec = NULL;
  }
  /* A new chain (or an isolated backup, a chain of its own). */
  j->new_chain = true;
  r = pick_store(j, ret_error);
  if (r < 0)
    return r;
  j->chain = strdup(j->id);
  j->chain_rec = kb_doc_new();
  if (!j->chain || !j->chain_rec)
    return -ENOMEM;
  {
    char now[32];
    kb_format_time(kb_now(), now, sizeof now);
    r = kb_doc_set(j->chain_rec, "chain", "id", j->chain);
    if (r == 0) r = kb_doc_set(j->chain_rec, "chain", "vm", v->uuid);
    if (r == 0) r = kb_doc_set(j->chain_rec, "chain", "store", j->store);
    if (r == 0) r = kb_doc_set(j->chain_rec, "chain", "created", now);
    if (r == 0) r = kb_doc_set(j->chain_rec, "chain", "isolated", j->opts->isolated ? "true" : "false");
    if (r == 0) r = kb_doc_set_ll(j->chain_rec, "chain", "length", 0);
    if (r == 0) r = kb_doc_set(j->chain_rec, "chain", "ended", "false");
  }
  return r;
}

/* Is checkpoint SINCE usable for disk D? Sets reason when not. NODES: the
 * running VM's block nodes (one QMP answer for all disks). */
static void check_disk(struct bk_job *j, struct bk_disk *b, char **cp_disks, bool cp_known,
                       const struct kb_block_nodes *nodes, int nodes_err)
{
  struct kb_bitmap_state st;
  bool listed = false;
  size_t i;
  int r;

  if (!j->since) {
    b->reason = j->opts->isolated ? "isolated backup" : j->opts->full ? "full backup requested" : "new chain";
    return;
  }
  if (!b->bitmap) {
    b->reason = "not a qcow2 disk: no bitmap can track it";
    return;
  }
  if (!cp_known) {
    b->reason = "the checkpoint of the previous backup is lost";
    return;
  }
  for (i = 0; cp_disks && cp_disks[i]; i++)
    if (KB_STREQ(cp_disks[i], b->d->target))
      listed = true;
  if (!listed) {
    b->reason = "disk added since the previous backup";
    return;
  }
  if (j->offline)
    r = bk_offline_bitmap_state(b->d->source, j->since, &st, &b->why);
  else
    r = nodes ? kb_block_nodes_bitmap_state(nodes, b->d->source, j->since, &st) : nodes_err;
  if (r < 0 && b->why)
    b->reason = b->why;
  else if (r < 0) {
    b->why = kb_printf("cannot read the disk's bitmaps: %s", strerror(-r));
    b->reason = b->why;
  } else if (!st.present)
    b->reason = "its bitmap is missing";
  else if (st.inconsistent)
    b->reason = "its bitmap is inconsistent (left in-use)";
  else if (st.busy)
    b->reason = "its bitmap is busy";
  else if (!st.recording)
    b->reason = "its bitmap is not recording";
  else if (!st.persistent)
    b->reason = "its bitmap is not persistent";
  else
    b->incremental = true;
  /* A bitmap that cannot be trusted is of no use to any later backup. */
  if (r == 0 && st.present && !b->incremental && !st.busy)
    b->drop_bitmap = true;
}

/* Make sure libvirt knows checkpoint SINCE, redefining it from the catalog
 * when libvirt lost its metadata. */
static bool ensure_checkpoint(struct bk_job *j, char ***ret_cp_disks)
{
  struct bk_vm *v = j->v;
  virDomainCheckpointPtr cp;
  CLEANUP_FREE char *xml = NULL;

  cp = virDomainCheckpointLookupByName(v->dom, j->since, 0);
  if (!cp) {
    CLEANUP_FREE char *path = kb_catalog_checkpoint_path(v->cat, v->uuid, j->since);
    CLEANUP_FREE char *saved = NULL, *redef = NULL;

    if (!path || kb_meta_read_file(path, &saved, NULL) < 0) {
      kb_warn("VM %s: checkpoint %s is unknown to libvirt and not saved in the catalog", v->name, j->since);
      return false;
    }
    /* Its parent checkpoint was pruned long ago: redefine it alone, from
     * the checked values of the saved XML (it comes from the export). */
    if (kb_checkpoint_redefine_xml(saved, j->since, &redef) < 0) {
      kb_warn("VM %s: the saved XML of checkpoint %s is not usable", v->name, j->since);
      return false;
    }
    cp = virDomainCheckpointCreateXML(v->dom, redef, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE);
    if (!cp) {
      kb_warn("VM %s: cannot redefine checkpoint %s: %s", v->name, j->since, kb_virt_error());
      return false;
    }
    kb_info("VM %s: redefined checkpoint %s that libvirt had lost", v->name, j->since);
  }
  xml = virDomainCheckpointGetXMLDesc(cp, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
  virDomainCheckpointFree(cp);
  if (!xml || kb_checkpoint_disks(xml, ret_cp_disks) < 0)
    return false;
  return true;
}

static int plan_disks(struct bk_job *j, char **ret_error)
{
  struct bk_vm *v = j->v;
  char **cp_disks = NULL;
  bool cp_known = false;
  int nodes_err = -EIO;
  size_t i;
  int r;

  r = kb_disks_parse(j->live_xml, &j->disks);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot parse its domain XML", v->name);
    return r;
  }
  j->bd = calloc(j->disks.n ? j->disks.n : 1, sizeof *j->bd);
  if (!j->bd)
    return -ENOMEM;
  for (i = 0; i < j->disks.n; i++) {
    const struct kb_disk *d = &j->disks.v[i];
    const char *why;

    if (!kb_disk_is_backed_up(d))
      continue;
    why = kb_disk_unsupported(d);
    if (why) {
      *ret_error = kb_printf("VM %s: disk %s (%s): %s", v->name, d->target,
                             d->source ? d->source : d->type ? d->type : "?", why);
      return -ENOTSUP;
    }
    j->bd[j->nbd].d = d;
    j->bd[j->nbd].bitmap = d->format && KB_STREQ(d->format, "qcow2");
    j->bd[j->nbd].file = kb_printf("%s.qcow2", d->target);
    if (!j->bd[j->nbd].file)
      return -ENOMEM;
    j->nbd++;
  }
  if (j->nbd == 0) {
    *ret_error = kb_printf("VM %s has no disk to back up", v->name);
    return -ENOENT;
  }
  if (j->since)
    cp_known = ensure_checkpoint(j, &cp_disks);
  /* A running VM: every disk's bitmaps and size from one QMP query (the
   * one normalization made, when it changed nothing since). */
  if (!j->offline && !v->nodes)
    nodes_err = kb_virt_block_nodes(v->dom, &v->nodes);
  for (i = 0; i < j->nbd; i++) {
    virDomainBlockInfo info;
    check_disk(j, &j->bd[i], cp_disks, cp_known, v->nodes, nodes_err);
    if (!v->nodes || kb_block_nodes_capacity(v->nodes, j->bd[i].d->source, &j->bd[i].capacity) < 0) {
      if (virDomainGetBlockInfo(v->dom, j->bd[i].d->target, &info, 0) < 0) {
        *ret_error = kb_printf("VM %s: disk %s: cannot read its size: %s", v->name, j->bd[i].d->target,
                               kb_virt_error());
        kb_strv_free(cp_disks);
        return -EIO;
      }
      j->bd[i].capacity = info.capacity;
    }
  }
  for (i = 0; i < j->nbd; i++)
    if (j->bd[i].drop_bitmap && !j->offline) {
      bk_vm_forget_nodes(v);
      if (kb_virt_bitmap_remove(v->dom, j->bd[i].d->source, j->since) < 0)
        kb_warn("VM %s: disk %s: cannot remove its unusable bitmap %s", v->name, j->bd[i].d->target, j->since);
    }
  kb_strv_free(cp_disks);
  return 0;
}

/* ---- targets ---- */

static int parent_disk_file(struct bk_job *j, const char *target, char **ret)
{
  struct kb_doc *p = NULL;
  CLEANUP_FREE char *sec = kb_printf("disk:%s", target);
  const char *file;
  int r;

  r = kb_backup_load(j->v->cat, j->v->uuid, j->chain, j->parent, &p);
  if (r < 0)
    return r;
  file = kb_doc_get(p, sec, "file");
  r = file && kb_name_ok(file) ? 0 : -ENOENT;
  if (r == 0)
    *ret = strdup(file);
  kb_doc_free(p);
  return r;
}

static int create_targets(struct bk_job *j, char **ret_error)
{
  size_t i;

  for (i = 0; i < j->nbd; i++) {
    struct bk_disk *b = &j->bd[i];
    CLEANUP_FREE char *size = kb_printf("%llu", b->capacity);
    CLEANUP_FREE char *pfile = NULL;
    CLEANUP_FREE char *backing = NULL;
    CLEANUP_FREE char *out = NULL;
    const char *argv[16];
    int n = 0, r;

    b->path = kb_printf("%s/%s", j->data_dir, b->file);
    if (!b->path || !size)
      return -ENOMEM;
    if (b->incremental) {
      if (parent_disk_file(j, b->d->target, &pfile) < 0) {
        b->incremental = false;
        b->reason = "the previous backup has no copy of this disk";
      } else
        backing = kb_printf("../%s/%s", j->parent, pfile);
    }
    if (j->offline) {
      /* offline.c writes the file itself. */
      b->backing = b->incremental ? strdup(backing) : NULL;
      if (b->incremental && !b->backing)
        return -ENOMEM;
      continue;
    }
    if (!getenv("KBOSS_TARGETS_QEMU_IMG")) {
      /* kboss's writer (offline.c): no qemu-img process per disk. */
      r = bk_qcow2_create(b->path, b->capacity, b->incremental ? backing : NULL);
      if (r < 0) {
        *ret_error = kb_printf("disk %s: cannot create %s: %s", b->d->target, b->path, strerror(-r));
        return r;
      }
      continue;
    }
    argv[n++] = QEMU_IMG;
    argv[n++] = "create";
    argv[n++] = "-q";
    argv[n++] = "-f";
    argv[n++] = "qcow2";
    argv[n++] = "-o";
    argv[n++] = "cluster_size=65536";
    if (b->incremental) {
      /* Relative, so the export can be mounted anywhere; -u: the size is
       * given, nothing needs to open the parent now. */
      argv[n++] = "-u";
      argv[n++] = "-b";
      argv[n++] = backing;
      argv[n++] = "-F";
      argv[n++] = "qcow2";
    }
    argv[n++] = b->path;
    argv[n++] = size;
    argv[n] = NULL;
    r = kb_run(argv, &out);
    if (r != 0) {
      *ret_error = kb_printf("disk %s: cannot create %s: %s", b->d->target, b->path,
                             out && *out ? out : "qemu-img failed");
      return -EIO;
    }
    if (chmod(b->path, 0600) < 0)
      return -errno;
  }
  return 0;
}

/* Checkpoint and backup-job XML: built with libxml2 (lib/domxml.c), so
 * no name can add elements. */
static char *checkpoint_xml(struct bk_job *j)
{
  char **targets = calloc(j->disks.n + 1, sizeof *targets);
  bool *bm = calloc(j->disks.n + 1, sizeof *bm);
  char *xml = NULL;
  size_t i, k;

  if (targets && bm) {
    for (i = 0; i < j->disks.n; i++) {
      targets[i] = j->disks.v[i].target;
      for (k = 0; k < j->nbd; k++)
        if (j->bd[k].d == &j->disks.v[i] && j->bd[k].bitmap)
          bm[i] = true;
    }
    if (kb_checkpoint_xml(j->id, targets, bm, j->disks.n, &xml) < 0)
      xml = NULL;
  }
  free(targets);
  free(bm);
  return xml;
}

static char *backup_xml(struct bk_job *j)
{
  struct kb_backupxml_disk *disks = calloc(j->disks.n + 1, sizeof *disks);
  char *xml = NULL;
  size_t i, k;

  if (!disks)
    return NULL;
  for (i = 0; i < j->disks.n; i++) {
    disks[i].target = j->disks.v[i].target;
    for (k = 0; k < j->nbd; k++)
      if (j->bd[k].d == &j->disks.v[i]) {
        disks[i].file = j->bd[k].path;
        disks[i].incremental = j->bd[k].incremental;
      }
  }
  if (kb_backup_job_xml(j->since, disks, j->disks.n, &xml) < 0)
    xml = NULL;
  free(disks);
  return xml;
}

/* ---- records ---- */

/* Which schedule took the backup and that schedule's keep values:
 * kbossctl prune ranks a schedule's backups by the values recorded in its
 * newest one. */
static int record_schedule(struct kb_doc *rec, const struct bk_opts *o)
{
  int r = 0;

  if (!o->schedule)
    return 0;
  r = kb_doc_set(rec, "backup", "schedule", o->schedule);
  for (size_t i = 0; i < 6 && r == 0; i++)
    if (o->keep[i]) {
      CLEANUP_FREE char *key = kb_printf("schedule_keep_%s", kb_retention_field_names[i]);
      r = key ? kb_doc_set_ll(rec, "backup", key, o->keep[i]) : -ENOMEM;
    }
  return r;
}

static int write_running_record(struct bk_job *j)
{
  struct bk_vm *v = j->v;
  char now[32];
  int r;

  kb_format_time(kb_now(), now, sizeof now);
  j->rec = kb_doc_new();
  if (!j->rec)
    return -ENOMEM;
  r = kb_doc_set(j->rec, "backup", "id", j->id);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "vm", v->uuid);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "vm_name", v->name);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "account", kb_config_vm_account(v->cfg, v->name));
  if (r == 0) r = kb_doc_set(j->rec, "backup", "offering", j->off ? j->off->name : NULL);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "zone", j->off && j->off->zone ? j->off->zone : NULL);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "chain", j->chain);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "parent", j->since ? j->parent : NULL);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "since_checkpoint", j->since);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "isolated", j->opts->isolated ? "true" : "false");
  if (r == 0) r = kb_doc_set(j->rec, "backup", "store", j->store);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "state", KB_BACKUP_RUNNING);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "host", kb_hostname());
  if (r == 0) r = kb_doc_set_ll(j->rec, "backup", "pid", getpid());
  if (r == 0) r = kb_doc_set(j->rec, "backup", "started_paused", j->started_paused ? "true" : "false");
  if (r == 0) r = kb_doc_set(j->rec, "backup", "quiesced", j->opts->quiesce ? "true" : "false");
  if (r == 0) r = kb_doc_set(j->rec, "backup", "vm_was_running", j->was_active ? "true" : "false");
  if (r == 0) r = kb_doc_set(j->rec, "backup", "created", now);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "checkpoint", j->opts->isolated ? NULL : j->id);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "compressed", "false");
  if (r == 0) r = kb_doc_set(j->rec, "backup", "validated", "false");
  if (r == 0) r = record_schedule(j->rec, j->opts);
  if (r < 0)
    return r;
  return kb_backup_save(v->cat, v->uuid, j->chain, j->id, j->rec);
}

static int finish_records(struct bk_job *j, uint64_t *ret_total)
{
  struct bk_vm *v = j->v;
  char now[32];
  uint64_t total = 0;
  bool any_full = false;
  size_t i;
  int r = 0;

  kb_format_time(kb_now(), now, sizeof now);
  for (i = 0; i < j->nbd && r == 0; i++) {
    struct bk_disk *b = &j->bd[i];
    CLEANUP_FREE char *sec = kb_printf("disk:%s", b->d->target);
    struct stat st;

    if (!sec || stat(b->path, &st) < 0)
      return -errno ? -errno : -ENOMEM;
    total += (uint64_t) st.st_blocks * 512;
    if (!b->incremental)
      any_full = true;
    r = kb_doc_set(j->rec, sec, "file", b->file);
    if (r == 0) r = kb_doc_set(j->rec, sec, "mode", b->incremental ? "incremental" : "full");
    if (r == 0) r = kb_doc_set_text(j->rec, sec, "reason", b->incremental ? NULL : b->reason);
    if (r == 0) r = kb_doc_set(j->rec, sec, "source", b->d->source);
    if (r == 0) r = kb_doc_set(j->rec, sec, "format", b->d->format);
    if (r == 0) r = kb_doc_set(j->rec, sec, "bus", b->d->bus);
    if (r == 0) r = kb_doc_set_ll(j->rec, sec, "virtual_size", (long long) b->capacity);
    if (r == 0) r = kb_doc_set_ll(j->rec, sec, "size", (long long) st.st_blocks * 512);
    if (r == 0) r = kb_doc_set(j->rec, sec, "backing", b->incremental ? b->file : NULL);
  }
  /* An incremental may hold full copies of some disks; it still has a parent. */
  if (r == 0) r = kb_doc_set(j->rec, "backup", "type", j->since ? "incremental" : "full");
  if (r == 0) r = kb_doc_set(j->rec, "backup", "full_disks", any_full && j->since ? "true" : NULL);
  if (r == 0) r = kb_doc_set_ll(j->rec, "backup", "size", (long long) total);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "completed", now);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "state", KB_BACKUP_READY);
  if (r == 0) r = kb_doc_set(j->rec, "backup", "pid", NULL);
  if (r == 0) r = kb_backup_save(v->cat, v->uuid, j->chain, j->id, j->rec);
  if (r < 0)
    return r;
  j->recorded = true;

  /* The chain, then the VM: after this the backup is the chain's newest. */
  r = kb_chain_add_backup(v->cat, v->uuid, j->chain, j->chain_rec, v->rec, j->id, j->opts->isolated,
                          chain_size(j));
  if (r == 0) r = bk_vm_set_state(v, KB_VM_READY, NULL);
  *ret_total = total;
  return r;
}

/* The backup's own copy of the domain XML and its checkpoint's XML. A push
 * job's checkpoint exists once the job began: they are written while the
 * job runs, and undo() removes them with the backup. */
static int save_job_xml(struct bk_job *j)
{
  struct bk_vm *v = j->v;
  CLEANUP_FREE char *p2 = kb_catalog_backup_domain_path(v->cat, v->uuid, j->chain, j->id);
  CLEANUP_FREE char *p3 = NULL, *cpdir = NULL;
  int r;

  if (j->xml_saved)
    return 0;
  if (!p2)
    return -EINVAL;
  r = kb_meta_write_file(p2, j->inactive_xml, strlen(j->inactive_xml));
  if (r < 0 || j->opts->isolated) {
    j->xml_saved = r == 0;
    return r;
  }
  cpdir = kb_catalog_checkpoints_dir(v->cat, v->uuid);
  if (!cpdir)
    return -EINVAL;
  r = kb_mkdir_p(cpdir, 0700);
  if (r < 0)
    return r;
  {
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(v->dom, j->id, 0);
    CLEANUP_FREE char *xml = cp ? virDomainCheckpointGetXMLDesc(cp, 0) : NULL;
    if (cp)
      virDomainCheckpointFree(cp);
    if (!xml)
      return -EIO;
    p3 = kb_catalog_checkpoint_path(v->cat, v->uuid, j->id);
    if (!p3)
      return -EINVAL;
    j->cp_xml_written = true;
    r = kb_meta_write_file(p3, xml, strlen(xml));
    j->xml_saved = r == 0;
    return r;
  }
}

/* The VM's domain XML as of its newest backup: once the backup is good. */
static int save_vm_xml(struct bk_job *j)
{
  CLEANUP_FREE char *p1 = kb_catalog_vm_domain_path(j->v->cat, j->v->uuid);

  if (!p1)
    return -EINVAL;
  return kb_meta_write_file(p1, j->inactive_xml, strlen(j->inactive_xml));
}

/* Only the newest checkpoint is needed: remove older kboss checkpoints so
 * bitmaps do not pile up on the VM's disks. */
static void prune_checkpoints(struct bk_job *j)
{
  struct bk_vm *v = j->v;
  virDomainCheckpointPtr *cps = NULL;
  const char *keep = kb_doc_get(v->rec, "vm", "last_checkpoint");
  int i, n;

  n = virDomainListAllCheckpoints(v->dom, &cps, 0);
  for (i = 0; i < n; i++) {
    const char *name = virDomainCheckpointGetName(cps[i]);
    if (name && (!keep || !KB_STREQ(name, keep)) && kb_backup_id_ok(name)) {
      CLEANUP_FREE char *n2 = strdup(name);
      CLEANUP_FREE char *xml = n2 ? kb_catalog_checkpoint_path(v->cat, v->uuid, n2) : NULL;
      virDomainCheckpointFree(cps[i]);
      cps[i] = NULL;
      if (n2 && bk_checkpoint_delete(v, n2) == 0 && xml)
        (void) kb_meta_remove_file(xml);
    }
    if (cps[i])
      virDomainCheckpointFree(cps[i]);
  }
  free(cps);
}

/* ---- failure ---- */

static void undo(struct bk_job *j, const char *error)
{
  struct bk_vm *v = j->v;
  bool clean = true;

  if (j->job_begun) {
    virDomainJobInfo info;
    (void) virDomainAbortJob(v->dom);
    for (int k = 0; k < 100; k++) {
      if (virDomainGetJobInfo(v->dom, &info) < 0 || info.type == VIR_DOMAIN_JOB_NONE)
        break;
      usleep(100 * 1000);
    }
  }
  if (j->frozen && bk_thaw(v) < 0) {
    kb_err("VM %s: cannot thaw its filesystems: %s", v->name, kb_virt_error());
    clean = false;
  }
  if (j->job_begun && !j->opts->isolated && bk_checkpoint_delete(v, j->id) < 0) {
    kb_err("VM %s: cannot remove checkpoint %s of the failed backup", v->name, j->id);
    clean = false;
  }
  if (j->cp_xml_written) {
    CLEANUP_FREE char *p3 = kb_catalog_checkpoint_path(v->cat, v->uuid, j->id);
    if (p3)
      (void) kb_meta_remove_file(p3);
  }
  if (j->data_dir && kb_rm_rf(j->data_dir) < 0)
    clean = false;
  if (j->meta_dir && kb_rm_rf(j->meta_dir) < 0)
    clean = false;
  if (j->new_chain && j->chain)
    (void) kb_chain_remove(v->cat, v->uuid, j->chain, j->store, NULL);
  if (j->started_paused && virDomainIsActive(v->dom) == 1 && virDomainDestroy(v->dom) < 0) {
    kb_err("VM %s: cannot stop it again: %s", v->name, kb_virt_error());
    clean = false;
  }
  (void) bk_vm_set_state(v, clean ? KB_VM_READY : KB_VM_BACKUP_ERROR, error);
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
  struct bk_job *j = opaque;
  j->progress.total = total;
  kb_progress_update(&j->progress, done);
}

static void print_result(struct bk_job *j, uint64_t total, int64_t ms)
{
  char sz[32];
  size_t i;

  if (j->opts->json) {
    kb_json_print(kb_doc_to_json(j->rec));
    return;
  }
  kb_format_size(total, sz, sizeof sz);
  printf("Backup %s of VM %s: %s%s, chain %s (%lld of %lld), %s stored on '%s', %.1f s\n", j->id,
         j->v->name, kb_doc_get(j->rec, "backup", "type"), j->opts->isolated ? " (isolated)" : "",
         j->chain, kb_doc_get_ll(j->chain_rec, "chain", "length", 0),
         j->opts->isolated ? 1LL : chain_size(j), sz, j->store, ms / 1000.0);
  for (i = 0; i < j->nbd; i++) {
    CLEANUP_FREE char *sec = kb_printf("disk:%s", j->bd[i].d->target);
    char dsz[32];
    kb_format_size(kb_doc_get_ll(j->rec, sec, "size", 0), dsz, sizeof dsz);
    printf("  %-6s %-11s %10s%s%s%s\n", j->bd[i].d->target, j->bd[i].incremental ? "incremental" : "full", dsz,
           j->bd[i].incremental ? "" : "  (", j->bd[i].incremental ? "" : j->bd[i].reason,
           j->bd[i].incremental ? "" : ")");
  }
}

/* The stopped VM's copy and checkpoint, by offline.c. */
static int run_offline(struct bk_job *j, const char *cpxml, char **ret_error)
{
  struct bk_offline_disk *od = calloc(j->nbd + 1, sizeof *od);
  size_t i;
  int r;

  if (!od)
    return -ENOMEM;
  for (i = 0; i < j->nbd; i++) {
    struct bk_disk *b = &j->bd[i];
    od[i].target = b->d->target;
    od[i].source = b->d->source;
    od[i].format = b->d->format;
    od[i].path = b->path;
    od[i].backing = b->incremental ? b->backing : NULL;
    od[i].since = b->incremental ? j->since : NULL;
    od[i].drop = b->drop_bitmap ? j->since : NULL;
    od[i].bitmap = b->bitmap;
    od[i].capacity = b->capacity;
  }
  kb_progress_start(&j->progress, "backup", 0);
  r = bk_offline_copy(j->v, od, j->nbd, &j->progress, j->opts->bandwidth, ret_error);
  kb_progress_end(&j->progress);
  if (r == 0) {
    j->job_begun = true;   /* from here a checkpoint may exist */
    if (!j->opts->isolated)
      kb_watchdog_note("checkpoint", j->id);
    r = bk_offline_checkpoint(j->v, j->id, j->opts->isolated ? NULL : cpxml, od, j->nbd, ret_error);
  }
  free(od);
  return r;
}

/* Tests: KBOSS_TEST_HOLD_AFTER_FREEZE_MS keeps the guest frozen that long
 * before the job starts, so that a test can kill the run while frozen. */
static void test_hold_after_freeze(void)
{
  const char *env = getenv("KBOSS_TEST_HOLD_AFTER_FREEZE_MS");
  long long ms;

  if (!env || kb_parse_ll(env, &ms) < 0 || ms <= 0)
    return;
  for (; ms > 0 && !bk_cancel; ms -= 50)
    usleep(50 * 1000);
}

int bk_run(struct bk_vm *v, const struct bk_opts *opts, char **ret_error)
{
  struct bk_job j;
  const char *off_name = kb_config_vm_offering(v->cfg, v->name);
  CLEANUP_FREE char *cpxml = NULL, *bxml = NULL, *jerr = NULL, *berr = NULL;
  int64_t t0 = kb_mono_ms();
  uint64_t total = 0;
  int r;

  memset(&j, 0, sizeof j);
  j.v = v;
  j.opts = opts;
  j.off = off_name ? kb_config_offering(v->cfg, off_name) : NULL;
  r = kb_catalog_new_id(j.id, sizeof j.id);
  if (r < 0)
    goto fail_early;

  j.was_active = virDomainIsActive(v->dom) == 1;
  j.inactive_xml = virDomainGetXMLDesc(v->dom, VIR_DOMAIN_XML_INACTIVE);
  if (!j.inactive_xml) {
    *ret_error = kb_printf("VM %s: cannot read its definition: %s", v->name, kb_virt_error());
    r = -EIO;
    goto fail_early;
  }
  r = plan_chain(&j, ret_error);
  if (r < 0)
    goto fail_early;

  /* A stopped VM is backed up without qemu (offline.c); starting it paused
   * for a push job remains for KBOSS_OFFLINE=0. */
  {
    const char *e = getenv("KBOSS_OFFLINE");
    j.offline = !j.was_active && !(e && KB_STREQ(e, "0"));
  }
  if (!j.was_active && !j.offline) {
    if (virDomainCreateWithFlags(v->dom, VIR_DOMAIN_START_PAUSED) < 0) {
      *ret_error = kb_printf("VM %s is stopped and could not be started paused for the backup: %s", v->name,
                             kb_virt_error());
      r = -EIO;
      goto fail_early;
    }
    j.started_paused = true;
    kb_watchdog_note("started-paused", "1");
  }
  j.live_xml = virDomainGetXMLDesc(v->dom, 0);
  if (!j.live_xml) {
    *ret_error = kb_printf("VM %s: cannot read its definition: %s", v->name, kb_virt_error());
    r = -EIO;
    goto fail;
  }
  r = plan_disks(&j, ret_error);
  if (r < 0)
    goto fail;

  r = bk_vm_set_state(v, KB_VM_BACKING_UP, NULL);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot update its catalog record: %s", v->name, strerror(-r));
    goto fail;
  }
  j.meta_dir = kb_catalog_backup_dir(v->cat, v->uuid, j.chain, j.id);
  j.data_dir = kb_catalog_data_dir(v->cat, j.store, v->uuid, j.chain, j.id);
  if (!j.meta_dir || !j.data_dir) {
    r = -ENOMEM;
    goto fail;
  }
  if (j.new_chain) {
    r = kb_chain_save(v->cat, v->uuid, j.chain, j.chain_rec);
    if (r < 0) {
      *ret_error = kb_printf("cannot write the chain record: %s", strerror(-r));
      goto fail;
    }
  }
  r = write_running_record(&j);
  if (r < 0) {
    *ret_error = kb_printf("cannot write the backup record in %s: %s", j.meta_dir, strerror(-r));
    goto fail;
  }
  r = kb_mkdir_p(j.data_dir, 0700);
  if (r == 0)
    r = open_folder_to_qemu(kb_config_store(v->cfg, j.store)->path, j.data_dir);
  if (r < 0) {
    *ret_error = kb_printf("cannot create %s: %s", j.data_dir, strerror(-r));
    goto fail;
  }
  r = create_targets(&j, ret_error);
  if (r < 0)
    goto fail;
  cpxml = opts->isolated ? NULL : checkpoint_xml(&j);
  bxml = backup_xml(&j);
  if ((!opts->isolated && !cpxml) || !bxml) {
    r = -ENOMEM;
    goto fail;
  }

  if (opts->quiesce && !j.offline) {
    /* Recorded as this run's before the agent freezes: only such a freeze
     * is ever thawed by kboss. */
    r = bk_freeze(v, j.id, ret_error);
    if (r < 0)
      goto fail;
    j.frozen = true;
    test_hold_after_freeze();
  }
  if (j.offline) {
    r = run_offline(&j, cpxml, ret_error);
    if (r < 0)
      goto fail;
    goto copied;
  }
  j.job_begun = true;   /* from here a checkpoint may exist */
  kb_watchdog_note("job", "1");
  if (!opts->isolated)
    kb_watchdog_note("checkpoint", j.id);
  bk_vm_forget_nodes(v);   /* the job adds a bitmap */
  r = virDomainBackupBegin(v->dom, bxml, cpxml, VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL);
  if (r < 0)
    berr = strdup(kb_virt_error());   /* before the thaw resets it */
  if (j.frozen) {
    /* Thaw at once: the job has its point in time. */
    if (bk_thaw(v) < 0)
      kb_err("VM %s: cannot thaw its filesystems: %s", v->name, kb_virt_error());
    else
      j.frozen = false;
  }
  if (r < 0) {
    size_t i;
    const struct kb_store *s = kb_config_store(v->cfg, j.store);
    CLEANUP_FREE char *hint = NULL;
    for (i = 0; i < j.nbd && !hint && s; i++)
      hint = bk_explain_unseen_target(v, j.bd[i].path, s->name, s->path);
    if (hint)
      *ret_error = kb_printf("%s (libvirt: %s)", hint, berr ? berr : "?");
    else
      *ret_error = kb_printf("VM %s: the backup job did not start: %s", v->name, berr ? berr : "?");
    r = -EIO;
    goto fail;
  }
  if (opts->bandwidth && kb_virt_backup_set_speed(v->dom, (unsigned long long) opts->bandwidth << 20) < 0)
    kb_warn("VM %s: cannot limit the backup job to %lu MiB/s: %s", v->name, opts->bandwidth, kb_virt_error());
  /* While the job copies: the XML files need only its checkpoint. */
  r = save_job_xml(&j);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot save the domain and checkpoint XML: %s", v->name, strerror(-r));
    goto fail;
  }
  kb_progress_start(&j.progress, "backup", 0);
  r = kb_virt_wait_job(v->dom, &bk_cancel, on_progress, &j, &jerr);
  kb_progress_end(&j.progress);
  if (r == 0)
    kb_watchdog_note("job", NULL);
  if (r < 0) {
    *ret_error = r == -EINTR ? kb_printf("VM %s: backup interrupted", v->name)
                             : kb_printf("VM %s: the backup job failed: %s", v->name, jerr ? jerr : "?");
    goto fail;
  }
  if (j.frozen) {
    r = -EIO;
    *ret_error = kb_printf("VM %s: its filesystems could not be thawed", v->name);
    goto fail;
  }
copied:
  r = save_job_xml(&j);
  if (r == 0)
    r = save_vm_xml(&j);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot save the domain and checkpoint XML: %s", v->name, strerror(-r));
    goto fail;
  }
  r = finish_records(&j, &total);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot record the backup: %s", v->name, strerror(-r));
    goto fail;
  }
  kb_watchdog_note("checkpoint", NULL);   /* recorded: it stays */
  if (!opts->isolated)
    prune_checkpoints(&j);
  if (j.started_paused && virDomainDestroyFlags(v->dom, VIR_DOMAIN_DESTROY_GRACEFUL) < 0 &&
      virDomainDestroy(v->dom) < 0)
    kb_warn("VM %s: cannot stop it again after the backup: %s", v->name, kb_virt_error());

  /* Asynchronous work the offering asks for. */
  if (j.off && (j.off->compress || j.off->validate)) {
    struct kb_backup_ref ref = { v->uuid, j.chain, j.id, j.rec };
    if (j.off->compress && kb_job_queue(v->cat, KB_JOB_COMPRESSION, &ref, kb_now(), NULL) < 0)
      kb_warn("backup %s: cannot queue its compression job", j.id);
    if (j.off->validate && kb_job_queue(v->cat, KB_JOB_VALIDATION, &ref, kb_now(), NULL) < 0)
      kb_warn("backup %s: cannot queue its validation job", j.id);
  }
  print_result(&j, total, kb_mono_ms() - t0);
  job_clear(&j);
  return 0;

fail:
  if (!*ret_error)
    *ret_error = kb_printf("VM %s: backup failed: %s", v->name, strerror(-r));
  undo(&j, *ret_error);
  job_clear(&j);
  return r;
fail_early:
  if (!*ret_error)
    *ret_error = kb_printf("VM %s: backup failed: %s", v->name, strerror(-r));
  (void) bk_vm_set_state(v, KB_VM_READY, *ret_error);
  job_clear(&j);
  return r;
}
