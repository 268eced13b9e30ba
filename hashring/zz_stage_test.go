package hashring
import ("testing"; "github.com/sheepfs/sheepfs/ids"; "fmt"; "runtime"; "syscall"; "time")
func threadCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(1, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
func TestZZCPU(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	nodes := make([]ids.NodeID, 100)
	for i := range nodes { nodes[i] = ids.NodeID(fmt.Sprintf("node-%03d", i)) }
	for _, v := range []int{2048, 4096, 6144, 8192} {
		best, bestW := time.Hour, time.Hour
		for range 15 {
			runtime.GC()
			c0, w0 := threadCPU(), time.Now()
			New(nodes, v)
			best = min(best, threadCPU()-c0)
			bestW = min(bestW, time.Since(w0))
		}
		t.Logf("v=%d New cpu min %v wall min %v", v, best, bestW)
	}
	r := New(nodes, 0)
	dst := make([]ids.NodeID, 0, 3)
	for range 3 {
		c0, w0 := threadCPU(), time.Now()
		for i := range 2000000 { dst = r.Replicas(ids.ObjectID(i), 3, dst) }
		t.Logf("Replicas cpu %v/op wall %v/op", (threadCPU()-c0)/2000000, time.Since(w0)/2000000)
	}
}
