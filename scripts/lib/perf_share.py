#!/usr/bin/env python3
"""The share of a profile's samples whose call chain passes through some
functions: a cost measured within one run, which the noise between runs
on a shared machine does not blur.

    perf script -i perf-randwrite.data -F comm,ip,sym | \\
        scripts/lib/perf_share.py 'objstore\\.(blockSum|verify)' ['EXCLUDE']

The profile is one that scripts/bench records with BENCH_PPROF=1 (call
graphs). A sample counts once, for the outermost matching function of its
chain; samples that also pass through EXCLUDE (a regular expression, for
example the kernel's file time update that one write pays for the next)
are counted apart. Prints the total, the share per process and per
function."""
import collections
import re
import sys


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    want = re.compile(sys.argv[1])
    excl = re.compile(sys.argv[2]) if len(sys.argv) == 3 else None
    total, hit, excluded = 0, 0, 0
    per_comm, per_comm_hit, per_fn = collections.Counter(), collections.Counter(), collections.Counter()
    comm, frames = None, []

    def sample():
        nonlocal total, hit, excluded
        if comm is None:
            return
        total += 1
        per_comm[comm] += 1
        fn = None
        for f in frames:  # innermost first: the last match is the outermost
            m = want.search(f)
            if m:
                fn = m.group(0)
        if fn is None:
            return
        if excl and any(excl.search(f) for f in frames):
            excluded += 1
            return
        hit += 1
        per_comm_hit[comm] += 1
        per_fn[fn] += 1

    for line in sys.stdin:
        if not line.strip():
            sample()
            comm, frames = None, []
        elif line[0] in " \t":
            frames.append(line.strip())
        else:
            sample()
            comm, frames = line.split()[0], []
    sample()
    pct = lambda n: 100 * n / max(total, 1)
    print(f"{total} samples, {hit} through the functions ({pct(hit):.2f} %)"
          + (f", {excluded} more also through the excluded ({pct(excluded):.2f} %)" if excl else ""))
    for c in sorted(per_comm):
        print(f"  {c}: {per_comm_hit[c]} of {per_comm[c]}")
    for fn, n in per_fn.most_common():
        print(f"  {fn}: {n} ({pct(n):.2f} %)")


if __name__ == "__main__":
    main()
