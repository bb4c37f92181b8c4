#!/usr/bin/env bash
# kbossctl extract: a file written in the guest comes out of a backup
# byte-identical, 0600; also from an incremental (a second file, so the
# chain is read through its backing file) and from a
# compressed copy of the backup; refused when the offering does not allow
# file extraction, or when DEST exists.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

plan 13
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
kb_offering files allow_extract_file=true
make_test_vm a 16 || bail_out "cannot define the test VM"
kb_assign a files
dom=$(vm_domain a)
out=$KBT_TMPDIR/out
ref=$KBT_TMPDIR/ref.bin

start_vm a && wait_agent a 180 || bail_out "the guest did not answer"
guest_exec a /bin/sh -c 'head -c 200000 /dev/urandom > /root/kboss-secret.bin && sync' ||
	bail_out "cannot write the file in the guest"
guest_exec a /bin/cat /root/kboss-secret.bin > "$ref"
ok [ "$(stat -c %s "$ref")" -eq 200000 ] "a 200000-byte random file written in the guest (copied out through the agent)"

b1=$(kb_backup a)
ok [ -n "$b1" ] "backup of the running VM after a sync: $b1"
ok kb kbossctl extract "$b1" /root/kboss-secret.bin "$KBT_TMPDIR/x1" "kbossctl extract succeeds"
ok cmp "$ref" "$KBT_TMPDIR/x1" "the extracted file is byte-identical to the guest's"
ok [ "$(stat -c %a "$KBT_TMPDIR/x1")" = 600 ] "... and created 0600"
ok '! kb kbossctl extract "$b1" /root/kboss-secret.bin "$KBT_TMPDIR/x1" 2>"$out" && grep -q "exists" "$out"' \
	"an existing DEST is not overwritten"

# kill -9 while the chain is served: the qemu-nbd that serves it must not outlive kbossctl
f1=$(kb_backup_file "$b1" vda)
"$(kb_prog kbossctl)" extract "$b1" /root/kboss-secret.bin "$KBT_TMPDIR/xk" >/dev/null 2>&1 &
xpid=$!
nbd=
for _ in $(seq 1 300); do
	nbd=$(pgrep -f -- "qemu-nbd.*$f1" | head -1)
	[ -n "$nbd" ] && break
	sleep 0.1
done
ok [ -n "$nbd" ] "kbossctl extract serves the chain with qemu-nbd (pid ${nbd:-none})"
kill -9 "$xpid"
wait "$xpid" 2>/dev/null
for _ in $(seq 1 50); do
	[ -n "$nbd" ] && kill -0 "$nbd" 2>/dev/null || break
	sleep 0.1
done
ok '[ -n "$nbd" ] && ! kill -0 "$nbd" 2>/dev/null' "after kill -9 of kbossctl extract its qemu-nbd is gone within 5 s"
[ -n "$nbd" ] && kill "$nbd" 2>/dev/null

# an incremental: a second file, read through the chain
guest_exec a /bin/sh -c 'head -c 70000 /dev/urandom > /root/second.bin && sync' || bail_out "cannot write the second file"
guest_exec a /bin/cat /root/second.bin > "$KBT_TMPDIR/ref2.bin"
b2=$(kb_backup a)
virsh -q destroy "$dom" >/dev/null   # not needed any more; spare the CPU
ok [ "$(kb_backup_field "$b2" type)" = incremental ] "an incremental after the second file: $b2"
ok 'kb kbossctl extract "$b2" /root/second.bin "$KBT_TMPDIR/x2" >/dev/null && cmp "$KBT_TMPDIR/ref2.bin" "$KBT_TMPDIR/x2"' \
	"the new file comes out of the incremental (read through its parent) byte-identical"

# a compressed backup (what kboss-compress leaves: compressed clusters)
f=$(kb_backup_file "$b1" vda)
qemu-img convert -q -c -O qcow2 "$f" "$f.c" && chmod --reference="$f" "$f.c" && chown --reference="$f" "$f.c" && mv "$f.c" "$f"
ok 'qemu-img check -q "$f" && kb kbossctl extract "$b1" /root/kboss-secret.bin "$KBT_TMPDIR/x4" >/dev/null && cmp "$ref" "$KBT_TMPDIR/x4"' \
	"extract works on a compressed backup"

# the offering decides
kb_offering files allow_extract_file=false
ok '! kb kbossctl extract "$b1" /root/kboss-secret.bin "$KBT_TMPDIR/x5" 2>"$out"' \
	"extract is refused when the offering does not allow it"
ok 'grep -q "does not allow file extraction" "$out" && [ ! -e "$KBT_TMPDIR/x5" ]' "... with the reason, and no file"
