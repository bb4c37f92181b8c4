/* The one backing-chain validator.
 *
 * Everything that hands a backup's qcow2 chain to qemu (restore, quick
 * restore, validation, extract, compression, hash re-checks) first walks
 * the chain here, with kboss's own qcow2 reader and never with a qemu
 * process.  A chain is accepted only when every member is
 *  - a regular file (not a FIFO, device or symlink) inside the chain
 *    folder, reached from the folder by openat() without following any
 *    symlink (O_NOFOLLOW on every component, O_NONBLOCK on the file);
 *  - a qcow2 image the reader understands, with no external data file
 *    (incompatible feature bit or header extension), no encryption;
 *  - named by its child with a relative backing name made only of plain
 *    names ([A-Za-z0-9._-], see kb_name_ok) and "..", so no "json:",
 *    protocol prefix or absolute path, staying inside the folder;
 *  - given an explicit backing format, and that format is "qcow2";
 * and the chain has at most KB_CHAIN_MAX_DEPTH members and no loop.
 *
 * Afterwards qemu is told exactly this chain: kb_chain_qemu_json() spells
 * every node with its file name and ends with "backing": null, so a header
 * rewritten after the check cannot make qemu open anything else. */
#ifndef KBOSS_CHAIN_H
#define KBOSS_CHAIN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Members of one chain, the top image included: the largest
 * backup.chain.size (lib/settings.c), so no chain kboss wrote is refused. */
#define KB_CHAIN_MAX_DEPTH 1000

struct kb_chain {
  char *dir;               /* the chain folder as given */
  size_t n;                /* members, >= 1 */
  char **files;            /* n absolute paths "<dir>/<rel>", top first, base last, NULL-terminated */
  char **rel;              /* n paths relative to dir ("<backup>/<disk>.qcow2") */
  uint64_t *virtual_sizes; /* n virtual sizes, same order */
  uint64_t virtual_size;   /* of the top image (what a restore writes) */
};

/* Validate the chain whose top image is TOP inside folder DIR.  TOP is a
 * path under DIR ("DIR/<backup>/vda.qcow2") or relative to it.  On success
 * *RET is the validated chain.  On failure returns negative errno (-EPERM
 * for a chain that breaks a rule, -ENOENT/-EIO/... for I/O) and, when
 * RET_ERROR is not NULL, a malloc'd message that names the offending file
 * and the rule. */
int kb_chain_validate(const char *dir, const char *top, struct kb_chain **ret, char **ret_error);

void kb_chain_free(struct kb_chain *c);

/* The qemu block-node description of the validated chain as a "json:{...}"
 * file name (for qemu-img --image-opts, or -b).  When OVERLAY is not NULL
 * it becomes the top node, backed by the chain (quick-restore and
 * validation overlays on local storage).  Every node is
 *   {"driver":"qcow2","file":{"driver":"file","filename":PATH},"backing":...}
 * and the base has "backing": null.  Returns NULL on ENOMEM. */
char *kb_chain_qemu_json(const struct kb_chain *c, const char *overlay);

/* The same description of the one image PATH alone ("backing": null: no
 * backing file its header names is opened), e.g. for qemu-img check of a
 * file kboss has just written.  Returns NULL on ENOMEM. */
char *kb_qemu_json_single(const char *path);

/* libguestfs cannot be handed per-node options: serve the validated chain
 * read-only over NBD instead (qemu-nbd on the json: description, a Unix
 * socket in a fresh 0700 folder) and give libguestfs the socket
 * (protocol "nbd", server "unix:SOCK", format raw). */
struct kb_chain_nbd {
  pid_t pid;
  char *dir;
  char *sock;
};
int kb_chain_nbd_start(const struct kb_chain *c, struct kb_chain_nbd *ret, char **ret_error);
/* Stop the server and remove its folder; a zeroed struct is fine. */
void kb_chain_nbd_stop(struct kb_chain_nbd *s);

#endif
