"""Stability of a clustering under subsampling (issue 24 item 1).

``stability(ids, model, resamples=20, fraction=0.8, seed=0, **cluster settings)`` clusters the
vectors of the experiments as ``cluster`` would (the same settings, defaults, PCA and library:
``clustering._prepare`` and ``clustering._fit``), then ``resamples`` times draws ``fraction`` of the
vectors at random without replacement (``numpy.random.default_rng(seed)``), clusters them alone
with the same settings and measures the adjusted Rand index (``sklearn.metrics.adjusted_rand_score``)
between that clustering and the full one on the drawn vectors, noise (-1) counted as one more
class. A PCA is fitted once, on all the vectors, and kept for the resamples: what varies is the
clustering, not the space.

Result, in each input experiment's store, ``analysis/stability/<name>``: per resample ``ari``,
``n_clusters``, ``n_noise``; attributes: ``parameters`` (the clustering's settings in effect and
``resamples``, ``fraction``, ``seed``), ``n_points`` (vectors per resample), ``mean``, ``sd``
(ddof 1), ``quantiles`` (5, 25, 50, 75, 95 %), ``full_n_clusters``, ``full_n_noise``, the inputs,
library and versions, and ``explained_variance`` with a PCA. ``stability_table`` is the tidy table
(a row per resample), ``stability_figure`` the chart (histogram and box plot of the ARI).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Sequence

import numpy as np
from distributed import Client

from ..errors import UserError
from . import clustering as C
from .results import open_result, open_store, versions, write_result

KIND = "stability"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
MEASURE = ("adjusted Rand index (sklearn.metrics.adjusted_rand_score) between the clustering of a subsample and the "
           "clustering of all the vectors, on the subsample's vectors; noise (-1) counted as one more class")


def _stack(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def _full_labels(p: dict, x: np.ndarray) -> np.ndarray:
    return C._fit(p, x)[1]


def _resample(p: dict, x: np.ndarray, full: np.ndarray, rows: np.ndarray) -> tuple[float, int, int]:
    from sklearn.metrics import adjusted_rand_score

    labels = C._fit(p, x[rows])[1]
    return float(adjusted_rand_score(full[rows], labels)), int(len(np.unique(labels[labels >= 0]))), int((labels == -1).sum())


def stability(experiment_ids: Sequence[str], model: str, store: str | None = None, client: Client | None = None, *,
              resamples: int = 20, fraction: float = 0.8, seed: int = 0, min_cluster_size: int | None = None,
              min_samples: int | None = None, reduce: str | None = None, algorithm: str | None = None,
              cluster_selection_epsilon: float | None = None, allow_single_cluster: bool | None = None,
              preset: str | None = None, name: str | None = None) -> str:
    """ARI of ``resamples`` subsample clusterings against the full clustering; returns the result's path."""
    from ..store import default_location

    if resamples < 1:
        raise UserError(f"--resamples: must be at least 1 (got {resamples})")
    if not 0 < fraction < 1:
        raise UserError(f"--fraction: must be between 0 and 1, exclusive (got {fraction})")
    params = C.ClusterParams(model, min_cluster_size, min_samples, None if reduce is None else reduce.strip().lower(), None,
                             algorithm, seed, 50_000, cluster_selection_epsilon, allow_single_cluster, preset)
    params.check()
    if not experiment_ids:
        raise UserError("stability: give at least one experiment id")
    st = open_store(str(store) if store is not None else default_location())
    exps = C.open_experiments(st, experiment_ids, model, "stability")
    if client is None:
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
            return _stability(st, exps, params, c, resamples, fraction, name)
    return _stability(st, exps, params, client, resamples, fraction, name)


