/* The validation steps. Each fills a struct vl_step; none prints. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <guestfs.h>
#include <json.h>
#include <libvirt/libvirt-qemu.h>

#include "catalog.h"
#include "png.h"
#include "util.h"
#include "validate.h"
#include "virt.h"

static void step_set(struct vl_step *s, enum vl_status st, char *msg)
{
  s->status = st;
  free(s->message);
  s->message = msg;
}

static int setting_int(struct vl_ctx *c, const char *vm_name, const char *key)
{
  return (int) kb_config_int(c->cfg, vm_name, key);
}

/* One agent command; the reply's "return" member (caller puts) or NULL. */
static struct json_object *agent(struct vl_vm *vm, struct json_object *cmd, int timeout_s)
{
  char *reply = virDomainQemuAgentCommand(vm->dom, json_object_to_json_string(cmd), timeout_s, 0);
  struct json_object *j, *ret = NULL;

  if (!reply)
    return NULL;
  j = json_tokener_parse(reply);
  free(reply);
  if (j && json_object_object_get_ex(j, "return", &ret))
    json_object_get(ret);
  else
    ret = NULL;
  json_object_put(j);
  return ret;
}

static struct json_object *agent_simple(struct vl_vm *vm, const char *execute, int timeout_s)
{
  struct json_object *cmd = json_object_new_object(), *r;
  json_object_object_add(cmd, "execute", json_object_new_string(execute));
  r = agent(vm, cmd, timeout_s);
  json_object_put(cmd);
  return r;
}

/* Wait until guest-ping answers or TIMEOUT_S since the VM started.  Until
 * the agent has opened its port libvirt refuses at once, so asking every
 * 100 ms costs nothing, and the step's time (recorded in tenths of a
 * second) is when the agent answered, not up to half a second later. */
static bool wait_agent(struct vl_vm *vm, int timeout_s)
{
  int64_t deadline = vm->started_ms + (int64_t) timeout_s * 1000;

  while (!vl_cancel) {
    struct json_object *r = agent_simple(vm, "guest-ping", 2);
    if (r) {
      json_object_put(r);
      vm->agent_up = true;
      return true;
    }
    if (virDomainIsActive(vm->dom) != 1 || kb_mono_ms() >= deadline)
      return false;
    usleep(100 * 1000);
  }
  return false;
}

void vl_step_wait_for_boot(struct vl_ctx *c, const char *vm_name, struct vl_vm *vm, struct vl_step *s)
{
  int timeout = setting_int(c, vm_name, "backup.validation.boot.default.timeout");

  if (wait_agent(vm, timeout))
    step_set(s, VL_OK, kb_printf("the guest agent answered %.1fs after start",
                                 (kb_mono_ms() - vm->started_ms) / 1000.0));
  else if (virDomainIsActive(vm->dom) != 1)
    step_set(s, VL_FAILED, strdup("the validation VM stopped before its guest agent answered"));
  else
    step_set(s, VL_FAILED, kb_printf("no guest agent answer within %d s of start", timeout));
}

static int b64val(int ch)
{
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+') return 62;
  if (ch == '/') return 63;
  return -1;
}

/* Decode base64 (padding and blanks tolerated) into a malloc'd NUL-terminated buffer. */
static char *b64decode(const char *in, size_t *ret_len)
{
  size_t n = strlen(in), o = 0;
  char *out = malloc(n / 4 * 3 + 4);
  unsigned acc = 0;
  int bits = 0;

  if (!out)
    return NULL;
  for (; *in; in++) {
    int v = b64val((unsigned char) *in);
    if (v < 0)
      continue;
    acc = (acc << 6) | (unsigned) v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (char) ((acc >> bits) & 0xff);
    }
  }
  out[o] = '\0';
  *ret_len = o;
  return out;
}

