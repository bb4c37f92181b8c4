/* INI documents and metadata generations: round trips, what is refused,
 * and that a writer killed at any moment leaves the old or the new
 * document, never a torn one. */
#include <config.h>

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "doc.h"
#include "util.h"

static char tmpdir[64];

static void setup(void)
{
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-doc-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
  kb_rm_rf(tmpdir);
}

TestSuite(doc, .init = setup, .fini = teardown);

static const char sample[] =
  "[vm]\n"
  "name = web-01\n"
  "state = Ready\n"
  "\n"
  "[disk:vda]\n"
  "size = 10737418240\n"
  "format = qcow2\n"
  "\n"
  "[disk:vdb]\n"
  "size = 1024\n"
  "path = /var/lib/libvirt/images/a b.qcow2\n";

Test(doc, round_trip_is_byte_exact)
{
  struct kb_doc *doc = NULL;
  char *out;
  int line = 0;

  cr_assert_eq(kb_doc_parse(sample, &doc, &line), 0);
  out = kb_doc_format(doc);
  cr_assert_str_eq(out, sample);
  cr_assert_str_eq(kb_doc_get(doc, "disk:vdb", "path"), "/var/lib/libvirt/images/a b.qcow2");
  cr_assert_eq(kb_doc_get_ll(doc, "disk:vda", "size", -1), 10737418240LL);
  cr_assert_eq(kb_doc_get_ll(doc, "disk:vda", "format", -1), -1);
  cr_assert_eq(kb_doc_get_bool(doc, "vm", "missing", true), true);
  cr_assert_null(kb_doc_get(doc, "nosuch", "name"));
  free(out);
  kb_doc_free(doc);
}

Test(doc, comments_and_blanks_are_read_then_dropped)
{
  struct kb_doc *doc = NULL;
  char *out;

  cr_assert_eq(kb_doc_parse("; top\n# another\n[a]\nx   =   1  \n\n\n[b]\ny=2\n", &doc, NULL), 0);
  out = kb_doc_format(doc);
  cr_assert_str_eq(out, "[a]\nx = 1\n\n[b]\ny = 2\n");
  free(out);
  kb_doc_free(doc);
}

Test(doc, built_document_round_trips)
{
  struct kb_doc *doc = kb_doc_new(), *back = NULL;
  const char *k, *v;
  char *text, *text2;

  cr_assert_eq(kb_doc_set(doc, "backup", "id", "20261126T100139Z-a1b2c3"), 0);
  cr_assert_eq(kb_doc_set_ll(doc, "backup", "bytes", -42), 0);
  cr_assert_eq(kb_doc_set(doc, "backup", "cmd", "systemctl is-active nginx;echo ok"), 0);
  cr_assert_eq(kb_doc_set(doc, "disk:vda", "hash", "0123456789abcdef0123456789abcdef"), 0);
  cr_assert_eq(kb_doc_set(doc, "backup", "id", "replaced"), 0);
  text = kb_doc_format(doc);
  cr_assert_eq(kb_doc_parse(text, &back, NULL), 0);
  text2 = kb_doc_format(back);
  cr_assert_str_eq(text, text2);
  cr_assert_str_eq(kb_doc_get(back, "backup", "id"), "replaced");
  cr_assert_eq(kb_doc_get_ll(back, "backup", "bytes", 0), -42);
  cr_assert_str_eq(kb_doc_section_name(back, 0), "backup");
  cr_assert_str_eq(kb_doc_section_name(back, 1), "disk:vda");
  cr_assert_null(kb_doc_section_name(back, 2));
  cr_assert(kb_doc_key_at(back, "backup", 2, &k, &v));
  cr_assert_str_eq(k, "cmd");
  cr_assert_str_eq(v, "systemctl is-active nginx;echo ok");
  cr_assert_not(kb_doc_key_at(back, "backup", 3, &k, &v));

  cr_assert_eq(kb_doc_set(back, "backup", "bytes", NULL), 0);
  cr_assert_null(kb_doc_get(back, "backup", "bytes"));
  cr_assert_eq(kb_doc_remove_section(back, "disk:vda"), 0);
  cr_assert_null(kb_doc_section_name(back, 1));
  free(text);
  free(text2);
  kb_doc_free(doc);
  kb_doc_free(back);
}

