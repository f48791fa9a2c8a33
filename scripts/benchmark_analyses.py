"""Time and peak memory of the issue 24 analyses at 100k and 1M embeddings (docs/performance.md,
"Analyses at 100k and 1M embeddings (issue 24)").

    .venv/bin/python scripts/benchmark_analyses.py --runs 100 --steps 1000 --store /tmp/bench100k
    .venv/bin/python scripts/benchmark_analyses.py --runs 1000 --steps 1000 --store /tmp/bench1m --timeout 600

1. Writes a synthetic experiment straight into a panicflow store, the way the legacy importer does
   (``Experiment.create`` lays out the arrays; under the experiment's lease an ``ExperimentWriter``
   writes the steps, run ends and diagrams, ``write_embedding_rows`` and ``mark_embedded`` the
   vectors): ``--runs`` runs of ``--steps`` steps, a vector of the 384-d ``all-MiniLM-L6-v2`` at
   every step (so runs x steps embeddings). Vectors with cluster structure: 20 random unit centres;
   a run stays at a centre for a geometric number of steps (mean 25) then jumps to another one; a
   vector is its centre plus gaussian noise (sd 0.01 per dimension), and 5 % of the steps are
   random unit vectors (transit). The per-run diagrams are H0 only (maxdim 0), computed exactly from
   the minimum spanning tree of the raw vectors (the H0 bars of a Vietoris-Rips filtration), so
   that ``run-table`` has stored diagrams to read. Two networks, unseeded, every run ended by length.
2. Runs each analysis as ``panicflow analyse ...`` in a fresh subprocess, one at a time, at
   ``nice 10``; polls the process tree (the command and its Dask workers) every 0.2 s with psutil
   for the peak resident memory (``peak tree``: the largest sum over the tree at one poll;
   ``peak proc``: the largest single process) and stops a command after ``--timeout`` seconds,
   recording the last line it had written to stderr. A command whose 100k time, scaled by its
   order in n, predicts more than ``--factor`` (1.5) x the timeout is not started (``--predict-from``).

Prints a markdown table and writes it as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "all-MiniLM-L6-v2"
N_CENTRES = 20
MEAN_DWELL = 25
SIGMA = 0.01
TRANSIT = 0.05


def make(store: str, n_runs: int, n_steps: int, seed: int = 0) -> str:
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import pdist, squareform

    from panicflow.analysis.topology import DiagramResult, persistent_entropy
    from panicflow.config import ExperimentConfig, PersistenceConfig
    from panicflow.store import Store, consolidated
    from panicflow.store.experiment import Experiment, ExperimentWriter, RunEnd, now_us, vector_digest, write_embedding_rows
    from panicflow.store.journal import StepRecord

    st = Store(store, create=True)
    prompts = [f"prompt {i}" for i in range((n_runs + 1) // 2)]
    cfg = ExperimentConfig(networks=[["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]], seeds=[-1], prompts=prompts,
                           embedding_models=[MODEL], max_length=n_steps, name=f"bench-{n_runs}x{n_steps}",
                           persistence=PersistenceConfig(maxdim=0))
    eid = st.new_experiment_id()
    exp = Experiment.create(st.root, eid, cfg)
    runs = cfg.runs()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CENTRES, 384))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t0 = now_us()
    with exp.take("benchmark"):
        exp.write_state("running", started_us=t0)
        w = ExperimentWriter(exp)
        for spec in runs:
            i = spec.index
            v, _ = _run_vectors(rng, centres, n_steps)
            w.write_steps(i, [StepRecord(run=i, step=k, model=spec.model_at(k), kind="text", hash=f"{i:06d}{k:06d}",
                                         text=f"caption {i} {k}", seed=-1, started_us=t0, ended_us=t0) for k in range(n_steps)])
            w.write_run_end(i, RunEnd(n_steps, "length"))
            write_embedding_rows(exp, i, MODEL, v)
            w.mark_embedded(i, MODEL, digest=vector_digest(v))
            mst = minimum_spanning_tree(squareform(pdist(v.astype(np.float64)))).data
            h0 = np.concatenate([np.column_stack([np.zeros(len(mst)), np.sort(mst)]), [[0.0, np.inf]]])
            w.write_diagram(i, MODEL, DiagramResult("ok", "", n_steps, n_steps, 0, [h0], persistent_entropy([h0]),
                                                    steps=np.arange(n_steps)))
        exp.write_state("complete", completed_us=now_us())
    consolidated.refresh(exp)
    return eid


def _run_vectors(rng, centres: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """One run's float32 vectors and the centre of each step (-1: a random transit vector)."""
    jumps = np.flatnonzero(rng.random(n_steps) < 1.0 / MEAN_DWELL)
    which = np.zeros(n_steps, np.int64)
    c = rng.integers(N_CENTRES)
    prev = 0
    for j in list(jumps) + [n_steps]:
        which[prev:j] = c
        c = (c + rng.integers(1, N_CENTRES)) % N_CENTRES
        prev = j
    v = centres[which] + SIGMA * rng.normal(size=(n_steps, 384))
    transit = rng.random(n_steps) < TRANSIT
    r = rng.normal(size=(int(transit.sum()), 384))
    v[transit] = r / np.linalg.norm(r, axis=1, keepdims=True)
    return v.astype(np.float32), np.where(transit, -1, which)


