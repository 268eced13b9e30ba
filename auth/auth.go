// Package auth is how sheepfs knows who it talks to. A cluster has one
// secret, the cluster key (`sheep keygen`); from it every node derives the
// same identities:
//
//   - a peer identity (an Ed25519 key and a self-signed certificate) that
//     daemons present to each other and to clients, on the data port and
//     on raft, over TLS 1.3 with certificates required on both sides;
//   - a client identity that sheepfs and the CLI present: a daemon serves
//     a client connection's client requests and nothing else (no replica
//     operations, no forwarded cluster commands);
//   - the gossip keys of memberlist, which encrypts and authenticates
//     every gossip packet and stream with them.
//
// Certificates are pinned, not chained: a connection is accepted when the
// other side's certificate key is one this side derives itself, so there
// is no CA to run or expire. A client key (`sheep keygen --client`) holds
// only the client identity and the peer identity's public half: a machine
// that only mounts VDIs can be given one, and cannot act as a peer.
//
// A key file holds one key per line; the first is the one presented, all
// of them are accepted (room for rolling a new key through a cluster).
package auth

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// Role is what an authenticated connection may do.
type Role int

const (
	// RoleNone: not authenticated.
	RoleNone Role = iota
	// RoleClient: client requests only (sheepfs, the CLI).
	RoleClient
	// RolePeer: another daemon of the cluster, or an admin holding the
	// cluster key.
	RolePeer
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RolePeer:
		return "peer"
	}
	return "none"
}

// DefaultFile is where daemons, sheepfs and the CLI look for the key when
// neither --key-file nor $SHEEP_KEY_FILE names one.
const DefaultFile = "/etc/sheepfs/cluster.key"

// EnvFile names the environment variable with the key file's path.
const EnvFile = "SHEEP_KEY_FILE"

const (
	clusterPrefix = "cluster-key:"
	clientPrefix  = "client-key:"
	secretSize    = 32
)

// Key is one cluster key, or the client's part of one.
type Key struct {
	secret     []byte // the cluster secret; nil in a client key
	clientSeed []byte
	peerPub    ed25519.PublicKey
	clientPub  ed25519.PublicKey
	peerPriv   ed25519.PrivateKey // nil in a client key

	certOnce   sync.Once
	peerCert   *tls.Certificate
	clientCert *tls.Certificate
}

// derive returns the n bytes of the cluster secret's subkey for purpose.
func derive(secret []byte, purpose string, n int) []byte {
	b, err := hkdf.Key(sha256.New, secret, nil, "sheepfs "+purpose, n)
	if err != nil {
		panic(err) // only for n beyond 255 hash lengths
	}
	return b
}

func fromSecret(secret []byte) *Key {
	k := &Key{secret: secret, clientSeed: derive(secret, "client identity", ed25519.SeedSize)}
	k.peerPriv = ed25519.NewKeyFromSeed(derive(secret, "peer identity", ed25519.SeedSize))
	k.peerPub = k.peerPriv.Public().(ed25519.PublicKey)
	k.clientPub = ed25519.NewKeyFromSeed(k.clientSeed).Public().(ed25519.PublicKey)
	return k
}

func fromClient(seed []byte, peerPub []byte) *Key {
	return &Key{clientSeed: seed, peerPub: ed25519.PublicKey(peerPub),
		clientPub: ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)}
}

// Generate makes a new cluster key from the system's random source.
func Generate() (*Key, error) {
	secret := make([]byte, secretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, errs.E(errs.IO, "random key: %w", err)
	}
	return fromSecret(secret), nil
}

// IsCluster reports whether k is a whole cluster key (not a client key).
func (k *Key) IsCluster() bool { return k.secret != nil }

// Client returns the client key of k: what a machine that only mounts
// VDIs or runs admin commands needs.
func (k *Key) Client() *Key { return fromClient(k.clientSeed, k.peerPub) }

// ID is a short fingerprint of the key (the same for a cluster key and its
// client key), safe to print.
func (k *Key) ID() string {
	h := sha256.Sum256(k.peerPub)
	return fmt.Sprintf("%x", h[:6])
}

