"""End-to-end benchmark of panicflow's core pipeline with the CPU dummy models.

Runs one experiment through the public API (``panicflow.run_experiment`` on a
LocalCluster it starts itself), timestamps the stage transitions from the
``progress=`` callback, records every Dask task's compute time from the
scheduler's task stream, then reads the results back through
``panicflow.open_experiment`` and recomputes every persistence diagram with
direct giotto-ph calls (sequentially, and on a process pool) to compare the
cost and check that panicflow stored exactly the same diagrams. Two direct
forms are timed and compared (``--forms``):

* ``exact``: ``ripser_parallel(squareform(pdist(points.astype(float64))),
  metric="precomputed", ...)``, the call panicflow documents as its contract
  (analysis/topology.py); must give 0 mismatches;
* ``raw``: ``ripser_parallel(points, ...)`` on the float32 points, giotto-ph's own
  metric. It does not match panicflow bit for bit (float32/BLAS-dependent
  distances: extra near-zero H0 bars for duplicate points, ~1e-7 differences
  elsewhere), which is why panicflow passes exact distances; its mismatches are
  reported, not an error.

    .venv/bin/python scripts/benchmark_core.py                 # 32 runs x 1000 steps, maxdim 1
    .venv/bin/python scripts/benchmark_core.py --quick         # 4 runs x 100 steps, a dry run
    .venv/bin/python scripts/benchmark_core.py --maxdim 2 --forms exact --out bench.json   # panicflow default maxdim, ~35 min
    .venv/bin/python scripts/benchmark_core.py --quick --profile /tmp/coord.prof   # cProfile the coordinator

Default experiment: networks [[DummyT2I, DummyI2T]], 32 seeds all -1 (unseeded
runs never stop early, so every run goes to max_length), 1 prompt,
embedding_models [DummyText, DummyVision2], max_length 1000: 32,000
invocations, 32,000 vectors (each run has 500 texts and 500 images) and 64
point clouds of 500 points each.

Why the default ``--maxdim`` is 1 and not panicflow's default 2
-----------------------------------------------------------------
panicflow's ``persistence.maxdim`` defaults to 2, with ``memory_budget_gb`` =
half the worker's memory limit and ``fallback: skip``. On a 500-point cloud
its estimate (``estimate_cost``: 0.43 GB, ~14 s) is far inside that budget
(about 5.8 GB per worker on a 2-worker, 24 GB machine), so nothing is skipped
and the full H2 is computed. Measured on this machine (2 cores, giotto-ph
0.2.4, 1 thread, collapse_edges False, one seed -1 run of 1000 steps):

    DummyText    (500 pts, 322 distinct i.i.d. random vectors)  H1 1.07 s   H2 21.1 s
    DummyVision2 (500 pts, 499 distinct, colour lattice)        H1 0.33 s   H2  5.4 s

(raw float32 points; exact distances cost the same within noise, pdist adds
~0.05-0.1 s per cloud). So maxdim 2 costs about 26 s of CPU per run: 32 runs =
~14 min of CPU inside the experiment (~7 min wall on 2 workers), and each direct
form redoes it twice (~14 min sequential + ~7 min pooled): 50+ min in all.
maxdim 1 costs about 1.4 s per run (22-50 s per direct sequential pass), and
the whole default benchmark took 4-9 min here (the experiment itself 165-385 s)
while other jobs kept the load average at 4-9 on the 2 cores. The runs and embedding stages, which are what this measures,
are then not drowned by H2. Pass ``--maxdim 2 --forms exact`` to measure
panicflow's default (expect ~35 min).

Memory: ``ru_maxrss`` of this process (which also hosts the LocalCluster
scheduler; workers are separate processes) is recorded right after
``run_experiment`` returns, before the store is read back, together with a
psutil sampling thread (every 0.1 s) for this process and, separately, the
sum over its child processes (nannies + workers).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

try:
    import psutil
except ImportError:  # distributed depends on it, so this should not happen
    psutil = None


# --------------------------------------------------------------------------- pool side
def _init_pool_process(blas_threads: int | None) -> None:
    if blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads)  # stays in force for the life of the process


def _warm(delay: float) -> int:
    from gph import ripser_parallel

    # the first call imports sklearn's pairwise code lazily (~3 s here): keep it out of the timing
    ripser_parallel(np.random.default_rng(0).random((20, 8)), maxdim=1, n_threads=1)
    time.sleep(delay)
    return os.getpid()


def _ph_one(points: np.ndarray, maxdim: int, collapse: bool, form: str) -> tuple[list[np.ndarray], float]:
    """One direct giotto-ph call, timed (distance matrix included for the "exact" form).

    form "raw":   ripser_parallel(points, ...), giotto-ph's own euclidean metric (sklearn,
                  |x|^2+|y|^2-2x.y in float32/BLAS), the call as a researcher would first write it;
    form "exact": ripser_parallel(D, metric="precomputed", ...) with D the float64 pairwise
                  distances from scipy pdist, the call panicflow documents as its contract
                  (analysis/topology.py); computed here independently of panicflow's code.
    """
    from gph import ripser_parallel

    t = time.perf_counter()
    if form == "exact":
        from scipy.spatial.distance import pdist, squareform

        x, metric = squareform(pdist(np.asarray(points, dtype=np.float64), metric="euclidean")), "precomputed"
    else:
        x, metric = points, "euclidean"
    dgms = ripser_parallel(x, metric=metric, maxdim=maxdim, collapse_edges=collapse, n_threads=1,
                           return_generators=False)["dgms"]
    return [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in dgms], time.perf_counter() - t


# --------------------------------------------------------------------------- helpers
def build_config(runs: int, steps: int, maxdim: int) -> dict:
    return {
        "name": f"benchmark-{runs}x{steps}",
        "networks": [["DummyT2I", "DummyI2T"]],
        "seeds": [-1] * runs,
        "prompts": ["a red balloon over the sea"],
        "embedding_models": ["DummyText", "DummyVision2"],
        "max_length": steps,
        "persistence": {"maxdim": maxdim},
    }


class StageClock:
    """The ``progress=`` callback: remembers when each stage was first seen complete."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.calls = 0
        self.last = None
        self.client = None
        self.task_stream: list[dict] | None = None

    def on_start(self, exp, client) -> None:
        self.t["cluster_ready"] = time.perf_counter()
        self.exp_id = exp.id
        self.client = client
        client.get_task_stream()  # installs the scheduler's task-stream plugin from here on

    def __call__(self, p) -> None:
        now = time.perf_counter()
        self.calls += 1
        self.last = p
        models = list(p.embeddings)

        def mark(name: str, cond: bool) -> None:
            if cond and name not in self.t:
                self.t[name] = now

        mark("first_run_end", p.runs_ended > 0)
        mark("invocations_done", p.runs_ended == p.runs and p.invocations == p.invocations_max)
        mark("first_embedding_done", any(p.embeddings[m] > 0 for m in models))
        mark("embeddings_done", all(p.embeddings[m] >= p.runs_to_embed for m in models))
        mark("first_diagram_done", any(p.diagrams[m] > 0 for m in models))
        if all(p.diagrams[m] >= p.runs for m in models) and "diagrams_done" not in self.t:
            self.t["diagrams_done"] = now
            # every task has finished; the cluster is still up inside run_experiment
            try:
                self.task_stream = self.client.get_task_stream()
            except Exception as exc:  # diagnostics only
                print(f"warning: task stream unavailable: {exc!r}", file=sys.stderr)


