#!/usr/bin/env bash
# Compression jobs: a real chain of backups of a stopped test VM is
# compressed by kboss-compress (a parent first, while its children exist,
# then the rest by "run"); every backup's chain must read exactly as before
# (qemu-img compare against copies taken before), qemu-img check must be
# clean, backup.ini must record it, and a restore of the compressed last
# backup must equal the source. Then the job side on synthetic catalog
# entries holding real qcow2 files: zone and per-host limits with several
# runners posing as hosts, retries and their interval, timeout, minimum free
# storage, a backup in use, and a runner killed mid-job. In between, the
# cluster sizes: a full compressed with 1 MiB clusters (the default), one
# with 2 MiB clusters (the default of the previous release) and one with
# 64 KiB clusters (as before backup.compression.cluster.size) are parents of
# incrementals taken afterwards, which are compressed too; the three chains
# restore byte-equal, the newest quick-restores and validates.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 74
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
CATALOG_TOOL=${top_builddir:-$KBT_TOPDIR/_build}/tests/catalog-tool
[ -x "$CATALOG_TOOL" ] || bail_out "tests/catalog-tool is not built"
KBC=$(ls "$KB_BINDIR"/compress/kboss-compress 2>/dev/null) || bail_out "kboss-compress is not built"
cp "$KBOSS_CONF" "$KB_ROOT/kboss.conf.base"
MiB=$((1024 * 1024))

# conf_set KEY=VALUE...: the base configuration plus backup.compression.KEY lines
conf_set() {
	{
		cat "$KB_ROOT/kboss.conf.base"
		for kv in "$@"; do echo "backup.compression.${kv%%=*} = ${kv#*=}"; done
	} > "$KBOSS_CONF"
}
job_field() { # JOB KEY
	kb kbossctl jobs --id "$1" --json | python3 -c '
import json, sys
v = json.load(sys.stdin)[0].get(sys.argv[1])
print("" if v is None else v)' "$2"
}
no_temps() { # DATA_FILE: nothing of ours left beside it
	! ls -a "$(dirname "$1")" | grep -q kbcompress
}
qcow2_ctype() {
	qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
print(json.load(sys.stdin).get("format-specific", {}).get("data", {}).get("compression-type", "zlib"))'
}

kb_offering zs compress=true compression_library=zstd allow_quick_restore=true validate=true validation_steps=wait_for_boot
kb_offering zl compress=true compression_library=zlib
make_test_vm a || bail_out "cannot define the test VM"
kb_assign a zs
data=$(vm_data_disk a)

# ---- a real chain, compressed parent first ----
qemu-io -f qcow2 -c "write -P 0xa1 0 $MiB" "$data" >/dev/null
b1=$(kb_backup a)
qemu-io -f qcow2 -c "write -P 0xb2 $((4 * MiB)) $((512 * 1024))" "$data" >/dev/null
b2=$(kb_backup a)
qemu-io -f qcow2 -c "write -P 0xc3 $((8 * MiB)) $((256 * 1024))" "$data" >/dev/null
b3=$(kb_backup a)
ok [ -n "$b1" -a -n "$b2" -a -n "$b3" ] "three backups of the stopped VM: $b1 $b2 $b3"
ok [ "$(kb_backup_field "$b3" parent)" = "$b2" -a "$(kb_backup_field "$b2" parent)" = "$b1" ] "they form one chain"
n=$(kb kbossctl jobs --type compression --scheduled | tail -n +2 | wc -l)
ok [ "$n" = 3 ] "three compression jobs are scheduled ($n)"

refs=$KBT_TMPDIR/refs
mkdir -p "$refs"
for b in $b1 $b2 $b3; do
	for d in vda vdb; do
		qemu-img convert -U -O qcow2 "$(kb_backup_file "$b" $d)" "$refs/$b-$d.qcow2" || bail_out "copy of $b $d"
	done
done
chain_same() { # BACKUP...: every disk's chain reads as its copy from before
	local b d
	for b in "$@"; do
		for d in vda vdb; do
			qemu-img compare -q -U "$(kb_backup_file "$b" $d)" "$refs/$b-$d.qcow2" || { diag "$b $d differs"; return 1; }
		done
	done
}

