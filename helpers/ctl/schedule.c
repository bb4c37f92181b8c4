/* kbossctl schedule: per-VM backup schedules as systemd drop-ins for the
 * kboss-backup@VM.timer / .service templates. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl.h"
#include "jsonout.h"
#include "log.h"
#include "util.h"

#define TIMER_PREFIX "kboss-backup@"

static void schedule_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s schedule VM --calendar EXPR [--quiesce] [--isolated]\n"
          "       %s schedule VM --remove\n"
          "       %s schedule [--json]\n"
          "\n"
          "Set, remove or list scheduled backups. A schedule is a drop-in for the\n"
          "kboss-backup@VM.timer template (OnCalendar=EXPR, a systemd calendar\n"
          "expression such as \"daily\" or \"Mon..Fri 02:00\") and one for\n"
          "kboss-backup@VM.service (the backup's options). When systemd runs, the\n"
          "timer is enabled and started (disabled and stopped on --remove).\n"
          "\n"
          "  --calendar EXPR   when to back up (checked with systemd-analyze calendar)\n"
          "  --quiesce         freeze the guest's filesystems while the backup starts\n"
          "  --isolated        take isolated backups (full, outside any chain)\n"
          "  --remove          remove the VM's schedule\n"
          "  --unit-dir DIR    where drop-ins go (default $KBOSS_UNIT_DIR or\n"
          "                    %s/systemd/system); systemctl is not called then\n"
          "  --json            list as JSON\n"
          "  --config FILE     configuration file\n",
          kb_progname, kb_progname, kb_progname, SYSCONFDIR);
}

static const char *find_prog(const char *name)
{
  static char buf[64];
  static const char *const dirs[] = { "/usr/bin", "/bin", "/usr/sbin", "/sbin" };
  for (size_t i = 0; i < KB_ARRAY_SIZE(dirs); i++) {
    snprintf(buf, sizeof buf, "%s/%s", dirs[i], name);
    if (access(buf, X_OK) == 0)
      return buf;
  }
  return NULL;
}

static int strcmp_ptr(const void *a, const void *b)
{
  return strcmp(*(char *const *) a, *(char *const *) b);
}

static bool systemd_running(void)
{
  struct stat st;
  return lstat("/run/systemd/system", &st) == 0 && S_ISDIR(st.st_mode);
}

static int systemctl(const char *verb, const char *a1, const char *a2)
{
  const char *prog = find_prog("systemctl");
  const char *argv[] = { prog, verb, a1, a2, NULL };
  CLEANUP_FREE char *out = NULL;
  int r;

  if (!prog)
    return -ENOENT;
  r = kb_run(argv, &out);
  if (r != 0)
    kb_err("schedule: systemctl %s%s%s%s failed: %s", verb, a1 ? " " : "", a1 ? a1 : "", a2 ? " ..." : "",
           out ? out : "");
  return r;
}

/* Last "KEY=value" of a drop-in (later lines override earlier ones); an
 * empty assignment resets. Caller frees. */
static char *dropin_value(const char *path, const char *key)
{
  CLEANUP_FREE char *text = NULL;
  char *save = NULL, *val = NULL;
  size_t kl = strlen(key);

  if (kb_read_file(path, &text, NULL) < 0)
    return NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    if (strncmp(line, key, kl) == 0 && line[kl] == '=') {
      char *v = line + kl + 1;
      size_t n = strlen(v);
      if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v[n - 1] = '\0';
        v++;
      }
      free(val);
      val = *v ? strdup(v) : NULL;
    }
  }
  return val;
}

