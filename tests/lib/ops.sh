# shellcheck shell=bash
# tests/lib/ops.sh - helpers for the operations tests (hook, kbossctl);
# source after functions.sh and kboss.sh.
#
#   ops_doc_set DIR NAME SECTION KEY VALUE   write a new generation of the
#                                            catalog document DIR/NAME with
#                                            [SECTION] KEY = VALUE
#   ops_fake_lock PATH PID                   a lock file naming the live
#                                            process PID as its holder
#   ops_vm_dir NAME                          catalog folder of test VM NAME
#   ops_file_plant DIR NAME SRC              write SRC as a new generation of
#                                            the catalog file DIR/NAME (say
#                                            domain.xml), its file-name
#                                            checksum recomputed, as any host
#                                            with write access to the export can
#   ops_fake_restoring UUID PID              the local marker of a restore of
#                                            VM UUID by the live process PID

ops_vm_dir() {
	local uuid
	uuid=$(virsh -q domuuid "$(vm_domain "$1")") || return 1
	printf '%s/kboss/vms/%s\n' "$KB_SECONDARY" "$uuid"
}

# The newest generation that verifies is what kboss reads; we write one
# newer, with its checksum trailer (XXH64 of the bytes before the trailer).
ops_doc_set() {
	local dir=$1 name=$2 section=$3 key=$4 value=$5 last gen body sum out
	last=$(ls "$dir" | grep -E "^$name\.[0-9]+\.ini$" | sort | tail -n1)
	[ -n "$last" ] || { echo "ops_doc_set: no $name document in $dir" >&2; return 1; }
	gen=${last#"$name".}
	gen=$((10#${gen%.ini} + 1))
	body=$(grep -v '^# kboss-checksum:' "$dir/$last" | awk -v s="[$section]" -v k="$key" -v v="$value" '
		$0 == s { insec = 1; print; next }
		/^\[/ { if (insec && !done) { print k " = " v; done = 1 } insec = 0 }
		insec && $1 == k { if (!done) print k " = " v; done = 1; next }
		{ print }
		END { if (!done) { if (!insec) print s; print k " = " v } }')
	out=$dir/$(printf '%s.%09d.ini' "$name" "$gen")
	printf '%s\n' "$body" > "$out.tmp" || return 1
	sum=$(xxh64sum < "$out.tmp" | cut -d' ' -f1)
	printf '# kboss-checksum: %s\n' "$sum" >> "$out.tmp"
	chmod 0600 "$out.tmp" && mv "$out.tmp" "$out"
}

# Files (domain.xml, checkpoint XML) are NAME.<gen>.<XXH64 of the bytes>.
ops_file_plant() {
	local dir=$1 name=$2 src=$3 last gen sum
	last=$(ls "$dir" | grep -E "^$name\.[0-9]+\.[0-9a-f]{16}$" | sort | tail -n1)
	[ -n "$last" ] || { echo "ops_file_plant: no $name file in $dir" >&2; return 1; }
	gen=${last#"$name".}
	gen=$((10#${gen%%.*} + 1))
	sum=$(xxh64sum < "$src" | cut -d' ' -f1)
	install -m 0600 "$src" "$dir/$(printf '%s.%09d.%s' "$name" "$gen" "$sum")"
}

ops_fake_lock() {
	local path=$1 pid=$2 start
	start=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20)
	mkdir -p "$(dirname "$path")"
	printf 'host=%s\nmachine_id=%s\nboot_id=%s\npid_ns=%s\npid=%s\nstart_time=%s\npurpose=restore\ntaken_at=%s\ntoken=%032d\nbeat=%020d\n' \
		"${KBOSS_HOSTNAME:-$(hostname)}" "${KBOSS_MACHINE_ID:-$(cat /etc/machine-id)}" \
		"$(cat /proc/sys/kernel/random/boot_id)" "$(readlink /proc/self/ns/pid)" "$pid" "$start" \
		"$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$pid" 0 > "$path"
	chmod 0600 "$path"
}

# newest generation file of a backup's record
ops_backup_record_file() {
	find "$KB_SECONDARY/kboss/vms" -path "*/$1/backup.*.ini" 2>/dev/null | sort | tail -n1
}

ops_fake_restoring() {
	local uuid=$1 pid=$2 start
	start=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20)
	mkdir -p /run/kboss/restoring && chmod 0700 /run/kboss /run/kboss/restoring
	printf 'pid=%s\nstart_time=%s\n' "$pid" "$start" > "/run/kboss/restoring/$uuid"
	chmod 0600 "/run/kboss/restoring/$uuid"
}
