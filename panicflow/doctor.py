"""`panicflow doctor`: check experiments against the store contract, and repair what can be rebuilt.

docs/store.md is the contract and docs/doctor.md the user's guide. What is checked, per experiment:

* the Zarr metadata: every ``zarr.json`` of the layout exists, is JSON, and describes the
  node ``Experiment.create`` lays out for the stored config (shape, dtype, chunks, fill
  value, dimension names, our attributes); any other ``zarr.json`` under ``data.zarr`` parses;
* the arrays written at creation (``run``, ``step``, ``network``, ``seed``, ``prompt``);
* every chunk it reads decodes;
* runs: every step below ``length`` has ``model`` (the network's), ``kind`` (that model's
  output kind), ``output_hash``, ``text`` (texts only, hashing to ``output_hash``),
  ``invocation_seed`` (the run's seed when seeded) and timestamps; nothing after ``length``;
* stop reasons: the end is recomputed from ``output_hash`` and the seed exactly as the
  coordinator decides it (a seeded run stops at its first repeated output, with
  ``loop_start``/``loop_period``; otherwise at ``max_length``; an unseeded run never loops);
* objects: every output referenced by the rows (and by the journal) exists and hashes to its name;
* embeddings: for a run whose ``done`` is set, non-NaN rows exactly at the steps whose kind
  is the embedder's input kind; ``done`` set for every ended, non-failed run of a finished
  experiment;
* diagrams: a status for every run of a finished experiment; for a status, pairs form a
  padded prefix, entropy equals the persistent entropy of the stored pairs, ``n_points``
  equals the embedded rows; no pairs where nothing was computed;
* leftovers: journal files of a complete experiment, experiment folders whose creation
  crashed (no ``experiment.json``; only when checking the whole store).

A "finished" experiment is one whose coordinator wrote ``complete`` (or ``failed`` with
every run ended): only there are missing embeddings, diagrams or stop reasons problems;
elsewhere they are work that ``panicflow experiment resume`` still has to do.

``fix=True`` repairs in phases, re-checking after each (a repaired ``zarr.json`` can reveal
data problems behind it): 1. metadata, regenerated from the stored config; 2. chunks that
cannot be decoded are deleted (they read as fill values, i.e. missing, afterwards);
3. rows, run ends, creation arrays, objects, leftovers, from the store itself (journal,
config, surviving columns, re-running deterministic models and accepting only outputs
that hash to what the store already holds); 4. embeddings and diagrams, by clearing their
markers and letting the normal resume machinery recompute them. A problem is reported
``fixed`` when the final check no longer finds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from .config import UNSEEDED
from .errors import PanicflowError, UserError
from .models import REGISTRY, Kind
from .store import Store
from .store.experiment import INVOCATION_ARRAYS, Experiment
from .store.journal import StepRecord
from .store.root import StoreRoot

log = logging.getLogger(__name__)

PAIR_ARRAYS = ("birth", "death", "dimension")
CREATOR_ARRAYS = ("run", "step", "network", "seed", "prompt")
DIAGRAM_STATUSES = {"ok", "ok_h1_fallback", "ok_subsampled", "over_budget", "too_few_points", "run_failed", "error"}
STOP_REASONS = ("length", "loop", "failed")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_EMPTY_TEXT_HASH = hashlib.sha256(b"").hexdigest()
# the generation parameters of each invocation, a JSON object in the object store (when the layout has it)
PARAMS = "parameters_hash" if "parameters_hash" in INVOCATION_ARRAYS else None
ORPHAN_MIN_AGE_S = 600  # an experiment folder younger than this may still be being created

# Problem kinds, with the fix phase that handles them (None: reported only).
KINDS: dict[str, int | None] = {
    "experiment": None,  # experiment.json or its config unreadable: nothing else can be checked
    "journal": None,  # a journal file that does not parse
    "metadata": 1,  # a zarr.json missing, damaged, or not the layout's
    "unreadable": 2,  # a chunk that cannot be decoded
    "layout": 3,  # run/step/network/seed/prompt differ from the config
    "run_gap": 3,  # a step below length lacks a value
    "run_extra": 3,  # values after length
    "run_mismatch": 3,  # a value contradicts the config or another column
    "stop_reason": 3,  # length/stop_reason/loop_start/loop_period disagree with the outputs
    "run_unended": 3,  # no stop_reason in a finished experiment
    "object_missing": 3,
    "object_corrupt": 3,
    "journal_leftover": 3,  # journal files of a complete experiment
    "orphan": 3,  # an experiment folder without experiment.json
    "embedding_missing": 4,
    "embedding_rows": 4,
    "diagram_missing": 4,
    "diagram_inconsistent": 4,
}
PHASE_NAMES = {1: "metadata", 2: "undecodable chunks", 3: "runs and objects", 4: "embeddings and diagrams"}


# ---------------------------------------------------------------------------------------- report
@dataclass
class Problem:
    kind: str
    detail: str
    run: int | None = None
    step: int | None = None
    model: str | None = None
    path: str | None = None  # array, object key or file the problem is about
    fixed: bool = False

    @property
    def key(self) -> tuple:
        return (self.kind, self.run, self.model, self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "run": self.run, "step": self.step, "model": self.model,
            "path": self.path, "detail": self.detail, "fixed": self.fixed,
        }


@dataclass
class ExperimentReport:
    id: str
    state: str | None = None
    problems: list[Problem] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.fixed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state, "problems": [p.to_dict() for p in self.problems],
            "actions": list(self.actions),
        }


@dataclass
class DoctorReport:
    store: str
    fix: bool
    experiments: list[ExperimentReport] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for e in self.experiments for p in e.problems]

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.fixed]

    @property
    def clean(self) -> bool:
        return not self.remaining

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else 1

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for p in self.remaining:
            kinds[p.kind] += 1
        return {
            "experiments": len(self.experiments),
            "problems": len(self.problems),
            "fixed": sum(p.fixed for p in self.problems),
            "remaining": len(self.remaining),
            "remaining_by_kind": dict(kinds),
            "clean": self.clean,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "fix": self.fix,
            "experiments": [e.to_dict() for e in self.experiments], "summary": self.summary(),
        }


# ------------------------------------------------------------------------------------ helpers
def _ranges(steps: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    steps = sorted(steps)
    i = 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
            j += 1
        out.append(str(steps[i]) if i == j else f"{steps[i]}-{steps[j]}")
        i = j + 1
    if len(out) > 8:
        out = out[:8] + [f"... ({len(steps)} in all)"]
    return ", ".join(out)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _LayoutRoot(StoreRoot):
    """An in-memory root: ``Experiment.create`` lays out an experiment here, to compare against."""

    url = "memory-layout"
    is_local = False

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.zarr_dicts: dict[str, dict] = {}
        self._stores: dict[str, Any] = {}

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.files[key]
        except KeyError:
            raise FileNotFoundError(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.files[key] = bytes(data)

    def write_bytes_once(self, key: str, data: bytes) -> bool:
        if key in self.files:
            return False
        self.files[key] = bytes(data)
        return True

    def exists(self, key: str) -> bool:
        return key in self.files

    def list(self, prefix: str) -> list[str]:
        return []

    def list_dirs(self, prefix: str) -> list[str]:
        return []

    def delete(self, key: str) -> None:
        self.files.pop(key, None)

    def zarr_store(self, key: str, read_only: bool = False) -> Any:
        from zarr.storage import MemoryStore

        if key not in self._stores:
            self.zarr_dicts[key] = {}
            self._stores[key] = MemoryStore(self.zarr_dicts[key])
        return self._stores[key]

    def path_for_display(self, key: str) -> str:
        return f"<layout>/{key}"


class _Layout:
    """What ``Experiment.create`` writes for this experiment's config: metadata and creation arrays."""

    def __init__(self, exp: Experiment) -> None:
        import zarr

        root = _LayoutRoot()
        made = Experiment.create(root, exp.id, exp.config)
        self.store = root.zarr_store(made.data_key)
        files = root.zarr_dicts[made.data_key]
        self.meta: dict[str, bytes] = {k: v.to_bytes() for k, v in files.items() if k.endswith("zarr.json")}
        self.docs: dict[str, dict] = {k[: -len("zarr.json")].rstrip("/"): json.loads(v) for k, v in self.meta.items()}
        self.creator = {name: zarr.open_array(store=self.store, path=name, mode="r")[...] for name in CREATOR_ARRAYS}

    def meta_key(self, node: str) -> str:
        return f"{node}/zarr.json" if node else "zarr.json"


