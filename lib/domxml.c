/* Domain, checkpoint and backup-job XML for libvirt, built with libxml2.
 *
 * A backup's saved domain.xml comes from the shared export, which any host
 * of the zone can write: it may carry <qemu:commandline>, an <emulator> on
 * the export, a <kernel> that is a host secret, an nvdimm on a host block
 * device. So it is never edited into a definition. kb_domxml_build() makes
 * a new document from kboss's own choices and copies from the saved one
 * only values that pass a check; every element it does not carry over is
 * reported, so that the caller logs it. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "domxml.h"
#include "util.h"

#define X(s) ((const xmlChar *) (s))

bool kb_domxml_token_ok(const char *s, size_t max)
{
  size_t n;

  if (!s || !*s)
    return false;
  for (n = 0; s[n]; n++) {
    char c = s[n];
    if (n >= max || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-'))
      return false;
  }
  return true;
}

static bool in_list(const char *s, const char *const *list)
{
  if (!s)
    return false;
  for (; *list; list++)
    if (KB_STREQ(s, *list))
      return true;
  return false;
}

/* The entry of LIST equal to S (a static string), or NULL. */
static const char *list_entry(const char *s, const char *const *list)
{
  if (!s)
    return NULL;
  for (; *list; list++)
    if (KB_STREQ(s, *list))
      return *list;
  return NULL;
}

static bool is_elem(xmlNodePtr n, const char *name)
{
  return n && n->type == XML_ELEMENT_NODE && !n->ns && xmlStrEqual(n->name, X(name));
}

static xmlNodePtr child(xmlNodePtr n, const char *name)
{
  for (xmlNodePtr c = n ? n->children : NULL; c; c = c->next)
    if (is_elem(c, name))
      return c;
  return NULL;
}

/* An attribute's value (no namespace), or NULL; free with free(). */
static char *attr(xmlNodePtr n, const char *name)
{
  xmlChar *v = n ? xmlGetNoNsProp(n, X(name)) : NULL;
  char *r = v ? strdup((const char *) v) : NULL;
  xmlFree(v);
  return r;
}

/* The element's text with blanks around it removed; free with free(). */
static char *text(xmlNodePtr n)
{
  xmlChar *v = n ? xmlNodeGetContent(n) : NULL;
  char *r = NULL;
  if (v) {
    const char *s = (const char *) v, *e;
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
      s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\t' || e[-1] == '\r'))
      e--;
    r = strndup(s, (size_t) (e - s));
  }
  xmlFree(v);
  return r;
}

/* A whole number in [MIN, MAX] (digits only). */
static bool parse_uint(const char *s, unsigned long long min, unsigned long long max, unsigned long long *ret)
{
  unsigned long long v = 0;

  if (!s || !*s || strlen(s) > 20)
    return false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9' || __builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *s - '0', &v))
      return false;
  }
  if (v < min || v > max)
    return false;
  *ret = v;
  return true;
}

struct build {
  const struct kb_domxml_opts *o;
  xmlNodePtr root, os, devs;
  char **notices;
  size_t nnotices, more;
  char *error;
  bool nomem, summary;
  /* gathered from the saved XML */
  const char **bus;            /* per opts disk */
  unsigned long long *boot;    /* per opts disk, 0 = none */
  bool efi, secure_boot, have_video, have_scsi_ctl;
};

static void note(struct build *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct build *b, const char *fmt, ...)
{
  va_list ap;
  char *s = NULL, **nv;

  if (b->nnotices >= KB_DOMXML_MAX_NOTICES && !b->summary) {
    b->more++;
    return;
  }
  va_start(ap, fmt);
  if (vasprintf(&s, fmt, ap) < 0)
    s = NULL;
  va_end(ap);
  nv = s ? realloc(b->notices, (b->nnotices + 2) * sizeof *nv) : NULL;
  if (!nv) {
    free(s);
    b->nomem = true;
    return;
  }
  b->notices = nv;
  nv[b->nnotices++] = s;
  nv[b->nnotices] = NULL;
}

static bool is_type(xmlNodePtr n, const char *type)
{
  CLEANUP_FREE char *t = attr(n, "type");
  return t && KB_STREQ(t, type);
}

/* "<qemu:commandline>", "<serial type='tcp'>": how a notice names an element. */
static char *describe(xmlNodePtr n)
{
  CLEANUP_FREE char *type = attr(n, "type");
  const char *prefix = n->ns && n->ns->prefix ? (const char *) n->ns->prefix : NULL;
  return kb_printf("<%s%s%.40s%s%.40s%s>", prefix ? prefix : "", prefix ? ":" : "", (const char *) n->name,
                   type ? " type='" : "", type ? type : "", type ? "'" : "");
}

