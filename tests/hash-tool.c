/* Test helper: kb_hash_file() of each FILE, printed like `xxhsum -H2`
 * ("HEX  FILE"); used by tests/bench/bench-hash.sh. */
#include <config.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "hash.h"

int main(int argc, char **argv)
{
  int i, status = 0;

  if (argc < 2) {
    fprintf(stderr, "usage: hash-tool FILE...\n");
    return 2;
  }
  for (i = 1; i < argc; i++) {
    char hex[KB_HASH_HEX_LEN + 1];
    uint64_t bytes = 0;
    int r = kb_hash_file(argv[i], hex, &bytes);
    if (r < 0) {
      fprintf(stderr, "hash-tool: %s: %s\n", argv[i], strerror(-r));
      status = 1;
      continue;
    }
    printf("%s  %s\n", hex, argv[i]);
  }
  return status;
}
