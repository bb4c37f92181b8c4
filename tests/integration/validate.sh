#!/usr/bin/env bash
# Validation of a real guest's backups, with as few validation VMs as
# possible (four boots, about 3-4 minutes under TCG):
#  1. a good backup passes every step (execute_command with the right
#     expected output, a real PNG screenshot, fs_check); its files are not
#     written; nothing is left behind; its hashes are recorded;
#  2. a flipped byte in a stored file is caught by the hash re-check, the
#     backup becomes Invalid and end.chain.on.fail makes the next backup full;
#  3. a wrong expected output fails execute_command;
#  4. kill -9 of a run while its validation VM runs: the VM goes with the
#     connection, and the next run leaves no domain and no overlay and
#     finishes the job;
#  5. concurrency limits across runners posing as three hosts
#     (KBOSS_HOSTNAME), with fake work: KBOSS_TEST_VALIDATE_HOLD_MS makes a
#     validation hold its slots and lock for a while instead of booting;
#     then kboss-compress re-records the hashes of one of those backups;
#  6. a backup that does not boot fails wait_for_boot (short boot timeout)
#     and fs_check.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 46
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm a || bail_out "cannot define the test VM"
dom=$(vm_domain a)
CATALOG_TOOL=${top_builddir:-$KBT_TOPDIR/_build}/tests/catalog-tool
[ -x "$CATALOG_TOOL" ] || bail_out "tests/catalog-tool is not built"
kb_offering val validate=true "validation_steps=wait_for_boot,execute_command,screenshot,fs_check"
vmconf=$KB_ROOT/etc/vms.d/$dom.conf
b64() { printf '%s' "$1" | base64 -w0; }
vm_conf() { # OFFERING EXPECTED
	printf '[vm]\noffering = %s\nbackupValidationCommand = cat\nbackupValidationCommandArguments = /etc/hostname\nbackupValidationCommandExpectedResult = %s\nbackupValidationBootTimeout = 150\nbackupValidationScreenshotWait = 5\n' \
		"$1" "$2" > "$vmconf"
}
vm_conf val "$(b64 kboss-guest)"
valdomains() { virsh list --all --name | grep -c "^kboss-val-" || true; }
leftovers() { find "$KB_ROOT/scratch" -mindepth 1 | wc -l; }
job_field() { # JOB KEY
	kb kbossctl jobs --id "$1" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)[0].get(sys.argv[1])
print("" if v is None else v)' "$2"
}
step_line() { kb_backup_record "$1" | grep "^step.$2 = "; }

# ---- 1. a good backup, every step ----
b1=$(kb_backup a)
ok [ -n "$b1" ] "backup of the stopped VM: $b1"
f1=$(kb_backup_file "$b1" vda)
sum_before=$(xxhsum -H2 "$f1" 2>/dev/null | cut -d' ' -f1)
ok [ "$(job_field "validation-$b1" state)" = Scheduled ] "the backup queued a validation job"

t0=$(date +%s)
out=$(kb kboss-validate run --now 2>&1); rc=$?
diag "kboss-validate run took $(($(date +%s) - t0))s"
printf '%s\n' "$out" | sed 's/^/  | /' >&2
ok [ $rc -eq 0 ] "kboss-validate run succeeds"
for s in wait_for_boot execute_command screenshot fs_check; do
	ok eval 'step_line "$b1" $s | grep -q "= ok "' "step $s passed: $(step_line "$b1" $s)"
done
ok eval 'step_line "$b1" execute_command | grep -q "printed the expected result"' "execute_command compared the output"
ok [ "$(kb_backup_field "$b1" validated)" = true ] "the backup is marked validated"
ok [ "$(job_field "validation-$b1" state)" = Done ] "the validation job is Done"
ok eval 'kb_backup_record "$b1" | grep -q "^hash = $sum_before"' "the recorded hash of vda is xxhsum -H2 of the file"
ok [ "$(job_field "hash-$b1" state)" = Scheduled ] "a hash re-check job is scheduled"
ok [ "$(xxhsum -H2 "$f1" 2>/dev/null | cut -d' ' -f1)" = "$sum_before" ] "the backup's file was not written"
ok [ "$(valdomains)" -eq 0 ] "no validation domain is left"
ok [ "$(leftovers)" -eq 0 ] "no overlay is left in scratch.path"

