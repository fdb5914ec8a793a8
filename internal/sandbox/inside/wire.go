package inside

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The setup and the job travel in a format a helper without a Go runtime
// (cmd/idexd-sandbox, in C) decodes in a few lines: no JSON. The setup is
// argv, one value per argument; the job is one packet of NUL-terminated
// fields in a fixed order. Replies stay JSON: the helper only writes them.

// JobMagic opens every job and changes whenever its fields do, so a helper
// of another build refuses a job it would misread.
const JobMagic = "idexd-job-2"

// Args is the helper's argv after Arg0: network, tmpfs bytes, tmpfs
// inodes, and the seccomp filter in hex.
func (s Setup) Args() []string {
	return []string{string(s.Network), strconv.FormatInt(s.TmpBytes, 10),
		strconv.FormatInt(s.TmpInodes, 10), hex.EncodeToString(s.Filter)}
}

// ParseSetup reads what Args wrote.
func ParseSetup(args []string) (Setup, error) {
	if len(args) != 4 {
		return Setup{}, fmt.Errorf("helper: %d setup arguments, want 4 (network, tmp bytes, tmp inodes, filter)", len(args))
	}
	var s Setup
	var err error
	s.Network = Network(args[0])
	if s.Network != NetworkNone && s.Network != NetworkHost {
		return Setup{}, fmt.Errorf("helper: setup network %.40s: want none or host", args[0])
	}
	if s.TmpBytes, err = strconv.ParseInt(args[1], 10, 64); err != nil {
		return Setup{}, fmt.Errorf("helper: setup tmp bytes: %w", err)
	}
	if s.TmpInodes, err = strconv.ParseInt(args[2], 10, 64); err != nil {
		return Setup{}, fmt.Errorf("helper: setup tmp inodes: %w", err)
	}
	if s.Filter, err = hex.DecodeString(args[3]); err != nil {
		return Setup{}, fmt.Errorf("helper: setup filter: %w", err)
	}
	return s, nil
}

// MarshalBinary encodes the job: JobMagic, interpreter, dir, cwd, user,
// uid, gid, umask, fsize, nofile, cpu, terminal ("" or "ROWSxCOLS"), argc,
// the argv, envc, the environment; each NUL-terminated, numbers in decimal.
func (j Job) MarshalBinary() ([]byte, error) {
	term := ""
	if j.Terminal != nil {
		term = fmt.Sprintf("%dx%d", j.Terminal.Rows, j.Terminal.Cols)
	}
	fields := []string{JobMagic, j.Interpreter, j.Dir, j.Cwd, j.User,
		strconv.FormatUint(uint64(j.UID), 10), strconv.FormatUint(uint64(j.GID), 10),
		strconv.FormatUint(uint64(j.Umask), 10),
		strconv.FormatUint(j.Rlimits.FileSizeBytes, 10), strconv.FormatUint(j.Rlimits.OpenFiles, 10),
		strconv.FormatUint(j.Rlimits.CPUSeconds, 10), term, strconv.Itoa(len(j.Argv))}
	fields = append(fields, j.Argv...)
	fields = append(fields, strconv.Itoa(len(j.Env)))
	fields = append(fields, j.Env...)
	var b bytes.Buffer
	for i, f := range fields {
		if strings.IndexByte(f, 0) >= 0 {
			return nil, fmt.Errorf("job field %d holds a NUL byte", i)
		}
		b.WriteString(f)
		b.WriteByte(0)
	}
	return b.Bytes(), nil
}

// UnmarshalBinary decodes what MarshalBinary wrote, all of it or nothing.
func (j *Job) UnmarshalBinary(b []byte) error {
	d := jobDecoder{rest: b}
	if m := d.str(); m != JobMagic {
		return fmt.Errorf("job starts %q, want %q (idexd and its helper are of different builds)", m, JobMagic)
	}
	var out Job
	out.Interpreter, out.Dir, out.Cwd, out.User = d.str(), d.str(), d.str(), d.str()
	out.UID, out.GID, out.Umask = uint32(d.num(32)), uint32(d.num(32)), uint32(d.num(32))
	out.Rlimits.FileSizeBytes, out.Rlimits.OpenFiles, out.Rlimits.CPUSeconds = d.num(64), d.num(64), d.num(64)
	if term := d.str(); term != "" {
		rows, cols, ok := strings.Cut(term, "x")
		r, rerr := strconv.ParseUint(rows, 10, 16)
		c, cerr := strconv.ParseUint(cols, 10, 16)
		if !ok || rerr != nil || cerr != nil {
			d.fail(fmt.Errorf("terminal %q: want ROWSxCOLS", term))
		}
		out.Terminal = &Winsize{Rows: uint16(r), Cols: uint16(c)}
	}
	out.Argv = d.list()
	out.Env = d.list()
	switch {
	case d.err != nil:
		return fmt.Errorf("decode job: %w", d.err)
	case len(d.rest) != 0:
		return fmt.Errorf("decode job: %d bytes after the last field", len(d.rest))
	}
	*j = out
	return nil
}

type jobDecoder struct {
	rest []byte
	err  error
}

func (d *jobDecoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *jobDecoder) str() string {
	i := bytes.IndexByte(d.rest, 0)
	if i < 0 {
		d.fail(errors.New("truncated"))
		d.rest = nil
		return ""
	}
	s := string(d.rest[:i])
	d.rest = d.rest[i+1:]
	return s
}

func (d *jobDecoder) num(bits int) uint64 {
	s := d.str()
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		d.fail(err)
	}
	return n
}

func (d *jobDecoder) list() []string {
	n := d.num(32)
	// Each entry takes at least its NUL: a count beyond that is a lie.
	if d.err == nil && n > uint64(len(d.rest)) {
		d.fail(fmt.Errorf("list of %d entries in %d bytes", n, len(d.rest)))
	}
	if d.err != nil {
		return nil
	}
	l := make([]string, 0, n)
	for range n {
		l = append(l, d.str())
	}
	return l
}
