#!/usr/bin/env bash
# copyright.sh prints /usr/share/doc/idexd/copyright (make copyright): the
# terms of idexd itself, then Go's and every module linked into the two
# packaged Go binaries, each with the license and notice files it ships. The
# binaries are static: BSD and MIT licenses ask for their text to travel
# with them, Apache-2.0 for NOTICE files too. Built from `go list`, so a new
# dependency cannot be left out. HELPER is the built idexd-sandbox: linked
# statically (with musl, cmd/idexd-sandbox/build.sh), it carries musl, whose
# MIT license asks for its notice too. Run from the repository root.
set -euo pipefail
GO=${GO:-go}
HELPER=${HELPER:-.bin/idexd-sandbox}
[[ -f $HELPER ]] || { echo "copyright.sh: no sandbox helper at $HELPER (make build first)" >&2; exit 1; }
static=0
readelf -l "$HELPER" | grep -q 'program interpreter' || static=1
musl=/usr/share/doc/musl/copyright
if ((static)) && [[ ! -f $musl ]]; then
	echo "copyright.sh: $HELPER is static but $musl is missing (Debian: apt-get install musl-tools)" >&2
	exit 1
fi
cat <<'HEAD'
idexd: runner of students' Python scripts for a classroom web IDE.

Copyright: the idexd maintainers <idexd-maintainers@localhost>
License: Proprietary. Ask the vendor named in the package for the terms.

The binaries /usr/bin/idexd and /usr/bin/idexctl are statically linked with
the Go standard library and the Go modules below, each under its own
license, reproduced as the module ships it.
HEAD
if ((static)); then
	echo "/usr/bin/idexd-sandbox is idexd's own C, linked statically with musl, whose"
	echo "copyright and license follow the Go modules'."
else
	echo "/usr/bin/idexd-sandbox is idexd's own C, linked dynamically against the"
	echo "system's C library."
fi
goroot=$("$GO" env GOROOT)
echo
echo "=== Go standard library $("$GO" env GOVERSION)"
cat "$goroot/LICENSE"
missing=0
while read -r path version dir; do
	echo
	echo "=== $path $version"
	found=0
	for f in "$dir"/LICENSE* "$dir"/LICENCE* "$dir"/COPYING* "$dir"/NOTICE*; do
		[[ -f $f ]] || continue
		found=1
		echo "--- $(basename "$f")"
		cat "$f"
	done
	if ((found == 0)); then
		echo "copyright.sh: no license file in $path $version ($dir)" >&2
		missing=1
	fi
done < <("$GO" list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' \
	./cmd/idexd ./cmd/idexctl | sort -u)
if ((static)); then
	echo
	echo "=== musl $(dpkg-query -W -f '${Version}' musl 2>/dev/null || echo '(version unknown)'), in /usr/bin/idexd-sandbox"
	cat "$musl"
fi
exit "$missing"
