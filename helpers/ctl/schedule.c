/* kbossctl schedule: backup schedules as systemd drop-ins for the
 * kboss-backup@.timer / .service templates. A VM's unnamed schedule is the
 * instance "VM" (schedule "default"), a named one "VM.NAME"; the service
 * drop-in names the VM (KBOSS_BACKUP_VM) and passes --schedule NAME and the
 * schedule's --keep-* values to kboss-backup (KBOSS_BACKUP_ARGS), which
 * records them with each backup the schedule takes. */
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
#include "retention.h"
#include "util.h"

#define TIMER_PREFIX "kboss-backup@"

static void schedule_usage(FILE *f)
{
  fprintf(f,
          "Usage: %s schedule VM [--name NAME] --calendar EXPR [--quiesce] [--isolated]\n"
          "                      [--keep-last N] [--keep-hourly N] [--keep-daily N]\n"
          "                      [--keep-weekly N] [--keep-monthly N] [--keep-yearly N]\n"
          "       %s schedule VM [--name NAME] --remove\n"
          "       %s schedule [--json]\n"
          "\n"
          "Set, remove or list scheduled backups. A schedule is a drop-in for the\n"
          "kboss-backup@INSTANCE.timer template (OnCalendar=EXPR, a systemd calendar\n"
          "expression such as \"daily\" or \"Mon..Fri 02:00\") and one for\n"
          "kboss-backup@INSTANCE.service (the VM and the backup's options). INSTANCE\n"
          "is VM for the VM's unnamed schedule (named \"default\"), VM.NAME for a\n"
          "named one; a VM may have several (an hourly and a daily one). When\n"
          "systemd runs, the timer is enabled and started (disabled and stopped on\n"
          "--remove).\n"
          "\n"
          "  --name NAME       the schedule's name (1-32 of A-Z a-z 0-9 _ -;\n"
          "                    default: \"default\", the unnamed schedule)\n"
          "  --calendar EXPR   when to back up (checked with systemd-analyze calendar)\n"
          "  --quiesce         freeze the guest's filesystems while the backup starts\n"
          "  --isolated        take isolated backups (full, outside any chain)\n"
          "  --keep-last N ... --keep-yearly N\n"
          "                    the schedule's own retention: kbossctl prune ranks the\n"
          "                    backups this schedule takes among themselves by these\n"
          "                    (the others 0) instead of the VM's policy; recorded\n"
          "                    with each backup, in effect from the next one\n"
          "  --remove          remove the schedule\n"
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

/* The value of environment variable VAR set by an Environment= line of
 * drop-in PATH (the last one wins; quotes around the assignment are
 * dropped). Caller frees. */
static char *dropin_env(const char *path, const char *var)
{
  CLEANUP_FREE char *text = NULL;
  char *save = NULL, *val = NULL;
  size_t vl = strlen(var);

  if (kb_read_file(path, &text, NULL) < 0)
    return NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *v = line + 12;
    size_t n;
    if (strncmp(line, "Environment=", 12) != 0)
      continue;
    n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
      v[n - 1] = '\0';
      v++;
    }
    if (strncmp(v, var, vl) == 0 && v[vl] == '=') {
      free(val);
      val = strdup(v + vl + 1);
    }
  }
  return val;
}

/* The OnCalendar= of the drop-ins of timer instance INST (the last
 * non-empty one), or NULL. */
static char *timer_calendar(const char *unitdir, const char *inst)
{
  CLEANUP_FREE char *dir = kb_printf("%s/" TIMER_PREFIX "%s.timer.d", unitdir, inst);
  DIR *d;
  struct dirent *e;
  char *val = NULL;

  if (!dir || !(d = opendir(dir)))
    return NULL;
  while ((e = readdir(d))) {
    size_t n = strlen(e->d_name);
    CLEANUP_FREE char *text = NULL, *p = NULL;
    char *save = NULL;
    if (n < 6 || strcmp(e->d_name + n - 5, ".conf") != 0)
      continue;
    p = kb_printf("%s/%s", dir, e->d_name);
    if (!p || kb_read_file(p, &text, NULL) < 0)
      continue;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
      if (strncmp(line, "OnCalendar=", 11) == 0 && line[11]) {
        free(val);
        val = strdup(line + 11);
      }
  }
  closedir(d);
  return val;
}

struct sched {
  const char *name;      /* "default" for the unnamed one */
  bool quiesce, isolated;
  unsigned keep[6];      /* 0: not set */
};

/* The instance of schedule NAME of VM: "VM" or "VM.NAME" (not "VM:NAME":
 * systemd-analyze verify refuses unit names with a colon). */
