"""Measure the peak memory and time of one persistence diagram, to fit ``estimate_cost``.

Each measurement runs the way a worker runs a diagram: ``run_in_child`` (exact float64
distances, ``metric="precomputed"``, one thread) in a fresh child process, whose peak
RSS (``VmHWM``: the whole child, interpreter and imports included) is reported. A
measurement still running after ``--timeout`` seconds is stopped (``OverTime``) and
listed as such; larger clouds of that shape and dimension are then not tried.

Cloud shapes (768-d):

* ``sphere``: i.i.d. unit vectors, nearly equidistant: the costliest shape per point;
* ``uniform``: i.i.d. uniform in [0, 1), what the dummy embedders DummyText/DummyVision give;
* ``walk``: a normalised random walk, a curve-like trajectory;
* ``loop``: ``uniform`` with n/10 distinct points, each 10 times: the exact duplicates
  of a looping run.

    .venv/bin/python scripts/measure_diagram_memory.py [--timeout 150] [--json out.jsonl] [--quick]

Prints a Markdown table (docs/diagrams.md keeps the last one) with the estimate of
``panicflow.analysis.topology.estimate_cost`` next to each measurement.
"""

from __future__ import annotations

import argparse
import json
import threading

import numpy as np

from panicflow.analysis.diagram_process import ChildDied, ChildError, OverTime, run_in_child
from panicflow.analysis.topology import estimate_cost

# (maxdim, shape) -> sizes, smallest first
GRID = {
    (0, "uniform"): [1000, 2500, 5000],
    (0, "loop"): [2500, 5000],
    (1, "sphere"): [150, 200, 250, 300],
    (1, "uniform"): [500, 1000, 1500],
    (1, "walk"): [500, 1000],
    (1, "loop"): [500, 750, 1000, 1250],
    (2, "sphere"): [50, 75, 100],
    (2, "uniform"): [50, 100, 150],
    (2, "walk"): [100, 250, 500],
    (2, "loop"): [100, 250, 500],
    (3, "walk"): [50, 75, 100, 125, 150],
    (3, "uniform"): [40, 60, 80],
    (3, "loop"): [100, 200, 300],
}
QUICK = {key: sizes[:2] for key, sizes in GRID.items()}


def cloud(shape: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if shape == "sphere":
        pts = rng.normal(size=(n, 768))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    elif shape == "uniform":
        pts = rng.random((n, 768))
    elif shape == "walk":
        pts = np.cumsum(rng.normal(size=(n, 768)), axis=0)
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    elif shape == "loop":
        k = max(2, n // 10)
        pts = rng.random((k, 768))[np.arange(n) % k]
    else:
        raise ValueError(shape)
    return pts.astype(np.float32)


def measure(shape: str, n: int, maxdim: int, timeout: float) -> dict:
    pts = cloud(shape, n, n * 10 + maxdim)
    row = {"shape": shape, "n": n, "distinct": len(np.unique(pts, axis=0)), "maxdim": maxdim}

    def work() -> None:  # a new thread: a fresh child process, so its peak RSS is this diagram's
        try:
            out = run_in_child(pts, maxdim, False, 1, time_limit_s=timeout)
            row.update(seconds=out.seconds, peak_gb=out.peak_gb, pairs=[len(d) for d in out.diagrams])
        except OverTime:
            row["timeout"] = timeout
        except (ChildDied, ChildError) as exc:
            row["error"] = str(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per measurement")
    ap.add_argument("--json", help="also append every measurement to this JSON-lines file")
    ap.add_argument("--quick", action="store_true", help="two sizes per shape only")
    ap.add_argument("--maxdim", type=int, action="append", help="only these homology dimensions")
    args = ap.parse_args()
    grid = QUICK if args.quick else GRID
    print("| maxdim | cloud | n | distinct | seconds | peak GB | estimate GB | estimate / peak |")
    print("|---|---|---|---|---|---|---|---|")
    for (maxdim, shape), sizes in sorted(grid.items()):
        if args.maxdim and maxdim not in args.maxdim:
            continue
        for n in sizes:
            row = measure(shape, n, maxdim, args.timeout)
            est = estimate_cost(n, maxdim)[1]
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**row, "estimate_gb": est}) + "\n")
            if "peak_gb" not in row:
                why = f"over {args.timeout:g} s" if "timeout" in row else f"error {row['error']}"
                print(f"| {maxdim} | {shape} | {n} | {row['distinct']} | {why} | | {est:.2f} | |", flush=True)
                break
            print(f"| {maxdim} | {shape} | {n} | {row['distinct']} | {row['seconds']:.1f} | {row['peak_gb']:.2f} | "
                  f"{est:.2f} | {est / row['peak_gb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
