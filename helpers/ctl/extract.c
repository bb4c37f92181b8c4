/* kbossctl extract: copy one file out of a backup (libguestfs, read-only),
 * for backups whose offering has allow_extract_file. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <guestfs.h>
#include <json-c/json.h>

#include "chain.h"
#include "ctl.h"
#include "lock.h"
#include "log.h"
#include "record.h"
#include "util.h"

static void extract_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s extract BACKUP PATH DEST\n"
          "\n"
          "Copy the file PATH (absolute, inside the guest's filesystems) out of BACKUP\n"
          "into DEST on this host (created 0600; it must not exist). The backup's disks\n"
          "are opened read-only with libguestfs, the guest's operating system is\n"
          "inspected and its filesystems mounted read-only. Compressed backups work\n"
          "too. Only for backups whose offering has allow_extract_file = true.\n"
          "\n"
          "  --config FILE  configuration file\n", kb_progname);
}

static int cmp_len(const void *a, const void *b)
{
  const char *const *x = a, *const *y = b;
  return (int) strlen(x[0]) - (int) strlen(y[0]);
}

/* Mount the inspected OS read-only, shortest mount point first. */
static int mount_os(guestfs_h *g, const char *root)
{
  char **mps = guestfs_inspect_get_mountpoints(g, root);
  size_t n = 0;
  int r = 0;

  if (!mps)
    return -1;
  while (mps[n])
    n += 2;
  qsort(mps, n / 2, 2 * sizeof *mps, cmp_len);
  for (size_t i = 0; i < n; i += 2)
    if (guestfs_mount_ro(g, mps[i + 1], mps[i]) < 0 && KB_STREQ(mps[i], "/"))
      r = -1;
  for (size_t i = 0; i < n; i++)
    free(mps[i]);
  free(mps);
  return r;
}

