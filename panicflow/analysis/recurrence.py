"""Recurrence and topology that earns its place (issue 24 item 5).

Each measure: a function, an ``analyse`` command (``cli_recurrence``), a stored result
``analysis/<kind>/<name>`` with its parameters, inputs and library versions, a tidy table (pandas)
and a chart (a matplotlib ``Figure``).

* ``recurrence`` (``recurrence``): per run of one embedding model, two recurrence matrices over
  the run's vectors in step order: on the raw embedding distances, R_ij = cosine distance(x_i,
  x_j) <= threshold; and on the symbol sequence of a stored clustering of that model, R_ij =
  (s_i == s_j and s_i is a cluster, not noise). The threshold is one number per result, stored:
  ``threshold`` (a cosine distance) when given, else the ``quantile`` (default 0.05) of all
  within-run pairwise cosine distances (i < j) of the model's runs pooled. Per run: the
  recurrence rate (the fraction of pairs i < j with j - i >= ``min_lag``, a Theiler window,
  that recur), the Jaccard agreement of the two sets of recurrent pairs, and return times: a
  point i *returns* at the first j whose R_ij holds after a k (i < k < j) whose R_ik does not
  (the trajectory left i's neighbourhood, or i's cluster, and came back); j - i, in points of
  the model, is the return time; points that leave and never come back are counted
  (``censored``). One definition for both matrices, so their distributions compare.
* ``windows`` (``window_persistence``): sliding-window persistence: along each run, windows of
  ``window`` consecutive points of the model, ``stride`` apart; giotto-ph on each window's
  vectors exactly as the stored diagrams are computed (``diagram_process.ripser_diagrams``:
  exact euclidean distances of the raw vectors, Z/2, no threshold); per window and homology
  dimension the number of finite bars, the persistent entropy (``topology.persistent_entropy``)
  and the normalised entropy.
* normalised persistent entropy (``normalised_entropy``): E / ln(n) with n the finite bars of
  positive length: 1 for equal bars, whatever their number; NaN below 2 bars.
* ``run_table`` (``run_table``): one row per run, to test whether entropy predicts anything
  beyond the count of duplicate outputs and the dwell statistics: network, prompt, points,
  the stored diagram's entropy (raw and normalised) and bars per dimension, duplicate outputs
  (the model's steps whose output hash repeats an earlier step of the run), the dwell statistics
  of a stored sequences result (stays in clusters, noise left out: mean and max stay length,
  distinct clusters, noise fraction) and the recurrence rates of a recurrence result. The
  attributes hold ``explained_by_counts``: per entropy column the R^2 of a least-squares fit on an
  intercept and ``PREDICTORS`` (near 1: entropy adds little beyond those counts).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import UserError
from .results import check_model, embedded_runs, open_result, open_store, read_diagram, run_vectors, versions, write_result

RECURRENCE, WINDOWS, RUN_TABLE = "recurrence", "windows", "run_table"
DEFAULT_QUANTILE = 0.05


def _exp(experiment_id: str, store: str | None):
    from ..store import default_location

    return open_store(str(store) if store is not None else default_location()).experiment(experiment_id)



# ---------------------------------------------------------------------------------- recurrence
def cosine_distances(x: np.ndarray) -> np.ndarray:
    """(n, n) cosine distances 1 - x_i . x_j / (|x_i| |x_j|), pair by pair (scipy ``pdist``), clipped to [0, 2].

    Pair by pair, not as one matrix product: a product's rounding depends on the BLAS and its thread count, and
    a pair at the threshold would recur on one machine and not on another (as for the diagrams, topology.py)."""
    from scipy.spatial.distance import pdist, squareform

    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return np.zeros((len(x), len(x)))
    return np.clip(squareform(pdist(x, metric="cosine")), 0.0, 2.0)


def distance_recurrences(x: np.ndarray, threshold: float) -> np.ndarray:
    """Recurrence matrix of a trajectory: cosine distance <= threshold."""
    return cosine_distances(x) <= threshold


def symbol_recurrences(labels: np.ndarray) -> np.ndarray:
    """Recurrence matrix of a symbol sequence: the same cluster (noise, a label < 0, recurs with nothing)."""
    labels = np.asarray(labels)
    return (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)


def recurrence_rate(r: np.ndarray, min_lag: int = 1) -> float:
    """Fraction of the pairs i < j with j - i >= min_lag that recur; NaN when there is no such pair."""
    iu = np.triu_indices(len(r), k=max(1, min_lag))
    return float(r[iu].mean()) if len(iu[0]) else float("nan")


def jaccard(a: np.ndarray, b: np.ndarray, min_lag: int = 1) -> float:
    """|A and B| / |A or B| of the recurrent pairs (i < j, j - i >= min_lag) of two matrices; NaN if neither has one."""
    iu = np.triu_indices(len(a), k=max(1, min_lag))
    x, y = a[iu], b[iu]
    union = int((x | y).sum())
    return float((x & y).sum() / union) if union else float("nan")


def return_times(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(points i that return, their return times, points that left and never returned) of a recurrence matrix.

    Point i returns at the first j > k > i with R_ij true after a k with R_ik false (it left, then came back)."""
    idx, times, censored = [], [], 0
    n = len(r)
    for i in range(n - 1):
        row = r[i, i + 1:]
        out = np.flatnonzero(~row)
        if not len(out):
            continue
        back = np.flatnonzero(row[out[0]:])
        if len(back):
            idx.append(i)
            times.append(int(out[0] + back[0] + 1))
        else:
            censored += 1
    return np.array(idx, np.int64), np.array(times, np.int64), censored


