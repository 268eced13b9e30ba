package cli

import (
	"slices"
	"testing"
)

func TestSysmonEnv(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want []string // nil: no re-execution
	}{
		{[]string{"PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=" + sysmonAwake}},
		{[]string{"GODEBUG=madvdontneed=1", "HOME=/"}, []string{"HOME=/", "GODEBUG=madvdontneed=1," + sysmonAwake}},
		{[]string{"SHEEP_SYSMON_SLEEPS=", "A=b"}, []string{"SHEEP_SYSMON_SLEEPS=", "A=b", "GODEBUG=" + sysmonAwake}},
		// Already re-executed, or the user's own choice: left alone.
		{[]string{"GODEBUG=" + sysmonAwake}, nil},
		{[]string{"GODEBUG=gctrace=1,schedtrace=1000"}, nil},
		{[]string{"SHEEP_SYSMON_SLEEPS=1"}, nil},
	} {
		got, ok := sysmonEnv(c.in)
		if ok != (c.want != nil) || !slices.Equal(got, c.want) {
			t.Errorf("sysmonEnv(%q) = %q, %v; want %q", c.in, got, ok, c.want)
		}
	}
}
