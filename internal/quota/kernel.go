package quota

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// quotactl(2) commands and structures (linux/quota.h, linux/dqblk_xfs.h).
// quotactl_fd (Linux 5.14) names the filesystem by any fd on it, so idexd
// needs no block device path: the workdir root's fd is enough.
const (
	usrQuota = 0

	qGetQuota  = 0x800007
	qSetQuota  = 0x800008
	qXGetQStat = 0x5808 // Q_XGETQSTATV: versioned quota state, with the enforcement flags

	qifBLimits = 1
	qifILimits = 4

	// fsQStatVVersion1 is the only version of struct fs_quota_statv.
	fsQStatVVersion1 = 1
	fsQuotaUDQAcct   = 1 << 0
	fsQuotaUDQEnfd   = 1 << 1

	// quota block limits count 1 KiB blocks (QIF_DQBLKSIZE).
	qifBlockSize = 1024
)

// ifDqblk is struct if_dqblk.
type ifDqblk struct {
	BHardLimit uint64
	BSoftLimit uint64
	CurSpace   uint64 // bytes
	IHardLimit uint64
	ISoftLimit uint64
	CurInodes  uint64
	BTime      uint64
	ITime      uint64
	Valid      uint32
	_          uint32
}

func qcmd(cmd, typ uint32) uint32 { return cmd<<8 | typ&0xff }

func quotactlFD(fd int, cmd uint32, id uint32, addr unsafe.Pointer) error {
	_, _, e := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(fd), uintptr(cmd), uintptr(id), uintptr(addr), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// kernelState says whether user quotas are on and enforced on the
// filesystem of fd: counted only (mounted without usrquota) is not enough.
func kernelState(fd int) (enforced bool, why string) {
	// struct fs_quota_statv is 160 bytes; qs_flags is the u16 at offset 2.
	var buf [160]byte
	buf[0] = fsQStatVVersion1
	err := quotactlFD(fd, qcmd(qXGetQStat, usrQuota), 0, unsafe.Pointer(&buf[0]))
	if errors.Is(err, unix.EPERM) {
		// systemd's @system-service filter leaves quotactl_fd out, and
		// setting another uid's quota needs CAP_SYS_ADMIN.
		return false, "quotactl_fd is not permitted (under systemd: docs/systemd.md, \"Kernel disk quotas\")"
	}
	if err != nil {
		return false, fmt.Sprintf("user quotas are not on (quotactl: %v)", err)
	}
	flags := binary.NativeEndian.Uint16(buf[2:4])
	switch {
	case flags&fsQuotaUDQEnfd != 0:
		return true, ""
	case flags&fsQuotaUDQAcct != 0:
		return false, "user quotas are counted but not enforced (mount with usrquota)"
	default:
		return false, "user quotas are off"
	}
}

func setKernelLimits(fd int, uid uint32, lim Limits) error {
	d := ifDqblk{
		BHardLimit: uint64((lim.Bytes + qifBlockSize - 1) / qifBlockSize),
		IHardLimit: uint64(lim.Files),
		Valid:      qifBLimits | qifILimits,
	}
	if err := quotactlFD(fd, qcmd(qSetQuota, usrQuota), uid, unsafe.Pointer(&d)); err != nil {
		return fmt.Errorf("quotactl Q_SETQUOTA uid %d: %w", uid, err)
	}
	return nil
}

func getKernelUsage(fd int, uid uint32) (ifDqblk, error) {
	var d ifDqblk
	if err := quotactlFD(fd, qcmd(qGetQuota, usrQuota), uid, unsafe.Pointer(&d)); err != nil {
		return d, fmt.Errorf("quotactl Q_GETQUOTA uid %d: %w", uid, err)
	}
	return d, nil
}

// fsName names a filesystem type for messages.
func fsName(fd int) string {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("0x%x", uint32(st.Type))
}

var errTooDeep = errors.New("directory tree deeper than the walk allows")
