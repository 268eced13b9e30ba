package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// Write-lock sessions: the locks a client holds through its connection,
// released when it closes or when a previous run of the node held them,
// and the checks every write makes against them.

// connState returns the state of client connection c, made at its first
// use.
func (n *Node) connState(c *proto.Conn) *connState {
	n.mu.Lock()
	defer n.mu.Unlock()
	cs := n.conns[c]
	if cs == nil {
		cs = &connState{locks: map[string]ids.MountID{}, session: n.newSession()}
		n.conns[c] = cs
		c.OnClose(func() { n.connClosed(c) })
	}
	return cs
}

// connClosed releases the write locks a client held through c.
func (n *Node) connClosed(c *proto.Conn) {
	n.mu.Lock()
	cs := n.conns[c]
	delete(n.conns, c)
	n.mu.Unlock()
	if cs == nil {
		return
	}
	cs.mu.Lock()
	locks := cs.locks
	cs.locks = nil
	cs.mu.Unlock()
	for name, mount := range locks {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIUnlock, Name: name, Mount: mount, Node: n.id, Session: cs.session})
		cancel()
		if err != nil && !errs.Is(err, errs.NotFound) {
			n.log.Warn().Err(err).Str("vdi", name).Msg("release lock of closed connection")
		}
	}
}

// newSession returns a lock session name of this run of the node.
func (n *Node) newSession() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return n.runPrefix() + hex.EncodeToString(b[:])
}

// runPrefix starts every session name of this run of the node.
func (n *Node) runPrefix() string { return string(n.id) + "-" + n.run + "-" }

// releaseStaleLocks releases, once the cluster answers, the write locks
// held through this node by a previous run of it: a restart within the
// grace period keeps the node a member, so they would never die otherwise.
// A client that took its lock again through this run has a session of this
// run, which stays.
func (n *Node) releaseStaleLocks() {
	for !n.cl.HasQuorum() || !n.cl.State().Formatted() {
		select {
		case <-n.stop:
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	for name, v := range n.cl.State().VDIs {
		if v.Lock == nil || v.Lock.Node != n.id || strings.HasPrefix(v.Lock.Session, n.runPrefix()) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIUnlock, Name: name, Mount: v.Lock.Mount, Node: n.id, Session: v.Lock.Session})
		cancel()
		if err == nil {
			n.log.Info().Str("vdi", name).Str("mount", string(v.Lock.Mount.Shown())).Msg("released a write lock held through this node before it restarted")
		}
	}
}

// checkWriter fails unless the client on c holds vdi's write lock.
func (n *Node) checkWriter(c *proto.Conn, meta *cluster.VDI) error {
	if meta.IsSnapshot() {
		return errs.E(errs.ReadOnly, "snapshot %s is read-only", meta.FullName())
	}
	n.mu.RLock()
	cs := n.conns[c]
	n.mu.RUnlock()
	var mount ids.MountID
	if cs != nil {
		cs.mu.Lock()
		mount = cs.locks[meta.Name]
		cs.mu.Unlock()
	}
	if mount == "" || meta.Lock == nil || meta.Lock.Mount != mount {
		return errs.E(errs.Busy, "VDI %q is not open for writing by this client", meta.Name)
	}
	// The client took the lock again through another node: a write
	// still arriving here would miss that node's snapshot fence.
	if meta.Lock.Node != n.id {
		return errs.E(errs.Busy, "VDI %q is now written through node %s", meta.Name, meta.Lock.Node)
	}
	return nil
}

// clientWriter returns the writer for a client's changes of meta's VDI: a
// fence checks, against the cluster state of every attempt to change an
// object, that the client on c still
// holds the write lock of meta's VDI. A write retries for up to RetryFor
// across failures and epoch changes: one stuck on a replica across a
// partition, on the side without the majority, must fail once the heal
// shows that the majority dropped the lock (it died with this node, as far
// as the majority knew) and perhaps gave it to another client, instead of
// landing then. The writer gathers the boots of the nodes written
// (proto.NodeBoot) for the answer.
func (n *Node) clientWriter(c *proto.Conn, meta *cluster.VDI) writer {
	vid := meta.ID
	w := n.objs.fenced(func(st *cluster.State) error {
		meta, ok := st.VDIByID(vid)
		if !ok {
			return errs.E(errs.NotFound, "VDI %v is gone", vid)
		}
		return n.checkWriter(c, meta)
	})
	w.boots = &bootSet{} // the answer tells the client where its write went
	w.vdi = vid          // its flushes wait for a synced copy of each write
	return w
}
