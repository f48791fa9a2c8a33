"""The journal is read in the order it was written, across coordinator processes (issue 8 item 2)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from panicflow.config import validate_config
from panicflow.errors import StoreError
from panicflow.store import Store
from panicflow.store.experiment import Experiment
from panicflow.store.journal import Journal, RunEvent, StepRecord

CONFIG = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [3, 4],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 10,
}


def _step(run: int, step: int, store: Store | None = None) -> StepRecord:
    """A journal line; with ``store``, its output is in the store too (resume checks the newest outputs)."""
    kind = "image" if step % 2 == 0 else "text"
    text = None if kind == "image" else f"text {step}"
    data = text.encode() if text is not None else f"image {run} {step}".encode()
    digest = store.objects.put_bytes(data) if store is not None else hashlib.sha256(data).hexdigest()
    return StepRecord(run=run, step=step, model="DummyT2I" if kind == "image" else "DummyI2T", kind=kind,
                      hash=digest, text=text, seed=3 + run, started_us=1, ended_us=2)


def _journal(tmp_path) -> Journal:
    store = Store(str(tmp_path / "store"), create=True)
    return Journal(store.root, "experiments/x/journal")


def test_files_are_read_in_the_order_written_across_coordinator_processes(tmp_path):
    """Three coordinators in turn (a new Journal each, as after a resume), several files each:
    with the files named by random uuids this read them in a random order (issue 8 item 2)."""
    first = _journal(tmp_path)
    written = []
    for process in range(3):
        journal = Journal(first.root, first.prefix)
        for k in range(4):
            rec = RunEvent(run=process, event="retry" if k % 2 else "failed", step=k, error=f"p{process} f{k}")
            journal.append([rec])
            written.append(rec)
    assert list(first.read()) == written
    # a plain listing sorted by name is in write order too (what a person or a script sees)
    folder = os.path.join(first.root.path, *first.prefix.split("/"))
    assert sorted(os.listdir(folder)) == first.names()
    # on a local folder each process appends to one segment (issue 7 item 8: a file per call was ~1,200 files)
    assert [n.split("-")[0] for n in first.names()] == ["00000001", "00000002", "00000003"]


def test_object_storage_gets_one_whole_file_per_append(tmp_path):
    store = Store(f"memory://journal-{tmp_path.name}", create=True)
    journal = Journal(store.root, "experiments/x/journal")
    recs = [_step(0, k) for k in range(3)]
    for rec in recs:
        journal.append([rec])
    assert len(journal.names()) == 3 and list(journal.read()) == recs


def test_a_torn_last_line_is_ignored_and_a_damaged_middle_line_is_not(tmp_path):
    """A reader can meet a line being appended, and a power cut can cut the last one: neither was ever
    acted on (the coordinator acts after its write returned), so it is skipped; damage before the end is not."""
    journal = _journal(tmp_path)
    recs = [_step(0, 0), _step(0, 1)]
    journal.append(recs)
    journal.close()
    [name] = journal.names()
    path = os.path.join(journal.root.path, *journal.prefix.split("/"), name)
    with open(path, "ab") as f:
        f.write(b'{"type": "step", "run": 0, "st')  # torn: no newline
    assert list(journal.read()) == recs
    with open(path, "ab") as f:
        f.write(b"\x00" * 64)  # a power cut's zero-filled tail
    assert list(journal.read()) == recs
    with open(path, "ab") as f:
        f.write(b"\n" + json.dumps({"type": "event", "run": 0, "event": "failed", "step": 2, "error": ""}).encode() + b"\n")
    with pytest.raises(StoreError, match="is damaged at line 3"):
        list(journal.read())


def test_older_unordered_files_are_read_first_then_the_ordered_ones(tmp_path):
    journal = _journal(tmp_path)
    old = RunEvent(run=0, event="failed", step=1, error="old")
    # a journal written before the files were ordered: <uuid>.jsonl
    line = json.dumps({"type": "event", "run": 0, "event": "failed", "step": 1, "error": "old"}) + "\n"
    journal.root.write_bytes(f"{journal.prefix}/ffffffffffffffffffffffffffffffff.jsonl", line.encode())
    new = RunEvent(run=0, event="retry", step=1)
    journal.append([new])
    assert list(journal.read()) == [old, new]
    assert journal.names()[-1].startswith("00000001-0000000000-")


def test_a_damaged_line_names_the_file_and_line(tmp_path):
    journal = _journal(tmp_path)
    journal.append([_step(0, 0)])
    name = journal.names()[0]
    path = os.path.join(journal.root.path, *journal.prefix.split("/"), name)
    with open(path, "ab") as f:
        f.write(b'{"type": "step", "run": 0\n')
    with pytest.raises(StoreError, match=rf"journal .*{name} is damaged at line 2"):
        list(journal.read())


@pytest.mark.parametrize("second_failure", [False, True], ids=["retried-run-healthy", "retried-run-failed-again"])
def test_crash_after_resume_retry_failed_keeps_the_last_event(client, tmp_path, second_failure):
    """Run 0 failed at step 2; `resume --retry-failed` journaled `retry`, the run went on (and, in the
    second case, failed again at step 4), then that coordinator crashed. The next resume must see the
    last event of the run: healthy and continuing, or failed. Before the journal was ordered the two
    events were applied in random order and healthy runs were marked failed again."""
    from panicflow.scheduler.coordinator import Coordinator

    store = Store(str(tmp_path / "store"), create=True)
    exp = Experiment.create(store.root, "20250101-000000-abcdef", validate_config(CONFIG))
    Journal(store.root, exp.journal.prefix).append([_step(0, 0, store), _step(0, 1, store), _step(1, 0, store)])
    Journal(store.root, exp.journal.prefix).append([RunEvent(0, "failed", 2, "boom")])  # a coordinator that stopped
    retrying = Journal(store.root, exp.journal.prefix)  # the resume --retry-failed, crashed later
    retrying.append([RunEvent(0, "retry", 2)])
    retrying.append([_step(0, 2, store), _step(1, 1, store)])
    retrying.append([_step(0, 3, store)])
    if second_failure:
        retrying.append([RunEvent(0, "failed", 4, "boom again")])
    coordinator = Coordinator(client, store, Experiment(store.root, exp.id))
    coordinator.load()
    run0, run1 = coordinator.runs[0], coordinator.runs[1]
    assert run0.n_steps == 4 and run1.n_steps == 2
    assert run1.end is None
    if second_failure:
        assert run0.end is not None and run0.end.stop_reason == "failed" and run0.end.error == "boom again"
    else:
        assert run0.end is None, f"a retried, healthy run was marked {run0.end}"
