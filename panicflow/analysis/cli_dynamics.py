"""`panicflow analyse dynamics`: symbolic dynamics under a stored clustering (panicflow/analysis/dynamics.py).

Imported at the end of panicflow/analysis/cli.py, registers on its ``analyse_app``. Numpy, deeptime
and the store are imported inside the command (tests/test_cli_startup.py).
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer

from .cli import JsonOpt, StoreOpt, _note_running, _store, _writing, analyse_app


@analyse_app.command("dynamics")
def dynamics_cmd(
    experiment_ids: List[str] = typer.Argument(..., help="One experiment, or several clustered together: their runs are pooled "
                                                         "per network and the result goes into the first."),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="Name of a stored clustering (default: the most recent); "
                                                                        "with several experiments, one shared by them all."),
    lag: int = typer.Option(1, "--lag", help="Lag of the Markov state model, in vectors of the clustering's model."),
    max_lag: int = typer.Option(5, "--max-lag", help="Implied timescales at each lag 1..N."),
    n_sets: Optional[int] = typer.Option(None, "--n-sets", help="Metastable sets (PCCA+); default: from the largest timescale gap."),
    reversible: bool = typer.Option(True, "--reversible/--non-reversible", help="Reversible MLE (detailed balance) or row-normalised counts."),
    alpha: float = typer.Option(0.1, "--alpha", help="Dwell-time fit: significance of Vuong's likelihood-ratio test."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the result (default: <clustering>-lag<lag>, "
                                                            "with -pooled<N> for N experiments)."),
    tables: Optional[str] = typer.Option(None, "--tables", help="Also write the tidy tables (dynamics_<table>.csv) into this folder."),
    fmt: str = typer.Option("csv", "--format", help="--tables: csv or parquet."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw the chart (dynamics-<result>.png, .svg) into this folder."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Core-set milestoning, a Markov state model per network (deeptime), dwell times, transit and absorption;
    several experiments clustered together are pooled (counts summed over all their runs, per network)."""
    from .dynamics import dynamics, dynamics_chart, dynamics_table, export_dynamics_tables

    experiment_id = experiment_ids[0]  # where the result is stored
    _note_running(store, experiment_ids)
    with _writing(store):
        path = dynamics(experiment_ids if len(experiment_ids) > 1 else experiment_id, clustering, store=_store(store), lag=lag,
                        max_lag=max_lag, n_sets=n_sets, reversible=reversible, alpha=alpha, name=name)
    result = path.rsplit("/", 1)[1]
    files = []
    if tables:
        files += [str(p) for p in export_dynamics_tables(experiment_id, tables, _store(store), result=result, fmt=fmt)]
    if plot:
        files += [str(p) for p in dynamics_chart(experiment_id, plot, _store(store), result=result)]
    nets = dynamics_table(experiment_id, "networks", _store(store), result=result)
    summary = [{"network": r.name, "connected_states": int(r.connected), "sets": int(r.sets),
                "transit_fraction": float(r.transit / max(1, r.core + r.transit)),
                "absorbed": int(r.absorbed), "runs": int(r.runs)} for r in nets.itertuples()]
    if as_json:
        print(json.dumps({"path": path, "networks": summary, "files": files}))
        return
    print(path)
    for s in summary:
        typer.echo(f"{s['network']}: {s['connected_states']} states, {s['sets']} metastable sets, "
                   f"{s['transit_fraction']:.0%} of assigned vectors in transit, {s['absorbed']}/{s['runs']} runs absorbed", err=True)
    for f in files:
        typer.echo(f, err=True)
