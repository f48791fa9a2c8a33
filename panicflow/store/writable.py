"""A store that does not accept writes (read-only, full, over quota, not permitted): one line, exit 2.

Every command that writes into the store (``experiment run`` and ``resume``, ``analyse``, ``doctor
--fix``, ``import legacy``) calls ``check_writable`` first, before a cluster starts or anything is
computed, and runs inside ``writing_into``, which turns a write that fails later (the disk filled
meanwhile) into the same line. Both raise ``StoreNotWritable``, a ``StoreError`` (the CLI prints
it and exits 2): ``store: cannot write to LOCATION: REASON``, as ``experiment run`` says it.

A running experiment that meets a full store stops with ``StoreIOError`` instead (panicflow.api):
its line names the resume command that continues it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from typing import TYPE_CHECKING, Iterator

from ..errors import STORE_WRITE_ERRNOS, StoreError, StoreIOError
from .root import TMP_PREFIX, LocalRoot, open_root

if TYPE_CHECKING:
    from . import Store

# no write heals these; EACCES/EPERM only count for a file inside the store (they mean other things elsewhere)
_DENIED = frozenset({errno.EACCES, errno.EPERM})


class StoreNotWritable(StoreError):
    """The store refuses writes (read-only, full, no permission); nothing was written by this command,
    or, when it filled meanwhile, what it wrote is incomplete and ignored by readers."""


def _line(location: str, exc: OSError, where: str = "") -> str:
    reason = (exc.strerror or os.strerror(exc.errno)) if exc.errno else str(exc)
    return f"store: cannot write to {location}: {reason}{where}"


def check_writable(store: Store) -> None:
    """Write and remove a small file at the store's root: ``StoreNotWritable`` if it cannot be written.

    A few bytes, not an empty file: a full tmpfs still creates empty files. A store still to be
    created (``Store(create=True, lazy=True)``) is checked when it is created."""
    if getattr(store, "_pending_marker", False):
        return
    key = f"{TMP_PREFIX}writable-{uuid.uuid4().hex[:12]}"
    try:
        store.root.write_bytes(key, b"panicflow: can this store be written?\n")
    except OSError as exc:
        raise StoreNotWritable(_line(store.location, exc)) from None
    with contextlib.suppress(OSError):
        store.root.delete(key)


def not_writable(location: str, root_path: str | None, exc: BaseException | None) -> StoreNotWritable | None:
    """``StoreNotWritable`` for an OS error, in ``exc`` or what caused it, that says the store at
    ``location`` (its folder ``root_path``; None for an object store) refuses writes; else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StoreNotWritable):
            return exc
        if isinstance(exc, OSError) and not isinstance(exc, StoreIOError) and exc.errno in STORE_WRITE_ERRNOS | _DENIED:
            names = [n for n in (exc.filename, exc.filename2) if isinstance(n, str)]
            inside = [n for n in names if root_path and (n == root_path or n.startswith(root_path + os.sep))]
            if inside or (not names and exc.errno in STORE_WRITE_ERRNOS):
                where = ""
                if inside and root_path and inside[0] != root_path:
                    rel = os.path.relpath(inside[0], root_path)
                    if os.path.basename(rel).startswith(TMP_PREFIX):  # a temp file: name the folder it was for
                        rel = os.path.dirname(rel)
                    where = f" ({rel})" if rel else ""
                return StoreNotWritable(_line(location, exc, where))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def writing_into(store: Store | str, *, check: bool = True) -> Iterator[None]:
    """Run a command that writes into ``store`` (a ``Store``, or a location for a store the command
    itself opens or creates): ``check_writable`` first (with ``check`` and a ``Store``), and a write
    refused meanwhile raises ``StoreNotWritable`` instead of a raw ``OSError``."""
    if isinstance(store, str):
        location = store
        try:
            root = open_root(location)
        except Exception:  # a bad location: the command says so itself
            root = None
    else:
        location, root = store.location, store.root
        if check:
            check_writable(store)
    root_path = root.path if isinstance(root, LocalRoot) else None
    if root_path and isinstance(store, str):
        location = root_path  # as Store names a local store: absolute
    try:
        yield
    except Exception as exc:
        err = not_writable(location, root_path, exc)
        if err is None or err is exc:
            raise
        raise err from exc


__all__ = ["StoreNotWritable", "check_writable", "not_writable", "writing_into"]
