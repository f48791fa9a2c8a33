"""Reading inputs and storing results of the analyses (drift, distances, clusters, divergence, ...).

Contract (docs/analysis.md):

* Inputs are read straight from an experiment's Zarr hierarchy, one run at a time,
  on whichever process needs them (a Dask worker for anything heavy).
* Results go into the experiment's own ``data.zarr`` under ``analysis/<kind>/<name>``.
  The writer creates the group with ``status: "writing"``, writes every array, and sets
  ``status: "complete"`` last: readers trust only complete groups (the same marker-last
  rule as the rest of the store). Writing a result of the same name again replaces it;
  another name (other parameters) is kept beside it.
* Every result records its parameters, the input experiments, and the names and versions
  of the libraries that computed it, in the group's attributes; and ``experiment_state``:
  the experiment's state and how many of its runs had ended. An experiment still running
  is analysed on the runs that ended (issue 20 item 6): their data are final.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from typing import Any

import numpy as np
import zarr

from ..errors import UserError
from ..store import Store, consolidated
from ..store.experiment import Experiment

ANALYSIS = "analysis"
# analysis/<kind>/<name>, and the `panicflow analyse` command that stores each kind
COMMANDS = {
    "clusters": "cluster", "drift": "drift", "distances": "distances", "divergence": "divergence",
    "sequences": "sequences", "entropy": "entropy", "dynamics": "dynamics", "stability": "stability",
    "knn": "knn", "noise_sweep": "noise-sweep", "noise_caption": "noise-captions", "recurrence": "recurrence",
    "windows": "windows", "run_table": "run-table",
    "bounded": "divergence --measures bounded", "divergence_pairs": "divergence --pairs FILE",
}
KINDS = tuple(COMMANDS)


@lru_cache(maxsize=16)
def open_store(location: str) -> Store:
    return Store(location)


def experiment(location: str, experiment_id: str) -> Experiment:
    """The experiment ``experiment_id`` (a unique prefix is enough) in the store at ``location``."""
    return open_store(location).experiment(experiment_id)


def check_model(exp: Experiment, model: str) -> None:
    models = list(exp.config.embedding_models)
    if model not in models:
        raise UserError(f"--model: experiment {exp.id} has no embedding model {model!r}; choose one of {', '.join(models)}")


def run_lengths(exp: Experiment) -> np.ndarray:
    """Steps recorded per run (finished runs only; -1 for runs not ended)."""
    g = exp.group(read_only=True)
    lengths = g["length"][:].astype(np.int64)
    reasons = g["stop_reason"][:]
    return np.where(reasons != "", lengths, -1)


def embedded_runs(exp: Experiment, model: str) -> np.ndarray:
    """Runs whose ``model`` vectors are written (their ``done`` marker is set)."""
    return np.flatnonzero(exp.group(read_only=True)[f"embeddings/{model}/done"][:])


def read_vectors(location: str, experiment_id: str, model: str, run: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, vectors) of one run: the steps that have a ``model`` embedding, as float64 (for a worker task)."""
    return run_vectors(experiment(location, experiment_id), model, run)


def run_vectors(exp: Experiment, model: str, run: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, vectors) of one run of an open experiment: the steps that have a ``model`` embedding, as float64."""
    g = exp.group(read_only=True)
    n = int(g["length"][run])
    if n <= 0:
        return np.zeros(0, np.int64), np.zeros((0, g[f"embeddings/{model}/vector"].shape[2]))
    v = np.asarray(g[f"embeddings/{model}/vector"][run, :n], dtype=np.float64)
    ok = ~np.isnan(v).any(axis=1)
    return np.flatnonzero(ok), v[ok]


def unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit euclidean length (zero rows stay zero)."""
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


def read_diagram(exp: Experiment, model: str, run: int) -> list[np.ndarray] | None:
    """One run's persistence diagram: a (k, 2) array of (birth, death) per homology dimension.

    None when the run has no usable diagram (status not ``ok*``). The only place that knows
    how diagrams are laid out in Zarr: change it here if the layout changes.
    """
    d = exp.group(read_only=True)[f"diagrams/{model}"]
    if not str(d["status"][run]).startswith("ok"):
        return None
    maxdim = int(d.attrs.get("maxdim", d["entropy"].shape[1] - 1))
    birth, death, dim = d["birth"][run], d["death"][run], d["dimension"][run]
    return [np.column_stack([birth[dim == k], death[dim == k]]).astype(np.float64) for k in range(maxdim + 1)]


