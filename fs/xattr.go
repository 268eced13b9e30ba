package fs

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// Extended attributes of VDI and snapshot files, computed from the
// cluster's description of the image (getfattr -d FILE):
//
//	user.sheepfs.id             the VDI's or snapshot's ID, as the CLI shows it
//	user.sheepfs.copies         replicas per object
//	user.sheepfs.parent         the snapshot NAME@TAG the data descends from (if any)
//	user.sheepfs.source         the snapshot a clone or the last rollback started from (if any)
//	user.sheepfs.snapshot_time  when a snapshot was taken, RFC 3339 in UTC (snapshots only)
//	user.sheepfs.writer         who holds the write lock: "mount M on node N", with
//	                            ", this mount" if it is this one (while locked)
//
// Values are plain text without a newline. sheepfs stores no attributes
// of its own: setting or removing any fails with ENOTSUP, which copying
// tools (cp -a, rsync -X) treat as "not supported here" and pass over.

const xattrPrefix = "user.sheepfs."

// xattr is one extended attribute.
type xattr struct{ name, value string }

// xattrsOf lists the attributes of info, in a fixed order, as seen by
// the mount whose shown ID is self.
func xattrsOf(info proto.VDIInfo, self ids.MountID) []xattr {
	a := []xattr{
		{"id", info.ID.String()},
		{"copies", strconv.Itoa(info.Copies)},
	}
	if info.ParentName != "" {
		a = append(a, xattr{"parent", info.ParentName})
	}
	if info.Source != "" {
		a = append(a, xattr{"source", info.Source})
	}
	if info.Tag != "" {
		a = append(a, xattr{"snapshot_time", time.Unix(info.SnapTime, 0).UTC().Format(time.RFC3339)})
	}
	if info.Locked {
		w := fmt.Sprintf("mount %s on node %s", info.Mount, info.Node)
		if info.Mount == self {
			w += ", this mount"
		}
		a = append(a, xattr{"writer", w})
	}
	for i := range a {
		a[i].name = xattrPrefix + a[i].name
	}
	return a
}

// getxattr answers a getxattr of name from attrs into dest: the value's
// length, and ERANGE if dest is too short for it.
func getxattr(attrs []xattr, name string, dest []byte) (uint32, syscall.Errno) {
	for _, a := range attrs {
		if a.name == name {
			if len(dest) < len(a.value) {
				return uint32(len(a.value)), syscall.ERANGE
			}
			return uint32(copy(dest, a.value)), 0
		}
	}
	return 0, syscall.ENODATA
}

// listxattr answers a listxattr from attrs into dest: the names, each
// followed by a NUL.
func listxattr(attrs []xattr, dest []byte) (uint32, syscall.Errno) {
	var b strings.Builder
	for _, a := range attrs {
		b.WriteString(a.name)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}

// infoFunc looks a file's VDI or snapshot up.
type infoFunc func(ctx context.Context) (proto.VDIInfo, syscall.Errno)

func (f *FS) getxattr(ctx context.Context, info infoFunc, name string, dest []byte) (uint32, syscall.Errno) {
	// Not ours (security.capability, asked before writes, among
	// others): answered without asking the cluster.
	if !strings.HasPrefix(name, xattrPrefix) {
		if f.xattrGets != nil {
			f.xattrGets.Add(1, "other")
		}
		return 0, syscall.ENODATA
	}
	if f.xattrGets != nil {
		f.xattrGets.Add(1, "sheepfs")
	}
	ctx, cancel := f.ctx(ctx)
	defer cancel()
	v, errno := info(ctx)
	if errno != 0 {
		return 0, errno
	}
	return getxattr(xattrsOf(v, f.c.Mount().Shown()), name, dest)
}

func (f *FS) listxattr(ctx context.Context, info infoFunc, dest []byte) (uint32, syscall.Errno) {
	ctx, cancel := f.ctx(ctx)
	defer cancel()
	v, errno := info(ctx)
	if errno != 0 {
		return 0, errno
	}
	return listxattr(xattrsOf(v, f.c.Mount().Shown()), dest)
}

var (
	_ gofs.NodeGetxattrer    = (*vdiNode)(nil)
	_ gofs.NodeListxattrer   = (*vdiNode)(nil)
	_ gofs.NodeSetxattrer    = (*vdiNode)(nil)
	_ gofs.NodeRemovexattrer = (*vdiNode)(nil)
	_ gofs.NodeGetxattrer    = (*snapNode)(nil)
	_ gofs.NodeListxattrer   = (*snapNode)(nil)
	_ gofs.NodeSetxattrer    = (*snapNode)(nil)
	_ gofs.NodeRemovexattrer = (*snapNode)(nil)
)

// Getxattr reads one of the VDI's computed attributes.
func (n *vdiNode) Getxattr(ctx context.Context, name string, dest []byte) (uint32, syscall.Errno) {
	return n.fs.getxattr(ctx, n.info, name, dest)
}

// Listxattr lists the VDI's computed attributes.
func (n *vdiNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return n.fs.listxattr(ctx, n.info, dest)
}

// Getxattr reads one of the snapshot's computed attributes.
func (n *snapNode) Getxattr(ctx context.Context, name string, dest []byte) (uint32, syscall.Errno) {
	return n.fs.getxattr(ctx, n.info, name, dest)
}

// Listxattr lists the snapshot's computed attributes.
func (n *snapNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	return n.fs.listxattr(ctx, n.info, dest)
}

// Setxattr fails on VDI and snapshot files alike: nothing is stored.
func (m *image) Setxattr(ctx context.Context, name string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

// Removexattr fails: nothing is stored.
func (m *image) Removexattr(ctx context.Context, name string) syscall.Errno {
	return syscall.ENOTSUP
}
