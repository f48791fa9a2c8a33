"""One experiment's folder in the store: metadata, state, journal and Zarr arrays.

Layout (docs/store.md is the full contract)::

    experiments/<id>/experiment.json   config and metadata; written last at creation
    experiments/<id>/state.json        running | complete | failed, with a heartbeat
    experiments/<id>/lease/            who owns the experiment now (store/lease.py): one writer at a time
    experiments/<id>/provenance/       per coordinator session: library versions, host, embedders, diagram settings
    experiments/<id>/journal/*.jsonl   recorded steps, until the experiment completes
    experiments/<id>/data.zarr/        the results, one Zarr v3 hierarchy:
        /                              per-run and per-invocation (run, step) arrays
        /embeddings/<model>/           vector (run, step, dim), done (run)
        /diagrams/<model>/             status, entropy, birth/death pairs per run

Every chunk has exactly one writer: the coordinator writes the root arrays and
the diagram arrays (from one thread, so they hold many runs per chunk or shard:
``RunChunks``), the embedding task of (run, model) writes that run's rows of
``vector`` (one run per chunk). Markers (``stop_reason``, ``done``, ``status``) are written after the
data they certify, so a reader or a resume trusts only marked data.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Callable

import numpy as np
import zarr

from ..config import UNSEEDED, ExperimentConfig, config_digest, validate_stored_config
from ..errors import StoreError
from ..models import REGISTRY, Kind
from . import consolidated
from .journal import BadRecord, Journal, RunEvent, StepRecord
from .lease import Fence, Lease, current_holder, now_us, pid_alive
from .root import StoreRoot


def _stop_zarr_io_thread() -> None:
    """At exit, before zarr's own clean-up (atexit runs the handlers registered last first): stop the
    event loop of zarr's I/O thread and wait for it. zarr waits 0.2 s, then closes the loop even if it
    still runs, which printed ``RuntimeError: Cannot close a running event loop`` after a command that
    had failed cleanly, on a busy machine; a stopped loop it closes quietly."""
    from zarr.core import sync

    loop, thread = sync.loop[0], sync.iothread[0]
    if loop is None or thread is None or not thread.is_alive() or loop.is_closed():
        return
    try:
        loop.call_soon_threadsafe(loop.stop)
    except RuntimeError:  # closed meanwhile
        return
    thread.join(timeout=10)


atexit.register(_stop_zarr_io_thread)  # after zarr's (registered when `import zarr` loaded zarr.core.sync): runs before it

EXPERIMENT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1 lacks the batch_* arrays; resume adds them (Experiment.upgrade)
STEP_CHUNK = 1024  # steps per chunk: a 1024 x 768 float32 embedding chunk is 3 MiB
PAIR_CHUNK = 4096


@dataclass(frozen=True)
class RunChunks:
    """Runs per chunk along ``run`` of the arrays only the coordinator writes (docs/store.md, "Chunks").

    ``marks``: the (run,) and (run, homology_dim) arrays (run ends, markers, diagram counts), in
    chunks of that many runs; ``rows``: the (run, step) and (run, pair) arrays (invocations,
    point_used, pairs), in shards of that many runs of one-run chunks. Embedding vectors are
    written by one task per (run, model), so they stay one run per chunk.
    """

    marks: int
    rows: int

    def for_runs(self, n_runs: int) -> "RunChunks":
        """Never wider than the experiment: a 12-run experiment gets 12-run chunks, not 4096."""
        return RunChunks(max(1, min(self.marks, n_runs)), max(1, min(self.rows, n_runs)))

    def rows_of(self, width: int) -> dict[str, tuple[int, int]]:
        """``create_array``'s chunks of a (run, step) or (run, pair) array, ``width`` along its second axis:
        ``rows`` runs per object as a shard of one-run chunks, so that each run's rows keep a checksum of
        their own and are read, and repaired by the doctor, alone."""
        if self.rows == 1:
            return {"chunks": (1, width)}
        return {"chunks": (1, width), "shards": (self.rows, width)}


def chunk_layout(chunks: tuple[int, ...] | dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``create_array``'s keywords for a chunk shape, or for chunks and shards (``RunChunks.rows_of``)."""
    return chunks if isinstance(chunks, dict) else {"chunks": chunks}


# Chosen by measurement (scripts/benchmark_layout.py, docs/performance.md): writing a run end into a (run,)
# chunk of 4096 runs takes 21 ms against 10 ms into one of a single run, and the markers of 10^5 runs read in
# 0.06 s instead of 176 s; shards of 16 runs keep the (run, step) arrays' objects below the vectors' own
# count (one per run and embedder) while a run end rewrites about 16 runs' rows of a shard (zarr 3.1 rewrites
# a shard whole), 4 times fewer bytes than shards of 64.
RUN_CHUNKS = RunChunks(marks=4096, rows=16)
ONE_RUN_PER_CHUNK = RunChunks(marks=1, rows=1)  # every experiment created before run_chunks was recorded
HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 30.0
TIME_ATTRS = {"units": "microseconds since 1970-01-01", "calendar": "proleptic_gregorian"}
NO_TIME = np.iinfo(np.int64).min  # decodes to NaT