static int set_schedule(const char *unitdir, const char *vm, const char *calendar, bool quiesce, bool isolated)
{
  CLEANUP_FREE char *tdir = kb_printf("%s/" TIMER_PREFIX "%s.timer.d", unitdir, vm);
  CLEANUP_FREE char *sdir = kb_printf("%s/" TIMER_PREFIX "%s.service.d", unitdir, vm);
  CLEANUP_FREE char *tfile = NULL, *sfile = NULL, *ttext = NULL, *stext = NULL;
  const char *analyze = find_prog("systemd-analyze");
  int r;

  if (!tdir || !sdir)
    return -ENOMEM;
  if (strpbrk(calendar, "\n\r\\") || !*calendar) {
    kb_err("schedule: \"%s\" is not a calendar expression", calendar);
    return -EINVAL;
  }
  if (analyze) {
    const char *argv[] = { analyze, "calendar", calendar, NULL };
    CLEANUP_FREE char *out = NULL;
    if (kb_run(argv, &out) != 0) {
      char *nl = out ? strchr(out, '\n') : NULL;
      if (nl && nl[1] == '\0')
        *nl = '\0';
      kb_err("schedule: \"%s\" is not a valid calendar expression: %s", calendar, out ? out : "");
      return -EINVAL;
    }
  } else
    kb_warn("schedule: systemd-analyze is not installed; calendar expression not checked");
  tfile = kb_printf("%s/schedule.conf", tdir);
  sfile = kb_printf("%s/schedule.conf", sdir);
  ttext = kb_printf("# Written by kbossctl schedule; change it with kbossctl.\n"
                    "[Timer]\nOnCalendar=\nOnCalendar=%s\n", calendar);
  stext = kb_printf("# Written by kbossctl schedule; change it with kbossctl.\n"
                    "[Service]\nEnvironment=\"KBOSS_BACKUP_ARGS=%s%s%s\"\n",
                    quiesce ? "--quiesce" : "", quiesce && isolated ? " " : "", isolated ? "--isolated" : "");
  if (!tfile || !sfile || !ttext || !stext)
    return -ENOMEM;
  if ((r = kb_mkdir_p(tdir, 0755)) < 0 || (r = kb_mkdir_p(sdir, 0755)) < 0 ||
      (r = kb_write_file_atomic(sfile, stext, strlen(stext), 0644)) < 0 ||
      (r = kb_write_file_atomic(tfile, ttext, strlen(ttext), 0644)) < 0) {
    kb_err("schedule: cannot write the drop-ins under %s: %s", unitdir, strerror(-r));
    return r;
  }
  return 0;
}

static int remove_schedule(const char *unitdir, const char *vm)
{
  static const char *const kinds[] = { "timer", "service" };
  bool any = false;

  for (size_t i = 0; i < KB_ARRAY_SIZE(kinds); i++) {
    CLEANUP_FREE char *dir = kb_printf("%s/" TIMER_PREFIX "%s.%s.d", unitdir, vm, kinds[i]);
    CLEANUP_FREE char *file = dir ? kb_printf("%s/schedule.conf", dir) : NULL;
    if (!file)
      return -ENOMEM;
    if (unlink(file) == 0)
      any = true;
    else if (errno != ENOENT) {
      kb_err("schedule: cannot remove %s: %m", file);
      return -errno;
    }
    (void) rmdir(dir);   /* only when nothing else is in it */
  }
  if (!any) {
    kb_err("schedule: VM %s has no schedule", vm);
    return -ENOENT;
  }
  return 0;
}

static int list_schedules(const char *unitdir, bool json)
{
  DIR *d = opendir(unitdir);
  struct dirent *e;
  char **names = NULL;
  size_t n = 0;

  if (!d && errno != ENOENT) {
    kb_err("schedule: cannot read %s: %m", unitdir);
    return -errno;
  }
  while (d && (e = readdir(d))) {
    size_t l = strlen(e->d_name);
    const char *suffix = ".timer.d";
    char **nn;
    if (strncmp(e->d_name, TIMER_PREFIX, strlen(TIMER_PREFIX)) != 0 || l <= strlen(TIMER_PREFIX) + strlen(suffix) ||
        strcmp(e->d_name + l - strlen(suffix), suffix) != 0)
      continue;
    nn = realloc(names, (n + 2) * sizeof *names);
    if (!nn)
      break;
    names = nn;
    names[n] = strndup(e->d_name + strlen(TIMER_PREFIX), l - strlen(TIMER_PREFIX) - strlen(suffix));
    if (names[n])
      names[++n] = NULL;
  }
  if (d)
    closedir(d);
  if (n)
    qsort(names, n, sizeof *names, strcmp_ptr);
  json_object *arr = json ? json_object_new_array() : NULL;

  if (!json)
    printf("%-32s %-30s %s\n", "VM", "CALENDAR", "OPTIONS");
  for (size_t i = 0; i < n; i++) {
    CLEANUP_FREE char *tfile = kb_printf("%s/" TIMER_PREFIX "%s.timer.d/schedule.conf", unitdir, names[i]);
    CLEANUP_FREE char *sfile = kb_printf("%s/" TIMER_PREFIX "%s.service.d/schedule.conf", unitdir, names[i]);
    CLEANUP_FREE char *cal = tfile ? dropin_value(tfile, "OnCalendar") : NULL;
    CLEANUP_FREE char *env = sfile ? dropin_value(sfile, "Environment") : NULL;
    const char *args = env && strncmp(env, "KBOSS_BACKUP_ARGS=", 18) == 0 ? env + 18 : "";
    if (!cal)
      continue;
    if (json) {
      CLEANUP_FREE char *unit = kb_printf(TIMER_PREFIX "%s.timer", names[i]);
      json_object *o = json_object_new_object();
      json_object_object_add(o, "vm", kb_json_str(names[i]));
      json_object_object_add(o, "calendar", kb_json_str(cal));
      json_object_object_add(o, "quiesce", json_object_new_boolean(strstr(args, "--quiesce") != NULL));
      json_object_object_add(o, "isolated", json_object_new_boolean(strstr(args, "--isolated") != NULL));
      json_object_object_add(o, "timer", kb_json_str(unit));
      json_object_array_add(arr, o);
    } else
      printf("%-32s %-30s %s\n", names[i], cal, *args ? args : "-");
  }
  if (json)
    kb_json_print(arr);
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return 0;
}

