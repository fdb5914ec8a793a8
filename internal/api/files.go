package api

import "time"

// FileType is what a directory entry is. Only "file" can be read or
// written through the file routes; the others are listed, never followed.
type FileType string

const (
	FileRegular FileType = "file"
	FileDir     FileType = "dir"
	FileSymlink FileType = "symlink"
	FileFIFO    FileType = "fifo"
	FileSocket  FileType = "socket"
	FileDevice  FileType = "device"
	FileOther   FileType = "other"
)

// FileEntry is one entry of a student's directory.
type FileEntry struct {
	Name  string    `json:"name"`
	Type  FileType  `json:"type"`
	Size  int64     `json:"size"`
	Mtime time.Time `json:"mtime"`
}

// FileInfo is the answer to PUT and move: where the file now is.
type FileInfo struct {
	Path  string    `json:"path"`
	Type  FileType  `json:"type"`
	Size  int64     `json:"size"`
	Mtime time.Time `json:"mtime"`
}

// FileList is the body of GET /v1/students/{name}/files?path=DIR, sorted
// by name. Truncated says the directory held more than MaxListEntries.
type FileList struct {
	Path      string      `json:"path"`
	Entries   []FileEntry `json:"entries"`
	Truncated bool        `json:"truncated"`
}

// MaxListEntries bounds one directory listing.
const MaxListEntries = 10000

// Who enforces a student's disk limits.
const (
	// EnforcedByKernel: user quotas of the workdir filesystem (quotactl);
	// a program over them gets EDQUOT ("Disk quota exceeded").
	EnforcedByKernel = "kernel"
	// EnforcedByIdexd: idexd measures the directory after each run and on
	// each write, and refuses new runs and writes while it is over.
	EnforcedByIdexd = "idexd"
)

// Disk is a student's disk usage and limits. A limit of 0 means none.
type Disk struct {
	UsedBytes  int64  `json:"used_bytes"`
	UsedFiles  int64  `json:"used_files"`
	LimitBytes int64  `json:"limit_bytes"`
	LimitFiles int64  `json:"limit_files"`
	EnforcedBy string `json:"enforced_by"`
	// Error says why usage could not be read; the numbers are then the
	// last ones known.
	Error string `json:"error,omitempty"`
}

// Over reports whether usage is past a limit that is set.
func (d Disk) Over() bool {
	return (d.LimitBytes > 0 && d.UsedBytes > d.LimitBytes) || (d.LimitFiles > 0 && d.UsedFiles > d.LimitFiles)
}
