#!/usr/bin/env bash
# A guest is left as kboss found it, and a store qemu cannot see is named.
#  - kboss thaws only a freeze it made: a guest frozen by another tool
#    (guest-fsfreeze-freeze through the agent) stays frozen through a plain
#    backup, --normalize and a refused --quiesce backup; a kboss freeze whose
#    run was killed with kill -9 is thawed by --normalize or the next run,
#    which say so.
#  - A store mounted after the VM's qemu started, where the mount does not
#    propagate into qemu's mount namespace (libvirt's qemu.conf
#    namespaces = ["mount"], the default): the push-mode target exists for
#    kboss but not for qemu; the failure says so and what to do, and
#    restarting the VM (here: a stopped VM, started afresh for the backup)
#    makes the backup work.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 37
requires findmnt
start_libvirt || bail_out "libvirtd"
kb_conf_init 8

# A mount point of our own with private propagation, set up before the VM
# starts. On hosts whose / is shared (systemd makes it so) a mount made
# under / after the VM started would propagate into qemu's namespace (a
# slave of the host's); below a private mount point it never does,
# whatever the host's default. That is the operator's case: an export
# mounted late under a mount point that does not propagate.
late=$KBT_TMPDIR/late
mkdir -p "$late/store" && chmod 0755 "$late" "$late/store"
mount --bind "$late" "$late" && mount --make-private "$late" || bail_out "cannot make a private mount point"
cleanup_push "umount -l '$late'"
diag "propagation: / $(findmnt -n -o PROPAGATION /), $late $(findmnt -n -o PROPAGATION "$late")"

