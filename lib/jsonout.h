/* JSON output for --json listings (json-c). */
#ifndef KBOSS_JSONOUT_H
#define KBOSS_JSONOUT_H

#include <json-c/json.h>

#include "doc.h"

/* { "section": { "key": "value", ... }, ... }; "disk:vda" sections become
 * "disks": { "vda": {...} } and likewise for any "kind:name" section. */
json_object *kb_doc_to_json(const struct kb_doc *doc);

/* A JSON string of S (through kb_escape_text), or JSON null (NULL) when S
 * is NULL. */
json_object *kb_json_str(const char *s);

/* Print OBJ pretty to stdout with a newline and drop the reference. */
void kb_json_print(json_object *obj);

#endif
