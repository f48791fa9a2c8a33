"""When and where every embedding and diagram task ran, and what each worker computed with
(issue 8 item 11): the task times stored beside their markers, the workers' versions in each
session's provenance record, and a warning where a worker's versions differ from the coordinator's."""

from __future__ import annotations

import json
import logging
import platform
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import zarr

import panicflow
from panicflow.api import doctor
from panicflow.errors import RunsFailed
from panicflow.scheduler import coordinator
from panicflow.scheduler.versions import PROVENANCE_PACKAGES, mismatch_lines
from panicflow.store import Store

MODELS = ["DummyText", "DummyVision"]
CONFIG = {
    # PoisonT2I fails the "poison" prompt's run at once: its diagrams are recorded without a task
    "networks": [["DummyT2I", "DummyI2T"], ["PoisonT2I", "DummyI2T"]],
    "seeds": [3],
    "prompts": ["a cat", "a poison dog"],
    "embedding_models": MODELS,
    "max_length": 6,
    "persistence": {"maxdim": 0},
    "retry": {"max_attempts": 1, "backoff_s": 0},
}
SMALL = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": [3, 4], "prompts": ["a cat"],
         "embedding_models": ["DummyText"], "max_length": 4, "persistence": {"maxdim": 0}}
TASK_ARRAYS = ("started_at", "ended_at", "worker")
NO_TIME = np.iinfo(np.int64).min


def _run(cfg: dict, store: str, client) -> str:
    try:
        return panicflow.run_experiment(cfg, store=store, client=client)
    except RunsFailed as exc:
        return exc.experiment_id


def _data(store: str, eid: str) -> Path:
    return Path(store) / "experiments" / eid / "data.zarr"


