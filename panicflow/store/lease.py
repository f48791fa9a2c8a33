"""Exclusive ownership of an experiment: one writer at a time, and a fenced one.

Two coordinators driving one experiment corrupt it silently (each journals its own
outputs for the same steps). Ownership is a numbered lease in the experiment's folder:

    experiments/<id>/lease/<epoch>.json   write-once: token, pid, host, purpose, acquired_us
    experiments/<id>/lease/<epoch>.beat   rewritten every HEARTBEAT_S by the owner's thread

Taking it: read the highest epoch N. If its owner renewed within ``LEASE_TTL_S`` (and is
not a dead process on this machine) the experiment is busy. Otherwise create epoch N+1
with create-if-absent (an exclusive hard link on a local folder, a conditional PUT on
object storage): of two takers, exactly one wins.

Fencing: epoch N+1 existing means epoch N is over. The owner checks that before every
write that commits (journal files, Zarr rows and markers, embedding rows written by its
workers), so a coordinator that was suspended past the TTL (Ctrl-Z, a long GC or swap
storm) wakes up, finds its successor and stops with ``LeaseLost`` instead of writing.
The check is a stat (a HEAD on object storage), repeated at most every ``FENCE_CHECK_S``
of monotonic time; what is left is a pause between that check and the write itself.

Clocks: the TTL compares the owner's wall clock (in the beat) with the taker's; hosts
sharing a store should be NTP-synchronised to well under ``LEASE_TTL_S``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import time
from typing import Any

from .. import settings
from ..errors import PanicflowError, UserError
from .root import StoreRoot

HEARTBEAT_S = 5.0
LEASE_TTL_S = 30.0
FENCE_CHECK_S = 0.25


def ttl_s() -> float:
    """The lease's time to live: the ``panicflow.lease-ttl`` setting (default ``LEASE_TTL_S``;
    ``$PANICFLOW_LEASE_TTL_S`` still works, tests shorten it so; docs/settings.md). The owner
    renews it every ``HEARTBEAT_S``, or every sixth of it when that is shorter."""
    return settings.get("lease-ttl")

_EPOCH = re.compile(r"(\d{8,})\.json")


class ExperimentBusy(UserError):
    """Another live process owns the experiment."""


class LeaseLost(PanicflowError):
    """This process's ownership was taken over; it must stop without writing."""


def now_us() -> int:
    return time.time_ns() // 1000


