#!/usr/bin/env bash
# kbossctl on a real catalog: assign, backups (table and --json), delete
# with its refusals (a backup others depend on, a backup in use by a quick
# restore), deleting a chain's newest backup ends the chain, finish-chain,
# offerings create/delete. Backups of a stopped VM: no boot needed.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"
. "$(dirname "$0")/../lib/ops.sh"

plan 31
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm a 16 || bail_out "cannot define the test VM"
dom=$(vm_domain a)
data=$(vm_data_disk a)
MiB=$((1024 * 1024))
out=$KBT_TMPDIR/out

# assign
ok '! kb kbossctl assign "$dom" nosuch 2>"$out"' "assign refuses an offering that does not exist"
ok 'grep -q "no offering \"nosuch\"" "$out"' "... and says so"
ok kb kbossctl assign "$dom" plain "assign VM plain"
ok 'grep -qx "offering = plain" "$KB_ROOT/etc/vms.d/$dom.conf"' "vms.d/VM.conf names the offering"

qemu-io -f qcow2 -c "write -P 0x11 0 $MiB" "$data" >/dev/null
b1=$(kb_backup a)
qemu-io -f qcow2 -c "write -P 0x22 $MiB $MiB" "$data" >/dev/null
b2=$(kb_backup a)
qemu-io -f qcow2 -c "write -P 0x33 $((2 * MiB)) $MiB" "$data" >/dev/null
b3=$(kb_backup a)
iso=$(kb_backup a --isolated)
ok [ -n "$b1" -a -n "$b2" -a -n "$b3" -a -n "$iso" ] "four backups: $b1 $b2 $b3 $iso"

# backups: table
kb kbossctl backups > "$out"
diag "$(cat "$out")"
ok 'head -n1 "$out" | grep -q "^ID .*VM .*CHAIN .*PARENT .*TYPE .*ISOLATED .*STATE .*CREATED .*SIZE .*DISKS .*COMPRESSED .*VALIDATED"' \
	"backups prints a table with every column"
ok '[ "$(grep -c "$dom" "$out")" -eq 4 ]' "the table lists the four backups"
ok 'grep "^$b2 " "$out" | grep -q " $b1 .*incremental .*no .*Ready "' "b2: parent b1, incremental, not isolated, Ready"
ok 'grep "^$iso " "$out" | grep -q " full .*yes .*Ready .*vda=.*vdb="' "the isolated backup: full, isolated, per-disk sizes"
# --json, --vm
kb kbossctl backups --json --vm "$dom" > "$out"
ok 'python3 -c "
import json, sys
b = json.load(open(sys.argv[1]))
ids = [x[\"backup\"][\"id\"] for x in b]
assert ids == sorted(sys.argv[2:]) or sorted(ids) == sorted(sys.argv[2:]), ids
assert all(set(x[\"disks\"]) == {\"vda\", \"vdb\"} for x in b)
" "$out" "$b1" "$b2" "$b3" "$iso"' "backups --json --vm VM: the four records, with disks"
ok '! kb kbossctl backups --vm nosuchvm 2>"$out" && grep -q "not in the catalog" "$out"' \
	"backups --vm refuses an unknown VM"

# delete: refusals
ok '! kb kbossctl delete "$b2" 2>"$out"' "delete refuses a backup that a later one depends on"
ok 'grep -q "1 later backup(s) of its chain depend on it ($b3); use --with-descendants" "$out"' \
	"... naming the dependent backup and --with-descendants"
ok '[ -f "$(kb_backup_file "$b2" vdb)" ]' "... and its files stay"
chain=$(kb_backup_field "$b3" chain)
ops_doc_set "$(dirname "$(ops_backup_record_file "$b3")")" backup backup in_use_by "$(virsh -q domuuid "$dom")"
ok '! kb kbossctl delete "$b3" 2>"$out"' "delete refuses a backup in use by a quick restore"
ok 'grep -q "in use by a quick restore" "$out"' "... and says so"
ops_doc_set "$(dirname "$(ops_backup_record_file "$b3")")" backup backup in_use_by ""

# delete the chain's newest backup: the chain ends, the next backup is full
f3=$(kb_backup_file "$b3" vdb)
ok kb kbossctl delete "$b3" "delete the chain's newest backup"
ok '[ ! -e "$f3" ] && [ ! -e "$(dirname "$f3")" ]' "its data folder is gone from the store"
ok '! kb kbossctl backups | grep -q "^$b3 "' "it is no longer listed"
b4=$(kb_backup a)
ok [ "$(kb_backup_field "$b4" type)" = full ] "the next backup is full: the chain ended with its newest backup"
ok [ "$(kb_backup_field "$b4" chain)" != "$chain" ] "... in a new chain"

# delete with descendants: the whole old chain goes
ok kb kbossctl delete "$b1" --with-descendants "delete b1 --with-descendants"
ok '! kb kbossctl backups | grep -qE "^($b1|$b2) "' "b1 and b2 are gone"
ok '[ ! -e "$(ops_vm_dir a)/chains/$chain" ]' "the empty chain left the catalog"
ok '[ -f "$(kb_backup_file "$b4" vdb)" ] && [ -f "$(kb_backup_file "$iso" vdb)" ]' "other backups are untouched"
ok '! kb kbossctl delete 20000101T000000Z-abcdef 2>"$out" && grep -q "no such backup" "$out"' "delete of an unknown id fails"

# finish-chain
ok kb kbossctl finish-chain "$dom" "finish-chain"
b5=$(kb_backup a)
ok [ "$(kb_backup_field "$b5" type)" = full ] "after finish-chain the next backup is full"

# offerings create / delete
ok '! kb kbossctl offerings create gold compress=maybe 2>"$out" && grep -q "compress" "$out" && [ ! -e "$KB_ROOT/etc/offerings.d/gold.conf" ]' \
	"offerings create refuses a bad field value and leaves no file"
ok 'kb kbossctl offerings create gold allow_user_driven_backups=true compress=true compression_library=zlib allow_extract_file=true >/dev/null &&
    kb kbossctl offerings gold | grep -q "compression_library *zlib"' "offerings create writes a valid offering"
ok '! kb kbossctl offerings delete plain 2>"$out" && grep -q "assigned to VM(s) $dom" "$out"' \
	"offerings delete refuses an offering a VM is assigned to"
