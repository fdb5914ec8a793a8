package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrder(t *testing.T) {
	p := filepath.Join(t.TempDir(), "idexd.toml")
	if err := os.WriteFile(p, []byte("socket = \"/tmp/file.sock\"\nmax_runs = 9\n[defaults]\nmemory_mb = 128\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("IDEXD_DATABASE_URL", "postgres://x")
	c, err := Load([]string{"--config", p, "--socket", "/tmp/flag.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/tmp/flag.sock" || c.MaxRuns != 9 || c.Defaults.MemoryMB != 128 || c.Defaults.Pids != 256 || c.DatabaseURL != "postgres://x" {
		t.Fatalf("flags over file over defaults, env for the URL: got %+v", c)
	}
}

func TestLoadRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":   "sockett = \"/x\"\n",
		"relative path": "workdir_root = \"students\"\n",
		"defaults>max":  "[defaults]\nmemory_mb = 5000\n",
		"bad duration":  "shutdown_grace = \"soon\"\n",
		"bad uid range": "uid_min = 10\n",
		"bad log level": "log_level = \"loud\"\n",
		"bad layout":    "workdir_layout = \"open\"\n",
		"neg quota":     "quota_mb = -1\n",
		"zero file max": "file_max_mb = 0\n",
		// Runs get their own /tmp, /var/tmp, /dev/shm, /run: a student's
		// directory there would be hidden from the student's own runs.
		"workdir in tmp":         "workdir_root = \"/tmp/students\"\n",
		"workdir in var tmp":     "workdir_root = \"/var/tmp/students\"\n",
		"workdir in run":         "workdir_root = \"/run/idexd/students\"\n",
		"interpreter in dev shm": "interpreter = \"/dev/shm/python3\"\n",
		"bad network":            "network = \"bridge\"\n",
		"no tmp":                 "tmp_mb = 0\n",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load([]string{"--config", p}); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
}

// FuzzLoad: any config file either loads into a valid configuration or
// is refused with an error; it never panics.
func FuzzLoad(f *testing.F) {
	f.Add("socket = \"/run/x.sock\"\n[max]\npids = 10\n")
	f.Add("[defaults]\nmemory_mb = -1\n")
	f.Add("shutdown_grace = \"1h\"\nwarm_runs = 3\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(dir, "fuzz.toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load([]string{"--config", p})
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted an invalid config: %v", err)
		}
	})
}

// TestConfigWithDatabaseURLMustNotBeWorldReadable: the database URL holds
// the password, and students' programs run as other users on the host.
func TestConfigWithDatabaseURLMustNotBeWorldReadable(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret.toml")
	if err := os.WriteFile(secret, []byte("database_url = \"postgres://idexd:hunter2@db/idexd\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load([]string{"--config", secret}); err != nil {
		t.Fatalf("0600 config with database_url: %v, want it loaded", err)
	}
	if err := os.Chmod(secret, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load([]string{"--config", secret})
	if err == nil || !strings.Contains(err.Error(), "every user may read it") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("0644 config with database_url: %v, want refused, naming the mode and not the password", err)
	}
	plain := filepath.Join(dir, "plain.toml")
	if err := os.WriteFile(plain, []byte("max_runs = 9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load([]string{"--config", plain}); err != nil {
		t.Fatalf("0644 config without a secret: %v, want it loaded", err)
	}
}

// TestFairShareKeys: issue 12's keys have the defaults the issue and the
// README promise (a student may run 4 and start 60 a minute), a file sets
// them, and values the engine cannot honour are refused at load.
func TestFairShareKeys(t *testing.T) {
	d := Default()
	if d.MaxRunsPerStudent != 4 || d.StudentStartsPerMinute != 60 || d.MaxWaitSeconds != 30 || d.QueueMax != 1024 ||
		d.StudentMemoryMB != 0 || d.StudentPids != 0 {
		t.Errorf("defaults: max_runs_per_student %d, student_starts_per_minute %d, max_wait_seconds %d, queue_max %d, student_memory_mb %d, student_pids %d; want 4, 60, 30, 1024, 0, 0",
			d.MaxRunsPerStudent, d.StudentStartsPerMinute, d.MaxWaitSeconds, d.QueueMax, d.StudentMemoryMB, d.StudentPids)
	}
	dir := t.TempDir()
	load := func(name, body string) (Config, error) {
		p := filepath.Join(dir, name+".toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return Load([]string{"--config", p})
	}
	c, err := load("set", "max_runs_per_student = 2\nstudent_starts_per_minute = 10\nmax_wait_seconds = 50\nqueue_max = 5\n"+
		"warm_runs = 0\nstudent_memory_mb = 512\nstudent_pids = 100\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxRunsPerStudent != 2 || c.StudentStartsPerMinute != 10 || c.MaxWaitSeconds != 50 || c.QueueMax != 5 ||
		c.StudentMemoryMB != 512 || c.StudentPids != 100 {
		t.Errorf("the file's fair-share keys were not all taken: %+v", c)
	}
	// 0 turns the cap, the rate and the queue off.
	if _, err := load("off", "max_runs_per_student = 0\nstudent_starts_per_minute = 0\nmax_wait_seconds = 0\n"); err != nil {
		t.Errorf("fair share turned off: %v", err)
	}
	for _, c := range []struct{ name, body, key string }{
		{"negative cap", "max_runs_per_student = -1\n", "max_runs_per_student"},
		{"negative rate", "student_starts_per_minute = -1\n", "student_starts_per_minute"},
		{"negative wait", "max_wait_seconds = -1\n", "max_wait_seconds"},
		// A request is cut after 60 s: a longer wait would end as a
		// timeout instead of at_capacity.
		{"wait past the request's bound", "max_wait_seconds = 51\n", "max_wait_seconds"},
		{"empty queue", "queue_max = 0\n", "queue_max"},
		{"huge queue", "queue_max = 100001\n", "queue_max"},
		{"negative totals", "warm_runs = 0\nstudent_pids = -1\n", "student_pids"},
		// Warm helpers' groups are not under the student's: the totals
		// would not bound them.
		{"totals with warm runs", "warm_runs = 2\nstudent_memory_mb = 512\n", "warm_runs = 0"},
	} {
		_, err := load(strings.NewReplacer(" ", "_", "'", "").Replace(c.name), c.body)
		if err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: %v, want an error naming %s", c.name, err, c.key)
		}
	}
}