MAX_THRESHOLD_PAIRS = 5_000_000  # pairs kept for the pooled quantile (40 MB of float64); more are sampled


def pooled_threshold(trajectories: Iterable[np.ndarray], quantile: float, max_pairs: int = MAX_THRESHOLD_PAIRS,
                     seed: int = 0) -> tuple[float, int, int]:
    """(the ``quantile`` of the within-trajectory pairwise cosine distances (i < j), pooled; the pairs it used; all pairs).

    ``trajectories`` is read once, one at a time. Up to ``max_pairs`` pairs in all, every pair is used (exact);
    past that, a uniform random sample of ``max_pairs`` of all pairs (bottom-k: each pair gets a random key from a
    generator seeded with ``seed`` and the smallest keys are kept)."""
    rng = np.random.default_rng(seed)
    values, keys, total = np.zeros(0), np.zeros(0), 0
    for x in trajectories:
        if len(x) < 2:
            continue
        total += len(x) * (len(x) - 1) // 2
        values = np.concatenate([values, cosine_distances(x)[np.triu_indices(len(x), k=1)]])
        keys = np.concatenate([keys, rng.random(len(values) - len(keys))])
        if len(values) > max_pairs:
            keep = np.argpartition(keys, max_pairs)[:max_pairs]
            values, keys = values[keep], keys[keep]
    if not len(values):
        raise UserError("recurrence: no run has two vectors")
    return float(np.quantile(values, quantile)), int(len(values)), total


