"""Persistent entropy summarised by network, embedding model and homology dimension.

Each run with a usable diagram (status ``ok*``) and a finite entropy in a dimension is one
observation of its (network, embedding model, homology dimension) group; runs are treated as
independent draws. Per group: n, the runs without a value (``n_missing``), mean, standard
deviation (ddof 1), median, min, max, and a bootstrap confidence interval of the chosen
statistic (mean or median) from ``scipy.stats.bootstrap`` (method BCa, percentile or basic;
``n_resamples`` resamples; every group resampled by a generator seeded with ``seed``, so a
group's interval does not depend on the other groups). Constant values give the interval
(v, v); fewer than two values, or a degenerate BCa, NaN.

Runs of different lengths are not alike: persistent entropy grows with the number of bars, so
with the number of points (a looped run of 70 points was the low outlier of 9 of 12 panels
pooled with runs of 500). Every group therefore says how many points its runs had
(``n_points_min``, ``n_points_median``, ``n_points_max``: ``n_points_used`` of the runs with a
value, the points each diagram was computed from), and a comparison controls for it: per
(embedding model, homology dimension), an ordinary least-squares fit over the runs of every
network, entropy = a_network + b ln(points) (a common slope b, an analysis of covariance), gives
each network's ``adjusted_mean``: its fitted entropy at ``reference_points`` (the median point
count of all those runs), with its standard error ``adjusted_se``, and the slope
``points_slope`` (entropy per unit of ln points). The adjusted means compare networks as if their
runs had had the same number of points. They are NaN where the slope cannot be estimated (no
network whose runs differ in point count, or fewer runs than parameters + 1); then compare
runs of one length only.

Result ``analysis/entropy/<name>`` (name from the parameters, e.g. ``mean-bca-0.95-9999-0``):
``group_network``, ``group_model``, ``group_homology_dim`` and the statistics on dimension ``group``;
the parameters in the attributes. Computed in this process (entropies are one float per run
and dimension), a block of runs at a time.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import numpy as np

from ..errors import UserError
from .results import open_store, versions, write_result

KIND = "entropy"
STATISTICS = ("mean", "median")
METHODS = {"bca": "BCa", "percentile": "percentile", "basic": "basic"}
RUNS_PER_BLOCK = 1024


def check(statistic: str, confidence: float, n_resamples: int, method: str) -> str:
    """Validate the options; returns scipy's name of the method."""
    if statistic not in STATISTICS:
        raise UserError(f"--statistic: choose {' or '.join(STATISTICS)}, not {statistic!r}")
    if not 0 < confidence < 1:
        raise UserError(f"--confidence: a level between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_resamples < 100:
        raise UserError(f"--n-resamples: at least 100 (9999 is usual), got {n_resamples}")
    if method.lower() not in METHODS:
        raise UserError(f"--method: choose {', '.join(METHODS)}, not {method!r}")
    return METHODS[method.lower()]


def summarise(values: np.ndarray, statistic: str = "mean", confidence: float = 0.95, n_resamples: int = 9999,
              method: str = "bca", seed: int = 0) -> dict[str, float]:
    """Statistics of one group's finite values and the bootstrap interval of ``statistic``."""
    from scipy.stats import bootstrap

    scipy_method = check(statistic, confidence, n_resamples, method)
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    nan = float("nan")
    out = {"n": len(v), "mean": nan, "std": nan, "median": nan, "min": nan, "max": nan, "ci_low": nan, "ci_high": nan}
    if len(v) == 0:
        return out
    out |= {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else nan, "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}
    if len(v) > 1 and v.min() == v.max():
        out["ci_low"] = out["ci_high"] = float(v[0])
    elif len(v) > 1:
        with warnings.catch_warnings():  # a degenerate BCa warns and returns NaN: NaN is the answer
            warnings.simplefilter("ignore")
            res = bootstrap((v,), getattr(np, statistic), n_resamples=n_resamples, confidence_level=confidence,
                            method=scipy_method, rng=np.random.default_rng(seed), vectorized=True)
        out["ci_low"], out["ci_high"] = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out


def grouped_entropies(exp) -> dict[tuple[str, str, int], tuple[np.ndarray, int]]:
    """(network, model, homology dim) -> (finite entropies of its runs, runs without one); finished runs only."""
    return {k: (v, missing) for k, (v, _, missing) in grouped_observations(exp).items()}


def grouped_observations(exp) -> dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray, int]]:
    """(network, model, homology dim) -> (finite entropies of its runs, the points each of those diagrams was
    computed from (``n_points_used``), runs without an entropy); finished runs only."""
    g = exp.group(read_only=True)
    networks = g["network"][:]
    ended = g["stop_reason"][:] != ""
    values: dict[tuple[str, str, int], list[tuple[float, int]]] = {}
    missing: Counter = Counter()
    for model in exp.config.embedding_models:
        d = g[f"diagrams/{model}"]
        for a in range(0, len(networks), RUNS_PER_BLOCK):
            e = d["entropy"][a:a + RUNS_PER_BLOCK]
            used = d["n_points_used"][a:a + RUNS_PER_BLOCK]
            ok = np.array([str(s).startswith("ok") for s in d["status"][a:a + RUNS_PER_BLOCK]])
            for i, run in enumerate(range(a, a + len(e))):
                if not ended[run]:
                    continue
                for k in range(e.shape[1]):
                    key = (str(networks[run]), model, k)
                    values.setdefault(key, [])
                    if ok[i] and np.isfinite(e[i, k]):
                        values[key].append((float(e[i, k]), int(used[i])))
                    else:
                        missing[key] += 1
    return {k: (np.array([v for v, _ in values[k]], np.float64), np.array([p for _, p in values[k]], np.int64), missing[k])
            for k in sorted(values)}


