"""Job scripts (issue 20 item 2): scripts/panicflow-job, scripts/panicflow-loop, scripts/slurm/panicflow.sbatch.

A stand-in for a batch system runs them. Walltimes are tests/walltime.py (GNU `timeout
--preserve-status`, which can also end on progress) around each job, in a loop, as a scheduler
would resubmit. SleepT2I stands in for a GPU model, so each walltime cuts the experiment mid-run.
The loop goes on until the fixed-seed experiment is complete. Then its results must be those of an
uninterrupted run of the same config in another store, bit for bit, except where and when things
ran. SLURM is faked: `sbatch` queues its arguments for the test's batch loop, `srun` runs its
command here, and `walltime.py --foreground --signal USR1` is `#SBATCH --signal=B:USR1@...` (the
batch shell alone gets the signal).

A walltime ends once the round's coordinator has journaled a number of steps (of 90), not
after some seconds: start-up takes seconds on a quiet machine and tens of seconds on a loaded one,
and walltimes in seconds (scaled by an uninterrupted run's time) missed the runs under load (one
round cut after every step was done, the next finishing everything at once). Cut on progress,
every round but the last is cut mid-run, however loaded the machine.

Each round starts panicflow (and, under the sbatch stand-in, a scheduler and a worker): seconds of
CPU. So each test cuts as few times as its claims need, with margins in steps either side of each
cut (steps go on landing for a moment after a walltime, and until its signal has reached panicflow).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import panicflow
from cli_util import cli, write_config

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "scripts" / "panicflow-job"
LOOP = ROOT / "scripts" / "panicflow-loop"
SBATCH = ROOT / "scripts" / "slurm" / "panicflow.sbatch"
CONFIG = {
    "name": "job-scripts",
    "networks": [["SleepT2I", "DummyI2T"]],
    "seeds": [1, 2, 3],
    "prompts": ["a cat on a mat"],
    "embedding_models": ["DummyText"],
    "max_length": 30,
    "batch_size": {"SleepT2I": 1, "DummyI2T": 1},
    "persistence": {"maxdim": 1},
}
SLEEP_S = "0.15"  # per SleepT2I call: 45 calls, about 7 s of model time in all
# A walltime: this many steps journaled by the round (of 90). The loop: a run cut after 50 (40 left: mid-run),
# then a resume that finishes (40 or fewer left: it never reaches its walltime). The sbatch jobs: one cancelled
# after 32, a resume cut by USR1 after 32 more (26 left, less what landed after the two signals: mid-run), then
# one that finishes (26 or fewer left). A walltime at 30 of 90 made 4 to 5 rounds of each, all but one cut.
LOOP_STEPS = 50
SBATCH_STEPS = 32
WALLTIME = [sys.executable, str(Path(__file__).resolve().parent / "walltime.py")]
# When and where things ran, and which model call computed each output, differ between two runs.
# A run computed again after a cut goes in other batches. The science does not differ.
UNREPEATABLE = {"started_at", "ended_at", "worker", "batch_id", "batch_size", "batch_position"}
SCIENCE = {
    "/": {"output_hash", "text", "model", "kind", "invocation_seed", "parameters_hash", "length", "stop_reason",
          "loop_start", "loop_period", "error", "seed", "prompt", "network"},
    "/embeddings/DummyText": {"vector", "vector_sha256", "done"},
    "/diagrams/DummyText": {"birth", "death", "dimension", "entropy", "status", "n_points", "computed"},
}
pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or not os.path.isdir("/proc/self"),
    reason="needs bash and /proc",
)


def script_env(**extra: str) -> dict[str, str]:
    """The scripts find panicflow and dask on PATH, as in an activated environment."""
    env = {**os.environ, "PANICFLOW_TEST_MODELS": "1", "PANICFLOW_TEST_SLEEP_S": SLEEP_S, "COLUMNS": "200"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name in ("DASK_SCHEDULER_ADDRESS", "PANICFLOW_STORE", "PANICFLOW", "PANICFLOW_MAX_ROUNDS"):
        env.pop(name, None)
    env.update(extra)
    return env


def science(store: Path, eid: str) -> dict[str, np.ndarray]:
    """Every stored array of every node, but those of UNREPEATABLE, by node and name."""
    tree = panicflow.open_experiment(eid, store=str(store))
    out = {}
    for node in tree.subtree:
        ds = node.to_dataset().load()
        for name, var in ds.variables.items():
            if name not in UNREPEATABLE:
                out[f"{node.path}:{name}"] = var.values
    return out


def assert_same_science(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for node, names in SCIENCE.items():  # the comparison covers what matters
        assert names <= {k.split(":")[1] for k in want if k.split(":")[0] == node}, node
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def history(state: Path) -> list[dict[str, str]]:
    """STATE_DIR/history, one dict per round (round, action, id, exit, state, steps, signal)."""
    rows = []
    for line in (state / "history").read_text().splitlines():
        fields = line.split()
        row = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
        row["action"] = next(f for f in fields[1:] if "=" not in f)
        rows.append(row)
    return rows


def cut_mid_run(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rounds that a signal stopped after some steps of the experiment and before the last."""
    out = []
    for r in rows:
        done, most = r["steps"].split("/") if "/" in r["steps"] else ("?", "?")
        if r["state"] == "interrupted" and done.isdigit() and most.isdigit() and 0 < int(done) < int(most):
            out.append(r)
    return out


