/* The guest's filesystem freeze: kboss thaws only a freeze it made itself.
 * A freeze is recorded in vm.ini (record.h, kb_vm_mark_frozen) before the
 * guest agent is asked to freeze, and the record is removed after the
 * thaw; a freeze found without a record (or whose recorded process still
 * lives) belongs to someone else and is left alone. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <libvirt/libvirt-qemu.h>
#include <libvirt/virterror.h>

#include "backup.h"
#include "log.h"
#include "record.h"
#include "util.h"
#include "watchdog.h"

/* Seconds to wait for the guest agent. */
#define AGENT_TIMEOUT 10

enum bk_fs_state bk_guest_fs_state(virDomainPtr dom, int timeout_s)
{
  /* libvirt has no API for the freeze state; the raw agent command marks
   * the domain "tainted: custom-ga-command" in its log once per qemu run. */
  CLEANUP_FREE char *reply = virDomainQemuAgentCommand(dom, "{\"execute\":\"guest-fsfreeze-status\"}",
                                                       timeout_s, 0);
  char compact[64];
  size_t n = 0;
  const char *p;

  if (!reply)
    return BK_FS_UNKNOWN;
  /* The reply comes from the guest: accept exactly the two answers. */
  for (p = reply; *p && n < sizeof compact - 1; p++)
    if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
      compact[n++] = *p;
  compact[n] = '\0';
  if (KB_STREQ(compact, "{\"return\":\"frozen\"}"))
    return BK_FS_FROZEN;
  if (KB_STREQ(compact, "{\"return\":\"thawed\"}"))
    return BK_FS_THAWED;
  return BK_FS_UNKNOWN;
}

int bk_freeze(struct bk_vm *v, const char *by, char **ret_error)
{
  CLEANUP_FREE char *why = NULL;
  enum bk_fs_state st;
  int r, code;

  (void) virDomainAgentSetResponseTimeout(v->dom, AGENT_TIMEOUT, 0);
  st = bk_guest_fs_state(v->dom, AGENT_TIMEOUT);
  if (st == BK_FS_UNKNOWN) {
    /* Nothing is recorded or frozen when the agent cannot even say. */
    *ret_error = kb_printf("VM %s: cannot quiesce: the guest agent does not answer (%s)", v->name,
                           virGetLastErrorCode() != VIR_ERR_OK ? kb_virt_error() : "no reply it understood");
    return -EIO;
  }
  if (st == BK_FS_FROZEN) {
    *ret_error = kb_printf("VM %s: cannot quiesce: its filesystems are already frozen, not by kboss "
                           "(guest-fsfreeze-status: frozen); kboss does not take over another tool's "
                           "freeze. Back up without --quiesce (frozen filesystems are consistent as they "
                           "are), or after that tool has thawed them",
                           v->name);
    return -EBUSY;
  }
  r = kb_vm_mark_frozen(v->cat, v->uuid, v->rec, by);
  if (r < 0) {
    *ret_error = kb_printf("VM %s: cannot quiesce: cannot record the freeze in the catalog: %s", v->name,
                           strerror(-r));
    return r;
  }
  kb_watchdog_note("frozen", by);   /* the export watchdog thaws it if we hang */
  if (virDomainFSFreeze(v->dom, NULL, 0, 0) >= 0)   /* the number frozen */
    return 0;
  code = virGetLastErrorCode();
  why = strdup(kb_virt_error());
  if (code == VIR_ERR_AGENT_UNRESPONSIVE) {
    /* The agent may still carry the freeze out; it runs commands in order,
     * so a thaw sent now undoes exactly that. Until a thaw succeeds the
     * record stays, and the next run thaws. */
    if (bk_thaw(v) < 0)
      kb_warn("VM %s: the guest agent did not answer the freeze; it may still freeze the guest, "
              "and the next kboss-backup run thaws it", v->name);
  } else {
    /* The agent answered with an error: it thawed whatever it had frozen. */
    kb_watchdog_note("frozen", NULL);
    (void) kb_vm_clear_frozen(v->cat, v->uuid, v->rec);
  }
  *ret_error = kb_printf("VM %s: cannot quiesce: the guest agent did not freeze the filesystems (%s)", v->name,
                         why ? why : "?");
  return -EIO;
}

