"""panicflow on a hand-started Dask cluster (issue 7): `dask scheduler` and `dask worker ADDRESS`
processes started in a folder of their own, the client in another, as users do (tests/cluster_util.py).

Workers run one thread each here: two threads in one process can deadlock inside giotto-ph
(issue 7, item 1), which is not what these tests are about.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import panicflow
from cluster_util import DaskCluster, child_env, cluster_fixture, elsewhere
from panicflow.errors import PermanentError, RunsFailed, StoreUnavailable, StoreUnreachable, UnknownModel, UserError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups")

dask_cluster = cluster_fixture(2, scope="module", nthreads=1)

CONFIG = {
    "name": "on-a-cluster",
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [22, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 12,
}
POISON = {
    "networks": [["PoisonT2I", "DummyI2T"]],
    "seeds": [5],
    "prompts": ["a poison apple", "a fine apple"],
    "embedding_models": ["DummyText"],
    "max_length": 4,
    "retry": {"max_attempts": 2, "backoff_s": 0.01},
}
# the numbers the dashboard page and `panicflow experiment status --json` share
SHARED = ("runs", "runs_complete", "runs_failed", "invocations", "invocations_max", "invocations_by_model",
          "invocations_max_by_model", "embeddings", "persistence_diagrams", "stop_reasons")


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "panicflow", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode()


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_default_store_and_DASK_SCHEDULER_ADDRESS_progress_on_the_scheduler(dask_cluster: DaskCluster, tmp_path):
    """The default ./panicflow-store, relative to the client's folder, reaches workers started
    elsewhere (it was sent as typed: every step failed there); DASK_SCHEDULER_ADDRESS picks the
    cluster; the scheduler's /panicflow page and /metrics show the numbers `status` prints."""
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    (client_dir / "config.json").write_text(json.dumps(CONFIG))
    env = child_env(DASK_SCHEDULER_ADDRESS=dask_cluster.address)
    env.pop("PANICFLOW_STORE", None)
    res = _cli(["experiment", "run", "config.json", "--json"], client_dir, env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["state"] == "complete" and out["runs_complete"] == 2
    assert out["store"] == str(client_dir / "panicflow-store")  # absolute: what every worker opened
    assert not (dask_cluster.cwd / "panicflow-store").exists()
    eid = out["id"]
    status = json.loads(_cli(["experiment", "status", eid, "--json"], client_dir, env).stdout)
    assert status["invocations_by_model"] == {"DummyT2I": 12, "DummyI2T": 12}  # 2 runs x 12 steps, alternating

    view = json.loads(_get(dask_cluster.dashboard + "/panicflow/json"))
    assert eid in view, view.keys()
    assert {k: view[eid].get(k) for k in SHARED} == {k: status[k] for k in SHARED}
    assert view[eid]["name"] == "on-a-cluster" and "invocations_per_second" in view[eid]
    page = _get(dask_cluster.dashboard + "/panicflow")
    assert eid in page and "persistence diagrams" in page
    metrics = _get(dask_cluster.dashboard + "/metrics")
    for model, n in status["invocations_by_model"].items():
        assert f'panicflow_invocations_total{{experiment="{eid}",model="{model}"}} {float(n)}' in metrics
    assert f'panicflow_runs_complete{{experiment="{eid}"}} 2.0' in metrics
    assert f'panicflow_persistence_diagrams{{experiment="{eid}",model="DummyText"}} 2.0' in metrics
    assert "dask_scheduler_workers" in metrics  # Dask's own metrics are still served


def test_runs_that_failed_raise_after_run_and_resume(dask_cluster: DaskCluster, tmp_path):
    """run_experiment returned the id as if all was well when runs failed; it raises RunsFailed
    now (the CLI exits 1), through --scheduler-file's cluster."""
    store = str(tmp_path / "store")
    with pytest.raises(RunsFailed) as info:
        panicflow.run_experiment(POISON, store=store, scheduler_file=dask_cluster.scheduler_file)
    exc = info.value
    eid = exc.experiment_id
    assert (exc.failed, exc.runs) == (1, 2)
    message = str(exc)
    assert "\n" not in message and eid in message and f"panicflow experiment resume {eid} --retry-failed" in message
    assert "PoisonT2I refuses" in message
    assert panicflow.experiment_status(eid, store=store).state == "failed"
    with pytest.raises(RunsFailed, match=re.escape(eid)):
        panicflow.resume_experiment(eid, store=store, scheduler_file=dask_cluster.scheduler_file, retry_failed=True)


def test_scheduler_file_that_does_not_exist_is_one_clear_line(tmp_path):
    path = tmp_path / "scheduler.json"
    with pytest.raises(UserError, match=r"^--scheduler-file: .*scheduler\.json does not exist; start the scheduler with"):
        panicflow.run_experiment(CONFIG, store=str(tmp_path / "store"), scheduler_file=path)
    assert not (tmp_path / "store").exists()


def test_a_worker_that_cannot_reach_the_store_is_named_before_anything_is_written(dask_cluster: DaskCluster, tmp_path):
    """One worker sees its own empty folder where the store is (as on another machine): the run
    stops at once, exit 2, one line naming the store and that worker; nothing is written."""
    shared = tmp_path / "shared"
    shared.mkdir()
    wrap = elsewhere(shared)
    if wrap is None:
        pytest.skip("needs permission to mount a tmpfs in a private mount namespace")
    name = dask_cluster.add_worker(nthreads=1, wrap=wrap)
    try:
        address = dask_cluster.worker_address(name)
        (tmp_path / "config.json").write_text(json.dumps(CONFIG))
        store = shared / "store"
        res = _cli(["experiment", "run", str(tmp_path / "config.json"), "--store", str(store),
                    "--scheduler", dask_cluster.address], tmp_path, child_env())
        assert res.returncode == 2, res.stderr[-3000:]
        errors = _errors(res.stderr)
        assert len(errors) == 1, res.stderr[-3000:]
        assert f"store {store} cannot be used by 1 of 3 workers: {address} (no folder {store} there)" in errors[0]
        assert "docs/clusters.md" in errors[0]
        assert not store.exists() and list(shared.iterdir()) == []
    finally:
        dask_cluster.kill_worker(name)
    deadline = time.monotonic() + 60
    while name in dask_cluster.worker_names() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in dask_cluster.worker_names()


def test_memory_store_with_worker_processes_is_refused(dask_cluster: DaskCluster):
    import fsspec

    url = "memory://panicflow-cluster-test"
    with pytest.raises(StoreUnreachable) as info:
        panicflow.run_experiment(CONFIG, store=url, scheduler=dask_cluster.address)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"store {url} cannot be used by 2 of 2 workers")
    assert "in-process cluster" in line
    assert not fsspec.filesystem("memory").exists("/panicflow-cluster-test")


