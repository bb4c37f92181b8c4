#!/usr/bin/env bash
# Restores: a full, an incremental in the middle of its chain and an
# isolated backup each give back exactly that point in time; --disk and
# --as touch only what they should; a killed restore leaves the old disks;
# the restored VM boots to its agent; the next backup is full.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 24
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm s 256 || bail_out "cannot define the test VM"
kb_assign s plain
dom=$(vm_domain s)
root=$(vm_disk s)
data=$(vm_data_disk s)
snap() { cp --sparse=always "$root" "$KBT_TMPDIR/root.$1"; cp --sparse=always "$data" "$KBT_TMPDIR/data.$1"; }
same() { qemu-img compare -q "$root" "$KBT_TMPDIR/root.$1" && qemu-img compare -q "$data" "$KBT_TMPDIR/data.$1"; }

qemu-io -f qcow2 -c "write -P 0x11 0 4M" "$data" >/dev/null
b1=$(kb_backup s); snap 1
qemu-io -f qcow2 -c "write -P 0x22 1M 1M" "$data" >/dev/null
b2=$(kb_backup s); snap 2
qemu-io -f qcow2 -c "write -P 0x33 8M 2M" -c "write -z 0 512k" "$data" >/dev/null
b3=$(kb_backup s); snap 3
qemu-io -f qcow2 -c "write -P 0x44 16M 1M" "$data" >/dev/null
bi=$(kb_backup s --isolated); snap i
qemu-io -f qcow2 -c "write -P 0x55 0 32M" "$data" >/dev/null
snap now

ok kb kboss-restore "$b2" "restore of incremental $b2 (middle of the chain) succeeds"
ok same 2 "both disks equal backup point 2 byte for byte"
ok kb kboss-restore "$b1" "restore of the full $b1 succeeds"
ok same 1 "both disks equal backup point 1"
ok kb kboss-restore "$bi" "restore of the isolated backup succeeds"
ok same i "both disks equal the isolated backup's point"
ok kb kboss-restore "$b3" "restore of the chain's last backup succeeds"
ok same 3 "both disks equal backup point 3"
alloc=$(qemu-img map --output=json "$data" | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
ok [ "$alloc" -le $((12 * 1048576)) ] "the restored data disk stays sparse ($alloc bytes allocated of 256 MiB)"

next=$(kb_backup s)
ok [ "$(kb_backup_field "$next" type)" = full ] "after a restore the next backup is full"

# --disk restores one disk and leaves the other alone.
qemu-io -f qcow2 -c "write -P 0x66 0 1M" "$data" >/dev/null
qemu-io -f qcow2 -c "write -P 0x66 100M 1M" "$root" >/dev/null
cp --sparse=always "$root" "$KBT_TMPDIR/root.keep"
ok kb kboss-restore --disk vdb "$b2" "restore of vdb alone succeeds"
ok qemu-img compare -q "$data" "$KBT_TMPDIR/data.2" "vdb equals backup point 2"
ok qemu-img compare -q "$root" "$KBT_TMPDIR/root.keep" "vda was left as it was"

# The restored disk is on storage before it replaces the VM's disk
# (qemu-img convert itself never flushes its output), and the swap is
# made durable by a sync of the folder after it.
trace=$KBT_TMPDIR/restore.strace
KBOSS_BINDIR=$KB_BINDIR strace -f -y -q -s 4096 -o "$trace" -e trace=execve,fsync,fdatasync,rename,renameat2 \
	"$(kb_prog kboss-restore)" --quiet --disk vdb "$b3" >/dev/null 2>&1
tmpname=$(basename "$data").kboss-restore.tmp
# Line numbers in the trace: qemu-img convert's exit, then the first sync
# of the temporary file after it, then the swap.
read -r qexit synced <<<"$(trace_convert_synced "$trace" "$data.kboss-restore.tmp")"
swapped=$(grep -n "rename[a-z0-9]*(.*\"[^\"]*/$tmpname\"" "$trace" | head -n1 | cut -d: -f1)
dirsync=$(grep -n "fsync([0-9]*<$(dirname "$data")>)" "$trace" | tail -n1 | cut -d: -f1)
ok '[ -n "$synced" ] && [ -n "$swapped" ] && [ "$synced" -lt "$swapped" ]' \
	"a restored disk is fsynced before it is swapped in (qemu-img exits at line ${qexit:-none}, fsync at ${synced:-none}, swap at ${swapped:-none} of the trace)"
ok '[ -n "$dirsync" ] && [ "$dirsync" -gt "$swapped" ] && qemu-img compare -q "$data" "$KBT_TMPDIR/data.3"' \
	"its folder is fsynced after the swap (line ${dirsync:-none}) and vdb equals backup point 3"

# A restore killed midway leaves the old disks intact.
qemu-io -f qcow2 -c "write -P 0x77 0 200M" "$data" >/dev/null
big=$(kb_backup s --full)
qemu-io -f qcow2 -c "write -P 0x78 0 1M" "$data" >/dev/null
snap before-kill
KBOSS_BINDIR=$KB_BINDIR "$(kb_prog kboss-restore)" "$big" >/dev/null 2>&1 &
pid=$!
for i in $(seq 1 100); do ls "$(dirname "$data")"/*.kboss-restore.tmp >/dev/null 2>&1 && break; sleep 0.05; done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
for i in $(seq 1 50); do pgrep -f "qemu-img convert.*$(basename "$data")" >/dev/null || break; sleep 0.1; done
ok '! pgrep -f "qemu-img convert.*$(basename "$data")" >/dev/null' "after kill -9 of a restore its qemu-img convert is gone within 5 s"
pkill -9 -f "qemu-img convert.*$(basename "$data")" 2>/dev/null
ok same before-kill "after kill -9 of a restore the old disks are intact"
ok qemu-img check -q "$data" "and the data disk is a sound qcow2"
ok kb kboss-restore "$big" "the next restore succeeds"
ok [ -z "$(ls "$(dirname "$data")"/*.tmp 2>/dev/null)" ] "and leaves no temporary file"

# --as defines a new VM and leaves the original alone.
snap orig
new=$(vm_domain s2)
cleanup_push "virsh -q undefine '$new' --checkpoints-metadata >/dev/null 2>&1; rm -f '$(dirname "$root")/$new'-*.qcow2"
ok kb kboss-restore --as "$new" "$b2" "restore into a new VM succeeds"
ok qemu-img compare -q "$(dirname "$root")/$new-vdb.qcow2" "$KBT_TMPDIR/data.2" "the new VM's data disk equals backup point 2"
ok same orig "the original VM was not touched"

# The restored VM boots from its restored disk.
kb kboss-restore "$b3" >/dev/null
start_vm s && wait_agent s 180
ok [ $? -eq 0 ] "the restored VM boots to its guest agent"
stop_vm s
