#!/usr/bin/env bash
# Merge forward ("synthetic full") in kbossctl prune, on real backups of a
# test VM with two disks: a chain b1 (full) <- b2 <- b3 <- b4 with data
# written between backups and keep_last = 2. The prune merges b1 and b2
# into b3, which becomes a full (no backing file) reading the same bytes,
# and removes b1 and b2: the space used drops, every kept backup reads and
# restores byte for byte as the disks did at backup time, the recorded
# hashes are those of the files and the hash re-check passes. A compressed
# b3 merges into a compressed full (same compression type). A backup in use
# (a quick restore's lineage, a held lock) is never merged or removed.
# Then prune is killed with SIGKILL at each of 13 points (the test hook
# KBOSS_TEST_PRUNE_KILL=POINT): every backup still listed reads as before,
# the hash re-check passes (never Invalid), and the next prune finishes:
# b1 and b2 gone, b3 a full, no temporary file or pending merge left.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"
. "$(dirname "$0")/../lib/ops.sh"

POINTS="planned temp-created disk-copied synced intent renamed-first renamed recorded removed-one removed forgotten checkpoint-xml recovery-renamed"
NPOINTS=13
plan $((35 + NPOINTS * 10))
start_libvirt || bail_out "libvirtd"
kb_conf_init 16
CATALOG_TOOL=${top_builddir:-$KBT_TOPDIR/_build}/tests/catalog-tool
[ -x "$CATALOG_TOOL" ] || bail_out "tests/catalog-tool is not built"
MiB=$((1024 * 1024))

kb_offering k2 keep_last=2 compress=true compression_library=zstd
make_test_vm m 64 || bail_out "cannot define the test VM"
kb_assign m k2
dom=$(vm_domain m)
data=$(vm_data_disk m)
root=$(vm_disk m)
refs=$KBT_TMPDIR/refs
tmpl=$KBT_TMPDIR/template
mkdir -p "$refs"

# b1 (full) <- b2 <- b3 <- b4, different data before each.
ids=()
for i in 1 2 3 4; do
	qemu-io -f qcow2 -c "write -P $((0x20 + i)) $(((i - 1) * 3 * MiB)) $((4 * MiB))" "$data" >/dev/null
	[ $i -gt 1 ] && sleep 1.1
	b=$(kb_backup m) || bail_out "backup $i"
	[ -n "$b" ] || bail_out "backup $i: no id"
	cp --sparse=always "$root" "$refs/$b-vda.qcow2"
	cp --sparse=always "$data" "$refs/$b-vdb.qcow2"
	"$CATALOG_TOOL" hash-record "$b" || bail_out "recording the hashes of $b"
	ids+=("$b")
done
b1=${ids[0]} b2=${ids[1]} b3=${ids[2]} b4=${ids[3]}
diag "chain: $b1 <- $b2 <- $b3 <- $b4"
vmdir=$(ops_vm_dir m)
# Saved checkpoint XML of the older backups, as a backup leaves it when it
# cannot delete an older checkpoint from the VM (here: copies of the
# newest's, under their names).
cpx=$(ls "$vmdir/checkpoints" | grep "^$b4\.xml\." | sort | tail -n1)
[ -n "$cpx" ] || bail_out "no saved checkpoint XML of $b4"
for b in "$b1" "$b2"; do cp -p "$vmdir/checkpoints/$cpx" "$vmdir/checkpoints/$b${cpx#"$b4"}"; done
cp -a "$KB_SECONDARY/kboss" "$tmpl"
reset_catalog() { rm -rf "$KB_SECONDARY/kboss" && cp -a "$tmpl" "$KB_SECONDARY/kboss"; }

