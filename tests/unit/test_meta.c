/* Catalog metadata when the export fails: an I/O error reading the newest
 * generation fails the update and rolls nothing back (EIO injected for
 * real with tests/faultinject/eio-preload.so in a separate process); a
 * read-modify-write that finds a newer generation carries its changes over
 * instead of overwriting; junk names, oversized files and FIFOs named as
 * generations neither hang nor make everything fail. */
#include <config.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog.h"
#include "doc.h"
#include "util.h"

static char tmpdir[64];

static void setup(void)
{
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kboss-meta-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
  kb_rm_rf(tmpdir);
}

TestSuite(meta, .init = setup, .fini = teardown, .timeout = 60);

static const char *builddir(void)
{
  const char *d = getenv("KBOSS_TESTS_BUILDDIR");

  return d ? d : ".";
}

static const char *hide_match;   /* names the shim hides from listings */

/* Run tests/meta-tool with ARGS; under the EIO shim for files whose path
 * contains EIO_MATCH when that is not NULL. Its stdout+stderr in *OUT. */
static int meta_tool(const char *eio_match, char **out, const char *const args[])
{
  char *tool = kb_printf("%s/meta-tool", builddir());
  char *shim = kb_printf("%s/faultinject/eio-preload.so", builddir());
  const char *argv[10];
  int p[2], status, i;
  size_t len = 0;
  char *buf = malloc(4096);
  pid_t pid;
  ssize_t n;

  cr_assert_not_null(buf);
  cr_assert_eq(access(tool, X_OK), 0, "%s missing", tool);
  cr_assert_eq(access(shim, R_OK), 0, "%s missing", shim);
  argv[0] = tool;
  for (i = 0; args[i]; i++)
    argv[i + 1] = args[i];
  argv[i + 1] = NULL;
  cr_assert_eq(pipe(p), 0);
  pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    close(p[0]);
    if (eio_match || hide_match) {
      setenv("LD_PRELOAD", shim, 1);
      setenv("KBOSS_EIO_MATCH", eio_match ? eio_match : "", 1);
      setenv("KBOSS_HIDE_MATCH", hide_match ? hide_match : "", 1);
    }
    execv(tool, (char *const *) argv);
    _exit(127);
  }
  close(p[1]);
  while ((n = read(p[0], buf + len, 4095 - len)) > 0)
    len += (size_t) n;
  buf[len] = '\0';
  close(p[0]);
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  *out = buf;
  free(tool);
  free(shim);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int count_names(const char *dir, const char *prefix)
{
  DIR *d = opendir(dir);
  struct dirent *de;
  int n = 0;

  cr_assert_not_null(d);
  while ((de = readdir(d)))
    if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
      n++;
  closedir(d);
  return n;
}

static void update(const char *key, const char *value)
{
  struct kb_doc *doc = NULL;
  int r = kb_meta_read(tmpdir, "vm", &doc);

  if (r == -ENOENT)
    doc = kb_doc_new();
  else
    cr_assert_eq(r, 0);
  cr_assert_eq(kb_doc_set(doc, "vm", key, value), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
}

static void assert_value(const char *key, const char *want)
{
  struct kb_doc *doc = NULL;

  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), 0);
  if (want)
    cr_assert_str_eq(kb_doc_get(doc, "vm", key) ? kb_doc_get(doc, "vm", key) : "(none)", want,
                     "vm.%s", key);
  else
    cr_assert_null(kb_doc_get(doc, "vm", key), "vm.%s", key);
  kb_doc_free(doc);
}

Test(meta, eio_on_the_newest_generation_fails_the_update_and_rolls_nothing_back)
{
  char *out = NULL, path[160];
  struct stat st;

  update("name", "web-01");                      /* generation 1 */
  update("state", "Ready");                      /* generation 2: the newest */
  snprintf(path, sizeof path, "%s/vm.000000002.ini", tmpdir);
  cr_assert_eq(stat(path, &st), 0);

  /* Reads of generation 2 fail with EIO: the update fails with an error
   * and writes nothing (it used to rebuild the record from generation 1,
   * losing "state", and exit 0). */
  cr_assert_eq(meta_tool("/vm.000000002.ini", &out,
                         (const char *const[]) { "update", tmpdir, "vm", "vm", "owner", "x", NULL }),
               1, "%s", out);
  cr_assert_not_null(strstr(out, "Input/output error"), "%s", out);
  free(out);
  /* A reader gets the error too, not the older generation as current. */
  cr_assert_eq(meta_tool("/vm.000000002.ini", &out,
                         (const char *const[]) { "get", tmpdir, "vm", "vm", "name", NULL }),
               1, "an older generation was taken for the newest: %s", out);
  cr_assert_not_null(strstr(out, "Input/output error"), "%s", out);
  free(out);
  cr_assert_eq(stat(path, &st), 0, "the newest generation was removed");
  cr_assert_eq(count_names(tmpdir, "vm."), 2, "something was written or pruned");

  /* The fault gone: the newest content is still the newest. */
  cr_assert_eq(meta_tool(NULL, &out,
                         (const char *const[]) { "get", tmpdir, "vm", "vm", "state", NULL }), 0, "%s", out);
  cr_assert_str_eq(out, "Ready\n");
  free(out);
  cr_assert_eq(meta_tool(NULL, &out,
                         (const char *const[]) { "update", tmpdir, "vm", "vm", "owner", "x", NULL }), 0, "%s", out);
  free(out);
  assert_value("name", "web-01");
  assert_value("state", "Ready");
  assert_value("owner", "x");
}

