package e2e

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// TestBackupRestore backs up a snapshot in full and the changes to a later
// one, restores the chain into a new VDI through the CLI, and compares
// what it reads with what was written; a chain out of order is refused
// before anything is created.
func TestBackupRestore(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 2)
	cl := client.New(c.Addrs(), client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	const mib = 1 << 20
	const size = 64 * mib
	want := make([]byte, size) // what the VDI holds
	rng := rand.New(rand.NewPCG(7, 7))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	createVDI(t, cl, "src", size)
	// change runs fn with src locked, then snapshots it as src@tag.
	change := func(tag string, fn func(id ids.VDIID)) {
		t.Helper()
		v, err := cl.Lock(ctx, "src")
		if err != nil {
			t.Fatal(err)
		}
		fn(v.ID)
		if err := cl.Flush(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		if err := cl.Unlock(ctx, "src"); err != nil {
			t.Fatal(err)
		}
		if tag != "" {
			if r := c.Sheep("vdi", "snapshot", "src@"+tag); r.Code != 0 {
				t.Fatalf("snapshot: %v", r)
			}
		}
	}
	write := func(id ids.VDIID, off int, b []byte) {
		t.Helper()
		if err := cl.WriteAt(ctx, id, b, int64(off), false); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	change("mon", func(id ids.VDIID) {
		write(id, 0, random(8*mib))         // objects 0, 1
		write(id, 3*4*mib+100, random(mib)) // part of object 3
		write(id, 10*4*mib, random(4*mib))  // object 10
		write(id, size-5000, random(5000))  // the end of the last
	})
	mon := bytes.Clone(want)
	change("tue", func(id ids.VDIID) {
		write(id, 4*mib+7, random(3000))                                    // object 1, a little
		if err := cl.Discard(ctx, id, 10*4*mib, 4*mib, false); err != nil { // object 10
			t.Fatal(err)
		}
		clear(want[10*4*mib : 11*4*mib])
		write(id, 6*4*mib, random(mib)) // object 6, new
	})
	tue := bytes.Clone(want)
	change("wed", func(id ids.VDIID) {
		write(id, 6*4*mib+2*mib, random(2*mib)) // object 6 again
		write(id, 15*4*mib, random(4*mib))      // object 15, new
	})
	wed := bytes.Clone(want)
	change("", func(id ids.VDIID) { write(id, 0, random(mib)) }) // after wed: not in any backup

	dir := t.TempDir()
	full, inc := filepath.Join(dir, "full"), filepath.Join(dir, "inc")
	sheep := q(sheepBin) + " --addr " + c.anyAddr() + " "
	shell(t, cmdTimeout, sheep+"vdi backup src@mon > "+q(full))
	shell(t, cmdTimeout, sheep+"vdi backup src@mon src@tue > "+q(inc))
	st, err := os.Stat(inc)
	if err != nil {
		t.Fatal(err)
	}
	// Object 1 changed (all of it is data) and object 6 is new (1 MiB of
	// data); 10 is a hole. Nothing else.
	if st.Size() < 5*mib || st.Size() > 5*mib+4096 {
		t.Errorf("the increment has %d bytes; want 5 MiB of data, objects 1 and 6", st.Size())
	}

	if r := c.Sheep("vdi", "restore", "dst", inc, full); r.Code != 2 || !strings.Contains(r.Stderr, "a restore starts with a full backup") {
		t.Errorf("restore out of order: %v", r)
	}
	for _, v := range c.VDIs() {
		if v.Name == "dst" {
			t.Errorf("an out of order restore created dst")
		}
	}
	if r := c.Sheep("vdi", "restore", "dst", full, inc); r.Code != 0 {
		t.Fatalf("restore: %v", r)
	}
	if got := readBackupVDI(t, ctx, cl, "dst"); !bytes.Equal(got, tue) {
		t.Errorf("dst differs from src@tue")
	}
	// Full + two increments.
	inc2 := filepath.Join(dir, "inc2")
	shell(t, cmdTimeout, sheep+"vdi backup src@tue src@wed > "+q(inc2))
	if st, err := os.Stat(inc2); err != nil || st.Size() < 8*mib || st.Size() > 8*mib+4096 {
		t.Errorf("the second increment: %v, %v; want 8 MiB of data, objects 6 and 15", st, err)
	}
	if r := c.Sheep("vdi", "restore", "dst3", full, inc2); r.Code == 0 {
		t.Errorf("restore of a chain with a gap succeeded: %v", r)
	}
	if r := c.Sheep("vdi", "restore", "dst3", full, inc, inc2); r.Code != 0 {
		t.Fatalf("restore of full + two increments: %v", r)
	}
	if got := readBackupVDI(t, ctx, cl, "dst3"); !bytes.Equal(got, wed) {
		t.Errorf("dst3 differs from src@wed")
	}
	if r := shellResult(cmdTimeout, sheep+"vdi restore dst2 - < "+q(full)); r.Code != 0 {
		t.Fatalf("restore from stdin: %v", r)
	}
	if got := readBackupVDI(t, ctx, cl, "dst2"); !bytes.Equal(got, mon) {
		t.Errorf("dst2 differs from src@mon")
	}
	if r := c.Sheep("vdi", "restore", "dst2", full); r.Code == 0 || !strings.Contains(r.Stderr, "exists") {
		t.Errorf("restore into an existing VDI: %v", r)
	}
}

func lookupBackupVDI(t *testing.T, ctx context.Context, cl *client.Client, name string) proto.VDIInfo {
	t.Helper()
	var v proto.VDIInfo
	if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: name}, &v); err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return v
}

func readBackupVDI(t *testing.T, ctx context.Context, cl *client.Client, name string) []byte {
	t.Helper()
	v := lookupBackupVDI(t, ctx, cl, name)
	b := make([]byte, v.Size)
	if err := cl.ReadAt(ctx, v.ID, b, 0); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}
