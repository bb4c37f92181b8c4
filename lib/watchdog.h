/* A guard against a hung export that lives outside the process that hangs.
 *
 * A process blocked in the kernel on a hard NFS mount (or a frozen FUSE
 * filesystem) cannot clean up after itself. So a program that works on
 * secondary storage splits in three at its start:
 *
 *   - the worker (the caller, in a process group of its own) does the job;
 *   - a probe opens each store's folder every 2 s and says so on a pipe;
 *   - the supervisor (the original process) never touches the export. When
 *     the probe has not answered for storage.timeout seconds, it kills the
 *     worker's group and the probe, runs the program's RECOVER callback
 *     (abort the libvirt job, thaw the guest, ...: from what the worker told
 *     it with kb_watchdog_note), prints "secondary storage not responding"
 *     and exits 1. Otherwise it exits with the worker's status.
 *
 * SIGINT, SIGTERM and SIGHUP reaching the supervisor are passed on to the
 * worker, which stops cleanly as before. */
#ifndef KBOSS_WATCHDOG_H
#define KBOSS_WATCHDOG_H

#include <stdbool.h>
#include <stddef.h>

struct kb_config;

/* What the worker noted last under each key (NULL: never noted). */
const char *kb_watchdog_get(const char *key);
/* The value of the N-th set key starting with PREFIX (NULL past the end). */
const char *kb_watchdog_get_prefixed(const char *prefix, size_t n);

/* RECOVER runs in the supervisor after the worker was killed; it must not
 * touch the export. It returns a sentence on what it did (malloc'd or NULL),
 * appended to the error message. */
typedef char *(*kb_watchdog_recover_fn)(void);

/* Returns 0 in the worker; the supervisor never returns. Paths probed:
 * secondary.path and every store's path; timeout: storage.timeout.
 * KBOSS_NO_WATCHDOG=1 in the environment: nothing is split (returns 0). */
int kb_watchdog_start(const struct kb_config *cfg, kb_watchdog_recover_fn recover);

/* Block until every probed store answers an open again (for a detached
 * process that finishes a recovery once the export is back). */
void kb_watchdog_wait_export(void);

/* Worker: tell the supervisor KEY = VALUE (one line; no-op when not
 * supervised). VALUE NULL clears KEY. */
void kb_watchdog_note(const char *key, const char *value);
bool kb_watchdog_active(void);

#endif