static void drop(struct build *b, xmlNodePtr n, const char *why)
{
  CLEANUP_FREE char *d = describe(n);
  note(b, "dropped %s from the saved domain XML: %s", d ? d : "an element", why);
}

static void fail(struct build *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct build *b, const char *fmt, ...)
{
  va_list ap;

  if (b->error)
    return;
  va_start(ap, fmt);
  if (vasprintf(&b->error, fmt, ap) < 0)
    b->error = NULL;
  va_end(ap);
  if (!b->error)
    b->nomem = true;
}

static xmlNodePtr add(struct build *b, xmlNodePtr parent, const char *name, const char *content)
{
  xmlNodePtr n = xmlNewTextChild(parent, NULL, X(name), content ? X(content) : NULL);
  if (!n)
    b->nomem = true;
  return n;
}

static void set(struct build *b, xmlNodePtr n, const char *name, const char *value)
{
  if (n && !xmlSetProp(n, X(name), X(value)))
    b->nomem = true;
}

/* Memory in KiB from <memory unit='...'>N</memory>. */
static bool memory_kib(xmlNodePtr n, unsigned long long *ret)
{
  static const struct { const char *unit; unsigned long long bytes; } units[] = {
    { "b", 1 }, { "bytes", 1 }, { "KB", 1000ULL }, { "k", 1024ULL }, { "KiB", 1024ULL },
    { "MB", 1000000ULL }, { "M", 1ULL << 20 }, { "MiB", 1ULL << 20 }, { "GB", 1000000000ULL },
    { "G", 1ULL << 30 }, { "GiB", 1ULL << 30 }, { "TB", 1000000000000ULL }, { "T", 1ULL << 40 },
    { "TiB", 1ULL << 40 },
  };
  CLEANUP_FREE char *unit = attr(n, "unit"), *t = text(n);
  unsigned long long v, bytes = 0;
  size_t i;

  if (!parse_uint(t, 1, UINT64_MAX, &v))
    return false;
  for (i = 0; i < sizeof units / sizeof *units; i++)
    if (KB_STREQ(unit ? unit : "KiB", units[i].unit))
      bytes = units[i].bytes;
  if (!bytes || __builtin_mul_overflow(v, bytes, &v))
    return false;
  v /= 1024;
  if (v < KB_DOMXML_MIN_MEM_KIB || v > KB_DOMXML_MAX_MEM_KIB)
    return false;
  *ret = v;
  return true;
}

static void build_os(struct build *b, xmlNodePtr sos)
{
  static const char *const arches[] = { "x86_64", "i686", "aarch64", "ppc64le", "s390x", NULL };
  CLEANUP_FREE char *fw = attr(sos, "firmware");
  xmlNodePtr type = child(sos, "type"), n;
  CLEANUP_FREE char *t = text(type), *arch = attr(type, "arch"), *machine = attr(type, "machine");
  xmlNodePtr ot;

  if (!t || !KB_STREQ(t, "hvm")) {
    fail(b, "the saved domain XML is not of an hvm guest");
    return;
  }
  if (arch && !in_list(arch, arches)) {
    fail(b, "the saved domain XML has an unsupported architecture");
    return;
  }
  if (machine && !kb_domxml_token_ok(machine, 64)) {
    fail(b, "the saved domain XML has an invalid machine type");
    return;
  }
  b->efi = fw && KB_STREQ(fw, "efi");
  for (n = sos->children; n; n = n->next) {
    if (n->type != XML_ELEMENT_NODE || n == type)
      continue;
    if (is_elem(n, "boot"))
      continue;  /* kboss sets the boot order: its disks */
    if (is_elem(n, "loader")) {
      CLEANUP_FREE char *lt = attr(n, "type"), *sec = attr(n, "secure");
      /* A UEFI guest keeps UEFI, with the host's own firmware files. */
      if (lt && KB_STREQ(lt, "pflash"))
        b->efi = true;
      if (sec && KB_STREQ(sec, "yes"))
        b->secure_boot = true;
      if (xmlChildElementCount(n) || n->children)
        drop(b, n, "a host path (libvirt picks the host's firmware)");
      continue;
    }
    if (is_elem(n, "nvram")) {
      drop(b, n, "a host path (a fresh UEFI variable store is used)");
      continue;
    }
    if (is_elem(n, "kernel") || is_elem(n, "initrd") || is_elem(n, "dtb") || is_elem(n, "cmdline"))
      drop(b, n, "a host path or boot argument");
    else if (is_elem(n, "firmware"))
      continue;  /* feature requests: recomputed from secure boot below */
    else
      drop(b, n, "not on kboss's allow-list");
  }
  ot = b->os = add(b, b->root, "os", NULL);
  if (b->efi)
    set(b, ot, "firmware", "efi");
  n = add(b, ot, "type", "hvm");
  if (arch)
    set(b, n, "arch", arch);
  if (machine)
    set(b, n, "machine", machine);
  if (b->efi && b->secure_boot) {
    n = add(b, ot, "loader", NULL);
    set(b, n, "secure", "yes");
  }
  if (b->efi && b->o->nvram)
    add(b, ot, "nvram", b->o->nvram);
}

