"""Pending steps wait on local disk, not in the coordinator's memory (issue 7 item 7, scheduler/pending.py)."""

from __future__ import annotations

import tracemalloc

import pytest

from panicflow.scheduler import pending
from panicflow.scheduler.pending import PendingSteps, _Spool
from panicflow.store.journal import StepRecord


def _step(run: int, step: int) -> StepRecord:
    return StepRecord(run=run, step=step, model="DummyI2T", kind="text", hash=f"{run:032x}{step:032x}",
                      text=f"a lighthouse in a storm, caption {run}/{step}", seed=run * 1000 + step,
                      started_us=step, ended_us=step + 1, parameters_hash="p" * 64, batch_id="b", batch_size=16,
                      batch_position=run % 16)


@pytest.fixture
def spool(monkeypatch, tmp_path):
    monkeypatch.setattr(pending.tempfile, "tempdir", str(tmp_path))
    s = _Spool()
    monkeypatch.setattr(pending, "SPOOL", s)
    return s


def test_steps_come_back_in_order_and_the_file_empties_when_none_is_pending(spool, tmp_path):
    runs = [PendingSteps() for _ in range(3)]
    for step in range(50):
        for run, p in enumerate(runs):
            p.append(_step(run, step))
    assert [len(p) for p in runs] == [50, 50, 50] and all(runs)
    assert list(runs[1]) == [_step(1, s) for s in range(50)]
    assert spool.live == 150 and spool.size > 150 * 100
    runs[0].clear()
    runs[1].clear()
    assert not runs[0] and list(runs[0]) == [] and spool.size > 0  # run 2's steps are still there
    assert list(runs[2]) == [_step(2, s) for s in range(50)]
    runs[2].clear()
    assert spool.live == 0 and spool.size == 0  # emptied: the next steps start it again
    runs[0].append(_step(0, 50))
    assert list(runs[0]) == [_step(0, 50)]


def test_a_step_costs_bytes_of_memory_not_hundreds(spool):
    runs = [PendingSteps() for _ in range(100)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for step in range(200):
        for run, p in enumerate(runs):
            p.append(_step(run, step))  # made here and dropped: only the spool keeps it
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown / 20_000 < 20  # bytes per pending step (as Python objects a step is about 490)
    assert list(runs[99])[-1] == _step(99, 199)


def test_a_full_temporary_folder_keeps_steps_in_memory(spool, monkeypatch, caplog):
    p = PendingSteps()
    p.append(_step(0, 0))

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pending.os, "pwrite", full)
    p.append(_step(0, 1))
    p.append(_step(0, 2))
    assert list(p) == [_step(0, s) for s in range(3)]  # the spooled one first, in order
    assert "stay in memory" in caplog.text
    p.clear()
    assert spool.live == 0 and not p


def test_running_runs_shown_a_group_at_a_time_give_the_same_rows(client, tmp_path, monkeypatch):
    """_show_running writes SHOW_GROUP runs at a time (their steps come back from disk a group at
    a time); shown at every round in groups of 16, 40 runs end with the rows they get unshown."""
    import numpy as np

    import panicflow
    from panicflow.scheduler import coordinator

    config = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": [7], "prompts": [f"p{i}" for i in range(40)],
              "embedding_models": ["DummyText"], "max_length": 30, "persistence": {"maxdim": 0}}
    variables = ("output_hash", "text", "invocation_seed", "model")

    def rows(store: str) -> dict:
        root = panicflow.open_experiment(panicflow.run_experiment(config, store=store, client=client), store=store)["/"].ds
        return {v: root[v].values.astype(object) for v in variables}

    plain = rows(str(tmp_path / "plain"))
    monkeypatch.setattr(coordinator, "SHOW_RUNNING_S", 0.0)
    monkeypatch.setattr(coordinator, "SHOW_GROUP", 16)
    shown = rows(str(tmp_path / "shown"))
    for v in variables:
        assert np.array_equal(plain[v], shown[v]), v
    assert (plain["output_hash"] != "").all()  # every step of every run is there
