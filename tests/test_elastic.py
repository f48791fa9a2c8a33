"""Clusters that grow and shrink during an experiment (issue 7 item 4), on real `dask worker` processes.

The coordinator sizes the work in flight to the workers there now: with one worker at the
start and three more joining, the model calls spread over all of them; a worker that leaves
mid-run loses nothing.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import panicflow
from cluster_util import DaskCluster, child_env, journaled_steps

CONFIG = {
    "networks": [["SleepT2I", "DummyI2T"]],
    "seeds": [-1],
    "prompts": [f"prompt {i}" for i in range(8)],
    "embedding_models": ["DummyText"],
    "max_length": 30,
    "batch_size": {"SleepT2I": 1, "DummyI2T": 1},
    "persistence": {"maxdim": 0},
}


def max_overlap(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most model calls running at one instant."""
    events = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_workers_that_join_are_used_and_one_that_leaves_loses_nothing(tmp_path, monkeypatch):
    import threading

    store = str(tmp_path / "store")
    with DaskCluster(workers=1, nthreads=1, env=child_env(PANICFLOW_TEST_SLEEP_S="0.3")) as cluster, cluster.client() as client:
        changes: list[str] = []

        def scale() -> None:  # beside the experiment, as an adaptive cluster would
            deadline = time.monotonic() + 300
            while journaled_steps(store) < 10 and time.monotonic() < deadline:
                time.sleep(0.1)
            added = [cluster.add_worker(wait=False) for _ in range(3)]  # started together, as a cluster scales
            cluster.wait_for_workers(added)
            changes.append("added")
            # 50 steps on the four workers (however slowly they started) before one leaves, and at least
            # 100 of the 240: it leaves mid-run, with most of the work still to do
            joined = journaled_steps(store)
            while journaled_steps(store) < max(100, joined + 50) and time.monotonic() < deadline:
                time.sleep(0.1)
            cluster.kill_worker(added[0])  # scale down: it leaves for good mid-run
            changes.append("killed")

        thread = threading.Thread(target=scale, daemon=True)
        thread.start()
        eid = panicflow.run_experiment(CONFIG, store=store, client=client)
        thread.join(60)
        assert changes == ["added", "killed"], "the cluster did not change during the experiment"
    root = panicflow.open_experiment(eid, store=store)["/"].ds
    assert (root.length.values == CONFIG["max_length"]).all() and set(root.stop_reason.values.astype(object)) == {"length"}
    models = root.model.values.astype(object)
    sleeps = models == "SleepT2I"
    ids = root.batch_id.values.astype(object)[sleeps]
    _, first = np.unique(ids, return_index=True)
    starts = root.started_at.values[sleeps][first]
    ends = root.ended_at.values[sleeps][first]
    # one single-thread worker ran one call at a time; four ran several at once
    assert max_overlap(starts, ends) >= 3


class FakeFuture:
    key = "k"


class FakeClient:
    """What the coordinator asks of a cluster of ``workers`` (address -> nthreads, GPU), and what it submits."""

    def __init__(self, workers: dict[str, tuple[int, bool]]):
        self.workers = workers
        self.submitted: list[dict] = []

    def scheduler_info(self, n_workers=-1):
        return {"workers": {a: {"nthreads": n, "resources": {"GPU": 1} if gpu else {}}
                            for a, (n, gpu) in self.workers.items()}}

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(kwargs)
        return FakeFuture()