static void build_features(struct build *b, xmlNodePtr sf)
{
  static const char *const plain[] = { "acpi", "apic", "pae", NULL };
  static const char *const stated[] = { "smm", "vmport", NULL };
  xmlNodePtr f = add(b, b->root, "features", NULL), n;

  for (n = sf ? sf->children : NULL; n; n = n->next) {
    if (n->type != XML_ELEMENT_NODE)
      continue;
    if (!n->ns && in_list((const char *) n->name, plain))
      add(b, f, (const char *) n->name, NULL);
    else if (!n->ns && in_list((const char *) n->name, stated)) {
      CLEANUP_FREE char *st = attr(n, "state");
      xmlNodePtr c = add(b, f, (const char *) n->name, NULL);
      if (st && (KB_STREQ(st, "on") || KB_STREQ(st, "off")))
        set(b, c, "state", st);
    } else
      drop(b, n, "a feature not on kboss's allow-list");
  }
  if (b->secure_boot && !child(sf, "smm")) {
    n = add(b, f, "smm", NULL);
    set(b, n, "state", "on");
  }
}

static void build_cpu(struct build *b, xmlNodePtr sc, unsigned long long vcpus)
{
  static const char *const modes[] = { "host-passthrough", "host-model", "custom", "maximum", NULL };
  static const char *const checks[] = { "none", "partial", "full", NULL };
  static const char *const matches[] = { "minimum", "exact", "strict", NULL };
  CLEANUP_FREE char *mode = attr(sc, "mode"), *check = attr(sc, "check"), *match = attr(sc, "match");
  xmlNodePtr cpu, n;

  if (mode && !in_list(mode, modes)) {
    fail(b, "the saved domain XML has an unknown CPU mode");
    return;
  }
  cpu = add(b, b->root, "cpu", NULL);
  set(b, cpu, "mode", mode ? mode : "custom");
  if (check && in_list(check, checks))
    set(b, cpu, "check", check);
  if (match && in_list(match, matches))
    set(b, cpu, "match", match);
  for (n = sc->children; n; n = n->next) {
    if (n->type != XML_ELEMENT_NODE)
      continue;
    if (is_elem(n, "model")) {
      CLEANUP_FREE char *m = text(n), *fb = attr(n, "fallback");
      xmlNodePtr c;
      if (!kb_domxml_token_ok(m, 64)) {
        fail(b, "the saved domain XML has an invalid CPU model");
        return;
      }
      c = add(b, cpu, "model", m);
      if (fb && (KB_STREQ(fb, "allow") || KB_STREQ(fb, "forbid")))
        set(b, c, "fallback", fb);
    } else if (is_elem(n, "topology")) {
      static const char *const dims[] = { "sockets", "dies", "cores", "threads" };
      unsigned long long v[4], prod = 1;
      bool ok = true;
      size_t i;
      for (i = 0; i < 4 && ok; i++) {
        CLEANUP_FREE char *a = attr(n, dims[i]);
        v[i] = 1;
        if (a)
          ok = parse_uint(a, 1, KB_DOMXML_MAX_VCPUS, &v[i]);
        prod *= v[i];
      }
      if (ok && prod == vcpus) {
        xmlNodePtr c = add(b, cpu, "topology", NULL);
        for (i = 0; i < 4; i++) {
          char s[24];
          snprintf(s, sizeof s, "%llu", v[i]);
          set(b, c, dims[i], s);
        }
      } else
        drop(b, n, "a topology that does not match the vCPUs");
    } else if (is_elem(n, "vendor"))
      continue;
    else
      drop(b, n, "not on kboss's allow-list");
  }
}

/* The disks of the saved XML: which of kboss's disks they are, their bus
 * and boot order; every other disk is reported. */
