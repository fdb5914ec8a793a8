#!/bin/sh
# idexd postremove, for .deb (postrm remove|purge|upgrade|...) and .rpm
# (%postun N: 0 = removal, 1 = upgrade). Reloads systemd; on purge also
# removes the embedded store and the database URL credential. Students'
# directories (/srv/idexd/students) and the groups are never removed: they
# hold students' work and may own files elsewhere.
set -e

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
	rm -rf /var/lib/idexd /etc/credstore/idexd.database-url
fi
exit 0
