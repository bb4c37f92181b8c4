#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <grp.h>

#include <json-c/json.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#include "localstate.h"
#include "util.h"
#include "virt.h"

static void silent_error(void *opaque, virErrorPtr err)
{
  (void) opaque;
  (void) err;
}

const char *kb_virt_error(void)
{
  return virGetLastErrorMessage();
}

int kb_virt_connect(const char *uri, virConnectPtr *ret)
{
  virConnectPtr c;

  virSetErrorFunc(NULL, silent_error);
  c = virConnectOpen(uri && *uri ? uri : NULL);
  if (!c)
    return -ECONNREFUSED;
  *ret = c;
  return 0;
}

int kb_virt_lookup(virConnectPtr conn, const char *name_or_uuid, virDomainPtr *ret)
{
  virDomainPtr d = NULL;

  if (kb_uuid_ok(name_or_uuid))
    d = virDomainLookupByUUIDString(conn, name_or_uuid);
  if (!d)
    d = virDomainLookupByName(conn, name_or_uuid);
  if (!d)
    return -ENOENT;
  *ret = d;
  return 0;
}

static char *xml_attr(xmlNodePtr n, const char *name)
{
  xmlChar *v = xmlGetProp(n, (const xmlChar *) name);
  char *s;

  if (!v)
    return NULL;
  s = strdup((const char *) v);
  xmlFree(v);
  return s;
}

static xmlNodePtr xml_child(xmlNodePtr n, const char *name)
{
  for (n = n->children; n; n = n->next)
    if (n->type == XML_ELEMENT_NODE && KB_STREQ((const char *) n->name, name))
      return n;
  return NULL;
}

void kb_disks_clear(struct kb_disks *d)
{
  size_t i;

  for (i = 0; i < d->n; i++) {
    free(d->v[i].target);
    free(d->v[i].type);
    free(d->v[i].device);
    free(d->v[i].source);
    free(d->v[i].format);
    free(d->v[i].bus);
  }
  free(d->v);
  d->v = NULL;
  d->n = 0;
}

int kb_disks_parse(const char *domain_xml, struct kb_disks *ret)
{
  xmlDocPtr doc;
  xmlXPathContextPtr ctx = NULL;
  xmlXPathObjectPtr obj = NULL;
  struct kb_disks d = { NULL, 0 };
  int i, r = 0;

  doc = xmlReadMemory(domain_xml, strlen(domain_xml), "domain.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc)
    return -EINVAL;
  ctx = xmlXPathNewContext(doc);
  if (ctx)
    obj = xmlXPathEvalExpression((const xmlChar *) "/domain/devices/disk", ctx);
  if (!obj) {
    r = -ENOMEM;
    goto out;
  }
  if (obj->nodesetval && obj->nodesetval->nodeNr > 0) {
    d.v = calloc(obj->nodesetval->nodeNr, sizeof *d.v);
    if (!d.v) {
      r = -ENOMEM;
      goto out;
    }
    for (i = 0; i < obj->nodesetval->nodeNr; i++) {
      xmlNodePtr n = obj->nodesetval->nodeTab[i], c;
      struct kb_disk *k = &d.v[d.n++];

      k->type = xml_attr(n, "type");
      k->device = xml_attr(n, "device");
      if (!k->device)
        k->device = strdup("disk");
      if ((c = xml_child(n, "target"))) {
        k->target = xml_attr(c, "dev");
        k->bus = xml_attr(c, "bus");
      }
      if ((c = xml_child(n, "source"))) {
        k->source = xml_attr(c, "file");
        if (!k->source)
          k->source = xml_attr(c, "dev");
        if (!k->source)
          k->source = xml_attr(c, "name");
      }
      if ((c = xml_child(n, "driver")))
        k->format = xml_attr(c, "type");
      if (!k->target) {
        r = -EINVAL;
        goto out;
      }
    }
  }
  *ret = d;
  d.v = NULL;
  d.n = 0;
out:
  kb_disks_clear(&d);
  if (obj)
    xmlXPathFreeObject(obj);
  if (ctx)
    xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);
  return r;
}

