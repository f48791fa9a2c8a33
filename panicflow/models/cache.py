"""Models resident in a worker process between calls.

A module-level cache lives as long as the worker process: a restarted worker
starts empty and rebuilds models on first use. Issue 3 adds memory-aware LRU
eviction for GPU workers.
"""

from __future__ import annotations

import threading
from typing import Union

from . import get_spec
from .base import EmbeddingModel, GenerativeModel

_lock = threading.Lock()
_loaded: dict[str, Union[GenerativeModel, EmbeddingModel]] = {}


def get_model(name: str):
    """The loaded model called ``name``, building it on first use in this process."""
    with _lock:
        model = _loaded.get(name)
        if model is None:
            spec = get_spec(name)
            model = spec.factory(spec)
            _loaded[name] = model
        return model


def loaded_models() -> list[str]:
    with _lock:
        return list(_loaded)