out=$(kb kboss-compress "$b1" 2>&1)
ok [ $? = 0 ] "kboss-compress BACKUP compresses the full while its children exist"
diag "$out"
ok chain_same "$b1" "$b2" "$b3" "the full and both incrementals read as before"

out=$(kb kboss-compress run 2>&1)
ok [ $? = 0 ] "kboss-compress run compresses the rest"
diag "$out"
all_checked() {
	local b d
	for b in $b1 $b2 $b3; do
		for d in vda vdb; do
			qemu-img check -q "$(kb_backup_file "$b" $d)" || { diag "check $b $d"; return 1; }
		done
	done
}
ok all_checked "qemu-img check is clean on every compressed file"
ok chain_same "$b1" "$b2" "$b3" "every backup's chain reads as before (qemu-img compare)"
recorded() {
	local b
	for b in $b1 $b2 $b3; do
		[ "$(kb_backup_field "$b" compressed)" = true ] && [ "$(kb_backup_field "$b" compression_library)" = zstd ] || return 1
	done
}
ok recorded "backup.ini says compressed = true, compression_library = zstd"
shrunk() {
	local b before after
	for b in $b1 $b2 $b3; do
		before=$(kb_backup_field "$b" uncompressed_size) after=$(kb_backup_field "$b" size)
		diag "$b: $before -> $after bytes"
		[ "$after" -lt "$before" ] || return 1
	done
}
ok shrunk "every backup's recorded size shrank"
ok [ "$(qcow2_ctype "$(kb_backup_file "$b3" vdb)")" = zstd ] "qemu reads the files as zstd-compressed qcow2"
ok [ "$(kb kbossctl jobs --type compression --json | python3 -c 'import json,sys; print(sorted(set(j["state"] for j in json.load(sys.stdin))))')" = "['Done']" ] "every compression job is Done"

# restore of the compressed last backup equals the source
cp --sparse=always "$data" "$KBT_TMPDIR/expect-vdb.qcow2"
cp --sparse=always "$(vm_disk a)" "$KBT_TMPDIR/expect-vda.qcow2"
qemu-io -f qcow2 -c "write -P 0xee 0 $((2 * MiB))" "$data" >/dev/null
out=$(kb kboss-restore "$b3" 2>&1)
ok [ $? = 0 ] "kboss-restore of the compressed last backup"
diag "$out"
ok qemu-img compare -q "$data" "$KBT_TMPDIR/expect-vdb.qcow2" "the restored data disk equals the source"
ok qemu-img compare -q "$(vm_disk a)" "$KBT_TMPDIR/expect-vda.qcow2" "the restored root disk equals the source"

# ---- zlib offering ----
kb_assign a zl
b4=$(kb_backup a --full)
qemu-img convert -U -O qcow2 "$(kb_backup_file "$b4" vdb)" "$refs/$b4-vdb.qcow2"
qemu-img convert -U -O qcow2 "$(kb_backup_file "$b4" vda)" "$refs/$b4-vda.qcow2"
kb kboss-compress run >/dev/null 2>&1
ok [ "$(kb_backup_field "$b4" compression_library)" = zlib -a "$(qcow2_ctype "$(kb_backup_file "$b4" vdb)")" = zlib ] \
	"a zlib offering's backup is zlib-compressed"
ok chain_same "$b4" "the zlib backup reads as before"
ok qemu-img check -q "$(kb_backup_file "$b4" vda)" "qemu-img check is clean on it"

