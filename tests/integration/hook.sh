#!/usr/bin/env bash
# The qemu hook in the test bed's libvirtd, reacting to real events:
#  - called directly: migrate/restore print nothing and exit 0;
#    prepare of a VM being restored (live local marker) exits 1;
#  - installed (libvirtd restarted once to see it): a start the hook refuses
#    fails with its message; after libvirt lost its checkpoint metadata, a
#    start makes the hook redefine the checkpoint, and the next backup is
#    incremental on every disk and equal to the disks; a stop with a
#    backup left BackingUp by a dead holder is normalized; a stop during a
#    consolidation with a dead holder is finished offline; with the export
#    (a FUSE mount, bindfs) frozen by SIGSTOP of its daemon, virsh start and
#    destroy of a kboss VM and of a VM kboss does not know return within
#    15 s, and the hook starts nothing for the latter.
# libvirt scrubs the environment of hooks: the hook installed is a wrapper
# that exports KBOSS_CONF, KBOSS_SBINDIR and KBOSS_HOOK_LOG and execs the
# built hook. It is removed at the end and libvirtd restarted once more.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"
. "$(dirname "$0")/../lib/ops.sh"

HOOKS=/etc/libvirt/hooks/qemu.d
HOOK_BIN=${KBOSS_HOOKDIR:-$KBT_TOPDIR/_build/hooks}/kboss-qemu-hook
[ -x "$HOOK_BIN" ] || bail_out "the hook is not built: $HOOK_BIN"

requires bindfs fusermount
plan 28
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
kb_offering quick allow_quick_restore=true
make_test_vm a 16 || bail_out "cannot define the test VM"
kb_assign a quick
dom=$(vm_domain a)
uuid=$(virsh -q domuuid "$dom")
data=$(vm_data_disk a)
MiB=$((1024 * 1024))
LOG=$KBT_TMPDIR/hook.log
err=$KBT_TMPDIR/err

# vm.ini field of the test VM (newest generation)
vm_field() {
	local f
	f=$(ls "$(ops_vm_dir a)"/vm.*.ini 2>/dev/null | sort | tail -n1)
	[ -n "$f" ] && sed -n "/^\[$2\]/,/^\[/s/^$1 *= *//p" "$f" | head -n1
}
# wait_for SECONDS CMD_STRING
wait_for() {
	local i
	for ((i = 0; i < $1 * 5; i++)); do
		eval "$2" && return 0
		sleep 0.2
	done
	return 1
}
hook() { env KBOSS_CONF="$KBOSS_CONF" KBOSS_SBINDIR="$SBIN" KBOSS_HOOK_LOG="$LOG" "$HOOK_BIN" "$@"; }

