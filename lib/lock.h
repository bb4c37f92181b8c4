/* Locks that work among processes and hosts sharing an NFS export without
 * relying on OFD/POSIX locks: a lock is a file created with O_EXCL that names
 * its holder (host name, machine id, boot id, pid, process start time,
 * purpose); the holder beats while it lives (a heartbeat thread rewrites a
 * counter in the file and stamps its mtime). A lock is broken by a taker
 * only when its holder is a dead process of the taker's own kernel, or
 * after the taker itself watched the file unchanged for a whole lease on
 * its monotonic clock. No clocks are compared. docs/storage.md. */
#ifndef KBOSS_LOCK_H
#define KBOSS_LOCK_H

#include <stdbool.h>

struct kb_lock;

/* Take the lock file PATH. TIMEOUT_MS 0 tries once; < 0 waits forever.
 * -EBUSY when held by a live holder (after the timeout). A holder that
 * looks silent (not stamped for half a lease) is watched for a whole lease
 * even past the timeout, so a single try may last one lease. -ENXIO when
 * this host has no stable identity (kb_host_identity_check()). */
int kb_lock_take(const char *path, const char *purpose, int timeout_ms, struct kb_lock **ret);
/* One attempt that never waits nor watches: breaks only a dead holder of
 * this host. -EBUSY otherwise. */
int kb_lock_try(const char *path, const char *purpose, struct kb_lock **ret);
/* Release (NULL is fine). Removes the file only if it is still ours, and
 * only under the break guard (if that stays busy the file is left to
 * expire). */
void kb_lock_release(struct kb_lock *lock);
/* Is PATH held by a live holder? 1 yes, 0 no, negative errno. With
 * RET_HOLDER, a description "host pid purpose since". */
int kb_lock_probe(const char *path, char **ret_holder);

/* The lock file's path. */
const char *kb_lock_path(const struct kb_lock *lock);
/* True once the heartbeat found the lock file gone or replaced (someone
 * judged us stale and broke the lock): stop writing and give up. */
bool kb_lock_lost(const struct kb_lock *lock);

/* Fencing check before a write made under LOCK: under the break guard,
 * the lock file must still be ours (same inode, our token), and a beat
 * makes any watcher start over, so a write issued right after a 0 return
 * lands before anyone can break the lock. -ENOLCK when the lock was lost
 * (and kb_lock_lost() turns true); -EBUSY when the guard could not be had.
 * A forked child's copy of a parent's lock: 0. */
int kb_lock_fence(struct kb_lock *lock);
/* kb_lock_fence() on every lock this process holds: the catalog's write
 * path (kb_meta_write and friends) calls it before and after each write,
 * so every write made under a lock is fenced without the caller asking. */
int kb_lock_fence_all(void);

/* Lease length in seconds (default 120; KBOSS_LOCK_LEASE overrides, tests). */
int kb_lock_lease_seconds(void);

/* A process as lock holders and catalog records name it across hosts:
 * host name and machine id (util.h), boot id, pid namespace, pid and the
 * pid's start time, which tells a live process from a later one that
 * reused its pid. */
const char *kb_boot_id(void);
const char *kb_pid_ns(void);
/* Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat). */
int kb_proc_start_time(long long pid, unsigned long long *ret);
/* Is that process alive? 1 alive (or cannot tell: another pid namespace),
 * 0 gone (dead, its pid reused, or this machine rebooted since), -EREMOTE
 * when it ran on another machine (host name or machine id differ): only a
 * lease can tell then. */
int kb_proc_alive(const char *host, const char *machine_id, const char *boot_id, const char *pid_ns,
                  long long pid, unsigned long long start_time);

#endif
