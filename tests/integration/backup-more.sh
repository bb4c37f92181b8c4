#!/usr/bin/env bash
# Disk-only external snapshots and their block-commit between backups,
# backups-only secondary stores (and one that goes missing), and quiesce
# with and without a guest agent.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 20
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm m || bail_out "cannot define the test VM"
kb_assign m plain
dom=$(vm_domain m)
dir=$(vm_dir m)
data=$(vm_data_disk m)
MiB=1048576
start_vm m && wait_agent m 240 || bail_out "the guest did not answer"

A="0 $MiB 0x71" B="$((4 * MiB)) $MiB 0x72" C="$((8 * MiB)) $MiB 0x73" D="$((12 * MiB)) $MiB 0x74"
guest_write_pattern m /dev/vdb 0 $MiB 0x71
b1=$(kb_backup m --quiesce)
ok [ "$(kb_backup_field "$b1" quiesced)" = true ] "a quiesced backup with a guest agent succeeds"

# A disk-only external snapshot between two backups.
virsh -q snapshot-create-as "$dom" s1 --disk-only --atomic --no-metadata \
	--diskspec vda,file="$dir/root.s1" --diskspec vdb,file="$dir/data.s1" >/dev/null
ok [ $? -eq 0 ] "a disk-only external snapshot is taken"
guest_write_pattern m /dev/vdb $((4 * MiB)) $MiB 0x72
b2=$(kb_backup m)
ok [ "$(kb_backup_field "$b2" type)/$(kb_disk_field "$b2" vdb mode)/$(kb_disk_field "$b2" vda mode)" = incremental/incremental/incremental ] \
	"the backup after the snapshot is incremental on every disk"
# ... and its block-commit before the next one.
virsh -q blockcommit "$dom" vda --active --pivot --wait >/dev/null && virsh -q blockcommit "$dom" vdb --active --pivot --wait >/dev/null
ok [ $? -eq 0 ] "the snapshot is committed back (block-commit, pivot)"
guest_write_pattern m /dev/vdb $((8 * MiB)) $MiB 0x73
b3=$(kb_backup m)
ok [ "$(kb_backup_field "$b3" type)/$(kb_disk_field "$b3" vdb mode)/$(kb_disk_field "$b3" vda mode)" = incremental/incremental/incremental ] \
	"the backup after the block-commit is incremental on every disk"
size=$(qemu-img info -U --output=json "$data" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
ref=$KBT_TMPDIR/ref
kb_ref_image "$ref.1" "$size" "$A"
kb_ref_image "$ref.2" "$size" "$A" "$B"
kb_ref_image "$ref.3" "$size" "$A" "$B" "$C"
ok qemu-img compare -q "$(kb_backup_file "$b1" vdb)" "$ref.1" "backup before the snapshot equals its point in time"
ok qemu-img compare -q "$(kb_backup_file "$b2" vdb)" "$ref.2" "backup on the snapshot overlay equals its point in time"
ok qemu-img compare -q "$(kb_backup_file "$b3" vdb)" "$ref.3" "backup after the commit equals its point in time"

# Two stores, one of them for backups only: new chains go there.
mkdir -p "$KBT_TMPDIR/main" "$KBT_TMPDIR/bkonly"
chmod 0755 "$KBT_TMPDIR/main" "$KBT_TMPDIR/bkonly"
kb kbossctl init-store "$KBT_TMPDIR/main" >/dev/null && kb kbossctl init-store "$KBT_TMPDIR/bkonly" >/dev/null ||
	bail_out "init-store"
cat >> "$KBOSS_CONF" <<CONF

[store:main]
path = $KBT_TMPDIR/main

[store:bk]
path = $KBT_TMPDIR/bkonly
backups_only = true
CONF
guest_write_pattern m /dev/vdb $((12 * MiB)) $MiB 0x74
b4=$(kb_backup m --full)
ok "find '$KBT_TMPDIR/bkonly' -path '*/$b4/vdb.qcow2' | grep -q ." "a new chain lands on the backups-only store"
ok [ "$(kb_backup_field "$b4" store)" = bk ] "and the catalog names its store"
mv "$KBT_TMPDIR/bkonly" "$KBT_TMPDIR/bkonly.away"
out=$(kb kboss-backup "$dom" 2>&1); rc=$?
ok [ $rc -eq 1 ] "with the backups-only store missing, the next backup of its chain fails"
diag "$out"
ok "grep -q \"store 'bk'.*not available\" <<<\"\$out\"" "and says which store is missing"
out=$(kb kboss-backup --full "$dom" 2>&1); rc=$?
ok [ $rc -eq 1 ] "a new chain does not go to another store either: $out"
ok [ -z "$(find "$KBT_TMPDIR/main" "$KB_SECONDARY" -name '*.qcow2' -newer "$KBOSS_CONF" 2>/dev/null)" ] "nothing was written elsewhere"
mv "$KBT_TMPDIR/bkonly.away" "$KBT_TMPDIR/bkonly"
b5=$(kb_backup m)
ok [ "$(kb_backup_field "$b5" parent)" = "$b4" ] "with the store back, the chain goes on"
stop_vm m
kb_ref_image "$ref.4" "$size" "$A" "$B" "$C" "$D"
ok qemu-img compare -q "$(find "$KBT_TMPDIR/bkonly" -path "*/$b5/vdb.qcow2")" "$ref.4" "and its content is right"

# Quiesce without a guest agent fails cleanly.
start_vm m && wait_agent m 240
# The agent stops answering (stopped, so init does not respawn it).
guest_exec m /bin/sh -c '(sleep 2; kill -STOP $(pidof qemu-ga)) </dev/null >/dev/null 2>&1 &' >/dev/null 2>&1
sleep 4
t0=$(date +%s)
out=$(kb kboss-backup --quiesce "$dom" 2>&1); rc=$?
ok [ $rc -eq 1 ] "a quiesced backup without a responding agent fails ($(($(date +%s) - t0)) s)"
diag "$out"
ok "grep -q 'quiesce' <<<\"\$out\"" "and says it could not quiesce"
ok [ "$(vm_state m)" = running ] "the VM keeps running, not paused"
ok "[ \"\$(kb_listed_backups | grep -c .)\" -eq 5 ]" "no backup was added"
