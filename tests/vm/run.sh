#!/usr/bin/env bash
# run.sh boots Debian 12 in a VM (qemu in software emulation: no KVM here),
# where systemd is PID 1 on a real cgroup v2 with the memory, pids and cpu
# controllers, installs the idexd .deb there with its default configuration
# (Delegate=yes, no allow_unlimited) and checks what the nspawn test
# (tests/systemd/run.sh) cannot show: the limits, OOM detection, a fork bomb
# held by pids.max, the CPU-time limit and warm starts, under systemd. The
# checks themselves are tests/vm/inside.sh, run inside the VM by a oneshot
# unit that powers the VM off afterwards. Given the e2e test binary (built
# with `go test -c ./e2e`), inside.sh also runs its hostile corpus
# (TestHostile) against the installed idexd. One PASS/FAIL line per check;
# exits non-zero if any failed or the VM did not finish in time.
#
# Usage: tests/vm/run.sh PATH/TO/idexd_*.deb [PATH/TO/e2e.test]    (make vm-test)
#
# Needs root. Installs qemu-system-x86, debootstrap and e2fsprogs with
# apt-get when missing. Caches, in $IDEXD_TEST_CACHE (default
# /var/cache/idexd-test), shared with tests/systemd/run.sh:
#   rootfs-bookworm/  the debootstrap'd rootfs (built here too if missing)
#   vm-bookworm/      root.img (ext4, made by mkfs.ext4 -d from a copy of the
#                     rootfs with a kernel, udev and curl installed by
#                     chroot), vmlinuz, initrd.img, key
# Both are built under a temporary name, renamed into place once complete,
# under a lock, and rebuilt when their inputs change (the debootstrap
# arguments; the package list, the build recipe and tests/vm/image/* for the
# VM image). The VM boots root.img with snapshot=on: it never changes the
# cached image. The .deb and inside.sh reach the VM on a second small ext4
# disk (label vmtest), where the VM leaves results.txt and journal.txt.
#
# Environment: IDEXD_VM_TIMEOUT (seconds for the boot and the checks,
# default 600); IDEXD_TEST_KEEP=1 keeps the work directory (console log,
# results, the VM's journal); IDEXD_VM_HOLD=1 boots with the console on
# this terminal and does not power off after the checks (log in as root,
# no password; end with `poweroff`).
set -euo pipefail

deb=${1:?usage: $0 PATH/TO/idexd.deb}
[[ -f $deb ]] || { echo "run.sh: no package at $deb (make package)" >&2; exit 2; }
deb=$(realpath "$deb")
corpus=${2:-}
if [[ -n $corpus ]]; then
	[[ -x $corpus ]] || { echo "run.sh: no test binary at $corpus" >&2; exit 2; }
	corpus=$(realpath "$corpus")
fi
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (debootstrap, chroot)" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

cache_dir=${IDEXD_TEST_CACHE:-/var/cache/idexd-test}
vmdir=$cache_dir/vm-bookworm
# Installed into the VM image by chroot: the kernel (and with it
# initramfs-tools), udev (without it systemd waits for device units that
# never appear), curl (for /metrics over the socket), jq (inside.sh reads
# idexd's JSON; python3-minimal has no json module) and python3 (the whole
# standard library, as students have it: the hostile corpus's programs use
# ctypes and json).
vm_packages=(linux-image-amd64 udev curl jq python3)
vm_timeout=${IDEXD_VM_TIMEOUT:-600}
t_start=$SECONDS

say() { printf '%s [%3ds] %s\n' "${FUNCNAME[1]:-run}" $((SECONDS - t_start)) "$*"; }
die() { echo "FAIL $*"; exit 1; }

# rootfs, mirror, ensure_rootfs, cache_lock: shared with tests/systemd/run.sh.
# shellcheck source=../lib/rootfs.sh
. "$here/../lib/rootfs.sh"

# ---- host tools ------------------------------------------------------------

