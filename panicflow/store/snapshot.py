"""Reading a shard while the coordinator rewrites it: every ranged read of one object from one version.

Zarr reads a sharded array's chunk in two requests (the shard's index at its end, then the
chunk's bytes), each opening the object anew. Writes are atomic (a new file renamed over the
old one), but a reader whose two requests straddle a rewrite took the index of one version and
the bytes of another: "Stored and computed checksum do not match" (tests/test_faults.py, a reader
beside two coordinators; more often once runs end in waves and their rows are rewritten while
others are read: issue 20 item 6). The checksums keep that from ever giving wrong data, but the
read fails.

``SnapshotLocalStore`` is the read-only local store every reader gets
(``LocalRoot.zarr_store(read_only=True)``): a ranged read takes the whole object in one read
(one open: one version) and keeps it, so the ranged reads that follow are cut from the same
bytes. Whole-object reads (every other array: one-run chunks written whole) go through as they
are. What a reader sees is therefore, per object, one version at least as new as its first read
of it: the markers-first rule of ``open_experiment`` still holds (docs/store.md, "Reading while
writing"). The objects kept are bounded (``CACHE_BYTES``, least recently used first out) and
belong to this store object: reopen the experiment to see newer rows.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

CACHE_BYTES = 64 * 2**20  # shards kept per store object (a (run, step) shard of 16 runs is 0.1-1 MB)


class SnapshotLocalStore(LocalStore):
    """A read-only ``LocalStore`` whose ranged reads of one object all come from one version of it."""

    def __init__(self, root: Path | str, *, read_only: bool = True, cache_bytes: int = CACHE_BYTES) -> None:
        super().__init__(root, read_only=True)
        self.cache_bytes = cache_bytes
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # a Dask graph carries the store to its workers
        state = dict(self.__dict__)
        state.update(_kept=OrderedDict(), _size=0, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def with_read_only(self, read_only: bool = False) -> LocalStore:
        return LocalStore(self.root, read_only=read_only) if not read_only else SnapshotLocalStore(self.root)

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if byte_range is None:
            return await super().get(key, prototype)
        prototype = prototype or default_buffer_prototype()
        data = await self._whole(key)
        return None if data is None else prototype.buffer.from_bytes(_cut(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    async def _whole(self, key: str) -> bytes | None:
        with self._lock:
            data = self._kept.get(key)
            if data is not None:
                self._kept.move_to_end(key)
                return data
        if not self._is_open:
            await self._open()
        try:
            data = await asyncio.to_thread((self.root / key).read_bytes)  # one open: one version
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:  # another read of it finished first: keep one version
                return kept
            self._kept[key] = data
            self._size += len(data)
            while self._size > self.cache_bytes and len(self._kept) > 1:
                _, old = self._kept.popitem(last=False)
                self._size -= len(old)
        return data


def _cut(data: bytes, byte_range: ByteRequest) -> bytes:
    """The bytes of ``byte_range`` in ``data``, as ``LocalStore`` reads them from a file."""
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[max(0, len(data) - byte_range.suffix):]
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")
