#!/usr/bin/env bash
# run.sh runs internal/files' TestKernelQuota (and the measured-quota and
# internal/quota tests) on Debian 12's kernel in a qemu VM: for a host
# whose own kernel cannot enforce ext4 user quotas (built without
# CONFIG_QFMT_V2), where `make test` skips that test and says why.
#
# The VM boots the cached Debian rootfs (tests/lib/rootfs.sh, shared with
# the systemd and VM tests) with linux-image-amd64 installed into a copy of
# it, and runs the statically built test binaries as PID 1 (no systemd:
# about 20 s in software emulation), then powers off. Prints the tests'
# verbose output; exits non-zero if a test failed or the VM did not finish.
#
# Usage: tests/quota/run.sh      (make quota-vm-test; root, about 3 minutes
# the first time: the rootfs, then the kernel by apt in a chroot)
set -euo pipefail
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (chroot, mkfs)" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache_dir=${IDEXD_TEST_CACHE:-/var/cache/idexd-test}
t_start=$SECONDS
say() { printf 'quota-vm [%3ds] %s\n' $((SECONDS - t_start)) "$*"; }
die() { echo "FAIL $*"; exit 1; }
# shellcheck source=../lib/rootfs.sh
. "$here/../lib/rootfs.sh"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]} > 0)); then
	say "installing ${need[*]}"
	timeout 300 apt-get update -qq
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ensure_rootfs

work=$(mktemp -d /var/tmp/idexd-quota-vm.XXXXXX)
mounts=()
cleanup() {
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true; done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
r=$work/root
say "copying the rootfs, installing the kernel by chroot"
cp -a "$rootfs" "$r"
for m in proc sys dev dev/pts; do
	case $m in proc) mount -t proc proc "$r/proc" ;; sys) mount -t sysfs sysfs "$r/sys" ;; *) mount --bind "/$m" "$r/$m" ;; esac
	mounts+=("$r/$m")
done
# apt in the chroot resolves names as the host does; the kernel package
# starts no service, and its default initrd (MODULES=most) mounts a virtio
# disk.
cp --remove-destination /etc/resolv.conf "$r/etc/resolv.conf"
if ! { timeout 300 chroot "$r" apt-get update -qq &&
	DEBIAN_FRONTEND=noninteractive timeout "${IDEXD_KERNEL_TIMEOUT:-1800}" chroot "$r" apt-get install -y -qq --no-install-recommends linux-image-amd64; } >"$work/apt.log" 2>&1; then
	tail -n 30 "$work/apt.log"
	die "installing linux-image-amd64 in the chroot (a timeout? building its initrd took over 10 minutes on a host with a load average of 60; IDEXD_KERNEL_TIMEOUT, seconds, default 1800)"
fi
for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}"; done
mounts=()
grep -q '^CONFIG_QFMT_V2=[ym]' "$r"/boot/config-* || die "the VM's kernel has no CONFIG_QFMT_V2 either"

say "building the test binaries"
mkdir -p "$r/quota-test"
(cd "$repo" && CGO_ENABLED=0 "${GO:-go}" test -c -o "$r/quota-test/files.test" ./internal/files/ &&
	CGO_ENABLED=0 "${GO:-go}" test -c -o "$r/quota-test/quota.test" ./internal/quota/) || die "go test -c"
cat >"$r/sbin/quota-test-init" <<'INIT'
#!/bin/bash
# PID 1 of the VM: the tests, on the serial console, then power off.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
export PATH=/usr/sbin:/usr/bin:/sbin:/bin CI=true HOME=/root
modprobe loop
echo "vm: kernel $(uname -r)"
cd /quota-test
./files.test -test.v -test.count=1 -test.run 'TestKernelQuota|TestMeasuredQuota' 2>&1 | grep -v ' level='
echo "vm: files.test exit ${PIPESTATUS[0]}"
./quota.test -test.v -test.count=1 2>&1
echo "vm: quota.test exit ${PIPESTATUS[0]}"
sync
echo o >/proc/sysrq-trigger
sleep 60
INIT
chmod 755 "$r/sbin/quota-test-init"
cp "$r"/boot/vmlinuz-* "$work/vmlinuz"
cp "$r"/boot/initrd.img-* "$work/initrd.img"
timeout 300 mkfs.ext4 -q -F -d "$r" "$work/root.img" 2G || die "mkfs.ext4 -d"

say "booting (software emulation; load average $(cut -d' ' -f1-3 /proc/loadavg))"
timeout -k 10 "${IDEXD_VM_TIMEOUT:-600}" qemu-system-x86_64 -machine q35 -cpu max -m 2048 -smp 2 -nographic -vga none -no-reboot \
	-kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
	-append "root=/dev/vda rw console=ttyS0 init=/sbin/quota-test-init panic=-1 quiet mitigations=off" \
	-drive "file=$work/root.img,format=raw,if=virtio,snapshot=on" -nic none \
	-serial "file:$work/console.log" -monitor none </dev/null >"$work/qemu.log" 2>&1 || die "qemu: $(cat "$work/qemu.log")"
sed -n '/^vm: kernel/,$p' "$work/console.log" | tr -d '\r' | grep -av '^\[' || true
grep -aq '^vm: files.test exit 0' "$work/console.log" && grep -aq '^vm: quota.test exit 0' "$work/console.log" ||
	die "a test failed in the VM (above), or the VM did not finish"
for t in TestKernelQuota TestKernelQuotaZeroIsOff; do
	grep -aq -- "--- PASS: $t " "$work/console.log" || die "$t did not pass in the VM"
done
say "PASS"
