"""Symbolic dynamics of the runs under a stored clustering: milestoning, a Markov state model,
dwell times, transit and absorption (issue 24 item 2; docs/analysis.md, "Symbolic dynamics").

Symbols. A run's sequence is the clustering's label of each of its vectors (those of the
clustering's embedding model, in step order; steps without a vector, label -2, are skipped).
**Core-set milestoning**: a cluster is a core, noise (-1) is outside every core, and a vector
outside every core keeps the last core the run visited, so the *milestoned* sequence is a total
symbol sequence over the cores. Noise before a run's first core has no core to keep: those vectors
are ``unassigned`` (-1 in ``milestone``), counted per run and left out of every count below.
Time is counted in vectors of the clustering's model (one per pass round a two-model network).

Markov state model (``deeptime``), per network (all its runs): transition counts at lag ``lag``
(default 1) in deeptime's ``"sliding"`` count mode (every window of ``lag`` vectors of every
run's milestoned sequence, overlapping), then deeptime's maximum-likelihood MSM, reversible by
default (detailed balance imposed; ``reversible=False`` row-normalises the counts), on the
largest strongly connected set of states (the states outside it get no stationary weight: NaN).
From it: the transition matrix, the stationary distribution, the implied timescales
t_i = -lag / ln|lambda_i| at each lag 1..``max_lag`` (in vectors), and ``n_sets`` metastable sets by
PCCA+. ``n_sets=None`` (default) takes the largest gap of the timescales at ``lag``: m sets when
t_(m-1) / t_m is the largest ratio of consecutive timescales (at most ``MAX_SETS``; 1 set, no
PCCA+, with fewer than 3 connected states or no timescale).

Dwell times: the stays of the milestoned sequence (a stay in a core runs until the run reaches
another core, the time in transit after leaving it included). A run's last stay is right-censored
(the run ended in it) and left out of the fit. Per state, a geometric law (the discrete
exponential, P(L) = p (1-p)^(L-1)) against a discrete power law (the zeta law,
P(L) = L^-a / zeta(a), a > 1), both fitted by maximum likelihood; Vuong's test on the log
likelihood ratio R = sum(ln zeta - ln geometric) (one parameter each, so no penalty):
``heavy-tailed`` when R > 0 and p < ``alpha`` (two-sided, default 0.1), ``exponential`` when
R < 0 and p < alpha, else ``undecided`` (also with fewer than ``MIN_DWELLS`` uncensored stays).

Transit against states: per run the vectors in a core (``core``), outside every core after the
first (``transit``) and before it (``unassigned``).

Absorption: a seeded run stops at the first output (caption or image) that is byte-for-byte one
it made before (loop detection, docs/store.md): ``stop_reason`` "loop", ``loop_start`` the step of
the earlier copy and ``loop_period`` the steps between. From there on the run repeats itself
exactly: it is absorbed. Time to absorption: ``loop_start`` in steps and the vectors of the model
before it; runs that ended otherwise are not absorbed (right-censored at their length).

Pooling: several experiments that one clustering covers (``analyse cluster ID1 ID2 ...``) give one
result, their runs pooled per network (counts summed over the runs of all of them, each run its own
trajectory), stored in the first experiment (``<clustering>-lag<lag>-pooled<N>``; ``shared_clustering``).

Result ``analysis/dynamics/<name>`` (default: ``<clustering>-lag<lag>``), with the parameters
(clustering, model, lag, max_lag, n_sets asked and in effect per network, reversible, count mode,
alpha), inputs and versions (numpy, scipy, deeptime). Tables: ``dynamics_table(ID, "runs" |
"states" | "transitions" | "timescales" | "networks")``; chart: ``dynamics_chart``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from .results import open_result, open_store, versions, write_result

KIND = "dynamics"
COUNT_MODE = "sliding"
MIN_DWELLS = 10
MAX_SETS = 10
MAX_TIMESCALES = 10
UNASSIGNED = -1
NO_VECTOR = -2
TABLES = ("runs", "states", "transitions", "timescales", "networks")


# --- symbols ---------------------------------------------------------------------------------------

def milestone(labels: np.ndarray) -> np.ndarray:
    """Core-set milestoning of one run's (step,) labels: each vector's last core (-1 before the
    first core: unassigned; -2 where the step has no vector)."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, NO_VECTOR, np.int32)
    idx = np.flatnonzero(labels >= -1)
    seq = labels[idx]
    pos = np.where(seq >= 0, np.arange(len(seq)), -1)
    pos = np.maximum.accumulate(pos) if len(pos) else pos
    out[idx] = np.where(pos >= 0, seq[np.maximum(pos, 0)], UNASSIGNED)
    return out


