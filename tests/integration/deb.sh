#!/usr/bin/env bash
# The Debian package, built and installed the way an operator would:
#  - dpkg-buildpackage -us -uc -b in a fresh git clone of this tree's HEAD
#    (DEB_BUILD_OPTIONS=nocheck: make check runs the unit tests anyway);
#    lintian reports no error (its warnings are printed);
#  - apt-get install ./kboss_*.deb: programs in /usr/sbin, the hook as
#    /etc/libvirt/hooks/qemu.d/kboss, conffiles, 0700 state folders; the
#    postinst has the running libvirtd reload its hooks (SIGHUP: same pid, no
#    restart); installed kbossctl --version; systemd-analyze verify of the
#    installed units;
#  - the installed hook on a real virsh start of the test guest: with
#    /etc/kboss/kboss.conf pointed at a test "export" (an operator's change
#    of a conffile), a backup by /usr/sbin/kboss-backup, libvirt's checkpoint
#    metadata wiped, virsh start: the hook has /usr/sbin/kboss-backup
#    redefine the checkpoint (its line in /var/log/kboss/hook.log);
#  - reinstalled where policy-rc.d forbids reloads: the postinst only prints
#    the command;
#  - remove: only the conffiles are left, the changed one with its change;
#    purge: nothing is left; the catalog on the export is untouched.
# It installs into libvirtd's real hook folder: run it alone
# (/work/wt/vmslot --exclusive); the package is purged at exit, also on failure.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../lib/kboss.sh"

requires git dpkg-buildpackage dh lintian apt-get systemd-analyze unshare virsh
[ "$(id -u)" -eq 0 ] || skip_all "needs root (installs a package)"
git -C "$KBT_TOPDIR" rev-parse --verify -q HEAD >/dev/null ||
	skip_all "$KBT_TOPDIR is not a git checkout (the package is built from a clone)"
plan 26

HOOK=/etc/libvirt/hooks/qemu.d/kboss
HOOK_LOG=/var/log/kboss/hook.log
CONF=/etc/kboss/kboss.conf
if dpkg-query -W -f='${Status}' kboss 2>/dev/null | grep -qv '^unknown\|not-installed'; then
	bail_out "a kboss package is installed on this machine already; not touching it"
fi
[ -e "$HOOK" ] || [ -L "$HOOK" ] && bail_out "$HOOK exists already; not replacing it"
[ -e /etc/kboss ] && bail_out "/etc/kboss exists already; not replacing it"
start_libvirt || bail_out "libvirtd"
_kbt_tmpdir || bail_out "tmpdir"
T=$KBT_TMPDIR
# Folders the package makes and purges, left here by something else (a
# make install, another test): kept aside and put back at exit.
mkdir -p "$T/saved"
for d in /var/lib/kboss /var/log/kboss; do
	if [ -e "$d" ]; then
		diag "$d exists (not from a package): kept aside until the end"
		mkdir -p "$T/saved$(dirname "$d")" && mv "$d" "$T/saved$d" || bail_out "cannot move $d aside"
		cleanup_push "rm -rf '$d'; mv '$T/saved$d' '$d'"
	fi
