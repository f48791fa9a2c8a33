"""The CLI end to end, in subprocesses, on an embedded LocalCluster with worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SMALL = {
    "name": "cli",
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [22, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 40,
}


def cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "panicflow", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "small.json"
    cfg.write_text(json.dumps(SMALL))
    store = str(tmp / "store")
    proc = cli("experiment", "run", str(cfg), "--store", store, "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    return store, json.loads(proc.stdout)


def test_run_prints_json_status(finished):
    store, out = finished
    for key in ("id", "state", "runs", "runs_complete", "invocations", "embeddings", "persistence_diagrams", "stop_reasons"):
        assert key in out
    assert out["state"] == "complete"
    assert out["runs"] == out["runs_complete"] == 2
    assert out["embeddings"] == {"DummyText": 2, "DummyVision": 2}
    assert out["persistence_diagrams"] == {"DummyText": 2, "DummyVision": 2}
    assert sum(out["stop_reasons"].values()) == 2
    assert out["invocations"] > 40  # the unseeded run alone makes 40


def test_status_list_and_store_from_environment(finished):
    store, out = finished
    proc = cli("experiment", "status", out["id"][:12], "--json", env={"PANICFLOW_STORE": store})
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["id"] == out["id"] and status["invocations"] == out["invocations"]
    proc = cli("experiment", "list", "--json", "--store", store)
    assert [e["id"] for e in json.loads(proc.stdout)] == [out["id"]]
    human = cli("experiment", "status", "--store", store)  # no id: the newest
    assert human.returncode == 0 and out["id"] in human.stderr


def test_human_run_prints_the_id_on_stdout_and_a_summary(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("networks: [[DummyT2I, DummyI2T]]\nseeds: [1]\nprompts: [hi]\nembedding_models: [DummyText]\nmax_length: 6\n")
    proc = cli("experiment", "run", str(cfg), "--store", str(tmp_path / "s"), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    eid = proc.stdout.strip()
    assert len(eid.splitlines()) == 1 and eid
    assert "Dask dashboard: http://127.0.0.1:" in proc.stderr
    assert "invocations" in proc.stderr and "wall time" in proc.stderr


def test_models_lists_every_kind():
    proc = cli("models", "--json")
    assert proc.returncode == 0
    kinds = {m["name"]: (m["kind"], m["output"]) for m in json.loads(proc.stdout)}
    assert kinds["DummyT2I"] == ("text-to-image", "image")
    assert kinds["DummyI2T"] == ("image-to-text", "text")
    assert kinds["DummyText"] == ("text-embedder", "vector[768]")
    assert kinds["DummyVision2"] == ("image-embedder", "vector[768]")


def test_bad_config_exits_2_with_one_line_per_problem_and_writes_nothing(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({**SMALL, "networks": [["Nope"]], "max_length": 0, "extra": 1}))
    store = tmp_path / "store"
    proc = cli("experiment", "run", str(cfg), "--store", str(store))
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert all(l.startswith("error: ") for l in lines), proc.stderr
    assert any("networks[0][0]: unknown model 'Nope'" in l for l in lines)
    assert any("max_length" in l for l in lines) and any("extra: unknown key" in l for l in lines)
    assert "Traceback" not in proc.stderr
    assert not store.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["experiment", "status", "nope"], "no experiment 'nope'"),
        (["experiment", "resume", "nope"], "no experiment 'nope'"),
        (["experiment", "run", "missing.yaml"], "no such file"),
        (["experiment", "run", "c.yaml", "--workers", "0"], "--workers: must be at least 1"),
        (["experiment", "status", "--bogus"], "No such option"),
        (["experiment", "run", "c.yaml", "--gpus", "0"], "--gpus: must be at least 1"),
        (["experiment", "run", "c.yaml", "--gpus", "1", "--workers", "2"], "--workers and --gpus: give one"),
    ],
)
def test_user_errors_exit_2(finished, tmp_path, args, message):
    store, _ = finished
    (tmp_path / "c.yaml").write_text(
        "networks: [[DummyT2I, DummyI2T]]\nseeds: [1]\nprompts: [hi]\nembedding_models: [DummyText]\nmax_length: 2\n")
    proc = cli(*args, "--store", store, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_stores_exit_2(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    proc = cli("experiment", "list", "--store", str(afile))
    assert proc.returncode == 2 and "is a file" in proc.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    proc = cli("experiment", "list", "--store", str(other))
    assert proc.returncode == 2 and "not a panicflow store" in proc.stderr
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "panicflow-store.json").write_text('{"format": "panicflow-store", "version": 99}')
    proc = cli("experiment", "list", "--store", str(newer))
    assert proc.returncode == 2 and "store format 99" in proc.stderr
    proc = cli("experiment", "list", "--store", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "no panicflow store" in proc.stderr


def test_gpus_without_dask_cuda_says_what_to_install(tmp_path):
    import importlib.util

    if importlib.util.find_spec("dask_cuda") is not None:
        pytest.skip("dask-cuda is installed here")
    (tmp_path / "c.yaml").write_text(
        "networks: [[DummyT2I, DummyI2T]]\nseeds: [1]\nprompts: [hi]\nembedding_models: [DummyText]\nmax_length: 2\n")
    proc = cli("experiment", "run", "c.yaml", "--gpus", "1", "--store", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2 and "pip install 'panicflow[gpu]'" in proc.stderr
    assert not (tmp_path / "s").exists()
