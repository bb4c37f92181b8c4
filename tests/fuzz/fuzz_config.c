/* libFuzzer target for configuration loading: the input is kboss.conf.
 * kb_config_load must accept it or refuse it with a message naming the
 * file and line, never crash, overflow or read out of bounds.  Built and
 * run by `make fuzz`. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kbconfig.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char path[128];
  struct kb_config *cfg = NULL;
  char *errors = NULL;
  int fd, r;

  if (!dir[0]) {
    snprintf(dir, sizeof dir, "/dev/shm/kboss-fuzz-conf-XXXXXX");
    if (!mkdtemp(dir)) {
      snprintf(dir, sizeof dir, "/tmp/kboss-fuzz-conf-XXXXXX");
      if (!mkdtemp(dir))
        abort();
    }
  }
  snprintf(path, sizeof path, "%s/kboss.conf", dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || (size && write(fd, data, size) != (ssize_t) size))
    abort();
  close(fd);
  r = kb_config_load(path, &cfg, &errors);
  if (r == 0) {
    if (!cfg)
      abort();
    /* Lookups walk the loaded scopes. */
    (void) kb_config_str(cfg, NULL, "libvirt.uri");
    (void) kb_config_int(cfg, NULL, "backup.chain.size");
    kb_config_free(cfg);
  } else if (r != -ENOMEM && (!errors || !*errors)) {
    abort();                    /* a refusal names what is wrong */
  }
  free(errors);
  return 0;
}
