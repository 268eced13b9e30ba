package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A Linux guest for qemu made from Debian packages: the kernel that
// linux-image-amd64 points at and busybox-static, fetched with apt-get
// download and unpacked with dpkg -x into a cache directory (never
// installed on the host), plus mke2fs and e2fsck from the host's e2fsprogs
// with the libraries they load. Its /init runs one phase, chosen on the
// kernel command line, and reports on the serial console in lines that
// start with "sheepfs-guest:".

// guestWantModules are the modules the guest needs if the kernel has them
// as modules; their dependencies are added. ext4 and jbd2 find crc32c
// through the crypto API, which would ask modprobe for it: the guest has
// none, so the generic implementation is loaded up front.
var guestWantModules = []string{"virtio_pci", "virtio_blk", "crc32c_generic", "ext4"}

// guestBuildVersion is part of the cache key of the built guest: change
// it when buildGuestIn puts something else into the initramfs.
const guestBuildVersion = 1

// guestMaxFiles bounds how many files phase write makes if the host never
// tells it to stop (256 KiB at most each, on a 256 MiB disk).
const guestMaxFiles = 800

// guestInit is the guest's /init.
//
// Phase write makes an ext4 file system on /dev/vda and writes files of
// random data, 128 to 256 KiB each. After each file it syncs, appends the
// file's SHA-256 to the manifest, syncs again, drops the page cache and
// reads the file back from the disk, and prints "wrote N" (N files are
// safe). It stops when a line arrives on the serial port, unmounts and
// prints "done N".
//
// Phase verify checks the file system with e2fsck -fn, mounts it read-only
// and checks every file against the manifest: "verified N files".
//
// Every failure prints a line with "sheepfs-guest: ERROR" and powers off.
var guestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
say() { echo "sheepfs-guest: $*"; }
fail() { say "ERROR $*"; poweroff -f; exit 1; }
for m in $(cat /etc/guest-modules); do
	insmod /lib/modules/$m.ko || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do
	i=$((i+1)); [ $i -le 300 ] || fail "no /dev/vda"
	sleep 0.1
done
phase=
for a in $(cat /proc/cmdline); do
	case $a in sheepfs.phase=*) phase=${a#sheepfs.phase=} ;; esac
done
say "phase $phase"
case $phase in
write)
	/usr/local/sbin/mke2fs -q -t ext4 -F /dev/vda || fail "mke2fs"
	mount -t ext4 /dev/vda /mnt || fail "mount"
	(read line </dev/ttyS0; touch /tmp/stop) &
	say "writing"
	i=0
	while [ ! -e /tmp/stop ]; do
		[ $i -lt ` + fmt.Sprint(guestMaxFiles) + ` ] || fail "wrote $i files and was not told to stop"
		f=/mnt/f$i
		dd if=/dev/urandom of=$f bs=4k count=$((32 + i % 33)) 2>/tmp/dd || { cat /tmp/dd; fail "dd $f"; }
		sync || fail "sync after $f"
		sum=$(sha256sum $f) || fail "sha256sum $f"
		sum=${sum%% *}
		echo "$sum  f$i" >>/mnt/manifest || fail "manifest"
		sync || fail "sync of the manifest"
		echo 3 >/proc/sys/vm/drop_caches
		again=$(sha256sum $f) || fail "read back $f"
		[ "${again%% *}" = "$sum" ] || fail "$f reads back as ${again%% *}, wrote $sum"
		i=$((i+1))
		say "wrote $i"
	done
	umount /mnt || fail "umount"
	sync
	say "done $i"
	;;
verify)
	/usr/local/sbin/e2fsck -fn /dev/vda >/tmp/fsck 2>&1
	rc=$?
	[ $rc = 0 ] || { cat /tmp/fsck; fail "e2fsck -fn exit status $rc"; }
	mount -t ext4 -o ro /dev/vda /mnt || fail "mount"
	cd /mnt || fail "cd"
	n=$(wc -l <manifest) || fail "no manifest"
	[ "$n" -gt 0 ] || fail "empty manifest"
	files=$(ls | grep -c '^f[0-9]*$')
	[ "$files" = "$n" ] || fail "$files files but $n in the manifest"
	sha256sum -c manifest >/tmp/check 2>&1 || { grep -v ': OK$' /tmp/check; fail "checksums do not match"; }
	ok=$(grep -c ': OK$' /tmp/check)
	[ "$ok" = "$n" ] || fail "$ok of $n files match"
	cd /
	umount /mnt || fail "umount"
	say "verified $ok files"
	;;
