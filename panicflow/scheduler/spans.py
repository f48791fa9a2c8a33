"""Keep the scheduler's memory flat over a long experiment: forget panicflow's finished Dask spans.

Dask's scheduler keeps every span it ever opened, with the task groups and submission metadata
attached to it, for its whole life (dask/distributed#7977). Tasks outside a ``distributed.span``
go to a "default" span, and a new one opens whenever the cluster went idle and gets work again:
panicflow's rounds do that all the time, so a scheduler kept about one span and one ``TaskGroup``
(4-7 KB) per few batches, without bound: of the order of 100 MB per 10 million invocations in the
coordinator's process with the embedded ``LocalCluster``, and in ``dask scheduler`` otherwise.

``SpanPruner`` (a scheduler plugin the coordinator's client installs, like the progress page)
forgets, every ``INTERVAL_S``, the finished default spans whose task groups are all panicflow's
(keys named by ``coordinator.task_key``), all gone from the scheduler and all ended more than
``grace_s`` ago, keeping the newest ``keep``. The grace matters: workers report each span's
metrics by id in their heartbeats, and a heartbeat naming a span the scheduler no longer has
raises there and gets the worker removed. It is twice the scheduler's ``worker-ttl`` (a worker
silent that long has been removed) and at least 10 minutes. Spans of anyone else's work, named spans, and spans still holding live tasks are left
alone. What is lost is only the history of those spans on Dask's "Fine Performance Metrics"
page; panicflow's own page (/panicflow) does not use them.

This reaches into the spans extension's containers (``spans``, ``root_spans``,
``spans_search_by_name``/``_by_tag``); tests/test_spans.py fails if a Dask release changes them.
"""

from __future__ import annotations

import logging
import re
import time

from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger(__name__)

PLUGIN_NAME = "panicflow-span-pruner"
INTERVAL_S = 30.0
KEEP = 100  # the newest finished spans stay, for Dask's own pages
GRACE_S = 600.0
# coordinator.task_key: "<stage>_<model>-...", so key_split and the group name keep "<stage>_<model>"
OUR_GROUP = re.compile(r"^(t2i|i2t|embed|diagram)_\w")


def grace_s(floor: float = GRACE_S) -> float:
    """How long after its tasks ended a span is kept: twice ``worker-ttl``, at least ``floor``."""
    import dask.config
    from dask.utils import parse_timedelta

    ttl = dask.config.get("distributed.scheduler.worker-ttl", None)
    return max(floor, 2 * (parse_timedelta(ttl) or 0)) if ttl else max(floor, 3600.0)


def forget_finished_spans(scheduler, keep: int = KEEP, grace: float | None = None) -> int:
    """Forget panicflow's finished default spans on ``scheduler`` beyond the newest ``keep``,
    whose tasks ended over ``grace`` seconds ago (default ``grace_s()``); how many."""
    ext = scheduler.extensions.get("spans")
    if ext is None:
        return 0
    before = time.time() - (grace_s() if grace is None else grace)
    defaults = ext.spans_search_by_name.get(("default",), [])
    current = defaults[-1] if defaults else None  # Dask adds new default tasks to it while it runs

    def finished_and_ours(span) -> bool:
        return (
            span is not current and span.parent is None and not span.children and bool(span.groups)
            and all(OUR_GROUP.match(tg.name) and scheduler.task_groups.get(tg.name) is not tg and tg.stop < before
                    for tg in span.groups)
        )

    candidates = [s for s in defaults if finished_and_ours(s)]
    drop = candidates[: max(0, len(candidates) - keep)]
    if not drop:
        return 0
    gone = {id(s) for s in drop}
    for span in drop:
        ext.spans.pop(span.id, None)
    ext.root_spans[:] = [s for s in ext.root_spans if id(s) not in gone]
    ext.spans_search_by_name[("default",)] = [s for s in defaults if id(s) not in gone]
    tagged = ext.spans_search_by_tag.get("default")
    if tagged is not None:
        ext.spans_search_by_tag["default"] = [s for s in tagged if id(s) not in gone]
    return len(drop)


def register(client) -> bool:
    """Install ``SpanPruner`` on ``client``'s scheduler (idempotent); False if it cannot be."""
    try:
        client.register_plugin(SpanPruner(), name=PLUGIN_NAME)
    except Exception as exc:  # e.g. a scheduler without panicflow: dashboard.register says so already
        log.debug("span pruner not installed: %r", exc)
        return False
    return True


class SpanPruner(SchedulerPlugin):
    """Runs ``forget_finished_spans`` every ``interval_s`` on the scheduler it is installed on."""

    idempotent = True  # one per scheduler, however many experiments register it

    def __init__(self, interval_s: float = INTERVAL_S, keep: int = KEEP, grace: float | None = None) -> None:
        self.interval_s = interval_s
        self.keep = keep
        self.grace = grace  # None: grace_s() on the scheduler, from its own worker-ttl
        self.forgotten = 0

    async def start(self, scheduler) -> None:
        from tornado.ioloop import PeriodicCallback

        self.scheduler = scheduler
        pc = PeriodicCallback(self._prune, self.interval_s * 1000)
        scheduler.periodic_callbacks[PLUGIN_NAME] = pc
        pc.start()

    def _prune(self) -> None:
        try:
            self.forgotten += forget_finished_spans(self.scheduler, self.keep, self.grace)
        except Exception:  # a Dask release that changed the extension: keep the spans, not fail
            log.debug("could not forget finished spans", exc_info=True)

    async def close(self) -> None:
        pc = self.scheduler.periodic_callbacks.pop(PLUGIN_NAME, None) if hasattr(self, "scheduler") else None
        if pc is not None:
            pc.stop()
