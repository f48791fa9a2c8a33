"""Results while an experiment runs, and adaptive clusters (issue 20 items 5 and 6).

``waves`` (the default): one experiment on a GPU box's stand-in: one worker declaring a ``GPU``
resource (one thread, feeding the "GPU") and one CPU worker (one thread), started by a
``SpecCluster``; the network [SleepT2I, SleepI2T] (each call sleeps S seconds: GPU time, no CPU),
unseeded runs, one CPU embedder (DummyText), diagrams of H0 and H1 (CPU). ``--cpu-only`` uses a
LocalCluster of N single-threaded workers and [SleepT2I, DummyI2T] instead. From the store
afterwards (each stage's start and end times, measured on the workers), with t = 0 at the first
model call:

* time to the first finished run, and the share of runs ended when half of the invocations were done
  (runs that advance in lockstep all end at the end);
* the share of the embedding and diagram tasks done before the last invocation ended (stages that
  overlap the model calls leave less to do once the GPU is idle), and the time from the last
  invocation to the end of the experiment (the tail).

``adaptive``: a user's script (LocalCluster(n_workers=1).adapt(minimum=1, maximum=3), then
run_experiment with that client), sampling the number of workers every second: the counts over
time, their maximum, the wall time, and whether anything reached stderr (tracebacks).

Each point runs in a fresh process; with ``--compare DIR`` each point also runs with the panicflow
of another checkout (``git worktree add /tmp/base <commit>``), interleaved, so ratios come from one run.

    .venv/bin/python scripts/benchmark_waves.py --quick
    .venv/bin/python scripts/benchmark_waves.py --runs 120 --length 50 --model-sleep 0.05 --compare /tmp/base
    .venv/bin/python scripts/benchmark_waves.py --cpu-only --workers 2 ...
    .venv/bin/python scripts/benchmark_waves.py adaptive --runs 15 --length 12 --model-sleep 1 --compare /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _config(runs: int, length: int, i2t: str = "SleepI2T") -> dict:
    return {
        "name": f"waves-{runs}x{length}",
        "networks": [["SleepT2I", i2t]],
        "seeds": [-1],
        "prompts": [f"prompt {i}" for i in range(runs)],
        "embedding_models": ["DummyText"],
        "max_length": length,
        "batch_size": {"SleepT2I": 4, i2t: 4},
        "persistence": {"maxdim": 1},
    }


def _gpu_box():
    """A scheduler, one worker with a GPU resource (its one thread feeds the GPU) and one CPU worker."""
    from distributed import Nanny, Scheduler, SpecCluster

    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        workers={"gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
                 "cpu": {"cls": Nanny, "options": {"nthreads": 1}}},
    )


def waves(runs: int, length: int, workers: int, store: str, cpu_only: bool = False) -> dict:
    import numpy as np
    from distributed import Client

    import panicflow

    t0 = time.perf_counter()
    if cpu_only:
        eid = panicflow.run_experiment(_config(runs, length, "DummyI2T"), store=store, workers=workers,
                                       dashboard_address=":0")
    else:
        with _gpu_box() as cluster, Client(cluster) as client:
            eid = panicflow.run_experiment(_config(runs, length), store=store, client=client)
    wall = time.perf_counter() - t0
    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    started = root.started_at.values.astype("datetime64[us]").astype(np.int64)
    ended = root.ended_at.values.astype("datetime64[us]").astype(np.int64)
    done = ended[ended > np.iinfo(np.int64).min]
    zero, last = started[started > np.iinfo(np.int64).min].min(), done.max()
    run_end = np.where(ended > np.iinfo(np.int64).min, ended, np.iinfo(np.int64).min).max(axis=1)
    half = np.sort(done)[len(done) // 2]
    stages = {}
    for node in ("embeddings/DummyText", "diagrams/DummyText"):
        e = tree[node].ds.ended_at.values.astype("datetime64[us]").astype(np.int64)
        stages[node.split("/")[0]] = e
    finish = max(int(v.max()) for v in stages.values())
    s = 1e-6
    return {
        "runs": runs, "max_length": length, "cluster": f"{workers} CPU workers" if cpu_only else "GPU + CPU worker",
        "invocations": int(done.size),
        "wall_s": round(wall, 1),
        "first_run_end_s": round((run_end.min() - zero) * s, 1),
        "runs_ended_at_half_invocations": round(float((run_end <= half).mean()), 3),
        "last_invocation_s": round((last - zero) * s, 1),
        "embeddings_before_last_invocation": round(float((stages["embeddings"] <= last).mean()), 3),
        "diagrams_before_last_invocation": round(float((stages["diagrams"] <= last).mean()), 3),
        "tail_after_last_invocation_s": round((finish - last) * s, 1),
    }


ADAPTIVE_SCRIPT = r"""
import json, sys, threading, time
import panicflow
from distributed import Client, LocalCluster

