#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include "catalog.h"
#include "kbconfig.h"

/* The catalog as this host's configuration places it: secondary.path and
 * the [store:NAME] sections. */
int kb_catalog_open(const struct kb_config *cfg, struct kb_catalog **ret)
{
  const char *secondary = kb_config_str(cfg, NULL, "secondary.path");
  struct kb_store *stores;
  size_t n = 0, i;
  int r;

  if (!secondary || !*secondary)
    return -ENOENT;
  while (kb_config_store_at(cfg, (unsigned) n))
    n++;
  stores = calloc(n + 1, sizeof *stores);
  if (!stores)
    return -ENOMEM;
  for (i = 0; i < n; i++)
    stores[i] = *kb_config_store_at(cfg, (unsigned) i);   /* shallow: open_at copies */
  r = kb_catalog_open_at(secondary, stores, n, ret);
  free(stores);
  return r;
}