static size_t trim_len(const char *s, size_t len)
{
  while (len && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' || s[len - 1] == '\t'))
    len--;
  return len;
}

void vl_step_execute_command(struct vl_ctx *c, const char *vm_name, struct vl_vm *vm, struct vl_step *s)
{
  const char *cmdline = kb_config_vm_setting(c->cfg, vm_name, "backupValidationCommand");
  const char *args = kb_config_vm_setting(c->cfg, vm_name, "backupValidationCommandArguments");
  const char *expected = kb_config_vm_setting(c->cfg, vm_name, "backupValidationCommandExpectedResult");
  int timeout = setting_int(c, vm_name, "backup.validation.script.default.timeout");
  struct json_object *cmd, *a, *argv, *r, *pidobj;
  int64_t pid, deadline;
  CLEANUP_FREE char *argcopy = NULL;

  if (!cmdline || !*cmdline) {
    step_set(s, VL_SKIPPED, strdup("no backupValidationCommand is set for the VM"));
    return;
  }
  if (!vm->agent_up &&
      !wait_agent(vm, setting_int(c, vm_name, "backup.validation.boot.default.timeout"))) {
    step_set(s, VL_FAILED, strdup("the guest agent does not answer"));
    return;
  }
  cmd = json_object_new_object();
  a = json_object_new_object();
  argv = json_object_new_array();
  json_object_object_add(cmd, "execute", json_object_new_string("guest-exec"));
  json_object_object_add(a, "path", json_object_new_string(cmdline));
  /* Arguments are split on blanks. */
  if (args && (argcopy = strdup(args))) {
    char *save = NULL, *tok;
    for (tok = strtok_r(argcopy, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save))
      json_object_array_add(argv, json_object_new_string(tok));
  }
  json_object_object_add(a, "arg", argv);
  json_object_object_add(a, "capture-output", json_object_new_boolean(1));
  json_object_object_add(cmd, "arguments", a);
  r = agent(vm, cmd, 10);
  json_object_put(cmd);
  if (!r || !json_object_object_get_ex(r, "pid", &pidobj)) {
    json_object_put(r);
    step_set(s, VL_FAILED, kb_printf("guest-exec of %s failed: %s", cmdline, kb_virt_error()));
    return;
  }
  pid = json_object_get_int64(pidobj);
  json_object_put(r);

  deadline = kb_mono_ms() + (int64_t) timeout * 1000;
  while (!vl_cancel) {
    struct json_object *exited, *code, *out;
    cmd = json_object_new_object();
    a = json_object_new_object();
    json_object_object_add(cmd, "execute", json_object_new_string("guest-exec-status"));
    json_object_object_add(a, "pid", json_object_new_int64(pid));
    json_object_object_add(cmd, "arguments", a);
    r = agent(vm, cmd, 5);
    json_object_put(cmd);
    if (r && json_object_object_get_ex(r, "exited", &exited) && json_object_get_boolean(exited)) {
      int exitcode = json_object_object_get_ex(r, "exitcode", &code) ? json_object_get_int(code) : -1;
      const char *out64 = json_object_object_get_ex(r, "out-data", &out) ? json_object_get_string(out) : "";
      size_t olen = 0, elen = 0;
      CLEANUP_FREE char *got = b64decode(out64 ? out64 : "", &olen);
      CLEANUP_FREE char *want = expected ? b64decode(expected, &elen) : NULL;
      json_object_put(r);
      if (!got || (expected && !want)) {
        step_set(s, VL_FAILED, strdup("out of memory"));
        return;
      }
      olen = trim_len(got, olen);
      got[olen] = '\0';
      if (expected) {
        elen = trim_len(want, elen);
        if (olen == elen && memcmp(got, want, olen) == 0)
          step_set(s, VL_OK, kb_printf("%s printed the expected result (exit code %d)", cmdline, exitcode));
        else
          step_set(s, VL_FAILED, kb_printf("%s printed \"%.60s\", expected \"%.60s\" (exit code %d)",
                                           cmdline, got, want, exitcode));
      } else if (exitcode == 0)
        step_set(s, VL_OK, kb_printf("%s exited with code 0", cmdline));
      else
        step_set(s, VL_FAILED, kb_printf("%s exited with code %d", cmdline, exitcode));
      return;
    }
    json_object_put(r);
    if (kb_mono_ms() >= deadline) {
      step_set(s, VL_FAILED, kb_printf("%s did not finish within %d s", cmdline, timeout));
      return;
    }
    usleep(300 * 1000);
  }
  step_set(s, VL_FAILED, strdup("interrupted"));
}

static int stream_sink(virStreamPtr st, const char *data, size_t nbytes, void *opaque)
{
  struct { char *buf; size_t len, cap; } *b = opaque;
  (void) st;
  if (nbytes > 64 * 1024 * 1024 || b->len + nbytes > 256 * 1024 * 1024)
    return -1;   /* no display is that large */
  if (b->len + nbytes > b->cap) {
    size_t cap = (b->len + nbytes) * 2;
    char *n = realloc(b->buf, cap);
    if (!n)
      return -1;
    b->buf = n;
    b->cap = cap;
  }
  memcpy(b->buf + b->len, data, nbytes);
  b->len += nbytes;
  /* virStreamRecvAll() calls the sink again for whatever it did not take:
   * returning 0 here made it append the same bytes forever. */
  return (int) nbytes;
}

void vl_step_screenshot(struct vl_ctx *c, const char *vm_name, const char *png_path, struct vl_vm *vm,
                        struct vl_step *s)
{
  int wait = setting_int(c, vm_name, "backup.validation.screenshot.default.wait");
  int64_t when = vm->started_ms + (int64_t) wait * 1000;
  struct { char *buf; size_t len, cap; } b = { NULL, 0, 0 };
  virStreamPtr st;
  char *mime;
  unsigned char *png = NULL;
  size_t pnglen = 0;
  unsigned w = 0, h = 0;
  const char *path = png_path;
  int r;

  /* The wait counts from the VM's start. */
  while (!vl_cancel && kb_mono_ms() < when && virDomainIsActive(vm->dom) == 1)
    usleep(200 * 1000);
  if (virDomainIsActive(vm->dom) != 1) {
    step_set(s, VL_FAILED, strdup("the validation VM stopped before the screenshot"));
    return;
  }
  st = virStreamNew(c->conn, 0);
  if (!st || !path) {
    step_set(s, VL_FAILED, kb_printf("cannot take a screenshot: %s", kb_virt_error()));
    return;
  }
  mime = virDomainScreenshot(vm->dom, st, 0, 0);
  if (!mime) {
    step_set(s, VL_FAILED, kb_printf("cannot take a screenshot: %s", kb_virt_error()));
    virStreamFree(st);
    return;
  }
  if (virStreamRecvAll(st, stream_sink, &b) < 0 || virStreamFinish(st) < 0) {
    step_set(s, VL_FAILED, kb_printf("cannot read the screenshot: %s", kb_virt_error()));
    virStreamAbort(st);
    virStreamFree(st);
    free(mime);
    free(b.buf);
    return;
  }
  virStreamFree(st);
  if (strstr(mime, "png") && kb_png_size((unsigned char *) b.buf, b.len, &w, &h) == 0) {
    png = (unsigned char *) b.buf;
    pnglen = b.len;
    b.buf = NULL;
  } else if (kb_png_from_ppm((unsigned char *) b.buf, b.len, &png, &pnglen, &w, &h) < 0) {
    step_set(s, VL_FAILED, kb_printf("the screenshot (%s, %zu bytes) is not a PPM image", mime, b.len));
    free(mime);
    free(b.buf);
    return;
  }
  free(mime);
  free(b.buf);
  r = kb_meta_write_file(path, (const char *) png, pnglen);
  free(png);
  if (r < 0)
    step_set(s, VL_FAILED, kb_printf("cannot store the screenshot: %s", strerror(-r)));
  else
    step_set(s, VL_OK, kb_printf("%ux%u PNG, %zu bytes (kbossctl screenshot)", w, h, pnglen));
}

static int cmp_len(const void *a, const void *b)
{
  return (int) strlen(*(char *const *) a) - (int) strlen(*(char *const *) b);
}

/* Check one filesystem without changing the backup: the drives are added
 * read-only, so repairs land in libguestfs's throwaway overlay. */
static int check_fs(guestfs_h *g, const char *dev, const char *type, char **ret_msg)
{
  if (strncmp(type, "ext", 3) == 0) {
    /* e2fsck -f -p: a full check; exit codes above 1 fail the call. */
    if (guestfs_e2fsck(g, dev, GUESTFS_E2FSCK_CORRECT, 1, -1) < 0) {
      *ret_msg = kb_printf("%s (%s): e2fsck: %s", dev, type, guestfs_last_error(g));
      return -1;
    }
    return 0;
  }
  if (KB_STREQ(type, "xfs")) {
    int r = guestfs_xfs_repair(g, dev, GUESTFS_XFS_REPAIR_NOMODIFY, 1, -1);
    if (r != 0) {
      *ret_msg = kb_printf("%s (xfs): xfs_repair -n found problems", dev);
      return -1;
    }
    return 0;
  }
  if (KB_STREQ(type, "vfat") || KB_STREQ(type, "btrfs") || KB_STREQ(type, "ntfs")) {
    int r = guestfs_fsck(g, type, dev);
    if (r < 0 || (r & ~1)) {
      *ret_msg = kb_printf("%s (%s): fsck status %d", dev, type, r);
      return -1;
    }
  }
  return 0;
}

void vl_step_fs_check(const char *chaindir, char *const *files, struct vl_step *s)
{
  guestfs_h *g = guestfs_create();
  char **roots = NULL, **fss = NULL;
  size_t i, checked = 0, mounted = 0, nfiles;
  CLEANUP_FREE char *msg = NULL;
  struct kb_chain_nbd *nbd = NULL;
  bool failed = false;

  if (!g) {
    step_set(s, VL_FAILED, strdup("cannot create a libguestfs handle"));
    return;
  }
  guestfs_set_error_handler(g, NULL, NULL);
  for (nfiles = 0; files[nfiles]; nfiles++)
    ;
  nbd = calloc(nfiles + 1, sizeof *nbd);
  if (!nbd) {
    step_set(s, VL_FAILED, strdup("out of memory"));
    goto out;
  }
  for (i = 0; files[i]; i++) {
    struct kb_chain *chain = NULL;
    CLEANUP_FREE char *err = NULL, *srv = NULL;
    const char *server[2] = { NULL, NULL };

    if (kb_chain_validate(chaindir, files[i], &chain, &err) < 0) {
      step_set(s, VL_FAILED, kb_printf("refusing the backing chain: %s", err ? err : files[i]));
      goto out;
    }
    free(err);
    err = NULL;
    if (kb_chain_nbd_start(chain, &nbd[i], &err) < 0) {
      kb_chain_free(chain);
      step_set(s, VL_FAILED, kb_printf("%s", err ? err : "cannot serve the backing chain"));
      goto out;
    }
    kb_chain_free(chain);
    srv = kb_printf("unix:%s", nbd[i].sock);
    server[0] = srv;
    if (!srv || guestfs_add_drive_opts(g, "", GUESTFS_ADD_DRIVE_OPTS_READONLY, 1, GUESTFS_ADD_DRIVE_OPTS_FORMAT, "raw",
                                       GUESTFS_ADD_DRIVE_OPTS_PROTOCOL, "nbd", GUESTFS_ADD_DRIVE_OPTS_SERVER, server,
                                       -1) < 0) {
      step_set(s, VL_FAILED, kb_printf("libguestfs: %s", guestfs_last_error(g)));
      goto out;
    }
  }
  if (guestfs_launch(g) < 0) {
    step_set(s, VL_FAILED, kb_printf("libguestfs launch: %s", guestfs_last_error(g)));
    goto out;
  }
  /* Inspection finds the OS and how its filesystems mount. */
  roots = guestfs_inspect_os(g);
  if (!roots || !roots[0]) {
    step_set(s, VL_FAILED, strdup("no operating system found on the backup's disks"));
    goto out;
  }
  for (size_t k = 0; roots[k] && !failed; k++) {
    char **mps = guestfs_inspect_get_mountpoints(g, roots[k]);
    size_t n = 0;
    char **order;
    if (!mps) {
      failed = true;
      msg = kb_printf("%s: no mount points: %s", roots[k], guestfs_last_error(g));
      break;
    }
    for (n = 0; mps[n]; n += 2)
      ;
    order = calloc(n / 2 + 1, sizeof *order);
    for (i = 0; order && i < n / 2; i++)
      order[i] = mps[2 * i];
    if (order)
      qsort(order, n / 2, sizeof *order, cmp_len);
    for (i = 0; order && i < n / 2 && !failed; i++) {
      const char *dev = NULL;
      for (size_t m = 0; m < n; m += 2)
        if (mps[m] == order[i])
          dev = mps[m + 1];
      if (guestfs_mount_ro(g, dev, order[i]) < 0) {
        failed = true;
        msg = kb_printf("%s on %s does not mount: %s", dev, order[i], guestfs_last_error(g));
      } else
        mounted++;
    }
    free(order);
    for (i = 0; mps[i]; i++)
      free(mps[i]);
    free(mps);
  }
  (void) guestfs_umount_all(g);
  if (failed) {
    step_set(s, VL_FAILED, msg ? strdup(msg) : strdup("mount failed"));
    goto out;
  }
  fss = guestfs_list_filesystems(g);
  for (i = 0; fss && fss[i] && !failed; i += 2) {
    char *why = NULL;
    if (check_fs(g, fss[i], fss[i + 1], &why) < 0) {
      failed = true;
      free(msg);
      msg = why;
    } else if (strncmp(fss[i + 1], "ext", 3) == 0 || KB_STREQ(fss[i + 1], "xfs") ||
               KB_STREQ(fss[i + 1], "vfat") || KB_STREQ(fss[i + 1], "btrfs"))
      checked++;
  }
  if (failed)
    step_set(s, VL_FAILED, msg ? strdup(msg) : strdup("check failed"));
  else
    step_set(s, VL_OK, kb_printf("%zu filesystem(s) mounted read-only, %zu checked clean", mounted, checked));
out:
  if (roots) {
    for (i = 0; roots[i]; i++)
      free(roots[i]);
    free(roots);
  }
  if (fss) {
    for (i = 0; fss[i]; i++)
      free(fss[i]);
    free(fss);
  }
  guestfs_close(g);
  for (i = 0; nbd && i < nfiles; i++)
    kb_chain_nbd_stop(&nbd[i]);
  free(nbd);
}