if __name__ == "__main__":
    config, store = json.loads(sys.argv[1]), sys.argv[2]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        cluster.adapt(minimum=1, maximum=3)
        counts, stop = [], threading.Event()
        t0 = time.monotonic()

        def watch():
            while not stop.is_set():
                counts.append((round(time.monotonic() - t0), len(client.scheduler_info(n_workers=-1).get("workers", {}))))
                stop.wait(1)

        threading.Thread(target=watch, daemon=True).start()
        panicflow.run_experiment(config, store=store, client=client)
        wall = time.monotonic() - t0
        stop.set()
    print(json.dumps({"wall_s": round(wall, 1), "counts": counts}))
"""


def adaptive(runs: int, length: int, store: str, tmp: str, env: dict) -> dict:
    config = {**_config(runs, length), "batch_size": {"SleepT2I": 1, "DummyI2T": 1}, "persistence": {"maxdim": 0}}
    script = os.path.join(tmp, "user_script.py")
    with open(script, "w") as f:
        f.write(ADAPTIVE_SCRIPT)
    out = subprocess.run([sys.executable, script, json.dumps(config), store], capture_output=True, text=True,
                         env=env, cwd=tmp)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    counts = [n for _, n in got["counts"]]
    changes = sum(1 for a, b in zip(counts, counts[1:]) if a != b)
    return {
        "runs": runs, "max_length": length, "wall_s": got["wall_s"], "max_workers": max(counts),
        "worker_changes": changes, "stderr_lines": len([l for l in out.stderr.splitlines() if l.strip()]),
        "tracebacks": out.stderr.count("Traceback"),
        "workers_over_time": _runs_of(got["counts"]),
    }


def _runs_of(counts: list) -> str:
    """``0 s: 1, 14 s: 3, 61 s: 2``: when the worker count changed."""
    out, last = [], None
    for t, n in counts:
        if n != last:
            out.append(f"{t} s: {n}")
            last = n
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=["waves", "adaptive"], default="waves")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2, help="--cpu-only: the LocalCluster's workers")
    ap.add_argument("--cpu-only", action="store_true", help="a LocalCluster of CPU workers, [SleepT2I, DummyI2T]")
    ap.add_argument("--model-sleep", type=float, default=0.05, metavar="S", help="SleepT2I's seconds per batch")
    ap.add_argument("--quick", action="store_true", help="a dry run: 8 runs x 10 steps")
    ap.add_argument("--compare", metavar="DIR", help="a checkout whose panicflow each point also runs with")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(waves(*json.loads(args.one))))
        return
    if args.quick:
        args.runs, args.length = 8, 10
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    codes = ([("base", os.path.abspath(args.compare))] if args.compare else []) + [("this", here)]
    rows = []
    for _ in range(args.repeat):
        for label, code in codes:  # interleaved: both see the same machine load
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([code, os.environ.get("PYTHONPATH", "")]),
                   "PANICFLOW_TEST_MODELS": "1", "PANICFLOW_TEST_SLEEP_S": str(args.model_sleep)}
            with tempfile.TemporaryDirectory(prefix="panicflow-waves-") as tmp:
                store = os.path.join(tmp, "store")
                if args.mode == "adaptive":
                    row = adaptive(args.runs, args.length, store, tmp, env)
                else:
                    point = json.dumps([args.runs, args.length, args.workers, store, args.cpu_only])
                    out = subprocess.run([sys.executable, __file__, "--one", point], capture_output=True, text=True,
                                         env=env, cwd=tmp)
                    if out.returncode:
                        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"code": label, "model_sleep_s": args.model_sleep, **row}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