def experiment_progress(exp: Experiment) -> dict[str, Any]:
    """How far ``exp`` was when a result was computed from it: its state, its runs and those that
    had ended (an analysis of a running experiment uses the runs that ended: their rows, vectors
    and diagrams are final, docs/store.md). Recorded with every result (``experiment_state``)."""
    reasons = exp.group(read_only=True)["stop_reason"][:]
    return {"state": exp.effective_state(), "runs": int(reasons.size), "runs_ended": int(np.count_nonzero(reasons != ""))}


def versions(*packages: str) -> dict[str, str]:
    out = {"panicflow": _version("panicflow")}
    for p in packages:
        out[p] = _version(p)
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def write_result(
    exp: Experiment,
    kind: str,
    name: str,
    arrays: dict[str, tuple[list[str], np.ndarray, dict[str, Any]]],
    attrs: dict[str, Any],
) -> str:
    """Write ``analysis/<kind>/<name>`` (replacing one of that name); the ``status`` marker last.

    ``arrays``: name -> (dimension names, values, attributes). Returns the group's path.
    """
    path = f"{ANALYSIS}/{kind}/{name}"
    consolidated.drop(exp)  # a new node: the consolidated copy would miss it; written again below
    root = exp.group()
    parent = root.require_group(ANALYSIS).require_group(kind)
    g = parent.create_group(name, overwrite=True)
    g.attrs.update({"status": "writing"})
    for key, (dims, values, a) in arrays.items():
        values = np.asarray(values)
        if values.dtype.kind == "U":
            values = values.astype(str)
        fill = {"f": np.nan, "i": -1, "b": False, "U": "", "O": ""}.get(values.dtype.kind, None)
        arr = g.create_array(
            key, shape=values.shape, dtype=str if values.dtype.kind in "UO" else values.dtype,
            fill_value=fill, dimension_names=dims, attributes=a,
            chunks=_chunks(values.shape, dims),
        )
        if values.size:
            arr[...] = values
    meta = {**_jsonable(attrs), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "experiment_state": experiment_progress(exp)}
    g.attrs.update(meta)
    g.attrs.update({"status": "complete"})  # the marker, last
    consolidated.refresh(exp)
    return path


def _chunks(shape: tuple[int, ...], dims: list[str]) -> tuple[int, ...]:
    # (run, step) results chunk like the experiment's own arrays: one run per chunk
    if len(dims) >= 1 and dims[0] == "run" and shape and shape[0] > 0:
        return (1, *[max(1, s) for s in shape[1:]])
    return tuple(max(1, s) for s in shape) or ()


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def list_results(exp: Experiment, kind: str) -> dict[str, dict[str, Any]]:
    """Complete results of one kind: name -> attributes."""
    try:
        parent = exp.group(read_only=True)[f"{ANALYSIS}/{kind}"]
    except KeyError:
        return {}
    out = {}
    for name, g in parent.groups():
        if g.attrs.get("status") == "complete":
            out[name] = dict(g.attrs)
    return dict(sorted(out.items()))


def open_result(exp: Experiment, kind: str, name: str | None = None) -> zarr.Group:
    """A complete result group; with no ``name`` the only (or most recent) one of that kind."""
    found = list_results(exp, kind)
    if not found:
        raise UserError(f"experiment {exp.id} has no {kind} result; compute one first (`panicflow analyse {kind_command(kind)} {exp.id} ...`)")
    if name is None:
        name = max(found, key=lambda n: found[n].get("created_at", ""))
    elif name not in found:
        raise UserError(f"experiment {exp.id} has no complete {kind} result {name!r}; choose one of {', '.join(found)}")
    return exp.group(read_only=True)[f"{ANALYSIS}/{kind}/{name}"]


def kind_command(kind: str) -> str:
    return COMMANDS.get(kind, kind)
