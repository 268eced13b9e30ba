package server

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Repair of damaged copies. The object store verifies every block it
// reads against its checksum (objstore, sums.go) and answers errs.Corrupt
// for a damaged one. A read then goes to another replica (readAny), and
// the node whose copy is damaged replaces it with another node's good
// copy: each node repairs its own copies, whoever found the damage.

// repairs is a node's repair queue and counters.
type repairs struct {
	q          chan ids.ObjectID
	repaired   atomic.Uint64
	unrepaired atomic.Uint64

	log     logLimit
	logMu   sync.Mutex            // guards pending
	pending map[ids.ObjectID]bool // in q (at most its capacity)
}

// logLimit lets a kind of log line through at most once a second.
type logLimit struct {
	mu   sync.Mutex
	last time.Time
	held int // lines held back since last
}

// allow reports whether a line may be logged now, and how many were held
// back since the last one.
func (l *logLimit) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.last) < time.Second {
		l.held++
		return false, 0
	}
	held := l.held
	l.last, l.held = now, 0
	return true, held
}

// damaged is told that this node's copy of oid failed its checksums
// (err says where); it reports it and queues a repair.
func (h *healer) damaged(oid ids.ObjectID, err error) {
	h.reportDamage(oid, err)
	f := &h.fix
	f.logMu.Lock()
	defer f.logMu.Unlock()
	if f.pending[oid] {
		return // queued already
	}
	select {
	case f.q <- oid:
		f.pending[oid] = true
	default: // full: a later read queues it again
	}
}

// reportDamage logs a damaged copy, at most once a second with the count
// of those held back.
func (h *healer) reportDamage(oid ids.ObjectID, err error) {
	ok, held := h.fix.log.allow()
	if !ok {
		return
	}
	h.n.log.Warn().Stringer("oid", oid).Int("more", held).Err(err).Msg("damaged copy: repairing it from another node")
}

// repairLoop repairs the queued copies, one at a time.
func (h *healer) repairLoop(stop <-chan struct{}) {
	for {
		var oid ids.ObjectID
		select {
		case <-stop:
			return
		case oid = <-h.fix.q:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_ = h.repair(ctx, oid)
		cancel()
		h.fix.logMu.Lock()
		delete(h.fix.pending, oid)
		h.fix.logMu.Unlock()
	}
}

// repairMode says what a repair takes from the good copy it fetches.
type repairMode int

const (
	// patchBlocks replaces only the blocks that fail here (a damaged
	// copy): a write this copy has and the source does not yet stays.
	patchBlocks repairMode = iota
	// replaceAll replaces the whole copy (an absent or older one).
	replaceAll
)

// repair makes this node's damaged copy of oid good from another node's,
// holding the object's lock: of the nodes that have it at this node's
// version or newer, the newest first, the first whose copy reads whole
// (a source verifies what it sends) gives the blocks that fail here.
// errs.Corrupt if none can. A copy removed meanwhile needs nothing.
func (h *healer) repair(ctx context.Context, oid ids.ObjectID) error {
	return h.repairFrom(ctx, oid, 0, "", patchBlocks)
}

// repairFrom is repair asking only nodes at version want or newer, only
// node from if set, and taking what mode says. With replaceAll a copy
// absent here is fetched.
func (h *healer) repairFrom(ctx context.Context, oid ids.ObjectID, want ids.Version, from ids.NodeID, mode repairMode) error {
	return h.once(ctx, oid, func() error {
		present := true
		if mine, err := h.n.store.Stat(oid); err == nil {
			want = max(want, mine.Version)
		} else if errs.Is(err, errs.NotFound) {
			if mode == patchBlocks {
				return nil // removed meanwhile
			}
			present = false
		} else {
			return err
		}
		st := h.n.cl.State()
		answers, nodes, _ := h.statAll(ctx, st, oid)
		var order []int
		for i, a := range answers {
			if nodes[i].ID != h.n.id && a.Version >= want && (from == "" || nodes[i].ID == from) {
				order = append(order, i)
			}
		}
		slices.SortStableFunc(order, func(a, b int) int {
			return cmp.Compare(answers[b].Version, answers[a].Version)
		})
		var last error = errs.E(errs.NotFound, "no other node has it at version %v or newer", want)
		for _, i := range order {
			_, err := h.fetchWith(ctx, st, oid, nodes[i], true, func(oe []objstore.Extent, data []byte, ver ids.Version) error {
				if mode == patchBlocks && present {
					_, err := h.n.store.Patch(oid, oe, data)
					if !errs.Is(err, errs.Corrupt) {
						return err
					}
					// The file is missing or cut short: the whole copy.
				}
				return h.n.store.ReplaceSparse(oid, oe, data, ver, st.Epoch)
			})
			if err != nil {
				last = err
				continue
			}
			// Read back: a disk that damages what it stores (or
			// returns) has not been repaired.
			buf := proto.GetBuf(vdi.ObjectSize)
			_, _, err = h.n.store.Check(oid, buf)
			proto.PutBuf(buf)
			if err != nil {
				last = err
				break
			}
			h.fix.repaired.Add(1)
			h.n.log.Info().Stringer("oid", oid).Str("from", string(nodes[i].ID)).Msg("copy repaired")
			return nil
		}
		h.fix.unrepaired.Add(1)
		h.n.log.Error().Stringer("oid", oid).Err(last).Msg("copy not repaired: no good copy to repair it from")
		return errs.E(errs.Corrupt, "object %v: the copy on %s could not be made good: %w", oid, h.n.id, last)
	})
}

// integrity is this node's count of damaged copies found and repaired.
func (n *Node) integrity() proto.IntegrityInfo {
	return proto.IntegrityInfo{Damaged: n.store.Corruptions(), Repaired: n.rec.fix.repaired.Load(),
		Unrepaired: n.rec.fix.unrepaired.Load()}
}
