#!/usr/bin/env bash
# make install into a DESTDIR; systemd-analyze verify passes on every
# installed unit (checked where they will run: the installed programs and
# man pages are bind-mounted over the configured paths in a private mount
# namespace, so verify finds ExecStart= and Documentation= targets); the
# hook lands in the libvirt hook folder; kbossctl schedule writes, lists
# and removes drop-ins with the expected OnCalendar=, for a VM's unnamed
# schedule and for named ones (VM.NAME instances that name the VM and pass
# --schedule NAME and the schedule's --keep-* values to kboss-backup); bad
# schedule names are refused before they reach a unit name.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

requires systemd-analyze unshare
plan 26
_kbt_tmpdir || bail_out "tmpdir"
D=$KBT_TMPDIR/destdir
B=${top_builddir:-$KBT_TOPDIR/_build}
make -s -C "$B" install DESTDIR="$D" >"$KBT_TMPDIR/install.log" 2>&1 ||
	{ cat "$KBT_TMPDIR/install.log" >&2; bail_out "make install failed"; }
var() { sed -n "s|^$1 = ||p" "$B/Makefile" | head -n1; }
prefix=$(var prefix)
exec_prefix=$(var exec_prefix); exec_prefix=${exec_prefix//'${prefix}'/$prefix}
sbindir=$(var sbindir); sbindir=${sbindir//'${exec_prefix}'/$exec_prefix}
mandir=$(var mandir); mandir=${mandir//'${datarootdir}'/$prefix/share}
unitdir=$(sed -n 's|^systemdsystemunitdir = ||p' "$B/systemd/Makefile"); unitdir=${unitdir//'${prefix}'/$prefix}
hookdir=$(sed -n 's|^libvirthooksdir = ||p' "$B/hooks/Makefile"); hookdir=${hookdir//'${sysconfdir}'/$(var sysconfdir)}
diag "sbindir=$sbindir mandir=$mandir unitdir=$unitdir hookdir=$hookdir"

units="kboss-compress.service kboss-compress.timer kboss-validate.service kboss-validate.timer
kboss-consolidate@.service kboss-backup@.service kboss-backup@.timer kboss-prune.service kboss-prune.timer"
n=0
for u in $units; do [ -f "$D$unitdir/$u" ] && n=$((n + 1)); done
ok [ "$n" -eq 9 ] "make install puts the 9 units into the unit dir ($n)"
ok [ -x "$D$hookdir/kboss" ] "make install puts the hook into the libvirt hook folder as 'kboss'"
ok 'grep -q "^ExecStart=$sbindir/kboss-backup \$KBOSS_BACKUP_ARGS \${KBOSS_BACKUP_VM}$" "$D$unitdir/kboss-backup@.service" &&
    grep -qx "Environment=KBOSS_BACKUP_VM=%i" "$D$unitdir/kboss-backup@.service"' \
	"units name the programs by their configured path"
ok '! grep -l "@[a-z]*dir@" "$D$unitdir"/kboss-* ' "no template placeholder is left in any unit"
missing=
for f in kboss-qemu-hook.8 kbossctl.8 kboss-backup.8; do
	[ -f "$D$mandir/man8/$f" ] || missing="$missing $f"
done
ok [ -z "$missing" ] "man pages of the hook, kbossctl and kboss-backup are installed"

# Programs that other parts of kboss provide may not be built in this tree
# yet: stand-ins let verify judge the units themselves (named in diag).
stand=
for p in $(sed -n "s|^ExecStart=$sbindir/\([^ ]*\).*|\1|p" "$D$unitdir"/kboss-*); do
	if [ ! -x "$D$sbindir/$p" ]; then
		printf '#!/bin/sh\nexit 0\n' > "$D$sbindir/$p" && chmod 0755 "$D$sbindir/$p"
		stand="$stand $p"
	fi
	if [ ! -f "$D$mandir/man8/$p.8" ]; then
		printf '.TH X 8\n.SH NAME\n%s \\- stand-in\n' "$p" > "$D$mandir/man8/$p.8"
		stand="$stand $p.8"
	fi
done
[ -n "$stand" ] && diag "stand-ins for parts not in this tree:$stand"

verify() {
	unshare -m sh -c '
		D=$1; sbindir=$2; mandir=$3; shift 3
		mkdir -p "$sbindir" "$mandir" 2>/dev/null
		mount --bind "$D$sbindir" "$sbindir" && mount --bind "$D$mandir" "$mandir" &&
		MANPATH=$mandir systemd-analyze verify "$@"' sh "$D" "$sbindir" "$mandir" "$@"
}
for u in $units; do
	ok verify "$D$unitdir/$u" "systemd-analyze verify $u"
done
bad=$KBT_TMPDIR/bad@.service
sed 's|^ExecStart=.*|ExecStart=kboss-backup-relative %i|' "$D$unitdir/kboss-backup@.service" > "$bad"
ok '! verify "$bad" 2>/dev/null' "verify does fail on a broken unit (relative ExecStart)"

# schedule
U=$KBT_TMPDIR/units
kb kbossctl schedule web-1 --calendar "Mon..Fri *-*-* 02:30" --quiesce --unit-dir "$U" >/dev/null
ok 'grep -qx "OnCalendar=Mon..Fri \*-\*-\* 02:30" "$U/kboss-backup@web-1.timer.d/schedule.conf" &&
    grep -qx "Environment=\"KBOSS_BACKUP_VM=web-1\"" "$U/kboss-backup@web-1.service.d/schedule.conf" &&
    grep -qx "Environment=\"KBOSS_BACKUP_ARGS=--schedule default --quiesce\"" "$U/kboss-backup@web-1.service.d/schedule.conf"' \
	"schedule writes OnCalendar= and the options as drop-ins"
ok '! kb kbossctl schedule web-1 --calendar "every tuesday-ish" --unit-dir "$U" 2>"$KBT_TMPDIR/err" &&
    grep -q "not a valid calendar expression" "$KBT_TMPDIR/err" &&
    grep -qx "OnCalendar=Mon..Fri \*-\*-\* 02:30" "$U/kboss-backup@web-1.timer.d/schedule.conf"' \
	"an invalid calendar expression is refused and the schedule stays"
kb kbossctl schedule db-2 --calendar daily --isolated --unit-dir "$U" >/dev/null
ok 'kb kbossctl schedule --unit-dir "$U" | grep -q "^web-1 *default *Mon..Fri \*-\*-\* 02:30 *- *--quiesce$"' "schedule lists web-1"
ok 'KBOSS_UNIT_DIR=$U kb kbossctl schedule --json | python3 -c "
import json, sys
s = {x[\"vm\"]: x for x in json.load(sys.stdin)}
assert s[\"db-2\"][\"calendar\"] == \"daily\" and s[\"db-2\"][\"isolated\"] and not s[\"db-2\"][\"quiesce\"], s
assert s[\"web-1\"][\"quiesce\"] and s[\"web-1\"][\"timer\"] == \"kboss-backup@web-1.timer\", s
"' "schedule --json lists both, with their options (KBOSS_UNIT_DIR)"

# named schedules: a second and third schedule of db-2, with keep values
kb kbossctl schedule db-2 --name hourly --calendar hourly --keep-last 24 --keep-daily 7 --unit-dir "$U" >/dev/null
kb kbossctl schedule db-2 --name weekly_1 --calendar weekly --keep-weekly 5 --unit-dir "$U" >/dev/null
H=$U/kboss-backup@db-2.hourly
ok 'grep -qx "OnCalendar=hourly" "$H.timer.d/schedule.conf" &&
    grep -qx "Environment=\"KBOSS_BACKUP_VM=db-2\"" "$H.service.d/schedule.conf" &&
    grep -qx "Environment=\"KBOSS_BACKUP_ARGS=--schedule hourly --keep-last 24 --keep-daily 7\"" "$H.service.d/schedule.conf" &&
    grep -qx "OnCalendar=daily" "$U/kboss-backup@db-2.timer.d/schedule.conf"' \
	"a named schedule is the instance db-2.hourly: the VM, --schedule and its keep values in the drop-in; the unnamed one stays"
before=$(ls "$U" | sort | tr '\n' ' ')
bad=0
for n in ../x "a:b" "a b" -x "" a.b 0123456789abcdef0123456789abcdef0; do
	kb kbossctl schedule db-2 --name "$n" --calendar daily --unit-dir "$U" >/dev/null 2>"$KBT_TMPDIR/err"
	[ $? -eq 2 ] && grep -q "not a schedule name" "$KBT_TMPDIR/err" || { bad=1; diag "name '$n' was not refused"; }
done
kb kbossctl schedule db-2.hourly --calendar daily --unit-dir "$U" >/dev/null 2>"$KBT_TMPDIR/err"
taken=$?
diag "$(cat "$KBT_TMPDIR/err")"
ok '[ $bad -eq 0 ] && [ $taken -ne 0 ] && grep -q "is VM db-2.s schedule hourly" "$KBT_TMPDIR/err" &&
    [ "$(ls "$U" | sort | tr "\n" " ")" = "$before" ] && grep -qx "Environment=\"KBOSS_BACKUP_VM=db-2\"" "$H.service.d/schedule.conf"' \
	"bad schedule names (../x, a:b, blanks, leading -, empty, dots, 33 chars) are refused, so is VM db-2.hourly's schedule on db-2's instance: nothing written"
ok 'kb kbossctl schedule --unit-dir "$U" --json | python3 -c "
import json, sys
s = {(x[\"vm\"], x[\"schedule\"]): x for x in json.load(sys.stdin)}
h = s[(\"db-2\", \"hourly\")]
assert h[\"calendar\"] == \"hourly\" and h[\"timer\"] == \"kboss-backup@db-2.hourly.timer\", h
assert h[\"keep\"] == {\"last\": 24, \"hourly\": 0, \"daily\": 7, \"weekly\": 0, \"monthly\": 0, \"yearly\": 0}, h
assert s[(\"db-2\", \"weekly_1\")][\"keep\"][\"weekly\"] == 5, s
assert s[(\"db-2\", \"default\")][\"keep\"][\"last\"] == 0 and s[(\"db-2\", \"default\")][\"isolated\"], s
assert len([k for k in s if k[0] == \"db-2\"]) == 3, s
" && kb kbossctl schedule --unit-dir "$U" | grep -q "^db-2 *hourly *hourly *last=24,daily=7 *-$"' \
	"the list shows db-2's three schedules with their keep values (table and JSON)"
kb kbossctl schedule db-2 --name weekly_1 --remove --unit-dir "$U" >/dev/null
ok '[ ! -e "$U/kboss-backup@db-2.weekly_1.timer.d" ] && [ ! -e "$U/kboss-backup@db-2.weekly_1.service.d" ] &&
    [ -e "$H.timer.d/schedule.conf" ] && [ -e "$U/kboss-backup@db-2.timer.d/schedule.conf" ]' \
	"--name weekly_1 --remove removes that schedule only"
kb kbossctl schedule web-1 --remove --unit-dir "$U" >/dev/null
ok '[ ! -e "$U/kboss-backup@web-1.timer.d" ] && ! kb kbossctl schedule --unit-dir "$U" | grep -q "^web-1 "' \
	"schedule --remove removes the drop-ins"
# the instance as systemd loads it: template + the drop-ins kbossctl wrote
mkdir -p "$KBT_TMPDIR/sys"
cp "$D$unitdir/kboss-backup@.timer" "$D$unitdir/kboss-backup@.service" "$KBT_TMPDIR/sys/"
cp -r "$U/kboss-backup@db-2.timer.d" "$U/kboss-backup@db-2.service.d" "$KBT_TMPDIR/sys/"
ok 'SYSTEMD_UNIT_PATH=$KBT_TMPDIR/sys: verify kboss-backup@db-2.timer kboss-backup@db-2.service' \
	"kboss-backup@db-2.timer/.service with the schedule drop-ins verify"
cp -r "$H.timer.d" "$H.service.d" "$KBT_TMPDIR/sys/"
ok 'SYSTEMD_UNIT_PATH=$KBT_TMPDIR/sys: verify "kboss-backup@db-2.hourly.timer" "kboss-backup@db-2.hourly.service"' \
	"the named instance kboss-backup@db-2.hourly.timer/.service with its drop-ins verifies"
