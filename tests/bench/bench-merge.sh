#!/usr/bin/env bash
# Ways to merge a backup chain (full <- inc1 <- inc2) into one full qcow2,
# for kbossctl prune's merge forward (docs/operations.md, "Merge forward").
# Usage: tests/bench/bench-merge.sh [ROUNDS] [BASE_MIB]
# Prints one line per method and round: seconds (wall) and output bytes.
#   convert        qemu-img convert of the chain into a new qcow2
#   convert+cmp    the same, then qemu-img compare chain vs output (what prune does)
#   cp+rebase      copy the top file, qemu-img rebase -b "" (pulls the backing data in)
#   convert-c      qemu-img convert -c -o compression_type=zstd, then compare
#   convert+kbw    convert, then kboss's compressing writer (zstd, 2 threads), then compare
#   convert-c-zlib, convert+kbw-zlib   the same with the zlib type (kboss's writer: libdeflate level 4)
# METHODS="..." picks some.
set -u
ROUNDS=${1:-3}
MIB=${2:-768}
B=${KBOSS_BUILDDIR:-$(dirname "$0")/../../_build}
TOOL=$(realpath "$B/tests/qcow2-tool")
[ -x "$TOOL" ] || { echo "build first: $TOOL" >&2; exit 1; }
W=$(mktemp -d /var/tmp/kboss-bench-merge.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$W" || exit 1

# The full: real file data (binaries and libraries, compressible about 2-3x).
tar cf - /usr/lib/x86_64-linux-gnu /usr/bin 2>/dev/null | head -c $((MIB * 1024 * 1024)) > base.raw
truncate -s $((MIB * 2))M base.raw
qemu-img convert -q -f raw -O qcow2 base.raw full.qcow2 && rm -f base.raw
# Two incrementals: 64 scattered writes of 1 MiB each, random data from a file.
head -c $((64 * 1024 * 1024)) /dev/urandom > rnd
for n in 1 2; do
	prev=$([ $n = 1 ] && echo full.qcow2 || echo inc1.qcow2)
	qemu-img create -q -f qcow2 -F qcow2 -b "$prev" inc$n.qcow2
	for i in $(seq 0 63); do
		off=$(( (i * 37 + n * 11) % (MIB * 2 - 1) ))
		qemu-io -f qcow2 -c "write -s rnd -P 0 ${off}M 1M" inc$n.qcow2 >/dev/null 2>&1 ||
			qemu-io -f qcow2 -c "write -P $((n + i)) ${off}M 1M" inc$n.qcow2 >/dev/null
	done
done
ls -ls full.qcow2 inc1.qcow2 inc2.qcow2 >&2
sync

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || echo "FAILED: $*" >&2; e=$(date +%s.%N); echo "$e - $s" | bc; }
run() {
	local m=$1 s out=out.qcow2
	rm -f $out tmp.qcow2
	sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
	case $m in
	convert) s=$(t qemu-img convert -q -O qcow2 inc2.qcow2 $out) ;;
	convert+cmp) s=$(t bash -c "qemu-img convert -q -O qcow2 inc2.qcow2 $out && qemu-img compare -q inc2.qcow2 $out") ;;
	cp+rebase) s=$(t bash -c "cp --sparse=always inc2.qcow2 $out && qemu-img rebase -q -f qcow2 -b '' $out") ;;
	convert-c) s=$(t bash -c "qemu-img convert -q -c -O qcow2 -o compression_type=zstd inc2.qcow2 $out && qemu-img compare -q inc2.qcow2 $out") ;;
	convert+kbw) s=$(t bash -c "qemu-img convert -q -O qcow2 inc2.qcow2 tmp.qcow2 && $TOOL compress -a zstd -t 2 --hash tmp.qcow2 $out && rm -f tmp.qcow2 && qemu-img compare -q inc2.qcow2 $out") ;;
	convert-c-zlib) s=$(t bash -c "qemu-img convert -q -c -O qcow2 -o compression_type=zlib inc2.qcow2 $out && qemu-img compare -q inc2.qcow2 $out") ;;
	convert+kbw-zlib) s=$(t bash -c "qemu-img convert -q -O qcow2 inc2.qcow2 tmp.qcow2 && $TOOL compress -a zlib -l 4 -t 2 --hash tmp.qcow2 $out && rm -f tmp.qcow2 && qemu-img compare -q inc2.qcow2 $out") ;;
	esac
	echo "$m round $r: ${s}s $(stat -c %s $out) bytes ($(du -k $out | cut -f1) KiB used)"
}
for r in $(seq 1 "$ROUNDS"); do
	for m in ${METHODS:-convert convert+cmp cp+rebase convert-c convert+kbw convert-c-zlib convert+kbw-zlib}; do
		run $m
	done
done