def recurrence(experiment_id: str, clustering: str | None = None, store: str | None = None, *,
               threshold: float | None = None, quantile: float = DEFAULT_QUANTILE, min_lag: int = 1,
               name: str | None = None) -> str:
    """Recurrence rates and return times on the raw distances and on the symbol sequences; returns the path."""
    if threshold is None and not 0 < quantile < 1:
        raise UserError(f"--quantile: between 0 and 1, got {quantile}")
    if threshold is not None and not 0 <= threshold <= 2:
        raise UserError(f"--threshold: a cosine distance between 0 and 2, got {threshold}")
    if min_lag < 1:
        raise UserError(f"--min-lag: at least 1, got {min_lag}")
    exp = _exp(experiment_id, store)
    src = open_result(exp, "clusters", clustering)
    model = src.attrs["parameters"]["model"]
    label = src["label"]
    runs = embedded_runs(exp, model)
    pairs = total = None
    if threshold is not None:
        eps = float(threshold)
    else:  # a first pass over the runs, one at a time
        eps, pairs, total = pooled_threshold((run_vectors(exp, model, int(r))[1] for r in runs), quantile)
    n_runs = exp.group(read_only=True)["output_hash"].shape[0]
    per: dict[str, np.ndarray] = {k: np.full(n_runs, np.nan) for k in (
        "rr_distance", "rr_symbol", "jaccard", "mean_return_distance", "mean_return_symbol")}
    counts = {k: np.full(n_runs, -1, np.int64) for k in (
        "n_points", "n_returns_distance", "n_returns_symbol", "censored_distance", "censored_symbol")}
    ev: dict[str, list] = {"run": [], "source": [], "step": [], "time": []}
    for run in (int(r) for r in runs):
        steps, x = run_vectors(exp, model, run)
        rd = distance_recurrences(x, eps)
        rs = symbol_recurrences(label[run][steps])
        counts["n_points"][run] = len(x)
        per["rr_distance"][run], per["rr_symbol"][run] = recurrence_rate(rd, min_lag), recurrence_rate(rs, min_lag)
        per["jaccard"][run] = jaccard(rd, rs, min_lag)
        for src_name, r in (("distance", rd), ("symbol", rs)):
            i, t, c = return_times(r)
            counts[f"n_returns_{src_name}"][run], counts[f"censored_{src_name}"][run] = len(t), c
            per[f"mean_return_{src_name}"][run] = t.mean() if len(t) else np.nan
            ev["run"] += [run] * len(t)
            ev["source"] += [src_name] * len(t)
            ev["step"] += steps[i].tolist()
            ev["time"] += t.tolist()
    desc = {"rr_distance": "recurrence rate on the raw cosine distances (pairs i < j, j - i >= min_lag)",
            "rr_symbol": "recurrence rate of the symbol sequence (same cluster, noise never recurs)",
            "jaccard": "agreement of the two sets of recurrent pairs: |both| / |either|",
            "mean_return_distance": "mean return time on the distances (points of the model)",
            "mean_return_symbol": "mean return time of the symbols (points of the model)",
            "n_points": "vectors of the run (-1: none)", "n_returns_distance": "points that returned (distances)",
            "n_returns_symbol": "points that returned (symbols)", "censored_distance": "points that left and never returned (distances)",
            "censored_symbol": "points that left and never returned (symbols)"}
    arrays: dict[str, Any] = {k: (["run"], v, {"description": desc[k]}) for k, v in {**per, **counts}.items()}
    arrays |= {
        "return_run": (["return"], np.array(ev["run"], np.int64), {"description": "run"}),
        "return_source": (["return"], np.array(ev["source"], dtype=str), {"description": "distance or symbol"}),
        "return_step": (["return"], np.array(ev["step"], np.int64), {"description": "step of the point that returns"}),
        "return_time": (["return"], np.array(ev["time"], np.int64), {"description": "points until it returned"}),
    }
    rule = "given" if threshold is not None else f"quantile {quantile:g} of the within-run pairwise cosine distances, pooled" + (
        f" (a uniform sample of {pairs} of the {total} pairs, seed 0)" if pairs is not None and pairs < total else "")
    params = {"model": model, "clustering": src.basename, "threshold": eps, "threshold_rule": rule,
              "quantile": None if threshold is not None else quantile, "threshold_pairs": pairs, "min_lag": min_lag,
              "distance": "cosine distance of the embedding vectors", "symbols": "cluster labels; noise (-1) recurs with nothing"}
    return write_result(exp, RECURRENCE, name or f"{src.basename}-{'t' if threshold is not None else 'q'}{threshold if threshold is not None else quantile:g}-lag{min_lag}",
                        arrays, {"kind": RECURRENCE, "model": model, "clustering": src.basename, "inputs": [exp.id],
                                 "parameters": params, "versions": versions("numpy")})


def recurrence_tables(experiment_id: str, store: str | None = None, name: str | None = None):
    """(per-run table, return-time table) of a ``recurrence`` result."""
    import pandas as pd

    g = open_result(_exp(experiment_id, store), RECURRENCE, name)
    keys = ("n_points", "rr_distance", "rr_symbol", "jaccard", "mean_return_distance", "mean_return_symbol",
            "n_returns_distance", "n_returns_symbol", "censored_distance", "censored_symbol")
    runs = pd.DataFrame({"run": np.arange(g["n_points"].shape[0])} | {k: g[k][...] for k in keys})
    runs = runs[runs["n_points"] >= 0].reset_index(drop=True)
    returns = pd.DataFrame({"run": g["return_run"][...], "source": np.array(g["return_source"][...].tolist(), dtype=str),
                            "step": g["return_step"][...], "time": g["return_time"][...]})
    return runs, returns


