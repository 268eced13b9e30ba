package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/backup"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/status"
	"github.com/sheepfs/sheepfs/vdi"
)

// Backups: `sheep vdi backup` streams a snapshot's objects, or those that
// changed since an older snapshot, in the format of package backup;
// `sheep vdi restore` applies a full backup and then increments to a new
// VDI.

// VDIBackupCmd writes a backup to stdout.
type VDIBackupCmd struct {
	Snap string `arg:"" name:"snapshot" help:"NAME@TAG to back up; FROM if a second one follows."`
	To   string `arg:"" optional:"" name:"to" help:"NAME@TAG: back up what changed since the first."`
}

// Help is the command's detailed help.
func (VDIBackupCmd) Help() string {
	return `sheep vdi backup [FROM] TO > FILE

With one snapshot, writes every allocated object of TO (a full backup). With
two snapshots of the same VDI family, FROM older, writes only the objects that
differ between them (an increment). Restore with "sheep vdi restore": a full
backup first, then its increments in order. Back up a snapshot, not a
writable VDI: take one with "sheep vdi snapshot NAME@TAG".

  sheep vdi backup disk1@mon > disk1-mon.full
  sheep vdi backup disk1@mon disk1@tue > disk1-tue.incr`
}

// Run writes the backup.
func (c *VDIBackupCmd) Run(g *Globals) error {
	fromName, toName := "", c.Snap
	if c.To != "" {
		fromName, toName = c.Snap, c.To
	}
	for _, n := range []string{fromName, toName} {
		if n != "" && !strings.Contains(n, "@") {
			return errs.E(errs.Invalid, "%q is a writable VDI, which changes while it is read: back up a snapshot "+
				"(sheep vdi snapshot %s@TAG, then sheep vdi backup %s@TAG)", n, n, n)
		}
		if n != "" {
			if _, _, err := cluster.SplitSnapshot(n); err != nil {
				return err
			}
		}
	}
	if fromName == toName {
		return errs.E(errs.Invalid, "FROM and TO are both %s: an increment needs two snapshots", toName)
	}
	if f, ok := g.out.(*os.File); ok && isTerminal(f) {
		return errs.E(errs.Invalid, "refusing to write a backup to a terminal: redirect stdout to a file or a pipe")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cl := g.client()
	defer cl.Close()

	var ci proto.ClusterInfo
	if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci); err != nil {
		return err
	}
	lookupSnap := func(name string) (proto.VDIInfo, error) {
		var v proto.VDIInfo
		err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: name}, &v)
		if err == nil && v.Tag == "" {
			err = errs.E(errs.Invalid, "%s is not a snapshot", name)
		}
		return v, err
	}
	to, err := lookupSnap(toName)
	if err != nil {
		return err
	}
	var from *proto.VDIInfo
	if fromName != "" {
		f, err := lookupSnap(fromName)
		if err != nil {
			return err
		}
		var imgs []proto.ImageInfo
		if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDITree}, &imgs); err != nil {
			return err
		}
		if err := backup.CheckFamily(imgs, f, to); err != nil {
			return err
		}
		from = &f
	}
	h := backup.Header{ObjectSize: vdi.ObjectSize, Size: to.Size, To: backup.IdentOf(ci, to)}
	if from != nil {
		h.From = backup.IdentOf(ci, *from)
	}
	src := clusterSource{cl}
	total, err := backup.Plan(ctx, src, from, to, func(uint32, bool) error { return nil })
	if err != nil {
		return err
	}
	w, err := backup.NewWriter(g.out, h)
	if err != nil {
		return err
	}
	prog := startProgress("backup "+to.FullName(), total)
	err = backup.Dump(ctx, src, from, to, w, prog.add)
	if err == nil {
		err = w.Close()
	}
	prog.finish(err == nil)
	return err
}

type clusterSource struct{ *client.Client }