# ---- cluster sizes: old (64 KiB), previous (2 MiB) and new (1 MiB) compressed parents ----
kb_assign a zs
printf 'backupValidationBootTimeout = 300\n' >> "$KB_ROOT/etc/vms.d/$(vm_domain a).conf"
cluster_size() { qemu-img info -U --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])'; }
snap() { # NAME: the VM's disks now
	cp --sparse=always "$data" "$KBT_TMPDIR/$1-vdb.qcow2"
	cp --sparse=always "$(vm_disk a)" "$KBT_TMPDIR/$1-vda.qcow2"
}
restores_to() { # BACKUP NAME: kboss-restore BACKUP gives the disks of snap NAME
	qemu-io -f qcow2 -c "write -P 0xee 0 $((2 * MiB))" "$data" >/dev/null
	kb kboss-restore --quiet "$1" >/dev/null 2>&1 || { diag "kboss-restore $1 failed"; return 1; }
	qemu-img compare -q "$data" "$KBT_TMPDIR/$2-vdb.qcow2" && qemu-img compare -q "$(vm_disk a)" "$KBT_TMPDIR/$2-vda.qcow2"
}
for kind in old prev new; do
	case $kind in
	old) conf_set cluster.size=64; want=65536 n=1 ;;
	prev) conf_set cluster.size=2048; want=2097152 n=2 ;;
	new) conf_set; want=1048576 n=3 ;;
	esac
	qemu-io -f qcow2 -c "write -P 0x5$n $((2 * MiB)) $MiB" "$data" >/dev/null
	f=$(kb_backup a --full)
	snap "$kind-f"
	kb kboss-compress --quiet "$f" >/dev/null 2>&1
	ok [ "$(cluster_size "$(kb_backup_file "$f" vdb)")" = $want -a "$(kb_backup_field "$f" compressed)" = true ] \
		"$kind: the full is compressed with $want-byte clusters"
	qemu-io -f qcow2 -c "write -P 0x6$n $((3 * MiB)) $((MiB / 2))" "$data" >/dev/null
	i1=$(kb_backup a)
	snap "$kind-i1"
	ok [ "$(kb_backup_field "$i1" parent)" = "$f" ] "$kind: an incremental taken after the compression has the compressed full as parent"
	conf_set
	kb kboss-compress --quiet "$i1" >/dev/null 2>&1
	ok [ "$(kb_backup_field "$i1" compressed)" = true -a "$(cluster_size "$(kb_backup_file "$i1" vdb)")" = 65536 ] \
		"$kind: the incremental is compressed at the new settings (an incremental keeps its 64 KiB clusters)"
	qemu-io -f qcow2 -c "write -P 0x7$n $((5 * MiB)) $MiB" "$data" >/dev/null
	i2=$(kb_backup a)
	snap "$kind-i2"
	ok qemu-img check -q "$(kb_backup_file "$i1" vdb)" "$kind: qemu-img check is clean on the compressed incremental"
	ok restores_to "$i2" "$kind-i2" "$kind: the chain (compressed full, compressed incremental, incremental) restores byte-equal"
	ok restores_to "$i1" "$kind-i1" "$kind: its compressed incremental restores byte-equal"
	ok restores_to "$f" "$kind-f" "$kind: its compressed full restores byte-equal"
done
# The newest chain, compressed through (1 MiB full <- 64 KiB incremental <- 64 KiB
# incremental): quick restore and validation (which waits for pending compression).
kb kboss-compress run >/dev/null 2>&1
ok [ "$(kb_backup_field "$i2" compressed)" = true ] "kboss-compress run compresses the last incremental too"
kb kboss-restore --quick "$i2" > "$KBT_TMPDIR/quick.log" 2>&1 &
qpid=$!
for i in $(seq 1 600); do [ "$(vm_state a)" = running ] && break; sleep 0.2; done
wait_agent a 300
ok [ $? = 0 ] "a quick restore of it boots: the guest agent answers"
wait $qpid
rc=$?
ok [ $rc = 0 ] "the quick restore consolidates (exit $rc): $(tail -n1 "$KBT_TMPDIR/quick.log")"
stop_vm a >/dev/null 2>&1
ok qemu-img compare -q "$data" "$KBT_TMPDIR/new-i2-vdb.qcow2" "the quick-restored data disk equals the one at backup time (the guest ran from the root disk)"
out=$(kb kboss-validate "$i2" 2>&1)
rc=$?
ok [ $rc = 0 ] "kboss-validate of it passes (exit $rc): $(kb_backup_record "$i2" | grep '^step.wait_for_boot')"
diag "$out"
ok [ "$(kb_backup_field "$f" compressed)" = true ] "(its full is still recorded compressed)"
kb kboss-compress run >/dev/null 2>&1   # the old chain's last job, before the job tests