class _Arrays:
    """Arrays opened one by one, so that a damaged node does not hide the others."""

    def __init__(self, exp: Experiment, read_only: bool = True) -> None:
        self.read_only = read_only
        self.store = exp.root.zarr_store(exp.data_key, read_only=read_only)
        self._cache: dict[str, Any] = {}

    def get(self, path: str):
        import zarr

        a = self._cache.get(path)
        if a is None:
            a = zarr.open_array(store=self.store, path=path, mode="r" if self.read_only else "r+", zarr_format=3)
            self._cache[path] = a
        return a


def _expected_end(seeded: bool, hashes: list[str], max_length: int) -> tuple[str, int, int, int] | None:
    """(stop_reason, length, loop_start, loop_period) the coordinator decides for these outputs,
    None when they do not end the run. Mirrors ``RunState.add``."""
    seen: dict[str, int] = {}
    for k, h in enumerate(hashes):
        if seeded:
            if h in seen:
                return ("loop", k + 1, seen[h], k - seen[h])
            seen[h] = k
        if k + 1 >= max_length:
            return ("length", k + 1, -1, -1)
    return None


def _known(value: Any, fill: Any) -> Any:
    """None for a fill value (missing), else the value as a plain Python object."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if value == fill else value


# --------------------------------------------------------------------------------------- scan
@dataclass
class _Run:
    index: int
    spec: Any
    stop: str | None = None  # None: unreadable
    length: int | None = None
    loop_start: int | None = None
    loop_period: int | None = None
    error: str | None = None
    rows: dict[str, list | None] = field(default_factory=dict)  # column -> values (None: missing)
    L: int = 0  # steps the run has: length when valid, else as far as the rows go
    L_rows: int = 0
    models: list[str] = field(default_factory=list)  # expected model per step
    kinds: list[str] = field(default_factory=list)  # expected output kind per step

    @property
    def ended(self) -> bool:
        return bool(self.stop)

    @property
    def seeded(self) -> bool:
        return self.spec.seed != UNSEEDED


@dataclass
class _Scan:
    problems: list[Problem] = field(default_factory=list)
    cfg: Any = None
    layout: _Layout | None = None
    state: str = "created"
    effective: str = "created"
    finished: bool = False
    all_ended: bool = False
    bad_meta: set[str] = field(default_factory=set)  # nodes whose zarr.json is unusable
    codecs_differ: set[str] = field(default_factory=set)  # arrays whose codecs are not the layout's
    bad_chunks: dict[str, set[tuple[int, ...]]] = field(default_factory=lambda: defaultdict(set))
    runs: dict[int, _Run] = field(default_factory=dict)
    journal: dict[int, dict[int, StepRecord]] = field(default_factory=lambda: defaultdict(dict))
    journal_files: int = 0
    refs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # output digest -> (run, step)
    param_refs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # parameters JSON digest -> (run, step)
    embedded_rows: dict[tuple[int, str], int] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)

    def add(self, kind: str, detail: str, **where: Any) -> Problem:
        p = Problem(kind, detail, **where)
        self.problems.append(p)
        return p


class _ExperimentDoctor:
    def __init__(self, store: Store, exp: Experiment, say: Callable[[str], None], resume: Callable[[Experiment], None]):
        self.store = store
        self.root = store.root
        self.exp = exp
        self.say = say
        self._resume = resume
        self.verified: set[str] = set()  # digests checked good (objects are immutable)
        self.notes: dict[tuple, list[str]] = defaultdict(list)
        self.actions: list[str] = []

    # ================================================================= checking
    def scan(self) -> _Scan:
        s = _Scan()
        exp = self.exp
        try:
            s.cfg = exp.config
        except PanicflowError as exc:
            s.add("experiment", str(exc), path=f"{exp.prefix}/experiment.json")
            return s
        except Exception as exc:  # noqa: BLE001 - never crash on a damaged store
            s.add("experiment", f"experiment.json cannot be read: {_short(exc)}", path=f"{exp.prefix}/experiment.json")
            return s
        try:
            s.state = str(exp.read_state().get("state"))
            s.effective = exp.effective_state()
        except Exception as exc:  # noqa: BLE001
            s.state = s.effective = "unknown"
            log.debug("state unreadable: %s", exc)
        try:
            s.layout = _Layout(exp)
        except Exception as exc:  # noqa: BLE001
            s.add("experiment", f"cannot lay out the stored config to compare against: {_short(exc)}")
            return s
        self._check_metadata(s)
        z = _Arrays(exp)
        self._check_creator_arrays(s, z)
        self._read_journal(s)
        self._read_runs(s, z)
        for r in s.runs.values():
            try:
                self._check_run(s, r)
            except Exception as exc:  # noqa: BLE001
                s.add("unreadable", f"checking run {r.index} failed: {_short(exc)}", run=r.index)
        self._check_objects(s)
        self._check_embeddings(s, z)
        self._check_diagrams(s, z)
        if s.state == "complete" and s.journal_files:
            s.add("journal_leftover", f"{s.journal_files} journal file(s) left in a complete experiment (harmless)",
                  path=f"{exp.prefix}/journal")
        return s

    # ------------------------------------------------------------- metadata
    def _check_metadata(self, s: _Scan) -> None:
        layout = s.layout
        for node, want in sorted(layout.docs.items()):
            key = f"{self.exp.data_key}/{layout.meta_key(node)}"
            where = {"path": node or "/"}
            try:
                raw = self.root.read_bytes(key)
            except FileNotFoundError:
                s.add("metadata", f"{layout.meta_key(node)} is missing", **where)
                s.bad_meta.add(node)
                continue
            except Exception as exc:  # noqa: BLE001
                s.add("metadata", f"{layout.meta_key(node)} cannot be read: {_short(exc)}", **where)
                s.bad_meta.add(node)
                continue
            try:
                doc = json.loads(raw)
                if not isinstance(doc, dict):
                    raise TypeError("not a JSON object")
            except (ValueError, TypeError) as exc:
                s.add("metadata", f"{layout.meta_key(node)} is damaged (not JSON: {_short(exc)})", **where)
                s.bad_meta.add(node)
                continue
            diff = self._meta_diff(node, doc, want)
            if diff:
                s.add("metadata", f"{layout.meta_key(node)} differs from the layout: {diff}", **where)
                s.bad_meta.add(node)
            elif want.get("node_type") == "array" and doc.get("codecs") != want.get("codecs"):
                s.codecs_differ.add(node)
        # any other zarr.json under data.zarr must at least parse
        for key in self._walk_meta(""):
            node = key[: -len("zarr.json")].rstrip("/")
            if node in layout.docs:
                continue
            try:
                json.loads(self.root.read_bytes(f"{self.exp.data_key}/{key}"))
            except Exception as exc:  # noqa: BLE001
                s.add("metadata", f"{key} (not part of the layout) is damaged: {_short(exc)}", path=node)

    def _walk_meta(self, prefix: str, depth: int = 0) -> list[str]:
        """zarr.json keys under data.zarr, not descending into chunk folders."""
        base = f"{self.exp.data_key}/{prefix}".rstrip("/")
        out = []
        try:
            if "zarr.json" in self.root.list(base):
                out.append(f"{prefix}zarr.json")
            if depth < 6:
                for d in self.root.list_dirs(base):
                    if d != "c":
                        out.extend(self._walk_meta(f"{prefix}{d}/", depth + 1))
        except Exception as exc:  # noqa: BLE001 - a folder that cannot be listed: its nodes are checked one by one
            log.debug("cannot list %s: %s", base, exc)
        return out

    @staticmethod
    def _is_pair_array(node: str) -> bool:
        parts = node.split("/")
        return len(parts) == 3 and parts[0] == "diagrams" and parts[2] in PAIR_ARRAYS

    def _meta_diff(self, node: str, doc: dict, want: dict) -> str:
        bad = []
        for key, value in want.items():
            if key == "codecs":
                continue  # zarr versions may spell codecs differently; decoding the chunks checks them
            got = doc.get(key)
            if key == "attributes":  # ours must be there (units, calendar, model...); descriptions are prose
                if not isinstance(got, dict) or any(got.get(k) != v for k, v in value.items() if k != "description"):
                    bad.append(key)
            elif key == "shape" and self._is_pair_array(node):
                if not (isinstance(got, list) and len(got) == 2 and got[0] == value[0] and isinstance(got[1], int) and got[1] >= 1):
                    bad.append(key)
            elif got != value:
                bad.append(key)
        return ", ".join(bad)

    # ------------------------------------------------------- reading arrays
    def _array(self, s: _Scan, z: _Arrays, path: str):
        if path in s.bad_meta:
            return None
        try:
            return z.get(path)
        except Exception as exc:  # noqa: BLE001
            s.add("metadata", f"{path}: cannot be opened: {_short(exc)}", path=path)
            s.bad_meta.add(path)
            return None

    def _read_per_run(self, s: _Scan, z: _Arrays, path: str) -> np.ndarray | None:
        """A run-chunked array whole; undecodable chunks read as fill values (and are reported)."""
        a = self._array(s, z, path)
        if a is None:
            return None
        try:
            return a[...]
        except Exception as exc:  # noqa: BLE001 - read run by run below, to find the bad chunks
            log.debug("%s: reading run by run: %s", path, exc)
        out = np.empty(a.shape, dtype=object)
        out[...] = a.fill_value.item() if isinstance(a.fill_value, np.generic) else a.fill_value
        for r in range(a.shape[0]):
            row = self._read_row(s, a, path, r)
            if row is not None:
                out[r] = row
        return out

    def _read_row(self, s: _Scan, a, path: str, r: int):
        """Row ``r``; chunk by chunk when a chunk does not decode (those parts read as fill values).
        None for a 1-D array whose chunk does not decode."""
        try:
            return a[r]
        except Exception as exc:  # noqa: BLE001
            first = exc
        shape, chunks = a.shape[1:], a.chunks[1:]
        if not shape:
            self._bad_chunk(s, a, path, (r // a.chunks[0],), first)
            return None
        row = np.empty(shape, dtype=object)
        row[...] = a.fill_value.item() if isinstance(a.fill_value, np.generic) else a.fill_value
        counts = [-(-n // c) for n, c in zip(shape, chunks)]
        for coords in np.ndindex(*counts):
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, shape))
            try:
                row[region] = a[(r, *region)]
            except Exception as exc:  # noqa: BLE001
                self._bad_chunk(s, a, path, (r // a.chunks[0], *coords), exc)
        return row

    def _bad_chunk(self, s: _Scan, a, path: str, coords: tuple[int, ...], exc: BaseException) -> None:
        try:
            key = a.metadata.encode_chunk_key(coords)
        except Exception:  # noqa: BLE001
            key = "c/" + "/".join(map(str, coords))
        s.bad_chunks[path].add(coords)
        s.add("unreadable", f"chunk {path}/{key} cannot be decoded: {_short(exc)}", run=int(coords[0]), path=f"{path}/{key}")

    def _check_creator_arrays(self, s: _Scan, z: _Arrays) -> None:
        for name in CREATOR_ARRAYS:
            a = self._array(s, z, name)
            if a is None:
                continue
            try:
                got = a[...]
            except Exception as exc:  # noqa: BLE001
                self._bad_chunk(s, a, name, (0,) * len(a.shape), exc)
                continue
            want = s.layout.creator[name]
            if got.shape != want.shape or not np.array_equal(np.asarray(got.tolist(), dtype=object), np.asarray(want.tolist(), dtype=object)):
                s.add("layout", f"{name} differs from the experiment's config", path=name)

    def _read_journal(self, s: _Scan) -> None:
        prefix = f"{self.exp.prefix}/journal"
        try:
            names = [n for n in self.root.list(prefix) if n.endswith(".jsonl")]
        except Exception as exc:  # noqa: BLE001
            s.add("journal", f"the journal cannot be listed: {_short(exc)}", path=prefix)
            return
        s.journal_files = len(names)
        for name in names:
            try:
                data = self.root.read_bytes(f"{prefix}/{name}")
            except FileNotFoundError:
                continue  # cleared meanwhile
            except Exception as exc:  # noqa: BLE001
                s.add("journal", f"journal file {name} cannot be read: {_short(exc)}", path=f"{prefix}/{name}")
                continue
            try:
                records = []
                for line in data.decode("utf-8").splitlines():
                    obj = json.loads(line)
                    if obj.pop("type") == "step":
                        records.append(StepRecord(**obj))
            except Exception as exc:  # noqa: BLE001
                s.add("journal", f"journal file {name} is damaged: {_short(exc)}", path=f"{prefix}/{name}")
                continue
            for rec in records:
                s.journal[rec.run].setdefault(rec.step, rec)

    def _read_runs(self, s: _Scan, z: _Arrays) -> None:
        cfg = s.cfg
        n_steps = cfg.max_length
        ends = {name: self._read_per_run(s, z, name) for name in ("stop_reason", "length", "loop_start", "loop_period", "error")}
        for spec in cfg.runs():
            r = _Run(spec.index, spec)
            r.models = [spec.model_at(k) for k in range(n_steps)]
            r.kinds = [REGISTRY[m].output_kind.value for m in r.models]
            for name, values in ends.items():
                value = None if values is None else values[spec.index]
                if isinstance(value, np.generic):
                    value = value.item()
                setattr(r, {"stop_reason": "stop"}.get(name, name), value)
            s.runs[spec.index] = r
        stops = [r.stop for r in s.runs.values()]
        s.all_ended = all(stops)
        s.finished = s.state == "complete" or (s.state == "failed" and s.all_ended)
        # rows: after the markers, so that a running experiment is read consistently
        arrays = {name: self._array(s, z, name) for name in INVOCATION_ARRAYS}
        for r in s.runs.values():
            for name, a in arrays.items():
                if a is None:
                    r.rows[name] = None
                    continue
                row = self._read_row(s, a, name, r.index)
                fill = INVOCATION_ARRAYS[name][1]
                r.rows[name] = [None] * n_steps if row is None else [_known(v, fill) for v in row.tolist()]
            r.L_rows = self._rows_extent(r)
            if isinstance(r.length, int) and 0 <= r.length <= n_steps and r.ended:
                r.L = r.length
            else:
                r.L = r.L_rows

    @staticmethod
    def _rows_extent(r: _Run) -> int:
        last = -1
        for name in ("model", "kind", "output_hash", "invocation_seed", "started_at", "ended_at"):
            vals = r.rows.get(name)
            if vals:
                for k in range(len(vals) - 1, last, -1):
                    if vals[k] is not None:
                        last = k
                        break
        return last + 1

    # ---------------------------------------------------------------- runs
    def _check_run(self, s: _Scan, r: _Run) -> None:
        i, n_steps = r.index, s.cfg.max_length
        if r.stop is None:
            return  # stop_reason unreadable: reported already
        if not r.ended:
            if s.finished:
                s.add("run_unended", f"run {i} has no stop_reason in a finished experiment", run=i, path="stop_reason")
            for k, h in enumerate(r.rows.get("output_hash") or []):  # flushed rows of a running run
                if h is not None and _DIGEST_RE.fullmatch(str(h)):
                    s.refs.setdefault(h, []).append((i, k))
            for k, h in enumerate((r.rows.get(PARAMS) or []) if PARAMS else []):
                if h is not None and _DIGEST_RE.fullmatch(str(h)):
                    s.param_refs.setdefault(h, []).append((i, k))
            for k, rec in s.journal.get(i, {}).items():
                if _DIGEST_RE.fullmatch(rec.hash):
                    s.refs.setdefault(rec.hash, []).append((i, k))
                ph = getattr(rec, "parameters_hash", "")
                if ph and _DIGEST_RE.fullmatch(ph):
                    s.param_refs.setdefault(ph, []).append((i, k))
            return
        L = r.L
        if r.stop not in STOP_REASONS:
            s.add("stop_reason", f"run {i}: unknown stop_reason {r.stop!r}", run=i, path="stop_reason")
        if not (isinstance(r.length, int) and 0 <= r.length <= n_steps):
            s.add("stop_reason", f"run {i} ended ({r.stop}) but its length is {r.length} (the rows go to step {r.L_rows - 1})",
                  run=i, path="length")
        rows = r.rows
        hashes = rows.get("output_hash")
        texts = rows.get("text")
        for name, values in rows.items():
            if values is None:
                continue
            fill_missing = []
            for k in range(L):
                v = values[k]
                if name == "text":
                    if r.kinds[k] == Kind.TEXT.value and v is None:
                        h = hashes[k] if hashes else None
                        if h != _EMPTY_TEXT_HASH:
                            fill_missing.append(k)
                elif v is None:
                    fill_missing.append(k)
            if fill_missing:
                s.add("run_gap", f"run {i}: {name} is missing at step(s) {_ranges(fill_missing)} (length {L})",
                      run=i, step=fill_missing[0], path=name)
            extra = [k for k in range(L, n_steps) if values[k] is not None]
            if extra:
                s.add("run_extra", f"run {i}: {name} has values after its length {L}, at step(s) {_ranges(extra)}",
                      run=i, step=extra[0], path=name)
        wrong: dict[str, list[int]] = defaultdict(list)
        for k in range(L):
            if rows.get("model") and rows["model"][k] is not None and rows["model"][k] != r.models[k]:
                wrong["model"].append(k)
            if rows.get("kind") and rows["kind"][k] is not None and rows["kind"][k] != r.kinds[k]:
                wrong["kind"].append(k)
            seed = rows["invocation_seed"][k] if rows.get("invocation_seed") else None
            if seed is not None and ((r.seeded and seed != r.spec.seed) or seed < 0):
                wrong["invocation_seed"].append(k)
            h = hashes[k] if hashes else None
            if h is not None and not _DIGEST_RE.fullmatch(str(h)):
                wrong["output_hash"].append(k)
            ph = rows[PARAMS][k] if PARAMS and rows.get(PARAMS) else None
            if ph is not None and not _DIGEST_RE.fullmatch(str(ph)):
                wrong[PARAMS].append(k)
            if texts:
                t = texts[k]
                if r.kinds[k] == Kind.IMAGE.value and t is not None or r.kinds[k] == Kind.TEXT.value and t is not None and h is not None and _sha(t.encode("utf-8")) != h:
                    wrong["text"].append(k)
            if rows.get("started_at") and rows.get("ended_at"):
                a, b = rows["started_at"][k], rows["ended_at"][k]
                if a is not None and b is not None and b < a:
                    wrong["ended_at"].append(k)
        for name, ks in wrong.items():
            why = {
                "model": "is not the network's model", "kind": "is not the model's output kind",
                "invocation_seed": f"is not the run's seed {r.spec.seed}" if r.seeded else "is negative",
                "output_hash": "is not a sha256 hex digest", "parameters_hash": "is not a sha256 hex digest",
                "text": "does not match the output (a text must hash to output_hash; images have none)",
                "ended_at": "is before started_at",
            }[name]
            s.add("run_mismatch", f"run {i}: {name} {why} at step(s) {_ranges(ks)}", run=i, step=ks[0], path=name)
        if hashes is not None:
            for k in range(L):
                h = hashes[k]
                if h is not None and _DIGEST_RE.fullmatch(str(h)):
                    s.refs.setdefault(h, []).append((i, k))
        if PARAMS and rows.get(PARAMS) is not None:
            for k in range(L):
                h = rows[PARAMS][k]
                if h is not None and _DIGEST_RE.fullmatch(str(h)):
                    s.param_refs.setdefault(h, []).append((i, k))
        # the stop rule, recomputed from the outputs
        if hashes is None or any(h is None for h in hashes[:L]) or r.stop not in STOP_REASONS:
            return
        expected = _expected_end(r.seeded, list(hashes[:L]), n_steps)
        stored = (r.stop, r.length, r.loop_start, r.loop_period)
        issues = []
        if r.stop == "failed":
            if expected is not None:
                issues.append(f"marked failed, but its outputs end it ({expected[0]}) after {expected[1]} step(s)")
            if not r.error:
                issues.append("failed without an error")
            if (r.loop_start, r.loop_period) != (-1, -1):
                issues.append(f"loop_start/loop_period are {r.loop_start}/{r.loop_period} for a failed run")
        elif expected is None:
            what = "an unseeded run must reach" if not r.seeded else "no repeated output, so it must reach"
            issues.append(f"stopped ({r.stop}) after {L} step(s); {what} max_length {n_steps}")
        elif expected[1] < L:
            issues.append(f"went on after its output at step {expected[1] - 1} repeated step {expected[2]}"
                          if expected[0] == "loop" else f"has {L} steps, more than max_length")
        elif stored != expected:
            issues.append(
                "stored (stop_reason, length, loop_start, loop_period) = "
                f"({r.stop}, {r.length}, {r.loop_start}, {r.loop_period}), its outputs give "
                f"({expected[0]}, {expected[1]}, {expected[2]}, {expected[3]})"
            )
        elif r.error:
            issues.append(f"ended ({r.stop}) with an error {r.error!r}")
        if r.stop == "loop" and not r.seeded:
            issues.append("an unseeded run never stops on a loop")
        if issues:
            s.add("stop_reason", f"run {i}: " + "; ".join(issues), run=i, path="stop_reason")

    # ------------------------------------------------------------- objects
    def _check_objects(self, s: _Scan) -> None:
        digests = [d for d in {**s.refs, **s.param_refs} if d not in self.verified]

        def check(digest: str) -> tuple[str, str, str]:
            key = self.store.objects.key_for(digest)
            try:
                data = self.root.read_bytes(key)
            except FileNotFoundError:
                return digest, "object_missing", "missing"
            except Exception as exc:  # noqa: BLE001
                return digest, "object_corrupt", f"cannot be read: {_short(exc)}"
            if _sha(data) != digest:
                return digest, "object_corrupt", f"its bytes hash to {_sha(data)[:12]}..., not to its name"
            return digest, "ok", ""

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(check, digests))
        for digest, status, why in results:
            if status == "ok":
                self.verified.add(digest)
                continue
            refs = s.refs.get(digest) or s.param_refs[digest]
            run, step = refs[0]
            r = s.runs.get(run)
            model = r.models[step] if r else None
            kind = (r.kinds[step] if r else "?") if digest in s.refs else "parameters"
            more = f" (and {len(refs) - 1} other reference(s))" if len(refs) > 1 else ""
            s.add(status, f"{kind} object {digest[:16]}... of run {run} step {step}{more}: {why}",
                  run=run, step=step, model=model, path=self.store.objects.key_for(digest))

    # ---------------------------------------------------------- embeddings
    def _check_embeddings(self, s: _Scan, z: _Arrays) -> None:
        for m in s.cfg.embedding_models:
            done = self._read_per_run(s, z, f"embeddings/{m}/done")
            if done is None:
                continue
            vec = self._array(s, z, f"embeddings/{m}/vector")
            input_kind = REGISTRY[m].input_kind.value
            for r in s.runs.values():
                if not r.ended or r.stop == "failed":
                    if r.stop == "failed" and bool(done[r.index]):
                        s.add("embedding_rows", f"run {r.index} failed, yet {m} is marked done", run=r.index, model=m,
                              path=f"embeddings/{m}/done")
                    continue
                if not bool(done[r.index]):
                    if s.finished:
                        s.add("embedding_missing", f"run {r.index} ended ({r.stop}) but its {m} embeddings are not done",
                              run=r.index, model=m, path=f"embeddings/{m}/done")
                    continue
                if vec is None:
                    continue
                before = len(s.problems)
                rows = self._read_row(s, vec, f"embeddings/{m}/vector", r.index)
                if rows is None or len(s.problems) > before:
                    continue  # undecodable chunks: reported, and --fix deletes them first
                rows = np.asarray(rows, dtype=np.float64)
                nan = np.isnan(rows)
                present, partial = ~nan.any(axis=1), nan.any(axis=1) & ~nan.all(axis=1)
                want = np.zeros(len(rows), dtype=bool)
                want[: r.L] = [k == input_kind for k in r.kinds[: r.L]]
                missing = np.flatnonzero(want & ~present)
                extra = np.flatnonzero(present & ~want)
                s.embedded_rows[(r.index, m)] = int(present.sum())
                if len(missing) or len(extra) or partial.any():
                    parts = []
                    if len(missing):
                        parts.append(f"no vector at step(s) {_ranges(missing.tolist())}")
                    if len(extra):
                        parts.append(f"vectors where {m} does not apply, at step(s) {_ranges(extra.tolist())}")
                    if partial.any():
                        parts.append(f"partly NaN vectors at step(s) {_ranges(np.flatnonzero(partial).tolist())}")
                    s.add("embedding_rows", f"run {r.index} / {m}: " + "; ".join(parts), run=r.index, model=m,
                          step=int((missing.tolist() + extra.tolist() + [0])[0]), path=f"embeddings/{m}/vector")

    # ------------------------------------------------------------ diagrams
    def _check_diagrams(self, s: _Scan, z: _Arrays) -> None:
        from .analysis.topology import persistent_entropy

        maxdim = s.cfg.persistence.maxdim
        for m in s.cfg.embedding_models:
            d = f"diagrams/{m}"
            status = self._read_per_run(s, z, f"{d}/status")
            if status is None:
                continue
            entropy = self._read_per_run(s, z, f"{d}/entropy")
            n_points = self._read_per_run(s, z, f"{d}/n_points")
            pairs = {name: self._array(s, z, f"{d}/{name}") for name in PAIR_ARRAYS}
            for r in s.runs.values():
                i = r.index
                st = str(status[i])
                if not r.ended:
                    continue
                if not st:
                    if s.finished:
                        s.add("diagram_missing", f"run {i} / {m}: no persistence diagram (empty status)",
                              run=i, model=m, path=f"{d}/status")
                    continue
                issues = []
                if st not in DIAGRAM_STATUSES:
                    issues.append(f"unknown status {st!r}")
                if r.stop == "failed" and st != "run_failed":
                    issues.append(f"status {st!r} for a failed run")
                if entropy is None or n_points is None or any(a is None for a in pairs.values()):
                    if issues:
                        s.add("diagram_inconsistent", f"run {i} / {m}: " + "; ".join(issues), run=i, model=m, path=f"{d}/status")
                    continue
                before = len(s.problems)
                rows = {name: self._read_row(s, a, f"{d}/{name}", i) for name, a in pairs.items()}
                if len(s.problems) > before or any(v is None for v in rows.values()):
                    continue  # undecodable chunks: reported, and --fix deletes them first
                birth = np.asarray(rows["birth"], dtype=np.float64)
                death = np.asarray(rows["death"], dtype=np.float64)
                dim = np.asarray(rows["dimension"], dtype=np.int64)
                n = int((dim != -1).sum())
                ent = np.asarray(entropy[i], dtype=np.float64)
                if (dim[:n] == -1).any() or (dim[n:] != -1).any():
                    issues.append("pairs are not a padded prefix")
                elif np.isnan(birth[:n]).any() or np.isnan(death[:n]).any() or not np.isnan(birth[n:]).all() or not np.isnan(death[n:]).all():
                    issues.append("birth/death do not match the dimensions of the pairs")
                elif (dim[:n] > maxdim).any() or (dim[:n] < -1).any():
                    issues.append(f"pair dimensions outside 0..{maxdim}")
                elif st.startswith("ok"):
                    for k in range(maxdim + 1):
                        sel = dim[:n] == k
                        e = ent[k] if k < len(ent) else np.nan
                        if np.isnan(e):
                            if sel.any():
                                issues.append(f"H{k} has {int(sel.sum())} pairs but no entropy")
                            continue
                        try:
                            want = persistent_entropy([np.stack([birth[:n][sel], death[:n][sel]], axis=1)])[0]
                        except ValueError as exc:
                            issues.append(f"H{k}: {exc}")
                            continue
                        if not np.isclose(e, want, rtol=1e-9, atol=1e-12):
                            issues.append(f"H{k} entropy {float(e)!r} but its pairs give {float(want)!r}")
                    npts = int(n_points[i])
                    if npts >= 2 and not (dim[:n] == 0).any():
                        issues.append(f"no H0 pairs for {npts} points")
                    emb = s.embedded_rows.get((i, m))
                    if emb is not None and npts != emb:
                        issues.append(f"n_points {npts} but {emb} embedded rows")
                else:
                    if n:
                        issues.append(f"{n} pairs stored with status {st!r}")
                    if not np.isnan(ent).all():
                        issues.append(f"entropy stored with status {st!r}")
                if issues:
                    s.add("diagram_inconsistent", f"run {i} / {m}: " + "; ".join(issues), run=i, model=m, path=f"{d}/status")

    # ================================================================== fixing
    def note(self, p: Problem, text: str) -> None:
        if text not in self.notes[p.key]:
            self.notes[p.key].append(text)

    def act(self, text: str) -> None:
        self.actions.append(text)
        self.say(f"{self.exp.id}: {text}")

    def fix_phase(self, phase: int, problems: list[Problem], s: _Scan) -> None:
        if phase == 1:
            self._fix_metadata(problems, s)
        elif phase == 2:
            self._fix_chunks(problems, s)
        elif phase == 3:
            self._fix_runs_and_objects(problems, s)
        elif phase == 4:
            self._fix_derived(problems, s)

    # ---------------------------------------------------------- metadata
    def _fix_metadata(self, problems: list[Problem], s: _Scan) -> None:
        import zarr

        layout = s.layout
        for p in problems:
            node = "" if p.path in ("/", None) else p.path
            if node not in layout.docs:
                self.note(p, "not part of the layout: cannot be regenerated")
                continue
            key = f"{self.exp.data_key}/{layout.meta_key(node)}"
            data = layout.meta[layout.meta_key(node)]
            if self._is_pair_array(node):
                model = node.split("/")[1]
                cap, how = self._pair_capacity(s, model)
                doc = json.loads(data)
                if doc["shape"][1] != cap:
                    doc["shape"][1] = cap
                    data = json.dumps(doc, indent=2).encode()
                self.note(p, f"pair capacity {cap} ({how})")
            try:
                old = self.root.read_bytes(key)
            except Exception:  # noqa: BLE001
                old = None
            try:
                self.root.write_bytes(key, data)
                store = self.root.zarr_store(self.exp.data_key, read_only=True)
                if layout.docs[node].get("node_type") == "array":
                    a = zarr.open_array(store=store, path=node, mode="r", zarr_format=3)
                    if a.shape and a.shape[0]:
                        a[0]  # the chunks must decode with the regenerated codecs
                else:
                    zarr.open_group(store=store, path=node, mode="r", zarr_format=3)
            except Exception as exc:  # noqa: BLE001
                if old is not None:
                    try:
                        self.root.write_bytes(key, old)
                    except Exception as restore_exc:  # noqa: BLE001
                        self.note(p, f"could not put the old file back: {_short(restore_exc)}")
                self.note(p, f"regenerated metadata does not read the stored chunks ({_short(exc)}); left as it was")
                continue
            self.act(f"regenerated {layout.meta_key(node)}")

    def _pair_capacity(self, s: _Scan, model: str) -> tuple[int, str]:
        """The (resizable) pair dimension of diagrams/<model>: from a readable sibling, else the chunk files."""
        d = f"diagrams/{model}"
        for name in PAIR_ARRAYS:
            node = f"{d}/{name}"
            if node in s.bad_meta:
                continue
            try:
                shape = json.loads(self.root.read_bytes(f"{self.exp.data_key}/{node}/zarr.json"))["shape"]
                return int(shape[1]), f"from {name}"
            except Exception as exc:  # noqa: BLE001
                log.debug("%s: no shape from its metadata: %s", node, exc)
        want = s.layout.docs[f"{d}/birth"]
        cap = int(want["shape"][1])
        chunk = int(want["chunk_grid"]["configuration"]["chunk_shape"][1])
        for name in PAIR_ARRAYS:
            base = f"{self.exp.data_key}/{d}/{name}/c"
            try:
                for run_dir in self.root.list_dirs(base):
                    for j in self.root.list(f"{base}/{run_dir}"):
                        if j.isdigit():
                            cap = max(cap, (int(j) + 1) * chunk)
            except Exception as exc:  # noqa: BLE001
                log.debug("%s: cannot list its chunks: %s", base, exc)
        return cap, "inferred from the chunk files"

    # -------------------------------------------------------------- chunks
    def _fix_chunks(self, problems: list[Problem], s: _Scan) -> None:
        for p in problems:
            path = p.path or ""
            array = next((a for a in s.bad_chunks if path.startswith(a + "/c/") or path == a), None)
            if array is None:
                self.note(p, "no chunk to delete")
                continue
            if array in s.codecs_differ:
                self.note(p, "the array's codecs differ from this panicflow's layout; not deleting its chunks")
                continue
            try:
                self.root.delete(f"{self.exp.data_key}/{path}")
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"cannot delete it: {_short(exc)}")
                continue
            self.act(f"deleted undecodable chunk {path} (it now reads as missing and is rebuilt below)")

    # ------------------------------------------------- runs and objects
    def _fix_runs_and_objects(self, problems: list[Problem], s: _Scan) -> None:
        z = _Arrays(self.exp, read_only=False)
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for p in problems:
            by_kind[p.kind].append(p)
        for p in by_kind.get("layout", []):
            try:
                z.get(p.path)[...] = s.layout.creator[p.path]
                self.act(f"rewrote {p.path} from the config")
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"rewrite failed: {_short(exc)}")
        run_kinds = ("run_gap", "run_extra", "run_mismatch", "stop_reason", "run_unended")
        runs: dict[int, list[Problem]] = defaultdict(list)
        for kind in run_kinds:
            for p in by_kind.get(kind, []):
                runs[p.run].append(p)
        for i, ps in sorted(runs.items()):
            try:
                notes = self._repair_run(s, z, s.runs[i])
            except Exception as exc:  # noqa: BLE001
                notes = [f"repair failed: {_short(exc)}"]
            for p in ps:
                for text in notes:
                    self.note(p, text)
        broken = by_kind.get("object_missing", []) + by_kind.get("object_corrupt", [])
        for p in sorted(broken, key=lambda p: (p.run or 0, p.step or 0)):
            try:
                self._repair_object(s, p)
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"repair failed: {_short(exc)}")
        for p in by_kind.get("journal_leftover", []):
            try:
                self.exp.journal.clear()
                self.act("deleted the journal left in a complete experiment")
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"cannot delete it: {_short(exc)}")

    def _object_ok(self, digest: str) -> bool:
        if digest in self.verified:
            return True
        if self.store.objects.verify(digest):
            self.verified.add(digest)
            return True
        return False

    def _generate(self, model: str, value: Any, seed: int) -> tuple[bytes, Any]:
        """One model call as the scheduler makes it: (stored bytes, what the next model sees)."""
        from .models.cache import get_model
        from .store.objects import decode_image, encode_image

        out = get_model(model).generate([value], [int(seed)])[0]
        if REGISTRY[model].output_kind is Kind.TEXT:
            return out.encode("utf-8"), out
        data = encode_image(out)
        return data, decode_image(data)

    @staticmethod
    def _parameters_json(model: str) -> bytes:
        """The parameters object of an invocation of ``model``, as ``tasks.invoke_batch`` stores it."""
        from .models.cache import get_model

        params = json.dumps({"model": model, **get_model(model).parameters()}, sort_keys=True, default=str)
        return params.encode("utf-8")

    def _input_of(self, r: _Run, k: int, hashes: list, texts: list, cache: dict[int, Any]) -> Any:
        """What the model of step k saw: the prompt, the previous text, or the previous image as stored."""
        if k == 0:
            return r.spec.prompt
        if r.kinds[k - 1] == Kind.TEXT.value:
            if texts[k - 1] is None and hashes[k - 1] == _EMPTY_TEXT_HASH:
                return ""
            return texts[k - 1]
        if k - 1 in cache:
            return cache[k - 1]
        h = hashes[k - 1]
        if h is None or not self._object_ok(h):
            return None
        return self.store.objects.get_image(h)

    def _repair_run(self, s: _Scan, z: _Arrays, r: _Run) -> list[str]:
        """Rebuild a run's rows and end from the journal, the config, the surviving columns and
        deterministic re-runs checked against the objects in the store."""
        notes: list[str] = []
        n_steps = s.cfg.max_length
        i = r.index
        cols = {name: (list(vals) if vals is not None else None) for name, vals in r.rows.items()}
        if any(v is None for v in cols.values()):
            return ["some (run, step) arrays cannot be opened; fix their metadata first"]
        # how many steps: the length, unless the rows alone end the run consistently elsewhere
        L = r.L
        if r.L_rows != L and not s.journal.get(i):
            hs = cols["output_hash"][: r.L_rows]
            if all(h is not None for h in hs):
                end = _expected_end(r.seeded, hs, n_steps)
                if end is not None and end[1] == r.L_rows:
                    L = r.L_rows
        if not r.ended and s.journal.get(i):
            L = max(L, max(s.journal[i]) + 1)
        hashes, texts, seeds = cols["output_hash"], cols["text"], cols["invocation_seed"]
        # 1. the journal, exact where it still holds the steps
        for k, rec in s.journal.get(i, {}).items():
            if k >= n_steps:
                continue
            for name, value in (("output_hash", rec.hash), ("text", rec.text if rec.kind == Kind.TEXT.value else None),
                                ("invocation_seed", rec.seed), ("started_at", rec.started_us), ("ended_at", rec.ended_us),
                                (PARAMS, getattr(rec, "parameters_hash", "") or None)):
                if name and value is not None and cols[name][k] is None:
                    cols[name][k] = value
        # 2. the config decides model, kind and (seeded runs) the seed
        for k in range(L):
            cols["model"][k] = r.models[k]
            cols["kind"][k] = r.kinds[k]
            if r.seeded:
                seeds[k] = r.spec.seed
            if r.kinds[k] == Kind.IMAGE.value:
                texts[k] = None
            if hashes[k] is not None and not _DIGEST_RE.fullmatch(str(hashes[k])):
                hashes[k] = None
        # 3. texts and their hashes from each other, or from the text objects
        for k in range(L):
            if r.kinds[k] != Kind.TEXT.value:
                continue
            t, h = texts[k], hashes[k]
            if t is not None and h is not None and _sha(t.encode("utf-8")) != h:
                if self._object_ok(h):
                    texts[k] = self.store.objects.get_bytes(h).decode("utf-8")
                elif self.store.objects.exists(_sha(t.encode("utf-8"))):
                    hashes[k] = _sha(t.encode("utf-8"))
                else:
                    notes.append(f"step {k}: text and output_hash disagree and neither is confirmed by an object")
            elif t is None and h is not None:
                if h == _EMPTY_TEXT_HASH:
                    texts[k] = ""
                elif self._object_ok(h):
                    texts[k] = self.store.objects.get_bytes(h).decode("utf-8")
            elif h is None and t is not None:
                hashes[k] = _sha(t.encode("utf-8"))
        # 4. re-run the models where an output is still unknown, keeping only outputs the store holds
        cache: dict[int, Any] = {}
        rerun, failed = [], []
        for k in range(L):
            if hashes[k] is not None:
                continue
            value = self._input_of(r, k, hashes, texts, cache)
            seed = seeds[k]
            if value is None or seed is None:
                failed.append(k)
                continue
            try:
                data, nxt = self._generate(r.models[k], value, seed)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"step {k}: re-running {r.models[k]} failed: {_short(exc)}")
                failed.append(k)
                continue
            digest = _sha(data)
            if not self._object_ok(digest):
                notes.append(f"step {k}: re-running {r.models[k]} (seed {seed}) gave an output the store does not hold "
                             "(a non-deterministic model?)")
                failed.append(k)
                continue
            hashes[k] = digest
            if r.kinds[k] == Kind.TEXT.value:
                texts[k] = nxt
            else:
                cache[k] = nxt
            rerun.append(k)
        if rerun:
            self.act(f"run {i}: re-ran step(s) {_ranges(rerun)} and matched their outputs with the store")
        if failed:
            notes.append(f"output of step(s) {_ranges(failed)} cannot be rebuilt (input or seed unknown, or not reproducible)")
        if PARAMS:  # the parameters object of a model: what it reports, if the store holds exactly that
            params: dict[str, str | None] = {}
            for k in range(L):
                if cols[PARAMS][k] is not None and not _DIGEST_RE.fullmatch(str(cols[PARAMS][k])):
                    cols[PARAMS][k] = None
                if cols[PARAMS][k] is None:
                    model = r.models[k]
                    if model not in params:
                        try:
                            digest = _sha(self._parameters_json(model))
                            params[model] = digest if self._object_ok(digest) else None
                        except Exception:  # noqa: BLE001
                            params[model] = None
                    cols[PARAMS][k] = params[model]
            missing = [k for k in range(L) if cols[PARAMS][k] is None]
            if missing:
                notes.append(f"{PARAMS} of step(s) {_ranges(missing)} cannot be rebuilt: the models now report "
                             "parameters the store does not hold")
        lost = {name: [k for k in range(L) if cols[name][k] is None] for name in ("started_at", "ended_at", "invocation_seed")}
        for name, ks in lost.items():
            if ks:
                why = ("timestamps are recorded only once, in the journal" if name != "invocation_seed"
                       else "an unseeded run's seeds are recorded only once, in the journal")
                notes.append(f"{name} of step(s) {_ranges(ks)} cannot be rebuilt: {why}")
        # 5. write the columns that changed (whole rows: whole chunks, so damaged chunks are replaced)
        changed = []
        for name, (dtype, fill, _) in INVOCATION_ARRAYS.items():
            values = [fill if (k >= L or cols[name][k] is None) else cols[name][k] for k in range(n_steps)]
            if name == "text":
                values = ["" if (k >= L or r.kinds[k] != Kind.TEXT.value or texts[k] is None) else texts[k] for k in range(n_steps)]
            before = [fill if v is None else v for v in r.rows[name]]
            if values != before:
                arr = np.array(values, dtype=object if dtype is str else dtype)
                if dtype is str:
                    arr = np.array([str(v) for v in values])
                z.get(name)[i, :] = arr
                changed.append(name)
        if changed:
            self.act(f"run {i}: rewrote {', '.join(changed)}")
        # 6. the end of the run, from its outputs
        if any(h is None for h in hashes[:L]):
            return notes + ["the end of the run cannot be checked while outputs are missing"]
        if r.stop == "failed":
            return notes
        if not r.ended and not s.finished:
            return notes
        if not r.ended and r.error:  # a failed run that lost its marker: its error says so
            end = _expected_end(r.seeded, list(hashes[:L]), n_steps)
            if end is not None:
                return notes + ["it has an error, yet its outputs end it normally; not rewriting its end"]
            z.get("length")[i] = L
            z.get("loop_start")[i] = -1
            z.get("loop_period")[i] = -1
            z.get("stop_reason")[i] = "failed"
            self.act(f"run {i}: restored its end (failed after {L} steps, as its error says)")
            return notes
        end = _expected_end(r.seeded, list(hashes[:L]), n_steps)
        if end is None or end[1] != L:
            return notes + ["its outputs contradict the stop rule (the run would end elsewhere); not rewriting its end"]
        stored = (r.stop, r.length, r.loop_start, r.loop_period, r.error or "")
        want = (end[0], end[1], end[2], end[3], "")
        if stored != want:
            z.get("length")[i] = end[1]
            z.get("loop_start")[i] = end[2]
            z.get("loop_period")[i] = end[3]
            z.get("error")[i] = ""
            z.get("stop_reason")[i] = end[0]  # the marker, last
            self.act(f"run {i}: rewrote its end from its outputs ({end[0]}, length {end[1]})")
        return notes

    def _repair_object(self, s: _Scan, p: Problem) -> None:
        digest = p.path.rsplit("/", 1)[-1]
        if self._object_ok(digest):
            return
        refs = s.refs.get(digest, [])
        key = self.store.objects.key_for(digest)
        tried = []
        if not refs and digest in s.param_refs:
            models = sorted({s.runs[run].models[k] for run, k in s.param_refs[digest]})
            for model in models:
                try:
                    data = self._parameters_json(model)
                except Exception as exc:  # noqa: BLE001
                    tried.append(f"{model}: {_short(exc)}")
                    continue
                if _sha(data) == digest:
                    self.root.write_bytes(key, data)
                    self.verified.add(digest)
                    self.act(f"rewrote parameters object {digest[:16]}... from what {model} reports")
                    return
                tried.append(f"{model} now reports other parameters")
            self.note(p, "unrepairable: " + "; ".join(tried))
            return
        for run, k in refs[:4]:
            r = s.runs[run]
            if r.kinds[k] == Kind.TEXT.value:
                candidates = [r.rows["text"][k] if r.rows.get("text") else None]
                rec = s.journal.get(run, {}).get(k)
                if rec is not None:
                    candidates.append(rec.text)
                for t in candidates:
                    if t is not None and _sha(t.encode("utf-8")) == digest:
                        self.root.write_bytes(key, t.encode("utf-8"))
                        self.verified.add(digest)
                        self.act(f"rewrote text object {digest[:16]}... from the text of run {run} step {k}")
                        return
                tried.append(f"run {run} step {k}: no stored text hashes to it")
                continue
            hashes = list(r.rows.get("output_hash") or [None] * len(r.kinds))
            texts = list(r.rows.get("text") or [None] * len(r.kinds))
            seeds = r.rows.get("invocation_seed") or [None] * len(r.kinds)
            seed = seeds[k] if seeds[k] is not None else (r.spec.seed if r.seeded else None)
            rec = s.journal.get(run, {}).get(k)
            if seed is None and rec is not None:
                seed = rec.seed
            value = self._input_of(r, k, hashes, texts, {})
            if value is None or seed is None:
                tried.append(f"run {run} step {k}: its input or seed is unknown")
                continue
            try:
                data, _ = self._generate(r.models[k], value, seed)
            except Exception as exc:  # noqa: BLE001
                tried.append(f"run {run} step {k}: re-running {r.models[k]} failed: {_short(exc)}")
                continue
            if _sha(data) == digest:
                self.root.write_bytes(key, data)
                self.verified.add(digest)
                self.act(f"rebuilt image object {digest[:16]}... by re-running {r.models[k]} (run {run} step {k}, seed {seed})")
                return
            tried.append(f"run {run} step {k}: re-running {r.models[k]} (seed {seed}) gave a different image "
                         "(the model is not deterministic)")
        self.note(p, "unrepairable: " + ("; ".join(tried) or "no reference to rebuild it from"))

    # ----------------------------------------------- embeddings, diagrams
    @staticmethod
    def _runs_with_damaged_outputs(s: _Scan) -> set[int]:
        """Runs whose outputs are not known to be right: recomputing their embeddings would be wrong."""
        if any(KINDS.get(p.kind) in (1, 2) or p.kind == "experiment" for p in s.problems):
            return set(s.runs)  # metadata or chunks still broken: recompute nothing
        out: set[int] = set()
        for p in s.problems:
            if p.kind in ("object_missing", "object_corrupt"):
                digest = (p.path or "").rsplit("/", 1)[-1]
                out |= {run for run, _ in s.refs.get(digest, [])}
            elif p.kind in ("run_unended", "stop_reason", "layout") or (
                p.kind in ("run_gap", "run_mismatch", "run_extra") and p.path in ("output_hash", "text", "kind", "model")
            ):
                out.add(p.run if p.run is not None else -1)
        if -1 in out:
            return set(s.runs)
        return out

    def _fix_derived(self, problems: list[Problem], s: _Scan) -> None:
        damaged_runs = self._runs_with_damaged_outputs(s)
        if s.effective == "running":
            for p in problems:
                self.note(p, "the experiment is running; stop it first")
            return
        clear: dict[tuple[int, str], set[str]] = defaultdict(set)  # (run, model) -> {"done", "status"}
        for p in problems:
            if p.run in damaged_runs:
                self.note(p, f"not recomputed: run {p.run}'s outputs are damaged (see its other problems)")
                continue
            if p.kind in ("embedding_missing", "embedding_rows"):
                clear[(p.run, p.model)] |= {"done", "status"}
            else:
                clear[(p.run, p.model)].add("status")
        if not clear:
            return
        z = _Arrays(self.exp, read_only=False)
        if s.state in ("complete", "failed"):
            self.exp.write_state("interrupted", note="panicflow doctor cleared markers; resume recomputes them")
        for (run, m), what in sorted(clear.items()):
            z.get(f"diagrams/{m}/status")[run] = ""  # the derived marker first
            if "done" in what:
                z.get(f"embeddings/{m}/done")[run] = False
        n_emb = sum("done" in w for w in clear.values())
        cleared = f"cleared {n_emb} embedding marker(s) and {len(clear)} diagram status(es)"
        if not s.all_ended:
            # resume would also run the unfinished runs (from step 0 where their rows are lost): leave that to the user
            self.act(f"{cleared}; `panicflow experiment resume {self.exp.id}` recomputes them")
            for p in problems:
                self.note(p, "marker cleared; not recomputed here because some runs have not ended")
            return
        self.act(f"{cleared}; resuming to recompute them")
        try:
            self._resume(self.exp)
        except Exception as exc:  # noqa: BLE001
            for p in problems:
                self.note(p, f"resume failed: {_short(exc)}")
            return
        self.act("resume finished")


# ------------------------------------------------------------------------------ orphans
def _orphans(store: Store) -> list[str]:
    ids = set(store.experiment_ids())
    return [d for d in store.root.list_dirs("experiments") if d not in ids]


def _orphan_age_s(name: str) -> float | None:
    try:
        created = datetime.strptime(name[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return (datetime.now(UTC) - created).total_seconds()


def _delete_tree(root: StoreRoot, prefix: str) -> None:
    if root.is_local:
        import os
        import shutil

        shutil.rmtree(os.path.join(root.path, *prefix.split("/")))  # type: ignore[attr-defined]
    else:
        root.fs.rm(f"{root.root}/{prefix}", recursive=True)  # type: ignore[attr-defined]


def _check_orphan(store: Store, name: str, fix: bool, say: Callable[[str], None]) -> ExperimentReport:
    rep = ExperimentReport(id=name, state="no experiment.json")
    prefix = f"experiments/{name}"
    p = Problem("orphan", "experiment folder without experiment.json: its creation never finished", path=prefix)
    rep.problems.append(p)
    if not fix:
        return rep
    root = store.root
    try:
        ran = root.exists(f"{prefix}/state.json") or bool(root.list(f"{prefix}/journal"))
    except Exception:  # noqa: BLE001
        ran = True
    age = _orphan_age_s(name)
    if ran:
        p.detail += "; it has a state or a journal, so it is left for you to inspect"
    elif age is not None and age < ORPHAN_MIN_AGE_S:
        p.detail += f"; created {age:.0f} s ago, maybe still being created: left alone"
    else:
        try:
            _delete_tree(root, prefix)
            p.fixed = not root.exists(prefix)
            if p.fixed:
                rep.actions.append(f"deleted {prefix}")
                say(f"{name}: deleted the folder (creation never finished)")
        except Exception as exc:  # noqa: BLE001
            p.detail += f"; cannot delete it: {_short(exc)}"
    return rep


# ---------------------------------------------------------------------------------- entry
def _doctor_experiment(store: Store, exp: Experiment, fix: bool, say, resume, max_rounds: int = 8) -> ExperimentReport:
    doc = _ExperimentDoctor(store, exp, say, resume)
    rep = ExperimentReport(id=exp.id)
    seen: dict[tuple, Problem] = {}

    def record(scan: _Scan) -> None:
        for p in scan.problems:
            if p.key not in seen:
                seen[p.key] = p

    scan = doc.scan()
    rep.state = scan.effective
    record(scan)
    if fix and scan.problems:
        if scan.effective == "running":
            for p in scan.problems:
                doc.note(p, "the experiment is running; stop it before `doctor --fix`")
        else:
            attempted: set[tuple] = set()
            for _ in range(max_rounds):
                todo = [p for p in scan.problems if KINDS.get(p.kind) and p.key not in attempted]
                if not todo:
                    break
                phase = min(KINDS[p.kind] for p in todo)
                batch = [p for p in todo if KINDS[p.kind] == phase]
                say(f"{exp.id}: fixing {len(batch)} problem(s): {PHASE_NAMES[phase]}")
                try:
                    doc.fix_phase(phase, batch, scan)
                except Exception as exc:  # noqa: BLE001
                    for p in batch:
                        doc.note(p, f"fix failed: {_short(exc)}")
                attempted |= {p.key for p in batch}
                scan = doc.scan()
                record(scan)
            rep.state = scan.effective
    final = {p.key for p in scan.problems}
    for key, p in seen.items():
        p.fixed = fix and key not in final
        for text in doc.notes.get(key, []):
            p.detail += f" [{text}]"
    rep.problems = list(seen.values())
    rep.actions = doc.actions
    return rep


def run_doctor(
    experiment_id: str | None = None,
    store: Store | str | None = None,
    *,
    fix: bool = False,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    say: Callable[[str], None] | None = None,
) -> DoctorReport:
    """Check one experiment (or all, with no id); with ``fix``, repair what can be rebuilt.

    Raises ``UserError`` for a store that cannot be opened or an unknown id; every
    problem inside the store is reported, never raised.
    """
    st = store if isinstance(store, Store) else Store(store)
    say = say or (lambda text: log.info(text))
    if experiment_id is not None:
        experiments = [st.experiment(experiment_id)]
        orphans: list[str] = []
    else:
        experiments = [Experiment(st.root, eid) for eid in st.experiment_ids()]
        try:
            orphans = _orphans(st)
        except Exception:  # noqa: BLE001
            orphans = []
    report = DoctorReport(store=st.location, fix=fix)
    with ExitStack() as stack:
        clients: list = []

        def resume(exp: Experiment) -> None:
            from .api import resume_experiment
            from .scheduler.cluster import connect

            if not clients:
                if client is not None:
                    clients.append(client)
                else:
                    say("starting a Dask cluster to recompute")
                    clients.append(stack.enter_context(connect(None, scheduler=scheduler, workers=workers, dashboard_address=":0")))
            resume_experiment(exp.id, store=st, client=clients[0])

        for exp in experiments:
            try:
                report.experiments.append(_doctor_experiment(st, exp, fix, say, resume))
            except UserError:
                raise
            except Exception as exc:
                log.exception("doctor failed on %s", exp.id)
                rep = ExperimentReport(id=exp.id)
                rep.problems.append(Problem("experiment", f"doctor could not check it: {_short(exc)}"))
                report.experiments.append(rep)
        for name in orphans:
            report.experiments.append(_check_orphan(st, name, fix, say))
    return report


def render(report: DoctorReport, console) -> None:
    """The report as rich tables (the CLI prints it on stderr)."""
    from rich.markup import escape
    from rich.table import Table

    for e in report.experiments:
        if not e.problems:
            console.print(f"experiment [bold]{escape(e.id)}[/] ({e.state}): no problems")
            continue
        table = Table("kind", "run", "step", "model", "detail", "fixed", title=escape(f"experiment {e.id} ({e.state})"),
                      title_justify="left")
        for p in e.problems:
            table.add_row(
                p.kind, "" if p.run is None else str(p.run), "" if p.step is None else str(p.step), escape(p.model or ""),
                escape(p.detail), ("[green]yes[/]" if p.fixed else "[red]no[/]") if report.fix else "-",
            )
        console.print(table)
        for a in e.actions:
            console.print(f"  {escape(a)}", highlight=False)
    s = report.summary()
    if not report.experiments:
        console.print("no experiments in the store")
    if report.fix:
        console.print(f"{s['problems']} problem(s), {s['fixed']} fixed, {s['remaining']} remaining")
    else:
        console.print(f"{s['problems']} problem(s)" + ("; `panicflow doctor --fix` repairs what can be rebuilt" if s["problems"] else ""))


__all__ = ["KINDS", "DoctorReport", "ExperimentReport", "Problem", "render", "run_doctor"]
