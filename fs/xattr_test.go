package fs

import (
	"strings"
	"syscall"
	"testing"

	"github.com/sheepfs/sheepfs/proto"
)

func TestXattrsOf(t *testing.T) {
	vdi := proto.VDIInfo{Name: "d", ID: 1, Copies: 3}
	locked := proto.VDIInfo{Name: "d", ID: 1, Copies: 3, Locked: true, Mount: "m~0a0b0c0d", Node: "node1"}
	ours := proto.VDIInfo{Name: "d", ID: 1, Copies: 3, Locked: true, Mount: "m~ffffffff", Node: "node0"}
	snap := proto.VDIInfo{Name: "d", ID: 0x2a, Copies: 2, Tag: "t", SnapTime: 1700000000,
		ParentName: "d@old", Source: "base@v1"}
	cases := []struct {
		info proto.VDIInfo
		want string
	}{
		{vdi, "user.sheepfs.id=000001 user.sheepfs.copies=3"},
		{locked, "user.sheepfs.id=000001 user.sheepfs.copies=3 user.sheepfs.writer=mount m~0a0b0c0d on node node1"},
		{ours, "user.sheepfs.id=000001 user.sheepfs.copies=3 user.sheepfs.writer=mount m~ffffffff on node node0, this mount"},
		{snap, "user.sheepfs.id=00002a user.sheepfs.copies=2 user.sheepfs.parent=d@old " +
			"user.sheepfs.source=base@v1 user.sheepfs.snapshot_time=2023-11-14T22:13:20Z"},
	}
	for _, c := range cases {
		var got []string
		for _, a := range xattrsOf(c.info, "m~ffffffff") {
			got = append(got, a.name+"="+a.value)
		}
		if s := strings.Join(got, " "); s != c.want {
			t.Errorf("xattrsOf(%+v) = %s, want %s", c.info, s, c.want)
		}
	}
}

func TestGetxattrBuffer(t *testing.T) {
	attrs := xattrsOf(proto.VDIInfo{ID: 7, Copies: 3}, "")
	// Size probe: an empty buffer gets the length and ERANGE (which the
	// FUSE layer turns into the answer for size 0).
	if n, errno := getxattr(attrs, "user.sheepfs.id", nil); n != 6 || errno != syscall.ERANGE {
		t.Errorf("probe: %d, %v", n, errno)
	}
	buf := make([]byte, 16)
	if n, errno := getxattr(attrs, "user.sheepfs.id", buf); errno != 0 || string(buf[:n]) != "000007" {
		t.Errorf("get: %q, %v", buf[:n], errno)
	}
	if _, errno := getxattr(attrs, "user.sheepfs.parent", buf); errno != syscall.ENODATA {
		t.Errorf("absent parent: %v, want ENODATA", errno)
	}
	want := "user.sheepfs.id\x00user.sheepfs.copies\x00"
	if n, errno := listxattr(attrs, nil); int(n) != len(want) || errno != syscall.ERANGE {
		t.Errorf("list probe: %d, %v", n, errno)
	}
	buf = make([]byte, 64)
	if n, errno := listxattr(attrs, buf); errno != 0 || string(buf[:n]) != want {
		t.Errorf("list: %q, %v", buf[:n], errno)
	}
}
