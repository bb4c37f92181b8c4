/* kboss-compress: compression jobs. main.c parses options; job.c runs
 * jobs (state, retries, limits, stale holders); swap.c compresses one
 * backup's files beside the originals, checks them and swaps them in. */
#ifndef KBOSS_COMPRESS_H
#define KBOSS_COMPRESS_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "catalog.h"
#include "lock.h"
#include "kbconfig.h"
#include "record.h"

extern volatile sig_atomic_t cp_cancel;

/* Everything one attempt needs; settings are resolved for the backup's VM. */
struct cp_settings {
  bool task_enabled;
  long long per_host, zone, max_retries, retry_minutes, timeout_s, rate_mb;
  long long coroutines;
  long long cluster_kib;
  double min_free;
};
void cp_settings_load(const struct kb_config *cfg, const char *vm_name, struct cp_settings *ret);

/* What compressing a backup produced. */
struct cp_result {
  uint64_t size_before, size_after;
  int64_t elapsed_ms;
};

/* Outcomes of one attempt other than a negative errno (a failed attempt). */
#define CP_DONE 0
#define CP_POSTPONED 1     /* not an attempt: in use, busy, slots full */
#define CP_NO_SLOT 2       /* no concurrency slot free: try later */

/* swap.c: compress every disk of REF into temporary files beside the
 * originals, check them, then under the backup lock (and only if no
 * restore uses the backup) rename them over the originals and record the
 * result in backup.ini. Returns CP_DONE, CP_POSTPONED (in use; *RET_ERROR
 * says why) or negative errno with *RET_ERROR. Temporary files are removed
 * on every failure. */
int cp_compress_backup(const struct kb_config *cfg, const struct kb_catalog *cat,
                       const struct kb_backup_ref *ref, const struct cp_settings *s,
                       const struct kb_lock *job_lock, int64_t deadline_ms,
                       struct cp_result *ret, char **ret_error);

/* Whether the backup's record says a swap began and has not ended. */
bool cp_swap_pending(const struct kb_doc *backup);

/* Finish a swap a killed run left pending: under the backup lock, rename
 * each temporary file whose hash is the recorded new one over its original,
 * then record what each disk now holds (compressed = true when all were
 * swapped) and clear the pending fields. 0 also when nothing was pending. */
int cp_finish_swap(const struct kb_catalog *cat, const struct kb_backup_ref *ref, char **ret_error);

/* backup.compression.cluster.size (KiB) as log2 of bytes, 16..21 (the
 * largest power of two not above it). */
unsigned cp_cluster_bits(long long kib);

/* Test hook: KBOSS_TEST_SWAP_KILL=POINT makes the process SIGKILL itself
 * when it reaches POINT (see tests/integration/compress-swap.sh). */
void cp_test_point(const char *point);

/* Remove the temporary files a killed run may have left for REF. */
void cp_remove_temps(const struct kb_catalog *cat, const struct kb_backup_ref *ref);

/* The compression library of the backup's offering: "zstd" or "zlib". */
const char *cp_library(const struct kb_config *cfg, const struct kb_backup_ref *ref);

/* job.c: kboss-compress run: recover stale jobs, then run due jobs within
 * the limits (forked runners). Returns 0, or 1 when an attempt failed. */
int cp_run(const struct kb_config *cfg, const struct kb_catalog *cat);
/* kboss-compress BACKUP: queue (if needed) and run its job now. Returns
 * 0 done, 1 failed, 3 not run now (slot, in use, run elsewhere). */
int cp_one(const struct kb_config *cfg, const struct kb_catalog *cat, const char *backup_id);

/* Test hook: KBOSS_TEST_JOB_LOG names a file that gets one line per job
 * start and end ("start|end EPOCH_MS HOST JOB"). */
void cp_test_log(const char *what, const char *job_id);

#endif