def _strs(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _window(store: str, eid: str) -> tuple[int, int]:
    """(start of the last coordinator session, its final state write), in µs."""
    exp = Store(store).experiment(eid)
    return exp.sessions()[-1]["started_us"], exp.read_state()["updated_us"]


@pytest.fixture(scope="module")
def finished(client, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("task-times") / "store")
    eid = _run(CONFIG, store, client)
    return store, eid, set(client.scheduler_info(n_workers=-1)["workers"])


def test_every_embedding_and_diagram_task_records_when_and_where_it_ran(finished):
    store, eid, workers = finished
    start, end = _window(store, eid)
    g = zarr.open_group(str(_data(store, eid)), mode="r")
    stop = _strs(g["stop_reason"][:])
    ended, failed = np.flatnonzero(stop == "length"), np.flatnonzero(stop == "failed")
    assert len(ended) == 3 and len(failed) == 1, stop
    last_step_end = g["ended_at"][:].max(axis=1)  # of each run's model calls
    for m in MODELS:
        e, d = g[f"embeddings/{m}"], g[f"diagrams/{m}"]
        for node, marker in ((e, "done"), (d, "status")):  # the marker's writer, so the marker's chunks
            assert all((node[n].chunks, node[n].shards) == (node[marker].chunks, node[marker].shards) for n in TASK_ARRAYS)
        done, status = e["done"][:], _strs(d["status"][:])
        assert done[ended].all() and (status[ended] == "ok").all()
        e_start, e_end, d_start, d_end = e["started_at"][:], e["ended_at"][:], d["started_at"][:], d["ended_at"][:]
        for run in ended:
            assert start <= e_start[run] <= e_end[run] <= end, (m, run)
            assert start <= d_start[run] <= d_end[run] <= end, (m, run)
            # in the order the coordinator submits them: the run ended, then its embedding, then its diagram
            assert last_step_end[run] <= e_start[run] and e_end[run] <= d_start[run], (m, run)
            assert str(e["worker"][run]) in workers and str(d["worker"][run]) in workers
        for run in failed:  # no embedding task, a diagram recorded by the coordinator alone
            assert not done[run] and status[run] == "run_failed"
            assert e_start[run] == e_end[run] == d_start[run] == d_end[run] == NO_TIME
            assert str(e["worker"][run]) == str(d["worker"][run]) == ""


def test_open_experiment_shows_the_task_times_as_datetimes(finished):
    store, eid, _ = finished
    tree = panicflow.open_experiment(eid, store=store)
    g = zarr.open_group(str(_data(store, eid)), mode="r")
    for node in ("embeddings/DummyText", "diagrams/DummyVision"):
        ds = tree[node].ds
        assert ds.started_at.dtype.kind == ds.ended_at.dtype.kind == "M" and ds.worker.dtype == object
        micros = g[f"{node}/started_at"][:]
        want = np.array([np.datetime64(int(v), "us") if v != NO_TIME else np.datetime64("NaT") for v in micros])
        np.testing.assert_array_equal(ds.started_at.values.astype("datetime64[us]"), want)
        assert list(ds.worker.values) == [str(w) for w in g[f"{node}/worker"][:]]
        # the run labels reach these variables like any other: a selection by prompt works
        cats = [str(p) == "a cat" for p in g["prompt"][:]]
        assert ds.where(ds.prompt == "a cat", drop=True).worker.values.tolist() == list(ds.worker.values[cats])


def test_the_report_page_gives_each_stage_its_task_durations(finished):
    from panicflow.visual.report import build_report

    store, eid, _ = finished
    page = build_report(eid, store, plots=False, viewer_runs=0)
    for stage in ("embeddings", "diagrams"):
        for m in MODELS:  # the three runs that ended; the failed run's diagram had no task
            assert f"<dt>{stage} {m}</dt><dd>3 tasks: median " in page, (stage, m)
    assert "2 worker(s))</dt>" in page  # the session, with the workers it used


def test_the_session_record_lists_every_worker_with_its_versions(finished):
    store, eid, workers = finished
    [session] = Store(store).experiment(eid).sessions()
    assert workers <= set(session["workers"])  # every worker of the cluster, by address
    for address in workers:
        info = session["workers"][address]
        versions = info["versions"]
        assert versions["python"] == platform.python_version() and isinstance(info["host"], str) and info["host"]
        for name in ("numpy", "giotto-ph", "zarr", "dask"):
            assert versions[name] == metadata.version(name), name
        assert set(versions) == {"python", *PROVENANCE_PACKAGES}
    assert session["versions"]["python"] == platform.python_version()


# ----------------------------------------------------------------------- versions that differ
def _pretend_version(package: str, version: str | None) -> None:
    """On a worker (``Client.run``): report ``version`` for ``package`` from now on; None: the truth again."""
    from panicflow.scheduler import versions

    real = getattr(versions, "_real_package_versions", versions.package_versions)
    versions._real_package_versions = real
    versions.package_versions = real if version is None else (lambda: {**real(), package: version})


def test_mismatch_lines_group_workers_and_name_each_package():
    mine = {"python": "3.11.7", "torch": "2.1.0", "diffusers": "0.30.0", "numpy": "2.0.0"}
    workers = {
        "tcp://a:1": {"host": "a", "versions": dict(mine)},
        "tcp://b:1": {"host": "b", "versions": {**mine, "torch": "2.0.1", "diffusers": None}},
        "tcp://c:1": {"host": "c", "versions": {**mine, "torch": "2.0.1", "diffusers": None}},
        "tcp://d:1": {"host": "d", "versions": {**mine, "numpy": "1.26.4"}},
        "tcp://e:1": {"error": "OSError: gone"},  # could not be asked: nothing to compare
    }
    lines = mismatch_lines(mine, workers)
    assert len(lines) == 2
    two = next(line for line in lines if "tcp://b:1" in line)
    assert "tcp://c:1" in two and "tcp://a:1" not in two and "tcp://d:1" not in two
    assert "torch 2.0.1 (coordinator: 2.1.0)" in two and "diffusers not installed (coordinator: 0.30.0)" in two
    one = next(line for line in lines if "tcp://d:1" in line)
    assert "numpy 1.26.4 (coordinator: 2.0.0)" in one and "torch" not in one
    assert mismatch_lines(mine, {"tcp://a:1": workers["tcp://a:1"]}) == []


def test_a_worker_with_another_torch_is_named_in_one_warning(client, tmp_path, caplog):
    odd, *others = sorted(client.scheduler_info(n_workers=-1)["workers"])
    client.run(_pretend_version, "torch", "0.0.1-odd", workers=[odd])
    try:
        with caplog.at_level(logging.WARNING, logger="panicflow.scheduler.coordinator"):
            eid = _run(SMALL, str(tmp_path / "store"), client)
    finally:
        client.run(_pretend_version, "torch", None, workers=[odd])
    mine = metadata.version("torch") if _installed("torch") else None
    lines = [r.getMessage() for r in caplog.records if "other versions than the coordinator" in r.getMessage()]
    assert len(lines) == 1, lines
    assert odd in lines[0] and f"torch 0.0.1-odd (coordinator: {mine or 'not installed'})" in lines[0]
    assert not any(w in lines[0] for w in others)
    recorded = Store(str(tmp_path / "store")).experiment(eid).sessions()[0]["workers"]
    assert recorded[odd]["versions"]["torch"] == "0.0.1-odd"
    assert all(recorded[w]["versions"]["torch"] == mine for w in others)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


class _LateJoin:
    """The real client, except that ``hidden`` is not in the cluster until the first task is
    submitted: a worker that joins an elastic cluster after the coordinator started."""

    def __init__(self, client, hidden: str) -> None:
        self._client, self.hidden, self.joined = client, hidden, False

    def __getattr__(self, name):
        return getattr(self._client, name)

    def scheduler_info(self, **kwargs):
        info = self._client.scheduler_info(**kwargs)
        if not self.joined:
            info = {**info, "workers": {a: w for a, w in info["workers"].items() if a != self.hidden}}
        return info

    def submit(self, *args, **kwargs):
        self.joined = True
        return self._client.submit(*args, **kwargs)


def test_a_worker_that_joins_later_is_added_to_the_record(client, tmp_path, monkeypatch):
    from panicflow.store.experiment import Experiment

    late = sorted(client.scheduler_info(n_workers=-1)["workers"])[-1]
    monkeypatch.setattr(coordinator, "CLUSTER_LOOK_S", 0.0)  # look at the cluster every round
    records: list[set[str]] = []
    original = Experiment.record_session
    monkeypatch.setattr(Experiment, "record_session",
                        lambda self, info: (records.append(set(info.get("workers", {}))), original(self, info))[1])
    eid = _run(SMALL, str(tmp_path / "store"), _LateJoin(client, late))
    assert late not in records[0] and records[0]  # the record written before any task
    assert late in records[-1]  # written again when it joined
    [session] = Store(str(tmp_path / "store")).experiment(eid).sessions()
    assert late in session["workers"] and session["workers"][late]["versions"]["numpy"] == metadata.version("numpy")


# ------------------------------------------------------------------ experiments from before them
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_an_experiment_without_task_times_opens_passes_doctor_and_gets_them_on_resume(client, tmp_path):
    store = str(tmp_path / "store")
    eid = _run(SMALL, store, client)
    data = _data(store, eid)
    for stage in ("embeddings", "diagrams"):
        for name in TASK_ARRAYS:
            shutil.rmtree(data / stage / "DummyText" / name)
    if json.loads((data / "zarr.json").read_text()).get("consolidated_metadata"):
        zarr.consolidate_metadata(str(data), zarr_format=3)  # of the hierarchy as it is now, without them

    tree = panicflow.open_experiment(eid, store=store)
    assert "started_at" not in tree["embeddings/DummyText"].ds and "worker" not in tree["diagrams/DummyText"].ds
    report = doctor(eid, store=store)
    assert report.clean, [p.detail for e in report.experiments for p in e.problems]
    assert any("no task times" in note for e in report.experiments for note in e.notes)

    # run 1's embedding and diagram are done again by a resume (their markers cleared, marker first)
    g = zarr.open_group(str(data), mode="r+")
    g["diagrams/DummyText/status"][1] = ""
    g["embeddings/DummyText/done"][1] = False
    panicflow.resume_experiment(eid, store=store, client=client)
    start, end = _window(store, eid)
    g = zarr.open_group(str(data), mode="r")
    workers = set(client.scheduler_info(n_workers=-1)["workers"])
    for stage, marker in (("embeddings", "done"), ("diagrams", "status")):
        node = g[f"{stage}/DummyText"]
        assert all(node[n].chunks == node[marker].chunks for n in TASK_ARRAYS)
        assert node["started_at"][0] == node["ended_at"][0] == NO_TIME and str(node["worker"][0]) == ""
        assert start <= node["started_at"][1] <= node["ended_at"][1] <= end and str(node["worker"][1]) in workers
    assert "started_at" in panicflow.open_experiment(eid, store=store)["diagrams/DummyText"].ds
    after = doctor(eid, store=store)
    assert after.clean and not any("no task times" in note for e in after.experiments for note in e.notes)
