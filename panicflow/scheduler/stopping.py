"""Stopping an experiment on request: SIGTERM, SIGHUP, Ctrl-C, or ``ExperimentHandle.cancel()``.

A batch system ends a job at its walltime with SIGTERM (SLURM, PBS; ``timeout``, ``docker stop``
and Kubernetes too), then SIGKILL a few seconds later; a closed terminal sends SIGHUP. Contract:

* The first request (``StopRequest.request``) makes the coordinator stop submitting: no model call,
  embedding or diagram starts any more. Results already in flight still land (journaled, marked)
  for at most ``grace_s`` seconds, then whatever is left is cancelled; it is computed again on
  resume, so nothing is lost either way. The experiment is then marked ``interrupted`` and the
  coordinator raises ``Interrupted`` (with the experiment id and the signal's name).
* A second request, or a request whose ``grace_s`` is 0, stops at once, as Ctrl-C always did;
  the same signal again within ``SAME_REQUEST_S`` is the first delivered twice, not a second one.
* ``signals_handled(stop)`` routes SIGTERM, SIGHUP and SIGINT to ``stop`` while the coordinator
  runs (``api._drive``), in the main thread only; outside that window each signal keeps the
  handler it had (the CLI's stop the command at once, as Ctrl-C always did). ``EXIT_CODES`` are the CLI's exit statuses for each: 128 + the signal number,
  what shells and batch systems expect of a process stopped by it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0  # panicflow.stop-grace's default: fits PBS's and docker's 10 s, SLURM's and Kubernetes' 30 s between TERM and KILL
HANDLED = ("SIGTERM", "SIGHUP", "SIGINT")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}
# the same signal again within this is the same stop delivered twice: `timeout` signals its child and then
# its whole group, a batch system signals every process of a job and a wrapper script forwards it too
SAME_REQUEST_S = 1.0


class StopRequest:
    """A thread-safe request to stop one experiment, with the grace its results in flight get."""

    def __init__(self, grace_s: float | None = None, say: Callable[[str], None] | None = None) -> None:
        if grace_s is None:  # the panicflow.stop-grace setting (docs/settings.md), 5 s unless set
            from .. import settings

            grace_s = settings.get("stop-grace")
        if isinstance(grace_s, bool) or not isinstance(grace_s, (int, float)) or not grace_s >= 0:
            raise ValueError(f"grace must be a number of seconds >= 0 (got {grace_s!r})")
        self.grace_s = float(grace_s)
        self.say = say  # tells the user, one line, what a signal does (the CLI prints it on stderr)
        self.reason: str | None = None  # "SIGTERM", "SIGHUP", "SIGINT" or "cancel"
        self.at: float | None = None  # monotonic time of the first request
        self.hard = False  # stop now, without waiting for results in flight
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str, hard: bool = False) -> bool:
        """Ask the experiment to stop; a second request (or ``hard``) stops it at once.
        Returns whether this was the first request."""
        first = not self._event.is_set()
        if first:
            self.reason, self.at = reason, time.monotonic()
        if hard or not first or self.grace_s == 0:
            self.hard = True
        self._event.set()
        return first

    def deadline(self) -> float:
        """Monotonic time by which results in flight must have landed."""
        if self.at is None:
            return float("inf")
        return self.at if self.hard else self.at + self.grace_s

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


# what a terminal's Ctrl-C, a batch system's walltime and a closed terminal send (scheduler/stopping.py)
HELD_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class SignalsHeld:
    """Ctrl-C, SIGTERM and SIGHUP held while something must not be cut short (an embedded cluster
    starting or stopping, an experiment being created and its id recorded); ``came`` is the first
    that came meanwhile, acted on once it is done (``act``).

    The worker processes spawned meanwhile inherit the blocked signals, so a terminal's Ctrl-C or
    ``timeout``'s SIGTERM (sent to the whole process group) reaches only this process, which
    closes them: no traceback from each worker (a nanny stops its worker through a queue, then
    SIGKILL, never a signal they block). And a cluster half started or half closed by a
    KeyboardInterrupt leaves processes and an atexit traceback behind. Starting or stopping takes
    seconds. A signal whose handler is ``SIG_IGN`` (``nohup``'s SIGHUP) is left alone.
    """

    def __init__(self) -> None:
        self.came: int | None = None
        self._previous: dict[int, Any] = {}
        self._active = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
        self._signals = [s for s in HELD_SIGNALS if signal.getsignal(s) not in (signal.SIG_IGN, None)] if self._active else []

    @property
    def pressed(self) -> bool:
        return self.came is not None

    def __enter__(self) -> "SignalsHeld":
        if self._signals:
            # the handler catches a signal delivered to a thread started before (a lease renewer),
            # the mask holds it from this thread and the threads (and processes) it starts now
            self._previous = {s: signal.signal(s, self._note) for s in self._signals}
            self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(self._signals))
            # multiprocessing unblocks SIGINT and SIGTERM in the thread that first starts its resource
            # tracker (which spawns Dask's workers too): start it now, so that the mask set above stays;
            # it ignores those two itself, and inherits the blocked SIGHUP (a closed terminal killed it)
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, set(self._signals))
        return self

    def _note(self, signum: int, frame: Any) -> None:
        if self.came is None:
            self.came = signum

    def __exit__(self, *exc: Any) -> None:
        if self._signals:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)  # a signal held meanwhile reaches _note now
            for s, previous in self._previous.items():
                signal.signal(s, previous)

    def act(self) -> None:
        """Act on a signal that came while held, as this process's handler for it would have."""
        if self.came is None:
            return
        previous = self._previous.get(self.came)
        if callable(previous):
            previous(self.came, None)  # Python's default SIGINT handler raises KeyboardInterrupt
        elif previous == signal.SIG_DFL and self.came != signal.SIGINT:
            signal.signal(self.came, signal.SIG_DFL)
            os.kill(os.getpid(), self.came)  # die of it, as it would have without us
        else:
            raise KeyboardInterrupt


def _ours(handler: Any) -> bool:
    return handler in (signal.SIG_DFL, signal.default_int_handler) or getattr(handler, "panicflow_handler", False)


@contextlib.contextmanager
def signals_handled(stop: StopRequest, names: tuple[str, ...] = HANDLED) -> Iterator[None]:
    """While inside, the signals ``names`` request ``stop``; a second one stops at once
    (a second Ctrl-C raises ``KeyboardInterrupt`` there and then, as Python's would).

    Main thread only (Python delivers signals there). A signal keeps its handler if that is
    ``SIG_IGN`` (``nohup`` asked to ignore SIGHUP) or one of the program's own; Python's
    defaults and panicflow's CLI handlers are replaced, then restored on the way out.
    ``stop.say(line)``, if set, tells the user what happens, one line per signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.reason == name and stop.at is not None and time.monotonic() - stop.at < SAME_REQUEST_S:
            return  # one stop delivered twice (timeout signals its child, then its group): not a second one
        first = stop.request(name)
        if stop.say is not None:
            again = "Ctrl-C" if name == "SIGINT" else name
            stop.say(f"{name}: stopping; results in flight get {stop.grace_s:g} s to land ({again} again stops at once)"
                if first and not stop.hard else f"{name}: stopping now")
        if not first and name == "SIGINT":
            raise KeyboardInterrupt

    try:
        for name in names:
            sig = getattr(signal, name, None)
            if sig is not None and _ours(signal.getsignal(sig)):  # SIGHUP does not exist on Windows
                previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


__all__ = ["DEFAULT_GRACE_S", "EXIT_CODES", "HANDLED", "SignalsHeld", "StopRequest", "signals_handled"]