used() { du -sk "$KB_SECONDARY/kboss/vms" | cut -f1; }
same_as_refs() { # BACKUP...: each disk's chain reads as the VM's disk at backup time
	local b d
	for b in "$@"; do
		for d in vda vdb; do
			qemu-img compare -q -U "$(kb_backup_file "$b" $d)" "$refs/$b-$d.qcow2" || { diag "$b $d differs"; return 1; }
		done
	done
}
listed_same() { # every backup still listed reads as at backup time
	local b
	for b in $(kb_listed_backups); do
		same_as_refs "$b" || return 1
	done
}
is_full() { # BACKUP: both files have no backing file, the record says full
	local d
	for d in vda vdb; do
		qemu-img info -U --output=json "$(kb_backup_file "$1" $d)" | grep -q '"backing-filename"' && { diag "$1 $d has a backing file"; return 1; }
	done
	[ "$(kb_backup_field "$1" type)" = full ] && [ -z "$(kb_backup_field "$1" parent)" ] || { diag "$1 record: type $(kb_backup_field "$1" type) parent $(kb_backup_field "$1" parent)"; return 1; }
}
hashes_are_files() { # BACKUP: the recorded hashes are those of the files
	local d f want
	for d in vda vdb; do
		f=$(kb_backup_file "$1" $d)
		want=$(kb_disk_field "$1" $d hash)
		[ -n "$want" ] && [ "$want" = "$(xxhsum -H2 "$f" | cut -d' ' -f1)" ] || { diag "$1 $d: recorded '$want'"; return 1; }
	done
}
nothing_pending() { # no temporary file, no pending merge, no hash_new
	! find "$KB_SECONDARY/kboss" -name '*.kbmerge-*' | grep -q . &&
		[ -z "$(kb_backup_field "$b3" merge)" ] && ! kb_backup_record "$b3" | grep -q '^hash_new'
}
listed() { kb_listed_backups | tr '\n' ' ' | sed 's/ $//'; }
want_left=$(printf '%s\n' "$b3" "$b4" | sort | tr '\n' ' ' | sed 's/ $//')

# ---- dry run ----
out=$(kb kbossctl prune --dry-run "$dom" 2>&1); rc=$?
diag "$out"
ok [ $rc -eq 0 ] "prune --dry-run succeeds"
ok grep -q "would merge $b1 into $b3" <<<"$out" "it would merge $b1 into $b3"
ok grep -q "would merge $b2 into $b3" <<<"$out" "and $b2"
ok grep -q "keep   $b3 (last,dependency), the merge target: it would become a full" <<<"$out" "and says $b3 would become a full"
json=$(kb kbossctl prune --dry-run --json "$dom")
ok [ "$(python3 -c 'import json,sys; print(" ".join(sorted(x["backup"] + ">" + x["merge_into"] for x in json.load(sys.stdin) if x["action"] == "merge")))' <<<"$json")" = "$b1>$b3 $b2>$b3" ] "--json says merge, and into which backup"
ok [ "$(kb_listed_backups | wc -l)" -eq 4 ] "a dry run changes nothing"

# ---- the prune ----
before=$(used)
out=$(kb kbossctl prune "$dom" 2>&1); rc=$?
diag "$out"
after=$(used)
ok [ $rc -eq 0 ] "prune succeeds"
ok grep -q "merged 2 backup(s) into $b3: it is a full now" <<<"$out" "it says it merged 2 backups into $b3"
ok [ "$(listed)" = "$want_left" ] "exactly $b3 and $b4 are left"
ok is_full "$b3" "$b3 is a full now: no backing file, its record says full with no parent"
# (the chain folder is named after its first backup: not counted)
left=$(find "$KB_SECONDARY" | sed "s|/chains/$b1|/chains/CHAIN|" | grep -e "$b1" -e "$b2")
diag "left of $b1 and $b2: ${left:-nothing}"
ok [ -z "$left" ] "nothing of $b1 and $b2 is left (files, records, checkpoint XML)"
ok [ "$after" -lt "$before" ] "the space used drops (${before}k -> ${after}k)"
ok same_as_refs "$b3" "$b4" "$b3 and $b4 read as the disks did at backup time"
ok hashes_are_files "$b3" "the recorded hashes of $b3 are those of its new files"
ok [ "$(kb_backup_field "$b3" merged_from)" = "$b1 $b2" ] "its record says what was merged into it"
out=$(kb kboss-validate --check-hash "$b3" 2>&1)
ok [ $? -eq 0 ] "the hash re-check of $b3 passes: $out"
ok nothing_pending "no temporary file or pending merge is left"
ok grep -q "length = 2" <<<"$(cat "$(find "$vmdir/chains" -name 'chain.*.ini' | sort | tail -n1)")" "the chain record has length 2"
# The current chain goes on: the next backup is an incremental on b4.
qemu-io -f qcow2 -c "write -P 0x55 $((20 * MiB)) $MiB" "$data" >/dev/null
b5=$(kb_backup m)
ok '[ -n "$b5" ] && [ "$(kb_backup_field "$b5" type)/$(kb_backup_field "$b5" parent)" = "incremental/$b4" ] && qemu-img compare -q -U "$(kb_backup_file "$b5" vdb)" "$data"' \
	"the next backup ($b5) is an incremental on $b4 and reads as the disk"
