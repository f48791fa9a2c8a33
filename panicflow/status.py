"""What the store says of experiments, read without a cluster: ``experiment_status`` and
``list_experiments`` (re-exported by panicflow.api and the ``panicflow`` package).

Kept apart from api.py so that `panicflow experiment status` and `list` (and scripts that poll
``status --json``) load only the store, Zarr and the config, never distributed, xarray or pandas:
api.py imports those at module level, and this module must not (tests/test_cli_startup.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .errors import StoreError
from .store import Experiment, Store
from .store.experiment import read_markers
from .store.journal import StepRecord, supersede

StoreLike = str | os.PathLike | Store | None


def _store(store: StoreLike, create: bool = False, lazy: bool = False) -> Store:
    return store if isinstance(store, Store) else Store(store, create=create, lazy=lazy)


def list_experiments(store: StoreLike = None) -> list[dict[str, Any]]:
    """One dict per experiment: id, name, state, created_at, runs.

    An experiment that cannot be read (damaged experiment.json or stored
    config, another format version) is listed with state ``"damaged"``,
    ``runs`` None and ``error`` saying why; the others are listed as usual.
    """
    st = _store(store)
    out = []
    for eid in st.experiment_ids():
        exp = Experiment(st.root, eid)
        try:
            runs = len(exp.config.runs())
        except StoreError as exc:
            out.append({"id": eid, "name": None, "state": "damaged", "created_at": None, "runs": None,
                        "error": str(exc).splitlines()[0]})
            continue
        name, created = exp.name, exp.meta.get("created_at")
        out.append(
            {
                "id": eid,
                "name": name if isinstance(name, str) else None,
                "state": exp.effective_state(),
                "created_at": created if isinstance(created, str) else None,
                "runs": runs,
            }
        )
    return out


@contextlib.contextmanager
def _metadata_read(exp: Experiment) -> Iterator[None]:
    """A damaged zarr.json (zarr raises a bare JSONDecodeError) said in one line naming the file."""
    try:
        yield
    except json.JSONDecodeError:
        bad = _damaged_metadata(exp)
        where = exp.root.path_for_display(f"{exp.data_key}/{bad}") if bad else exp.path_for_display()
        raise StoreError(
            f"experiment {exp.id}: {where} is damaged (not JSON); `panicflow doctor {exp.id}` says what is wrong "
            "and `--fix` rebuilds it"
        ) from None


def _damaged_metadata(exp: Experiment, node: str = "") -> str | None:
    """The first zarr.json under data.zarr that is not JSON, relative to it (a walk of the nodes: an error path)."""
    key = f"{node}/zarr.json" if node else "zarr.json"
    try:
        json.loads(exp.root.read_bytes(f"{exp.data_key}/{key}"))
    except FileNotFoundError:
        pass
    except ValueError:
        return key
    for child in exp.root.list_dirs(f"{exp.data_key}/{node}" if node else exp.data_key):
        if found := _damaged_metadata(exp, f"{node}/{child}" if node else child):
            return found
    return None


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
    invocations_by_model: dict[str, int] = field(default_factory=dict)
    # per embedding model: diagrams ok / fallback / skipped / failed (persistence_diagrams counts all four)
    diagram_outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    # steps at most: a run going may make max_length, one that ended made its length (in all, per model)
    invocations_max: int = 0
    invocations_max_by_model: dict[str, int] = field(default_factory=dict)
    # the time left (scheduler/eta.py): rates from what the store recorded in the last eta.WINDOW_S
    eta: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["errors"] = {str(k): v for k, v in self.errors.items()}
        return d


def experiment_status(experiment_id: str, store: StoreLike = None) -> ExperimentStatus:
    """Exact progress, derived from the journal and the Zarr markers; ``eta`` from what ended recently."""
    from .scheduler import eta as _eta

    st = _store(store)
    exp = st.experiment(experiment_id)
    exp.config  # a damaged stored config is a clear error here, not later
    with _metadata_read(exp):
        markers = read_markers(exp)
    effective = exp.effective_state()
    reasons = [str(r) for r in markers["stop_reason"]]
    # the window the rates are measured over: the last eta.WINDOW_S of this coordinator session
    now = time.time() * 1e6
    sessions = [s["started_us"] for s in exp.sessions() if isinstance(s.get("started_us"), int)]
    since = max([now - _eta.WINDOW_S * 1e6, *sessions])
    recent_steps: Counter[str] = Counter()
    by_run: dict[int, dict[int, StepRecord]] = {}
    # complete: everything is in Zarr, and a journal left by a clear cut short is not read
    for rec in exp.journal.read() if exp.read_state().get("state") != "complete" else ():
        if isinstance(rec, StepRecord):
            supersede(by_run.setdefault(rec.run, {}), rec)  # as resume reads it
            if rec.ended_us >= since:
                recent_steps[rec.model] += 1
    steps = {run: max(records) + 1 for run, records in by_run.items() if records}
    lengths = markers["length"]
    done = [int(lengths[i]) if reasons[i] else steps.get(i, 0) for i in range(len(reasons))]
    invocations = sum(done)
    max_length = exp.config.max_length
    by_model: dict[str, int] = {}
    max_by_model: dict[str, int] = {}
    for spec in exp.config.runs():  # step k of a run calls network[k % len(network)]
        n, k = done[spec.index], len(spec.network)
        most = int(lengths[spec.index]) if reasons[spec.index] else max_length
        for j, model in enumerate(spec.network):
            by_model[model] = by_model.get(model, 0) + max(0, (n - j + k - 1) // k)
            max_by_model[model] = max_by_model.get(model, 0) + max(0, (most - j + k - 1) // k)
    g = exp.group(read_only=True)
    failed = [i for i, r in enumerate(reasons) if r == "failed"]
    errors = {i: str(g["error"][i]) for i in failed}
    counts: dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    state = exp.read_state()
    rates: dict[str, dict[str, float]] = {}
    if effective == "running":  # a stopped experiment has no rate (what ended before it stopped is no guide)
        recent = {"invocations": dict(recent_steps),
                  "embeddings": _ended_since(g, "embeddings", markers["embedded"], since),
                  "diagrams": _ended_since(g, "diagrams", {m: np.asarray([bool(str(x)) for x in v])
                                                                  for m, v in markers["diagram_status"].items()}, since)}
        rates = _eta.rates_from_counts(recent, (now - since) / 1e6)
    status = ExperimentStatus(
        id=exp.id,
        name=exp.name,
        state=effective,
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
        invocations_by_model=by_model,
        diagram_outcomes={m: _outcomes(v) for m, v in markers["diagram_status"].items()},
        invocations_max=sum(max_by_model.values()),
        invocations_max_by_model=max_by_model,
    )
    status.eta = _eta.estimate(_eta.work_left(status.to_dict()), rates)
    return status


def _ended_since(g, stage: str, marked: dict[str, Any], since_us: float) -> dict[str, int]:
    """Per embedding model, the runs whose ``stage`` task (embeddings, diagrams) ended since ``since_us``."""
    out = {}
    for model, done in marked.items():
        node = g[f"{stage}/{model}"]
        if "ended_at" in node:  # experiments from before task times have none: no rate
            out[model] = int(np.count_nonzero((node["ended_at"][:] >= since_us) & np.asarray(done, dtype=bool)))
    return out


def _outcomes(statuses) -> dict[str, int]:
    from .analysis.topology import status_group

    counts = Counter(status_group(str(s)) for s in statuses)
    counts.pop("pending", None)
    return {k: counts.get(k, 0) for k in ("ok", "fallback", "skipped", "failed")}
