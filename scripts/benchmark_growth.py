"""How the runs stage grows: time, CPU per invocation and coordinator memory, with the dummy models.

Each point runs one experiment in a fresh process (``panicflow.run_experiment`` on a LocalCluster
of N single-threaded worker processes) and reports, for the runs stage (until every run ended):

* wall seconds and invocations per second;
* CPU per invocation: the coordinator process (client, coordinator and the LocalCluster's
  scheduler, which lives in it) and the worker processes, from their CPU times;
* the coordinator process's peak RSS, and its growth over the RSS once the cluster was up
  (imports and the cluster are paid once: the growth is what the experiment itself costs).

Networks [[DummyT2I, DummyI2T]], unseeded runs (they never stop early), one prompt, one
embedder (DummyText), persistence maxdim 0 (the later stages stay small).

    .venv/bin/python scripts/benchmark_growth.py --quick                  # a dry run (seconds)
    .venv/bin/python scripts/benchmark_growth.py --runs 10 100 1000 10000 --length 100
    .venv/bin/python scripts/benchmark_growth.py --runs 16 --length 100 1000 5000
    .venv/bin/python scripts/benchmark_growth.py --runs 16 --length 400 --workers 1 2 4
    .venv/bin/python scripts/benchmark_growth.py --runs 256 --length 20 --workers 1 2 4 8 --model-sleep 0.5
                                   # model time dominates (SleepT2I): does throughput follow the workers?
    ... --out growth.json                                                  # also write the rows
    ... --compare /tmp/base        # each point also with the panicflow of another checkout, interleaved
                                   # (e.g. `git worktree add /tmp/base <commit>`): ratios from one run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


class RunsStageDone(Exception):
    """Raised from the progress callback to stop an experiment once its runs ended (--runs-stage-only)."""


def one(runs: int, length: int, workers: int, store: str, sleep_s: float = 0.0, runs_stage_only: bool = False) -> dict:
    import psutil

    import panicflow

    config = {
        "name": f"growth-{runs}x{length}",
        # SleepT2I: DummyT2I that sleeps PANICFLOW_TEST_SLEEP_S per batch, a GPU-bound model's stand-in
        "networks": [["SleepT2I" if sleep_s else "DummyT2I", "DummyI2T"]],
        "seeds": [-1] * runs,
        "prompts": ["a lighthouse in a storm"],
        "embedding_models": ["DummyText"],
        "max_length": length,
        "persistence": {"maxdim": 0},
    }
    me = psutil.Process()
    marks: dict = {}

    def cpu() -> tuple[float, float]:
        own = me.cpu_times()
        kids = 0.0
        for p in me.children(recursive=True):
            try:
                t = p.cpu_times()
                kids += t.user + t.system
            except psutil.Error:
                pass
        return own.user + own.system, kids

    def on_start(exp, client) -> None:
        marks["start"] = time.perf_counter()
        marks["cpu0"] = cpu()
        marks["rss0"] = me.memory_info().rss

    expected = runs * length  # unseeded runs never stop early
    samples: list = []  # (invocations, RSS growth MB) at each tenth of the runs stage: flat or growing?

    def progress(p) -> None:
        rss = me.memory_info().rss
        marks["rss_max"] = max(marks.get("rss_max", 0), rss)
        if "rss0" in marks and p.invocations >= expected * (len(samples) + 1) / 10 and len(samples) < 10:
            samples.append((p.invocations, round((rss - marks["rss0"]) / 2**20, 1)))
        if "runs_done" not in marks and p.runs_ended == p.runs:
            marks["runs_done"] = time.perf_counter()
            marks["cpu1"] = cpu()
            marks["invocations"] = p.invocations
            if runs_stage_only:
                raise RunsStageDone

    t0 = time.perf_counter()
    try:
        panicflow.run_experiment(config, store=store, workers=workers, on_start=on_start, progress=progress)
    except RunsStageDone:
        pass
    total = time.perf_counter() - t0
    wall = marks["runs_done"] - marks["start"]
    n = marks["invocations"]
    (c0, w0), (c1, w1) = marks["cpu0"], marks["cpu1"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "runs": runs, "max_length": length, "workers": workers, "model_sleep_s": sleep_s, "invocations": n,
        "runs_stage_s": round(wall, 2), "total_s": round(total, 2), "invocations_per_s": round(n / wall, 1),
        "coordinator_cpu_ms_per_invocation": round(1000 * (c1 - c0) / n, 3),
        "worker_cpu_ms_per_invocation": round(1000 * (w1 - w0) / n, 3),
        "coordinator_peak_rss_mb": round(peak / 2**20, 1),
        "coordinator_rss_growth_mb": round((marks.get("rss_max", marks["rss0"]) - marks["rss0"]) / 2**20, 1),
        "rss_growth_mb_by_invocations": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[16])
    ap.add_argument("--length", type=int, nargs="+", default=[100])
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--model-sleep", type=float, default=0.0, metavar="S",
                    help="SleepT2I in place of DummyT2I, sleeping S seconds per batch (model time, not CPU, dominates)")
    ap.add_argument("--runs-stage-only", action="store_true",
                    help="stop each experiment once its runs ended (no embeddings or diagrams; total_s is then that)")
    ap.add_argument("--quick", action="store_true", help="4 runs x 20 steps on 1 worker")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--compare", metavar="DIR", help="a checkout whose panicflow each point also runs with")
    ap.add_argument("--repeat", type=int, default=1, help="run each point this many times")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one point, in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*json.loads(args.one))))
        return
    if args.quick:
        args.runs, args.length, args.workers = [4], [20], [1]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    codes = ([("base", os.path.abspath(args.compare))] if args.compare else []) + [("this", here)]
    rows = []
    for runs in args.runs:
        for length in args.length:
            for workers in args.workers:
                for _ in range(args.repeat):
                    for label, code in codes:  # interleaved, so that both see the same machine load
                        with tempfile.TemporaryDirectory(prefix="panicflow-growth-") as tmp:
                            point = json.dumps([runs, length, workers, os.path.join(tmp, "store"), args.model_sleep,
                                                args.runs_stage_only])
                            env = {**os.environ, "PYTHONPATH": os.pathsep.join([code, os.environ.get("PYTHONPATH", "")])}
                            if args.model_sleep:  # SleepT2I is a test model
                                env.update(PANICFLOW_TEST_MODELS="1", PANICFLOW_TEST_SLEEP_S=str(args.model_sleep))
                            out = subprocess.run([sys.executable, __file__, "--one", point], capture_output=True,
                                                 text=True, env=env, cwd=tmp)
                        if out.returncode:
                            sys.exit(f"point {point} ({label}) failed:\n{out.stderr[-3000:]}")
                        row = {"code": label, **json.loads(out.stdout.strip().splitlines()[-1])}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    keys = [k for k in rows[0] if k != "rss_growth_mb_by_invocations"]  # the samples are in the JSON rows
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
