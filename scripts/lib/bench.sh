# shellcheck shell=bash
# Shared by the fio benchmarks, scripts/bench and scripts/bench-peers: the
# fio jobs and their settings, and what they do around them. Source it
# after scripts/lib/common.sh, once SHEEP_* and BENCH_OUT are set.
#
# Settings (environment), as documented in scripts/bench:
#   BENCH_RUNTIME, BENCH_SIZE, BENCH_SEQ_RUNTIME, BENCH_IODEPTH, BENCH_WAIT_IDLE

BENCH_RUNTIME=${BENCH_RUNTIME:-30}
BENCH_SIZE=${BENCH_SIZE:-2G}
BENCH_SEQ_RUNTIME=${BENCH_SEQ_RUNTIME:-300}
BENCH_IODEPTH=${BENCH_IODEPTH:-16}
BENCH_WAIT_IDLE=${BENCH_WAIT_IDLE:-0}
BENCH_ALL_JOBS="seqwrite seqread randread randwrite randwrite-fsync qd1-read qd1-write"

# The fio jobs. Sequential: buffered 1 MiB psync, what cp/dd/qemu-img
# convert do. Random: what a VM started with cache=none,aio=native does
# (O_DIRECT, libaio, a queue of BENCH_IODEPTH). Flushed: a guest that
# flushes after every 4 KiB write (a database commit), queue depth 1.
# QD1: 4 KiB O_DIRECT at queue depth 1, for latency.
fio_common=(--output-format=json --size="$BENCH_SIZE" --group_reporting --randrepeat=0)
job_args() { # JOB
	case $1 in
	seqwrite) echo --rw=write --bs=1M --ioengine=psync --direct=0 --end_fsync=1 --runtime="$BENCH_SEQ_RUNTIME" ;;
	seqread) echo --rw=read --bs=1M --ioengine=psync --direct=0 --runtime="$BENCH_SEQ_RUNTIME" ;;
	randread) echo --rw=randread --bs=4k --ioengine=libaio --direct=1 --iodepth="$BENCH_IODEPTH" --time_based --runtime="$BENCH_RUNTIME" ;;
	randwrite) echo --rw=randwrite --bs=4k --ioengine=libaio --direct=1 --iodepth="$BENCH_IODEPTH" --time_based --runtime="$BENCH_RUNTIME" ;;
	randwrite-fsync) echo --rw=randwrite --bs=4k --ioengine=psync --direct=0 --fsync=1 --time_based --runtime="$BENCH_RUNTIME" ;;
	qd1-read) echo --rw=randread --bs=4k --ioengine=psync --direct=1 --time_based --runtime="$BENCH_RUNTIME" ;;
	qd1-write) echo --rw=randwrite --bs=4k --ioengine=psync --direct=1 --time_based --runtime="$BENCH_RUNTIME" ;;
	*) die "unknown job $1" ;;
	esac
}

# check_jobs JOB...: dies on a job job_args does not know.
check_jobs() {
	local j
	for j in "$@"; do
		case " $BENCH_ALL_JOBS " in
		*" $j "*) ;;
		*) die "unknown job $j (known: $BENCH_ALL_JOBS)" ;;
		esac
	done
}

# run_fio TARGET JOB FILE: one fio job on FILE, its JSON report kept in
# $BENCH_OUT/TARGET-JOB.json.
run_fio() {
	local target=$1 job=$2 file=$3
	# shellcheck disable=SC2046 # job_args gives one word per option
	fio --name="$job" --filename="$file" "${fio_common[@]}" $(job_args "$job") \
		--output="$BENCH_OUT/$target-$job.json" || die "fio $job on $target failed"
}
# fill_first TARGET FILE: unless the first job is the sequential write, which
# fills the files, writes FILE through once as that job would (its report
# kept as TARGET-fill.json), so that every target's reads read data: a VDI
# is created sparse, and reads of its holes cost no disk and no checksum,
# while fio lays a plain file out in full.
fill_first() {
	local target=$1 file=$2 first
	read -r first _ <<<"$BENCH_JOBS"
	[ "$first" != seqwrite ] || return 0
	say "== fill $target ($file)"
	# shellcheck disable=SC2046 # job_args gives one word per option
	fio --name=fill --filename="$file" "${fio_common[@]}" $(job_args seqwrite) \
		--output="$BENCH_OUT/$target-fill.json" || die "filling $file on $target failed"
}
# drop_caches JOB: before every job but the sequential write (which fills
# the file), so that reads start cold.
drop_caches() {
	[ "$1" != seqwrite ] || return 0
	sync
	echo 3 >/proc/sys/vm/drop_caches
}

