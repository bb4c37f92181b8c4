#!/usr/bin/env bash
# A hostile writer to the export edits a backup's saved domain.xml (and
# recomputes its file-name checksum, as any host of the zone can): a
# <qemu:commandline> with "-D FILE", an <emulator> on the export, a
# <kernel>/etc/shadow</kernel>, an nvdimm backed by a host file, an rng
# connecting to a TCP host and a TCP serial port. kboss-validate and
# kboss-restore --as build their domains from kboss's allow-list: none of
# it reaches the domain libvirt runs (virsh dumpxml) nor qemu's command line
# (libvirt's qemu log), FILE never appears, each dropped element is logged,
# and both VMs still boot to their guest agent.
#
# The store and scratch folders have XML special characters in their names
# (& < '), so every XML document kboss builds with those paths (the push
# backup job of a running VM, its checkpoint, the validation VM's overlays
# and backing chain, the restored VM's disks) must be escaped to work.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"
. "$(dirname "$0")/../lib/ops.sh"

plan 42
requires xxh64sum python3
start_libvirt || bail_out "libvirtd"
kb_conf_init 8
# Folders whose names XML must escape.
special="st&<'x"
KB_SECONDARY=$KB_ROOT/$special
scratch="$KB_ROOT/scr&<'x"
mkdir -p "$KB_SECONDARY" "$scratch" && chmod 0755 "$KB_SECONDARY" || bail_out "mkdir"
python3 - "$KBOSS_CONF" "$KB_SECONDARY" "$scratch" <<'PY' || bail_out "config"
import sys
p, sec, scr = sys.argv[1:]
lines = open(p).read().splitlines()
out = []
for l in lines:
    if l.startswith("secondary.path ="):
        l = "secondary.path = " + sec
    elif l.startswith("scratch.path ="):
        l = "scratch.path = " + scr
    out.append(l)
open(p, "w").write("\n".join(out) + "\n")
PY
kb kbossctl init-store "$KB_SECONDARY" >/dev/null || bail_out "kbossctl init-store"
make_test_vm t || bail_out "cannot define the test VM"
dom=$(vm_domain t)
kb_offering val validate=true validation_steps=wait_for_boot
printf '[vm]\noffering = val\nbackupValidationBootTimeout = 180\n' > "$KB_ROOT/etc/vms.d/$dom.conf"

# The planted "-D FILE" goes to a folder qemu could write to.
markdir=$KBT_TMPDIR/marks
mkdir -p "$markdir" && chmod 1777 "$markdir"
mark=$markdir/qemu-D.log
emark=$markdir/emulator-ran
shadow_mark=/etc/shadow

# Control: the planted arguments do make qemu create FILE when they reach it.
ctl=$markdir/control.log
timeout 10 qemu-system-x86_64 -machine none -nodefaults -display none -monitor none -S -D "$ctl" >/dev/null 2>&1 &
for i in $(seq 1 50); do [ -e "$ctl" ] && break; sleep 0.1; done
kill %1 2>/dev/null; wait 2>/dev/null
ok [ -e "$ctl" ] "control: qemu given '-D FILE' creates FILE"

# A backup of the running VM: a push backup job and a checkpoint whose
# paths carry & < ' (built with libxml2, they still parse).
start_vm t && wait_agent t 240
ok [ $? -eq 0 ] "the test VM boots"
b1=$(kb_backup t)
ok [ -n "$b1" ] "backup of the running VM into '$special': $b1"
ok [ -n "$(kb_backup_file "$b1" vda)" ] "its vda file is in the store folder"
stop_vm t

# ---- the tampering ----
meta=$(dirname "$(ops_backup_record_file "$b1")")
[ -d "$meta" ] || bail_out "no folder for backup $b1"
saved=$(ls "$meta" | grep -E '^domain\.xml\.[0-9]+\.[0-9a-f]{16}$' | sort | tail -n1)
ok [ -n "$saved" ] "the backup saved its domain XML ($saved)"
cat > "$markdir/evil-qemu" <<SH
#!/bin/sh
touch '$emark'
exec /usr/bin/qemu-system-x86_64 "\$@"
SH
chmod 0755 "$markdir/evil-qemu"
cp "$markdir/evil-qemu" "$KB_SECONDARY/evil-qemu"
head -c 1M /dev/zero > "$markdir/hostfile"
python3 - "$meta/$saved" "$markdir/tampered.xml" "$mark" "$KB_SECONDARY/evil-qemu" "$markdir/hostfile" <<'PY' || bail_out "tamper"
import re, sys
from xml.sax.saxutils import escape
src, dst, mark, emu, hostfile = (sys.argv[1], sys.argv[2]) + tuple(escape(a, {"'": "&apos;"}) for a in sys.argv[3:])
x = open(src).read()
x = re.sub(r"<domain ([^>]*)>", r"<domain \1 xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", x, count=1)
x = re.sub(r"<emulator>[^<]*</emulator>", "", x)
x = x.replace("<devices>", "<devices>\n    <emulator>%s</emulator>" % emu, 1)
x = x.replace("</os>", "  <kernel>/etc/shadow</kernel>\n  </os>", 1)
x = x.replace("</devices>", """  <memory model='nvdimm'><source><path>%s</path></source>
      <target><size unit='KiB'>1024</size><node>0</node></target></memory>
    <rng model='virtio'><backend model='egd' type='tcp'>
      <source mode='connect' host='203.0.113.9' service='7000'/><protocol type='raw'/></backend></rng>
    <serial type='tcp'><source mode='connect' host='203.0.113.9' service='2323'/><target port='1'/></serial>
  </devices>""" % hostfile, 1)