static void scan_disk(struct build *b, xmlNodePtr n)
{
  static const char *const buses[] = { "virtio", "scsi", "sata", "ide", NULL };
  CLEANUP_FREE char *device = attr(n, "device");
  xmlNodePtr t = child(n, "target"), bo = child(n, "boot");
  CLEANUP_FREE char *dev = attr(t, "dev"), *bus = attr(t, "bus"), *order = attr(bo, "order");
  size_t i;

  if (device && !KB_STREQ(device, "disk")) {
    drop(b, n, "not a disk of the backup");
    return;
  }
  for (i = 0; i < b->o->ndisks; i++)
    if (dev && KB_STREQ(dev, b->o->disks[i].target))
      break;
  if (i == b->o->ndisks) {
    CLEANUP_FREE char *d = describe(n);
    note(b, "dropped %s %s from the saved domain XML: not in the backup", d ? d : "<disk>",
         dev && kb_name_ok(dev) ? dev : "(unnamed)");
    return;
  }
  b->bus[i] = list_entry(bus, buses);
  if (order && !parse_uint(order, 1, 9999, &b->boot[i]))
    b->boot[i] = 0;
}

static void add_chain(struct build *b, xmlNodePtr disk, char *const *chain)
{
  xmlNodePtr parent = disk, n;

  for (; *chain; chain++) {
    n = add(b, parent, "backingStore", NULL);
    set(b, n, "type", "file");
    set(b, add(b, n, "format", NULL), "type", "qcow2");
    set(b, add(b, n, "source", NULL), "file", *chain);
    parent = n;
  }
  add(b, parent, "backingStore", NULL);
}

static void build_disks(struct build *b)
{
  bool any_order = false;
  size_t i, k;

  for (i = 0; i < b->o->ndisks; i++)
    any_order |= b->boot[i] != 0;
  if (!any_order)
    set(b, add(b, b->os, "boot", NULL), "dev", "hd");
  for (i = 0; i < b->o->ndisks; i++) {
    const struct kb_domxml_disk *d = &b->o->disks[i];
    xmlNodePtr disk = add(b, b->devs, "disk", NULL), n;

    set(b, disk, "type", "file");
    set(b, disk, "device", "disk");
    n = add(b, disk, "driver", NULL);
    set(b, n, "name", "qemu");
    set(b, n, "type", d->format ? d->format : "qcow2");
    set(b, add(b, disk, "source", NULL), "file", d->file);
    if (d->chain)
      add_chain(b, disk, d->chain);
    n = add(b, disk, "target", NULL);
    set(b, n, "dev", d->target);
    set(b, n, "bus", b->bus[i] ? b->bus[i] : "virtio");
    if (b->bus[i] && KB_STREQ(b->bus[i], "scsi") && !b->have_scsi_ctl) {
      xmlNodePtr c = add(b, b->devs, "controller", NULL);
      set(b, c, "type", "scsi");
      set(b, c, "model", "virtio-scsi");
      b->have_scsi_ctl = true;
    }
    if (any_order && b->boot[i]) {
      /* Renumbered 1.. in the saved order. */
      unsigned long long rank = 1;
      char s[24];
      for (k = 0; k < b->o->ndisks; k++)
        if (b->boot[k] && (b->boot[k] < b->boot[i] || (b->boot[k] == b->boot[i] && k < i)))
          rank++;
      snprintf(s, sizeof s, "%llu", rank);
      set(b, add(b, disk, "boot", NULL), "order", s);
    }
  }
}

static void copy_interface(struct build *b, xmlNodePtr n)
{
  static const char *const models[] = { "virtio", "e1000", "e1000e", "rtl8139", NULL };
  CLEANUP_FREE char *type = attr(n, "type");
  xmlNodePtr src = child(n, "source"), m = child(n, "model"), nic;
  CLEANUP_FREE char *model = attr(m, "type");
  CLEANUP_FREE char *net = attr(src, "network"), *bridge = attr(src, "bridge");

  if (!b->o->network) {
    drop(b, n, "validation VMs have no network");
    return;
  }
  if (type && KB_STREQ(type, "network") && kb_domxml_token_ok(net, 64)) {
    nic = add(b, b->devs, "interface", NULL);
    set(b, nic, "type", "network");
    set(b, add(b, nic, "source", NULL), "network", net);
  } else if (type && KB_STREQ(type, "bridge") && kb_domxml_token_ok(bridge, 15)) {
    nic = add(b, b->devs, "interface", NULL);
    set(b, nic, "type", "bridge");
    set(b, add(b, nic, "source", NULL), "bridge", bridge);
  } else {
    drop(b, n, "only NICs on a libvirt network or a bridge are restored");
    return;
  }
  /* No <mac>: libvirt makes a new address. */
  set(b, add(b, nic, "model", NULL), "type", model && in_list(model, models) ? model : "virtio");
}

