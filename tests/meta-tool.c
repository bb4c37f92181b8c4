/* Drives lib/meta.c from tests that need a separate process (for instance
 * one run under tests/faultinject/eio-preload.so):
 *   meta-tool update DIR NAME SECTION KEY VALUE   read, set one key, write back
 *   meta-tool get DIR NAME SECTION KEY            print one value */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "catalog.h"
#include "doc.h"
#include "util.h"

int main(int argc, char **argv)
{
  struct kb_doc *doc = NULL;
  int r;

  if (argc == 7 && KB_STREQ(argv[1], "update")) {
    r = kb_meta_read(argv[2], argv[3], &doc);
    if (r == -ENOENT) {
      doc = kb_doc_new();
      r = doc ? 0 : -ENOMEM;
    }
    if (r == 0)
      r = kb_doc_set(doc, argv[4], argv[5], argv[6]);
    if (r == 0)
      r = kb_meta_write(argv[2], argv[3], doc);
  } else if (argc == 6 && KB_STREQ(argv[1], "get")) {
    r = kb_meta_read(argv[2], argv[3], &doc);
    if (r == 0) {
      const char *v = kb_doc_get(doc, argv[4], argv[5]);
      if (v)
        printf("%s\n", v);
      else
        r = -ENOENT;
    }
  } else {
    fprintf(stderr, "usage: meta-tool update DIR NAME SECTION KEY VALUE | get DIR NAME SECTION KEY\n");
    return 2;
  }
  kb_doc_free(doc);
  if (r < 0) {
    fprintf(stderr, "meta-tool: %s: %s\n", argv[1], strerror(-r));
    return 1;
  }
  return 0;
}
