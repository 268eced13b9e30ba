package server

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/md"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// TestInventoryPaging: a receiver paging through its inventory gets every
// entry exactly once, even while receivers with other starts ask between
// its pages (each recomputes an inventory from a fresh pass over the
// store, whose order is a map's).
func TestInventoryPaging(t *testing.T) {
	defer func(p int) { inventoryPage = p }(inventoryPage)
	inventoryPage = 100
	dir := t.TempDir()
	set, err := md.Open(md.Options{Dir: dir, Store: objstore.Options{ObjectSize: vdi.ObjectSize}})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	m := func(id string) cluster.Member { return cluster.Member{ID: ids.NodeID(id), Addr: id + ":1", Store: "s"} }
	st, err := cluster.StateAfter(
		cluster.Command{Op: cluster.CmdMembers, Members: []cluster.Member{m("S"), m("O")}},
		cluster.Command{Op: cluster.CmdFormat, Copies: 2},
		cluster.Command{Op: cluster.CmdVDICreate, Name: "v", Size: 1 << 40},
		cluster.Command{Op: cluster.CmdMembers, Members: []cluster.Member{m("S"), m("O"), m("R")}},
	)
	if err != nil {
		t.Fatal(err)
	}
	vid := st.VDIs["v"].Image
	for i := range 2000 {
		if err := set.Write(ids.DataObject(vid, uint32(i)), 0, []byte{1}, 5, 1); err != nil {
			t.Fatal(err)
		}
	}
	n := &Node{cfg: Config{Dir: dir}, log: zerolog.Nop(), id: "S", store: set}
	h := newHealer(n)
	n.rec = h
	h.from, h.planned = 1, st.Epoch
	h.plannedA.Store(uint64(st.Epoch))

	page := func(interleave bool) (map[ids.ObjectID]int, int) {
		got := map[ids.ObjectID]int{}
		pages := 0
		for cur, last := uint64(0), false; !last; pages++ {
			var list []proto.ObjState
			var err error
			list, cur, last, err = h.inventory(st, "R", 0, cur)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range list {
				got[e.OID]++
			}
			if interleave {
				// Others ask meanwhile, with other starts.
				for _, start := range []ids.Epoch{1, 2} {
					if _, _, _, err := h.inventory(st, "O", start, 0); err != nil {
						t.Fatal(err)
					}
				}
				h.invMu.Lock()
				clear(h.invCache) // and the cache forgets
				h.invMu.Unlock()
			}
		}
		return got, pages
	}
	full, _ := page(false)
	got, pages := page(true)
	if len(full) == 0 {
		t.Fatal("the new node is told of nothing to fetch")
	}
	for oid, n := range got {
		if n != 1 || full[oid] != 1 {
			t.Fatalf("%v sent %d times while paging (%d without others asking)", oid, n, full[oid])
		}
	}
	if len(got) != len(full) {
		t.Fatalf("with others asking between pages: %d of the %d entries in %d pages", len(got), len(full), pages)
	}
	t.Logf("%d entries in %d pages, each once", len(got), pages)
}