def symbols(milestoned: np.ndarray) -> np.ndarray:
    """The run's total symbol sequence: its milestoned vectors from the first core on."""
    m = np.asarray(milestoned)
    return m[m >= 0].astype(np.int64)


def dwells(traj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state, length, final) per stay of a symbol sequence; the last stay is right-censored."""
    if len(traj) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    starts = np.flatnonzero(np.r_[True, traj[1:] != traj[:-1]])
    lengths = np.diff(np.r_[starts, len(traj)])
    final = np.zeros(len(starts), bool)
    final[-1] = True
    return traj[starts], lengths, final


# --- Markov state model ----------------------------------------------------------------------------

def estimate_msm(trajs: list[np.ndarray], n_states: int, lag: int = 1, reversible: bool = True):
    """deeptime's maximum-likelihood MSM of integer trajectories at ``lag`` (sliding counts, the
    largest connected set); None when no transition is counted."""
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    trajs = [np.asarray(t, dtype=np.int32) for t in trajs if len(t) > lag]
    if not trajs:
        return None
    counts = TransitionCountEstimator(lag, COUNT_MODE, n_states=n_states).fit_fetch(trajs)
    # the largest strongly connected set, whether reversible or not: deeptime's non-reversible MSM takes
    # weakly connected sets, where a state only entered (a run's last core) has a zero row, fails the
    # estimate and is skipped, leaving a smaller set or none (the pooled test saw a network with no states)
    counts = counts.submodel_largest(directed=True)
    if counts.count_matrix.sum() == 0:
        return None
    try:
        return MaximumLikelihoodMSM(reversible=reversible, lagtime=lag).fit_fetch(counts)
    except (ValueError, RuntimeError):
        return None


def timescale_gap_sets(timescales: np.ndarray, n_connected: int) -> int:
    """Metastable sets chosen by the largest gap: m where t_(m-1)/t_m is largest (1-based t)."""
    t = np.asarray(timescales, dtype=float)
    t = t[np.isfinite(t) & (t > 0)]
    if n_connected < 3 or len(t) < 1:
        return 1 if n_connected < 2 else min(2, n_connected)
    if len(t) == 1:
        return 2
    ratios = t[:-1] / t[1:]
    m = int(np.argmax(ratios)) + 2  # gap after t_(i+1) (0-based i) -> i+2 sets
    return int(min(m, MAX_SETS, n_connected))


# --- dwell-time fit --------------------------------------------------------------------------------

def geometric_loglik(x: np.ndarray) -> tuple[float, np.ndarray]:
    """MLE p = 1/mean of a geometric law on 1, 2, ...; returns (p, pointwise log likelihood)."""
    from scipy import stats

    p = 1.0 / float(np.mean(x))
    return p, stats.geom.logpmf(x, p)


def zeta_loglik(x: np.ndarray) -> tuple[float, np.ndarray]:
    """MLE exponent a > 1 of the zeta law P(L) = L^-a / zeta(a); returns (a, pointwise log likelihood)."""
    from scipy import optimize, special, stats

    slog = float(np.sum(np.log(x)))
    n = len(x)

    def nll(a):
        return a * slog + n * math.log(special.zeta(a, 1))

    r = optimize.minimize_scalar(nll, bounds=(1.0 + 1e-6, 30.0), method="bounded", options={"xatol": 1e-8})
    a = float(r.x)
    return a, stats.zipf.logpmf(x, a)


def fit_dwells(x: np.ndarray, alpha: float = 0.1) -> dict[str, Any]:
    """Exponential (geometric) or heavy-tailed (zeta) dwell times, by Vuong's likelihood-ratio test."""
    from scipy import special

    x = np.asarray(x, dtype=np.int64)
    out = {"n": int(len(x)), "verdict": "undecided", "loglik_ratio": math.nan, "p_value": math.nan,
           "geometric_p": math.nan, "zeta_exponent": math.nan, "mean": float(np.mean(x)) if len(x) else math.nan}
    if len(x) < MIN_DWELLS:
        return out
    p, lg = geometric_loglik(x)
    a, lz = zeta_loglik(x)
    d = lz - lg
    r = float(d.sum())
    sd = float(d.std())
    pv = 1.0 if sd == 0 else float(special.erfc(abs(r) / (math.sqrt(2 * len(x)) * sd)))
    out.update(loglik_ratio=r, p_value=pv, geometric_p=p, zeta_exponent=a)
    if pv < alpha:
        out["verdict"] = "heavy-tailed" if r > 0 else "exponential"
    return out


