"""What the CLI says when things go wrong, and what it prints (issue 8 items 7, 8, 9 and 18).

* a full store (disk full, quota, read-only) stops an experiment with one line naming the
  store, the experiment and the resume command, and --json gets the id and the error; a
  worker's write into it is not retried as a model failure;
* control characters in names are refused, and never printed raw from a store;
* Ctrl-C (SIGINT to the whole process group, as a terminal sends it) prints one line and
  exits 130, during the cluster start and mid-run alike; an experiment that completed exits 0;
  a bad --host or --dashboard-address exits 2, a damaged zarr.json names the file;
* `panicflow --version`, and `panicflow models --json` with ids, dtypes and the weights' presence.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

import panicflow
from cli_util import Running, cli, write_config
from panicflow.config import ExperimentConfig, validate_config
from panicflow.errors import ConfigError, StoreError, StoreIOError
from panicflow.store import Store
from panicflow.store.experiment import Experiment
from panicflow.store.lease import current_holder

SMALL = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [1, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 8,
}
# SleepT2I sleeps PANICFLOW_TEST_SLEEP_S per call: a run that lasts long enough to be interrupted
SLOW = {**SMALL, "networks": [["SleepT2I", "DummyI2T"]], "max_length": 60}
CLUSTER = ["--workers", "1", "--dashboard-address", ":0"]



def created(store: Path, config: dict = SMALL, **raw) -> str:
    """An experiment laid out without a cluster, its config parsed but not validated (as an older
    panicflow, without today's rules, may have written it)."""
    st = Store(store, create=True)
    return Experiment.create(st.root, st.new_experiment_id(), ExperimentConfig.model_validate({**config, **raw})).id


# ------------------------------------------------------------------ Ctrl-C
def _no_noise(stderr: str) -> None:
    for noise in ("Traceback", "KeyboardInterrupt", "Compute Failed", "Exception ignored", "ERROR"):
        assert noise not in stderr, stderr


def _journaled(store: Path) -> bool:
    return any(f.stat().st_size > 0 for f in store.glob("experiments/*/journal/*.jsonl"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="watches child processes through /proc")


@needs_proc
def test_ctrl_c_during_cluster_start_of_run(tmp_path):
    store = tmp_path / "store"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SMALL), "--store", str(store), *CLUSTER], tmp_path)
    run.wait_for("a child process (the cluster starting)", run.children)
    run.ctrl_c()
    code, out, err = run.finish()
    assert code == 130, err
    assert err.strip().splitlines() == ["interrupted before the experiment was created; nothing to resume"]
    assert out == "" and not store.exists()


@needs_proc
def test_ctrl_c_during_cluster_start_of_resume(tmp_path):
    store = tmp_path / "store"
    eid = created(store)
    run = Running(["experiment", "resume", eid, "--store", str(store), *CLUSTER], tmp_path)
    run.wait_for("a child process (the cluster starting)", run.children)
    run.ctrl_c()
    code, _, err = run.finish()
    assert code == 130, err
    assert err.strip().splitlines() == [f"interrupted; panicflow experiment resume {eid} --store {store} --workers 1 finishes it"]
    assert current_holder(Store(store).root, f"experiments/{eid}") is None, "the lease was not given back"


