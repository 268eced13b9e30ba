package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version describes this build: the module version, the commit it was
// built from (when built from a git checkout) and the Go toolchain.
func Version(name string) string {
	v, commit, when, modified := "(unknown)", "", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	out := name + " " + v
	if commit != "" {
		out += " commit " + commit[:min(12, len(commit))]
		if when != "" {
			out += " " + when
		}
		if modified {
			out += " (with uncommitted changes)"
		}
	}
	return fmt.Sprintf("%s %s %s/%s", out, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// VersionCmd prints the version.
type VersionCmd struct{}

// Run prints the version.
func (VersionCmd) Run(g *Globals) error {
	_, err := fmt.Fprintln(g.out, Version("sheep"))
	return err
}