def _strs(a) -> np.ndarray:
    """Fixed-width str of a zarr string array (numpy's StringDType casts only to a sized dtype)."""
    return np.asarray([str(x) for x in np.asarray(a).tolist()], dtype=str)


def _plain(a) -> np.ndarray:
    a = np.asarray(a)
    return _strs(a) if a.dtype.kind in "TUO" else a


# --- the analysis ----------------------------------------------------------------------------------

def shared_clustering(exps: list, clustering: str | None) -> list:
    """The clusters result ``clustering`` (default: the first experiment's most recent) in each of ``exps``,
    one clustering of them all: present in each, and each copy's ``inputs`` naming every one of them
    (``analyse cluster ID1 ID2 ...`` or ``analyse assign ID1 ID2 ...``); else a one-line UserError."""
    first = open_result(exps[0], "clusters", clustering)
    name = first.basename
    ids = [e.id for e in exps]
    out = []
    for exp in exps:
        try:
            g = first if exp is exps[0] else open_result(exp, "clusters", name)
        except UserError:
            g = None
        if g is None or not set(ids) <= set(g.attrs.get("inputs", [exp.id])):
            raise UserError(f"dynamics: clustering {name!r} of {exps[0].id} is not shared by {exp.id}; pool experiments "
                            f"clustered together (`panicflow analyse cluster {' '.join(ids)} --model ...`, or `analyse assign`)")
        out.append(g)
    return out


