"""`panicflow analyse cluster|drift|distances|divergence|sequences|entropy|results`, and the
`export tables` and `plot` command functions.

Registered by panicflow/cli.py (``app.add_typer(analyse_app, name="analyse")``, a ``tables``
command on an ``export`` group calling ``export_tables_cmd``, and ``plot_cmd`` as ``plot``). The work runs on a
Dask cluster: ``--scheduler ADDRESS`` or an embedded LocalCluster of ``--workers`` processes.
The result's name or path goes to stdout, with ``--json`` a JSON object.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import List, Optional

import typer

from ..errors import UserError

# Everything heavier than typer (numpy, the store, distributed, the analyses) is imported inside the
# commands: panicflow/cli.py registers this module, and `panicflow --help` should not load them
# (tests/test_cli_startup.py)

analyse_app = typer.Typer(no_args_is_help=True, help="Analyse experiments: clustering, semantic drift, diagram distances.")

StoreOpt = typer.Option(None, "--store", help="Store folder or fsspec URL (default: $PANICFLOW_STORE or ./panicflow-store)")
SchedulerOpt = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler (default: an embedded LocalCluster).")
WorkersOpt = typer.Option(2, "--workers", help="Worker processes of the embedded LocalCluster.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def _store(store: Optional[str]) -> str:
    from ..store import default_location

    return store or default_location()


@contextmanager
def _client(scheduler: Optional[str], workers: int):
    from distributed import Client, LocalCluster

    if workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    # silence_logs: a worker's heartbeat that meets the scheduler already closed at the end logs a traceback
    # (seen in scripts/demo); an analysis task's own error reaches this client and is said in one line
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as lc, \
            Client(lc) as c:
        yield c


@contextmanager
def _writing(store: Optional[str]):
    """A command that writes its result into the store: one that refuses writes (read-only, full)
    is said in one line (exit 2) before a cluster starts or anything is computed, and so is a
    write refused later (panicflow/store/writable.py)."""
    from ..store.writable import writing_into
    from .results import open_store

    with writing_into(open_store(_store(store))):
        yield


def _note_running(store: Optional[str], experiment_ids: List[str]) -> None:
    """One line on stderr per experiment still going: the result uses the runs that had ended
    (their data are final; the result records how many, ``experiment_state``)."""
    from .results import experiment_progress, open_store

    for eid in experiment_ids:
        exp = open_store(_store(store)).experiment(eid)
        p = experiment_progress(exp)
        if p["runs_ended"] < p["runs"]:
            typer.echo(f"note: experiment {exp.id} is {p['state']}: this uses the {p['runs_ended']} of its "
                       f"{p['runs']} runs that have ended; run it again once more have", err=True)


_SHOWN = 20  # groups listed on stderr by `analyse divergence`


def _parse_reduce(reduce: str) -> str:
    return reduce.strip().lower()


@analyse_app.command("cluster")
def cluster_cmd(
    experiment_ids: List[str] = typer.Argument(..., help="Experiment ids (clustered together, in one space)."),
    model: str = typer.Option(..., "--model", help="Embedding model whose vectors are clustered."),
    min_cluster_size: Optional[int] = typer.Option(None, "--min-cluster-size", help="Default 10 (panic-tda: max(2, 0.1% of the vectors))."),
    min_samples: Optional[int] = typer.Option(None, "--min-samples", help="Default: --min-cluster-size. The hdbscan package's k is "
                                                                          "scikit-learn's k+1 (docs/analysis.md)."),
    reduce: Optional[str] = typer.Option(None, "--reduce", help="auto (default: none up to 20,000 vectors, else pca:0.9), none, "
                                                                "pca:K (K dimensions) or pca:F (the fewest keeping the fraction F of the variance)."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Fit on N random vectors and label the rest: hdbscan's approximate_predict, else the frozen rule of `analyse assign`."),
    algorithm: Optional[str] = typer.Option(None, "--algorithm", help="hdbscan (default), fast_hdbscan, sklearn "
                                                                      "(scikit-learn's HDBSCAN) or evoc (EVoC; panicflow[fast])."),
    cluster_selection_epsilon: Optional[float] = typer.Option(None, "--cluster-selection-epsilon", help="Default 0 (panic-tda: 0.5)."),
    allow_single_cluster: Optional[bool] = typer.Option(None, "--allow-single-cluster/--no-allow-single-cluster",
                                                        help="Default: no (panic-tda: yes)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="panic-tda: the earlier tool's clustering (scikit-learn, no PCA, "
                                                                "min sizes 0.1% of the vectors, epsilon 0.5, a single cluster allowed)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: derived from the parameters)."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """HDBSCAN over the unit-normalised embeddings of one model; the labels go into each experiment's store."""
    import warnings

    from . import clustering

    reduce = None if reduce is None else _parse_reduce(reduce)
    clustering.ClusterParams(model, min_cluster_size, min_samples, reduce, sample, algorithm,
                             cluster_selection_epsilon=cluster_selection_epsilon, allow_single_cluster=allow_single_cluster,
                             preset=preset).check()
    _note_running(store, experiment_ids)
    with _writing(store), _client(scheduler, workers) as c, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", clustering.LowVarianceWarning)
        result = clustering.cluster(experiment_ids, model, store=_store(store), client=c, min_cluster_size=min_cluster_size,
                                    min_samples=min_samples, reduce=reduce, sample=sample, algorithm=algorithm,
                                    cluster_selection_epsilon=cluster_selection_epsilon, allow_single_cluster=allow_single_cluster,
                                    preset=preset, name=name)
    for w in caught:  # the low-variance warning in one line, not Python's warning format; others as they were
        if issubclass(w.category, clustering.LowVarianceWarning):
            typer.echo(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    a = clustering.assignments(experiment_ids[0], result, store=_store(store))["attrs"]
    p = a["parameters"]
    summary = {"name": result, "path": f"analysis/clusters/{result}", "clusters": a["n_clusters"],
               "vectors": a["n_vectors"], "noise": a["n_noise"], "reduce": p["reduce"],
               "explained_variance": a.get("explained_variance"), "min_cluster_size": p["min_cluster_size"],
               "min_samples": p["min_samples"], "algorithm": p["algorithm"]}
    print(json.dumps(summary) if as_json else result)
    if not as_json:
        kept = f", {a['explained_variance']:.0%} of the variance kept" if a.get("explained_variance") is not None else ""
        typer.echo(f"{a['n_clusters']} clusters, {a['n_noise']} of {a['n_vectors']} vectors noise ({p['algorithm']}, "
                   f"min cluster size {p['min_cluster_size']}, min samples {p['min_samples']}, reduce {p['reduce']}{kept})", err=True)


@analyse_app.command("drift")
def drift_cmd(
    experiment_id: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """Semantic drift of every step from its run's start (cosine distance and unit euclidean distance)."""
    from .drift import semantic_drift

    _note_running(store, [experiment_id])
    with _writing(store), _client(scheduler, workers) as c:
        path = semantic_drift(experiment_id, model, store=_store(store), client=c)
    print(json.dumps({"path": path}) if as_json else path)


@analyse_app.command("distances")
def distances_cmd(
    experiment_ids: List[str] = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model of the diagrams."),
    runs: Optional[str] = typer.Option(None, "--runs", help="Comma-separated runs (default: every run with a diagram)."),
    metric: List[str] = typer.Option(["wasserstein_1", "wasserstein_2", "bottleneck"], "--metric"),
    name: Optional[str] = typer.Option(None, "--name"),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """Pairwise Wasserstein (p=1, 2) and bottleneck distances between runs' persistence diagrams (gudhi)."""
    from .distances import pairwise_distances

    try:
        chosen = None if runs is None else [int(r) for r in runs.split(",") if r.strip()]
    except ValueError:
        raise UserError(f"--runs: expected comma-separated run numbers, got {runs!r}") from None
    _note_running(store, experiment_ids)
    with _writing(store), _client(scheduler, workers) as c:
        path = pairwise_distances(experiment_ids, model, store=_store(store), client=c, runs=chosen, metrics=tuple(metric), name=name)
    print(json.dumps({"path": path}) if as_json else path)


@analyse_app.command("divergence")
def divergence_cmd(
    experiment_id: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model."),
    measures: str = typer.Option("ftle", "--measures", help="Comma-separated: ftle (replicate runs' FTLE), bounded (MSAD, "
                                                             "autocorrelation decay, time to saturation), pairs (given by --pairs), or all."),
    fit_steps: Optional[str] = typer.Option(None, "--fit-steps", help="Fit only steps START:END (END exclusive), e.g. 0:200."),
    min_r_squared: float = typer.Option(0.8, "--min-r-squared", help="A fit with a lower R^2 has the status poor-fit, not ok."),
    max_lag: int = typer.Option(50, "--max-lag", help="bounded: lags 1..N steps (each run's only up to half its span)."),
    saturation: float = typer.Option(0.95, "--saturation", help="bounded: the fraction of the MSAD plateau that counts as saturated."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="YAML or CSV file of prompt pairs (prompt_a, prompt_b): the "
                                                              "divergence of their runs per network (adds the measure pairs)."),
    pairing: str = typer.Option("matched", "--pairing", help="pairs: matched (equal seeds, or both unseeded) or all (every cross pair)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result(s) (default: the model, with the window)."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """Divergence of runs sharing network and prompt: FTLE (slope of ln mean pairwise distance over steps), R^2, pairs;
    bounded-space measures per run (--measures bounded); runs of paraphrase prompts (--pairs FILE)."""
    from . import bounded
    from .divergence import OK, POOR_FIT, divergence, parse_window
    from .results import open_result, open_store

    chosen = bounded.parse_measures(measures, pairs)
    window = parse_window(fit_steps)
    if not 0 <= min_r_squared <= 1:
        raise UserError(f"--min-r-squared: a value between 0 and 1, got {min_r_squared}")
    bounded._check(max_lag, saturation)
    if pairing not in bounded.PAIRINGS:
        raise UserError(f"--pairing: choose matched or all, not {pairing!r}")
    exp = open_store(_store(store)).experiment(experiment_id)
    if pairs:  # a bad file is said before a cluster starts
        bounded.read_pairs(pairs, sorted({str(p) for p in exp.group(read_only=True)["prompt"][:]}), exp.id)
    _note_running(store, [experiment_id])
    paths: dict[str, str] = {}
    with _writing(store), _client(scheduler, workers) as c:
        if "ftle" in chosen:
            paths["ftle"] = divergence(experiment_id, model, store=_store(store), client=c, fit_steps=window, name=name,
                                       min_r_squared=min_r_squared)
        if "bounded" in chosen:
            paths["bounded"] = bounded.bounded(experiment_id, model, store=_store(store), client=c, max_lag=max_lag,
                                               fraction=saturation, name=name)
        if "pairs" in chosen:
            paths["pairs"] = bounded.divergence_pairs(experiment_id, model, pairs, store=_store(store), client=c, pairing=pairing,
                                                      fit_steps=window, name=name, min_r_squared=min_r_squared)
    out: dict = {"paths": list(paths.values())}
    if "ftle" in paths:
        path = paths["ftle"]
        g = open_result(exp, "divergence", path.rsplit("/", 1)[1])
        groups = [{"network": n, "prompt": p, "exponent": float(e), "r_squared": float(r), "n_pairs": int(k), "status": st}
                  for n, p, e, r, k, st in zip(g["group_network"][:], g["group_prompt"][:], g["exponent"][:], g["r_squared"][:],
                                               g["n_pairs"][:], g["status"][:])]
        out |= {"path": path, "groups": groups}
    if "bounded" in paths:
        out["bounded"] = {"path": paths["bounded"], "groups": bounded.bounded_rows(open_result(exp, bounded.KIND, paths["bounded"].rsplit("/", 1)[1]))}
    if "pairs" in paths:
        out["pairs"] = {"path": paths["pairs"], "groups": bounded.pairs_rows(open_result(exp, bounded.PAIRS_KIND, paths["pairs"].rsplit("/", 1)[1]))}
    print(json.dumps(out) if as_json else "\n".join(paths.values()))
    if as_json:
        return

    def fitted(row: dict) -> str:
        if row["status"] == OK:
            return f"exponent {row['exponent']:.4g}/step, R^2 {row['r_squared']:.2f}, {row['n_pairs']} pairs"
        if row["status"] == POOR_FIT:
            return (f"poor-fit: R^2 {row['r_squared']:.2f} < {min_r_squared:g}, no exponent "
                    f"(slope {row['exponent']:.3g}/step, {row['n_pairs']} pairs)")
        return row["status"]

    lines = [f"{row['network']} | {row['prompt'][:40]}: {fitted(row)}" for row in out.get("groups", [])]
    lines += [f"bounded: {row['network']} | {row['prompt'][:40]}: {bounded.describe_bounded(row)}"
              for row in out.get("bounded", {}).get("groups", [])]
    lines += [f"pairs: {row['network']} | {row['prompt_a'][:30]} / {row['prompt_b'][:30]}: {fitted(row)}"
              for row in out.get("pairs", {}).get("groups", [])]
    for line in lines[:_SHOWN]:
        typer.echo(line, err=True)
    if len(lines) > _SHOWN:
        typer.echo(f"... {len(lines) - _SHOWN} more groups (`panicflow export tables`: divergence, bounded_groups, divergence_pairs)", err=True)


@analyse_app.command("sequences")
def sequences_cmd(
    experiment_id: str = typer.Argument(...),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="Name of a stored clustering (default: the most recent)."),
    drop_noise: bool = typer.Option(False, "--drop-noise", help="Leave noise out of the sequences (joins the stays around it)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: the clustering's)."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Cluster sequences of every run: stays in one cluster and transitions between clusters, per network."""
    import numpy as np

    from .results import open_result, open_store
    from .sequences import sequences

    _note_running(store, [experiment_id])
    with _writing(store):
        path = sequences(experiment_id, clustering, store=_store(store), drop_noise=drop_noise, name=name)
    g = open_result(open_store(_store(store)).experiment(experiment_id), "sequences", path.rsplit("/", 1)[1])
    rows = [(str(n), int(f), int(t), int(c)) for n, f, t, c in zip(g["transition_network"][:], g["transition_from"][:],
                                                                 g["transition_to"][:], g["transition_count"][:]) if f != t]
    top: dict[str, list] = {}
    for n, f, t, c in rows:  # stored most common first per network
        if len(top.setdefault(n, [])) < 5:
            top[n].append({"from": f, "to": t, "count": c})
    length = g["stay_length"][:]
    print(json.dumps({"path": path, "stays": len(length), "top_transitions": top}) if as_json else path)
    if not as_json:
        typer.echo(f"{len(length)} stays, median length {float(np.median(length)) if len(length) else 0:g} vectors", err=True)
        for n, items in top.items():
            typer.echo(f"{n}: " + ", ".join(f"{i['from']}->{i['to']} ({i['count']})" for i in items), err=True)


@analyse_app.command("entropy")
def entropy_cmd(
    experiment_id: str = typer.Argument(...),
    statistic: str = typer.Option("mean", "--statistic", help="mean or median: the statistic given a bootstrap interval."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the interval."),
    n_resamples: int = typer.Option(9999, "--n-resamples", help="Bootstrap resamples."),
    method: str = typer.Option("bca", "--method", help="bca, percentile or basic (scipy.stats.bootstrap)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: from the parameters)."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Persistent entropy by network, embedding model and homology dimension, with bootstrap confidence intervals."""
    from .entropy import entropy_summary
    from .results import open_result, open_store

    _note_running(store, [experiment_id])
    with _writing(store):
        path = entropy_summary(experiment_id, store=_store(store), statistic=statistic, confidence=confidence,
                               n_resamples=n_resamples, method=method, seed=seed, name=name)
    g = open_result(open_store(_store(store)).experiment(experiment_id), "entropy", path.rsplit("/", 1)[1])
    keys = ("group_network", "group_model", "group_homology_dim", "n", statistic, "ci_low", "ci_high",
            "n_points_min", "n_points_max", "adjusted_mean", "adjusted_se", "reference_points")
    rows = list(zip(*(g[k][:] for k in keys)))
    if as_json:
        print(json.dumps({"path": path, "groups": [{k: (v.item() if hasattr(v, "item") else v) for k, v in zip(keys, r)} for r in rows]},
                         default=str))
        return
    print(path)
    for net, model, dim, n, stat, lo, hi, p_lo, p_hi, adj, se, ref in rows:
        points = f", {p_lo} points" if p_lo == p_hi else f", {p_lo}-{p_hi} points"
        adjusted = f"; at {ref:g} points {adj:.3f} ± {se:.3f}" if adj == adj else ""  # NaN: not estimable
        typer.echo(f"{net} | {model} | H{dim}: {statistic} {stat:.3f} [{lo:.3f}, {hi:.3f}] n={n}{points if n else ''}{adjusted}", err=True)


@analyse_app.command("results")
def results_cmd(experiment_id: str = typer.Argument(...), store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """List the stored analysis results of an experiment with their parameters."""
    from .results import KINDS, list_results, open_store

    exp = open_store(_store(store)).experiment(experiment_id)
    found = {kind: list_results(exp, kind) for kind in KINDS}
    if as_json:
        print(json.dumps(found))
        return
    for kind, items in found.items():
        for name, attrs in items.items():
            print(f"analysis/{kind}/{name}\t{json.dumps(attrs.get('parameters', {'model': attrs.get('model')}))}")


def export_tables_cmd(
    experiment_id: str = typer.Argument(...),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    out: str = typer.Option(".", "--out", help="Folder for the files (created if missing)."),
    no_vectors: bool = typer.Option(False, "--no-vectors", help="Leave the vector column out of embeddings."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Tidy tables (runs, invocations, embeddings, bars, entropies, drift, clusters, assignments, and one or more per
    kind of stored analysis result; docs/tables.md), streamed to files."""
    from .tables import export_tables

    _note_running(store, [experiment_id])
    written = export_tables(experiment_id, out, fmt=fmt, store=_store(store), vectors=not no_vectors)
    print(json.dumps(written) if as_json else "\n".join(written.values()))


def plot_cmd(
    experiment_id: str = typer.Argument(...),
    kind: str = typer.Argument(..., help="diagrams, entropy, drift, divergence, distances, durations, clusters, transitions, "
                                         "stays, map, bounded, divergence_pairs; of a stored analysis result: stability, dynamics, knn, noise_sweep, "
                                         "noise_caption, recurrence, windows or run_table."),
    out: str = typer.Option(".", "--out", help="Folder for the PNG and SVG files (created if missing)."),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="clusters, transitions, stays, map: the clustering (default: the most recent)."),
    result: Optional[str] = typer.Option(None, "--result", help="divergence, distances, bounded, divergence_pairs and the stored analysis results (stability ... "
                                                                 "run_table): the result's name (default: the most recent)."),
    by: Optional[str] = typer.Option(None, "--by", help="drift, entropy: network (prompts pooled) or prompt (a panel per "
                                                        "prompt); default: per prompt when there are 2 to 6 prompts."),
    title: bool = typer.Option(True, "--title/--no-title", help="--no-title: no figure title, for a figure with a caption."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Charts of an experiment as PNG and SVG (docs/analysis.md, "Charts")."""
    from .plots import plot

    _note_running(store, [experiment_id])

    paths = plot(experiment_id, kind, out=out, store=_store(store), clustering=clustering, result=result, by=by, title=title)
    print(json.dumps([str(p) for p in paths]) if as_json else "\n".join(str(p) for p in paths))

from . import cli_dynamics  # noqa: E402,F401  (registers `analyse dynamics`)

from . import cli_recurrence  # noqa: E402,F401  (registers knn, noise-sweep, noise-captions, recurrence, windows, run-table)

from . import cli_clustering  # noqa: E402,F401  (registers assign and stability, issue 24 item 1)
