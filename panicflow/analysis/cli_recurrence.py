"""`panicflow analyse knn|noise-sweep|noise-captions|recurrence|windows|run-table` (issue 24 items 3 and 5).

Registered on ``analyse_app`` by the import at the end of panicflow/analysis/cli.py. Each command
stores its result (``analysis/<kind>/<name>``, path on stdout, ``--json`` for a JSON object) and,
with ``--out DIR``, writes the tidy table (``<kind>-<name>.csv``) and the chart (``<kind>-<name>.png``)
there. Everything heavier than typer is imported inside the commands (tests/test_cli_startup.py).
"""

from __future__ import annotations

import json
from typing import Callable, List, Optional

import typer

from .cli import JsonOpt, StoreOpt, _note_running, _store, _writing, analyse_app

OutOpt = typer.Option(None, "--out", help="Folder for the tidy table (CSV) and the chart (PNG), created if missing.")


def _finish(path: str, out: Optional[str], tables: dict, draw: Callable, as_json: bool) -> None:
    """Write the tables and chart under ``out`` (if given) and print the result's path."""
    from pathlib import Path

    kind, name = path.split("/")[1:3]
    files = []
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, table in tables.items():
            f = folder / f"{kind}-{name}{suffix}.csv"
            table.to_csv(f, index=False)
            files.append(str(f))
        png = folder / f"{kind}-{name}.png"
        draw().savefig(png, dpi=120)
        files.append(str(png))
    if as_json:
        print(json.dumps({"path": path, "files": files}))
    else:
        print(path)
        for f in files:
            typer.echo(f"wrote {f}", err=True)


