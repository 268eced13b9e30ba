package discovery

import (
	"bytes"
	"context"
	"testing"
	"time"
)

func testKey(b byte) Key {
	return Key{ID: bytes.Repeat([]byte{b}, idSize), MAC: bytes.Repeat([]byte{b + 1}, 32)}
}

func TestMessages(t *testing.T) {
	k := testKey(1)
	m := message{typ: typeAnswer, addr: "10.0.0.5:7000"}
	m.nonce[3] = 9
	b := k.encode(m)
	got, err := k.decode(b)
	if err != nil || got != m {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, m)
	}
	if _, err := testKey(3).decode(b); err == nil {
		t.Errorf("another cluster's key decoded the message")
	}
	other := Key{ID: k.ID, MAC: testKey(5).MAC} // same ID, wrong MAC key
	if _, err := other.decode(b); err == nil {
		t.Errorf("a message with a wrong HMAC was believed")
	}
	for i := range b {
		bad := bytes.Clone(b)
		bad[i] ^= 0x40
		if _, err := k.decode(bad); err == nil {
			t.Errorf("a message with byte %d flipped was believed", i)
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := k.decode(b[:n]); err == nil {
			t.Errorf("a message cut to %d bytes was believed", n)
		}
	}
	if _, err := k.decode(append(bytes.Clone(b), 0)); err == nil {
		t.Errorf("a message with a byte more was believed")
	}
}

func FuzzDecode(f *testing.F) {
	k := testKey(1)
	f.Add(k.encode(message{typ: typeProbe}))
	f.Add([]byte("SHPD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := k.decode(b)
		if err == nil && len(m.addr) > maxAddr {
			t.Fatalf("address of %d bytes", len(m.addr))
		}
	})
}

// TestFindAnswer: a node answering on this machine's interfaces is found
// with its key, and not with another.
func TestFindAnswer(t *testing.T) {
	if len(interfaces()) == 0 {
		t.Skip("no multicast interface")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := testKey(7)
	errc := make(chan error, 1)
	go func() { errc <- Answer(ctx, k, "192.0.2.1:7000") }()
	time.Sleep(200 * time.Millisecond)
	found, err := Find(ctx, k, 3*time.Second)
	if err != nil || len(found) != 1 || found[0] != "192.0.2.1:7000" {
		t.Errorf("Find: %v, %v; want the answering node", found, err)
	}
	found, err = Find(ctx, testKey(9), time.Second)
	if err != nil || len(found) != 0 {
		t.Errorf("Find with another key: %v, %v; want nothing", found, err)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("Answer: %v", err)
	}
}
