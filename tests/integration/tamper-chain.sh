#!/usr/bin/env bash
# Issue 12: a hostile writer to the export plants chain escapes into a real
# catalog; every program that opens a backup's chain must refuse it with an
# error naming the file, no byte from outside the chain may reach any
# output, and planted FIFOs end in an error within 20 s instead of a hang.
#
# A stopped test VM gets a full backup b1 and an incremental b2.  Each case
# tampers with the data disk (vdb) of b1 or b2, then runs
#   kboss-restore b2, kboss-restore --quick b2, kboss-validate b2,
#   kbossctl extract b2, kboss-compress b2, kboss-validate --check-hash b2
# and puts the catalog back as it was.  The cases:
#   backing    b2/vdb.qcow2 names a qcow2 outside the chain folder (host data)
#   datafile   b2/vdb.qcow2 has an external data file: a host file
#   symlink    b1/vdb.qcow2 is a symlink to the host qcow2
#   fifo       b1/vdb.qcow2 is a FIFO
#   fifo-top   b2/vdb.qcow2 is a FIFO
#   fifo-meta  every generation of b2's backup record is a FIFO
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

requires qemu-img qemu-io virsh mkfifo timeout
plan 94
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
# This host's slots (validation per host) are local files under the run
# folder: a private one, so validations of other tests on this machine do
# not hold the slot this test needs.
export KBOSS_RUN_DIR=$KBT_TMPDIR/run
mkdir -p "$KBOSS_RUN_DIR" && chmod 0700 "$KBOSS_RUN_DIR"
# compress=false: a pending compression job would hold validation back;
# kboss-compress BACKUP gets compress=true just for its own run below.
offering() { kb_offering t allow_quick_restore=true allow_extract_file=true validate=true "$@"; }
offering compress=false
make_test_vm a 16 || bail_out "cannot define the test VM"
kb_assign a t
dom=$(vm_domain a)
vmdir=$(vm_dir a)

# Host data nobody may copy: a marker repeated over 1 MiB, as raw and qcow2.
marker="KBOSS-HOST-SECRET-$$-$RANDOM"
secret=$KBT_TMPDIR/host-secret.raw
python3 -c "import sys; m=sys.argv[1].encode(); sys.stdout.buffer.write((m * (1048576 // len(m) + 1))[:1048576])" \
	"$marker" > "$secret" || bail_out "cannot write the host secret"
qemu-img convert -q -f raw -O qcow2 "$secret" "$KBT_TMPDIR/host-secret.qcow2" || bail_out "qemu-img convert"

# Backups of the stopped VM: a full and an incremental over an offline write.
b1=$(kb_backup a) || bail_out "the full backup failed"
qemu-io -f qcow2 -c "write -P 0x42 1M 1M" "$(vm_data_disk a)" >/dev/null || bail_out "qemu-io"
b2=$(kb_backup a) || bail_out "the incremental failed"
ok [ "$(kb_backup_field "$b2" type)" = incremental ] "a full backup $b1 and an incremental $b2 of the stopped VM"
f1=$(kb_backup_file "$b1" vdb)
f2=$(kb_backup_file "$b2" vdb)
chaindir=$(dirname "$(dirname "$f2")")

# Hashes recorded, so that the re-check has something to check.
if ! KBOSS_TEST_VALIDATE_HOLD_MS=1 kb kboss-validate "$b2" > "$KBT_TMPDIR/hold.out" 2>&1 ||
	! kb_backup_record "$b2" | grep -q '^hash = '; then
	diag "with KBOSS_TEST_VALIDATE_HOLD_MS: $(head -c 400 "$KBT_TMPDIR/hold.out")"
	offering compress=false validation_steps=fs_check
	kb kboss-validate "$b2" > "$KBT_TMPDIR/fs.out" 2>&1 || diag "fs_check validation: $(head -c 600 "$KBT_TMPDIR/fs.out")"
	offering compress=false
fi
ok eval 'kb_backup_record "$b2" | grep -q "^hash = "' "b2's hashes are recorded (the re-check has work to do)"
ok eval 'kb kboss-validate --check-hash "$b2" >/dev/null 2>&1' "the untouched b2 passes its hash re-check"

# The catalog and the VM's disks as they are now, to put back after each case.
snap=$KBT_TMPDIR/snapshot
cp -a "$KB_SECONDARY" "$snap" || bail_out "cannot snapshot the store"
sum_disks() { sha256sum "$vmdir/root.qcow2" "$vmdir/data.qcow2" | cut -d' ' -f1 | tr '\n' ' '; }
disks_before=$(sum_disks)
reset_store() {
	rm -rf "$KB_SECONDARY" && cp -a "$snap" "$KB_SECONDARY"
	rm -rf "$KB_ROOT/scratch"/* "$KBT_TMPDIR"/x-* 2>/dev/null
	virsh -q destroy "$dom" >/dev/null 2>&1
	true
}

kb_path() {
	local p
	for p in "$KB_BINDIR/$1" "$KB_BINDIR"/*/"$1"; do
		[ -x "$p" ] && { echo "$p"; return; }
	done
	echo "/nonexistent/$1"
}