class RSSSampler(threading.Thread):
    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak_self = 0
        self.peak_children = 0
        self.cpu_s = 0.0  # this thread's own CPU time, to subtract from the process's
        self._stop_evt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_evt.is_set():
            try:
                self.peak_self = max(self.peak_self, me.memory_info().rss)
                total = 0
                for c in me.children(recursive=True):
                    try:
                        total += c.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak_children = max(self.peak_children, total)
            except psutil.Error:
                pass
            self._stop_evt.wait(self.interval)
        self.cpu_s = time.thread_time()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


def summarise_task_stream(records: list[dict] | None) -> dict:
    """Per task kind (invoke/<model>, embed/<model>, diagram/<model>): count, compute seconds, span."""
    if not records:
        return {}
    out: dict[str, dict] = {}
    for r in records:
        key = r["key"] if isinstance(r["key"], str) else str(r["key"])
        parts = key.split("-")
        group = f"{parts[0]}/{parts[1]}" if len(parts) > 2 else key
        comp = [s for s in r["startstops"] if s["action"] == "compute"]
        if not comp:
            continue
        g = out.setdefault(group, {"tasks": 0, "compute_s": 0.0, "first_start": float("inf"), "last_stop": 0.0})
        g["tasks"] += 1
        g["compute_s"] += sum(s["stop"] - s["start"] for s in comp)
        g["first_start"] = min(g["first_start"], min(s["start"] for s in comp))
        g["last_stop"] = max(g["last_stop"], max(s["stop"] for s in comp))
    kinds: dict[str, dict] = {}
    for group, g in out.items():
        k = kinds.setdefault(group.split("/")[0], {"tasks": 0, "compute_s": 0.0, "first_start": float("inf"), "last_stop": 0.0})
        k["tasks"] += g["tasks"]
        k["compute_s"] += g["compute_s"]
        k["first_start"] = min(k["first_start"], g["first_start"])
        k["last_stop"] = max(k["last_stop"], g["last_stop"])
    for d in list(out.values()) + list(kinds.values()):
        d["span_s"] = d["last_stop"] - d["first_start"]
    return {"by_model": out, "by_kind": kinds}