Test(doc, values_that_would_not_survive_are_refused)
{
  struct kb_doc *doc = kb_doc_new();
  char big[300];

  cr_assert_eq(kb_doc_set(doc, "a", "k", "two\nlines"), -EINVAL);
  cr_assert_eq(kb_doc_set(doc, "a", "k", "x ;comment"), -EINVAL);
  cr_assert_eq(kb_doc_set(doc, "a", "k", ";x"), -EINVAL);
  cr_assert_eq(kb_doc_set(doc, "a", "k", " padded"), -EINVAL);
  cr_assert_eq(kb_doc_set(doc, "a", "k=v", "x"), -EINVAL);
  cr_assert_eq(kb_doc_set(doc, "a", "", "x"), -EINVAL);
  cr_assert_eq(kb_doc_set(doc, "a]", "k", "x"), -EINVAL);
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  cr_assert_eq(kb_doc_set(doc, "a", "k", big), -E2BIG);
  cr_assert_null(kb_doc_section_name(doc, 0), "nothing was stored");
  kb_doc_free(doc);
}

Test(doc, bad_text_reports_its_line)
{
  struct kb_doc *doc = NULL;
  char text[600];
  int line = 0;

  cr_assert_eq(kb_doc_parse("[a]\nx = 1\nnot a pair\n", &doc, &line), -EINVAL);
  cr_assert_eq(line, 3);
  cr_assert_eq(kb_doc_parse("[a]\nx = 1\n   folded\n", &doc, &line), -EINVAL);
  cr_assert_eq(line, 3);
  snprintf(text, sizeof text, "[a]\nx = %0300d\n", 7);
  cr_assert_eq(kb_doc_parse(text, &doc, &line), -EINVAL);
  cr_assert_eq(line, 2, "a line too long for inih is refused, not split");
}

/* --- Generations --- */

static int count_files(const char *dir)
{
  DIR *d = opendir(dir);
  struct dirent *de;
  int n = 0;

  cr_assert_not_null(d);
  while ((de = readdir(d)))
    if (de->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

static char *newest_gen(const char *dir, const char *prefix)
{
  DIR *d = opendir(dir);
  struct dirent *de;
  char *best = NULL;

  while ((de = readdir(d)))
    if (strncmp(de->d_name, prefix, strlen(prefix)) == 0 && (!best || strcmp(de->d_name, best) > 0)) {
      free(best);
      best = strdup(de->d_name);
    }
  closedir(d);
  return best;
}

static struct kb_doc *versioned(long long v, int parts)
{
  struct kb_doc *doc = kb_doc_new();
  char sec[32], key[32], val[160];
  int i, j;

  kb_doc_set_ll(doc, "meta", "version", v);
  for (i = 0; i < parts; i++) {
    snprintf(sec, sizeof sec, "part:%d", i);
    for (j = 0; j < 40; j++) {
      snprintf(key, sizeof key, "k%d", j);
      snprintf(val, sizeof val, "v%lld-%d-%d-%s", v, i, j,
               "padding-padding-padding-padding-padding-padding-padding-padding");
      cr_assert_eq(kb_doc_set(doc, sec, key, val), 0);
    }
  }
  return doc;
}

static void assert_doc_is_version(const struct kb_doc *doc, long long v, int parts)
{
  struct kb_doc *want = versioned(v, parts);
  char *a = kb_doc_format(doc), *b = kb_doc_format(want);

  cr_assert_str_eq(a, b, "document read back is not exactly version %lld", v);
  free(a);
  free(b);
  kb_doc_free(want);
}

Test(doc, generations_newest_wins_and_old_ones_go)
{
  struct kb_doc *doc;
  char *name, *path, *text = NULL;
  int v;

  for (v = 1; v <= 5; v++) {
    doc = versioned(v, 1);
    cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
    kb_doc_free(doc);
  }
  cr_assert_eq(count_files(tmpdir), 2, "the newest and the previous generation stay");
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  assert_doc_is_version(doc, 5, 1);
  kb_doc_free(doc);

  name = newest_gen(tmpdir, "vm.");
  cr_assert_str_eq(name, "vm.000000005.ini");
  path = kb_printf("%s/%s", tmpdir, name);
  cr_assert_eq(kb_read_file(path, &text, NULL), 0);
  cr_assert_not_null(strstr(text, "\n# kboss-checksum: "), "a human can see the trailer");
  struct stat st;
  cr_assert_eq(lstat(path, &st), 0);
  cr_assert_eq(st.st_mode & 07777, 0600);
  free(text);
  free(path);
  free(name);

  cr_assert_eq(kb_meta_remove(tmpdir, "vm"), 0);
  cr_assert_eq(count_files(tmpdir), 0);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), -ENOENT);
}