static char *instance_of(const char *vm, const char *name)
{
  return !name || KB_STREQ(name, "default") ? kb_printf("%s", vm) : kb_printf("%s.%s", vm, name);
}

/* "last=24,daily=7" or "-" into BUF. */
static const char *keep_text(const unsigned keep[6], char *buf, size_t len)
{
  size_t o = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < 6; i++)
    if (keep[i]) {
      int w = snprintf(buf + o, len - o, "%s%s=%u", o ? "," : "", kb_retention_field_names[i], keep[i]);
      if (w < 0 || (size_t) w >= len - o)
        break;
      o += (size_t) w;
    }
  if (!o)
    snprintf(buf, len, "-");
  return buf;
}

/* KBOSS_BACKUP_ARGS of S. */
static char *backup_args(const struct sched *s)
{
  char buf[512];
  size_t o = (size_t) snprintf(buf, sizeof buf, "--schedule %s", s->name);
  for (size_t i = 0; i < 6 && o < sizeof buf; i++)
    if (s->keep[i])
      o += (size_t) snprintf(buf + o, sizeof buf - o, " --keep-%s %u", kb_retention_field_names[i], s->keep[i]);
  if (o < sizeof buf)
    snprintf(buf + o, sizeof buf - o, "%s%s", s->quiesce ? " --quiesce" : "", s->isolated ? " --isolated" : "");
  return strdup(buf);
}

/* Read back what backup_args wrote (older drop-ins carry only --quiesce
 * and --isolated: schedule "default"). NAME points into ARGS. */
static void parse_args(char *args, struct sched *s)
{
  char *save = NULL, *prev = NULL;

  memset(s, 0, sizeof *s);
  s->name = "default";
  for (char *w = args ? strtok_r(args, " ", &save) : NULL; w; prev = w, w = strtok_r(NULL, " ", &save)) {
    unsigned n;
    if (KB_STREQ(w, "--quiesce"))
      s->quiesce = true;
    else if (KB_STREQ(w, "--isolated"))
      s->isolated = true;
    else if (prev && KB_STREQ(prev, "--schedule") && kb_schedule_name_ok(w))
      s->name = w;
    else if (prev && strncmp(prev, "--keep-", 7) == 0 && kb_retention_parse_count(w, &n) == 0)
      for (size_t i = 0; i < 6; i++)
        if (KB_STREQ(prev + 7, kb_retention_field_names[i]))
          s->keep[i] = n;
  }
}

/* Whose schedule instance INST is, from its service drop-in: the VM it
 * names (KBOSS_BACKUP_VM; older drop-ins: the instance) and the schedule
 * (and its options) it passes. -ENOENT without a drop-in. A VM named
 * "web1.hourly" and VM web1's schedule "hourly" would share an instance:
 * this says which one has it. */
static int owner_of(const char *unitdir, const char *inst, char **ret_vm, char **ret_args, struct sched *s)
{
  CLEANUP_FREE char *sfile = kb_printf("%s/" TIMER_PREFIX "%s.service.d/schedule.conf", unitdir, inst);
  char *vm;

  if (!sfile)
    return -ENOMEM;
  if (access(sfile, F_OK) < 0)
    return -errno;
  vm = dropin_env(sfile, "KBOSS_BACKUP_VM");
  if (!vm || !kb_name_ok(vm)) {
    free(vm);
    vm = strdup(inst);
  }
  *ret_args = dropin_env(sfile, "KBOSS_BACKUP_ARGS");
  parse_args(*ret_args, s);
  *ret_vm = vm;
  return vm ? 0 : -ENOMEM;
}

/* 0 when INST is free or is VM's schedule NAME already; else says whose it is. */
static int instance_free(const char *unitdir, const char *inst, const char *vm, const char *name)
{
  CLEANUP_FREE char *ovm = NULL, *oargs = NULL;
  struct sched o;

  if (owner_of(unitdir, inst, &ovm, &oargs, &o) < 0 || (KB_STREQ(ovm, vm) && KB_STREQ(o.name, name)))
    return 0;
  kb_err("schedule: " TIMER_PREFIX "%s.timer is VM %s's schedule %s", inst, ovm, o.name);
  return -EEXIST;
}