def recurrence_figure(runs, returns, threshold: float | None = None):
    """Return-time distributions (distances, symbols) and the two recurrence rates per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    top = int(returns["time"].max()) if len(returns) else 1
    bins = np.arange(0.5, top + 1.5)
    for i, src in enumerate(("distance", "symbol")):
        t = returns.loc[returns["source"] == src, "time"]
        if len(t):  # none: nothing to draw (a density of nothing divides by zero)
            a.hist(t, bins=bins, histtype="step", color=f"C{i}", label=f"{src} ({len(t)})", density=True)
        else:
            a.plot([], [], color=f"C{i}", label=f"{src} (no returns)")
    a.set_xlabel("return time (points)")
    a.set_ylabel("density")
    a.legend()
    b.scatter(runs["rr_symbol"], runs["rr_distance"], s=16)
    lim = float(np.nanmax([runs["rr_symbol"].max(), runs["rr_distance"].max(), 0.01]))
    b.plot([0, lim], [0, lim], ":", color="grey")
    b.set_xlabel("recurrence rate, symbols")
    b.set_ylabel("recurrence rate, distances" + (f" (cosine <= {threshold:.3g})" if threshold is not None else ""))
    return fig


# ---------------------------------------------------------------------------------- persistence
def normalised_entropy(diagrams: Sequence[np.ndarray]) -> np.ndarray:
    """Persistent entropy / ln(number of finite bars of positive length), per diagram; NaN below 2 bars."""
    from .topology import persistent_entropy

    e = persistent_entropy(diagrams)
    n = np.array([finite_bars(d) for d in diagrams], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n >= 2, e / np.log(np.maximum(n, 1)), np.nan)


def finite_bars(dgm: np.ndarray) -> int:
    """Finite bars of positive length of one diagram."""
    d = np.asarray(dgm, np.float64).reshape(-1, 2)
    d = d[np.isfinite(d[:, 1])]
    return int(((d[:, 1] - d[:, 0]) > 0).sum())


def sliding_windows(points: np.ndarray, window: int, stride: int, maxdim: int = 1) -> list[dict[str, Any]]:
    """Persistence of windows of ``window`` consecutive points, ``stride`` apart (the last window ends at or
    before the last point): per window its first and last index, bars, entropy and normalised entropy per dimension."""
    from .diagram_process import ripser_diagrams
    from .topology import persistent_entropy

    out = []
    for a in range(0, len(points) - window + 1, stride):
        dgms = ripser_diagrams(points[a:a + window], maxdim, False, 1)
        out.append({"first": a, "last": a + window - 1, "bars": [finite_bars(d) for d in dgms],
                    "entropy": persistent_entropy(dgms), "entropy_normalised": normalised_entropy(dgms)})
    return out


def window_persistence(experiment_id: str, model: str, store: str | None = None, *, window: int = 10, stride: int = 5,
                       maxdim: int = 1, name: str | None = None) -> str:
    """Sliding-window persistence along every run of ``model``; returns the path."""
    if window < 3:
        raise UserError(f"--window: at least 3 points, got {window}")
    if stride < 1:
        raise UserError(f"--stride: at least 1, got {stride}")
    if not 0 <= maxdim <= 2:
        raise UserError(f"--maxdim: 0, 1 or 2, got {maxdim}")
    exp = _exp(experiment_id, store)
    check_model(exp, model)
    rows: dict[str, list] = {"run": [], "start": [], "end": [], "bars": [], "entropy": [], "norm": []}
    for run in embedded_runs(exp, model):
        steps, x = run_vectors(exp, model, int(run))
        for w in sliding_windows(x, window, stride, maxdim):
            rows["run"].append(int(run))
            rows["start"].append(int(steps[w["first"]]))
            rows["end"].append(int(steps[w["last"]]))
            rows["bars"].append(w["bars"])
            rows["entropy"].append(w["entropy"])
            rows["norm"].append(w["entropy_normalised"])
    k = maxdim + 1
    shape = (len(rows["run"]), k)
    return write_result(exp, WINDOWS, name or f"{model}-w{window}-s{stride}-h{maxdim}", {
        "window_run": (["window"], np.array(rows["run"], np.int64), {"description": "run"}),
        "window_start": (["window"], np.array(rows["start"], np.int64), {"description": "step of the window's first point"}),
        "window_end": (["window"], np.array(rows["end"], np.int64), {"description": "step of the window's last point"}),
        "bars": (["window", "homology_dim"], np.array(rows["bars"], np.int64).reshape(shape), {"description": "finite bars of positive length"}),
        "entropy": (["window", "homology_dim"], np.array(rows["entropy"], np.float64).reshape(shape),
                    {"description": "persistent entropy (nats, not normalised; NaN: no finite bar)"}),
        "entropy_normalised": (["window", "homology_dim"], np.array(rows["norm"], np.float64).reshape(shape),
                               {"description": "entropy / ln(bars); NaN below 2 bars"}),
    }, {
        "kind": WINDOWS, "model": model, "inputs": [exp.id],
        "parameters": {"model": model, "window": window, "stride": stride, "maxdim": maxdim,
                       "points": "raw vectors, exact euclidean distances (as the stored diagrams)", "coefficients": "Z/2"},
        "library": "giotto-ph", "versions": versions("giotto-ph", "numpy", "scipy"),
    })


def windows_table(experiment_id: str, store: str | None = None, name: str | None = None):
    """Tidy table of a ``windows`` result: run, start, end, homology_dim, bars, entropy, entropy_normalised."""
    import pandas as pd

    g = open_result(_exp(experiment_id, store), WINDOWS, name)
    bars = g["bars"][...]
    w, k = np.nonzero(np.ones_like(bars, bool))
    return pd.DataFrame({"run": g["window_run"][...][w], "start": g["window_start"][...][w], "end": g["window_end"][...][w],
                         "homology_dim": k, "bars": bars[w, k], "entropy": g["entropy"][...][w, k],
                         "entropy_normalised": g["entropy_normalised"][...][w, k]})


def windows_figure(table):
    """Normalised entropy of each window along the runs (one line per run), a panel per homology dimension."""
    from matplotlib.figure import Figure

    dims = sorted(table["homology_dim"].unique())
    fig = Figure(figsize=(5 * len(dims), 4))
    axes = np.atleast_1d(fig.subplots(1, len(dims)))
    for ax, k in zip(axes, dims):
        for run, t in table[table["homology_dim"] == k].groupby("run"):
            ax.plot(t["start"], t["entropy_normalised"], "-", lw=0.8, alpha=0.7)
        ax.set_title(f"H{k}")
        ax.set_xlabel("step of the window's first point")
        ax.set_ylabel("normalised persistent entropy")
    return fig


# ---------------------------------------------------------------------------------- the per-run table
def duplicate_outputs(hashes: Sequence[str]) -> int:
    """Outputs that repeat an earlier output of the same run (len - distinct)."""
    hashes = [h for h in hashes if h]
    return len(hashes) - len(set(hashes))


def run_table(experiment_id: str, sequences: str | None = None, store: str | None = None, *,
              recurrence_result: str | None = None, name: str | None = None) -> str:
    """One row per run: entropy (raw and normalised), points, duplicate outputs, dwell statistics, recurrence rates."""
    exp = _exp(experiment_id, store)
    seq = open_result(exp, "sequences", sequences)
    model = seq.attrs["model"]
    rec = None
    try:
        rec = open_result(exp, RECURRENCE, recurrence_result)
    except UserError:
        if recurrence_result is not None:
            raise
    if rec is not None and rec.attrs["model"] != model:
        raise UserError(f"--recurrence {rec.basename}: its model is {rec.attrs['model']}, the sequences' {model}")
    g = exp.group(read_only=True)
    d = g[f"diagrams/{model}"]
    maxdim = int(d.attrs.get("maxdim", d["entropy"].shape[1] - 1))
    st_run, st_label, st_len = seq["stay_run"][...], seq["stay_label"][...], seq["stay_length"][...]
    rows: list[dict[str, Any]] = []
    for run in embedded_runs(exp, model):
        run = int(run)
        steps, _ = run_vectors(exp, model, run)
        row: dict[str, Any] = {"run": run, "network": str(g["network"][run]), "prompt": str(g["prompt"][run]),
                               "n_points": len(steps), "n_points_used": int(d["n_points_used"][run]),
                               "duplicates": duplicate_outputs(g["output_hash"][run][steps].tolist())}
        dgms = read_diagram(exp, model, run)
        ent = d["entropy"][run]
        norm = normalised_entropy(dgms) if dgms is not None else np.full(maxdim + 1, np.nan)
        for k in range(maxdim + 1):
            row[f"entropy_h{k}"] = float(ent[k]) if dgms is not None else np.nan
            row[f"entropy_normalised_h{k}"] = float(norm[k])
            row[f"bars_h{k}"] = finite_bars(dgms[k]) if dgms is not None else -1
        m = st_run == run
        lengths, labels = st_len[m], st_label[m]
        clus = labels >= 0
        row["mean_dwell"] = float(lengths[clus].mean()) if clus.any() else np.nan
        row["max_dwell"] = int(lengths[clus].max()) if clus.any() else 0
        row["n_clusters"] = int(len(np.unique(labels[clus])))
        row["noise_fraction"] = float(lengths[~clus].sum() / lengths.sum()) if lengths.sum() else np.nan
        row["rr_distance"] = float(rec["rr_distance"][run]) if rec is not None else np.nan
        row["rr_symbol"] = float(rec["rr_symbol"][run]) if rec is not None else np.nan
        rows.append(row)
    cols = list(rows[0]) if rows else ["run"]
    explained = {c: explained_by_counts(rows, c) for c in cols if c.startswith("entropy")}
    desc = {"duplicates": "the model's steps whose output hash repeats an earlier step of the run",
            "mean_dwell": "mean stay length in a cluster (noise stays left out), vectors",
            "max_dwell": "longest stay in a cluster, vectors", "n_clusters": "distinct clusters visited",
            "noise_fraction": "fraction of the run's vectors that are noise",
            "n_points_used": "points the stored diagram was computed from",
            "rr_distance": "recurrence rate on the raw distances (recurrence result; NaN: none)",
            "rr_symbol": "recurrence rate of the symbols (recurrence result; NaN: none)"}
    arrays = {}
    for c in cols:
        v = np.array([r[c] for r in rows])
        if v.dtype.kind in "UO":
            v = np.array([str(x) for x in v], dtype=str)
        arrays[c] = (["row"], v, {"description": desc.get(c, c.replace("_", " "))})
    return write_result(exp, RUN_TABLE, name or seq.basename, arrays, {
        "kind": RUN_TABLE, "model": model, "inputs": [exp.id],
        "parameters": {"model": model, "sequences": seq.basename, "recurrence": rec.basename if rec is not None else None,
                       "entropy": "stored diagrams (diagrams/<model>); normalised: entropy / ln(finite bars)",
                       "dwell": "stays with a cluster label (noise stays left out)"},
        "columns": cols, "versions": versions("numpy"),
        "explained_by_counts": explained,
        "explained_note": "R^2 of each entropy column by least squares on 1, " + ", ".join(PREDICTORS) + " over the runs with finite "
                          "values (NaN: fewer runs than predictors + 2); near 1: entropy adds little beyond those counts",
    })


PREDICTORS = ("duplicates", "mean_dwell", "max_dwell", "n_clusters", "noise_fraction")


def explained_by_counts(rows: Sequence[dict[str, Any]], column: str) -> dict[str, Any]:
    """R^2 of ``column`` by ordinary least squares on an intercept and ``PREDICTORS`` over the rows with finite values."""
    y = np.array([r[column] for r in rows], np.float64)
    x = np.array([[r[p] for p in PREDICTORS] for r in rows], np.float64).reshape(len(rows), len(PREDICTORS))
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    y, x = y[ok], np.column_stack([np.ones(ok.sum()), x[ok]])
    r2 = float("nan")
    if len(y) >= x.shape[1] + 2 and np.ptp(y) > 0:
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ beta
        r2 = float(1 - resid @ resid / ((y - y.mean()) @ (y - y.mean())))
    return {"r2": r2, "n": int(len(y)), "predictors": list(PREDICTORS)}


def run_table_frame(experiment_id: str, store: str | None = None, name: str | None = None):
    """The stored per-run table as a pandas DataFrame (columns in stored order)."""
    import pandas as pd

    g = open_result(_exp(experiment_id, store), RUN_TABLE, name)
    return pd.DataFrame({c: (np.array(g[c][...].tolist(), dtype=str) if g[c].dtype.kind not in "fiub" else g[c][...])
                         for c in g.attrs["columns"]})


def run_table_figure(table, dim: int = 1):
    """Normalised entropy of H``dim`` against duplicate outputs and against mean dwell, a colour per network."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    col = f"entropy_normalised_h{dim}" if f"entropy_normalised_h{dim}" in table else "entropy_normalised_h0"
    for i, (net, t) in enumerate(table.groupby("network")):
        axes[0].scatter(t["duplicates"], t[col], s=16, color=f"C{i}", label=net)
        axes[1].scatter(t["mean_dwell"], t[col], s=16, color=f"C{i}", label=net)
    axes[0].set_xlabel("duplicate outputs")
    axes[1].set_xlabel("mean dwell in a cluster (vectors)")
    for ax in axes:
        ax.set_ylabel(col.replace("_", " "))
    axes[0].legend(title="network")
    return fig