static void copy_device(struct build *b, xmlNodePtr n)
{
  const char *name = (const char *) n->name;

  if (n->ns) {
    drop(b, n, "an element of another namespace");
    return;
  }
  if (KB_STREQ(name, "disk"))
    scan_disk(b, n);
  else if (KB_STREQ(name, "interface"))
    copy_interface(b, n);
  else if (KB_STREQ(name, "emulator"))
    drop(b, n, "libvirt runs the host's own qemu");
  else if (KB_STREQ(name, "controller")) {
    CLEANUP_FREE char *type = attr(n, "type"), *model = attr(n, "model");
    if (type && KB_STREQ(type, "scsi") && !b->have_scsi_ctl) {
      xmlNodePtr c = add(b, b->devs, "controller", NULL);
      set(b, c, "type", "scsi");
      set(b, c, "model", model && KB_STREQ(model, "lsilogic") ? "lsilogic" : "virtio-scsi");
      b->have_scsi_ctl = true;
    }
    /* Others: libvirt adds what the devices kboss puts in need. */
  } else if (KB_STREQ(name, "input")) {
    static const char *const types[] = { "mouse", "tablet", "keyboard", NULL };
    static const char *const buses[] = { "ps2", "usb", "virtio", NULL };
    CLEANUP_FREE char *type = attr(n, "type"), *bus = attr(n, "bus");
    if (in_list(type, types) && (!bus || in_list(bus, buses))) {
      xmlNodePtr c = add(b, b->devs, "input", NULL);
      set(b, c, "type", type);
      if (bus)
        set(b, c, "bus", bus);
    } else
      drop(b, n, "not on kboss's allow-list");
  } else if (KB_STREQ(name, "video")) {
    static const char *const models[] = { "vga", "cirrus", "virtio", "qxl", "bochs", NULL };
    CLEANUP_FREE char *type = attr(child(n, "model"), "type");
    if (!b->have_video) {
      xmlNodePtr c = add(b, b->devs, "video", NULL);
      set(b, add(b, c, "model", NULL), "type", in_list(type, models) ? type : "vga");
      b->have_video = true;
    }
  } else if (KB_STREQ(name, "memballoon")) {
    CLEANUP_FREE char *model = attr(n, "model");
    if (model && (KB_STREQ(model, "virtio") || KB_STREQ(model, "none")))
      set(b, add(b, b->devs, "memballoon", NULL), "model", model);
  } else if (KB_STREQ(name, "graphics"))
    ;  /* replaced: VNC on loopback */
  else if (KB_STREQ(name, "audio") && is_type(n, "none"))
    ;  /* libvirt's default, added again */
  else if (KB_STREQ(name, "channel")) {
    CLEANUP_FREE char *type = attr(n, "type"), *tname = attr(child(n, "target"), "name");
    if (!(type && KB_STREQ(type, "unix") && tname && KB_STREQ(tname, "org.qemu.guest_agent.0") &&
          !child(n, "source")))
      drop(b, n, "a channel reaches a host socket, file or the network; kboss adds only the guest agent's");
  } else if (KB_STREQ(name, "rng")) {
    xmlNodePtr be = child(n, "backend");
    CLEANUP_FREE char *model = attr(n, "model"), *bmodel = attr(be, "model"), *path = text(be);
    if (model && KB_STREQ(model, "virtio") && bmodel && KB_STREQ(bmodel, "random") &&
        (!path || !*path || KB_STREQ(path, "/dev/urandom") || KB_STREQ(path, "/dev/random"))) {
      xmlNodePtr c = add(b, b->devs, "rng", NULL);
      set(b, c, "model", "virtio");
      set(b, add(b, c, "backend", "/dev/urandom"), "model", "random");
    } else
      note(b, "dropped <rng> (backend '%.20s') from the saved domain XML: it reaches a host file, socket or "
           "the network", bmodel ? bmodel : "?");
  } else if (KB_STREQ(name, "hostdev") || KB_STREQ(name, "redirdev") || KB_STREQ(name, "smartcard") ||
             KB_STREQ(name, "hub") || KB_STREQ(name, "redirfilter"))
    drop(b, n, "a host device");
  else if (KB_STREQ(name, "memory") || KB_STREQ(name, "shmem") || KB_STREQ(name, "filesystem") ||
           KB_STREQ(name, "tpm"))
    drop(b, n, "it is backed by a host file or device");
  else if (KB_STREQ(name, "serial") || KB_STREQ(name, "console") || KB_STREQ(name, "parallel"))
    drop(b, n, "a character device reaches a host file, socket or the network");
  else
    drop(b, n, "not on kboss's allow-list");
}

