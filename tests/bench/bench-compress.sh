#!/bin/bash
# Benchmark kboss-compress, the whole process as an operator runs it on a
# backup (compression, every check, the swap and the record), against
# qemu-img convert -c -W of the same file, and its output size against the
# zstd CLI on the same data, with the same thread count.
#
#   QCOW2_TOOL=path/to/qcow2-tool KBOSS_BINDIR=_build/helpers bash bench-compress.sh
#
# Environment: BENCH_DIR (scratch, default /var/tmp), BENCH_THREADS (2),
# BENCH_SIZE_MB (1024), BENCH_REPS (3), BENCH_KEEP=1 keeps the scratch folder.
# The image: copies of binaries and libraries, decompressed man pages and
# docs, written zeros (allocated zero data) and an unallocated hole.  The
# page cache is dropped before every timed run (sync; drop_caches), so each
# reads its input from disk.  kboss-compress works on a synthetic catalog
# entry holding a fresh copy of the image (tests/catalog-tool), with
# backup.compression.coroutines = BENCH_COROUTINES (8, as qemu-img -m 8)
# and every other setting at its default.  Throughput is the virtual size divided by the wall time.
# Every tool runs BENCH_REPS times, the rounds interleaved so that drift in
# the machine's speed hits all tools alike; the median wall time is
# reported.  Sizes are bytes allocated on disk (du; the writer leaves the
# empty tails of large metadata clusters as holes) and, for reference, the
# apparent file size.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"
set -u

TOOL=${QCOW2_TOOL:-$(dirname "$0")/../qcow2-tool}
CATALOG_TOOL=$(dirname "$TOOL")/catalog-tool
KBC=$KB_BINDIR/compress/kboss-compress
T=${BENCH_THREADS:-2}
SIZE_MB=${BENCH_SIZE_MB:-1024}
REPS=${BENCH_REPS:-3}
for cmd in qemu-img qemu-io zstd "$TOOL" "$CATALOG_TOOL" "$KBC"; do
  command -v "$cmd" >/dev/null || { echo "bench: $cmd is missing" >&2; exit 1; }
done

W=$(mktemp -d "${BENCH_DIR:-/var/tmp}/kboss-bench.XXXXXX")
[ "${BENCH_KEEP:-0}" = 1 ] || cleanup_push "rm -rf '$W'"
cd "$W" || exit 1
kb_conf_init 8
# The same parallelism as qemu-img -m 8 (8 compressions in flight in its
# thread pool).  kboss-compress keeps 2 x 8 + 2 batches in flight but runs
# no more compressing threads than the CPUs it may use (2 here); qemu-img
# runs its 8.
CO=${BENCH_COROUTINES:-8}
cat >> "$KBOSS_CONF" <<CONF
backup.compression.coroutines = $CO
CONF
kb_offering zs compress=true compression_library=zstd
kb_offering zl compress=true compression_library=zlib

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

samples=()
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
record() { # name seconds output-file cpu
	samples+=("$1 $2 $(du -B1 "$3" | cut -f1) $4 $(stat -c %s "$3")")
	echo "bench: $1 ${2}s cpu ${4}s $(du -B1 "$3" | cut -f1) bytes allocated" >&2
}
run() { # name output command...
	local name=$1 out=$2 secs u s cpu; shift 2
	[ -n "${KEEP_OUT:-}" ] || rm -f "$out"    # KEEP_OUT=1: the output replaces the input
	drop
	/usr/bin/time -o "$name.time" -f "%e %U %S" "$@" >/dev/null 2>"$name.err" || {
		echo "bench: $name failed:" >&2; cat "$name.err" >&2; exit 1; }
	read -r secs u s < "$name.time"
	cpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
	record "$name" "$secs" "$out" "$cpu"
}
kboss() { # name offering: kboss-compress BACKUP on a fresh catalog copy of src.qcow2
	local name=$1 id file secs u s cpu
	set -- $("$CATALOG_TOOL" fake-backup "bench-$name" "$2" src.qcow2) || { echo "bench: fake-backup failed" >&2; exit 1; }
	id=$1 file=$2
	drop
	/usr/bin/time -o "$name.time" -f "%e %U %S" "$KBC" --quiet "$id" >/dev/null 2>"$name.err" || {
		echo "bench: $name failed:" >&2; cat "$name.err" >&2; exit 1; }
	read -r secs u s < "$name.time"
	cpu=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
	[ "$(kb_backup_field "$id" compressed)" = true ] || { echo "bench: $name: backup not recorded compressed" >&2; exit 1; }
	qemu-img compare -q src.qcow2 "$file" || { echo "bench: $name: output differs from the source" >&2; exit 1; }
	qemu-img check -q "$file" || { echo "bench: $name: qemu-img check fails" >&2; exit 1; }
	ln -f "$file" "$name.qcow2"
	record "$name" "$secs" "$name.qcow2" "$cpu"
	rm -rf "$(dirname "$file")"
}

