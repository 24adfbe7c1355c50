#!/usr/bin/env python3
"""Draws benchmarks/results/latest.png from latest.json: CPU-µs per request and requests/s per system."""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results", "latest.json")
report = json.load(open(path))
scenarios = report["scenarios"]
names = list(scenarios)
cpu = [scenarios[n]["cpu_us_per_req"] or 0 for n in names]
redis = [scenarios[n].get("redis_cpu_us_per_req") or 0 for n in names]
rps = [scenarios[n]["rps"] / 1000 for n in names]
colors = ["#e07b39" if n.startswith("gatehouse") else "#5b8db8" if n.startswith("haproxy") else "#7a9a4a"
          if n == "nginx" else "#999999" for n in names]

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
left.barh(names, cpu, color=colors)
left.barh(names, redis, left=cpu, color="#d9d9d9", hatch="//", edgecolor="#888888", label="Redis's CPU")
left.set_xlabel("CPU-µs per request, proxy + Redis (lower is better)")
for y, (v, r) in enumerate(zip(cpu, redis)):
    if v:
        left.text(v + r, y, f" {v + r:.1f}" if not r else f" {v:.1f} + {r:.1f}", va="center", fontsize=8)
if any(redis):
    left.legend(loc="lower right", fontsize=8)
right.barh(names, rps, color=colors)
right.set_xlabel("thousand requests/s (one proxy thread, wrk -c32)")
for y, v in enumerate(rps):
    right.text(v, y, f" {v:.0f}k", va="center", fontsize=8)
for ax in (left, right):
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
right.set_yticklabels([])
fig.suptitle(f"Gatehouse vs nginx and HAProxy, same upstream, one run — {report['date']}, {report['machine']}, "
             f"{report['git_commit']}", fontsize=9)
fig.tight_layout()
out = os.path.join(os.path.dirname(path), "latest.png")
fig.savefig(out, dpi=110)
print(out)
