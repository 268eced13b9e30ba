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
// Points with equal hashes are ordered by node ID.
//
// Weights: a node's vnode count is proportional to its weight (its
// capacity): vnodes × weight × nodes / (sum of weights), rounded, at least
// 1, so that equal weights give every node exactly vnodes points. A node's
// points are always its vnodes 0..count-1, so a change of its count moves
// only the objects of the points it gains or loses.
//
// Zones (failure domains): a replica set takes nodes of distinct zones
// whenever the ring has at least as many zones as copies are asked for;
// otherwise it covers every zone once before it takes a second node of any.
// A node with an empty zone is a zone of its own, so a ring without zones
// places exactly as the walk above.
package hashring

import (
	"cmp"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strings"

	"github.com/sheepfs/sheepfs/ids"
)

// DefaultVNodes is the number of virtual nodes (ring points) per node that
// New uses when given vnodes <= 0: 6144 (3×2^11).
//
// It was chosen by measurement on 100-node rings (hashring_test.go,
// TestMeasure) as the smallest power-of-two-ish count at which, for each of
// 100 random sets of node IDs, every node owns a fraction of the ring within
// 5% of the mean (worst 4.65%; 4096 gives up to 6.0%). Counted over 1M
// sequential data objects, which adds about 1% of sampling noise per node,
// the worst node's primary share is then typically 4.3% off the mean (6.2%
// on the worst of the 100 sets) and its share of 3-way replica slots at most
// 3.5%. Each extra vnode costs memory and build time: a 100-node ring is
// 614,400 points, about 8 MiB, and builds in a few tens of milliseconds.
const DefaultVNodes = 6144

// maxPoints bounds the points of one ring (about 200 MiB), so that no
// member list, however weighted, makes a node build a ring that exhausts
// its memory: past it every node's count is lowered, which still places
// well (4096 nodes of equal weight get about 2,000 points each).
const maxPoints = 1 << 24

// Node is one node of a ring built with NewNodes.
type Node struct {
	ID ids.NodeID
	// Zone is the node's failure domain; empty means a zone of its own.
	Zone string
	// Weight is the node's relative capacity (any unit, the same for every
	// node of a ring); 0 counts as 1. Weights above 2^40 are capped.
	Weight uint64
}

// maxWeight caps a weight so that the vnode arithmetic cannot overflow.
const maxWeight = 1 << 40

