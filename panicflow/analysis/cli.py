"""`panicflow analyse cluster|drift|distances|results` and the `export tables` command function.

Registered by panicflow/cli.py (``app.add_typer(analyse_app, name="analyse")`` and a
``tables`` command on an ``export`` group calling ``export_tables_cmd``). The work runs on a
Dask cluster: ``--scheduler ADDRESS`` or an embedded LocalCluster of ``--workers`` processes.
The result's name or path goes to stdout, with ``--json`` a JSON object.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import List, Optional

import typer

from ..errors import UserError

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
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0") as lc, \
            Client(lc) as c:
        yield c


def _parse_reduce(reduce: str) -> str:
    return reduce.strip().lower()


@analyse_app.command("cluster")
def cluster_cmd(
    experiment_ids: List[str] = typer.Argument(..., help="Experiment ids (clustered together, in one space)."),
    model: str = typer.Option(..., "--model", help="Embedding model whose vectors are clustered."),
    min_cluster_size: int = typer.Option(10, "--min-cluster-size"),
    min_samples: Optional[int] = typer.Option(None, "--min-samples", help="Default: --min-cluster-size."),
    reduce: str = typer.Option("pca:32", "--reduce", help="pca:K (PCA to K dimensions before hdbscan) or none."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Fit on N random vectors and label the rest with approximate_predict."),
    algorithm: str = typer.Option("hdbscan", "--algorithm", help="hdbscan or fast_hdbscan."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: derived from the parameters)."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """HDBSCAN over the unit-normalised embeddings of one model; the labels go into each experiment's store."""
    from . import clustering

    clustering.ClusterParams(model, min_cluster_size, min_samples, _parse_reduce(reduce), sample, algorithm).check()
    with _client(scheduler, workers) as c:
        result = clustering.cluster(experiment_ids, model, store=_store(store), client=c, min_cluster_size=min_cluster_size,
                                    min_samples=min_samples, reduce=_parse_reduce(reduce), sample=sample,
                                    algorithm=algorithm, name=name)
    a = clustering.assignments(experiment_ids[0], result, store=_store(store))["attrs"]
    summary = {"name": result, "path": f"analysis/clusters/{result}", "clusters": a["n_clusters"],
               "vectors": a["n_vectors"], "noise": a["n_noise"]}
    print(json.dumps(summary) if as_json else result)
    if not as_json:
        typer.echo(f"{a['n_clusters']} clusters, {a['n_noise']} of {a['n_vectors']} vectors noise", err=True)


@analyse_app.command("drift")
def drift_cmd(
    experiment_id: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """Semantic drift of every step from its run's start (cosine distance and unit euclidean distance)."""
    from .drift import semantic_drift

    with _client(scheduler, workers) as c:
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
    with _client(scheduler, workers) as c:
        path = pairwise_distances(experiment_ids, model, store=_store(store), client=c, runs=chosen, metrics=tuple(metric), name=name)
    print(json.dumps({"path": path}) if as_json else path)


@analyse_app.command("results")
def results_cmd(experiment_id: str = typer.Argument(...), store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """List the stored analysis results of an experiment with their parameters."""
    from .results import list_results, open_store

    exp = open_store(_store(store)).experiment(experiment_id)
    found = {kind: list_results(exp, kind) for kind in ("clusters", "drift", "distances")}
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
    """Tidy tables (runs, invocations, embeddings, bars, entropies, drift, clusters, assignments), streamed to files."""
    from .tables import export_tables

    written = export_tables(experiment_id, out, fmt=fmt, store=_store(store), vectors=not no_vectors)
    print(json.dumps(written) if as_json else "\n".join(written.values()))
