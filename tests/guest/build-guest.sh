#!/bin/bash
# build-guest.sh [OUT] - build (once, cached) the tiny kboss test guest.
#
# The guest is a qcow2 disk (256 MiB virtual) with an MBR partition table,
# one bootable ext4 partition, extlinux in its boot sector, Debian's kernel
# (from /boot) with a tiny initramfs (see below), busybox-static as userland and qemu-ga with its
# libraries. It boots from its own disk (no direct kernel boot) and starts
# qemu-ga on the virtio-serial port named org.qemu.guest_agent.0.
#
# OUT defaults to ${KBOSS_TEST_CACHE:-/var/cache/kboss-test}/guest.qcow2.
# The image is rebuilt when this script's content (or the guest kernel
# version) changes: a stamp "OUT.stamp" records the hash. Concurrent callers
# serialise on "OUT.lock"; the image is written to a temporary name and moved
# into place. Prints the image path on stdout; progress goes to stderr.
#
# Environment:
#   KBOSS_TEST_CACHE            cache directory (default /var/cache/kboss-test)
#   KBOSS_GUEST_KVER            kernel version to use (default: newest in /boot
#                               that has an initrd and /lib/modules)
#   KBOSS_GUEST_INITRD          tiny (default: own small initramfs, fits 256 MiB
#                               RAM) or debian (/boot/initrd.img-KVER as is;
#                               needs >= 512 MiB guest RAM)
#   KBOSS_GUEST_FORCE=1         rebuild even if the stamp matches
set -euo pipefail

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

self=$(readlink -f "${BASH_SOURCE[0]}")
cache=${KBOSS_TEST_CACHE:-/var/cache/kboss-test}
out=${1:-$cache/guest.qcow2}
case $out in /*) ;; *) out=$PWD/$out ;; esac
outdir=$(dirname "$out")
mkdir -p "$outdir"

# --- which kernel ---------------------------------------------------------
pick_kver() {
	local k v best=
	for k in /boot/vmlinuz-*; do
		[ -e "$k" ] || continue
		v=${k#/boot/vmlinuz-}
		[ -e "/boot/initrd.img-$v" ] && [ -d "/lib/modules/$v" ] || continue
		best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n1)
	done
	[ -n "$best" ] || die "no kernel with initrd and modules in /boot"
	printf '%s\n' "$best"
}
kver=${KBOSS_GUEST_KVER:-$(pick_kver)}
for f in "/boot/vmlinuz-$kver" "/boot/initrd.img-$kver" "/lib/modules/$kver"; do
	[ -e "$f" ] || die "missing $f"
done

initrd_kind=${KBOSS_GUEST_INITRD:-tiny}
case $initrd_kind in tiny|debian) ;; *) die "KBOSS_GUEST_INITRD must be tiny or debian" ;; esac

stamp_value=$( { sha256sum < "$self"; echo "$kver $initrd_kind"; } | sha256sum | cut -d' ' -f1)

is_fresh() {
	[ -z "${KBOSS_GUEST_FORCE:-}" ] && [ -s "$out" ] && [ -f "$out.stamp" ] &&
		[ "$(cat "$out.stamp")" = "$stamp_value" ]
}

if is_fresh; then
	printf '%s\n' "$out"
	exit 0
fi

exec 9>"$out.lock"
if ! flock -n 9; then
	log "another build holds $out.lock, waiting"
	flock 9
fi
# Somebody else may have built it while we waited.
if is_fresh; then
	printf '%s\n' "$out"
	exit 0
fi

for c in guestfish ldd modprobe busybox qemu-img; do
	command -v "$c" >/dev/null || die "missing command $c"
done
[ -x /usr/sbin/qemu-ga ] || die "missing /usr/sbin/qemu-ga (qemu-guest-agent)"
[ -f /usr/lib/EXTLINUX/mbr.bin ] || die "missing /usr/lib/EXTLINUX/mbr.bin (extlinux)"
busybox_bin=/bin/busybox
[ -x $busybox_bin ] || busybox_bin=$(command -v busybox)
# busybox-static: must not need any shared library
if ldd "$busybox_bin" >/dev/null 2>&1; then
	die "$busybox_bin is dynamically linked; install busybox-static"
fi

t0=$(date +%s)
work=$(mktemp -d "$outdir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
log "building guest image with kernel $kver in $work"

# --- tiny initramfs -----------------------------------------------------------
# Debian's own initrd.img (MODULES=most, ~35 MB zstd, ~135 MB unpacked) does
# not fit into a 256 MiB guest: the kernel runs out of memory unpacking it.
# So by default the guest gets a tiny initramfs: busybox, the modules for
# virtio-blk and ext4 (from the same Debian kernel), and an /init that mounts
# root= and switch_root's to /sbin/init on the disk. KBOSS_GUEST_INITRD=debian
# puts /boot/initrd.img-$kver on the disk instead (then give the VM >= 512 MiB,
# KBT_VM_MEM_MB=512).
build_tiny_initrd() { # OUT
	local ir=$work/initramfs ko
	mkdir -p "$ir"/{bin,dev,proc,sys,root,lib/modules}
	cp "$busybox_bin" "$ir/bin/busybox"
	for a in sh mount umount insmod switch_root sleep cat poweroff echo mkdir; do
		ln -s busybox "$ir/bin/$a"
	done
	: > "$ir/modules.order"
	for m in virtio_ring virtio virtio_pci virtio_blk ext4; do
		modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
	done | awk '!seen[$0]++' | while read -r ko; do
		cp "$ko" "$ir/lib/modules/"
		printf '/lib/modules/%s\n' "${ko##*/}" >> "$ir/modules.order"
	done
	cat > "$ir/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "kboss-initramfs: loading modules" > /dev/kmsg
