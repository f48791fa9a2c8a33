"""A store that stops accepting writes under a worker task: one stop, not a model failure.

A full disk (or a quota, or a store remounted read-only) makes a task's write into the store
raise an ``OSError``. Raised, Dask retries the task and the coordinator retries the model call
run by run, each retry logging a traceback on the worker, until every run is failed as if the
model were broken. ``writes_into(store)`` turns such an error into ``StoreWriteFailed``, and a
task decorated with ``returns_store_failures`` returns it instead of raising it: Dask sees a
result, and the coordinator raises it, which stops the experiment with one line (panicflow.api).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, TypeVar

from ..errors import STORE_WRITE_ERRNOS, StoreWriteFailed

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def writes_into(store: Any) -> Iterator[None]:
    """Writes into ``store`` (a ``panicflow.store.Store``): a full or read-only store raises ``StoreWriteFailed``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORE_WRITE_ERRNOS or isinstance(exc, StoreWriteFailed):
            raise
        # a write() that fails names no file: name the store's folder, which the coordinator recognises
        where = exc.filename or getattr(store.root, "path", None) or store.location
        raise StoreWriteFailed(exc.errno, exc.strerror or os.strerror(exc.errno), where) from None


def returns_store_failures(task: F) -> F:
    """``task``, returning the ``StoreWriteFailed`` it raises instead of raising it (never retried)."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except StoreWriteFailed as exc:
            return exc

    return run  # type: ignore[return-value]
