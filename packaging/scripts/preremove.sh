#!/bin/sh
# idexd preremove, for .deb (prerm remove|upgrade|...) and .rpm (%preun N:
# 0 = removal, 1 = upgrade). On removal stops idexd (which drains its runs)
# and its socket, and disables both; an upgrade keeps them running.
set -e

case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl stop idexd.socket idexd.service || true
fi
systemctl disable idexd.socket idexd.service >/dev/null 2>&1 || true
exit 0
