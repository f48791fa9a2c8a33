"""Stores the CLI cannot use as asked: another version, a file, an unknown id, damaged experiments.

`experiment status`, `resume` and `list` each give exit 2 and one clear line per
problem, never a traceback. `list` still lists the healthy experiments: a damaged
one is listed with state "damaged" (and its reason in --json's "error"), and the
reason goes to stderr as an error line, with exit 2 (docs/cli.md).
Complements tests/test_cli.py (unknown ids, a file as --store and store format 99
for `list` are tested there). Experiments are laid out with `Experiment.create`,
which needs no cluster; no test here starts one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from panicflow.config import validate_config
from panicflow.store import Store
from panicflow.store.experiment import Experiment

CONFIG = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 4,
}
POOL = max(1, min(8, os.cpu_count() or 1))


def cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "panicflow", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def _damage(path: Path, how: str) -> None:
    meta = path / "experiment.json"
    if how == "format99":
        raw = json.loads(meta.read_text())
        meta.write_text(json.dumps({**raw, "format": 99}))
    elif how == "not_json":
        meta.write_text("{this is not json")
    elif how == "not_object":
        meta.write_text("[1, 2, 3]")
    elif how == "bad_config":  # valid JSON, but the config names a model that does not exist
        raw = json.loads(meta.read_text())
        raw["config"]["networks"] = [["os.system", "DummyI2T"]]
        meta.write_text(json.dumps(raw))
    elif how == "no_zarr":
        (path / "data.zarr" / "zarr.json").unlink()
    elif how == "bad_journal":
        (path / "journal").mkdir(exist_ok=True)
        (path / "journal" / "0.jsonl").write_text('{"type": "step", "run": 0\n')


DAMAGE = {
    "format99": "written in experiment format 99, this panicflow reads formats 1, 2",
    "not_json": "experiment.json is damaged (not JSON)",
    "not_object": "experiment.json is damaged (not a JSON object)",
    "bad_config": "its stored config is invalid: networks[0][0]: unknown model 'os.system'",
    "no_zarr": "its data.zarr is missing or damaged",
    "bad_journal": "is damaged at line 1",
}
# what `list` can see without reading the data: the others list as healthy
LIST_DAMAGED = {"format99", "not_json", "not_object", "bad_config"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A store with one healthy experiment and one damaged experiment per kind of damage, and odd stores."""
    tmp = tmp_path_factory.mktemp("bad-stores")
    st = Store(tmp / "store", create=True)
    cfg = validate_config(CONFIG)
    healthy = Experiment.create(st.root, "0-healthy", cfg).id
    for how in DAMAGE:
        Experiment.create(st.root, f"1-{how}", cfg)
        _damage(tmp / "store" / "experiments" / f"1-{how}", how)
    newer = tmp / "newer"
    newer.mkdir()
    (newer / "panicflow-store.json").write_text('{"format": "panicflow-store", "version": 99}')
    damaged_marker = tmp / "damaged-marker"
    damaged_marker.mkdir()
    (damaged_marker / "panicflow-store.json").write_text("[]")
    afile = tmp / "a-file"
    afile.write_text("x")
    return {"store": str(tmp / "store"), "healthy": healthy, "newer": str(newer),
            "damaged_marker": str(damaged_marker), "file": str(afile)}


def _expect_2(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), proc.stderr
    assert any(message in line for line in lines), (message, proc.stderr)


def test_status_and_resume_of_damaged_experiments(stores):
    cases = []
    for how, message in DAMAGE.items():
        cases.append((["experiment", "status", f"1-{how}", "--store", stores["store"]], message))
        if how not in ("no_zarr", "bad_journal"):  # resume reads those only with a cluster started
            cases.append((["experiment", "resume", f"1-{how}", "--store", stores["store"], "--workers", "1"], message))
    with ThreadPoolExecutor(POOL) as pool:
        procs = list(pool.map(lambda case: cli(case[0]), cases))
    for (args, message), proc in zip(cases, procs):
        _expect_2(proc, message)


@pytest.mark.parametrize("command", [["experiment", "status", "x"], ["experiment", "resume", "x"], ["experiment", "list"]])
def test_unusable_stores(stores, command):
    cases = [
        (stores["newer"], "has store format 99, this panicflow reads format 1"),
        (stores["damaged_marker"], "panicflow-store.json is damaged"),
        (stores["file"], "is a file, not a folder"),
    ]
    with ThreadPoolExecutor(POOL) as pool:
        procs = list(pool.map(lambda case: cli([*command, "--store", case[0]]), cases))
    for (_, message), proc in zip(cases, procs):
        _expect_2(proc, message)


def test_list_lists_healthy_experiments_and_marks_damaged_ones(stores):
    with ThreadPoolExecutor(2) as pool:
        as_json, human = pool.map(cli, [["experiment", "list", "--store", stores["store"], "--json"],
                                        ["experiment", "list", "--store", stores["store"]]])
    for proc in (as_json, human):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors = proc.stderr.splitlines()
        assert len(errors) == len(LIST_DAMAGED) and all(e.startswith("error: experiment 1-") for e in errors), errors
    listed = {e["id"]: e for e in json.loads(as_json.stdout)}
    assert listed[stores["healthy"]]["state"] == "interrupted" and listed[stores["healthy"]]["runs"] == 1
    for how in DAMAGE:
        entry = listed[f"1-{how}"]
        if how in LIST_DAMAGED:
            assert entry["state"] == "damaged" and entry["runs"] is None
            assert DAMAGE[how] in entry["error"]
        else:
            assert entry["state"] != "damaged"
    assert stores["healthy"] in human.stdout and human.stdout.count("damaged") == len(LIST_DAMAGED)


def test_unknown_or_ambiguous_ids(stores):
    cases = [
        (["experiment", "status", "1-", "--store", stores["store"]], "experiment id '1-' is ambiguous"),
        (["experiment", "resume", "../0-healthy", "--store", stores["store"]], "no experiment '../0-healthy'"),
        (["experiment", "status", "", "--store", stores["store"]], "no experiment ''"),
    ]
    with ThreadPoolExecutor(POOL) as pool:
        procs = list(pool.map(lambda case: cli(case[0]), cases))
    for (_, message), proc in zip(cases, procs):
        _expect_2(proc, message)