# (run, step) arrays the coordinator materialises from the journal
INVOCATION_ARRAYS: dict[str, tuple[Any, Any, dict]] = {
    "model": (str, "", {"description": "model that produced the output"}),
    "kind": (str, "", {"description": "output kind: text or image"}),
    "output_hash": (str, "", {"description": "sha256 of the stored output; objects/<h[:2]>/<h[2:4]>/<h>"}),
    "text": (str, "", {"description": "the output text (empty for images)"}),
    "invocation_seed": ("int64", -1, {"description": "seed the model was called with"}),
    "started_at": ("int64", NO_TIME, {**TIME_ATTRS, "description": "start of the batched model call"}),
    "ended_at": ("int64", NO_TIME, {**TIME_ATTRS, "description": "end of the batched model call"}),
    "parameters_hash": (str, "", {"description": "JSON object of the generation parameters (model id, revision, size, steps, dtype) in the object store"}),
    # the model call an output was computed in: with batched kernels an output depends on its batch,
    # so these let any output be replayed exactly (docs/config.md, "Batching and reproducibility")
    "batch_id": (str, "", {"description": "id of the batched model call; the invocations sharing it were computed together"}),
    "batch_size": ("int32", 0, {"description": "number of inputs in that model call"}),
    "batch_position": ("int32", -1, {"description": "position of this input in that model call"}),
}
# arrays added after format 1: an older experiment gets them (empty) when it is resumed
ADDED_IN_FORMAT_2 = ("batch_id", "batch_size", "batch_position")
# (run,) arrays written when a run ends; stop_reason last, as the run's marker
RUN_END_ARRAYS: dict[str, tuple[Any, Any, dict]] = {
    "length": ("int32", -1, {"description": "number of invocations; -1 until the run ends"}),
    "loop_start": ("int32", -1, {"description": "step of the first occurrence of the repeated output"}),
    "loop_period": ("int32", -1, {"description": "steps between the repeated output and its first occurrence"}),
    "error": (str, "", {"description": "why the run failed"}),
    "stop_reason": (str, "", {"description": "length | loop | failed; empty while running"}),
}
# (run,) arrays beside the marker of each (run, model) task (embeddings' done, diagrams' status): when
# and where its task ran, measured on the worker, written by the coordinator just before the marker
TASK_ARRAYS: dict[str, tuple[Any, Any, dict]] = {
    "started_at": ("int64", NO_TIME, {**TIME_ATTRS, "description": "start of the task on its worker (that machine's clock)"}),
    "ended_at": ("int64", NO_TIME, {**TIME_ATTRS, "description": "end of the task on its worker: its result computed "
                                                                "(embeddings: its vectors written)"}),
    "worker": (str, "", {"description": "address of the Dask worker that ran the task (provenance/ names its host "
                                        "and versions)"}),
}


@dataclass(frozen=True)
class TaskTiming:
    """When and where a worker ran the embedding or diagram task of one (run, model)."""

    started_us: int
    ended_us: int
    worker: str  # the Dask worker's address; empty off a worker


@dataclass(frozen=True)
class EmbeddingTiming(TaskTiming):
    """What an embedding task returns: when and where it ran, and ``vector_digest`` of the rows it wrote."""

    vector_sha256: str = ""


# (run,) array beside each embedding model's ``done``: the sha256 of the run's vectors as its task wrote
# them, written by the coordinator with the task times, just before ``done``
VECTOR_DIGEST = "vector_sha256"
VECTOR_DIGEST_ATTRS = {
    "description": "sha256 (hex) of the run's vectors as written: the little-endian float32 bytes of its (step, dim) "
                   "rows 0 to length-1, row after row, NaN rows included; empty where not recorded (runs embedded "
                   "before panicflow recorded it)",
}