static int dump(xmlDocPtr doc, char **ret_xml)
{
  xmlChar *out = NULL;
  int len = 0;

  xmlDocDumpFormatMemory(doc, &out, &len, 1);
  if (!out)
    return -ENOMEM;
  *ret_xml = strdup((const char *) out);
  xmlFree(out);
  return *ret_xml ? 0 : -ENOMEM;
}

static xmlDocPtr parse(const char *xml, const char *name)
{
  xmlDocPtr doc;

  /* No network, no DTD loading, bounded input; libvirt never writes a
   * DOCTYPE, so a document with one (entities) is refused. */
  if (!xml || strlen(xml) > 4 * 1024 * 1024)
    return NULL;
  doc = xmlReadMemory(xml, (int) strlen(xml), name, NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NOCDATA);
  if (doc && (doc->intSubset || doc->extSubset)) {
    xmlFreeDoc(doc);
    return NULL;
  }
  return doc;
}

int kb_domxml_build(const char *saved, const struct kb_domxml_opts *o, char **ret_xml,
                    struct kb_domxml_info *ret_info, char ***ret_notices, char **ret_error)
{
  struct build b = { .o = o };
  xmlDocPtr in = NULL, out = NULL;
  xmlNodePtr sroot, n, sdevs = NULL, scpu = NULL, sfeat = NULL;
  CLEANUP_FREE char *dtype = NULL, *vcpu_txt = NULL, *offset = NULL;
  unsigned long long mem = 0, cur = 0, vcpus = 1;
  int r = -EINVAL;
  size_t i;

  *ret_xml = NULL;
  *ret_notices = NULL;
  *ret_error = NULL;
  for (i = 0; i < o->ndisks; i++)
    if (!kb_name_ok(o->disks[i].target) || !o->disks[i].file) {
      *ret_error = strdup("invalid disk for the new domain");
      return -EINVAL;
    }
  b.bus = calloc(o->ndisks + 1, sizeof *b.bus);
  b.boot = calloc(o->ndisks + 1, sizeof *b.boot);
  out = xmlNewDoc(X("1.0"));
  if (!b.bus || !b.boot || !out) {
    b.nomem = true;
    goto done;
  }
  in = parse(saved, "domain.xml");
  sroot = in ? xmlDocGetRootElement(in) : NULL;
  if (!sroot || !is_elem(sroot, "domain") || !(sdevs = child(sroot, "devices")) || !child(sroot, "os")) {
    fail(&b, "the saved domain XML does not parse as a <domain> with <os> and <devices>");
    goto done;
  }
  dtype = attr(sroot, "type");
  if (!dtype || !(KB_STREQ(dtype, "kvm") || KB_STREQ(dtype, "qemu"))) {
    fail(&b, "the saved domain XML is not of a kvm or qemu domain");
    goto done;
  }
  /* The values kboss copies, each checked. */
  n = child(sroot, "memory");
  if (!n || !memory_kib(n, &mem)) {
    fail(&b, "the saved domain XML has no valid <memory> (%llu MiB to %llu TiB)", KB_DOMXML_MIN_MEM_KIB / 1024,
         KB_DOMXML_MAX_MEM_KIB >> 30);
    goto done;
  }
  n = child(sroot, "currentMemory");
  if (!n || !memory_kib(n, &cur) || cur > mem)
    cur = mem;
  n = child(sroot, "vcpu");
  if (n) {
    vcpu_txt = text(n);
    if (!parse_uint(vcpu_txt, 1, KB_DOMXML_MAX_VCPUS, &vcpus)) {
      fail(&b, "the saved domain XML has no valid <vcpu> (1 to %d)", KB_DOMXML_MAX_VCPUS);
      goto done;
    }
  }

  b.root = xmlNewDocNode(out, NULL, X("domain"), NULL);
  if (!b.root) {
    b.nomem = true;
    goto done;
  }
  xmlDocSetRootElement(out, b.root);
  set(&b, b.root, "type", dtype);
  add(&b, b.root, "name", o->name);
  if (o->description)
    add(&b, b.root, "description", o->description);
  {
    char s[24];
    snprintf(s, sizeof s, "%llu", mem);
    set(&b, add(&b, b.root, "memory", s), "unit", "KiB");
    snprintf(s, sizeof s, "%llu", cur);
    set(&b, add(&b, b.root, "currentMemory", s), "unit", "KiB");
    snprintf(s, sizeof s, "%llu", vcpus);
    set(&b, add(&b, b.root, "vcpu", s), "placement", "static");
  }

