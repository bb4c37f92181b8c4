#include <config.h>

#include <stdio.h>
#include <string.h>

#include "jsonout.h"
#include "log.h"
#include "util.h"

json_object *kb_doc_to_json(const struct kb_doc *doc)
{
  json_object *root = json_object_new_object();
  const char *sec;
  unsigned i, k;

  for (i = 0; (sec = kb_doc_section_name(doc, i)); i++) {
    json_object *obj = json_object_new_object(), *group;
    const char *key, *value, *colon = strchr(sec, ':');

    for (k = 0; kb_doc_key_at(doc, sec, k, &key, &value); k++) {
      /* Values come from the export: control bytes and invalid UTF-8 escaped. */
      CLEANUP_FREE char *ek = kb_escape_text(key, false), *ev = kb_escape_text(value, false);
      if (ek && ev)
        json_object_object_add(obj, ek, json_object_new_string(ev));
    }
    if (colon) {
      CLEANUP_FREE char *kind = kb_printf("%.*ss", (int) (colon - sec), sec);
      if (!json_object_object_get_ex(root, kind, &group)) {
        group = json_object_new_object();
        json_object_object_add(root, kind, group);
      }
      json_object_object_add(group, colon + 1, obj);
    } else
      json_object_object_add(root, sec, obj);
  }
  return root;
}

json_object *kb_json_str(const char *s)
{
  CLEANUP_FREE char *esc = NULL;

  if (!s)
    return NULL;
  /* Many values come from the export: control bytes and invalid UTF-8
   * escaped as everywhere else (kb_escape_text), then JSON-escaped. */
  esc = kb_escape_text(s, true);
  return json_object_new_string(esc ? esc : "");
}

void kb_json_print(json_object *obj)
{
  puts(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put(obj);
}
