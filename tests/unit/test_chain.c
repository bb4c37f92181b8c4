/* kb_chain_validate(): one test per rule, on real images made by qemu-img
 * in a temporary chain folder laid out like a catalog's
 * (<chain>/<backup>/vda.qcow2, incrementals backed by ../<parent>/vda.qcow2). */
#include <config.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"
#include "util.h"

static char root[64];      /* holds the chain folder "c" and files "outside" it */
static char dir[96];       /* the chain folder */

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
  char *cmd = NULL, *full = NULL;
  va_list ap;
  int r;

  va_start(ap, fmt);
  cr_assert(vasprintf(&cmd, fmt, ap) >= 0);
  va_end(ap);
  cr_assert(asprintf(&full, "cd '%s' && (%s) >/dev/null 2>&1", dir, cmd) >= 0);
  r = system(full);
  cr_assert_eq(r, 0, "command failed: %s", cmd);
  free(cmd);
  free(full);
}

static void setup(void)
{
  strcpy(root, "/tmp/kboss-chain-XXXXXX");
  cr_assert_not_null(mkdtemp(root));
  snprintf(dir, sizeof dir, "%s/c", root);
  cr_assert_eq(mkdir(dir, 0700), 0);
  /* A full backup; tests add incrementals in b2 and b3. */
  sh("mkdir b1 b2 b3 && qemu-img create -q -f qcow2 b1/vda.qcow2 4M");
}

static void teardown(void)
{
  (void) kb_rm_rf(root);
}

static void incremental(const char *b, const char *backing, const char *fmt)
{
  sh("qemu-img create -q -f qcow2 -u -b '%s' -F %s %s/vda.qcow2 4M", backing, fmt, b);
}

/* Validation of DIR/TOP must fail with -EPERM and a message naming WHAT
 * and containing WORDS. */
static void expect_refused(const char *top, const char *what, const char *words)
{
  struct kb_chain *c = NULL;
  char *err = NULL, *path = kb_printf("%s/%s", dir, top);
  int r = kb_chain_validate(dir, path, &c, &err);

  cr_assert_eq(r, -EPERM, "expected -EPERM, got %d (%s)", r, err ? err : "no message");
  cr_assert_null(c);
  cr_assert_not_null(err);
  cr_assert(strstr(err, what), "message '%s' does not name '%s'", err, what);
  cr_assert(strstr(err, words), "message '%s' lacks '%s'", err, words);
  free(err);
  free(path);
}

TestSuite(chain, .init = setup, .fini = teardown);

Test(chain, good_chain_top_to_base_and_qemu_json)
{
  struct kb_chain *c = NULL;
  char *err = NULL, *top, *json, *want;

  incremental("b2", "../b1/vda.qcow2", "qcow2");
  incremental("b3", "../b2/./vda.qcow2", "qcow2");
  top = kb_printf("%s/b3/vda.qcow2", dir);
  cr_assert_eq(kb_chain_validate(dir, top, &c, &err), 0, "%s", err ? err : "");
  cr_assert_eq(c->n, 3);
  cr_assert_str_eq(c->rel[0], "b3/vda.qcow2");
  cr_assert_str_eq(c->rel[1], "b2/vda.qcow2");
  cr_assert_str_eq(c->rel[2], "b1/vda.qcow2");
  cr_assert_str_eq(c->files[2], want = kb_printf("%s/b1/vda.qcow2", dir));
  cr_assert_eq(c->virtual_size, 4 << 20);
  free(want);

  json = kb_chain_qemu_json(c, NULL);
  cr_assert_not_null(json);
  want = kb_printf("json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"%s/b3/vda.qcow2\"},"
                   "\"backing\":{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"%s/b2/vda.qcow2\"},"
                   "\"backing\":{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"%s/b1/vda.qcow2\"},"
                   "\"backing\":null}}}", dir, dir, dir);
  cr_assert_str_eq(json, want);
  free(json);
  free(want);
  /* qemu opens exactly that description. */
  json = kb_chain_qemu_json(c, NULL);
  sh("qemu-img compare '%s' b3/vda.qcow2 && qemu-img convert -O raw '%s' r.raw", json, json);
  free(json);

  /* A relative top works the same. */
  kb_chain_free(c);
  cr_assert_eq(kb_chain_validate(dir, "b2/vda.qcow2", &c, &err), 0);
  cr_assert_eq(c->n, 2);
  json = kb_chain_qemu_json(c, "/var/lib/overlay.qcow2");
  cr_assert(strncmp(json, "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"/var/lib/overlay.qcow2\"},"
                          "\"backing\":{", 86) == 0, "%s", json);
  free(json);
  kb_chain_free(c);
  free(top);
}

