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