def ours(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (a folder of this test's): what a job left running."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.fixture
def reaper(tmp_path):
    """Kills, by pid, anything a failed test left running in its folder (a scheduler, a worker)."""
    yield
    for pid in ours(str(tmp_path)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's science. It is not slowed down: same outputs."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(folder / "config.json", CONFIG)
    done = cli("experiment", "run", config, "--store", str(folder / "store"), "--workers", "1",
               "--dashboard-address", ":0", env={"PANICFLOW_TEST_SLEEP_S": "0"})
    assert done.returncode == 0, done.stderr
    return science(folder / "store", done.stdout.split()[-1])


# ------------------------------------------------------------------ panicflow-job in a loop
def test_walltimes_cut_the_experiment_and_rounds_of_panicflow_job_finish_it_bit_for_bit(tmp_path, reference, reaper):
    want = reference
    config = write_config(tmp_path / "config.json", CONFIG)
    state, store = tmp_path / "state", tmp_path / "store"
    # round 1: 1 s, killed while panicflow starts (no experiment yet); then LOOP_STEPS steps each round
    walltime = " ".join(WALLTIME)
    step = (f'if [ "$PANICFLOW_ROUND" = 1 ]; then cut="--after 1"; else cut="--steps {LOOP_STEPS} --store {store}"; fi; '
            f"exec {walltime} --signal TERM $cut -- {JOB} {config} {state} --store {store} "
            "--workers 1 --dashboard-address :0 --grace 3")
    t0 = time.monotonic()
    done = subprocess.run([str(LOOP), "-n", "12", "-p", "0", "bash", "-c", step], capture_output=True, text=True,
                          env=script_env(), cwd=tmp_path, timeout=1200, start_new_session=True)
    took = time.monotonic() - t0
    rows = history(state)
    summary = f"{len(rows)} rounds in {took:.0f} s:\n" + (state / "history").read_text()
    assert done.returncode == 0, summary + done.stderr[-4000:]
    print(summary)

    # round 1 was killed before the experiment existed: it left no id, and round 2 ran it
    assert rows[0]["action"] == "run" and rows[0]["id"] == "-" and rows[0]["exit"] == "143", summary
    assert rows[1]["action"] == "run" and rows[1]["id"] != "-", summary
    eid = rows[1]["id"]
    # walltimes cut it mid-run, and every round after resumed the same experiment
    assert len(rows) > 2 and cut_mid_run(rows), summary
    assert all(r["action"] == "resume" and r["id"] == eid for r in rows[2:]), summary
    assert all(r["exit"] == "143" and r["signal"] == "TERM" for r in rows[:-1]), summary
    assert rows[-1]["state"] == "complete" and rows[-1]["exit"] == "0", summary
    assert f"done after {len(rows)} round(s)" in done.stderr
    assert [e["id"] for e in panicflow.list_experiments(str(store))] == [eid]  # never a second experiment
    assert (state / "id").read_text().strip() == eid
    # the walltime (as `timeout`) sends TERM to the script and to its group: panicflow got it once, with its grace
    assert "results in flight get 3 s to land" in done.stderr
    assert "stopping now" not in done.stderr, done.stderr[-4000:]
    assert not ours(str(store)), "the embedded cluster outlived its round"

    assert_same_science(science(store, eid), want)

    # a complete experiment: another round does nothing and says so
    again = subprocess.run([str(JOB), config, str(state), "--store", str(store)], capture_output=True, text=True,
                           env=script_env(), timeout=120)
    assert again.returncode == 0 and "is complete" in again.stderr
    assert len(history(state)) == len(rows)


# ------------------------------------------------------------------ SLURM, faked
FAKE_SBATCH = """#!/usr/bin/env bash
# stand-in for sbatch: queue the submission (its arguments) for the test's batch system
n=$(( $(ls "$FAKE_SLURM_QUEUE" | wc -l) + 1 ))
printf '%s\\0' "$@" > "$FAKE_SLURM_QUEUE/$(printf %04d "$n")"
echo "Submitted batch job $((1000 + n))"
"""
FAKE_SRUN = """#!/usr/bin/env bash
# stand-in for srun: record the arguments, drop the options, run the command here (one task)
printf '%s\\0' "$@" >> "$FAKE_SLURM_SRUN_LOG"; printf '\\n' >> "$FAKE_SLURM_SRUN_LOG"
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
exec "$@"
"""


def fake_slurm(tmp: Path) -> dict[str, str]:
    bin_dir, queue = tmp / "fakebin", tmp / "queue"
    bin_dir.mkdir()
    queue.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = script_env(
        FAKE_SLURM_QUEUE=str(queue), FAKE_SLURM_SRUN_LOG=str(tmp / "srun.log"), SLURM_JOB_NAME="panicflow",
        SLURM_SUBMIT_DIR=str(tmp), SLURM_CPUS_PER_TASK="2", PANICFLOW_JOB=str(JOB), PANICFLOW_GRACE="3",
        PANICFLOW_SCHEDULER_OPTIONS="--host 127.0.0.1 --port 0 --dashboard-address :0",
        PANICFLOW_WORKER_OPTIONS="--nthreads 2 --host 127.0.0.1 --dashboard-address :0",
    )
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    return env


def submissions(queue: Path) -> list[list[str]]:
    return [[a.decode() for a in f.read_bytes().split(b"\0")[:-1]] for f in sorted(queue.iterdir())]


def batch_job(args: list[str], job_id: int, store: Path, sig: str, foreground: bool, env: dict, cwd: Path,
              log: Path) -> subprocess.CompletedProcess:
    """One job: `bash SCRIPT ARGS` with SIG at the walltime (SBATCH_STEPS steps journaled in ``store``
    by this job); --foreground: to the batch shell alone."""
    command = [*WALLTIME, *(["--foreground"] if foreground else []), "--kill-after", "300", "--signal", sig,
               "--steps", str(SBATCH_STEPS), "--store", str(store), "--", "bash", *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**env, "SLURM_JOB_ID": str(job_id)},
                          cwd=cwd, timeout=900, start_new_session=True)
    log.write_text(done.stderr)
    return done


def test_the_sbatch_script_runs_a_dask_cluster_resubmits_itself_at_walltime_and_not_when_cancelled(
        tmp_path, reference, reaper):
    want = reference
    env = fake_slurm(tmp_path)
    queue = tmp_path / "queue"
    config = write_config(tmp_path / "config.json", CONFIG)
    state, store = tmp_path / "state", tmp_path / "store"
    user_args = [str(SBATCH), "config.json", "state", "--store", str(store)]  # relative, as users type them
    t0 = time.monotonic()

    # job 1001, cancelled mid-run (scancel: TERM to the batch shell): it stops, and does not resubmit itself
    first = batch_job(user_args, 1001, store, "TERM", False, env, tmp_path, tmp_path / "job-1001.err")
    assert first.returncode == 75, first.stderr[-4000:]
    assert "cancelled (TERM): not resubmitting" in first.stderr
    assert list(queue.iterdir()) == []
    assert not ours(str(state)), "the job left its scheduler or worker running"
    srun = (tmp_path / "srun.log").read_text().replace("\0", " ").split("\n")[0].split()
    assert srun[:3] == ["dask", "worker", "--scheduler-file"] and srun[3] == str(state / "scheduler-1001.json")
    assert srun[4:6] == ["--resources", "GPU=1"], srun

    # the user submits it again; from then on each job gets USR1 near its walltime and resubmits itself
    subprocess.run(["sbatch", *user_args], env=env, cwd=tmp_path, check=True, capture_output=True)
    jobs, rcs = [], []
    while len(jobs) < len(list(queue.iterdir())):
        assert len(jobs) < 8, "no end to the resubmissions"
        args = submissions(queue)[len(jobs)]
        options = [a for a in args[: next(i for i, a in enumerate(args) if not a.startswith("-"))]]
        script_args = args[len(options):]
        if jobs:  # resubmitted by the script: after this job ends, under the same name, with the same arguments
            assert options == ["--dependency=singleton", "--job-name=panicflow"], options
            assert script_args == [str(SBATCH), config, str(state), "--store", str(store)], script_args
        job_id = 1002 + len(jobs)
        done = batch_job(script_args, job_id, store, "USR1", True, env, tmp_path, tmp_path / f"job-{job_id}.err")
        jobs.append(job_id)
        rcs.append(done.returncode)
        assert done.returncode == 0, done.stderr[-4000:]
        assert not ours(str(state)), f"job {job_id} left its scheduler or worker running"
    took = time.monotonic() - t0
    rows = history(state)
    summary = f"{len(rows)} rounds in {took:.0f} s:\n" + (state / "history").read_text()
    print(summary)
    assert "the experiment is complete" in (tmp_path / f"job-{jobs[-1]}.err").read_text()
    assert len(jobs) > 1 and len(rows) == len(jobs) + 1, summary  # resubmitted at least once
    assert rows[0]["signal"] == "TERM" and rows[0]["exit"] == "143", summary
    assert all(r["signal"] == "USR1" and r["exit"] == "143" for r in rows[1:-1]), summary  # walltimes
    assert rows[-1]["state"] == "complete", summary
    assert cut_mid_run(rows), summary
    for job_id in jobs[:-1]:
        assert "not finished: resubmitted" in (tmp_path / f"job-{job_id}.err").read_text()
    # each signal reached panicflow once: with its grace where the coordinator was running, never "at once"
    texts = [first.stderr] + [(tmp_path / f"job-{job_id}.err").read_text() for job_id in jobs]
    assert any("results in flight get 3 s to land" in text for text in texts)
    assert not any("stopping now" in text for text in texts)
    eids = {r["id"] for r in rows} - {"-"}
    assert len(eids) == 1 and [e["id"] for e in panicflow.list_experiments(str(store))] == list(eids)

    assert_same_science(science(store, eids.pop()), want)


# ------------------------------------------------------------------ the exit statuses that stop a chain
def test_a_bad_config_is_a_user_error_and_an_unknown_id_too(tmp_path):
    bad = write_config(tmp_path / "bad.json", {**CONFIG, "networks": [["NoSuchModel"]]})
    done = subprocess.run([str(JOB), bad, str(tmp_path / "state"), "--store", str(tmp_path / "store"), "--workers", "1"],
                          capture_output=True, text=True, env=script_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "state" / "id").exists()
    (tmp_path / "state2").mkdir()
    (tmp_path / "state2" / "id").write_text("20990101-000000-abcdef\n")
    done = subprocess.run([str(JOB), bad, str(tmp_path / "state2"), "--store", str(tmp_path / "store")],
                          capture_output=True, text=True, env=script_env(), timeout=120)
    assert done.returncode == 2 and "cannot read experiment 20990101-000000-abcdef" in done.stderr, done.stderr


def test_rounds_stop_at_the_limit_and_the_loop_stops_at_its_own(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "history").write_text("x round=1 run id=- exit=143 state=- steps=- signal=TERM\n" * 3)
    done = subprocess.run([str(JOB), "config.json", str(state)], capture_output=True, text=True,
                          env=script_env(PANICFLOW_MAX_ROUNDS="3"), timeout=60)
    assert done.returncode == 4 and "PANICFLOW_MAX_ROUNDS=3" in done.stderr, done.stderr
    # the loop: a command that always asks for another round runs -n times, then the loop exits 75
    done = subprocess.run([str(LOOP), "-n", "3", "-p", "0", "bash", "-c", 'echo "$PANICFLOW_ROUND" >> rounds; exit 75'],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 75 and (tmp_path / "rounds").read_text().split() == ["1", "2", "3"], done.stderr
    # and any other status ends it at once
    done = subprocess.run([str(LOOP), "-n", "3", "-p", "0", "bash", "-c", 'echo "$PANICFLOW_ROUND" >> r2; exit 1'],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1 and (tmp_path / "r2").read_text().split() == ["1"]


def test_a_signal_to_the_loop_ends_the_round_and_no_other_starts(tmp_path):
    """A Ctrl-C on a workstation: the command gets it once, and the loop does not go on."""
    # the stand-in waits in the `wait` builtin, which a trapped signal interrupts at once. With `sleep 0.1` in the
    # foreground CI once saw the round never end; the likely cause: a SIGINT landing while bash forks the sleep is
    # taken by the fork, sleep exits 0, and bash's wait-and-cooperative-exit rule (the child "handled" the SIGINT)
    # skips the trap. Not reproduced in 21 runs here
    step = ('trap \'echo got INT >> seen; exit 75\' INT; echo "$PANICFLOW_ROUND" >> rounds; '
            'while :; do sleep 0.1 & wait $!; done')
    # started as a terminal's shell starts a job: SIGINT at its default and unblocked. In two full suites (never alone,
    # 21 times) the loop did not react to SIGINT in 30 s; a disposition inherited from an earlier test in the same
    # pytest process is one suspect: the launcher says on stderr what it inherited, and the test warns with it
    launch = ("import os, signal, sys; "
              "signal.getsignal(signal.SIGINT) == signal.SIG_IGN and print('launcher: SIGINT came ignored', file=sys.stderr); "
              "signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []) and print('launcher: SIGINT came blocked', file=sys.stderr); "
              "signal.signal(signal.SIGINT, signal.SIG_DFL); signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
              "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", launch, str(LOOP), "-n", "5", "-p", "0", "bash", "-c", step],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "rounds").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the loop's whole process group
    _, err = proc.communicate(timeout=30)
    if "launcher: SIGINT came" in err:
        import warnings

        warnings.warn(f"the pytest process passed on SIGINT: {[l for l in err.splitlines() if l.startswith('launcher:')]}")
    assert proc.returncode == 75, err
    assert (tmp_path / "rounds").read_text().split() == ["1"]
    assert (tmp_path / "seen").read_text().split("\n").count("got INT") == 1
    assert "stopped by INT after round 1" in err


def test_the_dask_jobqueue_recipe_builds_a_slurm_job_with_a_gpu_resource():
    """docs/clusters.md's SLURMCluster(...) call, as written there, makes GPU workers."""
    jobqueue = pytest.importorskip("dask_jobqueue")
    text = (ROOT / "docs" / "clusters.md").read_text()
    call = re.search(r"^cluster = (SLURMCluster\(.*?\n\))", text, re.S | re.M)
    assert call, "docs/clusters.md has no `cluster = SLURMCluster(...)` recipe"

    def local(**kwargs):  # the same cluster, its scheduler on loopback for the test
        return jobqueue.SLURMCluster(**kwargs, scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"})

    cluster = eval(call.group(1), {"SLURMCluster": local})  # noqa: S307  (our own docs)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script, script
    worker = next(line for line in script.splitlines() if "dask_worker" in line or "dask worker" in line)
    assert "--resources GPU=1" in worker, script
    # the worker retires before the job's walltime, stagger included (Dask parses each duration)
    from dask.utils import parse_timedelta

    words = worker.split()
    lifetime = parse_timedelta(words[words.index("--lifetime") + 1])
    stagger = parse_timedelta(words[words.index("--lifetime-stagger") + 1])
    hours, minutes, seconds = (int(x) for x in re.search(r"#SBATCH -t (\S+)", script).group(1).split(":"))
    assert lifetime + stagger < 3600 * hours + 60 * minutes + seconds, script