const struct kb_disk *kb_disks_find(const struct kb_disks *d, const char *target)
{
  size_t i;

  for (i = 0; i < d->n; i++)
    if (KB_STREQ(d->v[i].target, target))
      return &d->v[i];
  return NULL;
}

bool kb_disk_is_backed_up(const struct kb_disk *d)
{
  return d->device && (KB_STREQ(d->device, "disk") || KB_STREQ(d->device, "lun"));
}

const char *kb_disk_unsupported(const struct kb_disk *d)
{
  if (!d->type || !KB_STREQ(d->type, "file")) {
    if (d->type && KB_STREQ(d->type, "network"))
      return "network disks (RBD, iSCSI, NBD, ...) are not supported: only file-based primary storage (NFS, shared mount point, local)";
    if (d->type && KB_STREQ(d->type, "block"))
      return "block-device disks are not supported: only file-based primary storage (NFS, shared mount point, local)";
    if (d->type && KB_STREQ(d->type, "volume"))
      return "storage-pool volume disks are not supported: only file-based primary storage (NFS, shared mount point, local)";
    return "only file-based disks are supported";
  }
  if (!d->source)
    return "the disk has no source file";
  if (KB_STREQ(d->device, "lun"))
    return "LUN pass-through disks are not supported";
  if (!kb_name_ok(d->target))
    return "the disk's target name is not a safe file name";
  return NULL;
}

int kb_checkpoint_disks(const char *checkpoint_xml, char ***ret_targets)
{
  xmlDocPtr doc;
  xmlXPathContextPtr ctx = NULL;
  xmlXPathObjectPtr obj = NULL;
  char **v = NULL;
  size_t n = 0;
  int i, r = 0;

  doc = xmlReadMemory(checkpoint_xml, strlen(checkpoint_xml), "checkpoint.xml", NULL,
                      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc)
    return -EINVAL;
  ctx = xmlXPathNewContext(doc);
  if (ctx)
    obj = xmlXPathEvalExpression((const xmlChar *) "/domaincheckpoint/disks/disk[@checkpoint='bitmap']", ctx);
  if (!obj) {
    r = -ENOMEM;
    goto out;
  }
  v = calloc((obj->nodesetval ? obj->nodesetval->nodeNr : 0) + 1, sizeof *v);
  if (!v) {
    r = -ENOMEM;
    goto out;
  }
  for (i = 0; obj->nodesetval && i < obj->nodesetval->nodeNr; i++) {
    char *name = xml_attr(obj->nodesetval->nodeTab[i], "name");
    if (name)
      v[n++] = name;
  }
  *ret_targets = v;
  v = NULL;
out:
  if (v) {
    for (i = 0; v[i]; i++)
      free(v[i]);
    free(v);
  }
  if (obj)
    xmlXPathFreeObject(obj);
  if (ctx)
    xmlXPathFreeContext(ctx);
  xmlFreeDoc(doc);
  return r;
}

struct kb_block_nodes {
  json_object *root;
  json_object *arr;    /* the "return" array */
};

void kb_block_nodes_free(struct kb_block_nodes *n)
{
  if (!n)
    return;
  json_object_put(n->root);
  free(n);
}

int kb_virt_block_nodes(virDomainPtr dom, struct kb_block_nodes **ret)
{
  struct kb_block_nodes *n;
  char *reply = NULL;

  if (virDomainQemuMonitorCommand(dom,
                                  "{\"execute\":\"query-named-block-nodes\",\"arguments\":{\"flat\":true}}",
                                  &reply, 0) < 0)
    return -EIO;
  n = calloc(1, sizeof *n);
  if (!n) {
    free(reply);
    return -ENOMEM;
  }
  n->root = json_tokener_parse(reply);
  free(reply);
  if (!n->root || !json_object_object_get_ex(n->root, "return", &n->arr) ||
      !json_object_is_type(n->arr, json_type_array)) {
    kb_block_nodes_free(n);
    return -EPROTO;
  }
  *ret = n;
  return 0;
}