def dynamics(experiment_id: str | Sequence[str], clustering: str | None = None, store: str | None = None, *, lag: int = 1,
             max_lag: int = 5, n_sets: int | None = None, reversible: bool = True, alpha: float = 0.1,
             name: str | None = None) -> str:
    """Milestoning, MSM per network, dwell times, transit and absorption under a stored clustering
    (default: the most recent); returns the result's path.

    Several experiment ids pool their runs (one clustering of them all, ``shared_clustering``): each
    network's counts are summed over the runs of every experiment (each run its own trajectory: no
    transition from one run's end into another run), and the result goes into the first experiment with
    ``inputs`` naming them all; its per-run arrays cover every run, ``run_experiment`` and ``run_index``
    saying whose (dimensions ``pooled_run`` and ``pooled_step``, steps padded with -2)."""
    from ..store import default_location

    if lag < 1 or max_lag < 1:
        raise UserError(f"--lag and --max-lag: at least 1 (got {lag}, {max_lag})")
    if n_sets is not None and n_sets < 1:
        raise UserError(f"--n-sets: at least 1 (got {n_sets})")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha: between 0 and 1 (got {alpha})")
    ids = [experiment_id] if isinstance(experiment_id, str) else list(experiment_id)
    if not ids:
        raise UserError("dynamics: give at least one experiment id")
    st = open_store(str(store) if store is not None else default_location())
    exps = [st.experiment(e) for e in ids]
    if len({e.id for e in exps}) != len(exps):
        raise UserError("dynamics: an experiment is named twice")
    exp = exps[0]
    srcs = shared_clustering(exps, clustering)
    src = srcs[0]
    model = src.attrs["parameters"]["model"]
    width = max(s["label"].shape[1] for s in srcs)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("labels", "networks", "stop", "loop_start", "loop_period", "eid", "index")}
    for e, s in zip(exps, srcs):
        lab = s["label"][:]
        parts["labels"].append(np.pad(lab, ((0, 0), (0, width - lab.shape[1])), constant_values=NO_VECTOR))
        g = e.group(read_only=True)
        parts["networks"].append(_strs(g["network"][:]))
        parts["stop"].append(_strs(g["stop_reason"][:]))
        parts["loop_start"].append(g["loop_start"][:].astype(np.int64))
        parts["loop_period"].append(g["loop_period"][:].astype(np.int64))
        parts["eid"].append(np.full(lab.shape[0], e.id))
        parts["index"].append(np.arange(lab.shape[0], dtype=np.int64))
    labels, networks, stop, loop_start, loop_period, run_eid, run_index = (
        np.concatenate(parts[k]) for k in ("labels", "networks", "stop", "loop_start", "loop_period", "eid", "index"))
    pooled = len(exps) > 1
    RUN, STEP = ("pooled_run", "pooled_step") if pooled else ("run", "step")
    n_runs = labels.shape[0]
    n_states = int(max(labels.max(initial=-1), -1)) + 1

    ms = np.full(labels.shape, NO_VECTOR, np.int32)
    run_cols = {k: np.zeros(n_runs, np.int64) for k in ("core", "transit", "unassigned", "milestones")}
    absorbed = stop == "loop"
    absorption_vectors = np.full(n_runs, -1, np.int64)
    final_state = np.full(n_runs, -1, np.int64)
    trajs: dict[str, list[np.ndarray]] = {}
    stays: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for run in range(n_runs):
        row = labels[run]
        m = milestone(row)
        ms[run] = m
        has = row >= -1
        run_cols["core"][run] = int((row >= 0).sum())
        run_cols["unassigned"][run] = int((m == UNASSIGNED).sum())
        run_cols["transit"][run] = int(((row == -1) & (m >= 0)).sum())
        t = symbols(m)
        s, ln, fin = dwells(t)
        run_cols["milestones"][run] = len(s)
        if len(t):
            final_state[run] = t[-1]
        if absorbed[run]:
            absorption_vectors[run] = int(has[:max(int(loop_start[run]), 0)].sum())
        trajs.setdefault(networks[run], []).append(t)
        stays.setdefault(networks[run], []).append((s, ln, fin))

    state_rows, tr_rows, ts_rows, net_rows, n_sets_used = [], [], [], [], {}
    for net in sorted(trajs):
        msm = estimate_msm(trajs[net], n_states, lag, reversible)
        stat = np.full(n_states, np.nan)
        sets = np.full(n_states, -1, np.int64)
        conn = np.zeros(0, np.int64)
        k = 1
        if msm is not None:
            conn = np.asarray(msm.count_model.state_symbols, np.int64)
            stat[conn] = msm.stationary_distribution
            ts = msm.timescales() if msm.n_states > 1 else np.zeros(0)
            k = n_sets if n_sets is not None else timescale_gap_sets(ts, len(conn))
            k = int(min(k, len(conn)))
            if k >= 2:
                try:
                    sets[conn] = msm.pcca(k).assignments
                except (ValueError, RuntimeError, np.linalg.LinAlgError):
                    k = 1
            if k < 2:
                sets[conn] = 0
            cm = msm.count_model.count_matrix
            P = msm.transition_matrix
            for i, a in enumerate(conn):
                for j, b in enumerate(conn):
                    tr_rows.append((net, int(a), int(b), float(cm[i, j]), float(P[i, j])))
        n_sets_used[net] = k
        for tau in range(1, max_lag + 1):
            m_tau = msm if tau == lag and msm is not None else estimate_msm(trajs[net], n_states, tau, reversible)
            if m_tau is None or m_tau.n_states < 2:
                continue
            for i, v in enumerate(m_tau.timescales()[:MAX_TIMESCALES]):
                ts_rows.append((net, tau, i + 1, float(v)))
        s_all = np.concatenate([x[0] for x in stays[net]]) if stays[net] else np.zeros(0, np.int64)
        l_all = np.concatenate([x[1] for x in stays[net]]) if stays[net] else np.zeros(0, np.int64)
        f_all = np.concatenate([x[2] for x in stays[net]]) if stays[net] else np.zeros(0, bool)
        for state in sorted(set(s_all.tolist())):
            sel = s_all == state
            fit = fit_dwells(l_all[sel & ~f_all], alpha)
            state_rows.append((net, int(state), float(stat[state]), int(sets[state]), int(sel.sum()),
                               int((sel & f_all).sum()), fit))
        runs_net = networks == net
        net_rows.append((net, len(conn), k, int(run_cols["core"][runs_net].sum()), int(run_cols["transit"][runs_net].sum()),
                         int(run_cols["unassigned"][runs_net].sum()), int(runs_net.sum()), int(absorbed[runs_net].sum())))

    def col(rows, i, dtype):
        return np.array([r[i] for r in rows], dtype=dtype)

    def fitcol(key, dtype):
        return np.array([r[6][key] for r in state_rows], dtype=dtype)

    name = name or f"{src.basename}-lag{lag}" + (f"-pooled{len(exps)}" if pooled else "")
    arrays = {
        "milestone": ([RUN, STEP], ms, {"description": "last core visited (-1 unassigned: before the first core; -2 no vector)"}),
        "run_experiment": ([RUN], run_eid, {"description": "experiment of the run"}),
        "run_index": ([RUN], run_index, {"description": "the run's index in its experiment"}),
        "run_network": ([RUN], networks, {"description": "network"}),
        "run_core": ([RUN], run_cols["core"], {"description": "vectors in a core (cluster)"}),
        "run_transit": ([RUN], run_cols["transit"], {"description": "vectors outside every core after the first core"}),
        "run_unassigned": ([RUN], run_cols["unassigned"], {"description": "vectors outside every core before the first core"}),
        "run_milestones": ([RUN], run_cols["milestones"], {"description": "stays in the milestoned sequence"}),
        "run_final_state": ([RUN], final_state, {"description": "core of the run's last vector (-1: none)"}),
        "run_absorbed": ([RUN], absorbed, {"description": "the run reached an exact repeat of an output (stop_reason loop)"}),
        "run_stop_reason": ([RUN], stop, {"description": "why the run ended"}),
        "run_absorption_step": ([RUN], np.where(absorbed, loop_start, -1), {"description": "loop_start: step of the first output that recurs (-1: not absorbed)"}),
        "run_loop_period": ([RUN], np.where(absorbed, loop_period, -1), {"description": "steps between the recurring outputs"}),
        "run_absorption_vectors": ([RUN], absorption_vectors, {"description": "vectors of the model before loop_start (-1: not absorbed)"}),
        "state_network": (["state"], col(state_rows, 0, str), {"description": "network"}),
        "state_label": (["state"], col(state_rows, 1, np.int32), {"description": "core (cluster label)"}),
        "state_stationary": (["state"], col(state_rows, 2, np.float64), {"description": "stationary probability (NaN: outside the connected set)"}),
        "state_set": (["state"], col(state_rows, 3, np.int32), {"description": "PCCA+ metastable set (-1: outside the connected set)"}),
        "state_stays": (["state"], col(state_rows, 4, np.int64), {"description": "stays in the state"}),
        "state_censored": (["state"], col(state_rows, 5, np.int64), {"description": "of those, last stays of a run (censored, not fitted)"}),
        "state_dwell_mean": (["state"], fitcol("mean", np.float64), {"description": "mean uncensored dwell time (vectors)"}),
        "state_dwell_fit": (["state"], fitcol("verdict", str), {"description": "exponential, heavy-tailed or undecided"}),
        "state_loglik_ratio": (["state"], fitcol("loglik_ratio", np.float64), {"description": "sum ln zeta - ln geometric"}),
        "state_p_value": (["state"], fitcol("p_value", np.float64), {"description": "Vuong's two-sided p-value"}),
        "state_geometric_p": (["state"], fitcol("geometric_p", np.float64), {"description": "geometric MLE p = 1/mean"}),
        "state_zeta_exponent": (["state"], fitcol("zeta_exponent", np.float64), {"description": "zeta MLE exponent"}),
        "transition_network": (["transition"], col(tr_rows, 0, str), {"description": "network"}),
        "transition_from": (["transition"], col(tr_rows, 1, np.int32), {"description": "core"}),
        "transition_to": (["transition"], col(tr_rows, 2, np.int32), {"description": "core lag vectors later"}),
        "transition_count": (["transition"], col(tr_rows, 3, np.float64), {"description": "sliding-window counts at the lag"}),
        "transition_probability": (["transition"], col(tr_rows, 4, np.float64), {"description": "MSM transition probability"}),
        "timescale_network": (["timescale"], col(ts_rows, 0, str), {"description": "network"}),
        "timescale_lag": (["timescale"], col(ts_rows, 1, np.int64), {"description": "lag (vectors)"}),
        "timescale_index": (["timescale"], col(ts_rows, 2, np.int64), {"description": "i of t_i (1: slowest)"}),
        "timescale_value": (["timescale"], col(ts_rows, 3, np.float64), {"description": "implied timescale (vectors)"}),
        "network_name": (["network"], col(net_rows, 0, str), {"description": "network"}),
        "network_connected": (["network"], col(net_rows, 1, np.int64), {"description": "states in the MSM's connected set"}),
        "network_sets": (["network"], col(net_rows, 2, np.int64), {"description": "metastable sets in effect"}),
        "network_core": (["network"], col(net_rows, 3, np.int64), {"description": "vectors in a core"}),
        "network_transit": (["network"], col(net_rows, 4, np.int64), {"description": "vectors in transit"}),
        "network_unassigned": (["network"], col(net_rows, 5, np.int64), {"description": "vectors before the first core"}),
        "network_runs": (["network"], col(net_rows, 6, np.int64), {"description": "runs"}),
        "network_absorbed": (["network"], col(net_rows, 7, np.int64), {"description": "runs absorbed (loop)"}),
    }
    params = {"clustering": src.basename, "model": model, "experiments": [e.id for e in exps], "lag": lag, "max_lag": max_lag, "n_sets": n_sets,
              "n_sets_used": n_sets_used, "reversible": reversible, "count_mode": COUNT_MODE, "alpha": alpha,
              "min_dwells": MIN_DWELLS, "time_unit": f"one {model} vector"}
    return write_result(exp, KIND, name, arrays, {
        "kind": KIND, "model": model, "clustering": src.basename, "inputs": [e.id for e in exps], "parameters": params,
        "versions": versions("numpy", "scipy", "deeptime"),
    })


