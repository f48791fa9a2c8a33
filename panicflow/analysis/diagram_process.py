"""giotto-ph in a child process: one per calling thread, reused, stopped when over time.

Why a child process: two threads of one process calling giotto-ph's ``ripser_parallel``
at once deadlock (scripts/measure_diagram_deadlock.py: most trials hang), and a call
in progress can be neither interrupted nor held to a memory limit from inside the
process that made it. So each thread that computes diagrams owns one child process
(a Dask worker with N threads runs up to N diagrams at once, in N children). The
thread waits on a pipe, without the GIL, so the worker keeps answering; a call over
its time limit is stopped by killing the child (``OverTime``), and a child that dies
(the kernel's out-of-memory killer, a crash) raises ``ChildDied`` in the caller and
harms nothing else. A fresh child starts in about 0.3 s and is reused by its thread
until it fails or sits idle for ``IDLE_EXIT_S``.

The child limits itself: its data segment to ``memory_cap_gb`` (``RLIMIT_DATA``, where
the platform enforces it), and on Linux it asks to be the out-of-memory killer's first
choice (``oom_score_adj`` 1000) and to die with the thread that started it
(``PR_SET_PDEATHSIG``), so a killed worker leaves no computation behind.

Run as a script (``python diagram_process.py PARENT_PID``) this file is the child: it
imports only numpy, scipy and giotto-ph; importing the panicflow package would pull in
Dask, xarray and Zarr (several times the start-up time and memory).
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

IDLE_EXIT_S = 300.0  # an idle child exits; the next call starts another
_HEADER = struct.Struct("!Q")


def exact_distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distances computed pair by pair in float64 (scipy ``pdist``).

    giotto-ph's own metric path goes through sklearn's ``|x|^2 + |y|^2 - 2 x.y``,
    whose rounding depends on the BLAS and its thread count: exact duplicate
    points (every looping run has them) land at 1e-8..1e-7 apart and add tiny H0
    bars that differ between a worker (1 BLAS thread) and a notebook (several).
    Distances computed directly are exact for duplicates (0) and the same on
    every machine, so a diagram is reproducible wherever it is recomputed.
    """
    # here, not at the top: scipy.spatial takes ~0.15 s, and `experiment status` reaches this module
    # (topology.status_group) without computing any distance
    from scipy.spatial.distance import pdist, squareform

    return squareform(pdist(np.asarray(points, dtype=np.float64), metric="euclidean"))


def ripser_diagrams(points: np.ndarray, maxdim: int, collapse_edges: bool, n_threads: int) -> list[np.ndarray]:
    """H0..H``maxdim`` of ``points`` from giotto-ph, as float64 (k, 2) arrays, in this process."""
    from gph import ripser_parallel  # here, not at the top: giotto-ph pulls in sklearn (~1 s), and only this call needs it

    dgms = ripser_parallel(
        exact_distances(points), metric="precomputed", maxdim=maxdim, collapse_edges=collapse_edges,
        n_threads=n_threads, return_generators=False,
    )["dgms"]
    return [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in dgms]


# ------------------------------------------------------------------ caller side
class OverTime(Exception):
    """The call ran past its time limit; the child was killed."""


class ChildDied(Exception):
    """The child exited without answering (killed by a signal, or crashed)."""

    def __init__(self, returncode: int, seconds: float) -> None:
        self.returncode, self.seconds = returncode, seconds
        if returncode < 0:
            try:
                how = f"killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        super().__init__(f"the diagram process {how} after {seconds:.1f} s")


class ChildError(Exception):
    """giotto-ph (or the distances) raised in the child; the message is the child's."""