ensure_tools() {
	local need=()
	command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
	command -v debootstrap >/dev/null || need+=(debootstrap)
	{ command -v mkfs.ext4 && command -v debugfs; } >/dev/null || need+=(e2fsprogs)
	command -v flock >/dev/null || need+=(util-linux)
	((${#need[@]} == 0)) && return
	say "installing ${need[*]}"
	timeout 300 apt-get update -qq
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# ---- the VM image ------------------------------------------------------------

build_tmp="" mounts=()

# unmount_under DIR: every mount at or below DIR, deepest first (a build
# killed half-way may have left its chroot's /proc, /sys, /dev mounted).
unmount_under() {
	local m
	while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "could not unmount $m" >&2
	done < <(awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
}

chroot_mount() {
	local r=$1
	mount -t proc proc "$r/proc" && mounts+=("$r/proc")
	mount -t sysfs sysfs "$r/sys" && mounts+=("$r/sys")
	mount --bind /dev "$r/dev" && mounts+=("$r/dev")
	mount --bind /dev/pts "$r/dev/pts" && mounts+=("$r/dev/pts")
}

chroot_umount() {
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true
	done
	mounts=()
}

# configure_image R: the VM's own settings in the tree R.
configure_image() {
	local r=$1
	echo idexd-vm >"$r/etc/hostname"
	printf '127.0.0.1 localhost\n127.0.1.1 idexd-vm\n' >"$r/etc/hosts"
	# No fsck: every boot starts from the same clean image (snapshot=on).
	printf '/dev/vda / ext4 rw 0 0\n' >"$r/etc/fstab"
	# A machine id of its own: an empty one makes every boot a first boot
	# (presets applied, slower).
	rm -f "$r/etc/machine-id"
	chroot "$r" systemd-machine-id-setup >/dev/null
	# Console login as root without a password (IDEXD_VM_HOLD=1).
	chroot "$r" passwd -d root >/dev/null
	install -m 0755 "$here/image/vmtest-start" "$r/usr/local/sbin/vmtest-start"
	install -m 0644 "$here/image/idexd-vm-test.service" "$r/etc/systemd/system/idexd-vm-test.service"
	ln -sf /etc/systemd/system/idexd-vm-test.service "$r/etc/systemd/system/multi-user.target.wants/idexd-vm-test.service"
	# Nothing periodic during a test boot, nor what the test does not use
	# (logins other than the serial console's, ext4 scrubbing).
	local t
	for t in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
		e2scrub_reap.service getty@tty1.service systemd-logind.service; do
		ln -sf /dev/null "$r/etc/systemd/system/$t"
	done
}

# build_image: a copy of the rootfs with vm_packages installed by chroot,
# configured, and made into an ext4 image; the kernel and initrd beside it.
build_image() {
	rm -rf --one-file-system "$vmdir.old".*
	local d
	for d in "$vmdir".tmp.*; do
		[[ -d $d ]] || continue
		unmount_under "$d"
		rm -rf --one-file-system "$d"
	done
	build_tmp=$(mktemp -d "$vmdir.tmp.XXXXXX")
	chmod 0755 "$build_tmp"
	local r=$build_tmp/root
	say "copying the rootfs"
	cp -a "$rootfs" "$r"
	chroot_mount "$r"
	rm -f "$r/etc/resolv.conf"
	cp /etc/resolv.conf "$r/etc/resolv.conf"
	# No service starts in the chroot.
	printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
	chmod 755 "$r/usr/sbin/policy-rc.d"
	# A small initrd, made once when the kernel is installed: only what
	# mounts the root disk (virtio, ext4) instead of MODULES=most's 36 MB,
	# which software emulation takes long to unpack and coldplug.
	mkdir -p "$r/etc/initramfs-tools/conf.d" "$r/usr/share/initramfs-tools/modules.d"
	echo MODULES=list >"$r/etc/initramfs-tools/conf.d/idexd-vm-test"
	printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >"$r/usr/share/initramfs-tools/modules.d/idexd-vm-test"
	say "installing ${vm_packages[*]} by chroot (about a minute)"
	if ! {
		timeout 300 chroot "$r" apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive timeout 600 chroot "$r" apt-get install -y -qq --no-install-recommends "${vm_packages[@]}"
	} >"$build_tmp/apt.log" 2>&1; then
		tail -n 30 "$build_tmp/apt.log"
		die "installing ${vm_packages[*]} in the chroot (log above)"
	fi
	chroot "$r" apt-get clean
	rm -rf "$r"/var/lib/apt/lists/* "$r/usr/sbin/policy-rc.d" "$r/etc/resolv.conf"
	configure_image "$r"
	chroot_umount
	local k i
	k=$(find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
	i=$(find "$r/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n1)
	[[ -f $k && -f $i ]] || die "no kernel or initrd in the image's /boot"
	cp "$k" "$build_tmp/vmlinuz"
	cp "$i" "$build_tmp/initrd.img"
	say "making the ext4 image ($(du -sh "$r" | cut -f1) of files, kernel $(basename "$k"))"
	timeout 300 mkfs.ext4 -q -F -L idexd-vm -E lazy_itable_init=0,lazy_journal_init=0 \
		-d "$r" "$build_tmp/root.img" 3G || die "mkfs.ext4 -d"
	rm -rf --one-file-system "$r"
	echo "$vm_key" >"$build_tmp/key"
	[[ -e $vmdir ]] && mv -T "$vmdir" "$vmdir.old.$$"
	mv -T "$build_tmp" "$vmdir"
	build_tmp=""
	rm -rf --one-file-system "$vmdir.old.$$"
}

ensure_image() {
	# The image is rebuilt when any input changes: the rootfs's key, the
	# package list, the recipe (these functions' text), the files baked in.
	vm_key=$({
		echo "$cache_key"
		echo "${vm_packages[*]}"
		declare -f build_image configure_image chroot_mount
		cat "$here"/image/*
	} | sha256sum | cut -d' ' -f1)
	if [[ -f $vmdir/key && $(<"$vmdir/key") == "$vm_key" ]]; then
		say "reusing $vmdir"
		return
	fi
	cache_lock
	if [[ -f $vmdir/key && $(<"$vmdir/key") == "$vm_key" ]]; then
		say "reusing $vmdir (built by another run meanwhile)"
	else
		build_image
		say "VM image ready: $(du -sh --apparent-size "$vmdir/root.img" | cut -f1) image, $(du -sh "$vmdir/root.img" | cut -f1) used"
	fi
	cache_unlock
}

# ---- the VM --------------------------------------------------------------------

work="" qemu_pid="" tail_pid=""

teardown() {
	local rc=$?
	set +e
	[[ -n $tail_pid ]] && kill "$tail_pid" 2>/dev/null
	if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -TERM "$qemu_pid" 2>/dev/null
		sleep 1
		kill -KILL "$qemu_pid" 2>/dev/null
	fi
	((${#mounts[@]} > 0)) && chroot_umount
	if [[ -n $build_tmp ]]; then
		unmount_under "$build_tmp"
		rm -rf --one-file-system "$build_tmp"
	fi
	if [[ -n $work ]]; then
		if [[ ${IDEXD_TEST_KEEP:-0} == 1 ]]; then
			touch "$work/kept"
			echo "kept the work directory $work (console.log, results.txt, journal.txt); remove it when done"
		else
			rm -rf --one-file-system "$work"
		fi
	fi
	echo "total $((SECONDS - t_start))s"
	exit "$rc"
}

# sweep_stale removes work directories of runs that were killed with
# SIGKILL (their pid is in the name and no longer runs this script), but
# not those kept on purpose (IDEXD_TEST_KEEP=1).
sweep_stale() {
	local d pid
	for d in /var/tmp/idexd-vm-test.*; do
		[[ -d $d ]] || continue
		pid=${d#/var/tmp/idexd-vm-test.}
		pid=${pid%%.*}
		[[ $pid =~ ^[0-9]+$ && ! -e $d/kept ]] || continue
		kill -0 "$pid" 2>/dev/null && [[ $(ps -o args= -p "$pid") == *run.sh* ]] && continue
		say "removing $d, left by run $pid"
		rm -rf --one-file-system "$d"
	done
	return 0
}

# make_io: the second disk: the .deb and inside.sh in, results out.
make_io() {
	mkdir "$work/io"
	cp "$deb" "$work/io/"
	install -m 0755 "$here/inside.sh" "$work/io/inside.sh"
	[[ -n $corpus ]] && install -m 0755 "$corpus" "$work/io/e2e.test"
	[[ ${IDEXD_VM_HOLD:-0} == 1 ]] && touch "$work/io/hold"
	local mb
	mb=$(($(du -sm "$work/io" | cut -f1) + 32))
	timeout 60 mkfs.ext4 -q -F -L vmtest -d "$work/io" "$work/io.img" "${mb}M" || die "mkfs.ext4 of the vmtest disk"
}

# extract FILE: copies FILE from the vmtest disk into the work directory.
extract() {
	timeout 30 debugfs -R "dump /$1 $work/$1" "$work/io.img" >/dev/null 2>&1 || true
	[[ -s $work/$1 ]]
}

boot_and_test() {
	work=$(mktemp -d "/var/tmp/idexd-vm-test.$$.XXXXXX")
	make_io
	local qemu=(qemu-system-x86_64 -machine q35 -cpu max -m 2048 -smp 2 -nographic -vga none -no-reboot
		-kernel "$vmdir/vmlinuz" -initrd "$vmdir/initrd.img"
		-append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 quiet panic=-1 mitigations=off"
		-drive "file=$vmdir/root.img,format=raw,if=virtio,snapshot=on"
		-drive "file=$work/io.img,format=raw,if=virtio"
		-nic none)
	if [[ ${IDEXD_VM_HOLD:-0} == 1 ]]; then
		say "booting with the console here (Ctrl-A X quits qemu)"
		TMPDIR=$work "${qemu[@]}" || true
		return 0
	fi
	say "booting the VM (software emulation; the checks follow; at most ${vm_timeout}s; load average $(cut -d' ' -f1-3 /proc/loadavg))"
	: >"$work/console.log"
	# snapshot=on puts its overlay in TMPDIR: the work directory.
	TMPDIR=$work timeout -k 10 "$vm_timeout" "${qemu[@]}" -serial "file:$work/console.log" -monitor none \
		</dev/null >"$work/qemu.log" 2>&1 &
	qemu_pid=$!
	# The checks' lines as they come (the console also carries the
	# kernel's and systemd's messages).
	# tail ends when qemu (its timeout) does.
	tail -n +1 -F --pid="$qemu_pid" "$work/console.log" 2>/dev/null |
		grep --line-buffered -aE '^(PASS|FAIL|vm:|vm-test:|    )' | sed -u 's/\r$//; s/^/  /' &
	tail_pid=$!
	local rc=0
	wait "$qemu_pid" || rc=$?
	qemu_pid=""
	timeout 5 tail --pid="$tail_pid" -f /dev/null || kill "$tail_pid" 2>/dev/null || true
	tail_pid=""
	if ((rc == 124 || rc == 137)); then
		echo "---- console (last 40 lines) ----"
		tail -n 40 "$work/console.log" | sed 's/\r$//; s/^/    /'
		if extract results.txt; then
			echo "---- failed checks before the timeout ----"
			grep -a '^FAIL' "$work/results.txt" | sed 's/^/  /'
		fi
		die "the VM did not finish within ${vm_timeout}s (IDEXD_VM_TIMEOUT; load average: $(cut -d' ' -f1-3 /proc/loadavg))"
	fi
	((rc == 0)) || { sed 's/^/    /' "$work/qemu.log"; die "qemu exited $rc"; }
	say "the VM powered off (load average $(cut -d' ' -f1-3 /proc/loadavg))"
	if ! extract results.txt; then
		echo "---- console (last 60 lines) ----"
		tail -n 60 "$work/console.log" | sed 's/\r$//; s/^/    /'
		die "no results.txt on the vmtest disk"
	fi
	extract journal.txt || true
	local summary nfail
	summary=$(grep -a '^vm-test: ' "$work/results.txt" || true)
	nfail=$(grep -ac '^FAIL' "$work/results.txt" || true)
	if ((nfail > 0)); then
		echo "---- failed checks ----"
		grep -a '^FAIL' "$work/results.txt" | sed 's/^/  /'
		if [[ -s $work/journal.txt ]]; then
			echo "---- the VM's journal: idexd and the kernel's OOM/cgroup lines (last 60) ----"
			grep -aE 'idexd|oom|cgroup' "$work/journal.txt" | tail -n 60 | sed 's/^/    /'
		fi
	fi
	[[ -n $summary ]] || die "results.txt has no summary line (inside.sh did not finish)"
	echo "$summary"
	((nfail == 0)) && grep -aq '^vm: inside.sh exited 0' "$work/results.txt"
}

main() {
	ensure_tools
	trap teardown EXIT
	trap 'exit 130' INT TERM
	sweep_stale
	local t=$SECONDS
	ensure_rootfs
	ensure_image
	say "cache ready in $((SECONDS - t))s"
	boot_and_test
}

main "$@"