make_test_vm g || bail_out "cannot define the test VM"
kb_assign g plain
dom=$(vm_domain g)
bin=$(for p in "$KB_BINDIR/kboss-backup" "$KB_BINDIR"/*/kboss-backup; do [ -x "$p" ] && echo "$p"; done | head -n1)
start_vm g && wait_agent g 240 || bail_out "the guest did not answer"
uuid=$(virsh domuuid "$dom")

fs_state() { agent_command g '{"execute":"guest-fsfreeze-status"}' 10 | tr -d ' \n'; }
frozen() { [ "$(fs_state)" = '{"return":"frozen"}' ]; }
thawed() { [ "$(fs_state)" = '{"return":"thawed"}' ]; }
freeze() { agent_command g '{"execute":"guest-fsfreeze-freeze"}' 30 >/dev/null; }
thaw() { agent_command g '{"execute":"guest-fsfreeze-thaw"}' 30 >/dev/null; }
# the VM's catalog record (newest generation)
vm_record() { find "$KB_SECONDARY/kboss/vms/$uuid" -maxdepth 1 -name 'vm.*.ini' | sort | tail -n1 | xargs cat; }
freeze_pid() { vm_record | sed -n '/^\[freeze\]/,/^\[/s/^pid *= *//p'; }

b0=$(kb_backup g --quiesce)
ok [ -n "$b0" ] "a quiesced backup succeeds ($b0)"
ok thawed "and leaves the guest thawed"
ok [ -z "$(freeze_pid)" ] "with no freeze recorded in the VM's record"

# --- Another tool's freeze ---
freeze
ok frozen "another tool froze the guest (guest-fsfreeze-freeze)"
out=$(kb kboss-backup --json "$dom" 2>&1); rc=$?
ok [ $rc -eq 0 ] "a backup without --quiesce succeeds on the frozen guest"
ok frozen "and the guest is still frozen afterwards"
ok "grep -q 'frozen, not by kboss; leaving them frozen' <<<\"\$out\"" "and the run said it left that freeze alone"
nlisted=$(kb_listed_backups | wc -l)
out=$(kb kboss-backup --quiesce "$dom" 2>&1); rc=$?
diag "$out"
ok [ $rc -eq 1 ] "a --quiesce backup of a guest another tool froze fails"
ok "grep -q \"VM $dom: cannot quiesce: its filesystems are already frozen, not by kboss\" <<<\"\$out\"" \
	"with a message naming the VM and the freeze it will not take over"
ok frozen "and the guest is still frozen"
ok [ "$(kb_listed_backups | wc -l)" -eq "$nlisted" ] "and no backup was added"
out=$(kb kboss-backup --normalize "$dom" 2>&1); rc=$?
ok [ $rc -eq 0 ] "--normalize succeeds"
ok frozen "and leaves another tool's freeze too"
thaw
ok thawed "the other tool thaws"

# --- kboss's own freeze, its run killed with kill -9 while frozen ---
# kill_frozen_run: start a quiesced backup that holds the freeze, wait until
# the guest is frozen, kill -9 the process that froze it (the one its
# [freeze] record names: kboss-backup's worker under the export watchdog,
# whose supervisor then just exits). Sets $run_pid (what was started) and
# $recorded_pid.
kill_frozen_run() {
	local i
	KBOSS_TEST_HOLD_AFTER_FREEZE_MS=300000 "$bin" --quiesce "$dom" >"$KBT_TMPDIR/run.out" 2>&1 &
	run_pid=$!
	for i in $(seq 1 240); do
		frozen && break
		kill -0 "$run_pid" 2>/dev/null || break
		sleep 0.5
	done
	recorded_pid=$(freeze_pid)
	recorded_ppid=$(ps -o ppid= -p "${recorded_pid:-0}" 2>/dev/null | tr -d ' ')
	[ -n "$recorded_pid" ] && kill -9 "$recorded_pid"
	wait "$run_pid" 2>/dev/null
	frozen || diag "the quiesced run did not freeze the guest: $(cat "$KBT_TMPDIR/run.out")"
}
# the recorded pid is the run started or its child (the watchdog's worker)
recorded_is_run() {
	[ -n "$recorded_pid" ] && { [ "$recorded_pid" = "$run_pid" ] || [ "$recorded_ppid" = "$run_pid" ]; }
}
kill_frozen_run
ok recorded_is_run "a quiesced run recorded its freeze (pid $recorded_pid) in the VM's record before freezing"
ok frozen "after kill -9 of that process the guest is still frozen"
out=$(kb kboss-backup --normalize "$dom" 2>&1); rc=$?
diag "$out"
ok [ $rc -eq 0 ] "--normalize succeeds"
ok thawed "and thaws the freeze the killed run left"
ok "grep -q \"VM $dom: thawed its filesystems, frozen by a kboss run that did not finish (backup .*, pid $recorded_pid\" <<<\"\$out\"" \
	"and says so, naming the run"
ok [ -z "$(freeze_pid)" ] "the freeze record is gone"

kill_frozen_run
ok frozen "a second quiesced run killed while frozen leaves the guest frozen"
out=$(kb kboss-backup --json "$dom" 2>&1); rc=$?
ok [ $rc -eq 0 ] "the next backup succeeds"
ok thawed "and it thawed the guest first"
ok "grep -q \"thawed its filesystems, frozen by a kboss run that did not finish (backup .*, pid $recorded_pid\" <<<\"\$out\"" \
	"and said so"

# A freeze made after the crash record was cleared is someone else's again.
freeze
out=$(kb kboss-backup --normalize "$dom" 2>&1)
ok frozen "a new freeze by another tool after that is left by --normalize"
out=$(kb kboss-backup --json "$dom" 2>&1); rc=$?
ok [ $rc -eq 0 ] "and a backup without --quiesce succeeds"
ok frozen "and leaves it frozen"
thaw
ok thawed "the other tool thaws"

# --- A store mounted after the VM started ---
mount -t tmpfs -o size=256M,mode=0755 tmpfs "$late/store" || bail_out "cannot mount a tmpfs"
cleanup_push "umount -l '$late/store'"
kb kbossctl init-store "$late/store" >/dev/null || bail_out "kbossctl init-store failed"
printf '\n[store:late]\npath = %s\nbackups_only = true\n' "$late/store" >> "$KBOSS_CONF"
qpid=$(pgrep -f -- "-uuid $uuid" | head -n1)
ok "[ -n \"\$qpid\" ] && [ \"\$(readlink /proc/\$qpid/ns/mnt)\" != \"\$(readlink /proc/self/ns/mnt)\" ]" \
	"the VM's qemu runs in a mount namespace of its own"
ok [ -z "$(ls -A "/proc/$qpid/root$late/store")" ] "and does not see the store mounted after it started"
out=$(kb kboss-backup --full "$dom" 2>&1); rc=$?
diag "$out"
ok [ $rc -eq 1 ] "a backup onto that store fails"
ok "grep -q \"VM $dom: qemu cannot open the backup target $late/store/kboss/.*/vda.qcow2, which kboss has just created on store 'late'\" <<<\"\$out\"" \
	"and says qemu cannot open the target kboss created"
ok "grep -q 'mount namespace of its own' <<<\"\$out\" && grep -q 'mounted after the VM started' <<<\"\$out\"" \
	"and why: qemu's mount namespace does not have the store's mount"
ok "grep -q 'stop and start the VM' <<<\"\$out\" && grep -q 'shared propagation' <<<\"\$out\"" "and what to do"
ok [ -z "$(find "$late/store" -name '*.qcow2')" ] "no target file is left on the store"
ok thawed "the guest runs on, not frozen"
# What the message says works: a qemu started after the mount sees it.
virsh -q destroy "$dom" >/dev/null
b9=$(kb_backup g --full)
ok "[ -n \"\$b9\" ] && [ -n \"\$(find \"\$late/store\" -path \"*/\$b9/vda.qcow2\")\" ]" \
	"once the VM is stopped (backed up offline, without qemu), the backup onto that store works"