# The helpers the hook may start, as built in this tree.
SBIN=$KBT_TMPDIR/sbin
mkdir -p "$SBIN"
for p in kboss-backup kboss-restore; do
	for f in "$KB_BINDIR"/*/"$p"; do [ -x "$f" ] && ln -s "$f" "$SBIN/$p"; done
done

qemu-io -f qcow2 -c "write -P 0x5a 0 $MiB" "$data" >/dev/null
b1=$(kb_backup a)
ok [ "$(kb_backup_field "$b1" type)" = full ] "a full backup of the stopped VM: $b1"
xml=$(virsh dumpxml "$dom")

# --- the hook called directly ---
out=$(printf '%s' "$xml" | hook "$dom" migrate begin -; echo "rc=$?")
ok [ "$out" = "rc=0" ] "migrate begin: nothing on stdout, exit 0"
out=$(printf '%s' "$xml" | hook "$dom" restore begin -; echo "rc=$?")
ok [ "$out" = "rc=0" ] "restore begin: nothing on stdout, exit 0"

sleep 600 & holder=$!
cleanup_push "kill $holder 2>/dev/null; rm -f /run/kboss/restoring/$uuid"
vmdir=$(ops_vm_dir a)
ops_doc_set "$vmdir" vm vm state Restoring
ops_fake_restoring "$uuid" "$holder"
printf '%s' "$xml" | hook "$dom" prepare begin - >"$KBT_TMPDIR/stdout" 2>"$err"
rc=$?
ok [ $rc -eq 1 ] "prepare begin of a VM being restored (live local marker) exits 1"
ok 'grep -q "is being restored" "$err" && [ ! -s "$KBT_TMPDIR/stdout" ]' "... with the reason on stderr, nothing on stdout"
kill $holder; wait $holder 2>/dev/null
ok 'printf "%s" "$xml" | hook "$dom" prepare begin - 2>/dev/null' \
	"prepare begin of a VM whose restoring process is dead exits 0"
ok 'printf "%s" "$xml" | hook kboss-val-x release end - && wait_for 5 "grep -q \"kboss-validate is not installed\" \"$LOG\""' \
	"release of a validation VM without kboss-validate leaves a note in the hook log"

# --- install the hook into libvirtd ---
[ -e "$HOOKS/kboss" ] && bail_out "$HOOKS/kboss exists already; not replacing it"
# Restart libvirtd (running domains survive). libvirtd can hang in its
# shutdown (seen here with a thread of another test's domain stuck): after
# 30 s the old daemon is killed by its pid. Another test's start_libvirt may
# start the new daemon first; any daemon that answers will do.
restart_libvirtd() {
	local pid i
	pid=$(cat /var/run/libvirtd.pid 2>/dev/null)
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || pid=$(pidof libvirtd)
	if [ -n "$pid" ]; then
		kill -TERM $pid
		for ((i = 0; i < 150; i++)); do kill -0 $pid 2>/dev/null || break; sleep 0.2; done
		if kill -0 $pid 2>/dev/null; then
			echo "restart_libvirtd: libvirtd $pid hangs in its shutdown; killing it" >&2
			kill -KILL $pid
			for ((i = 0; i < 50; i++)); do kill -0 $pid 2>/dev/null || break; sleep 0.2; done
		fi
	fi
	for ((i = 0; i < 300; i++)); do
		if virsh -q version >/dev/null 2>&1; then
			return 0
		fi
		if ! pidof libvirtd >/dev/null; then
			libvirtd -d
		fi
		sleep 0.2
	done
	return 1
}
mkdir -p "$HOOKS"
cat > "$HOOKS/kboss.tmp" <<WRAP
#!/bin/sh
# kboss test wrapper (tests/integration/hook.sh, pid $$): libvirt scrubs the environment.
# If the test died without removing it: do nothing (a failing hook blocks starts).
[ -x '$HOOK_BIN' ] && [ -f '$KBOSS_CONF' ] || exit 0
KBOSS_CONF='$KBOSS_CONF' KBOSS_SBINDIR='$SBIN' KBOSS_HOOK_LOG='$LOG'
export KBOSS_CONF KBOSS_SBINDIR KBOSS_HOOK_LOG
exec '$HOOK_BIN' "\$@"
WRAP
chmod 0755 "$HOOKS/kboss.tmp" && mv "$HOOKS/kboss.tmp" "$HOOKS/kboss"
cleanup_push 'rm -f "$HOOKS/kboss"; rmdir "$HOOKS" 2>/dev/null; restart_libvirtd'
restart_libvirtd || bail_out "libvirtd did not come back after the restart"

# A VM being restored does not start.
sleep 600 & holder=$!
cleanup_push "kill $holder 2>/dev/null"
ops_fake_restoring "$uuid" "$holder"
ok '! virsh -q start --paused "$dom" 2>"$err" && grep -q "is being restored" "$err"' \
	"virsh start of a VM being restored fails with the hook's message"
ok [ "$(vm_state a)" = "shut off" ] "... and the VM stays off"
kill $holder; wait $holder 2>/dev/null
rm -f "/run/kboss/restoring/$uuid"
ops_doc_set "$vmdir" vm vm state Ready

# libvirt forgets the checkpoint; a start brings it back.
for cp in $(virsh -q checkpoint-list --name "$dom"); do
	virsh -q checkpoint-delete --metadata "$dom" "$cp" >/dev/null
done
ok [ -z "$(virsh -q checkpoint-list --name "$dom")" ] "libvirt's checkpoint metadata is wiped"
virsh -q start --paused "$dom" >/dev/null
ok wait_for 60 '[ "$(virsh -q checkpoint-list --name "$dom")" = "$b1" ]' \
	"after the start the hook had checkpoint $b1 redefined"
ok grep -q "kboss-backup --redefine-checkpoints --quiet $dom" "$LOG" "... by a detached kboss-backup --redefine-checkpoints"
virsh -q destroy --graceful "$dom" >/dev/null
qemu-io -f qcow2 -c "write -P 0x6b $((3 * MiB)) $MiB" "$data" >/dev/null
b2=$(kb_backup a)
ok [ "$(kb_backup_field "$b2" type)" = incremental ] "the next backup is incremental: $b2"
ok '[ "$(kb_backup_record "$b2" | grep -c "^mode = incremental")" -eq 2 ] && ! kb_backup_record "$b2" | grep -q "^mode = full"' \
	"... on both disks"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$data" "data disk = its backup"
ok qemu-img compare -q "$(kb_backup_file "$b2" vda)" "$(vm_disk a)" "root disk = its backup"
# again, now that the checkpoint's parent (b1's) has been pruned
for cp in $(virsh -q checkpoint-list --name "$dom"); do
	virsh -q checkpoint-delete --metadata "$dom" "$cp" >/dev/null
done
virsh -q start --paused "$dom" >/dev/null
ok wait_for 60 '[ "$(virsh -q checkpoint-list --name "$dom")" = "$b2" ]' \
	"after another wipe and start, the incremental's checkpoint $b2 (parent pruned) is redefined"
virsh -q destroy --graceful "$dom" >/dev/null

# A stop with a backup left BackingUp by a dead holder: normalized.
ops_doc_set "$vmdir" vm vm state BackingUp
virsh -q start --paused "$dom" >/dev/null && virsh -q destroy --graceful "$dom" >/dev/null
ok wait_for 60 '[ "$(vm_field state vm)" = Ready ]' "a stop with an unfinished backup: the hook had the VM normalized"
ok grep -q "kboss-backup --normalize --quiet $dom" "$LOG" "... by a detached kboss-backup --normalize"

# A stop during a consolidation (quick restore) with no live holder: the
# hook has it finished offline. The state a quick restore leaves is made by
# hand: overlays on the backup's files, the record saying Consolidating.
for d in vda vdb; do
	f=$(vm_dir a)/$d-overlay.qcow2
	qemu-img create -q -f qcow2 -b "$(kb_backup_file "$b2" $d)" -F qcow2 "$f" || bail_out "overlay"
done
cp "$(vm_disk a)" "$KBT_TMPDIR/root-before.qcow2"
cp "$data" "$KBT_TMPDIR/data-before.qcow2"
mv "$(vm_dir a)/vda-overlay.qcow2" "$(vm_disk a)"
mv "$(vm_dir a)/vdb-overlay.qcow2" "$data"
ops_doc_set "$vmdir" vm consolidation backup "$b2"
ops_doc_set "$vmdir" vm consolidation disks vda,vdb
ops_doc_set "$vmdir" vm consolidation path.vda "$(vm_disk a)"
ops_doc_set "$vmdir" vm consolidation path.vdb "$data"
ops_doc_set "$vmdir" vm vm state Consolidating
ok 'virsh -q start --paused "$dom" >/dev/null' "a VM in Consolidating may start"
virsh -q destroy --graceful "$dom" >/dev/null
ok wait_for 120 '[ "$(vm_field state vm)" = Ready ]' "after the stop the consolidation was finished: VM Ready"
ok grep -q "kboss-restore --consolidate $dom" "$LOG" "... by a detached kboss-restore --consolidate"
ok '! qemu-img info -U "$data" | grep -q "^backing file" && ! qemu-img info -U "$(vm_disk a)" | grep -q "^backing file"' \
	"the disks no longer have backing files"
ok 'qemu-img compare -q "$data" "$KBT_TMPDIR/data-before.qcow2" && qemu-img compare -q "$(vm_disk a)" "$KBT_TMPDIR/root-before.qcow2"' \
	"... and hold the backup's data"
# --- the export hangs: starts and stops do not wait for it ---
src=$KBT_TMPDIR/export-src
export=$KBT_TMPDIR/export
mkdir -p "$src" "$export" && chmod 0755 "$src" "$export"
cp -a "$KB_SECONDARY/." "$src/" || bail_out "cannot copy the catalog"
bindfs "$src" "$export" || bail_out "bindfs"
cleanup_push "fusermount -u -z '$export'"
bindfs_pid=$(pgrep -f "^bindfs $src $export\$")
[ -n "$bindfs_pid" ] || bail_out "cannot find the bindfs daemon"
# Thawed before anything else is cleaned: a frozen FUSE mount left behind
# would hang every later test.
cleanup_push "kill -CONT $bindfs_pid 2>/dev/null"
sed -i "s|^secondary.path = .*|secondary.path = $export\nstorage.timeout = 10|" "$KBOSS_CONF"
make_test_vm n 16 || bail_out "cannot define the other test VM"
ndom=$(vm_domain n)
since() { echo "$(date +%s%N) $1" | awk '{ printf "%.1f", ($1 - $2) / 1e9 }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
kill -STOP "$bindfs_pid"
t0=$(date +%s%N)
timeout 60 virsh -q start --paused "$dom" >/dev/null; vrc=$?
tk=$(since $t0)
ok '[ $vrc -eq 0 ] && lt $tk 15' "export frozen: virsh start of the kboss VM returns in $tk s"
t0=$(date +%s%N)
timeout 60 virsh -q start --paused "$ndom" >/dev/null; vrc=$?
tn=$(since $t0)
ok '[ $vrc -eq 0 ] && lt $tn 15' "export frozen: virsh start of a VM kboss does not know returns in $tn s"
t0=$(date +%s%N)
timeout 60 virsh -q destroy "$dom" >/dev/null && timeout 60 virsh -q destroy "$ndom" >/dev/null; vrc=$?
td=$(since $t0)
ok '[ $vrc -eq 0 ] && lt $td 15' "export frozen: virsh destroy of both returns in $td s"
kill -CONT "$bindfs_pid"
ok '! grep -F "$ndom" "$LOG" | grep -q "started "' "the hook started nothing for the VM kboss does not know"
diag "hook log:"
diag "$(cat "$LOG")"