int ctl_extract(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { NULL, 0, NULL, 0 },
  };
  struct kb_backup_ref ref = { NULL, NULL, NULL, NULL };
  struct kb_config *cfg = NULL;
  struct kb_catalog *cat = NULL;
  struct kb_lock *lock = NULL;
  guestfs_h *g = NULL;
  char **disks = NULL, **roots = NULL;
  struct kb_chain_nbd *nbd = NULL;
  size_t ndisks = 0;
  CLEANUP_FREE char *err = NULL, *data = NULL, *chaindir = NULL;
  CLEANUP_FREE char *tmp = NULL;
  const char *id, *path, *dest, *off_name, *st;
  const struct kb_offering *off;
  struct stat sb;
  int c, fd, rc = 1;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: extract_usage(stdout); return 0;
    default: extract_usage(stderr); return 2;
    }
  }
  if (argc - optind != 3) {
    extract_usage(stderr);
    return 2;
  }
  id = argv[optind];
  path = argv[optind + 1];
  dest = argv[optind + 2];
  if (!kb_name_ok(id) || path[0] != '/') {
    kb_err("extract: need a backup id and an absolute PATH inside the guest");
    return 2;
  }
  if (lstat(dest, &sb) == 0) {
    kb_err("extract: %s exists; not overwriting it", dest);
    return 1;
  }
  cfg = ctl_load_config();
  if (!cfg)
    return 1;
  cat = ctl_open_catalog(cfg);
  if (!cat)
    goto out;
  if (ctl_find_backup(cat, id, "extract", &ref) < 0)
    goto out;
  st = kb_doc_get(ref.doc, "backup", "state");
  if (!st || !KB_STREQ(st, KB_BACKUP_READY)) {
    kb_err("extract: backup %s is %s, not Ready", id, st ? st : "of unknown state");
    goto out;
  }
  off_name = kb_doc_get(ref.doc, "backup", "offering");
  off = off_name ? kb_config_offering(cfg, off_name) : NULL;
  if (!off || !off->allow_extract_file) {
    kb_err("extract: backup %s: its offering '%s' does not allow file extraction (allow_extract_file)", id,
           off_name ? off_name : "(none)");
    goto out;
  }
  /* Compression swaps a backup's files under this lock: hold it. */
  if (kb_catalog_lock(cat, KB_LOCK_BACKUP, id, "extract", 60000, &lock) < 0) {
    kb_err("extract: backup %s is busy (compression or validation); try again later", id);
    goto out;
  }
  data = kb_backup_data_dir(cat, &ref);
  if (data) {
    CLEANUP_FREE char *copy = strdup(data);
    chaindir = copy ? strdup(dirname(copy)) : NULL;
  }
  if (!chaindir || kb_backup_disks(ref.doc, &disks) < 0 || !disks[0]) {
    kb_err("extract: backup %s: its record lists no disks", id);
    goto out;
  }
  g = guestfs_create();
  if (!g) {
    kb_err("extract: cannot create a libguestfs handle");
    goto out;
  }
  guestfs_set_error_handler(g, NULL, NULL);   /* errors are reported once, below */
  for (ndisks = 0; disks[ndisks]; ndisks++)
    ;
  nbd = calloc(ndisks, sizeof *nbd);
  if (!nbd)
    goto out;
  for (size_t i = 0; disks[i]; i++) {
    CLEANUP_FREE char *file = kb_backup_disk_path(cat, &ref, disks[i]);
    struct kb_chain *chain = NULL;
    const char *server[2] = { NULL, NULL };
    CLEANUP_FREE char *srv = NULL;

    if (!file) {
      kb_err("extract: backup %s: disk %s has no file", id, disks[i]);
      goto out;
    }
    /* Our own reader walks the chain; libguestfs reads exactly that chain,
     * served by qemu-nbd from its node-by-node description. */
    if (kb_chain_validate(chaindir, file, &chain, &err) < 0) {
      kb_err("extract: backup %s: disk %s: refusing its backing chain: %s", id, disks[i], err ? err : "");
      goto out;
    }
    free(err);
    err = NULL;
    if (kb_chain_nbd_start(chain, &nbd[i], &err) < 0) {
      kb_chain_free(chain);
      kb_err("extract: backup %s: disk %s: %s", id, disks[i], err ? err : "cannot serve its chain");
      goto out;
    }
    kb_chain_free(chain);
    srv = kb_printf("unix:%s", nbd[i].sock);
    server[0] = srv;
    if (!srv || guestfs_add_drive_opts(g, "", GUESTFS_ADD_DRIVE_OPTS_READONLY, 1, GUESTFS_ADD_DRIVE_OPTS_FORMAT, "raw",
                                       GUESTFS_ADD_DRIVE_OPTS_PROTOCOL, "nbd", GUESTFS_ADD_DRIVE_OPTS_SERVER, server,
                                       -1) < 0)
      goto guestfs_failed;
  }
  if (guestfs_launch(g) < 0)
    goto guestfs_failed;
  roots = guestfs_inspect_os(g);
  if (!roots)
    goto guestfs_failed;
  if (!roots[0]) {
    kb_err("extract: backup %s: no operating system found on its disks", id);
    goto out;
  }
  if (roots[1])
    kb_warn("extract: several operating systems; using the one on %s", roots[0]);
  if (mount_os(g, roots[0]) < 0)
    goto guestfs_failed;
  if (guestfs_is_file_opts(g, path, GUESTFS_IS_FILE_OPTS_FOLLOWSYMLINKS, 1, -1) != 1) {
    kb_err("extract: backup %s: %s is not a regular file in the guest", id, path);
    goto out;
  }
  {
    CLEANUP_FREE char *dcopy = strdup(dest);
    tmp = dcopy ? kb_printf("%s/.kboss-extract-XXXXXX", dirname(dcopy)) : NULL;
  }
  if (!tmp || (fd = mkstemp(tmp)) < 0) {
    kb_err("extract: cannot create a file beside %s: %m", dest);
    free(tmp);
    tmp = NULL;
    goto out;
  }
  close(fd);
  if (guestfs_download(g, path, tmp) < 0)
    goto guestfs_failed;
  if (chmod(tmp, 0600) < 0 || link(tmp, dest) < 0) {
    kb_err("extract: cannot create %s: %m", dest);
    goto out;
  }
  printf("extracted %s from backup %s to %s\n", path, id, dest);
  rc = 0;
  goto out;

guestfs_failed:
  kb_err("extract: backup %s: %s", id, g ? (guestfs_last_error(g) ? guestfs_last_error(g) : "libguestfs failed") : "");
out:
  if (tmp)
    (void) unlink(tmp);
  if (g)
    guestfs_close(g);
  for (size_t i = 0; nbd && i < ndisks; i++)
    kb_chain_nbd_stop(&nbd[i]);
  free(nbd);
  if (roots) {
    for (size_t i = 0; roots[i]; i++)
      free(roots[i]);
    free(roots);
  }
  kb_strv_free(disks);
  kb_lock_release(lock);
  kb_backup_ref_clear(&ref);
  kb_catalog_free(cat);
  kb_config_free(cfg);
  return rc;
}
