"""Functions that run on Dask workers.

They receive plain values (a store URL, ids, model names, hashes), open what
they need themselves, and return small results: images never travel through
the coordinator. Each is safe to run twice (a worker may die mid-task and
Dask re-runs it): objects are content-addressed and the Zarr chunks a task
writes are its own and get the same values again.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

from .. import settings
from ..models import REGISTRY, Kind, get_spec
from ..models.cache import get_model
from ..store import Store
from ..store.objects import encode_image
from ..store.experiment import EmbeddingTiming, Experiment, TaskTiming, now_us, vector_digest, write_embedding_rows
from .store_faults import returns_store_failures, writes_into


@lru_cache(maxsize=8)
def _store(url: str) -> Store:
    return Store(url)


@returns_store_failures  # a full or read-only store stops the experiment: never retried as a model failure
def invoke_batch(
    store_url: str, model: str, inputs: list[str], seeds: list[int], invariant: str = "none"
) -> dict[str, Any]:
    """One batched model call: decode inputs, generate, store outputs.

    ``inputs`` are texts for text-input models and object hashes for image
    inputs, so the model always sees outputs exactly as stored. ``invariant``
    ``per_item`` calls the model once per input (the model stays resident):
    each output is then what the model gives that input alone, whatever the
    batch, at the cost of the batched kernels' speed. A model whose entry says
    ``batch_reproducible: False`` is always called that way.
    """
    store = _store(store_url)
    spec = get_spec(model)  # UnknownModel (a PermanentError), not KeyError, on a worker without it
    if spec.input_kind is Kind.IMAGE:
        decoded = [store.objects.get_image(h) for h in inputs]
    else:
        decoded = list(inputs)
    impl = get_model(model)
    if not spec.extra.get("batch_reproducible", True):
        # its batched outputs depend on the rest of the batch (GLM-Image: one random stream per call),
        # so it is always called one input at a time, and the parameters say so
        invariant = "per_item"
    started = now_us()
    if invariant == "per_item":
        outputs = [out for item, seed in zip(decoded, seeds) for out in impl.generate([item], [int(seed)])]
    else:
        outputs = impl.generate(decoded, list(seeds))
    ended = now_us()
    if len(outputs) != len(inputs):
        raise RuntimeError(f"{model} returned {len(outputs)} outputs for {len(inputs)} inputs")
    results = []
    # the generation parameters (model id, revision, size, steps, dtype...) as a JSON object in the
    # store: identical for most calls, so content addressing keeps one copy
    extra = {"batch_invariant": invariant} if invariant != "none" else {}
    params = json.dumps({"model": model, **impl.parameters(), **extra}, sort_keys=True, default=str)
    new: list[bool] = []
    with writes_into(store), store.root.unsynced():  # no flush per batch: resume verifies the last journaled outputs
        params_hash = store.objects.put_text(params)
        for out in outputs:
            if spec.output_kind is Kind.TEXT:
                if not isinstance(out, str):
                    raise TypeError(f"{model} returned {type(out).__name__}, expected str")
                digest, created = store.objects.put(out.encode("utf-8"))
                results.append((digest, out))
            else:
                digest, created = store.objects.put(encode_image(out))
                results.append((digest, None))
            # created: these bytes were never in the store, so they repeat no earlier step (loop check)
            new.append(created)
    return {
        "outputs": results, "new": new, "started_us": started, "ended_us": ended,
        "parameters_hash": params_hash, "worker": _worker_address(),
    }


def _worker_address() -> str | None:
    """The worker running this task, so the coordinator can send it that model's next batches."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:  # not on a worker (called directly)
        return None


