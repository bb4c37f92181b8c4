/* The record of a guest freeze kboss made (vm.ini [freeze]): who made it
 * and whether that process still lives decide whether kboss may thaw. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "kbconfig.h"
#include "lock.h"
#include "record.h"
#include "store.h"
#include "util.h"

#define VM1 "6a1f4c2e-9b3d-4e5f-8a7b-1c2d3e4f5a6b"

static char tmpdir[64];
static struct kb_catalog *cat;
static struct kb_doc *rec;

static void setup(void)
{
  char secondary[128];

  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-freeze-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  snprintf(secondary, sizeof secondary, "%s/secondary", tmpdir);
  cr_assert_eq(mkdir(secondary, 0755), 0);
  cr_assert_eq(kb_store_init(secondary, NULL), 0);   /* a folder, not a mount point */
  cr_assert_eq(kb_catalog_open_at(secondary, NULL, 0, &cat), 0);
  rec = kb_doc_new();
  cr_assert_not_null(rec);
  cr_assert_eq(kb_doc_set(rec, "vm", "state", "Ready"), 0);
  cr_assert_eq(kb_vm_save(cat, VM1, rec), 0);
}

static void teardown(void)
{
  kb_doc_free(rec);
  kb_catalog_free(cat);
  kb_rm_rf(tmpdir);
}

TestSuite(freeze, .init = setup, .fini = teardown, .timeout = 30);

/* vm.ini as the next run reads it */
static struct kb_doc *reload(void)
{
  struct kb_doc *d = NULL;
  cr_assert_eq(kb_vm_load(cat, VM1, &d), 0);
  return d;
}

Test(freeze, no_record_no_owner)
{
  struct kb_freeze f;

  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_NONE);
  cr_assert_eq(kb_vm_frozen_by(rec, &f), -ENOENT);
  cr_assert_eq(kb_vm_clear_frozen(cat, VM1, rec), 0);
}

Test(freeze, marked_is_saved_and_ours_until_cleared)
{
  struct kb_doc *d;
  struct kb_freeze f;
  char *desc = NULL;

  cr_assert_eq(kb_vm_mark_frozen(cat, VM1, rec, "20261201T040000Z-abcdef"), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, &desc), KB_FREEZE_SELF);
  cr_assert(strstr(desc, "20261201T040000Z-abcdef") && strstr(desc, kb_hostname()), "%s", desc);
  free(desc);
  d = reload();
  cr_assert_eq(kb_vm_frozen_by(d, &f), 0);
  cr_assert_eq(f.pid, getpid());
  cr_assert_str_eq(f.host, kb_hostname());
  cr_assert_str_eq(f.boot_id, kb_boot_id());
  cr_assert_str_eq(f.by, "20261201T040000Z-abcdef");
  cr_assert_str_eq(kb_doc_get(d, "vm", "state"), "Ready", "the rest of vm.ini is kept");
  cr_assert_eq(kb_vm_freeze_owner(d, NULL), KB_FREEZE_SELF);
  kb_doc_free(d);

  cr_assert_eq(kb_vm_clear_frozen(cat, VM1, rec), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_NONE);
  d = reload();
  cr_assert_eq(kb_vm_freeze_owner(d, NULL), KB_FREEZE_NONE);
  cr_assert_null(kb_doc_get(d, "freeze", "pid"));
  cr_assert_str_eq(kb_doc_get(d, "vm", "state"), "Ready");
  kb_doc_free(d);
}

/* A run that froze and is killed: live while it runs, gone after. */
Test(freeze, another_process_live_then_gone)
{
  int ready[2];
  char c;
  pid_t pid;
  struct kb_doc *d;

  cr_assert_eq(pipe(ready), 0);
  pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    int ok = kb_vm_mark_frozen(cat, VM1, rec, "child") == 0;
    (void) !write(ready[1], ok ? "y" : "n", 1);
    pause();
    _exit(0);
  }
  cr_assert_eq(read(ready[0], &c, 1), 1);
  cr_assert_eq(c, 'y');
  d = reload();
  cr_assert_eq(kb_vm_freeze_owner(d, NULL), KB_FREEZE_LIVE);
  kill(pid, SIGKILL);
  cr_assert_eq(waitpid(pid, NULL, 0), pid);
  cr_assert_eq(kb_vm_freeze_owner(d, NULL), KB_FREEZE_GONE);
  kb_doc_free(d);
  close(ready[0]);
  close(ready[1]);
}

Test(freeze, reused_pid_rebooted_host_and_other_host)
{
  cr_assert_eq(kb_vm_mark_frozen(cat, VM1, rec, "b"), 0);
  /* Our pid, but another process start time: the pid was reused. */
  cr_assert_eq(kb_doc_set(rec, "freeze", "start_time", "1"), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_GONE);
  cr_assert_eq(kb_vm_mark_frozen(cat, VM1, rec, "b"), 0);
  cr_assert_eq(kb_doc_set(rec, "freeze", "boot_id", "00000000-0000-0000-0000-000000000000"), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_GONE);
  cr_assert_eq(kb_vm_mark_frozen(cat, VM1, rec, "b"), 0);
  cr_assert_eq(kb_doc_set(rec, "freeze", "host", "some-other-host"), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_REMOTE);
  /* A clone with our host name is another machine. */
  cr_assert_eq(kb_vm_mark_frozen(cat, VM1, rec, "b"), 0);
  cr_assert_eq(kb_doc_set(rec, "freeze", "machine_id", "0123456789abcdef0123456789abcdef"), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_REMOTE);
  /* A pid from another pid namespace says nothing here: taken as live. */
  cr_assert_eq(kb_vm_mark_frozen(cat, VM1, rec, "b"), 0);
  cr_assert_eq(kb_doc_set(rec, "freeze", "pid_ns", "pid:[1]"), 0);
  cr_assert_eq(kb_doc_set(rec, "freeze", "start_time", "1"), 0);
  cr_assert_eq(kb_vm_freeze_owner(rec, NULL), KB_FREEZE_LIVE);
}
