/* Test helper: synthetic catalog entries for tests that need many backups
 * faster than real ones can be taken (the files they hold are real qcow2
 * images; only the way they got there is skipped).
 *
 *   catalog-tool fake-backup VM_NAME OFFERING IMAGE [DISK]
 *       a Ready full backup of a made-up VM holding a copy of IMAGE as DISK
 *       (vda), with a queued compression job; prints "ID DATA_FILE"
 *   catalog-tool set-backup ID KEY VALUE   ([backup] KEY; VALUE "-" removes)
 *   catalog-tool set-job JOB KEY VALUE     ([job] KEY; VALUE "-" removes)
 *   catalog-tool queue-job TYPE ID         queue a job (compression, validation,
 *                                          hash) of backup ID, due now
 *   catalog-tool hash-record ID            record the hashes of backup ID's files
 *                                          (as a first successful validation does)
 *
 * Uses $KBOSS_CONF. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bkhash.h"
#include "catalog.h"
#include "kbconfig.h"
#include "record.h"
#include "util.h"

static int copy_file(const char *from, const char *to)
{
  CLEANUP_CLOSE int in = open(from, O_RDONLY | O_CLOEXEC);
  CLEANUP_CLOSE int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  static char buf[1 << 16];
  ssize_t n;

  if (in < 0 || out < 0)
    return -errno;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (kb_write_all(out, buf, (size_t) n) < 0)
      return -errno;
  return n < 0 ? -errno : 0;
}

static int fake_backup(struct kb_catalog *cat, const char *vm_name, const char *offering,
                       const char *image, const char *disk)
{
  char uuid[37], hex[33], chain[64], id[64], now[32];
  CLEANUP_FREE char *data = NULL, *file = NULL, *sec = NULL, *vmdir = NULL, *cdir = NULL;
  struct kb_doc *b = kb_doc_new(), *vm = kb_doc_new();
  struct kb_backup_ref ref;
  struct stat st;
  int r;

  if (!b || !vm || kb_random_hex(hex, 16) < 0)
    return -ENOMEM;
  snprintf(uuid, sizeof uuid, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
  if (kb_catalog_new_id(chain, sizeof chain) < 0 || kb_catalog_new_id(id, sizeof id) < 0)
    return -EIO;
  kb_format_time(kb_now(), now, sizeof now);
  (void) kb_doc_set(vm, "vm", "name", vm_name);
  (void) kb_doc_set(vm, "vm", "uuid", uuid);
  (void) kb_doc_set(vm, "vm", "state", KB_VM_READY);
  vmdir = kb_catalog_vm_dir(cat, uuid);
  cdir = kb_catalog_chain_dir(cat, uuid, chain);
  data = kb_catalog_data_dir(cat, "default", uuid, chain, id);
  file = kb_printf("%s/%s.qcow2", data ? data : "", disk);
  sec = kb_printf("disk:%s", disk);
  if (!vmdir || !cdir || !data || !file || !sec)
    return -ENOMEM;
  if ((r = kb_catalog_mkdirs(cat, vmdir)) < 0 || (r = kb_vm_save(cat, uuid, vm)) < 0 ||
      (r = kb_catalog_mkdirs(cat, cdir)) < 0 || (r = kb_catalog_mkdirs(cat, data)) < 0)
    return r;
  if ((r = copy_file(image, file)) < 0 || stat(file, &st) < 0)
    return r < 0 ? r : -errno;
  (void) kb_doc_set(b, "backup", "id", id);
  (void) kb_doc_set(b, "backup", "vm", uuid);
  (void) kb_doc_set(b, "backup", "vm_name", vm_name);
  (void) kb_doc_set(b, "backup", "offering", offering);
  (void) kb_doc_set(b, "backup", "chain", chain);
  (void) kb_doc_set(b, "backup", "type", "full");
  (void) kb_doc_set(b, "backup", "isolated", "true");
  (void) kb_doc_set(b, "backup", "store", "default");
  (void) kb_doc_set(b, "backup", "state", KB_BACKUP_READY);
  (void) kb_doc_set(b, "backup", "created", now);
  (void) kb_doc_set(b, "backup", "completed", now);
  (void) kb_doc_set(b, "backup", "compressed", "false");
  (void) kb_doc_set(b, "backup", "validated", "false");
  (void) kb_doc_set_ll(b, "backup", "size", (long long) st.st_blocks * 512);
  (void) kb_doc_set(b, sec, "file", strrchr(file, '/') + 1);
  (void) kb_doc_set(b, sec, "mode", "full");
  (void) kb_doc_set(b, sec, "format", "qcow2");
  (void) kb_doc_set_ll(b, sec, "size", (long long) st.st_blocks * 512);
  if ((r = kb_backup_save(cat, uuid, chain, id, b)) < 0)
    return r;
  ref.vm_uuid = uuid;
  ref.chain = chain;
  ref.id = id;
  ref.doc = b;
  if ((r = kb_job_queue(cat, KB_JOB_COMPRESSION, &ref, kb_now(), NULL)) < 0)
    return r;
  printf("%s %s\n", id, file);
  kb_doc_free(b);
  kb_doc_free(vm);
  return 0;
}

static int set_backup(struct kb_catalog *cat, const char *id, const char *key, const char *value)
{
  struct kb_backup_ref ref;
  int r = kb_backup_find(cat, id, &ref);

  if (r < 0)
    return r;
  r = kb_doc_set(ref.doc, "backup", key, KB_STREQ(value, "-") ? NULL : value);
  if (r == 0)
    r = kb_backup_save(cat, ref.vm_uuid, ref.chain, ref.id, ref.doc);
  kb_backup_ref_clear(&ref);
  return r;
}

static int set_job(struct kb_catalog *cat, const char *id, const char *key, const char *value)
{
  struct kb_doc *doc = NULL;
  int r = kb_job_load(cat, id, &doc);

  if (r < 0)
    return r;
  r = kb_doc_set(doc, "job", key, KB_STREQ(value, "-") ? NULL : value);
  if (r == 0)
    r = kb_job_save(cat, id, doc);
  kb_doc_free(doc);
  return r;
}

static int queue_job(struct kb_catalog *cat, const char *type, const char *id)
{
  struct kb_backup_ref ref;
  int r = kb_backup_find(cat, id, &ref);

  if (r < 0)
    return r;
  r = kb_job_queue(cat, type, &ref, kb_now(), NULL);
  kb_backup_ref_clear(&ref);
  return r;
}

static int hash_record(struct kb_catalog *cat, const char *id)
{
  struct kb_backup_ref ref;
  char *err = NULL;
  int r = kb_backup_find(cat, id, &ref);

  if (r < 0)
    return r;
  r = kb_backup_hash_record(cat, &ref, &err);
  if (r < 0)
    fprintf(stderr, "catalog-tool: %s\n", err ? err : strerror(-r));
  free(err);
  kb_backup_ref_clear(&ref);
  return r;
}

int main(int argc, char **argv)
{
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  char *errors = NULL;
  int r;

  if (argc < 2) {
    fprintf(stderr, "usage: catalog-tool fake-backup|set-backup|set-job|queue-job|hash-record ARGS...\n");
    return 2;
  }
  r = kb_config_load(NULL, &cfg, &errors);
  if (r < 0) {
    fprintf(stderr, "catalog-tool: configuration: %s\n", errors ? errors : strerror(-r));
    return 2;
  }
  r = kb_catalog_open(cfg, &cat);
  if (r < 0) {
    fprintf(stderr, "catalog-tool: catalog: %s\n", strerror(-r));
    return 1;
  }
  if (KB_STREQ(argv[1], "fake-backup") && (argc == 5 || argc == 6))
    r = fake_backup(cat, argv[2], argv[3], argv[4], argc == 6 ? argv[5] : "vda");
  else if (KB_STREQ(argv[1], "set-backup") && argc == 5)
    r = set_backup(cat, argv[2], argv[3], argv[4]);
  else if (KB_STREQ(argv[1], "queue-job") && argc == 4)
    r = queue_job(cat, argv[2], argv[3]);
  else if (KB_STREQ(argv[1], "hash-record") && argc == 3)
    r = hash_record(cat, argv[2]);
  else if (KB_STREQ(argv[1], "set-job") && argc == 5)
    r = set_job(cat, argv[2], argv[3], argv[4]);
  else {
    fprintf(stderr, "catalog-tool: bad arguments\n");
    r = -EINVAL;
  }
  if (r < 0)
    fprintf(stderr, "catalog-tool: %s: %s\n", argv[1], strerror(-r));
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return r < 0 ? 1 : 0;
}
