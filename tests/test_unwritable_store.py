"""A store that refuses writes (read-only, full): every command that writes into it says so in one
line and exits 2, before a cluster starts or anything is computed (issue 21 item 6).

``experiment run`` said ``store: cannot write to STORE: Read-only file system`` (exit 2), but
``experiment resume`` of a complete experiment said the experiment had "stopped" and advised a
resume (exit 1), and ``analyse cluster`` printed a raw ``OSError: [Errno 30]`` (exit 1).

The store is made read-only (or full) for this process the way tests/faults_util.py's ``inject``
does it, without root: creating, replacing, linking or appending a file under it raises the OS
error. A real tmpfs (docs/store.md) needs root: tests/test_cli_hygiene.py has one.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import panicflow
from panicflow.cli import main

SMALL = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [-1, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 12,
}


@contextmanager
def refusing_writes(store: str, code: int, after: int = 0) -> Iterator[list[str]]:
    """Writes into ``store`` by this process fail with ``code`` after ``after`` of them; yields the
    paths refused."""
    root = os.path.realpath(store) + os.sep
    refused: list[str] = []
    count = 0
    real = {"replace": os.replace, "link": os.link, "open": os.open, "builtin_open": builtins.open}

    def guard(path) -> None:
        nonlocal count
        path = os.fspath(path)
        if isinstance(path, str) and os.path.realpath(path).startswith(root):
            count += 1
            if count > after:
                refused.append(path)
                raise OSError(code, os.strerror(code), path)

    def replace(src, dst, *a, **kw):
        guard(dst)
        return real["replace"](src, dst, *a, **kw)

    def link(src, dst, *a, **kw):
        guard(dst)
        return real["link"](src, dst, *a, **kw)

    def open_(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT):
            guard(path)
        return real["open"](path, flags, *a, **kw)

    def builtin_open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wxa+"):
            guard(file)
        return real["builtin_open"](file, mode, *a, **kw)

    os.replace, os.link, os.open, builtins.open = replace, link, open_, builtin_open
    try:
        yield refused
    finally:
        os.replace, os.link, os.open, builtins.open = real["replace"], real["link"], real["open"], real["builtin_open"]


def _files(store: str) -> dict[str, float]:
    return {str(p.relative_to(store)): p.stat().st_mtime for p in Path(store).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(client, tmp_path_factory) -> tuple[str, str]:
    """(store, id) of a complete experiment with a clustering (what `analyse sequences` reads)."""
    from panicflow.analysis.clustering import cluster

    store = str(tmp_path_factory.mktemp("unwritable") / "store")
    eid = panicflow.run_experiment(SMALL, store=store, client=client)
    cluster([eid], "DummyText", store=store, client=client, min_cluster_size=3, reduce="pca:4")
    return store, eid


@pytest.fixture
def no_cluster(monkeypatch):
    """A cluster started by a command fails the test: a store that refuses writes is said before."""
    import panicflow.analysis.cli as analysis_cli
    import panicflow.api as api

    def started(*args, **kwargs):
        raise AssertionError("a cluster was started before the store was found to refuse writes")

    monkeypatch.setattr(api, "connect", started)
    monkeypatch.setattr(analysis_cli, "_client", started)


COMMANDS = {  # every command that writes into the store; {eid} and {config} filled in
    "run": ["experiment", "run", "{config}", "--workers", "1", "--dashboard-address", ":0"],
    "resume": ["experiment", "resume", "{eid}", "--workers", "1", "--dashboard-address", ":0"],
    "resume-json": ["experiment", "resume", "{eid}", "--retry-failed", "--json", "--workers", "1"],
    "cluster": ["analyse", "cluster", "{eid}", "--model", "DummyVision", "--reduce", "pca:4", "--min-cluster-size", "3",
                "--workers", "1"],
    "drift": ["analyse", "drift", "{eid}", "--model", "DummyText", "--workers", "1"],
    "distances": ["analyse", "distances", "{eid}", "--model", "DummyText", "--workers", "1"],
    "divergence": ["analyse", "divergence", "{eid}", "--model", "DummyText", "--workers", "1"],
    "sequences": ["analyse", "sequences", "{eid}"],
    "entropy": ["analyse", "entropy", "{eid}", "--n-resamples", "100"],
    "doctor-fix": ["doctor", "{eid}", "--fix"],
}


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_that_writes_into_the_store_says_it_in_one_line(finished, no_cluster, tmp_path, capsys, command, code):
    store, eid = finished
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SMALL))
    args = [a.format(eid=eid, config=config) for a in COMMANDS[command]]
    before = _files(store)
    with refusing_writes(store, code) as refused:
        rc = main([*args, "--store", store])
    out, err = capsys.readouterr()
    assert (rc, err.strip().splitlines()) == (2, [f"error: store: cannot write to {store}: {os.strerror(code)}"]), err[-2000:]
    assert out == "" and len(refused) == 1, (out, refused)  # one write tried: the check, nothing else
    assert _files(store) == before  # nothing written, nothing left behind


def test_what_only_reads_a_store_that_refuses_writes_still_works(finished, capsys):
    store, eid = finished
    with refusing_writes(store, errno.EROFS) as refused:
        for args in (["experiment", "status", eid], ["experiment", "list"], ["analyse", "results", eid], ["doctor", eid]):
            assert main([*args, "--store", store]) == 0, capsys.readouterr().err
    assert refused == []


def test_a_write_refused_after_the_check_is_the_same_line(finished, capsys):
    """The store fills up while the command computes: the check passed, a later write fails."""
    store, eid = finished
    with refusing_writes(store, errno.ENOSPC, after=2) as refused:  # the check (a file written, then renamed) passes
        rc = main(["analyse", "entropy", eid, "--n-resamples", "100", "--name", "late", "--store", store])
    err = capsys.readouterr().err
    assert refused, "no write was refused"
    [line] = err.strip().splitlines()
    assert rc == 2 and line.startswith(f"error: store: cannot write to {store}: No space left on device ("), err
    assert "Errno" not in line and "Traceback" not in err


def test_import_legacy_into_a_store_that_refuses_writes(finished, tmp_path, capsys):
    from legacy_util import LegacyWriter, simulate

    store, _ = finished
    db = tmp_path / "trajectory_data.sqlite"
    w = LegacyWriter(db)
    simulate(w, [["DummyT2I", "DummyI2T"]], [1], ["a cat"], ["DummyText"], 4, rng=random.Random(1))
    w.close()
    before = _files(store)
    with refusing_writes(store, errno.EROFS):
        rc = main(["import", "legacy", str(db), "--store", store])
    err = capsys.readouterr().err
    assert (rc, err.strip().splitlines()) == (2, [f"error: store: cannot write to {store}: Read-only file system"]), err
    assert _files(store) == before
    with refusing_writes(store, errno.EROFS):  # a dry run writes nothing: it works
        assert main(["import", "legacy", str(db), "--store", store, "--dry-run", "--json"]) == 0
