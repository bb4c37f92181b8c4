/* XML documents kboss hands to libvirt, built with libxml2 from values it
 * chose or checked. The saved domain XML of a backup comes from the shared
 * export: it is read for a few checked values and never edited into a
 * definition (docs/security.md). */
#ifndef KBOSS_DOMXML_H
#define KBOSS_DOMXML_H

#include <stdbool.h>
#include <stddef.h>

/* One disk of the new domain, kboss's own file. */
struct kb_domxml_disk {
  const char *target;       /* vda: must be a disk of the saved XML or gets bus virtio */
  const char *file;         /* the file the VM opens */
  const char *format;       /* its format: qcow2 or raw */
  /* When not NULL: FILE's validated backing chain below it, nearest first,
   * NULL-terminated, all qcow2. Spelled out in the XML with an empty
   * <backingStore/> at the base, so qemu opens exactly these files. An empty
   * list says FILE has no backing file. */
  char *const *chain;
};

struct kb_domxml_opts {
  const char *name;         /* of the new domain */
  const char *description;
  const struct kb_domxml_disk *disks;
  size_t ndisks;
  bool network;             /* NICs on the saved networks/bridges, new MACs */
  bool destroy_on_reboot;   /* a validation VM: every power event destroys it */
  const char *nvram;        /* UEFI variable store to use, or NULL for libvirt's */
};

struct kb_domxml_info {
  unsigned vcpus;
  unsigned long long mem_kib;
};

/* Limits on values copied from the saved XML. */
#define KB_DOMXML_MIN_MEM_KIB (16ULL * 1024)
#define KB_DOMXML_MAX_MEM_KIB (16ULL * 1024 * 1024 * 1024)
#define KB_DOMXML_MAX_VCPUS 4096
#define KB_DOMXML_MAX_NOTICES 64

/* Build a new domain definition from SAVED (a backup's domain.xml) and O.
 * *RET_NOTICES (NULL-terminated, may be empty) gets one line per element of
 * SAVED that was not carried over, for the caller to log. Returns 0, or
 * -EINVAL with *RET_ERROR naming the unusable value, or -ENOMEM. */
int kb_domxml_build(const char *saved, const struct kb_domxml_opts *o, char **ret_xml,
                    struct kb_domxml_info *ret_info, char ***ret_notices, char **ret_error);

/* A checkpoint definition for kboss-backup: <domaincheckpoint> NAME with a
 * kboss description and one <disk> per TARGETS[i], checkpoint 'bitmap' when
 * BITMAP[i] else 'no'. */
int kb_checkpoint_xml(const char *name, char *const *targets, const bool *bitmap, size_t n, char **ret_xml);

/* A checkpoint to redefine, rebuilt from a saved checkpoint XML read from
 * the catalog: its name (which must be EXPECT_NAME), creation time and disks
 * (name, checkpoint, bitmap), all checked; no parent (kboss keeps one
 * checkpoint) and no domain. Returns 0, -EINVAL or -ENOMEM. */
int kb_checkpoint_redefine_xml(const char *saved, const char *expect_name, char **ret_xml);

/* One disk of a push-mode backup job. */
struct kb_backupxml_disk {
  const char *target;
  const char *file;         /* NULL: not backed up */
  bool incremental;
};

/* <domainbackup mode='push'>, incremental since SINCE when not NULL. */
int kb_backup_job_xml(const char *since, const struct kb_backupxml_disk *disks, size_t n, char **ret_xml);

/* Is S a short name made of [A-Za-z0-9._-] (machine types, CPU models,
 * network names), at most MAX bytes? */
bool kb_domxml_token_ok(const char *s, size_t max);

#endif