static int set_schedule(const char *unitdir, const char *vm, const struct sched *s, const char *calendar)
{
  CLEANUP_FREE char *inst = instance_of(vm, s->name);
  CLEANUP_FREE char *tdir = inst ? kb_printf("%s/" TIMER_PREFIX "%s.timer.d", unitdir, inst) : NULL;
  CLEANUP_FREE char *sdir = inst ? kb_printf("%s/" TIMER_PREFIX "%s.service.d", unitdir, inst) : NULL;
  CLEANUP_FREE char *tfile = NULL, *sfile = NULL, *ttext = NULL, *stext = NULL, *args = backup_args(s);
  const char *analyze = find_prog("systemd-analyze");
  int r;

  if (!tdir || !sdir || !args)
    return -ENOMEM;
  if ((r = instance_free(unitdir, inst, vm, s->name)) < 0)
    return r;
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
                    "[Service]\nEnvironment=\"KBOSS_BACKUP_VM=%s\"\nEnvironment=\"KBOSS_BACKUP_ARGS=%s\"\n", vm, args);
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

static int remove_schedule(const char *unitdir, const char *vm, const char *name)
{
  static const char *const kinds[] = { "timer", "service" };
  CLEANUP_FREE char *inst = instance_of(vm, name);
  bool any = false;

  if (!inst)
    return -ENOMEM;
  if (instance_free(unitdir, inst, vm, name) < 0)
    return -EEXIST;

  for (size_t i = 0; i < KB_ARRAY_SIZE(kinds); i++) {
    CLEANUP_FREE char *dir = kb_printf("%s/" TIMER_PREFIX "%s.%s.d", unitdir, inst, kinds[i]);
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
    kb_err("schedule: VM %s has no schedule %s", vm, name);
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
    printf("%-32s %-12s %-24s %-20s %s\n", "VM", "SCHEDULE", "CALENDAR", "KEEP", "OPTIONS");
  for (size_t i = 0; i < n; i++) {
    CLEANUP_FREE char *cal = timer_calendar(unitdir, names[i]);
    CLEANUP_FREE char *unit = kb_printf(TIMER_PREFIX "%s.timer", names[i]);
    CLEANUP_FREE char *vm = NULL, *args = NULL;
    char kt[128];
    struct sched s;
    if (!cal)
      continue;
    if (owner_of(unitdir, names[i], &vm, &args, &s) < 0) {   /* a timer drop-in only */
      parse_args(NULL, &s);
      vm = strdup(names[i]);
    }
    if (json) {
      json_object *o = json_object_new_object(), *k = json_object_new_object();
      json_object_object_add(o, "vm", kb_json_str(vm));
      json_object_object_add(o, "schedule", kb_json_str(s.name));
      json_object_object_add(o, "calendar", kb_json_str(cal));
      json_object_object_add(o, "quiesce", json_object_new_boolean(s.quiesce));
      json_object_object_add(o, "isolated", json_object_new_boolean(s.isolated));
      for (size_t f = 0; f < 6; f++)
        json_object_object_add(k, kb_retention_field_names[f], json_object_new_int64(s.keep[f]));
      json_object_object_add(o, "keep", k);
      json_object_object_add(o, "timer", kb_json_str(unit));
      json_object_array_add(arr, o);
    } else
      kb_print_escaped("%-32s %-12s %-24s %-20s %s%s%s\n", vm, s.name, cal, keep_text(s.keep, kt, sizeof kt),
                       s.quiesce ? "--quiesce" : "", s.quiesce && s.isolated ? " " : "",
                       s.isolated ? "--isolated" : !s.quiesce ? "-" : "");
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
  enum { O_KEEP = 256 };
  static const struct option long_options[] = {
    CTL_COMMON_LONG_OPTIONS,
    { "calendar", required_argument, NULL, 'C' },
    { "name", required_argument, NULL, 'n' },
    { "quiesce", no_argument, NULL, 'q' },
    { "isolated", no_argument, NULL, 'i' },
    { "remove", no_argument, NULL, 'r' },
    { "unit-dir", required_argument, NULL, 'u' },
    { "json", no_argument, NULL, 'j' },
    KB_RETENTION_LONG_OPTIONS(O_KEEP),
    { NULL, 0, NULL, 0 },
  };
  const char *calendar = NULL, *unitdir = getenv("KBOSS_UNIT_DIR"), *vm = NULL;
  bool remove_ = false, json = false, own_dir, any_keep = false;
  struct sched s = { "default", false, false, { 0 } };
  CLEANUP_FREE char *timer = NULL, *inst = NULL;
  char kt[128];
  int c, r;

  while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
    switch (c) {
    case CTL_OPT_CONFIG: ctl_config_path = optarg; break;
    case CTL_OPT_HELP: schedule_usage(stdout); return 0;
    case 'C': calendar = optarg; break;
    case 'n':
      if (!kb_schedule_name_ok(optarg)) {
        kb_err("schedule: \"%s\" is not a schedule name (1-%d of A-Z a-z 0-9 _ -, not starting with _ or -)",
               optarg, KB_SCHEDULE_NAME_MAX);
        return 2;
      }
      s.name = optarg;
      break;
    case 'q': s.quiesce = true; break;
    case 'i': s.isolated = true; break;
    case 'r': remove_ = true; break;
    case 'u': unitdir = optarg; break;
    case 'j': json = true; break;
    case O_KEEP: case O_KEEP + 1: case O_KEEP + 2: case O_KEEP + 3: case O_KEEP + 4: case O_KEEP + 5:
      if (kb_retention_parse_count(optarg, &s.keep[c - O_KEEP]) < 0) {
        kb_err("schedule: --keep-%s takes a whole number from 0 to %d", kb_retention_field_names[c - O_KEEP],
               KB_RETENTION_MAX);
        return 2;
      }
      any_keep = true;
      break;
    default: schedule_usage(stderr); return 2;
    }
  }
  own_dir = unitdir && *unitdir;
  if (!own_dir)
    unitdir = SYSCONFDIR "/systemd/system";
  if (optind < argc)
    vm = argv[optind++];
  if (optind < argc || (vm && !calendar && !remove_) || (vm && calendar && remove_) ||
      (!vm && (calendar || remove_ || s.quiesce || s.isolated || any_keep || !KB_STREQ(s.name, "default"))) ||
      (remove_ && (s.quiesce || s.isolated || any_keep))) {
    schedule_usage(stderr);
    return 2;
  }
  if (!vm)
    return list_schedules(unitdir, json) < 0 ? 1 : 0;
  if (!kb_name_ok(vm)) {
    kb_err("schedule: \"%s\" is not a VM name", vm);
    return 2;
  }
  inst = instance_of(vm, s.name);
  timer = inst ? kb_printf(TIMER_PREFIX "%s.timer", inst) : NULL;
  if (!timer)
    return 1;
  if (remove_) {
    if (remove_schedule(unitdir, vm, s.name) < 0)
      return 1;
    if (!own_dir && systemd_running()) {
      (void) systemctl("disable", "--now", timer);
      (void) systemctl("daemon-reload", NULL, NULL);
    }
    printf("VM %s: schedule %s removed\n", vm, s.name);
    return 0;
  }
  r = set_schedule(unitdir, vm, &s, calendar);
  if (r < 0)
    return r == -EINVAL ? 2 : 1;
  if (!own_dir && systemd_running()) {
    if (systemctl("daemon-reload", NULL, NULL) != 0 || systemctl("enable", "--now", timer) != 0)
      return 1;
  } else if (!own_dir)
    kb_warn("schedule: systemd is not running here; enable %s when it is", timer);
  printf("VM %s: schedule %s backs up at \"%s\"%s%s, keep %s (%s)\n", vm, s.name, calendar,
         s.quiesce ? ", quiesced" : "", s.isolated ? ", isolated" : "",
         any_keep ? keep_text(s.keep, kt, sizeof kt) : "by the VM's policy", timer);
  return 0;
}

int ctl_schedule_calendars(const char *unitdir, const char *vm, char ***ret)
{
  DIR *d = opendir(unitdir);
  struct dirent *e;
  size_t n = 0, pl = strlen(TIMER_PREFIX), vl = strlen(vm);
  char **v = calloc(1, sizeof *v);

  if (!v) {
    if (d)
      closedir(d);
    return -ENOMEM;
  }
  while (d && (e = readdir(d))) {
    size_t l = strlen(e->d_name);
    CLEANUP_FREE char *inst = NULL, *ovm = NULL, *oargs = NULL;
    struct sched s;
    char *cal, **nv;
    /* kboss-backup@VM.timer.d or kboss-backup@VM.NAME.timer.d */
    if (l <= pl + vl + 8 - 1 || strncmp(e->d_name, TIMER_PREFIX, pl) != 0 || strncmp(e->d_name + pl, vm, vl) != 0 ||
        strcmp(e->d_name + l - 8, ".timer.d") != 0 || (e->d_name[pl + vl] != '.'))
      continue;
    inst = strndup(e->d_name + pl, l - pl - 8);
    if (!inst)
      continue;
    if (owner_of(unitdir, inst, &ovm, &oargs, &s) == 0 ? !KB_STREQ(ovm, vm) : !KB_STREQ(inst, vm))
      continue;
    if (!(cal = timer_calendar(unitdir, inst)))
      continue;
    nv = realloc(v, (n + 2) * sizeof *v);
    if (!nv) {
      free(cal);
      break;
    }
    v = nv;
    v[n++] = cal;
    v[n] = NULL;
  }
  if (d)
    closedir(d);
  *ret = v;
  return 0;
}