def adjusted_means(values: dict[str, np.ndarray], points: dict[str, np.ndarray]) -> dict[str, Any]:
    """Analysis of covariance of one (model, dimension): entropy = a_group + b ln(points), least squares.

    ``values``/``points``: group (network) -> its runs' entropies / point counts. Returns ``slope`` (b),
    ``reference_points`` (the median point count of all runs), and per group ``adjusted`` (a_group + b ln(reference))
    and ``se`` (its standard error, from the residual variance); NaN where b cannot be estimated: no group whose
    runs differ in point count, or no residual degree of freedom.
    """
    groups = [k for k in values if len(values[k])]
    nan = float("nan")
    out: dict[str, Any] = {"slope": nan, "reference_points": nan, "adjusted": {k: nan for k in values}, "se": {k: nan for k in values}}
    if not groups:
        return out
    y = np.concatenate([values[k] for k in groups])
    p = np.concatenate([points[k] for k in groups]).astype(np.float64)
    if (p <= 0).any():
        return out
    x = np.log(p)
    out["reference_points"] = float(np.median(p))
    design = np.zeros((len(y), len(groups) + 1))
    at = 0
    for j, k in enumerate(groups):
        design[at:at + len(values[k]), j] = 1.0
        at += len(values[k])
    design[:, -1] = x
    within = sum(float(np.ptp(np.log(points[k].astype(np.float64)))) for k in groups)
    dof = len(y) - design.shape[1]
    if within == 0 or dof < 1 or np.linalg.matrix_rank(design) < design.shape[1]:
        return out
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    cov = float(resid @ resid) / dof * np.linalg.inv(design.T @ design)
    ref = np.log(out["reference_points"])
    out["slope"] = float(beta[-1])
    for j, k in enumerate(groups):
        c = np.zeros(design.shape[1])
        c[j], c[-1] = 1.0, ref
        out["adjusted"][k] = float(c @ beta)
        out["se"][k] = float(np.sqrt(c @ cov @ c))
    return out