# ---- synthetic backups with real files: limits ----
img=$KBT_TMPDIR/img8.qcow2
kb_ref_image "$img" 64M "0 $((4 * MiB)) 0x11" "$((16 * MiB)) $((4 * MiB)) 0x22"
fake() { "$CATALOG_TOOL" fake-backup "$@" "$img"; }
JOBLOG=$KBT_TMPDIR/jobs.log
export KBOSS_TEST_JOB_LOG=$JOBLOG
conf_set max.concurrent.operations=3 max.concurrent.operations.per.host=2 rate.limit=4
ids=()
for i in $(seq 1 10); do
	set -- $(fake "lim$i" zs) || bail_out "fake backup"
	ids+=("$1")
done
worker() {
	local i
	for i in $(seq 1 60); do
		KBOSS_HOSTNAME=$1 "$KBC" --quiet run >/dev/null
		[ "$(kb kbossctl jobs --scheduled --type compression | tail -n +2 | wc -l)" = 0 ] && break
		sleep 0.3
	done
}
t0=$(date +%s)
worker h1 & w1=$!
worker h1 & w2=$!
worker h2 & w3=$!
worker h2 & w4=$!
worker h3 & w5=$!
wait $w1 $w2 $w3 $w4 $w5
diag "10 jobs of 8 MiB at 4 MB/s by 5 runners on 3 hosts took $(($(date +%s) - t0)) s"
read -r maxall maxhost < <(kb_max_concurrency "$JOBLOG")
diag "at most $maxall jobs at once in the zone, $maxhost on one host"
ok [ "$(grep -c '^start' "$JOBLOG")" = 10 ] "each of the 10 jobs ran once"
ok [ "$maxall" -le 3 ] "never more than max.concurrent.operations (3) in the zone ($maxall)"
ok [ "$maxhost" -le 2 ] "never more than max.concurrent.operations.per.host (2) on a host ($maxhost)"
ok [ "$maxall" -ge 2 ] "jobs did run side by side ($maxall)"
done_all() {
	local id
	for id in "${ids[@]}"; do [ "$(kb_backup_field "$id" compressed)" = true ] || return 1; done
}
ok done_all "all 10 backups are compressed"

# ---- retries and their interval ----
conf_set max.job.retries=2 retry.interval=1
set -- $(fake bad zs)
bad=$1 badfile=$2 job=compression-$1
head -c $((3 * MiB)) /dev/urandom > "$badfile"
cp "$badfile" "$KBT_TMPDIR/bad.copy"
now=$(date +%s)
kb kboss-compress run >/dev/null 2>&1
ok [ "$(job_field "$job" state)" = Scheduled -a "$(job_field "$job" attempts)" = 1 ] "a failing job is scheduled again after its first attempt"
na=$(job_field "$job" next_attempt)
ok [ "$na" -ge $((now + 55)) -a "$na" -le $((now + 70)) ] "its next attempt is retry.interval (1 min) later ($((na - now)) s)"
kb kboss-compress run >/dev/null 2>&1
ok [ "$(job_field "$job" attempts)" = 1 ] "it is not retried before the interval"
"$CATALOG_TOOL" set-job "$job" next_attempt $((now - 1))   # the interval has passed
out=$(kb kboss-compress run 2>&1)
diag "$out"
err=$(job_field "$job" last_error)
ok [ "$(job_field "$job" state)" = Failed -a "$(job_field "$job" attempts)" = 2 ] "after max.job.retries (2) attempts it is Failed"
ok [ -n "$err" ] "with its reason: $err"
ok cmp -s "$badfile" "$KBT_TMPDIR/bad.copy" "the original file is untouched"
ok no_temps "$badfile" "no temporary file is left"
ok [ "$(kb kbossctl jobs --type compression | grep -c "$job.*Failed")" = 1 ] "kbossctl jobs shows it Failed"