Test(meta, eio_on_an_older_generation_does_not_stop_readers)
{
  char *out = NULL;

  update("name", "web-01");
  update("state", "Ready");
  cr_assert_eq(meta_tool("/vm.000000001.ini", &out,
                         (const char *const[]) { "get", tmpdir, "vm", "vm", "state", NULL }), 0, "%s", out);
  cr_assert_str_eq(out, "Ready\n");
  free(out);
}

Test(meta, writers_in_between_are_merged_not_overwritten)
{
  struct kb_doc *d1 = NULL, *d2 = NULL, *d3 = NULL, *d4 = NULL;

  update("a", "1");
  update("b", "1");
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &d1), 0);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &d2), 0);
  cr_assert_eq(kb_doc_set(d1, "vm", "a", "2"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", d1), 0);
  /* D2 was read before D1's write: its change is carried over onto it. */
  cr_assert_eq(kb_doc_set(d2, "vm", "b", "2"), 0);
  cr_assert_eq(kb_doc_set(d2, "extra", "k", "v"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", d2), 0);
  assert_value("a", "2");
  assert_value("b", "2");
  cr_assert_str_eq(kb_doc_get(d2, "vm", "a"), "2", "the writer's copy shows what was written");

  /* Both change the same value: the later write is the caller's change
   * made again on the newest record (it wins that key), and what only the
   * other one changed stays. */
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &d3), 0);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &d4), 0);
  cr_assert_eq(kb_doc_set(d3, "vm", "a", "3"), 0);
  cr_assert_eq(kb_doc_set(d3, "vm", "d", "3"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", d3), 0);
  cr_assert_eq(kb_doc_set(d4, "vm", "a", "4"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", d4), 0);
  assert_value("a", "4");
  assert_value("d", "3");

  /* D2, written once, writes again on top of the newer generations. */
  cr_assert_eq(kb_doc_set(d2, "vm", "c", "1"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", d2), 0);
  assert_value("a", "4");
  assert_value("c", "1");
  assert_value("d", "3");
  kb_doc_free(d1);
  kb_doc_free(d2);
  kb_doc_free(d3);
  kb_doc_free(d4);
}

/* The case: a stale directory listing hides another host's newer
 * generation. The update reads the old one, and its O_EXCL create meets
 * the hidden file: it must re-read and apply its change to the newer
 * record, not land its stale copy above it. */
Test(meta, a_stale_listing_does_not_lose_the_hidden_newer_generation)
{
  char *out = NULL;

  update("a", "1");                              /* generation 1 */
  update("b", "2");                              /* generation 2, "another host" */
  hide_match = "vm.000000002.ini";               /* our listing does not show it */
  cr_assert_eq(meta_tool(NULL, &out,
                         (const char *const[]) { "update", tmpdir, "vm", "vm", "c", "3", NULL }),
               0, "%s", out);
  free(out);
  hide_match = NULL;
  assert_value("a", "1");
  assert_value("b", "2");
  assert_value("c", "3");
}

static void junk(unsigned long long from, unsigned long long to)
{
  unsigned long long g;

  for (g = from; g <= to; g++) {
    char path[160];
    int fd;
    snprintf(path, sizeof path, "%s/vm.%09llu.ini", tmpdir, g);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
  }
}

Test(meta, junk_names_beyond_the_cap_are_reported_not_fatal)
{
  struct kb_doc *doc = NULL;

  /* 5000 junk generations and nothing else: "cannot see a record past
   * them" (not "no record"); a blind write goes above them. Then reads
   * and read-modify-writes work as usual. */
  junk(1, 5000);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), -EOVERFLOW);
  doc = kb_doc_new();
  cr_assert_eq(kb_doc_set(doc, "vm", "state", "New"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  doc = NULL;
  update("state", "Ready");
  assert_value("state", "Ready");
  update("state", "Running");
  assert_value("state", "Running");
  cr_assert_lt(count_names(tmpdir, "vm."), 5000, "older junk is pruned");

  /* 5000 junk generations above it: the reader cannot see past them and
   * says so (not "no record"); a writer clears what it sees and goes on. */
  junk(10001, 15000);
  cr_assert_eq(kb_meta_read(tmpdir, "vm", &doc), -EOVERFLOW);
  doc = kb_doc_new();
  cr_assert_eq(kb_doc_set(doc, "vm", "state", "Rebuilt"), 0);
  cr_assert_eq(kb_meta_write(tmpdir, "vm", doc), 0);
  kb_doc_free(doc);
  assert_value("state", "Rebuilt");
}

Test(meta, oversized_or_fifo_generations_are_skipped_not_read)
{
  char path[160];
  int fd;

  update("state", "Ready");
  /* A sparse 8 TB "newest generation". */
  snprintf(path, sizeof path, "%s/vm.000000008.ini", tmpdir);
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  cr_assert_geq(fd, 0);
  cr_assert_eq(ftruncate(fd, 8LL << 40), 0);
  close(fd);
  /* A FIFO above it: opening it must not block. */
  snprintf(path, sizeof path, "%s/vm.000000009.ini", tmpdir);
  cr_assert_eq(mkfifo(path, 0600), 0);
  assert_value("state", "Ready");
  update("state", "Running");
  assert_value("state", "Running");
  cr_assert_eq(access(path, F_OK), -1, "the FIFO was not pruned");
  cr_assert_eq(count_names(tmpdir, "vm."), 2);
}

Test(meta, documents_and_files_have_a_maximum_size)
{
  size_t big = (16u << 20) + 1;
  char *content = malloc(big), *path = kb_printf("%s/domain.xml", tmpdir);

  cr_assert_not_null(content);
  memset(content, 'x', big);
  cr_assert_eq(kb_meta_write_file(path, content, big), -EFBIG);
  cr_assert_eq(kb_meta_write_file(path, content, big - 1), 0);
  free(content);
  free(path);
}
