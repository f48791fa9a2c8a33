"""Density and noise (issue 24 item 3): is the clustering's noise real sparsity?

Three measures, each stored as ``analysis/<kind>/<name>`` with its parameters, inputs and library
versions, read back as a tidy table (pandas) and drawn as a chart (a matplotlib ``Figure``):

* ``knn`` (``knn_distances``): for every stored vector of one embedding model (all runs with that
  model's vectors), the distances to its ``k`` nearest other vectors, on the unit-normalised
  vectors in the full space (euclidean; the clustering's space without a PCA; cosine distance is
  d^2 / 2). scikit-learn's ``NearestNeighbors`` (exact, ``algorithm="brute"``); a vector's own
  entry is left out (a duplicate vector is a neighbour at distance 0). Exact search costs
  queries x vectors, so beyond ``DEFAULT_QUERIES`` (20,000) vectors a seeded sample of that many is
  measured, each against every vector (``queries=0``: all). Arrays ``distance`` (run, step,
  neighbour) float32, NaN where a step has no vector or is not in the sample, and ``neighbour_k`` (1..k).
* ``noise_sweep`` (``noise_sweep``): the noise fraction of the clustering as a function of
  ``min_cluster_size``: the clustering code path itself (``clustering.ClusterParams.effective``
  resolves the settings for each size as ``analyse cluster`` would, ``clustering._fit_pca`` and
  ``clustering._fit`` compute it), once per size, on the same vectors; one result holds the sweep
  (``min_cluster_size``, ``min_samples``, ``n_clusters``, ``n_noise``, ``noise_fraction`` on
  dimension ``size``), not one clustering per size. ``min_samples`` follows each size (the
  clustering's default) unless given. Runs in this process (one model's vectors of one experiment).
* ``noise_caption`` (``noise_by_caption``): per vector of a stored clustering whose model embeds
  captions (the steps of kind ``text``), the caption's length in characters and words
  (whitespace-separated), the captioning model (the step's ``model``) and whether the vector is
  noise (label -1). Per point arrays on dimension ``point``; per captioning model the noise
  fraction and the Spearman correlation of length with noise in the attributes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from .results import check_model, embedded_runs, open_result, open_store, run_vectors, unit, versions, write_result

KNN, SWEEP, CAPTION = "knn", "noise_sweep", "noise_caption"
DEFAULT_K = 10
DEFAULT_QUERIES = 20_000  # vectors measured by `analyse knn` (a seeded sample beyond this; 0: all)
DEFAULT_SIZES = (2, 3, 5, 8, 10, 15, 20, 30, 50)


def _exp(experiment_id: str, store: str | None):
    from ..store import default_location

    return open_store(str(store) if store is not None else default_location()).experiment(experiment_id)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def all_vectors(exp, model: str, dtype=np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run, step, unit vector) of every stored ``model`` vector of the experiment, runs in order. Each
    run's vectors are made unit in float64, then kept as ``dtype``: float32 (what the clusterings
    fit) halves the memory, which at 1M x 768 is 6 GiB in float64, twice that while joining."""
    runs, steps, parts = [], [], []
    for r in embedded_runs(exp, model):
        s, v = run_vectors(exp, model, int(r))
        runs.append(np.full(len(s), r, np.int64))
        steps.append(s)
        parts.append(unit(v).astype(dtype, copy=False))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), dtype)
    return np.concatenate(runs), np.concatenate(steps), np.concatenate(parts)



# ---------------------------------------------------------------------------------- k nearest neighbours
def knn(x: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), k) euclidean distances of the rows ``rows`` of ``x`` (default all) to their k nearest
    other rows of ``x``, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    if k < 1 or k >= len(x):
        raise UserError(f"--k: between 1 and the number of vectors - 1 ({len(x) - 1}), got {k}")
    rows = np.arange(len(x)) if rows is None else np.asarray(rows, np.int64)
    d, idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="euclidean").fit(x).kneighbors(x[rows])
    # drop each row's own entry (a duplicate may come first; both are at distance 0)
    own = idx == rows[:, None]
    first = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(rows)), first] = False
    return d[keep].reshape(len(rows), k)


