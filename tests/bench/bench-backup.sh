#!/usr/bin/env bash
# Backup and restore benchmark, every figure measured in this run on this
# disk: kboss-backup full throughput against qemu-img convert of the same
# disk; incremental (1% changed) time against the full; both against
# virtnbdbackup backing up the same VM; restore throughput against
# qemu-img convert flattening the same chain; and time until the guest
# agent answers after a quick restore against a normal restore (restore,
# start, agent), for a disk and one four times larger.
#
#   BENCH_GIB=1 (size of the small data disk's data, GiB)
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

GIB=${BENCH_GIB:-1}
start_libvirt || exit 1
kb_conf_init 8
kb_offering quick allow_quick_restore=true
work=$KBT_TMPDIR/bench
mkdir -p "$work" && chmod 0755 "$work"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mbps() { python3 -c "print(f'{$1 / 1048576 / $2:.0f}')"; }

# Realistic data: binaries, text and zeros, GIB GiB of it in a data disk.
mkdata() { # FILE GIB
	local raw=$work/raw.img
	truncate -s "$(( $2 * 1024 ))M" "$raw"
	find /usr/lib /usr/bin /usr/share/doc -type f -size +16k 2>/dev/null | head -n 20000 | xargs cat 2>/dev/null |
		head -c "$(( $2 * 700 ))M" | dd of="$raw" conv=notrunc bs=1M status=none
	qemu-img convert -O qcow2 "$raw" "$1"
	rm -f "$raw"
}

make_test_vm b 64 || exit 1
kb_assign b quick
dom=$(vm_domain b)
data=$(vm_data_disk b)
mkdata "$data" "$GIB"
used=$(qemu-img info --output=json "$data" | sed -n 's/.*"actual-size": \([0-9]*\).*/\1/p')
echo "data disk: $(qemu-img info "$data" | sed -n 's/virtual size: //p'), $used bytes allocated"

start_vm b && wait_agent b 240 || exit 1
size=$(qemu-img info -U --output=json "$data" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
change_1pct() { # BYTE: one 1 MiB run every 100 MiB
	local off=0
	while [ $off -lt "$size" ]; do guest_write_pattern b /dev/vdb "$off" 1048576 "$1" >/dev/null || return 1; off=$((off + 100 * 1048576)); done
}
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); qemu-img convert -U -O qcow2 "$data" "$work/convert.qcow2"; t1=$(now)
t_convert=$(secs "$t0" "$t1"); rm -f "$work/convert.qcow2"

# virtnbdbackup first: it refuses to work beside checkpoints it did not
# make, so it runs its full and incremental, its checkpoints go, then kboss.
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); virtnbdbackup -d "$dom" -l full -o "$work/vnb" > "$work/vnb.log" 2>&1 || { echo "virtnbdbackup full failed:"; tail -5 "$work/vnb.log"; }; t1=$(now)
t_vnb_full=$(secs "$t0" "$t1")
change_1pct 0x5b
t0=$(now); virtnbdbackup -d "$dom" -l inc -o "$work/vnb" >> "$work/vnb.log" 2>&1 || { echo "virtnbdbackup inc failed:"; tail -5 "$work/vnb.log"; }; t1=$(now)
t_vnb_inc=$(secs "$t0" "$t1")
echo "virtnbdbackup stored $(du -sb "$work/vnb" | cut -f1) bytes in $(ls "$work/vnb" | grep -c '\.data') data files"
for cp in $(virsh checkpoint-list --name "$dom"); do virsh -q checkpoint-delete "$dom" "$cp" >/dev/null; done

sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); full=$(kb_backup b); t1=$(now); t_full=$(secs "$t0" "$t1")
change_1pct 0x5c
t0=$(now); inc=$(kb_backup b); t1=$(now); t_inc=$(secs "$t0" "$t1")
stop_vm b

echo
echo "== backup ($GIB GiB of data; kboss-backup of a running VM, whole process)"
printf '%-40s %8s s  %6s MiB/s\n' "qemu-img convert of the disk" "$t_convert" "$(mbps "$used" "$t_convert")"
printf '%-40s %8s s  %6s MiB/s\n' "kboss-backup full" "$t_full" "$(mbps "$used" "$t_full")"
printf '%-40s %8s s\n' "kboss-backup incremental (1% changed)" "$t_inc"
printf '%-40s %8s s\n' "virtnbdbackup full" "$t_vnb_full"
printf '%-40s %8s s\n' "virtnbdbackup incremental" "$t_vnb_inc"
echo "ratio full throughput kboss/qemu-img convert: $(ratio "$t_convert" "$t_full")"
echo "ratio incremental/full time (kboss):          $(ratio "$t_inc" "$t_full")"
echo "ratio full time kboss/virtnbdbackup:          $(ratio "$t_full" "$t_vnb_full")"
echo "ratio incremental time kboss/virtnbdbackup:   $(ratio "$t_inc" "$t_vnb_inc")"

# Restore: flatten the chain (full + incremental) of the data disk.
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); qemu-img convert -O qcow2 "$(kb_backup_file "$inc" vdb)" "$work/flat.qcow2"; t1=$(now)
t_flat=$(secs "$t0" "$t1"); rm -f "$work/flat.qcow2"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now); kb kboss-restore --quiet --disk vdb "$inc" >/dev/null; t1=$(now); t_restore=$(secs "$t0" "$t1")
qemu-img compare -q "$data" "$(kb_backup_file "$inc" vdb)" || echo "WARNING: restored disk differs from the backup"
echo
echo "== restore (vdb, chain of 2; kboss-restore whole process)"
printf '%-40s %8s s\n' "qemu-img convert flattening vdb's chain" "$t_flat"
printf "%-40s %8s s\n" "kboss-restore --disk vdb" "$t_restore"
echo "ratio restore throughput kboss/qemu-img:      $(ratio "$t_flat" "$t_restore")"

# Time to a running guest: quick restore vs normal restore, two disk sizes.
time_to_agent_normal() { # BACKUP
	local t0 t1
	t0=$(now); kb kboss-restore --quiet "$1" >/dev/null; start_vm b; wait_agent b 300 >/dev/null; t1=$(now)
	secs "$t0" "$t1"; stop_vm b >/dev/null 2>&1
}
time_to_agent_quick() { # BACKUP
	local t0 t1 pid
	t0=$(now); kb kboss-restore --quiet --quick "$1" >/dev/null 2>&1 & pid=$!
	for i in $(seq 1 600); do [ "$(vm_state b)" = running ] && break; sleep 0.1; done
	wait_agent b 300 >/dev/null; t1=$(now)
	secs "$t0" "$t1"; wait $pid; stop_vm b >/dev/null 2>&1
}
echo
echo "== time until the guest agent answers"
small_normal=$(time_to_agent_normal "$full"); small_quick=$(time_to_agent_quick "$full")
mkdata "$data" $((GIB * 4))
big=$(kb_backup b --full)
big_normal=$(time_to_agent_normal "$big"); big_quick=$(time_to_agent_quick "$big")
printf '%-34s %10s %10s\n' "" "${GIB} GiB" "$((GIB * 4)) GiB"
printf '%-34s %10s %10s\n' "normal restore + start + agent (s)" "$small_normal" "$big_normal"
printf '%-34s %10s %10s\n' "quick restore to agent (s)" "$small_quick" "$big_quick"
echo "ratio quick/normal: $(ratio "$small_quick" "$small_normal") (${GIB} GiB), $(ratio "$big_quick" "$big_normal") ($((GIB * 4)) GiB)"
echo "quick restore time-to-agent growth with 4x the disk: $(ratio "$big_quick" "$small_quick")x"
