"""The diagram stage on a real multi-process cluster, and the stored diagram layout.

The cluster is started the way users start one: ``dask scheduler`` and ``dask worker
--nthreads 2`` as separate processes, in another folder than the client. Before the
diagram stage ran giotto-ph in child processes, two threads of that worker calling it at
once deadlocked (scripts/measure_diagram_deadlock.py), and the first test hung there.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

import faults_util as fu
from panicflow.analysis.topology import DiagramResult, PersistenceOptions, compute_diagram
from panicflow.config import validate_config
from panicflow.scheduler import tasks
from panicflow.store import Store
from panicflow.store.experiment import Experiment, ExperimentWriter, write_embedding_rows

N_RUNS = 32
LENGTH = 80
MODEL = "DummyText"  # 768-d


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(client, worker pid) of ``dask scheduler`` + one ``dask worker --nthreads 2``, started in their own folder."""
    from distributed import Client

    where = tmp_path_factory.mktemp("cluster-cwd")
    sched_file = where / "scheduler.json"
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(where / log, "wb") as out:
            proc = subprocess.Popen([fu.DASK, *args], cwd=where, stdout=out, stderr=subprocess.STDOUT,
                                    env=fu.child_env(), start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
               str(sched_file), "--idle-timeout", "600"], "scheduler.log")
        deadline = time.monotonic() + 90
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert time.monotonic() < deadline, (where / "scheduler.log").read_text()
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        start(["worker", address, "--nthreads", "2", "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard",
               "--death-timeout", "60"], "worker.log")
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=120)
            yield client
    finally:
        for proc in reversed(procs):
            fu._stop(proc)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """(store path, experiment id) with N_RUNS runs of LENGTH random 768-d embeddings (no model runs)."""
    path = str(tmp_path_factory.mktemp("diagram-store") / "store")
    store = Store(path, create=True)
    cfg = validate_config({
        "networks": [["DummyT2I", "DummyI2T"]], "seeds": list(range(N_RUNS)), "prompts": ["a cat"],
        "embedding_models": [MODEL], "max_length": LENGTH, "persistence": {"maxdim": 1},
    })
    exp = Experiment.create(store.root, "stage-test", cfg)
    rng = np.random.default_rng(0)
    for run in range(N_RUNS):
        vectors = np.full((LENGTH, 768), np.nan, dtype=np.float32)
        vectors[::2] = np.cumsum(rng.normal(size=(LENGTH // 2, 768)), axis=0)  # the texts: every other step
        write_embedding_rows(exp, run, MODEL, vectors)
    return path, exp.id


def _options(**kw) -> dict:
    return {"maxdim": 1, "collapse_edges": None, "memory_budget_gb": None, "fallback": "skip", "time_limit_s": None, **kw}


def test_diagrams_finish_on_a_two_thread_worker(cluster, small_store):
    from distributed import wait

    path, eid = small_store
    futures = [cluster.submit(tasks.diagram_run, path, eid, run, MODEL, LENGTH, _options(), pure=False)
               for run in range(N_RUNS)]
    try:
        wait(futures, timeout=300)
    except TimeoutError:
        pending = sum(not f.done() for f in futures)
        cluster.cancel(futures)
        pytest.fail(f"{pending} of {N_RUNS} diagrams still running after 300 s: the worker's threads hang")
    results = cluster.gather(futures)
    assert [r.status for r in results] == ["ok"] * N_RUNS
    for run, res in enumerate(results):
        assert res.n_points == res.n_points_used == LENGTH // 2 and res.maxdim_used == 1
        np.testing.assert_array_equal(res.steps, np.arange(0, LENGTH, 2))
    # the same diagrams as giotto-ph in this process
    exp = Experiment(Store(path).root, eid)
    vectors = exp.group(read_only=True)[f"embeddings/{MODEL}/vector"][3, :LENGTH]
    here = compute_diagram(vectors[::2], PersistenceOptions(maxdim=1), isolated=False)
    for got, want in zip(results[3].diagrams, here.diagrams):
        np.testing.assert_array_equal(got, want)

    # stored: the points used, the dimensions computed, no subsample
    writer = ExperimentWriter(exp)
    for run, res in enumerate(results):
        writer.write_diagram(run, MODEL, res)
    d = exp.group(read_only=True)[f"diagrams/{MODEL}"]
    assert d["point_used"][5].tolist() == [i % 2 == 0 for i in range(LENGTH)]
    assert (d["n_points_used"][:] == LENGTH // 2).all() and d["computed"][:].all()
    assert (d["subsample_seed"][:] == -1).all()


def test_memory_budget_is_a_share_of_the_worker_limit_per_thread(cluster):
    limit = next(iter(cluster.scheduler_info()["workers"].values()))["memory_limit"]
    assert cluster.submit(tasks._memory_budget_gb, None, pure=False).result() == pytest.approx(limit / 1e9 * 0.5 / 2)
    assert cluster.submit(tasks._memory_budget_gb, 3.0, pure=False).result() == 3.0


def test_time_limit_stops_a_diagram_and_the_worker_lives_on(cluster, small_store):
    path, eid = small_store
    pids = cluster.run(os.getpid)
    # i.i.d. directions in 768-d: H2 of 200 of them takes minutes (docs/diagrams.md)
    pts = np.random.default_rng(1).normal(size=(200, 768))
    pts = (pts / np.linalg.norm(pts, axis=1, keepdims=True)).astype(np.float32)
    slow = cluster.submit(compute_diagram, pts, PersistenceOptions(maxdim=2, time_limit_s=2.0), pure=False)
    res = slow.result(timeout=120)
    assert res.status == "over_time" and res.maxdim_used == -1
    assert "stopped after 2 s" in res.reason and "time_limit_s" in res.reason
    assert np.isnan(res.entropy).all() and all(len(dg) == 0 for dg in res.diagrams)
    # the worker process is the same one, and computes the next diagram in a fresh child
    ok = cluster.submit(tasks.diagram_run, path, eid, 0, MODEL, LENGTH, _options(time_limit_s=600.0), pure=False)
    assert ok.result(timeout=120).status == "ok"
    assert cluster.run(os.getpid) == pids


def test_stored_pair_width_does_not_depend_on_the_order_of_results(tmp_path):
    """The padded pair axis: 800 wide with two workers and 988 with one before (issue 8, item 14)."""
    cfg = validate_config({
        "networks": [["DummyT2I", "DummyI2T"]], "seeds": list(range(6)), "prompts": ["a cat"],
        "embedding_models": [MODEL], "max_length": 20, "persistence": {"maxdim": 1},
    })
    rng = np.random.default_rng(2)
    sizes = [12, 40, 17, 33, 60, 25]  # pairs: some above the initial width of 20
    results = []
    for n in sizes:
        k0 = min(n, 20)  # H0: one bar per point; the rest are H1 bars
        h0 = np.column_stack([np.zeros(k0), np.append(rng.random(k0 - 1), np.inf)])
        b1 = rng.random(n - k0)
        h1 = np.column_stack([b1, b1 + rng.random(n - k0)])
        results.append(DiagramResult("ok", "", 20, 20, 1, [h0, h1], np.array([1.0, 1.0])))
    shapes, contents = [], []
    for k, order in enumerate([range(6), reversed(range(6)), [4, 0, 1, 2, 3, 5]]):
        store = Store(str(tmp_path / f"s{k}"), create=True)
        exp = Experiment.create(store.root, "order", cfg)
        writer = ExperimentWriter(exp)
        for run in order:
            writer.write_diagram(run, MODEL, results[run])
        d = exp.group(read_only=True)[f"diagrams/{MODEL}"]
        shapes.append({name: d[name].shape for name in ("birth", "death", "dimension")})
        contents.append(d["birth"][:])
    assert shapes[0] == shapes[1] == shapes[2] == {name: (6, max(sizes)) for name in ("birth", "death", "dimension")}
    np.testing.assert_array_equal(contents[0], contents[1])
    np.testing.assert_array_equal(contents[0], contents[2])