def vector_digest(vectors: np.ndarray) -> str:
    """sha256 of a run's (length, dim) vectors in their canonical byte form (``VECTOR_DIGEST_ATTRS``)."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).hexdigest()


def add_digest_array(group: zarr.Group, marker: zarr.Array) -> None:
    """``VECTOR_DIGEST`` where an embeddings ``group`` lacks it, laid out like its ``done``
    (one writer, the coordinator, writes both)."""
    if VECTOR_DIGEST not in group:
        group.create_array(VECTOR_DIGEST, shape=marker.shape, chunks=marker.chunks, shards=marker.shards, dtype=str,
                           fill_value="", dimension_names=["run"], attributes=VECTOR_DIGEST_ATTRS,
                           compressors=chunk_compressors(str))


def add_task_arrays(group: zarr.Group, marker: zarr.Array) -> None:
    """The ``TASK_ARRAYS`` that ``group`` lacks, laid out like its ``marker``: one writer (the
    coordinator) writes both at the same moment, so whatever the run chunking of the marker,
    every chunk still has one writer."""
    for name, (dtype, fill, attrs) in TASK_ARRAYS.items():
        if name not in group:
            group.create_array(name, shape=marker.shape, chunks=marker.chunks, shards=marker.shards, dtype=dtype,
                               fill_value=fill, dimension_names=["run"], attributes=attrs,
                               compressors=chunk_compressors(dtype))


def chunk_compressors(dtype: Any) -> list:
    """Every chunk ends with a crc32c checksum of its bytes, which ``panicflow doctor`` verifies
    (a changed byte is found); float32 vectors are not compressed (ratio ~1.1, writes 3-15x slower),
    the rest with zstd, as zarr's default."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [Crc32cCodec()] if dtype == "float32" else [ZstdCodec(level=0, checksum=False), Crc32cCodec()]


@dataclass(frozen=True)
class RunEnd:
    length: int
    stop_reason: str
    loop_start: int = -1
    loop_period: int = -1
    error: str = ""