x = x.replace("</domain>", """  <qemu:commandline>
    <qemu:arg value='-D'/>
    <qemu:arg value='%s'/>
  </qemu:commandline>
</domain>""" % mark, 1)
open(dst, "w").write(x)
PY
ops_file_plant "$meta" domain.xml "$markdir/tampered.xml"
planted=$(ls "$meta" | grep -E '^domain\.xml\.' | sort | tail -n1)
ok [ "$planted" != "$saved" ] "the tampered domain.xml is the newest generation ($planted)"
ok grep -q "qemu:commandline" "$meta/$planted" "and it holds the planted elements"

# The last qemu command line libvirt logged (one argument a line, "\" continued).
qemu_cmdline() { # LOG
	awk '/: starting up libvirt/ { buf = ""; on = 1; next }
		on { buf = buf $0 "\n"; if ($0 !~ /\\$/) on = 0 }
		END { printf "%s", buf }' "$1"
}

# What must reach neither libvirt's definition nor qemu.
absent_from() { # FILE WHAT
	local f=$1
	! grep -q -e 'qemu:commandline' -e "$mark" -e '/etc/shadow' -e 'evil-qemu' -e '203.0.113.9' \
		-e 'nvdimm' -e "$markdir/hostfile" -e '<kernel>' -e "model='egd'" "$f"
}
notices_in() { # FILE
	local f=$1 w
	for w in "<qemu:commandline>" "<emulator>" "<kernel>" "<memory>" "<rng> (backend 'egd')" "<serial type='tcp'>"; do
		grep -qF "dropped $w" "$f" || { echo "no notice for $w" >&2; return 1; }
	done
}

# ---- validation ----
vdom=kboss-val-$b1
vxml=$markdir/validation.xml
kb kboss-validate "$b1" > "$markdir/validate.out" 2>&1 &
vpid=$!
# The validation VM's live definition, taken while it runs.
while kill -0 $vpid 2>/dev/null; do
	virsh -q dumpxml "$vdom" > "$vxml.tmp" 2>/dev/null && [ -s "$vxml.tmp" ] && mv "$vxml.tmp" "$vxml" && break
	sleep 0.25
done
wait $vpid; rc=$?
out=$(cat "$markdir/validate.out")
printf '%s\n' "$out" | sed 's/^/  | /' >&2
ok [ $rc -eq 0 ] "kboss-validate passes the tampered backup (the guest boots)"
ok eval 'kb_backup_record "$b1" | grep -q "^step.wait_for_boot = ok "' "its wait_for_boot step passed"
ok notices_in "$markdir/validate.out" "kboss-validate logged a notice for each planted element"
ok [ -s "$vxml" ] "the validation VM's live definition was captured"
ok absent_from "$vxml" "none of the planted elements is in the validation VM (virsh dumpxml)"
ok eval '! grep -q "<interface" "$vxml"' "the validation VM has no NIC"
ok grep -q "<listen type='address' address='127.0.0.1'/>" "$vxml" "its VNC listens on 127.0.0.1"
chain_ok() { # XML: vda is the overlay, then the backup's file on the store, then nothing
	python3 - "$1" "$KB_SECONDARY" "$b1" <<'PY'
import sys, xml.etree.ElementTree as E
xml, store, b1 = sys.argv[1:]
d = [d for d in E.parse(xml).getroot().find("devices").findall("disk") if d.find("target").get("dev") == "vda"][0]
b = d.find("backingStore")
assert b.find("format").get("type") == "qcow2"
f = b.find("source").get("file")
assert f.startswith(store + "/") and f.endswith("/%s/vda.qcow2" % b1), f
base = b.find("backingStore")
assert base is not None and len(base) == 0 and not base.attrib
PY
}
ok chain_ok "$vxml" "vda: the overlay, the backup's vda.qcow2 (qcow2, on the store named with & < '), then <backingStore/>"
qlog=/var/log/libvirt/qemu/$vdom.log
ok [ -s "$qlog" ] "libvirt logged the validation VM's qemu command line"
ok eval 'qemu_cmdline "$qlog" > "$markdir/vcmd" && grep -q -- "-name guest=$vdom," "$markdir/vcmd"' \
	"... which names the validation VM"