# --- tables and chart ------------------------------------------------------------------------------

def dynamics_table(experiment_id: str, which: str = "runs", store: str | None = None, *, result: str | None = None):
    """A tidy pandas table of a stored dynamics result: ``runs``, ``states``, ``transitions``,
    ``timescales`` or ``networks`` (one row each), with the experiment, result, clustering, model."""
    import pandas as pd

    from ..store import default_location

    if which not in TABLES:
        raise UserError(f"dynamics table: choose one of {', '.join(TABLES)}, not {which!r}")
    exp = open_store(str(store) if store is not None else default_location()).experiment(experiment_id)
    g = open_result(exp, KIND, result)
    prefix = {"runs": "run_", "states": "state_", "transitions": "transition_", "timescales": "timescale_",
              "networks": "network_"}[which]
    cols = {k[len(prefix):]: _plain(g[k][:]) for k in sorted(g.array_keys()) if k.startswith(prefix)}
    run_exp = run_idx = None
    if which == "runs":  # the run's own experiment and index (a pooled result covers several experiments)
        n = len(next(iter(cols.values())))
        run_exp = cols.pop("experiment", np.full(n, exp.id))
        run_idx = cols.pop("index", np.arange(n, dtype=np.int64))
    first = [c for c in ("network", "name", "label", "from", "to", "lag", "index") if c in cols]
    df = pd.DataFrame({c: cols[c] for c in first + [c for c in cols if c not in first]})
    if which == "runs":
        df.insert(0, "run", run_idx)
    lead = {"experiment_id": exp.id if run_exp is None else run_exp, "result": g.basename,
            "clustering": g.attrs["clustering"], "embedding_model": g.attrs["model"]}
    for i, (k, v) in enumerate(lead.items()):
        df.insert(i, k, v)
    return df


