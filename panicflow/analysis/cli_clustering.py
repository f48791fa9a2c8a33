"""`panicflow analyse assign|stability` (issue 24 item 1): a stored clustering applied without refitting
(panicflow/analysis/assign.py) and its stability under subsampling (panicflow/analysis/stability.py).

Registered on ``analyse_app`` by the import at the end of panicflow/analysis/cli.py. Everything heavier
than typer is imported inside the commands (tests/test_cli_startup.py).
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from .cli import JsonOpt, SchedulerOpt, StoreOpt, WorkersOpt, _client, _note_running, _store, _writing, analyse_app


@analyse_app.command("assign")
def assign_cmd(
    experiment_ids: List[str] = typer.Argument(..., help="Experiments to label (their vectors of the clustering's model)."),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="Name of the stored clustering (default: the most recent)."),
    source: str = typer.Option(..., "--from", help="An experiment that holds the clustering (one of its inputs)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: <clustering>-assigned-<digest>)."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """Apply a stored clustering to other experiments without refitting (nearest fitted member within its cluster's threshold)."""
    from . import clustering as C
    from .assign import assign

    _note_running(store, experiment_ids)
    with _writing(store), _client(scheduler, workers) as c:
        result = assign(experiment_ids, clustering, source, store=_store(store), client=c, name=name)
    a = C.assignments(experiment_ids[0], result, store=_store(store))["attrs"]
    summary = {"name": result, "path": f"analysis/clusters/{result}", "source_clustering": a["source_clustering"],
               "source_experiment": a["source_experiment"], "clusters": a["n_clusters"], "vectors": a["n_vectors"],
               "noise": a["n_noise"], "fitted": False}
    print(json.dumps(summary) if as_json else result)
    if not as_json:
        typer.echo(f"{a['n_vectors']} vectors labelled by {a['source_clustering']} (from {a['source_experiment']}), "
                   f"{a['n_noise']} noise, {int((C.assignments(experiment_ids[0], result, store=_store(store))['size'] > 0).sum())} "
                   f"of {a['n_clusters']} clusters reached in {experiment_ids[0]}", err=True)


@analyse_app.command("stability")
def stability_cmd(
    experiment_ids: List[str] = typer.Argument(..., help="Experiment ids (clustered together, as `analyse cluster`)."),
    model: str = typer.Option(..., "--model", help="Embedding model whose vectors are clustered."),
    resamples: int = typer.Option(20, "--resamples", help="Subsamples clustered."),
    fraction: float = typer.Option(0.8, "--fraction", help="Fraction of the vectors in each subsample."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draws (and of EVoC)."),
    min_cluster_size: Optional[int] = typer.Option(None, "--min-cluster-size", help="As `analyse cluster`."),
    min_samples: Optional[int] = typer.Option(None, "--min-samples", help="As `analyse cluster`."),
    reduce: Optional[str] = typer.Option(None, "--reduce", help="As `analyse cluster` (one PCA for all resamples)."),
    algorithm: Optional[str] = typer.Option(None, "--algorithm", help="hdbscan (default), fast_hdbscan, sklearn or evoc."),
    preset: Optional[str] = typer.Option(None, "--preset", help="As `analyse cluster`."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: derived from the parameters)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the tidy table (CSV) and the chart (PNG, SVG)."),
    store: Optional[str] = StoreOpt, scheduler: Optional[str] = SchedulerOpt, workers: int = WorkersOpt, as_json: bool = JsonOpt,
) -> None:
    """Stability under subsampling: ARI of each subsample's clustering against the clustering of all the vectors."""
    import warnings
    from pathlib import Path

    from . import clustering as C
    from .stability import stability, stability_figure, stability_table

    _note_running(store, experiment_ids)
    with _writing(store), _client(scheduler, workers) as c, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", C.LowVarianceWarning)
        path = stability(experiment_ids, model, store=_store(store), client=c, resamples=resamples, fraction=fraction, seed=seed,
                         min_cluster_size=min_cluster_size, min_samples=min_samples, reduce=reduce, algorithm=algorithm,
                         preset=preset, name=name)
    for w in caught:
        if issubclass(w.category, C.LowVarianceWarning):
            typer.echo(f"warning: {w.message}", err=True)
    result = path.rsplit("/", 1)[1]
    t = stability_table(experiment_ids[0], _store(store), result)
    files = []
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        f = folder / f"stability-{result}.csv"
        t.to_csv(f, index=False)
        files.append(str(f))
        fig = stability_figure(t)
        for fmt in ("png", "svg"):
            f = folder / f"stability-{result}.{fmt}"
            fig.savefig(f, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
            files.append(str(f))
    from .results import open_result, open_store

    a = dict(open_result(open_store(_store(store)).experiment(experiment_ids[0]), "stability", result).attrs)
    summary = {"path": path, "mean": a["mean"], "sd": a["sd"], "quantiles": a["quantiles"], "resamples": resamples,
               "n_points": a["n_points"], "full_n_clusters": a["full_n_clusters"],
               "explained_variance": a.get("explained_variance"), "files": files}
    if as_json:
        print(json.dumps(summary))
        return
    print(path)
    typer.echo(f"ARI {a['mean']:.3f} ± {a['sd']:.3f} (median {a['quantiles']['0.5']:.3f}, 5-95 % {a['quantiles']['0.05']:.3f}-"
               f"{a['quantiles']['0.95']:.3f}) over {resamples} subsamples of {a['n_points']} vectors; full: "
               f"{a['full_n_clusters']} clusters", err=True)
    for f in files:
        typer.echo(f"wrote {f}", err=True)
