#!/usr/bin/env bash
# Operator visibility of a failing backup (a real one: secondary storage
# too small for the disk): the structured journal event (received through
# the journal's native protocol on a socket this test binds where
# sd_journal_send writes, in a private mount namespace: journald does not
# run here), plain text when stderr is not the journal, a metrics file
# promtool accepts with the failure counted, a `kbossctl status` line
# naming the VM, exactly one run of notify.command; a successful backup
# after it runs no notify.command.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 22
requires promtool python3
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
make_test_vm f 512 || bail_out "cannot define the test VM"
kb_assign f plain
dom=$(vm_domain f)
uuid=$(virsh domuuid "$dom" | tr -d '[:space:]')
data=$(vm_data_disk f)
qemu-io -f qcow2 -c "write -P 0x61 0 64M" "$data" >/dev/null

notify_out=$KBT_TMPDIR/notify.env
metrics=$KBT_TMPDIR/metrics/kboss.prom
mkdir -p "$KBT_TMPDIR/metrics"
cat > "$KBT_TMPDIR/notify.sh" <<SH
#!/bin/sh
{ echo "--- run"; env | grep '^KBOSS_' | sort; } >> "$notify_out"
SH
chmod 0755 "$KBT_TMPDIR/notify.sh"
sed -i "s|^\[global\]\$|[global]\nnotify.command = $KBT_TMPDIR/notify.sh --from-kboss\nmetrics.path = $metrics|" "$KBOSS_CONF"

# The journal's socket: a listener that keeps every datagram (native
# protocol: KEY=VALUE lines), bound in a folder of ours and mounted over
# /run/systemd/journal only in a private mount namespace in which the
# program runs (so that no other program on this machine sees it).
jdir=$KBT_TMPDIR/journal
received=$KBT_TMPDIR/journal.bin
mkdir -p "$jdir"
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[3], "w").write("ready")
f = open(sys.argv[2], "ab", buffering=0)
while True:
    d = s.recv(1 << 20)
    f.write(d + b"\n----\n")
' "$jdir/socket" "$received" "$KBT_TMPDIR/jready" &
jpid=$!
cleanup_push "kill $jpid"
for _ in $(seq 50); do [ -s "$KBT_TMPDIR/jready" ] && break; sleep 0.1; done
backup_bin=$(for p in "$KB_BINDIR/kboss-backup" "$KB_BINDIR"/*/kboss-backup; do [ -x "$p" ] && echo "$p"; done | head -n1)
# with_journal CMD...: CMD with the socket at /run/systemd/journal/socket
with_journal() {
	unshare -m bash -c 'mount -t tmpfs -o mode=0755 tmpfs /run/systemd && mkdir -p /run/systemd/journal &&
		mount --bind "$0" /run/systemd/journal && exec "$@"' "$jdir" "$@"
}

# Secondary storage too small for the data disk.
mount -t tmpfs -o size=24M,mode=0755 tmpfs "$KB_SECONDARY" || bail_out "cannot mount a tmpfs"
cleanup_push "umount -l '$KB_SECONDARY'"

# ---- 1. the failing backup, run as systemd would (stderr is the journal) ----
err=$KBT_TMPDIR/err
: > "$err"
JOURNAL_STREAM=$(stat -c %d:%i "$err") with_journal "$backup_bin" "$dom" > /dev/null 2>>"$err"; rc=$?
ok [ $rc -eq 1 ] "a backup onto too small a store fails ($rc)"
diag "$(cat "$err")"
ev=$(python3 -c '
import sys
for d in open(sys.argv[1], "rb").read().split(b"\n----\n"):
    if b"KBOSS_EVENT=backup-failed" in d:
        print(d.decode("utf-8", "replace"))
        break' "$received")
diag "journal entry: $ev"
ok grep -qx 'MESSAGE_ID=605010e7c71f4ae2a679e0330ef41966' <<<"$ev" "the journal got the backup-failed MESSAGE_ID"
ok grep -qx "KBOSS_VM=$uuid" <<<"$ev" "with KBOSS_VM the VM's UUID"
ok grep -qx "KBOSS_VM_NAME=$dom" <<<"$ev" "and KBOSS_VM_NAME"
ok grep -qx 'PRIORITY=3' <<<"$ev" "at priority err"
ok grep -q '^MESSAGE=kboss-backup: VM .*backup failed' <<<"$ev" "and a message saying the backup failed"
ok grep -q '^KBOSS_BACKUP=$' <<<"$ev" "KBOSS_BACKUP is present (empty: no backup was made)"
ok "! grep -q 'backup failed' '$err'" "the journal took the event: it is not repeated on stderr"

# ---- 2. notify.command ran exactly once, with the event in its environment ----
ok [ "$(grep -c '^--- run' "$notify_out" 2>/dev/null)" = 1 ] "notify.command ran once ($(grep -c '^--- run' "$notify_out" 2>/dev/null))"
diag "$(cat "$notify_out" 2>/dev/null)"
ok grep -qx 'KBOSS_EVENT=backup-failed' "$notify_out" "its environment names the event"
ok grep -qx "KBOSS_VM=$uuid" "$notify_out" "and the VM"

# ---- 3. the metrics file ----
ok promtool check metrics < "$metrics" "promtool accepts the metrics file: $(promtool check metrics < "$metrics" 2>&1 | head -c 300)"
ok grep -q "^kboss_vm_backup_failures_total{vm=\"$uuid\",name=\"$dom\"} 1\$" "$metrics" "the failure is counted"
ok grep -q "^kboss_vm_last_failure_timestamp_seconds{vm=\"$uuid\",name=\"$dom\"} [1-9]" "$metrics" "with its time"
ok grep -q '^kboss_store_free_bytes{store="default"} [0-9]' "$metrics" "the store's free space is there"

# ---- 4. kbossctl status ----
out=$(kb kbossctl status 2>&1); rc=$?
diag "$out"
ok [ $rc -eq 1 ] "kbossctl status exits 1: something needs attention ($rc)"
ok grep -q "^VM $dom: last backup failed at " <<<"$out" "and names the VM whose backup failed"
ok [ "$(kb kbossctl status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print([v["failures"] for v in d["vms"] if v["uuid"]==sys.argv[1]][0])' "$uuid")" = 1 ] "status --json counts the failure"

# ---- 5. plain text when stderr is not the journal ----
kb kboss-backup "$dom" > /dev/null 2>"$err"
ok "[ -s '$err' ] && ! grep -q '^<[0-9]>' '$err' && grep -q '^kboss-backup: VM .*backup failed' '$err'" \
  "on a file that is not the journal, lines are plain text: $(head -c 200 "$err")"
ok [ "$(grep -c '^--- run' "$notify_out")" = 2 ] "the second failure ran notify.command once more"

# ---- 6. a successful backup ----
mount -o remount,size=1G "$KB_SECONDARY"
b=$(kb_backup f)
ok [ -n "$b" ] "with room the backup succeeds ($b)"
ok [ "$(grep -c '^--- run' "$notify_out")" = 2 ] "and notify.command did not run for it"
# (its success time replaces nothing: the failures stay counted)