def test_cpu_stages_wait_for_cpu_slots_and_keep_off_gpu_workers(semantics_experiment):
    """Issue 7 item 9: diagrams (and CPU embedders) never take the threads that feed the GPUs."""
    from panicflow.scheduler.coordinator import Coordinator
    from panicflow.store import Store

    store, eid = semantics_experiment
    st = Store(store)
    client = FakeClient({"tcp://g": (2, True), "tcp://c": (2, False)})
    coord = Coordinator(client, st, st.experiment(eid))
    coord.load()
    assert coord.gpu_cluster and coord.cpu_workers == ["tcp://c"]
    assert coord.max_in_flight == 8 and coord.cpu_slots == 3  # 4 threads, one per GPU worker kept for it
    assert coord._is_cpu_stage("diagram", "DummyText") and coord._is_cpu_stage("embed", "DummyText")
    run = coord.runs[0]
    coord.runs[1].end = None  # a run still going: CPU stages get only the CPU slots
    coord._dirty.add(1)  # as the coordinator marks a run whose call came back
    coord._look_at_dirty_runs()
    for model in ("DummyText", "DummyText2", "DummyVision", "DummyVision2"):
        run.diagrams.discard(model)
        coord._submit_diagram(run, model)
    assert len(client.submitted) == 3 and len(coord.cpu_queue) == 1
    # pinned, never loosely placed: Dask's work stealing moved loose ones onto the GPU worker until
    # they held all its threads (scripts/benchmark_starvation.py); the CPU worker's threads first
    assert [kw["workers"] for kw in client.submitted] == [["tcp://c"], ["tcp://c"], ["tcp://g"]]
    assert not any(kw.get("allow_other_workers") for kw in client.submitted)
    coord.runs[1].end = coord.runs[0].end  # runs done: every thread may take them
    coord._dirty.add(1)
    coord._look_at_dirty_runs()
    coord._drain_cpu_queue()
    assert len(client.submitted) == 4 and not coord.cpu_queue
    assert client.submitted[3]["workers"] == ["tcp://g"]  # the GPU worker's last thread, now the runs are done


def test_cpu_stages_count_per_worker_and_leave_each_gpu_a_thread(semantics_experiment):
    """Only GPU workers: CPU stages go to the threads each GPU worker has beyond its GPU's, one
    task per free thread, never to a one-thread GPU worker while runs remain."""
    from panicflow.scheduler.coordinator import Coordinator
    from panicflow.store import Store

    store, eid = semantics_experiment
    st = Store(store)
    client = FakeClient({"tcp://g1": (1, True), "tcp://g3": (3, True)})
    coord = Coordinator(client, st, st.experiment(eid))
    coord.load()
    assert coord.cpu_slots == 2
    run = coord.runs[0]
    coord.runs[1].end = None  # a run still going
    coord._dirty.add(1)
    coord._look_at_dirty_runs()
    for model in ("DummyText", "DummyText2", "DummyVision"):
        run.diagrams.discard(model)
        coord._submit_diagram(run, model)
    assert [kw["workers"] for kw in client.submitted] == [["tcp://g3"], ["tcp://g3"]]
    assert len(coord.cpu_queue) == 1
    done = next(iter(coord.in_flight))  # one comes back: its thread is free again, on g3
    coord.in_flight.pop(done)
    coord._drain_cpu_queue()
    assert [kw["workers"] for kw in client.submitted][2:] == [["tcp://g3"]] and not coord.cpu_queue



def test_a_cluster_left_without_workers_is_reported_and_waited_for(tmp_path, monkeypatch, caplog):
    """Every worker gone mid-run (an adaptive cluster scaled to zero, a job ended): the coordinator
    said nothing and waited silently; now it warns, keeps waiting, and finishes once one joins."""
    import logging
    import threading

    from panicflow.scheduler import coordinator

    monkeypatch.setattr(coordinator, "NO_WORKERS_WARN_S", 1.0)
    store = str(tmp_path / "store")
    config = {**CONFIG, "max_length": 12, "prompts": CONFIG["prompts"][:2]}
    with DaskCluster(workers=1, nthreads=1, env=child_env(PANICFLOW_TEST_SLEEP_S="0.1")) as cluster, cluster.client() as client:
        def empty_then_refill() -> None:
            deadline = time.monotonic() + 120
            while journaled_steps(store) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            cluster.kill_worker("w0")
            while "no Dask worker is connected" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
            cluster.add_worker()

        thread = threading.Thread(target=empty_then_refill, daemon=True)
        thread.start()
        with caplog.at_level(logging.WARNING, logger="panicflow"):
            eid = panicflow.run_experiment(config, store=store, client=client)
        thread.join(60)
    assert f"no Dask worker is connected to {cluster.address}" in caplog.text
    root = panicflow.open_experiment(eid, store=store)["/"].ds
    assert (root.length.values == 12).all()
