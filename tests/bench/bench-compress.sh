#!/bin/bash
# Benchmark kboss's qcow2 compressor against qemu-img convert -c and the zstd
# CLI on the same realistic image, with the same thread count.
#
#   QCOW2_TOOL=path/to/qcow2-tool bash bench-compress.sh
#
# Environment: BENCH_DIR (scratch, default /var/tmp), BENCH_THREADS (2),
# BENCH_SIZE_MB (1024), BENCH_REPS (3), BENCH_KEEP=1 keeps the scratch folder.
# The image: copies of binaries and libraries, decompressed man pages and
# docs, written zeros (allocated zero data) and an unallocated hole.  Every
# timed run reads from the page cache (the source is read once first).
# Throughput is the virtual size divided by the wall time.  Every tool runs
# BENCH_REPS times, the rounds interleaved so that drift in the machine's
# speed hits all tools alike; the run with the median wall time is reported.
set -eu

TOOL=${QCOW2_TOOL:-$(dirname "$0")/../qcow2-tool}
T=${BENCH_THREADS:-2}
SIZE_MB=${BENCH_SIZE_MB:-1024}
REPS=${BENCH_REPS:-3}
for cmd in qemu-img qemu-io zstd "$TOOL"; do
  command -v "$cmd" >/dev/null || { echo "bench: $cmd is missing" >&2; exit 1; }
done