def truth(store: str, eid: str, seed: int = 0) -> None:
    """Store the generating centres as a clusters result ``truth`` (label: the centre, -1 a transit vector), replaying
    ``make``'s random draws, so that the label-only analyses can be timed where no clustering finished."""
    from panicflow.analysis.results import open_store, versions, write_result

    exp = open_store(store).experiment(eid)
    n_runs, n_steps = exp.group(read_only=True)["output_hash"].shape
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CENTRES, 384))
    labels = np.stack([_run_vectors(rng, centres, n_steps)[1] for _ in range(n_runs)]).astype(np.int32)
    ids = np.arange(N_CENTRES, dtype=np.int32)
    write_result(exp, "clusters", "truth", {
        "label": (["run", "step"], labels, {"description": "generating centre; -1 a random transit vector"}),
        "probability": (["run", "step"], np.ones(labels.shape, np.float32), {"description": "1"}),
        "cluster_id": (["cluster"], ids, {"description": "centre"}),
        "size": (["cluster"], np.array([(labels == c).sum() for c in ids], np.int64), {"description": "vectors"}),
        "medoid_experiment": (["cluster"], np.full(N_CENTRES, eid), {"description": "-"}),
        "medoid_run": (["cluster"], np.zeros(N_CENTRES, np.int64), {"description": "-"}),
        "medoid_step": (["cluster"], np.zeros(N_CENTRES, np.int64), {"description": "-"}),
    }, {"kind": "clusters", "parameters": {"model": MODEL, "algorithm": "truth"}, "inputs": [eid], "library": "benchmark",
        "versions": versions("numpy"), "n_vectors": int(labels.size), "n_clusters": N_CENTRES,
        "n_noise": int((labels == -1).sum()), "fitted": False})


def commands(eid: str, store: str, labels: str = "fast") -> list[tuple[str, list[str], float]]:
    """(label, panicflow arguments, order in n of its cost for the prediction: 1 linear, 2 quadratic; hdbscan 1.25, as
    measured from 100k to 1M in "Analysis: clustering at scale")."""
    s = ["--store", store]
    m = ["--model", MODEL]
    return [
        ("cluster (hdbscan, reduce auto)", ["analyse", "cluster", eid, *m, "--name", "hdb", *s], 1.25),
        ("cluster (fast_hdbscan, reduce auto)", ["analyse", "cluster", eid, *m, "--algorithm", "fast_hdbscan", "--name", "fast", *s], 1),
        ("cluster (evoc, reduce auto)", ["analyse", "cluster", eid, *m, "--algorithm", "evoc", "--name", "evoc", *s], 1),
        ("cluster (fast_hdbscan, sample 100,000)", ["analyse", "cluster", eid, *m, "--algorithm", "fast_hdbscan", "--sample", "100000",
                                                     "--name", "fast-s100k", *s], 1),
        # a KD-tree over the fitted members: about n log n in the vectors assigned and the members (brute force was n^2)
        ("assign (fast clustering to itself)", ["analyse", "assign", eid, "--clustering", "fast", "--from", eid, "--name", "assigned", *s], 1.2),
        ("assign (sampled fast clustering to itself)", ["analyse", "assign", eid, "--clustering", "fast-s100k", "--from", eid,
                                                         "--name", "assigned-s100k", *s], 1),
        ("stability (fast_hdbscan, 2 x 50 %)", ["analyse", "stability", eid, *m, "--algorithm", "fast_hdbscan", "--resamples", "2",
                                                 "--fraction", "0.5", "--name", "stab-fast", *s], 1),
        ("stability (hdbscan, 2 x 50 %)", ["analyse", "stability", eid, *m, "--resamples", "2", "--fraction", "0.5", "--name", "stab-hdb", *s], 1.25),
        (f"dynamics (labels: {labels})", ["analyse", "dynamics", eid, "--clustering", labels, *s], 1),
        (f"sequences (labels: {labels})", ["analyse", "sequences", eid, "--clustering", labels, *s], 1),
        ("knn (k 10)", ["analyse", "knn", eid, *m, *s], 2),
        ("noise-sweep (hdbscan, sizes 10,50)", ["analyse", "noise-sweep", eid, *m, "--sizes", "10,50", "--name", "sweep-hdb", *s], 1.25),
        ("noise-sweep (fast_hdbscan, sizes 10,50)", ["analyse", "noise-sweep", eid, *m, "--sizes", "10,50", "--algorithm", "fast_hdbscan",
                                                      "--name", "sweep-fast", *s], 1),
        (f"recurrence (labels: {labels})", ["analyse", "recurrence", eid, "--clustering", labels, *s], 1),
        ("windows (W 10, S 5, H0-H1)", ["analyse", "windows", eid, *m, *s], 1),
        ("run-table", ["analyse", "run-table", eid, *s], 1),
    ]