*)
	fail "unknown phase '$phase'"
	;;
esac
poweroff -f
`

// guestCacheDir is where the built guest and the packages it is made of
// stay between runs ($SHEEP_GUEST_CACHE, default /var/cache/sheepfs-guest).
func guestCacheDir() string {
	if d := os.Getenv("SHEEP_GUEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/sheepfs-guest"
}

// guestImage is a kernel and an initramfs to boot.
type guestImage struct {
	Kernel, Initrd string
	About          string // the packages and modules it is made of
}

var guestBuilt struct {
	sync.Mutex
	img *guestImage
}

// buildGuest returns the guest's kernel and initramfs. They are built
// once for each version of the packages, of the host's tools and of the
// guest's /init, and kept in the cache directory.
func buildGuest(t *testing.T) guestImage {
	t.Helper()
	guestBuilt.Lock()
	defer guestBuilt.Unlock()
	if guestBuilt.img != nil {
		return *guestBuilt.img
	}
	dir := guestCacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for try := 0; ; try++ {
		img, err := buildGuestIn(t, dir)
		if err == nil {
			guestBuilt.img = &img
			return img
		}
		if try == 1 || aptUpdated {
			t.Fatalf("guest: %v", err)
		}
		// Stale package lists name versions the mirror no longer has.
		aptUpdate(t)
	}
}

// buildGuestIn is buildGuest in the cache directory dir. It returns an
// error if a package cannot be downloaded.
func buildGuestIn(t *testing.T, dir string) (guestImage, error) {
	t.Helper()
	kpkg, kver, bver := guestPackages(t)
	host := guestHostFiles(t)

	// The key of everything the guest is made of except the packages'
	// contents, which their versions stand for.
	h := sha256.New()
	fmt.Fprintf(h, "%d\n%s %s\nbusybox-static %s\n%q\n%s\n", guestBuildVersion, kpkg, kver, bver, guestWantModules, guestInit)
	for _, f := range host {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatalf("guest: %v", err)
		}
		fmt.Fprintf(h, "%s %d\n", f.name, len(b))
		h.Write(b)
	}
	out := filepath.Join(dir, "guest-"+hex.EncodeToString(h.Sum(nil))[:16])
	img := guestImage{Kernel: filepath.Join(out, "vmlinuz"), Initrd: filepath.Join(out, "initrd.gz")}
	if b, err := os.ReadFile(filepath.Join(out, "about")); err == nil {
		img.About = string(b)
		return img, nil
	}

	kdeb, err := debFile(t, dir, kpkg, kver)
	if err != nil {
		return img, err
	}
	bdeb, err := debFile(t, dir, "busybox-static", bver)
	if err != nil {
		return img, err
	}
	// Other packages and versions are of no more use.
	old, _ := filepath.Glob(filepath.Join(dir, "debs", "*.deb"))
	for _, o := range old {
		if o != kdeb && o != bdeb {
			os.Remove(o)
		}
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	kroot, broot := filepath.Join(tmp, "kernel"), filepath.Join(tmp, "busybox")
	run(t, 5*time.Minute, "dpkg", "-x", kdeb, kroot)
	run(t, cmdTimeout, "dpkg", "-x", bdeb, broot)
	kernels, _ := filepath.Glob(filepath.Join(kroot, "boot", "vmlinuz-*"))
	moddirs, _ := filepath.Glob(filepath.Join(kroot, "lib", "modules", "*"))
	if len(moddirs) == 0 {
		moddirs, _ = filepath.Glob(filepath.Join(kroot, "usr", "lib", "modules", "*"))
	}
	if len(kernels) != 1 || len(moddirs) != 1 {
		t.Fatalf("guest: %s has kernels %v and module directories %v; want one of each", kdeb, kernels, moddirs)
	}

	a := &cpioArchive{}
	for _, d := range []string{"bin", "dev", "etc", "lib", "mnt", "proc", "sys", "tmp"} {
		a.dir(d)
	}
	a.node("dev/console", 0o020600, 5, 1)
	a.file("init", 0o755, []byte(guestInit))
	a.hostFile(t, "bin/busybox", 0o755, firstExisting(t, filepath.Join(broot, "bin", "busybox"), filepath.Join(broot, "usr", "bin", "busybox")))
	var names []string
	for _, m := range guestModules(t, moddirs[0], guestWantModules) {
		a.file("lib/modules/"+m.name+".ko", 0o644, m.data)
		names = append(names, m.name)
	}
	a.file("etc/guest-modules", 0o644, []byte(strings.Join(names, "\n")+"\n"))
	for _, f := range host {
		a.hostFile(t, f.name, f.perm, f.from)
	}

	// Into place: a new directory, renamed to its name when complete.
	build := filepath.Join(tmp, "out")
	if err := os.Mkdir(build, 0o755); err != nil {
		t.Fatal(err)
	}
	about := fmt.Sprintf("%s %s, busybox-static %s, modules %s", kpkg, kver, bver, strings.Join(names, " "))
	if err := copyFile(kernels[0], filepath.Join(build, "vmlinuz")); err != nil {
		t.Fatalf("guest: %v", err)
	}
	if err := writeGzip(filepath.Join(build, "initrd.gz"), a.bytes()); err != nil {
		t.Fatalf("guest: %v", err)
	}
	if err := os.WriteFile(filepath.Join(build, "about"), []byte(about), 0o644); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(out)
	if err := os.Rename(build, out); err != nil {
		t.Fatal(err)
	}
	// Guests built from anything else are of no more use.
	old, _ = filepath.Glob(filepath.Join(dir, "guest-*"))
	for _, o := range old {
		if o != out {
			os.RemoveAll(o)
		}
	}
	img.About = about
	return img, nil
}

// guestHostFile is a file of the host that goes into the initramfs.
type guestHostFile struct {
	name, from string
	perm       uint32
}

// guestHostFiles lists mke2fs and e2fsck, the libraries they load and
// mke2fs's configuration. The programs go where busybox's applets of the
// same names are not: busybox sh runs its own applets before anything on
// PATH, so /init calls these by path.
func guestHostFiles(t *testing.T) []guestHostFile {
	t.Helper()
	var out []guestHostFile
	seen := map[string]bool{}
	for _, prog := range []string{"mke2fs", "e2fsck"} {
		path, err := exec.LookPath(prog)
		if err != nil {
			t.Fatalf("guest: %v", err)
		}
		out = append(out, guestHostFile{"usr/local/sbin/" + prog, path, 0o755})
		ldd := run(t, quickTimeout, "ldd", path).Stdout
		for _, lib := range regexp.MustCompile(`(?m)(/\S+)\s+\(0x`).FindAllStringSubmatch(ldd, -1) {
			if !seen[lib[1]] {
				seen[lib[1]] = true
				out = append(out, guestHostFile{strings.TrimPrefix(lib[1], "/"), lib[1], 0o755})
			}
		}
	}
	if _, err := os.Stat("/etc/mke2fs.conf"); err == nil {
		out = append(out, guestHostFile{"etc/mke2fs.conf", "/etc/mke2fs.conf", 0o644})
	}
	return out
}

// guestPackages returns the versioned kernel package that
// linux-image-amd64 depends on, its version and the version of
// busybox-static, as apt-get would download them (after apt-get update if
// apt does not know them).
func guestPackages(t *testing.T) (kpkg, kver, bver string) {
	t.Helper()
	for try := 0; ; try++ {
		out, err := aptVersions("linux-image-amd64", "busybox-static")
		if err == nil {
			kpkg, kver = out["linux-image-amd64.depends"], out["linux-image-amd64.depends.version"]
			if kver == "" {
				var more map[string]string
				if more, err = aptVersions(kpkg); err == nil {
					kver = more[kpkg]
				}
			}
			if err == nil {
				return kpkg, kver, out["busybox-static"]
			}
		}
		if try == 1 || aptUpdated {
			t.Fatalf("guest: %v", err)
		}
		aptUpdate(t)
	}
}

// aptVersions asks apt-cache show for the candidate version of each
// package: name -> version, and for a package that depends on a kernel
// image, name.depends and name.depends.version.
func aptVersions(pkgs ...string) (map[string]string, error) {
	r := runCmd(quickTimeout, nil, nil, "apt-cache", append([]string{"show", "--no-all-versions"}, pkgs...)...)
	if r.Code != 0 {
		return nil, fmt.Errorf("%v", r)
	}
	out := map[string]string{}
	for _, rec := range strings.Split(r.Stdout, "\n\n") {
		field := func(name string) string {
			m := regexp.MustCompile(`(?m)^` + name + `: (.*)$`).FindStringSubmatch(rec)
			if m == nil {
				return ""
			}
			return strings.TrimSpace(m[1])
		}
		pkg := field("Package")
		if pkg == "" {
			continue
		}
		out[pkg] = field("Version")
		if m := regexp.MustCompile(`(linux-image-[0-9]\S*)(?: \(= ([^)]+)\))?`).FindStringSubmatch(field("Depends")); m != nil {
			out[pkg+".depends"], out[pkg+".depends.version"] = m[1], m[2]
		}
	}
	for _, p := range pkgs {
		if out[p] == "" {
			return nil, fmt.Errorf("apt-cache show knows no version of %s", p)
		}
		if p == "linux-image-amd64" && out[p+".depends"] == "" {
			return nil, fmt.Errorf("apt-cache show: %s depends on no linux-image-*: %s", p, trimOut(r.Stdout))
		}
	}
	return out, nil
}

var aptUpdated bool

// aptUpdate runs apt-get update, once per test binary.
func aptUpdate(t *testing.T) {
	t.Helper()
	if aptUpdated {
		return
	}
	aptUpdated = true
	if r := runCmd(5*time.Minute, nil, nil, "apt-get", "update", "-qq"); r.Code != 0 {
		t.Logf("guest: apt-get update: %v", r)
	}
}

// debFile returns the path of version of the Debian package pkg in
// dir/debs, downloading it with apt-get download if it is not there. It
// returns an error if the download fails.
func debFile(t *testing.T, dir, pkg, version string) (string, error) {
	t.Helper()
	debs := filepath.Join(dir, "debs")
	path := filepath.Join(debs, pkg+"_"+strings.ReplaceAll(version, ":", "%3a")+".deb")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		t.Fatal(err)
	}
	dl, err := os.MkdirTemp(debs, "download-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dl)
	r := runCmd(10*time.Minute, nil, nil, "sh", "-c", "cd "+q(dl)+" && apt-get download -qq "+q(pkg+"="+version))
	if r.Code != 0 {
		return "", fmt.Errorf("%v", r)
	}
	got, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(got) != 1 {
		t.Fatalf("guest: apt-get download %s left %v", pkg, got)
	}
	if err := os.Rename(got[0], path); err != nil {
		t.Fatal(err)
	}
	return path, nil
}

// copyFile copies the file from to a new file to.
func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

func firstExisting(t *testing.T, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("guest: none of %v exists", paths)
	return ""
}

// guestModule is a kernel module to load, uncompressed.
type guestModule struct {
	name string
	data []byte
}

// guestModules returns the modules of want that the kernel in moddir does
// not have built in, and the modules they depend on, in an order that
// loads each after its dependencies.
func guestModules(t *testing.T, moddir string, want []string) []guestModule {
	t.Helper()
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	modName := func(p string) (string, bool) {
		b := filepath.Base(p)
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
			if strings.HasSuffix(b, ext) {
				return norm(strings.TrimSuffix(b, ext)), true
			}
		}
		return "", false
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(moddir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			if n, ok := modName(l); ok {
				builtin[n] = true
			}
		}
	}
	paths := map[string]string{}
	err := filepath.WalkDir(filepath.Join(moddir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n, ok := modName(p); ok && !d.IsDir() {
			paths[n] = p
		}
		return nil
	})
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	var out []guestModule
	state := map[string]int{} // 1 loading, 2 done
	var add func(name, by string)
	add = func(name, by string) {
		name = norm(name)
		if state[name] == 2 || builtin[name] {
			return
		}
		if state[name] == 1 {
			t.Fatalf("guest: modules depend on each other in a cycle through %s", name)
		}
		p, ok := paths[name]
		if !ok {
			t.Fatalf("guest: module %s (wanted by %s) is neither built in nor under %s", name, by, moddir)
		}
		state[name] = 1
		data := moduleBytes(t, p)
		deps, err := moduleDepends(data)
		if err != nil {
			t.Fatalf("guest: %s: %v", p, err)
		}
		for _, d := range deps {
			add(d, name)
		}
		state[name] = 2
		out = append(out, guestModule{name: name, data: data})
	}
	for _, w := range want {
		add(w, "the guest")
	}
	return out
}

// moduleBytes reads a module file, decompressing it with the matching
// tool (busybox insmod wants it uncompressed).
func moduleBytes(t *testing.T, p string) []byte {
	t.Helper()
	var tool string
	switch {
	case strings.HasSuffix(p, ".xz"):
		tool = "xz"
	case strings.HasSuffix(p, ".zst"):
		tool = "zstd"
	case strings.HasSuffix(p, ".gz"):
		tool = "gzip"
	default:
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("guest: %v", err)
		}
		return b
	}
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("guest: %s is compressed and %s is not installed", p, tool)
	}
	r := runCmd(cmdTimeout, nil, nil, tool, "-dc", p)
	if r.Code != 0 {
		t.Fatalf("guest: %v", r)
	}
	return []byte(r.Stdout)
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// cpioArchive builds an archive in the "newc" cpio format that the kernel
// unpacks as an initramfs. Entries keep the order they are added in, after
// their parent directories.
type cpioArchive struct {
	buf  bytes.Buffer
	ino  int
	seen map[string]bool
}

func (a *cpioArchive) header(name string, mode uint32, size, major, minor int) {
	a.ino++
	fmt.Fprintf(&a.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		a.ino, mode, 0, 0, 1, 0, size, 0, 0, major, minor, len(name)+1, 0)
	a.buf.WriteString(name)
	a.buf.WriteByte(0)
	a.pad()
}

func (a *cpioArchive) pad() {
	for a.buf.Len()%4 != 0 {
		a.buf.WriteByte(0)
	}
}

func (a *cpioArchive) dir(name string) {
	if a.seen == nil {
		a.seen = map[string]bool{}
	}
	if name == "." || name == "/" || a.seen[name] {
		return
	}
	a.dir(filepath.Dir(name))
	a.seen[name] = true
	a.header(name, 0o040755, 0, 0, 0)
}

func (a *cpioArchive) node(name string, mode uint32, major, minor int) {
	a.dir(filepath.Dir(name))
	a.header(name, mode, 0, major, minor)
}

func (a *cpioArchive) file(name string, perm uint32, data []byte) {
	a.dir(filepath.Dir(name))
	if a.seen[name] {
		return
	}
	a.seen[name] = true
	a.header(name, 0o100000|perm, len(data), 0, 0)
	a.buf.Write(data)
	a.pad()
}

// hostFile adds the host's file from (following symbolic links) as name.
func (a *cpioArchive) hostFile(t *testing.T, name string, perm uint32, from string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	a.file(name, perm, b)
}

func (a *cpioArchive) bytes() []byte {
	b := &cpioArchive{ino: a.ino}
	b.buf.Write(a.buf.Bytes())
	b.header("TRAILER!!!", 0, 0, 0, 0)
	return b.buf.Bytes()
}

// writeGzip writes b gzipped to path, atomically.
func writeGzip(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".initrd-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	zw := gzip.NewWriter(f)
	if _, err := zw.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// ---------------------------------------------------------------------------
// Running the guest.

// guestErrors are console lines (of the guest's kernel, its init, or
// qemu itself) that fail the test.
var guestErrors = regexp.MustCompile(`sheepfs-guest: ERROR|I/O error|IO error|EXT4-fs error|EXT4-fs warning|EXT4-fs \(vda\): (Remounting|This should not happen)|Buffer I/O|blk_update_request|critical (medium|target) error|Aborting journal|JBD2: .*(error|failed)|blocked for more than|Kernel panic|Oops|BUG:|qemu-system-x86_64: `)

// consoleLine is a line of a guest's console with the time it arrived.
type consoleLine struct {
	at   time.Time
	text string
}

// guest is one qemu process running the guest.
type guest struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	qmp   string // QMP socket
	done  chan struct{}

	// stalled, if set, is asked when a wait times out. A non-empty
	// answer (why the stall is none of sheepfs's doing) makes the wait
	// panic with a guestStall instead of failing the test, for a caller
	// that runs the guest again (see runAgainIfQemuStalls).
	stalled func() string

	mu    sync.Mutex
	cond  *sync.Cond
	lines []consoleLine
	pos   int // lines before it were looked at by wait
}

// guestStall is the panic of a wait that timed out on a guest stalled
// outside sheepfs (guest.stalled).
type guestStall struct{ why string }

// startGuest starts qemu with the guest in phase, its disk at disk opened
// with the cache mode cache; incoming makes it wait for a migration
// (-incoming defer: see migrateTo).
func startGuest(t *testing.T, name string, img guestImage, disk, cache, phase string, incoming bool) *guest {
	t.Helper()
	// A short socket path with nothing in it that qemu's option parser
	// would take for a separator (t.TempDir's are named after the test).
	sock, err := os.MkdirTemp("", "sheepfs-qmp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	g := &guest{t: t, name: name, qmp: filepath.Join(sock, "qmp"), done: make(chan struct{})}
	g.cond = sync.NewCond(&g.mu)
	args := []string{"-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", img.Initrd,
		"-append", "console=ttyS0 panic=-1 loglevel=5 sheepfs.phase=" + phase,
		// -drive opens the file with auto-read-only=on: read-only while
		// nothing writes, as on a migration's destination until the
		// guest runs there. Errors go to the guest (the default stops
		// the guest on ENOSPC, which would look like a hang).
		"-drive", "file=" + strings.ReplaceAll(disk, ",", ",,") + ",format=raw,if=virtio,cache=" + cache + ",werror=report,rerror=report",
		"-serial", "stdio", "-monitor", "none", "-qmp", "unix:" + g.qmp + ",server=on,wait=off"}
	if incoming {
		args = append(args, "-incoming", "defer")
	}
	g.cmd = exec.Command("qemu-system-x86_64", args...)
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if g.stdin, err = g.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	g.cmd.Stdout, g.cmd.Stderr = pw, pw
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	pw.Close()
	t.Cleanup(func() {
		g.cmd.Process.Kill()
		<-g.done
	})
	go func() {
		g.collect(pr)
		pr.Close()
		g.cmd.Wait()
		g.mu.Lock()
		close(g.done)
		g.cond.Broadcast()
		g.mu.Unlock()
	}()
	return g
}

// collect adds the console lines read from r until it ends.
func (g *guest) collect(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		g.mu.Lock()
		g.lines = append(g.lines, consoleLine{time.Now(), line})
		g.cond.Broadcast()
		g.mu.Unlock()
	}
}

// wait waits until a console line after those it looked at before matches
// re, and returns the line's time and submatches. It fails the test on a
// line of guestErrors, if qemu exits, and after timeout.
func (g *guest) wait(re *regexp.Regexp, timeout time.Duration) (time.Time, []string) {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	})
	defer timer.Stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		for ; g.pos < len(g.lines); g.pos++ {
			l := g.lines[g.pos]
			if guestErrors.MatchString(l.text) {
				g.fail("%s: %s", g.name, l.text)
			}
			if m := re.FindStringSubmatch(l.text); m != nil {
				g.pos++
				return l.at, m
			}
		}
		select {
		case <-g.done:
			g.fail("%s: qemu exited (%v) before printing %q", g.name, g.cmd.ProcessState, re)
		default:
		}
		if time.Now().After(deadline) {
			if g.stalled != nil {
				if why := g.stalled(); why != "" {
					g.t.Logf("%s did not print %q within %v: %s\nlast lines of its console:\n%s", g.name, re, timeout, why, g.tail())
					panic(guestStall{why})
				}
			}
			g.fail("%s did not print %q within %v", g.name, re, timeout)
		}
		g.cond.Wait()
	}
}

// fail fails the test with the end of the console. g.mu is held.
func (g *guest) fail(format string, args ...any) {
	g.t.Helper()
	g.t.Fatalf(format+"\nlast lines of the console of %s:\n%s", append(args, g.name, g.tail())...)
}

// tail is the last 60 lines of the console; g.mu is held.
func (g *guest) tail() string {
	from := max(0, len(g.lines)-60)
	var tail []string
	for _, l := range g.lines[from:] {
		tail = append(tail, l.at.Format("15:04:05.000")+" "+l.text)
	}
	return strings.Join(tail, "\n")
}

// checkConsole fails the test if any console line so far is an error.
func (g *guest) checkConsole() {
	g.t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.lines {
		if guestErrors.MatchString(l.text) {
			g.fail("%s: %s", g.name, l.text)
		}
	}
}

// times returns the arrival times of the console lines that match re.
func (g *guest) times(re *regexp.Regexp) []time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []time.Time
	for _, l := range g.lines {
		if re.MatchString(l.text) {
			out = append(out, l.at)
		}
	}
	return out
}

// exited waits for qemu to exit, and fails the test unless it exits 0
// (the guest powered off) within timeout.
func (g *guest) exited(timeout time.Duration) {
	g.t.Helper()
	select {
	case <-g.done:
	case <-time.After(timeout):
		g.t.Fatalf("%s: qemu did not exit within %v", g.name, timeout)
	}
	if !g.cmd.ProcessState.Success() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.fail("%s: qemu: %v", g.name, g.cmd.ProcessState)
	}
}

// qmpCall runs one QMP command on g's monitor and returns its "return" value.
func (g *guest) qmpCall(command string, args any) json.RawMessage {
	g.t.Helper()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if c, err = net.Dial("unix", g.qmp); err == nil {
			break
		}
		select {
		case <-g.done:
			g.mu.Lock()
			defer g.mu.Unlock()
			g.fail("%s: qemu exited (%v) before QMP %s", g.name, g.cmd.ProcessState, command)
		default:
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s: QMP: %v", g.name, err)
		}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	dec := json.NewDecoder(c)
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if err := dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		g.t.Fatalf("%s: QMP greeting: %v", g.name, err)
	}
	call := func(cmd string, args any) json.RawMessage {
		req := map[string]any{"execute": cmd}
		if args != nil {
			req["arguments"] = args
		}
		b, err := json.Marshal(req)
		if err != nil {
			g.t.Fatal(err)
		}
		if _, err := c.Write(append(b, '\n')); err != nil {
			g.t.Fatalf("%s: QMP %s: %v", g.name, cmd, err)
		}
		for {
			var resp struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Class string `json:"class"`
					Desc  string `json:"desc"`
				} `json:"error"`
				Event string `json:"event"`
			}
			if err := dec.Decode(&resp); err != nil {
				if cmd == "quit" {
					return nil // qemu may close the socket first; exited tells
				}
				g.t.Fatalf("%s: QMP %s: %v", g.name, cmd, err)
			}
			switch {
			case resp.Event != "":
				continue
			case resp.Error != nil:
				g.t.Fatalf("%s: QMP %s: %s: %s", g.name, cmd, resp.Error.Class, resp.Error.Desc)
			}
			return resp.Return
		}
	}
	call("qmp_capabilities", nil)
	return call(command, args)
}

// status is the run state qemu reports (running, inmigrate, postmigrate ...).
func (g *guest) status() string {
	g.t.Helper()
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(g.qmpCall("query-status", nil), &st); err != nil {
		g.t.Fatalf("%s: query-status: %v", g.name, err)
	}
	return st.Status
}

// migrateTo migrates the running guest g live to dst (started with
// incoming), and returns how long it took and the downtime qemu reports.
func (g *guest) migrateTo(dst *guest, timeout time.Duration) (took, downtime time.Duration) {
	g.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dst.qmpCall("migrate-incoming", map[string]any{"uri": "tcp:" + addr})
	start := time.Now()
	g.qmpCall("migrate", map[string]any{"uri": "tcp:" + addr})
	for {
		var st struct {
			Status   string `json:"status"`
			Downtime int64  `json:"downtime"`
			Error    string `json:"error-desc"`
		}
		if err := json.Unmarshal(g.qmpCall("query-migrate", nil), &st); err != nil {
			g.t.Fatalf("%s: query-migrate: %v", g.name, err)
		}
		switch st.Status {
		case "completed":
			return time.Since(start), time.Duration(st.Downtime) * time.Millisecond
		case "failed", "cancelled":
			g.t.Fatalf("migration from %s to %s %s: %s", g.name, dst.name, st.Status, st.Error)
		}
		if time.Since(start) > timeout {
			g.t.Fatalf("migration from %s to %s still %q after %v", g.name, dst.name, st.Status, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sortedDurations returns d sorted.
func sortedDurations(d []time.Duration) []time.Duration {
	out := append([]time.Duration(nil), d...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