// Line is the key as one line of a key file.
func (k *Key) Line() string {
	if k.secret != nil {
		return clusterPrefix + base64.StdEncoding.EncodeToString(k.secret)
	}
	return clientPrefix + base64.StdEncoding.EncodeToString(append(append([]byte(nil), k.clientSeed...), k.peerPub...))
}

// File is the text of a key file holding keys, first the one in use.
func File(keys ...*Key) []byte {
	var b bytes.Buffer
	b.WriteString("# sheepfs key: keep it secret (mode 0600). See `sheep keygen --help`.\n")
	for _, k := range keys {
		b.WriteString(k.Line())
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Keys are the keys of a key file: the first is presented, all are
// accepted. They change while in use: Set (a key roll on a daemon) and
// Reload (a client whose key file was changed) take effect for the next
// handshake. Safe for concurrent use.
type Keys struct {
	mu       sync.Mutex
	list     []*Key
	path     string
	stamp    fileStamp
	checked  time.Time
	onChange []func()
}

// fileStamp is what tells that a key file changed.
type fileStamp struct {
	mod  time.Time
	size int64
}

// maxKeys bounds the keys of one file.
const maxKeys = 8

// Parse reads a key file's text.
func Parse(b []byte) (*Keys, error) {
	list, err := parseList(b)
	if err != nil {
		return nil, err
	}
	return &Keys{list: list}, nil
}

func parseList(b []byte) ([]*Key, error) {
	var list []*Key
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		var k *Key
		switch {
		case strings.HasPrefix(s, clusterPrefix):
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(s, clusterPrefix)))
			if err != nil || len(raw) != secretSize {
				return nil, errs.E(errs.Invalid, "key file line %d: not a cluster key", line)
			}
			k = fromSecret(raw)
		case strings.HasPrefix(s, clientPrefix):
			raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(s, clientPrefix)))
			if err != nil || len(raw) != ed25519.SeedSize+ed25519.PublicKeySize {
				return nil, errs.E(errs.Invalid, "key file line %d: not a client key", line)
			}
			k = fromClient(raw[:ed25519.SeedSize], raw[ed25519.SeedSize:])
		default:
			return nil, errs.E(errs.Invalid, "key file line %d: neither %q nor %q", line, clusterPrefix, clientPrefix)
		}
		list = append(list, k)
		if len(list) > maxKeys {
			return nil, errs.E(errs.Invalid, "key file holds more than %d keys", maxKeys)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, errs.E(errs.Invalid, "key file: %w", err)
	}
	if len(list) == 0 {
		return nil, errs.E(errs.Invalid, "key file holds no key")
	}
	return list, nil
}

// New returns the keys ks, first the one in use.
func New(keys ...*Key) *Keys { return &Keys{list: keys} }

// ParseLine reads one key, as Line writes it.
func ParseLine(line string) (*Key, error) {
	list, err := parseList([]byte(line))
	if err != nil {
		return nil, err
	}
	if len(list) != 1 {
		return nil, errs.E(errs.Invalid, "%d keys where one was expected", len(list))
	}
	return list[0], nil
}

// Path finds the key file: flag if set, else $SHEEP_KEY_FILE, else
// DefaultFile.
func Path(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv(EnvFile); p != "" {
		return p
	}
	return DefaultFile
}

// Load reads the key file that Path(flag) names.
func Load(flag string) (*Keys, error) {
	p := Path(flag)
	b, err := os.ReadFile(p)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, errs.E(errs.NotFound, "no cluster key at %s: make one with `sheep keygen > %s` (mode 0600) and give every node and client the same one, via --key-file or $%s", p, p, EnvFile)
		}
		return nil, errs.E(errs.IO, "read key file: %w", err)
	}
	ks, err := Parse(b)
	if err != nil {
		return nil, errs.E(errs.Invalid, "%s: %w", p, err)
	}
	ks.path = p
	ks.stamp, _ = stampOf(p)
	ks.checked = time.Now()
	return ks, nil
}