@returns_store_failures
def embed_run(store_url: str, experiment_id: str, run: int, model: str, length: int, batch_size: int,
              lease_epoch: int = 0) -> EmbeddingTiming:
    """Embed every output of one run that ``model`` can embed, and write its rows.

    Reads the run's materialised outputs from Zarr (written by the coordinator
    before it submits this task); returns when (until its rows are written) and
    where it ran, and the sha256 of the rows (``vector_digest``), for the
    coordinator to store with ``done``. Nothing is
    written once the coordinator's lease ``lease_epoch`` was taken over (store/lease.py).
    """
    started = now_us()
    store = _store(store_url)
    exp = Experiment(store.root, experiment_id)
    if lease_epoch:
        exp.fenced_by(lease_epoch)
    g = exp.group(read_only=True)
    spec = get_spec(model)  # UnknownModel (a PermanentError), not KeyError, on a worker without it
    kinds = g["kind"][run, :length]
    steps = [i for i, k in enumerate(kinds) if k == spec.input_kind.value]
    vectors = np.full((length, spec.dim), np.nan, dtype=np.float32)
    if steps:
        if spec.input_kind is Kind.TEXT:
            texts = g["text"][run, :length]
            items = [str(texts[i]) for i in steps]
        else:
            hashes = g["output_hash"][run, :length]
            items = [hashes[i] for i in steps]
        impl = get_model(model)
        for start in range(0, len(steps), batch_size):
            chunk = items[start : start + batch_size]
            if spec.input_kind is Kind.IMAGE:
                chunk = [store.objects.get_image(h) for h in chunk]
            out = np.asarray(impl.embed(chunk), dtype=np.float32)
            if out.shape != (len(chunk), spec.dim):
                raise RuntimeError(f"{model} returned shape {out.shape}, expected {(len(chunk), spec.dim)}")
            vectors[steps[start : start + batch_size]] = out
    with writes_into(store):
        write_embedding_rows(exp, run, model, vectors)
    # the digest of the rows as written, stored beside done: doctor finds a vector changed afterwards
    return EmbeddingTiming(started, now_us(), _worker_address() or "", vector_digest(vectors))


def _memory_budget_gb(configured: float | None) -> float | None:
    """The memory one diagram may use: as configured (``persistence.memory_budget_gb``), else
    this worker's ``panicflow.diagram.memory-budget-gb`` setting, else a share of its limit.

    Each of a worker's threads may run a diagram at once (each in its own child
    process, which Dask's memory monitor does not see), so the share is half the
    worker's memory limit divided by its threads; the other half is for what the
    worker itself holds. None (no limit) off a worker or on a worker without a limit.
    """
    if configured is not None:
        return configured
    setting = settings.get("diagram.memory-budget-gb")
    if setting is not None:
        return setting
    try:
        from distributed import get_worker

        worker = get_worker()
        limit = worker.memory_manager.memory_limit
        nthreads = max(1, int(worker.state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return None
    return limit / 1e9 * 0.5 / nthreads if limit else None


def _time_limit_s(configured: float | None) -> float | None:
    """How long one diagram may compute: as configured (``persistence.time_limit_s``), else
    this worker's ``panicflow.diagram.time-limit`` setting (default 3600 s; None: no limit)."""
    return configured if configured is not None else settings.get("diagram.time-limit")


def diagram_run(store_url: str, experiment_id: str, run: int, model: str, length: int, options: dict[str, Any]):
    """Persistence diagram of one (run, embedding model) point cloud.

    giotto-ph runs in a child process of this thread (``analysis.diagram_process``):
    several threads of a worker never share it, ``time_limit_s`` stops it (status
    ``over_time``; not in the config: this worker's ``panicflow.diagram.time-limit``
    setting), and a child killed for memory is recorded (status ``error``)
    instead of taking the worker down. These outcomes are returned, not raised, so
    Dask does not retry them.
    """
    from ..analysis.topology import PersistenceOptions, compute_diagram

    started = now_us()
    store = _store(store_url)
    exp = Experiment(store.root, experiment_id)
    vectors = exp.group(read_only=True)[f"embeddings/{model}/vector"][run, :length]
    steps = np.flatnonzero(~np.isnan(vectors).any(axis=1))
    opts = {k: v for k, v in options.items() if v is not None}  # None: the settings below, or topology's default
    opts["memory_budget_gb"] = _memory_budget_gb(options.get("memory_budget_gb"))
    opts["time_limit_s"] = _time_limit_s(options.get("time_limit_s"))
    # the stored float32 vectors, exactly as a direct giotto-ph call on the store would see them
    result = compute_diagram(vectors[steps], PersistenceOptions(**opts), rng_seed=run)
    result.steps = steps
    result.timing = TaskTiming(started, now_us(), _worker_address() or "")
    return result
