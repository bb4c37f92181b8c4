#!/usr/bin/env bash
# Secondary storage that fails: not mounted, or hung.
#  - unmounted: secondary.path is a plain empty folder (no mount point, no
#    kbossctl init-store mark): every program refuses with a message naming
#    the path, and nothing is created there.
#  - hung: the export is a real FUSE filesystem (bindfs over a folder)
#    frozen with SIGSTOP of its daemon. A backup of a running VM (quiesced)
#    fails within storage.timeout + 30 s with "secondary storage not
#    responding", the VM running, its agent answering, not frozen, no job,
#    no new checkpoint; so does one whose export hangs while its job copies.
#    After the thaw (SIGCONT) the next backup succeeds and equals the disks.
#    kboss-restore, kboss-compress run, kboss-validate run and kbossctl
#    backups fail within
#    storage.timeout + 30 s too, and the VM's disks are not touched.
# VM starts with the export frozen and the hook installed: hook.sh.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

requires bindfs fusermount
[ -c /dev/fuse ] || skip_all "no /dev/fuse"
TIMEOUT=20

plan 38
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

# --- a hung export: bindfs over a folder, frozen on demand ---
src=$KBT_TMPDIR/export-src
export=$KBT_TMPDIR/export
mkdir -p "$src" "$export" && chmod 0755 "$src" "$export"
bindfs "$src" "$export" || bail_out "bindfs"
cleanup_push "fusermount -u -z '$export'"
bindfs_pid=$(pgrep -f "^bindfs $src $export\$")
[ -n "$bindfs_pid" ] || bail_out "cannot find the bindfs daemon"
# Whatever happens, the export is thawed before anything else is cleaned
# (a frozen FUSE mount left behind would hang every later test).
cleanup_push "kill -CONT $bindfs_pid 2>/dev/null"
freeze() { kill -STOP "$bindfs_pid"; }
thaw() { kill -CONT "$bindfs_pid"; }
sed -i "s|^secondary.path = .*|secondary.path = $export\nstorage.timeout = $TIMEOUT|" "$KBOSS_CONF"
KB_SECONDARY=$export   # where kb_backup_field & co. look
ok [ "$(kb kbossctl settings | awk '$1 == "storage.timeout" { print $3 }')" = $TIMEOUT ] \
	"storage.timeout = $TIMEOUT s; the export is a FUSE mount point (no mark needed)"
make_test_vm k 1100 || bail_out "cannot define the kboss test VM"
kb_assign k plain
kdom=$(vm_domain k)
# data enough for a full backup to take a while
qemu-io -f qcow2 -c "write -P 0x6d $((64 * 1048576)) $((900 * 1048576))" "$(vm_data_disk k)" >/dev/null
b0=$(kb_backup k)
ok [ -n "$b0" ] "a backup of the stopped kboss VM onto the export: $b0"
ok 'virsh -q dumpxml --inactive "$kdom" | grep -q "urn:kboss:domain:1"' "... which carries kboss's element in its <metadata> now"