func stampOf(path string) (fileStamp, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: st.ModTime(), size: st.Size()}, nil
}

// reloadEvery bounds how often Reload looks at the key file.
const reloadEvery = time.Second

// Reload reads the key file again if it changed since it was read (looked
// at most once a second): a client given a new key file while it runs
// uses it from its next connection. A file that no longer parses is
// ignored (the keys stay), so a half-edited file breaks nothing.
func (ks *Keys) Reload() {
	ks.mu.Lock()
	if ks.path == "" || time.Since(ks.checked) < reloadEvery {
		ks.mu.Unlock()
		return
	}
	ks.checked = time.Now()
	path, old := ks.path, ks.stamp
	ks.mu.Unlock()
	st, err := stampOf(path)
	if err != nil || st == old {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	list, err := parseList(b)
	if err != nil {
		return
	}
	ks.mu.Lock()
	ks.stamp = st
	ks.mu.Unlock()
	ks.Set(list)
}

// Set replaces the keys, first the one in use, and tells those that asked
// (OnChange).
func (ks *Keys) Set(list []*Key) {
	ks.mu.Lock()
	ks.list = slices.Clone(list)
	fns := slices.Clone(ks.onChange)
	ks.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// OnChange registers f to run after every Set.
func (ks *Keys) OnChange(f func()) {
	ks.mu.Lock()
	ks.onChange = append(ks.onChange, f)
	ks.mu.Unlock()
}

// Save writes the keys to the file they came from, atomically and
// readable by its owner only.
func (ks *Keys) Save() error {
	ks.mu.Lock()
	path, list := ks.path, slices.Clone(ks.list)
	ks.mu.Unlock()
	if path == "" {
		return errs.E(errs.Invalid, "the keys came from no file")
	}
	// Durably: a node that loses power mid-roll must come back with the
	// old or the new file, never an empty one.
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return errs.E(errs.IO, "write key file: %w", err)
	}
	_, err = f.Write(File(list...))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		if d, derr := os.Open(filepath.Dir(path)); derr == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		os.Remove(tmp)
		return errs.E(errs.IO, "write key file: %w", err)
	}
	st, _ := stampOf(path)
	ks.mu.Lock()
	ks.stamp = st
	ks.mu.Unlock()
	return nil
}

// Source is the file the keys came from ("" if none).
func (ks *Keys) Source() string {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.path
}

func (ks *Keys) snapshot() []*Key {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.list
}

// Current is the key in use.
func (ks *Keys) Current() *Key { return ks.snapshot()[0] }

// All are the keys, first the one in use.
func (ks *Keys) All() []*Key { return slices.Clone(ks.snapshot()) }

// IsCluster reports whether the key in use is a whole cluster key, which a
// daemon needs.
func (ks *Keys) IsCluster() bool { return ks.Current().IsCluster() }

// Gossip returns memberlist's keys, the one in use first (nil for a client
// key, which does not gossip).
func (ks *Keys) Gossip() [][]byte {
	var out [][]byte
	for _, k := range ks.snapshot() {
		if k.secret != nil {
			out = append(out, derive(k.secret, "gossip", 32))
		}
	}
	return out
}

// Discovery returns what LAN discovery needs of the key in use: a cluster
// ID that nodes advertise (safe to show: it does not give the key) and the
// key that authenticates discovery messages. nil for a client key.
func (ks *Keys) Discovery() (id, mac []byte) {
	k := ks.Current()
	if k.secret == nil {
		return nil, nil
	}
	return derive(k.secret, "discovery id", 16), derive(k.secret, "discovery mac", 32)
}

// cert makes the self-signed certificate of an identity. Its fields do not
// matter (keys are pinned); Ed25519 signatures are deterministic, so the
// same key always gives the same certificate.
func cert(priv ed25519.PrivateKey, name string) tls.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		panic(err) // cannot fail for a well-formed template and key
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
}

