"""Checking an imported experiment against its source: a content hash per run, objects, counts.

Each run's content (its steps with their legacy ids, outputs, seeds and times, its end,
the vectors, diagrams and cluster labels stored for it) is hashed twice by ``run_digest``:
from the legacy rows as they are imported (recorded in ``legacy/digest``, the run's
import marker) and, at the end, from what the store holds. The objects the rows name are
read back and hashed, and every table's rows are counted: the outcomes of a table's rows
(imported or why not) must add up to the rows the source has, and the imported ones to
what the store holds.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np

from ..store.experiment import Experiment
from .convert import IMPORTED, IMPORTED_REASON, RunData
from .schema import hyphenated

_NAN = np.float64(-1.2345e300)  # NaN's stand-in: NaN payloads are not part of the content


def _arr(h: "hashlib._Hash", a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    if a.dtype.kind == "f":
        a = np.where(np.isnan(a), _NAN, a.astype(np.float64))
    h.update(str(a.shape).encode())
    h.update(a.tobytes())


def run_digest(steps: list[tuple], end: tuple, vectors: dict[str, np.ndarray], diagrams: dict[str, tuple],
               labels: dict[str, np.ndarray]) -> str:
    """sha256 of a run's content.

    ``steps``: (legacy invocation id, model, kind, output hash, text, seed, started_us, ended_us,
    parameters hash, batch id, batch size, batch position) per step; ``end``: (stop_reason, length,
    loop_start, loop_period, error); ``vectors``: model -> (length, dim); ``diagrams``: model ->
    (status, reason, n_points, birth, death, dimension, entropy); ``labels``: clustering name ->
    (length,) labels.
    """
    h = hashlib.sha256()
    h.update(json.dumps([list(map(_plain, s)) for s in steps], ensure_ascii=False).encode())
    h.update(json.dumps(list(map(_plain, end))).encode())
    for model in sorted(vectors):
        h.update(f"vectors {model}".encode())
        _arr(h, vectors[model])
    for model in sorted(diagrams):
        status, reason, n_points, birth, death, dim, entropy = diagrams[model]
        h.update(json.dumps(["diagram", model, status, reason, int(n_points)]).encode())
        for a in (birth, death, dim, entropy):
            _arr(h, np.asarray(a))
    for name in sorted(labels):
        h.update(f"labels {name}".encode())
        _arr(h, np.asarray(labels[name], dtype=np.int32))
    return h.hexdigest()


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def source_digest(data: RunData, cluster_names: dict[str, str]) -> str:
    """The digest of a run as read from the legacy database (``cluster_names``: legacy id -> result name)."""
    steps = [(hyphenated(inv), s.model, s.kind, s.hash, s.text or "", s.seed, s.started_us, s.ended_us, s.parameters_hash,
              s.batch_id, s.batch_size, s.batch_position) for inv, s in zip(data.invocation_ids, data.steps)]
    e = data.end
    diagrams = {}
    for model, r in data.diagrams.items():
        birth = np.concatenate([d[:, 0] for d in r.diagrams]) if r.diagrams else np.zeros(0)
        death = np.concatenate([d[:, 1] for d in r.diagrams]) if r.diagrams else np.zeros(0)
        dim = np.concatenate([np.full(len(d), k, np.int8) for k, d in enumerate(r.diagrams)]) if r.diagrams else np.zeros(0, np.int8)
        entropy = np.asarray(r.entropy, dtype=np.float64)
        diagrams[model] = (r.status, r.reason, r.n_points, birth.astype(np.float64), death.astype(np.float64), dim, entropy)
    labels = {cluster_names[cl]: row for cl, row in data.labels.items()}
    return run_digest(steps, (e.stop_reason, e.length, e.loop_start, e.loop_period, e.error), data.vectors, diagrams, labels)


def stored_digest(g, run: int, models: list[str], cluster_names: list[str]) -> str:
    """The digest of a run as the store holds it (``g``: the experiment's Zarr group)."""
    n = int(g["length"][run])
    cols = {name: g[name][run, :n] for name in ("model", "kind", "output_hash", "text", "invocation_seed", "started_at",
                                                "ended_at", "parameters_hash", "batch_id", "batch_size", "batch_position")}
    ids = g["legacy/invocation_id"][run, :n]
    steps = [(str(ids[k]), str(cols["model"][k]), str(cols["kind"][k]), str(cols["output_hash"][k]), str(cols["text"][k]),
              int(cols["invocation_seed"][k]), int(cols["started_at"][k]), int(cols["ended_at"][k]),
              str(cols["parameters_hash"][k]), str(cols["batch_id"][k]), int(cols["batch_size"][k]),
              int(cols["batch_position"][k])) for k in range(n)]
    end = (str(g["stop_reason"][run]), n, int(g["loop_start"][run]), int(g["loop_period"][run]), str(g["error"][run]))
    vectors = {m: g[f"embeddings/{m}/vector"][run, :n] for m in models if g[f"embeddings/{m}/done"][run]}
    diagrams = {}
    for m in models:
        d = g[f"diagrams/{m}"]
        status = str(d["status"][run])
        if not status:
            continue
        dim = d["dimension"][run]
        p = int((dim != -1).sum())
        diagrams[m] = (status, str(d["reason"][run]), int(d["n_points"][run]), d["birth"][run][:p], d["death"][run][:p],
                       dim[:p], d["entropy"][run])
    labels = {}
    for name in cluster_names:
        row = g[f"analysis/clusters/{name}/label"][run, :n]
        if (row >= -1).any():
            labels[name] = row
    return run_digest(steps, end, vectors, diagrams, labels)


def stored_counts(g, run: int, models: list[str], cluster_names: list[str]) -> Counter:
    """Rows the store holds for one run, per source table, counted the way the import tallies them."""
    n = int(g["length"][run]) if str(g["stop_reason"][run]) else 0
    c: Counter = Counter({"invocation": n})
    for m in models:
        if g[f"embeddings/{m}/done"][run]:
            c["embedding"] += int((~np.isnan(g[f"embeddings/{m}/vector"][run, :n]).any(axis=1)).sum())
        d = g[f"diagrams/{m}"]
        c["persistencediagram"] += int(str(d["status"][run]) == "ok" and str(d["reason"][run]) == IMPORTED_REASON)
    for name in cluster_names:
        c["embeddingcluster"] += int((g[f"analysis/clusters/{name}/label"][run, :n] >= -1).sum())
    return c


def check_objects(exp: Experiment, g, run: int, parameters: set[str]) -> list[str]:
    """Every object a run's rows name exists and hashes to its name; returns the problems.
    ``parameters``: the parameters objects already checked (a few per experiment; outputs are checked per run)."""
    from ..store.objects import content_hash

    n = int(g["length"][run])
    params = set(map(str, g["parameters_hash"][run, :n])) - parameters
    names = set(map(str, g["output_hash"][run, :n])) | params
    problems = []
    for digest in sorted(names):
        key = f"objects/{digest[:2]}/{digest[2:4]}/{digest}"
        try:
            data = exp.root.read_bytes(key)
        except (FileNotFoundError, ValueError):
            problems.append(f"run {run}: object {digest[:16]}... is missing")
            continue
        if content_hash(data) != digest:
            problems.append(f"run {run}: object {digest[:16]}... does not hash to its name")
        elif digest in params:
            parameters.add(digest)
    return problems


class Arrays:
    """The arrays of a Zarr group opened once each (opening one reads its metadata)."""

    def __init__(self, group) -> None:
        self.group = group
        self._open: dict[str, Any] = {}

    def __getitem__(self, path: str):
        if path not in self._open:
            self._open[path] = self.group[path]
        return self._open[path]


def imported_counts(tally: Counter) -> Counter:
    """Imported rows per table from the tallies ((table, outcome) -> rows)."""
    return Counter({table: n for (table, outcome), n in tally.items() if outcome == IMPORTED})
