#!/usr/bin/env bash
# A compression swap killed with SIGKILL at each of 10 points (the test hook
# KBOSS_TEST_SWAP_KILL=POINT makes kboss-compress kill itself there), on
# real backups of a test VM with two disks and recorded hashes. After each
# kill: the hash re-check passes (never an Invalid backup), every disk's
# chain reads as the VM's disks did at backup time (never a wrong backup),
# and the next "kboss-compress run" finishes: the job is Done, the backup is
# compressed, its recorded hashes are those of the new files and nothing
# temporary is left; a restore of it equals the disks at backup time.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

POINTS="executing compressed checked locked pending renamed-first renamed recorded returned recovery-renamed"
plan $((10 * 12 + 1))
start_libvirt || bail_out "libvirtd"
kb_conf_init 16
CATALOG_TOOL=${top_builddir:-$KBT_TOPDIR/_build}/tests/catalog-tool
[ -x "$CATALOG_TOOL" ] || bail_out "tests/catalog-tool is not built"
KBC=$(ls "$KB_BINDIR"/compress/kboss-compress 2>/dev/null) || bail_out "kboss-compress is not built"
# A failed attempt is retried by the very next run.
echo "backup.compression.retry.interval = 0" >> "$KBOSS_CONF"
MiB=$((1024 * 1024))

kb_offering zs compress=true compression_library=zstd
make_test_vm a || bail_out "cannot define the test VM"
kb_assign a zs
data=$(vm_data_disk a)
refs=$KBT_TMPDIR/refs
mkdir -p "$refs"

job_field() { # JOB KEY
	kb kbossctl jobs --id "$1" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)[0].get(sys.argv[1])
print("" if v is None else v)' "$2"
}
no_temps() { # BACKUP
	! ls -a "$(dirname "$(kb_backup_file "$1" vda)")" | grep -q kbcompress
}
same_as_refs() { # BACKUP: each disk's chain reads as the VM's disk at backup time
	local d
	for d in vda vdb; do
		qemu-img compare -q -U "$(kb_backup_file "$1" $d)" "$refs/$1-$d.qcow2" || { diag "$1 $d differs"; return 1; }
	done
}
hashes_are_files() { # BACKUP: the recorded hashes are those of the files
	local d f want
	for d in vda vdb; do
		f=$(kb_backup_file "$1" $d)
		want=$(kb_backup_record "$1" | awk -v s="[disk:$d]" '$0 == s { x = 1; next } /^\[/ { x = 0 } x && $1 == "hash" { print $3 }')
		[ -n "$want" ] && [ "$want" = "$(xxhsum -H2 "$f" | cut -d' ' -f1)" ] || { diag "$1 $d: recorded '$want'"; return 1; }
	done
}

i=0
for p in $POINTS; do
	i=$((i + 1))
	qemu-io -f qcow2 -c "write -P $((0x10 + i)) $((i * MiB)) $MiB" "$data" >/dev/null
	b=$(kb_backup a)
	[ -n "$b" ] || bail_out "backup $i"
	cp --sparse=always "$(vm_disk a)" "$refs/$b-vda.qcow2"
	cp --sparse=always "$data" "$refs/$b-vdb.qcow2"
	"$CATALOG_TOOL" hash-record "$b" || bail_out "recording the hashes of $b"
	job=compression-$b

	if [ "$p" = recovery-renamed ]; then
		# Killed in the swap, then the recovering run killed too.
		KBOSS_TEST_SWAP_KILL=renamed-first "$KBC" --quiet "$b" >/dev/null 2>&1
		KBOSS_TEST_SWAP_KILL=$p "$KBC" --quiet run >/dev/null 2>&1
		rc=$?
	else
		KBOSS_TEST_SWAP_KILL=$p "$KBC" --quiet "$b" >/dev/null 2>&1
		rc=$?
	fi
	ok [ $rc = 137 ] "$p: kboss-compress was killed there (status $rc)"
	diag "$p: backup.ini swap=$(kb_backup_field "$b" swap) compressed=$(kb_backup_field "$b" compressed)"

	out=$(kb kboss-validate --check-hash "$b" 2>&1)
	rc=$?
	ok [ $rc = 0 ] "$p: the hash re-check passes: $out"
	ok [ "$(kb_backup_field "$b" state)" = Ready ] "$p: the backup is still Ready (not Invalid)"
	ok same_as_refs "$b" "$p: its chains read as the disks did at backup time"

	out=$(kb kboss-compress run 2>&1)
	rc=$?
	diag "$p: next run: $out"
	ok [ "$(job_field "$job" state)" = Done ] "$p: the next run finishes the job (status $rc, $(job_field "$job" state))"
	ok [ "$(kb_backup_field "$b" compressed)" = true -a -z "$(kb_backup_field "$b" swap)" ] \
		"$p: the backup is recorded compressed, no swap pending"
	ok [ "$(qemu-img info -U --output=json "$(kb_backup_file "$b" vdb)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"].get("compression-type"))')" = zstd ] \
		"$p: the data disk's file is compressed"
	ok hashes_are_files "$b" "$p: the recorded hashes are those of the compressed files"
	ok no_temps "$b" "$p: no temporary file is left"
	out=$(kb kboss-validate --check-hash "$b" 2>&1)
	ok [ $? = 0 ] "$p: the hash re-check passes after the run"
	ok same_as_refs "$b" "$p: the compressed chains read as the disks did at backup time"

	# The restore of it.
	qemu-io -f qcow2 -c "write -P 0xee 0 $((2 * MiB))" "$data" >/dev/null
	kb kboss-restore --quiet "$b" >/dev/null 2>&1
	ok eval 'qemu-img compare -q "$data" "$refs/$b-vdb.qcow2" && qemu-img compare -q "$(vm_disk a)" "$refs/$b-vda.qcow2"' \
		"$p: kboss-restore of it equals the disks at backup time"
done
ok [ "$(kb kbossctl jobs --type compression --json | python3 -c 'import json,sys; print(sorted(set(j["state"] for j in json.load(sys.stdin))))')" = "['Done']" ] \
	"every compression job is Done"