/* The format node (not the protocol node) whose image is SOURCE. */
static json_object *format_node(const struct kb_block_nodes *nodes, const char *source)
{
  size_t i, n = json_object_array_length(nodes->arr);

  for (i = 0; i < n; i++) {
    json_object *node = json_object_array_get_idx(nodes->arr, i), *file, *drv;
    if (!json_object_object_get_ex(node, "file", &file) ||
        !json_object_object_get_ex(node, "drv", &drv))
      continue;
    if (KB_STREQ(json_object_get_string(drv), "file"))
      continue;
    if (KB_STREQ(json_object_get_string(file), source))
      return node;
  }
  return NULL;
}

static bool jbool(json_object *o, const char *key)
{
  json_object *v;
  return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

int kb_block_nodes_bitmap_state(const struct kb_block_nodes *nodes, const char *disk_source,
                                const char *bitmap, struct kb_bitmap_state *ret)
{
  json_object *node = format_node(nodes, disk_source), *bms;
  size_t i, n;

  memset(ret, 0, sizeof *ret);
  if (!node)
    return -ENOENT;
  if (json_object_object_get_ex(node, "dirty-bitmaps", &bms)) {
    n = json_object_array_length(bms);
    for (i = 0; i < n; i++) {
      json_object *bm = json_object_array_get_idx(bms, i), *name, *count;
      if (!json_object_object_get_ex(bm, "name", &name) ||
          !KB_STREQ(json_object_get_string(name), bitmap))
        continue;
      ret->present = true;
      ret->recording = jbool(bm, "recording");
      ret->busy = jbool(bm, "busy");
      ret->inconsistent = jbool(bm, "inconsistent");
      ret->persistent = jbool(bm, "persistent");
      if (json_object_object_get_ex(bm, "count", &count))
        ret->count = json_object_get_int64(count);
      break;
    }
  }
  return 0;
}

int kb_block_nodes_bitmap_names(const struct kb_block_nodes *nodes, const char *disk_source, char ***ret)
{
  json_object *node = format_node(nodes, disk_source), *bms;
  char **v;
  size_t i, n = 0, k = 0;

  if (!node)
    return -ENOENT;
  if (json_object_object_get_ex(node, "dirty-bitmaps", &bms))
    n = json_object_array_length(bms);
  v = calloc(n + 1, sizeof *v);
  if (!v)
    return -ENOMEM;
  for (i = 0; i < n; i++) {
    json_object *name;
    if (json_object_object_get_ex(json_object_array_get_idx(bms, i), "name", &name) &&
        !(v[k++] = strdup(json_object_get_string(name)))) {
      while (k > 0)
        free(v[--k]);
      free(v);
      return -ENOMEM;
    }
  }
  *ret = v;
  return 0;
}

int kb_block_nodes_capacity(const struct kb_block_nodes *nodes, const char *disk_source,
                            unsigned long long *ret)
{
  json_object *node = format_node(nodes, disk_source), *image, *vs;

  if (!node || !json_object_object_get_ex(node, "image", &image) ||
      !json_object_object_get_ex(image, "virtual-size", &vs) || !json_object_is_type(vs, json_type_int) ||
      json_object_get_int64(vs) <= 0)
    return -ENOENT;
  *ret = (unsigned long long) json_object_get_int64(vs);
  return 0;
}

int kb_virt_bitmap_state(virDomainPtr dom, const char *disk_source, const char *bitmap,
                         struct kb_bitmap_state *ret)
{
  struct kb_block_nodes *nodes = NULL;
  int r;

  memset(ret, 0, sizeof *ret);
  r = kb_virt_block_nodes(dom, &nodes);
  if (r == 0)
    r = kb_block_nodes_bitmap_state(nodes, disk_source, bitmap, ret);
  kb_block_nodes_free(nodes);
  return r;
}

int kb_virt_bitmap_names(virDomainPtr dom, const char *disk_source, char ***ret)
{
  struct kb_block_nodes *nodes = NULL;
  int r;

  r = kb_virt_block_nodes(dom, &nodes);
  if (r == 0)
    r = kb_block_nodes_bitmap_names(nodes, disk_source, ret);
  kb_block_nodes_free(nodes);
  return r;
}

int kb_virt_bitmap_remove(virDomainPtr dom, const char *disk_source, const char *bitmap)
{
  struct kb_block_nodes *nodes = NULL;
  json_object *node, *nn, *cmd, *args;
  char *reply = NULL;
  int r;

  r = kb_virt_block_nodes(dom, &nodes);
  if (r < 0)
    return r;
  node = format_node(nodes, disk_source);
  if (!node || !json_object_object_get_ex(node, "node-name", &nn)) {
    kb_block_nodes_free(nodes);
    return node ? -EPROTO : -ENOENT;
  }
  cmd = json_object_new_object();
  args = json_object_new_object();
  json_object_object_add(args, "node", json_object_new_string(json_object_get_string(nn)));
  json_object_object_add(args, "name", json_object_new_string(bitmap));
  json_object_object_add(cmd, "execute", json_object_new_string("block-dirty-bitmap-remove"));
  json_object_object_add(cmd, "arguments", args);
  kb_block_nodes_free(nodes);
  r = virDomainQemuMonitorCommand(dom, json_object_to_json_string(cmd), &reply, 0) < 0 ? -EIO : 0;
  if (r == 0 && reply && strstr(reply, "\"error\""))
    r = -EIO;
  free(reply);
  json_object_put(cmd);
  return r;
}

int kb_virt_wait_job(virDomainPtr dom, volatile int *cancel,
                     void (*progress)(void *opaque, uint64_t done, uint64_t total), void *opaque,
                     char **ret_error)
{
  /* Short jobs (a small incremental) end within tens of ms: poll soon,
   * then back off to 100 ms; once the job has copied everything (libvirt
   * is closing the targets, which flushes them) poll every 5 ms again. */
  useconds_t wait_us = 5 * 1000;

  for (;;) {
    virDomainJobInfo info;

    if (cancel && *cancel) {
      (void) virDomainAbortJob(dom);
      return -EINTR;
    }
    if (virDomainGetJobInfo(dom, &info) < 0) {
      /* The domain went away (destroyed) in the middle of the job. */
      if (ret_error)
        *ret_error = strdup(kb_virt_error());
      return -EIO;
    }
    if (info.type == VIR_DOMAIN_JOB_NONE)
      break;
    if (progress)
      progress(opaque, info.fileProcessed ? info.fileProcessed : info.dataProcessed,
               info.fileTotal ? info.fileTotal : info.dataTotal);
    usleep(wait_us);
    if (info.dataTotal > 0 && info.dataProcessed >= info.dataTotal)
      wait_us = 5 * 1000;
    else if (wait_us < 100 * 1000)
      wait_us = wait_us * 2 > 100 * 1000 ? 100 * 1000 : wait_us * 2;
  }
  {
    virTypedParameterPtr params = NULL;
    int nparams = 0, type = 0;
    const char *err = NULL;
    int r = 0;

    if (virDomainGetJobStats(dom, &type, &params, &nparams, VIR_DOMAIN_JOB_STATS_COMPLETED) < 0) {
      if (ret_error)
        *ret_error = strdup(kb_virt_error());
      return -EIO;
    }
    if (type != VIR_DOMAIN_JOB_COMPLETED) {
      (void) virTypedParamsGetString(params, nparams, VIR_DOMAIN_JOB_ERRMSG, &err);
      if (ret_error)
        *ret_error = strdup(err ? err : type == VIR_DOMAIN_JOB_CANCELLED ? "the job was cancelled"
                                                                         : "the job failed");
      r = type == VIR_DOMAIN_JOB_CANCELLED ? -ECANCELED : -EIO;
    }
    virTypedParamsFree(params, nparams);
    return r;
  }
}

gid_t kb_qemu_gid(void)
{
  static gid_t cached = (gid_t) -2;
  CLEANUP_FREE char *conf = NULL;
  char name[64] = "libvirt-qemu";
  struct group *g;

  if (cached != (gid_t) -2)
    return cached;
  if (kb_read_file("/etc/libvirt/qemu.conf", &conf, NULL) == 0) {
    char *line = conf;
    while (line && *line) {
      char *next = strchr(line, '\n');
      if (next)
        *next++ = '\0';
      while (*line == ' ' || *line == '\t')
        line++;
      if (strncmp(line, "group", 5) == 0) {
        char *q1 = strchr(line, '"'), *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
        if (q1 && q2 && q2 - q1 - 1 < (long) sizeof name) {
          memcpy(name, q1 + 1, q2 - q1 - 1);
          name[q2 - q1 - 1] = '\0';
        }
      }
      line = next;
    }
  }
  if (name[0] == '+')
    cached = (gid_t) atol(name + 1);
  else if ((g = getgrnam(name)))
    cached = g->gr_gid;
  else
    cached = (gid_t) -1;
  return cached;
}

/* kboss's <metadata> element (localstate.h): here, with the other libvirt
 * calls, so that the hook, which only reads local facts, needs no libvirt. */
static bool has_element(virDomainPtr dom, unsigned where)
{
  char *have = virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, KB_DOMAIN_NS, where);
  bool found = have != NULL;

  free(have);
  return found;
}