  /* Every top-level element: carried over through a check, replaced by
   * kboss's own, or reported as dropped. */
  for (n = sroot->children; n; n = n->next) {
    const char *name = (const char *) n->name;
    if (n->type != XML_ELEMENT_NODE)
      continue;
    if (n->ns)
      drop(&b, n, "an element of another namespace");
    else if (KB_STREQ(name, "os"))
      build_os(&b, n);
    else if (KB_STREQ(name, "cpu"))
      scpu = n;
    else if (KB_STREQ(name, "features"))
      sfeat = n;
    else if (KB_STREQ(name, "clock")) {
      offset = attr(n, "offset");
      if (n->children && xmlChildElementCount(n))
        note(&b, "dropped the timers of <clock> from the saved domain XML: not on kboss's allow-list");
    } else if (in_list(name, (const char *const[]){ "name", "uuid", "description", "title", "memory",
                                                    "currentMemory", "vcpu", "devices", "on_poweroff",
                                                    "on_reboot", "on_crash", "seclabel", "resource",
                                                    "genid", NULL }))
      ;  /* kboss's own values, or checked above */
    else if (KB_STREQ(name, "memoryBacking"))
      drop(&b, n, "memory backing reaches host files");
    else
      drop(&b, n, "not on kboss's allow-list");
    if (b.error || b.nomem)
      goto done;
  }
  build_features(&b, sfeat);
  if (scpu)
    build_cpu(&b, scpu, vcpus);
  if (b.error || b.nomem)
    goto done;
  n = add(&b, b.root, "clock", NULL);
  set(&b, n, "offset", offset && KB_STREQ(offset, "localtime") ? "localtime" : "utc");
  add(&b, b.root, "on_poweroff", "destroy");
  add(&b, b.root, "on_reboot", o->destroy_on_reboot ? "destroy" : "restart");
  add(&b, b.root, "on_crash", "destroy");

  b.devs = add(&b, b.root, "devices", NULL);
  for (n = sdevs->children; n && !b.nomem; n = n->next)
    if (n->type == XML_ELEMENT_NODE)
      copy_device(&b, n);
  build_disks(&b);
  /* The guest agent (its socket chosen by libvirt), VNC on loopback. */
  n = add(&b, b.devs, "channel", NULL);
  set(&b, n, "type", "unix");
  {
    xmlNodePtr t = add(&b, n, "target", NULL);
    set(&b, t, "type", "virtio");
    set(&b, t, "name", "org.qemu.guest_agent.0");
  }
  n = add(&b, b.devs, "graphics", NULL);
  set(&b, n, "type", "vnc");
  set(&b, n, "port", "-1");
  set(&b, n, "autoport", "yes");
  set(&b, n, "listen", "127.0.0.1");
  {
    xmlNodePtr l = add(&b, n, "listen", NULL);
    set(&b, l, "type", "address");
    set(&b, l, "address", "127.0.0.1");
  }
  if (!b.have_video) {
    n = add(&b, b.devs, "video", NULL);
    set(&b, add(&b, n, "model", NULL), "type", "vga");
  }
  b.summary = true;
  if (b.more)
    note(&b, "and %zu more elements dropped from the saved domain XML", b.more);
  if (b.nomem)
    goto done;
  r = dump(out, ret_xml);
  if (r == 0) {
    if (ret_info) {
      ret_info->vcpus = (unsigned) vcpus;
      ret_info->mem_kib = cur;
    }
    if (!b.notices)
      b.notices = calloc(1, sizeof *b.notices);
    if (!b.notices) {
      free(*ret_xml);
      *ret_xml = NULL;
      r = -ENOMEM;
      goto done;
    }
    *ret_notices = b.notices;
    b.notices = NULL;
  }
done:
  if (b.nomem)
    r = -ENOMEM;
  else if (b.error) {
    *ret_error = b.error;
    b.error = NULL;
    r = -EINVAL;
  }
  free(b.error);
  for (i = 0; b.notices && b.notices[i]; i++)
    free(b.notices[i]);
  free(b.notices);
  free(b.bus);
  free(b.boot);
  if (in)
    xmlFreeDoc(in);
  if (out)
    xmlFreeDoc(out);
  return r;
}

/* ---- checkpoints and backup jobs ---- */

static int new_doc(const char *root_name, xmlDocPtr *ret_doc, xmlNodePtr *ret_root)
{
  xmlDocPtr doc = xmlNewDoc(X("1.0"));
  xmlNodePtr root = doc ? xmlNewDocNode(doc, NULL, X(root_name), NULL) : NULL;

  if (!root) {
    if (doc)
      xmlFreeDoc(doc);
    return -ENOMEM;
  }
  xmlDocSetRootElement(doc, root);
  *ret_doc = doc;
  *ret_root = root;
  return 0;
}

