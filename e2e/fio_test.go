package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// fioResult is the part of fio's JSON output the test checks.
type fioResult struct {
	Jobs []struct {
		Error int `json:"error"`
		Read  struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

// fioVerifyArgs are fio's arguments for a job that writes ioSize of random
// 4 KiB blocks to file (256 MiB) with libaio at queue depth 16, with
// O_DIRECT or not, then reads all of it back and verifies it; with
// extra arguments, JSON output.
func fioVerifyArgs(file, ioSize string, direct int, extra ...string) []string {
	return append([]string{
		"--name=verify", "--filename=" + file, "--size=256M", "--io_size=" + ioSize,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--ioengine=libaio",
		fmt.Sprintf("--direct=%d", direct), "--fallocate=none",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
		"--output-format=json",
	}, extra...)
}

// checkFioVerify fails the test unless fio's JSON output shows one job
// with no error that wrote something and read back and verified all of
// it; it returns the bytes written.
func checkFioVerify(t testing.TB, out string) int64 {
	t.Helper()
	var res fioResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio output: %v\n%s", err, trimOut(out))
	}
	j := res.Jobs[0]
	if j.Error != 0 {
		t.Fatalf("fio job error %d", j.Error)
	}
	if j.Write.IOBytes == 0 || j.Read.IOBytes != j.Write.IOBytes {
		t.Fatalf("fio wrote %d bytes and verified %d: want all written bytes verified", j.Write.IOBytes, j.Read.IOBytes)
	}
	return j.Write.IOBytes
}

// TestFioVerify: fio random 4 KiB writes with crc32c verification on a
// mounted VDI, with O_DIRECT and through the page cache. The amount of I/O
// (--io_size) bounds the run rather than --runtime, so that a slow machine
// still verifies everything it wrote.
func TestFioVerify(t *testing.T) {
	parallel(t)
	requireEnv(t, "fio")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	for _, direct := range []int{1, 0} {
		t.Run(fmt.Sprintf("direct=%d", direct), func(t *testing.T) {
			vdi := m.VDI(fmt.Sprintf("f%d", direct))
			run(t, quickTimeout, "truncate", "-s", "256M", vdi)
			r := runCmd(4*time.Minute, nil, nil, "fio", fioVerifyArgs(vdi, "48M", direct)...)
			if r.Code != 0 {
				t.Fatalf("fio: %v", r)
			}
			t.Logf("fio wrote and verified %d MiB", checkFioVerify(t, r.Stdout)>>20)
		})
	}
}