def test_errors_retrying_cannot_heal_are_permanent_on_workers(dask_cluster: DaskCluster, tmp_path):
    """What a worker raises when the store is missing there, a model's weights are missing or a
    model is unknown reaches the client as a PermanentError: the coordinator fails the run at once."""
    from panicflow.models import get_spec
    from panicflow.models.cache import get_model
    from panicflow.store import Store

    with dask_cluster.client() as c:
        futures = {
            "store": c.submit(Store, str(tmp_path / "no-store"), pure=False),
            "weights": c.submit(get_model, "SD35Medium", pure=False),
            "unknown": c.submit(get_spec, "NoSuchModel", pure=False),
        }
        errors = {what: f.exception() for what, f in futures.items()}
    assert all(isinstance(e, PermanentError) for e in errors.values()), errors
    assert isinstance(errors["store"], StoreUnavailable) and isinstance(errors["unknown"], UnknownModel)


def test_progress_snapshots_use_the_status_names_and_give_rates():
    """What the coordinator's Progress publishes is renamed to `status --json`'s names; the plugin
    derives invocations per second per model from successive snapshots; the page escapes names."""
    from panicflow.scheduler import dashboard
    from panicflow.scheduler.coordinator import Progress

    snap = Progress(runs=4, runs_ended=3, invocations=40, invocations_max=48, embeddings={"DummyText": 2},
                    diagrams={"DummyText": 1}, stop_reasons={"length": 1, "loop": 1, "failed": 1}, runs_to_embed=3,
                    invocations_by_model={"DummyT2I": 20, "DummyI2T": 20},
                    invocations_max_by_model={"DummyT2I": 24, "DummyI2T": 24})
    d = dashboard.snapshot_dict(snap)
    assert d == {"runs": 4, "runs_complete": 2, "runs_failed": 1, "invocations": 40, "invocations_max": 48,
                 "invocations_by_model": {"DummyT2I": 20, "DummyI2T": 20},
                 "invocations_max_by_model": {"DummyT2I": 24, "DummyI2T": 24},
                 "embeddings": {"DummyText": 2}, "persistence_diagrams": {"DummyText": 1},
                 "stop_reasons": {"length": 1, "loop": 1, "failed": 1}}
    assert set(d) <= set(dashboard.SNAPSHOT_KEYS)

    plugin = dashboard.ProgressPlugin()
    plugin.log_event("another-topic", {"experiment": "x"})
    assert plugin.view() == {}
    exp = dashboard._Experiment()
    exp.add(100.0, {"invocations": 10, "invocations_by_model": {"A": 6, "B": 4}})
    exp.add(102.0, {"invocations": 30, "invocations_by_model": {"A": 16, "B": 14}})
    assert exp.rates() == {"A": 5.0, "B": 5.0, "all": 10.0}
    page = dashboard.render_page({"e<1>": {**d, "name": "<b>n</b>", "invocations_per_second": exp.rates(), "updated": 0}})
    assert "e&lt;1&gt;" in page and "&lt;b&gt;n&lt;/b&gt;" in page and "<b>n</b>" not in page


@pytest.mark.parametrize("host", ["", "  ", "127.0.0.1\n"])
def test_an_empty_host_is_refused_before_any_cluster_starts(host):
    """`--host ""` (an unset shell variable) would make Dask listen on every interface (issue 8 item 8)."""
    from panicflow.errors import UserError
    from panicflow.scheduler.cluster import connect

    with pytest.raises(UserError, match="--host"):
        with connect(host=host, workers=1):
            pass


def test_a_script_without_the_main_guard_gets_one_line_saying_to_add_it(tmp_path):
    """Worker processes are spawned and re-run the user's script; a top-level `run_experiment`
    there used to start a cluster inside each worker and end in ~240 lines of Nanny traces."""
    script = tmp_path / "experiment.py"
    script.write_text(
        "import panicflow\n"
        f"panicflow.run_experiment({CONFIG!r}, store='./store', workers=1, dashboard_address=':0')\n"
    )
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("panicflow.errors.UserError: the cluster's worker processes did not start")
    assert 'if __name__ == "__main__":' in last and str(script) in last
    # the worker said it too, in one line, instead of starting a cluster of its own
    assert any(line.startswith("panicflow: put the call under") for line in out.stderr.splitlines())
    assert not (tmp_path / "store").exists()  # nothing was written