# run_all CASE WORD: every program refuses, its error names WORD (the
# planted file), within 20 s; then nothing outside the chain got out.
run_all() {
	local case=$1 word=$2 prog rc t0 out=$KBT_TMPDIR/out-$case
	local -a cmd
	for prog in restore quick validate extract compress hash; do
		case $prog in
		restore) cmd=(kboss-restore "$b2") ;;
		quick) cmd=(kboss-restore --quick "$b2") ;;
		validate) cmd=(kboss-validate "$b2") ;;
		extract) cmd=(kbossctl extract "$b2" /etc/hostname "$KBT_TMPDIR/x-$case") ;;
		compress) cmd=(kboss-compress "$b2") ;;
		hash) cmd=(kboss-validate --check-hash "$b2") ;;
		esac
		offering compress=$([ "$prog" = compress ] && echo true || echo false)
		t0=$(date +%s)
		timeout 20 "$(kb_path "${cmd[0]}")" "${cmd[@]:1}" > "$out" 2>&1
		rc=$?
		ok "[ $rc != 0 ] && [ $rc != 124 ]" \
			"$case: ${cmd[*]:0:2} is refused within 20 s (exit $rc after $(( $(date +%s) - t0 )) s)"
		ok grep -q -- "$word" "$out" "$case: ... naming $word: $(grep -m1 -- "$word" "$out" | cut -c1-220)" ||
			diag "$(head -c 600 "$out")"
	done
	ok [ "$(sum_disks)" = "$disks_before" ] "$case: the VM's disks were not touched"
	ok eval '! grep -rqa -- "$marker" "$vmdir" "$KB_ROOT/scratch" "$KB_SECONDARY" $(ls -d "$KBT_TMPDIR"/x-* 2>/dev/null)' \
		"$case: no byte of the host's data in the VM's disks, the scratch folder, the store or an extracted file"
	reset_store
}

# backing: a relative backing name that climbs out of the chain folder.
rel=$(realpath --relative-to="$(dirname "$f2")" "$KBT_TMPDIR/host-secret.qcow2")
rm -f "$f2" && qemu-img create -q -f qcow2 -u -b "$rel" -F qcow2 "$f2" 16M
ok [ "$(qemu-img info -U "$f2" | sed -n 's/^backing file: //p' | cut -d' ' -f1)" = "$rel" ] "backing: planted ($rel)"
run_all backing "$(basename "$(dirname "$f2")")/vdb.qcow2"

# datafile: the image's clusters live in a host file.
rm -f "$f2" && qemu-img create -q -f qcow2 -o "data_file=$KBT_TMPDIR/host-data.raw,data_file_raw=on" "$f2" 1M &&
	cp "$secret" "$KBT_TMPDIR/host-data.raw"
ok eval 'qemu-img info -U "$f2" | grep -q "data file: $KBT_TMPDIR/host-data.raw"' "datafile: planted"
run_all datafile "external data file"

# symlink: the base's file is a symlink to a host qcow2.
rm -f "$f1" && ln -s "$KBT_TMPDIR/host-secret.qcow2" "$f1"
ok [ -L "$f1" ] "symlink: planted"
run_all symlink "symlink"

# fifo: the base's file is a FIFO (a blocking open would hang forever).
rm -f "$f1" && mkfifo "$f1"
ok [ -p "$f1" ] "fifo: planted"
run_all fifo "$(basename "$(dirname "$f1")")/vdb.qcow2"

# fifo-top: the incremental's own file is a FIFO.
rm -f "$f2" && mkfifo "$f2"
ok [ -p "$f2" ] "fifo-top: planted"
run_all fifo-top "vdb"

# fifo-meta: every generation of b2's record is a FIFO; b2 is then unknown.
n=0
for g in $(find "$KB_SECONDARY/kboss/vms" -path "*/$b2/backup.*.ini"); do
	rm -f "$g" && mkfifo "$g" && n=$((n + 1))
done
ok [ "$n" -ge 1 ] "fifo-meta: $n generation(s) of b2's record planted as FIFOs"
run_all fifo-meta "$b2"

# After all that, the untouched catalog still restores.
ok eval 'kb kboss-restore "$b2" >/dev/null 2>&1' "the untouched b2 still restores"
