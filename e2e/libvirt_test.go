package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// libvirtHost is a libvirtd of its own, standing for one host: it runs in
// a mount namespace with its own /run/libvirt, /var/lib/libvirt and
// /etc/libvirt, and sees one sheepfs mount at /srv/sheepvm, so that a
// domain's disk has the same path on every "host" while each host reaches
// the cluster through a mount and a gateway of its own.
type libvirtHost struct {
	t    *testing.T
	name string
	dir  string
	uri  string
	cmd  *exec.Cmd
}

// libvirtHostScript sets the namespace up and runs libvirtd: $1 is the
// host's directory, $2 the sheepfs mount, $3 the host's UUID (libvirt
// refuses to migrate to a host with its own UUID), $4 the socket
// directory. qemu runs as root with no security driver, no cgroups and
// no namespaces of libvirt's, its output in $1/log. libvirt's qemu
// driver wants its compiled-in user (libvirt-qemu) to exist, which this
// machine need not have: the namespace gets its own /etc/passwd.
const libvirtHostScript = `set -eu
d=$1 mnt=$2 uuid=$3 sock=$4
mkdir -p $d/etc $d/log $sock
cat >$d/etc/libvirtd.conf <<C
unix_sock_dir = "$sock"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "$uuid"
log_outputs = "3:file:$d/libvirtd.log"
C
cat >$d/etc/qemu.conf <<C
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
C
cp /etc/passwd $d/passwd
cp /etc/group $d/group
grep -q '^libvirt-qemu:' $d/passwd || echo 'libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin' >>$d/passwd
grep -q '^libvirt-qemu:' $d/group || echo 'libvirt-qemu:x:64055:' >>$d/group
grep -q '^kvm:' $d/group || echo 'kvm:x:64056:' >>$d/group
mount --bind $d/passwd /etc/passwd
mount --bind $d/group /etc/group
for p in /run/libvirt /var/lib/libvirt /var/cache/libvirt; do
	mkdir -p $p
	mount -t tmpfs tmpfs $p
done
mkdir -p /etc/libvirt /var/log/libvirt /srv/sheepvm
mount --bind $d/etc /etc/libvirt
mount --bind $d/log /var/log/libvirt
mount --bind $mnt /srv/sheepvm
exec libvirtd --config /etc/libvirt/libvirtd.conf --pid-file $d/libvirtd.pid
`