while read -r ko; do insmod "$ko" 2>/dev/null; done < /modules.order
root=/dev/vda1 mode=ro fstype=ext4
for arg in $(cat /proc/cmdline); do
	case $arg in
	root=*) root=${arg#root=} ;;
	rootfstype=*) fstype=${arg#rootfstype=} ;;
	rw) mode=rw ;;
	ro) mode=ro ;;
	esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t "$fstype" -o "$mode" "$root" /root && [ -x /root/sbin/init ]; then
	echo "kboss-initramfs: mounted $root ($fstype, $mode), switching root" > /dev/kmsg
	umount /proc /sys
	mount -o move /dev /root/dev
	exec switch_root /root /sbin/init
fi
echo "kboss-initramfs: FATAL: cannot mount $root or no /sbin/init on it; powering off" > /dev/kmsg
sleep 2
poweroff -f
INIT
	chmod 0755 "$ir/init"
	(cd "$ir" && find . | LC_ALL=C sort | "$busybox_bin" cpio -o -H newc 2>/dev/null) | gzip -9 > "$1"
	log "tiny initramfs: $(du -k "$1" | cut -f1) KiB, modules: $(tr '\n' ' ' < "$ir/modules.order")"
}

# --- root filesystem tree ---------------------------------------------------
mkdir -p "$root"/{bin,sbin,etc/init.d,dev,proc,sys,run,tmp,root,mnt,boot}
mkdir -p "$root"/usr/{bin,sbin} "$root"/var/log "$root/lib/modules/$kver"
chmod 1777 "$root/tmp"
ln -s ../run "$root/var/run"

# busybox and its applets
cp "$busybox_bin" "$root/bin/busybox"
"$busybox_bin" --list-full | while read -r applet; do
	[ -e "$root/$applet" ] || [ -L "$root/$applet" ] && continue
	mkdir -p "$root/$(dirname "$applet")"
	ln -s /bin/busybox "$root/$applet"
done
# our own shutdown (qemu-ga runs "/sbin/shutdown -h -P +0 ...")
rm -f "$root/sbin/shutdown"

# qemu-ga with its shared libraries and the loader, at the same paths
copy_with_libs() {
	local bin=$1 lib
	mkdir -p "$root$(dirname "$bin")"
	cp -L "$bin" "$root$bin"
	ldd "$bin" | awk '/=>/ { if ($3 ~ /^\//) print $3 } /^\s*\// { print $1 }' |
	while read -r lib; do
		[ -e "$root$lib" ] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}
copy_with_libs /usr/sbin/qemu-ga

# kernel modules for the agent port (and virtio basics), in dependency order
: > "$root/etc/modules.order"
for m in virtio_ring virtio virtio_pci virtio_console; do
	modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
	mkdir -p "$root$(dirname "$ko")"
	cp "$ko" "$root$ko"
	printf '%s\n' "$ko" >> "$root/etc/modules.order"
done
log "modules: $(tr '\n' ' ' < "$root/etc/modules.order")"

# kernel, initrd, bootloader configuration
cp "/boot/vmlinuz-$kver" "$root/boot/vmlinuz"
if [ "$initrd_kind" = debian ]; then
	cp "/boot/initrd.img-$kver" "$root/boot/initrd.img"
else
	build_tiny_initrd "$root/boot/initrd.img"
fi
cat > "$root/boot/extlinux.conf" <<'CONF'
DEFAULT kboss
PROMPT 0
TIMEOUT 1
LABEL kboss
	LINUX /boot/vmlinuz
	INITRD /boot/initrd.img
	APPEND root=/dev/vda1 rw console=tty0 console=ttyS0,115200
