"""Models resident in a worker process between calls, evicted least recently used.

A module-level cache lives as long as the worker process: a restarted worker
starts empty and rebuilds models on first use (``ModelPlugin`` re-registers
extra registry entries, and can preload models, when a worker starts).

Memory budget. Each registry entry gives its approximate GPU memory need
(``extra['approx_gpu_gb']``; dummies need 0). Before building a model that is
not loaded, the cache evicts the least recently used models until the loaded
ones plus the new one fit the budget. The budget is, in order: ``set_memory_budget``,
the ``panicflow.model-memory-gb`` setting (the ``PANICFLOW_MODEL_MEMORY_GB`` environment
variable, then dask config: docs/settings.md), 90% of the GPU's memory when torch is
loaded and sees a GPU, else unlimited. A model larger than the whole budget is still
loaded, alone.

Scheduling. ``loaded_models()`` (on a worker) and ``held_models(client)`` (from
the client: worker address -> loaded model names) let the scheduler send a
batch to a worker that already holds its model. ``invoke`` is the task to run
a batch through a model on a worker.

A model evicted while another thread still runs a batch on it stays alive
until that batch ends (Python keeps it referenced); GPU workers run one
thread, so this only matters on CPU stand-ins.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Union

from .. import settings
from . import REGISTRY, get_spec
from .base import EmbeddingModel, GenerativeModel, ModelSpec

MEMORY_ENV = "PANICFLOW_MODEL_MEMORY_GB"

Model = Union[GenerativeModel, EmbeddingModel]


@dataclass
class _Resident:
    model: Model
    gb: float
    loaded_at: float
    last_used: float
    calls: int = 0


_lock = threading.RLock()
_loaded: "OrderedDict[str, _Resident]" = OrderedDict()  # least recently used first
_budget_gb: float | None = None
_stats = {"loads": 0, "evictions": 0}
_evicted: list[str] = []  # names, oldest first (last 100)


def approx_gb(spec: ModelSpec) -> float:
    """The approximate memory a model needs, in GB (0 when the entry does not say)."""
    return float(spec.extra.get("approx_gpu_gb", 0.0) or 0.0)


def set_memory_budget(gb: float | None) -> None:
    """This process's memory budget for resident models, in GB (``None``: back to the defaults)."""
    global _budget_gb
    _budget_gb = None if gb is None else float(gb)


def memory_budget_gb() -> float | None:
    """The budget in force (``None`` means unlimited)."""
    if _budget_gb is not None:
        return _budget_gb
    value = settings.get("model-memory-gb")  # $PANICFLOW_MODEL_MEMORY_GB, then dask config
    if value is not None:
        return value
    torch = sys.modules.get("torch")  # never import torch just to ask
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return 0.9 * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 1e9
        except Exception:  # pragma: no cover
            pass
    return None


def _release(resident: _Resident) -> None:
    close = getattr(resident.model, "close", None)
    if callable(close):
        close()


def _free_accelerator_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass


def _evict(name: str) -> None:
    resident = _loaded.pop(name)
    _release(resident)
    _stats["evictions"] += 1
    _evicted.append(name)
    del _evicted[:-100]


def _make_room(need: float) -> None:
    budget = memory_budget_gb()
    if budget is None:
        return
    evicted = False
    while _loaded and used_gb() + need > budget:
        _evict(next(iter(_loaded)))
        evicted = True
    if evicted:
        _free_accelerator_memory()


def get_model(name: str) -> Model:
    """The loaded model called ``name``, building it on first use in this process.

    Marks it most recently used; loading a new model may first evict the least
    recently used ones to stay within the memory budget.
    """
    with _lock:
        resident = _loaded.get(name)
        now = time.monotonic()
        if resident is None:
            spec = get_spec(name)
            need = approx_gb(spec)
            _make_room(need)
            model = spec.factory(spec)
            resident = _Resident(model=model, gb=need, loaded_at=now, last_used=now)
            _loaded[name] = resident
            _stats["loads"] += 1
        else:
            _loaded.move_to_end(name)
            resident.last_used = now
        resident.calls += 1
        return resident.model


def loaded_models() -> list[str]:
    """Names of the models resident in this process, least recently used first."""
    with _lock:
        return list(_loaded)


def used_gb() -> float:
    with _lock:
        return sum(r.gb for r in _loaded.values())


def unload(name: str) -> bool:
    """Evict ``name`` now; False when it was not loaded."""
    with _lock:
        if name not in _loaded:
            return False
        _evict(name)
    _free_accelerator_memory()
    return True


def clear() -> None:
    """Evict every model (a worker plugin's teardown, tests); a garbage collection only when one was loaded
    (a full ``gc.collect`` takes ~0.3 s in a process that imported torch and transformers, for nothing to free)."""
    with _lock:
        evicted = bool(_loaded)
        for name in list(_loaded):
            _evict(name)
    if evicted:
        _free_accelerator_memory()


def state() -> dict[str, Any]:
    """What this process holds: models (LRU first) with their memory and use, budget, counters."""
    with _lock:
        return {
            "models": {
                name: {"approx_gb": r.gb, "calls": r.calls, "idle_s": time.monotonic() - r.last_used}
                for name, r in _loaded.items()
            },
            "used_gb": sum(r.gb for r in _loaded.values()),
            "budget_gb": memory_budget_gb(),
            "loads": _stats["loads"],
            "evictions": _stats["evictions"],
            "evicted": list(_evicted),
            "pid": os.getpid(),
        }


def invoke(name: str, inputs: list[Any], seeds: list[int] | None = None) -> tuple[list[Any] | Any, dict[str, Any]]:
    """Run one batch through the resident model ``name``: ``(outputs, parameters)``.

    Generative models get ``seeds`` (one per input) and return a list;
    embedders return a float32 array. ``parameters`` is what the model reports
    it used (id, revision, size, steps, dtype...), to be stored with the outputs.
    """
    model = get_model(name)
    if isinstance(model, GenerativeModel):
        if seeds is None:
            raise ValueError(f"{name} is generative: give one seed per input")
        outputs: Any = model.generate(list(inputs), list(seeds))
    else:
        outputs = model.embed(list(inputs))
    params = model.parameters() if hasattr(model, "parameters") else {}
    return outputs, dict(params, model=name)


def held_models(client) -> dict[str, list[str]]:
    """From the client: each worker's address -> the models it holds (LRU first)."""
    return client.run(loaded_models)


def workers_holding(client, name: str) -> list[str]:
    """Addresses of the workers that already hold ``name``."""
    return [addr for addr, names in held_models(client).items() if name in names]


def register_specs(specs: Iterable[ModelSpec]) -> None:
    """Add registry entries in this process (replacing same-named ones); for worker plugins."""
    for spec in specs:
        REGISTRY[spec.name] = spec


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a core dependency
    WorkerPlugin = object  # type: ignore[misc,assignment]


class ModelPlugin(WorkerPlugin):
    """A worker plugin: registry entries to add, models to preload, memory budget.

    Runs on every current and future worker (a restarted worker too), so that
    entries created at run time (random-weight models of the GPU check, say)
    resolve by name there, and frees the models when the worker closes.
    """

    name = "panicflow-models"

    def __init__(self, specs: Iterable[ModelSpec] = (), preload: Iterable[str] = (), memory_gb: float | None = None):
        self.specs = list(specs)
        self.preload = list(preload)
        self.memory_gb = memory_gb

    def setup(self, worker=None) -> None:
        register_specs(self.specs)
        if self.memory_gb is not None:
            set_memory_budget(self.memory_gb)
        for name in self.preload:
            get_model(name)

    def teardown(self, worker=None) -> None:
        clear()
