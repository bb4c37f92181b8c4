# shellcheck shell=bash
# tests/lib/kboss.sh - kboss-specific helpers for integration tests; source
# after functions.sh.
#
#   kb_conf_init [CHAIN_SIZE]     a kboss configuration in $KBT_TMPDIR/kboss,
#                                 exported as KBOSS_CONF; secondary storage is
#                                 the folder $KB_SECONDARY, marked with
#                                 kbossctl init-store (it is no mount point)
#   kb_offering NAME [KEY=VALUE...]  write offerings.d/NAME.conf
#   kb_assign NAME OFFERING       vms.d file for the test VM NAME
#   kb PROG ARGS...               run a built kboss program
#   kb_backup NAME [OPTS...]      back the test VM up; prints the backup id
#   kb_backup_file ID DISK        path of a backup's disk file
#   kb_backup_field ID KEY        a [backup] field of a backup's record

KB_BINDIR=${KBOSS_BINDIR:-$KBT_TOPDIR/_build/helpers}

# kb_prog PROG: the path of a kboss program (to exec it, so that $! is its pid)
kb_prog() {
	local path
	for path in "$KB_BINDIR/$1" "$KB_BINDIR"/*/"$1"; do
		[ -x "$path" ] && { echo "$path"; return 0; }
	done
	echo "kb: $1 is not built under $KB_BINDIR" >&2
	return 127
}

kb() {
	local path
	path=$(kb_prog "$1") || return
	shift
	"$path" "$@"
}

kb_conf_init() {
	_kbt_tmpdir || return 1
	KB_ROOT=$KBT_TMPDIR/kboss
	KB_SECONDARY=$KB_ROOT/secondary
	mkdir -p "$KB_ROOT/etc/offerings.d" "$KB_ROOT/etc/vms.d" "$KB_SECONDARY" "$KB_ROOT/scratch" || return 1
	chmod 0755 "$KB_ROOT" "$KB_SECONDARY"
	# A folder, not a mount point: marked as a store on purpose.
	kb kbossctl init-store "$KB_SECONDARY" >/dev/null || return 1
	cat > "$KB_ROOT/etc/kboss.conf" <<CONF
[global]
backup.framework.enabled = true
backup.framework.provider.plugin = kboss
secondary.path = $KB_SECONDARY
scratch.path = $KB_ROOT/scratch

[zone]
backup.chain.size = ${1:-8}
CONF
	export KBOSS_CONF=$KB_ROOT/etc/kboss.conf
	kb_offering plain
}

kb_offering() {
	local name=$1 kv
	shift
	{
		echo "[offering]"
		echo "name = $name"
		case " $* " in *" allow_user_driven_backups="*) ;; *) echo "allow_user_driven_backups = true";; esac
		for kv in "$@"; do echo "${kv%%=*} = ${kv#*=}"; done
	} > "$KB_ROOT/etc/offerings.d/$name.conf"
}

kb_assign() {
	printf '[vm]\noffering = %s\n' "$2" > "$KB_ROOT/etc/vms.d/$(vm_domain "$1").conf"
}

# kb_backup NAME [OPTS...]: prints the new backup's id; fails if the backup did
kb_backup() {
	local name=$1 out
	shift
	out=$(kb kboss-backup --json "$@" "$(vm_domain "$name")") || return 1
	printf '%s\n' "$out" | sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n1
}

# the record file of a backup (newest generation) as text
kb_backup_record() {
	local id=$1 f
	f=$(find "$KB_SECONDARY/kboss/vms" -path "*/$id/backup.*.ini" 2>/dev/null | sort | tail -n1)
	[ -n "$f" ] && cat "$f"
}

kb_backup_field() {
	kb_backup_record "$1" | sed -n "/^\[backup\]/,/^\[/s/^$2 *= *//p" | head -n1
}

kb_backup_file() {
	local id=$1 disk=$2
	find "$KB_SECONDARY/kboss/vms" -path "*/$id/$disk.qcow2" 2>/dev/null | head -n1
}

# trace_convert_synced TRACE FILE: "EXIT SYNC", the line numbers in TRACE
# (strace -f -y -s 4096 -e trace=execve,fsync,fdatasync,...) of the exit of
# the qemu-img convert that wrote FILE and of the first fsync or fdatasync
# of FILE after it; SYNC, or both, empty when there is none.  qemu-img's
# own syncs come while it creates FILE, before any data.
trace_convert_synced() {
	local pid qexit
	pid=$(grep 'execve("[^"]*qemu-img", \["[^"]*", "convert"' "$1" | grep -F "\"$2\"" | head -n1 | cut -d' ' -f1)
	# strace pads the pid column: "1710  +++ exited ...", "24251 +++ exited ..."
	[ -n "$pid" ] && qexit=$(grep -n "^$pid  *+++ exited with 0" "$1" | head -n1 | cut -d: -f1)
	[ -n "$qexit" ] || return 0
	echo "$qexit $(awk -v from="$qexit" -v f="<$2>" 'NR > from && /sync\(/ && index($0, f) { print NR; exit }' "$1")"
}

# bytes of data stored in the image's own file (not its backing chain)
kb_own_data_bytes() {
	qemu-img map -U --output=json "$1" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]))'
}

# make a reference qcow2 of SIZE with patterns: kb_ref_image FILE SIZE "OFF LEN BYTE" ...
kb_ref_image() {
	local file=$1 size=$2 spec
	shift 2
	qemu-img create -q -f qcow2 "$file" "$size" || return 1
	for spec in "$@"; do
		set -- $spec
		qemu-io -f qcow2 -c "write -P $3 $1 $2" "$file" >/dev/null || return 1
	done
}

# a [disk:DISK] field of a backup's record
kb_disk_field() {
	kb_backup_record "$1" | sed -n "/^\[disk:$2\]/,/^\[/s/^$3 *= *//p" | head -n1
}

# the guest's filesystems are not frozen (asks the agent)
kb_guest_thawed() {
	agent_command "$1" '{"execute":"guest-fsfreeze-status"}' | grep -q thawed
}

# ids of completed backups of the catalog (what a listing shows)
kb_listed_backups() {
	local f
	for f in $(find "$KB_SECONDARY/kboss/vms" -name 'backup.*.ini' 2>/dev/null); do
		grep -q '^state = \(Ready\|Invalid\)' "$f" && sed -n 's/^id = //p' "$f"
	done | sort -u
}

# kb_max_concurrency LOG: from "start|end EPOCH_MS HOST JOB" lines, print the
# most jobs running at once overall and on one host
kb_max_concurrency() {
	python3 - "$1" <<'PY'
import sys
ev = []
for line in open(sys.argv[1]):
    kind, t, host, job = line.split()
    ev.append((int(t), 0 if kind == "end" else 1, host))
ev.sort()
cur, per, mall, mhost = 0, {}, 0, 0
for t, k, h in ev:
    d = 1 if k else -1
    cur += d
    per[h] = per.get(h, 0) + d
    mall, mhost = max(mall, cur), max(mhost, per[h])
print(mall, mhost)
PY
}
