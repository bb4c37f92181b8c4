#!/usr/bin/env bash
# A chain of backups of a real guest: full, incremental while running,
# incremental of the stopped VM after offline writes, incremental again
# after a restart. Each backup's chain, read with qemu-img, must equal the
# data disk as it was at that point, and each incremental's own file must
# hold only about what was written since its parent.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 18
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm a || bail_out "cannot define the test VM"
kb_assign a plain
dom=$(vm_domain a)
data=$(vm_data_disk a)
MiB=$((1024 * 1024))

start_vm a && wait_agent a 180 || bail_out "the guest did not answer"

guest_write_pattern a /dev/vdb 0 $MiB 0xa1
b1=$(kb_backup a)
ok [ -n "$b1" ] "full backup of the running VM: $b1"
ok [ "$(kb_backup_field "$b1" type)" = full ] "the first backup is full"

guest_write_pattern a /dev/vdb $((4 * MiB)) $((512 * 1024)) 0xb2
b2=$(kb_backup a)
ok [ "$(kb_backup_field "$b2" type)" = incremental ] "second backup (running) is incremental: $b2"
ok [ "$(kb_backup_field "$b2" parent)" = "$b1" ] "its parent is the full"
# Targets of a running VM are laid out by kboss and filled by qemu.
ok 'qemu-img check -q "$(kb_backup_file "$b1" vdb)" && qemu-img check -q "$(kb_backup_file "$b2" vdb)"' \
	"qemu-img check finds the running VM's full and incremental images clean"

stop_vm a || bail_out "the guest did not stop"
qemu-io -f qcow2 -c "write -P 0xc3 $((8 * MiB)) $((256 * 1024))" "$data" >/dev/null
b3=$(kb_backup a)
ok [ "$(kb_backup_field "$b3" type)" = incremental ] "backup of the stopped VM after offline writes is incremental: $b3"
ok [ "$(vm_state a)" = "shut off" ] "the stopped VM is stopped again after its backup"
ok qemu-img compare -q "$(kb_backup_file "$b3" vda)" "$(vm_disk a)" "root disk of the stopped VM equals its backup"
ok qemu-img compare -q "$(kb_backup_file "$b3" vdb)" "$data" "data disk of the stopped VM equals its backup"

start_vm a && wait_agent a 180 || bail_out "the guest did not answer after the restart"
guest_write_pattern a /dev/vdb $((12 * MiB)) $((128 * 1024)) 0xd4
b4=$(kb_backup a)
ok [ "$(kb_backup_field "$b4" parent)" = "$b3" ] "backup after the restart is incremental on the offline one: $b4"
stop_vm a

# Every point in time, against a reference built on the host.
ref=$KBT_TMPDIR/ref.qcow2
A="0 $MiB 0xa1" B="$((4 * MiB)) $((512 * 1024)) 0xb2" C="$((8 * MiB)) $((256 * 1024)) 0xc3" D="$((12 * MiB)) $((128 * 1024)) 0xd4"
size=$(qemu-img info --output=json "$data" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
kb_ref_image "$ref.1" "$size" "$A"
kb_ref_image "$ref.2" "$size" "$A" "$B"
kb_ref_image "$ref.3" "$size" "$A" "$B" "$C"
kb_ref_image "$ref.4" "$size" "$A" "$B" "$C" "$D"
ok qemu-img compare -q "$(kb_backup_file "$b1" vdb)" "$ref.1" "full backup = data disk at point 1 (A)"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$ref.2" "incremental 2 = point 2 (A+B)"
ok qemu-img compare -q "$(kb_backup_file "$b3" vdb)" "$ref.3" "incremental 3 = point 3 (A+B+C)"
ok qemu-img compare -q "$(kb_backup_file "$b4" vdb)" "$ref.4" "incremental 4 = point 4 (A+B+C+D)"
ok qemu-img compare -q "$(kb_backup_file "$b4" vdb)" "$data" "the last backup equals the data disk now"

# An incremental's own file holds about what changed since its parent.
own2=$(kb_own_data_bytes "$(kb_backup_file "$b2" vdb)")
own3=$(kb_own_data_bytes "$(kb_backup_file "$b3" vdb)")
own4=$(kb_own_data_bytes "$(kb_backup_file "$b4" vdb)")
diag "own data in incrementals of vdb: $own2 $own3 $own4 bytes"
ok [ "$own2" -ge $((512 * 1024)) -a "$own2" -le $((1024 * 1024)) ] "incremental 2 holds ~512 KiB of vdb ($own2)"
ok [ "$own3" -ge $((256 * 1024)) -a "$own3" -le $((512 * 1024)) ] "incremental 3 holds ~256 KiB of vdb ($own3)"
ok [ "$own4" -ge $((128 * 1024)) -a "$own4" -le $((512 * 1024)) ] "incremental 4 holds ~128 KiB of vdb ($own4)"
