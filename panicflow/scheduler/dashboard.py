"""Experiment progress where Dask users look: a page on the scheduler's dashboard and its /metrics.

Contract:

* ``register(client)`` (the coordinator's client, once per experiment; idempotent) installs
  ``ProgressPlugin`` on the scheduler. A scheduler that cannot import panicflow is told
  nothing; the experiment runs the same, only without this page.
* ``publish_progress(client, experiment_id, snapshot)`` sends one snapshot, about once a
  second, as a Dask event on topic ``TOPIC`` (``Client.log_event``: fire and forget, no
  round trip). The plugin keeps the latest snapshot per experiment and derives the rates
  (invocations per second per model) from the snapshots of the last ``RATE_WINDOW_S``.
* The scheduler's HTTP server then serves ``/panicflow`` (an HTML table that refreshes
  itself), ``/panicflow/json`` (the same numbers as JSON) and, among Dask's own metrics on
  ``/metrics`` (needs ``prometheus_client``), the ``panicflow_*`` metrics of ``METRICS``
  (``exposed_metric_names()``: their names as exposed, ``_total`` added to counters).
* The snapshots are the coordinator's heartbeat. A running experiment with none for
  ``stale_s`` (``STALE_S``; the setting ``panicflow.progress-stale`` of the scheduler's dask
  config) shows state ``stale``: its coordinator was killed, or cannot reach the scheduler. Its
  rates and its estimate go (they would stay frozen otherwise). An experiment that ended
  (complete, failed, interrupted, stale) leaves the page and the metrics ``retention_s`` after
  its last snapshot (``RETENTION_S``; ``panicflow.progress-retention``).
* Every view carries ``eta``: the time left, from ``eta.py`` (the same estimate as the
  terminal bars, ``experiment status --json`` and the report page), with the plugin's window of
  snapshots for the rates.

The numbers have the names of ``panicflow experiment status --json`` (``SNAPSHOT_KEYS``):
a snapshot published from the store at the end of an experiment reads exactly as that
command does. Counters a snapshot lacks are simply not shown.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import time
from collections import deque
from typing import Any, Iterator, Mapping

from distributed.diagnostics.plugin import SchedulerPlugin

from . import eta as _eta

log = logging.getLogger(__name__)

TOPIC = "panicflow-progress"
PLUGIN_NAME = "panicflow-progress"
ROUTE = "/panicflow"
RATE_WINDOW_S = 10.0
MAX_EXPERIMENTS = 50  # the oldest finished ones are forgotten beyond this
# A running experiment without a snapshot (they come about once a second) for this long shows as
# stale: like the store's HEARTBEAT_STALE_S. Its coordinator was killed or cannot reach the scheduler.
STALE_S = 30.0
# An experiment that ended (ENDED) leaves the page and /metrics this long after its last snapshot.
RETENTION_S = 3600.0
# panicflow's settings (panicflow.yaml) that change them, read on the scheduler when the plugin starts
# (DASK_PANICFLOW__PROGRESS_STALE=5 in the `dask scheduler`'s environment, or a Dask YAML file there)
STALE_SETTING = "progress-stale"
RETENTION_SETTING = "progress-retention"
STATES = ("running", "complete", "failed", "interrupted", "stale")
ENDED = ("complete", "failed", "interrupted", "stale")

#: the snapshot's keys, as `panicflow experiment status --json` names them
SNAPSHOT_KEYS = (
    "name", "state", "runs", "runs_complete", "runs_failed", "invocations", "invocations_max",
    "invocations_by_model", "invocations_max_by_model", "embeddings", "persistence_diagrams", "stop_reasons",
    "task_failures",
)

#: Prometheus metric -> (type, help); labels: experiment, and model where per model
METRICS = {
    "panicflow_runs": ("gauge", "Runs in the experiment"),
    "panicflow_runs_complete": ("gauge", "Runs that ended normally (length or loop)"),
    "panicflow_runs_failed": ("gauge", "Runs that failed (their model kept raising)"),
    "panicflow_invocations": ("counter", "Model invocations recorded, per generative model"),
    "panicflow_invocations_max": ("gauge", "Model invocations at most, per generative model (runs going may make "
                                           "up to max_length steps; those that ended made their length)"),
    "panicflow_invocations_per_second": ("gauge", f"Model invocations per second over the last {RATE_WINDOW_S:g} s, per model"),
    "panicflow_embeddings": ("gauge", "Runs embedded, per embedding model"),
    "panicflow_persistence_diagrams": ("gauge", "Runs with a persistence diagram, per embedding model"),
    "panicflow_task_failures": ("counter", "Failed task attempts (each retried or recorded)"),
    "panicflow_last_update_seconds": ("gauge", "Unix time of the experiment's latest snapshot (its heartbeat)"),
    "panicflow_state": ("gauge", "1 for the experiment's state (running, complete, failed, interrupted, stale), "
                                 "0 for the others"),
    "panicflow_eta_seconds": ("gauge", "Seconds left (a lower bound where panicflow_eta_partial is 1); only while "
                                       "running and known"),
    "panicflow_eta_partial": ("gauge", "1 where a stage with work left has no measured rate yet"),
}
PER_MODEL = ("panicflow_invocations", "panicflow_invocations_max", "panicflow_invocations_per_second",
             "panicflow_embeddings", "panicflow_persistence_diagrams")


def exposed_metric_names() -> list[str]:
    """The metric names as /metrics exposes them: Prometheus' client adds ``_total`` to counters."""
    return sorted(name + "_total" if kind == "counter" else name for name, (kind, _) in METRICS.items())