def dynamics_figure(experiment_id: str, store: str | None = None, *, result: str | None = None, top: int = 8):
    """A row per network: the MSM's transition matrix (heat map, the ``top`` most visited cores),
    the dwell-time survival per state (uncensored stays, log axes) and the implied timescales
    against the lag. Returns the matplotlib ``Figure`` (no pyplot)."""
    from matplotlib.figure import Figure

    st = dynamics_table(experiment_id, "states", store, result=result)
    tr = dynamics_table(experiment_id, "transitions", store, result=result)
    ts = dynamics_table(experiment_id, "timescales", store, result=result)
    exp = open_store(str(store) if store is not None else _default()).experiment(experiment_id)
    g = open_result(exp, KIND, result)
    ms = g["milestone"][:]
    nt = dynamics_table(experiment_id, "networks", store, result=result).set_index("name")
    nets = list(nt.index)
    if not nets:
        raise UserError(f"dynamics chart: experiment {experiment_id} has no network with a core")
    run_net = _strs(g["run_network"][:])
    fig = Figure(figsize=(12.0, min(22.0, 3.0 * len(nets) + 0.8)), layout="constrained")
    axes = fig.subplots(len(nets), 4, squeeze=False, width_ratios=[1.2, 1, 1, 0.6])
    for r, net in enumerate(nets):
        hm, surv, its, bar = axes[r]
        row = nt.loc[net]
        parts = {"core": row.core, "transit": row.transit, "unassigned": row.unassigned}
        total = max(1, sum(parts.values()))
        bar.bar(list(parts), [v / total for v in parts.values()], color=["#0072B2", "#E69F00", "#D9D9D9"])
        bar.tick_params(axis="x", labelrotation=30)
        bar.set(ylim=(0, 1), ylabel="fraction of vectors",
                title=f"transit vs states\n{row.absorbed}/{row.runs} runs absorbed")
        t = tr[tr.network == net]
        states = st[st.network == net].sort_values("stays", ascending=False)
        keep = sorted(states.label.head(top).tolist())
        if len(t):
            idx = {s: i for i, s in enumerate(sorted(set(t["from"]) | set(t["to"])))}
            M = np.zeros((len(idx), len(idx)))
            M[[idx[a] for a in t["from"]], [idx[b] for b in t["to"]]] = t["probability"]
            sub = [idx[s] for s in keep if s in idx]
            M = M[np.ix_(sub, sub)]
            im = hm.imshow(M, vmin=0, vmax=1, cmap="cividis")
            lab = [str(s) for s in keep if s in idx]
            hm.set_xticks(range(len(lab)), lab)
            hm.set_yticks(range(len(lab)), lab)
            fig.colorbar(im, ax=hm, shrink=0.8, label="P(next core)")
        hm.set(title=f"{net}: transition matrix", xlabel="to core", ylabel="from core")
        # dwell-time survival from the milestoned sequences (uncensored stays)
        for s in keep:
            lengths = []
            for run in np.flatnonzero(run_net == net):
                st_, ln, fin = dwells(symbols(ms[run]))
                lengths.extend(ln[(st_ == s) & ~fin].tolist())
            if lengths:
                x = np.sort(np.asarray(lengths))
                surv.step(x, 1.0 - np.arange(len(x)) / len(x), where="post", label=f"core {s}")
        surv.set(xscale="log", yscale="log", title="dwell times", xlabel="dwell time L (vectors)", ylabel="fraction ≥ L")
        if surv.get_lines():
            surv.legend(fontsize=7)
        q = ts[ts.network == net]
        for i in sorted(set(q["index"]))[:5]:
            qi = q[q["index"] == i]
            its.plot(qi.lag, qi.value, marker="o", label=f"t{i}")
        its.set(yscale="log", title="implied timescales", xlabel="lag (vectors)", ylabel="timescale (vectors)")
        if its.get_lines():
            its.legend(fontsize=7)
    fig.suptitle(f"Symbolic dynamics under clustering {g.attrs['clustering']} ({g.attrs['model']}, lag {g.attrs['parameters']['lag']})")
    return fig