# seconds since T0 (one decimal)
since() { echo "$(date +%s%N) $1" | awk '{ printf "%.1f", ($1 - $2) / 1e9 }'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

start_vm k && wait_agent k 300 || bail_out "the guest did not answer"
# A backup of the running VM, quiesced, with the export frozen first.
guest_write_pattern k /dev/vdb 0 1048576 0x5c || bail_out "guest write"
b1=$(kb_backup k)
ok [ "$(kb_backup_field "$b1" type)" = incremental ] "with the export thawed a backup of the running VM works: $b1"
cps_before=$(virsh -q checkpoint-list --name "$kdom" | sort | tr '\n' ' ')
freeze
t0=$(date +%s%N)
out=$(timeout $((TIMEOUT + 120)) "$KB_BINDIR"/backup/kboss-backup --quiesce "$kdom" 2>&1); brc=$?
tb=$(since $t0)
diag "$out"
ok '[ $brc -eq 1 ] && lt $tb $((TIMEOUT + 30))' "export frozen: the backup fails in $tb s (storage.timeout $TIMEOUT s)"
ok 'grep -q "secondary storage not responding" <<<"$out" && grep -qF "$export" <<<"$out"' \
	"... saying secondary storage is not responding, and where"
ok [ "$(vm_state k)" = running ] "... the VM is running"
ok 'agent_command k "{\"execute\":\"guest-ping\"}" 5 | grep -q return && kb_guest_thawed k' \
	"... its agent answers and its filesystems are not frozen"
ok '! virsh domjobinfo "$kdom" | grep -q "Operation: *Backup"' "... no backup job runs"
ok [ "$(virsh -q checkpoint-list --name "$kdom" | sort | tr '\n' ' ')" = "$cps_before" ] "... no new checkpoint"

# The export hangs while the job copies (qemu writes into it).
thaw
wait_for_no_job() {
	local i
	for ((i = 0; i < 150; i++)); do
		virsh domjobinfo "$kdom" 2>/dev/null | grep -q "Operation: *Backup" || return 0
		sleep 0.2
	done
	return 1
}
"$KB_BINDIR"/backup/kboss-backup --full "$kdom" >"$KBT_TMPDIR/mid.out" 2>&1 &
bk=$!
cleanup_push "kill $bk 2>/dev/null"
for ((i = 0; i < 600; i++)); do
	virsh domjobinfo "$kdom" 2>/dev/null | grep -q "Operation: *Backup" && break
	sleep 0.1
done
ok 'virsh domjobinfo "$kdom" 2>/dev/null | grep -q "Operation: *Backup"' "the full backup's job is copying"
freeze
t0=$(date +%s%N)
for ((i = 0; i < (TIMEOUT + 60) * 5; i++)); do kill -0 $bk 2>/dev/null || break; sleep 0.2; done
wait $bk; brc=$?
tm=$(since $t0)
diag "$(cat "$KBT_TMPDIR/mid.out")"
ok '[ $brc -eq 1 ] && lt $tm $((TIMEOUT + 30))' "export frozen mid-copy: the backup fails in $tm s after the freeze"
ok grep -q "secondary storage not responding" "$KBT_TMPDIR/mid.out" "... saying secondary storage is not responding"
ok [ "$(vm_state k)" = running ] "... the VM is running"
ok 'agent_command k "{\"execute\":\"guest-ping\"}" 5 | grep -q return && kb_guest_thawed k' \
	"... its agent answers and its filesystems are not frozen"
thaw
ok wait_for_no_job "after the thaw no backup job is left"
# The detached finisher removes the checkpoint after it has seen the job
# end, a moment after the job is gone: wait for it (at most 30 s).
cps_now() { virsh -q checkpoint-list --name "$kdom" | sort | tr '\n' ' '; }
for ((i = 0; i < 150; i++)); do [ "$(cps_now)" = "$cps_before" ] && break; sleep 0.2; done
ok [ "$(cps_now)" = "$cps_before" ] "... and no new checkpoint"

# After the thaw the next backup succeeds and equals the disks.
stop_vm k 120
b2=$(kb_backup k)
ok [ -n "$b2" ] "after the thaw the next backup succeeds: $b2"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$(vm_data_disk k)" "... its data disk equals the VM's"
ok qemu-img compare -q "$(kb_backup_file "$b2" vda)" "$(vm_disk k)" "... its root disk equals the VM's"

# The other programs under a hung export: bounded, the VM left alone.
mt_before=$(stat -c %Y "$(vm_disk k)" "$(vm_data_disk k)" | tr '\n' ' ')
freeze
for cmd in "kboss-restore $b2" "kboss-compress run" "kboss-validate run" "kbossctl backups"; do
	set -- $cmd
	t0=$(date +%s%N)
	out=$(timeout $((TIMEOUT + 120)) "$KB_BINDIR"/*/"$1" "${@:2}" 2>&1); prc=$?
	tp=$(since $t0)
	diag "$cmd: $out"
	ok '[ $prc -eq 1 ] && lt $tp $((TIMEOUT + 30)) && grep -q "secondary storage not responding" <<<"$out"' \
		"export frozen: $cmd fails in $tp s, saying secondary storage is not responding"
done
thaw
ok [ "$(stat -c %Y "$(vm_disk k)" "$(vm_data_disk k)" | tr '\n' ' ')" = "$mt_before" ] \
	"the VM's disks were not touched by the failed restore"
ok [ -z "$(ls "$(vm_dir k)" | grep kboss)" ] "... and no partial restore file is left beside them"
ok [ "$(vm_state k)" = "shut off" ] "... and the VM is still stopped"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$(vm_data_disk k)" "after the thaw the backup still equals the disk"
