#!/bin/sh
# run-one.sh TARGET MAX_LEN SEEDS SECONDS: run one libFuzzer target (built in
# ./fuzz) for SECONDS on a scratch copy of its SEEDS, print how long it ran
# and how many inputs it tried; exit non-zero on any crash or sanitizer
# report (the reproducer is left as fuzz/TARGET-crash-*).
t=$1 max=$2 seeds=$3 secs=$4
rm -rf "fuzz/run-$t" && mkdir -p "fuzz/run-$t" || exit 1
t0=$(date +%s)
"./fuzz/$t" -max_total_time="$secs" -max_len="$max" -rss_limit_mb=2048 -timeout=20 \
  -print_final_stats=1 -artifact_prefix="fuzz/$t-" "fuzz/run-$t" "$seeds" > "fuzz/$t.log" 2>&1
rc=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/$t.log")
echo "fuzz: $t: exit $rc, ran $(( $(date +%s) - t0 )) s, ${runs:-?} inputs (log: tests/fuzz/$t.log)"
[ $rc = 0 ] || grep -E 'ERROR|SUMMARY|runtime error' "fuzz/$t.log" | head -5
rm -rf "fuzz/run-$t"
exit $rc