Test(doc, truncated_or_corrupt_newest_is_skipped)
{
  struct kb_doc *doc;
  char *name, *path, *text = NULL;
  size_t len;
  int fd;

  doc = versioned(1, 2);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  doc = versioned(2, 2);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  name = newest_gen(tmpdir, "vm.");
  path = kb_printf("%s/%s", tmpdir, name);

  /* Truncated by hand, as a crash on the server would leave it. */
  cr_assert_eq(kb_read_file(path, &text, &len), 0);
  cr_assert_eq(truncate(path, (off_t) len / 2), 0);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  assert_doc_is_version(doc, 1, 2);
  kb_doc_free(doc);

  /* Whole length, one byte changed. */
  text[len / 3] ^= 1;
  fd = open(path, O_WRONLY | O_TRUNC);
  cr_assert_eq(kb_write_all(fd, text, len), 0);
  close(fd);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  assert_doc_is_version(doc, 1, 2);
  kb_doc_free(doc);

  /* Trailer gone: still not taken. */
  fd = open(path, O_WRONLY | O_TRUNC);
  cr_assert_eq(kb_write_all(fd, "[meta]\nversion = 9\n", 19), 0);
  close(fd);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  assert_doc_is_version(doc, 1, 2);
  kb_doc_free(doc);

  /* The next write goes past the torn one and removes it. */
  doc = versioned(3, 2);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  cr_assert_eq(count_files(tmpdir), 2);
  cr_assert_eq(access(path, F_OK), -1, "the torn generation was removed");
  free(name);
  name = newest_gen(tmpdir, "vm.");
  cr_assert_str_eq(name, "vm.000000003.ini");
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  assert_doc_is_version(doc, 3, 2);
  kb_doc_free(doc);
  free(text);
  free(path);
  free(name);
}

Test(doc, symlinked_generation_or_dir_is_not_read)
{
  struct kb_doc *doc = versioned(1, 1);
  char *link, *target, *dirlink;

  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  target = kb_printf("%s/vm.000000001.ini", tmpdir);
  link = kb_printf("%s/vm.000000007.ini", tmpdir);
  cr_assert_eq(symlink(target, link), 0);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  cr_assert_eq(kb_doc_get_ll(doc, "meta", "version", 0), 1);
  kb_doc_free(doc);
  dirlink = kb_printf("%s/link", tmpdir);   /* inside tmpdir: teardown removes it */
  cr_assert_eq(symlink(tmpdir, dirlink), 0);
  cr_assert_eq(kb_meta_read(dirlink, "vm", &doc), -ELOOP);
  cr_assert_eq(kb_meta_write(dirlink, "vm", doc = versioned(2, 1)), -ELOOP);
  kb_doc_free(doc);
  unlink(dirlink);
  cr_assert_eq(kb_meta_read(tmpdir, "../vm", &doc), -EINVAL);
  free(target);
  free(link);
  free(dirlink);
}

