#!/usr/bin/env bash
# Reading from a compressed backup where it matters: the time until the
# guest agent answers (1) in a quick restore and (2) in a validation boot
# (the wait_for_boot step), from a compressed backup against the same VM's
# uncompressed backup. Two full backups of the test VM are taken; one is
# compressed by kboss-compress at the default settings. BENCH_REPS (3)
# interleaved rounds, page cache dropped before each run. The goals are
# judged on the median of the per-round ratios (compressed / uncompressed of
# the same round): the rounds are interleaved so that each pair ran under
# the same load, which on a shared machine drifts by a factor of two within
# minutes; the medians of the times are printed too.
# BENCH_ALSO_KIB="2048 ..." adds, for comparison only, a backup compressed
# with backup.compression.cluster.size = each of these, timed in the same
# rounds (no goal).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

REPS=${BENCH_REPS:-3}
start_libvirt || exit 1
kb_conf_init 8
kb_offering qv allow_quick_restore=true validate=true validation_steps=wait_for_boot
make_test_vm b 64 || exit 1
dom=$(vm_domain b)
printf '[vm]\noffering = qv\nbackupValidationBootTimeout = 600\n' > "$KB_ROOT/etc/vms.d/$dom.conf"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

plain=$(kb_backup b --full) && comp=$(kb_backup b --full) || { echo "bench: backup failed" >&2; exit 1; }
kb kboss-compress --quiet "$comp" >/dev/null || { echo "bench: kboss-compress failed" >&2; exit 1; }
cs=$(qemu-img info -U --output=json "$(kb_backup_file "$comp" vda)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')
echo "bench: backups $plain (uncompressed) and $comp (compressed, $cs-byte clusters)" >&2
also=()
for kib in ${BENCH_ALSO_KIB:-}; do
	b=$(kb_backup b --full) || { echo "bench: backup failed" >&2; exit 1; }
	cp "$KBOSS_CONF" "$KBOSS_CONF.orig"
	echo "backup.compression.cluster.size = $kib" >> "$KBOSS_CONF"   # the [zone] section ends the file
	kb kboss-compress --quiet "$b" >/dev/null || { echo "bench: kboss-compress failed" >&2; exit 1; }
	mv "$KBOSS_CONF.orig" "$KBOSS_CONF"
	also+=("$b")
done

quick() { # BACKUP: seconds from kboss-restore --quick to the agent's answer
	local t0 t1 pid i
	drop
	t0=$(now); kb kboss-restore --quiet --quick "$1" >/dev/null 2>&1 & pid=$!
	for i in $(seq 1 1200); do [ "$(vm_state b)" = running ] && break; sleep 0.1; done
	wait_agent b 600 0.1 >/dev/null || { echo "bench: no agent after quick restore of $1" >&2; }
	t1=$(now)
	secs "$t0" "$t1"
	wait $pid
	stop_vm b >/dev/null 2>&1
}
validation() { # BACKUP: seconds of the wait_for_boot step
	drop
	kb kboss-validate --quiet "$1" >/dev/null 2>&1
	kb_backup_record "$1" | sed -n 's/^step.wait_for_boot = [a-z]* \([0-9.]*\)s.*/\1/p'
}

qp=() qc=() vp=() vc=()
declare -A qa va
for r in $(seq "$REPS"); do
	echo "bench: round $r of $REPS" >&2
	qp+=("$(quick "$plain")"); qc+=("$(quick "$comp")")
	for i in "${!also[@]}"; do qa[$i]+=" $(quick "${also[$i]}")"; done
	vp+=("$(validation "$plain")"); vc+=("$(validation "$comp")")
	for i in "${!also[@]}"; do va[$i]+=" $(validation "${also[$i]}")"; done
	echo "bench: quick ${qp[-1]} / ${qc[-1]} s, validation boot ${vp[-1]} / ${vc[-1]} s (uncompressed / compressed)" >&2
done
mqp=$(median "${qp[@]}") mqc=$(median "${qc[@]}") mvp=$(median "${vp[@]}") mvc=$(median "${vc[@]}")

echo
echo "kboss time until the guest agent answers, compressed vs uncompressed backup: test guest, compressed clusters $cs bytes, median of $REPS, load $(cut -d' ' -f1-3 /proc/loadavg) (shared machine, TCG)"
printf '%-34s %12s %12s\n' "" uncompressed compressed
printf '%-34s %12s %12s\n' "quick restore to agent (s)" "$mqp" "$mqc"
printf '%-34s %12s %12s\n' "validation wait_for_boot (s)" "$mvp" "$mvc"
ratios() { # UNCOMPRESSED... -- COMPRESSED...: the per-round ratios
	local -a a b
	while [ "$1" != -- ]; do a+=("$1"); shift; done
	shift
	b=("$@")
	for i in "${!a[@]}"; do python3 -c "print(f'{${b[$i]} / ${a[$i]}:.2f}')"; done
}
echo "rounds (uncompressed/compressed): quick restore$(for i in "${!qp[@]}"; do printf ' %s/%s' "${qp[$i]}" "${qc[$i]}"; done) s; validation$(for i in "${!vp[@]}"; do printf ' %s/%s' "${vp[$i]}" "${vc[$i]}"; done) s"
i=0
for kib in ${BENCH_ALSO_KIB:-}; do
	echo "(comparison, no goal) cluster.size $kib: quick restore$(printf ' %s' ${qa[$i]}) s, ratio median $(median $(ratios "${qp[@]}" -- ${qa[$i]})); validation$(printf ' %s' ${va[$i]}) s, ratio median $(median $(ratios "${vp[@]}" -- ${va[$i]}))"
	i=$((i + 1))
done
rq=$(median $(ratios "${qp[@]}" -- "${qc[@]}")) rv=$(median $(ratios "${vp[@]}" -- "${vc[@]}"))
awk -v q="$rq" -v v="$rv" -v mq="$(python3 -c "print(f'{$mqc / $mqp:.2f}')")" -v mv="$(python3 -c "print(f'{$mvc / $mvp:.2f}')")" 'BEGIN {
  printf "goal: quick restore time to agent, compressed/uncompressed, median of the round ratios %.2f (target <= 1.10; ratio of the medians %.2f): %s\n", q, mq, q <= 1.10 ? "met" : "NOT met"
  printf "goal: validation boot time to agent, compressed/uncompressed, median of the round ratios %.2f (target <= 1.10; ratio of the medians %.2f): %s\n", v, mv, v <= 1.10 ? "met" : "NOT met"
}'
