package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnits: systemd-analyze verify passes on the units in
// dist/systemd (with the binaries built for the tests in place of
// /usr/local/bin), and says nothing: it only warns about many mistakes.
func TestSystemdUnits(t *testing.T) {
	requireEnv(t, "systemd-analyze")
	dir := t.TempDir()
	units, err := filepath.Glob(filepath.Join(repoRoot, "dist", "systemd", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in dist/systemd: %v", err)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), "/usr/local/bin/", binDir+"/")
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := runCmd(cmdTimeout, nil, nil, "sh", "-c", "cd "+dir+" && systemd-analyze verify ./sheep@node0.service ./sheepfs-mount.service")
	if r.Code != 0 || strings.TrimSpace(r.Stdout+r.Stderr) != "" {
		t.Errorf("systemd-analyze verify: %v", r)
	}
}
