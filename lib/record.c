#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lock.h"
#include "record.h"
#include "util.h"

int kb_vm_load(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc **ret)
{
  CLEANUP_FREE char *dir = kb_catalog_vm_dir(cat, vm_uuid);

  if (!dir)
    return -EINVAL;
  return kb_meta_read(dir, "vm", ret);
}

int kb_vm_save(const struct kb_catalog *cat, const char *vm_uuid, const struct kb_doc *doc)
{
  CLEANUP_FREE char *dir = kb_catalog_vm_dir(cat, vm_uuid);
  int r;

  if (!dir)
    return -EINVAL;
  r = kb_mkdir_p(dir, 0700);
  if (r < 0)
    return r;
  return kb_meta_write(dir, "vm", doc);
}

int kb_chain_load(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                  struct kb_doc **ret)
{
  CLEANUP_FREE char *dir = kb_catalog_chain_dir(cat, vm_uuid, chain);

  if (!dir)
    return -EINVAL;
  return kb_meta_read(dir, "chain", ret);
}

int kb_chain_save(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                  const struct kb_doc *doc)
{
  CLEANUP_FREE char *dir = kb_catalog_chain_dir(cat, vm_uuid, chain);
  int r;

  if (!dir)
    return -EINVAL;
  r = kb_mkdir_p(dir, 0700);
  if (r < 0)
    return r;
  return kb_meta_write(dir, "chain", doc);
}

int kb_backup_load(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                   const char *backup, struct kb_doc **ret)
{
  CLEANUP_FREE char *dir = kb_catalog_backup_dir(cat, vm_uuid, chain, backup);

  if (!dir)
    return -EINVAL;
  return kb_meta_read(dir, "backup", ret);
}

int kb_backup_save(const struct kb_catalog *cat, const char *vm_uuid, const char *chain,
                   const char *backup, const struct kb_doc *doc)
{
  CLEANUP_FREE char *dir = kb_catalog_backup_dir(cat, vm_uuid, chain, backup);
  int r;

  if (!dir)
    return -EINVAL;
  r = kb_mkdir_p(dir, 0700);
  if (r < 0)
    return r;
  return kb_meta_write(dir, "backup", doc);
}

int kb_vm_set_state(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec,
                    const char *state, const char *error)
{
  char now[32];
  int r;

  kb_format_time(kb_now(), now, sizeof now);
  r = kb_doc_set(rec, "vm", "state", state);
  if (r == 0)
    r = kb_doc_set_text(rec, "vm", "last_error", error);
  if (r == 0)
    r = kb_doc_set(rec, "vm", "updated", now);
  if (r == 0)
    r = kb_vm_save(cat, vm_uuid, rec);
  return r;
}

int kb_chain_end(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec,
                 const char *reason)
{
  const char *cur = kb_doc_get(rec, "vm", "current_chain");
  struct kb_doc *chain = NULL;
  int r = 0;

  if (cur && *cur) {
    r = kb_chain_load(cat, vm_uuid, cur, &chain);
    if (r == 0) {
      r = kb_doc_set(chain, "chain", "ended", "true");
      if (r == 0)
        r = kb_doc_set_text(chain, "chain", "end_reason", reason);
      if (r == 0)
        r = kb_chain_save(cat, vm_uuid, cur, chain);
      kb_doc_free(chain);
    } else if (r == -ENOENT)
      r = 0;
  }
  if (r == 0)
    r = kb_doc_set(rec, "vm", "current_chain", NULL);
  if (r == 0)
    r = kb_doc_set(rec, "vm", "last_checkpoint", NULL);
  if (r == 0)
    r = kb_vm_save(cat, vm_uuid, rec);
  return r;
}

void kb_backup_ref_clear(struct kb_backup_ref *ref)
{
  free(ref->vm_uuid);
  free(ref->chain);
  free(ref->id);
  kb_doc_free(ref->doc);
  memset(ref, 0, sizeof *ref);
}

