"""Distances between persistence diagrams, per homology dimension, from gudhi.

Measures (docs/analysis.md), each between the finite bars of two diagrams of one homology
dimension (the earlier tool's "Wasserstein" was an L1 distance between sorted bar lengths):

* ``wasserstein_1``, ``wasserstein_2``: the p-Wasserstein distance W_p with points matched to
  each other or to the diagonal, ground metric L^``internal_p`` in the plane (default
  L-infinity, gudhi's default), by ``gudhi.hera.wasserstein_distance`` with relative error
  ``delta`` (default 1e-6, in effect exact);
* ``bottleneck``: ``gudhi.bottleneck_distance`` (L-infinity ground metric, exact up to the
  smallest double).

Infinite bars are left out: a Rips filtration has exactly one, the H0 bar born at 0, in every
diagram, so they would always match at cost 0. The test checks these against persim and a
Hungarian-algorithm oracle (scipy) on random diagrams.

``pairwise_distances`` computes the matrices for chosen runs of one or several experiments
on the cluster (blocks of rows per task) and stores them as ``analysis/distances/<name>``
in the first experiment's store.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
from distributed import Client

from ..errors import UserError
from .results import check_model, open_store, read_diagram, versions, write_result

KIND = "distances"
METRICS = ("wasserstein_1", "wasserstein_2", "bottleneck")


def finite(dgm: np.ndarray) -> np.ndarray:
    dgm = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
    return dgm[np.isfinite(dgm).all(axis=1)]


def wasserstein(a: np.ndarray, b: np.ndarray, p: float = 1, internal_p: float = np.inf, delta: float = 1e-6) -> float:
    """W_p between the finite bars of two diagrams ((k, 2) arrays of birth, death)."""
    import gudhi.hera

    return float(gudhi.hera.wasserstein_distance(finite(a), finite(b), order=p, internal_p=internal_p, delta=delta))


def bottleneck(a: np.ndarray, b: np.ndarray) -> float:
    """Bottleneck distance (L-infinity ground metric) between the finite bars of two diagrams."""
    import gudhi

    return float(gudhi.bottleneck_distance(finite(a), finite(b)))


def distance(metric: str, a: np.ndarray, b: np.ndarray, internal_p: float = np.inf, delta: float = 1e-6) -> float:
    if metric == "wasserstein_1":
        return wasserstein(a, b, 1, internal_p, delta)
    if metric == "wasserstein_2":
        return wasserstein(a, b, 2, internal_p, delta)
    if metric == "bottleneck":
        return bottleneck(a, b)
    raise UserError(f"--metric: unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def distance_block(diagrams: list[list[np.ndarray]], rows: Sequence[int], metrics: Sequence[str],
                   internal_p: float, delta: float) -> np.ndarray:
    """Run on a worker: distances of ``rows`` to every diagram with a higher index.

    Returns (len(metrics), homology dims, len(rows), n); entries at or below the diagonal are NaN.
    """
    n, dims = len(diagrams), len(diagrams[0]) if diagrams else 0
    out = np.full((len(metrics), dims, len(rows), n), np.nan)
    for i, r in enumerate(rows):
        for j in range(r + 1, n):
            for m, metric in enumerate(metrics):
                for k in range(dims):
                    out[m, k, i, j] = distance(metric, diagrams[r][k], diagrams[j][k], internal_p, delta)
    return out


def pairwise_distances(
    experiment_ids: Sequence[str],
    model: str,
    store: str | None = None,
    client: Client | None = None,
    *,
    runs: Sequence[int] | None = None,
    metrics: Sequence[str] = METRICS,
    internal_p: float = np.inf,
    delta: float = 1e-6,
    name: str | None = None,
    rows_per_task: int = 8,
) -> str:
    """Pairwise diagram distances between chosen runs (default: every run with a diagram).

    ``runs`` applies to each experiment. Stored in the first experiment as
    ``analysis/distances/<name>``: one (homology_dim, diagram_a, diagram_b) array per metric,
    symmetric with a zero diagonal, and ``diagram_experiment``/``diagram_run`` saying which
    run each row is. Returns the result's path.
    """
    from ..store import default_location

    if not experiment_ids:
        raise UserError("distances: give at least one experiment id")
    for m in metrics:
        if m not in METRICS:
            raise UserError(f"--metric: unknown metric {m!r}; choose from {', '.join(METRICS)}")
    st = open_store(str(store) if store is not None else default_location())
    exps = [st.experiment(e) for e in experiment_ids]
    labels: list[tuple[str, int]] = []
    diagrams: list[list[np.ndarray]] = []
    for exp in exps:
        check_model(exp, model)
        n_runs = exp.group(read_only=True)["run"].shape[0]
        chosen = range(n_runs) if runs is None else runs
        for r in chosen:
            if not 0 <= int(r) < n_runs:
                raise UserError(f"--runs: experiment {exp.id} has runs 0..{n_runs - 1}, not {r}")
            dgm = read_diagram(exp, model, int(r))
            if dgm is None:
                if runs is not None:
                    raise UserError(f"--runs: run {r} of experiment {exp.id} has no {model} diagram (see its status)")
                continue
            labels.append((exp.id, int(r)))
            diagrams.append(dgm)
    n = len(diagrams)
    if n < 2:
        raise UserError(f"distances: need at least two runs with a {model} diagram, found {n}")
    blocks = [list(range(i, min(n, i + rows_per_task))) for i in range(0, n, rows_per_task)]
    if client is not None:
        shared = client.scatter(diagrams, broadcast=False)
        parts = client.gather([client.submit(distance_block, shared, b, tuple(metrics), internal_p, delta, pure=False)
                               for b in blocks])
    else:
        parts = [distance_block(diagrams, b, tuple(metrics), internal_p, delta) for b in blocks]
    upper = np.concatenate(parts, axis=2)  # (metric, dim, n, n), upper triangle
    full = np.where(np.isnan(upper), np.swapaxes(upper, 2, 3), upper)
    idx = np.arange(n)
    full[:, :, idx, idx] = 0.0
    params = {"model": model, "metrics": list(metrics), "internal_p": internal_p, "delta": delta,
              "runs": None if runs is None else [int(r) for r in runs]}
    inputs = [e.id for e in exps]
    if name is None:
        digest = hashlib.sha256(json.dumps([params, inputs], default=str).encode()).hexdigest()[:8]
        name = f"{model}-{digest}"
    dims = ["homology_dim", "diagram_a", "diagram_b"]
    arrays = {m: (dims, full[i], {"description": _DESCRIPTIONS[m].format(q=internal_p)}) for i, m in enumerate(metrics)}
    arrays["diagram_experiment"] = (["diagram_a"], np.array([e for e, _ in labels]), {"description": "experiment of each diagram"})
    arrays["diagram_run"] = (["diagram_a"], np.array([r for _, r in labels], dtype=np.int64), {"description": "run of each diagram"})
    return write_result(
        exps[0], KIND, name, arrays,
        {"kind": KIND, "parameters": {**params, "internal_p": str(internal_p)}, "inputs": inputs,
         "library": "gudhi", "versions": versions("gudhi", "numpy")},
    )


_DESCRIPTIONS = {
    "wasserstein_1": "1-Wasserstein distance between finite bars (ground metric L^{q}; gudhi.hera)",
    "wasserstein_2": "2-Wasserstein distance between finite bars (ground metric L^{q}; gudhi.hera)",
    "bottleneck": "bottleneck distance between finite bars (ground metric L^inf; gudhi.bottleneck_distance)",
}