def entropy_summary(experiment_id: str, store: str | None = None, *, statistic: str = "mean", confidence: float = 0.95,
                    n_resamples: int = 9999, method: str = "bca", seed: int = 0, name: str | None = None) -> str:
    """Compute and store the summary of persistent entropy per (network, model, dimension); returns the path."""
    from ..store import default_location

    scipy_method = check(statistic, confidence, n_resamples, method)
    exp = open_store(str(store) if store is not None else default_location()).experiment(experiment_id)
    groups = grouped_observations(exp)
    rows = []
    for k, (v, pts, missing) in groups.items():
        stats = summarise(v, statistic, confidence, n_resamples, method, seed)
        stats |= {"n_points_min": int(pts.min()) if len(pts) else -1, "n_points_median": float(np.median(pts)) if len(pts) else np.nan,
                  "n_points_max": int(pts.max()) if len(pts) else -1}
        rows.append((k, missing, stats))
    for model, dim in sorted({(k[1], k[2]) for k in groups}):  # the comparison that controls for the point count
        keys = [k for k in groups if k[1] == model and k[2] == dim]
        fit = adjusted_means({k[0]: groups[k][0] for k in keys}, {k[0]: groups[k][1] for k in keys})
        for k, _, stats in rows:
            if k in keys:
                stats |= {"adjusted_mean": fit["adjusted"][k[0]], "adjusted_se": fit["se"][k[0]], "points_slope": fit["slope"],
                          "reference_points": fit["reference_points"]}
    desc = {"n": "runs with a finite entropy", "n_missing": "finished runs without one (no usable diagram, or no finite bar)",
            "mean": "mean", "std": "standard deviation (ddof 1)", "median": "median", "min": "minimum", "max": "maximum",
            "ci_low": f"lower end of the {confidence:g} bootstrap interval of the {statistic}",
            "ci_high": f"upper end of the {confidence:g} bootstrap interval of the {statistic}",
            "n_points_min": "fewest points of a run with a value (n_points_used: the points its diagram was computed from); -1: none",
            "n_points_median": "median points of the runs with a value", "n_points_max": "most points of a run with a value; -1: none",
            "adjusted_mean": "entropy at reference_points from entropy = a_network + b ln(points), least squares over the networks "
                             "of this model and dimension (NaN: b not estimable)",
            "adjusted_se": "standard error of adjusted_mean", "points_slope": "b: entropy per unit of ln(points), common to the networks",
            "reference_points": "median point count of the runs of this model and dimension, where adjusted_mean is taken"}
    arrays = {
        "group_network": (["group"], np.array([k[0] for k, _, _ in rows], dtype=str), {"description": "network"}),
        "group_model": (["group"], np.array([k[1] for k, _, _ in rows], dtype=str), {"description": "embedding model"}),
        "group_homology_dim": (["group"], np.array([k[2] for k, _, _ in rows], dtype=np.int64), {"description": "homology dimension"}),
        "n_missing": (["group"], np.array([m for _, m, _ in rows], dtype=np.int64), {"description": desc["n_missing"]}),
    }
    for key in ("n", "mean", "std", "median", "min", "max", "ci_low", "ci_high", "n_points_min", "n_points_median", "n_points_max",
                "adjusted_mean", "adjusted_se", "points_slope", "reference_points"):
        integer = key in ("n", "n_points_min", "n_points_max")
        arrays[key] = (["group"], np.array([s[key] for _, _, s in rows], dtype=np.int64 if integer else np.float64),
                       {"description": desc[key]})
    params = {"statistic": statistic, "confidence_level": confidence, "n_resamples": n_resamples, "method": scipy_method, "seed": seed}
    name = name or f"{statistic}-{method.lower()}-{confidence:g}-{n_resamples}-{seed}"
    return write_result(exp, KIND, name, arrays, {
        "kind": KIND, "inputs": [exp.id], "parameters": params, "library": "scipy.stats.bootstrap",
        "adjustment": "per (model, dimension): entropy = a_network + b ln(n_points_used), ordinary least squares (numpy)",
        "versions": versions("scipy", "numpy"),
    })
