/* libFuzzer target for catalog documents as read from the export: the
 * input is one generation file ("x.000000001.ini", INI text and its
 * checksum trailer).  kb_meta_read must verify the trailer and parse, or
 * refuse; a document it accepts must format and parse back to the same
 * text, and every value it kept must fit its field (kb_doc's rules).  The
 * input is also parsed directly, without the trailer check, so the parser
 * itself sees every input.  Built and run by `make fuzz`. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "doc.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

static void round_trip(const struct kb_doc *doc)
{
  char *text = kb_doc_format(doc), *again;
  struct kb_doc *back = NULL;

  if (!text)
    abort();
  if (kb_doc_parse(text, &back, NULL) != 0)
    abort();                    /* what we format must parse */
  again = kb_doc_format(back);
  if (!again || strcmp(text, again) != 0)
    abort();                    /* and come back the same */
  if (kb_doc_invalid(back, NULL) != 0)
    abort();                    /* kept values fit their rules */
  free(text);
  free(again);
  kb_doc_free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char path[128];
  struct kb_doc *doc = NULL;
  char *text;
  int fd, r;

  if (!dir[0]) {
    snprintf(dir, sizeof dir, "/dev/shm/kboss-fuzz-doc-XXXXXX");
    if (!mkdtemp(dir)) {
      snprintf(dir, sizeof dir, "/tmp/kboss-fuzz-doc-XXXXXX");
      if (!mkdtemp(dir))
        abort();
    }
  }
  /* The parser alone. */
  text = malloc(size + 1);
  if (!text)
    abort();
  memcpy(text, data, size);
  text[size] = '\0';
  if (kb_doc_parse(text, &doc, NULL) == 0) {
    round_trip(doc);
    kb_doc_free(doc);
    doc = NULL;
  }
  free(text);

  /* The generation reader: trailer, then parser. */
  snprintf(path, sizeof path, "%s/x.000000001.ini", dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write(fd, data, size) != (ssize_t) size))
    abort();
  close(fd);
  r = kb_meta_read(dir, "x", &doc);
  if (r == 0) {
    round_trip(doc);
    kb_doc_free(doc);
  } else if (r == -ENOMEM) {
    abort();
  }
  unlink(path);
  return 0;
}