png=$KBT_TMPDIR/shot.png
kb kbossctl screenshot "$b1" "$png"
ok [ "$(stat -c %a "$png" 2>/dev/null)" = 600 ] "kbossctl screenshot writes the PNG 0600"
size=$(python3 - "$png" <<'PY'
import struct, sys, zlib
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'\x89PNG\r\n\x1a\n'
pos, idat, w, h = 8, b'', 0, 0
while pos < len(d):
    n, t = struct.unpack('>I4s', d[pos:pos + 8]); body = d[pos + 8:pos + 8 + n]
    assert zlib.crc32(t + body) == struct.unpack('>I', d[pos + 8 + n:pos + 12 + n])[0]
    if t == b'IHDR': w, h = struct.unpack('>II', body[:8])
    if t == b'IDAT': idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
assert len(raw) == h * (3 * w + 1)
# a text console is not one flat colour
assert len(set(raw[1:3 * w + 1])) > 1 or len(set(raw)) > 2
print('%dx%d' % (w, h))
PY
)
diag "screenshot: $size ($(file -b "$png"))"
ok eval 'case "$size" in 720x400|640x480|800x600|1024x768|1280x800) true;; *) false;; esac' "the screenshot decodes as a PNG of a display size ($size)"

# ---- 2. one byte flipped in a stored file: the hash re-check ----
off=$(qemu-img map -U --output=json "$f1" | python3 -c '
import json, sys
print([e for e in json.load(sys.stdin) if e["data"] and "offset" in e][0]["offset"] + 4096)')
byte=$(od -An -tu1 -j "$off" -N1 "$f1" | tr -d ' ')
printf "$(printf '\\%03o' $(((byte + 1) % 256)))" | dd of="$f1" bs=1 seek="$off" conv=notrunc 2>/dev/null
# Run as systemd would: stderr is "the journal" (JOURNAL_STREAM names its
# device and inode), so lines carry their <N> priority prefix.
: > "$KBT_TMPDIR/err"
JOURNAL_STREAM=$(stat -c %d:%i "$KBT_TMPDIR/err") kb kboss-validate run --now > /dev/null 2>>"$KBT_TMPDIR/err"; rc=$?
ok [ $rc -eq 1 ] "the run with a hash mismatch exits 1 ($rc)"
ok [ "$(kb_backup_field "$b1" state)" = Invalid ] "after a flipped byte the re-check marks the backup Invalid"
ok grep -q '^<3>.*hash mismatch' "$KBT_TMPDIR/err" "the mismatch is logged as an error: $(grep '^<3>' "$KBT_TMPDIR/err" | head -c 300)"
ok [ "$(job_field "hash-$b1" state)" = Failed ] "the hash job is Failed"
b2=$(kb_backup a)
ok [ "$(kb_backup_field "$b2" type)" = full ] "with end.chain.on.fail the next backup is full"

# ---- 3. a wrong expected output (only execute_command, one boot) ----
kb_offering val validate=true "validation_steps=execute_command"
vm_conf val "$(b64 not-the-hostname)"
kb kboss-validate "$b2" > /dev/null 2>"$KBT_TMPDIR/err"; rc=$?
ok [ $rc -eq 1 ] "validation with a wrong expected output fails (exit $rc)"
ok eval 'step_line "$b2" execute_command | grep -q "= failed .*printed \"kboss-guest\", expected \"not-the-hostname\""' \
	"execute_command failed: $(step_line "$b2" execute_command)"
ok [ "$(kb_backup_field "$b2" validated)" = false ] "the backup is not marked validated"

# ---- 4. kill -9 during a run ----
vm_conf val "$(b64 kboss-guest)"
# (the program itself, not the kb shell function: $! must be its pid)
"$KB_BINDIR/validate/kboss-validate" run --now > /dev/null 2>&1 &
pid=$!
for i in $(seq 120); do [ "$(valdomains)" -gt 0 ] && break; sleep 0.5; done
ok [ "$(valdomains)" -gt 0 ] "a validation domain runs"
ok [ "$(leftovers)" -gt 0 ] "its overlays are in scratch.path"
kill -9 $pid; wait $pid 2>/dev/null
for i in $(seq 20); do [ "$(valdomains)" -eq 0 ] && break; sleep 0.5; done
ok [ "$(valdomains)" -eq 0 ] "the killed run's validation domain went with its libvirt connection"
out=$(kb kboss-validate run --now 2>&1); rc=$?
printf '%s\n' "$out" | sed 's/^/  | /' >&2
ok [ $rc -eq 0 ] "the next run succeeds"
ok eval 'printf "%s\n" "$out" | grep -q "removing .*kboss-val-$b2, left by a killed validation"' "the next run removes the killed run's overlays"
ok [ "$(valdomains)" -eq 0 ] "after kill -9 and the next run no validation domain is left"
ok [ "$(leftovers)" -eq 0 ] "after kill -9 and the next run no overlay is left"
ok [ "$(job_field "validation-$b2" state)/$(job_field "validation-$b2" attempts)" = Done/2 ] \
	"the interrupted job was run again and is Done ($(job_field "validation-$b2" state), attempts $(job_field "validation-$b2" attempts))"

# ---- 5. concurrency limits across hosts (fake work) ----
kb_offering valfake validate=true "validation_steps=wait_for_boot,execute_command,screenshot,fs_check"
cat >> "$KBOSS_CONF" <<CONF
backup.validation.max.concurrent.operations = 3

[cluster]
backup.validation.max.concurrent.operations.per.host = 2
CONF
img=$KBT_TMPDIR/img.qcow2
kb_ref_image "$img" 16M "0 1M 0x11" || bail_out "reference image"
ids=()
for i in $(seq 1 8); do
	set -- $("$CATALOG_TOOL" fake-backup "lim$i" valfake "$img") || bail_out "fake backup"
	ids+=("$1")
	"$CATALOG_TOOL" queue-job validation "$1" || bail_out "queue job"
done
JOBLOG=$KBT_TMPDIR/jobs.log
worker() {
	local i
	for i in $(seq 1 80); do
		KBOSS_HOSTNAME=$1 KBOSS_TEST_JOB_LOG=$JOBLOG KBOSS_TEST_VALIDATE_HOLD_MS=700 \
			"$KB_BINDIR/validate/kboss-validate" --quiet run --now >/dev/null 2>&1
		[ "$(kb kbossctl jobs --scheduled --type validation | tail -n +2 | wc -l)" = 0 ] && break
		sleep 0.2
	done
}
t0=$(date +%s)
worker h1 & w1=$!
worker h1 & w2=$!
worker h2 & w3=$!
worker h2 & w4=$!
worker h3 & w5=$!
wait $w1 $w2 $w3 $w4 $w5
diag "8 validations of 0.7 s by 5 runners on 3 hosts took $(($(date +%s) - t0)) s"
read -r maxall maxhost < <(kb_max_concurrency "$JOBLOG")
diag "at most $maxall validations at once in the zone, $maxhost on one host"
ok [ "$(grep -c '^start' "$JOBLOG")" = 8 ] "each of the 8 validations ran once ($(grep -c '^start' "$JOBLOG"))"
ok [ "$maxall" -le 3 ] "never more than max.concurrent.operations (3) in the zone ($maxall)"
ok [ "$maxhost" -le 2 ] "never more than max.concurrent.operations.per.host (2) on a host ($maxhost)"
ok [ "$maxall" -ge 2 ] "validations did run side by side ($maxall)"
all_validated() {
	local id
	for id in "${ids[@]}"; do [ "$(kb_backup_field "$id" validated)" = true ] || return 1; done
}
ok all_validated "all 8 backups are validated"

# kboss-compress rewrites a validated backup's file: its hashes are recorded again.
kb_offering valzs validate=true compress=true compression_library=zstd
c1=${ids[0]}
"$CATALOG_TOOL" set-backup "$c1" offering valzs || bail_out "set-backup"
cf=$(kb_backup_file "$c1" vda)
h_before=$(kb_backup_record "$c1" | sed -n 's/^hash = //p')
kb kboss-compress "$c1" > /dev/null 2>&1
h_after=$(kb_backup_record "$c1" | sed -n 's/^hash = //p')
ok [ "$(kb_backup_field "$c1" compressed)" = true -a "$h_after" != "$h_before" ] \
	"after kboss-compress the recorded hash changed ($h_before -> $h_after)"
ok [ "$h_after" = "$(xxhsum -H2 "$cf" 2>/dev/null | cut -d' ' -f1)" ] "it is the hash of the compressed file"
ok eval 'kb kboss-validate --check-hash "$c1" | grep -q "hashes match"' "the hash re-check of the compressed backup passes"

# ---- 6. a backup that does not boot ----
make_test_vm b || bail_out "cannot define the second test VM"
qemu-io -f qcow2 -c "write -z 0 1M" "$(vm_disk b)" > /dev/null || bail_out "qemu-io"
kb_offering valboot validate=true "validation_steps=wait_for_boot,fs_check"
printf '[vm]\noffering = valboot\nbackupValidationBootTimeout = 30\n' > "$KB_ROOT/etc/vms.d/$(vm_domain b).conf"
bb=$(kb_backup b)
t0=$(date +%s)
kb kboss-validate "$bb" > /dev/null 2>"$KBT_TMPDIR/err"; rc=$?
diag "the broken backup's validation took $(($(date +%s) - t0))s"
ok [ $rc -eq 1 ] "the validation of a backup that does not boot fails (exit $rc)"
ok eval 'step_line "$bb" wait_for_boot | grep -q "= failed .*no guest agent answer within 30 s"' \
	"wait_for_boot failed: $(step_line "$bb" wait_for_boot)"
ok eval 'step_line "$bb" fs_check | grep -q "= failed "' "fs_check failed: $(step_line "$bb" fs_check)"
ok [ "$(valdomains)" -eq 0 ] "no validation domain is left"
ok [ "$(leftovers)" -eq 0 ] "no overlay is left in scratch.path"