# bench_sizes: checks BENCH_SIZE and sets vdi_bytes, the size of the VDI
# the jobs run on (BENCH_SIZE, at least 4 GiB).
bench_sizes() {
	local size_bytes
	size_bytes=$(numfmt --from=iec "${BENCH_SIZE%B}") || die "bad BENCH_SIZE $BENCH_SIZE"
	vdi_bytes=$((size_bytes > 4 << 30 ? size_bytes : 4 << 30))
}

# bench_wait_idle: waits up to BENCH_WAIT_IDLE seconds for other heavy
# processes (e2e.test, go-build, fio) to finish.
bench_wait_idle() {
	local w busy
	[ "$BENCH_WAIT_IDLE" -gt 0 ] || return 0
	for ((w = 0; w < BENCH_WAIT_IDLE; w += 30)); do
		busy=$(pgrep -f 'e2e.test|go-build|fio' | grep -vx "$$" || true)
		[ -z "$busy" ] && break
		say "waiting for other heavy processes: ${busy//$'\n'/ }"
		sleep 30
	done
}

# bench_sheep_up VDI: starts the cluster with scripts/up (SHEEP_* settings),
# creates VDI with vdi_bytes, and sets copies (the VDI's copies, as the
# cluster reports them) and sheep_pids (every sheep, then sheepfs).
bench_sheep_up() {
	local vdi=$1 i
	"$ROOT/scripts/up" >/dev/null
	truncate -s "$vdi_bytes" "$SHEEP_MNT/vdi/$vdi"
	copies=$("$BIN/sheep" --addr "127.0.0.1:$(node_port 0)" --json vdi list |
		VDI=$vdi python3 -c 'import json,os,sys; print([v["copies"] for v in json.load(sys.stdin) if v["name"]==os.environ["VDI"]][0])')
	say "cluster up: $SHEEP_NODES nodes, VDI $vdi with $copies copies, mounted at $SHEEP_MNT"
	sheep_pids=()
	for ((i = 0; i < SHEEP_NODES; i++)); do sheep_pids+=("$(cat "$SHEEP_DATA/node$i.pid")"); done
	sheep_pids+=("$(cat "$SHEEP_DATA/sheepfs.pid")")
	bench_hold "$SHEEP_MNT/vdi/$vdi"
}

# bench_hold FILE: with BENCH_HOLD=1 (the default), keeps FILE open for
# writing until bench_release, as a VM keeps its disk: the mount then holds
# the VDI's write lock through its daemon all along, and reads of it go to
# the daemon's files where it lends them (local reads, which need that
# lock). With BENCH_HOLD=0 each job opens the VDI itself, and the read
# jobs, which open it read-only, read through the daemon.
BENCH_HOLD=${BENCH_HOLD:-1}
bench_hold_fd=''
bench_hold() {
	[ "$BENCH_HOLD" = 1 ] || return 0
	exec {bench_hold_fd}<>"$1"
}

# bench_release closes what bench_hold opened (before scripts/down, which
# cannot unmount a file system with a file open).
bench_release() {
	[ -n "$bench_hold_fd" ] || return 0
	exec {bench_hold_fd}>&-
	bench_hold_fd=''
}

# cpu_ticks PID...: CPU time (user + system, in clock ticks) used so far by
# the processes, from /proc/PID/stat (a process that is gone counts 0).
cpu_ticks() {
	local p t=0 f a
	for p in "$@"; do
		f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
		# after "pid (comm)": field 3 is state; utime and stime are 14, 15
		read -ra a <<<"$f"
		t=$((t + a[11] + a[12]))
	done
	echo "$t"
}

# vm_hwm PID: the peak resident memory of a process, in KiB (empty if gone).
vm_hwm() {
	awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}
