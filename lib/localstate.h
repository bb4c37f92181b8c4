/* What this host knows about kboss VMs without the export. The qemu hook
 * decides from these facts alone (it must never wait on secondary storage
 * while libvirtd holds a domain):
 *
 *   - kboss's own element in the domain XML's <metadata> (namespace
 *     KB_DOMAIN_NS), set when kboss backs a VM up or restores it; it
 *     travels with the domain (migration, redefinition);
 *   - $(localstatedir)/lib/kboss/vms/<uuid>: an empty file kboss leaves when
 *     it changes a VM on this host;
 *   - /run/kboss/restoring/<uuid>: "pid=N\nstart_time=T\n" of the process
 *     restoring the VM now (removed when it stops restoring).
 *
 * KBOSS_STATE_DIR and KBOSS_RUN_DIR (absolute) move the two folders (tests). */
#ifndef KBOSS_LOCALSTATE_H
#define KBOSS_LOCALSTATE_H

#include <stdbool.h>

#include <libvirt/libvirt.h>

#define KB_DOMAIN_NS "urn:kboss:domain:1"
#define KB_DOMAIN_NS_PREFIX "kboss"

/* The domain XML carries kboss's <metadata> element. */
bool kb_xml_has_kboss_metadata(const char *domain_xml);

/* Put kboss's element into DOM's metadata (persistent definition, and the
 * live one when it runs). Best effort: returns -errno, changes nothing
 * else. */
int kb_virt_mark_domain(virDomainPtr dom);

/* The local file that says "kboss changed VM UUID on this host". */
int kb_local_mark_vm(const char *uuid);
bool kb_local_vm_known(const char *uuid);
int kb_local_forget_vm(const char *uuid);

/* The restoring marker of VM UUID, naming this process. */
int kb_local_restoring_begin(const char *uuid);
/* Remove it if this process wrote it. */
void kb_local_restoring_end(const char *uuid);
/* Remove it whoever wrote it (the export watchdog, after it killed the
 * restoring worker). */
void kb_local_restoring_clear(const char *uuid);
/* 1 with *RET_PID when a live process restores VM UUID now; 0 when not
 * (no marker, or its process is gone); -errno. */
int kb_local_restoring(const char *uuid, long *ret_pid);

#endif
