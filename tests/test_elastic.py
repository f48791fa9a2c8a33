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
    "max_length": 40,
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
            added = [cluster.add_worker() for _ in range(3)]
            changes.append("added")
            while journaled_steps(store) < 120 and time.monotonic() < deadline:
                time.sleep(0.1)
            cluster.kill_worker(added[0])  # scale down: it leaves for good mid-run
            changes.append("killed")

        thread = threading.Thread(target=scale, daemon=True)
        thread.start()
        eid = panicflow.run_experiment(CONFIG, store=store, client=client)
        thread.join(60)
        assert changes == ["added", "killed"], "the cluster did not change during the experiment"
    root = panicflow.open_experiment(eid, store=store)["/"].ds
    assert (root.length.values == 40).all() and set(root.stop_reason.values.astype(object)) == {"length"}
    models = root.model.values.astype(object)
    sleeps = models == "SleepT2I"
    ids = root.batch_id.values.astype(object)[sleeps]
    _, first = np.unique(ids, return_index=True)
    starts = root.started_at.values[sleeps][first]
    ends = root.ended_at.values[sleeps][first]
    # one single-thread worker ran one call at a time; four ran several at once
    assert max_overlap(starts, ends) >= 3


def test_cpu_stages_wait_for_cpu_slots_and_keep_off_gpu_workers(semantics_experiment):
    """Issue 7 item 9: diagrams (and CPU embedders) never take the threads that feed the GPUs."""
    from panicflow.scheduler.coordinator import Coordinator
    from panicflow.store import Store

    class FakeFuture:
        key = "k"

    class FakeClient:
        def __init__(self):
            self.submitted: list[dict] = []

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"tcp://g": {"nthreads": 2, "resources": {"GPU": 1}},
                                "tcp://c": {"nthreads": 2, "resources": {}}}}

        def submit(self, fn, *args, **kwargs):
            self.submitted.append(kwargs)
            return FakeFuture()

    store, eid = semantics_experiment
    st = Store(store)
    client = FakeClient()
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
    assert all(kw["workers"] == ["tcp://c"] and kw["allow_other_workers"] for kw in client.submitted)
    coord.runs[1].end = coord.runs[0].end  # runs done: every thread may take them
    coord._dirty.add(1)
    coord._look_at_dirty_runs()
    coord._drain_cpu_queue()
    assert len(client.submitted) == 4 and not coord.cpu_queue
