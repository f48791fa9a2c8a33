"""The Python API: run, resume, list and open experiments.

Everything the CLI does goes through these functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import xarray as xr
from distributed import Client
from PIL import Image

from .config import ExperimentConfig, load_config
from .errors import UserError
from .scheduler.cluster import connect
from .scheduler.coordinator import Coordinator, Progress
from .store import Experiment, Store
from .store.experiment import read_markers
from .store.journal import StepRecord

StoreLike = str | os.PathLike | Store | None


def _store(store: StoreLike, create: bool = False) -> Store:
    return store if isinstance(store, Store) else Store(store, create=create)


def run_experiment(
    config: ExperimentConfig | dict | str | Path,
    store: StoreLike = None,
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[Experiment, Client], None] | None = None,
) -> str:
    """Run an experiment to the end and return its id.

    ``config`` is a config object, a mapping or a JSON/YAML path; it is
    validated before anything is written. With no ``client`` a LocalCluster is
    started (and closed) here; with a ``distributed.Client`` its cluster is used
    as is. ``store`` defaults to ``$PANICFLOW_STORE`` or ``./panicflow-store``.
    """
    cfg = load_config(config)
    st = _store(store, create=True)
    exp = Experiment.create(st.root, st.new_experiment_id(), cfg)
    _drive(st, exp, client, scheduler, workers, progress, on_start)
    return exp.id


def resume_experiment(
    experiment_id: str,
    store: StoreLike = None,
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[Experiment, Client], None] | None = None,
    retry_failed: bool = False,
) -> str:
    """Finish an interrupted experiment exactly as an uninterrupted run would have.

    ``retry_failed`` also gives runs that failed (their model kept raising)
    another go from the step that failed.
    """
    st = _store(store)
    exp = st.experiment(experiment_id)
    state = exp.read_state()
    if exp.effective_state() == "running":
        raise UserError(
            f"experiment {exp.id} is running (pid {state.get('pid')} on {state.get('host')}); "
            "wait for it or stop that process first"
        )
    _drive(st, exp, client, scheduler, workers, progress, on_start, retry_failed)
    return exp.id


def _drive(st, exp, client, scheduler, workers, progress, on_start, retry_failed=False) -> None:
    exp.config  # fail on a damaged stored config before starting a cluster
    with connect(client, scheduler=scheduler, workers=workers) as c:
        if on_start:
            on_start(exp, c)
        Coordinator(c, st, exp, progress=progress, retry_failed=retry_failed).run()


def list_experiments(store: StoreLike = None) -> list[dict[str, Any]]:
    """One dict per experiment: id, name, state, created_at, runs."""
    st = _store(store)
    out = []
    for eid in st.experiment_ids():
        exp = Experiment(st.root, eid)
        out.append(
            {
                "id": eid,
                "name": exp.name,
                "state": exp.effective_state(),
                "created_at": exp.meta.get("created_at"),
                "runs": len(exp.config.runs()),
            }
        )
    return out


def open_experiment(experiment_id: str, store: StoreLike = None) -> xr.DataTree:
    """The results as an xarray DataTree backed lazily by Zarr.

    Root node: per-run variables (network, seed, prompt, length, stop_reason,
    loop_start, loop_period, error) and per-invocation variables on (run, step)
    (model, kind, output_hash, text, invocation_seed, started_at, ended_at).
    ``embeddings/<model>``: ``vector`` (run, step, dim), NaN where the model
    does not apply, and ``done``. ``diagrams/<model>``: ``status``, ``reason``,
    ``n_points``, ``entropy`` (run, homology_dim) and the padded pairs
    ``birth``/``death``/``dimension`` (run, pair).
    Runs still in progress show only what has been materialised.
    """
    st = _store(store)
    exp = st.experiment(experiment_id)
    exp.config
    tree = xr.open_datatree(exp.root.zarr_store(exp.data_key, read_only=True), engine="zarr", consolidated=False, zarr_format=3)
    tree.attrs["store"] = st.location
    return tree


def load_image(digest: str, store: StoreLike = None) -> Image.Image:
    """The image stored under ``digest`` (an ``output_hash``), as a PIL image."""
    return _store(store).objects.get_image(digest)


def load_text(digest: str, store: StoreLike = None) -> str:
    return _store(store).objects.get_text(digest)


@dataclass
class ExperimentStatus:
    id: str
    name: str | None
    state: str
    runs: int
    runs_complete: int
    runs_failed: int
    invocations: int
    embeddings: dict[str, int]
    persistence_diagrams: dict[str, int]
    stop_reasons: dict[str, int]
    errors: dict[int, str]
    store: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"] = {str(k): v for k, v in self.errors.items()}
        return d


def experiment_status(experiment_id: str, store: StoreLike = None) -> ExperimentStatus:
    """Exact progress, derived from the journal and the Zarr markers."""
    st = _store(store)
    exp = st.experiment(experiment_id)
    cfg = exp.config
    markers = read_markers(exp)
    reasons = [str(r) for r in markers["stop_reason"]]
    steps: dict[int, int] = {}
    for rec in exp.journal.read():
        if isinstance(rec, StepRecord):
            steps[rec.run] = max(steps.get(rec.run, 0), rec.step + 1)
    lengths = markers["length"]
    invocations = sum(
        int(lengths[i]) if reasons[i] else steps.get(i, 0) for i in range(len(reasons))
    )
    g = exp.group(read_only=True)
    failed = [i for i, r in enumerate(reasons) if r == "failed"]
    errors = {i: str(g["error"][i]) for i in failed}
    counts: dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    state = exp.read_state()
    return ExperimentStatus(
        id=exp.id,
        name=exp.name,
        state=exp.effective_state(),
        runs=len(reasons),
        runs_complete=sum(1 for r in reasons if r in ("length", "loop")),
        runs_failed=len(failed),
        invocations=invocations,
        embeddings={m: int(np.count_nonzero(v)) for m, v in markers["embedded"].items()},
        persistence_diagrams={m: sum(1 for s in v if str(s)) for m, v in markers["diagram_status"].items()},
        stop_reasons=counts,
        errors=errors,
        store=st.location,
        error=state.get("error"),
    )
