/* An INI document kept in memory: ordered sections, ordered keys. The
 * catalog's metadata files (vm.ini, chain.ini, backup.ini, jobs) are such
 * documents. Sections may repeat names with a ":" qualifier ("disk:vda"). */
#ifndef KBOSS_DOC_H
#define KBOSS_DOC_H

#include <stdbool.h>
#include <stdint.h>

struct kb_doc;

struct kb_doc *kb_doc_new(void);
void kb_doc_free(struct kb_doc *doc);   /* NULL is fine */

/* Parse TEXT (INI, inih syntax). Returns 0, or -EINVAL with *ret_line set to
 * the first bad line. */
int kb_doc_parse(const char *text, struct kb_doc **ret, int *ret_line);

/* Values kb_doc_parse dropped because they do not fit their field's rule
 * (a backup id that is not a plain name, a size that is not a number...):
 * how many, and in *RET_FIRST (may be NULL) "section/key" of the first. */
unsigned kb_doc_invalid(const struct kb_doc *doc, const char **ret_first);

/* Serialise; the caller frees the string. */
char *kb_doc_format(const struct kb_doc *doc);

/* Getters return NULL / the fallback when the section or key is absent. */
const char *kb_doc_get(const struct kb_doc *doc, const char *section, const char *key);
long long kb_doc_get_ll(const struct kb_doc *doc, const char *section, const char *key, long long fallback);
bool kb_doc_get_bool(const struct kb_doc *doc, const char *section, const char *key, bool fallback);

/* Setters create the section/key as needed; VALUE NULL removes the key.
 * Values must not contain newlines (-EINVAL). */
int kb_doc_set(struct kb_doc *doc, const char *section, const char *key, const char *value);
/* Free text (messages): folded onto one line, made safe for the INI reader
 * and cut to fit a line, never refused. */
int kb_doc_set_text(struct kb_doc *doc, const char *section, const char *key, const char *text);
int kb_doc_set_ll(struct kb_doc *doc, const char *section, const char *key, long long value);
int kb_doc_remove_section(struct kb_doc *doc, const char *section);

/* Iterate sections: returns the name of the Nth section or NULL past the end. */
const char *kb_doc_section_name(const struct kb_doc *doc, unsigned n);
/* Iterate keys of a section: key/value of the Nth key, false past the end. */
bool kb_doc_key_at(const struct kb_doc *doc, const char *section, unsigned n,
                   const char **ret_key, const char **ret_value);

/* For lib/meta.c: the catalog generation a document was read from (WHERE
 * names the document, GEN its generation, TEXT its content then), so that
 * a later write of it can tell that somebody else wrote in between and
 * merge instead of overwriting. Not part of the content. */
int kb_doc_set_origin(const struct kb_doc *doc, const char *where, unsigned long long gen,
                      const char *text);
bool kb_doc_get_origin(const struct kb_doc *doc, const char *where, unsigned long long *ret_gen,
                       const char **ret_text);

#endif