int kb_backup_find(const struct kb_catalog *cat, const char *backup_id, struct kb_backup_ref *ret)
{
  struct kb_backup_ref ref = { NULL, NULL, NULL, NULL };
  int r;

  if (!kb_name_ok(backup_id))
    return -EINVAL;
  r = kb_catalog_find_backup(cat, backup_id, &ref.vm_uuid, &ref.chain);
  if (r < 0)
    return r;
  ref.id = strdup(backup_id);
  if (!ref.id) {
    kb_backup_ref_clear(&ref);
    return -ENOMEM;
  }
  r = kb_backup_load(cat, ref.vm_uuid, ref.chain, ref.id, &ref.doc);
  if (r < 0) {
    kb_backup_ref_clear(&ref);
    return r;
  }
  *ret = ref;
  return 0;
}

char *kb_backup_data_dir(const struct kb_catalog *cat, const struct kb_backup_ref *ref)
{
  const char *store = kb_doc_get(ref->doc, "backup", "store");

  if (!store)
    return NULL;
  return kb_catalog_data_dir(cat, store, ref->vm_uuid, ref->chain, ref->id);
}

char *kb_backup_disk_path(const struct kb_catalog *cat, const struct kb_backup_ref *ref,
                          const char *disk)
{
  CLEANUP_FREE char *section = kb_printf("disk:%s", disk);
  CLEANUP_FREE char *dir = NULL;
  const char *file;

  if (!section || !kb_name_ok(disk))
    return NULL;
  file = kb_doc_get(ref->doc, section, "file");
  if (!file || !kb_name_ok(file))
    return NULL;
  dir = kb_backup_data_dir(cat, ref);
  if (!dir)
    return NULL;
  return kb_printf("%s/%s", dir, file);
}

int kb_backup_lineage(const struct kb_catalog *cat, const struct kb_backup_ref *ref, char ***ret_ids)
{
  char **v = NULL;
  size_t n = 0;
  CLEANUP_FREE char *cur = strdup(ref->id);
  int r = 0;

  if (!cur)
    return -ENOMEM;
  /* Walk parent links back to the full; a chain is short (tens). */
  for (;;) {
    struct kb_doc *doc = NULL;
    const char *parent;
    char **nv;

    if (n > 10000) {
      r = -ELOOP;
      break;
    }
    nv = realloc(v, (n + 2) * sizeof *v);
    if (!nv) {
      r = -ENOMEM;
      break;
    }
    v = nv;
    v[n++] = strdup(cur);
    v[n] = NULL;
    if (KB_STREQ(cur, ref->id))
      doc = NULL;
    else {
      r = kb_backup_load(cat, ref->vm_uuid, ref->chain, cur, &doc);
      if (r < 0)
        break;
    }
    parent = kb_doc_get(doc ? doc : ref->doc, "backup", "parent");
    if (!parent || !*parent) {
      kb_doc_free(doc);
      break;
    }
    if (!kb_name_ok(parent)) {
      kb_doc_free(doc);
      r = -EINVAL;
      break;
    }
    free(cur);
    cur = strdup(parent);
    kb_doc_free(doc);
    if (!cur) {
      r = -ENOMEM;
      break;
    }
  }
  if (r < 0) {
    kb_strv_free(v);
    return r;
  }
  /* Reverse: oldest first. */
  for (size_t i = 0; i < n / 2; i++) {
    char *t = v[i];
    v[i] = v[n - 1 - i];
    v[n - 1 - i] = t;
  }
  *ret_ids = v;
  return 0;
}

int kb_backup_disks(const struct kb_doc *backup, char ***ret)
{
  char **v = NULL;
  size_t n = 0;
  const char *s;
  unsigned i;

  for (i = 0; (s = kb_doc_section_name(backup, i)); i++) {
    char **nv;
    if (strncmp(s, "disk:", 5) != 0)
      continue;
    nv = realloc(v, (n + 2) * sizeof *v);
    if (!nv) {
      kb_strv_free(v);
      return -ENOMEM;
    }
    v = nv;
    v[n++] = strdup(s + 5);
    v[n] = NULL;
  }
  if (!v) {
    v = calloc(1, sizeof *v);
    if (!v)
      return -ENOMEM;
  }
  *ret = v;
  return 0;
}

