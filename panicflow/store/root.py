"""Where a store lives: a local folder or an fsspec URL, behind one small API.

Keys are '/'-separated paths relative to the root. They are validated so that
no key can escape the root. Writes are atomic: a reader sees the old content or
the new, never a partial file. Temporaries are named ``.tmp-*`` and are never
listed.

``file://`` URLs open as a local root: the local code path has the stronger
guarantees (fsync, exclusive ``os.link`` for write-once). ``FsspecRoot`` can
still be built on a ``file://`` URL directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Iterator

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:  # zarr is imported lazily: it is heavy, and most users only read bytes
    from zarr.storage import FsspecStore, LocalStore

TMP_PREFIX = ".tmp-"

# Protocols whose single PUT is already atomic: writing through a temp key then
# mv would cost a server-side copy and a delete per object for nothing.
_ATOMIC_PUT_PROTOCOLS = frozenset({"memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def check_key(key: str, *, allow_root: bool = False) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``ValueError``.

    ``allow_root`` accepts ``""`` (the root itself), for listing.
    """
    if not isinstance(key, str):
        raise ValueError(f"store key must be a str, not {type(key).__name__}")
    if key == "" and allow_root:
        return key
    if not key or "\\" in key or "\x00" in key or key.startswith("/"):
        raise ValueError(f"invalid store key {key!r}")
    # Empty, '.' and '..' segments would make two spellings of one key or escape the root.
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid store key {key!r}")
    return key


def _tmp_name() -> str:
    return f"{TMP_PREFIX}{uuid.uuid4().hex}"


