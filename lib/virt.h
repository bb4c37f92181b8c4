/* libvirt glue: connecting, finding domains, reading their disks, QMP
 * queries of bitmap state, and waiting for block jobs. */
#ifndef KBOSS_VIRT_H
#define KBOSS_VIRT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <libvirt/libvirt.h>

struct kb_disk {
  char *target;        /* vda */
  char *type;          /* file, block, network, volume */
  char *device;        /* disk, cdrom, floppy, lun */
  char *source;        /* file path for type='file' */
  char *format;        /* qcow2, raw, ... */
  char *bus;
};

struct kb_disks {
  struct kb_disk *v;
  size_t n;
};

/* The last libvirt error as text (never NULL). */
const char *kb_virt_error(void);

/* Connect to URI (NULL: default) with libvirt's own errors silenced on stderr. */
int kb_virt_connect(const char *uri, virConnectPtr *ret);

/* Look a domain up by name or UUID. -ENOENT when there is none. */
int kb_virt_lookup(virConnectPtr conn, const char *name_or_uuid, virDomainPtr *ret);

/* Disks of a domain XML (every <disk>, in order). */
int kb_disks_parse(const char *domain_xml, struct kb_disks *ret);
void kb_disks_clear(struct kb_disks *d);
const struct kb_disk *kb_disks_find(const struct kb_disks *d, const char *target);

/* True for the disks kboss backs up (device disk); others (cdrom...) are skipped. */
bool kb_disk_is_backed_up(const struct kb_disk *d);
/* NULL when kboss can back this disk up, else why not. */
const char *kb_disk_unsupported(const struct kb_disk *d);

/* Targets listed in a checkpoint XML with checkpoint='bitmap'. */
int kb_checkpoint_disks(const char *checkpoint_xml, char ***ret_targets);

/* Bitmap state of one disk as qemu sees it (domain must be active). */
struct kb_bitmap_state {
  bool present, recording, busy, inconsistent, persistent;
  uint64_t count;      /* dirty bytes */
};
int kb_virt_bitmap_state(virDomainPtr dom, const char *disk_source, const char *bitmap,
                         struct kb_bitmap_state *ret);
/* One QMP query-named-block-nodes answer: every disk's bitmaps and size
 * from one monitor round trip (domain must be active). */
struct kb_block_nodes;
int kb_virt_block_nodes(virDomainPtr dom, struct kb_block_nodes **ret);
void kb_block_nodes_free(struct kb_block_nodes *nodes);
/* As kb_virt_bitmap_state / kb_virt_bitmap_names, from NODES; -ENOENT when
 * no format node has DISK_SOURCE as its image. */
int kb_block_nodes_bitmap_state(const struct kb_block_nodes *nodes, const char *disk_source,
                                const char *bitmap, struct kb_bitmap_state *ret);
int kb_block_nodes_bitmap_names(const struct kb_block_nodes *nodes, const char *disk_source, char ***ret);
/* The disk's virtual size (what virDomainGetBlockInfo calls capacity). */
int kb_block_nodes_capacity(const struct kb_block_nodes *nodes, const char *disk_source,
                            unsigned long long *ret);
/* Names of all bitmaps on the disk's active layer (NULL-terminated). */
int kb_virt_bitmap_names(virDomainPtr dom, const char *disk_source, char ***ret);
/* Remove a bitmap from an active domain's disk (QMP block-dirty-bitmap-remove). */
int kb_virt_bitmap_remove(virDomainPtr dom, const char *disk_source, const char *bitmap);

/* Limit every running backup block job of DOM to BYTES_PER_SEC (QMP
 * block-job-set-speed: libvirt has no speed for backup jobs). */
int kb_virt_backup_set_speed(virDomainPtr dom, unsigned long long bytes_per_sec);

/* Wait for the domain's current job (backup, block job) to end. Calls
 * PROGRESS with processed/total when it changes. Returns 0 if it completed,
 * -EIO if it failed (message in *ret_error), -EINTR if *cancel became true
 * (the job is aborted before returning). */
int kb_virt_wait_job(virDomainPtr dom, volatile int *cancel,
                     void (*progress)(void *opaque, uint64_t done, uint64_t total), void *opaque,
                     char **ret_error);



/* The group qemu processes run as (libvirt's qemu.conf "group", else
 * libvirt-qemu); -1 when unknown. Folders qemu must reach on secondary
 * storage are 0710 with this group, files inside 0600 (libvirt's DAC driver
 * hands them to qemu for the length of a job). */
gid_t kb_qemu_gid(void);
#endif
