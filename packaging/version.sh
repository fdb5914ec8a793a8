#!/usr/bin/env bash
# version.sh turns `git describe --tags --always --dirty` (or $1) into a
# version that dpkg and rpm both order correctly:
#   v1.2.3                 -> 1.2.3
#   v1.2.3-4-gabc1234      -> 1.2.3+4.gabc1234   (after 1.2.3, not before)
#   v1.2.3-4-gabc1234-dirty-> 1.2.3+4.gabc1234.dirty
#   abc1234 (no tag yet)   -> 0.0.0+git.abc1234
set -euo pipefail
d=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
d=${d#v}
if [[ $d =~ ^[0-9a-f]{7,}(-dirty)?$ || ! $d =~ ^([0-9]+(\.[0-9]+)*)(-(.*))?$ ]]; then
	# No tag: a bare commit hash (which may start with a digit), or "dev".
	echo "0.0.0+git.${d//-/.}"
elif [[ -z ${BASH_REMATCH[4]} ]]; then
	echo "${BASH_REMATCH[1]}"
else
	rest=${BASH_REMATCH[4]}
	echo "${BASH_REMATCH[1]}+${rest//-/.}"
fi