class StoreRoot(ABC):
    """One storage root; all paths are keys relative to it."""

    url: str
    is_local: bool

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The content of ``key``; ``FileNotFoundError`` if missing."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace ``key`` atomically."""

    @contextlib.contextmanager
    def unsynced(self) -> Iterator[None]:
        """Writes inside are atomic but not flushed to disk (object stores: durable at once anyway).

        For model outputs: an fsync per object, or a ``syncfs`` per batch, was most of a batch's
        cost (issue 7 item 8). A process crash loses nothing written (the page cache survives
        it); after a power cut, resume verifies the objects of the last journaled steps and
        computes again from the first one lost (``Coordinator.load``, docs/store.md).
        """
        yield

    @contextlib.contextmanager
    def deferred_sync(self) -> Iterator[None]:
        """Writes inside are durable when the block ends (object stores: at once)."""
        yield

    def append_bytes(self, key: str, data: bytes, *, sync: bool = False) -> bool:
        """Append ``data`` to the file at ``key`` (created if missing) in one write, fsynced if
        ``sync``; False, writing nothing, where files cannot be appended to (object stores)."""
        return False

    @abstractmethod
    def write_bytes_once(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists; True when this call created it."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists, with exactly one winner among racing writers
        (unlike ``write_bytes_once``); True when this call created it. For locks and leases."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a file or folder is at ``key``."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Sorted names of the files directly inside folder ``prefix``."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Sorted names of the sub-folders directly inside ``prefix`` (no dot-names)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the file at ``key``; a missing key is fine."""

    @abstractmethod
    def zarr_store(self, key: str, read_only: bool = False) -> Any:
        """A zarr 3 store rooted at folder ``key``."""

    @abstractmethod
    def path_for_display(self, key: str) -> str:
        """Where ``key`` lives, for messages."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


_unsynced = threading.local()  # per thread: inside an unsynced() block
_deferred = threading.local()  # per thread: paths written inside a deferred_sync block


def _syncfs(folder: str) -> bool:
    """Flush the filesystem holding ``folder`` (Linux ``syncfs``); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY)
    except (OSError, AttributeError):
        return False
    try:
        return hasattr(libc, "syncfs") and libc.syncfs(fd) == 0
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalRoot(StoreRoot):
    """A folder on a local (or network-mounted POSIX) filesystem."""

    is_local = True

    def __init__(self, path: str | os.PathLike[str], url: str | None = None) -> None:
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.url = url if url is not None else self.path
        self._known_dirs: set[str] = set()  # folders this process made or saw: no mkdir per write

    def _path(self, key: str, *, allow_root: bool = False) -> str:
        check_key(key, allow_root=allow_root)
        return os.path.join(self.path, *key.split("/")) if key else self.path

    def read_bytes(self, key: str) -> bytes:
        with open(self._path(key), "rb") as f:
            return f.read()

    @contextlib.contextmanager
    def unsynced(self) -> Iterator[None]:
        outer = getattr(_unsynced, "on", False)
        _unsynced.on = True
        try:
            yield
        finally:
            _unsynced.on = outer

    @contextlib.contextmanager
    def deferred_sync(self) -> Iterator[None]:
        """Make every write inside durable once, at the end, instead of one fsync each (one
        ``syncfs`` of the filesystem, else an fsync per file): for bulk writes that must be on
        disk before what names them is written (the legacy importer)."""
        if getattr(_deferred, "paths", None) is not None:  # nested: the outer block syncs
            yield
            return
        _deferred.paths = []
        try:
            yield
            paths, _deferred.paths = _deferred.paths, None
            if paths and not _syncfs(self.path):
                for path in paths:
                    _fsync_path(path)
        finally:
            _deferred.paths = None

    def _makedirs(self, folder: str) -> None:
        # objects/<h[:2]>/<h[2:4]>/: an os.makedirs per object cost about 0.3 ms in mkdir calls
        if folder not in self._known_dirs:
            os.makedirs(folder, exist_ok=True)
            self._known_dirs.add(folder)

    def append_bytes(self, key: str, data: bytes, *, sync: bool = False) -> bool:
        # opened and closed per append: no file stays open for writing between calls (an open
        # one blocks remounting the filesystem read-only, and outlives nothing useful)
        path = self._path(key)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        new = sync and not os.path.exists(path)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            self._makedirs(os.path.dirname(path))
            fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_path(os.path.dirname(path))  # the new name survives a power cut too
        return True

    def _write_tmp(self, path: str, data: bytes) -> str:
        """Write ``data`` to a temp file next to ``path`` (fsynced unless ``unsynced``); return its name."""
        folder = os.path.dirname(path)
        if folder not in self._known_dirs:
            self._makedirs(folder)
        # Same folder as the target, so that replace/link stays on one filesystem.
        tmp = os.path.join(folder, _tmp_name())
        try:
            try:
                f = open(tmp, "xb")
            except FileNotFoundError:
                self._known_dirs.discard(folder)  # removed meanwhile (or never made)
                self._makedirs(folder)
                f = open(tmp, "xb")
            with f:
                f.write(data)
                f.flush()
                deferred = getattr(_deferred, "paths", None)
                if deferred is not None:
                    deferred.append(path)
                elif not getattr(_unsynced, "on", False):
                    os.fsync(f.fileno())
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return tmp

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quiet(tmp)
            raise

    def write_bytes_once(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if os.path.exists(path):
            return False
        tmp = self._write_tmp(path, data)
        try:
            linked = _link_new(tmp, path)
            if linked is None:
                # No hard links here (some FUSE/SMB mounts): still atomic, but two
                # racing writers may both report True (same content, so harmless).
                os.replace(tmp, path)
                return True
            return linked
        finally:
            _unlink_quiet(tmp)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            linked = _link_new(tmp, path)
        finally:
            _unlink_quiet(tmp)
        if linked is not None:
            return linked
        try:  # no hard links here (some FUSE/SMB mounts): O_EXCL is still exclusive
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def _scan(self, prefix: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self._path(prefix, allow_root=True)) as it:
                return list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list(self, prefix: str) -> list[str]:
        return sorted(
            e.name for e in self._scan(prefix) if e.is_file() and not e.name.startswith(TMP_PREFIX)
        )

    def list_dirs(self, prefix: str) -> list[str]:
        return sorted(e.name for e in self._scan(prefix) if e.is_dir() and not e.name.startswith("."))

    def delete(self, key: str) -> None:
        _unlink_quiet(self._path(key))

    def zarr_store(self, key: str, read_only: bool = False) -> LocalStore:
        from zarr.storage import LocalStore

        if read_only:  # a reader: a shard's ranged reads from one version of it (store/snapshot.py)
            from .snapshot import SnapshotLocalStore

            return SnapshotLocalStore(self._path(key))
        return LocalStore(self._path(key), read_only=read_only)

    def path_for_display(self, key: str) -> str:
        return self._path(key, allow_root=True)


class FsspecRoot(StoreRoot):
    """A root behind any fsspec URL (``memory://``, ``s3://``, ``gs://``...)."""

    is_local = False

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, root = url_to_fs(url, **self.storage_options)
        self.root = root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._atomic_put = bool(_ATOMIC_PUT_PROTOCOLS.intersection(protocols))

    def _path(self, key: str, *, allow_root: bool = False) -> str:
        check_key(key, allow_root=allow_root)
        return f"{self.root}/{key}" if key else self.root

    def read_bytes(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(key)))

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self._atomic_put:
            self.fs.pipe_file(path, data)
            return
        # Filesystems with real files (file, sftp...): write aside, then rename.
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path.rsplit('/', 1)[0]}/{_tmp_name()}"
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        except BaseException:
            self._rm_quiet(tmp)
            raise

    def write_bytes_once(self, key: str, data: bytes) -> bool:
        # Object stores have no portable create-if-absent: racing writers may
        # both report True. Callers use this for content-addressed data, where
        # both wrote the same bytes, so only the "created" count can be off.
        if self.exists(key):
            return False
        self.write_bytes(key, data)
        return True

    def create_exclusive(self, key: str, data: bytes) -> bool:
        # fsspec's mode="create": a conditional PUT (If-None-Match: *) on S3, "xb" in memory;
        # filesystems without an atomic form check then write (documented in docs/store.md).
        path = self._path(key)
        if not self._atomic_put:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def _ls(self, prefix: str) -> list[dict[str, Any]]:
        path = self._path(prefix, allow_root=True)
        # Other processes write to the same root: do not trust a listing cache.
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = path.rstrip("/")
        out = []
        for e in entries:
            name = str(e["name"]).rstrip("/")
            if name != base:  # some filesystems list a file as itself
                out.append({**e, "name": name.rsplit("/", 1)[-1]})
        return out

    def list(self, prefix: str) -> list[str]:
        return sorted(
            e["name"] for e in self._ls(prefix)
            if e["type"] == "file" and not e["name"].startswith(TMP_PREFIX)
        )

    def list_dirs(self, prefix: str) -> list[str]:
        return sorted(
            e["name"] for e in self._ls(prefix)
            if e["type"] == "directory" and not e["name"].startswith(".")
        )

    def delete(self, key: str) -> None:
        self._rm_quiet(self._path(key))

    def _rm_quiet(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _url(self, key: str) -> str:
        check_key(key)
        return f"{self.url.rstrip('/')}/{key}"

    def zarr_store(self, key: str, read_only: bool = False) -> FsspecStore:
        from zarr.storage import FsspecStore

        # from_url builds an async filesystem (wrapping sync ones); memory:// keeps
        # its data in a class-level dict, so the store sees what read_bytes sees.
        opts = dict(self.storage_options)
        if isinstance(self.fs, LocalFileSystem):
            opts.setdefault("auto_mkdir", True)  # zarr writes chunks into missing folders
        return FsspecStore.from_url(self._url(key), storage_options=opts or None, read_only=read_only)

    def path_for_display(self, key: str) -> str:
        return self._url(key) if key else self.url


def _link_new(tmp: str, path: str) -> bool | None:
    """Give the full file ``tmp`` the name ``path`` unless it exists: link() fails if the name exists,
    unlike replace(), so exactly one concurrent writer wins and the name only ever points at a full
    file. True when this call made the name, False when it existed, None where the filesystem has
    no hard links (some FUSE/SMB mounts)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        return None


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_root(
    location: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
) -> StoreRoot:
    """The root at a local path or URL. Creates nothing."""
    if isinstance(location, str) and "://" in location:
        fs, path = url_to_fs(location, **(storage_options or {}))
        if isinstance(fs, LocalFileSystem):
            return LocalRoot(path, url=location)
        return FsspecRoot(location, storage_options)
    return LocalRoot(location)


def probe_root(location: str, key: str, token: str, *, attempts: int = 5, delay_s: float = 0.5) -> str | None:
    """Run where a store will be used (a worker): None if ``location`` is the same root as the
    caller's, found by reading the ``token`` it wrote under ``key``, and accepts writes (a probe
    file written and removed next to it); else why not, as a short phrase for an error line.

    A missing probe is read again ``attempts`` times, ``delay_s`` apart: a network filesystem
    may show a new file to other machines a moment later.
    """
    try:
        root = open_root(location)
    except (ValueError, ImportError) as exc:
        return f"cannot open it: {exc}"
    for attempt in range(attempts):
        try:
            data = root.read_bytes(key)
            break
        except FileNotFoundError:
            if attempt + 1 == attempts:
                if isinstance(root, LocalRoot) and not os.path.isdir(root.path):
                    return f"no folder {root.path} there"
                return "it is another folder or bucket there (the probe file written by the client is not in it)"
            time.sleep(delay_s)
        except Exception as exc:  # object stores raise their own errors (no endpoint, no credentials...)
            return f"cannot read it: {_one_line(exc)}"
    if data != token.encode():
        return "it is another store there (the probe file differs)"
    own = f"{key}-{uuid.uuid4().hex[:8]}"
    try:
        root.write_bytes(own, b"")
        root.delete(own)
    except Exception as exc:
        return f"cannot write to it: {_one_line(exc)}"
    return None


def _one_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


__all__ = ["FsspecRoot", "LocalRoot", "StoreRoot", "TMP_PREFIX", "check_key", "open_root", "probe_root"]