/* ---- jobs ---- */

int kb_job_load(const struct kb_catalog *cat, const char *job_id, struct kb_doc **ret)
{
  CLEANUP_FREE char *dir = kb_catalog_jobs_dir(cat);

  if (!dir || !kb_name_ok(job_id))
    return -EINVAL;
  return kb_meta_read(dir, job_id, ret);
}

int kb_job_save(const struct kb_catalog *cat, const char *job_id, const struct kb_doc *doc)
{
  CLEANUP_FREE char *dir = kb_catalog_jobs_dir(cat);

  if (!dir || !kb_name_ok(job_id))
    return -EINVAL;
  return kb_meta_write(dir, job_id, doc);
}

int kb_job_remove(const struct kb_catalog *cat, const char *job_id)
{
  CLEANUP_FREE char *dir = kb_catalog_jobs_dir(cat);

  if (!dir || !kb_name_ok(job_id))
    return -EINVAL;
  return kb_meta_remove(dir, job_id);
}

int kb_job_queue(const struct kb_catalog *cat, const char *type, const struct kb_backup_ref *ref,
                 int64_t due, char **ret_id)
{
  CLEANUP_FREE char *id = kb_printf("%s-%s", type, ref->id);
  struct kb_doc *doc = NULL;
  char now[32];
  int r;

  if (!id)
    return -ENOMEM;
  r = kb_job_load(cat, id, &doc);
  if (r == 0) {
    const char *st = kb_doc_get(doc, "job", "state");
    if (st && (KB_STREQ(st, KB_JOB_SCHEDULED) || KB_STREQ(st, KB_JOB_EXECUTING))) {
      kb_doc_free(doc);
      goto done;
    }
  } else if (r != -ENOENT)
    return r;
  else if (!(doc = kb_doc_new()))
    return -ENOMEM;
  kb_format_time(kb_now(), now, sizeof now);
  r = kb_doc_set(doc, "job", "id", id);
  if (r == 0) r = kb_doc_set(doc, "job", "type", type);
  if (r == 0) r = kb_doc_set(doc, "job", "backup", ref->id);
  if (r == 0) r = kb_doc_set(doc, "job", "vm", ref->vm_uuid);
  if (r == 0) r = kb_doc_set(doc, "job", "vm_name", kb_doc_get(ref->doc, "backup", "vm_name"));
  if (r == 0) r = kb_doc_set(doc, "job", "zone", kb_doc_get(ref->doc, "backup", "zone"));
  if (r == 0) r = kb_doc_set(doc, "job", "state", KB_JOB_SCHEDULED);
  if (r == 0) r = kb_doc_set_ll(doc, "job", "attempts", 0);
  if (r == 0) r = kb_doc_set_ll(doc, "job", "next_attempt", due);
  if (r == 0) r = kb_doc_set(doc, "job", "created", now);
  if (r == 0) r = kb_doc_set(doc, "job", "host", NULL);
  if (r == 0) r = kb_doc_set(doc, "job", "last_error", NULL);
  if (r == 0) r = kb_job_save(cat, id, doc);
  kb_doc_free(doc);
  if (r < 0)
    return r;
done:
  if (ret_id)
    *ret_id = strdup(id);
  return 0;
}

int kb_job_list(const struct kb_catalog *cat, char ***ret_ids)
{
  CLEANUP_FREE char *dir = kb_catalog_jobs_dir(cat);
  int r;

  if (!dir)
    return -EINVAL;
  r = kb_meta_list(dir, ret_ids);
  if (r == -ENOENT) {
    *ret_ids = calloc(1, sizeof **ret_ids);
    return *ret_ids ? 0 : -ENOMEM;
  }
  return r;
}

/* ---- kboss's own guest freeze ---- */