CONF

# etc
cat > "$root/etc/fstab" <<'CONF'
/dev/vda1 / ext4 rw,errors=remount-ro 0 1
CONF
echo kboss-guest > "$root/etc/hostname"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"

# busybox init configuration
cat > "$root/etc/inittab" <<'CONF'
::sysinit:/etc/init.d/rcS
::respawn:/sbin/kboss-ga
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
::shutdown:/bin/sync
CONF

cat > "$root/etc/init.d/rcS" <<'SCRIPT'
#!/bin/sh
# kboss test guest: early system setup (run once by busybox init)
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
say() { echo "kboss-guest: $*" > /dev/kmsg 2>/dev/null || echo "kboss-guest: $*"; }

[ -e /proc/self ] || mount -t proc proc /proc
mounted() { grep -q "^[^ ]* $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /var/run /run /dev/pts /tmp
mounted /dev/pts || mount -t devpts devpts /dev/pts
mount -o remount,rw / 2>/dev/null
hostname -F /etc/hostname

while read -r ko; do
	m=${ko##*/}; m=${m%.ko}
	[ -d "/sys/module/$m" ] || [ -d "/sys/module/$(echo "$m" | tr - _)" ] && continue
	insmod "$ko" || say "insmod $ko failed"
done < /etc/modules.order
say "system up, kernel $(uname -r), root $(grep ' / ' /proc/mounts | grep -v rootfs)"
SCRIPT

cat > "$root/sbin/kboss-ga" <<'SCRIPT'
#!/bin/sh
# find the qemu-ga virtio-serial port by name (no udev here) and run qemu-ga
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
say() { echo "kboss-guest: $*" > /dev/kmsg 2>/dev/null || echo "kboss-guest: $*"; }
port=
i=0
while [ $i -lt 100 ]; do
	for n in /sys/class/virtio-ports/*/name; do
		[ -r "$n" ] || continue
		if [ "$(cat "$n")" = org.qemu.guest_agent.0 ]; then
			d=${n%/name}; port=/dev/${d##*/}
		fi
	done
	[ -n "$port" ] && [ -c "$port" ] && break
	port=
	i=$((i + 1))
	sleep 0.1
done
if [ -z "$port" ]; then
	say "no virtio port named org.qemu.guest_agent.0; qemu-ga not started"
	sleep 30
	exit 1
fi
mkdir -p /var/run
say "starting qemu-ga on $port"
say "KBOSS GUEST READY"
exec /usr/sbin/qemu-ga -m virtio-serial -p "$port"
SCRIPT

# shutdown: qemu-ga's guest-shutdown runs "/sbin/shutdown -h -P +0 ..."
# (-r to reboot); sync, remount read-only and power off (or reboot) at once.
cat > "$root/sbin/shutdown" <<'SCRIPT'
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
action=poweroff
for a in "$@"; do
	case $a in
	-r) action=reboot ;;
	-h|-P|-H) ;;
	esac
done
echo "kboss-guest: shutdown ($action)" > /dev/kmsg 2>/dev/null
sync
mount -o remount,ro / 2>/dev/null
sync
exec /bin/busybox $action -f
SCRIPT
chmod 0755 "$root/etc/init.d/rcS" "$root/sbin/kboss-ga" "$root/sbin/shutdown"
# /sbin/init, /sbin/poweroff, /sbin/reboot, /sbin/halt are busybox applets
for a in init poweroff reboot halt; do
	[ -L "$root/sbin/$a" ] || die "busybox has no $a applet"
done

# --- disk image -------------------------------------------------------------
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/root.tar" .
du -sh "$root" >&2
tmpimg=$work/guest.qcow2
export LIBGUESTFS_BACKEND=${LIBGUESTFS_BACKEND:-direct}
export LIBGUESTFS_BACKEND_SETTINGS=${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}
qemu-img create -q -f qcow2 "$tmpimg" 256M
guestfish --format=qcow2 -a "$tmpimg" <<GF
run
part-init /dev/sda mbr
part-add /dev/sda p 2048 -1
part-set-bootable /dev/sda 1 true
mkfs ext4 /dev/sda1 label:kboss-root
mount /dev/sda1 /
tar-in $work/root.tar /
extlinux /boot
upload-offset /usr/lib/EXTLINUX/mbr.bin /dev/sda 0
sync
umount-all
GF
qemu-img check -q "$tmpimg"
mv -f "$tmpimg" "$out"
printf '%s\n' "$stamp_value" > "$out.stamp"
log "built $out in $(( $(date +%s) - t0 )) s"
printf '%s\n' "$out"