def measure(args: list[str], timeout: float, env: dict) -> dict:
    import psutil

    exe = str(Path(sys.executable).with_name("panicflow"))
    err_path = Path(f"/tmp/bench-stderr-{os.getpid()}.txt")
    with open(err_path, "w") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(["nice", "-n", "10", exe, *args], stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True)
        proc = psutil.Process(p.pid)
        peak_tree = peak_proc = 0
        timed_out = False
        while p.poll() is None:
            try:
                tree = [proc] + proc.children(recursive=True)
                rss = []
                for q in tree:
                    try:
                        rss.append(q.memory_info().rss)
                    except psutil.Error:
                        pass
                peak_tree, peak_proc = max(peak_tree, sum(rss)), max(peak_proc, max(rss, default=0))
            except psutil.Error:
                pass
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(p.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        out = p.communicate()[0].decode(errors="replace")
        wall = time.perf_counter() - t0
    lines = [ln for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
    err_path.unlink()
    return {"wall_s": round(wall, 1), "peak_tree_mib": round(peak_tree / 2**20), "peak_proc_mib": round(peak_proc / 2**20),
            "rc": p.returncode, "timed_out": timed_out, "stdout": out.strip()[-300:], "stderr_tail": lines[-3:],
            "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--store", required=True)
    ap.add_argument("--experiment", help="an experiment made by an earlier call (skip making one)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--skip", default="", help="comma-separated labels (prefixes) not to run")
    ap.add_argument("--predict-from", help="JSON written by a smaller run: skip what it predicts at > --factor x --timeout")
    ap.add_argument("--factor", type=float, default=1.5)
    ap.add_argument("--run", default="", help="comma-separated labels (prefixes) run whatever --predict-from predicts")
    ap.add_argument("--make-only", action="store_true", help="make the experiment, print its id, stop")
    ap.add_argument("--labels", default="fast", help="clustering read by dynamics, sequences, recurrence (truth: the "
                                                     "generating centres, stored by --truth)")
    ap.add_argument("--truth", action="store_true", help="store the generating centres as clustering 'truth' first")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    env = dict(os.environ)
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    if a.experiment:
        eid = a.experiment
        info["make_s"] = None
    else:
        t = time.perf_counter()
        eid = make(a.store, a.runs, a.steps)
        info["make_s"] = round(time.perf_counter() - t, 1)
        print(f"made {eid} ({a.runs} x {a.steps}) in {info['make_s']} s", flush=True)
        if a.make_only:
            return
    if a.truth:
        truth(a.store, eid)
    n = a.runs * a.steps
    prior = {}
    if a.predict_from:
        old = json.loads(Path(a.predict_from).read_text())
        prior = {r["label"]: (r, old["n"]) for r in old["results"]}
    skip = [x.strip() for x in a.skip.split(",") if x.strip()]
    results = []
    for label, args, order in commands(eid, a.store, a.labels):
        if any(label.startswith(x) for x in skip):
            continue
        forced = any(label.startswith(x.strip()) for x in a.run.split(",") if x.strip())
        if label in prior and not forced and not prior[label][0].get("timed_out") and prior[label][0].get("rc") == 0:
            r0, n0 = prior[label]
            guess = r0["wall_s"] * (n / n0) ** order
            if guess > a.factor * a.timeout:
                results.append({"label": label, "skipped": f"predicted ~{guess:,.0f} s (O(n^{order}) from {r0['wall_s']} s at {n0:,})"})
                print(json.dumps(results[-1]), flush=True)
                continue
        r = {"label": label, "command": "panicflow " + " ".join(args)} | measure(args, a.timeout, env)
        results.append(r)
        print(json.dumps(r), flush=True)
    info["load_after"] = os.getloadavg()
    doc = {"n": n, "runs": a.runs, "steps": a.steps, "experiment": eid, "info": info, "results": results}
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=2))
    print("| command | wall s | peak RSS, tree | peak RSS, one process | outcome |")
    print("|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['label']} | — | — | — | not run: {r['skipped']} |")
        else:
            outcome = f"stopped at {a.timeout:.0f} s" if r["timed_out"] else ("ok" if r["rc"] == 0 else f"exit {r['rc']}")
            print(f"| {r['label']} | {r['wall_s']:,} | {r['peak_tree_mib']:,} MiB | {r['peak_proc_mib']:,} MiB | {outcome} |")


if __name__ == "__main__":
    main()
