// Package discovery lets a new sheep find a running cluster of its key on
// the local network, as Sheepdog's nodes found each other by multicast,
// so that a node needs no --join and no configuration file.
//
// A node that starts with no cluster state and no --join sends probes to
// a multicast group on every multicast interface, for a few seconds; every
// running node of the same cluster answers, unicast, with its data
// address, and the new node joins those. Nothing is found: it starts a new
// cluster. Messages carry a cluster ID derived from the key (never the
// key) and an HMAC with a key derived from it too, over the whole message
// and a nonce the answer echoes: a node answers only probes made with its
// key, and believes only answers to its own probe made with its key. The
// join itself is then TLS with the key, as always.
package discovery

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Group is the multicast group and port of discovery (organisation-local
// scope, 239.255.0.0/16).
var Group = &net.UDPAddr{IP: net.IPv4(239, 255, 83, 72), Port: 7099}

// Message layout: magic, version, type, cluster ID, nonce, address length,
// address, HMAC-SHA256 of everything before it.
const (
	magic      = "SHPD"
	version    = 1
	typeProbe  = 1
	typeAnswer = 2
	idSize     = 16
	nonceSize  = 16
	macSize    = sha256.Size
	maxAddr    = 255
	headerSize = len(magic) + 2 + idSize + nonceSize + 1
	maxMessage = headerSize + maxAddr + macSize
)

// answersPerSecond bounds a node's answers.
const answersPerSecond = 20

// Key is what a node's cluster key gives discovery (auth.Keys.Discovery).
type Key struct {
	ID  []byte // idSize bytes, advertised
	MAC []byte // authenticates messages
}

type message struct {
	typ   byte
	nonce [nonceSize]byte
	addr  string
}

func (k Key) encode(m message) []byte {
	b := make([]byte, 0, maxMessage)
	b = append(b, magic...)
	b = append(b, version, m.typ)
	b = append(b, k.ID...)
	b = append(b, m.nonce[:]...)
	b = append(b, byte(len(m.addr)))
	b = append(b, m.addr...)
	mac := hmac.New(sha256.New, k.MAC)
	mac.Write(b)
	return mac.Sum(b)
}

var errNotOurs = errors.New("not a discovery message of this cluster")

// decode checks b (lengths, cluster ID, HMAC) before it believes anything
// in it.
func (k Key) decode(b []byte) (message, error) {
	var m message
	if len(b) < headerSize+macSize || len(b) > maxMessage || string(b[:4]) != magic || b[4] != version {
		return m, errNotOurs
	}
	if !bytes.Equal(b[6:6+idSize], k.ID) {
		return m, errNotOurs
	}
	n := int(b[headerSize-1])
	if len(b) != headerSize+n+macSize {
		return m, errNotOurs
	}
	mac := hmac.New(sha256.New, k.MAC)
	mac.Write(b[:headerSize+n])
	if !hmac.Equal(mac.Sum(nil), b[headerSize+n:]) {
		return m, errNotOurs
	}
	m.typ = b[5]
	copy(m.nonce[:], b[6+idSize:])
	m.addr = string(b[headerSize : headerSize+n])
	return m, nil
}

// interfaces lists the up, multicast-capable interfaces with an IPv4
// address, loopback included (nodes on one machine).
func interfaces() []net.Interface {
	all, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []net.Interface
	for _, ifi := range all {
		if ifi.Flags&net.FlagUp == 0 || ifi.Flags&net.FlagMulticast == 0 {
			continue
		}
		addrs, _ := ifi.Addrs()
		if slices.ContainsFunc(addrs, func(a net.Addr) bool {
			ip, ok := a.(*net.IPNet)
			return ok && ip.IP.To4() != nil
		}) {
			out = append(out, ifi)
		}
	}
	return out
}

// Find probes for running nodes of k's cluster for up to wait and returns
// their data addresses (none: nothing answered). It returns early, a
// moment after the first answer.
func Find(ctx context.Context, k Key, wait time.Duration) ([]string, error) {
	ifs := interfaces()
	if len(ifs) == 0 {
		return nil, nil
	}
	c, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	_ = pc.SetMulticastTTL(1)
	_ = pc.SetMulticastLoopback(true)
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	probe := k.encode(message{typ: typeProbe, nonce: nonce})
	send := func() {
		for _, ifi := range ifs {
			if pc.SetMulticastInterface(&ifi) == nil {
				_, _ = pc.WriteTo(probe, nil, Group)
			}
		}
	}
	end := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(end) {
		end = d
	}
	var found []string
	buf := make([]byte, maxMessage+1)
	next := time.Now()
	for {
		now := time.Now()
		if !now.Before(end) || ctx.Err() != nil {
			return found, nil
		}
		if !now.Before(next) {
			send()
			next = now.Add(500 * time.Millisecond)
		}
		_ = c.SetReadDeadline(minTime(next, end))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return found, fmt.Errorf("discovery: %w", err)
		}
		m, err := k.decode(buf[:n])
		if err != nil || m.typ != typeAnswer || m.nonce != nonce || m.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(m.addr); err != nil || slices.Contains(found, m.addr) {
			continue
		}
		if found == nil {
			// The others of the cluster answer at about the same time.
			end = minTime(end, time.Now().Add(700*time.Millisecond))
		}
		found = append(found, m.addr)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Answer answers the probes of k's cluster with addr, the node's data
// address, until ctx ends. Several nodes on one machine share the group's
// port.
func Answer(ctx context.Context, k Key, addr string) error {
	if len(addr) > maxAddr {
		return fmt.Errorf("discovery: address %q too long", addr)
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", Group.Port))
	if err != nil {
		return fmt.Errorf("discovery: %w", err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	joined := 0
	for _, ifi := range interfaces() {
		if pc.JoinGroup(&ifi, &net.UDPAddr{IP: Group.IP}) == nil {
			joined++
		}
	}
	if joined == 0 {
		return errors.New("discovery: no interface joined the multicast group")
	}
	go func() {
		<-ctx.Done()
		c.Close()
	}()
	buf := make([]byte, maxMessage+1)
	// At most answersPerSecond answers (a burst of as many): replayed
	// probes with a forged source must not make a node a reflector.
	tokens, last := float64(answersPerSecond), time.Now()
	for {
		n, _, src, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("discovery: %w", err) // no deadline is set: not a time-out
		}
		m, err := k.decode(buf[:n])
		if err != nil || m.typ != typeProbe {
			continue
		}
		now := time.Now()
		tokens = min(answersPerSecond, tokens+now.Sub(last).Seconds()*answersPerSecond)
		last = now
		if tokens < 1 {
			continue
		}
		tokens--
		// Answers go back to the prober, unicast: one datagram per
		// authenticated probe, no bigger than it plus an address.
		_, _ = c.WriteTo(k.encode(message{typ: typeAnswer, nonce: m.nonce, addr: addr}), src)
	}
}

// IDOf is a short hex form of a cluster ID, for logs.
func IDOf(id []byte) string {
	if len(id) < 4 {
		return ""
	}
	return fmt.Sprintf("%08x", binary.BigEndian.Uint32(id[:4]))
}
