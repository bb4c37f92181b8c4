# Sourced by scripts/demo and scripts/check: make a bare Debian 12 machine
# ready (packages, build, libvirt daemons). Idempotent; quick when done.

KB_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KB_BUILD=${KB_BUILD:-$KB_TOP/_build}

# Every Debian package the build, the tests and the demo use.
KB_PACKAGES="
  build-essential autoconf automake pkg-config
  libvirt-dev libxml2-dev libguestfs-dev libzstd-dev zlib1g-dev libdeflate-dev libxxhash-dev
  libinih-dev libjson-c-dev libcriterion-dev libsystemd-dev
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
  qemu-system-x86 qemu-utils seabios ipxe-qemu
  libguestfs-tools linux-image-amd64 busybox-static qemu-guest-agent extlinux syslinux-common
  xxhash zstd virtnbdbackup clang procps time bindfs fuse3 strace
  debhelper dpkg-dev lintian git prometheus
"

kb_log() { printf '\n== %s\n' "$*" >&2; }

# Locks refuse to run without a host identity (host name + machine id,
# docs/storage.md); bare containers may come without /etc/machine-id.
kb_ensure_machine_id() {
  grep -qE '^[0-9a-f]{32}$' /etc/machine-id 2>/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || { echo "/etc/machine-id is missing: kboss needs one" >&2; return 1; }
  kb_log "writing /etc/machine-id"
  if command -v systemd-machine-id-setup >/dev/null; then
    systemd-machine-id-setup >/dev/null 2>&1 && return 0
  fi
  tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
}

kb_install_packages() {
  kb_ensure_machine_id || return 1
  local missing=() p
  for p in $KB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  kb_log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts need root to install packages (missing: ${missing[*]})" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || return 1
  apt-get install -y -q --no-install-recommends "${missing[@]}" || return 1
}

kb_build() {
  kb_log "building in $KB_BUILD"
  (cd "$KB_TOP" && { [ -x configure ] && [ configure -nt configure.ac ] || ./autogen.sh; }) || return 1
  mkdir -p "$KB_BUILD" || return 1
  if [ ! -f "$KB_BUILD/Makefile" ] || [ "$KB_TOP/configure" -nt "$KB_BUILD/config.status" ]; then
    (cd "$KB_BUILD" && "$KB_TOP/configure" --sysconfdir=/etc --localstatedir=/var --enable-werror) || return 1
  fi
  make -C "$KB_BUILD" -j"$(nproc)" || return 1
}

# libvirt's daemons, started by hand where systemd does not run.
kb_start_libvirt() {
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d || return 1
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d || return 1
  fi
  local i
  for i in $(seq 1 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "libvirtd did not come up" >&2
  return 1
}
