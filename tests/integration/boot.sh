#!/bin/bash
# Integration test: the tiny guest boots from its own disk under libvirt
# (TCG), its agent answers, data written inside the guest (raw data disk and
# a file on the root filesystem) is found by the host in the qcow2 images
# after a clean shutdown, and a wrong pattern is reported as a mismatch.
# Prints TAP. Run from anywhere: bash tests/integration/boot.sh
. "$(dirname "$0")/../lib/functions.sh"

requires virsh virtlogd libvirtd qemu-system-x86_64 qemu-img qemu-io guestfish base64 flock

plan 16

t_begin=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

ok start_libvirt "libvirtd is running"

t=$(date +%s.%N)
img=$(guest_image)
ok test -s "$img" "guest image is built or cached ($(elapsed "$t") s): $img"
ok "! qemu-img info '$img' | grep -q '^backing file'" "guest image has no backing file"

ok make_test_vm vm 64 "domain $(vm_domain vm) defined"
ok "! qemu-img info '$(vm_disk vm)' | grep -q '^backing file'" "VM root disk is an independent copy"

t=$(date +%s.%N)
ok start_vm vm "domain started"
if ok wait_agent vm 180 "guest agent answers guest-ping"; then
	ping_s=$(elapsed "$t")
	diag "boot: virsh start -> first guest-ping: $ping_s s"
else
	bail_out "guest did not come up; console log above"
fi

ok "grep -q 'KBOSS GUEST READY' '$(vm_console_log vm)'" "guest printed its ready line on the serial console"
ok "guest_exec vm /bin/grep -q '^/dev/vda1 / ext4 rw' /proc/mounts" "guest runs from /dev/vda1 (ext4, rw)"

# data disk: 1 MiB of 0xa5 at 4 MiB, 4 KiB of 0x3c at an unaligned offset
ok "guest_write_pattern vm /dev/vdb $((4 << 20)) $((1 << 20)) 0xa5 &&
    guest_write_pattern vm /dev/vdb 12345 4096 0x3c" "patterns written to /dev/vdb in the guest"
# root fs: a file with a known content, found again after shutdown
marker="kboss-boot-test-$$-$RANDOM$RANDOM"
ok "[ \"\$(guest_exec vm /bin/sh -c 'echo $marker > /root/marker && sync && cat /root/marker')\" = $marker ]" \
    "file written on the guest root filesystem"

t=$(date +%s.%N)
ok stop_vm vm 60 "guest shuts down through the agent"
diag "shutdown took $(elapsed "$t") s"

ok "host_check_pattern '$(vm_data_disk vm)' $((4 << 20)) $((1 << 20)) 0xa5 &&
    host_check_pattern '$(vm_data_disk vm)' 12345 4096 0x3c &&
    host_check_pattern '$(vm_data_disk vm)' 0 4096 0" "host reads the guest's patterns back from data.qcow2"
ok "! host_check_pattern '$(vm_data_disk vm)' $((4 << 20)) $((1 << 20)) 0x5a 2>/dev/null &&
    ! host_check_pattern '$(vm_data_disk vm)' 12344 4096 0x3c 2>/dev/null" "a wrong byte / offset is reported as mismatch"

ok host_image_contains "$(vm_disk vm)" "$marker" "host finds the root-fs file's content in root.qcow2"
ok "! host_image_contains '$(vm_disk vm)' 'kboss-boot-test-no-such-marker'" "an absent marker is not found"

diag "total runtime $(elapsed "$t_begin") s"
