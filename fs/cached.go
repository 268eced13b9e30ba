package fs

import (
	"golang.org/x/sys/unix"
)

// Writes the kernel still holds (the writeback cache).
//
// Under the writeback cache write(2) only fills the kernel's page cache;
// sheepfs hears of the data when the kernel writes it back (seconds later,
// at fsync, or at close). What sheepfs reports of a file's allocation comes
// from the cluster: SEEK_DATA/SEEK_HOLE and st_blocks. Answered from the
// cluster alone, they would call freshly written data a hole (SEEK_DATA
// fails with ENXIO on a file that reads back the data), and a copy or
// backup that skips holes (cp --sparse, qemu's block status) would skip it.
//
// So before it answers them for a file that is open for writing here,
// sheepfs has the kernel write the file's dirty pages back: the write-back
// helper (wbhelper.go), a process of its own, calls sync_file_range (write
// and wait, no flush to disk) on a file descriptor opened through the
// mount, which makes the kernel send the dirty pages as WRITE requests
// that the other request goroutines serve. sync_file_range takes no inode
// lock, so it may run while the kernel holds the file's inode lock for the
// LSEEK being answered. The descriptor is closed after the answer (a
// close's FLUSH takes the inode lock). Waiting for the write-back in
// sheepfs itself would let a kill during it keep sheepfs from ending
// (wbhelper.go says why); that is done only without a helper (in-process
// tests, or a helper that cannot start). A file with no writer here has no
// dirty pages (the last close wrote them back) and costs nothing; one with
// writers costs a request to the helper, an open and a close (four FUSE
// requests) and, with no dirty pages, a sync_file_range of about a
// microsecond.
//
// The kernel asks for st_blocks with GETATTR whenever a cached write has
// made its copy stale, but it also sends GETATTR to refresh a file's size
// and times on reads, once per attribute timeout; a write-back there would
// make reads wait for it. Only a stat(2) matters, and the kernel names the
// open file (FUSE_GETATTR_FH) in its own refreshes but never in a stat, a
// difference go-fuse hides from Getattr: rawFS marks the thread serving a
// GETATTR without a file, and Getattr writes back only on such a thread.

// forStat reports whether the calling goroutine serves a stat(2) (see
// rawFS). Threads in stats are locked to the goroutine that added them,
// so no other goroutine runs on one.
func (f *FS) forStat() bool { return f.stats.has(unix.Gettid()) }

// writeBack has the kernel write the file's cached writes from off to its
// end back to sheepfs, and waits for them; the answer is then the
// cluster's.
func (n *vdiNode) writeBack(off uint64) {
	if !n.fs.writeback || n.writeOpens.Load() == 0 {
		return
	}
	n.wbMu.Lock()
	defer n.wbMu.Unlock()
	if n.writeOpens.Load() == 0 { // the last writer left meanwhile
		return
	}
	// Its errors are the writers' (Write records them, and the kernel
	// reports them to every writer's fsync).
	_ = n.fs.ownWriteBack(wbOpRange, n.name, off)
}
