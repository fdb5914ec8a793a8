#!/bin/sh
# idexd postinstall, for both .deb (postinst configure OLDVERSION) and .rpm
# (%post N: 1 = install, 2 = upgrade). Creates the groups and directories,
# reloads systemd, enables the socket on a fresh install and restarts a
# running idexd on upgrade (which drains its runs: shutdown_grace).
set -e

case "$1" in
configure) if [ -z "$2" ]; then action=install; else action=upgrade; fi ;;
1) action=install ;;
[2-9]) action=upgrade ;;
*) action=other ;; # abort-upgrade, abort-remove, ...
esac

# Groups: idex (web tier) and idex-admin (sysadmins).
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers /usr/lib/sysusers.d/idexd.conf
else
	for g in idex idex-admin; do
		getent group "$g" >/dev/null || groupadd --system "$g"
	done
fi

# /srv/idexd/students (root:idex 0751) and /var/lib/idexd (0750).
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create /usr/lib/tmpfiles.d/idexd.conf ||
		echo "idexd: systemd-tmpfiles --create failed; idexd creates its directories at start" >&2
else
	install -d -m 0755 -o root -g root /srv/idexd
	install -d -m 0751 -o root -g idex /srv/idexd/students
	install -d -m 0750 -o root -g root /var/lib/idexd
fi

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload
fi
case "$action" in
install)
	# Works offline too (image builds): it only creates the symlink.
	systemctl enable idexd.socket || true
	if [ -d /run/systemd/system ]; then
		systemctl start idexd.socket
	fi
	;;
upgrade)
	if [ -d /run/systemd/system ]; then
		# Only if it runs; restart drains the runs first.
		systemctl try-restart idexd.service
	fi
	;;
esac
exit 0
