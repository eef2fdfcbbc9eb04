#!/usr/bin/env python
"""A/B the C++ micro-benchmarks of two builds, alternating runs (other processes may load the
machine): prints the median and the best real time per benchmark and binary.

    python benchmarks/ab_micro.py OLD_BINARY NEW_BINARY --filter 'linear/n:1/' --rounds 5
"""
import argparse
import json
import os
import statistics
import subprocess
from collections import defaultdict

p = argparse.ArgumentParser()
p.add_argument("binaries", nargs="+")
p.add_argument("--filter", default=".")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--min-time", default="0.1")
p.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", ""))
a = p.parse_args()
env = dict(os.environ)
if a.threads:
    env["OMP_NUM_THREADS"] = a.threads
times = defaultdict(list)  # (binary, name) -> [ns]
extra = {}
loads = []
for _ in range(a.rounds):
    for b in a.binaries:
        out = subprocess.run([b, f"--benchmark_filter={a.filter}", f"--benchmark_min_time={a.min_time}",
                              "--benchmark_format=json"], env=env, capture_output=True, text=True, check=True).stdout
        for d in json.loads(out[out.index("{"):])["benchmarks"]:
            scale = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[d["time_unit"]]
            times[(b, d["name"])].append(float(d["real_time"]) * scale)
        loads.append(os.getloadavg()[0])
names = []
for (_, n) in times:
    if n not in names:
        names.append(n)
print(f"rounds={a.rounds}, threads={a.threads or 'default'}, load averages {min(loads):.1f}..{max(loads):.1f}")
print(f"{'benchmark':50s} " + " ".join(f"{os.path.basename(os.path.dirname(b)) or b:>22s}" for b in a.binaries))
for n in names:
    cells = []
    for b in a.binaries:
        t = times.get((b, n), [])
        cells.append(f"{statistics.median(t) / 1e3:10.1f}/{min(t) / 1e3:9.1f}us" if t else " " * 22)
    print(f"{n.replace('/real_time', ''):50s} " + " ".join(cells))
print("(median/best microseconds per call)")
