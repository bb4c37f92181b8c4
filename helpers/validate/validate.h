/* kboss-validate: private header. */
#ifndef KBOSS_VALIDATE_H
#define KBOSS_VALIDATE_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <libvirt/libvirt.h>

#include "catalog.h"
#include "chain.h"
#include "kbconfig.h"
#include "record.h"

#define VL_DOMAIN_PREFIX "kboss-val-"

struct vl_ctx {
  struct kb_config *cfg;
  struct kb_catalog *cat;
  virConnectPtr conn;
  bool now;              /* run --now: every scheduled job is due */
  bool json;
};

extern volatile sig_atomic_t vl_cancel;   /* SIGINT/SIGTERM */

/* One step's outcome. */
enum vl_status { VL_OK, VL_FAILED, VL_SKIPPED };
struct vl_step {
  const char *name;
  enum vl_status status;
  double seconds;
  char *message;
};

/* A validation VM being run. */
struct vl_vm {
  char *name;               /* kboss-val-<backup> */
  char *scratch;            /* overlay folder */
  char **overlays;          /* NULL-terminated */
  char **files;             /* the backup's files under them, same order */
  struct kb_chain **chains; /* their validated chains (lib/chain.h), same order */
  char **targets;           /* vda ... */
  unsigned vcpus;
  unsigned long long mem_kib;
  char *xml;
  virDomainPtr dom;
  int64_t started_ms;
  bool agent_up;
};

/* domain.c */
int vl_vm_prepare(struct vl_ctx *c, const struct kb_backup_ref *ref, struct vl_vm *vm, char **ret_error);
int vl_vm_start(struct vl_ctx *c, struct vl_vm *vm, char **ret_error);
/* Destroy the domain and remove the overlays (every path). */
void vl_vm_teardown(struct vl_vm *vm);
/* Domains and overlay folders of killed runs (of this catalog). */
void vl_cleanup_leftovers(struct vl_ctx *c);
/* Why the validation VM may not start under the account's limits, or NULL. */
char *vl_resource_check(struct vl_ctx *c, const struct kb_backup_ref *ref, const struct vl_vm *vm);
/* steps.c */
void vl_step_wait_for_boot(struct vl_ctx *c, const char *vm_name, struct vl_vm *vm, struct vl_step *s);
void vl_step_execute_command(struct vl_ctx *c, const char *vm_name, struct vl_vm *vm, struct vl_step *s);
void vl_step_screenshot(struct vl_ctx *c, const char *vm_name, const char *png_path, struct vl_vm *vm,
                        struct vl_step *s);
/* FILES are tops of chains in CHAINDIR: each is validated (lib/chain.h)
 * and libguestfs reads exactly that chain, served by qemu-nbd. */
void vl_step_fs_check(const char *chaindir, char *const *files, struct vl_step *s);

/* jobs.c */
/* Validate one backup now. 0 passed, 1 failed (the steps say why),
 * -EAGAIN not now (why in *ret_error), other negative errno: error. */
int vl_validate_backup(struct vl_ctx *c, const char *backup_id, bool from_job, char **ret_error);
/* Re-check the hashes of one backup: 0 equal, 1 mismatch, -EAGAIN busy, <0 error. */
int vl_hash_check(struct vl_ctx *c, const char *backup_id, char **ret_error);
/* Run due jobs. Returns 0, or 1 if any failed. */
int vl_run_jobs(struct vl_ctx *c);

#endif