def snapshot_dict(snapshot: Any) -> dict[str, Any]:
    """The published form of a coordinator ``Progress``, an ``ExperimentStatus`` or a mapping.

    ``Progress`` names differ from the status command's (``diagrams``, ``runs_ended``):
    they are renamed here so that every view uses one set of names (``SNAPSHOT_KEYS``).
    """
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        raw = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)}
    else:
        raw = dict(snapshot)
    if "persistence_diagrams" not in raw and "diagrams" in raw:
        raw["persistence_diagrams"] = raw["diagrams"]
    reasons = raw.get("stop_reasons") or {}
    if "runs_complete" not in raw and "stop_reasons" in raw:
        raw["runs_complete"] = int(reasons.get("length", 0)) + int(reasons.get("loop", 0))
    if "runs_failed" not in raw and "stop_reasons" in raw:
        raw["runs_failed"] = int(reasons.get("failed", 0))
    out: dict[str, Any] = {}
    for key in SNAPSHOT_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            out[key] = {str(k): int(v) for k, v in value.items()}
        elif key in ("name", "state"):
            out[key] = str(value)
        else:
            out[key] = int(value)
    return out


def publish_progress(client, experiment_id: str, snapshot: Any) -> None:
    """Send one progress snapshot of ``experiment_id`` to the scheduler (no round trip).

    ``snapshot``: a coordinator ``Progress``, an ``ExperimentStatus`` or a mapping with keys
    of ``SNAPSHOT_KEYS``. Call it about once a second; a scheduler without the plugin keeps
    the event in its bounded event log and nothing else happens.
    """
    msg = {"experiment": str(experiment_id), "time": time.time(), **snapshot_dict(snapshot)}
    client.log_event(TOPIC, msg)


def register(client) -> bool:
    """Install ``ProgressPlugin`` on ``client``'s scheduler; False (logged) if it cannot be."""
    try:
        client.register_plugin(ProgressPlugin(), name=PLUGIN_NAME)  # idempotent: its class says so
    except Exception as exc:  # e.g. a scheduler whose environment lacks panicflow
        log.warning("the Dask scheduler cannot show panicflow's progress page (%s: %s)", type(exc).__name__, exc)
        return False
    return True


def page_url(client) -> str | None:
    """The progress page's address, next to the client's dashboard link (None without a dashboard)."""
    link = getattr(client, "dashboard_link", None)
    if not link:
        return None
    return link.rsplit("/status", 1)[0].rstrip("/") + ROUTE


class _Experiment:
    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}
        self.updated = 0.0
        self.history: deque[tuple[float, int, dict[str, int]]] = deque()  # (time, invocations, per model)
        self.window = _eta.Window()  # the estimate's rates, per stage

    def add(self, t: float, snapshot: dict[str, Any], stale_s: float = STALE_S) -> None:
        if self.updated and t - self.updated >= stale_s:  # back after a gap (resumed): rates start afresh
            self.history.clear()
            self.window.clear()
        self.snapshot, self.updated = snapshot, t
        self.history.append((t, snapshot.get("invocations", 0), dict(snapshot.get("invocations_by_model", {}))))
        while len(self.history) > 2 and t - self.history[1][0] >= RATE_WINDOW_S:
            self.history.popleft()
        self.window.add(t, snapshot)

    def rates(self) -> dict[str, float]:
        """Invocations per second per model ("all": every model) over the window."""
        if len(self.history) < 2:
            return {}
        (t0, n0, m0), (t1, n1, m1) = self.history[0], self.history[-1]
        dt = t1 - t0
        if dt <= 0:
            return {}
        out = {model: max(0, n - m0.get(model, 0)) / dt for model, n in m1.items()}
        out["all"] = max(0, n1 - n0) / dt
        return out

    def state(self, now: float, stale_s: float = STALE_S) -> str:
        state = str(self.snapshot.get("state") or "running")
        if state == "running" and now - self.updated >= stale_s:
            return "stale"
        return state

    def view(self, now: float | None = None, stale_s: float = STALE_S) -> dict[str, Any]:
        """The latest numbers; rates and the estimate only while running (never frozen after)."""
        now = time.time() if now is None else now
        state = self.state(now, stale_s)
        going = state == "running"
        estimate = _eta.estimate(_eta.work_left(self.snapshot), self.window.rates() if going else {},
                                 self.window.window_s)
        return {**self.snapshot, "state": state, "invocations_per_second": self.rates() if going else {},
                "eta": estimate, "updated": self.updated, "seconds_since_update": round(max(0.0, now - self.updated), 1)}