int kb_virt_mark_domain(virDomainPtr dom)
{
  int active = virDomainIsActive(dom), persistent = virDomainIsPersistent(dom);
  unsigned flags = 0;

  if (active < 0 || persistent < 0)
    return -EIO;
  if (persistent && !has_element(dom, VIR_DOMAIN_AFFECT_CONFIG))
    flags |= VIR_DOMAIN_AFFECT_CONFIG;
  if (active && !has_element(dom, VIR_DOMAIN_AFFECT_LIVE))
    flags |= VIR_DOMAIN_AFFECT_LIVE;
  if (!flags)
    return 0;
  if (virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, "<vm/>", KB_DOMAIN_NS_PREFIX, KB_DOMAIN_NS,
                           flags) < 0)
    return -EIO;
  return 0;
}

int kb_virt_backup_set_speed(virDomainPtr dom, unsigned long long bytes_per_sec)
{
  char *reply = NULL;
  json_object *root, *arr;
  size_t i, n;
  int r = 0;

  if (virDomainQemuMonitorCommand(dom, "{\"execute\":\"query-block-jobs\"}", &reply, 0) < 0)
    return -EIO;
  root = json_tokener_parse(reply);
  free(reply);
  if (!root || !json_object_object_get_ex(root, "return", &arr) || !json_object_is_type(arr, json_type_array)) {
    json_object_put(root);
    return -EPROTO;
  }
  n = json_object_array_length(arr);
  for (i = 0; i < n && r == 0; i++) {
    json_object *job = json_object_array_get_idx(arr, i), *type, *dev, *cmd, *args;
    char *out = NULL;
    if (!json_object_object_get_ex(job, "type", &type) || !KB_STREQ(json_object_get_string(type), "backup") ||
        !json_object_object_get_ex(job, "device", &dev))
      continue;
    /* Built with json-c: a job name cannot change the command. */
    cmd = json_object_new_object();
    args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(json_object_get_string(dev)));
    json_object_object_add(args, "speed", json_object_new_int64((int64_t) bytes_per_sec));
    json_object_object_add(cmd, "execute", json_object_new_string("block-job-set-speed"));
    json_object_object_add(cmd, "arguments", args);
    if (virDomainQemuMonitorCommand(dom, json_object_to_json_string(cmd), &out, 0) < 0)
      r = -EIO;
    free(out);
    json_object_put(cmd);
  }
  json_object_put(root);
  return r;
}