func (c clusterSource) Owners(ctx context.Context, name string, off uint64, count uint32) ([]ids.VDIID, error) {
	var out []ids.VDIID
	err := c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIOwners, Name: name, Offset: off, Count: count}, &out)
	return out, err
}

// VDIRestoreCmd restores backups into a new VDI.
type VDIRestoreCmd struct {
	Name   string   `arg:"" help:"The VDI to create and restore into."`
	Files  []string `arg:"" name:"file" help:"A full backup, then its increments in order; - reads stdin."`
	Copies int      `help:"Replicas of its objects (default: the cluster's)."`
	Check  bool     `help:"Only read the files and check them (order, checksums); write nothing."`
}

// Help is the command's detailed help.
func (VDIRestoreCmd) Help() string {
	return `sheep vdi restore NAME FULL [INCREMENT...]

Creates VDI NAME (it must not exist) with the size of the first backup, which
must be a full one, then applies each increment in turn; each must start from
the snapshot the file before it ended at. The headers of all files are
checked before anything is written. If a file turns out to be damaged
halfway, NAME is left incomplete: delete it before trying again.

  sheep vdi restore disk1-copy disk1-mon.full disk1-tue.incr`
}

// restoreFile is one input of a restore.
type restoreFile struct {
	name string
	f    *os.File
	size int64 // -1 if unknown
	rd   *backup.Reader
}

// countReader counts what is read through it.
type countReader struct {
	r    io.Reader
	read func(int64)
}

func (c countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read(int64(n))
	return n, err
}

// Run restores.
func (c *VDIRestoreCmd) Run(g *Globals) error {
	if err := cluster.CheckName(c.Name); err != nil {
		return err
	}
	for _, f := range c.Files {
		if f == "-" && len(c.Files) > 1 {
			return errs.E(errs.Invalid, "- (stdin) can only be the one file of a restore")
		}
	}
	var read atomic.Int64
	var prog *progress
	count := func(n int64) {
		read.Add(n)
		prog.add(n)
	}
	files := make([]*restoreFile, len(c.Files))
	defer func() {
		for _, rf := range files {
			if rf != nil && rf.f != os.Stdin {
				rf.f.Close()
			}
		}
	}()
	var total int64
	for i, name := range c.Files {
		rf := &restoreFile{name: name, f: os.Stdin, size: -1}
		if name == "-" {
			rf.name = "stdin"
		} else {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			rf.f = f
			if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
				rf.size = st.Size()
			}
		}
		files[i] = rf
		rd, err := backup.NewReader(countReader{rf.f, count})
		if err != nil {
			return fmt.Errorf("%s: %w", rf.name, err)
		}
		rf.rd = rd
		if total >= 0 && rf.size >= 0 {
			total += rf.size
		} else {
			total = -1
		}
	}
	hs := make([]backup.Header, len(files))
	names := make([]string, len(files))
	for i, rf := range files {
		hs[i], names[i] = rf.rd.Header(), rf.name
	}
	if err := backup.CheckChain(names, hs); err != nil {
		return err
	}
	if c.Check {
		return c.check(g, files)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cl := g.client()
	defer cl.Close()
	var v proto.VDIInfo
	err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: c.Name}, &v)
	switch {
	case err == nil:
		return errs.E(errs.Exists, "VDI %q exists: restore into a new VDI (or delete %s first)", c.Name, c.Name)
	case !errs.Is(err, errs.NotFound):
		return err
	}
	if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: c.Name, Size: hs[0].Size, Copies: c.Copies}, &v); err != nil {
		return err
	}
	incomplete := func(err error) error {
		return fmt.Errorf("%w\nVDI %s is incomplete: delete it (sheep vdi delete %s) before restoring again", err, c.Name, c.Name)
	}
	if v, err = cl.Lock(ctx, c.Name); err != nil {
		return incomplete(err)
	}
	unlocked := false
	defer func() {
		if !unlocked {
			uctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = cl.Unlock(uctx, c.Name)
			cancel()
		}
	}()
	prog = startProgress("restore "+c.Name, total)
	prog.add(read.Load()) // the headers
	var st backup.Stats
	size := hs[0].Size
	for i, rf := range files {
		h := hs[i]
		if h.Size != size {
			if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: c.Name, Size: h.Size, Mount: cl.Mount()}, nil); err != nil {
				prog.finish(false)
				return incomplete(fmt.Errorf("resize %s to %d bytes for %s: %w", c.Name, h.Size, rf.name, err))
			}
			size = h.Size
		}
		if err := backup.Apply(ctx, cl, v.ID, rf.rd, i == 0, &st); err != nil {
			prog.finish(false)
			return incomplete(fmt.Errorf("%s: %w", rf.name, err))
		}
	}
	if err := cl.Flush(ctx, v.ID); err != nil {
		prog.finish(false)
		return incomplete(err)
	}
	unlocked = true
	if err := cl.Unlock(ctx, c.Name); err != nil {
		prog.finish(false)
		return err
	}
	prog.finish(true)
	if g.JSON {
		return g.printJSON(map[string]any{"vdi": c.Name, "size": size, "files": len(files), "to": hs[len(hs)-1].To.Name,
			"objects": st.Data, "holes": st.Holes, "bytes": read.Load()})
	}
	fmt.Fprintf(g.out, "restored %s (%s) to %s from %d file(s): %d objects written, %d discarded\n", c.Name,
		status.HumanBytes(int64(size)), hs[len(hs)-1].To.Name, len(files), st.Data, st.Holes)
	return nil
}

