"""Divergence of runs that start alike: a finite-time Lyapunov exponent (FTLE) per group.

Runs that share network and prompt form a group (their seeds differ, or they are unseeded
runs, seed -1): replicates of one starting point. For each group and one embedding model:

* the steps compared are those where every run of the group has a vector of the model (the
  runs share a network, so these are the model's steps up to the shortest run);
* D(t) = the mean over the n(n-1)/2 unordered pairs of runs of |u_i(t) - u_j(t)|, u the
  unit-normalised embedding (the space the clustering uses), so D is in [0, 2];
* the exponent is the slope of an ordinary least-squares line through (t, ln D(t)), t the step
  (per invocation: with a text embedder on a two-model network every other step has a vector;
  the earlier tool's exponent was per embedded vector, twice this), over the steps with
  D(t) > 0 inside the fit window. Such fits are often poor (D is bounded and saturates), so
  R^2, the slope's standard error, the number of pairs and the fitted steps are stored with it,
  and a fit with R^2 below ``min_r_squared`` (default ``MIN_R_SQUARED`` = 0.8, the line the
  divergence chart draws) has the status ``poor-fit``, not ``ok``: its slope is stored, but it
  is a line through saturated noise, not a rate.

Result ``analysis/divergence/<name>`` (name: the model, or ``<model>-<start>-<end>`` with a fit
window): per group ``group_network``, ``group_prompt``, ``n_runs``, ``n_pairs``, ``n_steps``,
``n_fit_steps``, ``exponent``, ``intercept``, ``r_squared``, ``stderr``, ``status``;
``mean_distance`` (group, step), NaN where not compared; ``run_group`` (run), -1 for runs
without a vector. One task per group on the cluster, reading its runs a block of steps at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from .results import check_model, embedded_runs, experiment, open_store, run_lengths, versions, write_result

if TYPE_CHECKING:
    from distributed import Client

KIND = "divergence"
STEP_BLOCK = 256  # steps read at once: runs x 256 x dim floats per block
MIN_FIT_STEPS = 3
MIN_R_SQUARED = 0.8  # a fit below this R^2 is stored as POOR_FIT, not OK
OK, POOR_FIT = "ok", "poor-fit"


@dataclass(frozen=True)
class Fit:
    exponent: float
    intercept: float
    r_squared: float
    stderr: float
    n: int


def fit_exponent(steps: np.ndarray, mean_distance: np.ndarray) -> Fit:
    """Least squares of ln D on the step over the points with D > 0 (NaN with fewer than 3)."""
    ok = np.isfinite(mean_distance) & (mean_distance > 0)
    x, y = np.asarray(steps, np.float64)[ok], np.log(mean_distance[ok])
    n = len(x)
    if n < MIN_FIT_STEPS:
        return Fit(np.nan, np.nan, np.nan, np.nan, n)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = dx @ dx, dy @ dy
    slope = (dx @ dy) / sxx
    intercept = y.mean() - slope * x.mean()
    ss_res = float(((y - intercept - slope * x) ** 2).sum())
    r2 = 1.0 - ss_res / syy if syy > 0 else np.nan
    return Fit(float(slope), float(intercept), float(r2), float(np.sqrt(ss_res / (n - 2) / sxx)), n)


def group_curve(location: str, experiment_id: str, model: str, runs: list[int], n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Run on a worker: (steps, D) of one group, D the mean pairwise distance of unit vectors per step."""
    g = experiment(location, experiment_id).group(read_only=True)
    vec = g[f"embeddings/{model}/vector"]
    idx = np.asarray(runs)
    steps_out, d_out = [], []
    for a in range(0, n_steps, STEP_BLOCK):
        b = min(n_steps, a + STEP_BLOCK)
        x = np.asarray(vec.oindex[idx, a:b], dtype=np.float64)  # (runs, steps, dim)
        common = ~np.isnan(x).any(axis=(0, 2))
        if not common.any():
            continue
        x = x[:, common]
        norm = np.linalg.norm(x, axis=2, keepdims=True)
        u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
        total = np.zeros(u.shape[1])
        for i in range(len(runs) - 1):
            total += np.linalg.norm(u[i + 1:] - u[i], axis=2).sum(axis=0)
        steps_out.append(np.arange(a, b)[common])
        d_out.append(total / (len(runs) * (len(runs) - 1) / 2))
    if not steps_out:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(steps_out), np.concatenate(d_out)


def replicate_groups(exp, model: str) -> tuple[list[tuple[str, str]], dict[tuple[str, str], list[int]], int]:
    """(network, prompt) groups: sorted keys, their runs with a vector of ``model`` (ended), and the runs in all."""
    g = exp.group(read_only=True)
    networks, prompts = g["network"][:], g["prompt"][:]
    has = set(embedded_runs(exp, model).tolist()) & set(np.flatnonzero(run_lengths(exp) > 0).tolist())
    members: dict[tuple[str, str], list[int]] = {}
    for r in range(len(networks)):
        runs = members.setdefault((str(networks[r]), str(prompts[r])), [])
        if r in has:
            runs.append(r)
    return sorted(members), members, len(networks)