class ProgressPlugin(SchedulerPlugin):
    """On the scheduler: aggregates ``TOPIC`` events, serves them as a page, JSON and metrics.

    ``stale_s`` and ``retention_s`` (None: panicflow's settings ``progress-stale`` and
    ``progress-retention`` in the scheduler's dask config, defaults ``STALE_S`` and
    ``RETENTION_S``), read when it starts there."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, stale_s: float | None = None, retention_s: float | None = None) -> None:
        self.experiments: dict[str, _Experiment] = {}
        self.stale_s = stale_s
        self.retention_s = retention_s

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        self.stale_s = _seconds(self.stale_s, STALE_SETTING, STALE_S)
        self.retention_s = _seconds(self.retention_s, RETENTION_SETTING, RETENTION_S)
        _ACTIVE[0] = self
        app = getattr(scheduler, "http_application", None)
        if app is not None:
            app.add_handlers(r".*", [
                (ROUTE, _PageHandler, {"plugin": self}),
                (ROUTE + "/json", _JsonHandler, {"plugin": self}),
            ])
        _register_collector()

    async def close(self) -> None:
        if _ACTIVE[0] is self:
            _ACTIVE[0] = None

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != TOPIC or not isinstance(msg, dict) or "experiment" not in msg:
            return
        eid = str(msg["experiment"])
        exp = self.experiments.get(eid)
        new = exp is None
        if new:
            exp = self.experiments[eid] = _Experiment()
        exp.add(time.time(), {k: v for k, v in msg.items() if k not in ("experiment", "time")}, self._stale())
        if new:
            self._forget_old()

    def _stale(self) -> float:
        return STALE_S if self.stale_s is None else float(self.stale_s)

    def _retention(self) -> float:
        return RETENTION_S if self.retention_s is None else float(self.retention_s)

    def _forget_old(self, now: float | None = None) -> None:
        """Experiments that ended more than the retention ago go; the oldest beyond MAX_EXPERIMENTS too."""
        now = time.time() if now is None else now
        stale_s, retention_s = self._stale(), self._retention()
        for eid in [e for e, x in self.experiments.items()
                    if x.state(now, stale_s) in ENDED and now - x.updated >= retention_s]:
            del self.experiments[eid]
        while len(self.experiments) > MAX_EXPERIMENTS:
            oldest = min(self.experiments, key=lambda e: self.experiments[e].updated)
            del self.experiments[oldest]

    def view(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Every experiment's latest numbers, rates and estimate, newest first (ended ones past the retention gone)."""
        now = time.time() if now is None else now
        self._forget_old(now)
        items = sorted(self.experiments.items(), key=lambda kv: kv[1].updated, reverse=True)
        return {eid: exp.view(now, self._stale()) for eid, exp in items}

    # ------------------------------------------------------------- /metrics
    def metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families = {}
        for name, (kind, doc) in METRICS.items():
            labels = ["experiment"] + (["model"] if name in PER_MODEL else ["state"] if name == "panicflow_state" else [])
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = cls(name, doc, labels=labels)
        for eid, v in self.view().items():
            for key in ("runs", "runs_complete", "runs_failed", "task_failures"):
                if key in v:
                    families[f"panicflow_{key}"].add_metric([eid], v[key])
            for model, n in v.get("invocations_by_model", {}).items():
                families["panicflow_invocations"].add_metric([eid, model], n)
            for model, n in v.get("invocations_max_by_model", {}).items():
                families["panicflow_invocations_max"].add_metric([eid, model], n)
            for model, rate in v["invocations_per_second"].items():
                families["panicflow_invocations_per_second"].add_metric([eid, model], rate)
            for key in ("embeddings", "persistence_diagrams"):
                for model, n in v.get(key, {}).items():
                    families[f"panicflow_{key}"].add_metric([eid, model], n)
            families["panicflow_last_update_seconds"].add_metric([eid], v["updated"])
            for state in STATES:
                families["panicflow_state"].add_metric([eid, state], 1.0 if v["state"] == state else 0.0)
            if v["state"] == "running" and v["eta"]["seconds_left"] is not None:
                families["panicflow_eta_seconds"].add_metric([eid], v["eta"]["seconds_left"])
                families["panicflow_eta_partial"].add_metric([eid], 1.0 if v["eta"]["partial"] else 0.0)
        yield from families.values()