ok absent_from "$markdir/vcmd" "no planted argument reached qemu"
ok eval 'grep -q -- "-blockdev" "$markdir/vcmd" && grep -q "\"backing\":null" "$markdir/vcmd"' \
	"qemu got the disks as -blockdev nodes, the chain ending in \"backing\":null"
ok [ ! -e "$mark" ] "the planted '-D FILE' was never created"
ok [ ! -e "$emark" ] "the planted emulator never ran"

# ---- restore --as ----
new=$(vm_domain r)
cleanup_push "virsh -q destroy '$new' >/dev/null 2>&1; virsh -q undefine --nvram '$new' >/dev/null 2>&1; virsh -q undefine '$new' >/dev/null 2>&1"
out=$(kb kboss-restore --as "$new" "$b1" 2>&1); rc=$?
printf '%s\n' "$out" | sed 's/^/  | /' >&2
printf '%s\n' "$out" > "$markdir/restore.out"
ok [ $rc -eq 0 ] "kboss-restore --as defines and restores a new VM from the tampered backup"
ok notices_in "$markdir/restore.out" "kboss-restore --as logged a notice for each planted element"
rxml=$markdir/restored.xml
virsh -q dumpxml --inactive "$new" > "$rxml" 2>/dev/null
ok [ -s "$rxml" ] "the new VM is defined"
ok absent_from "$rxml" "none of the planted elements is in the new VM's definition"
ok eval '! grep -q "$(virsh -q domuuid "$dom")" "$rxml"' "the new VM has a UUID of its own"
ok grep -q "<source file='$(vm_dir t)/$new-vda.qcow2'/>" "$rxml" "its vda is beside the original VM's disks"
ok qemu-img compare -q "$(vm_dir t)/$new-vda.qcow2" "$(kb_backup_file "$b1" vda)" "and holds the backup's vda"
ok eval "! grep -q '<backingStore type' '$rxml'" "a restored disk has no backing file"
virsh -q start "$new" >/dev/null
ok [ $? -eq 0 ] "the new VM starts"
rlog=/var/log/libvirt/qemu/$new.log
ok eval 'qemu_cmdline "$rlog" > "$markdir/rcmd" && grep -q -- "-name guest=$new," "$markdir/rcmd"' \
	"libvirt logged the new VM's qemu command line"
ok absent_from "$markdir/rcmd" "no planted argument reached the new VM's qemu"
ok [ ! -e "$mark" ] "the planted '-D FILE' was never created"
ok [ ! -e "$emark" ] "the planted emulator never ran"
ok eval 'grep -q "emulator>/usr/bin/qemu-system" "$rxml"' "libvirt chose the host's own emulator"
booted=no
for i in $(seq 1 240); do
	[ "$(virsh -q domstate "$new" 2>/dev/null)" = running ] || break
	virsh -q qemu-agent-command --timeout 2 "$new" '{"execute":"guest-ping"}' 2>/dev/null | grep -q return && { booted=yes; break; }
	sleep 1
done
ok [ $booted = yes ] "the restored VM boots to its guest agent"
virsh -q destroy "$new" >/dev/null 2>&1

# ---- a saved domain XML that kboss cannot use is refused, not trusted ----
python3 - "$meta/$planted" "$markdir/badmem.xml" <<'PY'
import re, sys
x = open(sys.argv[1]).read()
x = re.sub(r"<memory[^>]*>[^<]*</memory>", "<memory unit='KiB'>99999999999999999999</memory>", x, count=1)
open(sys.argv[2], "w").write(x)
PY
ops_file_plant "$meta" domain.xml "$markdir/badmem.xml"
out=$(kb kboss-restore --as "$(vm_domain r2)" "$b1" 2>&1); rc=$?
ok [ $rc -ne 0 ] "a saved domain XML with an out-of-range <memory> is refused"
ok eval 'printf "%s\n" "$out" | grep -q "no valid <memory>"' "with an error naming the value: $(printf '%s' "$out" | tail -n1)"
ok eval '! virsh -q dominfo "$(vm_domain r2)" >/dev/null 2>&1' "and no VM is defined"

# ---- catalog values with terminal escape sequences are shown escaped ----
has_esc() { LC_ALL=C grep -q "$(printf '\033')"; }
ops_doc_set "$meta" backup backup vm_name "$(printf 'evil\033]2;owned\007\033[2J')"
out=$(kb kbossctl backups 2>&1)
ok eval 'printf "%s\n" "$out" | grep -qF "evil\\x1b]2;owned\\x07\\x1b[2J"' "kbossctl backups shows the planted escape sequence as text"
ok eval '! printf "%s" "$out" | has_esc' "and writes no ESC byte to the terminal"
out=$(kb kbossctl backups --json 2>&1)
ok eval '! printf "%s" "$out" | has_esc && printf "%s" "$out" | python3 -c "import json,sys; json.load(sys.stdin)"' \
	"kbossctl backups --json stays valid JSON without raw escapes"