def parse_window(text: str | None) -> tuple[int, int | None] | None:
    """``START:END`` (END exclusive, either may be empty) -> (start, end or None); None for no window."""
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start = int(parts[0]) if parts[0].strip() else 0
        end = int(parts[1]) if parts[1].strip() else None
    except ValueError:
        raise UserError(f"--fit-steps: expected START:END (steps, END exclusive), got {text!r}") from None
    if start < 0 or (end is not None and end <= start):
        raise UserError(f"--fit-steps: need 0 <= START < END, got {text!r}")
    return start, end


def fit_status(fit: Fit, min_r_squared: float = MIN_R_SQUARED) -> str:
    """``ok``, ``poor-fit`` (R^2 below ``min_r_squared``), or why there is no fit."""
    if not np.isfinite(fit.exponent):
        return f"fewer than {MIN_FIT_STEPS} steps with D > 0 to fit"
    return OK if np.isfinite(fit.r_squared) and fit.r_squared >= min_r_squared else POOR_FIT


def divergence(experiment_id: str, model: str, store: str | None = None, client: Client | None = None, *,
               fit_steps: tuple[int, int | None] | None = None, name: str | None = None,
               min_r_squared: float = MIN_R_SQUARED) -> str:
    """Compute and store the divergence (FTLE) of every (network, prompt) group; returns the result's path.

    ``fit_steps`` (start, end): fit only the steps start <= t < end, end None for no end (the curve is stored whole).
    ``min_r_squared``: a fit with a lower R^2 gets the status ``poor-fit`` instead of ``ok``.
    ``client``: a ``distributed.Client`` (one task per group); without one, computed here.
    """
    from ..store import default_location

    if not 0 <= min_r_squared <= 1:
        raise UserError(f"--min-r-squared: a value between 0 and 1, got {min_r_squared}")
    st = open_store(str(store) if store is not None else default_location())
    exp = st.experiment(experiment_id)
    check_model(exp, model)
    n_steps = exp.group(read_only=True)["output_hash"].shape[1]
    keys, members, n_runs = replicate_groups(exp, model)
    todo = [k for k in keys if len(members[k]) >= 2]
    args = [(st.location, exp.id, model, members[k], n_steps) for k in todo]
    if client is not None:
        curves = client.gather([client.submit(group_curve, *a, key=f"divergence-{model}-{exp.id}-{i}") for i, a in enumerate(args)])
    else:
        curves = [group_curve(*a) for a in args]
    found = dict(zip(todo, curves))

    n = len(keys)
    curve = np.full((n, n_steps), np.nan)
    stats = {k: np.full(n, np.nan) for k in ("exponent", "intercept", "r_squared", "stderr")}
    counts = {k: np.zeros(n, np.int64) for k in ("n_runs", "n_pairs", "n_steps", "n_fit_steps")}
    status = np.full(n, "", dtype=object)
    run_group = np.full(n_runs, -1, np.int64)
    lo, hi = fit_steps or (0, None)
    hi_step = n_steps if hi is None else hi
    for i, k in enumerate(keys):
        runs = members[k]
        run_group[runs] = i
        counts["n_runs"][i], counts["n_pairs"][i] = len(runs), len(runs) * (len(runs) - 1) // 2
        if k not in found:
            status[i] = "fewer than 2 runs"
            continue
        steps, d = found[k]
        curve[i, steps] = d
        window = (steps >= lo) & (steps < hi_step)
        fit = fit_exponent(steps[window], d[window])
        counts["n_steps"][i], counts["n_fit_steps"][i] = len(steps), fit.n
        for s in stats:
            stats[s][i] = getattr(fit, s)
        status[i] = fit_status(fit, min_r_squared)
    if name is None:
        name = model if fit_steps is None else f"{model}-{lo}-{'end' if hi is None else hi}"
    desc = {
        "group_network": "models of the group's network, comma-separated", "group_prompt": "the group's prompt",
        "n_runs": "runs in the group with a vector", "n_pairs": "unordered pairs of runs averaged over",
        "n_steps": "steps where every run of the group has a vector", "n_fit_steps": "steps in the fit (D > 0, inside the window)",
        "exponent": "slope of ln D over the step (per invocation step)", "intercept": "intercept of the fit (ln D at step 0)",
        "r_squared": "coefficient of determination of the fit", "stderr": "standard error of the slope",
        "status": f"ok; poor-fit (R^2 below {min_r_squared:g}: the slope is not a rate); or why there is no fit",
    }
    values = {"group_network": np.array([k[0] for k in keys], dtype=str), "group_prompt": np.array([k[1] for k in keys], dtype=str),
              **counts, **stats, "status": status.astype(str)}
    arrays = {k: (["group"], v, {"description": desc[k]}) for k, v in values.items()}
    arrays["mean_distance"] = (["group", "step"], curve, {"description": "D: mean euclidean distance between the unit vectors of every pair of runs"})
    arrays["run_group"] = (["run"], run_group, {"description": "group of the run; -1: no vector of this model"})
    return write_result(exp, KIND, name, arrays, {
        "kind": KIND, "model": model, "inputs": [exp.id],
        "parameters": {"model": model, "fit_steps": None if fit_steps is None else [lo, hi], "min_fit_steps": MIN_FIT_STEPS,
                       "min_r_squared": min_r_squared},
        "space": "unit-normalised vectors, euclidean", "units": "exponent per step (invocation)",
        "versions": versions("numpy"),
    })
