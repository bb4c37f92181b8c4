#!/usr/bin/env bash
# Validation benchmark, every figure measured in this run on this machine:
#  1. hashing throughput of kb_hash_file() (tests/hash-tool; what the hash
#     re-checks use) against `xxhsum -H2` on the same 2 GiB file, warm page
#     cache, best of 3 each; target: ratio >= 0.9;
#  2. the wall time of each validation step of a real validation (the test
#     guest under TCG), read from the step lines of the backup's record.
#
#   BENCH_HASH_MIB=2048 (size of the hashed file)
#   HASH_TOOL=path of tests/hash-tool, KBOSS_BINDIR=built helpers
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

MIB=${BENCH_HASH_MIB:-2048}
HASH_TOOL=${HASH_TOOL:-$KBT_TOPDIR/_build/tests/hash-tool}
[ -x "$HASH_TOOL" ] || { echo "bench-hash: $HASH_TOOL is not built" >&2; exit 1; }
command -v xxhsum >/dev/null || { echo "bench-hash: xxhsum is missing" >&2; exit 1; }
_kbt_tmpdir || exit 1

now() { date +%s.%N; }
best_of_3() { # CMD...: prints the best wall time in seconds
	local i t0 t1 best=
	for i in 1 2 3; do
		t0=$(now); "$@" > /dev/null 2>&1 || return 1; t1=$(now)
		best=$(python3 -c "t = $t1 - $t0; b = '$best'; print(f'{min(t, float(b)) if b else t:.3f}')")
	done
	echo "$best"
}

# ---- 1. hashing ----
file=$KBT_TMPDIR/hash.bin
head -c "$((MIB * 1048576))" /dev/urandom > "$file" || exit 1
cat "$file" > /dev/null   # warm
ours=$("$HASH_TOOL" "$file" | cut -d' ' -f1)
theirs=$(xxhsum -H2 "$file" 2>/dev/null | tr -d ' ' | cut -c1-32)
if [ "$ours" != "$theirs" ]; then
	echo "bench-hash: kb_hash_file and xxhsum -H2 disagree: $ours $theirs" >&2
	exit 1
fi
t_x=$(best_of_3 xxhsum -H2 "$file")
t_k=$(best_of_3 "$HASH_TOOL" "$file")
python3 - "$MIB" "$t_x" "$t_k" <<'PY'
import sys
mib, tx, tk = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
r = tx / tk
print(f"hash {mib} MiB, warm cache: xxhsum -H2 {tx:.3f} s ({mib / tx:.0f} MiB/s), "
      f"kb_hash_file {tk:.3f} s ({mib / tk:.0f} MiB/s), ratio {r:.2f} (target >= 0.9: "
      f"{'met' if r >= 0.9 else 'NOT met'})")
PY
rm -f "$file"

# ---- 2. the steps of a real validation ----
if [ "$(id -u)" != 0 ] || ! start_libvirt; then
	echo "validation steps: skipped (needs root and libvirtd)"
	exit 0
fi
kb_conf_init 8
make_test_vm a || exit 1
dom=$(vm_domain a)
kb_offering val validate=true "validation_steps=wait_for_boot,execute_command,screenshot,fs_check"
printf '[vm]\noffering = val\nbackupValidationCommand = cat\nbackupValidationCommandArguments = /etc/hostname\nbackupValidationCommandExpectedResult = %s\nbackupValidationScreenshotWait = 5\n' \
	"$(printf kboss-guest | base64 -w0)" > "$KB_ROOT/etc/vms.d/$dom.conf"
b=$(kb_backup a) || exit 1
t0=$(now)
kb kboss-validate --quiet "$b" || echo "bench-hash: the validation failed" >&2
t1=$(now)
echo "validation of the test guest (TCG, 256 MiB, screenshot wait 5 s): $(python3 -c "print(f'{$t1 - $t0:.1f}')") s in all"
kb_backup_record "$b" | sed -n 's/^step\.\([a-z_]*\) = \([a-z]*\) \([0-9.]*s\) .*/  \1: \3 (\2)/p'
