#!/usr/bin/env python
"""Time and peak memory of the clustering core (unit vectors -> PCA -> hdbscan / fast-hdbscan).

Synthetic embedding-like data: N unit vectors of dimension 768 around 50 random directions
(plus 10% uniform noise). Each (N, algorithm, reduction) runs in a fresh child process; its
wall time and peak resident memory (ru_maxrss) are reported, and the adjusted Rand index of
fast-hdbscan's labels against hdbscan's on the same data. The defaults of
``panicflow.analysis.clustering`` are used (min_cluster_size 10, PCA to 32, full SVD fitted on
at most 50,000 vectors). Usage:

    .venv/bin/python scripts/benchmark_clustering.py 10000 100000 [--reduce pca:32] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np


def make_data(n: int, dim: int = 768, centres: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    which = rng.integers(0, centres, n)
    x = c[which] + 0.6 * rng.normal(size=(n, dim))
    noise = rng.random(n) < 0.1
    x[noise] = rng.normal(size=(noise.sum(), dim)) * 1.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _child(n: int, algorithm: str, reduce: str, out: mp.Queue) -> None:
    x = make_data(n)
    t0 = time.perf_counter()
    if reduce != "none":
        from sklearn.decomposition import PCA

        k = int(reduce.split(":")[1])
        rng = np.random.default_rng(0)
        fit_rows = x if n <= 50_000 else x[np.sort(rng.choice(n, 50_000, replace=False))]
        x = PCA(n_components=k, svd_solver="full", random_state=0).fit(fit_rows).transform(x).astype(np.float32)
    t1 = time.perf_counter()
    if algorithm == "hdbscan":
        import hdbscan

        labels = hdbscan.HDBSCAN(min_cluster_size=10).fit(x).labels_
    else:
        import fast_hdbscan

        labels = fast_hdbscan.HDBSCAN(min_cluster_size=10).fit(x).labels_
    t2 = time.perf_counter()
    out.put({"n": n, "algorithm": algorithm, "reduce": reduce, "reduce_s": round(t1 - t0, 2),
             "cluster_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
             "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
             "clusters": int(labels.max() + 1), "noise": float((labels == -1).mean()), "labels": labels.tolist()})


def run(n: int, algorithm: str, reduce: str, timeout: float) -> dict | None:
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_child, args=(n, algorithm, reduce, q))
    p.start()
    try:
        res = q.get(timeout=timeout)
    except Exception:  # timed out, or the child died (its traceback is on stderr)
        p.kill()
        p.join()
        return {"n": n, "algorithm": algorithm, "reduce": reduce, "timed_out_after_s": timeout}
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    ap.add_argument("--reduce", default="pca:32")
    ap.add_argument("--algorithms", default="hdbscan,fast_hdbscan")
    ap.add_argument("--timeout", type=float, default=1200)
    a = ap.parse_args()
    from sklearn.metrics import adjusted_rand_score

    for n in a.sizes:
        labels = {}
        for alg in a.algorithms.split(","):
            r = run(n, alg, a.reduce, a.timeout)
            labels[alg] = r.pop("labels", None)
            if alg != "hdbscan" and labels.get("hdbscan") is not None and labels[alg] is not None:
                r["ari_vs_hdbscan"] = round(adjusted_rand_score(labels["hdbscan"], labels[alg]), 4)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
