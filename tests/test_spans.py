"""The scheduler forgets panicflow's finished Dask spans (issue 7 item 7: flat memory over a long experiment).

Dask keeps every span it opens, and a new default span opens each time the cluster goes idle
and gets work again, as panicflow's rounds do: the scheduler grew by one span and one task
group per few batches, for ever (dask/distributed#7977). panicflow/scheduler/spans.py prunes them.
"""

from __future__ import annotations

import time
import uuid

import distributed
import pytest
from distributed import Client, LocalCluster

import panicflow
from cluster_util import DaskCluster, cluster_fixture
from panicflow.scheduler.coordinator import task_key
from panicflow.scheduler.spans import PLUGIN_NAME, SpanPruner, forget_finished_spans

dask_cluster = cluster_fixture(1, scope="module", nthreads=1)


def _inc(x: int) -> int:
    return x + 1


def _default_spans(dask_scheduler) -> list:
    return list(dask_scheduler.extensions["spans"].spans_search_by_name.get(("default",), []))


def _one_at_a_time(client: Client, n: int, stage: str = "t2i", model: str = "DummyT2I") -> None:
    """n tasks, each submitted once the previous one was released: the cluster idles in between,
    as it does between panicflow's rounds, and each task opens a new default span."""
    for i in range(n):
        client.submit(_inc, i, key=task_key(stage, model, uuid.uuid4().hex[:8]), pure=False).result()
        _settle(client)


def _settled(dask_scheduler) -> bool:
    return all(ts.who_wants for ts in dask_scheduler.tasks.values())


def _settle(client: Client) -> None:
    """Wait until the tasks the client released are gone from the scheduler (it is told asynchronously)."""
    deadline = time.monotonic() + 10
    while not client.run_on_scheduler(_settled) and time.monotonic() < deadline:
        time.sleep(0.005)


GRACE = 1.5  # s: well past a heartbeat of these small clusters (0.5 s), which reports metrics by span id


def _on_scheduler(client: Client, fn, *args):
    """fn(scheduler, *args) on the scheduler's event loop, once released tasks are gone."""
    _settle(client)
    return client.run_on_scheduler(lambda dask_scheduler: fn(dask_scheduler, *args))


def _summary(dask_scheduler) -> dict:
    ext = dask_scheduler.extensions["spans"]
    return {"defaults": [s.id for s in _default_spans(dask_scheduler)], "spans": sorted(ext.spans),
            "roots": [s.id for s in ext.root_spans], "tagged": [s.id for s in ext.spans_search_by_tag["default"]],
            "names": sorted(s.name for s in ext.spans.values()),
            "groups": sorted(tg.name for s in ext.spans.values() for tg in s.groups)}


@pytest.fixture
def client():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def test_finished_panicflow_spans_are_forgotten_beyond_the_newest(client):
    _one_at_a_time(client, 40)
    _one_at_a_time(client, 10, "embed", "all-MiniLM-L6-v2")
    before = _on_scheduler(client, _summary)["defaults"]
    assert len(before) > 20  # what Dask keeps on its own: one default span per idle period
    assert _on_scheduler(client, forget_finished_spans, 4, GRACE) == 0  # none ended long enough ago
    time.sleep(GRACE)
    assert _on_scheduler(client, forget_finished_spans, 4, GRACE) == len(before) - 5  # the current span is kept too
    after = _on_scheduler(client, _summary)
    assert after["defaults"] == before[-5:]
    assert after["spans"] == sorted(before[-5:]) and after["roots"] == after["tagged"] == before[-5:]
    assert _on_scheduler(client, forget_finished_spans, 4, GRACE) == 0  # nothing more to forget
    _one_at_a_time(client, 5)  # Dask goes on as before
    assert len(_on_scheduler(client, _summary)["defaults"]) > 5


def test_other_work_and_live_tasks_keep_their_spans(client):
    with distributed.span("someone else's"):
        client.submit(_inc, 1, key=task_key("t2i", "DummyT2I", "named1"), pure=False).result()
    client.submit(_inc, 2, key="inc-1", pure=False).result()  # a default span holding a user's group
    _one_at_a_time(client, 10)
    held = client.submit(_inc, 3, key=task_key("i2t", "DummyI2T", "held1"), pure=False)
    held.result()  # finished but not released: its group is still on the scheduler
    _one_at_a_time(client, 10)
    before = _on_scheduler(client, _summary)
    time.sleep(GRACE)
    assert _on_scheduler(client, forget_finished_spans, 0, GRACE) > 10
    kept = _on_scheduler(client, _summary)
    assert ("someone else's",) in kept["names"]
    assert "inc" in kept["groups"] and "i2t_DummyI2T" in kept["groups"]
    assert kept["groups"].count("t2i_DummyT2I") == 2  # the named span's and the current default span's
    assert len(kept["spans"]) < len(before["spans"])
    del held


def test_a_real_experiment_on_a_separate_scheduler_ends_with_few_spans(dask_cluster: DaskCluster, tmp_path):
    """The pruner is a plugin on a `dask scheduler` started as users start one; the coordinator
    installs it (here first, with short times, so that a short experiment shows it). The worker's
    heartbeats name spans by id: one naming a forgotten span got the worker removed (it hung)."""
    config = {
        "name": "spans", "networks": [["DummyT2I", "DummyI2T"]], "seeds": [-1] * 4, "prompts": ["a cat"],
        "embedding_models": ["DummyText"], "max_length": 60,
    }
    with Client(dask_cluster.address) as client:
        client.register_plugin(SpanPruner(interval_s=0.2, keep=3, grace=GRACE), name=PLUGIN_NAME)
        panicflow.run_experiment(config, store=str(tmp_path / "store"), client=client)
        time.sleep(GRACE + 0.6)  # a prune after the last tasks ended
        assert len(client.scheduler_info()["workers"]) == 1
        forgotten = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[PLUGIN_NAME].forgotten)
        left = client.run_on_scheduler(lambda dask_scheduler: len(_default_spans(dask_scheduler)))
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    # the names a user types to filter the task stream or a performance report (issue 20 item 8)
    assert {"t2i_DummyT2I", "i2t_DummyI2T", "embed_DummyText", "diagram_DummyText"} <= set(prefixes), prefixes
    assert forgotten >= 5  # 60 steps of 4 runs opened many more default spans than the 3 kept
    assert left <= 4  # the newest 3, and the current one
    assert "KeyError" not in dask_cluster.log("scheduler", 100_000)