class Experiment:
    """Handle on one experiment folder. Cheap to create; opens Zarr lazily."""

    def __init__(self, root: StoreRoot, experiment_id: str) -> None:
        self.root = root
        self.id = experiment_id
        self.prefix = f"experiments/{experiment_id}"
        self.lease: Lease | Fence | None = None  # set while this process owns (or writes for) the experiment

    # ----------------------------------------------------------------- metadata
    @cached_property
    def meta(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.root.read_bytes(f"{self.prefix}/experiment.json"))
        except FileNotFoundError:
            raise StoreError(f"experiment {self.id}: experiment.json is missing; `panicflow doctor` can clean it up") from None
        except ValueError:
            raise StoreError(f"experiment {self.id}: experiment.json is damaged (not JSON)") from None
        if not isinstance(raw, dict):
            raise StoreError(f"experiment {self.id}: experiment.json is damaged (not a JSON object)")
        if raw.get("format") not in READABLE_FORMATS:
            raise StoreError(
                f"experiment {self.id}: written in experiment format {raw.get('format')!r}, "
                f"this panicflow reads formats {', '.join(map(str, READABLE_FORMATS))}; use a matching panicflow version"
            )
        return raw

    def upgrade(self) -> None:
        """Bring an experiment of an older format to the current one before writing to it.

        Format 1 -> 2 adds the empty batch_* arrays and the diagrams' provenance arrays. Idempotent and crash-safe: arrays are
        created only where missing, and experiment.json says format 2 only after they exist.
        Experiments of any format created before the task times (``TASK_ARRAYS``) get them here, empty:
        a panicflow without them reads them as any other array and never writes them, so no format change.
        """
        self._add_task_arrays()
        if self.meta.get("format") == EXPERIMENT_FORMAT:
            return
        consolidated.drop(self)  # new arrays: a consolidated copy would go stale (the caller writes it again)
        g = self.group()
        n_runs, n_steps = g["output_hash"].shape
        step_chunk = g["output_hash"].chunks[1]
        rc = self.run_chunks.for_runs(n_runs)  # laid out as Experiment.create laid out the others
        for name in ADDED_IN_FORMAT_2:
            if name not in g:
                dtype, fill, attrs = INVOCATION_ARRAYS[name]
                g.create_array(name, shape=(n_runs, n_steps), **rc.rows_of(step_chunk), dtype=dtype, fill_value=fill,
                               dimension_names=["run", "step"], attributes=attrs, compressors=chunk_compressors(dtype))
        maxdim = self.config.persistence.maxdim
        for model in self.config.embedding_models:
            d = g[f"diagrams/{model}"]
            for name, (dims, shape, chunks, dtype, fill, attrs) in diagram_provenance_arrays(n_runs, n_steps, maxdim, rc).items():
                if name not in d:
                    d.create_array(name, shape=shape, **chunk_layout(chunks), dtype=dtype, fill_value=fill,
                                   dimension_names=dims, attributes=attrs, compressors=chunk_compressors(dtype))
        meta = {**self.meta, "format": EXPERIMENT_FORMAT}
        self.root.write_bytes(f"{self.prefix}/experiment.json", json.dumps(meta, indent=2).encode())
        self.__dict__.pop("meta", None)

    def _add_task_arrays(self) -> None:
        """The task times, and the embeddings' vector digests (``VECTOR_DIGEST``), where missing."""
        g = self.group()
        places = [(g[f"{kind}/{m}"], marker) for m in self.config.embedding_models
                  for kind, marker in (("embeddings", "done"), ("diagrams", "status"))]
        missing = [(group, marker) for group, marker in places if any(name not in group for name in TASK_ARRAYS)
                   or (marker == "done" and VECTOR_DIGEST not in group)]
        if not missing:
            return
        consolidated.drop(self)  # new arrays: a consolidated copy would go stale
        for group, marker in missing:
            add_task_arrays(group, group[marker])
            if marker == "done":
                add_digest_array(group, group[marker])

    @cached_property
    def config(self) -> ExperimentConfig:
        from ..errors import ConfigError

        try:
            # validated at creation: while it still hashes to the recorded digest only parsed again
            return validate_stored_config(self.meta["config"], self.meta.get("config_sha256"))
        except (ConfigError, KeyError) as exc:
            raise StoreError(f"experiment {self.id}: its stored config is invalid: {str(exc).splitlines()[0]}") from None

    @property
    def run_chunks(self) -> RunChunks:
        """Runs per chunk this experiment was created with (``run_chunks`` in experiment.json; absent:
        one run per chunk, as every experiment before it). Readers never need it: Zarr knows each array's
        chunks; the doctor lays out what the experiment should look like with it."""
        raw = self.meta.get("run_chunks")
        if raw is None:
            return ONE_RUN_PER_CHUNK
        try:
            rc = RunChunks(int(raw["marks"]), int(raw["rows"]))
        except (TypeError, KeyError, ValueError):
            rc = RunChunks(0, 0)
        if rc.marks < 1 or rc.rows < 1:
            raise StoreError(f"experiment {self.id}: experiment.json is damaged (run_chunks {raw!r} is not two positive counts)")
        return rc

    @property
    def name(self) -> str | None:
        return self.meta.get("name")

    @property
    def data_key(self) -> str:
        return f"{self.prefix}/data.zarr"

    def path_for_display(self) -> str:
        return self.root.path_for_display(self.data_key)

    @cached_property
    def journal(self) -> Journal:
        return Journal(self.root, f"{self.prefix}/journal", fence=self.check_owner, check=self._journal_check(),
                       experiment_id=self.id)

    def _journal_check(self) -> Callable[[StepRecord | RunEvent], None]:
        """What a journal line must say of this experiment (``BadRecord`` otherwise): a run it has, a step
        below max_length, the network's model for that step and that model's output kind, and the run's
        seed for a seeded run. Built from the config at the first line read."""
        rules: list[Any] = []

        def check(rec: StepRecord | RunEvent) -> None:
            if not rules:
                cfg = self.config
                rules.append((cfg.runs(), cfg.max_length))
            runs, max_length = rules[0]
            if rec.run >= len(runs):
                raise BadRecord(f"run {rec.run} is not a run of this experiment (it has {len(runs)})")
            if not isinstance(rec, StepRecord):
                if rec.step > max_length:
                    raise BadRecord(f"{rec.event} event at step {rec.step}, past max_length {max_length}", run=rec.run)
                return
            spec, step = runs[rec.run], rec.step
            if step >= max_length:
                raise BadRecord(f"step {step} is past max_length {max_length}", run=rec.run)
            model = spec.model_at(step)
            if rec.model != model:
                raise BadRecord(f"model {rec.model!r} is not the network's model at step {step} ({model})",
                                run=rec.run, step=step)
            kind = REGISTRY[model].output_kind.value if model in REGISTRY else rec.kind
            if rec.kind != kind:
                raise BadRecord(f"kind {rec.kind!r} is not {model}'s output kind ({kind})", run=rec.run, step=step)
            if spec.seed != UNSEEDED and rec.seed != spec.seed:
                raise BadRecord(f"seed {rec.seed} is not the run's seed {spec.seed}", run=rec.run, step=step)

        return check

    # ---------------------------------------------------------------- ownership
    def take(self, purpose: str = "coordinator") -> Lease:
        """Own the experiment (``ExperimentBusy`` if a live process does); release the lease after."""
        self.lease = Lease.acquire(self.root, self.prefix, self.id, purpose=purpose)
        return self.lease

    def fenced_by(self, epoch: int) -> None:
        """On a worker: writes for the coordinator holding lease ``epoch`` stop once it is taken over."""
        self.lease = Fence(self.root, self.prefix, epoch)

    def leased(self) -> bool:
        """Whether any coordinator of a version with leases ever took this experiment."""
        return bool(self.root.list(f"{self.prefix}/lease"))

    def check_owner(self) -> None:
        """Before a write that commits: ``LeaseLost`` if this process no longer owns the experiment."""
        if self.lease is not None:
            self.lease.check()

    # -------------------------------------------------------------------- state
    def read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.root.read_bytes(f"{self.prefix}/state.json"))
        except (FileNotFoundError, ValueError):
            return {"state": "created"}
        if not isinstance(state, dict) or not isinstance(state.get("state"), str):
            return {"state": "created"}  # damaged: judged like one that never started
        return state

    def write_state(self, state: str, **fields: Any) -> None:
        self.check_owner()
        body = {"state": state, "updated_us": now_us(), "pid": os.getpid(), "host": socket.gethostname(), **fields}
        self.root.write_bytes(f"{self.prefix}/state.json", json.dumps(body).encode())

    def effective_state(self) -> str:
        """running | complete | interrupted | failed, judging a silent coordinator as gone."""
        state = self.read_state()
        if state["state"] in ("complete", "failed"):
            return state["state"]
        updated = state.get("updated_us")
        updated = updated if isinstance(updated, int) and not isinstance(updated, bool) else 0
        holder = current_holder(self.root, self.prefix)
        if holder is not None and holder.get("token") != getattr(self.lease, "token", None):
            return "running"  # a live owner (coordinator or doctor --fix) holds the lease
        if self.leased():
            return "interrupted"  # leased experiments: the lease says it all
        # experiments written before leases: the state.json heartbeat
        if state["state"] == "running" and now_us() - updated < HEARTBEAT_STALE_S * 1e6:
            if state.get("host") == socket.gethostname() and not pid_alive(state.get("pid")):
                return "interrupted"  # its coordinator died on this machine: no need to wait for the heartbeat
            return "running"
        return "interrupted"

    # --------------------------------------------------------------- provenance
    def record_session(self, info: dict[str, Any]) -> None:
        """Write what this coordinator session computed with (``provenance/<epoch>.json``, one per
        lease epoch, atomic): library versions, host, the embedders and the diagram settings."""
        self.check_owner()
        epoch = getattr(self.lease, "epoch", 0)
        body = {"started_us": now_us(), "host": socket.gethostname(), "pid": os.getpid(), **info}
        self.root.write_bytes(f"{self.prefix}/provenance/{epoch:08d}.json", json.dumps(body, indent=1, default=str).encode())

    def sessions(self) -> list[dict[str, Any]]:
        """The provenance of every coordinator session that worked on the experiment, oldest first."""
        out = []
        for name in self.root.list(f"{self.prefix}/provenance"):
            try:
                doc = json.loads(self.root.read_bytes(f"{self.prefix}/provenance/{name}"))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    # --------------------------------------------------------------------- zarr
    def group(self, read_only: bool = False) -> zarr.Group:
        # zarr_format=3: never fall back to reading Zarr v2 metadata, whose codecs include one that unpickles;
        # each node's own metadata, never the consolidated copy (store/consolidated.py): writers change it
        try:
            return zarr.open_group(
                store=self.root.zarr_store(self.data_key, read_only=read_only), mode="r" if read_only else "r+", zarr_format=3,
                use_consolidated=False,
            )
        except (FileNotFoundError, ValueError, zarr.errors.BaseZarrError):  # ValueError: a zarr.json that is not JSON
            raise StoreError(
                f"experiment {self.id}: its data.zarr is missing or damaged ({self.root.path_for_display(self.data_key + '/zarr.json')}); "
                f"`panicflow doctor {self.id}` says what is wrong"
            ) from None

    @classmethod
    def create(cls, root: StoreRoot, experiment_id: str, config: ExperimentConfig,
               run_chunks: RunChunks | None = None) -> "Experiment":
        """Lay out every array, then write experiment.json as the creation marker.

        ``run_chunks``: runs per chunk (default ``RUN_CHUNKS``; the doctor passes the experiment's own
        to lay out what it should look like)."""
        exp = cls(root, experiment_id)
        runs = config.runs()
        n_runs, n_steps = len(runs), config.max_length
        step_chunk = min(n_steps, STEP_CHUNK)
        chosen = run_chunks or RUN_CHUNKS
        rc = chosen.for_runs(n_runs)
        g = zarr.open_group(store=root.zarr_store(exp.data_key), mode="w", zarr_format=3)
        g.attrs.update({"experiment_id": experiment_id, "name": config.name or "", "format": EXPERIMENT_FORMAT})

        def arr(group, name, dims, shape, chunks, dtype, fill, attrs, data=None):
            a = group.create_array(
                name, shape=shape, **chunk_layout(chunks), dtype=dtype, fill_value=fill,
                dimension_names=dims, attributes=attrs, compressors=chunk_compressors(dtype),
            )
            if data is not None:
                a[...] = data
            return a

        arr(g, "run", ["run"], (n_runs,), (n_runs,), "int64", 0, {}, np.arange(n_runs))
        arr(g, "step", ["step"], (n_steps,), (n_steps,), "int64", 0, {}, np.arange(n_steps))
        arr(g, "network", ["run"], (n_runs,), (n_runs,), str, "", {"description": "models, comma-separated"},
            np.array([",".join(r.network) for r in runs]))
        arr(g, "seed", ["run"], (n_runs,), (n_runs,), "int64", 0, {"description": "-1: unseeded"},
            np.array([r.seed for r in runs]))
        arr(g, "prompt", ["run"], (n_runs,), (n_runs,), str, "", {}, np.array([r.prompt for r in runs]))
        for name, (dtype, fill, attrs) in RUN_END_ARRAYS.items():
            arr(g, name, ["run"], (n_runs,), (rc.marks,), dtype, fill, attrs)
        for name, (dtype, fill, attrs) in INVOCATION_ARRAYS.items():
            arr(g, name, ["run", "step"], (n_runs, n_steps), rc.rows_of(step_chunk), dtype, fill, attrs)

        maxdim = config.persistence.maxdim
        for model in config.embedding_models:
            dim = REGISTRY[model].dim
            e = g.require_group("embeddings").create_group(model)
            e.attrs.update({"model": model, "input_kind": REGISTRY[model].input_kind.value})
            # float32 vectors barely compress (ratio ~1.1) and compression slows writes 3-15x; one run per
            # chunk whatever run_chunks says: the embedding task of (run, model) is the writer of its chunks
            arr(e, "vector", ["run", "step", "dim"], (n_runs, n_steps, dim), (1, step_chunk, dim), "float32",
                np.nan, {"description": f"{model} embedding of each output it can embed; NaN elsewhere"})
            arr(e, "done", ["run"], (n_runs,), (rc.marks,), "bool", False, {"description": "vectors of this run written"})
            add_task_arrays(e, e["done"])
            add_digest_array(e, e["done"])
            d = g.require_group("diagrams").create_group(model)
            d.attrs.update({"model": model, "maxdim": maxdim})
            arr(d, "status", ["run"], (n_runs,), (rc.marks,), str, "",
                {"description": "ok | ok_h1_fallback | ok_subsampled (fallbacks) | over_budget | over_time | "
                                "too_few_points (skipped) | error | run_failed (failed); empty: pending"})
            add_task_arrays(d, d["status"])
            arr(d, "reason", ["run"], (n_runs,), (rc.marks,), str, "", {})
            for name, (dims, shape, chunks, dtype, fill, attrs) in diagram_provenance_arrays(n_runs, n_steps, maxdim, rc).items():
                arr(d, name, dims, shape, chunks, dtype, fill, attrs)
            arr(d, "entropy", ["run", "homology_dim"], (n_runs, maxdim + 1), (rc.marks, maxdim + 1), "float64", np.nan,
                {"description": "persistent entropy per homology dimension (natural log, infinite bars dropped); "
                                "NaN where not computed or without a finite bar, 0.0 for one finite bar"})
            # The pair axis starts at this width and grows to exactly the largest diagram written (never by
            # doubling), so its width is a function of the results, not of the order they arrived in.
            cap = max(16, min(n_steps, PAIR_CHUNK))
            for name, dtype, fill in (("birth", "float64", np.nan), ("death", "float64", np.nan), ("dimension", "int8", -1)):
                arr(d, name, ["run", "pair"], (n_runs, cap), rc.rows_of(min(cap, PAIR_CHUNK)), dtype, fill,
                    {"description": "persistence pairs of each run, padded with NaN / -1; death inf = essential "
                                    "class; float32 values from giotto-ph, stored as float64"})

        meta = {
            "format": EXPERIMENT_FORMAT,
            "id": experiment_id,
            "name": config.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": json.loads(config.to_json()),
        }
        meta["config_sha256"] = config_digest(config)  # validated now: readers need not repeat it
        if chosen != ONE_RUN_PER_CHUNK:  # absent: one run per chunk, as in every experiment before it
            meta["run_chunks"] = {"marks": chosen.marks, "rows": chosen.rows}
        root.write_bytes(f"{exp.prefix}/experiment.json", json.dumps(meta, indent=2).encode())
        return exp


