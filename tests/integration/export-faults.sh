#!/usr/bin/env bash
# Secondary storage that fails: not mounted, or hung.
#  - unmounted: secondary.path is a plain empty folder (no mount point, no
#    kbossctl init-store mark): every program refuses with a message naming
#    the path, and nothing is created there.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 10
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm u 16 || bail_out "cannot define the test VM"
kb_assign u plain
dom=$(vm_domain u)
b1=$(kb_backup u)
ok [ -n "$b1" ] "a backup onto the marked store: $b1"

# --- an unmounted export: a plain empty folder at secondary.path ---
plain=$KBT_TMPDIR/unmounted
mkdir -p "$plain" && chmod 0755 "$plain"
sed "s|^secondary.path = .*|secondary.path = $plain|" "$KBOSS_CONF" > "$KB_ROOT/etc/unmounted.conf"
refuses() { # DESC PROG ARGS...
	local desc=$1 out prc
	shift
	out=$(KBOSS_CONF=$KB_ROOT/etc/unmounted.conf kb "$@" 2>&1); prc=$?
	diag "$* -> $prc: $out"
	ok '[ $prc -ne 0 ] && grep -qF "$plain" <<<"$out" && grep -q "not a mount point" <<<"$out"' \
		"$desc refuses an unmounted secondary path and names it"
}
refuses "kboss-backup" kboss-backup "$dom"
refuses "kboss-restore" kboss-restore "$b1"
refuses "kboss-compress run" kboss-compress run
refuses "kboss-validate run" kboss-validate run
refuses "kbossctl backups" kbossctl backups
refuses "kbossctl jobs" kbossctl jobs
refuses "kbossctl delete" kbossctl delete "$b1"
ok [ -z "$(ls -A "$plain")" ] "nothing was created in the unmounted folder"
ok [ "$(vm_state u)" = "shut off" ] "the VM was left alone"
