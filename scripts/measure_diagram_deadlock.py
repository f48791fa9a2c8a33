"""Count hangs of two threads computing diagrams at once in one process.

Each trial is a fresh process whose two threads each call ``compute_diagram`` on
``--calls`` small clouds (60 points, H0-H1); a trial still running after
``--timeout`` seconds is counted as hung and killed. ``in-process`` calls giotto-ph
in the threads themselves (``isolated=False``, what panicflow did before the diagram
stage moved it to child processes); ``child`` is the default ``isolated=True``.

    .venv/bin/python scripts/measure_diagram_deadlock.py [--trials 10] [--calls 40] [--timeout 60]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

_TRIAL = r"""
import sys, threading
import numpy as np
from panicflow.analysis.topology import PersistenceOptions, compute_diagram

isolated, calls = sys.argv[1] == "child", int(sys.argv[2])
def work(seed):
    rng = np.random.default_rng(seed)
    for _ in range(calls):
        assert compute_diagram(rng.normal(size=(60, 32)), PersistenceOptions(maxdim=1), isolated=isolated).status == "ok"
threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--calls", type=int, default=40, help="diagrams per thread and trial")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a trial counts as hung")
    ap.add_argument("--mode", choices=["in-process", "child"], action="append")
    args = ap.parse_args()
    for mode in args.mode or ["in-process", "child"]:
        hung = failed = 0
        for _ in range(args.trials):
            try:
                out = subprocess.run([sys.executable, "-c", _TRIAL, mode, str(args.calls)], capture_output=True,
                                     text=True, timeout=args.timeout)
                failed += out.returncode != 0
            except subprocess.TimeoutExpired:
                hung += 1
        print(f"{mode}: {hung} of {args.trials} trials hung, {failed} failed "
              f"(2 threads x {args.calls} diagrams, {args.timeout:g} s per trial)", flush=True)


if __name__ == "__main__":
    main()