done
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300)
# Whatever happens below: purge the package (its postrm has libvirtd forget
# the hook), and take the hook out should dpkg have failed.
cleanup_push "dpkg --purge kboss >'$T/cleanup-purge.log' 2>&1 || cat '$T/cleanup-purge.log';
	[ -L '$HOOK' ] && [ \"\$(readlink '$HOOK')\" = /usr/sbin/kboss-qemu-hook ] && rm -f '$HOOK'; true"

# --- build from a fresh clone -------------------------------------------
t0=$(date +%s)
git clone -q "$KBT_TOPDIR" "$T/src" || bail_out "git clone"
diag "building the packages of $(git -C "$T/src" log -1 --format='%h %s' | cut -c1-70)"
(cd "$T/src" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -us -uc -b) >"$T/build.log" 2>&1
st=$?
[ $st -eq 0 ] || tail -n 40 "$T/build.log" | sed 's/^/# build: /'
ok [ $st -eq 0 ] "dpkg-buildpackage -us -uc -b builds in a fresh clone ($(($(date +%s) - t0)) s)"
deb=$(ls "$T"/kboss_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || bail_out "no kboss_*.deb was built"
diag "built: $(cd "$T" && ls *.deb | tr '\n' ' ')"
diag "Depends: $(dpkg-deb -f "$deb" Depends)"
ok 'dpkg-deb -f "$deb" Depends | grep -q "libvirt0" && dpkg-deb -f "$deb" Depends | grep -q "qemu-utils"' \
	"Depends has the libraries (dh_shlibdeps) and the tools the programs run (qemu-utils)"

# lintian, as an unprivileged user where possible (it warns about root)
chmod -R a+rX "$T"/*.deb "$T"/*.changes "$T"/*.buildinfo 2>/dev/null
if id nobody >/dev/null 2>&1 && command -v runuser >/dev/null; then
	lint() { runuser -u nobody -- env HOME=/nonexistent lintian "$@"; }
else
	lint() { lintian "$@"; }
fi
lint --fail-on error "$T"/kboss_*.changes >"$T/lintian.log" 2>&1
st=$?
sed 's/^/# lintian: /' "$T/lintian.log"
ok [ $st -eq 0 ] "lintian reports no error on the packages"

# --- install ---------------------------------------------------------------
# policy-rc.d (the local policy for maintainer scripts) decides whether the
# postinst may reload libvirtd. with_policy 0|101 CMD...: run CMD with a
# policy that allows (0) or forbids (101) it, in a private mount namespace.
with_policy() {
	local rc=$1 dir=$T/policy-$1
	shift
	mkdir -p "$dir" && printf '#!/bin/sh\nexit %s\n' "$rc" > "$dir/policy-rc.d" && chmod 0755 "$dir/policy-rc.d"
	if [ -e /usr/sbin/policy-rc.d ]; then
		unshare -m sh -c 'mount --bind "$0" /usr/sbin/policy-rc.d && exec "$@"' "$dir/policy-rc.d" "$@"
	else
		# none on this machine: one in a folder that comes first in PATH
		unshare -m sh -c 'mount --bind "$0" /usr/local/sbin && exec "$@"' "$dir" \
			env PATH="/usr/local/sbin:$PATH" "$@"
	fi
}
lvpid=$(cat /run/libvirtd.pid 2>/dev/null)
with_policy 0 "${APT[@]}" install "$deb" >"$T/install.log" 2>&1
st=$?
[ $st -eq 0 ] || tail -n 30 "$T/install.log" | sed 's/^/# install: /'
ok [ $st -eq 0 ] "apt-get install ./$(basename "$deb")"
grep '^kboss:' "$T/install.log" | sed 's/^/# postinst: /'
ok 'grep -q "asked libvirtd (pid $lvpid) to reload (SIGHUP)" "$T/install.log" &&
    [ "$(cat /run/libvirtd.pid)" = "$lvpid" ] && kill -0 "$lvpid"' \
	"the postinst had the running libvirtd (pid $lvpid) reload its hooks; it was not restarted"
ok '[ "$(/usr/sbin/kbossctl --version)" = "kbossctl $(dpkg-query -W -f="\${Version}" kboss | sed "s/-[^-]*$//")" ]' \
	"installed kbossctl --version: $(/usr/sbin/kbossctl --version 2>&1)"
progs_ok() {
	local p
	for p in kbossctl kboss-backup kboss-restore kboss-compress kboss-validate; do
		[ -x /usr/sbin/$p ] && /usr/sbin/$p --help >/dev/null || return 1
	done
}
ok progs_ok "the programs are in /usr/sbin and answer --help"
ok '[ -x "$HOOK" ] && [ "$(readlink "$HOOK")" = /usr/sbin/kboss-qemu-hook ] && "$HOOK" --version | grep -q "^kboss"' \
	"the hook is $HOOK (-> /usr/sbin/kboss-qemu-hook)"
conffiles=$(dpkg-query -W -f='${Conffiles}\n' kboss | awk 'NF {print $1}' | sort | tr '\n' ' ')
ok [ "$conffiles" = "/etc/kboss/kboss.conf /etc/kboss/offerings.d/example.conf " ] "conffiles: $conffiles"
ok '[ "$(stat -c %a /var/lib/kboss /var/log/kboss /etc/kboss/vms.d | tr "\n" " ")" = "700 700 700 " ]' \
	"the postinst made /var/lib/kboss, /var/log/kboss and /etc/kboss/vms.d (0700)"
ok 'man -w kbossctl | grep -q "^/usr/share/man/man8/kbossctl.8" && man -w kboss-qemu-hook >/dev/null && [ -f /usr/share/doc/kboss/operations.md.gz ]' \
	"man pages and docs are installed"
units=$(dpkg -L kboss | grep '^/lib/systemd/system/kboss' | sort)
ok [ "$(echo "$units" | wc -l)" -eq 9 ] "9 systemd units in /lib/systemd/system"
ok systemd-analyze verify $units "systemd-analyze verify of the installed units"
ok '[ -z "$(find /etc/systemd/system -name "kboss*" 2>/dev/null)" ]' "no timer is enabled by the package (the operator enables them)"
dpkg -L kboss | sort > "$T/files"

# --- the installed hook on a real start ------------------------------------
make_test_vm a 16 || bail_out "cannot define the test VM"
dom=$(vm_domain a)
SEC=$T/secondary
mkdir -p "$SEC" && chmod 0755 "$SEC"
# the operator's change of a conffile: where the export is mounted (here a
# folder, so marked as a store on purpose)
sed -i "s|^secondary.path = .*|secondary.path = $SEC|" "$CONF"
ok '/usr/sbin/kbossctl init-store "$SEC" >/dev/null && /usr/sbin/kbossctl assign "$dom" example >/dev/null &&
    /usr/sbin/kbossctl settings --check >/dev/null' \
	"the shipped configuration and example offering are accepted; the VM gets offering example"
b1=$(/usr/sbin/kboss-backup --json "$dom" | sed -n 's/^ *"id": *"\([^"]*\)".*/\1/p' | head -n1)
ok [ -n "$b1" ] "/usr/sbin/kboss-backup backs the test VM up: $b1"
for cp in $(virsh -q checkpoint-list --name "$dom"); do
	virsh -q checkpoint-delete --metadata "$dom" "$cp" >/dev/null
done
virsh -q start --paused "$dom" >/dev/null
wait_for() { # SECONDS CMD_STRING
	local i
	for ((i = 0; i < $1 * 5; i++)); do eval "$2" && return 0; sleep 0.2; done
	return 1
}
ok wait_for 60 '[ -n "$b1" ] && [ "$(virsh -q checkpoint-list --name "$dom")" = "$b1" ]' \
	"virsh start: the installed hook had the wiped checkpoint $b1 redefined"
line=$(grep -F "kboss-backup --redefine-checkpoints --quiet $dom" "$HOOK_LOG" | head -n1)
diag "hook log: $line"
ok [ -n "$line" ] "... its line in $HOOK_LOG"
virsh -q destroy --graceful "$dom" >/dev/null
wait_for 30 '! pgrep -x kboss-backup >/dev/null'
catalog_sum() { (cd "$SEC" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
catalog_sum > "$T/catalog.before"

# --- reinstall where policy-rc.d forbids the reload ------------------------
with_policy 101 dpkg -i "$deb" >"$T/reinstall.log" 2>&1
st=$?
grep '^kboss:' "$T/reinstall.log" | sed 's/^/# postinst: /'
ok '[ $st -eq 0 ] && grep -q "policy-rc.d does not allow" "$T/reinstall.log" &&
    grep -q "kboss:     kill -HUP $lvpid$" "$T/reinstall.log" && [ "$(cat /run/libvirtd.pid)" = "$lvpid" ]' \
	"reinstalled where policy-rc.d forbids it: the postinst prints the reload command and leaves libvirtd alone"
ok grep -q "^secondary.path = $SEC$" "$CONF" "the changed conffile is kept over the reinstall"

# --- remove: only conffiles ---------------------------------------------------
"${APT[@]}" remove kboss >"$T/remove.log" 2>&1
st=$?
ok '[ $st -eq 0 ] && [ "$(dpkg-query -W -f="\${db:Status-Abbrev}" kboss)" = "rc " ]' "apt-get remove kboss: state rc (config files)"
left=
while read -r f; do
	[ -d "$f" ] && continue    # folders (and /lib where it links to usr/lib)
	case " $conffiles " in *" $f "*) continue ;; esac
	[ -e "$f" ] || [ -L "$f" ] && left="$left $f"
done < "$T/files"
ok '[ -z "$left" ] && [ ! -e /usr/share/doc/kboss ] && [ ! -L "$HOOK" ]' \
	"after remove no file of the package is left but its conffiles${left:+ (left:$left)}"
ok '[ -f /etc/kboss/offerings.d/example.conf ] && grep -q "^secondary.path = $SEC$" "$CONF"' \
	"... which are still there, the operator's change included"

# --- purge: nothing ----------------------------------------------------------
dpkg --purge kboss >"$T/purge.log" 2>&1
st=$?
ok '[ $st -eq 0 ] && case $(dpkg-query -W -f="\${db:Status-Abbrev}" kboss 2>/dev/null) in "" | un* | pn*) true ;; *) false ;; esac' \
	"dpkg --purge kboss: the package is gone"
left=
while read -r f; do
	[ -d "$f" ] && continue    # folders (and /lib where it links to usr/lib)
	[ -e "$f" ] || [ -L "$f" ] && left="$left $f"
done < "$T/files"
for d in /etc/kboss /var/lib/kboss /var/log/kboss /usr/share/doc/kboss; do
	[ -e "$d" ] && left="$left $d"
done
ok [ -z "$left" ] "after purge nothing is left: no file of the package, no /etc/kboss, /var/lib/kboss, /var/log/kboss${left:+ (left:$left)}"
catalog_sum > "$T/catalog.after"
ok '[ -s "$T/catalog.before" ] && cmp -s "$T/catalog.before" "$T/catalog.after"' \
	"the catalog on the export is untouched ($(wc -l < "$T/catalog.after") files, same bytes)"
diag "deb.sh took $(($(date +%s) - t0)) s"
