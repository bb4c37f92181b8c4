/* Job results as events: one line for a person, structured fields for the
 * journal (MESSAGE_ID per kind of event, KBOSS_VM, KBOSS_BACKUP, KBOSS_JOB)
 * and, for failures, a run of the operator's notify.command with the same
 * fields in its environment. See docs/operations.md, "Events". */
#ifndef KBOSS_EVENT_H
#define KBOSS_EVENT_H

#include <stdbool.h>

struct kb_config;

enum kb_event_kind {
  KB_EV_BACKUP_DONE,
  KB_EV_BACKUP_FAILED,
  KB_EV_VALIDATION_PASSED,
  KB_EV_VALIDATION_FAILED,
  KB_EV_HASH_MISMATCH,
  KB_EV_COMPRESSION_DONE,
  KB_EV_COMPRESSION_FAILED,
  KB_EV_PRUNE,
  KB_EV_VM_BACKUP_ERROR,
};

struct kb_event {
  enum kb_event_kind kind;
  const char *vm;          /* UUID, or NULL */
  const char *vm_name;     /* or NULL */
  const char *backup;      /* id, or NULL */
  const char *job;         /* id, or NULL */
  const char *message;     /* what happened, one line */
};

/* Name ("backup-failed") and MESSAGE_ID (32 hex digits) of KIND. */
const char *kb_event_name(enum kb_event_kind kind);
const char *kb_event_message_id(enum kb_event_kind kind);
/* Whether KIND is a failure (notify.command runs for it). */
bool kb_event_is_failure(enum kb_event_kind kind);

/* Take notify.command and notify.timeout from CFG (NULL: no notification). */
void kb_event_configure(const struct kb_config *cfg);

/* Report EV: to the journal with its fields when stderr is the journal
 * (falling back to a plain line if the journal refuses it), else a plain
 * line on stderr; then, for a failure, run notify.command (at most
 * notify.timeout seconds, then killed). */
void kb_event(const struct kb_event *ev);

/* Run ARGV (ARGV[0] an absolute path, no shell) with EV's fields in its
 * environment, stdin /dev/null, in its own process group; wait at most
 * TIMEOUT_S seconds, then kill the group. 0 when it exited 0, -ETIME on
 * timeout, -EIO on another exit, -errno. */
int kb_event_run_notify(const char *command, int timeout_s, const struct kb_event *ev);

#endif
