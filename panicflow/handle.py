"""Experiments run in the background: ``submit_experiment`` / ``submit_resume`` return an ``ExperimentHandle``.

Contract (issue 20 item 7):

* ``submit_experiment(config, ...)`` takes what ``run_experiment`` takes and returns once the
  experiment exists: the config validated, the cluster connected (or a LocalCluster started), the
  store checked from every worker, the experiment created and its lease taken by this process. Any
  error on the way (a bad config, an unreachable store or scheduler) raises from the call itself and
  leaves nothing running. The experiment is then driven by ``run_experiment`` in a background thread
  (``signals_handled`` does nothing there: Ctrl-C in the main thread does not stop it; ``cancel()``
  does). ``submit_resume(id, ...)`` does the same with ``resume_experiment``.
* The handle is a future, in the names ``concurrent.futures`` and Dask use: ``id`` (known at once),
  ``done()``, ``result(timeout)`` (the id; or the exception the run raised: ``RunsFailed``,
  ``Interrupted``, a ``StoreIOError``...), ``exception(timeout)``, ``add_done_callback(fn)`` (``fn(handle)``,
  in the background thread, once everything below is released; at once if already done),
  ``cancel(grace=None)`` (stops like Ctrl-C: nothing new starts, results in flight land for the grace,
  the experiment is marked interrupted and ``result()`` raises ``Interrupted``; a second call stops at
  once), ``cancelled()``; plus ``progress`` (the coordinator's latest ``Progress`` snapshot) and
  ``status()`` (``experiment_status``, read from the store).
* The lease stays held by this process while the thread runs and is released when it ends; a
  cluster panicflow started for the experiment is closed then too (a ``client=`` given is left open).
  ``result()`` interrupted (Ctrl-C, a notebook's stop button) stops only the waiting, as with any
  future: the experiment goes on; ``cancel()`` stops it.
* A handle dropped without ``result()`` does not stop its experiment: it runs to the end. The thread
  is a daemon, so it never keeps the interpreter alive by itself; when the interpreter exits (end of
  a script, a notebook kernel shut down) every experiment still running is stopped gracefully, as by
  ``cancel()`` with reason ``"exit"``, and waited for up to its grace plus ``EXIT_MARGIN_S`` before
  the interpreter goes on exiting. That runs from ``threading``'s exit hooks, before
  ``concurrent.futures`` shuts its executors (which the store's writes use). ``running()`` lists the
  handles still running.
* In a Jupyter kernel (``IPython.get_ipython()`` has a kernel; IPython is looked for in
  ``sys.modules``, never imported here), ``submit_*`` shows a live HTML table (``display=False``: not),
  updated about once a second from the background thread through ``display(..., display_id=True)``
  and ``DisplayHandle.update``, with the final state at the end; ``handle.display()`` shows another;
  ``_repr_html_`` renders the numbers of the moment. No ipywidgets.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  its exit hook is registered before ours, so ours runs first
import html
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import api
from .config import ExperimentConfig, load_config
from .errors import Interrupted, UserError
from .scheduler import dashboard
from .scheduler.cluster import LOCALHOST
from .scheduler.coordinator import Progress
from .scheduler.stopping import StopRequest

try:  # the time left, if this version has the estimate (scheduler/eta.py)
    from .scheduler import eta as _eta
except ImportError:  # pragma: no cover - depends on the version
    _eta = None

if TYPE_CHECKING:
    from pathlib import Path

    from distributed import Client
    from distributed.security import Security

    from .api import ExperimentStatus, StoreLike
    from .store import Experiment

log = logging.getLogger(__name__)

EXIT_REASON = "exit"  # Interrupted.reason (and state.json's) of an experiment stopped by the interpreter's exit
EXIT_MARGIN_S = 30.0  # beyond its grace, how long the exit waits for an experiment to be marked interrupted
DISPLAY_INTERVAL_S = 1.0  # a notebook's table is updated this often at most

_running: set[ExperimentHandle] = set()
_running_lock = threading.Lock()
_exit_hook = False


def submit_experiment(
    config: ExperimentConfig | dict | str | Path,
    store: StoreLike = None,
    client: Client | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    scheduler_file: str | os.PathLike | None = None,
    security: Security | None = None,
    host: str = LOCALHOST,
    dashboard_address: str | int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[Experiment, Client], None] | None = None,
    grace: float | None = None,
    display: bool | None = None,
) -> ExperimentHandle:
    """Start an experiment in the background and return its handle once it exists.

    The arguments are ``run_experiment``'s (``progress`` and ``on_start`` are called in the
    background thread); ``grace`` is how long results in flight get to land when it is stopped
    (``cancel()``, the interpreter's exit); ``display`` shows a live progress table in a Jupyter
    kernel (default: when in one). Errors before the experiment is created raise here.
    """
    cfg = load_config(config)  # a bad config: ConfigError here, nothing created, no thread started
    stop = StopRequest() if grace is None else StopRequest(grace)  # None: the default grace (5 s)
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1 (got {workers})")
    st = api._store(store, create=True, lazy=True)  # written once a cluster is there, as run_experiment does
    cluster = dict(scheduler=scheduler, workers=workers, gpus=gpus, scheduler_file=scheduler_file, security=security,
                   host=host, dashboard_address=dashboard_address)
    return ExperimentHandle._start(api.run_experiment, (cfg, st, client), cluster, st, stop, progress, on_start, display)


def submit_resume(
    experiment_id: str,
    store: StoreLike = None,
    client: Client | None = None,
    *,
    retry_failed: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    gpus: int | None = None,
    scheduler_file: str | os.PathLike | None = None,
    security: Security | None = None,
    host: str = LOCALHOST,
    dashboard_address: str | int | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[Experiment, Client], None] | None = None,
    grace: float | None = None,
    display: bool | None = None,
) -> ExperimentHandle:
    """``resume_experiment`` in the background: the handle of the resumed experiment, as ``submit_experiment``'s."""
    stop = StopRequest() if grace is None else StopRequest(grace)  # None: the default grace (5 s)
    st = api._store(store)  # no store there: StoreError here
    st.experiment(experiment_id)  # an unknown id: UnknownExperiment here
    cluster = dict(scheduler=scheduler, workers=workers, gpus=gpus, scheduler_file=scheduler_file, security=security,
                   host=host, dashboard_address=dashboard_address, retry_failed=retry_failed)
    return ExperimentHandle._start(api.resume_experiment, (experiment_id, st, client), cluster, st, stop, progress,
                                   on_start, display)


def running() -> list[ExperimentHandle]:
    """The handles of this process whose experiment is still running (one dropped can be found here)."""
    with _running_lock:
        return sorted(_running, key=lambda h: h._submitted)


class ExperimentHandle:
    """An experiment running in a background thread of this process (``submit_experiment``)."""

    def __init__(self, store, stop: StopRequest, progress, on_start) -> None:
        self._store = store
        self._stop = stop
        self._user_progress = progress
        self._user_on_start = on_start
        self._id: str | None = None
        self._name: str | None = None
        self._dashboard: str | None = None
        self._progress: Progress | None = None
        self._exception: BaseException | None = None
        self._final: dict[str, Any] | None = None  # the numbers and state read from the store at the end
        self._started = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[ExperimentHandle], Any]] = []
        self._displays: list[Any] = []  # IPython DisplayHandles to update
        self._live_cell: int | None = None  # the notebook cell that got a live table (see _repr_html_)
        self._last_display = 0.0
        self._window = _eta.Window() if _eta is not None else None
        self._submitted = time.monotonic()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ starting
    @classmethod
    def _start(cls, target, args, kwargs, store, stop, progress, on_start, display) -> ExperimentHandle:
        handle = cls(store, stop, progress, on_start)
        handle._thread = threading.Thread(target=handle._main, args=(target, args, kwargs), daemon=True,
                                          name="panicflow-experiment")
        _register(handle)
        handle._thread.start()
        try:
            handle._started.wait()
        except BaseException:  # Ctrl-C while the cluster starts: it must not go on without a handle
            stop.request("SIGINT", hard=True)
            raise
        if handle._id is None:  # it failed before the experiment existed: raise here, as run_experiment would
            exc = handle._exception
            assert exc is not None
            raise exc
        if display if display is not None else _in_kernel():
            handle.display()
        return handle

    def _main(self, target, args, kwargs) -> None:
        try:
            target(*args, **kwargs, progress=self._on_progress, on_start=self._on_start, stop=self._stop)
        except BaseException as exc:  # delivered by result() and exception()
            self._exception = exc
        finally:
            with _running_lock:
                _running.discard(self)
            if self._id is not None:
                self._read_final()
                self._update_displays()
            with self._lock:
                self._done.set()
                callbacks, self._callbacks = self._callbacks, []
            self._started.set()
            for fn in callbacks:
                self._call(fn)

    def _on_start(self, exp, client) -> None:
        self._id, self._name = exp.id, exp.name if isinstance(exp.name, str) else None
        try:
            self._dashboard = client.dashboard_link
        except Exception:  # no dashboard (bokeh missing, or turned off)
            self._dashboard = None
        threading.current_thread().name = f"panicflow-experiment-{exp.id}"
        try:
            if self._user_on_start:
                self._user_on_start(exp, client)
        finally:
            self._started.set()

    def _on_progress(self, snap: Progress) -> None:
        self._progress = snap
        if self._window is not None:
            self._window.add(time.monotonic(), dashboard.snapshot_dict(snap))
        if self._user_progress:
            self._user_progress(snap)
        now = time.monotonic()
        if self._displays and now - self._last_display >= DISPLAY_INTERVAL_S:
            self._last_display = now
            self._update_displays()

    def _read_final(self) -> None:
        """The state and exact numbers at the end, as `panicflow experiment status` reads them."""
        exc = self._exception
        state = "complete" if exc is None else "interrupted" if isinstance(exc, Interrupted) else "failed"
        final: dict[str, Any] = {"state": state}
        try:
            status = api.experiment_status(self._id, store=self._store)
            final = {**dashboard.snapshot_dict(status), "state": status.state}
        except Exception as read_exc:  # the store that stopped it may be what cannot be read
            log.debug("final status of %s not read: %r", self._id, read_exc)
        if exc is not None and final["state"] != "complete":
            final["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._final = final

    # ------------------------------------------------------------------ the future
    @property
    def id(self) -> str:
        """The experiment's id (known as soon as ``submit_*`` returned)."""
        assert self._id is not None
        return self._id

    @property
    def progress(self) -> Progress | None:
        """The coordinator's latest snapshot (runs ended, invocations, embeddings and diagrams per
        model), about twice a second; None before the first. ``status()`` reads the store instead."""
        return self._progress

    @property
    def store(self):
        """The ``panicflow.store.Store`` the experiment is in."""
        return self._store

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard of the cluster it runs on, if it has one."""
        return self._dashboard

    def status(self) -> ExperimentStatus:
        """``panicflow.experiment_status`` of this experiment: exact numbers, read from the store."""
        return api.experiment_status(self.id, store=self._store)

    def done(self) -> bool:
        """Whether it ended (completed, failed or stopped) and released the lease and its cluster."""
        return self._done.is_set()

    def running(self) -> bool:
        return not self._done.is_set()

    def cancelled(self) -> bool:
        """Whether it ended stopped (by ``cancel()`` or the interpreter's exit): ``result()`` raises ``Interrupted``."""
        return self._done.is_set() and isinstance(self._exception, Interrupted)

    def result(self, timeout: float | None = None) -> str:
        """Wait for the end and return the id; raise what the run raised (``RunsFailed`` when runs
        failed, ``Interrupted`` once cancelled, ...), or ``TimeoutError`` after ``timeout`` seconds.
        Interrupting the wait (Ctrl-C) does not stop the experiment: ``cancel()`` does."""
        self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self.id

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the end and return the exception ``result()`` would raise, or None."""
        self._wait(timeout)
        return self._exception

    def _wait(self, timeout: float | None) -> None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"experiment {self.id} still running after {timeout:g} s")

    def add_done_callback(self, fn: Callable[[ExperimentHandle], Any]) -> None:
        """Call ``fn(handle)`` when it ends (in the background thread, after the lease and the cluster
        were released), or now if it has. An exception ``fn`` raises is logged, never raised."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        self._call(fn)

    def _call(self, fn) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("done callback %r of experiment %s raised", fn, self._id)

    def cancel(self, grace: float | None = None) -> bool:
        """Stop it as Ctrl-C does: nothing new starts, results in flight land for ``grace`` seconds
        (default: the handle's, 5), then it is marked interrupted and ``result()`` raises
        ``Interrupted`` (``submit_resume(id)`` finishes it). A second call (or ``grace=0``) stops at
        once. Returns at once: False if it had already ended, else True."""
        if self._done.is_set():
            return False
        if grace is not None and not self._stop.requested:
            self._stop.grace_s = StopRequest(grace).grace_s  # checked as StopRequest checks it
        self._stop.request("cancel")
        self._update_displays()
        return True

    # ------------------------------------------------------------------ the view
    def _view(self) -> dict[str, Any]:
        numbers = dashboard.snapshot_dict(self._progress) if self._progress is not None else {}
        if self._final is not None:  # set at the end, before the last update
            numbers = {**numbers, **self._final}
            state = self._final["state"]
        elif self._stop.requested:
            state = "stopping"
        else:
            state = "running" if self._progress is not None else "starting"
        left = None
        if _eta is not None:
            if state == "running" and self._window is not None and numbers:
                left = _eta.describe(_eta.estimate(_eta.work_left(numbers), self._window.rates()))
            elif state not in ("running", "starting", "stopping"):
                left = _eta.for_state(None, state)
        return {"id": self._id, "name": self._name, "state": state, "numbers": numbers, "left": left,
                "error": (self._final or {}).get("error"),
                "store": getattr(self._store, "location", str(self._store)), "dashboard": self._dashboard}

    def _repr_html_(self) -> str | None:
        # shown as a cell's value: the numbers of now. In the cell that already shows the live table
        # (``h = submit_experiment(...); h``) that would be a second, frozen copy: plain text instead.
        shell = _shell()
        if shell is not None and self._live_cell is not None and getattr(shell, "execution_count", None) == self._live_cell:
            return None
        return render_html(self._view())

    def __repr__(self) -> str:
        return f"<ExperimentHandle {render_text(self._view())}>"

    def display(self) -> None:
        """Show a progress table that updates itself about once a second (Jupyter); elsewhere, print one line."""
        if not _in_kernel():
            print(render_text(self._view()))
            return
        from IPython.display import display

        view = self._view()
        dh = display({"text/html": render_html(view), "text/plain": render_text(view)}, raw=True, display_id=True)
        self._live_cell = getattr(_shell(), "execution_count", None)
        with self._lock:
            self._displays.append(dh)

    def _update_displays(self) -> None:
        with self._lock:
            displays = list(self._displays)
        if not displays:
            return
        try:
            view = self._view()
            bundle = {"text/html": render_html(view), "text/plain": render_text(view)}
            for dh in displays:
                dh.update(bundle, raw=True)
        except Exception as exc:  # a view: never let it stop an experiment
            log.debug("progress display not updated: %r", exc)


# ---------------------------------------------------------------------- rendering
def render_text(view: dict[str, Any]) -> str:
    n = view["numbers"]
    parts = [f"{view['id']}: {view['state']}"]
    if "invocations" in n:
        most = f" of at most {n['invocations_max']}" if "invocations_max" in n else ""
        parts.append(f"steps {n['invocations']}{most}")
    if "runs" in n:
        parts.append(f"runs ended {_ended(n)} of {n['runs']}")
    if view["left"]:
        parts.append(view["left"])
    if view["error"]:
        parts.append(view["error"])
    return "; ".join(parts)


def _ended(n: dict[str, Any]) -> int:
    return int(n.get("runs_complete", 0)) + int(n.get("runs_failed", 0))


STATE_COLOURS = {"complete": "#2e7d32", "failed": "#c62828", "interrupted": "#ef6c00", "stopping": "#ef6c00"}


def render_html(view: dict[str, Any]) -> str:
    """The progress table: steps, runs ended, embeddings and diagrams per model, state, time left."""
    e = html.escape
    n = view["numbers"]
    runs, failed = int(n.get("runs", 0)), int(n.get("runs_failed", 0))
    rows: list[tuple[str, int | None, int | None, str]] = []
    if "invocations" in n:
        most = n.get("invocations_max")
        rows.append(("steps", n["invocations"], most, f"{n['invocations']} of at most {most}" if most is not None
                     else str(n["invocations"])))
    if "runs" in n:
        rows.append(("runs ended", _ended(n), runs, f"{_ended(n)} of {runs}" + (f" ({failed} failed)" if failed else "")))
    for model, done in (n.get("embeddings") or {}).items():
        rows.append((f"embeddings {model}", done, runs - failed, f"{done} of {runs - failed} runs"))
    for model, done in (n.get("persistence_diagrams") or {}).items():
        rows.append((f"diagrams {model}", done, runs, f"{done} of {runs} runs"))
    cell = "padding:1px 8px;text-align:left"
    out = ['<div class="panicflow-progress"><table style="border-collapse:collapse">']
    name = f" ({e(view['name'])})" if view.get("name") else ""
    colour = STATE_COLOURS.get(view["state"], "inherit")
    out.append(f'<tr><th colspan="3" style="{cell}">panicflow experiment <code>{e(str(view["id"]))}</code>{name}: '
               f'<span class="panicflow-state" style="color:{colour}">{e(view["state"])}</span></th></tr>')
    for label, value, most, text in rows:
        bar = f'<progress value="{value}" max="{most}"></progress>' if most else ""
        out.append(f'<tr><td style="{cell}">{e(label)}</td><td style="{cell}">{bar}</td><td style="{cell}">{e(text)}</td></tr>')
    if view["left"]:
        out.append(f'<tr><td style="{cell}">time left</td><td colspan="2" style="{cell}">{e(view["left"])}</td></tr>')
    if view["error"]:
        out.append(f'<tr><td style="{cell}">error</td><td colspan="2" style="{cell}">{e(view["error"])}</td></tr>')
    where = f"store <code>{e(view['store'])}</code>"
    if view.get("dashboard"):
        where += f' &middot; <a href="{e(view["dashboard"])}" target="_blank">Dask dashboard</a>'
    out.append(f'<tr><td colspan="3" style="{cell};font-size:smaller">{where}</td></tr></table></div>')
    return "".join(out)


# ---------------------------------------------------------------------- Jupyter and the interpreter's exit
def _shell() -> Any:
    ipython = sys.modules.get("IPython")  # a kernel has imported it; never import it here
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except Exception:
        return None


def _in_kernel() -> bool:
    """Whether this is a Jupyter kernel (an IPython shell with a kernel: not the terminal IPython)."""
    shell = _shell()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _register(handle: ExperimentHandle) -> None:
    global _exit_hook
    with _running_lock:
        if not _exit_hook:
            # threading's exit hooks run before the interpreter joins threads and before concurrent.futures
            # shuts its executors (registered earlier: they run later), which writes to the store need
            register = getattr(threading, "_register_atexit", None)
            try:
                (register or atexit.register)(_stop_at_exit)
            except RuntimeError:  # already exiting
                atexit.register(_stop_at_exit)
            _exit_hook = True
        _running.add(handle)


def _stop_at_exit() -> None:
    """Stop every experiment still running, gracefully, and wait for each to be marked interrupted."""
    handles = running()
    for h in handles:
        if h._stop.request(EXIT_REASON):
            log.warning("panicflow: the interpreter is exiting: stopping experiment %s (results in flight get %g s); "
                        "panicflow.submit_resume(%r) finishes it", h._id, h._stop.grace_s, h._id)
    for h in handles:
        if h._thread is not None:
            h._thread.join(h._stop.grace_s + EXIT_MARGIN_S)


__all__ = ["EXIT_MARGIN_S", "EXIT_REASON", "ExperimentHandle", "render_html", "render_text", "running",
           "submit_experiment", "submit_resume"]