qemu-io -f qcow2 -c "write -P 0xee 0 $((2 * MiB))" "$data" >/dev/null
kb kboss-restore --quiet "$b3" >/dev/null 2>&1
ok eval 'qemu-img compare -q "$data" "$refs/$b3-vdb.qcow2" && qemu-img compare -q "$root" "$refs/$b3-vda.qcow2"' \
	"kboss-restore of the merged $b3 equals the disks at its backup time"
kb kboss-restore --quiet "$b4" >/dev/null 2>&1
ok eval 'qemu-img compare -q "$data" "$refs/$b4-vdb.qcow2" && qemu-img compare -q "$root" "$refs/$b4-vda.qcow2"' \
	"kboss-restore of $b4 (an incremental on the merged file) equals the disks at its backup time"

# ---- a compressed target merges into a compressed full ----
reset_catalog
out=$(kb kboss-compress "$b3" 2>&1)
ok [ "$(kb_backup_field "$b3" compressed)" = true ] "$b3 is compressed first ($out)"
out=$(kb kbossctl prune "$dom" 2>&1); prc=$?
diag "$out"
ok '[ $prc -eq 0 ] && [ "$(listed)" = "$want_left" ]' "the prune of the compressed chain leaves $b3 and $b4"
ok is_full "$b3" "the compressed $b3 is a full now"
ctype=$(qemu-img info -U --output=json "$(kb_backup_file "$b3" vdb)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"].get("compression-type"))')
comp=$(qemu-img check -U "$(kb_backup_file "$b3" vdb)" 2>&1 | sed -n 's/.* \([0-9.]*\)% compressed clusters.*/\1/p')
ok '[ "$ctype" = zstd ] && [ "$(kb_backup_field "$b3" compressed)/$(kb_backup_field "$b3" compression_library)" = true/zstd ] && python3 -c "import sys; sys.exit(0 if float(\"${comp:-0}\") > 0 else 1)"' \
	"its data file is zstd-compressed ($ctype, ${comp:-?}% compressed clusters) and its record says so"
ok same_as_refs "$b3" "$b4" "and $b3 and $b4 read as at backup time"
ok hashes_are_files "$b3" "with the hashes of the new files recorded"

# zlib: the merged full is zlib-compressed too.
reset_catalog
kb_offering k2 keep_last=2 compress=true compression_library=zlib
out=$(kb kboss-compress "$b3" 2>&1)
out=$(kb kbossctl prune "$dom" 2>&1); prc=$?
diag "$out"
ctype=$(qemu-img info -U --output=json "$(kb_backup_file "$b3" vdb)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"].get("compression-type"))')
ok '[ $prc -eq 0 ] && [ "$(listed)" = "$want_left" ] && is_full "$b3" && [ "$ctype" = zlib ] && [ "$(kb_backup_field "$b3" compression_library)" = zlib ]' \
	"a zlib-compressed $b3 merges into a zlib-compressed full ($ctype)"
ok eval 'same_as_refs "$b3" "$b4" && hashes_are_files "$b3"' "which reads as at backup time, with its hashes recorded"
kb_offering k2 keep_last=2 compress=true compression_library=zstd

# ---- a backup in use is never merged or removed ----
reset_catalog
uuid=$(basename "$vmdir")
for b in "$b1" "$b2" "$b3" "$b4"; do
	ops_doc_set "$(dirname "$(ops_backup_record_file "$b")")" backup backup in_use_by "$uuid"
done
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok '[ "$(kb_listed_backups | wc -l)" -eq 4 ] && ! is_full "$b3" 2>/dev/null' "with a quick restore's lineage marked in use, nothing is merged or removed"
reset_catalog
sleep 600 & holder=$!
ops_fake_lock "$KB_SECONDARY/kboss/locks/backup-$b1.lock" $holder
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok '[ "$(kb_listed_backups | wc -l)" -eq 4 ] && ! is_full "$b3" 2>/dev/null && grep -q "keep   $b1 (in-use" <<<"$out"' \
	"with $b1's lock held by another operation, nothing is merged and $b1 stays"
