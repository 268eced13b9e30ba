// Package hashring places objects on nodes by consistent hashing.
//
// Every node owns a fixed number of virtual nodes (vnodes): points on a
// 64-bit ring. An object is hashed onto the same ring and its replicas are
// the first distinct nodes met walking clockwise (towards larger hashes,
// wrapping at 2^64) from the object's point. When one node joins a ring of N
// nodes about 1/(N+1) of the objects change their primary, and a replica set
// changes only where the new node enters it; when a node leaves, only the
// objects that had it among their replicas move.
//
// Placement depends only on the set of node IDs, the vnode count and the two
// hash functions below, never on input order, map iteration or random seeds,
// so every process that builds a ring over the same set places every object
// on the same nodes. The hashes are therefore part of the cluster's on-disk
// and on-wire contract: changing them moves almost every object.
//
//   - object point: mix64(uint64(oid)), where mix64 is the splitmix64 /
//     murmur3 fmix64 finaliser (a bijection on uint64).
//   - vnode point: mix64(FNV-1a-64(nodeID bytes || vnode number as 4
//     little-endian bytes)), vnode numbers 0..vnodes-1.
//
// Points that collide are ordered by node ID, then vnode number.
package hashring

import (
	"math/bits"
	"slices"
	"sort"

	"github.com/sheepfs/sheepfs/ids"
)

// DefaultVNodes is the number of virtual nodes (ring points) per node that
// New uses when given vnodes <= 0.
//
// It is the smallest power of two that keeps every node's share of objects
// within 5% of the mean on a 100-node ring (primaries, and every slot of
// 3-way replica sets), measured over 1M sequential data object IDs and over
// many sets of node names. Memory per ring is 12 bytes per point:
// 100 nodes × 4096 vnodes ≈ 4.7 MiB.
const DefaultVNodes = 4096

// Ring is an immutable consistent-hash ring. Safe for concurrent use. The
// zero value and a nil *Ring behave as an empty ring.
type Ring struct {
	nodes  []ids.NodeID // distinct node IDs, sorted
	points []uint64     // vnode points, sorted ascending
	owners []uint32     // owners[i] indexes nodes: the node that owns points[i]
	// index[b] is the first i with points[i]>>shift >= b; len(index) is
	// 2^(64-shift)+1 and the last entry is len(points).
	index []uint32
	shift uint
}

// New builds a ring over the given nodes, each with vnodes virtual nodes
// (vnodes <= 0 means DefaultVNodes). Duplicate IDs are ignored and order is
// irrelevant: the same set always gives the same ring. Every string is a
// node ID, the empty one included; New does not validate them. nodes is not
// retained. The ring holds len(distinct nodes)×vnodes points of 12 bytes.
func New(nodes []ids.NodeID, vnodes int) *Ring {
	if vnodes <= 0 {
		vnodes = DefaultVNodes
	}
	distinct := slices.Clone(nodes)
	slices.Sort(distinct)
	distinct = slices.Compact(distinct)
	distinct = slices.Clip(distinct)

	r := &Ring{nodes: distinct}
	r.build(vnodes)
	return r
}

// Nodes returns the ring's distinct nodes, sorted. The slice is a fresh copy
// that the caller may modify. An empty ring returns nil.
func (r *Ring) Nodes() []ids.NodeID {
	if r == nil {
		return nil
	}
	return slices.Clone(r.nodes)
}

// Len returns the number of distinct nodes (0 for an empty ring).
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.nodes)
}

// Contains reports whether node is one of the ring's nodes. It takes
// O(log Len) time.
func (r *Ring) Contains(node ids.NodeID) bool {
	if r == nil {
		return false
	}
	_, ok := slices.BinarySearch(r.nodes, node)
	return ok
}

