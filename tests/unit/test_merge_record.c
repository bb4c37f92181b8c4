/* The record transitions of prune's merge forward (lib/record-change.c):
 * the intent, what a finished merge records, and which saved checkpoint
 * XML prune removes. */
#include <config.h>

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "catalog.h"
#include "record.h"
#include "store.h"
#include "util.h"

#define VM1 "6a1f4c2e-9b3d-4e5f-8a7b-1c2d3e4f5a6b"
#define ID1 "20261201T000001Z-a1b2c3"
#define ID2 "20261201T000002Z-a1b2c3"
#define ID3 "20261201T000003Z-a1b2c3"
#define ID4 "20261201T000004Z-a1b2c3"

static char tmpdir[64];
static struct kb_catalog *cat;
static struct kb_doc *b;
static char *disks[] = { "vda", "vdb", NULL };

static void setup(void)
{
  char secondary[128];

  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-merge-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  snprintf(secondary, sizeof secondary, "%s/secondary", tmpdir);
  cr_assert_eq(mkdir(secondary, 0755), 0);
  cr_assert_eq(kb_store_init(secondary, NULL), 0);
  cr_assert_eq(kb_catalog_open_at(secondary, NULL, 0, &cat), 0);
  b = kb_doc_new();
  cr_assert_not_null(b);
  cr_assert_eq(kb_doc_set(b, "backup", "type", "incremental"), 0);
  cr_assert_eq(kb_doc_set(b, "backup", "parent", ID2), 0);
  cr_assert_eq(kb_doc_set(b, "backup", "since_checkpoint", ID2), 0);
  for (size_t i = 0; disks[i]; i++) {
    char sec[16];
    snprintf(sec, sizeof sec, "disk:%s", disks[i]);
    cr_assert_eq(kb_doc_set(b, sec, "mode", "incremental"), 0);
    cr_assert_eq(kb_doc_set(b, sec, "backing", "x"), 0);
    cr_assert_eq(kb_doc_set(b, sec, "hash", i ? "old1" : "old0"), 0);
    cr_assert_eq(kb_doc_set_ll(b, sec, "size", 10), 0);
  }
}

static void teardown(void)
{
  kb_doc_free(b);
  kb_catalog_free(cat);
  kb_rm_rf(tmpdir);
}

TestSuite(merge_record, .init = setup, .fini = teardown, .timeout = 30);

static void intent(void)
{
  const char *merged[] = { ID1, ID2, NULL };
  char *hashes[] = { "new0", "new1", NULL };

  cr_assert_eq(kb_backup_merge_intent(b, merged, disks, hashes), 0);
}

Test(merge_record, intent_records_the_merged_ids_and_new_hashes)
{
  cr_assert_not(kb_backup_merge_pending(b));
  intent();
  cr_assert(kb_backup_merge_pending(b));
  cr_assert_str_eq(kb_doc_get(b, "backup", "merge"), ID1 " " ID2);
  cr_assert_str_eq(kb_doc_get(b, "disk:vda", "hash_new"), "new0");
  cr_assert_str_eq(kb_doc_get(b, "disk:vda", "hash"), "old0", "the old hash stays until the end");
  cr_assert_str_eq(kb_doc_get(b, "backup", "parent"), ID2);
}

Test(merge_record, done_makes_a_full_with_the_new_hashes)
{
  bool done[] = { true, true };
  long long sizes[] = { 100, 200 };

  intent();
  cr_assert_eq(kb_backup_merge_done(b, disks, done, sizes, true), 0);
  cr_assert_not(kb_backup_merge_pending(b));
  cr_assert_str_eq(kb_doc_get(b, "backup", "type"), "full");
  cr_assert_null(kb_doc_get(b, "backup", "parent"));
  cr_assert_null(kb_doc_get(b, "backup", "since_checkpoint"));
  cr_assert_str_eq(kb_doc_get(b, "backup", "merged_from"), ID1 " " ID2);
  cr_assert_str_eq(kb_doc_get(b, "disk:vda", "hash"), "new0");
  cr_assert_str_eq(kb_doc_get(b, "disk:vdb", "hash"), "new1");
  cr_assert_null(kb_doc_get(b, "disk:vda", "hash_new"));
  cr_assert_str_eq(kb_doc_get(b, "disk:vdb", "mode"), "full");
  cr_assert_null(kb_doc_get(b, "disk:vdb", "backing"));
  cr_assert_eq(kb_doc_get_ll(b, "backup", "size", 0), 300);
}