// startLibvirtHost starts a libvirtd for mount m and waits until it
// answers.
func startLibvirtHost(t *testing.T, name, dir string, m *Mount, uuid string) *libvirtHost {
	t.Helper()
	// Unix socket paths are short (108 bytes): not under the test's directory.
	sock, err := os.MkdirTemp("", "sheepfs-lv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	h := &libvirtHost{t: t, name: name, dir: filepath.Join(dir, "libvirt-"+name),
		uri: "qemu:///system?socket=" + filepath.Join(sock, "libvirt-sock")}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(h.dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", libvirtHostScript, "libvirt", h.dir, m.Dir, uuid, sock)
	h.cmd.Stdout, h.cmd.Stderr = out, out
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("start libvirtd: %v", err)
	}
	out.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	deadline := time.Now().Add(readyTimeout)
	for {
		r := h.virsh(quickTimeout, "version")
		if r.Code == 0 {
			return h
		}
		select {
		case <-done:
			logTail(t, filepath.Join(h.dir, "out"), 20)
			logTail(t, filepath.Join(h.dir, "libvirtd.log"), 20)
			t.Fatalf("libvirtd %s exited", name)
		default:
		}
		if time.Now().After(deadline) {
			logTail(t, filepath.Join(h.dir, "libvirtd.log"), 20)
			t.Fatalf("libvirtd %s does not answer: %v", name, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// virsh runs virsh on the host.
func (h *libvirtHost) virsh(timeout time.Duration, args ...string) Result {
	return runCmd(timeout, nil, nil, "virsh", append([]string{"-c", h.uri}, args...)...)
}

// qemuLog is the end of the qemu log libvirt keeps for domain name.
func (h *libvirtHost) qemuLog(name string) string {
	b, _ := os.ReadFile(filepath.Join(h.dir, "log", "qemu", name+".log"))
	return trimOut(string(b))
}

// serialConsole collects the lines of a guest's serial port, which each
// qemu of the guest (one per host it runs on) connects to in turn, into a
// guest (for its wait and checks); lines written go to the newest qemu.
type serialConsole struct {
	ln   net.Listener
	path string
	g    *guest

	mu   sync.Mutex
	conn net.Conn // the newest qemu's
}

func newSerialConsole(t *testing.T, name string) *serialConsole {
	t.Helper()
	dir, err := os.MkdirTemp("", "sheepfs-serial-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &serialConsole{path: filepath.Join(dir, "console")}
	if s.ln, err = net.Listen("unix", s.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.ln.Close() })
	s.g = &guest{t: t, name: name, done: make(chan struct{})}
	s.g.cond = sync.NewCond(&s.g.mu)
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conn = c
			s.mu.Unlock()
			go func() {
				s.g.collect(c)
				c.Close()
			}()
		}
	}()
	return s
}

// send writes a line to the newest qemu's serial port.
func (s *serialConsole) send(t *testing.T, line string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		t.Fatal("no qemu on the serial console")
	}
	if _, err := s.conn.Write([]byte(line + "\n")); err != nil {
		t.Fatal(err)
	}
}

// libvirtDomain is the domain XML of the guest in phase, its disk vdi on
// the sheepfs mount every host sees at /srv/sheepvm, opened with cache
// mode cache, its serial port connected to console.
func libvirtDomain(name string, img guestImage, vdi, cache, phase, console string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=5 sheepfs.phase=%s</cmdline>
  </os>
  <features><acpi/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='%s' io='native' error_policy='report' rerror_policy='report'/>
      <source file='/srv/sheepvm/vdi/%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='unix'>
      <source mode='connect' path='%s'/>
    </serial>
  </devices>
</domain>
`, name, img.Kernel, img.Initrd, phase, cache, vdi, console)
}

// TestGuestMigrateWithLibvirt: live migration as libvirt does it. Two
// libvirtd (9.0, Debian's), each standing for a host with its own sheepfs
// mount and gateway node, and a domain whose disk is a VDI (cache='none',
// io='native', as for shared storage). The guest writes checksummed files
// while `virsh migrate --live --unsafe` moves it to the other host and
// back. libvirt knows no FUSE file system but GlusterFS's and Quobyte's as
// shared storage, so it refuses without --unsafe, naming shared storage:
// the test checks that too. Meanwhile a second domain on the other host
// with the same disk must fail to start with EBUSY, which libvirt shows.
// Then the guest stops and a verify boot (through the first mount) checks
// the file system and every file. No console line may show an I/O error.
// A guest that stops making progress while no request of it waits on
// either mount is a qemu hang, not sheepfs's: the guest runs once more on
// a new VDI (runAgainIfQemuStalls), and a second such stall fails.
func TestGuestMigrateWithLibvirt(t *testing.T) {
	requireEnv(t, "qemu-system-x86_64", "libvirtd", "virsh", "unshare", "apt-get", "apt-cache", "dpkg", "ldd", "mke2fs", "e2fsck")
	start := time.Now()
	img := buildGuest(t)
	c := NewCluster(t, 3, 3)
	n0, n1, n2 := c.Nodes[0].Addr(), c.Nodes[1].Addr(), c.Nodes[2].Addr()
	ma := c.Mount(n0, n1, n2)
	mb := c.Mount(n1, n2, n0)
	a := startLibvirtHost(t, "a", c.Dir, ma, "5fee9f05-0000-4000-8000-00000000000a")
	b := startLibvirtHost(t, "b", c.Dir, mb, "5fee9f05-0000-4000-8000-00000000000b")
	runAgainIfQemuStalls(t, func(try int) { migrateWithLibvirt(t, img, c.Dir, ma, mb, a, b, try, start) })
}

// migrateWithLibvirt is one run of TestGuestMigrateWithLibvirt's guest,
// on VDI and domain names of its own for each try.
func migrateWithLibvirt(t *testing.T, img guestImage, dir string, ma, mb *Mount, a, b *libvirtHost, try int, start time.Time) {
	vdi := fmt.Sprintf("lv%d", try)
	run(t, quickTimeout, "truncate", "-s", "256M", ma.VDI(vdi))
	name := fmt.Sprintf("sheepfs-e2e-%d-%d", os.Getpid(), try)
	con := newSerialConsole(t, "libvirt guest")
	con.g.stalled = func() string { return stalledOutsideSheepfs(t, vdi, ma, mb) }
	xml := filepath.Join(dir, fmt.Sprintf("domain-%d.xml", try))
	if err := os.WriteFile(xml, []byte(libvirtDomain(name, img, vdi, "none", "write", con.path)), 0o644); err != nil {
		t.Fatal(err)
	}
	destroy := func() {
		a.virsh(quickTimeout, "destroy", name)
		b.virsh(quickTimeout, "destroy", name)
	}
	t.Cleanup(destroy)
	defer func() {
		if r := recover(); r != nil {
			destroy() // a stalled guest, tried again at once
			panic(r)
		}
	}()
	if r := a.virsh(cmdTimeout, "create", xml); r.Code != 0 {
		t.Fatalf("virsh create: %v\nqemu log:\n%s", r, a.qemuLog(name))
	}
	wroteRe := regexp.MustCompile(`sheepfs-guest: wrote (\d+)$`)
	wrote := func(n int, timeout time.Duration) int {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			_, m := con.g.wait(wroteRe, time.Until(deadline))
			if k, _ := strconv.Atoi(m[1]); k >= n {
				return k
			}
		}
	}
	con.g.wait(regexp.MustCompile(`sheepfs-guest: writing$`), 5*time.Minute)
	n := wrote(10, 5*time.Minute)
	t.Logf("host a: the guest booted and wrote %d files in %v", n, time.Since(start).Round(time.Millisecond))

	// A second writer of the disk, on the other host, is refused.
	other := filepath.Join(dir, fmt.Sprintf("other-%d.xml", try))
	if err := os.WriteFile(other, []byte(libvirtDomain(name+"-other", img, vdi, "none", "write", con.path)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := b.virsh(cmdTimeout, "create", other); r.Code == 0 {
		b.virsh(quickTimeout, "destroy", name+"-other")
		t.Fatalf("a second domain with the same disk started on host b while the first runs on host a")
	} else if !strings.Contains(r.Stderr, "Device or resource busy") {
		t.Fatalf("a second domain with the same disk: want EBUSY in libvirt's error, have: %v", r)
	} else {
		t.Logf("a second writer on host b: %s", strings.Join(strings.Fields(r.Stderr), " "))
	}

	// Without --unsafe, libvirt refuses: it does not know sheepfs as shared storage.
	if r := a.virsh(cmdTimeout, "migrate", "--live", name, b.uri, "tcp://127.0.0.1"); r.Code == 0 || !strings.Contains(r.Stderr, "shared storage") {
		t.Fatalf("virsh migrate without --unsafe: want libvirt's refusal (shared storage), have: %v", r)
	}

	for i, hop := range []struct{ from, to *libvirtHost }{{a, b}, {b, a}} {
		at := time.Now()
		if r := hop.from.virsh(5*time.Minute, "migrate", "--live", "--unsafe", name, hop.to.uri, "tcp://127.0.0.1"); r.Code != 0 {
			t.Fatalf("virsh migrate from host %s to host %s: %v\nqemu log on %s:\n%s\nqemu log on %s:\n%s", hop.from.name, hop.to.name, r,
				hop.from.name, hop.from.qemuLog(name), hop.to.name, hop.to.qemuLog(name))
		}
		took := time.Since(at)
		if r := hop.to.virsh(quickTimeout, "domstate", name); r.Code != 0 || strings.TrimSpace(r.Stdout) != "running" {
			t.Fatalf("after migration %d the domain on host %s: %v\nqemu log on %s:\n%s\nqemu log on %s:\n%s", i+1, hop.to.name, r,
				hop.to.name, hop.to.qemuLog(name), hop.from.name, hop.from.qemuLog(name))
		}
		if r := hop.from.virsh(quickTimeout, "domstate", name); r.Code == 0 {
			t.Fatalf("after migration %d the domain is still on host %s: %s", i+1, hop.from.name, r.Stdout)
		}
		n = wrote(n+5, 5*time.Minute)
		t.Logf("migration %d, host %s to host %s: %v; the guest wrote on to %d files", i+1, hop.from.name, hop.to.name, took.Round(time.Millisecond), n)
	}

	con.send(t, "stop")
	_, done := con.g.wait(regexp.MustCompile(`sheepfs-guest: done (\d+)$`), 3*time.Minute)
	con.g.checkConsole()
	for deadline := time.Now().Add(time.Minute); a.virsh(quickTimeout, "domstate", name).Code == 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the guest powered off but its domain is still there")
		}
	}

	v := startGuest(t, "verify", img, ma.VDI(vdi), "none", "verify", false)
	_, m := v.wait(regexp.MustCompile(`sheepfs-guest: verified (\d+) files$`), 5*time.Minute)
	if m[1] != done[1] {
		t.Fatalf("the verify boot checked %s files; the guest wrote %s", m[1], done[1])
	}
	v.exited(time.Minute)
	v.checkConsole()
	t.Logf("verify: e2fsck clean, %s files intact; %v in all", m[1], time.Since(start).Round(time.Millisecond))
}

// runAgainIfQemuStalls runs attempt(1), and attempt(2) if the first
// stopped on a guest that stalled outside sheepfs (a guestStall: see
// stalledOutsideSheepfs). A qemu guest under TCG now and then hangs after
// a live migration, seen with a plain file as its disk too; a second
// stall fails the test.
func runAgainIfQemuStalls(t *testing.T, attempt func(try int)) {
	t.Helper()
	for try := 1; ; try++ {
		why := func() (why string) {
			defer func() {
				if r := recover(); r != nil {
					s, ok := r.(guestStall)
					if !ok {
						panic(r)
					}
					why = s.why
				}
			}()
			attempt(try)
			return ""
		}()
		if why == "" {
			return
		}
		if try == 2 {
			t.Fatalf("the guest stalled outside sheepfs a second time: %s", why)
		}
		t.Logf("try %d: the guest stalled outside sheepfs (%s); once more with a new guest and VDI", try, why)
	}
}

// stalledOutsideSheepfs tells why a guest whose disk is vdi, on one of
// mounts ms, that stopped making progress is stalled outside sheepfs, or
// returns "" if it cannot: in three looks a second apart no mount has a
// request the kernel sent it (or queued for it) unanswered, and the VDI
// reads through the first mount.
func stalledOutsideSheepfs(t *testing.T, vdi string, ms ...*Mount) string {
	for look := 0; look < 3; look++ {
		if look > 0 {
			time.Sleep(time.Second)
		}
		for _, m := range ms {
			n, err := fuseWaiting(m)
			if err != nil {
				t.Logf("FUSE requests waiting on %s: %v", m.Dir, err)
				return ""
			}
			if n > 0 {
				t.Logf("%d FUSE requests waiting on %s", n, m.Dir)
				return ""
			}
		}
	}
	if r := runCmd(quickTimeout, nil, nil, "dd", "if="+ms[0].VDI(vdi), "of=/dev/null", "bs=64k", "count=16", "iflag=direct"); r.Code != 0 {
		t.Logf("reading VDI %s through %s: %v", vdi, ms[0].Dir, r)
		return ""
	}
	return "no request of it was waiting on any sheepfs mount, and the VDI read"
}

var fusectlOnce sync.Once

// fuseWaiting is the number of requests of mount m's FUSE connection
// that the kernel has queued or sent to sheepfs and not had answered
// (fusectl's "waiting"; fusectl is mounted if it is not).
func fuseWaiting(m *Mount) (int, error) {
	const ctl = "/sys/fs/fuse/connections"
	fusectlOnce.Do(func() {
		if ents, err := os.ReadDir(ctl); err == nil && len(ents) == 0 {
			_ = exec.Command("mount", "-t", "fusectl", "fusectl", ctl).Run()
		}
	})
	// The connection is the mount's device minor, from mountinfo: a
	// stat of the mount point would wait on a sheepfs that does not answer.
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0, err
	}
	dev := ""
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == m.Dir {
			dev = f[2]
		}
	}
	_, minor, ok := strings.Cut(dev, ":")
	if !ok {
		return 0, fmt.Errorf("%s is not in /proc/self/mountinfo", m.Dir)
	}
	b, err := os.ReadFile(fmt.Sprintf("%s/%s/waiting", ctl, minor))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