Test(chain, external_data_file_refused)
{
  sh("qemu-img create -q -f qcow2 -o data_file=%s/host-data b2/vda.qcow2 4M", root);
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "external data file");
  /* Also as a backing member under a clean top. */
  sh("rm b2/vda.qcow2 && qemu-img create -q -f qcow2 -o data_file=%s/host-data b1/x.qcow2 4M", root);
  incremental("b2", "../b1/x.qcow2", "qcow2");
  expect_refused("b2/vda.qcow2", "b1/x.qcow2", "external data file");
}

Test(chain, raw_member_refused)
{
  sh("qemu-img create -q -f raw b1/raw.img 4M");
  incremental("b2", "../b1/raw.img", "raw");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "explicit qcow2 backing format");
  /* A raw file that claims to be qcow2 is read by our reader and refused. */
  sh("rm b2/vda.qcow2");
  incremental("b2", "../b1/raw.img", "qcow2");
  expect_refused("b2/vda.qcow2", "b1/raw.img", "not a qcow2 image");
  /* And a raw top. */
  expect_refused("b1/raw.img", "b1/raw.img", "not a qcow2 image");
}

Test(chain, vmdk_member_refused)
{
  /* A VMDK descriptor can name extents anywhere on the host. */
  sh("qemu-img create -q -f vmdk b1/d.vmdk 4M");
  incremental("b2", "../b1/d.vmdk", "vmdk");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "explicit qcow2 backing format");
  sh("rm b2/vda.qcow2");
  incremental("b2", "../b1/d.vmdk", "qcow2");
  expect_refused("b2/vda.qcow2", "b1/d.vmdk", "not a qcow2 image");
}

Test(chain, symlink_member_refused)
{
  /* To a file outside the folder, and even to one inside it. */
  sh("qemu-img create -q -f qcow2 %s/outside.qcow2 4M && ln -s %s/outside.qcow2 b1/out.qcow2", root, root);
  incremental("b2", "../b1/out.qcow2", "qcow2");
  expect_refused("b2/vda.qcow2", "b1/out.qcow2", "symlink");
  sh("ln -s vda.qcow2 b1/alias.qcow2");
  incremental("b3", "../b1/alias.qcow2", "qcow2");
  expect_refused("b3/vda.qcow2", "b1/alias.qcow2", "symlink");
  /* A symlinked backup folder. */
  sh("mkdir %s/elsewhere && cp b1/vda.qcow2 %s/elsewhere/ && ln -s %s/elsewhere b4", root, root, root);
  sh("mkdir b5");
  incremental("b5", "../b4/vda.qcow2", "qcow2");
  expect_refused("b5/vda.qcow2", "b4/vda.qcow2", "symlink");
  /* The top itself. */
  expect_refused("b1/out.qcow2", "b1/out.qcow2", "symlink");
}

Test(chain, symlinked_chain_folder_refused)
{
  struct kb_chain *c = NULL;
  char *err = NULL, *link = kb_printf("%s/link", root), *top = kb_printf("%s/b1/vda.qcow2", link);

  cr_assert_eq(symlink(dir, link), 0);
  cr_assert_eq(kb_chain_validate(link, top, &c, &err), -EPERM);
  cr_assert(strstr(err, "is a symlink"), "%s", err);
  free(err);
  free(link);
  free(top);
}

