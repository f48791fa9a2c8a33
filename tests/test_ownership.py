"""One owner per experiment (panicflow/store/lease.py): racing takers get exactly one winner, on a
local folder and on S3; a second resume is refused while the first is still starting its cluster;
a coordinator paused past the lease's TTL is fenced when it wakes and writes nothing more; and
`doctor` finds a step whose output does not follow from its input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import panicflow
from panicflow.api import doctor as run_doctor
from cluster_util import DaskCluster, child_env, journaled_steps, stop_process
from panicflow.config import validate_config
from panicflow.store import Store
from panicflow.store.experiment import Experiment, ExperimentWriter
from panicflow.store.journal import StepRecord
from panicflow.store.lease import ExperimentBusy, Lease, LeaseLost

CONFIG = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [7, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 12,
}

# A racer takes part in ROUNDS races: round r starts when GO.r exists. It says it is ready (imported, its
# store open) by creating GO.ready-PID, so that the test starts a race once every racer polls for it.
RACER = """
import os, sys, time
from panicflow.store import Store
from panicflow.store.lease import ExperimentBusy, Lease
store, eid, go, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
exp = Store(store).experiment(eid)
open(f"{go}.ready-{os.getpid()}", "w").close()
for r in range(rounds):
    while not os.path.exists(f"{go}.{r}"):
        time.sleep(0.001)
    try:
        Lease.acquire(exp.root, exp.prefix, eid, renew=False)
        print("won", flush=True)
    except ExperimentBusy:
        print("busy", flush=True)
while not os.path.exists(go + ".done"):  # alive until every racer has tried: a winner that exited would
    time.sleep(0.01)                     # leave a dead owner, whom a racer started late may rightly take over