Test(doc, files_are_generations_too)
{
  char *path = kb_printf("%s/domain.xml", tmpdir), *got = NULL, *name, *gpath;
  char **names = NULL;
  size_t len = 0;

  cr_assert_eq(kb_meta_read_file(path, &got, &len), -ENOENT);
  cr_assert_eq(kb_meta_write_file(path, "<domain>one</domain>\n", 21), 0);
  cr_assert_eq(kb_meta_write_file(path, "<domain>two</domain>\n", 21), 0);
  cr_assert_eq(kb_meta_write_file(path, "<domain>three</domain>\n", 23), 0);
  cr_assert_eq(count_files(tmpdir), 2);
  cr_assert_eq(kb_meta_read_file(path, &got, &len), 0);
  cr_assert_eq(len, 23);
  cr_assert_str_eq(got, "<domain>three</domain>\n");
  free(got);

  name = newest_gen(tmpdir, "domain.xml.");
  gpath = kb_printf("%s/%s", tmpdir, name);
  cr_assert_eq(truncate(gpath, 10), 0);
  cr_assert_eq(kb_meta_read_file(path, &got, &len), 0);
  cr_assert_str_eq(got, "<domain>two</domain>\n", "a torn newest file falls back to the previous");
  free(got);

  cr_assert_eq(kb_meta_write(tmpdir, "vm", kb_doc_new()), 0);
  cr_assert_eq(kb_meta_list_files(tmpdir, &names), 0);
  cr_assert_str_eq(names[0], "domain.xml");
  cr_assert_null(names[1]);
  kb_strv_free(names);
  cr_assert_eq(kb_meta_list(tmpdir, &names), 0);
  cr_assert_str_eq(names[0], "vm");
  cr_assert_null(names[1]);
  kb_strv_free(names);

  cr_assert_eq(kb_meta_remove_file(path), 0);
  cr_assert_eq(kb_meta_read_file(path, &got, &len), -ENOENT);
  free(name);
  free(gpath);
  free(path);
}

/* A child writes ever newer versions of a ~150 KB document in 256-byte
 * writes; it is killed with SIGKILL at random moments. Every time, what
 * kb_meta_read returns must be exactly one version, never older than the
 * last one seen, and the directory must not fill up. */
Test(doc, sigkill_mid_write_leaves_old_or_new, .timeout = 120)
{
  const int parts = 40, rounds = 40;
  struct kb_doc *doc = versioned(0, parts);
  long long last = 0;
  int round, torn = 0;

  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  srand((unsigned) time(NULL));
  for (round = 0; round < rounds; round++) {
    struct timespec ts;
    pid_t pid = fork();
    char *name, *path, *text = NULL;
    size_t len = 0;
    int status;

    cr_assert_neq(pid, -1);
    if (pid == 0) {
      long long v;
      setenv("KBOSS_TEST_WRITE_CHUNK", "256", 1);
      for (v = last + 1;; v++) {
        struct kb_doc *d = versioned(v, parts);
        if (kb_meta_write(tmpdir, "vm", d) < 0)
          _exit(3);
        kb_doc_free(d);
      }
    }
    ts.tv_sec = 0;
    ts.tv_nsec = (5 + rand() % 40) * 1000000L;
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status), "the writer failed on its own (status %d)", status);

    name = newest_gen(tmpdir, "vm.");
    path = kb_printf("%s/%s", tmpdir, name);
    cr_assert_eq(kb_read_file(path, &text, &len), 0);
    if (len < 35 || strncmp(text + len - 35, "# kboss-checksum: ", 18) != 0)
      torn++;
    free(text);
    free(path);
    free(name);

    cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
    long long v = kb_doc_get_ll(doc, "meta", "version", -1);
    cr_assert_geq(v, last, "went back from version %lld to %lld", last, v);
    assert_doc_is_version(doc, v, parts);
    kb_doc_free(doc);
    last = v;
    cr_assert_leq(count_files(tmpdir), 2, "more than the previous and the newest generation");
  }
  doc = versioned(last + 1, parts);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  cr_assert_eq(count_files(tmpdir), 2, "a clean write leaves the newest and the previous");
  cr_log_info("%d kills, %d left a torn newest generation, reached version %lld", rounds, torn, last);
  cr_assert_geq(torn, 1, "no kill landed mid-write: the test proved nothing");
  cr_assert_geq(last, 5);
}