def _stability(st, exps, params: C.ClusterParams, client: Client, resamples: int, fraction: float, name: str | None) -> str:
    prep = C._prepare(st, exps, params, client)
    eff, n = prep.eff, prep.total
    m = int(round(fraction * n))
    if m < eff["min_cluster_size"]:
        raise UserError(f"--fraction: {fraction:g} of {n} vectors is {m}, fewer than --min-cluster-size ({eff['min_cluster_size']})")
    p = C._fit_settings(params, eff, None)
    x = client.submit(_stack, *prep.feats, pure=False)
    full = client.submit(_full_labels, p, x, pure=False)
    rng = np.random.default_rng(params.seed)
    draws = [np.sort(rng.choice(n, m, replace=False)) for _ in range(resamples)]
    found = client.gather([client.submit(_resample, p, x, full, rows, pure=False) for rows in draws])
    full_labels = client.gather(full)
    del x, full
    ari = np.array([f[0] for f in found])
    inputs = [e.id for e in exps]
    record = eff | {"resamples": resamples, "fraction": fraction}
    if name is None:
        digest = hashlib.sha256(json.dumps([record, inputs]).encode()).hexdigest()[:8]
        name = f"{eff['algorithm']}-{params.model}-{digest}"
    lib = C.LIBRARIES[eff["algorithm"]]
    attrs = {"kind": KIND, "model": params.model, "parameters": record, "requested": asdict(params), "inputs": inputs,
             "library": lib, "versions": versions(*dict.fromkeys([lib, "scikit-learn", "numpy"])), "measure": MEASURE,
             "n_vectors": n, "n_points": m, "mean": float(ari.mean()), "sd": float(ari.std(ddof=1)) if len(ari) > 1 else float("nan"),
             "quantiles": {f"{q:g}": float(np.quantile(ari, q)) for q in QUANTILES},
             "full_n_clusters": int(len(np.unique(full_labels[full_labels >= 0]))), "full_n_noise": int((full_labels == -1).sum()),
             "min_samples_note": C.min_samples_note(eff["algorithm"], eff["min_samples"])}
    if prep.explained is not None:
        attrs["explained_variance"] = float(sum(prep.explained[1]))
    arrays = {"ari": (["resample"], ari, {"description": "adjusted Rand index against the full clustering on the drawn vectors"}),
              "n_clusters": (["resample"], np.array([f[1] for f in found], np.int64), {"description": "clusters of the subsample"}),
              "n_noise": (["resample"], np.array([f[2] for f in found], np.int64), {"description": "noise vectors of the subsample"})}
    path = ""
    for exp in exps:
        path = write_result(exp, KIND, name, arrays, attrs)
    return path


def stability_table(experiment_id: str, store: str | None = None, name: str | None = None):
    """The tidy table of a stored stability result: a row per resample."""
    import pandas as pd

    from ..store import default_location

    exp = open_store(str(store) if store is not None else default_location()).experiment(experiment_id)
    g = open_result(exp, KIND, name)
    a = dict(g.attrs)
    n = g["ari"].shape[0]
    return pd.DataFrame({"experiment_id": exp.id, "result": g.basename, "embedding_model": a["model"],
                         "algorithm": a["parameters"]["algorithm"], "resample": np.arange(n), "fraction": a["parameters"]["fraction"],
                         "n_points": a["n_points"], "ari": g["ari"][...], "n_clusters": g["n_clusters"][...],
                         "n_noise": g["n_noise"][...], "full_n_clusters": a["full_n_clusters"]})


def stability_figure(table):
    """Histogram of the ARI over the resamples with a box plot above it; returns a matplotlib Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    box, hist = fig.subplots(2, 1, sharex=True, height_ratios=[1, 3])
    ari = table["ari"].to_numpy()
    box.boxplot(ari, orientation="horizontal", widths=0.6)
    box.set_yticks([])
    hist.hist(ari, bins=min(20, max(5, len(ari) // 2)), color="#0072B2", edgecolor="white")
    hist.axvline(ari.mean(), color="#D55E00", label=f"mean {ari.mean():.3f}")
    hist.set_xlabel("adjusted Rand index against the full clustering")
    hist.set_ylabel("resamples")
    hist.legend(frameon=False)
    if len(table):
        r = table.iloc[0]
        box.set_title(f"{r['algorithm']} on {r['embedding_model']}: {len(ari)} resamples of {r['fraction']:.0%} "
                      f"({r['n_points']} vectors)", fontsize=9)
    return fig
