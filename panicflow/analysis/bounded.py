"""Bounded-space measures of a run's motion, and the divergence of runs whose prompts differ.

Unit vectors live on a sphere, so distances are bounded: two runs cannot part further than the
sphere allows, D(t) of the FTLE (divergence.py) saturates, and ln D flattens into noise. The
measures here describe the motion on the sphere directly, per run u_t (the run's unit-normalised
vectors of one embedding model, t a step with a vector; a lag k is in steps, so it is per
invocation like the FTLE; pairs (t, t + k) count where both steps have a vector):

* MSAD(k), the mean squared angular displacement: the mean over t of arccos(u_t . u_{t+k})^2
  (the dot clipped to [-1, 1]), lags 1..``max_lag``, and pooled per (network, prompt) group
  (every pair of every run of the group weighted alike). Lags beyond half of the run's span
  (last step - first step with a vector) are left out: fewer than half of its vectors would take
  part, and the mean of a few overlapping pairs is mostly noise.
* C(k), the autocorrelation: with m the mean of the run's unit vectors and w_t = u_t - m,
  C(k) = mean over pairs of w_t . w_{t+k} divided by the mean over the run's vectors of |w_t|^2
  (so C(0) = 1). A covariance, not the mean cosine of the w's: a w near the centre is short and
  its direction noise, and the covariance weights it by its length. The decay time is the first
  lag with a value where C < 1/e; NaN, with a status, when C stays above it within the lags.
* Saturation: the plateau is the mean of MSAD over the last quarter of the lags with a value
  (lags >= 3/4 of the largest); the time to saturation is the first lag where MSAD reaches
  ``fraction`` (0.95) of it. Independent random unit vectors would give (pi/2)^2 only for an
  isotropic cloud; real embeddings (and the dummies, all in one orthant) fill a narrow cone, so a
  run that has forgotten its start plateaus far below (pi/2)^2 and that reference would never be
  reached. The plateau is the run's own; ``plateau_ratio`` = plateau / (pi/2)^2 says how much of
  the sphere it explores. A plateau holds only where the curve is flat: when a least-squares line
  through the plateau lags changes by more than (1 - fraction) of the plateau across them, the
  status says ``no plateau`` (the curve still rises: take more lags) and no time is given.

Result ``analysis/bounded/<name>``: ``lag`` (lag); per run ``msad``, ``msad_pairs``,
``autocorrelation`` (run, lag), ``n_vectors``, ``mean_resultant_length`` (|m|), ``decay_time``,
``decay_status``, ``plateau``, ``plateau_ratio``, ``saturation_time``, ``saturation_status``,
``run_group``; per group the same pooled (``group_*``; the group's autocorrelation is the mean of
its runs' C(k)).

Paraphrase pairs (``divergence_pairs``): a file names pairs of prompts (A, B) of one experiment;
per pair and network, D(t) = the mean over pairs of runs (a of A, b of B) of |u_a(t) - u_b(t)|,
over the steps where every run taking part has a vector, fitted as the FTLE (``fit_exponent``,
``fit_status``). Runs pair when their seeds are equal (a seeded run's every invocation uses its
seed: the same random numbers, so D measures the prompts' difference alone) or both are unseeded
(seed -1: every such combination pairs); ``pairing="all"`` takes every cross pair instead.
Result ``analysis/divergence_pairs/<name>``, laid out as ``analysis/divergence/<name>``.

One task per group on the cluster (a (network, prompt) group; a (pair, network) group).
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from .divergence import MIN_FIT_STEPS, MIN_R_SQUARED, STEP_BLOCK, fit_exponent, fit_status, replicate_groups
from .results import check_model, experiment, open_store, run_vectors, unit, versions, write_result

if TYPE_CHECKING:
    from distributed import Client

KIND, PAIRS_KIND = "bounded", "divergence_pairs"
MEASURES = ("ftle", "bounded", "pairs")  # `analyse divergence --measures`
MAX_LAG = 50
SATURATION = 0.95  # fraction of the plateau that counts as saturated
PLATEAU_PART = 0.25  # the plateau: the last quarter of the lags with a value
MIN_PLATEAU_LAGS = 3
RANDOM_MSAD = (np.pi / 2) ** 2  # independent directions of an isotropic cloud in high dimension
E_FOLD = float(np.exp(-1.0))
OK = "ok"
PAIRINGS = ("matched", "all")
SHOWN_PROMPTS = 5  # prompts listed in an error about a prompt not in the experiment


# ---------------------------------------------------------------------- one run
def lag_curves(steps: np.ndarray, vectors: np.ndarray, max_lag: int = MAX_LAG) -> dict[str, Any]:
    """MSAD, pair counts and autocorrelation of one run at lags 1..max_lag (NaN / 0 where no pair counts).

    ``steps`` (ascending) and ``vectors`` (steps, dim) are the run's steps with a vector, raw or unit.
    """
    msad, acf = np.full(max_lag, np.nan), np.full(max_lag, np.nan)
    pairs = np.zeros(max_lag, np.int64)
    out = {"msad": msad, "pairs": pairs, "acf": acf, "n_vectors": len(steps), "resultant": np.nan, "variance": np.nan}
    if len(steps) < 2:
        return out
    u = unit(np.asarray(vectors, np.float64))
    m = u.mean(axis=0)
    w = u - m
    out["resultant"], out["variance"] = float(np.linalg.norm(m)), float((w * w).sum(axis=1).mean())
    span = int(steps[-1] - steps[0])
    grid = np.full(span + 1, -1, np.int64)  # step - first step -> row of u, -1: no vector there
    grid[steps - steps[0]] = np.arange(len(steps))
    for k in range(1, min(max_lag, span // 2) + 1):
        a, b = grid[:-k], grid[k:]
        both = (a >= 0) & (b >= 0)
        if not both.any():
            continue
        i, j = a[both], b[both]
        dots = np.clip(np.einsum("ij,ij->i", u[i], u[j]), -1.0, 1.0)
        msad[k - 1] = float(np.mean(np.arccos(dots) ** 2))
        pairs[k - 1] = len(i)
        if out["variance"] > 0:
            acf[k - 1] = float(np.einsum("ij,ij->i", w[i], w[j]).mean() / out["variance"])
    return out


def decay_time(lags: np.ndarray, acf: np.ndarray) -> tuple[float, str]:
    """(first lag with C < 1/e, ``ok``), or (NaN, why not)."""
    has = np.isfinite(acf)
    if not has.any():
        return np.nan, "no autocorrelation: fewer than 2 vectors, no pair within the lags, or vectors all equal"
    below = has & (acf < E_FOLD)
    if not below.any():
        return np.nan, f"C stays at or above 1/e up to lag {int(lags[has][-1])}: take more lags"
    return float(lags[np.argmax(below)]), OK


def saturation(lags: np.ndarray, msad: np.ndarray, fraction: float = SATURATION) -> tuple[float, float, str]:
    """(plateau, first lag where MSAD >= fraction x plateau, ``ok``), or with NaNs and why not."""
    has = np.isfinite(msad)
    if has.sum() < MIN_PLATEAU_LAGS:
        return np.nan, np.nan, f"fewer than {MIN_PLATEAU_LAGS} lags with a value"
    x, y = lags[has].astype(np.float64), msad[has]
    window = x >= (1.0 - PLATEAU_PART) * x[-1]
    if window.sum() < MIN_PLATEAU_LAGS:
        return np.nan, np.nan, f"fewer than {MIN_PLATEAU_LAGS} lags in the plateau (lags {x[window][0]:g} to {x[-1]:g})"
    plateau = float(y[window].mean())
    if plateau <= 0:
        return plateau, np.nan, "no movement: MSAD is 0 over the plateau lags"
    wx, wy = x[window], y[window]
    dx = wx - wx.mean()
    change = abs(float((dx @ (wy - wy.mean())) / (dx @ dx))) * float(wx[-1] - wx[0])  # the line's change across the window
    if change > (1.0 - fraction) * plateau:
        return plateau, np.nan, (f"no plateau: MSAD changes by {change / plateau:.0%} of its mean over lags "
                                 f"{wx[0]:g} to {wx[-1]:g}: take more lags")
    return plateau, float(x[np.argmax(y >= fraction * plateau)]), OK


def group_bounded(location: str, experiment_id: str, model: str, runs: list[int], max_lag: int) -> list[dict[str, Any]]:
    """Run on a worker: ``lag_curves`` of each run of one group."""
    exp = experiment(location, experiment_id)
    return [lag_curves(*run_vectors(exp, model, r), max_lag=max_lag) for r in runs]


# ---------------------------------------------------------------------- the bounded result
def _check(max_lag: int, fraction: float) -> None:
    if max_lag < 2:
        raise UserError(f"--max-lag: at least 2 steps, got {max_lag}")
    if not 0 < fraction < 1:
        raise UserError(f"--saturation: a fraction between 0 and 1 (exclusive), got {fraction}")


def default_name(model: str, max_lag: int = MAX_LAG, fraction: float = SATURATION) -> str:
    return model if (max_lag, fraction) == (MAX_LAG, SATURATION) else f"{model}-lag{max_lag}-sat{fraction:g}"


def bounded(experiment_id: str, model: str, store: str | None = None, client: Client | None = None, *,
            max_lag: int = MAX_LAG, fraction: float = SATURATION, name: str | None = None) -> str:
    """Compute and store MSAD, autocorrelation, decay and saturation times per run and group; returns the result's path.

    ``max_lag``: lags 1..max_lag in steps; ``fraction``: of the plateau, for the time to saturation.
    ``client``: a ``distributed.Client`` (one task per (network, prompt) group); without one, computed here.
    """
    from ..store import default_location

    _check(max_lag, fraction)
    st = open_store(str(store) if store is not None else default_location())
    exp = st.experiment(experiment_id)
    check_model(exp, model)
    keys, members, n_runs = replicate_groups(exp, model)
    todo = [k for k in keys if members[k]]
    args = [(st.location, exp.id, model, members[k], max_lag) for k in todo]
    if client is not None:
        found = client.gather([client.submit(group_bounded, *a, key=f"bounded-{model}-{exp.id}-{i}") for i, a in enumerate(args)])
    else:
        found = [group_bounded(*a) for a in args]
    per_group = dict(zip(todo, found))

    lags = np.arange(1, max_lag + 1)
    n = len(keys)
    run = {"msad": np.full((n_runs, max_lag), np.nan), "msad_pairs": np.zeros((n_runs, max_lag), np.int64),
           "autocorrelation": np.full((n_runs, max_lag), np.nan)}
    run_stats = {k: np.full(n_runs, np.nan) for k in ("mean_resultant_length", "decay_time", "plateau", "plateau_ratio",
                                                      "saturation_time")}
    run_status = {k: np.full(n_runs, "", dtype=object) for k in ("decay_status", "saturation_status")}
    n_vectors, run_group = np.zeros(n_runs, np.int64), np.full(n_runs, -1, np.int64)
    grp = {"group_msad": np.full((n, max_lag), np.nan), "group_msad_pairs": np.zeros((n, max_lag), np.int64),
           "group_autocorrelation": np.full((n, max_lag), np.nan)}
    grp_stats = {k: np.full(n, np.nan) for k in ("group_decay_time", "group_plateau", "group_plateau_ratio", "group_saturation_time")}
    grp_status = {k: np.full(n, "", dtype=object) for k in ("group_decay_status", "group_saturation_status")}
    group_runs = np.zeros(n, np.int64)
    for i, key in enumerate(keys):
        runs = members[key]
        group_runs[i] = len(runs)
        if key not in per_group:
            grp_status["group_decay_status"][i] = grp_status["group_saturation_status"][i] = "no run with a vector"
            continue
        for r, c in zip(runs, per_group[key]):
            run_group[r], n_vectors[r] = i, c["n_vectors"]
            run["msad"][r], run["msad_pairs"][r], run["autocorrelation"][r] = c["msad"], c["pairs"], c["acf"]
            run_stats["mean_resultant_length"][r] = c["resultant"]
            run_stats["decay_time"][r], run_status["decay_status"][r] = decay_time(lags, c["acf"])
            p, t, s = saturation(lags, c["msad"], fraction)
            run_stats["plateau"][r], run_stats["plateau_ratio"][r] = p, p / RANDOM_MSAD
            run_stats["saturation_time"][r], run_status["saturation_status"][r] = t, s
        # pooled: every pair of every run weighted alike; C: the mean of the runs' curves
        cnt = run["msad_pairs"][runs].sum(axis=0)
        total = np.nansum(run["msad"][runs] * run["msad_pairs"][runs], axis=0)
        grp["group_msad_pairs"][i] = cnt
        grp["group_msad"][i] = np.divide(total, cnt, out=np.full(max_lag, np.nan), where=cnt > 0)
        acf = run["autocorrelation"][runs]
        has = np.isfinite(acf).sum(axis=0)
        grp["group_autocorrelation"][i] = np.divide(np.nansum(acf, axis=0), has, out=np.full(max_lag, np.nan), where=has > 0)
        grp_stats["group_decay_time"][i], grp_status["group_decay_status"][i] = decay_time(lags, grp["group_autocorrelation"][i])
        p, t, s = saturation(lags, grp["group_msad"][i], fraction)
        grp_stats["group_plateau"][i], grp_stats["group_plateau_ratio"][i] = p, p / RANDOM_MSAD
        grp_stats["group_saturation_time"][i], grp_status["group_saturation_status"][i] = t, s
    run_status["decay_status"][run_group < 0] = run_status["saturation_status"][run_group < 0] = "no vector of this model"

    sat = f"first lag where MSAD reaches {fraction:g} of the plateau"
    desc = {
        "msad": "mean squared angular displacement arccos(u_t . u_t+lag)^2, rad^2; NaN: no pair at this lag",
        "msad_pairs": "pairs (t, t + lag) averaged over", "autocorrelation": "C(lag): mean (u_t - m).(u_t+lag - m) / mean |u_t - m|^2",
        "mean_resultant_length": "|m|, m the mean of the run's unit vectors (1: one direction throughout)",
        "decay_time": "first lag (steps) where C < 1/e; NaN: see decay_status", "decay_status": "ok, or why there is no decay time",
        "plateau": f"mean MSAD over the last {PLATEAU_PART:g} of the lags with a value, rad^2",
        "plateau_ratio": "plateau / (pi/2)^2 (independent directions of an isotropic cloud)",
        "saturation_time": f"{sat} (steps); NaN: see saturation_status", "saturation_status": "ok, or why there is no saturation time",
    }
    arrays: dict[str, tuple] = {"lag": (["lag"], lags, {"description": "lag in steps (invocations)"})}
    for k, v in run.items():
        arrays[k] = (["run", "lag"], v, {"description": desc[k]})
    for k, v in {**run_stats, **run_status}.items():
        arrays[k] = (["run"], v.astype(str) if v.dtype == object else v, {"description": desc[k]})
    arrays["n_vectors"] = (["run"], n_vectors, {"description": "vectors of the model in the run"})
    arrays["run_group"] = (["run"], run_group, {"description": "group of the run; -1: no vector of this model"})
    arrays["group_network"] = (["group"], np.array([k[0] for k in keys], dtype=str), {"description": "models of the group's network"})
    arrays["group_prompt"] = (["group"], np.array([k[1] for k in keys], dtype=str), {"description": "the group's prompt"})
    arrays["group_n_runs"] = (["group"], group_runs, {"description": "runs of the group with a vector"})
    pooled = {"group_msad": "pooled MSAD: every pair of every run of the group weighted alike",
              "group_msad_pairs": "pairs pooled", "group_autocorrelation": "mean of the runs' C(lag)"}
    for k, v in grp.items():
        arrays[k] = (["group", "lag"], v, {"description": pooled[k]})
    for k, v in {**grp_stats, **grp_status}.items():
        arrays[k] = (["group"], v.astype(str) if v.dtype == object else v, {"description": f"{desc[k[6:]]} (of the pooled curve)"})
    return write_result(exp, KIND, name or default_name(model, max_lag, fraction), arrays, {
        "kind": KIND, "model": model, "inputs": [exp.id],
        "parameters": {"model": model, "max_lag": max_lag, "saturation_fraction": fraction, "plateau_part": PLATEAU_PART,
                       "min_plateau_lags": MIN_PLATEAU_LAGS, "decay_level": E_FOLD, "lag_limit": "half of each run's span"},
        "space": "unit-normalised vectors, angles in radians", "units": "lags and times in steps (invocations)",
        "random_msad": RANDOM_MSAD, "versions": versions("numpy"),
    })


# ---------------------------------------------------------------------- paraphrase pairs
def read_pairs(path: str, prompts: list[str], experiment_id: str = "") -> list[tuple[str, str]]:
    """Pairs of prompts from a YAML (``.yaml``/``.yml``) or CSV file; a ``UserError`` naming what is wrong.

    YAML: a list of two-item lists or of ``{prompt_a: ..., prompt_b: ...}``, at the top or under ``pairs:``.
    CSV: two columns, an optional header ``prompt_a,prompt_b``. Each prompt must be one of ``prompts``.
    """
    import yaml

    p = Path(path)
    where = f"--pairs {path}"
    if not p.is_file():
        raise UserError(f"{where}: no such file")
    text = p.read_text(encoding="utf-8")
    rows: list[Any]
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{where}: not valid YAML ({' '.join(str(exc).split())[:120]})") from None
        rows = doc.get("pairs") if isinstance(doc, dict) else doc
        if not isinstance(rows, list):
            raise UserError(f"{where}: expected a list of prompt pairs (at the top or under pairs:), got {type(rows).__name__}")
        rows = [[r.get("prompt_a"), r.get("prompt_b")] if isinstance(r, dict) else r for r in rows]
    elif p.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        if rows and [c.strip() for c in rows[0]] == ["prompt_a", "prompt_b"]:
            rows = rows[1:]
    else:
        raise UserError(f"{where}: expected a .yaml, .yml or .csv file")
    if not rows:
        raise UserError(f"{where}: no pairs in the file")
    known = set(prompts)
    out: list[tuple[str, str]] = []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, (list, tuple)) or len(r) != 2 or not all(isinstance(x, str) and x.strip() for x in r):
            raise UserError(f"{where}: pair {n} is not two prompts (text): {r!r}")
        a, b = r
        if a == b:
            raise UserError(f"{where}: pair {n} names one prompt twice: {a!r}")
        for x in (a, b):
            if x not in known:
                shown = ", ".join(repr(q) for q in sorted(known)[:SHOWN_PROMPTS])
                more = f" and {len(known) - SHOWN_PROMPTS} more" if len(known) > SHOWN_PROMPTS else ""
                raise UserError(f"{where}: pair {n}: {x!r} is not a prompt of experiment {experiment_id}; its prompts: {shown}{more}")
        if (a, b) in out or (b, a) in out:
            raise UserError(f"{where}: pair {n} ({a!r}, {b!r}) is listed twice")
        out.append((a, b))
    return out


def run_pairs(runs_a: list[int], runs_b: list[int], seeds: np.ndarray, pairing: str = "matched") -> list[tuple[int, int]]:
    """Pairs of runs (a, b): every cross pair (``all``), or equal seeds and unseeded with unseeded (``matched``)."""
    if pairing == "all":
        return [(a, b) for a in runs_a for b in runs_b]
    return [(a, b) for a in runs_a for b in runs_b if seeds[a] == seeds[b]]  # -1 == -1: both unseeded


def pair_curve(location: str, experiment_id: str, model: str, pairs: list[tuple[int, int]], n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Run on a worker: (steps, D) of one (prompt pair, network), D the mean distance of unit vectors over the pairs of runs."""
    g = experiment(location, experiment_id).group(read_only=True)
    vec = g[f"embeddings/{model}/vector"]
    runs = sorted({r for p in pairs for r in p})
    row = {r: i for i, r in enumerate(runs)}
    ia, ib = np.array([row[a] for a, _ in pairs]), np.array([row[b] for _, b in pairs])
    steps_out, d_out = [], []
    for a in range(0, n_steps, STEP_BLOCK):
        b = min(n_steps, a + STEP_BLOCK)
        x = np.asarray(vec.oindex[np.asarray(runs), a:b], dtype=np.float64)  # (runs, steps, dim)
        common = ~np.isnan(x).any(axis=(0, 2))
        if not common.any():
            continue
        x = x[:, common]
        norm = np.linalg.norm(x, axis=2, keepdims=True)
        u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
        steps_out.append(np.arange(a, b)[common])
        d_out.append(np.linalg.norm(u[ia] - u[ib], axis=2).mean(axis=0))
    if not steps_out:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(steps_out), np.concatenate(d_out)