/* issue 12: values read from the export that do not fit their field are
 * dropped (as if absent) and counted; free text keeps its bytes. */
Test(doc, values_checked_when_read)
{
  struct kb_doc *doc = NULL;
  const char *first = NULL;
  static const char text[] =
    "[backup]\n"
    "id = 20261201T000000Z-abcdef\n"
    "parent = ../../etc\n"
    "vm_uuid = not-a-uuid\n"
    "size = 12x\n"
    "virtual_size = 1048576\n"
    "compressed = maybe\n"
    "created = 2026-12-01T00:00:00Z\n"
    "hash = 0123456789abcdefZZ\n"
    "vm_name = \x1b[31mred\n"
    "[consolidation]\n"
    "disks = vda,../x\n";

  cr_assert_eq(kb_doc_parse(text, &doc, NULL), 0);
  cr_assert_str_eq(kb_doc_get(doc, "backup", "id"), "20261201T000000Z-abcdef");
  cr_assert_null(kb_doc_get(doc, "backup", "parent"));
  cr_assert_null(kb_doc_get(doc, "backup", "vm_uuid"));
  cr_assert_eq(kb_doc_get_ll(doc, "backup", "size", -7), -7);
  cr_assert_eq(kb_doc_get_ll(doc, "backup", "virtual_size", 0), 1048576);
  cr_assert_null(kb_doc_get(doc, "backup", "compressed"));
  cr_assert_str_eq(kb_doc_get(doc, "backup", "created"), "2026-12-01T00:00:00Z");
  cr_assert_null(kb_doc_get(doc, "backup", "hash"));
  cr_assert_str_eq(kb_doc_get(doc, "backup", "vm_name"), "\x1b[31mred");
  cr_assert_null(kb_doc_get(doc, "consolidation", "disks"));
  cr_assert_eq(kb_doc_invalid(doc, &first), 6);
  cr_assert_str_eq(first, "backup/parent");
  kb_doc_free(doc);
}

/* issue 12: a planted FIFO is an error at once, a huge (sparse) file is
 * refused before anything is allocated for it. */
Test(doc, read_file_refuses_fifo_and_huge_files)
{
  char *p = kb_printf("%s/fifo", tmpdir), *q = kb_printf("%s/huge", tmpdir), *text = NULL;
  int fd;

  cr_assert_eq(mkfifo(p, 0600), 0);
  cr_assert_eq(kb_read_file(p, &text, NULL), -EINVAL);
  fd = open(q, O_WRONLY | O_CREAT | O_EXCL, 0600);
  cr_assert_geq(fd, 0);
  cr_assert_eq(ftruncate(fd, (off_t) 8 << 40), 0, "sparse 8 TiB file: %m");
  close(fd);
  cr_assert_eq(kb_read_file(q, &text, NULL), -EFBIG);
  cr_assert_null(text);
  free(p);
  free(q);
}

/* issue 12: a sparse huge newest generation does not hide the document:
 * the reader takes the older one that verifies. */
Test(doc, huge_newest_generation_does_not_hide_the_document)
{
  struct kb_doc *doc = kb_doc_new(), *back = NULL;
  char *name, *path;
  int fd;

  cr_assert_eq(kb_doc_set(doc, "backup", "id", "b1"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "backup", doc), 0);
  kb_doc_free(doc);
  name = newest_gen(tmpdir, "backup.");
  cr_assert_not_null(name);
  /* backup.NNN.ini with a larger number, 8 TiB of holes. */
  cr_assert_eq(strlen(name), strlen("backup.000000001.ini"), "%s", name);
  path = kb_printf("%s/backup.900000000.ini", tmpdir);
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  cr_assert_geq(fd, 0, "%s: %m", path);
  cr_assert_eq(ftruncate(fd, (off_t) 8 << 40), 0);
  close(fd);
  cr_assert_eq(kb_meta_read(tmpdir, "backup", &back), 0);
  cr_assert_str_eq(kb_doc_get(back, "backup", "id"), "b1");
  kb_doc_free(back);
  free(name);
  free(path);
}