def _default() -> str:
    from ..store import default_location

    return default_location()


def dynamics_chart(experiment_id: str, out: str | os.PathLike = ".", store: str | None = None, *,
                   result: str | None = None) -> list[Path]:
    """Write the dynamics figure as ``out/dynamics-<result>.png`` and ``.svg``; returns the paths."""
    import matplotlib

    exp = open_store(str(store) if store is not None else _default()).experiment(experiment_id)
    name = open_result(exp, KIND, result).basename
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"font.size": 9, "svg.hashsalt": "panicflow"}):
        fig = dynamics_figure(experiment_id, store, result=name)
        paths = []
        for fmt in ("png", "svg"):
            path, tmp = folder / f"dynamics-{name}.{fmt}", folder / f".dynamics-{name}.{fmt}.tmp"
            fig.savefig(tmp, format=fmt, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
            os.replace(tmp, path)
            paths.append(path)
    return paths


def export_dynamics_tables(experiment_id: str, out: str | os.PathLike, store: str | None = None, *,
                           result: str | None = None, fmt: str = "csv") -> list[Path]:
    """Every dynamics table as ``out/dynamics_<table>.csv`` (or ``.parquet``)."""
    if fmt not in ("csv", "parquet"):
        raise UserError(f"--format: csv or parquet, not {fmt!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for which in TABLES:
        df = dynamics_table(experiment_id, which, store, result=result)
        path = folder / f"dynamics_{which}.{fmt}"
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
        paths.append(path)
    return paths
