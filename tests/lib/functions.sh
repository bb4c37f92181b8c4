# shellcheck shell=bash
# tests/lib/functions.sh - helpers for kboss shell tests (source, don't run).
#
#   . "$(dirname "$0")/../lib/functions.sh"
#
# TAP:       plan N | ok CMD_STRING DESC | ok CMD ARG... DESC | diag MSG... |
#            skip_all REASON
# Env:       requires CMD... | start_libvirt | cleanup_push CMD...
# Guests:    make_test_vm NAME [DATA_DISK_MB] | start_vm NAME |
#            wait_agent NAME [TIMEOUT] | guest_exec NAME CMD [ARG...] |
#            guest_write_pattern NAME DEV OFFSET LEN BYTE | stop_vm NAME [TIMEOUT] |
#            destroy_test_vm NAME | vm_domain NAME | vm_dir NAME | vm_disk NAME |
#            vm_data_disk NAME | vm_console_log NAME | vm_state NAME |
#            agent_command NAME JSON [TIMEOUT] | guest_image
# Images:    host_check_pattern IMAGE OFFSET LEN BYTE | host_image_contains IMAGE STRING
#
# NAME is a short test-local name; the libvirt domain is "$KBT_PREFIX$NAME"
# (KBT_PREFIX defaults to kbt-<pid of the test>-) so parallel tests don't
# collide. Everything a test creates lives under $KBT_TMPDIR and is removed
# on exit (also on failure) by the cleanup stack.
#
# Sourcing installs an EXIT trap (cleanups, then TAP summary: the exit status
# is non-zero when a test failed, the plan was not met or bail_out was
# called; 77 after skip_all). INT/TERM exit through it too. Tests must not
# replace the EXIT trap; use cleanup_push.
#
# Knobs: KBT_VM_MEM_MB (guest RAM, default 256), KBT_EXEC_TIMEOUT (guest_exec,
# default 120 s), KBT_PREFIX, KBOSS_TEST_CACHE, KBT_GUEST_BUILDER, CI.

export LIBVIRT_DEFAULT_URI=${LIBVIRT_DEFAULT_URI:-qemu:///system}
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}

KBT_LIBDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KBT_TOPDIR=$(cd "$KBT_LIBDIR/../.." && pwd)
KBT_PREFIX=${KBT_PREFIX:-kbt-$$-}
KBT_TMPDIR=

# ---------------------------------------------------------------- TAP ---
_tap_planned=
_tap_count=0
_tap_failed=0
_tap_skip_all=
_tap_bailed=

# plan N: print the TAP plan "1..N"
plan() {
	_tap_planned=$1
	echo "1..$1"
}

# diag MSG...: TAP diagnostic line(s) on stdout ("# ...")
diag() {
	local line
	printf '%s\n' "$*" | while IFS= read -r line; do
		printf '# %s\n' "$line"
	done
}

