/* kboss-backup: private header. */
#ifndef KBOSS_BACKUP_H
#define KBOSS_BACKUP_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>

#include <libvirt/libvirt.h>

#include "catalog.h"
#include "doc.h"
#include "kbconfig.h"
#include "log.h"
#include "virt.h"

struct bk_opts {
  bool full, isolated, quiesce, json;
  unsigned long bandwidth;     /* MiB/s the copy may read, 0: no limit */
  const char *schedule;        /* --schedule: the schedule taking it (checked name), or NULL */
  unsigned keep[6];            /* --keep-*: that schedule's keep_last..keep_yearly, 0: unset */
};

/* One VM being worked on, with the VM lock held. */
struct bk_vm {
  struct kb_config *cfg;
  struct kb_catalog *cat;
  virConnectPtr conn;
  virDomainPtr dom;
  char *name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  struct kb_lock *lock;
  struct kb_doc *rec;          /* vm.ini */
  /* A running VM's block nodes as one QMP query saw them, shared by the
   * steps of a run until something adds or removes a bitmap; NULL: ask. */
  struct kb_block_nodes *nodes;
};

extern volatile sig_atomic_t bk_cancel;  /* set by SIGINT/SIGTERM */

/* vm.c: find the VM, check that kboss may back it up, take its lock and
 * load (or create) its catalog record. Messages go to *ret_error. */
int bk_vm_open(struct kb_config *cfg, const char *vm, const char *purpose, bool need_offering,
               struct bk_vm *ret, char **ret_error);
void bk_vm_close(struct bk_vm *v);
int bk_vm_set_state(struct bk_vm *v, const char *state, const char *error);
/* Drop v->nodes: a bitmap is about to be added or removed. */
void bk_vm_forget_nodes(struct bk_vm *v);

/* run.c: take one backup. */
int bk_run(struct bk_vm *v, const struct bk_opts *opts, char **ret_error);

/* normalize.c: clean what failed or killed runs left behind; 0 when the VM
 * is back to Ready. BEFORE_BACKUP: a backup follows and writes the VM's
 * record itself, so a Ready VM that stays Ready is not written here. */
int bk_normalize(struct bk_vm *v, bool before_backup, char **ret_error);
/* End the VM's current chain (next backup is full). */
int bk_finish_chain(struct bk_vm *v, const char *reason, char **ret_error);
/* Remove the leftovers of one backup that did not complete. */
int bk_discard_backup(struct bk_vm *v, const char *chain, const char *backup, char **ret_error);

/* redefine.c: redefine the VM's last checkpoint from the catalog when
 * libvirt does not know it (after a restart or migration). */
int bk_redefine_checkpoints(struct bk_vm *v, char **ret_error);

/* Delete (libvirt checkpoint + bitmaps) checkpoint NAME; a checkpoint that
 * libvirt forgot has its bitmaps removed directly. Domain must be active
 * for the bitmap part. */
int bk_checkpoint_delete(struct bk_vm *v, const char *name);

/* freeze.c: the guest's filesystem freeze; kboss thaws only its own. */
enum bk_fs_state { BK_FS_UNKNOWN, BK_FS_THAWED, BK_FS_FROZEN };
/* The agent's guest-fsfreeze-status (UNKNOWN when the agent does not
 * answer within TIMEOUT_S seconds). */
enum bk_fs_state bk_guest_fs_state(virDomainPtr dom, int timeout_s);
/* Record the freeze as this run's (for BY, a backup id), then freeze.
 * Refuses (-EBUSY) a guest someone else froze. */
int bk_freeze(struct bk_vm *v, const char *by, char **ret_error);
/* Thaw this run's freeze and remove its record; -EIO when the thaw failed
 * (the record stays, so the next run thaws). */
int bk_thaw(struct bk_vm *v);
/* Normalisation: thaw a freeze kboss recorded whose run is gone; report,
 * and leave, any other freeze. _start asks the guest agent for the freeze
 * state in a thread (ACTIVE: the domain runs); _finish waits for the
 * answer and acts on it. */
struct bk_fs_probe {
  virDomainPtr dom;
  bool active, running;
  pthread_t thread;
  enum bk_fs_state state;
};
void bk_normalize_freeze_start(struct bk_vm *v, bool active, struct bk_fs_probe *p);
void bk_normalize_freeze_finish(struct bk_vm *v, struct bk_fs_probe *p);

/* mountns.c: when qemu could not open the target PATH on a store although
 * it exists for us, the explanation (qemu's mount namespace does not see
 * the store's mount) and what to do; NULL when that is not the case. */
char *bk_explain_unseen_target(struct bk_vm *v, const char *path, const char *store_name,
                               const char *store_path);

/* offline.c: back up a stopped VM without starting qemu. */
struct bk_offline_disk {
  const char *target;          /* "vda" */
  const char *source, *format; /* the VM's disk */
  const char *path;            /* new file on the store */
  const char *backing;         /* incremental: relative backing file */
  const char *since;           /* incremental: bitmap to copy; NULL: full copy */
  const char *drop;            /* unusable old bitmap to remove, or NULL */
  bool bitmap;                 /* gets the new checkpoint's bitmap */
  unsigned long long capacity;
};
/* The bitmap NAME as the closed qcow2 PATH holds it (kb_virt_bitmap_state
 * for a running VM); on error a message in *RET_WHY. */
int bk_offline_bitmap_state(const char *path, const char *name, struct kb_bitmap_state *ret, char **ret_why);
/* Copy the disks (dirty clusters or all data) with their images locked
 * against any qemu; -EBUSY when the VM starts or a disk is in use. */
int bk_offline_copy(struct bk_vm *v, struct bk_offline_disk *d, size_t n, struct kb_progress *pr,
                    unsigned long bandwidth, char **ret_error);
/* Redefine checkpoint ID (creation XML CPXML, NULL when isolated) and add
 * its bitmaps to the closed disks. */
int bk_offline_checkpoint(struct bk_vm *v, const char *id, const char *cpxml, struct bk_offline_disk *d,
                          size_t n, char **ret_error);

/* A new empty qcow2 v3 at PATH (0600, 64 KiB clusters) of SIZE bytes,
 * backed by BACKING (qcow2) when not NULL: what `qemu-img create -u -b`
 * makes, without a process, and with all L2 tables and refcount blocks in
 * place (holes), so that qemu writing it allocates no metadata. */
int bk_qcow2_create(const char *path, unsigned long long size, const char *backing);

/* watch.c: run the rest of kboss-backup under the export watchdog
 * (lib/watchdog.h); 0 in the worker. */
int bk_watch_start(const struct kb_config *cfg);

#endif
