package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"testing"
	"time"
)

// TestSheepfsRestartUnderFio: sheepfs is killed with SIGKILL twice while
// fio writes with libaio (O_DIRECT, then through the page cache) and
// verifies every block; each time a new sheepfs takes the mount over from
// its holder. fio sees no error and verifies everything it wrote: the
// requests the dead process had read are sent again, its file handles
// and the VDI's write lock carry over.
func TestSheepfsRestartUnderFio(t *testing.T) {
	requireEnv(t, "fio")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	for _, direct := range []int{1, 0} {
		t.Run(fmt.Sprintf("direct=%d", direct), func(t *testing.T) {
			vdi := m.VDI(fmt.Sprintf("r%d", direct))
			run(t, quickTimeout, "truncate", "-s", "256M", vdi)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "fio", "--name=verify", "--filename="+vdi, "--size=256M", "--io_size=64M",
				"--rw=randwrite", "--bs=4k", "--iodepth=16", "--ioengine=libaio",
				fmt.Sprintf("--direct=%d", direct), "--fallocate=none", "--fsync=64",
				"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
				"--output-format=json")
			done := make(chan struct{})
			var out []byte
			var err error
			go func() {
				out, err = cmd.Output()
				close(done)
			}()
			for i, at := range []time.Duration{2 * time.Second, 3 * time.Second} {
				select {
				case <-done:
					t.Fatalf("fio ended before kill %d of sheepfs (make it write more): %v", i+1, err)
				case <-time.After(at):
				}
				m.KillAndRestart(500 * time.Millisecond)
			}
			<-done
			if err != nil {
				t.Fatalf("fio: %v\n%s", err, trimOut(string(out)))
			}
			var res fioResult
			if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
				t.Fatalf("fio output: %v\n%s", err, trimOut(string(out)))
			}
			j := res.Jobs[0]
			if j.Error != 0 {
				t.Fatalf("fio job error %d", j.Error)
			}
			if j.Write.IOBytes == 0 || j.Read.IOBytes != j.Write.IOBytes {
				t.Fatalf("fio wrote %d bytes and verified %d: want all written bytes verified", j.Write.IOBytes, j.Read.IOBytes)
			}
			t.Logf("fio wrote and verified %d MiB across two restarts of sheepfs", j.Write.IOBytes>>20)
		})
	}
}