def query_rows(n: int, queries: int, seed: int) -> np.ndarray:
    """The vectors whose neighbours are measured: all ``n`` when ``queries`` is 0 or at least n, else a
    sample of ``queries`` of them drawn with ``seed`` (sorted)."""
    if queries < 0:
        raise UserError(f"--queries: 0 (every vector) or a positive number of vectors, got {queries}")
    if queries == 0 or queries >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, queries, replace=False))


def knn_distances(experiment_id: str, model: str, store: str | None = None, *, k: int = DEFAULT_K,
                  name: str | None = None, queries: int = DEFAULT_QUERIES, seed: int = 0) -> str:
    """Store the distances of ``model`` vectors to their ``k`` nearest neighbours among all of them; returns the path.

    ``queries``: how many vectors are measured (a sample drawn with ``seed``, each against every vector);
    0 measures every vector. Exact search costs queries x vectors: at a million vectors, all of them would
    take hours, a sample of 20,000 minutes, and the distribution of the distances is what is wanted.
    """
    exp = _exp(experiment_id, store)
    check_model(exp, model)
    runs, steps, x = all_vectors(exp, model)
    rows = query_rows(len(x), queries, seed)
    d = knn(x, k, rows)
    g = exp.group(read_only=True)
    n_runs, n_steps = g["output_hash"].shape
    out = np.full((n_runs, n_steps, k), np.nan, np.float32)
    out[runs[rows], steps[rows]] = d
    q = np.quantile(d, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    return write_result(exp, KNN, name or f"{model}-k{k}", {
        "distance": (["run", "step", "neighbour"], out, {"description": "euclidean distance of the unit vector to its "
                                                         "neighbour-th nearest other vector (cosine distance: d^2/2); NaN: no "
                                                         "vector, or a vector not in the sample of queries"}),
        "neighbour_k": (["neighbour"], np.arange(1, k + 1, dtype=np.int64), {"description": "rank of the neighbour"}),
    }, {
        "kind": KNN, "model": model, "inputs": [exp.id], "n_vectors": int(len(x)), "n_queries": int(len(rows)),
        "parameters": {"model": model, "k": k, "queries": queries, "seed": seed,
                       "space": "unit-normalised vectors, full space, euclidean",
                       "algorithm": "sklearn.neighbors.NearestNeighbors(algorithm='brute')"},
        "quantiles": {"q": [0.05, 0.25, 0.5, 0.75, 0.95], "per_k": q.T.tolist()},
        "versions": versions("scikit-learn", "numpy"),
    })


def knn_table(experiment_id: str, store: str | None = None, name: str | None = None):
    """Tidy table of a ``knn`` result: run, step, k, distance (one row per vector and neighbour rank)."""
    import pandas as pd

    g = open_result(_exp(experiment_id, store), KNN, name)
    d = g["distance"][...]
    r, s, j = np.nonzero(~np.isnan(d))
    return pd.DataFrame({"run": r, "step": s, "k": g["neighbour_k"][...][j], "distance": d[r, s, j].astype(np.float64)})


def knn_figure(table, ks: Sequence[int] | None = None):
    """Empirical distribution (ECDF) of the distance to the k-th nearest neighbour, one line per k."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    all_k = sorted(table["k"].unique())
    ks = ks or sorted({all_k[0], all_k[len(all_k) // 2], all_k[-1]})
    for k in ks:
        v = np.sort(table.loc[table["k"] == k, "distance"].to_numpy())
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=f"k = {k}")
    ax.set_xlabel("distance to the k-th nearest neighbour (unit vectors, euclidean)")
    ax.set_ylabel("fraction of vectors")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------------- noise sweep
def noise_sweep(experiment_id: str, model: str, store: str | None = None, *, sizes: Sequence[int] = DEFAULT_SIZES,
                min_samples: int | None = None, reduce: str | None = None, algorithm: str | None = None,
                seed: int = 0, name: str | None = None) -> str:
    """Noise fraction of the clustering of ``model``'s vectors for each ``min_cluster_size`` in ``sizes``; returns the path."""
    from . import clustering as C

    exp = _exp(experiment_id, store)
    check_model(exp, model)
    sizes = sorted({int(s) for s in sizes})
    if not sizes:
        raise UserError("--sizes: give at least one min_cluster_size")
    _, _, x = all_vectors(exp, model, np.float32)  # float32, as analyse cluster fits: the same labels, half the memory
    n = len(x)
    rows, pca_cache = [], {}
    for m in sizes:
        params = C.ClusterParams(model, m, min_samples, None if reduce is None else reduce.strip().lower(),
                                 None, algorithm, seed)
        eff = params.effective(n)
        if n < m:
            raise UserError(f"--sizes: {m} is more than the {n} {model} vectors")
        k = C.parse_reduce(eff["reduce"])
        feats = x  # never written to: a transform below makes a new array
        if k is not None:
            if k not in pca_cache:
                rng = np.random.default_rng(seed)
                fit_rows = np.sort(rng.choice(n, params.pca_fit_size, replace=False)) if n > params.pca_fit_size else slice(None)
                pca_cache[k] = C._fit_pca(k, seed, feats[fit_rows])
            feats = pca_cache[k].transform(feats).astype(np.float32)
            eff["reduce"] = f"pca:{pca_cache[k].n_components_}"
        p = {key: eff[key] for key in ("min_cluster_size", "min_samples", "algorithm", "cluster_selection_epsilon", "allow_single_cluster")}
        p["sample"] = None
        _, labels, _ = C._fit(p, feats)
        rows.append((eff, int((labels == -1).sum()), int(len(np.unique(labels[labels >= 0])))))
    eff0 = rows[0][0]
    common = {k_: eff0[k_] for k_ in ("model", "algorithm", "reduce", "cluster_selection_epsilon", "allow_single_cluster", "seed")}
    params = {**common, "sizes": sizes, "min_samples": min_samples, "min_samples_rule": "given" if min_samples else "= min_cluster_size"}
    lib = C.LIBRARIES[eff0["algorithm"]]
    return write_result(exp, SWEEP, name or f"{model}-{_digest(params)}", {
        "min_cluster_size": (["size"], np.array([r[0]["min_cluster_size"] for r in rows], np.int64), {"description": "min_cluster_size"}),
        "min_samples": (["size"], np.array([r[0]["min_samples"] for r in rows], np.int64), {"description": "min_samples in effect"}),
        "n_clusters": (["size"], np.array([r[2] for r in rows], np.int64), {"description": "clusters found"}),
        "n_noise": (["size"], np.array([r[1] for r in rows], np.int64), {"description": "vectors labelled noise (-1)"}),
        "noise_fraction": (["size"], np.array([r[1] / n for r in rows], np.float64), {"description": "n_noise / n_vectors"}),
    }, {
        "kind": SWEEP, "model": model, "inputs": [exp.id], "n_vectors": n, "parameters": params,
        "library": lib, "versions": versions(*dict.fromkeys([lib, "scikit-learn", "numpy"])),
        "code_path": "panicflow.analysis.clustering: ClusterParams.effective, _fit_pca, _fit (as analyse cluster)",
    })


def sweep_table(experiment_id: str, store: str | None = None, name: str | None = None):
    """Tidy table of a ``noise_sweep`` result: one row per min_cluster_size."""
    import pandas as pd

    g = open_result(_exp(experiment_id, store), SWEEP, name)
    return pd.DataFrame({k: g[k][...] for k in ("min_cluster_size", "min_samples", "n_clusters", "n_noise", "noise_fraction")})


def sweep_figure(table):
    """Noise fraction (left axis) and clusters found (right axis) against min_cluster_size."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(table["min_cluster_size"], table["noise_fraction"], "o-", color="C0")
    ax.set_xlabel("min_cluster_size")
    ax.set_ylabel("noise fraction", color="C0")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(table["min_cluster_size"], table["n_clusters"], "s--", color="C1")
    ax2.set_ylabel("clusters", color="C1")
    return fig


# ---------------------------------------------------------------------------------- noise and caption length
def noise_by_caption(experiment_id: str, clustering: str | None = None, store: str | None = None, *,
                     name: str | None = None) -> str:
    """Per clustered caption vector: captioning model, caption length, noise or not; returns the path."""
    from scipy.stats import spearmanr

    exp = _exp(experiment_id, store)
    src = open_result(exp, "clusters", clustering)
    model = src.attrs["parameters"]["model"]
    label = src["label"][...]
    g = exp.group(read_only=True)
    kind, text, step_model = g["kind"][...], g["text"][...], g["model"][...]
    r, s = np.nonzero((label >= -1) & (kind == "text"))
    if not len(r):
        raise UserError(f"clustering {src.basename}: its model {model} embeds no captions (steps of kind text); "
                        "cluster a text embedding model")
    caps = text[r, s]
    chars = np.array([len(t) for t in caps], np.int64)
    words = np.array([len(t.split()) for t in caps], np.int64)
    noise = label[r, s] == -1
    captioner = np.array(step_model[r, s].tolist(), dtype=str)
    per = {}
    for c in sorted(set(captioner.tolist())):
        m = captioner == c
        rho = float("nan")
        if noise[m].any() and not noise[m].all() and np.ptp(words[m]) > 0:
            rho = float(spearmanr(words[m], noise[m]).statistic)
        per[c] = {"n": int(m.sum()), "noise_fraction": float(noise[m].mean()), "spearman_words_noise": rho}
    return write_result(exp, CAPTION, name or src.basename, {
        "point_run": (["point"], r.astype(np.int64), {"description": "run"}),
        "point_step": (["point"], s.astype(np.int64), {"description": "step (a caption)"}),
        "captioner": (["point"], captioner, {"description": "model that wrote the caption"}),
        "caption_chars": (["point"], chars, {"description": "caption length in characters"}),
        "caption_words": (["point"], words, {"description": "caption length in whitespace-separated words"}),
        "noise": (["point"], noise, {"description": "the caption's vector is noise (label -1) in the clustering"}),
    }, {
        "kind": CAPTION, "model": model, "clustering": src.basename, "inputs": [exp.id],
        "parameters": {"clustering": src.basename, "model": model, "length": "characters; words split on whitespace"},
        "per_captioner": per, "versions": versions("numpy", "scipy"),
    })


def caption_table(experiment_id: str, store: str | None = None, name: str | None = None):
    """Tidy table of a ``noise_caption`` result: run, step, captioner, caption_chars, caption_words, noise."""
    import pandas as pd

    g = open_result(_exp(experiment_id, store), CAPTION, name)
    return pd.DataFrame({"run": g["point_run"][...], "step": g["point_step"][...], "captioner": np.array(g["captioner"][...].tolist(), dtype=str),
                         "caption_chars": g["caption_chars"][...], "caption_words": g["caption_words"][...],
                         "noise": g["noise"][...]})


def caption_figure(table):
    """Noise fraction against caption length (words) per captioning model, dot area the number of captions."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i, (c, t) in enumerate(table.groupby("captioner")):
        agg = t.groupby("caption_words")["noise"].agg(["mean", "size"])
        ax.plot(agg.index, agg["mean"], "-", color=f"C{i}", alpha=0.5)
        ax.scatter(agg.index, agg["mean"], s=10 + 4 * agg["size"], color=f"C{i}", label=c)
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("noise fraction")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(title="captioner")
    return fig