// Ring is an immutable consistent-hash ring. Safe for concurrent use. The
// zero value and a nil *Ring behave as an empty ring.
type Ring struct {
	nodes  []ids.NodeID // distinct node IDs, sorted
	zoneOf []uint32     // zoneOf[i] numbers the zone of nodes[i]
	zones  int          // distinct zones
	counts []int        // counts[i] is the vnode count of nodes[i]
	weight []uint64     // weight[i] of nodes[i], as given (0 -> 1)
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
// node ID, the empty one included; New does not validate them, and nodes is
// not retained. New cannot fail.
//
// The ring holds P = (distinct nodes)×vnodes points and takes about 13.5
// bytes per point (12 for the point, the rest for the lookup index) and
// O(P) time to build. vnodes is capped so that P <= 2^24; a larger value is
// a configuration error and is silently reduced.
func New(nodes []ids.NodeID, vnodes int) *Ring {
	ns := make([]Node, len(nodes))
	for i, id := range nodes {
		ns[i] = Node{ID: id}
	}
	return NewNodes(ns, vnodes, 0)
}

// NewNodes builds a ring over nodes with zones and weights (see the package
// comment). A node of weight unit gets vnodes points (<= 0 means
// DefaultVNodes), others proportionally, at least 1; unit 0 means the mean
// weight of nodes. Keep unit fixed across rings of one cluster: a change
// of one node's weight then moves only the objects of the points that node
// gains or loses, while a unit derived from the mean moves some of every
// node's. Order is irrelevant; of two entries with one ID, the one that
// sorts first by (zone, weight) is kept. With equal weights, no zones and
// unit 0 (or the common weight) it places exactly as New. The total of
// points is capped at 2^24 by lowering every node's count.
func NewNodes(nodes []Node, vnodes int, unit uint64) *Ring {
	if vnodes <= 0 {
		vnodes = DefaultVNodes
	}
	ns := slices.Clone(nodes)
	slices.SortFunc(ns, func(a, b Node) int {
		switch {
		case a.ID != b.ID:
			return strings.Compare(string(a.ID), string(b.ID))
		case a.Zone != b.Zone:
			return strings.Compare(a.Zone, b.Zone)
		}
		return cmp.Compare(a.Weight, b.Weight)
	})
	ns = slices.CompactFunc(ns, func(a, b Node) bool { return a.ID == b.ID })
	r := &Ring{nodes: make([]ids.NodeID, len(ns)), zoneOf: make([]uint32, len(ns)),
		counts: make([]int, len(ns)), weight: make([]uint64, len(ns))}
	zones := map[string]uint32{}
	var sum uint64
	for i, n := range ns {
		r.nodes[i] = n.ID
		z := n.Zone
		if z == "" {
			z = "\x00" + string(n.ID) // a zone of its own, apart from named ones
		}
		zi, ok := zones[z]
		if !ok {
			zi = uint32(len(zones))
			zones[z] = zi
		}
		r.zoneOf[i] = zi
		w := min(max(n.Weight, 1), maxWeight)
		r.weight[i] = w
		sum += w
	}
	r.zones = len(zones)
	if len(ns) == 0 {
		r.build()
		return r
	}
	if unit == 0 {
		unit = max(sum/uint64(len(ns)), 1)
	}
	unit = min(unit, maxWeight)
	// round(vnodes × w / unit) in 128 bits, capped so that the total of
	// points stays within maxPoints.
	total := uint64(0)
	for i := range ns {
		r.counts[i] = scale(uint64(vnodes), r.weight[i], unit)
		total += uint64(r.counts[i])
	}
	if total > maxPoints {
		for i := range ns {
			r.counts[i] = scale(uint64(r.counts[i]), maxPoints/2, total)
		}
	}
	r.build()
	return r
}

// scale returns max(1, round(a × b / c)) for a, b, c <= 2^40 (c > 0),
// capped at maxPoints.
func scale(a, b, c uint64) int {
	hi, lo := bits.Mul64(a, b)
	lo, carry := bits.Add64(lo, c/2, 0)
	hi += carry
	if hi >= c {
		return maxPoints
	}
	q, _ := bits.Div64(hi, lo, c)
	return int(max(min(q, maxPoints), 1))
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
// Replicas does not allocate when cap(dst) >= min(n, Len()); otherwise it
// grows dst with append. It costs a table lookup and a search of a few
// points, then the walk, which is about n points when n is much smaller than
// Len and longer (up to one lap of the ring) as n approaches Len.
func (r *Ring) Replicas(oid ids.ObjectID, n int, dst []ids.NodeID) []ids.NodeID {
	dst = dst[:0]
	if r == nil || n <= 0 || len(r.nodes) == 0 {
		return dst
	}
	var buf [32]int32
	idx := buf[:0]
	if n > len(buf) {
		idx = make([]int32, 0, min(n, len(r.nodes)))
	}
	for _, o := range r.ReplicaIndexes(oid, n, idx) {
		dst = append(dst, r.nodes[o])
	}
	return dst
}

// ReplicaIndexes is Replicas answering with indexes into Nodes() (which
// is sorted by ID) instead of IDs: for callers that keep per-node data in
// arrays. It does not allocate when cap(dst) >= min(n, Len()).
func (r *Ring) ReplicaIndexes(oid ids.ObjectID, n int, dst []int32) []int32 {
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
	if r.zones == len(r.nodes) {
		for len(dst) < n {
			if i == len(pts) {
				i = 0
			}
			o := int32(r.owners[i])
			if !slices.Contains(dst, o) {
				dst = append(dst, o)
			}
			i++
		}
		return dst
	}
	// Zones: take a node of a new zone while some zone is still unused;
	// once every zone is (only when n exceeds the zones), any node. A node
	// skipped while zones were missing is taken on the second lap.
	var zbuf [32]uint32
	used := zbuf[:0]
	for step := 0; len(dst) < n; step++ {
		if i == len(pts) {
			i = 0
		}
		o := int32(r.owners[i])
		if !slices.Contains(dst, o) {
			z := r.zoneOf[o]
			if !slices.Contains(used, z) {
				dst = append(dst, o)
				used = append(used, z)
			} else if len(used) >= r.zones || step >= len(pts) {
				dst = append(dst, o)
			}
		}
		i++
	}
	return dst
}

// Points returns the number of points on the ring.
func (r *Ring) Points() int {
	if r == nil {
		return 0
	}
	return len(r.points)
}

// Zones returns the number of distinct zones (a node without one counts as
// its own).
func (r *Ring) Zones() int {
	if r == nil {
		return 0
	}
	return r.zones
}

// VNodes returns the number of points node owns (0 if it is not a member).
func (r *Ring) VNodes(node ids.NodeID) int {
	if r == nil {
		return 0
	}
	i, ok := slices.BinarySearch(r.nodes, node)
	if !ok {
		return 0
	}
	return r.counts[i]
}

// Share returns the fraction of the ring (0 to 1) for which node is the
// primary: the sum of the arcs that end at its points. With 3 copies and no
// zones a node holds about the same fraction of all copies. It takes
// O(points) time.
func (r *Ring) Share(node ids.NodeID) float64 {
	if r == nil || len(r.points) == 0 {
		return 0
	}
	o, ok := slices.BinarySearch(r.nodes, node)
	if !ok {
		return 0
	}
	var own float64
	prev := r.points[len(r.points)-1]
	for i, h := range r.points {
		if int(r.owners[i]) == o {
			own += float64(h - prev) // wraps correctly in uint64
		}
		prev = h
	}
	if len(r.nodes) == 1 {
		return 1
	}
	return own / math.Exp2(64)
}

// build fills r.points, r.owners and r.index for vnodes points per node of
// r.nodes, allocating little else. It is a bucket sort on the top bits of
// the hashes, which are uniform by construction: a pass that hashes and
// counts 256 coarse runs, a second that hashes again and writes each point
// into its run, then for each (cache-sized) run a count and in-place
// permutation into its buckets and an insertion sort of each bucket by
// (hash, owner). The bucket offsets are kept as r.index, so Replicas finds
// a point with one table lookup and a search of a few points.
func (r *Ring) build() {
	total := 0
	for _, c := range r.counts {
		total += c
	}
	// About 2 to 4 points per bucket.
	bucketBits := max(bits.Len(uint(total))-2, 0)
	r.shift = uint(64 - bucketBits) // 64 when there is one bucket: h>>64 == 0
	coarseBits := min(bucketBits, 8)
	coarseShift := uint(64 - coarseBits)
	runs := 1 << coarseBits
	fine := 1 << (bucketBits - coarseBits) // buckets per run

	points := make([]uint64, total)
	owners := make([]uint32, total)
	index := make([]uint32, 1<<bucketBits+1)
	runStart := make([]uint32, runs+1)
	// Hash twice rather than store and permute: the second pass writes
	// every point straight into its run, 256 sequential streams.
	for o, id := range r.nodes {
		base := fnvString(fnvOffset, string(id))
		for v := range r.counts[o] {
			runStart[vnodeHash(base, uint32(v))>>coarseShift+1]++
		}
	}
	for c := range runs {
		runStart[c+1] += runStart[c]
	}
	next := make([]uint32, max(runs, fine))
	copy(next, runStart[:runs])
	for o, id := range r.nodes {
		base := fnvString(fnvOffset, string(id))
		for v := range r.counts[o] {
			h := vnodeHash(base, uint32(v))
			c := h >> coarseShift
			points[next[c]], owners[next[c]] = h, uint32(o)
			next[c]++
		}
	}

	for c := range runs {
		first := c * fine
		lo, hi := runStart[c], runStart[c+1]
		offs := index[first : first+fine+1]
		clear(offs)
		for _, h := range points[lo:hi] {
			offs[int(h>>r.shift)-first+1]++
		}
		offs[0] = lo
		for b := range fine {
			offs[b+1] += offs[b]
		}
		permute(points, owners, offs, next, r.shift, first)
		for b := range fine {
			sortBucket(points[offs[b]:offs[b+1]], owners[offs[b]:offs[b+1]])
		}
	}
	r.points, r.owners, r.index = points, owners, index
}

// permute moves the points in [start[0], start[len(start)-1]) and their
// owners, in place, so that point p lands in [start[d], start[d+1]) where
// d = p>>shift - base. next is scratch of at least len(start)-1 entries.
func permute(points []uint64, owners []uint32, start, next []uint32, shift uint, base int) {
	n := len(start) - 1
	copy(next, start[:n])
	for d := range n {
		end := start[d+1]
		for next[d] < end {
			i := next[d]
			h, o := points[i], owners[i]
			// Follow the cycle: drop (h, o) in its bucket and pick up
			// what was there, until something belongs at i.
			for e := int(h>>shift) - base; e != d; e = int(h>>shift) - base {
				j := next[e]
				next[e]++
				h, points[j] = points[j], h
				o, owners[j] = owners[j], o
			}
			points[i], owners[i] = h, o
			next[d]++
		}
	}
}

// sortBucket sorts one bucket by (hash, owner). Owners index the sorted node
// IDs, so equal hashes are ordered by node ID; equal (hash, owner) pairs are
// interchangeable.
func sortBucket(points []uint64, owners []uint32) {
	if len(points) > maxInsertion {
		sort.Sort(bucket{points, owners})
		return
	}
	for i := 1; i < len(points); i++ {
		h, o := points[i], owners[i]
		j := i
		for ; j > 0 && (points[j-1] > h || points[j-1] == h && owners[j-1] > o); j-- {
			points[j], owners[j] = points[j-1], owners[j-1]
		}
		points[j], owners[j] = h, o
	}
}

// maxInsertion is the largest bucket that sortBucket sorts by insertion;
// larger ones, which only node IDs crafted to collide produce, get sort.Sort.
// Buckets hold a few points on average. A variable so tests can force the
// fallback.
var maxInsertion = 32

// bucket adapts a large bucket to sort.Sort.
type bucket struct {
	points []uint64
	owners []uint32
}

func (b bucket) Len() int { return len(b.points) }
func (b bucket) Less(i, j int) bool {
	return b.points[i] < b.points[j] || b.points[i] == b.points[j] && b.owners[i] < b.owners[j]
}
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

// mix64 is the splitmix64 finaliser (Stafford's Mix13 variant of murmur3's
// fmix64): a bijection on uint64 in which every output bit depends on every
// input bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
