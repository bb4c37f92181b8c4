#!/usr/bin/env bash
# Validation of a real guest's backup: every step passes on a good backup
# (the screenshot is a real PNG of the display), the backup's files are not
# written, nothing is left behind; a wrong expected command output fails;
# a flipped byte in a stored file is caught by the hash re-check and ends
# the chain; kill -9 during a validation leaves nothing after the next run.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 24
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm a || bail_out "cannot define the test VM"
dom=$(vm_domain a)
kb_offering val validate=true "validation_steps=wait_for_boot,execute_command,screenshot,fs_check"
kb_offering valcmd validate=true "validation_steps=execute_command"
vmconf=$KB_ROOT/etc/vms.d/$dom.conf
b64() { printf '%s' "$1" | base64 -w0; }
vm_conf() { # OFFERING EXPECTED
	printf '[vm]\noffering = %s\nbackupValidationCommand = cat\nbackupValidationCommandArguments = /etc/hostname\nbackupValidationCommandExpectedResult = %s\nbackupValidationBootTimeout = 150\nbackupValidationScreenshotWait = 5\n' \
		"$1" "$2" > "$vmconf"
}
vm_conf val "$(b64 kboss-guest)"
valdomains() { virsh list --all --name | grep -c "^kboss-val-" || true; }
leftovers() { find "$KB_ROOT/scratch" -mindepth 1 | wc -l; }

b1=$(kb_backup a)
ok [ -n "$b1" ] "backup of the stopped VM: $b1"
f1=$(kb_backup_file "$b1" vda)
sum_before=$(xxhsum -H2 "$f1" | cut -d' ' -f1)
job=$(find "$KB_SECONDARY/kboss/jobs" -name "validation-$b1.*" | head -n1)
ok [ -n "$job" ] "the backup queued a validation job"

t0=$(date +%s)
out=$(kb kboss-validate run --now 2>&1); rc=$?
diag "kboss-validate run took $(($(date +%s) - t0))s"
printf '%s\n' "$out" | sed 's/^/  | /' >&2
ok [ $rc -eq 0 ] "kboss-validate run succeeds"
rec=$(kb_backup_record "$b1")
for s in wait_for_boot execute_command screenshot fs_check; do
	ok eval 'printf "%s\n" "$rec" | grep -q "^step.$s = ok "' "step $s passed: $(printf '%s\n' "$rec" | grep "^step.$s")"
done
ok [ "$(kb_backup_field "$b1" validated)" = true ] "the backup is marked validated"
ok eval 'printf "%s\n" "$rec" | grep -q "^hash = $sum_before"' "the recorded hash of vda is xxhsum -H2 of the file"
ok [ -n "$(find "$KB_SECONDARY/kboss/jobs" -name "hash-$b1.*")" ] "a hash re-check job is scheduled"
ok [ "$(xxhsum -H2 "$f1" | cut -d' ' -f1)" = "$sum_before" ] "the backup's file was not written"
ok [ "$(valdomains)" -eq 0 ] "no validation domain is left"
ok [ "$(leftovers)" -eq 0 ] "no overlay is left in scratch.path"

png=$KBT_TMPDIR/shot.png
kb kbossctl screenshot "$b1" "$png"
ok [ "$(stat -c %a "$png")" = 600 ] "kbossctl screenshot writes the PNG 0600"
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
assert len(zlib.decompress(idat)) == h * (3 * w + 1)
print('%dx%d' % (w, h))
PY
)
diag "screenshot: $size ($(file -b "$png"))"
ok eval 'case "$size" in 720x400|640x480|800x600|1024x768|1280x800) true;; *) false;; esac' "the screenshot decodes as a PNG of a display size ($size)"

# A wrong expected output fails execute_command.
vm_conf valcmd "$(b64 not-the-hostname)"
kb kboss-validate "$b1" > /dev/null 2>"$KBT_TMPDIR/err"; rc=$?
ok [ $rc -eq 1 ] "validation with a wrong expected output fails (exit $rc)"
ok grep -q '^step.execute_command = failed' <(kb_backup_record "$b1") "execute_command failed: $(kb_backup_record "$b1" | grep '^step.execute_command')"

# kill -9 while the validation VM runs: the next run leaves nothing.
vm_conf val "$(b64 kboss-guest)"
kb kboss-validate "$b1" > /dev/null 2>&1 &
pid=$!
for i in $(seq 60); do [ "$(valdomains)" -gt 0 ] && break; sleep 0.5; done
ok [ "$(valdomains)" -gt 0 ] "a validation domain runs"
kill -9 $pid; wait $pid 2>/dev/null
sleep 1
kb kboss-validate run > /dev/null 2>&1
ok [ "$(valdomains)" -eq 0 ] "after kill -9 and the next run no validation domain is left"
ok [ "$(leftovers)" -eq 0 ] "after kill -9 and the next run no overlay is left"

# One byte flipped in a stored file is caught by the hash re-check.
f2=$(kb_backup_file "$b1" vdb)
[ -n "$f2" ] || f2=$f1
off=$(qemu-img map -U --output=json "$f1" | python3 -c '
import json, sys
print([e for e in json.load(sys.stdin) if e["data"] and "offset" in e][0]["offset"] + 4096)')
byte=$(od -An -tu1 -j "$off" -N1 "$f1" | tr -d ' ')
printf "$(printf '\\%03o' $(((byte + 1) % 256)))" | dd of="$f1" bs=1 seek="$off" conv=notrunc 2>/dev/null
kb kboss-validate run --now > /dev/null 2>"$KBT_TMPDIR/err"
ok [ "$(kb_backup_field "$b1" state)" = Invalid ] "after a flipped byte the re-check marks the backup Invalid"
ok grep -q '^<3>.*hash mismatch' "$KBT_TMPDIR/err" "the mismatch is logged as an error: $(head -c 200 "$KBT_TMPDIR/err")"
ok grep -q '^state = Failed' <(cat "$(ls "$KB_SECONDARY"/kboss/jobs/hash-"$b1".* | sort | tail -n1)") "the hash job is Failed"
b2=$(kb_backup a)
ok [ "$(kb_backup_field "$b2" type)" = full ] "with end.chain.on.fail the next backup is full"
