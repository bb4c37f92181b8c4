#!/bin/bash
# kboss's compressing qcow2 writer against qemu as the oracle: every output
# must pass `qemu-img check`, read back identical (`qemu-img compare`, also
# through backing chains), and keep unallocated clusters unallocated
# (`qemu-img map` / `qemu-io map`).  Unsupported inputs are refused and
# failures leave neither the output nor a temporary file behind.
set -u

TOOL=${QCOW2_TOOL:-${top_builddir:-$(dirname "$0")/../..}/tests/qcow2-tool}
for cmd in qemu-img qemu-io jq; do
  if ! command -v $cmd >/dev/null; then
    echo "1..0 # SKIP $cmd is not installed"
    exit 0
  fi
done

W=$(mktemp -d /tmp/kboss-qcow2-test.XXXXXX)
MNT=
cleanup() {
  [ -n "$MNT" ] && umount "$MNT" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
cd "$W" || exit 1

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { # description, command...
  local d=$1; shift
  if "$@" >"$W/.out" 2>&1; then ok "$d"; else notok "$d"; sed 's/^/# /' "$W/.out"; fi
}

qio() { qemu-io -f qcow2 "$@" >/dev/null; }

# Allocation per range as qemu sees it, adjacent equal ranges merged.
map_of() {
  qemu-img map --output=json "$1" | jq -c 'reduce .[] as $e ([];
    if length > 0 and .[-1].d == $e.depth and .[-1].p == $e.present and (.[-1].s + .[-1].l) == $e.start
    then .[-1].l += $e.length
    else . + [{s: $e.start, l: $e.length, d: $e.depth, p: $e.present}] end)'
}

check_clean() { qemu-img check "$1" 2>&1 | grep -q "No errors were found on the image"; }
no_leftovers() { ! ls -A "${1:-.}" | grep -q kbtmp; }

# Deterministic incompressible and text-like data.
head -c 3000000 /dev/urandom > rand.bin
{ for i in $(seq 1 20000); do echo "line $i of some very compressible text for kboss"; done; } > text.bin

# Same checks for one input/output pair.
verify_pair() { # label in out [algo]
  local label=$1 in=$2 out=$3 algo=${4:-zstd}
  check "$label: qemu-img check is clean" check_clean "$out"
  check "$label: qemu-img compare identical" qemu-img compare "$in" "$out"
  check "$label: allocation map unchanged (qemu-img map)" test "$(map_of "$in")" = "$(map_of "$out")"
  check "$label: top-layer allocation unchanged (qemu-io map)" \
    test "$(qemu-io -r -c map "$in")" = "$(qemu-io -r -c map "$out")"
  check "$label: compression type is $algo" \
    bash -c "qemu-img info '$out' | grep -q 'compression type: $algo'"
  check "$label: backing file kept" \
    test "$(qemu-img info --output=json "$in" | jq -r '.["backing-filename"] // "-", .["backing-filename-format"] // "-"')" = \
         "$(qemu-img info --output=json "$out" | jq -r '.["backing-filename"] // "-", .["backing-filename-format"] // "-"')"
  check "$label: no temporary file left" no_leftovers
}

# 1. Standalone images with every kind of cluster, several cluster sizes.
for cs in 65536 4096 2097152; do
  size=$((64 * 1024 * 1024 + 5120))           # not a multiple of the cluster size
  img=img-$cs.qcow2
  qemu-img create -q -f qcow2 -o cluster_size=$cs $img $size
  qio -c "write -s rand.bin 0 3000000" $img
  qio -c "write -s text.bin 4M 980000" $img
  qio -c "write -P 0 8M 1M" $img             # written zeros (data clusters)
  qio -c "write -z 10M 1M" $img              # zero clusters
  qio -c "write -P 0x5a 20M 5M" $img
  qio -c "write -P 0x11 $((size - 5120)) 5120" $img   # the partial last cluster
  qio -c "write -P 0x22 $((size - 200000)) 4096" $img
  for algo in zstd zlib; do
    out=out-$cs-$algo.qcow2
    check "cs=$cs $algo: compress" "$TOOL" compress -a $algo -t 2 $img $out
    verify_pair "cs=$cs $algo" $img $out $algo
    check "cs=$cs $algo: output is smaller" test "$(stat -c %s $out)" -lt "$(stat -c %s $img)"
    check "cs=$cs $algo: output is 0600" test "$(stat -c %a $out)" = 600
  done
done

# Threads: no more compress than the CPUs the process may run on; the
# output does not depend on how many did.
taskset -c 0 "$TOOL" compress -t 4 img-65536.qcow2 one-cpu.qcow2 > one-cpu.txt
check "threads: 4 asked on one CPU, 1 compresses" grep -qx "threads 1" one-cpu.txt
"$TOOL" compress -t 64 img-65536.qcow2 all-cpus.qcow2 > all-cpus.txt
check "threads: 64 asked, as many as the CPUs ($(nproc)) compress" grep -qx "threads $(nproc)" all-cpus.txt
"$TOOL" compress -t 1 img-65536.qcow2 t1.qcow2 > t1.txt
check "threads: 1 asked, 1 compresses" grep -qx "threads 1" t1.txt
check "threads: the same bytes whatever the thread count" cmp one-cpu.qcow2 all-cpus.qcow2
check "threads: the same bytes with one thread" cmp t1.qcow2 all-cpus.qcow2

