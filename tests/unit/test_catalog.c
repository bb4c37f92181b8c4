/* The catalog: layout on disk, names that may become paths, symlinks
 * refused, listings, ids, and concurrency slots among real processes. */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "kbconfig.h"
#include "record.h"
#include "store.h"
#include "util.h"

#define VM1 "6a1f4c2e-9b3d-4e5f-8a7b-1c2d3e4f5a6b"
#define VM2 "0b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0"

static char tmpdir[64];
static char secondary[128], storepath[128], rundir[128];
static struct kb_catalog *cat;

static void setup(void)
{
  struct kb_store stores[1];

  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-cat-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
  snprintf(secondary, sizeof secondary, "%s/secondary", tmpdir);
  snprintf(storepath, sizeof storepath, "%s/store1", tmpdir);
  cr_assert_eq(mkdir(secondary, 0755), 0);
  cr_assert_eq(mkdir(storepath, 0755), 0);
  snprintf(rundir, sizeof rundir, "%s/run", tmpdir);
  setenv("KBOSS_RUN_DIR", rundir, 1);
  setenv("KBOSS_LOCK_LEASE", "3", 1);
  stores[0].name = (char *) "fast";
  stores[0].path = storepath;
  stores[0].backups_only = true;
  cr_assert_eq(kb_store_init(secondary, NULL), 0);
  cr_assert_eq(kb_catalog_open_at(secondary, stores, 1, &cat), 0);
}

static void teardown(void)
{
  kb_catalog_free(cat);
  kb_rm_rf(tmpdir);
}

TestSuite(catalog, .init = setup, .fini = teardown, .timeout = 60);

static void assert_dir_0700(const char *path)
{
  struct stat st;

  cr_assert_eq(lstat(path, &st), 0, "%s missing", path);
  cr_assert(S_ISDIR(st.st_mode), "%s", path);
  cr_assert_eq(st.st_mode & 07777, 0700, "%s has mode %o", path, st.st_mode & 07777);
}

Test(catalog, open_creates_the_layout)
{
  char p[256];

  snprintf(p, sizeof p, "%s/kboss", secondary);
  cr_assert_str_eq(kb_catalog_root(cat), p);
  assert_dir_0700(p);
  snprintf(p, sizeof p, "%s/kboss/vms", secondary);
  assert_dir_0700(p);
  snprintf(p, sizeof p, "%s/kboss/jobs", secondary);
  assert_dir_0700(p);
  snprintf(p, sizeof p, "%s/kboss/locks", secondary);
  assert_dir_0700(p);
}

Test(catalog, open_refuses_a_missing_mount_point)
{
  struct kb_catalog *c = NULL;
  char p[256];

  snprintf(p, sizeof p, "%s/not-mounted", tmpdir);
  cr_assert_eq(kb_catalog_open_at(p, NULL, 0, &c), -ENOENT);
  cr_assert_eq(access(p, F_OK), -1, "the mount point was created");
  cr_assert_eq(kb_catalog_open_at("relative/path", NULL, 0, &c), -EINVAL);
}

/* An empty folder where the export should be mounted: refused, nothing
 * created in it, until kbossctl init-store marks it. */
Test(catalog, open_refuses_a_folder_that_is_no_mount_point)
{
  struct kb_catalog *c = NULL;
  char p[256], m[300], k[300];
  int mounted = -1;

  snprintf(p, sizeof p, "%s/plain", tmpdir);
  snprintf(m, sizeof m, "%s/" KB_STORE_MARKER, p);
  snprintf(k, sizeof k, "%s/kboss", p);
  cr_assert_eq(mkdir(p, 0755), 0);
  cr_assert_eq(kb_store_check(p), -ENOMEDIUM);
  cr_assert_eq(kb_catalog_open_at(p, NULL, 0, &c), -ENOMEDIUM);
  cr_assert_eq(access(k, F_OK), -1, "the catalog was created in a plain folder");
  cr_assert(strstr(kb_store_strerror(-ENOMEDIUM), "init-store"));

  /* A marker that is a symlink does not count. */
  cr_assert_eq(symlink("/etc/hostname", m), 0);
  cr_assert_eq(kb_store_check(p), -ENOMEDIUM);
  cr_assert_eq(kb_store_init(p, NULL), -EEXIST);
  cr_assert_eq(unlink(m), 0);

  cr_assert_eq(kb_store_init(p, &mounted), 0);
  cr_assert_eq(mounted, 0);
  {
    struct stat st;
    cr_assert_eq(lstat(m, &st), 0);
    cr_assert(S_ISREG(st.st_mode));
    cr_assert_eq(st.st_mode & 07777, 0600);
  }
  cr_assert_eq(kb_store_init(p, NULL), 0, "marking twice is fine");
  cr_assert_eq(kb_catalog_open_at(p, NULL, 0, &c), 0);
  cr_assert_eq(access(k, F_OK), 0);
  kb_catalog_free(c);

  /* The root of a filesystem is a mount point: no marker needed. */
  cr_assert_eq(kb_store_check("/"), 0);
  cr_assert_eq(kb_store_check("/proc"), 0);
}

