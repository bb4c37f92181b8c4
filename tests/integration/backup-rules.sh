#!/usr/bin/env bash
# Chain rules on a stopped VM (backed up offline, qemu never starts;
# changes are written offline with qemu-io): chain size, the
# offering's override, --finish-chain, --isolated, refusals, and that
# checkpoints and bitmaps do not pile up.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 24
start_libvirt || bail_out "libvirtd"
kb_conf_init 3
make_test_vm r || bail_out "cannot define the test VM"
kb_assign r plain
dom=$(vm_domain r)
data=$(vm_data_disk r)
n=0
write() { n=$((n + 1)); qemu-io -f qcow2 -c "write -P $((n + 16)) $((n * 1048576)) 65536" "$data" >/dev/null; }
chain_of() { kb_backup_field "$1" chain; }

write; b1=$(kb_backup r)
write; b2=$(kb_backup r)
write; b3=$(kb_backup r)
write; b4=$(kb_backup r)
ok [ "$(kb_backup_field "$b1" type)" = full ] "backup 1 is full"
ok [ "$(kb_backup_field "$b3" type)/$(kb_backup_field "$b3" parent)" = "incremental/$b2" ] "backup 3 is incremental on backup 2"
ok [ "$(chain_of "$b3")" = "$(chain_of "$b1")" ] "backups 1-3 share a chain"
ok [ "$(kb_backup_field "$b4" type)" = full ] "chain size 3: the fourth backup is full"
ok [ "$(chain_of "$b4")" != "$(chain_of "$b1")" ] "and opens a new chain"
ok qemu-img compare -q "$(kb_backup_file "$b4" vdb)" "$data" "the new full equals the disk"

write; b5=$(kb_backup r)
ok [ "$(kb_backup_field "$b5" parent)" = "$b4" ] "the next backup continues the new chain"
ok kb kboss-backup --finish-chain "$dom" "--finish-chain succeeds"
write; b6=$(kb_backup r)
ok [ "$(kb_backup_field "$b6" type)" = full ] "after --finish-chain the next backup is full"

write; b7=$(kb_backup r --isolated)
ok [ "$(kb_backup_field "$b7" type)/$(kb_backup_field "$b7" isolated)" = "full/true" ] "--isolated takes a full, isolated backup"
ok [ "$(chain_of "$b7")" != "$(chain_of "$b6")" ] "which belongs to no chain of the VM"
cp "$data" "$KBT_TMPDIR/at-b7.qcow2"
write; b8=$(kb_backup r)
ok [ "$(kb_backup_field "$b8" type)/$(kb_backup_field "$b8" parent)" = "incremental/$b6" ] "the chain goes on after the isolated backup"
ok qemu-img compare -q "$(kb_backup_file "$b8" vdb)" "$data" "the incremental after it equals the disk"
ok qemu-img compare -q "$(kb_backup_file "$b7" vdb)" "$KBT_TMPDIR/at-b7.qcow2" "the isolated backup equals the disk at its time"
ok [ -z "$(qemu-img info --output=json "$(kb_backup_file "$b7" vdb)" | grep backing-filename)" ] "the isolated backup has no backing file"

# Only the newest checkpoint survives; no stray bitmaps on the disks.
ok [ "$(virsh checkpoint-list --name "$dom" | grep -c .)" -eq 1 ] "libvirt keeps one checkpoint"
nbm=$(qemu-img info --output=json "$data" | grep -c '"name"')
ok [ "$nbm" -eq 1 ] "the data disk carries one bitmap ($nbm)"

# The offering's chain size overrides backup.chain.size.
kb_offering two backup_chain_size=2
kb_assign r two
kb kboss-backup --finish-chain "$dom" >/dev/null
write; c1=$(kb_backup r); write; c2=$(kb_backup r); write; c3=$(kb_backup r)
ok [ "$(kb_backup_field "$c2" type)/$(kb_backup_field "$c3" type)" = "incremental/full" ] "an offering's backup_chain_size 2 ends chains after two backups"

# Refusals, each with a message that names the problem.
kb_offering nouser allow_user_driven_backups=false
kb_assign r nouser
out=$(kb kboss-backup "$dom" 2>&1); rc=$?
ok [ $rc -eq 1 ] "an offering without user driven backups is refused"
ok grep -q "allow_user_driven_backups" <<<"$out" "and the message says why: $out"
rm -f "$KB_ROOT/etc/vms.d/$dom.conf"
out=$(kb kboss-backup "$dom" 2>&1); rc=$?
ok "[ $rc -eq 1 ] && grep -q 'no backup offering' <<<\"\$out\"" "a VM without an offering is refused: $out"
kb_assign r plain
qemu-img create -q -f raw "$KBT_TMPDIR/blk.img" 16M
losetup -f --show "$KBT_TMPDIR/blk.img" > "$KBT_TMPDIR/loopdev" 2>/dev/null
loop=$(cat "$KBT_TMPDIR/loopdev" 2>/dev/null)
if [ -n "$loop" ]; then
	cleanup_push "losetup -d $loop"
	virsh -q attach-disk "$dom" "$loop" vdc --sourcetype block --config >/dev/null
	out=$(kb kboss-backup "$dom" 2>&1); rc=$?
	ok "[ $rc -eq 1 ] && grep -q 'vdc.*block' <<<\"\$out\"" "a block-device disk is refused by name: $out"
	virsh -q detach-disk "$dom" vdc --config >/dev/null
else
	virsh -q attach-disk "$dom" "$KBT_TMPDIR/blk.img" vdc --sourcetype block --config >/dev/null
	out=$(kb kboss-backup "$dom" 2>&1); rc=$?
	ok "[ $rc -eq 1 ] && grep -q 'vdc.*block' <<<\"\$out\"" "a block-device disk is refused by name: $out"
	virsh -q detach-disk "$dom" vdc --config >/dev/null
fi
ok [ "$(vm_state r)" = "shut off" ] "the VM is still stopped after refusals"
sed -i 's/^backup.framework.enabled = true/backup.framework.enabled = false/' "$KBOSS_CONF"
out=$(kb kboss-backup "$dom" 2>&1); rc=$?
ok "[ $rc -eq 1 ] && grep -q framework <<<\"\$out\"" "with the framework disabled nothing is backed up: $out"