# ---- timeout ----
conf_set timeout=2 rate.limit=1 max.job.retries=1
set -- $(fake slow zs)
slowfile=$2 job=compression-$1
cp "$slowfile" "$KBT_TMPDIR/slow.copy"
t0=$(date +%s)
kb kboss-compress run >/dev/null 2>&1
t=$(($(date +%s) - t0))
err=$(job_field "$job" last_error)
ok [ "$(job_field "$job" state)" = Failed ] "a job that cannot finish within backup.compression.timeout fails"
ok [ "${err#*timed out}" != "$err" -a "$t" -le 8 ] "because it timed out, after ${t}s: $err"
ok cmp -s "$slowfile" "$KBT_TMPDIR/slow.copy" "the original is intact after the timeout"
ok no_temps "$slowfile" "the temporary file is removed after the timeout"

# ---- minimum free storage ----
conf_set minimum.free.storage=1000 max.job.retries=1
set -- $(fake full zs)
fullfile=$2 job=compression-$1
"$CATALOG_TOOL" set-backup "$1" size 1000000000000   # 1000 x 1 TB is more than any store has
cp "$fullfile" "$KBT_TMPDIR/full.copy"
kb kboss-compress run >/dev/null 2>&1
err=$(job_field "$job" last_error)
ok [ "$(job_field "$job" state)" = Failed -a "${err#*not enough free space}" != "$err" ] "a job whose store lacks minimum.free.storage x size does not start: $err"
ok [ "$(grep -c " $job\$" "$JOBLOG")" = 0 ] "no compression was started for it"
ok cmp -s "$fullfile" "$KBT_TMPDIR/full.copy" "its backup is untouched"

# ---- the task switch ----
conf_set task.enabled=false
set -- $(fake off zs)
job=compression-$1
kb kboss-compress run >/dev/null 2>&1
ok [ "$(job_field "$job" state)" = Scheduled -a "$(job_field "$job" attempts)" = 0 ] "with backup.compression.task.enabled false, run leaves the job alone"
conf_set
kb kboss-compress run >/dev/null 2>&1
ok [ "$(job_field "$job" state)" = Done ] "enabled again, the job runs"

# ---- a backup in use is postponed, not attempted ----
set -- $(fake used zs)
used=$1 job=compression-$1
"$CATALOG_TOOL" set-backup "$used" in_use_by 0e2c4b1a-0000-4000-8000-000000000001
kb kboss-compress run >/dev/null 2>&1
pp=$(job_field "$job" postponed)
ok [ "$(job_field "$job" state)" = Scheduled -a "$(job_field "$job" attempts)" = 0 -a "${pp#*in use}" != "$pp" ] "a backup in use by a quick restore is postponed without an attempt: $pp"
"$CATALOG_TOOL" set-backup "$used" in_use_by -
kb kboss-compress run >/dev/null 2>&1
ok [ "$(kb_backup_field "$used" compressed)" = true ] "once free it is compressed"

# ---- a runner killed mid-job ----
conf_set rate.limit=1 retry.interval=0
set -- $(fake killed zs)
kid=$1 kfile=$2 job=compression-$1
cp "$kfile" "$KBT_TMPDIR/killed.copy"
# Without the export watchdog's supervisor (lib/watchdog.h), so that $! is the
# runner itself and SIGKILL ends it as a crash or a lost host would.
"$KBC" "$kid" >/dev/null 2>&1 &
pid=$!
for i in $(seq 1 50); do ls -a "$(dirname "$kfile")" | grep -q kbcompress && break; sleep 0.1; done
sleep 0.5
kill -9 $pid
wait $pid 2>/dev/null
ok [ "$(kb kbossctl jobs --id "$job" | tail -n1 | awk '{print $3}')" = 'Executing*' ] "kbossctl jobs shows the killed runner's job Executing with no live holder"
ls -a "$(dirname "$kfile")" | grep -q kbcompress && left=yes || left=no
diag "temporary file left by the killed runner: $left"
conf_set retry.interval=0
out=$(kb kboss-compress run 2>&1)
diag "$out"
ok [ "${out#*interrupted}" != "$out" ] "the next run notices the dead holder"
ok [ "$(job_field "$job" state)" = Done -a "$(job_field "$job" attempts)" = 2 ] "it counts as a failed attempt and the retry succeeds (attempts 2)"
ok no_temps "$kfile" "the temporary file is gone"
ok qemu-img compare -q "$kfile" "$KBT_TMPDIR/killed.copy" "the compressed backup reads as the original"