Test(merge_record, a_partial_end_keeps_the_parent)
{
  bool done[] = { true, false };
  long long sizes[] = { 100, 10 };

  intent();
  cr_assert_eq(kb_backup_merge_done(b, disks, done, sizes, false), 0);
  cr_assert_not(kb_backup_merge_pending(b));
  cr_assert_str_eq(kb_doc_get(b, "backup", "type"), "incremental");
  cr_assert_str_eq(kb_doc_get(b, "backup", "parent"), ID2);
  cr_assert_str_eq(kb_doc_get(b, "backup", "full_disks"), "true");
  cr_assert_str_eq(kb_doc_get(b, "disk:vda", "hash"), "new0");
  cr_assert_str_eq(kb_doc_get(b, "disk:vdb", "hash"), "old1", "a disk not swapped keeps its hash");
  cr_assert_null(kb_doc_get(b, "disk:vdb", "hash_new"));
  cr_assert_str_eq(kb_doc_get(b, "disk:vdb", "mode"), "incremental");
  cr_assert_eq(kb_doc_get_ll(b, "backup", "size", 0), 110);
}

static bool has_xml(const char *id)
{
  char *path = kb_catalog_checkpoint_path(cat, VM1, id), *text = NULL;
  int r;

  cr_assert_not_null(path);
  r = kb_meta_read_file(path, &text, NULL);
  free(path);
  free(text);
  return r == 0;
}

Test(merge_record, checkpoint_xml_of_removed_and_vanished_backups_goes)
{
  struct kb_doc *vm = kb_doc_new(), *rec = kb_doc_new();
  const char *ids[] = { ID1, ID2, ID3, ID4 };
  const char *removed[] = { ID2, NULL };

  cr_assert_eq(kb_doc_set(vm, "vm", "last_checkpoint", ID3), 0);
  cr_assert_eq(kb_vm_save(cat, VM1, vm), 0);
  /* ID3 and ID4 are backups in the catalog; ID2 was just removed, ID1 long ago. */
  cr_assert_eq(kb_doc_set(rec, "backup", "state", "Ready"), 0);
  cr_assert_eq(kb_backup_save(cat, VM1, ID3, ID3, rec), 0);
  cr_assert_eq(kb_backup_save(cat, VM1, ID3, ID4, rec), 0);
  {
    char *cpd = kb_catalog_checkpoints_dir(cat, VM1);
    cr_assert_eq(kb_catalog_mkdirs(cat, cpd), 0);
    free(cpd);
  }
  for (size_t i = 0; i < 4; i++) {
    char *path = kb_catalog_checkpoint_path(cat, VM1, ids[i]);
    cr_assert_eq(kb_meta_write_file(path, "<domaincheckpoint/>", 19), 0);
    free(path);
  }
  cr_assert_eq(kb_vm_forget_checkpoints(cat, VM1, removed, NULL), 2);
  cr_assert_not(has_xml(ID1), "left by a backup no longer in the catalog");
  cr_assert_not(has_xml(ID2), "of the removed backup");
  cr_assert(has_xml(ID3), "the VM's last checkpoint stays");
  cr_assert(has_xml(ID4), "a backup in the catalog keeps its XML");
  kb_doc_free(vm);
  kb_doc_free(rec);
}
