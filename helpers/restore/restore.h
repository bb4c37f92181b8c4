/* kboss-restore: private header. */
#ifndef KBOSS_RESTORE_H
#define KBOSS_RESTORE_H

#include <signal.h>
#include <stdbool.h>

#include <libvirt/libvirt.h>

#include "catalog.h"
#include "chain.h"
#include "kbconfig.h"
#include "record.h"
#include "virt.h"

struct rs_opts {
  bool quick, json;
  const char *disk;      /* only this disk */
  const char *as;        /* restore into a new VM of this name */
  unsigned long bandwidth; /* MiB/s for consolidation; 0 = unlimited */
  int boot_wait;         /* seconds to wait for the guest agent before consolidating */
};

struct rs_ctx {
  struct kb_config *cfg;
  struct kb_catalog *cat;
  virConnectPtr conn;
  virDomainPtr dom;      /* the VM restored into */
  char *vm_name;
  char uuid[VIR_UUID_STRING_BUFLEN];   /* the VM restored into */
  struct kb_lock *lock;
  struct kb_doc *rec;    /* its vm.ini */
  struct kb_backup_ref ref;
};

extern volatile sig_atomic_t rs_cancel;

/* One disk to restore: the backup's file, and where it goes. */
struct rs_disk {
  char *target;          /* vda */
  char *backup_file;     /* top of the backup's chain on the store */
  char *dest;            /* the VM's disk on primary storage */
  char *format;          /* of dest: qcow2 or raw */
  char *tmp;             /* written beside dest, then moved over it */
  struct kb_chain *chain; /* backup_file's validated chain (lib/chain.h) */
};

/* normal.c */
int rs_restore(struct rs_ctx *c, const struct rs_opts *o, char **ret_error);
/* quick.c */
int rs_quick_restore(struct rs_ctx *c, const struct rs_opts *o, char **ret_error);
int rs_consolidate(struct rs_ctx *c, const struct rs_opts *o, char **ret_error);
/* common.c */
int rs_open_vm(struct rs_ctx *c, const char *vm_uuid, const char *purpose, char **ret_error);
int rs_plan_disks(struct rs_ctx *c, const struct rs_opts *o, struct rs_disk **ret, size_t *ret_n,
                  char **ret_error);
void rs_disks_free(struct rs_disk *d, size_t n);
/* The new file TMP takes the owner and mode of the disk it replaces (0600 for a new disk). */
int rs_take_owner(const struct rs_disk *d, char **ret_error);
int rs_set_state(struct rs_ctx *c, const char *state, const char *error);
int rs_end_chain(struct rs_ctx *c, const char *reason);
int rs_define_new_vm(struct rs_ctx *c, const struct rs_opts *o, char **ret_error);
/* Mark (or unmark) every backup of the restored backup's lineage as used
 * by a quick restore of VM UUID, so it is neither deleted nor swapped. */
int rs_mark_in_use(struct rs_ctx *c, const char *vm_uuid, bool in_use);

#endif