# ok CMD_STRING DESC      - CMD_STRING is eval'ed ("[ -f x ]", "true")
# ok CMD ARG... DESC      - with 3+ arguments: run CMD ARG... as is
# Prints "ok N - DESC" or "not ok N - DESC"; returns the command's status.
ok() {
	local desc rc
	if [ $# -lt 2 ]; then
		echo "ok: usage: ok CMD... DESC" >&2
		return 2
	fi
	desc=${!#}
	if [ $# -eq 2 ]; then
		eval "$1"
		rc=$?
	else
		"${@:1:$#-1}"
		rc=$?
	fi
	_tap_count=$((_tap_count + 1))
	if [ $rc -eq 0 ]; then
		echo "ok $_tap_count - $desc"
	else
		_tap_failed=$((_tap_failed + 1))
		echo "not ok $_tap_count - $desc"
		diag "  failed with status $rc"
	fi
	return $rc
}

# skip_all REASON: whole test is skipped (exit 77, TAP "1..0 # SKIP")
skip_all() {
	_tap_skip_all=1
	echo "1..0 # SKIP $*"
	exit 77
}

# bail_out REASON: abort the test run (TAP "Bail out!"), exit 1
bail_out() {
	echo "Bail out! $*"
	_tap_bailed=1
	exit 1
}

# ------------------------------------------------------------ cleanup ---
_kbt_cleanups=()

# cleanup_push CMD...: run "CMD..." (one eval'ed string) at exit, LIFO
cleanup_push() {
	_kbt_cleanups+=("$*")
}

_kbt_run_cleanups() {
	local i
	for ((i = ${#_kbt_cleanups[@]} - 1; i >= 0; i--)); do
		( eval "${_kbt_cleanups[$i]}" ) >&2 || true
	done
	_kbt_cleanups=()
}

_kbt_on_exit() {
	local rc=$?
	set +e
	trap - EXIT
	_kbt_run_cleanups
	if [ -n "$_tap_skip_all" ]; then
		exit 77
	fi
	if [ -n "$_tap_bailed" ]; then
		[ $rc -eq 0 ] && rc=1
	elif [ -n "$_tap_planned" ] && [ "$_tap_count" -ne "$_tap_planned" ]; then
		diag "planned $_tap_planned tests but ran $_tap_count"
		[ $rc -eq 0 ] && rc=1
	fi
	if [ "$_tap_failed" -gt 0 ]; then
		diag "failed $_tap_failed of $_tap_count tests"
		[ $rc -eq 0 ] && rc=1
	fi
	exit $rc
}
trap _kbt_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------- requires ---
# requires CMD...: skip the test (exit 77) when a command is missing, but
# fail (exit 1) when $CI is set: in CI every component must be there.
requires() {
	local c missing=
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
	done
	[ -z "$missing" ] && return 0
	if [ -n "${CI:-}" ]; then
		bail_out "missing required command(s):$missing (CI is set, not skipping)"
	fi
	skip_all "missing required command(s):$missing"
}

# ------------------------------------------------------------ libvirt ---
_kbt_pid_alive() { # PIDFILE
	local pid
	[ -r "$1" ] && pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# start_libvirt: start virtlogd and libvirtd unless they are running, wait
# until the libvirtd socket answers. Idempotent.
start_libvirt() {
	local sock=/var/run/libvirt/libvirt-sock i
	if [ -S "$sock" ] && virsh -q version >/dev/null 2>&1; then
		return 0
	fi
	if ! _kbt_pid_alive /var/run/virtlogd.pid && ! pgrep -x virtlogd >/dev/null; then
		virtlogd -d || { echo "start_libvirt: virtlogd failed" >&2; return 1; }
	fi
	if ! _kbt_pid_alive /var/run/libvirtd.pid && ! pgrep -x libvirtd >/dev/null; then
		libvirtd -d || { echo "start_libvirt: libvirtd failed" >&2; return 1; }
	fi
	for ((i = 0; i < 300; i++)); do
		if [ -S "$sock" ] && virsh -q version >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	echo "start_libvirt: libvirtd socket $sock does not answer" >&2
	return 1
}

# ------------------------------------------------------------- guests ---
_kbt_tmpdir() {
	if [ -z "$KBT_TMPDIR" ]; then
		KBT_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/kbt-$$.XXXXXX") || return 1
		# qemu may run as an unprivileged user: let it reach the files
		chmod 0755 "$KBT_TMPDIR"
		cleanup_push 'rm -rf "$KBT_TMPDIR"'
	fi
}

vm_domain() { printf '%s%s\n' "$KBT_PREFIX" "$1"; }
vm_dir() { printf '%s/%s\n' "$KBT_TMPDIR" "$1"; }
vm_disk() { printf '%s/%s/root.qcow2\n' "$KBT_TMPDIR" "$1"; }
vm_data_disk() { printf '%s/%s/data.qcow2\n' "$KBT_TMPDIR" "$1"; }
vm_console_log() { printf '%s/%s/console.log\n' "$KBT_TMPDIR" "$1"; }

# guest_image: build (or reuse the cached) guest image, print its path.
# KBT_GUEST_BUILDER overrides the builder script (default
# tests/guest/build-guest.sh); KBOSS_TEST_CACHE its cache directory.
guest_image() {
	${KBT_GUEST_BUILDER:-"$KBT_TOPDIR/tests/guest/build-guest.sh"}
}

# make_test_vm NAME [DATA_DISK_MB=64]: define a persistent domain
# "$(vm_domain NAME)" (type qemu/TCG, ${KBT_VM_MEM_MB:-256} MiB, 1 vCPU) with an independent
# copy of the guest disk (vda, no backing file), an empty data disk (vdb),
# a qemu-ga channel, VNC on 127.0.0.1, VGA, serial console logged to
# $(vm_console_log NAME), no network. Removed again at exit.
make_test_vm() {
	local name=$1 mb=${2:-64} dom dir img xml
	dom=$(vm_domain "$name")
	start_libvirt || return 1
	_kbt_tmpdir || return 1
	img=$(guest_image) || { echo "make_test_vm: building the guest failed" >&2; return 1; }
	dir=$(vm_dir "$name")
	mkdir -p "$dir" && chmod 0755 "$dir" || return 1
	cleanup_push "destroy_test_vm '$name'"
	qemu-img convert -O qcow2 "$img" "$dir/root.qcow2" || return 1
	qemu-img create -q -f qcow2 "$dir/data.qcow2" "${mb}M" || return 1
	xml=$dir/domain.xml
	cat > "$xml" <<XML
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>${KBT_VM_MEM_MB:-256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$dir/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$dir/data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'>
      <source path='$dir/console.log'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='$dir/console.log'/>
      <target type='serial' port='0'/>
    </console>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
XML
	virsh -q define "$xml" >/dev/null || return 1
}

# start_vm NAME
start_vm() {
	virsh -q start "$(vm_domain "$1")" >/dev/null
}

# agent_command NAME JSON [TIMEOUT_S=5]: raw qemu-agent-command, JSON reply on stdout
agent_command() {
	virsh -q qemu-agent-command --timeout "${3:-5}" "$(vm_domain "$1")" "$2"
}

# wait_agent NAME [TIMEOUT=120] [INTERVAL=0.5]: wait until guest-ping
# answers, asking every INTERVAL seconds (benchmarks that time the answer
# use 0.1: steps of about 0.55 s are 8 % of the test guest's 6.5 s boot).
# The domain's state is looked at once a second at most, so fast polling
# takes little from the booting guest.
wait_agent() {
	local name=$1 timeout=${2:-120} interval=${3:-0.5} start now seen=
	start=$(date +%s)
	while :; do
		if agent_command "$name" '{"execute":"guest-ping"}' 2 2>/dev/null | grep -q '"return"'; then
			return 0
		fi
		now=$(date +%s)
		if [ $((now - start)) -ge "$timeout" ] ||
		   { [ "$now" != "$seen" ] && seen=$now && [ "$(vm_state "$name")" != running ]; }; then
			echo "wait_agent: $(vm_domain "$name"): no guest-ping answer after $((now - start))s" >&2
			echo "wait_agent: domain state: $(virsh domstate "$(vm_domain "$name")" 2>&1)" >&2
			echo "wait_agent: console log tail:" >&2
			tail -n 30 "$(vm_console_log "$name")" 2>/dev/null | sed 's/^/  | /' >&2
			return 1
		fi
		sleep "$interval"
	done
}

# JSON string literal for $1
_kbt_json_str() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\t'/\\t}
	s=${s//$'\r'/\\r}
	printf '"%s"' "$s"
}

# value of a top-level scalar key in a one-line JSON reply
_kbt_json_get() { # JSON KEY
	printf '%s' "$1" | sed -n 's/.*"'"$2"'":\("[^"]*"\|[^,}]*\).*/\1/p' | sed 's/^"//; s/"$//'
}

# guest_exec NAME CMD [ARG...]: run CMD in the guest through qemu-ga
# (guest-exec, capture-output), print its stdout (stderr to stderr), return
# its exit code (or 255 when it could not be run / timed out after
# $KBT_EXEC_TIMEOUT s, default 120; 128+N when killed by signal N).
guest_exec() {
	local name=$1 cmd=$2 args='' a reply pid st exited code sig out err i
	shift 2
	for a in "$@"; do
		args="$args${args:+,}$(_kbt_json_str "$a")"
	done
	reply=$(agent_command "$name" "{\"execute\":\"guest-exec\",\"arguments\":{\"path\":$(_kbt_json_str "$cmd"),\"arg\":[$args],\"capture-output\":true}}" 10 2>&1)
	pid=$(_kbt_json_get "$reply" pid)
	if [ -z "$pid" ]; then
		echo "guest_exec: guest-exec $cmd failed: $reply" >&2
		return 255
	fi
	for ((i = 0; i < ${KBT_EXEC_TIMEOUT:-120} * 10; i++)); do
		st=$(agent_command "$name" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}" 10 2>&1)
		exited=$(_kbt_json_get "$st" exited)
		[ "$exited" = true ] && break
		if [ -z "$exited" ]; then
			echo "guest_exec: guest-exec-status failed: $st" >&2
			return 255
		fi
		sleep 0.1
	done
	if [ "$exited" != true ]; then
		echo "guest_exec: $cmd did not finish in ${KBT_EXEC_TIMEOUT:-120}s" >&2
		return 255
	fi
	out=$(_kbt_json_get "$st" out-data)
	err=$(_kbt_json_get "$st" err-data)
	[ -n "$out" ] && printf '%s' "$out" | base64 -d
	[ -n "$err" ] && printf '%s' "$err" | base64 -d >&2
	code=$(_kbt_json_get "$st" exitcode)
	sig=$(_kbt_json_get "$st" signal)
	if [ -n "$code" ]; then
		return "$code"
	elif [ -n "$sig" ]; then
		return $((128 + sig))
	fi
	return 255
}

# BYTE (decimal, 0xHH or 0NNN) -> decimal
_kbt_byte() {
	local b=$(( $1 ))
	if [ "$b" -lt 0 ] || [ "$b" -gt 255 ]; then
		echo "bad byte value $1" >&2
		return 1
	fi
	echo "$b"
}

# guest_write_pattern NAME DEV OFFSET LEN BYTE: inside the guest write LEN
# bytes of value BYTE at byte OFFSET of DEV (a device or a file), with dd
# conv=notrunc,fsync and a sync afterwards (busybox tools only).
guest_write_pattern() {
	local name=$1 dev=$2 off=$3 len=$4 byte oct bs=1 b
	byte=$(_kbt_byte "$5") || return 1
	oct=$(printf '%03o' "$byte")
	# biggest block size dividing both offset and length (up to 1 MiB)
	for b in 1048576 65536 4096 512; do
		if [ $((off % b)) -eq 0 ] && [ $((len % b)) -eq 0 ]; then bs=$b; break; fi
	done
	guest_exec "$name" /bin/sh -c "set -e
head -c $len /dev/zero | tr '\\000' '\\$oct' |
dd of='$dev' bs=$bs seek=$((off / bs)) count=$((len / bs)) iflag=fullblock conv=notrunc,fsync 2>/dev/null
sync"
}

# host_check_pattern IMAGE OFFSET LEN BYTE: succeed when LEN bytes at OFFSET
# of the qcow2 IMAGE (guest view, across backing chains) all equal BYTE.
host_check_pattern() {
	local img=$1 off=$2 len=$3 byte out
	byte=$(_kbt_byte "$4") || return 1
	out=$(qemu-io -r -f qcow2 -c "read -P $byte $off $len" "$img" 2>&1)
	local rc=$?
	if [ $rc -ne 0 ] || printf '%s' "$out" | grep -qiE 'fail|error|mismatch'; then
		printf 'host_check_pattern: %s @%s+%s != %s: %s\n' "$img" "$off" "$len" "$byte" "$out" >&2
		return 1
	fi
	return 0
}

# host_image_contains IMAGE STRING: succeed when the guest-visible content
# of IMAGE (any format qemu-img reads, across backing chains) contains
# STRING somewhere (e.g. a marker written into a file on the guest's root
# filesystem). Converts to a sparse raw temp file; meant for small images.
host_image_contains() {
	local img=$1 str=$2 raw rc
	raw=$(mktemp "${TMPDIR:-/tmp}/kbt-raw.XXXXXX") || return 1
	if ! qemu-img convert -O raw "$img" "$raw"; then
		rm -f "$raw"
		return 1
	fi
	grep -aqF -- "$str" "$raw"
	rc=$?
	rm -f "$raw"
	return $rc
}

# domain state ("running", "shut off", ...)
vm_state() {
	virsh -q domstate "$(vm_domain "$1")" 2>/dev/null | head -n1
}

# stop_vm NAME [TIMEOUT=60]: shut down through the guest agent and wait for
# "shut off"; after TIMEOUT s destroy it and return 1.
stop_vm() {
	local name=$1 timeout=${2:-60} dom i
	dom=$(vm_domain "$name")
	[ "$(vm_state "$name")" = "shut off" ] && return 0
	virsh -q shutdown --mode agent "$dom" >/dev/null 2>&1 ||
		virsh -q shutdown "$dom" >/dev/null 2>&1
	for ((i = 0; i < timeout * 5; i++)); do
		[ "$(vm_state "$name")" = "shut off" ] && return 0
		sleep 0.2
	done
	echo "stop_vm: $dom did not shut down in ${timeout}s, destroying" >&2
	virsh -q destroy "$dom" >/dev/null 2>&1
	return 1
}

# destroy_test_vm NAME: destroy + undefine (with all metadata) + remove files.
# Idempotent.
destroy_test_vm() {
	local name=$1 dom flags='' f help
	dom=$(vm_domain "$name")
	if virsh -q dominfo "$dom" >/dev/null 2>&1; then
		# kboss's local note of the VM (localstate.h) goes with it
		f=$(virsh -q domuuid "$dom" 2>/dev/null) && [ -n "$f" ] && rm -f "/var/lib/kboss/vms/$f"
		virsh -q destroy "$dom" >/dev/null 2>&1
		help=$(virsh help undefine 2>/dev/null)
		for f in --checkpoints-metadata --snapshots-metadata --nvram; do
			case $help in *"$f"*) flags="$flags $f" ;; esac
		done
		# shellcheck disable=SC2086
		virsh -q undefine $flags "$dom" >/dev/null ||
			virsh -q undefine "$dom" >/dev/null
	fi
	[ -n "$KBT_TMPDIR" ] && [ -n "$name" ] && rm -rf "${KBT_TMPDIR:?}/$name"
	return 0
}