Test(catalog, paths)
{
  char *p, want[512];

  p = kb_catalog_vm_dir(cat, VM1);
  snprintf(want, sizeof want, "%s/kboss/vms/%s", secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_backup_dir(cat, VM1, "20261126T100139Z-a1b2c3", "20261127T100139Z-d4e5f6");
  snprintf(want, sizeof want, "%s/kboss/vms/%s/chains/20261126T100139Z-a1b2c3/20261127T100139Z-d4e5f6",
           secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_data_dir(cat, "fast", VM1, "c1", "b1");
  snprintf(want, sizeof want, "%s/kboss/vms/%s/chains/c1/b1", storepath, VM1);
  cr_assert_str_eq(p, want);
  cr_assert_eq(kb_catalog_mkdirs(cat, p), 0);
  assert_dir_0700(p);
  free(p);
  errno = 0;
  cr_assert_null(kb_catalog_data_dir(cat, "nosuchstore", VM1, "c1", "b1"));
  cr_assert_eq(errno, ENOENT);
  p = kb_catalog_jobs_dir(cat);
  snprintf(want, sizeof want, "%s/kboss/jobs", secondary);
  cr_assert_str_eq(p, want);
  free(p);
  cr_assert_eq(kb_catalog_mkdirs(cat, "/etc/kboss-should-not-exist"), -EINVAL);
  cr_assert_eq(access("/etc/kboss-should-not-exist", F_OK), -1);
}

Test(catalog, names_are_checked_before_they_become_paths)
{
  static const char *const bad[] = { "", "..", ".", "../x", "a/b", ".hidden", "-opt", "a b",
                                     "x\n", "é", NULL };
  static const char *const bad_uuid[] = { "", "6a1f4c2e9b3d4e5f8a7b1c2d3e4f5a6b",
                                          "6a1f4c2e-9b3d-4e5f-8a7b-1c2d3e4f5a6g",
                                          "../../../../etc/passwd-aaaaaaaaaaaaaa", NULL };
  struct kb_lock *l = NULL;
  char **v = NULL;
  size_t i;

  for (i = 0; bad[i]; i++) {
    errno = 0;
    cr_assert_null(kb_catalog_chain_dir(cat, VM1, bad[i]), "chain \"%s\" accepted", bad[i]);
    cr_assert_eq(errno, EINVAL);
    cr_assert_null(kb_catalog_backup_dir(cat, VM1, "c", bad[i]), "backup \"%s\" accepted", bad[i]);
    cr_assert_null(kb_catalog_data_dir(cat, bad[i], VM1, "c", "b"), "store \"%s\" accepted", bad[i]);
    cr_assert_eq(kb_catalog_take_slot(cat, bad[i], NULL, 2, "x", &l), -EINVAL);
    cr_assert_eq(kb_catalog_take_slot(cat, "backup", bad[i], 2, "x", &l), -EINVAL);
    cr_assert_eq(kb_catalog_find_backup(cat, bad[i], NULL, NULL), -EINVAL);
  }
  for (i = 0; bad_uuid[i]; i++) {
    cr_assert_null(kb_catalog_vm_dir(cat, bad_uuid[i]), "uuid \"%s\" accepted", bad_uuid[i]);
    cr_assert_eq(kb_catalog_list_chains(cat, bad_uuid[i], &v), -EINVAL);
    cr_assert_eq(kb_catalog_lock_vm(cat, bad_uuid[i], "x", 0, &l), -EINVAL);
  }
}

Test(catalog, symlinks_are_refused)
{
  char *vm, *target, *p, **v = NULL;
  struct kb_doc *doc = NULL;

  /* vms/<uuid> is a symlink to a directory elsewhere. */
  target = kb_printf("%s/elsewhere", tmpdir);
  cr_assert_eq(mkdir(target, 0700), 0);
  vm = kb_printf("%s/kboss/vms/%s", secondary, VM1);
  cr_assert_eq(symlink(target, vm), 0);
  errno = 0;
  cr_assert_null(kb_catalog_vm_dir(cat, VM1));
  cr_assert_eq(errno, ELOOP);
  cr_assert_null(kb_catalog_backup_dir(cat, VM1, "c1", "b1"));
  cr_assert_eq(errno, ELOOP);
  cr_assert_eq(kb_catalog_mkdirs(cat, vm), -ELOOP);
  p = kb_printf("%s/chains/c1", vm);
  cr_assert_eq(kb_catalog_mkdirs(cat, p), -ELOOP);
  free(p);
  p = kb_printf("%s/chains", target);
  cr_assert_eq(access(p, F_OK), -1, "created through the symlink");
  free(p);
  cr_assert_eq(kb_catalog_list_chains(cat, VM1, &v), -ELOOP);
  cr_assert_eq(kb_meta_read(vm, "vm", &doc), -ELOOP);
  cr_assert_eq(kb_catalog_list_vms(cat, &v), 0);
  cr_assert_null(v[0], "a symlinked VM is listed");
  kb_strv_free(v);

  /* A symlinked chain deeper down. */
  p = kb_printf("%s/kboss/vms/%s/chains", secondary, VM2);
  cr_assert_eq(kb_catalog_mkdirs(cat, p), 0);
  free(p);
  p = kb_printf("%s/kboss/vms/%s/chains/c1", secondary, VM2);
  cr_assert_eq(symlink(target, p), 0);
  free(p);
  cr_assert_null(kb_catalog_backup_dir(cat, VM2, "c1", "b1"));
  cr_assert_eq(errno, ELOOP);
  cr_assert_eq(kb_catalog_list_backups(cat, VM2, "c1", &v), -ELOOP);
  cr_assert_eq(kb_catalog_list_chains(cat, VM2, &v), 0);
  cr_assert_null(v[0]);
  kb_strv_free(v);

  /* The catalog root itself. */
  {
    struct kb_catalog *c = NULL;
    char *sec2 = kb_printf("%s/secondary2", tmpdir), *root2 = kb_printf("%s/kboss", sec2);
    cr_assert_eq(mkdir(sec2, 0700), 0);
    cr_assert_eq(kb_store_init(sec2, NULL), 0);
    cr_assert_eq(symlink(target, root2), 0);
    cr_assert_eq(kb_catalog_open_at(sec2, NULL, 0, &c), -ELOOP);
    free(sec2);
    free(root2);
  }
  free(vm);
  free(target);
}

static void make_backup(const char *vm, const char *chain, const char *backup)
{
  char *d = kb_catalog_backup_dir(cat, vm, chain, backup);
  struct kb_doc *doc = kb_doc_new();

  cr_assert_not_null(d);
  cr_assert_eq(kb_catalog_mkdirs(cat, d), 0);
  kb_doc_set(doc, "backup", "id", backup);
  cr_assert_eq(kb_meta_write(d, "backup", doc), 0);
  kb_doc_free(doc);
  free(d);
}

Test(catalog, listing_and_finding)
{
  char **v = NULL, *vm = NULL, *chain = NULL, *junk;

  make_backup(VM2, "c2", "b3");
  make_backup(VM1, "c1", "b2");
  make_backup(VM1, "c1", "b1");
  make_backup(VM1, "c0", "b0");
  junk = kb_printf("%s/kboss/vms/not-a-uuid", secondary);
  cr_assert_eq(mkdir(junk, 0700), 0);
  free(junk);

  cr_assert_eq(kb_catalog_list_vms(cat, &v), 0);
  cr_assert_str_eq(v[0], VM2);
  cr_assert_str_eq(v[1], VM1);
  cr_assert_null(v[2]);
  kb_strv_free(v);
  cr_assert_eq(kb_catalog_list_chains(cat, VM1, &v), 0);
  cr_assert_str_eq(v[0], "c0");
  cr_assert_str_eq(v[1], "c1");
  cr_assert_null(v[2]);
  kb_strv_free(v);
  cr_assert_eq(kb_catalog_list_backups(cat, VM1, "c1", &v), 0);
  cr_assert_str_eq(v[0], "b1");
  cr_assert_str_eq(v[1], "b2");
  cr_assert_null(v[2]);
  kb_strv_free(v);
  cr_assert_eq(kb_catalog_list_chains(cat, "11111111-2222-3333-4444-555555555555", &v), -ENOENT);
  cr_assert_eq(kb_catalog_list_backups(cat, VM1, "nochain", &v), -ENOENT);

  cr_assert_eq(kb_catalog_find_backup(cat, "b3", &vm, &chain), 0);
  cr_assert_str_eq(vm, VM2);
  cr_assert_str_eq(chain, "c2");
  free(vm);
  free(chain);
  cr_assert_eq(kb_catalog_find_backup(cat, "b9", &vm, &chain), -ENOENT);
}

Test(catalog, new_ids_are_time_sortable_and_distinct)
{
  char a[32], b[32], want[20];
  time_t t = time(NULL);
  struct tm tm;
  int i;

  cr_assert_eq(kb_catalog_new_id(a, 10), -ERANGE);
  cr_assert_eq(kb_catalog_new_id(a, sizeof a), 0);
  cr_assert_eq(strlen(a), 23, "%s", a);
  gmtime_r(&t, &tm);
  strftime(want, sizeof want, "%Y%m%dT%H", &tm);
  cr_assert_eq(strncmp(a, want, strlen(want)), 0, "%s vs %s", a, want);
  cr_assert_eq(a[8], 'T');
  cr_assert_eq(a[15], 'Z');
  cr_assert_eq(a[16], '-');
  cr_assert_eq(strspn(a + 17, "0123456789abcdef"), 6);
  cr_assert(kb_name_ok(a));
  for (i = 0; i < 50; i++) {
    cr_assert_eq(kb_catalog_new_id(b, sizeof b), 0);
    cr_assert_str_neq(a, b);
  }
}

Test(catalog, vm_lock_excludes_another_process)
{
  struct kb_lock *l = NULL;
  pid_t pid;
  int status;

  cr_assert_eq(kb_catalog_lock_vm(cat, VM1, "backup", 0, &l), 0);
  pid = fork();
  if (pid == 0) {
    struct kb_lock *cl = NULL;
    _exit(kb_catalog_lock_vm(cat, VM1, "restore", 0, &cl) == -EBUSY &&
          kb_catalog_lock_vm(cat, VM2, "restore", 0, &cl) == 0 ? 0 : 1);
  }
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert_eq(WEXITSTATUS(status), 0);
  kb_lock_release(l);
}

Test(catalog, slots_unlimited_host_and_zone)
{
  struct kb_lock *a = NULL, *b = NULL, *c = NULL, *h = NULL;
  unsigned n = 99;
  char *p;

  cr_assert_eq(kb_catalog_take_slot(cat, "backup", NULL, 0, "x", &a), 0);
  cr_assert_null(a);
  cr_assert_eq(kb_catalog_take_slot(cat, "backup", NULL, 2, "one", &a), 0);
  cr_assert_eq(kb_catalog_take_slot(cat, "backup", NULL, 2, "two", &b), 0);
  cr_assert_eq(kb_catalog_take_slot(cat, "backup", NULL, 2, "three", &c), -EBUSY);
  cr_assert_eq(kb_catalog_take_slot(cat, "backup", "host-a", 1, "h", &h), 0);
  p = kb_printf("%s/kboss/locks/backup.zone.1", secondary);
  cr_assert_eq(access(p, F_OK), 0);
  free(p);
  /* Per-host slots need nothing shared: they live in the host's run dir. */
  p = kb_printf("%s/locks/backup.host-host-a.0", rundir);
  cr_assert_eq(access(p, F_OK), 0);
  free(p);
  p = kb_printf("%s/kboss/locks/backup.host-host-a.0", secondary);
  cr_assert_eq(access(p, F_OK), -1, "a per-host slot on the export");
  free(p);
  cr_assert_eq(kb_catalog_count_slots(cat, "backup", NULL, &n), 0);
  cr_assert_eq(n, 2);
  cr_assert_eq(kb_catalog_count_slots(cat, "backup", "host-a", &n), 0);
  cr_assert_eq(n, 1);
  cr_assert_eq(kb_catalog_count_slots(cat, "restore", NULL, &n), 0);
  cr_assert_eq(n, 0);
  kb_lock_release(a);
  cr_assert_eq(kb_catalog_count_slots(cat, "backup", NULL, &n), 0);
  cr_assert_eq(n, 1);
  cr_assert_eq(kb_catalog_take_slot(cat, "backup", NULL, 2, "three", &c), 0);
  kb_lock_release(b);
  kb_lock_release(c);
  kb_lock_release(h);
}

struct shared {
  int cur, max, ran;
};

/* Twelve processes compete for three zone slots: never more than three
 * inside at once, and all of them get their turn. */
Test(catalog, n_slots_admit_at_most_n_processes)
{
  struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  pid_t pids[12];
  int go[2], i, status;

  cr_assert_neq(sh, MAP_FAILED);
  memset(sh, 0, sizeof *sh);
  cr_assert_eq(pipe(go), 0);
  for (i = 0; i < 12; i++) {
    pids[i] = fork();
    cr_assert_neq(pids[i], -1);
    if (pids[i] == 0) {
      struct kb_lock *l = NULL;
      struct timespec ts = { 0, 150 * 1000000L }, nap = { 0, 20 * 1000000L };
      int now, m, r;
      char c;
      close(go[1]);
      (void) !read(go[0], &c, 1);
      while ((r = kb_catalog_take_slot(cat, "backup", NULL, 3, "racer", &l)) == -EBUSY)
        nanosleep(&nap, NULL);
      if (r < 0)
        _exit(2);
      now = __atomic_add_fetch(&sh->cur, 1, __ATOMIC_SEQ_CST);
      m = __atomic_load_n(&sh->max, __ATOMIC_SEQ_CST);
      while (now > m && !__atomic_compare_exchange_n(&sh->max, &m, now, false,
                                                      __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        ;
      nanosleep(&ts, NULL);
      __atomic_sub_fetch(&sh->cur, 1, __ATOMIC_SEQ_CST);
      __atomic_add_fetch(&sh->ran, 1, __ATOMIC_SEQ_CST);
      kb_lock_release(l);
      _exit(0);
    }
  }
  close(go[0]);
  close(go[1]);
  for (i = 0; i < 12; i++) {
    cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
    cr_assert_eq(WEXITSTATUS(status), 0);
  }
  cr_log_info("max concurrency %d of 3, %d ran", sh->max, sh->ran);
  cr_assert_leq(sh->max, 3, "%d holders of 3 slots at once", sh->max);
  cr_assert_geq(sh->max, 2, "the slots were not used concurrently at all");
  cr_assert_eq(sh->ran, 12);
  munmap(sh, sizeof *sh);
}

/* ---- one owner for names: lock files, saved XML, ids ---- */

Test(catalog, lock_names_and_saved_xml_paths)
{
  char want[512];
  char *p;

  p = kb_catalog_lock_path(cat, KB_LOCK_VM, VM1);
  snprintf(want, sizeof want, "%s/kboss/locks/vm-%s.lock", secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_lock_path(cat, KB_LOCK_BACKUP, "20240101T000000Z-abcdef");
  snprintf(want, sizeof want, "%s/kboss/locks/backup-20240101T000000Z-abcdef.lock", secondary);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_lock_path(cat, KB_LOCK_JOB, "compression-x");
  snprintf(want, sizeof want, "%s/kboss/locks/job-compression-x.lock", secondary);
  cr_assert_str_eq(p, want);
  free(p);
  errno = 0;
  cr_assert_null(kb_catalog_lock_path(cat, KB_LOCK_VM, "not-a-uuid"));
  cr_assert_eq(errno, EINVAL);
  cr_assert_null(kb_catalog_lock_path(cat, KB_LOCK_BACKUP, "../x"));
  cr_assert_null(kb_catalog_lock_path(cat, KB_LOCK_JOB, ""));

  p = kb_catalog_checkpoint_path(cat, VM1, "20240101T000000Z-abcdef");
  snprintf(want, sizeof want, "%s/kboss/vms/%s/checkpoints/20240101T000000Z-abcdef.xml", secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  cr_assert_null(kb_catalog_checkpoint_path(cat, VM1, "a/b"));
  p = kb_catalog_vm_domain_path(cat, VM1);
  snprintf(want, sizeof want, "%s/kboss/vms/%s/domain.xml", secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_backup_domain_path(cat, VM1, "c1", "b1");
  snprintf(want, sizeof want, "%s/kboss/vms/%s/chains/c1/b1/domain.xml", secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_screenshot_path(cat, VM1, "c1", "b1");
  snprintf(want, sizeof want, "%s/kboss/vms/%s/chains/c1/b1/screenshot.png", secondary, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  p = kb_catalog_data_chain_dir(cat, "fast", VM1, "c1");
  snprintf(want, sizeof want, "%s/kboss/vms/%s/chains/c1", storepath, VM1);
  cr_assert_str_eq(p, want);
  free(p);
  cr_assert_null(kb_catalog_data_chain_dir(cat, "nosuchstore", VM1, "c1"));
}

Test(catalog, backup_lock_and_probe)
{
  struct kb_lock *l = NULL, *l2 = NULL;
  char *holder = NULL;

  cr_assert_eq(kb_catalog_lock_probe(cat, KB_LOCK_BACKUP, "b1", NULL), 0);
  cr_assert_eq(kb_catalog_lock(cat, KB_LOCK_BACKUP, "b1", "testing", 0, &l), 0);
  cr_assert_eq(kb_catalog_lock_probe(cat, KB_LOCK_BACKUP, "b1", &holder), 1);
  cr_assert_not_null(strstr(holder, "testing"), "%s", holder);
  free(holder);
  cr_assert_eq(kb_catalog_lock(cat, KB_LOCK_BACKUP, "b1", "again", 0, &l2), -EBUSY);
  cr_assert_eq(kb_catalog_lock(cat, KB_LOCK_JOB, "b1", "a job of that name", 0, &l2), 0);
  kb_lock_release(l2);
  kb_lock_release(l);
  cr_assert_eq(kb_catalog_lock_probe(cat, KB_LOCK_BACKUP, "b1", NULL), 0);
  cr_assert_eq(kb_catalog_lock(cat, KB_LOCK_VM, "../etc", "bad", 0, &l), -EINVAL);
}

Test(catalog, one_backup_id_rule)
{
  char id[64];

  for (int i = 0; i < 20; i++) {
    cr_assert_eq(kb_catalog_new_id(id, sizeof id), 0);
    cr_assert(kb_backup_id_ok(id), "%s", id);
  }
  cr_assert(kb_backup_id_ok("20240131T235959Z-0a9f3c"));
  cr_assert_not(kb_backup_id_ok(NULL));
  cr_assert_not(kb_backup_id_ok(""));
  cr_assert_not(kb_backup_id_ok("20240131T235959Z-0a9f3"));       /* short */
  cr_assert_not(kb_backup_id_ok("20240131T235959Z-0a9f3cd"));     /* long */
  cr_assert_not(kb_backup_id_ok("2024013XT235959Z-0a9f3c"));      /* not a digit */
  cr_assert_not(kb_backup_id_ok("20240131X235959Z-0a9f3c"));      /* no T */
  cr_assert_not(kb_backup_id_ok("20240131T235959Z_0a9f3c"));      /* no - */
  cr_assert_not(kb_backup_id_ok("20240131T235959Z-0A9F3C"));      /* upper-case hex */
  cr_assert_not(kb_backup_id_ok("mycheckZ-point-with-23c"));      /* the old test let this by */
}

/* ---- record transitions ---- */

static void put_backup(const char *chain, const char *id, const char *parent)
{
  struct kb_doc *d = kb_doc_new();
  char *data;

  cr_assert_eq(kb_doc_set(d, "backup", "id", id), 0);
  cr_assert_eq(kb_doc_set(d, "backup", "state", KB_BACKUP_READY), 0);
  cr_assert_eq(kb_doc_set(d, "backup", "store", "fast"), 0);
  if (parent)
    cr_assert_eq(kb_doc_set(d, "backup", "parent", parent), 0);
  cr_assert_eq(kb_backup_save(cat, VM1, chain, id, d), 0);
  kb_doc_free(d);
  data = kb_catalog_data_dir(cat, "fast", VM1, chain, id);
  cr_assert_eq(kb_mkdir_p(data, 0700), 0);
  free(data);
}

static const char *rec_get(struct kb_doc *d, const char *s, const char *k)
{
  return kb_doc_get(d, s, k);
}

Test(catalog, add_then_delete_backups_keeps_chain_and_vm_records_true)
{
  static const char *const ids[] = { "20240101T000000Z-000001", "20240101T000000Z-000002",
                                     "20240101T000000Z-000003" };
  struct kb_doc *vm = kb_doc_new(), *ch = kb_doc_new();
  struct kb_chain_view cv;
  struct kb_forget_result res;
  bool del[4] = { false };
  char *cpx, *data;

  /* Three backups added one after another to a chain of at most 8. */
  cr_assert_eq(kb_doc_set(ch, "chain", "store", "fast"), 0);
  for (int i = 0; i < 3; i++) {
    put_backup("c1", ids[i], i ? ids[i - 1] : NULL);
    cr_assert_eq(kb_chain_add_backup(cat, VM1, "c1", ch, vm, ids[i], false, 8), 0);
  }
  cr_assert_eq(kb_vm_save(cat, VM1, vm), 0);
  cr_assert_str_eq(rec_get(ch, "chain", "length"), "3");
  cr_assert_null(rec_get(ch, "chain", "ended"));
  cr_assert_str_eq(rec_get(vm, "vm", "current_chain"), "c1");
  cr_assert_str_eq(rec_get(vm, "vm", "last_checkpoint"), ids[2]);
  cpx = kb_catalog_checkpoints_dir(cat, VM1);
  cr_assert_eq(kb_catalog_mkdirs(cat, cpx), 0);
  free(cpx);
  cpx = kb_catalog_checkpoint_path(cat, VM1, ids[2]);
  cr_assert_eq(kb_meta_write_file(cpx, "<domaincheckpoint/>", 19), 0);

  /* Deleting the second takes the third with it; the chain ends, the VM
   * forgets its checkpoint, the first backup stays. */
  cr_assert_eq(kb_chain_view_load(cat, VM1, "c1", &cv), 0);
  cr_assert_eq(cv.n, 3);
  cr_assert_eq(kb_chain_view_dependents(&cv, ids[1], del), 2);
  cr_assert(!del[0] && del[1] && del[2]);
  for (size_t i = 0; i < cv.n; i++)
    if (del[i]) {
      struct kb_backup_ref one = { (char *) VM1, (char *) "c1", cv.ids[i], cv.docs[i] };
      cr_assert_eq(kb_backup_remove(cat, &one), 0);
    }
  cr_assert_eq(kb_chain_forget(cat, VM1, "c1", &cv, del, &res), 0);
  cr_assert(res.chain_ended && !res.chain_removed);
  kb_chain_view_clear(&cv);
  kb_doc_free(ch);
  kb_doc_free(vm);
  cr_assert_eq(kb_chain_load(cat, VM1, "c1", &ch), 0);
  cr_assert_str_eq(rec_get(ch, "chain", "last_backup"), ids[0]);
  cr_assert_str_eq(rec_get(ch, "chain", "length"), "1");
  cr_assert_str_eq(rec_get(ch, "chain", "ended"), "true");
  cr_assert_eq(kb_vm_load(cat, VM1, &vm), 0);
  cr_assert_null(rec_get(vm, "vm", "current_chain"));
  cr_assert_null(rec_get(vm, "vm", "last_checkpoint"));
  cr_assert_null(rec_get(vm, "vm", "last_backup"));
  cr_assert_eq(kb_meta_read_file(cpx, &data, NULL), -ENOENT);
  data = kb_catalog_data_dir(cat, "fast", VM1, "c1", ids[2]);
  cr_assert_eq(access(data, F_OK), -1, "data of a deleted backup remains");
  free(data);

  /* The last one: the chain goes, its data folder on the store too. */
  memset(del, 0, sizeof del);
  cr_assert_eq(kb_chain_view_load(cat, VM1, "c1", &cv), 0);
  cr_assert_eq(kb_chain_view_dependents(&cv, ids[0], del), 1);
  {
    struct kb_backup_ref one = { (char *) VM1, (char *) "c1", cv.ids[0], cv.docs[0] };
    cr_assert_eq(kb_backup_remove(cat, &one), 0);
  }
  cr_assert_eq(kb_chain_forget(cat, VM1, "c1", &cv, del, &res), 0);
  cr_assert(res.chain_removed);
  kb_chain_view_clear(&cv);
  data = kb_catalog_data_chain_dir(cat, "fast", VM1, "c1");
  cr_assert_eq(access(data, F_OK), -1);
  free(data);
  data = kb_catalog_chain_dir(cat, VM1, "c1");
  cr_assert_eq(access(data, F_OK), -1);
  free(data);
  free(cpx);
  kb_doc_free(ch);
  kb_doc_free(vm);
}

Test(catalog, chain_size_and_isolated_end_a_chain_and_invalid_marks)
{
  struct kb_doc *vm = kb_doc_new(), *ch = kb_doc_new(), *b = kb_doc_new();

  cr_assert_eq(kb_chain_add_backup(cat, VM1, "c2", ch, vm, "20240101T000000Z-00000a", false, 1), 0);
  cr_assert_str_eq(rec_get(ch, "chain", "ended"), "true");
  cr_assert_str_eq(rec_get(ch, "chain", "end_reason"), "chain size reached");
  kb_doc_free(ch);
  ch = kb_doc_new();
  cr_assert_eq(kb_chain_add_backup(cat, VM1, "c3", ch, vm, "20240101T000000Z-00000b", true, 8), 0);
  cr_assert_str_eq(rec_get(ch, "chain", "end_reason"), "isolated backup");
  /* An isolated backup is not the VM's chain. */
  cr_assert_str_eq(rec_get(vm, "vm", "current_chain"), "c2");
  cr_assert_str_eq(rec_get(vm, "vm", "last_backup"), "20240101T000000Z-00000b");
  cr_assert_eq(kb_vm_save(cat, VM1, vm), 0);
  cr_assert_eq(kb_chain_end_if_current(cat, VM1, "c3", "not current"), 0);
  cr_assert_eq(kb_chain_end_if_current(cat, VM1, "c2", "validation failed"), 1);

  cr_assert_eq(kb_doc_set(b, "backup", "state", KB_BACKUP_READY), 0);
  cr_assert(kb_backup_complete(b));
  cr_assert_eq(kb_backup_mark_invalid(b), 0);
  cr_assert_str_eq(rec_get(b, "backup", "state"), KB_BACKUP_INVALID);
  cr_assert_str_eq(rec_get(b, "backup", "validated"), "false");
  cr_assert(kb_backup_complete(b));
  cr_assert_eq(kb_doc_set(b, "backup", "state", KB_BACKUP_RUNNING), 0);
  cr_assert_not(kb_backup_complete(b));
  kb_doc_free(b);
  kb_doc_free(ch);
  kb_doc_free(vm);
}

Test(catalog, common_errors_are_worded_once)
{
  char *m = kb_msg_backup_find("x1", -ENOENT);
  cr_assert_str_eq(m, "backup x1: no such backup in the catalog");
  free(m);
  m = kb_msg_lock(cat, KB_LOCK_VM, VM1, "VM web1", -EBUSY);
  cr_assert_str_eq(m, "VM web1 is busy: another kboss operation holds it (holder unknown)");
  free(m);
}

/* issue 12: a folder planted with more names than KB_CATALOG_LIST_MAX is
 * listed up to the limit and the cut is counted, instead of the listing
 * failing (or exhausting memory).  On tmpfs: 65546 mkdirs on a disk
 * shared with running guests took over a minute. */
Test(catalog, listing_is_bounded_and_the_cut_reported)
{
  char shm[64], sec[128], st[128], **v = NULL, *cd, *dir;
  struct kb_store stores[1];
  struct kb_catalog *c2 = NULL;
  unsigned before = kb_catalog_list_cut();
  size_t n;

  snprintf(shm, sizeof shm, "/dev/shm/kboss-list-XXXXXX");
  if (!mkdtemp(shm))
    snprintf(shm, sizeof shm, "%s", tmpdir);
  snprintf(sec, sizeof sec, "%s/sec", shm);
  snprintf(st, sizeof st, "%s/st", shm);
  cr_assert_eq(mkdir(sec, 0755), 0);
  cr_assert_eq(mkdir(st, 0755), 0);
  stores[0].name = (char *) "fast";
  stores[0].path = st;
  stores[0].backups_only = true;
  cr_assert_eq(kb_store_init(sec, NULL), 0);
  cr_assert_eq(kb_catalog_open_at(sec, stores, 1, &c2), 0);
  cd = kb_catalog_chain_dir(c2, VM1, "c1");
  cr_assert_not_null(cd);
  cr_assert_eq(kb_catalog_mkdirs(c2, cd), 0);
  dir = kb_dirname(cd);
  for (int i = 0; i < KB_CATALOG_LIST_MAX + 10; i++) {
    char *p = kb_printf("%s/j%06d", dir, i);
    cr_assert_eq(mkdir(p, 0700), 0, "%s: %m", p);
    free(p);
  }
  cr_assert_eq(kb_catalog_list_chains(c2, VM1, &v), 0);
  for (n = 0; v[n]; n++)
    ;
  cr_assert_eq(n, KB_CATALOG_LIST_MAX);
  cr_assert_eq(kb_catalog_list_cut(), before + 1);
  kb_strv_free(v);
  kb_catalog_free(c2);
  free(cd);
  free(dir);
  if (strncmp(shm, "/dev/shm/", 9) == 0)
    (void) kb_rm_rf(shm);
}
