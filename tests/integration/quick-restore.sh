#!/usr/bin/env bash
# Quick restore: the VM runs from overlays backed by the backup while its
# disks are consolidated. The agent answers before consolidation ends, the
# guest's writes during consolidation are kept, and at the end the disks
# have no backing file and equal the backup plus those writes. The same
# when the guest powers itself off halfway: consolidation ends offline.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 23
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
kb_offering quick allow_quick_restore=true
make_test_vm q 256 || bail_out "cannot define the test VM"
kb_assign q plain
dom=$(vm_domain q)
root=$(vm_disk q)
data=$(vm_data_disk q)
MiB=1048576

# A backup of the stopped VM, and copies of its disks as they were.
qemu-io -f qcow2 -c "write -P 0x5a 0 160M" "$data" >/dev/null
b_plain=$(kb_backup q)
out=$(kb kboss-restore --quick "$b_plain" 2>&1); rc=$?
ok "[ $rc -eq 1 ] && grep -q 'does not allow quick restore' <<<\"\$out\"" "quick restore is refused when the offering does not allow it"
kb_assign q quick
b=$(kb_backup q --full)
cp --sparse=always "$root" "$KBT_TMPDIR/root.ref"
cp --sparse=always "$data" "$KBT_TMPDIR/data.ref"
qemu-io -f qcow2 -c "write -P 0xee 0 64M" "$data" >/dev/null   # the damage to undo

# 1. Consolidation while the guest runs, throttled so that it lasts.
kb kboss-restore --quick --bandwidth 8 "$b" > "$KBT_TMPDIR/quick1.log" 2>&1 &
qpid=$!
cleanup_push "kill $qpid 2>/dev/null"
t0=$(date +%s)
wait_running() { for i in $(seq 1 300); do [ "$(vm_state q)" = running ] && return 0; sleep 0.2; done; return 1; }
wait_running && wait_agent q 240
ok [ $? -eq 0 ] "the guest agent answers after a quick restore ($(($(date +%s) - t0)) s)"
ok kill -0 $qpid "consolidation is still running when the guest answers"
ok grep -q "^state = Consolidating" "$(ls "$KB_SECONDARY"/kboss/vms/*/vm.*.ini | sort | tail -n1)" "the catalog says Consolidating"
guest_write_pattern q /dev/vdb $((200 * MiB)) $MiB 0x42
ok [ $? -eq 0 ] "the guest writes to its disk during consolidation"
wait $qpid
rc=$?
diag "$(cat "$KBT_TMPDIR/quick1.log")"
ok [ $rc -eq 0 ] "consolidation completes (exit $rc)"
ok grep -q "waiting for the guest to boot.*before consolidating" "$KBT_TMPDIR/quick1.log" \
  "consolidation waits for the guest to boot ..."
ok grep -q "the guest agent answers; consolidating" "$KBT_TMPDIR/quick1.log" "... and starts when its agent answers"
ok [ -z "$(qemu-img info -U --output=json "$data" | grep backing-filename)" ] "the data disk has no backing file any more"
ok [ -z "$(qemu-img info -U --output=json "$root" | grep backing-filename)" ] "nor has the root disk"
stop_vm q
cp --sparse=always "$KBT_TMPDIR/data.ref" "$KBT_TMPDIR/data.expect"
qemu-io -f qcow2 -c "write -P 0x42 $((200 * MiB)) $MiB" "$KBT_TMPDIR/data.expect" >/dev/null
ok qemu-img compare -q "$data" "$KBT_TMPDIR/data.expect" "the data disk equals the backup plus the guest's writes"
next=$(kb_backup q)
ok [ "$(kb_backup_field "$next" type)" = full ] "the next backup after a quick restore is full"

# 2. The guest powers itself off in the middle of consolidation.
qemu-io -f qcow2 -c "write -P 0xee 0 64M" "$data" >/dev/null
kb kboss-restore --quick --bandwidth 4 "$b" > "$KBT_TMPDIR/quick2.log" 2>&1 &
qpid=$!
wait_running && wait_agent q 240
guest_exec q /bin/sh -c 'sync; poweroff -f' >/dev/null 2>&1
for i in $(seq 1 60); do [ "$(vm_state q)" = "shut off" ] && break; sleep 1; done
ok [ "$(vm_state q)" = "shut off" ] "the guest powered itself off during consolidation"
wait $qpid
ok [ $? -eq 0 ] "consolidation still completes, offline: $(tail -n2 "$KBT_TMPDIR/quick2.log" | tr '\n' ' ')"
ok [ -z "$(qemu-img info --output=json "$data" | grep backing-filename)" ] "the data disk has no backing file"
ok qemu-img compare -q "$data" "$KBT_TMPDIR/data.ref" "and equals the backup"
ok qemu-img check -q "$root" "the root disk is a sound qcow2"

# 3. Someone cancels the consolidation job (virsh blockjob --abort): kboss-restore
#    says so and how to go on, and --consolidate finishes it while the guest runs.
qemu-io -f qcow2 -c "write -P 0xee 0 64M" "$data" >/dev/null
kb kboss-restore --quick --bandwidth 1 "$b" > "$KBT_TMPDIR/quick3.log" 2>&1 &
qpid=$!
wait_running
# Consolidation starts only once the guest's agent answers, which on a loaded
# TCG host can take minutes: wait for a block job on either disk, as long as
# kboss-restore itself waits for the boot, and abort the one found.
job_disk=
for i in $(seq 1 600); do
  for d in vda vdb; do
    virsh -q blockjob "$dom" $d 2>/dev/null | grep -q . && { job_disk=$d; break 2; }
  done
  kill -0 $qpid 2>/dev/null || break
  sleep 0.5
done
diag "aborting the consolidation job of disk ${job_disk:-(none found)} after $((i / 2)) s"
[ -n "$job_disk" ] && virsh -q blockjob "$dom" $job_disk --abort >/dev/null 2>&1
wait $qpid
rc=$?
ok "[ $rc -ne 0 ] && grep -q 'was the job cancelled' '$KBT_TMPDIR/quick3.log'" \
  "a cancelled consolidation job is reported (exit $rc): $(tail -n1 "$KBT_TMPDIR/quick3.log")"
ok [ "$(vm_state q)" = running ] "the guest keeps running"
strace -f -y -q -o "$KBT_TMPDIR/quick4.strace" -e trace=fsync,fdatasync \
  "$(kb_prog kboss-restore)" --consolidate "$dom" > "$KBT_TMPDIR/quick4.log" 2>&1
ok [ $? -eq 0 ] "kboss-restore --consolidate finishes it: $(tail -n1 "$KBT_TMPDIR/quick4.log")"
# qemu leaves the header it rewrites at the end of the pull in the page
# cache; kboss-restore syncs each disk before it releases the backup.
ok "grep -q 'fsync([0-9]*<$data>)' '$KBT_TMPDIR/quick4.strace' && grep -q 'fsync([0-9]*<$root>)' '$KBT_TMPDIR/quick4.strace'" \
  "kboss-restore syncs both consolidated disks ($(grep -c 'fsync([0-9]*<.*\.qcow2>)' "$KBT_TMPDIR/quick4.strace") fsyncs of a disk)"
ok [ -z "$(qemu-img info -U --output=json "$data" | grep backing-filename)$(qemu-img info -U --output=json "$root" | grep backing-filename)" ] \
  "neither disk has a backing file"
stop_vm q
ok qemu-img compare -q "$data" "$KBT_TMPDIR/data.ref" "and the data disk equals the backup"