def pairs_name(model: str, path: str, fit_steps: tuple[int, int | None] | None = None) -> str:
    """``<model>-<file stem>`` (characters other than letters, digits, ``._-`` as ``_``), with the window as the FTLE's."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem) or "pairs"
    name = f"{model}-{stem}"
    if fit_steps is not None:
        name += f"-{fit_steps[0]}-{'end' if fit_steps[1] is None else fit_steps[1]}"
    return name


def divergence_pairs(experiment_id: str, model: str, pairs_file: str, store: str | None = None, client: Client | None = None, *,
                     pairing: str = "matched", fit_steps: tuple[int, int | None] | None = None, name: str | None = None,
                     min_r_squared: float = MIN_R_SQUARED) -> str:
    """Compute and store the divergence of the runs of each pair of prompts in ``pairs_file``, per network; returns the path.

    ``pairing``: ``matched`` (equal seeds, or both unseeded) or ``all`` (every cross pair). ``fit_steps`` and
    ``min_r_squared`` as ``divergence.divergence``. ``client``: one task per (pair, network); without one, computed here.
    """
    from ..store import default_location

    if pairing not in PAIRINGS:
        raise UserError(f"--pairing: choose matched or all, not {pairing!r}")
    if not 0 <= min_r_squared <= 1:
        raise UserError(f"--min-r-squared: a value between 0 and 1, got {min_r_squared}")
    st = open_store(str(store) if store is not None else default_location())
    exp = st.experiment(experiment_id)
    check_model(exp, model)
    g = exp.group(read_only=True)
    n_steps = g["output_hash"].shape[1]
    seeds = g["seed"][:]
    keys, members, _ = replicate_groups(exp, model)
    prompt_pairs = read_pairs(pairs_file, sorted({k[1] for k in keys}), exp.id)
    networks = sorted({k[0] for k in keys})
    groups = [(a, b, net) for a, b in prompt_pairs for net in networks]
    matched = {gk: run_pairs(members.get((gk[2], gk[0]), []), members.get((gk[2], gk[1]), []), seeds, pairing) for gk in groups}
    todo = [gk for gk in groups if matched[gk]]
    args = [(st.location, exp.id, model, matched[gk], n_steps) for gk in todo]
    if client is not None:
        curves = client.gather([client.submit(pair_curve, *a, key=f"divergence-pairs-{model}-{exp.id}-{i}") for i, a in enumerate(args)])
    else:
        curves = [pair_curve(*a) for a in args]
    found = dict(zip(todo, curves))

    n = len(groups)
    curve = np.full((n, n_steps), np.nan)
    stats = {k: np.full(n, np.nan) for k in ("exponent", "intercept", "r_squared", "stderr")}
    counts = {k: np.zeros(n, np.int64) for k in ("n_runs_a", "n_runs_b", "n_pairs", "n_steps", "n_fit_steps")}
    status = np.full(n, "", dtype=object)
    lo, hi = fit_steps or (0, None)
    hi_step = n_steps if hi is None else hi
    for i, gk in enumerate(groups):
        a, b, net = gk
        counts["n_runs_a"][i], counts["n_runs_b"][i] = len(members.get((net, a), [])), len(members.get((net, b), []))
        counts["n_pairs"][i] = len(matched[gk])
        if gk not in found:
            status[i] = ("no run of one of the prompts" if not (counts["n_runs_a"][i] and counts["n_runs_b"][i]) else
                         "no pair of runs with equal seeds (or both unseeded); try --pairing all")
            continue
        steps, d = found[gk]
        curve[i, steps] = d
        window = (steps >= lo) & (steps < hi_step)
        fit = fit_exponent(steps[window], d[window])
        counts["n_steps"][i], counts["n_fit_steps"][i] = len(steps), fit.n
        for s in stats:
            stats[s][i] = getattr(fit, s)
        status[i] = fit_status(fit, min_r_squared)
    desc = {
        "n_runs_a": "runs of prompt A in the network with a vector", "n_runs_b": "runs of prompt B in the network with a vector",
        "n_pairs": "pairs of runs (a of A, b of B) averaged over", "n_steps": "steps where every paired run has a vector",
        "n_fit_steps": "steps in the fit (D > 0, inside the window)", "exponent": "slope of ln D over the step (per invocation step)",
        "intercept": "intercept of the fit (ln D at step 0)", "r_squared": "coefficient of determination of the fit",
        "stderr": "standard error of the slope",
        "status": f"ok; poor-fit (R^2 below {min_r_squared:g}: the slope is not a rate); or why there is no fit",
    }
    values = {"group_network": np.array([gk[2] for gk in groups], dtype=str), "prompt_a": np.array([gk[0] for gk in groups], dtype=str),
              "prompt_b": np.array([gk[1] for gk in groups], dtype=str), **counts, **stats, "status": status.astype(str)}
    desc |= {"group_network": "models of the network, comma-separated", "prompt_a": "the pair's first prompt",
             "prompt_b": "the pair's second prompt"}
    arrays = {k: (["group"], v, {"description": desc[k]}) for k, v in values.items()}
    arrays["mean_distance"] = (["group", "step"], curve, {"description": "D: mean euclidean distance between the unit vectors of "
                                                                         "each pair of runs (a of A, b of B)"})
    digest = hashlib.sha256(Path(pairs_file).read_bytes()).hexdigest()
    return write_result(exp, PAIRS_KIND, name or pairs_name(model, pairs_file, fit_steps), arrays, {
        "kind": PAIRS_KIND, "model": model, "inputs": [exp.id],
        "parameters": {"model": model, "pairs": [list(p) for p in prompt_pairs], "pairs_file": str(pairs_file),
                       "pairs_sha256": digest, "pairing": pairing, "fit_steps": None if fit_steps is None else [lo, hi],
                       "min_fit_steps": MIN_FIT_STEPS, "min_r_squared": min_r_squared},
        "space": "unit-normalised vectors, euclidean", "units": "exponent per step (invocation)",
        "versions": versions("numpy", "pyyaml"),
    })


def parse_measures(text: str, pairs_file: str | None) -> tuple[str, ...]:
    """``--measures`` (comma-separated ftle, bounded, pairs, or all) -> the measures in order; ``--pairs`` adds pairs."""
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        names = ["ftle", "bounded"] + (["pairs"] if pairs_file else [])
    bad = [m for m in names if m not in MEASURES]
    if bad or not names:
        raise UserError(f"--measures: comma-separated ftle, bounded, pairs (or all), got {text!r}")
    if pairs_file and "pairs" not in names:
        names.append("pairs")
    if "pairs" in names and not pairs_file:
        raise UserError("--measures pairs: needs --pairs FILE (a YAML or CSV file of prompt pairs)")
    return tuple(m for m in MEASURES if m in names)


# ---------------------------------------------------------------------- summaries (analyse divergence prints them)
def bounded_rows(g) -> list[dict[str, Any]]:
    """Per group of a stored bounded result: its pooled times and statuses, and the median of its runs' times."""
    rg = g["run_group"][:]
    decay, sat = g["decay_time"][:], g["saturation_time"][:]
    rows = []
    for i, (net, prompt) in enumerate(zip(g["group_network"][:], g["group_prompt"][:])):
        runs = rg == i
        d, s = decay[runs], sat[runs]
        rows.append({"network": str(net), "prompt": str(prompt), "n_runs": int(g["group_n_runs"][i]),
                     "plateau": float(g["group_plateau"][i]), "plateau_ratio": float(g["group_plateau_ratio"][i]),
                     "saturation_time": float(g["group_saturation_time"][i]), "saturation_status": str(g["group_saturation_status"][i]),
                     "decay_time": float(g["group_decay_time"][i]), "decay_status": str(g["group_decay_status"][i]),
                     "runs_saturated": int(np.isfinite(s).sum()), "runs_decayed": int(np.isfinite(d).sum()),
                     "median_run_saturation_time": float(np.median(s[np.isfinite(s)])) if np.isfinite(s).any() else np.nan,
                     "median_run_decay_time": float(np.median(d[np.isfinite(d)])) if np.isfinite(d).any() else np.nan})
    return rows


def describe_bounded(row: dict[str, Any]) -> str:
    """One line per group for stderr."""
    if row["saturation_status"] == OK:
        sat = (f"MSAD saturates at lag {row['saturation_time']:g} (plateau {row['plateau']:.3g} rad², "
               f"{row['plateau_ratio']:.0%} of (π/2)²)")
    else:
        sat = f"no saturation time: {row['saturation_status']}"
    dec = f"C < 1/e at lag {row['decay_time']:g}" if row["decay_status"] == OK else f"no decay time: {row['decay_status']}"
    return (f"{sat}; {dec}; runs: {row['runs_saturated']}/{row['n_runs']} saturate, "
            f"{row['runs_decayed']}/{row['n_runs']} decay")


def pairs_rows(g) -> list[dict[str, Any]]:
    keys = ("group_network", "prompt_a", "prompt_b", "exponent", "r_squared", "n_pairs", "status")
    return [{"network": str(n), "prompt_a": str(a), "prompt_b": str(b), "exponent": float(e), "r_squared": float(r),
             "n_pairs": int(k), "status": str(s)} for n, a, b, e, r, k, s in zip(*(g[k][:] for k in keys))]
