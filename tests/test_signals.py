"""Stopping on request (issue 20 item 1): SIGTERM at a walltime, SIGHUP, a second signal, cancel().

The signal goes to the command's whole process group, as `timeout -s TERM`, SLURM and PBS, and a
closed terminal send it. What must hold: results in flight land in the journal within the grace,
the experiment is marked interrupted with the signal's name, the id reaches stdout (JSON with
--json), the exit status is 128 + the signal, and the printed resume command names the cluster it
ran on, so that running it as printed continues there.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import panicflow
from cli_util import Running, cli, write_config
from cluster_util import DaskCluster, child_env
from panicflow.errors import Interrupted
from panicflow.scheduler.stopping import StopRequest
from panicflow.store import Store
from panicflow.store.journal import StepRecord

SLOW = {
    "networks": [["SleepT2I", "DummyI2T"]],
    "seeds": [1, 2],
    "prompts": ["a cat", "a dog"],
    "embedding_models": ["DummyText"],
    "max_length": 60,
    "batch_size": {"SleepT2I": 1, "DummyI2T": 1},
}
LOCAL = ["--workers", "1", "--dashboard-address", ":0"]
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="watches child processes through /proc")


def steps(store: Path) -> list[StepRecord]:
    folder = store / "experiments"
    if not folder.is_dir():
        return []
    try:
        st = Store(str(store))
        return [r for eid in os.listdir(folder) for r in st.experiment(eid).journal.read() if isinstance(r, StepRecord)]
    except Exception:  # caught mid-creation
        return []


def state(store: Path, eid: str) -> dict:
    return json.loads((store / "experiments" / eid / "state.json").read_text())


def no_noise(stderr: str) -> None:
    for noise in ("Traceback", "KeyboardInterrupt", "Exception ignored", "ERROR", "UserWarning"):
        assert noise not in stderr, stderr


# ------------------------------------------------------------------ the request itself
def test_stop_request_grace_and_second_request():
    stop = StopRequest(grace_s=7)
    assert not stop.requested and stop.deadline() == float("inf")
    assert stop.request("SIGTERM") is True
    assert stop.requested and not stop.hard and stop.reason == "SIGTERM"
    assert stop.deadline() == pytest.approx(stop.at + 7)
    assert stop.request("SIGTERM") is False  # a second one: at once
    assert stop.hard and stop.deadline() == stop.at and stop.reason == "SIGTERM"
    assert StopRequest(grace_s=0).request("cancel") and StopRequest(grace_s=0).grace_s == 0
    zero = StopRequest(grace_s=0)
    zero.request("SIGINT")
    assert zero.hard
    for bad in (-1, float("nan"), True, "5"):
        with pytest.raises(ValueError):
            StopRequest(grace_s=bad)


def test_the_same_signal_twice_within_a_second_is_one_stop(tmp_path):
    """`timeout` signals its child and then its whole group, a batch system signals every process of
    the job and a wrapper forwards it too: one stop, delivered twice, keeps its grace."""
    import os

    from panicflow.scheduler.stopping import signals_handled

    stop = StopRequest(grace_s=7)
    with signals_handled(stop, ("SIGTERM",)):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested and not stop.hard and stop.reason == "SIGTERM"
        stop.at -= 1.5  # later: a second SIGTERM stops at once
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.hard
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back


def test_a_stop_from_another_thread_lets_results_land_then_marks_it_interrupted(client, tmp_path, model_sleep):
    model_sleep(0.2)  # calls in flight when the stop comes
    store = tmp_path / "store"
    stop = StopRequest(grace_s=30)
    asked = {}

    def ask() -> None:
        deadline = time.monotonic() + 120
        while len(steps(store)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        asked["us"] = time.time_ns() // 1000
        stop.request("cancel")

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    with pytest.raises(Interrupted) as info:
        panicflow.run_experiment(SLOW, store=str(store), client=client, stop=stop)
    thread.join(10)
    eid = info.value.experiment_id
    assert info.value.reason == "cancel"
    assert state(store, eid)["state"] == "interrupted" and state(store, eid)["reason"] == "cancel"
    assert panicflow.experiment_status(eid, store=str(store)).state == "interrupted"
    recorded = steps(store)
    # the calls in flight when it was asked (0.5 s each, 4 at a time on 2 workers) landed in the journal
    assert max(r.ended_us for r in recorded) > asked["us"], "no result in flight landed after the request"
    assert len(recorded) < 4 * SLOW["max_length"], "it went on submitting after the request"
    # and nothing was submitted after it: only calls already in flight (at most 2 per worker thread,
    # queued ones starting later) began after the request
    assert sum(r.started_us > asked["us"] for r in recorded) <= 4, sorted(r.started_us - asked["us"] for r in recorded)


# ------------------------------------------------------------------ the CLI, as a batch system stops it
@needs_proc
def test_sigterm_mid_run_lands_results_prints_the_id_and_exits_143(tmp_path):
    store = tmp_path / "store"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SLOW), "--store", str(store), *LOCAL], tmp_path,
                  env={"PANICFLOW_TEST_SLEEP_S": "1"})
    run.wait_for("journaled steps", lambda: len(steps(store)) >= 3)
    sent_us = time.time_ns() // 1000
    run.signal(signal.SIGTERM)
    code, out, err = run.finish()
    [eid] = os.listdir(store / "experiments")
    assert code == 143, err
    assert out == f"{eid}\n"  # a script learns the id, as when it completes
    no_noise(err)
    assert err.strip().splitlines()[-1] == (
        f"interrupted (SIGTERM); panicflow experiment resume {eid} --store {store} --workers 1 finishes it")
    assert "SIGTERM: stopping; results in flight get 5 s to land" in err
    assert state(store, eid)["state"] == "interrupted" and state(store, eid)["reason"] == "SIGTERM"
    assert max(r.ended_us for r in steps(store)) > sent_us, "the call in flight did not land in the journal"


@needs_proc
def test_a_second_sighup_stops_at_once_whatever_the_grace(tmp_path):
    store = tmp_path / "store"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SLOW), "--store", str(store), "--json",
                   "--grace", "120", *LOCAL], tmp_path, env={"PANICFLOW_TEST_SLEEP_S": "20"})
    run.wait_for("the first model call", lambda: (store / "experiments").is_dir() and any(
        p.read_text().find('"running"') >= 0 for p in store.glob("experiments/*/state.json")))
    time.sleep(1)  # the first calls (20 s each) are in flight
    run.signal(signal.SIGHUP)
    time.sleep(1.5)  # the same signal within 1 s is one stop delivered twice
    began = time.monotonic()
    run.signal(signal.SIGHUP)
    code, out, err = run.finish()
    assert time.monotonic() - began < 15, "the second SIGHUP waited for the grace"
    [eid] = os.listdir(store / "experiments")
    assert code == 129, err
    no_noise(err)
    line = f"interrupted (SIGHUP); panicflow experiment resume {eid} --store {store} --workers 1 finishes it"
    assert json.loads(out) == {"id": eid, "state": "interrupted", "error": line}
    assert "SIGHUP: stopping now" in err
    assert state(store, eid)["reason"] == "SIGHUP"


@needs_proc
def test_under_nohup_sighup_is_ignored_and_sigterm_still_stops_it(tmp_path):
    """`nohup panicflow experiment run ...`: SIGHUP is ignored as nohup asked (a closed terminal does not stop
    it), SIGTERM still does. (A suite started under nohup made the SIGHUP test above wait for ever.)"""
    store = tmp_path / "store"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SLOW), "--store", str(store), "--json",
                   "--grace", "1", *LOCAL], tmp_path, env={"PANICFLOW_TEST_SLEEP_S": "2"}, sighup="SIG_IGN")
    run.wait_for("the first model call", lambda: (store / "experiments").is_dir() and any(
        p.read_text().find('"running"') >= 0 for p in store.glob("experiments/*/state.json")))
    run.signal(signal.SIGHUP)
    time.sleep(3)
    assert run.proc.poll() is None, "SIGHUP stopped a run started under nohup"
    run.signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, err
    assert json.loads(out)["state"] == "interrupted" and "SIGHUP" not in err
    [eid] = os.listdir(store / "experiments")
    assert state(store, eid)["reason"] == "SIGTERM"


@needs_proc
def test_sigterm_while_the_cluster_starts_exits_143_and_writes_nothing(tmp_path):
    store = tmp_path / "store"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SLOW), "--store", str(store), *LOCAL], tmp_path)
    run.wait_for("a child process (the cluster starting)", run.children)
    run.signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, err
    assert err.strip().splitlines() == ["interrupted (SIGTERM) before the experiment was created; nothing to resume"]
    assert out == "" and not store.exists()


def test_the_resume_command_printed_after_sigterm_joins_the_same_cluster(tmp_path):
    """On `dask scheduler`/`dask worker` processes started by hand: only the coordinator gets the
    SIGTERM (its own job); the hint names --scheduler-file, and run as printed (from another
    folder) it continues on those workers instead of starting a local cluster."""
    store = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = child_env(PANICFLOW_TEST_SLEEP_S="0.5")
    with DaskCluster(workers=1, nthreads=2, env=env) as cluster, cluster.client() as client:
        worker = cluster.worker_address("w0", client)
        # shorter runs than SLOW's: the resume finishes the experiment (64 steps, half of them 0.5 s calls)
        cfg = write_config(tmp_path / "c.json", {**SLOW, "max_length": 16})
        run = Running(["experiment", "run", cfg, "--store", str(store), "--scheduler-file", cluster.scheduler_file],
                      tmp_path, env=env)
        run.wait_for("journaled steps", lambda: len(steps(store)) >= 4)
        run.signal(signal.SIGTERM)
        code, out, err = run.finish()
        assert code == 143, err
        eid = out.strip()
        last = err.strip().splitlines()[-1]
        prefix, command, suffix = "interrupted (SIGTERM); ", f"panicflow experiment resume {eid}", " finishes it"
        assert last.startswith(prefix + command) and last.endswith(suffix), last
        args = shlex.split(last[len(prefix):-len(suffix)])
        assert args[args.index("--scheduler-file") + 1] == cluster.scheduler_file
        assert "--workers" not in args
        done = subprocess.run([sys.executable, "-m", *args], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300, env={**env, "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        assert cluster.worker_names(client) == ["w0"], "the workers started by hand did not survive"
        sessions = Store(str(store)).experiment(eid).sessions()
        assert len(sessions) == 2 and all(set(s["workers"]) == {worker} for s in sessions), sessions
    assert panicflow.experiment_status(eid, store=str(store)).state == "complete"


def test_the_api_stops_gracefully_on_sigterm_and_raises_interrupted(tmp_path):
    """A script that calls run_experiment under a batch system: Interrupted, with the id."""
    store = tmp_path / "store"
    script = tmp_path / "job.py"
    script.write_text(f"""
