package vdi

import (
	"context"
	"testing"
)

// benchVolume returns a Volume of 16 objects, all allocated, on the fake.
func benchVolume(b *testing.B) *Volume {
	b.Helper()
	const nobj = 16
	v := Open(newFake(), Info{ID: testVID, Size: nobj * ObjectSize, Copies: 3})
	for idx := range nobj {
		mustWrite(b, v, []byte{1}, int64(idx)*ObjectSize)
	}
	return v
}

// BenchmarkWriteAt4K measures the Volume's own cost of a 4 KiB write to an
// allocated object (the fake store is a memory copy).
func BenchmarkWriteAt4K(b *testing.B) {
	v := benchVolume(b)
	ctx := context.Background()
	data := pattern(1, 4096)
	size := int64(v.Info().Size)
	b.SetBytes(int64(len(data)))
	off := int64(0)
	for b.Loop() {
		if err := v.WriteAt(ctx, wr(v), data, off); err != nil {
			b.Fatal(err)
		}
		off = (off + 1<<20 + 4096) % (size - 4096)
	}
}

// BenchmarkReadAt4K measures a 4 KiB read from an allocated object.
func BenchmarkReadAt4K(b *testing.B) {
	v := benchVolume(b)
	ctx := context.Background()
	buf := make([]byte, 4096)
	size := int64(v.Info().Size)
	b.SetBytes(int64(len(buf)))
	off := int64(0)
	for b.Loop() {
		if err := v.ReadAt(ctx, buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + 1<<20 + 4096) % (size - 4096)
	}
}

// BenchmarkReadAt4KParallel is BenchmarkReadAt4K from many goroutines, to
// show contention on the Volume's lock.
func BenchmarkReadAt4KParallel(b *testing.B) {
	v := benchVolume(b)
	size := int64(v.Info().Size)
	b.SetBytes(4096)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		buf := make([]byte, 4096)
		off := int64(0)
		for pb.Next() {
			if err := v.ReadAt(ctx, buf, off); err != nil {
				b.Error(err)
				return
			}
			off = (off + 1<<20 + 4096) % (size - 4096)
		}
	})
}