# 2. A chain: base <- delta; the delta is compressed, the chain still reads the same.
qemu-img create -q -f qcow2 base.qcow2 32M
qio -c "write -s rand.bin 0 3000000" -c "write -P 0x33 8M 8M" base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 delta.qcow2
qio -c "write -P 0x44 1M 64k" -c "write -z 9M 2M" -c "write -s text.bin 12M 500000" \
    -c "write -P 0x55 $((32 * 1024 * 1024 - 4096)) 4096" -c "write -P 0 14M 128k" delta.qcow2
qemu-img convert -O raw delta.qcow2 chain-before.raw
check "chain: compress the delta" "$TOOL" compress -t 3 delta.qcow2 delta-c.qcow2
verify_pair "chain delta" delta.qcow2 delta-c.qcow2
check "chain: compressed delta reads as the whole chain did" qemu-img compare chain-before.raw delta-c.qcow2
check "chain: zero clusters over base data stay zero" \
  bash -c "qemu-io -r -c 'read -P 0 9M 2M' delta-c.qcow2 | grep -q 'read 2097152'"
check "chain: unallocated ranges fall through to the base (depth 1)" \
  bash -c "map_of() { qemu-img map --output=json \$1 | jq -c '[.[] | select(.depth == 1) | .start]'; }; test \"\$(map_of delta.qcow2)\" = \"\$(map_of delta-c.qcow2)\" && test \"\$(map_of delta-c.qcow2)\" != '[]'"

# 3. A parent compressed in place while its child exists.
qemu-img create -q -f qcow2 p.qcow2 16M
qio -c "write -s text.bin 0 900000" -c "write -P 0x66 4M 4M" p.qcow2
qemu-img create -q -f qcow2 -b p.qcow2 -F qcow2 child.qcow2
qio -c "write -P 0x77 5M 1M" child.qcow2
qemu-img convert -O raw child.qcow2 child-before.raw
check "parent: compress in place (--replace)" "$TOOL" compress --replace -a zlib p.qcow2 p.qcow2
check "parent: qemu-img check clean" check_clean p.qcow2
check "parent: is compressed now" bash -c "'$TOOL' info p.qcow2 | grep -q '^compressed [1-9]'"
check "parent: child chain identical" qemu-img compare child-before.raw child.qcow2
check "parent: no temporary file left" no_leftovers

# 4. Inputs from other writers: v2 (compat=0.10) and an already compressed image.
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 8M
qio -c "write -s text.bin 0 800000" -c "write -P 0 2M 1M" v2.qcow2
check "v2 input: compress" "$TOOL" compress v2.qcow2 v2-c.qcow2
verify_pair "v2 input" v2.qcow2 v2-c.qcow2
qemu-img convert -c -O qcow2 -o compression_type=zlib img-65536.qcow2 qemu-z.qcow2
check "qemu-compressed input: recompress with zstd" "$TOOL" compress qemu-z.qcow2 qemu-z-c.qcow2
check "qemu-compressed input: identical" qemu-img compare img-65536.qcow2 qemu-z-c.qcow2
check "qemu-compressed input: our reader reads qemu's zlib clusters" \
  bash -c "cmp <('$TOOL' read qemu-z.qcow2 4194304 980000) <(head -c 980000 text.bin)"
qemu-img convert -c -O qcow2 -o compression_type=zstd img-65536.qcow2 qemu-zs.qcow2
check "qemu-compressed input: our reader reads qemu's zstd clusters" \
  bash -c "cmp <('$TOOL' read qemu-zs.qcow2 4194304 980000) <(head -c 980000 text.bin)"

# 4b. zlib clusters whose only redundancy lies more than 4 KiB back.  qemu
# inflates with a 4 KiB window (windowBits -12) but in one call into the whole
# cluster, so the 32 KiB distances libdeflate emits must still read back.
head -c 16384 /dev/urandom > far.blk
for i in $(seq 1 64); do cat far.blk; done > far.bin     # 1 MiB, period 16 KiB
qemu-img create -q -f qcow2 far.qcow2 4M
qio -c "write -s far.bin 1M 1048576" far.qcow2
check "far matches: compress with zlib" "$TOOL" compress -a zlib far.qcow2 far-z.qcow2
check "far matches: every data cluster is stored compressed" \
  bash -c "'$TOOL' info far-z.qcow2 | grep -qx 'compressed 16'"
check "far matches: qemu-img compare identical" qemu-img compare far.qcow2 far-z.qcow2
check "far matches: qemu reads the bytes back" \
  bash -c "qemu-img convert -O raw far-z.qcow2 far-z.raw && cmp -i 1048576:0 -n 1048576 far-z.raw far.bin"
