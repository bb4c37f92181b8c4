/* Locks that work among processes and hosts sharing an NFS export without
 * relying on OFD/POSIX locks: a lock is a file created with O_EXCL that names
 * its holder (host, pid, process start time, purpose); the holder refreshes
 * its mtime while it lives (a heartbeat thread), and a lock whose holder is
 * gone (same host: the process is dead; another host: the lease, measured in
 * the server's own clock, ran out) is broken by the next taker. */
#ifndef KBOSS_LOCK_H
#define KBOSS_LOCK_H

#include <stdbool.h>

struct kb_lock;

/* Take the lock file PATH. TIMEOUT_MS 0 tries once; < 0 waits forever.
 * -EBUSY when held by a live holder (after the timeout). */
int kb_lock_take(const char *path, const char *purpose, int timeout_ms, struct kb_lock **ret);
/* Release (NULL is fine). Removes the file only if it is still ours. */
void kb_lock_release(struct kb_lock *lock);
/* Is PATH held by a live holder? 1 yes, 0 no, negative errno. With
 * RET_HOLDER, a description "host pid purpose since". */
int kb_lock_probe(const char *path, char **ret_holder);

/* The lock file's path. */
const char *kb_lock_path(const struct kb_lock *lock);
/* True once the heartbeat found the lock file gone or replaced (someone
 * judged us stale and broke the lock): stop writing and give up. */
bool kb_lock_lost(const struct kb_lock *lock);

/* Lease length in seconds (default 120; KBOSS_LOCK_LEASE overrides, tests). */
int kb_lock_lease_seconds(void);

/* A process as lock holders and catalog records name it across hosts:
 * host (kb_hostname), boot id, pid and the pid's start time, which tells a
 * live process from a later one that reused its pid. */
const char *kb_boot_id(void);
/* Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat). */
int kb_proc_start_time(long long pid, unsigned long long *ret);
/* Is that process alive? 1 alive (or cannot tell), 0 gone (dead, its pid
 * reused, or this host rebooted since), -EREMOTE when HOST is another host:
 * only a lease can tell then. */
int kb_proc_alive(const char *host, const char *boot_id, long long pid, unsigned long long start_time);

#endif