# qemu-img convert exits with its output in the page cache (its output
# cache mode is "unsafe"); kboss-compress makes its file durable before
# the swap.  The "-sync" runs are the same conversions followed by
# sync -d of the output: the same work, done as safely.
# "qemu-zstd-inplace" is what an operator would run to compress a backup
# in place with qemu-img: convert, sync, and rename the result over the
# original (which frees the original's blocks), on a fresh copy as
# kboss-compress gets one.
names="kboss-zstd qemu-zstd-W qemu-zstd-W-sync qemu-zstd-inplace kboss-zlib qemu-zlib-W qemu-zlib-W-sync zstd-cli"
for rep in $(seq "$REPS"); do
	echo "bench: round $rep of $REPS" >&2
	kboss kboss-zstd zs
	run qemu-zstd-W qemu-zstd-W.qcow2 qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zstd src.qcow2 qemu-zstd-W.qcow2
	run qemu-zstd-W-sync qemu-zstd-W-sync.qcow2 sh -c 'qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zstd src.qcow2 "$1" && sync -d "$1"' sh qemu-zstd-W-sync.qcow2
	cp --sparse=always src.qcow2 inplace.qcow2
	KEEP_OUT=1 run qemu-zstd-inplace inplace.qcow2 sh -c 'qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zstd "$1" "$1.tmp" && sync -d "$1.tmp" && mv "$1.tmp" "$1" && sync -d .' sh inplace.qcow2
	kboss kboss-zlib zl
	run qemu-zlib-W qemu-zlib-W.qcow2 qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zlib src.qcow2 qemu-zlib-W.qcow2
	run qemu-zlib-W-sync qemu-zlib-W-sync.qcow2 sh -c 'qemu-img convert -c -W -m 8 -O qcow2 -o compression_type=zlib src.qcow2 "$1" && sync -d "$1"' sh qemu-zlib-W-sync.qcow2
	run zstd-cli raw.img.zst zstd -q -f -T"$T" -3 raw.img -o raw.img.zst
done

# The median of each tool (wall time; its size and cpu from that run).
results=()
for n in $names; do
	results+=("$(printf '%s\n' "${samples[@]}" | awk -v n="$n" '$1 == n' | sort -k2,2g | \
	             awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }')")
done
for f in qemu-zstd-W qemu-zlib-W; do
	qemu-img compare -q src.qcow2 $f.qcow2 || { echo "bench: $f.qcow2 differs from the source" >&2; exit 1; }
done
zstd -q -t raw.img.zst

declare -A S B C A
for r in "${results[@]}"; do
	set -- $r
	S[$1]=$2 B[$1]=$3 C[$1]=$4 A[$1]=$5
done
cs=$(qemu-img info --output=json kboss-zstd.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')

echo
echo "kboss-compress benchmark: ${SIZE_MB} MiB virtual, source $(stat -c %s src.qcow2) bytes, $(nproc) cores, median of $REPS interleaved rounds, page cache dropped before each run, load $(cut -d' ' -f1-3 /proc/loadavg) (shared machine)"
echo "qemu-img $(qemu-img --version | head -1 | awk '{print $3}'): convert -c -W -m 8 -O qcow2 -o compression_type=...; kboss-compress BACKUP at default settings (clusters of full backups: $cs bytes) with coroutines = $CO; zstd -T$T"
printf '%-16s %8s %9s %8s %15s %15s %7s\n' tool seconds MB/s cpu_s allocated_bytes apparent_bytes ratio
for r in "${results[@]}"; do
	set -- $r
	printf '%-16s %8s %9.1f %8s %15s %15s %7.3f\n' "$1" "$2" "$(awk -v v=$VSIZE -v s=$2 'BEGIN { print v / 1e6 / s }')" \
		"$4" "$3" "$5" "$(awk -v v=$VSIZE -v o=$3 'BEGIN { print o / v }')"
done
echo
awk -v kz="${S[kboss-zstd]}" -v qz="${S[qemu-zstd-W]}" -v kl="${S[kboss-zlib]}" -v ql="${S[qemu-zlib-W]}" \
    -v qzs_="${S[qemu-zstd-W-sync]}" -v qls_="${S[qemu-zlib-W-sync]}" -v qzi="${S[qemu-zstd-inplace]}" \
    -v kzb="${B[kboss-zstd]}" -v zb="${B[zstd-cli]}" -v kzs="${B[kboss-zstd]}" -v qzs="${B[qemu-zstd-W]}" \
    -v kls="${B[kboss-zlib]}" -v qls="${B[qemu-zlib-W]}" 'BEGIN {
  a = qz / kz; b = ql / kl; c = kzb / zb
  printf "goal: kboss-compress (whole process) / qemu-img convert -c -W, zstd, throughput %.2fx (target >= 1.30): %s\n", a, a >= 1.3 ? "met" : "NOT met"
  printf "goal: kboss-compress (whole process) / qemu-img convert -c -W, zlib, throughput %.2fx (target >= 2.00): %s\n", b, b >= 2.0 ? "met" : "NOT met"
  printf "      the same against qemu-img convert -c -W with its output flushed (sync -d): zstd %.2fx (target >= 1.30): %s, zlib %.2fx (target >= 2.00): %s\n", qzs_ / kz, qzs_ / kz >= 1.3 ? "met" : "NOT met", qls_ / kl, qls_ / kl >= 2.0 ? "met" : "NOT met"
  printf "      the same against compressing the backup in place with qemu-img (convert -c -W, sync -d, mv over the original): zstd %.2fx\n", qzi / kz
  printf "goal: compressed size at default settings / zstd -3 stream %.3f (target <= 1.10): %s\n", c, c <= 1.10 ? "met" : "NOT met"
  printf "size kboss/qemu-img: zstd %.3f, zlib %.3f\n", kzs / qzs, kls / qls
  exit !(a >= 1.3 && b >= 2.0 && c <= 1.10)
}' && echo "targets: met" || echo "targets: NOT met"
