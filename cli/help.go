package cli

// The detailed help of each command (kong shows it under the one-line
// summary in `sheep COMMAND --help`): what it does, and an example.

func (DaemonCmd) Help() string {
	return `Runs one node: it keeps its share of the objects, serves clients on the data
port and talks to the other nodes on port+1 (gossip) and port+2 (raft). With no
--join and no state of its own it looks for a cluster of its key on the local
network first, and starts a new one if none answers.

  sheep daemon --dir /var/lib/sheep --listen 10.0.0.5                   # the first node
  sheep daemon --dir /var/lib/sheep --listen 10.0.0.6 --join 10.0.0.5:7000`
}

func (KeygenCmd) Help() string {
	return `Prints a new cluster key, or with --client the client key of the key file in
use (mounts and admin commands, not a node). Give every node the same key.

  sheep keygen > /etc/sheepfs/cluster.key
  sheep keygen --client > client.key`
}

func (ClusterFormatCmd) Help() string {
	return `Formats a new cluster once its first nodes run; --copies is the default number
of replicas of new VDIs.

  sheep cluster format --copies 3`
}

func (ClusterInfoCmd) Help() string {
	return `Shows the cluster's status, epoch, nodes, space and recovery. --wait waits
(up to --timeout) until it is formatted and every member is up.

  sheep cluster info
  sheep --json cluster info`
}

func (ClusterHealthCmd) Help() string {
	return `For scripts and monitoring: one line, and the exit status says it all.

  sheep cluster health && echo healthy`
}

func (ClusterRecoveryCmd) Help() string {
	return `Shows each node's recovery (objects to check and fetch, rate, ETA) and sets the
cluster-wide throttle of background recovery.

  sheep cluster recovery
  sheep cluster recovery --max-rate 50MB/s --max-parallel 2
  sheep cluster recovery --pause`
}

func (ClusterCheckCmd) Help() string {
	return `Checks every object of every VDI and snapshot on all its copies (checksums,
versions, missing copies) and repairs from a good copy; exits non-zero if any
object has no good copy left.

  sheep cluster check`
}

func (ClusterScrubCmd) Help() string {
	return `The background scrub reads every node's objects at a low rate, checks them and
compares the copies across nodes. Without flags it shows each node's last pass.

  sheep cluster scrub status
  sheep cluster scrub --max-rate 20MB/s --every 168h
  sheep cluster scrub --start`
}

func (KeyInfoCmd) Help() string {
	return `Shows the keys each node holds and uses, by fingerprint.

  sheep cluster key info`
}

func (KeyRotateCmd) Help() string {
	return `Rolls a new cluster key through the running cluster: every node accepts it,
then uses it, then drops the old one. Every member must be up.

  sheep keygen > new.key && sheep cluster key rotate new.key`
}

func (NodeListCmd) Help() string {
	return `Lists the nodes of the current epoch: state, zone, weight and share of the data.

  sheep node list`
}

func (MDInfoCmd) Help() string {
	return `Lists the data disks of the node at --addr: objects, space, state.

  sheep --addr 10.0.0.5:7000 node md info`
}

func (MDPlugCmd) Help() string {
	return `Puts a data disk of the node at --addr in service; new objects spread onto it.

  sheep --addr 10.0.0.5:7000 node md plug /srv/disk3`
}

func (MDUnplugCmd) Help() string {
	return `Takes a data disk of the node at --addr out of service; its objects are
recovered from the other copies.

  sheep --addr 10.0.0.5:7000 node md unplug /srv/disk3`
}

func (VDICreateCmd) Help() string {
	return `Creates a thin VDI (nothing is allocated until written). The same as
truncate -s on the mount.

  sheep vdi create disk1 10G
  sheep vdi create db 100G --copies 2`
}

func (VDIListCmd) Help() string {
	return `Lists the VDIs: ID, size, copies, when made, and who holds the write lock.

  sheep vdi list`
}

func (VDIDeleteCmd) Help() string {
	return `Deletes a VDI (refused while it is open for writing) or, with @TAG, a snapshot.

  sheep vdi delete disk1
  sheep vdi delete disk1@before-upgrade`
}

func (VDIResizeCmd) Help() string {
	return `Grows or shrinks a VDI (a shrink discards the tail; refused while another
mount writes it).

  sheep vdi resize disk1 20G`
}

func (VDISnapshotCmd) Help() string {
	return `Takes an instant snapshot, also while the VDI is written (what another mount
still holds in its page cache is not in it).

  sheep vdi snapshot disk1@before-upgrade`
}

func (VDISnapshotsCmd) Help() string {
	return `Lists the snapshots, of one VDI or of all.

  sheep vdi snapshots disk1`
}

func (VDICloneCmd) Help() string {
	return `Makes a writable VDI that shares the snapshot's data (copy on write).

  sheep vdi clone base@v1 web7`
}

func (VDIRollbackCmd) Help() string {
	return `Makes the VDI hold the snapshot's data again (refused while it is open for
writing).

  sheep vdi rollback disk1@before-upgrade`
}

func (VDITreeCmd) Help() string {
	return `Shows each family of VDIs: snapshots, the clones made from them, current VDIs.

  sheep vdi tree`
}

func (VDICheckCmd) Help() string {
	return `Checks every object of a VDI or snapshot on all its copies and repairs what
differs; exits non-zero if any object has no good copy left.

  sheep vdi check disk1
  sheep --json vdi check disk1@before-upgrade`
}

func (VDIUnlockCmd) Help() string {
	return `Takes the write lock from a holder that cannot release it (its machine is
gone). Needs the cluster key and --force; logged by the cluster.

  sheep vdi unlock --force disk1`
}

func (VDIGCCmd) Help() string {
	return `Frees at once the objects of deleted VDIs and snapshots that a failed delete
left (the leader does it every 10 minutes anyway).

  sheep vdi gc`
}

func (VersionCmd) Help() string {
	return `Prints the release, the commit it was built from and the Go toolchain.

  sheep version`
}

func (Sheepfs) Help() string {
	return `Mounts the cluster: each VDI is a raw file at MOUNTPOINT/vdi/NAME, snapshots
are under snapshot/, status files under cluster/ and node/. A holder process
keeps the mount if sheepfs dies or is stopped; running sheepfs again for the
same mount point takes it over (fusermount3 -u unmounts).

  sheepfs /mnt/sheep --addr 10.0.0.5:7000,10.0.0.6:7000
  qemu-system-x86_64 -drive file=/mnt/sheep/vdi/disk1,format=raw,cache=none ...`
}
