"""The step journal: the runs stage's source of truth until an experiment completes.

The coordinator is its only writer. After every model call it appends one JSON
line per invocation (and one per run event, such as a run marked failed) before
it acts on the result. A crash therefore loses at most the calls in flight,
never a recorded step, and a step is recorded once because the next step of a
run is only submitted after the previous one is in the journal. Zarr arrays are
materialised from it; the journal is removed once the experiment is complete
and everything is in Zarr.

On a local folder each coordinator process appends to one segment file (a new
one every ``SEGMENT_BYTES``) with one ``write`` per call, and fsyncs it at most
every ``SYNC_EVERY_S`` and when it stops: a killed process loses nothing it
wrote (the page cache survives it), a power cut at most the last second, which
resume computes again like calls in flight. A reader may meet a torn last line
(being written, or cut by a power cut): it is ignored. On object storage, where
nothing can be appended to, each call writes one whole file (one PUT).

Files are read in the order they were written, because events such as
``failed`` and ``retry`` of one run only mean something in order. A file is
named ``<session>-<seq>-<token>.jsonl``: ``session`` is one more than the
highest session already in the journal, taken once by each coordinator
process (so a resumed coordinator's files sort after its predecessor's
whatever the clocks say; the lease, store/lease.py, keeps two coordinators
from driving one experiment at once), ``seq`` counts that process's files,
``token`` keeps two writers that broke that rule from replacing each other's
files. Files of older journals (``<uuid>.jsonl``, written in no recorded
order) are read first, by name.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ..errors import StoreError
from .root import StoreRoot


@dataclass(frozen=True)
class StepRecord:
    run: int
    step: int
    model: str
    kind: str  # output kind: "text" | "image"
    hash: str  # sha256 of the stored bytes
    text: str | None  # the text for text outputs
    seed: int  # the seed the model was called with (drawn fresh for unseeded runs)
    started_us: int  # microseconds since the epoch, for the whole batch call
    ended_us: int
    parameters_hash: str = ""  # JSON object in the object store: model id, revision, size, steps...
    batch_id: str = ""  # the model call it was computed in (journals before format 2 lack these)
    batch_size: int = 0
    batch_position: int = -1


@dataclass(frozen=True)
class RunEvent:
    run: int
    event: str  # "failed" | "retry"
    step: int
    error: str = ""


SEGMENT_BYTES = 64 << 20  # a local segment is closed and a new one started past this size
SYNC_EVERY_S = 1.0  # a local segment is fsynced at most this often (and when the coordinator stops)


def encode_record(rec: StepRecord | RunEvent) -> str:
    """One journal line (without its newline); also the pending-step spool's format."""
    kind = "step" if isinstance(rec, StepRecord) else "event"
    return json.dumps({"type": kind, **vars(rec)}, ensure_ascii=False)  # flat: no asdict deep copy


def decode_record(line: bytes | str) -> StepRecord | RunEvent:
    """What ``encode_record`` wrote; ValueError, KeyError, TypeError or AttributeError where it does not parse."""
    obj = json.loads(line)  # plain JSON: nothing in the store is unpickled
    kind = obj.pop("type")
    return StepRecord(**obj) if kind == "step" else RunEvent(**obj)


# <session>-<seq>-<token>.jsonl; zero-padded so that a listing sorted by name is in write order
_NAME = re.compile(r"(\d{8,})-(\d{10,})-([0-9a-f]{6})\.jsonl")


def _order(name: str) -> tuple:
    """Sort key: older unordered files (any other name) first, by name; then in write order."""
    m = _NAME.fullmatch(name)
    return (1, int(m[1]), int(m[2]), m[3]) if m else (0, name)


class Journal:
    def __init__(self, root: StoreRoot, prefix: str, fence: Callable[[], None] | None = None) -> None:
        self.root = root
        self.prefix = prefix
        self.fence = fence  # raises when this process no longer owns the experiment (store/lease.py)
        self._session: int | None = None  # taken at the first append
        self._seq = itertools.count()
        self._token = secrets.token_hex(3)
        self._lock = threading.Lock()
        self._segment: str | None = None  # key of the local segment this process appends to
        self._appendable = True  # False once the root said it cannot append (object storage)
        self._size = 0
        self._synced = time.monotonic()
        self._dirty = False  # appended since the last fsync

    def _next_name(self) -> str:
        if self._session is None:
            self._session = 1 + max((int(m[1]) for n in self.names() if (m := _NAME.fullmatch(n))), default=0)
        return f"{self._session:08d}-{next(self._seq):010d}-{self._token}.jsonl"

    def append(self, records: Iterable[StepRecord | RunEvent]) -> None:
        lines = [encode_record(rec) for rec in records]
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if self.fence is not None:
            self.fence()
        with self._lock:
            if self._appendable:
                if self._segment is None:
                    self._segment, self._size = f"{self.prefix}/{self._next_name()}", 0
                now = time.monotonic()
                sync = self._size == 0 or now - self._synced >= SYNC_EVERY_S  # a new segment: its name too
                if self.root.append_bytes(self._segment, data, sync=sync):
                    self._size += len(data)
                    self._dirty = not sync
                    if sync:
                        self._synced = now
                    if self._size >= SEGMENT_BYTES:
                        self._segment = None
                    return
                self._appendable = False  # object storage: one whole file per call
                self._segment = None
            self.root.write_bytes(f"{self.prefix}/{self._next_name()}", data)

    def close(self) -> None:
        """Make everything appended durable (the coordinator, when it stops)."""
        with self._lock:
            if self._segment is not None and self._dirty:
                self.root.append_bytes(self._segment, b"", sync=True)
                self._dirty = False

    def names(self) -> list[str]:
        """The journal's files, in the order they were written (older unordered ones first)."""
        return sorted((n for n in self.root.list(self.prefix) if n.endswith(".jsonl")), key=_order)

    def read_file(self, name: str) -> list[StepRecord | RunEvent]:
        """The records of one file; ``StoreError`` naming the file and line if one does not parse."""
        data = self.root.read_bytes(f"{self.prefix}/{name}")
        records: list[StepRecord | RunEvent] = []
        lines = data.split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip(b" \t\r\x00"):
                continue
            if n == len(lines):
                break  # no newline yet: a line being appended, or cut by a power cut; never acted on
            try:
                records.append(decode_record(line))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise StoreError(
                    f"journal {self.root.path_for_display(f'{self.prefix}/{name}')} is damaged at line {n}"
                ) from None
        return records

    def read(self) -> Iterator[StepRecord | RunEvent]:
        """Every record, in the order written."""
        for name in self.names():
            try:
                records = self.read_file(name)
            except FileNotFoundError:
                continue  # deleted by a clear() meanwhile
            yield from records

    def clear(self) -> None:
        if self.fence is not None:
            self.fence()
        self.close()
        for name in self.root.list(self.prefix):
            self.root.delete(f"{self.prefix}/{name}")
