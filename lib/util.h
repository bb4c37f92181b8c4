/* Small helpers shared by every kboss program. */
#ifndef KBOSS_UTIL_H
#define KBOSS_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>
#include <sys/types.h>

void kb_cleanup_free(void *ptr);
void kb_cleanup_close(int *fd);
void kb_cleanup_fclose(FILE **fp);
#define CLEANUP_FREE __attribute__((cleanup(kb_cleanup_free)))
#define CLEANUP_CLOSE __attribute__((cleanup(kb_cleanup_close)))
#define CLEANUP_FCLOSE __attribute__((cleanup(kb_cleanup_fclose)))

#define KB_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KB_STREQ(a, b) (strcmp((a), (b)) == 0)

/* Names from INI files, VM definitions or the command line become path
 * components only after this check: 1-128 of [A-Za-z0-9._-], not starting
 * with '.' or '-'. */
bool kb_name_ok(const char *name);

/* A libvirt UUID in its canonical 36-character form. */
bool kb_uuid_ok(const char *uuid);

/* asprintf that returns NULL on failure instead of leaving junk. */
char *kb_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Create DIR and its parents with MODE; an existing directory is fine,
 * anything else in its place (a symlink included) is -ENOTDIR. */
int kb_mkdir_p(const char *dir, mode_t mode);

/* Largest file kb_read_file()/kb_read_fd() read whole: catalog documents,
 * saved XML, screenshots and config files are far smaller. */
#define KB_READ_MAX (32u * 1024 * 1024)

/* Read a whole regular file (opened non-blocking, not through a symlink);
 * NUL-terminated.  -EINVAL for anything but a regular file (a FIFO
 * included), -EFBIG above KB_READ_MAX. */
int kb_read_file(const char *path, char **ret, size_t *ret_len);

/* The same from an open descriptor (a regular file). */
int kb_read_fd(int fd, char **ret, size_t *ret_len);

/* The folder part of PATH ("." or "/" at the ends), malloc'd. */
char *kb_dirname(const char *path);

/* Write all of BUF, retrying on short writes and EINTR. */
int kb_write_all(int fd, const void *buf, size_t len);

/* Replace PATH (a local file: /etc, unit folders) with LEN bytes of BUF so
 * that a reader sees the old or the new content, never a part: written to a
 * temporary name beside it (mode MODE, no symlink followed), fsync'ed,
 * renamed over PATH, and the folder fsync'ed. Not for the export: the
 * catalog has its own generation files (catalog.h). */
int kb_write_file_atomic(const char *path, const void *buf, size_t len, unsigned mode);

/* Give the file open as FD the owner and mode of the regular file FROM
 * (not followed if a symlink): a file written beside a backup's file takes
 * its place for qemu, which reads backups as its own user. EPERM on chown
 * (not root) is ignored. */
int kb_copy_owner(const char *from, int fd);
/* rename(TMP, DST) that tolerates a lost NFS reply: when TMP is gone and
 * DST is now the file TMP was (same inode), it happened. */
int kb_rename_over(const char *tmp, const char *dst);
/* Remove the entries of folder DIR (not followed if a symlink) whose names
 * start with PREFIX or with "." PREFIX (the temporary names the qcow2
 * writer builds on an output name). */
void kb_remove_prefixed(const char *dir, const char *prefix);
/* Bytes a regular file occupies on disk (not followed if a symlink); 0
 * when it is not a regular file or cannot be read. */
uint64_t kb_file_usage(const char *path);
/* fsync the folder that holds PATH (a rename in it becomes durable). */
int kb_fsync_parent(const char *path);
/* fsync PATH (opened read-only, non-blocking, without following a
 * symlink): for files another program wrote, such as qemu-img convert,
 * which leaves its output in the page cache.  0 or -errno. */
int kb_fsync_path(const char *path);

/* This host's name as kboss uses it in slot and lock files; "" when it
 * cannot be found (never a made-up fallback). KBOSS_HOSTNAME overrides
 * (tests pose as several hosts). */
const char *kb_hostname(void);
/* /etc/machine-id (32 lower-case hex digits), "" when missing or malformed.
 * KBOSS_MACHINE_ID overrides (tests). */
const char *kb_machine_id(void);
/* 0 when both the host name and the machine id are known, else -ENXIO:
 * locks refuse to run without a stable, unique host identity. */
int kb_host_identity_check(void);
/* Host-local runtime state: /run/kboss (KBOSS_RUN_DIR overrides, tests). */
const char *kb_run_dir(void);

/* Wall clock in seconds / monotonic clock in milliseconds. kb_now() is
 * what every program stamps records, backup ids and events with; the test
 * variable KBOSS_TEST_CLOCK_SKEW (seconds, may be negative) shifts it, as
 * a host whose clock is that far off would (lock stamps shift with it).
 * kb_clock_skew() is that shift, 0 without the variable. */
int64_t kb_now(void);
int64_t kb_clock_skew(void);
int64_t kb_mono_ms(void);

/* ISO 8601 UTC timestamp "2026-11-26T10:01:39Z" into BUF (at least 21 bytes). */
void kb_format_time(int64_t t, char *buf, size_t len);

/* Parse helpers returning -EINVAL on anything but a whole valid value. */
int kb_parse_ll(const char *s, long long *ret);
int kb_parse_double(const char *s, double *ret);
int kb_parse_bool(const char *s, bool *ret);

/* A random hex string of 2*NBYTES characters (for ids and temp names). */
int kb_random_hex(char *buf, size_t nbytes);

/* Remove a directory tree without following symlinks; missing is fine. */
int kb_rm_rf(const char *path);

/* Human-readable size "1.5 GiB". */
void kb_format_size(uint64_t bytes, char *buf, size_t len);

/* SIGINT, SIGTERM and SIGHUP set *FLAG to 1 (long work checks it and
 * stops cleanly). */
void kb_catch_signals(volatile sig_atomic_t *flag);

/* Run a program (no shell) and wait for it. Returns its exit status (0-255),
 * 128+signal, or negative errno. Its stdout+stderr go to *RET_OUTPUT when
 * given (NUL-terminated), else to /dev/null. The program gets SIGKILL when
 * the caller dies (kill -9 leaves no orphan working on its behalf). */
int kb_run(const char *const argv[], char **ret_output);

/* kb_run for a short metadata update of a VM's own disk (`qemu-img
 * bitmap`): the program is left to finish when the caller is killed, so
 * a kill -9 does not stop it half-way and leave the disk's bitmaps marked
 * in use (which would turn the next incremental into a full). */
int kb_run_to_end(const char *const argv[], char **ret_output);

/* kb_run in two halves, for a program that runs while the caller works:
 * kb_spawn starts it (its stdout+stderr to a pipe when WANT_OUTPUT, else
 * to /dev/null; SIGKILL when the caller dies), kb_spawn_wait collects its
 * output (when it was wanted) and its status as kb_run returns it. */
struct kb_child {
  pid_t pid;
  int out_fd;
};
int kb_spawn(const char *const argv[], bool want_output, struct kb_child *ret);
int kb_spawn_wait(struct kb_child *child, char **ret_output);

#endif
