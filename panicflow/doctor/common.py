"""What the doctor's scan and repair share: constants, the layout the stored config should have,
arrays opened one by one, and the scan's findings (``Scan``) that the repair works from."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import UNSEEDED
from ..models import REGISTRY, Kind
from ..store import experiment as experiment_module
from ..store.experiment import INVOCATION_ARRAYS, TASK_ARRAYS, VECTOR_DIGEST, Experiment
from ..store.journal import StepRecord
from ..store.root import StoreRoot
from .report import Problem

log = logging.getLogger("panicflow.doctor")

PAIR_ARRAYS = ("birth", "death", "dimension")
CREATOR_ARRAYS = ("run", "step", "network", "seed", "prompt")
DIAGRAM_STATUSES = {
    "ok", "ok_h1_fallback", "ok_subsampled", "over_budget", "over_time", "too_few_points", "run_failed", "error",
}
STOP_REASONS = ("length", "loop", "failed")
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
EMPTY_TEXT_HASH = hashlib.sha256(b"").hexdigest()
# the generation parameters of each invocation, a JSON object in the object store (when the layout has it)
PARAMS = "parameters_hash" if "parameters_hash" in INVOCATION_ARRAYS else None
# (run, step) columns newer than some experiments: a run wholly without them is no gap
LATER_COLUMNS = tuple(getattr(experiment_module, "ADDED_IN_FORMAT_2", ()))
# (run, step) column -> the StepRecord field the journal holds it in
JOURNAL_FIELDS = {"output_hash": "hash", "invocation_seed": "seed", "started_at": "started_us", "ended_at": "ended_us"}
CHECKSUM_CODEC = "crc32c"  # the codec whose checksum ends every chunk of arrays created since it was added


def is_pair_array(node: str) -> bool:
    parts = node.split("/")
    return len(parts) == 3 and parts[0] == "diagrams" and parts[2] in PAIR_ARRAYS


def is_task_array(node: str) -> bool:
    """started_at, ended_at or worker of an embedding or diagram task (absent in older experiments)."""
    parts = node.split("/")
    return len(parts) == 3 and parts[0] in ("embeddings", "diagrams") and parts[2] in TASK_ARRAYS


def is_vector_digest(node: str) -> bool:
    """embeddings/<model>/vector_sha256 (absent in experiments created before panicflow recorded it)."""
    parts = node.split("/")
    return len(parts) == 3 and parts[0] == "embeddings" and parts[2] == VECTOR_DIGEST


def has_checksum(codecs: Any) -> bool:
    """Whether a zarr.json ``codecs`` list ends chunks with the checksum codec: itself, or inside a
    sharding codec (the runs' rows: a checksum per one-run chunk of the shard)."""
    for c in codecs if isinstance(codecs, list) else []:
        if isinstance(c, dict) and c.get("name") == CHECKSUM_CODEC:
            return True
        if isinstance(c, dict) and c.get("name") == "sharding_indexed" and has_checksum((c.get("configuration") or {}).get("codecs")):
            return True
    return False


def without_checksum(codecs: Any) -> Any:
    """A zarr.json ``codecs`` list less the checksum codec: stores created before it compare equal."""
    if not isinstance(codecs, list):
        return codecs
    return [c for c in codecs if not (isinstance(c, dict) and c.get("name") == CHECKSUM_CODEC)]


def ranges(steps: Iterable[int]) -> str:
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


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LayoutRoot(StoreRoot):
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

    create_exclusive = write_bytes_once  # one thread, in memory: already exclusive

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


class Layout:
    """What ``Experiment.create`` writes for this experiment's config and run chunks (one run per
    chunk for experiments from before they were recorded): metadata and creation arrays. Read only
    once made."""

    def __init__(self, exp: Experiment) -> None:
        import zarr

        root = LayoutRoot()
        made = Experiment.create(root, exp.id, exp.config, exp.run_chunks)
        self.store = root.zarr_store(made.data_key)
        files = root.zarr_dicts[made.data_key]
        self.meta: dict[str, bytes] = {k: v.to_bytes() for k, v in files.items() if k.endswith("zarr.json")}
        self.docs: dict[str, dict] = {k[: -len("zarr.json")].rstrip("/"): json.loads(v) for k, v in self.meta.items()}
        self.creator = {name: zarr.open_array(store=self.store, path=name, mode="r")[...] for name in CREATOR_ARRAYS}

    def meta_key(self, node: str) -> str:
        return f"{node}/zarr.json" if node else "zarr.json"


class Arrays:
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


def expected_end(seeded: bool, hashes: list[str], max_length: int) -> tuple[str, int, int, int] | None:
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


def known(value: Any, fill: Any) -> Any:
    """None for a fill value (missing), else the value as a plain Python object."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if value == fill else value


@dataclass
class Run:
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
class Scan:
    problems: list[Problem] = field(default_factory=list)
    cfg: Any = None
    layout: Layout | None = None
    state: str = "created"
    effective: str = "created"
    finished: bool = False
    all_ended: bool = False
    bad_meta: set[str] = field(default_factory=set)  # nodes whose zarr.json is unusable
    codecs_differ: set[str] = field(default_factory=set)  # arrays whose codecs are not the layout's
    unchecksummed: set[str] = field(default_factory=set)  # arrays created without the checksum codec
    without_task_times: set[str] = field(default_factory=set)  # "embeddings" / "diagrams" lacking TASK_ARRAYS
    without_vector_digests: set[str] = field(default_factory=set)  # embedding models lacking VECTOR_DIGEST
    undigested: dict[str, int] = field(default_factory=dict)  # model -> runs embedded without a vector digest
    unconsolidated: bool = False  # finished, without consolidated metadata (a note; --fix writes it)
    read_arrays: set[str] = field(default_factory=set)  # arrays the checks read (the others are read for checksums)
    notes: list[str] = field(default_factory=list)  # facts for the report that are no problem
    per_run: dict[str, Any] = field(default_factory=dict)  # run-chunked arrays read whole, by path
    bad_chunks: dict[str, set[tuple[int, ...]]] = field(default_factory=lambda: defaultdict(set))
    runs: dict[int, Run] = field(default_factory=dict)
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


def generate_one(model: str, value: Any, seed: int) -> tuple[bytes, Any]:
    """One model call as the scheduler makes it: (stored bytes, what the next model sees)."""
    from ..models.cache import get_model
    from ..store.objects import decode_image, encode_image

    out = get_model(model).generate([value], [int(seed)])[0]
    if REGISTRY[model].output_kind is Kind.TEXT:
        return out.encode("utf-8"), out
    data = encode_image(out)
    return data, decode_image(data)