Test(chain, member_outside_folder_refused)
{
  sh("qemu-img create -q -f qcow2 %s/outside.qcow2 4M", root);
  incremental("b2", "../../outside.qcow2", "qcow2");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "leaves the chain folder");
  sh("rm b2/vda.qcow2");
  incremental("b2", "/etc/../tmp/whatever.qcow2", "qcow2");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "absolute");
  /* A top outside the folder. */
  {
    struct kb_chain *c = NULL;
    char *err = NULL, *top = kb_printf("%s/outside.qcow2", root);
    cr_assert_eq(kb_chain_validate(dir, top, &c, &err), -EPERM);
    cr_assert(strstr(err, "outside.qcow2") && strstr(err, "not inside the chain folder"), "%s", err);
    free(err);
    free(top);
    cr_assert_eq(kb_chain_validate(dir, "b1/../../outside.qcow2", &c, &err), -EPERM);
    free(err);
  }
}

Test(chain, json_and_protocol_backing_refused)
{
  incremental("b2", "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"/etc/hostname\"}}", "qcow2");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "json:/protocol");
  sh("rm b2/vda.qcow2");
  incremental("b2", "nbd:127.0.0.1:10809", "qcow2");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "json:/protocol");
  /* Odd bytes are not plain names either. */
  sh("rm b2/vda.qcow2");
  incremental("b2", "../b1/vd a.qcow2", "qcow2");
  expect_refused("b2/vda.qcow2", "b2/vda.qcow2", "not a plain name");
}

Test(chain, missing_backing_format_refused)
{
  incremental("b2", "../b1/vda.qcow2", "qcow2");
  /* qemu-img 7.2 insists on -F: turn its backing-format extension into an
   * unknown one, as an older writer or a hostile host leaves it. */
  incremental("b3", "../b2/vda.qcow2", "qcow2");
  {
    char *p = kb_printf("%s/b3/vda.qcow2", dir);
    FILE *f = fopen(p, "r+b");
    unsigned char buf[4096];
    size_t i, n;

    cr_assert_not_null(f);
    n = fread(buf, 1, sizeof buf, f);
    for (i = 0; i + 4 <= n; i++)
      if (buf[i] == 0xe2 && buf[i + 1] == 0x79 && buf[i + 2] == 0x2a && buf[i + 3] == 0xca)
        break;
    cr_assert_lt(i + 4, n);
    buf[i] = 0x0b;
    cr_assert_eq(fseek(f, (long) i, SEEK_SET), 0);
    cr_assert_eq(fwrite(buf + i, 1, 1, f), 1);
    fclose(f);
    free(p);
  }
  sh("! qemu-img info b3/vda.qcow2 | grep -q 'backing file format'");
  expect_refused("b3/vda.qcow2", "b3/vda.qcow2", "no backing format");
}

Test(chain, depth_bound_and_loop)
{
  struct kb_chain *c = NULL;
  char *err = NULL;
  int i;

  /* KB_CHAIN_MAX_DEPTH members are fine, one more is not.  One image made
   * by qemu-img, the others copies with the backing name patched (the
   * names have one width), which is much faster than qemu-img each time. */
  sh("mkdir d && cd d && qemu-img create -q -f qcow2 0000.qcow2 1M && "
     "qemu-img create -q -f qcow2 -u -b 0000.qcow2 -F qcow2 t.qcow2 1M");
  {
    char *tp = kb_printf("%s/d/t.qcow2", dir), *buf = NULL, *hit;
    size_t len = 0;

    cr_assert_eq(kb_read_file(tp, &buf, &len), 0);
    hit = memmem(buf, len, "0000.qcow2", 10);
    cr_assert_not_null(hit);
    for (i = 1; i <= KB_CHAIN_MAX_DEPTH; i++) {
      char *p = kb_printf("%s/d/%04d.qcow2", dir, i), name[16];
      FILE *f;

      snprintf(name, sizeof name, "%04d.qcow2", i - 1);
      memcpy(hit, name, 10);
      f = fopen(p, "wb");
      cr_assert_not_null(f);
      cr_assert_eq(fwrite(buf, 1, len, f), len);
      fclose(f);
      free(p);
    }
    free(buf);
    free(tp);
  }
  i = KB_CHAIN_MAX_DEPTH - 1;
  {
    char *top = kb_printf("d/%04d.qcow2", i);
    cr_assert_eq(kb_chain_validate(dir, top, &c, &err), 0, "%s", err ? err : "");
    cr_assert_eq(c->n, KB_CHAIN_MAX_DEPTH);
    kb_chain_free(c);
    free(top);
  }
  {
    char *top = kb_printf("d/%04d.qcow2", KB_CHAIN_MAX_DEPTH), *want = kb_printf("longer than %d", KB_CHAIN_MAX_DEPTH);
    expect_refused(top, top, want);
    free(top);
    free(want);
  }
  /* Two images naming each other. */
  sh("qemu-img create -q -f qcow2 -u -b ../b3/vda.qcow2 -F qcow2 b2/vda.qcow2 1M");
  sh("qemu-img create -q -f qcow2 -u -b ../b2/vda.qcow2 -F qcow2 b3/vda.qcow2 1M");
  expect_refused("b3/vda.qcow2", "b3/vda.qcow2", "loops");
}

