package cli

import (
	"strings"
	"testing"

	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

func vid(v uint32) ids.VDIID { return ids.VDIID(v) }

// TestDrawTree draws a family: a VDI with two snapshots, a clone of the
// first with a snapshot and a deleted one it still needs, and a separate VDI.
func TestDrawTree(t *testing.T) {
	snap := func(id, parent uint32, name, tag string) proto.ImageInfo {
		return proto.ImageInfo{ID: vid(id), Parent: vid(parent), VDI: &proto.VDIInfo{Name: name, Tag: tag, SnapTime: 0}}
	}
	cur := func(id, parent uint32, name string) proto.ImageInfo {
		return proto.ImageInfo{ID: vid(id), Parent: vid(parent), VDI: &proto.VDIInfo{Name: name, Size: 1 << 30}}
	}
	imgs := []proto.ImageInfo{
		snap(1, 0, "d", "mon"),
		snap(3, 1, "d", "tue"),
		cur(5, 3, "d"),
		snap(6, 1, "web", "base"),
		{ID: 7, Parent: 6, Was: "web@x"},
		cur(8, 7, "web"),
		cur(9, 0, "other"),
	}
	want := `d@mon  (snapshot, 1970-01-01 00:00:00)
├─ d@tue  (snapshot, 1970-01-01 00:00:00)
│  └─ d  (current, 1.0 GiB)
└─ web@base  (snapshot, 1970-01-01 00:00:00)
   └─ [deleted web@x]
      └─ web  (current, 1.0 GiB)
other  (current, 1.0 GiB)
`
	if got := DrawTree(imgs); got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
	// An image whose parent is not listed is drawn as a root.
	if got := DrawTree([]proto.ImageInfo{cur(4, 2, "orphan")}); !strings.HasPrefix(got, "orphan") {
		t.Errorf("orphan drawn as %q", got)
	}
}