// leafKey is the Ed25519 key of a certificate chain's leaf (nil if it has
// none): what a pinned identity is recognised by.
func leafKey(raw [][]byte) ed25519.PublicKey {
	if len(raw) == 0 {
		return nil
	}
	c, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return nil
	}
	pub, _ := c.PublicKey.(ed25519.PublicKey)
	return pub
}

// roleOf returns the role that public key pub proves under keys ks, and
// for a peer, the key it belongs to.
func (ks *Keys) roleOf(pub ed25519.PublicKey) (Role, *Key) {
	if pub == nil {
		return RoleNone, nil
	}
	list := ks.snapshot()
	for _, k := range list {
		if pub.Equal(k.peerPub) {
			return RolePeer, k
		}
	}
	for _, k := range list {
		if pub.Equal(k.clientPub) {
			return RoleClient, nil
		}
	}
	return RoleNone, nil
}

// RoleOf is the role of an established TLS connection's other side.
func (ks *Keys) RoleOf(cs tls.ConnectionState) Role {
	if len(cs.PeerCertificates) == 0 {
		return RoleNone
	}
	pub, _ := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	r, _ := ks.roleOf(pub)
	return r
}

// errNotAuthorized is what the other side of a refused handshake is told
// (as a TLS alert) and what this side logs.
func errNotAuthorized(what string) error {
	return errs.E(errs.Denied, "%s does not hold this cluster's key (a key file of another cluster?)", what)
}

// ServerConfig is the TLS configuration of a daemon's listener: it
// presents the peer identity and admits connections presenting an
// identity of at least role min.
// The identity presented is that of the key in use at each handshake.
func (ks *Keys) ServerConfig(min Role) (*tls.Config, error) {
	if !ks.IsCluster() {
		return nil, errs.E(errs.Invalid, "a daemon needs the cluster key, not a client key")
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Full records from the first byte: connections live long
		// and carry megabytes.
		DynamicRecordSizingDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return ks.Current().identity(RolePeer)
		},
		ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if r, _ := ks.roleOf(leafKey(raw)); r < min {
				return errNotAuthorized("the connecting side")
			}
			return nil
		},
	}, nil
}

// dialConfig is the TLS configuration of one connection to a daemon,
// presenting the identity of role as (RolePeer needs the cluster key). It
// accepts only a daemon holding one of ks, and answers with the identity
// of the key that daemon presented: during a key roll, whichever of the
// old and the new key a daemon uses, a side holding both gets in.
func (ks *Keys) dialConfig(as Role) (*tls.Config, error) {
	if as == RolePeer && !ks.IsCluster() {
		return nil, errs.E(errs.Denied, "this needs the cluster key; %s holds a client key", ks.describe())
	}
	var matched *Key
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		DynamicRecordSizingDisabled: true,
		InsecureSkipVerify:          true, // the daemon's key is pinned below instead
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if _, matched = ks.roleOf(leafKey(raw)); matched == nil {
				return errNotAuthorized("the daemon")
			}
			return nil
		},
		// TLS 1.3 asks for the client's certificate after the server's
		// was verified.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			k := matched
			if k == nil || (as == RolePeer && !k.IsCluster()) {
				k = ks.Current()
			}
			return k.identity(as)
		},
	}, nil
}

func (ks *Keys) describe() string {
	if p := ks.Source(); p != "" {
		return p
	}
	return "the key given"
}

// identity is k's certificate for role as, made once.
func (k *Key) identity(as Role) (*tls.Certificate, error) {
	k.certOnce.Do(func() {
		if k.peerPriv != nil {
			c := cert(k.peerPriv, "sheepfs peer")
			k.peerCert = &c
		}
		c := cert(ed25519.NewKeyFromSeed(k.clientSeed), "sheepfs client")
		k.clientCert = &c
	})
	if as == RolePeer {
		if k.peerCert == nil {
			return nil, errs.E(errs.Denied, "this needs the cluster key, not a client key")
		}
		return k.peerCert, nil
	}
	return k.clientCert, nil
}