import json, panicflow
from panicflow.errors import Interrupted
if __name__ == "__main__":
    try:
        panicflow.run_experiment({SLOW!r}, store={str(store)!r}, workers=1, dashboard_address=":0")
    except Interrupted as exc:
        print(json.dumps({{"id": exc.experiment_id, "reason": exc.reason}}))
""")
    run = Running([], tmp_path, env={"PANICFLOW_TEST_SLEEP_S": "0.5"}, command=[sys.executable, str(script)])
    run.wait_for("journaled steps", lambda: len(steps(store)) >= 3)
    run.signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 0, err
    got = json.loads(out)
    assert got["reason"] == "SIGTERM"
    assert state(store, got["id"])["state"] == "interrupted"
    assert "Traceback" not in err, err


def test_id_file_holds_the_id_before_the_experiment_runs(tmp_path):
    """A job script killed before the command prints anything still knows what to resume."""
    store = tmp_path / "store"
    id_file = tmp_path / "experiment.id"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SLOW), "--store", str(store),
                   "--id-file", str(id_file), *LOCAL], tmp_path, env={"PANICFLOW_TEST_SLEEP_S": "1"})
    run.wait_for("the id file", id_file.exists)
    run.signal(signal.SIGKILL)  # no handler, no output: only what was written before
    run.finish()
    [eid] = os.listdir(store / "experiments")
    assert id_file.read_text() == f"{eid}\n"
    bad = cli("experiment", "run", str(tmp_path / "c.json"), "--store", str(store), "--id-file", str(tmp_path / "no" / "id"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --id-file: folder"), bad.stderr
    assert os.listdir(store / "experiments") == [eid]  # the bad option wrote nothing


def test_a_signal_before_the_experiment_starts_exits_with_its_own_code(monkeypatch, capsys):
    """A SIGTERM while a command is still parsing its options (a walltime of a job that had just
    started): typer turns the interrupt into exit 130, which said Ctrl-C; it must say SIGTERM (143)."""
    from panicflow import cli

    def walltime(store):
        cli._on_signal(signal.SIGTERM, None)

    monkeypatch.setattr(cli, "_store", walltime)
    assert cli.main(["experiment", "list"]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted (SIGTERM)"
