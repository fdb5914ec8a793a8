#!/usr/bin/env bash
# copyright.sh prints /usr/share/doc/idexd/copyright (make copyright): the
# terms of idexd itself, then Go's and every module linked into the two
# packaged Go binaries, each with the license and notice files it ships. The
# binaries are static: BSD and MIT licenses ask for their text to travel
# with them, Apache-2.0 for NOTICE files too. Built from `go list`, so a new
# dependency cannot be left out. Run from the repository root.
set -euo pipefail
GO=${GO:-go}
cat <<'HEAD'
idexd: runner of students' Python scripts for a classroom web IDE.

Copyright: the idexd maintainers <idexd-maintainers@localhost>
License: Proprietary. Ask the vendor named in the package for the terms.

The binaries /usr/bin/idexd and /usr/bin/idexctl are statically linked with
the Go standard library and the Go modules below, each under its own
license, reproduced as the module ships it. /usr/bin/idexd-sandbox is
idexd's own C, linked dynamically against the system's C library.
HEAD
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
exit "$missing"
