"""Stopping an experiment on request: SIGTERM, SIGHUP, Ctrl-C, or ``ExperimentHandle.cancel()``.

A batch system ends a job at its walltime with SIGTERM (SLURM, PBS; ``timeout``, ``docker stop``
and Kubernetes too), then SIGKILL a few seconds later; a closed terminal sends SIGHUP. Contract:

* The first request (``StopRequest.request``) makes the coordinator stop submitting: no model call,
  embedding or diagram starts any more. Results already in flight still land (journaled, marked)
  for at most ``grace_s`` seconds, then whatever is left is cancelled; it is computed again on
  resume, so nothing is lost either way. The experiment is then marked ``interrupted`` and the
  coordinator raises ``Interrupted`` (with the experiment id and the signal's name).
* A second request, or a request whose ``grace_s`` is 0, stops at once, as Ctrl-C always did.
* ``signals_handled(stop)`` routes SIGTERM, SIGHUP and SIGINT to ``stop`` while the coordinator
  runs (``api._drive``), in the main thread only; outside that window each signal keeps the
  handler it had (the CLI's stop the command at once, as Ctrl-C always did). ``EXIT_CODES`` are the CLI's exit statuses for each: 128 + the signal number,
  what shells and batch systems expect of a process stopped by it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 5.0  # panicflow.stop-grace's default: fits PBS's and docker's 10 s, SLURM's and Kubernetes' 30 s between TERM and KILL
HANDLED = ("SIGTERM", "SIGHUP", "SIGINT")
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


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


__all__ = ["DEFAULT_GRACE_S", "EXIT_CODES", "HANDLED", "StopRequest", "signals_handled"]