def pid_alive(pid: Any) -> bool:
    """Whether a process of this machine lives (another user's counts as alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class Lease:
    """Ownership of one experiment by this process, from ``acquire`` to ``release``."""

    def __init__(self, root: StoreRoot, prefix: str, epoch: int, token: str, purpose: str) -> None:
        self.root, self.prefix, self.epoch, self.token, self.purpose = root, prefix, epoch, token, purpose
        self.lost: LeaseLost | None = None
        self._checked = -1e18  # monotonic time of the last fence check that passed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ taking
    @classmethod
    def acquire(cls, root: StoreRoot, experiment_prefix: str, experiment_id: str, *,
                purpose: str = "coordinator", renew: bool = True) -> "Lease":
        """Take the experiment or raise ``ExperimentBusy`` saying who holds it."""
        prefix = f"{experiment_prefix}/lease"
        top = latest_epoch(root, prefix)
        if top:
            holder = holder_info(root, prefix, top)
            if holder["alive"]:
                raise ExperimentBusy(_busy_message(experiment_id, holder))
        token = secrets.token_hex(8)
        body = {"token": token, "pid": os.getpid(), "host": socket.gethostname(),
                "purpose": purpose, "acquired_us": now_us()}
        if not root.create_exclusive(f"{prefix}/{top + 1:08d}.json", json.dumps(body).encode()):
            holder = holder_info(root, prefix, top + 1)
            raise ExperimentBusy(_busy_message(experiment_id, holder))
        lease = cls(root, prefix, top + 1, token, purpose)
        lease._checked = time.monotonic()
        lease.beat()
        if renew:
            lease._thread = threading.Thread(target=lease._renew, name=f"panicflow-lease-{experiment_id}", daemon=True)
            lease._thread.start()
        return lease

    # ---------------------------------------------------------------- fencing
    def check(self) -> None:
        """Raise ``LeaseLost`` if a successor took the experiment; call before committing a write."""
        if self.lost is not None:
            raise self.lost
        now = time.monotonic()
        if now - self._checked < FENCE_CHECK_S:
            return
        if self.root.exists(f"{self.prefix}/{self.epoch + 1:08d}.json"):
            holder = holder_info(self.root, self.prefix, self.epoch + 1)
            self.lost = LeaseLost(
                f"another {holder.get('purpose', 'coordinator')} (pid {holder.get('pid')} on {holder.get('host')}) "
                f"took over this experiment while this process was not renewing its lease (paused for over "
                f"{ttl_s():.0f} s?); this process stopped without writing more"
            )
            raise self.lost
        self._checked = now

    def beat(self, *, released: bool = False) -> None:
        body = {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(),
                "renewed_us": now_us(), "released": released}
        self.root.write_bytes(f"{self.prefix}/{self.epoch:08d}.beat", json.dumps(body).encode())

    def _renew(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, ttl_s() / 6)):
            try:
                self.check()
                self.beat()
            except LeaseLost:
                return
            except OSError:
                pass  # a store hiccup: the next beat may pass; a takeover is fenced by check()

    def release(self) -> None:
        """Give the experiment up (others may take it at once), unless it was lost."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
        if self.lost is None:
            try:
                self.check()
                self.beat(released=True)
            except (LeaseLost, OSError):
                pass  # lost, or the store failed: the beat goes stale on its own

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Fence:
    """A worker's view of a coordinator's lease: the same check, without owning anything."""

    def __init__(self, root: StoreRoot, experiment_prefix: str, epoch: int) -> None:
        self.root, self.path = root, f"{experiment_prefix}/lease/{epoch + 1:08d}.json"

    def check(self) -> None:
        if self.root.exists(self.path):
            raise LeaseLost("the coordinator that submitted this task lost the experiment to another; not writing")


def latest_epoch(root: StoreRoot, prefix: str) -> int:
    return max((int(m[1]) for n in root.list(prefix) if (m := _EPOCH.fullmatch(n))), default=0)


def holder_info(root: StoreRoot, prefix: str, epoch: int) -> dict[str, Any]:
    """What the lease files of ``epoch`` say, and whether its holder counts as alive."""
    info: dict[str, Any] = {"epoch": epoch}
    for suffix in ("json", "beat"):
        try:
            data = json.loads(root.read_bytes(f"{prefix}/{epoch:08d}.{suffix}"))
            if isinstance(data, dict):
                info.update(data)
        except FileNotFoundError:
            pass
        except ValueError:
            pass  # torn or damaged: judged by what else is there (a damaged lease must not block for ever)
    last = max(int(info.get("renewed_us") or 0), int(info.get("acquired_us") or 0))
    fresh = now_us() - last < ttl_s() * 1e6
    dead_here = info.get("host") == socket.gethostname() and not pid_alive(info.get("pid"))
    info["alive"] = bool(fresh and not info.get("released") and not dead_here)
    return info


def current_holder(root: StoreRoot, experiment_prefix: str) -> dict[str, Any] | None:
    """The live holder of an experiment, or None (never taken, released, stale or dead)."""
    prefix = f"{experiment_prefix}/lease"
    top = latest_epoch(root, prefix)
    if not top:
        return None
    info = holder_info(root, prefix, top)
    return info if info["alive"] else None


def _busy_message(experiment_id: str, holder: dict[str, Any]) -> str:
    who = f"{holder.get('purpose', 'coordinator')} pid {holder.get('pid')} on {holder.get('host')}"
    return (f"experiment {experiment_id} is in use by another {who}; wait for it to finish or stop that "
            f"process (a process that stopped renewing is replaced after {ttl_s():.0f} s)")


__all__ = ["ExperimentBusy", "Fence", "Lease", "LeaseLost", "current_holder", "HEARTBEAT_S", "LEASE_TTL_S"]