"""


def _created(store: str) -> Experiment:
    st = Store(store, create=True)
    st.ensure_created()
    return Experiment.create(st.root, st.new_experiment_id(), validate_config(CONFIG))


def _race(store: str, eid: str, tmp_path: Path, n: int, env: dict[str, str] | None = None,
          between=lambda r: None, rounds: int = 1) -> list[list[str]]:
    """``n`` racer processes race ``rounds`` times for ``eid``; ``between(r)`` runs after round r. Their
    answers, by round."""
    go = tmp_path / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, store, eid, str(go), str(rounds)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}) for _ in range(n)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob(f"{go.name}.ready-*"))) < n:  # every racer imported and polling
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].communicate()[1]
            assert time.monotonic() < deadline, "the racers did not start"
            time.sleep(0.05)
        outs = []
        for r in range(rounds):
            Path(f"{go}.{r}").touch()
            outs.append([p.stdout.readline().strip() for p in procs])  # each has tried, and lives on
            between(r)
        Path(f"{go}.done").touch()
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def test_racing_takers_have_one_winner_on_a_local_folder(tmp_path):
    store = str(tmp_path / "store")
    exp = _created(store)

    def release(r):  # as the winner's release() does
        top = max(int(n.split(".")[0]) for n in os.listdir(Path(store) / exp.prefix / "lease") if n.endswith(".json"))
        assert top == r + 1
        Lease(exp.root, f"{exp.prefix}/lease", top, "", "").beat(released=True)

    # the same 6 processes race twice: the second round races for the epoch after the first winner released it
    for outs in _race(store, exp.id, tmp_path, 6, between=release, rounds=2):
        assert sorted(outs) == ["busy"] * 5 + ["won"], outs


def test_racing_takers_have_one_winner_on_s3(s3_env, tmp_path):
    store = f"s3://{BUCKET}/ownership/{tmp_path.name}"
    exp = _created(store)
    [outs] = _race(store, exp.id, tmp_path, 4, env=s3_env)
    assert sorted(outs) == ["busy"] * 3 + ["won"], outs


def test_a_paused_owner_is_fenced_before_it_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("PANICFLOW_LEASE_TTL_S", "1")
    store = str(tmp_path / "store")
    exp = _created(store)
    first = Experiment(exp.root, exp.id)
    first.lease = Lease.acquire(first.root, first.prefix, first.id, renew=False)  # paused: never renews
    second = Experiment(exp.root, exp.id)
    with pytest.raises(ExperimentBusy, match="in use by another coordinator"):
        second.take()
    time.sleep(1.3)
    assert first.effective_state() == "interrupted"  # its beat went stale
    with second.take():
        journal_dir = Path(store) / exp.prefix / "journal"
        before = sorted(os.listdir(journal_dir)) if journal_dir.exists() else []
        rec = StepRecord(0, 0, "DummyT2I", "image", "0" * 64, None, 7, 1, 2)
        with pytest.raises(LeaseLost, match="took over"):
            first.journal.append([rec])
        with pytest.raises(LeaseLost):
            ExperimentWriter(first).write_steps(0, [rec])
        with pytest.raises(LeaseLost):
            first.write_state("running")
        after = sorted(os.listdir(journal_dir)) if journal_dir.exists() else []
        assert after == before  # nothing written by the fenced owner
        second.journal.append([rec])  # the new owner writes
        assert len(os.listdir(journal_dir)) == len(before) + 1


def test_resume_and_doctor_fix_are_refused_while_another_process_owns_it(tmp_path):
    store = str(tmp_path / "store")
    exp = _created(store)
    with exp.take():  # as a resume does before its cluster starts
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "panicflow", "experiment", "resume", exp.id, "--store", store],
                           capture_output=True, text=True, env=child_env(), timeout=120)
        assert r.returncode == 2, r.stderr
        assert "in use by another coordinator" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert time.monotonic() - t0 < 60  # refused before any cluster starts
        rep = run_doctor(exp.id, store=store, fix=True)
        assert not any(p.fixed for e in rep.experiments for p in e.problems)
        assert rep.experiments[0].state == "running"


def _start(store: str, tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "panicflow", "experiment", *args, "--store", store, "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            cwd=tmp_path)


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_coordinator_paused_past_its_lease_stops_when_it_wakes(tmp_path, monkeypatch):
    """SIGSTOP a running coordinator past the TTL, resume beside it, SIGCONT it: it must stop without
    writing, the resume finishes, and every step of the result follows from its predecessor."""
    # 3 runs of 30 steps, two of them with drawn seeds; SleepT2I's 0.2 s a call (sleep, not CPU) keeps the
    # first coordinator mid-run well past the 20 steps after which it is paused
    config = {"networks": [["SleepT2I", "DummyI2T"]], "seeds": [-1, -1, 3], "prompts": ["a cat"],
              "embedding_models": ["DummyText"], "max_length": 30}
    store = str(tmp_path / "store")
    env = child_env(PANICFLOW_LEASE_TTL_S="3", PANICFLOW_TEST_SLEEP_S="0.2")
    monkeypatch.setenv("PANICFLOW_LEASE_TTL_S", "3")  # this process judges the lease with the same TTL
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = _start(store, tmp_path, env, "run", str(path))
    second = None
    try:
        _wait(lambda: journaled_steps(store) >= 20 or first.poll() is not None, 240, "the first coordinator's steps")
        assert first.poll() is None, first.communicate()[1][-3000:]
        eid = os.listdir(Path(store) / "experiments")[0]
        journal = Path(store) / "experiments" / eid / "journal"
        os.kill(first.pid, signal.SIGSTOP)  # the coordinator only: its worker processes go on
        ours = set(os.listdir(journal))
        sessions = {n.split("-")[0] for n in ours}
        assert len(sessions) == 1
        exp = Store(store).experiment(eid)
        _wait(lambda: exp.effective_state() == "interrupted", 120, "the paused coordinator's lease to lapse (TTL 3 s)")
        second = _start(store, tmp_path, env, "resume", eid)
        _wait(lambda: any(n.split("-")[0] not in sessions for n in os.listdir(journal)) or second.poll() is not None,
              240, "the resume's first steps")
        os.kill(first.pid, signal.SIGCONT)
        _, err1 = first.communicate(timeout=120)
        assert first.returncode == 1, err1[-3000:]
        assert "took over" in err1, err1[-3000:]
        later = {n for n in os.listdir(journal) if n.split("-")[0] in sessions} if journal.exists() else set()
        assert later <= ours  # the fenced coordinator wrote no journal file after it woke
        _, err2 = second.communicate(timeout=600)
        assert second.returncode == 0, err2[-3000:]
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
        stop_process(first)
        stop_process(second)
    status = panicflow.experiment_status(eid, store=store)
    assert status.state == "complete" and status.runs_complete == 3
    monkeypatch.setenv("PANICFLOW_TEST_SLEEP_S", "0")  # doctor replays SleepT2I's steps here, in this process
    rep = run_doctor(eid, store=store)
    assert rep.exit_code == 0, [p.detail for e in rep.experiments for p in e.problems]


@pytest.fixture(scope="module")
def dask_cluster():
    """``dask scheduler`` and one ``dask worker`` process, as users start them, for the module."""
    with DaskCluster(workers=1, nthreads=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def built(dask_cluster, tmp_path_factory):
    """A complete experiment (one coordinator session), run once on ``dask_cluster``: (store, id).
    Tests take a copy of the store (``_copy``), as each changes it."""
    store = str(tmp_path_factory.mktemp("built") / "store")
    with dask_cluster.client() as client:
        eid = panicflow.run_experiment({**CONFIG, "seeds": [7, 11], "max_length": 30}, store=store, client=client)
    return store, eid


def _copy(built, tmp_path: Path) -> tuple[str, str]:
    store, eid = built
    shutil.copytree(store, tmp_path / "store")
    return str(tmp_path / "store"), eid


def test_a_worker_of_a_real_cluster_writes_nothing_for_a_coordinator_that_lost_its_lease(built, dask_cluster, tmp_path):
    """An embedding task submitted under lease epoch E runs on a `dask worker` process after another
    process took epoch E+1: it must write no vector. The same task under E+1 writes them."""
    from panicflow.scheduler.tasks import embed_run

    store, eid = _copy(built, tmp_path)
    with dask_cluster.client() as client:
        exp = Store(store).experiment(eid)
        vector = exp.group()["embeddings/DummyText/vector"]
        run, length = 0, int(exp.group()["length"][0])
        written = vector[run]
        assert np.isfinite(written).any()
        vector[run] = np.nan  # as if the task had not run yet
        old = Lease.acquire(exp.root, exp.prefix, eid, renew=False)
        old.release()
        new = Lease.acquire(exp.root, exp.prefix, eid, renew=False)  # the successor: epoch E+1
        try:
            assert new.epoch == old.epoch + 1
            fenced = client.submit(embed_run, store, eid, run, "DummyText", length, 4, old.epoch, pure=False)
            with pytest.raises(LeaseLost, match="lost the experiment"):
                fenced.result(timeout=120)
            assert np.isnan(vector[run]).all()  # nothing written by the fenced task
            owned = client.submit(embed_run, store, eid, run, "DummyText", length, 4, new.epoch, pure=False)
            owned.result(timeout=120)
            np.testing.assert_array_equal(vector[run], written)
        finally:
            new.release()


def test_doctor_finds_a_step_that_does_not_follow_from_its_input(built, tmp_path):
    store, eid = _copy(built, tmp_path)
    assert run_doctor(eid, store=store).exit_code == 0
    tree = panicflow.open_experiment(eid, store=store)
    lengths = tree["/"].ds.length.values
    run = int(np.argmax(lengths))
    assert lengths[run] >= 4
    # swap two image outputs of one run, as a stitched or edited chain would look: every other check passes
    g = Experiment(Store(store).root, eid).group()
    h = g["output_hash"][run, :4]
    g["output_hash"][run, 0], g["output_hash"][run, 2] = h[2], h[0]
    rep = run_doctor(eid, store=store)
    found = [p for e in rep.experiments for p in e.problems if p.kind == "step_unfollowed"]
    assert len(found) == 1 and found[0].run == run and found[0].step == 0, [p.detail for e in rep.experiments for p in e.problems]
    assert rep.exit_code != 0


from s3_util import BUCKET, s3_env  # noqa: E402,F401 (a fixture)


def test_each_coordinator_session_records_its_provenance(built, dask_cluster, tmp_path):
    """Issue 8 item 11 (in part): versions, embedders and effective diagram settings per session."""
    from importlib import metadata

    store, eid = _copy(built, tmp_path)
    exp = Store(store).experiment(eid)
    [session] = exp.sessions()
    assert session["versions"]["numpy"] == metadata.version("numpy")
    assert session["versions"]["giotto-ph"] == metadata.version("giotto-ph")
    assert session["embedders"]["DummyText"]["dim"] == 768 and session["embedders"]["DummyText"]["input"] == "text"
    assert session["persistence"]["maxdim"] == 2 and session["persistence"]["collapse_edges_effective"] is False
    with dask_cluster.client() as client:
        panicflow.resume_experiment(eid, store=store, client=client)  # a second session: a second record
    assert len(exp.sessions()) == 2
