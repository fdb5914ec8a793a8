# shellcheck shell=bash
# rootfs.sh: the cached Debian 12 rootfs shared by tests/systemd/run.sh
# (booted under nspawn) and tests/vm/run.sh (the base of the VM image).
# Sourced, not run. The caller sets cache_dir and defines say and die;
# this sets rootfs, debootstrap_args and cache_key.

rootfs=$cache_dir/rootfs-bookworm
debootstrap_args=(--variant=minbase "--include=systemd,systemd-sysv,dbus,python3-minimal,procps,iproute2" bookworm)
# The cache is rebuilt when this key changes (e.g. another package list).
cache_key="debootstrap ${debootstrap_args[*]}"

# cache_lock takes the cache's lock, so that no two runs (of either test,
# from any clone) build at once; cache_unlock gives it back.
cache_lock() {
	exec 8>"$cache_dir/.lock"
	timeout 900 flock 8 || die "waited 15 minutes for $cache_dir/.lock"
}
cache_unlock() { exec 8>&-; }

# mirror prints the Debian mirror that the host's apt sources use for
# bookworm (deb822 .sources or one-line .list), or deb.debian.org.
mirror() {
	local m="" f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		# One stanza a record (RS=""): the first whose Suites: has bookworm.
		m=$(awk 'BEGIN { RS = ""; FS = "\n" } {
			u = ""; s = 0
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); u = a[2] }
				if ($i ~ /^Suites:/ && ($i " ") ~ /[ \t]bookworm[ \t]/) s = 1
			}
			if (s && u != "") { print u; exit }
		}' "$f")
		[[ -n $m ]] && break
	done
	[[ -n $m ]] || m=$(sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' \
		/etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
	echo "${m:-http://deb.debian.org/debian}"
}

rootfs_fresh() { [[ -f $rootfs/.idexd-test-key && $(<"$rootfs/.idexd-test-key") == "$cache_key" ]]; }

# ensure_rootfs builds the cached rootfs if it is missing or stale: into a
# temporary name, renamed into place only once complete, under the lock.
ensure_rootfs() {
	mkdir -p "$cache_dir"
	if rootfs_fresh; then
		say "reusing $rootfs"
		return
	fi
	cache_lock
	if rootfs_fresh; then
		cache_unlock
		say "reusing $rootfs (built by another run meanwhile)"
		return
	fi
	# We hold the lock: any temporary tree is a leftover of a killed build.
	rm -rf --one-file-system "$cache_dir"/rootfs-bookworm.tmp.* "$cache_dir"/rootfs-bookworm.old.*
	local tmp m
	tmp=$(mktemp -d "$cache_dir/rootfs-bookworm.tmp.XXXXXX")
	# mktemp made it 0700: as the container's / that would lock every
	# non-root user (dbus, the students) out of the whole tree.
	chmod 0755 "$tmp"
	m=$(mirror)
	say "building the rootfs from $m (about a minute; cached for later runs)"
	if ! timeout 900 debootstrap "${debootstrap_args[@]}" "$tmp" "$m" >"$cache_dir/debootstrap.log" 2>&1; then
		tail -n 20 "$cache_dir/debootstrap.log"
		rm -rf --one-file-system "$tmp"
		die "debootstrap (log: $cache_dir/debootstrap.log)"
	fi
	echo "$cache_key" >"$tmp/.idexd-test-key"
	if [[ -e $rootfs ]]; then
		mv -T "$rootfs" "$cache_dir/rootfs-bookworm.old.$$"
	fi
	mv -T "$tmp" "$rootfs"
	rm -rf --one-file-system "$cache_dir/rootfs-bookworm.old.$$"
	cache_unlock
	say "rootfs ready: $(du -sh "$rootfs" | cut -f1)"
}