// Replicas appends to dst[:0] the n distinct nodes that hold oid, the primary
// first: it walks clockwise from the object's hash, skipping nodes already
// chosen. If the ring has fewer than n nodes it returns all of them, in walk
// order. An empty ring, or n <= 0, returns dst[:0].
//
// Replicas does not allocate when cap(dst) >= min(n, Len()). It costs one
// binary search over the ring's points plus the walk, which for n much
// smaller than Len is about n steps.
func (r *Ring) Replicas(oid ids.ObjectID, n int, dst []ids.NodeID) []ids.NodeID {
	dst = dst[:0]
	if r == nil || n <= 0 || len(r.nodes) == 0 {
		return dst
	}
	n = min(n, len(r.nodes))
	pts := r.points
	h := mix64(uint64(oid))

	// First point >= h (len(pts) if none, which wraps to 0). The points
	// of bucket b are those with top r.shift.. bits equal to b, so the
	// answer is in bucket b or is the first point of a later one.
	b := h >> r.shift
	lo, hi := int(r.index[b]), int(r.index[b+1])
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if pts[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	i := lo
	for len(dst) < n {
		if i == len(pts) {
			i = 0
		}
		node := r.nodes[r.owners[i]]
		if !slices.Contains(dst, node) {
			dst = append(dst, node)
		}
		i++
	}
	return dst
}

// build fills r.points, r.owners and r.index for vnodes points per node of
// r.nodes. It is a stable bucket sort on the top bits of the hashes, which
// are uniform by construction: a counting pass while hashing, a scatter into
// 256 runs, and a scatter of each (cache-sized) run into its buckets with an
// insertion sort as they fill. The bucket offsets are kept as r.index so
// Replicas finds a point with one table lookup and a search of a few points.
func (r *Ring) build(vnodes int) {
	total := len(r.nodes) * vnodes
	// About 2 to 4 points per bucket.
	bucketBits := max(bits.Len(uint(total))-2, 0)
	r.shift = uint(64 - bucketBits) // 64 when there is one bucket: h>>64 == 0
	nb := 1 << bucketBits

	hashes := make([]uint64, total) // in (node, vnode) order
	index := make([]uint32, nb+1)
	k := 0
	for _, id := range r.nodes {
		base := fnvString(fnvOffset, string(id))
		for v := range vnodes {
			h := vnodeHash(base, uint32(v))
			hashes[k] = h
			index[h>>r.shift+1]++
			k++
		}
	}
	for b := 1; b <= nb; b++ {
		index[b] += index[b-1]
	}

	// Scatter in two passes, both stable: first by the top coarseBits
	// bits into a few hundred runs (so writes stream instead of missing
	// the cache), then each run, now cache-sized, into its buckets. Input
	// is in (node, vnode) order, so within a bucket points with equal
	// hashes stay ordered by node ID, then vnode number.
	coarseBits := min(bucketBits, 8)
	coarseShift := uint(64 - coarseBits)
	fine := nb >> coarseBits // buckets per run
	tmpH := make([]uint64, total)
	tmpO := make([]uint32, total)
	next := make([]uint32, max(1<<coarseBits, fine))
	for c := range 1 << coarseBits {
		next[c] = index[c*fine]
	}
	k = 0
	for o := range r.nodes {
		for range vnodes {
			h := hashes[k]
			c := h >> coarseShift
			tmpH[next[c]] = h
			tmpO[next[c]] = uint32(o)
			next[c]++
			k++
		}
	}
	r.points = hashes // reused: every element is rewritten below
	r.owners = make([]uint32, total)
	for c := range 1 << coarseBits {
		first := c * fine
		copy(next, index[first:first+fine])
		lo, hi := index[first], index[first+fine]
		for i := lo; i < hi; i++ {
			h, o := tmpH[i], tmpO[i]
			b := int(h>>r.shift) - first
			// Insertion sort into the bucket as it fills: after any
			// equal hashes already there, so stable.
			j, start := next[b], index[first+b]
			if index[first+b+1]-start <= maxInsertion {
				for ; j > start && r.points[j-1] > h; j-- {
					r.points[j], r.owners[j] = r.points[j-1], r.owners[j-1]
				}
			}
			r.points[j], r.owners[j] = h, o
			next[b]++
		}
		for b := first; b < first+fine; b++ {
			if index[b+1]-index[b] > maxInsertion {
				sort.Stable(bucket{r.points[index[b]:index[b+1]], r.owners[index[b]:index[b+1]]})
			}
		}
	}
	r.index = index
}

// maxInsertion is the largest bucket that build sorts by insertion; larger
// ones, which only node IDs crafted to collide produce, get sort.Stable.
// Buckets hold a few points on average. A variable so tests can force the
// fallback.
var maxInsertion uint32 = 32

// bucket adapts a large bucket to sort.Stable.
type bucket struct {
	points []uint64
	owners []uint32
}

func (b bucket) Len() int           { return len(b.points) }
func (b bucket) Less(i, j int) bool { return b.points[i] < b.points[j] }
func (b bucket) Swap(i, j int) {
	b.points[i], b.points[j] = b.points[j], b.points[i]
	b.owners[i], b.owners[j] = b.owners[j], b.owners[i]
}

// FNV-1a 64-bit parameters.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// fnvString continues the FNV-1a 64 hash h over the bytes of s.
func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// vnodeHash returns the ring point of vnode v of the node whose ID hashes
// (FNV-1a 64, unfinished) to base.
func vnodeHash(base uint64, v uint32) uint64 {
	h := base
	for range 4 {
		h ^= uint64(v & 0xff)
		h *= fnvPrime
		v >>= 8
	}
	return mix64(h)
}

// mix64 is the splitmix64 finaliser (Stafford's Mix13, as in murmur3's
// fmix64 family): a bijection on uint64 whose output bits each depend on all
// input bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