Test(chain, fifo_member_refused_at_once)
{
  struct timespec a, b;

  sh("mkfifo b1/f.qcow2");
  incremental("b2", "../b1/f.qcow2", "qcow2");
  clock_gettime(CLOCK_MONOTONIC, &a);
  expect_refused("b2/vda.qcow2", "b1/f.qcow2", "not a regular file");
  expect_refused("b1/f.qcow2", "b1/f.qcow2", "not a regular file");
  clock_gettime(CLOCK_MONOTONIC, &b);
  cr_assert_lt(b.tv_sec - a.tv_sec, 5);
}

Test(chain, missing_member_is_an_error_naming_it)
{
  struct kb_chain *c = NULL;
  char *err = NULL;

  incremental("b2", "../b9/vda.qcow2", "qcow2");
  cr_assert_eq(kb_chain_validate(dir, "b2/vda.qcow2", &c, &err), -ENOENT);
  cr_assert(strstr(err, "b9/vda.qcow2"), "%s", err);
  free(err);
}

/* What qemu opens is what was checked: headers rewritten after the check
 * (the incremental's backing name redirected to a file outside the folder,
 * the base given a backing file of its own) change nothing for qemu-img
 * handed kb_chain_qemu_json(). */
Test(chain, headers_rewritten_after_the_check_are_not_followed)
{
  struct kb_chain *c = NULL;
  char *err = NULL, *json;

  sh("qemu-io -f qcow2 -c 'write -P 0x11 0 64k' b1/vda.qcow2");
  incremental("b2", "../b1/vda.qcow2", "qcow2");
  sh("qemu-img create -q -f qcow2 %s/outside.qcow2 4M && qemu-io -f qcow2 -c 'write -P 0x77 0 64k' %s/outside.qcow2",
     root, root);
  cr_assert_eq(kb_chain_validate(dir, "b2/vda.qcow2", &c, &err), 0, "%s", err ? err : "");
  json = kb_chain_qemu_json(c, NULL);
  /* The attacker's move, after the check. */
  sh("qemu-img rebase -q -u -f qcow2 -b ../../outside.qcow2 -F qcow2 b2/vda.qcow2");
  sh("qemu-img rebase -q -u -f qcow2 -b /nonexistent.qcow2 -F qcow2 b1/vda.qcow2");
  sh("qemu-img convert -O raw '%s' out.raw", json);
  /* The base's bytes came out, not the outside file's. */
  sh("[ \"$(head -c 65536 out.raw | tr -d '\\021' | wc -c)\" = 0 ]");
  /* Following the headers would have read the outside file. */
  sh("qemu-img rebase -q -u -f qcow2 -b vda.qcow2 -F qcow2 b1/vda.qcow2 || true");
  sh("rm b1/vda.qcow2 && qemu-img create -q -f qcow2 b1/vda.qcow2 4M && qemu-img convert -O raw b2/vda.qcow2 h.raw "
     "&& [ \"$(head -c 65536 h.raw | tr -d '\\167' | wc -c)\" = 0 ]");
  free(json);
  kb_chain_free(c);
}
