package students

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Owners is who owns what under the workdir root: the files outlive the
// store (a lost database, a package purged and installed again), so they
// are where the uids given out so far can always be read back.
type Owners struct {
	// Students maps each directory with a student's name to its owner.
	Students map[string]uint32
	// MaxUID is the highest uid in the range asked for that owns anything
	// looked at; 0 when none does.
	MaxUID uint32
	// Entries is how many files and directories were looked at.
	Entries int
}

// Scan reads the owners of the students' directories and, with deep, of
// everything below them; MaxUID counts only uids in [lo, hi]. Symlinks are
// not followed.
func (d *Dirs) Scan(lo, hi uint32, deep bool) (Owners, error) {
	o := Owners{Students: map[string]uint32{}}
	see := func(fi fs.FileInfo) {
		o.Entries++
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && st.Uid >= lo && st.Uid <= hi && st.Uid > o.MaxUID {
			o.MaxUID = st.Uid
		}
	}
	ents, err := os.ReadDir(d.Root)
	if err != nil {
		return o, fmt.Errorf("scan workdir root %s: %w", d.Root, err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return o, fmt.Errorf("scan workdir root %s: %w", d.Root, err)
		}
		see(fi)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.IsDir() && ValidName(e.Name()) == nil {
			o.Students[e.Name()] = st.Uid
		}
		if !deep || !fi.IsDir() {
			continue
		}
		err = filepath.WalkDir(filepath.Join(d.Root, e.Name()), func(p string, de fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			if err != nil {
				return err
			}
			fi, err := de.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if p != filepath.Join(d.Root, e.Name()) {
				see(fi)
			}
			return nil
		})
		if err != nil {
			return o, fmt.Errorf("scan %s: %w", filepath.Join(d.Root, e.Name()), err)
		}
	}
	return o, nil
}

// SubordinateFiles are where useradd records the uid and gid ranges it
// gives users for their user namespaces.
var SubordinateFiles = []string{"/etc/subuid", "/etc/subgid"}

// LoginDefs holds useradd's bounds for the ranges it will give out.
const LoginDefs = "/etc/login.defs"

// IDRange is a range of ids, both ends included.
type IDRange struct{ First, Last uint64 }

func (r IDRange) overlaps(o IDRange) bool { return r.First <= o.Last && o.First <= r.Last }

// CheckSubordinate refuses a uid range that overlaps a subordinate range
// of files (user:start:count lines): the owner of such a range can map
// those uids in a user namespace and act as the students that have them,
// reading and writing their files. The error names the entry and a free
// range of the same size. Past the ranges recorded, useradd gives out
// more up to SUB_UID_MAX of login.defs; warn says so when the range lies
// in that area, which no check at start can protect for later.
func CheckSubordinate(lo, hi uint32, files []string, loginDefsPath string) (warn string, err error) {
	want := IDRange{uint64(lo), uint64(hi)}
	var taken []IDRange
	var hits []string
	for _, f := range files {
		rs, names, err := readSubordinate(f)
		if err != nil {
			return "", err
		}
		for i, r := range rs {
			taken = append(taken, r)
			if r.overlaps(want) {
				hits = append(hits, fmt.Sprintf("%s: %s has %d-%d", f, names[i], r.First, r.Last))
			}
		}
	}
	area := subordinateArea(loginDefsPath)
	if len(hits) > 0 {
		return "", fmt.Errorf("uid range %d-%d overlaps subordinate ids that users may map in their user namespaces (%s): "+
			"they could act as students and read or write their files. Choose a free range, e.g. %s (existing students keep their uids)",
			lo, hi, strings.Join(hits, "; "), freeRange(want, taken, area))
	}
	if area.overlaps(want) {
		warn = fmt.Sprintf("uid range %d-%d lies where useradd gives out subordinate ids (%d-%d in %s): a user created later may get some; "+
			"a range out of its way is e.g. %s", lo, hi, area.First, area.Last, loginDefsPath, freeRange(want, taken, area))
	}
	return warn, nil
}

func readSubordinate(path string) ([]IDRange, []string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close() //nolint:errcheck // read-only file
	var rs []IDRange
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, ":")
		if len(parts) != 3 {
			continue // not a range; newuidmap ignores it too
		}
		start, err1 := strconv.ParseUint(parts[1], 10, 32)
		count, err2 := strconv.ParseUint(parts[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		rs = append(rs, IDRange{start, start + count - 1})
		names = append(names, parts[0])
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return rs, names, nil
}

// subordinateArea is where useradd gives out subordinate ids: SUB_UID_MIN
// to SUB_UID_MAX of login.defs (shadow's defaults when unset).
func subordinateArea(path string) IDRange {
	area := IDRange{100000, 600100000}
	b, err := os.ReadFile(path)
	if err != nil {
		return area
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			continue
		}
		switch f[0] {
		case "SUB_UID_MIN":
			area.First = v
		case "SUB_UID_MAX":
			area.Last = v
		}
	}
	return area
}

// freeRange proposes a range as large as want, on a 100000 boundary,
// above useradd's area and every range taken.
func freeRange(want IDRange, taken []IDRange, area IDRange) string {
	start := area.Last + 1
	sort.Slice(taken, func(i, j int) bool { return taken[i].First < taken[j].First })
	for _, t := range taken {
		if t.Last >= start {
			start = t.Last + 1
		}
	}
	const step = 100000
	start = (start + step - 1) / step * step
	size := want.Last - want.First
	if start+size >= 1<<32-1 {
		return "none: the uid space above the subordinate ranges is used up; remove overlapping entries instead"
	}
	return fmt.Sprintf("uid_min = %d, uid_max = %d", start, start+size)
}