@needs_proc
def test_ctrl_c_mid_run_says_how_to_resume_and_resume_finishes(tmp_path):
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "c.json", SLOW)
    run = Running(["experiment", "run", cfg, "--store", str(store), "--json", *CLUSTER], tmp_path,
                  env={"PANICFLOW_TEST_SLEEP_S": "0.2"})
    run.wait_for("a journaled step", lambda: _journaled(store))
    run.ctrl_c()
    code, out, err = run.finish()
    [eid] = os.listdir(store / "experiments")
    line = f"interrupted; panicflow experiment resume {eid} --store {store} --workers 1 finishes it"
    assert code == 130, err
    _no_noise(err)
    assert err.strip().splitlines()[-1] == line
    assert json.loads(out) == {"id": eid, "state": "interrupted", "error": line}
    assert panicflow.experiment_status(eid, store=str(store)).state == "interrupted"
    done = cli("experiment", "resume", eid, "--store", str(store), "--json", *CLUSTER, env={"PANICFLOW_TEST_SLEEP_S": "0"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "complete"


@needs_proc
def test_ctrl_c_after_the_experiment_completed_exits_0(tmp_path):
    store = tmp_path / "store"
    run = Running(["experiment", "run", write_config(tmp_path / "c.json", SMALL), "--store", str(store), "--json", *CLUSTER],
                  tmp_path)

    def complete() -> bool:
        return any('"complete"' in p.read_text() for p in store.glob("experiments/*/state.json"))

    run.wait_for("the experiment to complete", complete)
    run.ctrl_c()  # the cluster is closing now
    code, out, err = run.finish()
    assert code == 0, err
    _no_noise(err)
    assert json.loads(out)["state"] == "complete"


# ------------------------------------------------------ exit codes, one line
BAD_LISTEN = [
    (["--host", "nonexistent.invalid"], "--host: cannot resolve 'nonexistent.invalid'"),
    (["--host", "192.0.2.1"], "--host: cannot listen on '192.0.2.1'"),  # TEST-NET-1: never this machine's
    (["--dashboard-address", "99999"], "--dashboard-address: '99999' is not HOST:PORT or PORT"),
    (["--dashboard-address", "localhost:http"], "--dashboard-address: 'localhost:http' is not HOST:PORT or PORT"),
    (["--dashboard-address", "192.0.2.1:8787"], "--dashboard-address: cannot listen on '192.0.2.1'"),
]


@pytest.mark.parametrize("args, message", BAD_LISTEN, ids=[" ".join(a) for a, _ in BAD_LISTEN])
def test_bad_host_or_dashboard_address_is_a_user_error(args, message):
    from panicflow.errors import UserError
    from panicflow.scheduler.cluster import check_listen

    host = args[1] if args[0] == "--host" else "127.0.0.1"
    dashboard = args[1] if args[0] == "--dashboard-address" else None
    with pytest.raises(UserError) as info:
        check_listen(host, dashboard)
    [line] = info.value.lines
    assert line.startswith(message), line


def test_bad_host_exits_2_with_one_line_and_writes_nothing(tmp_path):
    cfg = write_config(tmp_path / "c.json", SMALL)
    proc = cli("experiment", "run", cfg, "--store", str(tmp_path / "store"), "--workers", "1", "--host", "192.0.2.1")
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: --host: cannot listen on '192.0.2.1'"), line
    assert sorted(os.listdir(tmp_path)) == ["c.json"]  # nothing written, not even a store


def test_damaged_zarr_json_is_one_line_naming_the_file(tmp_path):
    store = tmp_path / "store"
    eid = created(store)
    data = store / "experiments" / eid / "data.zarr"
    root_meta = data / "zarr.json"
    intact = root_meta.read_text()
    root_meta.write_text(intact[:40])  # truncated mid-write
    for args in (["experiment", "status", eid], ["experiment", "resume", eid, *CLUSTER]):
        proc = cli(*args, "--store", str(store))
        assert proc.returncode == 2, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("error: ") and str(root_meta) in line and f"`panicflow doctor {eid}`" in line, line
    with pytest.raises(StoreError, match="data.zarr/zarr.json"):
        panicflow.open_experiment(eid, store=str(store))
    root_meta.write_text(intact)
    (data / "stop_reason" / "zarr.json").write_text('{"zarr_format": 3, "node')  # an array's, this time
    with pytest.raises(StoreError, match="data.zarr/stop_reason/zarr.json is damaged"):
        panicflow.experiment_status(eid, store=str(store))


# ---------------------------------------------------------------- full store
class FailingWrites:
    """Writes of the objects (or embedding rows) of worker tasks fail with ENOSPC after ``after``:
    what a write() on a full disk raises, naming no file."""

    def __init__(self, after: int) -> None:
        self.after, self.calls, self.failed = after, 0, 0

    def wrap(self, real):
        def write(*args, **kwargs):
            self.calls += 1
            if self.calls > self.after:
                self.failed += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)

        return write


@pytest.fixture(scope="module")
def threads_client():
    """An in-process cluster: its worker threads see what a test patches."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


@pytest.mark.parametrize("where", ["objects", "embeddings"])
def test_a_worker_write_into_a_full_store_stops_the_experiment_without_retries(threads_client, tmp_path, monkeypatch, where):
    import panicflow.scheduler.tasks as tasks
    from panicflow.store.objects import ObjectStore

    store = str(tmp_path / "store")
    if where == "objects":
        full = FailingWrites(after=20)
        monkeypatch.setattr(ObjectStore, "put", full.wrap(ObjectStore.put))
    else:
        full = FailingWrites(after=0)
        monkeypatch.setattr(tasks, "write_embedding_rows", full.wrap(tasks.write_embedding_rows))
    config = {**SMALL, "seeds": [1], "max_length": 60, "retry": {"max_attempts": 3, "backoff_s": 0}}
    with pytest.raises(StoreIOError) as info:
        panicflow.run_experiment(config, store=store, client=threads_client)
    eid = info.value.experiment_id
    assert str(info.value) == (
        f"store {store}: No space left on device; experiment {eid} stopped: "
        f"`panicflow experiment resume {eid} --store {store}` continues it once the store accepts writes again"
    )
    assert full.failed == 1  # one task of the one run, never tried again
    status = panicflow.experiment_status(eid, store=store)
    assert status.state in ("failed", "interrupted") and status.runs_failed == 0  # no run blamed for it


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_json_gets_the_id_and_the_error(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        store = disk / "store"
        cfg = write_config(tmp_path / "c.json", {**SMALL, "max_length": 400})
        proc = cli("experiment", "run", cfg, "--store", str(store), "--json", *CLUSTER)
        [eid] = os.listdir(store / "experiments")
        assert proc.returncode == 1, proc.stderr
        _no_noise(proc.stderr)
        assert "failed for runs" not in proc.stderr  # not taken for a model failure
        lines = proc.stderr.strip().splitlines()
        assert [line for line in lines if line.startswith("error:")] == lines[-1:]
        message = f"store {store}: No space left on device"
        resume = f"`panicflow experiment resume {eid} --store {store}` continues it"
        assert message in lines[-1] and resume in lines[-1], lines[-1]
        out = json.loads(proc.stdout)
        assert out["id"] == eid and out["error"] == lines[-1].removeprefix("error: ")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        done = cli("experiment", "resume", eid, "--store", str(store), "--json", *CLUSTER)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "complete"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------- control characters
HOSTILE = "evil\x1b]0;owned\x07\x1b[2J\u202e"


def test_config_refuses_control_characters_in_names():
    for name in (HOSTILE, "a\nb", "bell\x07", "tab\there", "rtl\u202eoverride"):
        with pytest.raises(ConfigError) as info:
            validate_config({**SMALL, "name": name})
        [line] = info.value.lines
        assert line.startswith("name: must not contain control characters") and "\x1b" not in line and "\x07" not in line
    assert validate_config({**SMALL, "name": "café ☕ 猫"}).name == "café ☕ 猫"
    assert validate_config({**SMALL, "name": HOSTILE}, stored=True).name == HOSTILE  # an old store stays readable


def test_config_refuses_control_characters_in_prompts_but_keeps_text():
    for prompt in (HOSTILE, "bell\x07", "del\x7f", "c1\x9b[31m"):
        with pytest.raises(ConfigError) as info:
            validate_config({**SMALL, "prompts": ["fine", prompt]})
        [line] = info.value.lines
        assert line.startswith("prompts[1]: must not contain control character") and not any(
            ch in line for ch in "\x1b\x07\x7f\x9b"), line
    # multi-line YAML prompts, tabs, emoji joined by ZWJ and Persian with ZWNJ are text, not control
    kept = ["two\nlines", "a\ttab", "family \U0001F468\u200d\U0001F469", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"]
    assert validate_config({**SMALL, "prompts": kept}).prompts == kept
    assert validate_config({**SMALL, "prompts": [HOSTILE]}, stored=True).prompts == [HOSTILE]  # old stores stay readable


def test_list_and_status_never_print_control_characters_from_a_store(tmp_path):
    store = tmp_path / "store"
    eid = created(store, name=HOSTILE)
    for args in (["experiment", "list"], ["experiment", "status", eid]):
        proc = cli(*args, "--store", str(store))
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout + proc.stderr
        assert not any(ch in text for ch in "\x1b\x07\u202e"), repr(text)
        assert "evil\\x1b]0;owned\\x07\\x1b[2J\\u202e" in text
    listed = cli("experiment", "list", "--store", str(store), "--json")
    assert json.loads(listed.stdout)[0]["name"] == HOSTILE  # JSON keeps the value, escaped by JSON itself


def test_doctor_report_never_prints_control_characters():
    from rich.console import Console

    from panicflow.doctor.report import DoctorReport, ExperimentReport, Problem

    problem = Problem("run_mismatch", f"stop_reason is {HOSTILE!s}", run=0, model=HOSTILE)
    report = DoctorReport("s", fix=False, experiments=[
        ExperimentReport(f"id{HOSTILE}", "complete", problems=[problem], actions=[HOSTILE], notes=[HOSTILE]),
    ])
    from panicflow.doctor import render

    out = io.StringIO()
    render(report, Console(file=out, width=300, force_terminal=False))
    assert not any(ch in out.getvalue() for ch in "\x1b\x07\u202e"), repr(out.getvalue())
    assert "\\x1b]0;owned" in out.getvalue()


# ------------------------------------------------------------- --version, models
def test_version(capsys):
    from panicflow.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"panicflow {version('panicflow')}"


def test_models_json_says_ids_dtypes_memory_and_whether_the_weights_are_here(tmp_path):
    # a Hugging Face cache holding one snapshot of openai/clip-vit-large-patch14 at main
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--openai--clip-vit-large-patch14"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PANICFLOW_MODELS_DIR": str(tmp_path / "none")}
    proc = cli("models", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["CLIPText"] == {
        "name": "CLIPText", "kind": "text-embedder", "input": "text", "output": "vector[768]",
        "description": "OpenAI CLIP ViT-L/14 text side (shared text-image space)",
        "hf_id": "openai/clip-vit-large-patch14", "revision": "main", "dim": 768, "dtype": "float16",
        "approx_gpu_gb": 2.0, "weights_present": True, "gated": False, "batch_size": 256, "max_batch": None,
        "batch_reproducible": True, "batch_note": None, "generation": None,
    }
    assert rows["CLIPVision"]["weights_present"] is True  # the same weights
    sdxl = rows["SDXLTurbo"]
    assert (sdxl["hf_id"], sdxl["dtype"], sdxl["approx_gpu_gb"], sdxl["dim"], sdxl["weights_present"]) == (
        "stabilityai/sdxl-turbo", "float16", 10.0, None, False)
    assert rows["Moondream"]["revision"] == "2025-01-09"
    dummy = rows["DummyText"]
    assert (dummy["hf_id"], dummy["revision"], dummy["dim"], dummy["approx_gpu_gb"], dummy["weights_present"]) == (
        None, None, 768, 0.0, None)
    assert rows["TinyBertText"]["weights_present"] is None  # random weights: nothing to fetch
    # the earlier tool's panel (issue 23): gated repositories, safe batches, GLM-Image one input per call
    assert rows["LLaMA32Vision"]["gated"] is True and rows["Flux2Dev"]["gated"] is True
    assert (rows["Flux2Dev"]["max_batch"], rows["Flux2Klein"]["max_batch"]) == (4, 2)
    glm = rows["GLMImage"]
    assert glm["batch_reproducible"] is False and "one input at a time" in glm["batch_note"]
    assert glm["generation"] == {"width": 1024, "height": 1024, "steps": 25, "guidance": 7.5}
    assert (rows["Qwen3Embed"]["dim"], rows["ColNomic"]["dim"], rows["ColNomicVision"]["dim"]) == (2560, 128, 128)


def test_run_and_resume_share_their_cluster_options():
    import typer.main

    from panicflow.cli import app

    experiment = typer.main.get_command(app).commands["experiment"]

    def options(name):
        return {p.opts[0]: (p.help, p.default) for p in experiment.commands[name].params if p.opts[0].startswith("--")}

    run, resume = options("run"), options("resume")
    shared = ["--store", "--scheduler", "--scheduler-file", "--workers", "--gpus", "--json", "--host",
              "--dashboard-address", "--tls-ca-file", "--tls-cert", "--tls-key", "--grace"]
    assert {k: run[k] for k in shared} == {k: resume[k] for k in shared}
    assert set(run) == set(shared) | {"--id-file"} and set(resume) == set(shared) | {"--retry-failed"}
