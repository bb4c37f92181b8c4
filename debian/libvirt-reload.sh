# kboss_reload_libvirtd WHAT [quiet]: make a running libvirt daemon
# (libvirtd, or virtqemud of the modular daemons) look at its hook folder
# again. libvirt looks for hooks when the daemon starts and when it reloads
# (SIGHUP: what "systemctl reload libvirtd" and the init script's reload
# send); a reload keeps running guests and client connections. The daemon
# is never started, stopped or restarted from here, and policy-rc.d (the
# local policy for maintainer scripts, see invoke-rc.d(8)) is obeyed: where
# it forbids the reload, the command to run is printed.
# WHAT completes "so that it ..."; with "quiet", nothing is said when no
# daemon runs. (Inserted into postinst and postrm by debian/rules.)
kboss_reload_libvirtd() {
	kb_what=$1
	kb_found=
	for kb_d in libvirtd virtqemud; do
		kb_pid=$(cat "/run/$kb_d.pid" 2>/dev/null) || continue
		case $kb_pid in '' | *[!0-9]*) continue ;; esac
		# the pid file may be stale: the process must be this daemon
		case $(readlink "/proc/$kb_pid/exe" 2>/dev/null) in
		"/usr/sbin/$kb_d" | "/usr/sbin/$kb_d (deleted)") ;;
		*) continue ;;
		esac
		kb_found=1
		if [ -d /run/systemd/system ]; then
			kb_cmd="systemctl reload $kb_d"
		else
			kb_cmd="kill -HUP $kb_pid"
		fi
		kb_rc=0
		if command -v policy-rc.d >/dev/null 2>&1; then
			policy-rc.d "$kb_d" reload >/dev/null 2>&1 || kb_rc=$?
		fi
		if [ $kb_rc -ne 0 ] && [ $kb_rc -ne 104 ]; then
			echo "kboss: $kb_d (pid $kb_pid) looks for hooks only when it starts or reloads;"
			echo "kboss: policy-rc.d does not allow reloading it from here. So that it $kb_what, run:"
			echo "kboss:     $kb_cmd"
			echo "kboss: (a reload does not stop or pause running guests)"
		elif kill -HUP "$kb_pid" 2>/dev/null; then
			echo "kboss: asked $kb_d (pid $kb_pid) to reload (SIGHUP) so that it $kb_what;"
			echo "kboss: libvirt looks for hooks when it starts or reloads; running guests are not affected."
		else
			echo "kboss: could not signal $kb_d (pid $kb_pid). So that it $kb_what, run: $kb_cmd"
		fi
	done
	if [ -z "$kb_found" ] && [ "${2:-}" != quiet ]; then
		echo "kboss: libvirtd is not running; it will find /etc/libvirt/hooks/qemu.d/kboss when it starts."
	fi
	return 0
}