def same_diagrams(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[bool, bool]:
    """(identical in order, identical as multisets of bars) for each homology dimension."""
    if len(a) != len(b):
        return False, False
    ordered = all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))
    if ordered:
        return True, True

    def srt(x):
        return x[np.lexsort(x.T[::-1])] if len(x) else x

    return False, all(x.shape == y.shape and np.array_equal(srt(x), srt(y)) for x, y in zip(a, b))


# --------------------------------------------------------------------------- stages
def run_panicflow(args, store: str, config: dict) -> dict:
    import dask

    import panicflow

    clock = StageClock()
    sampler = RSSSampler() if psutil else None
    if sampler:
        sampler.start()
    prof = cProfile.Profile() if args.profile else None
    # keep every task's record (the default keeps 100,000; 32x1000 makes ~4,000 invoke tasks)
    with dask.config.set({"distributed.scheduler.dashboard.tasks.task-stream-length": 1_000_000}):
        load0 = os.getloadavg()
        ru0 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        th0 = time.thread_time()
        t_call = time.perf_counter()
        if prof:
            prof.enable()
        exp_id = panicflow.run_experiment(
            config, store=store, workers=args.workers, progress=clock, on_start=clock.on_start,
        )
        if prof:
            prof.disable()
        t_return = time.perf_counter()
        th1 = time.thread_time()
        ru1 = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    cpu = [(b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(ru0, ru1)]
    if sampler:
        sampler.stop()
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if prof:
        prof.dump_stats(args.profile)
        print(f"\ncProfile of the coordinator thread ({args.profile}), top 30 by own time:", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        print("top 30 by cumulative time:", file=sys.stderr)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(30)

    t0 = clock.t["cluster_ready"]
    rel = {k: v - t0 for k, v in clock.t.items()}
    rel["run_experiment_returned"] = t_return - t0
    return {
        "experiment_id": exp_id,
        "cluster_start_s": t0 - t_call,
        "total_wall_s": t_return - t_call,
        "stage_times_s": rel,  # seconds after the cluster was ready (on_start)
        # CPU seconds during run_experiment: this process (coordinator thread + Dask client and
        # scheduler event loop), of which the coordinator (main) thread alone, and the worker
        # processes (children, counted once they have exited at cluster close)
        "cpu_s": {"coordinator_process": cpu[0] - (sampler.cpu_s if sampler else 0.0),
                  "coordinator_main_thread": th1 - th0, "workers": cpu[1],
                  "rss_sampler_thread_excluded": sampler.cpu_s if sampler else 0.0},
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "progress_calls": clock.calls,
        "last_progress": clock.last.__dict__ if clock.last else None,
        "task_stream": summarise_task_stream(clock.task_stream),
        "memory": {
            "coordinator_ru_maxrss_mb": maxrss_kb / 1024,
            "coordinator_peak_rss_sampled_mb": sampler.peak_self / 2**20 if sampler else None,
            "children_peak_rss_sum_sampled_mb": sampler.peak_children / 2**20 if sampler else None,
        },
    }


def read_clouds(store: str, exp_id: str, models: list[str]) -> tuple[dict, list, float]:
    """Every (run, model) point cloud (non-NaN rows, float32 as stored), vector counts and the stored diagrams."""
    import panicflow

    t = time.perf_counter()
    tree = panicflow.open_experiment(exp_id, store=store)
    n_runs = tree.sizes["run"] if hasattr(tree, "sizes") else tree.ds.sizes["run"]
    lengths = tree.ds["length"].values
    counts = {m: 0 for m in models}
    items = []
    for m in models:
        vec = tree[f"embeddings/{m}"].ds["vector"]
        dg = tree[f"diagrams/{m}"].ds
        birth, death, dim = dg["birth"].values, dg["death"].values, dg["dimension"].values
        status, n_points = dg["status"].values, dg["n_points"].values
        for i in range(n_runs):
            v = vec.isel(run=i).values
            pts = v[~np.isnan(v).any(axis=1)]
            counts[m] += len(pts)
            stored = [np.stack([birth[i][dim[i] == k], death[i][dim[i] == k]], axis=1)
                      for k in range(int(dim[i].max()) + 1 if (dim[i] >= 0).any() else 0)]
            items.append({"run": i, "model": m, "points": pts, "length": int(lengths[i]),
                          "stored": stored, "status": str(status[i]), "n_points": int(n_points[i])})
    return counts, items, time.perf_counter() - t


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info

        return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=None)
    except ImportError:
        return None


def _compare(items: list, results: list) -> dict:
    mismatch, order_only, h0_only, examples = 0, 0, 0, []
    for it, dgms in zip(items, results):
        stored = it["stored"] + [np.zeros((0, 2))] * (len(dgms) - len(it["stored"]))
        ordered, as_set = same_diagrams(stored, dgms)
        if not as_set:
            mismatch += 1
            if same_diagrams(stored[1:], dgms[1:])[1]:
                h0_only += 1
            if len(examples) < 3:
                examples.append({"run": it["run"], "model": it["model"], "stored_bars": [len(x) for x in stored],
                                 "direct_bars": [len(x) for x in dgms]})
        elif not ordered:
            order_only += 1
    return {"mismatches": mismatch, "mismatches_in_h0_only": h0_only, "order_only_differences": order_only,
            "examples": examples}


def direct_persistence(items: list, maxdim: int, collapse: bool, pool_size: int, forms: list[str]) -> dict:
    """Every cloud through a direct giotto-ph call, sequentially in this process and on a pool of
    ``pool_size`` processes, for each form (see ``_ph_one``), each compared with what panicflow stored.

    The pool's processes are limited to 1 BLAS thread, as Dask's nanny limits its workers
    (OPENBLAS/OMP/MKL_NUM_THREADS=1); this process keeps its default. With the "raw" form the
    BLAS thread count changes sklearn's rounding, so exact duplicate points land at 0 or at
    ~1e-7 and H0 gains or loses near-zero bars (and float32 distances move other values by
    ~1e-7): the reason panicflow now passes exact float64 distances.
    """
    out: dict = {"clouds": len(items),
                 "points_per_cloud_mean": float(np.mean([len(it["points"]) for it in items])) if items else 0.0,
                 "sequential_blas_threads": _blas_threads(), "pool_blas_threads": 1,
                 "status_not_ok": sum(1 for it in items if it["status"] != "ok" or it["n_points"] != len(it["points"])),
                 "forms": {}}
    _warm(0.0)
    ctx = get_context("spawn")  # this process ran a Dask client: do not fork it
    with ProcessPoolExecutor(max_workers=pool_size, mp_context=ctx, initializer=_init_pool_process,
                             initargs=(1,)) as pool:
        out["pool_processes"] = len(set(pool.map(_warm, [0.5] * pool_size)))  # start and warm every process
        for form in forms:
            load0 = os.getloadavg()[0]
            t = time.perf_counter()
            seq = [_ph_one(it["points"], maxdim, collapse, form) for it in items]
            seq_wall = time.perf_counter() - t
            t = time.perf_counter()
            pooled = list(pool.map(_ph_one, [it["points"] for it in items], [maxdim] * len(items),
                                   [collapse] * len(items), [form] * len(items), chunksize=1))
            pool_wall = time.perf_counter() - t
            by_model: dict[str, float] = {}
            for it, (_, sec) in zip(items, seq):
                by_model[it["model"]] = by_model.get(it["model"], 0.0) + sec
            out["forms"][form] = {
                "sequential_wall_s": seq_wall,
                "sequential_s_by_model": by_model,
                "pool_wall_s": pool_wall,
                # sum of the per-call times inside the pool: ~pool_size x pool_wall when every
                # process was busy; above sequential_wall when calls slowed down (CPU contention)
                "pool_calls_sum_s": float(sum(sec for _, sec in pooled)),
                "loadavg_1min_before": load0,
                "sequential_vs_panicflow": _compare(items, [d for d, _ in seq]),
                "pool_vs_panicflow": _compare(items, [d for d, _ in pooled]),
                "pool_vs_sequential_mismatches": sum(
                    1 for (a, _), (b, _) in zip(seq, pooled) if not same_diagrams(a, b)[1]),
            }
    return out


# --------------------------------------------------------------------------- report
def rate(n: float, s: float | None) -> float | None:
    return n / s if s and s > 0 else None


def table(res: dict) -> str:
    pf, ph, cfg = res["panicflow"], res["direct_persistence"], res["config"]
    st = pf["stage_times_s"]
    ts = pf["task_stream"].get("by_kind", {})
    rows: list[tuple[str, str]] = []

    def add(name, value, fmt="{:.2f}"):
        rows.append((name, "n/a" if value is None else (fmt.format(value) if isinstance(value, (int, float)) else str(value))))

    add("runs x steps", f"{cfg['runs']} x {cfg['steps']}  (workers {cfg['workers']}, maxdim {cfg['maxdim']}, "
        f"collapse_edges {cfg['collapse_edges']})")
    add("load average (1/5/15 min) before / after the experiment",
        f"{'/'.join(f'{x:.1f}' for x in pf['loadavg_before'])}  /  {'/'.join(f'{x:.1f}' for x in pf['loadavg_after'])}")
    add("cluster start (s)", pf["cluster_start_s"])
    add("t invocations done (s)", st.get("invocations_done"))
    add("t first run ended (s)", st.get("first_run_end"))
    add("t embeddings done (s)", st.get("embeddings_done"))
    add("t diagrams done (s)", st.get("diagrams_done"))
    add("run_experiment total wall (s)", pf["total_wall_s"])
    add("invocations", res["invocations"], "{:d}")
    add("invocations/s", res["rates"]["invocations_per_s"])
    add("vectors written", res["vectors_total"], "{:d}")
    add("embedding time (s) [first run end -> all embedded]", res["rates"]["embedding_window_s"])
    add("embeddings/s", res["rates"]["embeddings_per_s"])
    add("embedding tail (s) [invocations done -> all embedded]", res["rates"]["embedding_tail_s"])
    add("diagram tail (s) [all embedded -> all diagrams]", res["rates"]["diagram_tail_s"])
    add("diagram span (s) [first diagram task start -> last end; overlaps runs]", res["rates"]["diagram_stage_s"])
    add("diagram compute s / workers (s) [diagram-only wall equivalent]", res["rates"]["diagram_compute_per_worker_s"])
    add("diagram window (s) [first embedding -> all diagrams]", res["rates"]["diagram_window_s"])
    for kind in ("invoke", "embed", "diagram"):
        k = ts.get(kind)
        if k:
            add(f"task stream {kind}: tasks / compute s / span s",
                f"{k['tasks']} / {k['compute_s']:.2f} / {k['span_s']:.2f}")
    if ts.get("invoke"):
        add("invoke compute per invocation (ms)", 1000 * ts["invoke"]["compute_s"] / max(res["invocations"], 1))
        add("invocations per invoke task (mean batch)", res["invocations"] / ts["invoke"]["tasks"])
    for g, d in sorted(pf["task_stream"].get("by_model", {}).items()):
        if g.startswith("invoke/"):
            add(f"  {g}: ms per batch / tasks", f"{1000 * d['compute_s'] / d['tasks']:.1f} / {d['tasks']}")
    for form, f in ph["forms"].items():
        add(f"direct giotto-ph [{form}] sequential wall (s)", f["sequential_wall_s"])
        add(f"direct giotto-ph [{form}] {ph['pool_processes']}-process pool wall (s) (sum of its calls)",
            f"{f['pool_wall_s']:.2f}  ({f['pool_calls_sum_s']:.2f})")
        if ts.get("diagram"):
            add(f"  panicflow diagram compute sum / direct [{form}] sequential",
                rate(ts["diagram"]["compute_s"], f["sequential_wall_s"]))
        add(f"  panicflow diagram compute sum / workers / direct [{form}] pool",
            rate(res["rates"]["diagram_compute_per_worker_s"] or 0, f["pool_wall_s"]))
        for who in ("sequential", "pool"):
            c = f[f"{who}_vs_panicflow"]
            blas = ph["sequential_blas_threads"] if who == "sequential" else ph["pool_blas_threads"]
            add(f"  mismatches vs stored, [{form}] {who} ({blas} BLAS thr)",
                f"{c['mismatches']} of {ph['clouds']} (H0 only: {c['mismatches_in_h0_only']}, "
                f"order-only diffs: {c['order_only_differences']})")
    add("stored diagram status not ok", ph["status_not_ok"], "{:d}")
    add("store read-back time (s)", res["read_back_s"])
    c = pf["cpu_s"]
    add("CPU s during run: coordinator process / its main thread / workers",
        f"{c['coordinator_process']:.1f} / {c['coordinator_main_thread']:.1f} / {c['workers']:.1f}"
        f"  (wall {pf['total_wall_s']:.1f})")
    m = pf["memory"]
    add("coordinator peak RSS, ru_maxrss (MB)", m["coordinator_ru_maxrss_mb"], "{:.0f}")
    add("coordinator peak RSS, sampled (MB)", m["coordinator_peak_rss_sampled_mb"], "{:.0f}")
    add("workers+nannies peak RSS sum, sampled (MB)", m["children_peak_rss_sum_sampled_mb"], "{:.0f}")
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1000, help="max_length (invocations per run)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (1 thread each)")
    ap.add_argument("--maxdim", type=int, default=1, help="persistence maxdim (panicflow's default is 2; see docstring)")
    ap.add_argument("--pool", type=int, default=2, help="processes for the direct giotto-ph comparison")
    ap.add_argument("--forms", choices=["exact", "raw", "both"], default="both",
                    help="direct giotto-ph call forms to time and compare (see _ph_one)")
    ap.add_argument("--store", help="store folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    ap.add_argument("--quick", action="store_true", help="dry run: 4 runs x 100 steps")
    ap.add_argument("--out", help="write the numbers as JSON here")
    ap.add_argument("--profile", help="cProfile the coordinator (main thread) into this file and print the top entries")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.steps = min(args.runs, 4), min(args.steps, 100)

    from panicflow.analysis.topology import PersistenceOptions

    collapse = PersistenceOptions().collapse_edges
    config = build_config(args.runs, args.steps, args.maxdim)
    models = config["embedding_models"]
    tmp = None
    store = args.store
    if store is None:
        tmp = tempfile.mkdtemp(prefix="panicflow-bench-")
        store = os.path.join(tmp, "store")
    try:
        print(f"running {args.runs} runs x {args.steps} steps on {args.workers} workers, maxdim {args.maxdim}, "
              f"store {store}", file=sys.stderr, flush=True)
        pf = run_panicflow(args, store, config)
        print(f"experiment done in {pf['total_wall_s']:.1f} s; reading back and recomputing diagrams",
              file=sys.stderr, flush=True)
        counts, items, read_s = read_clouds(store, pf["experiment_id"], models)
        forms = ["exact", "raw"] if args.forms == "both" else [args.forms]
        ph = direct_persistence(items, args.maxdim, collapse, args.pool, forms)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    st = pf["stage_times_s"]

    def span(a: str, b: str) -> float | None:
        return st[b] - st[a] if a in st and b in st else None

    invocations = pf["last_progress"]["invocations"] if pf["last_progress"] else 0
    vectors = sum(counts.values())
    emb_window = span("first_run_end", "embeddings_done")
    res = {
        "config": {"runs": args.runs, "steps": args.steps, "workers": args.workers, "maxdim": args.maxdim,
                   "collapse_edges": collapse, "pool": args.pool, "experiment": config,
                   "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "panicflow": pf,
        "invocations": invocations,
        "vectors": counts,
        "vectors_total": vectors,
        "read_back_s": read_s,
        "rates": {
            "invocations_per_s": rate(invocations, st.get("invocations_done")),
            "embedding_window_s": emb_window,
            "embeddings_per_s": rate(vectors, emb_window),
            "embedding_tail_s": span("invocations_done", "embeddings_done"),
            "diagram_tail_s": span("embeddings_done", "diagrams_done"),
            "diagram_window_s": span("first_embedding_done", "diagrams_done"),
            # the stages overlap (a run's diagrams start once it is embedded), so the diagram stage's
            # wall time is taken from the task stream: first diagram task start to last one's end
            "diagram_stage_s": pf["task_stream"].get("by_kind", {}).get("diagram", {}).get("span_s"),
            # what the diagrams would take alone on the workers: their compute seconds / workers
            "diagram_compute_per_worker_s": (pf["task_stream"].get("by_kind", {}).get("diagram", {})
                                             .get("compute_s", 0.0) / args.workers) or None,
        },
        "direct_persistence": ph,
    }
    print(table(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
