#!/usr/bin/env bash
# Faults during backups: secondary storage full, kill -9 mid-copy,
# libvirt's checkpoint metadata wiped, a bitmap removed, bitmaps left
# in-use by a crashed qemu. After each the VM is in its prior run state and
# not frozen, no broken backup is listed, and the next backup succeeds with
# the right content.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 28
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm f 1024 || bail_out "cannot define the test VM"
kb_assign f plain
dom=$(vm_domain f)
root=$(vm_disk f)
data=$(vm_data_disk f)
MiB=1048576
qemu-io -f qcow2 -c "write -P 0x61 0 900M" "$data" >/dev/null

# Secondary storage is a small filesystem.
mount -t tmpfs -o size=48M,mode=0755 tmpfs "$KB_SECONDARY" || bail_out "cannot mount a tmpfs"
cleanup_push "umount -l '$KB_SECONDARY'"
start_vm f && wait_agent f 240 || bail_out "the guest did not answer"

out=$(kb kboss-backup "$dom" 2>&1); rc=$?
ok [ $rc -eq 1 ] "a backup onto full secondary storage fails"
diag "$out"
ok "grep -qi 'space' <<<\"\$out\"" "and says the storage is full"
ok [ "$(vm_state f)" = running ] "the VM is still running"
ok kb_guest_thawed f "and not frozen"
ok [ -z "$(kb_listed_backups)" ] "no backup is listed"
ok [ -z "$(find "$KB_SECONDARY" -name '*.qcow2')" ] "no partial disk file is left on the store"
ok [ "$(virsh checkpoint-list --name "$dom" | grep -c .)" -eq 0 ] "no checkpoint is left in libvirt"

mount -o remount,size=4G "$KB_SECONDARY"
b1=$(kb_backup f)
ok [ -n "$b1" ] "with room again the next backup succeeds ($b1)"

# kill -9 in the middle of the copy (the full of a 900 MiB disk).
kb kboss-backup --full "$dom" >/dev/null 2>&1 &
for i in $(seq 1 400); do
	ls "$KB_SECONDARY"/kboss/vms/*/chains/*/*/vdb.qcow2 2>/dev/null | grep -qv "$b1" && break
	sleep 0.01
done
pkill -9 -f "kboss-backup --full $dom"
running=$(virsh domjobinfo "$dom" 2>/dev/null | grep -c 'Operation: *Backup')
wait
ok [ "$running" -eq 1 ] "kboss-backup was killed while its job was copying"
ok [ "$(vm_state f)" = running ] "after kill -9 mid-copy the VM is still running"
ok kb_guest_thawed f "and not frozen"
ok "[ \"\$(kb_listed_backups)\" = '$b1' ]" "the killed backup is not listed"
guest_write_pattern f /dev/vdb $((950 * MiB)) $MiB 0x62
b2=$(kb_backup f)
ok [ "$(kb_backup_field "$b2" parent)" = "$b1" ] "the next backup succeeds, incremental on the last good one"
ok [ "$(find "$KB_SECONDARY" -name '*.qcow2' | wc -l)" -eq 4 ] "the killed backup's files are gone"
ok [ "$(virsh checkpoint-list --name "$dom" | grep -c .)" -eq 1 ] "one checkpoint remains"

# libvirt forgets its checkpoints; the bitmaps stay in the qcow2 files.
for cp in $(virsh checkpoint-list --name "$dom"); do virsh -q checkpoint-delete "$dom" "$cp" --metadata >/dev/null; done
guest_write_pattern f /dev/vdb $((960 * MiB)) $MiB 0x63
b3=$(kb_backup f)
ok [ "$(kb_backup_field "$b3" type)/$(kb_disk_field "$b3" vdb mode)/$(kb_disk_field "$b3" vda mode)" = incremental/incremental/incremental ] \
	"after libvirt lost its checkpoint metadata the next backup is still incremental"
stop_vm f
ok qemu-img compare -q "$(kb_backup_file "$b3" vdb)" "$data" "and its content is right"

# A bitmap removed from one disk: that disk gets a full copy, the other stays incremental.
cp=$(virsh checkpoint-list --name "$dom" | head -n1)
qemu-img bitmap --remove "$data" "$cp"
qemu-io -f qcow2 -c "write -P 0x64 $((970 * MiB)) $MiB" "$data" >/dev/null
b4=$(kb_backup f)
ok [ "$(kb_disk_field "$b4" vdb mode)/$(kb_disk_field "$b4" vda mode)" = full/incremental ] "a disk whose bitmap was removed is copied in full, the other incrementally"
ok qemu-img compare -q "$(kb_backup_file "$b4" vdb)" "$data" "data disk content right"
ok qemu-img compare -q "$(kb_backup_file "$b4" vda)" "$root" "root disk content right"
ok [ "$(vm_state f)" = "shut off" ] "the stopped VM is stopped again"

# qemu killed: the bitmaps stay marked in-use in the images.
start_vm f
for i in $(seq 1 100); do [ "$(vm_state f)" = running ] && break; sleep 0.1; done
pkill -9 -f "guest=$dom," 
for i in $(seq 1 100); do [ "$(vm_state f)" = "shut off" ] && break; sleep 0.1; done
ok "qemu-img info --output=json '$data' | grep -q in-use" "after qemu was killed the bitmap is marked in-use"
qemu-io -f qcow2 -c "write -P 0x65 $((980 * MiB)) $MiB" "$data" >/dev/null
b5=$(kb_backup f)
ok [ "$(kb_disk_field "$b5" vdb mode)" = full ] "an in-use bitmap is not trusted: the disk is copied in full"
ok qemu-img compare -q "$(kb_backup_file "$b5" vdb)" "$data" "content right"
qemu-io -f qcow2 -c "write -P 0x66 $((990 * MiB)) $MiB" "$data" >/dev/null
b6=$(kb_backup f)
ok [ "$(kb_disk_field "$b6" vdb mode)/$(kb_disk_field "$b6" vda mode)" = incremental/incremental ] "the backup after that is incremental again"
ok qemu-img compare -q "$(kb_backup_file "$b6" vdb)" "$data" "content right"
ok "! qemu-img info --output=json '$data' | grep -q in-use" "no in-use bitmap is left on the disk"
ok [ "$(qemu-img info --output=json "$data" | grep -c '"name"')" -eq 1 ] "exactly one bitmap is left on the disk"