int bk_thaw(struct bk_vm *v)
{
  int r;

  if (virDomainFSThaw(v->dom, NULL, 0, 0) < 0)
    return -EIO;
  kb_watchdog_note("frozen", NULL);
  r = kb_vm_clear_frozen(v->cat, v->uuid, v->rec);
  if (r < 0)
    kb_warn("VM %s: thawed, but cannot remove the freeze record: %s", v->name, strerror(-r));
  return 0;
}

static void *fs_probe_thread(void *arg)
{
  struct bk_fs_probe *p = arg;

  /* Short wait: this runs before every backup, quiesced or not. */
  p->state = bk_guest_fs_state(p->dom, 5);
  return NULL;
}

void bk_normalize_freeze_start(struct bk_vm *v, bool active, struct bk_fs_probe *p)
{
  sigset_t all, old;

  memset(p, 0, sizeof *p);
  p->active = active;
  if (!p->active)
    return;
  /* The guest's answer takes a round trip through its agent (tens of ms
   * under TCG); the rest of the normalization goes on meanwhile. */
  p->dom = v->dom;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);   /* signals stay with the main thread */
  p->running = pthread_create(&p->thread, NULL, fs_probe_thread, p) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (!p->running)
    p->state = bk_guest_fs_state(v->dom, 5);
}

void bk_normalize_freeze_finish(struct bk_vm *v, struct bk_fs_probe *p)
{
  CLEANUP_FREE char *desc = NULL;
  enum kb_freeze_owner owner = kb_vm_freeze_owner(v->rec, &desc);
  enum bk_fs_state st;

  if (p->running) {
    pthread_join(p->thread, NULL);
    p->running = false;
  }
  if (!p->active) {
    /* A stopped guest holds no freeze. */
    if (owner != KB_FREEZE_NONE)
      (void) kb_vm_clear_frozen(v->cat, v->uuid, v->rec);
    return;
  }
  st = p->state;
  switch (owner) {
  case KB_FREEZE_NONE:
    if (st == BK_FS_FROZEN)
      kb_warn("VM %s: its filesystems are frozen, not by kboss; leaving them frozen "
              "(kboss thaws only a freeze it made)", v->name);
    return;
  case KB_FREEZE_SELF:
    return;
  case KB_FREEZE_LIVE:
    if (st == BK_FS_FROZEN)
      kb_warn("VM %s: its filesystems are frozen by kboss (%s), which still runs; leaving them frozen",
              v->name, desc ? desc : "?");
    return;
  case KB_FREEZE_GONE:
  case KB_FREEZE_REMOTE:
    /* The freezing run is dead, or ran on another host and no longer holds
     * the VM lock we hold now: the freeze is an orphan of kboss's. */
    break;
  }
  if (st == BK_FS_THAWED) {
    kb_debug("VM %s: the freeze recorded for %s is over; removing its record", v->name, desc ? desc : "?");
    (void) kb_vm_clear_frozen(v->cat, v->uuid, v->rec);
    return;
  }
  (void) virDomainAgentSetResponseTimeout(v->dom, 5, 0);   /* for the thaw */
  if (bk_thaw(v) < 0) {
    kb_warn("VM %s: cannot thaw the filesystems frozen by a kboss run that did not finish (%s): %s; "
            "the next run tries again", v->name, desc ? desc : "?", kb_virt_error());
    return;
  }
  kb_info("VM %s: thawed its filesystems, frozen by a kboss run that did not finish (%s)", v->name,
          desc ? desc : "?");
}