def _seconds(given: float | None, name: str, default: float) -> float:
    """``given``, else panicflow's setting ``name`` in this process's dask config (the scheduler's:
    ``DASK_PANICFLOW__PROGRESS_STALE``, a Dask YAML file), else ``default``."""
    if given is not None:
        return float(given)
    try:
        from .. import settings

        return float(settings.get(name))
    except Exception as exc:  # a bad value: said once in the scheduler's log, the page works on
        log.warning("panicflow progress page: %s; using %g s", exc, default)
        return default


# One collector per process, reading whichever plugin is active: the default Prometheus
# registry refuses a second collector with the same metric names (a plugin registered again).
_ACTIVE: list[ProgressPlugin | None] = [None]
_COLLECTOR: list[Any] = []


class _Collector:
    def collect(self):
        plugin = _ACTIVE[0]
        if plugin is not None:
            yield from plugin.metrics()

    def describe(self):  # no metrics probed at registration: they come and go with experiments
        return []


def _register_collector() -> None:
    if _COLLECTOR:
        return
    try:
        import prometheus_client
    except ImportError:  # Dask's /metrics says so too
        return
    _COLLECTOR.append(_Collector())
    prometheus_client.REGISTRY.register(_COLLECTOR[0])


# ------------------------------------------------------------------- pages
from distributed.http.utils import RequestHandler  # noqa: E402  (tornado, imported with distributed)


class _JsonHandler(RequestHandler):
    def initialize(self, plugin: ProgressPlugin) -> None:  # type: ignore[override]
        self.plugin = plugin

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.plugin.view()))


class _PageHandler(_JsonHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(render_page(self.plugin.view()))


def _cells(d: Mapping[str, Any], fmt: str = "{}") -> str:
    return ", ".join(f"{html.escape(str(k))}: {fmt.format(v)}" for k, v in d.items()) or "-"


def _steps(v: Mapping[str, Any]) -> str:
    """Invocations done of at most how many, with the share: the progress that moves all along
    (runs end in waves, so "runs ended" reads 3/32 when 94% of the steps are done)."""
    done = int(v.get("invocations", 0))
    if "invocations_max" not in v:
        return str(done)
    most = int(v["invocations_max"])
    share = f" ({100 * done / most:.0f}%)" if most else ""
    return f"{done} of at most {most}{share}"


def render_page(view: Mapping[str, Mapping[str, Any]]) -> str:
    """The /panicflow page: one table per experiment, refreshed every 2 s."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>",
        "<title>panicflow progress</title><style>body{font-family:sans-serif;margin:1em}"
        "table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:left}th{background:#f4f4f4}</style></head><body><h1>panicflow progress</h1>",
    ]
    if not view:
        parts.append("<p>No experiment has reported to this scheduler yet.</p>")
    for eid, v in view.items():
        title = html.escape(eid) + (f" ({html.escape(v['name'])})" if v.get("name") else "")
        state = str(v.get("state", "running"))
        since = v.get("seconds_since_update")
        state_cell = html.escape(state) + (
            f" (no progress snapshot for {_eta.seconds_text(since)}: its coordinator stopped or cannot reach "
            "the scheduler; <code>panicflow experiment status</code> says which)" if state == "stale" and since else "")
        rows = [
            ("state", state_cell),
            ("steps (invocations)", _steps(v)),
            ("time left", html.escape(_eta.for_state(v.get("eta"), state))),
            ("runs", f"{v.get('runs_complete', 0)} complete, {v.get('runs_failed', 0)} failed, {v.get('runs', '?')} in all"),
            ("invocations per model", _cells(v.get("invocations_by_model", {}))),
            ("invocations per second", _cells(v.get("invocations_per_second", {}), "{:.1f}")),
            ("embeddings (runs)", _cells(v.get("embeddings", {}))),
            ("persistence diagrams", _cells(v.get("persistence_diagrams", {}))),
            ("stop reasons", _cells(v.get("stop_reasons", {}))),
            ("failed task attempts", str(v.get("task_failures", 0))),
            ("updated", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.get("updated", 0)))),
        ]
        parts.append(f"<h2>experiment {title}</h2><table>")
        parts += [f"<tr><th>{k}</th><td>{val}</td></tr>" for k, val in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


__all__ = ["ENDED", "METRICS", "PLUGIN_NAME", "ProgressPlugin", "RETENTION_S", "ROUTE", "SNAPSHOT_KEYS", "STALE_S",
           "STATES", "TOPIC", "exposed_metric_names", "page_url", "publish_progress", "register", "render_page",
           "snapshot_dict"]