rm -f "$KB_SECONDARY/kboss/locks/backup-$b1.lock"
ops_fake_lock "$KB_SECONDARY/kboss/locks/backup-$b4.lock" $holder
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok '[ "$(kb_listed_backups | wc -l)" -eq 4 ] && ! is_full "$b3" 2>/dev/null' \
	"with $b4's lock held (say its validation, which reads $b1 and $b2 too), nothing is merged or removed"
rm -f "$KB_SECONDARY/kboss/locks/backup-$b4.lock"
ops_fake_lock "$KB_SECONDARY/kboss/locks/job-compression-$b3.lock" $holder
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok '[ "$(kb_listed_backups | wc -l)" -eq 4 ] && ! is_full "$b3" 2>/dev/null' \
	"with a compression job running on $b3 (its job lock held), nothing is merged or removed"
rm -f "$KB_SECONDARY/kboss/locks/job-compression-$b3.lock"
# A pending merge is not finished while a backup built on its target is in
# use (its validation may hold the target's file open, on another host too).
KBOSS_TEST_PRUNE_KILL=intent kb kbossctl prune "$dom" >/dev/null 2>&1
ops_fake_lock "$KB_SECONDARY/kboss/locks/backup-$b4.lock" $holder
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok '[ -n "$(kb_backup_field "$b3" merge)" ] && [ "$(kb_listed_backups | wc -l)" -eq 4 ] && grep -q "not finished now" <<<"$out" && listed_same' \
	"with $b4's lock held, the pending merge into $b3 waits (nothing renamed or removed, everything reads as before)"
rm -f "$KB_SECONDARY/kboss/locks/backup-$b4.lock"
out=$(kb kbossctl prune "$dom" 2>&1)
diag "$out"
ok '[ -z "$(kb_backup_field "$b3" merge)" ] && [ "$(listed)" = "$want_left" ] && is_full "$b3" && same_as_refs "$b3" "$b4"' \
	"once it is free, the next prune finishes the merge"
kill $holder 2>/dev/null; wait $holder 2>/dev/null

# ---- kill -9 at each point ----
for p in $POINTS; do
	reset_catalog
	if [ "$p" = recovery-renamed ]; then
		# Killed after recording the merge, then the finishing prune killed too.
		KBOSS_TEST_PRUNE_KILL=intent kb kbossctl prune "$dom" >/dev/null 2>&1
		KBOSS_TEST_PRUNE_KILL=$p kb kbossctl prune "$dom" >/dev/null 2>&1
		rc=$?
	else
		KBOSS_TEST_PRUNE_KILL=$p kb kbossctl prune "$dom" >/dev/null 2>&1
		rc=$?
	fi
	ok [ $rc = 137 ] "$p: prune was killed there (status $rc)"
	diag "$p: left: $(listed); $b3 merge=$(kb_backup_field "$b3" merge) type=$(kb_backup_field "$b3" type); temps: $(find "$KB_SECONDARY/kboss" -name '*.kbmerge-*' | wc -l)"
	ok listed_same "$p: every backup still listed reads as at its backup time"
	out=$(kb kboss-validate --check-hash "$b3" 2>&1)
	ok [ $? = 0 ] "$p: the hash re-check of $b3 passes: $out"
	ok [ "$(kb_backup_field "$b3" state)/$(kb_backup_field "$b4" state)" = Ready/Ready ] "$p: $b3 and $b4 are still Ready"

	out=$(kb kbossctl prune "$dom" 2>&1); rc=$?
	diag "$p: next prune: $out"
	ok [ $rc = 0 ] "$p: the next prune succeeds"
	ok [ "$(listed)" = "$want_left" ] "$p: it leaves exactly $b3 and $b4"
	ok is_full "$b3" "$p: $b3 is a full"
	ok nothing_pending "$p: no temporary file or pending merge is left"
	ok hashes_are_files "$b3" "$p: the recorded hashes are those of the files"
	ok same_as_refs "$b3" "$b4" "$p: $b3 and $b4 read as at backup time"
done
