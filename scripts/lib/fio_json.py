"""Reads the fio reports that scripts/bench and scripts/bench-peers keep in
BENCH_OUT: one TARGET-JOB.json per job and target (see scripts/lib/bench.sh)."""
import json


def report(out, target, job):
    """fio's report of JOB on TARGET, or None when there is none."""
    try:
        with open(f"{out}/{target}-{job}.json") as f:
            t = f.read()
        # fio may print notes before the JSON
        return json.loads(t[t.index("{"):])["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def load(out, target, job):
    """(value, unit, mean, p99, p50) of JOB on TARGET, latencies in
    microseconds; the value is MB/s for the sequential jobs, IOPS for the
    others. None when there is no report."""
    j = report(out, target, job)
    if j is None:
        return None
    d = j["write"] if "write" in job else j["read"]
    seq = job.startswith("seq")
    val = d["bw_bytes"] / 1e6 if seq else d["iops"]
    lat = d.get("clat_ns", {})
    p99 = lat.get("percentile", {}).get("99.000000", 0) / 1e3
    p50 = lat.get("percentile", {}).get("50.000000", 0) / 1e3
    mean = lat.get("mean", 0) / 1e3
    if job == "randwrite-fsync" and "sync" in j:
        # fio times the fsync apart: a commit costs write + fsync; the
        # p99 shown is the fsync's
        mean += j["sync"]["lat_ns"].get("mean", 0) / 1e3
        p99 = j["sync"]["lat_ns"].get("percentile", {}).get("99.000000", 0) / 1e3
        p50 = j["sync"]["lat_ns"].get("percentile", {}).get("50.000000", 0) / 1e3
    return val, "MB/s" if seq else "IOPS", mean, p99, p50


def total_ios(j):
    """Reads and writes fio issued in one report."""
    return j["read"]["total_ios"] + j["write"]["total_ios"]


def cpu_per_io(out, cpu_file, target, job):
    """CPU microseconds per fio I/O of JOB on TARGET, formatted, from
    CPU_FILE ("TICKS CLK_TCK", what the script measured around the job);
    "-" when either is missing."""
    try:
        with open(cpu_file) as f:
            ticks, hz = (int(x) for x in f.read().split())
        ios = total_ios(report(out, target, job))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "-"
    return f"{ticks / hz / max(ios, 1) * 1e6:,.0f}"
