package backup

// Engine: the work of sheep vdi backup and restore: which objects a backup of
// a snapshot (since an older one) holds, streaming them from a Source into
// a Writer, and applying a stream to a Target. The CLI gives it the
// cluster as Source and Target.

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// InFlight is how many objects a backup reads, or a restore writes, at
// once (each holds one object buffer).
const InFlight = 4

// IdentOf names snapshot v of the cluster ci in a backup's header.
func IdentOf(ci proto.ClusterInfo, v proto.VDIInfo) Ident {
	return Ident{Cluster: ci.FormatTime, Image: v.Image, SnapTime: v.SnapTime, Name: v.FullName()}
}

// CheckFamily refuses an increment between snapshots of different families
// (it would hold everything) or with FROM newer than TO. Any other pair is
// correct, also cousins (after a rollback, say): objects that two
// snapshots share are the same immutable objects.
func CheckFamily(imgs []proto.ImageInfo, from, to proto.VDIInfo) error {
	parent := map[ids.VDIID]ids.VDIID{}
	for _, im := range imgs {
		parent[im.ID] = im.Parent
	}
	// line lists id and its ancestors, id first.
	line := func(id ids.VDIID) []ids.VDIID {
		var out []ids.VDIID
		for seen := map[ids.VDIID]bool{}; id != 0 && !seen[id]; id = parent[id] {
			seen[id] = true
			out = append(out, id)
		}
		return out
	}
	has := func(l []ids.VDIID, id ids.VDIID) bool {
		for _, x := range l {
			if x == id {
				return true
			}
		}
		return false
	}
	fl, tl := line(from.Image), line(to.Image)
	switch {
	case from.Image == to.Image:
		return errs.E(errs.Invalid, "%s and %s hold the same image: nothing changed between them", from.FullName(), to.FullName())
	case has(tl, from.Image):
		return nil
	case has(fl, to.Image):
		return errs.E(errs.Invalid, "%s is newer than %s: give the older snapshot first (sheep vdi backup %s %s)",
			from.FullName(), to.FullName(), to.FullName(), from.FullName())
	case fl[len(fl)-1] != tl[len(tl)-1]:
		return errs.E(errs.Invalid, "%s and %s are not of the same family (no common ancestor): back up %s in full instead",
			from.FullName(), to.FullName(), to.FullName())
	}
	return nil
}

// Source is what a backup reads from the cluster.
type Source interface {
	// Owners returns the owning image of count objects of VDI or snapshot
	// name from object off on (fewer at its end; at most 65536).
	Owners(ctx context.Context, name string, off uint64, count uint32) ([]ids.VDIID, error)
	ReadAt(ctx context.Context, vid ids.VDIID, buf []byte, off int64) error
}

// ownersBatch is how many owners a backup asks for at once.
const ownersBatch = 1 << 16

func extent(size uint64, idx uint32) int {
	return int(min(vdi.ObjectSize, size-uint64(idx)*vdi.ObjectSize))
}

// Plan calls fn, in object order, for every object a backup of to
// (since from, if not nil) holds: data if to has it, else a hole (from had
// it). It returns the bytes of the data objects.
func Plan(ctx context.Context, src Source, from *proto.VDIInfo, to proto.VDIInfo, fn func(idx uint32, data bool) error) (int64, error) {
	n, nFrom := uint64(vdi.NumObjects(to.Size)), uint64(0)
	if from != nil {
		nFrom = uint64(vdi.NumObjects(from.Size))
	}
	var total int64
	for off := uint64(0); off < n; {
		cnt := min(n-off, ownersBatch)
		tos, err := src.Owners(ctx, to.FullName(), off, uint32(cnt))
		if err != nil {
			return 0, err
		}
		if uint64(len(tos)) != cnt {
			return 0, errs.E(errs.IO, "%s: %d owners of objects %d-%d, want %d", to.FullName(), len(tos), off, off+cnt-1, cnt)
		}
		var froms []ids.VDIID
		if off < nFrom {
			fc := min(cnt, nFrom-off)
			if froms, err = src.Owners(ctx, from.FullName(), off, uint32(fc)); err != nil {
				return 0, err
			}
			if uint64(len(froms)) != fc {
				return 0, errs.E(errs.IO, "%s: %d owners of objects %d-%d, want %d", from.FullName(), len(froms), off, off+fc-1, fc)
			}
		}
		for i, o := range tos {
			var f ids.VDIID
			if i < len(froms) {
				f = froms[i]
			}
			if o == f {
				continue
			}
			idx := uint32(off) + uint32(i)
			if o != 0 {
				total += int64(extent(to.Size, idx))
			}
			if err := fn(idx, o != 0); err != nil {
				return 0, err
			}
		}
		off += cnt
	}
	return total, nil
}

