"""Persistent entropy summarised by network, embedding model and homology dimension.

Each run with a usable diagram (status ``ok*``) and a finite entropy in a dimension is one
observation of its (network, embedding model, homology dimension) group; runs are treated as
independent draws. Per group: n, the runs without a value (``n_missing``), mean, standard
deviation (ddof 1), median, min, max, and a bootstrap confidence interval of the chosen
statistic (mean or median) from ``scipy.stats.bootstrap`` (method BCa, percentile or basic;
``n_resamples`` resamples; every group resampled by a generator seeded with ``seed``, so a
group's interval does not depend on the other groups). Constant values give the interval
(v, v); fewer than two values, or a degenerate BCa, NaN.

Result ``analysis/entropy/<name>`` (name from the parameters, e.g. ``mean-bca-0.95-9999-0``):
``group_network``, ``group_model``, ``group_homology_dim`` and the statistics on dimension ``group``;
the parameters in the attributes. Computed in this process (entropies are one float per run
and dimension), a block of runs at a time.
"""

from __future__ import annotations

import warnings
from collections import Counter

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
    g = exp.group(read_only=True)
    networks = g["network"][:]
    ended = g["stop_reason"][:] != ""
    values: dict[tuple[str, str, int], list[float]] = {}
    missing: Counter = Counter()
    for model in exp.config.embedding_models:
        d = g[f"diagrams/{model}"]
        for a in range(0, len(networks), RUNS_PER_BLOCK):
            e = d["entropy"][a:a + RUNS_PER_BLOCK]
            ok = np.array([str(s).startswith("ok") for s in d["status"][a:a + RUNS_PER_BLOCK]])
            for i, run in enumerate(range(a, a + len(e))):
                if not ended[run]:
                    continue
                for k in range(e.shape[1]):
                    key = (str(networks[run]), model, k)
                    values.setdefault(key, [])
                    if ok[i] and np.isfinite(e[i, k]):
                        values[key].append(float(e[i, k]))
                    else:
                        missing[key] += 1
    return {k: (np.array(values[k], np.float64), missing[k]) for k in sorted(values)}


def entropy_summary(experiment_id: str, store: str | None = None, *, statistic: str = "mean", confidence: float = 0.95,
                    n_resamples: int = 9999, method: str = "bca", seed: int = 0, name: str | None = None) -> str:
    """Compute and store the summary of persistent entropy per (network, model, dimension); returns the path."""
    from ..store import default_location

    scipy_method = check(statistic, confidence, n_resamples, method)
    exp = open_store(str(store) if store is not None else default_location()).experiment(experiment_id)
    groups = grouped_entropies(exp)
    rows = [(k, missing, summarise(v, statistic, confidence, n_resamples, method, seed)) for k, (v, missing) in groups.items()]
    desc = {"n": "runs with a finite entropy", "n_missing": "finished runs without one (no usable diagram, or no finite bar)",
            "mean": "mean", "std": "standard deviation (ddof 1)", "median": "median", "min": "minimum", "max": "maximum",
            "ci_low": f"lower end of the {confidence:g} bootstrap interval of the {statistic}",
            "ci_high": f"upper end of the {confidence:g} bootstrap interval of the {statistic}"}
    arrays = {
        "group_network": (["group"], np.array([k[0] for k, _, _ in rows], dtype=str), {"description": "network"}),
        "group_model": (["group"], np.array([k[1] for k, _, _ in rows], dtype=str), {"description": "embedding model"}),
        "group_homology_dim": (["group"], np.array([k[2] for k, _, _ in rows], dtype=np.int64), {"description": "homology dimension"}),
        "n_missing": (["group"], np.array([m for _, m, _ in rows], dtype=np.int64), {"description": desc["n_missing"]}),
    }
    for key in ("n", "mean", "std", "median", "min", "max", "ci_low", "ci_high"):
        arrays[key] = (["group"], np.array([s[key] for _, _, s in rows], dtype=np.int64 if key == "n" else np.float64),
                       {"description": desc[key]})
    params = {"statistic": statistic, "confidence_level": confidence, "n_resamples": n_resamples, "method": scipy_method, "seed": seed}
    name = name or f"{statistic}-{method.lower()}-{confidence:g}-{n_resamples}-{seed}"
    return write_result(exp, KIND, name, arrays, {
        "kind": KIND, "inputs": [exp.id], "parameters": params, "library": "scipy.stats.bootstrap",
        "versions": versions("scipy", "numpy"),
    })