int ctl_schedule(int argc, char **argv)
{
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "calendar", required_argument, NULL, 'C' },
    { "quiesce", no_argument, NULL, 'q' },
    { "isolated", no_argument, NULL, 'i' },
    { "remove", no_argument, NULL, 'r' },
    { "unit-dir", required_argument, NULL, 'u' },
    { "json", no_argument, NULL, 'j' },
    { NULL, 0, NULL, 0 },
  };
  const char *calendar = NULL, *unitdir = getenv("KBOSS_UNIT_DIR"), *vm = NULL;
  bool quiesce = false, isolated = false, remove_ = false, json = false, own_dir;
  CLEANUP_FREE char *timer = NULL;
  int c, r;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: schedule_usage(stdout); return 0;
    case 'C': calendar = optarg; break;
    case 'q': quiesce = true; break;
    case 'i': isolated = true; break;
    case 'r': remove_ = true; break;
    case 'u': unitdir = optarg; break;
    case 'j': json = true; break;
    default: schedule_usage(stderr); return 2;
    }
  }
  own_dir = unitdir && *unitdir;
  if (!own_dir)
    unitdir = SYSCONFDIR "/systemd/system";
  if (optind < argc)
    vm = argv[optind++];
  if (optind < argc || (vm && !calendar && !remove_) || (vm && calendar && remove_) ||
      (!vm && (calendar || remove_ || quiesce || isolated)) || (remove_ && (quiesce || isolated))) {
    schedule_usage(stderr);
    return 2;
  }
  if (!vm)
    return list_schedules(unitdir, json) < 0 ? 1 : 0;
  if (!kb_name_ok(vm)) {
    kb_err("schedule: \"%s\" is not a VM name", vm);
    return 2;
  }
  timer = kb_printf(TIMER_PREFIX "%s.timer", vm);
  if (!timer)
    return 1;
  if (remove_) {
    if (remove_schedule(unitdir, vm) < 0)
      return 1;
    if (!own_dir && systemd_running()) {
      (void) systemctl("disable", "--now", timer);
      (void) systemctl("daemon-reload", NULL, NULL);
    }
    printf("VM %s: schedule removed\n", vm);
    return 0;
  }
  r = set_schedule(unitdir, vm, calendar, quiesce, isolated);
  if (r < 0)
    return r == -EINVAL ? 2 : 1;
  if (!own_dir && systemd_running()) {
    if (systemctl("daemon-reload", NULL, NULL) != 0 || systemctl("enable", "--now", timer) != 0)
      return 1;
  } else if (!own_dir)
    kb_warn("schedule: systemd is not running here; enable %s when it is", timer);
  printf("VM %s: backups at \"%s\"%s%s (%s)\n", vm, calendar, quiesce ? ", quiesced" : "",
         isolated ? ", isolated" : "", timer);
  return 0;
}