#define FREEZE_SECTION "freeze"

int kb_vm_mark_frozen(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec,
                      const char *by)
{
  unsigned long long start = 0;
  char now[32], st[32];
  int r;

  r = kb_proc_start_time(getpid(), &start);
  if (r < 0)
    return r;
  kb_format_time(kb_now(), now, sizeof now);
  snprintf(st, sizeof st, "%llu", start);
  (void) kb_doc_remove_section(rec, FREEZE_SECTION);
  r = kb_doc_set(rec, FREEZE_SECTION, "host", kb_hostname());
  if (r == 0) r = kb_doc_set(rec, FREEZE_SECTION, "machine_id", kb_machine_id());
  if (r == 0) r = kb_doc_set(rec, FREEZE_SECTION, "boot_id", kb_boot_id());
  if (r == 0) r = kb_doc_set(rec, FREEZE_SECTION, "pid_ns", kb_pid_ns());
  if (r == 0) r = kb_doc_set_ll(rec, FREEZE_SECTION, "pid", getpid());
  if (r == 0) r = kb_doc_set(rec, FREEZE_SECTION, "start_time", st);
  if (r == 0) r = kb_doc_set(rec, FREEZE_SECTION, "by", by);
  if (r == 0) r = kb_doc_set(rec, FREEZE_SECTION, "since", now);
  if (r == 0) r = kb_vm_save(cat, vm_uuid, rec);
  if (r < 0)
    (void) kb_doc_remove_section(rec, FREEZE_SECTION);
  return r;
}

int kb_vm_clear_frozen(const struct kb_catalog *cat, const char *vm_uuid, struct kb_doc *rec)
{
  if (!kb_doc_get(rec, FREEZE_SECTION, "pid"))
    return 0;
  (void) kb_doc_remove_section(rec, FREEZE_SECTION);
  return kb_vm_save(cat, vm_uuid, rec);
}

int kb_vm_frozen_by(const struct kb_doc *rec, struct kb_freeze *ret)
{
  const char *st = kb_doc_get(rec, FREEZE_SECTION, "start_time");
  struct kb_freeze f;

  memset(&f, 0, sizeof f);
  f.pid = kb_doc_get_ll(rec, FREEZE_SECTION, "pid", -1);
  if (f.pid < 0)
    return -ENOENT;
  f.host = kb_doc_get(rec, FREEZE_SECTION, "host");
  f.machine_id = kb_doc_get(rec, FREEZE_SECTION, "machine_id");
  f.boot_id = kb_doc_get(rec, FREEZE_SECTION, "boot_id");
  f.pid_ns = kb_doc_get(rec, FREEZE_SECTION, "pid_ns");
  f.by = kb_doc_get(rec, FREEZE_SECTION, "by");
  f.since = kb_doc_get(rec, FREEZE_SECTION, "since");
  if (st)
    f.start_time = strtoull(st, NULL, 10);
  *ret = f;
  return 0;
}

enum kb_freeze_owner kb_vm_freeze_owner(const struct kb_doc *rec, char **ret_desc)
{
  struct kb_freeze f;
  unsigned long long start = 0;
  int alive;

  if (ret_desc)
    *ret_desc = NULL;
  if (kb_vm_frozen_by(rec, &f) < 0)
    return KB_FREEZE_NONE;
  if (ret_desc)
    *ret_desc = kb_printf("backup %s, pid %lld on %s, since %s", f.by ? f.by : "?", f.pid,
                          f.host ? f.host : "?", f.since ? f.since : "?");
  alive = kb_proc_alive(f.host, f.machine_id, f.boot_id, f.pid_ns, f.pid, f.start_time);
  if (alive == -EREMOTE)
    return KB_FREEZE_REMOTE;
  if (alive == 0)
    return KB_FREEZE_GONE;
  if (f.pid == getpid() && kb_proc_start_time(f.pid, &start) == 0 && start == f.start_time)
    return KB_FREEZE_SELF;
  return KB_FREEZE_LIVE;
}