check "far matches: our reader reads them too" \
  bash -c "cmp <('$TOOL' read far-z.qcow2 1048576 1048576) far.bin"

# 5. Unsupported inputs are refused with a clear message and no output.
refuse() { # label pattern image
  local label=$1 pat=$2 img=$3
  rm -f refused.qcow2
  if "$TOOL" compress "$img" refused.qcow2 2>err.txt; then
    notok "refuse $label: it compressed"
  elif ! grep -qi -- "$pat" err.txt; then
    notok "refuse $label: message"; sed 's/^/# /' err.txt
  elif [ -e refused.qcow2 ] || ! no_leftovers; then
    notok "refuse $label: output or temp file left"
  else
    ok "refuse $label: $(head -c 150 err.txt)"
  fi
}
# qemu-img times its LUKS key derivation by CPU usage and gives up now and then
# on a busy machine ("Unable to get accurate CPU usage"): try a few times.
for try in 1 2 3 4 5; do
  qemu-img create -q -f qcow2 --object secret,id=sec0,data=secret123 \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100 enc.qcow2 8M && break
  sleep 1
done
refuse "encrypted" "encrypted images are not supported" enc.qcow2
qemu-img create -q -f qcow2 snap.qcow2 8M
qio -c "write -P 1 0 64k" snap.qcow2
qemu-img snapshot -c s1 snap.qcow2
refuse "internal snapshot" "internal snapshots" snap.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on el2.qcow2 8M
refuse "extended_l2" "extended L2" el2.qcow2
qemu-img create -q -f qcow2 -o data_file=ext.raw df.qcow2 8M
refuse "data_file" "external data file" df.qcow2
printf 'QFI\xfb\0\0\0\3garbage' > trunc.qcow2
refuse "truncated header" "not a qcow2 image" trunc.qcow2
cp img-65536.qcow2 dirty.qcow2
printf '\x01' | dd of=dirty.qcow2 bs=1 seek=79 conv=notrunc status=none
refuse "dirty" "dirty" dirty.qcow2

# 6. Output safety.
cp out-65536-zstd.qcow2 exists.qcow2
sum_before=$(md5sum exists.qcow2)
if "$TOOL" compress img-65536.qcow2 exists.qcow2 2>err.txt; then
  notok "existing output refused without --replace"
else
  check "existing output refused and untouched" test "$(md5sum exists.qcow2)" = "$sum_before"
fi

sum_in=$(md5sum img-65536.qcow2)
(ulimit -f 1024; exec "$TOOL" compress -a zlib img-65536.qcow2 efbig.qcow2) 2>err.txt
rc=$?
check "file size limit: fails" test $rc -ne 0
check "file size limit: says why" grep -q "File too large" err.txt
check "file size limit: no output, no temp file" bash -c "! test -e efbig.qcow2 && ! ls -A | grep -q kbtmp"
check "file size limit: input untouched" test "$(md5sum img-65536.qcow2)" = "$sum_in"

mkdir -p small
if mount -t tmpfs -o size=1m tmpfs small 2>/dev/null; then
  MNT=$W/small
  "$TOOL" compress -a zlib img-65536.qcow2 small/full.qcow2 2>err.txt
  rc=$?
  check "full disk: fails" test $rc -ne 0
  check "full disk: says why" grep -q "No space left" err.txt
  check "full disk: nothing left in the output directory" test -z "$(ls -A small)"
  check "full disk: input untouched" test "$(md5sum img-65536.qcow2)" = "$sum_in"
  umount small && MNT=
else
  n=$((n + 1)); echo "ok $n # SKIP full disk: cannot mount a tmpfs here"
fi

# Rate limit, cancel (SIGINT) and timeout: ~8 MB of data at 4 MB/s.
check "rate limit 4 MB/s: compress" bash -c "'$TOOL' compress -r 4 img-65536.qcow2 slow.qcow2 > slow.txt"
check "rate limit 4 MB/s: took at least 1.5 s" \
  bash -c "test \$(awk '/elapsed_ms/ {print \$2}' slow.txt) -ge 1500"
"$TOOL" compress -r 2 img-65536.qcow2 cancel.qcow2 2>err.txt &
pid=$!
sleep 1
kill -INT $pid
wait $pid
rc=$?
check "SIGINT: fails" test $rc -ne 0
check "SIGINT: says cancelled" grep -q cancelled err.txt
check "SIGINT: no output, no temp file" bash -c "! test -e cancel.qcow2 && ! ls -A | grep -q kbtmp"
"$TOOL" compress -r 2 --timeout 1 img-65536.qcow2 timeout.qcow2 2>err.txt
rc=$?
check "timeout: fails" test $rc -ne 0
check "timeout: says timed out" grep -q "timed out" err.txt
check "timeout: no output, no temp file" bash -c "! test -e timeout.qcow2 && ! ls -A | grep -q kbtmp"

echo "1..$n"
[ $failed -eq 0 ]
