"""Deterministic against free batching, side by side in one run (issue 12; figures in docs/batching.md).

With the tiny real-architecture test models (seeded random weights: a diffusers SDXL
pipeline and a BLIP-2 captioner; ``PANICFLOW_TEST_MODELS=1``), one fixed-seed experiment
is run in each batching setting on LocalClusters of 1 and of 4 worker processes, and reports

* the share of fixed-seed runs whose outputs differ between 1 and 4 workers (free batching:
  the batch a step lands in depends on the cluster; deterministic: it must be 0);
* the runs stage's throughput (invocations per second of wall time, first model call to last)
  of free, deterministic and deterministic + per_item batching on the same cluster.

    PANICFLOW_TEST_MODELS=1 .venv/bin/python scripts/measure_batching.py [--runs 16] [--steps 10] [--out FILE]

Add ``--device-models`` on a GPU machine to use the catalog's real-size random-weight
architectures instead of the tiny ones (see scripts/gpu_check.py for the GPU check itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("PANICFLOW_TEST_MODELS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import panicflow  # noqa: E402


def config(runs: int, steps: int, mode: str, invariant: str = "none") -> dict:
    seeds = list(range(1, 1 + max(1, runs // 4)))
    prompts = ["a red fox in the snow", "a lighthouse at night", "an old map of the sea", "a bowl of ripe pears"]
    return {
        "networks": [["TinySDXL", "TinyBLIP2"]], "seeds": seeds, "prompts": prompts[: max(1, runs // len(seeds))],
        "embedding_models": ["TinyBertText"], "max_length": steps, "persistence": {"maxdim": 0},
        "batching": {"mode": mode, "invariant": invariant},
    }


def run(client: Client, cfg: dict) -> dict:
    store = tempfile.mkdtemp(prefix="pf-batching-")
    eid = panicflow.run_experiment(cfg, store=store, client=client)
    root = panicflow.open_experiment(eid, store=store)["/"].ds
    hashes = root.output_hash.values.astype(object)
    started = root.started_at.values.astype("datetime64[us]").astype("int64")
    ended = root.ended_at.values.astype("datetime64[us]").astype("int64")
    valid = hashes != ""
    seconds = (ended[valid].max() - started[valid].min()) / 1e6
    return {"hashes": hashes, "invocations": int(valid.sum()), "seconds": float(seconds),
            "mean_batch": float(root.batch_size.values[valid].mean())}


def differing_runs(a: np.ndarray, b: np.ndarray) -> int:
    return int(sum(not np.array_equal(x, y) for x, y in zip(a, b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    for workers in (1, 4):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            settings = [("free", "none"), ("deterministic", "none")]
            if workers == 4:
                settings.append(("deterministic", "per_item"))
            for mode, invariant in settings:
                key = f"{mode}{'+' + invariant if invariant != 'none' else ''}@{workers}"
                results[key] = run(client, config(args.runs, args.steps, mode, invariant))
                r = results[key]
                print(f"{key:28s} {r['invocations']} invocations in {r['seconds']:.1f} s "
                      f"({r['invocations'] / r['seconds']:.1f}/s), mean batch {r['mean_batch']:.2f}", flush=True)
    n = len(results["free@1"]["hashes"])
    report = {
        "runs": n,
        "free: runs differing between 1 and 4 workers": differing_runs(results["free@1"]["hashes"], results["free@4"]["hashes"]),
        "deterministic: runs differing between 1 and 4 workers": differing_runs(
            results["deterministic@1"]["hashes"], results["deterministic@4"]["hashes"]),
        "per_item vs deterministic@4: runs differing": differing_runs(
            results["deterministic+per_item@4"]["hashes"], results["deterministic@4"]["hashes"]),
        "throughput (invocations/s)": {k: round(v["invocations"] / v["seconds"], 2) for k, v in results.items()},
        "mean batch size": {k: round(v["mean_batch"], 2) for k, v in results.items()},
    }
    tp = report["throughput (invocations/s)"]
    report["deterministic / free throughput, 4 workers"] = round(tp["deterministic@4"] / tp["free@4"], 2)
    report["per_item / deterministic throughput, 4 workers"] = round(tp["deterministic+per_item@4"] / tp["deterministic@4"], 2)
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
