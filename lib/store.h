/* Is a secondary store really there? An NFS export that failed to mount
 * leaves an empty local folder at its mount point; writing the catalog or
 * backups into it would put host-local locks and backups on the host's
 * root disk. So a store path is used only when it is a mount point (its
 * device differs from its parent's, or /proc/self/mountinfo lists it) or
 * when an operator marked it on purpose with `kbossctl init-store PATH`
 * (the marker file KB_STORE_MARKER at its top). */
#ifndef KBOSS_STORE_H
#define KBOSS_STORE_H

#define KB_STORE_MARKER ".kboss-store"

/* 0 when PATH may hold kboss data; -ENOENT / -ENOTDIR when it is missing
 * or not a directory; -ENOMEDIUM when it is a plain folder: neither a mount
 * point nor marked. Nothing is created. */
int kb_store_check(const char *path);

/* Write the marker into the existing directory PATH (0600, not through a
 * symlink). Already marked: 0. *RET_MOUNTED (may be NULL) tells whether
 * PATH is a mount point anyway. */
int kb_store_init(const char *path, int *ret_mounted);

/* strerror() for kb_store_check()/kb_catalog_open() results that explains
 * -ENOMEDIUM ("not a mount point and not marked by kbossctl init-store"). */
const char *kb_store_strerror(int r);

#endif