W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/kboss-bench.XXXXXX")
[ "${BENCH_KEEP:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT
cd "$W"

mb=$((1024 * 1024))
bin_mb=$((SIZE_MB * 45 / 100))
text_mb=$((SIZE_MB * 25 / 100))
zero_mb=$((SIZE_MB * 10 / 100))

echo "bench: building a ${SIZE_MB} MiB image in $W ..." >&2
# Binaries and libraries (deterministic order), capped.
find /usr/bin /usr/lib -xdev -type f -size +16k 2>/dev/null | LC_ALL=C sort | \
  xargs cat 2>/dev/null | head -c $((bin_mb * mb)) > bin.part || true
# Text: man pages and docs, decompressed.
{ find /usr/share/man -type f -name '*.gz' | LC_ALL=C sort | xargs zcat -f 2>/dev/null
  find /usr/share/doc -type f | LC_ALL=C sort | xargs zcat -f 2>/dev/null; } | \
  head -c $((text_mb * mb)) > text.part || true
truncate -s $((SIZE_MB * mb)) raw.img
dd if=bin.part of=raw.img conv=notrunc status=none
dd if=text.part of=raw.img bs=1M seek=$(((bin_mb + zero_mb) )) conv=notrunc status=none
rm -f bin.part text.part
# Sparse regions become holes; then write allocated zeros over one of them.
qemu-img convert -f raw -O qcow2 raw.img src.qcow2
qemu-io -f qcow2 -c "write -P 0 $((bin_mb * mb)) $((zero_mb * mb))" src.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw src.qcow2 raw.img     # raw twin for the zstd CLI
VSIZE=$((SIZE_MB * mb))
cat src.qcow2 raw.img > /dev/null

samples=()
run() { # name output command...
  local name=$1 out=$2 secs cpu; shift 2
  rm -f "$out"
  sync
  /usr/bin/time -o "$name.time" -f "%e %U %S" "$@" >/dev/null 2>"$name.err" || {
    echo "bench: $name failed:" >&2; cat "$name.err" >&2; exit 1; }
  read -r secs u s < "$name.time"
  cpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
  samples+=("$name $secs $(stat -c %s "$out") $cpu")
  echo "bench: $name ${secs}s cpu ${cpu}s $(stat -c %s "$out") bytes" >&2
}

names="ours-zstd qemu-zstd qemu-zstd-W ours-zlib qemu-zlib qemu-zlib-W zstd-cli"
for rep in $(seq "$REPS"); do
  echo "bench: round $rep of $REPS" >&2
  run ours-zstd ours-zstd.qcow2 "$TOOL" compress -a zstd -t "$T" src.qcow2 ours-zstd.qcow2
  run qemu-zstd qemu-zstd.qcow2 qemu-img convert -c -m 8 -O qcow2 -o compression_type=zstd src.qcow2 qemu-zstd.qcow2
  run qemu-zstd-W qemu-zstd-W.qcow2 qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zstd src.qcow2 qemu-zstd-W.qcow2
  run ours-zlib ours-zlib.qcow2 "$TOOL" compress -a zlib -t "$T" src.qcow2 ours-zlib.qcow2
  run qemu-zlib qemu-zlib.qcow2 qemu-img convert -c -m 8 -O qcow2 -o compression_type=zlib src.qcow2 qemu-zlib.qcow2
  run qemu-zlib-W qemu-zlib-W.qcow2 qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zlib src.qcow2 qemu-zlib-W.qcow2
  run zstd-cli raw.img.zst zstd -q -f -T"$T" -3 raw.img -o raw.img.zst
done

# The median run of each tool (by wall time).
results=()
for n in $names; do
  results+=("$(printf '%s\n' "${samples[@]}" | awk -v n="$n" '$1 == n' | sort -k2,2g | \
               awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }')")
done

# Every output must read back identical.
for f in ours-zstd ours-zlib qemu-zstd qemu-zlib qemu-zstd-W qemu-zlib-W; do
  qemu-img compare -q src.qcow2 $f.qcow2 || { echo "bench: $f.qcow2 differs from the source" >&2; exit 1; }
done
for f in ours-zstd ours-zlib; do
  qemu-img check -q $f.qcow2 || { echo "bench: $f.qcow2 fails qemu-img check" >&2; exit 1; }
done
zstd -q -t raw.img.zst

declare -A S B C
for r in "${results[@]}"; do
  set -- $r
  S[$1]=$2
  B[$1]=$3
  C[$1]=$4
done
best() { awk -v a="${S[$1]}" -v b="${S[$2]}" -v x="$1" -v y="$2" 'BEGIN { print (a <= b) ? x : y }'; }
qz=$(best qemu-zstd qemu-zstd-W)
ql=$(best qemu-zlib qemu-zlib-W)

echo
echo "kboss qcow2 compression benchmark: ${SIZE_MB} MiB virtual, source $(stat -c %s src.qcow2) bytes, threads $T, median of $REPS runs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "qemu-img $(qemu-img --version | head -1 | awk '{print $3}'), flags: convert -c -m 8 [-W] -O qcow2 -o compression_type=..."
printf '%-14s %8s %10s %8s %14s %8s\n' tool seconds MB/s cpu_s output_bytes ratio
for r in "${results[@]}"; do
  set -- $r
  printf '%-14s %8s %10.1f %8s %14s %8.3f\n' "$1" "$2" "$(awk -v v=$VSIZE -v s=$2 'BEGIN { print v / 1e6 / s }')" \
    "$4" "$3" "$(awk -v v=$VSIZE -v o=$3 'BEGIN { print o / v }')"
done
echo
awk -v oz="${S[ours-zstd]}" -v qz="${S[$qz]}" -v ozb="${B[ours-zstd]}" -v qzb="${B[$qz]}" \
    -v ol="${S[ours-zlib]}" -v ql="${S[$ql]}" -v olb="${B[ours-zlib]}" -v qlb="${B[$ql]}" \
    -v qzn="$qz" -v qln="$ql" -v coz="${C[ours-zstd]}" -v cqz="${C[$qz]}" -v col="${C[ours-zlib]}" \
    -v cql="${C[$ql]}" 'BEGIN {
  printf "zstd: ours/%s throughput %.2fx (target >= 1.30), size %.3f (target <= 1.000)\n", qzn, qz / oz, ozb / qzb
  printf "zlib: ours/%s throughput %.2fx (target >= 2.00), size %.3f (target <= 1.000)\n", qln, ql / ol, olb / qlb
  printf "cpu time qemu/ours: zstd %.2fx, zlib %.2fx\n", cqz / coz, cql / col
  exit !((qz / oz >= 1.3) && (ozb <= qzb) && (ql / ol >= 2.0) && (olb <= qlb))
}' && echo "targets: met" || echo "targets: NOT met"