@dataclass
class Outcome:
    diagrams: list[np.ndarray]
    seconds: float
    peak_gb: float  # the child's peak resident memory so far (its whole life, not only this call)


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(size - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _pack(message: dict) -> bytes:
    """A request or reply as bytes without pickle (panicflow never unpickles): arrays and lists of
    arrays in an .npz, everything else (numbers, strings, None) as JSON beside them."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {}
    for key, value in message.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            meta[key] = {"arrays": len(value)}
            for i, v in enumerate(value):
                arrays[f"{key}.{i}"] = v
        else:
            meta[key] = {"value": value}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    out: dict = {k: v for k, v in arrays.items() if "." not in k}
    for key, entry in meta.items():
        out[key] = [arrays[f"{key}.{i}"] for i in range(entry["arrays"])] if "arrays" in entry else entry["value"]
    return out


class _Child:
    """One child process and its two pipes; used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True,
        )
        weakref.finalize(self, _kill, self.proc)  # thread gone or interpreter exiting

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, request: dict, time_limit_s: float | None) -> dict:
        data = _pack(request)
        start = time.monotonic()
        deadline = None if time_limit_s is None else start + time_limit_s
        try:
            _write_all(self.proc.stdin.fileno(), _HEADER.pack(len(data)) + data)
            fd = self.proc.stdout.fileno()
            size = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))[0]
            return _unpack(_read_exact(fd, size, deadline))
        except TimeoutError:
            _kill(self.proc)
            raise OverTime from None
        except (EOFError, BrokenPipeError):
            self.proc.wait()
            raise ChildDied(self.proc.returncode, time.monotonic() - start) from None


_local = threading.local()


def run_in_child(
    points: np.ndarray, maxdim: int, collapse_edges: bool, n_threads: int,
    time_limit_s: float | None = None, memory_cap_gb: float | None = None,
) -> Outcome:
    """``ripser_diagrams`` in this thread's child process, within the limits given.

    Raises ``OverTime`` (child killed), ``ChildDied`` or ``ChildError``; after any of
    them the next call starts a fresh child.
    """
    request = {
        "points": np.ascontiguousarray(points), "maxdim": maxdim, "collapse_edges": collapse_edges,
        "n_threads": n_threads, "memory_cap_bytes": None if memory_cap_gb is None else int(memory_cap_gb * 1e9),
    }
    for attempt in (1, 2):
        child = getattr(_local, "child", None)
        if child is None or not child.alive():
            child = _local.child = _Child()
        try:
            reply = child.call(request, time_limit_s)
        except ChildDied as exc:
            _local.child = None
            if exc.returncode == 0 and attempt == 1:
                continue  # it exited for being idle just as the request arrived: start another
            raise
        except OverTime:
            _local.child = None
            raise
        if "error" in reply:
            _local.child = None  # it exits after an error: giotto-ph's state is unknown
            raise ChildError(reply["error"])
        return Outcome(reply["diagrams"], reply["seconds"], reply["peak_gb"])
    raise AssertionError("unreachable")


# ------------------------------------------------------------------- child side
def _follow_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")  # the out-of-memory killer takes this process before its worker
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the death signal was set


def _set_memory_cap(cap: int | None) -> None:
    try:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
        soft = hard if cap is None else (cap if hard == resource.RLIM_INFINITY else min(cap, hard))
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    except (ImportError, ValueError, OSError):
        pass


def _peak_gb() -> float:
    """Peak resident memory of this process. ``ru_maxrss`` would do, but after a vfork-ed
    start Linux hands the child the parent's high-water mark; ``VmHWM`` is the child's own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    import resource

    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 1e9


def _child_main(parent_pid: int) -> None:
    out = os.dup(1)  # the answers go here; anything a library prints goes to stderr
    os.dup2(2, 1)
    _follow_parent(parent_pid)
    while True:
        ready, _, _ = select.select([0], [], [], IDLE_EXIT_S)
        if not ready:
            return
        try:
            size = _HEADER.unpack(_read_exact(0, _HEADER.size, None))[0]
            req = _unpack(_read_exact(0, size, None))
        except EOFError:
            return  # the parent closed the pipe
        _set_memory_cap(req["memory_cap_bytes"])
        start = time.perf_counter()
        try:
            reply = {"diagrams": ripser_diagrams(req["points"], req["maxdim"], req["collapse_edges"], req["n_threads"])}
        except Exception as exc:  # noqa: BLE001 - the caller records it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply.update(seconds=time.perf_counter() - start, peak_gb=_peak_gb())
        data = _pack(reply)
        _write_all(out, _HEADER.pack(len(data)) + data)
        if "error" in reply:
            return


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