@analyse_app.command("knn")
def knn_cmd(
    experiment_id: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model whose vectors are measured."),
    k: int = typer.Option(10, "--k", help="Neighbours per vector."),
    queries: int = typer.Option(20_000, "--queries", help="Vectors measured, each against all (a seeded sample beyond "
                                "this many: exact search costs queries x vectors); 0: every vector."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample of --queries."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: <model>-k<k>)."),
    out: Optional[str] = OutOpt, store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Distances of vectors (unit-normalised) to their k nearest neighbours: the density of the embeddings."""
    from . import density

    _note_running(store, [experiment_id])
    with _writing(store):
        path = density.knn_distances(experiment_id, model, _store(store), k=k, name=name, queries=queries, seed=seed)
    t = density.knn_table(experiment_id, _store(store), path.rsplit("/", 1)[1])
    _finish(path, out, {"": t}, lambda: density.knn_figure(t), as_json)


@analyse_app.command("noise-sweep")
def noise_sweep_cmd(
    experiment_id: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model whose vectors are clustered."),
    sizes: str = typer.Option("2,3,5,8,10,15,20,30,50", "--sizes", help="min_cluster_size values, comma-separated."),
    min_samples: Optional[int] = typer.Option(None, "--min-samples", help="Default: each min_cluster_size."),
    reduce: Optional[str] = typer.Option(None, "--reduce", help="As `analyse cluster --reduce` (default auto)."),
    algorithm: Optional[str] = typer.Option(None, "--algorithm", help="As `analyse cluster --algorithm` (default hdbscan)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: derived from the parameters)."),
    out: Optional[str] = OutOpt, store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Noise fraction of the clustering as a function of min_cluster_size (one result holds the sweep)."""
    from ..errors import UserError
    from . import density

    try:
        values = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--sizes: comma-separated integers, got {sizes!r}") from None
    _note_running(store, [experiment_id])
    with _writing(store):
        path = density.noise_sweep(experiment_id, model, _store(store), sizes=values, min_samples=min_samples,
                                   reduce=reduce, algorithm=algorithm, name=name)
    t = density.sweep_table(experiment_id, _store(store), path.rsplit("/", 1)[1])
    _finish(path, out, {"": t}, lambda: density.sweep_figure(t), as_json)


@analyse_app.command("noise-captions")
def noise_captions_cmd(
    experiment_id: str = typer.Argument(...),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="A stored clustering of a text embedding model "
                                                                        "(default: the most recent)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: the clustering's)."),
    out: Optional[str] = OutOpt, store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Noise against caption length per captioning model."""
    from . import density

    _note_running(store, [experiment_id])
    with _writing(store):
        path = density.noise_by_caption(experiment_id, clustering, _store(store), name=name)
    t = density.caption_table(experiment_id, _store(store), path.rsplit("/", 1)[1])
    _finish(path, out, {"": t}, lambda: density.caption_figure(t), as_json)


@analyse_app.command("recurrence")
def recurrence_cmd(
    experiment_id: str = typer.Argument(...),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="Stored clustering giving the symbols (default: the most recent)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Cosine distance under which two points recur "
                                                                        "(default: from --quantile)."),
    quantile: float = typer.Option(0.05, "--quantile", help="Without --threshold: this quantile of the within-run pairwise "
                                                            "cosine distances, pooled over the runs."),
    min_lag: int = typer.Option(1, "--min-lag", help="Pairs closer than this many points are left out of the rates (Theiler window)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: derived from the parameters)."),
    out: Optional[str] = OutOpt, store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Recurrence rates and return times on the raw embedding distances against those of the symbol sequences."""
    from . import recurrence as R
    from .results import open_result, open_store

    _note_running(store, [experiment_id])
    with _writing(store):
        path = R.recurrence(experiment_id, clustering, _store(store), threshold=threshold, quantile=quantile, min_lag=min_lag, name=name)
    rname = path.rsplit("/", 1)[1]
    eps = open_result(open_store(_store(store)).experiment(experiment_id), R.RECURRENCE, rname).attrs["parameters"]["threshold"]
    runs, returns = R.recurrence_tables(experiment_id, _store(store), rname)
    if not as_json:
        typer.echo(f"threshold: cosine distance {eps:.4g}; median recurrence rate {runs['rr_distance'].median():.3g} "
                   f"(distances), {runs['rr_symbol'].median():.3g} (symbols)", err=True)
    _finish(path, out, {"": runs, "-returns": returns}, lambda: R.recurrence_figure(runs, returns, eps), as_json)


@analyse_app.command("windows")
def windows_cmd(
    experiment_id: str = typer.Argument(...),
    model: str = typer.Option(..., "--model", help="Embedding model whose vectors are windowed."),
    window: int = typer.Option(10, "--window", help="Points per window (W)."),
    stride: int = typer.Option(5, "--stride", help="Points between the starts of two windows (S)."),
    maxdim: int = typer.Option(1, "--maxdim", help="Highest homology dimension (0-2)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: derived from the parameters)."),
    out: Optional[str] = OutOpt, store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Sliding-window persistence along every run: bars, entropy and normalised entropy per window."""
    from . import recurrence as R

    _note_running(store, [experiment_id])
    with _writing(store):
        path = R.window_persistence(experiment_id, model, _store(store), window=window, stride=stride, maxdim=maxdim, name=name)
    t = R.windows_table(experiment_id, _store(store), path.rsplit("/", 1)[1])
    _finish(path, out, {"": t}, lambda: R.windows_figure(t), as_json)


@analyse_app.command("run-table")
def run_table_cmd(
    experiment_id: str = typer.Argument(...),
    sequences: Optional[str] = typer.Option(None, "--sequences", help="Stored sequences result (default: the most recent)."),
    recurrence: Optional[str] = typer.Option(None, "--recurrence", help="Stored recurrence result (default: the most recent, if any)."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: the sequences')."),
    out: Optional[str] = OutOpt, store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """One row per run: entropy (raw, normalised), points, duplicate outputs, dwell statistics, recurrence rates."""
    from . import recurrence as R

    _note_running(store, [experiment_id])
    with _writing(store):
        path = R.run_table(experiment_id, sequences, _store(store), recurrence_result=recurrence, name=name)
    from .results import open_result, open_store

    t = R.run_table_frame(experiment_id, _store(store), path.rsplit("/", 1)[1])
    if not as_json:
        g = open_result(open_store(_store(store)).experiment(experiment_id), R.RUN_TABLE, path.rsplit("/", 1)[1])
        r2 = ", ".join(f"{c} {v['r2']:.2f}" for c, v in g.attrs["explained_by_counts"].items())
        typer.echo(f"R^2 by duplicates and dwell statistics: {r2}", err=True)
    _finish(path, out, {"": t}, lambda: R.run_table_figure(t), as_json)


__all__: List[str] = ["knn_cmd", "noise_sweep_cmd", "noise_captions_cmd", "recurrence_cmd", "windows_cmd", "run_table_cmd"]