static int finish(xmlDocPtr doc, bool nomem, char **ret_xml)
{
  int r = nomem ? -ENOMEM : dump(doc, ret_xml);
  xmlFreeDoc(doc);
  return r;
}

int kb_checkpoint_xml(const char *name, char *const *targets, const bool *bitmap, size_t n, char **ret_xml)
{
  struct build b = { 0 };
  xmlDocPtr doc;
  xmlNodePtr root, disks, d;
  CLEANUP_FREE char *desc = kb_printf("kboss backup %s", name);
  size_t i;

  if (!desc || new_doc("domaincheckpoint", &doc, &root) < 0)
    return -ENOMEM;
  add(&b, root, "name", name);
  add(&b, root, "description", desc);
  disks = add(&b, root, "disks", NULL);
  for (i = 0; i < n; i++) {
    d = add(&b, disks, "disk", NULL);
    set(&b, d, "name", targets[i]);
    set(&b, d, "checkpoint", bitmap[i] ? "bitmap" : "no");
  }
  return finish(doc, b.nomem, ret_xml);
}

int kb_checkpoint_redefine_xml(const char *saved, const char *expect_name, char **ret_xml)
{
  struct build b = { 0 };
  xmlDocPtr in = parse(saved, "checkpoint.xml"), doc;
  xmlNodePtr sroot = in ? xmlDocGetRootElement(in) : NULL, root, disks, n;
  CLEANUP_FREE char *name = NULL, *ctime = NULL, *desc = NULL;
  unsigned long long t;
  int r = -EINVAL;

  if (!sroot || !is_elem(sroot, "domaincheckpoint"))
    goto out;
  name = text(child(sroot, "name"));
  ctime = text(child(sroot, "creationTime"));
  if (!name || !kb_name_ok(name) || (expect_name && !KB_STREQ(name, expect_name)) ||
      (ctime && !parse_uint(ctime, 0, UINT64_MAX, &t)) || !child(sroot, "disks"))
    goto out;
  desc = kb_printf("kboss backup %s", name);
  r = desc ? new_doc("domaincheckpoint", &doc, &root) : -ENOMEM;
  if (r < 0)
    goto out;
  add(&b, root, "name", name);
  add(&b, root, "description", desc);
  if (ctime)
    add(&b, root, "creationTime", ctime);
  disks = add(&b, root, "disks", NULL);
  for (n = child(sroot, "disks")->children; n; n = n->next) {
    CLEANUP_FREE char *dn = NULL, *cp = NULL, *bm = NULL;
    xmlNodePtr d;
    if (!is_elem(n, "disk"))
      continue;
    dn = attr(n, "name");
    cp = attr(n, "checkpoint");
    bm = attr(n, "bitmap");
    if (!kb_name_ok(dn) || !cp || !(KB_STREQ(cp, "bitmap") || KB_STREQ(cp, "no")) || (bm && !kb_name_ok(bm))) {
      xmlFreeDoc(doc);
      r = -EINVAL;
      goto out;
    }
    d = add(&b, disks, "disk", NULL);
    set(&b, d, "name", dn);
    set(&b, d, "checkpoint", cp);
    if (bm && KB_STREQ(cp, "bitmap"))
      set(&b, d, "bitmap", bm);
  }
  r = finish(doc, b.nomem, ret_xml);
out:
  if (in)
    xmlFreeDoc(in);
  return r;
}

int kb_backup_job_xml(const char *since, const struct kb_backupxml_disk *disks, size_t n, char **ret_xml)
{
  struct build b = { 0 };
  xmlDocPtr doc;
  xmlNodePtr root, dl, d;
  size_t i;

  if (new_doc("domainbackup", &doc, &root) < 0)
    return -ENOMEM;
  set(&b, root, "mode", "push");
  if (since)
    add(&b, root, "incremental", since);
  dl = add(&b, root, "disks", NULL);
  for (i = 0; i < n; i++) {
    d = add(&b, dl, "disk", NULL);
    set(&b, d, "name", disks[i].target);
    if (!disks[i].file) {
      set(&b, d, "backup", "no");
      continue;
    }
    set(&b, d, "backup", "yes");
    set(&b, d, "type", "file");
    if (disks[i].incremental && since) {
      set(&b, d, "backupmode", "incremental");
      set(&b, d, "incremental", since);
    } else
      set(&b, d, "backupmode", "full");
    set(&b, add(&b, d, "target", NULL), "file", disks[i].file);
    set(&b, add(&b, d, "driver", NULL), "type", "qcow2");
  }
  return finish(doc, b.nomem, ret_xml);
}
