package fs

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestExiting: this process is not exiting; a child that exited and was
// not reaped yet (a zombie) is, and so is a process that is gone.
func TestExiting(t *testing.T) {
	if Exiting(os.Getpid()) {
		t.Fatal("this process counts as exiting")
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for !Exiting(pid) {
		if time.Now().After(deadline) {
			t.Fatal("an exited child does not count as exiting")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Wait()
	if !Exiting(pid) {
		t.Fatal("a reaped child does not count as exiting")
	}
}