// check reads every record of every file, for --check.
func (c *VDIRestoreCmd) check(g *Globals, files []*restoreFile) error {
	for _, rf := range files {
		for {
			_, err := rf.rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("%s: %w", rf.name, err)
			}
		}
		h := rf.rd.Header()
		n, b := rf.rd.Counts()
		what := "full backup of " + h.To.Name
		if !h.Full() {
			what = "increment from " + h.From.Name + " to " + h.To.Name
		}
		fmt.Fprintf(g.out, "%s: intact %s (%s VDI): %d records, %s of data\n", rf.name, what,
			status.HumanBytes(int64(h.Size)), n, status.HumanBytes(int64(b)))
	}
	return nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress draws a progress line on stderr while stderr is a terminal.
// A nil *progress draws nothing.
type progress struct {
	what    string
	objects bool  // counts objects, not bytes
	total   int64 // -1: unknown
	done    atomic.Int64
	start   time.Time
	stop    chan struct{}
	ended   chan struct{}
}

// startProgress starts a progress line for what, of total bytes (-1:
// unknown), if stderr is a terminal; otherwise it returns nil.
func startProgress(what string, total int64) *progress {
	if !isTerminal(os.Stderr) {
		return nil
	}
	p := &progress{what: what, total: total, start: time.Now(), stop: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(p.ended)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.draw()
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

func (p *progress) add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

func (p *progress) draw() {
	done := p.done.Load()
	if p.objects {
		fmt.Fprintf(os.Stderr, "\r%s: %s of %s objects\x1b[K", p.what, status.Count(int(done)), status.Count(int(p.total)))
		return
	}
	el := time.Since(p.start).Seconds()
	rate := ""
	if el > 0 {
		rate = status.HumanBytes(int64(float64(done)/el)) + "/s"
	}
	line := fmt.Sprintf("%s: %s", p.what, status.HumanBytes(done))
	if p.total >= 0 {
		pct := 100
		if p.total > 0 {
			pct = int(done * 100 / p.total)
		}
		line += fmt.Sprintf(" / %s (%d%%)", status.HumanBytes(p.total), pct)
	}
	fmt.Fprintf(os.Stderr, "\r%s  %s\x1b[K", line, rate)
}

// finish stops the line; ok draws it a last time and ends it.
func (p *progress) finish(ok bool) {
	if p == nil {
		return
	}
	close(p.stop)
	<-p.ended
	if ok {
		p.draw()
	}
	fmt.Fprintln(os.Stderr)
}
