package fs

import (
	"context"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
)

// Writes past the largest VDI size (cluster.MaxVDISize, 64 TiB).
//
// Without the writeback cache such a write fails at write(2) with EFBIG:
// the kernel sends it to sheepfs before write(2) returns, and grows the
// file only if sheepfs took it.
//
// With the writeback cache (the default) write(2) only copies into the page
// cache, growing the kernel's size of the file without asking sheepfs, and
// FUSE gives a filesystem no way to tell the kernel its largest file size
// (the kernel's check of s_maxbytes at write(2) is fixed at its own
// MAX_LFS_FILESIZE; FUSE_INIT carries no limit). So write(2) succeeds and,
// until the kernel writes the data back, stat shows the grown size, as for
// any cached write. The writeback is refused: the writer is told at fsync
// (EFBIG) or close (EIO), and so is every other open of the file at its
// next fsync; the data never reaches the cluster. (O_DIRECT writes skip the
// cache and fail at write(2).) But the kernel keeps the grown size: under
// the writeback cache it takes a file's size from sheepfs only in the
// answer to a truncate (never from GETATTR, LOOKUP or an invalidation).
// Hence the size fix below: a truncate through the mount, which Setattr
// answers with the cluster's size, so that stat shows that size again and
// the refused pages leave the page cache.

// sizeFix is a fix under way of the kernel's size of one VDI file.
type sizeFix struct {
	done  chan struct{} // closed when the kernel has the cluster's size
	again bool          // another write was refused meanwhile: fix once more (under image.mu)
}

// sizeFixWait bounds how long a request that reports a file's size waits
// for a fix under way (waitSizeFix). The fix needs the file's inode lock,
// which no waiting request holds, and its path looked up, which a waiting
// LOOKUP can hold up only when the file's dentry is gone; the bound is for
// that.
const sizeFixWait = 10 * time.Second

// checkSize refuses a VDI size past the largest (errs.TooLarge, which is
// EFBIG), without asking the cluster, which would refuse it too.
func checkSize(name string, size uint64) error {
	if size > cluster.MaxVDISize {
		return errs.E(errs.TooLarge, "%s: %d bytes is past the largest VDI size (%d)", name, size, uint64(cluster.MaxVDISize))
	}
	return nil
}

// sizeRefused is called by a write refused for ending past the largest VDI
// size, before it answers. Under the writeback cache the kernel has grown
// the file for it, so a fix starts; until it is done, stat waits for it
// (waitSizeFix). The kernel's cached attributes are dropped now, so that
// the next stat asks: the writer's fsync returns as soon as this write is
// answered. (Only the attributes: dropping pages here would wait for the
// writeback this write is part of.)
func (n *vdiNode) sizeRefused() {
	if !n.fs.writeback {
		return
	}
	n.mu.Lock()
	if n.fix != nil {
		n.fix.again = true
		n.mu.Unlock()
		return
	}
	fix := &sizeFix{done: make(chan struct{})}
	n.fix = fix
	n.mu.Unlock()
	n.NotifyContent(-1, 0)
	go n.runSizeFix(fix)
}

func (n *vdiNode) runSizeFix(fix *sizeFix) {
	for {
		n.fixKernelSize()
		n.mu.Lock()
		if !fix.again {
			n.fix = nil
			close(fix.done)
			n.mu.Unlock()
			return
		}
		fix.again = false
		n.mu.Unlock()
	}
}

// fixKernelSize gives the kernel the cluster's size of the VDI's file. It
// first writes back what the kernel holds for the file (fsync), so that
// writes made in bounds reach the cluster and grow it; the truncate then
// drops only pages past the cluster's size, the refused ones. (A write
// growing the file made between the two would be dropped too, and without
// an error if its file was opened after the refusal: a narrow race with a
// write just refused.)
//
// The truncate goes through /proc/self/fd to the inode just opened, as a
// write-back of sheepfs's own (ownWriteBack): Setattr answers it with the
// cluster's size and resizes nothing. (Should the name lead to another VDI by now,
// the kernel is told that VDI's size, which it has already.)
func (n *vdiNode) fixKernelSize() {
	// An error of the fsync is a writer's, told at its own fsync.
	_ = n.fs.ownWriteBack(wbOpFixSize, n.name, n.size.Load())
}

