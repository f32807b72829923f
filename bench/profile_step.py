#!/usr/bin/python3
"""profile_step.py PERF_DATA [TOP] [MS_PER_SAMPLE]: where the time of a training step goes.

Reads a `perf record -g` of `bench_model` (build with CC="mpicc -fno-omit-frame-pointer" so
that the callers of memset/memcpy are known) and counts only the samples of the timed steps:
those after the warm-up step's Adam (the first cluster of samples inside optim_update) and
up to the last step's Adam. A sample is "matmul" when an OpenBLAS sgemm frame is on its
stack (kernels and packing); the others are listed by leaf function, a libc or kernel leaf
under its first mpiformer caller. With MS_PER_SAMPLE (record with a fixed period, e.g.
`-e cpu-clock -c 250000` = 0.25 ms) the milliseconds are on-CPU time, which other jobs on
the machine do not inflate; without it they are wall-clock shares of the step.

    perf record -e cpu-clock -c 250000 -g -o step.data -- \\
        mpirun -np 1 build/bench/bench_model base 64 32 3
    bench/profile_step.py step.data 25 0.25
"""
import collections
import re
import subprocess
import sys

HEADER = re.compile(r"^\s*\d+\.\d+:\s*$")  # a sample's time line (perf pads it to 12 chars)
PROJ = ("ops_", "optim_", "model_", "tpops_", "core_", "dmat_")


def samples_of(path):
    out = subprocess.run(["perf", "script", "-i", path, "-F", "time,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    samples, cur = [], None
    for line in out.split("\n"):
        if not line.strip():
            if cur:
                samples.append(cur)
            cur = None
        elif HEADER.match(line):  # " 9976.62: ", or "10025.81: " with no space
            cur = (float(line.split()[0].rstrip(":")), [])
        elif cur is not None:
            parts = line.split(None, 1)
            cur[1].append(parts[1].split("+")[0] if len(parts) > 1 else "?")
    if cur:
        samples.append(cur)
    return samples


def main():
    samples = samples_of(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    per = float(sys.argv[3]) if len(sys.argv) > 3 else None
    ends = []  # [first, last] time of each cluster of samples inside optim_update
    for t in (t for t, st in samples if "optim_update" in st):
        if not ends or t - ends[-1][1] > 0.5:
            ends.append([t, t])
        else:
            ends[-1][1] = t
    if len(ends) < 2:
        sys.exit("fewer than two optim_update clusters: record at least one timed step")
    t0, t1, nsteps = ends[0][1], ends[-1][1], len(ends) - 1
    step = [st for t, st in samples if t0 < t <= t1]
    tot = len(step)
    ms = (tot * per / nsteps) if per else 1e3 * (t1 - t0) / nsteps
    mm, cnt = 0, collections.Counter()
    for st in step:
        if any(s.startswith(("sgemm", "cblas_sgemm", "psgemm")) for s in st):
            mm += 1
            continue
        key = st[0]
        if not key.startswith(PROJ):
            key += " <- " + next((s for s in st[1:] if s.startswith(PROJ)), "?")
        cnt[key] += 1
    print(f"{nsteps} steps, {ms:.0f} ms per step ({'on-CPU' if per else 'wall'}), {tot} samples")
    print(f"matmul (OpenBLAS)  {100 * mm / tot:5.1f}%  {ms * mm / tot:7.1f} ms")
    print(f"outside matmuls    {100 * (tot - mm) / tot:5.1f}%  {ms * (tot - mm) / tot:7.1f} ms")
    for k, c in cnt.most_common(top):
        print(f"  {100 * c / tot:5.2f}%  {ms * c / tot:7.1f} ms  {k}")


if __name__ == "__main__":
    main()
