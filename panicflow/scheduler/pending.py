"""Steps the coordinator recorded but has not written to Zarr yet: on local disk, not in memory.

A run's steps go to Zarr when its 1024-step chunk fills, when it ends, and when the coordinator
shows the runs still going (``Coordinator._show_running``). Showing rewrites whole chunks, so
with many runs going it is slow (about 15 ms per run here) and backs off to a tenth of the
coordinator's time: with 10,000 runs it came every 25 minutes or so, and the steps in between,
about 490 bytes each as Python objects, grew the coordinator by 350 MB (10,000 runs x 100 steps,
docs/performance.md). Here each pending step costs 8 bytes of memory: the step itself, as a
journal line (``encode_record``; nothing is unpickled, tests/test_security.py), goes into one
unlinked temporary file per process (``tempfile``: the coordinator's own disk, whatever the
store is) and is read back when it is written to Zarr. The journal, not this file, is what
makes a step durable: a crash loses the file with the process, and a resume reads the journal.

The file is emptied whenever no pending step is left in it, which every show of the running
runs brings about. Should the file fail (a full temporary folder), steps stay in memory as before.
"""

from __future__ import annotations

import array
import logging
import os
import tempfile
import threading
from typing import IO, Iterator

from ..store.journal import StepRecord, decode_record, encode_record

log = logging.getLogger(__name__)

_LENGTH_BITS = 24  # a step's JSON is far below 16 MB; offset and length share one 64-bit word


class _Spool:
    """One append-only temporary file per process; ``put`` gives where, ``get`` reads it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # two experiments may run in one process, from two threads
        self._file: IO[bytes] | None = None
        self._end = 0
        self.live = 0  # steps written here and not yet released
        self.broken = False  # writing failed once: steps stay in memory from then on

    def put(self, step: StepRecord) -> int | None:
        data = encode_record(step).encode()
        if self.broken or len(data) >= 1 << _LENGTH_BITS:
            return None
        with self._lock:
            try:
                if self._file is None:
                    self._file = tempfile.TemporaryFile(prefix="panicflow-pending-")
                os.pwrite(self._file.fileno(), data, self._end)
            except OSError as exc:
                self.broken = True
                log.warning("pending steps stay in memory from now on: cannot write to %s (%s)", tempfile.gettempdir(), exc)
                return None
            where = self._end << _LENGTH_BITS | len(data)
            self._end += len(data)
            self.live += 1
            return where

    def get(self, where: int) -> StepRecord:
        assert self._file is not None
        data = os.pread(self._file.fileno(), where & ((1 << _LENGTH_BITS) - 1), where >> _LENGTH_BITS)
        return decode_record(data, validate=False)  # type: ignore[return-value]  # only steps, written by put above

    def release(self, n: int) -> None:
        with self._lock:
            self.live -= n
            if self.live == 0 and self._end and self._file is not None:
                self._file.truncate(0)  # nothing pending is left here: start the file again
                self._end = 0

    @property
    def size(self) -> int:
        return self._end


SPOOL = _Spool()


class PendingSteps:
    """One run's pending steps, in order: spooled ones, then (only if the spool failed) in memory."""

    __slots__ = ("_spooled", "_memory")

    def __init__(self) -> None:
        self._spooled: array.array | None = None  # created at the first step: most runs wait with none
        self._memory: list | None = None

    def append(self, step: StepRecord) -> None:
        where = None if self._memory is not None else SPOOL.put(step)  # once in memory, stay: order kept
        if where is None:
            if self._memory is None:
                self._memory = []
            self._memory.append(step)
            return
        if self._spooled is None:
            self._spooled = array.array("Q")
        self._spooled.append(where)

    def __len__(self) -> int:
        return (len(self._spooled) if self._spooled is not None else 0) + (len(self._memory) if self._memory else 0)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[StepRecord]:
        if self._spooled is not None:
            for where in self._spooled:
                yield SPOOL.get(where)
        if self._memory:
            yield from self._memory

    def clear(self) -> None:
        if self._spooled is not None:
            SPOOL.release(len(self._spooled))
        self._spooled = self._memory = None