// The kernel keeps the size it had when it made the inode, and changes it
// with the writes and truncates made through this mount; under the
// writeback cache nothing else the cluster says changes it (see above). A
// VDI resized elsewhere (`sheep vdi resize`, another mount, a rollback)
// would show its old size here for as long as the inode lives, and a read
// past that size would end at it. So an open, or a stat(2), while no
// writer of this mount has the file open (or its size would be this
// mount's), tells the kernel the cluster's size if it may have another, by
// a truncate through the mount as the size fix does (Setattr answers it
// with the cluster's size). When sheepfs knows the kernel's size, nothing
// needs writing back first: the last writer's close wrote its pages back.
// When it does not (after a takeover, with write handles from before that
// come back only at their first use), the kernel writes its pages back
// first, so that none is dropped past a size that did not count them yet.
//
// The truncate needs the file's inode lock, which nothing should hold at
// an OPEN or a stat's GETATTR; should something hold it, the wait ends
// after kernelSizeWait and the request answers, and the truncate ends
// once the lock is free.
func (n *vdiNode) setKernelSize() {
	if !n.kernelSizeOld() {
		return
	}
	n.mu.Lock()
	ch := n.setting
	if ch == nil {
		ch = make(chan struct{})
		n.setting = ch
		go func() {
			op := byte(wbOpSetSize)
			if n.kernelSize.Load() == 0 {
				op = wbOpFixSize
			}
			if errno := n.fs.ownWriteBack(op, n.name, n.size.Load()); errno != 0 {
				n.kernelSize.Store(0)
			}
			n.mu.Lock()
			n.setting = nil
			n.mu.Unlock()
			close(ch)
		}()
	}
	n.mu.Unlock()
	t := time.NewTimer(kernelSizeWait)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

// kernelSizeOld reports whether the kernel's size of the file may not be
// the cluster's, and setKernelSize should set it. Without the writeback
// cache the kernel takes the size from every GETATTR; with a writer of
// this mount, the size is this mount's.
func (n *vdiNode) kernelSizeOld() bool {
	return n.fs.writeback && n.writeOpens.Load() == 0 && n.kernelSize.Load() != n.size.Load()+1
}

// kernelSizeWait bounds how long an open or a stat waits for the kernel
// to take the cluster's size (setKernelSize).
const kernelSizeWait = 2 * time.Second

// setKernel records that the kernel's size of the file is size.
func (n *vdiNode) setKernel(size uint64) { n.kernelSize.Store(size + 1) }

// kernelGrew records that a write or an allocation through this mount
// ending at end grew the kernel's size of the file to at least end.
func (n *vdiNode) kernelGrew(end uint64) {
	for {
		cur := n.kernelSize.Load()
		if cur == 0 || cur >= end+1 || n.kernelSize.CompareAndSwap(cur, end+1) {
			return
		}
	}
}

// waitSizeFix waits for a fix of the file's size under way, so that the
// caller is told the cluster's size. The fix's own requests do not wait.
func (n *vdiNode) waitSizeFix(ctx context.Context) {
	n.mu.Lock()
	fix := n.fix
	n.mu.Unlock()
	if fix == nil || n.fs.ownRequest(ctx) {
		return
	}
	t := time.NewTimer(sizeFixWait)
	defer t.Stop()
	select {
	case <-fix.done:
	case <-t.C:
	}
}

// threadSet is a set of OS threads (those doing a write-back of sheepfs's
// own, say). FUSE tells which thread made a request (its pid field holds
// the thread ID).
type threadSet struct {
	mu  sync.Mutex
	ids map[int]bool
}

func (s *threadSet) add(tid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[int]bool{}
	}
	s.ids[tid] = true
}

func (s *threadSet) remove(tid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, tid)
}

// has reports whether thread tid is in s.
func (s *threadSet) has(tid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[tid]
}