class ExperimentWriter:
    """The coordinator's write side: one open Zarr group, one writer per chunk."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.g = exp.group()
        self.config = exp.config
        self._arrays: dict[str, zarr.Array] = {}

    def _a(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            self._arrays[path] = self.g[path]
        return self._arrays[path]

    def write_steps(self, run: int, steps: list[StepRecord]) -> None:
        """Materialise ``steps`` (consecutive, from ``steps[0].step``) of one run."""
        self.write_rows({run: steps})

    def write_rows(self, rows: dict[int, list[StepRecord]]) -> None:
        """Materialise recorded steps of several runs (each run's consecutive) in one write per array.

        Runs sharing a chunk cost one read-modify-write of it: Zarr groups the cells of a
        coordinate selection by chunk. Writing a step again writes the same values (idempotent).
        """
        rows = {run: steps for run, steps in rows.items() if steps}
        if not rows:
            return
        self.exp.check_owner()
        steps = [s for run_steps in rows.values() for s in run_steps]
        columns = {
            "model": np.array([s.model for s in steps]),
            "kind": np.array([s.kind for s in steps]),
            "output_hash": np.array([s.hash for s in steps]),
            "text": np.array([s.text or "" for s in steps]),
            "invocation_seed": np.array([s.seed for s in steps], dtype="int64"),
            "started_at": np.array([s.started_us for s in steps], dtype="int64"),
            "ended_at": np.array([s.ended_us for s in steps], dtype="int64"),
            "parameters_hash": np.array([s.parameters_hash for s in steps]),
            "batch_id": np.array([s.batch_id for s in steps]),
            "batch_size": np.array([s.batch_size for s in steps], dtype="int32"),
            "batch_position": np.array([s.batch_position for s in steps], dtype="int32"),
        }
        if len(rows) == 1:  # one run: a plain slice is the faster write
            [run] = rows
            where = (run, slice(steps[0].step, steps[-1].step + 1))
            for name, values in columns.items():
                self._a(name)[where] = values
            return
        runs = np.repeat(np.fromiter(rows, dtype=np.int64), [len(run_steps) for run_steps in rows.values()])
        at = np.array([s.step for s in steps], dtype=np.int64)
        for name, values in columns.items():
            self._a(name).vindex[runs, at] = values

    def clear_steps(self, run: int, start: int, stop: int) -> None:
        """Fill values over steps ``start:stop`` of a run: rows shown before a resume dropped those steps."""
        self.exp.check_owner()
        for name, (_, fill, _) in INVOCATION_ARRAYS.items():
            self._a(name)[run, start:stop] = fill

    def read_hashes(self, run: int, n: int) -> np.ndarray:
        """The output hashes of a run's first ``n`` (materialised) steps: its history for loop checks."""
        return self._a("output_hash")[run, :n]

    def write_run_end(self, run: int, end: RunEnd) -> None:
        self.write_run_ends({run: end})

    def write_run_ends(self, ends: dict[int, RunEnd]) -> None:
        """The ends of several runs, one write per array (runs sharing a chunk: one rewrite of it);
        ``stop_reason``, their marker, last."""
        if not ends:
            return
        self.exp.check_owner()
        runs = np.fromiter(ends, dtype=np.int64)
        for name, values in (
            ("length", np.array([e.length for e in ends.values()], dtype="int32")),
            ("loop_start", np.array([e.loop_start for e in ends.values()], dtype="int32")),
            ("loop_period", np.array([e.loop_period for e in ends.values()], dtype="int32")),
            ("error", np.array([e.error for e in ends.values()])),
            ("stop_reason", np.array([e.stop_reason for e in ends.values()])),  # the marker, last
        ):
            self._a(name).vindex[runs] = values

    def clear_run_end(self, run: int) -> None:
        """Undo ``write_run_end`` for a run that is given another go: marker first."""
        self.exp.check_owner()
        self._a("stop_reason")[run] = ""
        self._a("length")[run] = -1
        self._a("loop_start")[run] = -1
        self._a("loop_period")[run] = -1
        self._a("error")[run] = ""

    def clear_diagram_status(self, run: int, model: str) -> None:
        self.exp.check_owner()
        self._a(f"diagrams/{model}/status")[run] = ""

    def mark_embedded(self, run: int, model: str, timing: TaskTiming | None = None, digest: str | None = None) -> None:
        """``done``, after when and where its task ran (``timing``; None: unknown) and the digest of the
        vectors it wrote (``digest``, else the one an ``EmbeddingTiming`` carries; none: cleared)."""
        self.exp.check_owner()
        self._write_timing(f"embeddings/{model}", run, timing)
        if not hasattr(self, "_digested"):  # absent in experiments created before it (resume adds it)
            self._digested = {m for m in self.config.embedding_models if VECTOR_DIGEST in self.g[f"embeddings/{m}"]}
        if model in self._digested:
            self._a(f"embeddings/{model}/{VECTOR_DIGEST}")[run] = digest or getattr(timing, "vector_sha256", "")
        self._a(f"embeddings/{model}/done")[run] = True

    def _write_timing(self, group: str, run: int, timing: TaskTiming | None) -> None:
        """The task's ``TASK_ARRAYS`` row, where the experiment has them (older ones get them when resumed)."""
        if not hasattr(self, "_timed"):
            self._timed = {path for m in self.config.embedding_models for path in (f"embeddings/{m}", f"diagrams/{m}")
                           if all(name in self.g[path] for name in TASK_ARRAYS)}
        if group not in self._timed:
            return
        t = timing or TaskTiming(NO_TIME, NO_TIME, "")  # none (a failed run's diagram): clear an earlier task's
        self._a(f"{group}/started_at")[run] = t.started_us
        self._a(f"{group}/ended_at")[run] = t.ended_us
        self._a(f"{group}/worker")[run] = t.worker

    def write_diagram(self, run: int, model: str, result) -> None:
        """Pairs, entropy, provenance, counts and task times of one (run, model); ``status`` last, as the marker.

        The pair axis grows to exactly the pairs this diagram needs, never more, so its
        width ends as max(initial width, largest diagram written): the same whatever
        order the diagrams finished in. Only the coordinator writes these arrays, so
        resizing cannot race, and every chunk still has one writer.
        """
        self.exp.check_owner()
        d = f"diagrams/{model}"
        births, deaths, dims = [], [], []
        for k, dgm in enumerate(result.diagrams):
            births.append(dgm[:, 0])
            deaths.append(dgm[:, 1])
            dims.append(np.full(len(dgm), k, dtype="int8"))
        birth = np.concatenate(births) if births else np.zeros(0)
        n = len(birth)
        arrays = [self._a(f"{d}/{name}") for name in ("birth", "death", "dimension")]
        for a in arrays:  # each separately: a crash between two resizes leaves each as wide as it must be
            if n > a.shape[1]:
                a.resize((a.shape[0], n))
        if n:
            arrays[0][run, :n] = birth
            arrays[1][run, :n] = np.concatenate(deaths)
            arrays[2][run, :n] = np.concatenate(dims)
        # clear what a previous, longer write may have left (idempotent rewrite)
        for a, fill in zip(arrays, (np.nan, np.nan, -1)):
            if n < a.shape[1]:
                a[run, n:] = fill
        entropy = np.full(self._a(f"{d}/entropy").shape[1], np.nan)
        entropy[: len(result.entropy)] = result.entropy
        self._a(f"{d}/entropy")[run] = entropy
        self._a(f"{d}/n_points")[run] = result.n_points
        if f"{d}/point_used" in self._present():  # absent in experiments created before them
            used = result.used_indices()
            steps = np.asarray(result.steps if result.steps is not None else np.arange(result.n_points), dtype=np.int64)
            row = np.zeros(self._a(f"{d}/point_used").shape[1], dtype=bool)
            row[steps[used]] = True
            computed = np.arange(self._a(f"{d}/computed").shape[1]) <= result.maxdim_used
            self._a(f"{d}/point_used")[run] = row
            self._a(f"{d}/n_points_used")[run] = result.n_points_used
            self._a(f"{d}/computed")[run] = computed
            self._a(f"{d}/subsample_seed")[run] = result.subsample_seed
        self._a(f"{d}/reason")[run] = result.reason
        self._write_timing(d, run, result.timing)
        self._a(f"{d}/status")[run] = result.status

    def _present(self) -> set[str]:
        """Paths of the diagrams' provenance arrays that this experiment has (looked up once)."""
        if not hasattr(self, "_provenance"):
            self._provenance = {
                f"diagrams/{m}/{name}" for m in self.config.embedding_models
                for name in DIAGRAM_PROVENANCE if name in self.g[f"diagrams/{m}"]
            }
        return self._provenance


DIAGRAM_PROVENANCE = ("n_points", "n_points_used", "computed", "subsample_seed", "point_used")


def diagram_provenance_arrays(n_runs: int, n_steps: int, maxdim: int, rc: RunChunks) -> dict[str, tuple]:
    """What each diagram was computed from: name -> (dims, shape, chunks, dtype, fill, attrs); ``rc``: runs per
    chunk, already fitted to ``n_runs``; chunks as ``chunk_layout`` takes them."""
    step_chunk = min(n_steps, STEP_CHUNK)
    return {
        "n_points": (["run"], (n_runs,), (rc.marks,), "int32", -1, {"description": "points in the cloud: the steps with an embedding"}),
        "n_points_used": (["run"], (n_runs,), (rc.marks,), "int32", -1,
                          {"description": "points the diagram was computed from (fewer when subsampled; 0: not computed)"}),
        "computed": (["run", "homology_dim"], (n_runs, maxdim + 1), (rc.marks, maxdim + 1), "bool", False,
                     {"description": "homology dimension computed (False: skipped, failed, or above an H1 fallback)"}),
        "subsample_seed": (["run"], (n_runs,), (rc.marks,), "int64", -1,
                           {"description": "seed of the subsample (numpy default_rng(seed).choice, sorted); -1: none"}),
        "point_used": (["run", "step"], (n_runs, n_steps), rc.rows_of(step_chunk), "bool", False,
                       {"description": "the step's embedding is one of the points the diagram was computed from"}),
    }


def write_embedding_rows(exp: Experiment, run: int, model: str, vectors: np.ndarray) -> None:
    """Run on a worker: the (run, model) embedding task is the only writer of these chunks."""
    g = exp.group()
    exp.check_owner()
    g[f"embeddings/{model}/vector"][run, : len(vectors)] = vectors


def read_markers(exp: Experiment) -> dict[str, Any]:
    """Everything resume and status need from Zarr: small per-run arrays only."""
    g = exp.group(read_only=True)
    out: dict[str, Any] = {
        "stop_reason": g["stop_reason"][:],
        "length": g["length"][:],
        "embedded": {m: g[f"embeddings/{m}/done"][:] for m in exp.config.embedding_models},
        "diagram_status": {m: g[f"diagrams/{m}/status"][:] for m in exp.config.embedding_models},
    }
    return out


def embeddable_kinds(config: ExperimentConfig) -> dict[str, Kind]:
    return {m: REGISTRY[m].input_kind for m in config.embedding_models}
