#!/usr/bin/env bash
# Backups of a stopped VM without starting qemu: after offline writes
# (qemu-io, on the data disk: the root disk holds the guest's filesystem),
# the full and the incrementals equal the disk; the domain stays
# shut off throughout and qemu never runs for it (its qemu log gets no
# line); the disks carry the new checkpoint's bitmap and libvirt knows the
# checkpoint; a disk whose bitmap is missing gets a full copy; a start
# during the copy is refused; and an online incremental follows correctly.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 42
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm a || bail_out "cannot define the test VM"
kb_assign a plain
dom=$(vm_domain a)
data=$(vm_data_disk a)
root=$(vm_disk a)
MiB=$((1024 * 1024))
kb_path() { local p; for p in "$KB_BINDIR/$1" "$KB_BINDIR"/*/"$1"; do [ -x "$p" ] && { echo "$p"; return; }; done; }
qlog=/var/log/libvirt/qemu/$dom.log
qlog_lines() { if [ -f "$qlog" ]; then wc -l < "$qlog"; else echo 0; fi; }
bitmaps() { qemu-img info --output=json "$1" | python3 -c '
import json, sys
fmt = json.load(sys.stdin).get("format-specific", {}).get("data", {})
print(" ".join(b["name"] + ":" + ",".join(b["flags"]) for b in fmt.get("bitmaps", [])))'; }

# kb_backup while polling the domain's state; fails unless it stayed shut off
states=$KBT_TMPDIR/states
backup_polled() {
	local poll out
	: > "$states"
	( while :; do virsh domstate "$dom" 2>&1 | head -n1 >> "$states"; virsh domid "$dom" 2>&1 | head -n1 >> "$states"; sleep 0.05; done ) &
	poll=$!
	out=$(kb_backup a "$@")
	kill "$poll"; wait "$poll" 2>/dev/null
	printf '%s\n' "$out"
}
stayed_off() { [ -s "$states" ] && ! grep -qv -e '^shut off$' -e '^-$' "$states"; }

log0=$(qlog_lines)
qemu-io -f qcow2 -c "write -P 0xa1 0 $MiB" "$data" >/dev/null
b1=$(backup_polled)
ok [ -n "$b1" ] "full backup of the stopped VM: $b1"
ok stayed_off "the domain stayed shut off during the full backup ($(sort -u "$states" | tr '\n' ' '))"
ok [ "$(kb_backup_field "$b1" type)" = full ] "the first backup is full"
ok qemu-img compare -q "$(kb_backup_file "$b1" vdb)" "$data" "data disk equals its full backup"
ok qemu-img compare -q "$(kb_backup_file "$b1" vda)" "$root" "root disk equals its full backup"
ok [ "$(bitmaps "$data")" = "$b1:auto" ] "data disk carries bitmap $b1, recording ($(bitmaps "$data"))"
ok [ "$(bitmaps "$root")" = "$b1:auto" ] "root disk carries bitmap $b1 ($(bitmaps "$root"))"
ok [ "$(virsh checkpoint-list --name "$dom" | sed '/^$/d')" = "$b1" ] "libvirt knows checkpoint $b1"

qemu-io -f qcow2 -c "write -P 0xb2 $((4 * MiB)) $((512 * 1024))" "$data" >/dev/null
qemu-io -f qcow2 -c "write -z $((20 * MiB)) $((256 * 1024))" "$data" >/dev/null
b2=$(backup_polled)
ok stayed_off "the domain stayed shut off during the incremental backup"
ok [ "$(kb_backup_field "$b2" type)" = incremental ] "offline incremental after offline writes: $b2"
ok [ "$(kb_disk_field "$b2" vdb mode)" = incremental ] "data disk copied incrementally"
ok [ "$(kb_disk_field "$b2" vda mode)" = incremental ] "root disk copied incrementally"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$data" "data disk equals the chain of the offline incremental"
ok qemu-img compare -q "$(kb_backup_file "$b2" vda)" "$root" "root disk equals the chain of the offline incremental"
ref=$KBT_TMPDIR/ref.qcow2
kb_ref_image "$ref" 64M "0 $MiB 0xa1" "$((4 * MiB)) $((512 * 1024)) 0xb2"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$ref" "the incremental's chain equals a reference built by qemu-io"
ok qemu-img check -q "$(kb_backup_file "$b2" vdb)" "qemu-img check finds the incremental's image clean"
ok [ "$(qemu-img info --output=json "$(kb_backup_file "$b2" vdb)" | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" = "../$b1/vdb.qcow2" ] \
	"the incremental's backing file is relative: ../$b1/vdb.qcow2"
own=$(kb_own_data_bytes "$(kb_backup_file "$b2" vdb)")
ok [ "$own" -ge $((512 * 1024)) -a "$own" -le $((1024 * 1024)) ] "the incremental holds only what changed ($own bytes of data)"
ok [ "$(bitmaps "$data")" = "$b2:auto" ] "data disk now carries only bitmap $b2 ($(bitmaps "$data"))"
ok [ "$(virsh checkpoint-list --name "$dom" | sed '/^$/d')" = "$b2" ] "libvirt knows checkpoint $b2 only"
ok [ "$(qlog_lines)" = "$log0" ] "qemu never ran for the domain (its qemu log has no new line)"

# A bitmap that went missing: that disk alone is copied in full.
qemu-img bitmap --remove -f qcow2 "$data" "$b2"
qemu-io -f qcow2 -c "write -P 0xc4 $((12 * MiB)) $MiB" "$data" >/dev/null
b3=$(kb_backup a)
ok [ "$(kb_disk_field "$b3" vdb mode)" = full ] "data disk without its bitmap is copied in full ($(kb_disk_field "$b3" vdb reason))"
ok [ "$(kb_disk_field "$b3" vda mode)" = incremental ] "root disk stays incremental"
ok qemu-img compare -q "$(kb_backup_file "$b3" vdb)" "$data" "the full copy equals the data disk"

# A start while the disks are being copied is refused.
qemu-io -f qcow2 -c "write -P 0xd5 $((16 * MiB)) $MiB" "$data" >/dev/null
KBOSS_TEST_HOLD_OFFLINE_MS=6000 kb kboss-backup --json "$dom" > "$KBT_TMPDIR/held.json" 2> "$KBT_TMPDIR/held.err" &
held=$!
sleep 2.5
startout=$(virsh start "$dom" 2>&1); startrc=$?
diag "start during the backup: $startout"
ok [ $startrc -ne 0 ] "starting the VM during its offline backup is refused"
wait $held; heldrc=$?
ok [ $heldrc -eq 0 ] "the offline backup completes ($(cat "$KBT_TMPDIR/held.err"))"
b4=$(sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' "$KBT_TMPDIR/held.json" | head -n1)
ok [ "$(vm_state a)" = "shut off" ] "the VM is still shut off"
ok qemu-img compare -q "$(kb_backup_file "$b4" vdb)" "$data" "the held backup equals the data disk"

# Bitmaps of other granularities than the cluster size (qemu-img bitmap -g):
# the dirty granules map onto 64 KiB clusters, the last one partial.
for g in 4096 2097152; do
	cp=$(virsh checkpoint-list --name "$dom" | sed '/^$/d' | head -n1)
	qemu-img bitmap --remove -f qcow2 "$data" "$cp" && qemu-img bitmap --add -g $g -f qcow2 "$data" "$cp"
	qemu-io -f qcow2 -c "write -P 0x71 $((100 * 1024 + 4096)) 4096" -c "write -P 0x72 $((64 * MiB - 512)) 512" "$data" >/dev/null
	bg=$(kb_backup a)
	ok '[ "$(kb_disk_field "$bg" vdb mode)" = incremental ] && qemu-img compare -q "$(kb_backup_file "$bg" vdb)" "$data"' \
		"with a bitmap of granularity $g the offline incremental is right"
done

# kill -9 in the middle of the copy: the disks are free again at once (no
# lock outlives the process) and the next run cleans up and continues.
qemu-io -f qcow2 -c "write -P 0xd6 $((20 * MiB)) $MiB" "$data" >/dev/null
KBOSS_TEST_HOLD_OFFLINE_MS=20000 "$(kb_path kboss-backup)" "$dom" >/dev/null 2>&1 &
killme=$!
sleep 2.5
kill -9 $killme; wait $killme 2>/dev/null
ok qemu-io -f qcow2 -c "read 0 512" "$data" "after kill -9 of the offline backup its disks can be opened for writing"
b6=$(kb_backup a)
ok [ "$(kb_backup_field "$b6" type)/$(kb_disk_field "$b6" vdb mode)" = incremental/incremental ] \
	"the next offline backup is incremental again: $b6"
ok qemu-img compare -q "$(kb_backup_file "$b6" vdb)" "$data" "and equals the data disk"
# the newest generation of every backup record in the catalog
running_left() {
	local d f
	for d in $(find "$KB_SECONDARY/kboss/vms" -name 'backup.*.ini' -printf '%h\n' | sort -u); do
		f=$(ls "$d"/backup.*.ini | sort -V | tail -n1)
		grep -q '^state = Running' "$f" && echo "$d"
	done
}
ok '[ -z "$(running_left)" ]' "no record of the killed run is left ($(running_left))"
b4=$b6

# Online after offline: the next backup of the running VM is incremental on it.
start_vm a && wait_agent a 240 || bail_out "the guest did not answer"
guest_write_pattern a /dev/vdb $((24 * MiB)) $((128 * 1024)) 0xe6 >/dev/null
b5=$(kb_backup a)
ok [ "$(kb_backup_field "$b5" parent)" = "$b4" ] "online backup after the offline ones has the offline one as parent"
ok [ "$(kb_disk_field "$b5" vdb mode)" = incremental ] "and copies the data disk incrementally"
guest_write_pattern a /dev/vdb $((8 * MiB)) $((48 * MiB)) 0xe7 >/dev/null
stop_vm a
own=$(kb_own_data_bytes "$(kb_backup_file "$b5" vdb)")
ok [ "$own" -ge $((128 * 1024)) -a "$own" -le $((1024 * 1024)) ] "the online incremental holds only what the guest wrote ($own bytes)"
ref5=$KBT_TMPDIR/ref5.qcow2
qemu-img convert -O qcow2 "$(kb_backup_file "$b5" vdb)" "$ref5"
qemu-io -f qcow2 -c "write -P 0xe7 $((8 * MiB)) $((48 * MiB))" "$ref5" >/dev/null
ok qemu-img compare -q "$ref5" "$data" "the online incremental's chain, plus the later write, equals the data disk"

# --bandwidth: the offline copy of 32 MiB at 8 MiB/s lasts about 4 s.
qemu-io -f qcow2 -c "write -P 0xf8 $((16 * MiB)) $((32 * MiB))" "$data" >/dev/null
t0=$(date +%s.%N); b8=$(kb_backup a --bandwidth 8); t1=$(date +%s.%N)
diag "offline incremental of 32 MiB at 8 MiB/s: $(python3 -c "print(f'{$t1 - $t0:.2f}')") s"
ok python3 -c "import sys; sys.exit(0 if $t1 - $t0 >= 0.8 * 32 / 8 else 1)" "an offline incremental with --bandwidth 8 copies at most about 8 MiB/s"
ok qemu-img compare -q "$(kb_backup_file "$b8" vdb)" "$data" "and equals the data disk"

# The copies are on storage before the backup is recorded: qemu-img
# convert (the full copy) never flushes its output, so kboss-backup syncs
# each disk's file after qemu-img exits; the incremental's own writer
# syncs its file itself.
trace=$KBT_TMPDIR/offline.strace
bf=$(strace -f -y -q -s 4096 -o "$trace" -e trace=execve,fsync,fdatasync "$(kb_path kboss-backup)" --json --full "$dom" 2>/dev/null |
	sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n1)
synced_after_convert() { # FILE: a sync of FILE after the qemu-img convert that wrote it exited
	local qexit synced
	read -r qexit synced <<<"$(trace_convert_synced "$trace" "$1")"
	[ -n "$synced" ]
}
ok [ "$(kb_backup_field "$bf" type)" = full ] "an offline full backup under strace: $bf"
ok 'synced_after_convert "$(kb_backup_file "$bf" vdb)" && synced_after_convert "$(kb_backup_file "$bf" vda)"' \
	"each disk's full copy is synced after qemu-img convert exits"
