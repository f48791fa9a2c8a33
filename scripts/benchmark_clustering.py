#!/usr/bin/env python
"""Time and peak memory of the clustering core (unit vectors -> PCA -> hdbscan / fast-hdbscan).

Synthetic embedding-like data: N unit vectors of dimension 768 around 50 random directions
(plus 10% uniform noise), made in blocks as float32 (1M vectors: 3 GiB). Each configuration
runs in a fresh child process that makes the data, reduces it and clusters it; its wall times,
CPU times (all threads; on a shared machine the steadier figure) and peak resident memory (ru_maxrss, the input data included) are reported, and the adjusted
Rand index of each configuration's labels against hdbscan's on the same data. The defaults of
``panicflow.analysis.clustering`` are used: min_cluster_size 10, PCA to 32 with a full SVD
fitted on at most 50,000 vectors, applied in blocks (as the per-run projection tasks do).

Configurations: ``hdbscan``; ``fast_hdbscan`` (extra ``panicflow[fast]``; skipped when not
installed; numba compiles its kernels once per process, timed apart as ``compile_s`` on 2,000
vectors before the run); ``hdbscan_sample`` (``--sample N``: fit N random vectors, label the
rest with ``hdbscan.approximate_predict``, as ``panicflow analyse cluster --sample N`` does).
One JSON line per configuration. Usage (nice: the machine is shared):

    nice -n 10 .venv/bin/python scripts/benchmark_clustering.py 100000 1000000 \\
        [--algorithms hdbscan,fast_hdbscan,hdbscan_sample] [--sample 100000] [--timeout 3600]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import signal
import tempfile
import time

import numpy as np

BLOCK = 65_536
PCA_FIT = 50_000


def make_data(n: int, dim: int = 768, centres: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = np.empty((n, dim), np.float32)
    for a in range(0, n, BLOCK):
        b = min(n, a + BLOCK)
        block = c[rng.integers(0, centres, b - a)] + 0.6 * rng.normal(size=(b - a, dim))
        noise = rng.random(b - a) < 0.1
        block[noise] = rng.normal(size=(noise.sum(), dim)) * 1.5
        x[a:b] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def _reduce(x: np.ndarray, reduce: str) -> np.ndarray:
    if reduce == "none":
        return x
    from sklearn.decomposition import PCA

    k = int(reduce.split(":")[1])
    rng = np.random.default_rng(0)
    fit_rows = x if len(x) <= PCA_FIT else x[np.sort(rng.choice(len(x), PCA_FIT, replace=False))]
    pca = PCA(n_components=k, svd_solver="full", random_state=0).fit(fit_rows)
    return np.concatenate([pca.transform(x[a:a + BLOCK]).astype(np.float32) for a in range(0, len(x), BLOCK)])


def _child(n: int, algorithm: str, reduce: str, sample: int, labels_path: str, out: mp.Queue) -> None:
    os.setpgrp()  # a group of its own, with hdbscan's joblib workers: killed together on a timeout
    import hdbscan  # imports before the clock starts
    import sklearn.decomposition  # noqa: F401

    x = make_data(n)
    compile_s = None
    if algorithm == "fast_hdbscan":
        import fast_hdbscan

        t = time.perf_counter()
        fast_hdbscan.HDBSCAN(min_cluster_size=10).fit(make_data(2_000, seed=1)[:, :32].copy())
        compile_s = round(time.perf_counter() - t, 2)
    t0, c0 = time.perf_counter(), time.process_time()
    x = _reduce(x, reduce)
    t1, c1 = time.perf_counter(), time.process_time()
    if algorithm == "hdbscan":
        labels = hdbscan.HDBSCAN(min_cluster_size=10).fit(x).labels_
    elif algorithm == "fast_hdbscan":
        labels = fast_hdbscan.HDBSCAN(min_cluster_size=10).fit(x).labels_
    else:  # hdbscan_sample
        rows = np.sort(np.random.default_rng(0).choice(n, min(sample, n), replace=False))
        fit = hdbscan.HDBSCAN(min_cluster_size=10, prediction_data=True).fit(x[rows])
        labels = np.concatenate([hdbscan.approximate_predict(fit, x[a:a + BLOCK])[0] for a in range(0, n, BLOCK)])
        labels[rows] = fit.labels_
    t2, c2 = time.perf_counter(), time.process_time()
    np.save(labels_path, np.asarray(labels, np.int32))
    result = {"n": n, "algorithm": algorithm, "reduce": reduce, "reduce_s": round(t1 - t0, 2), "cluster_s": round(t2 - t1, 2),
              "total_s": round(t2 - t0, 2),
              "reduce_cpu_s": round(c1 - c0, 2), "cluster_cpu_s": round(c2 - c1, 2), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "clusters": int(labels.max() + 1), "noise": round(float((labels == -1).mean()), 4)}
    if compile_s is not None:
        result["compile_s"] = compile_s
    if algorithm == "hdbscan_sample":
        result["sample"] = min(sample, n)
    out.put(result)


def run(n: int, algorithm: str, reduce: str, sample: int, timeout: float, labels_path: str) -> dict:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(n, algorithm, reduce, sample, labels_path, q))
    p.start()
    try:
        res = q.get(timeout=timeout)
    except Exception:  # timed out, or the child died (its traceback is on stderr)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.join()
        return {"n": n, "algorithm": algorithm, "reduce": reduce, "failed_or_timed_out_after_s": timeout}
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--reduce", default="pca:32")
    ap.add_argument("--algorithms", default="hdbscan,fast_hdbscan")
    ap.add_argument("--sample", type=int, default=100_000, help="vectors fitted by hdbscan_sample")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    a = ap.parse_args()
    from sklearn.metrics import adjusted_rand_score

    from importlib.metadata import version

    libs = {k: version(k) for k in ("hdbscan", "scikit-learn", "numpy")}
    if importlib.util.find_spec("fast_hdbscan") is not None:
        libs["fast-hdbscan"] = version("fast-hdbscan")
    print(json.dumps({"cpus": os.cpu_count(), "load_avg": [round(x, 1) for x in os.getloadavg()], "versions": libs}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.sizes:
            reference = None
            for alg in a.algorithms.split(","):
                if alg == "fast_hdbscan" and importlib.util.find_spec("fast_hdbscan") is None:
                    print(json.dumps({"n": n, "algorithm": alg, "skipped": "not installed: pip install -e '.[fast]'"}), flush=True)
                    continue
                path = os.path.join(tmp, f"{alg}-{n}.npy")
                r = run(n, alg, a.reduce, a.sample, a.timeout, path)
                if "total_s" in r:
                    labels = np.load(path)
                    if alg == "hdbscan":
                        reference = labels
                    elif reference is not None:
                        r["ari_vs_hdbscan"] = round(adjusted_rand_score(reference, labels), 4)
                r["load_avg_1m_after"] = round(os.getloadavg()[0], 1)  # a shared machine: how busy it was
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