// Dump writes the records of a backup of to (since from, if not
// nil) to w, reading up to InFlight objects ahead, and reports the bytes
// read to done.
func Dump(ctx context.Context, src Source, from *proto.VDIInfo, to proto.VDIInfo, w *Writer, done func(int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type job struct {
		idx  uint32
		buf  []byte // nil for a hole
		err  error
		read chan struct{}
	}
	jobs := make(chan *job, InFlight)
	free := make(chan []byte, InFlight)
	var planErr error
	go func() {
		defer close(jobs)
		made := 0
		_, planErr = Plan(ctx, src, from, to, func(idx uint32, data bool) error {
			j := &job{idx: idx, read: make(chan struct{})}
			if data {
				if made < InFlight {
					made++
					j.buf = make([]byte, vdi.ObjectSize)
				} else {
					select {
					case j.buf = <-free:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				j.buf = j.buf[:extent(to.Size, idx)]
				go func() {
					defer close(j.read)
					if err := src.ReadAt(ctx, to.ID, j.buf, int64(idx)*vdi.ObjectSize); err != nil {
						j.err = fmt.Errorf("read object %d of %s: %w", idx, to.FullName(), err)
					}
				}()
			} else {
				close(j.read)
			}
			select {
			case jobs <- j:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	var err error
	for j := range jobs {
		<-j.read
		switch {
		case err != nil: // draining after a failure
		case j.err != nil:
			err = j.err
		case j.buf == nil:
			err = w.Hole(j.idx)
		default:
			err = w.Data(j.idx, j.buf)
			done(int64(len(j.buf)))
		}
		if err != nil {
			cancel()
		}
		if j.buf != nil {
			free <- j.buf[:cap(j.buf)]
		}
	}
	if err == nil {
		err = planErr
	}
	return err
}

// CheckChain checks that files (named names, with headers hs) form a chain
// that restores into this cluster's objects: a full backup, then
// increments each starting where the one before ended.
func CheckChain(names []string, hs []Header) error {
	for i, h := range hs {
		switch {
		case h.ObjectSize != vdi.ObjectSize:
			return errs.E(errs.Invalid, "%s: objects of %d bytes; sheep uses %d", names[i], h.ObjectSize, vdi.ObjectSize)
		case h.Size > cluster.MaxVDISize:
			return errs.E(errs.TooLarge, "%s: a VDI of %d bytes; the largest is %d", names[i], h.Size, uint64(cluster.MaxVDISize))
		case i == 0 && !h.Full():
			return errs.E(errs.Invalid, "%s is an increment from %s to %s: a restore starts with a full backup",
				names[i], h.From.Name, h.To.Name)
		case i > 0 && h.Full():
			return errs.E(errs.Invalid, "%s is a full backup of %s: only the first file may be one", names[i], h.To.Name)
		case i > 0 && !h.From.Same(hs[i-1].To):
			return errs.E(errs.Invalid, "%s starts from %s, but %s ends at %s: give a full backup, then each increment after the one it starts from",
				names[i], h.From, names[i-1], hs[i-1].To)
		}
	}
	return nil
}

// Target is what a restore writes to.
type Target interface {
	WriteAt(ctx context.Context, vid ids.VDIID, data []byte, off int64, sync bool) error
	Discard(ctx context.Context, vid ids.VDIID, off, length int64, keep bool) error
}

// Stats counts the records a restore applied.
type Stats struct {
	Data, Holes int
}

// Apply writes the records of rd to VDI vid, up to InFlight at
// once, and returns when all have been written. fresh says that vid is new
// (nothing allocated): a data record is then written as it is, and a hole
// is skipped; otherwise a data record overwrites its whole object, and a
// hole discards it.
func Apply(ctx context.Context, dst Target, vid ids.VDIID, rd *Reader, fresh bool, st *Stats) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := rd.Header()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return firstErr != nil
	}
	free := make(chan []byte, InFlight)
	made := 0
	for !failed() {
		rec, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(err)
			break
		}
		off := int64(rec.Index) * int64(h.ObjectSize)
		ext := h.Extent(rec.Index)
		if rec.Kind == KindHole {
			st.Holes++
			if fresh {
				continue
			}
		} else {
			st.Data++
		}
		var buf []byte
		if rec.Kind == KindData {
			if made < InFlight {
				made++
				buf = make([]byte, h.ObjectSize)
			} else {
				select {
				case buf = <-free:
				case <-ctx.Done():
					fail(ctx.Err())
					continue
				}
			}
			n := copy(buf, rec.Data)
			if fresh {
				buf = buf[:n]
			} else {
				clear(buf[n:ext])
				buf = buf[:ext]
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if buf == nil {
				err = dst.Discard(ctx, vid, off, int64(ext), false)
			} else {
				err = dst.WriteAt(ctx, vid, buf, off, false)
				free <- buf[:cap(buf)]
			}
			if err != nil {
				fail(fmt.Errorf("object %d: %w", rec.Index, err))
			}
		}()
	}
	wg.Wait()
	return firstErr
}
