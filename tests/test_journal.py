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


# ------------------------------------------------------- lines that parse but hold a bad value (issue 21 item 3)
def _line(rec) -> dict:
    from panicflow.store.journal import encode_record

    return json.loads(encode_record(rec))


def _good_text_step() -> dict:
    text = "a caption"
    return {"type": "step", "run": 0, "step": 1, "model": "DummyI2T", "kind": "text",
            "hash": hashlib.sha256(text.encode()).hexdigest(), "text": text, "seed": 3, "started_us": 1, "ended_us": 2,
            "parameters_hash": "", "batch_id": "b", "batch_size": 1, "batch_position": 0}


VALUE_DAMAGE = {
    "hash-not-hex": (lambda d: d.update(hash="g" + d["hash"][1:]), r'hash "g.*" is not a sha256 hex digest'),
    "hash-short": (lambda d: d.update(hash=d["hash"][:-1]), "is not a sha256 hex digest"),
    "text-changed": (lambda d: d.update(text="a captioN"), "text and hash disagree"),
    "step-negative": (lambda d: d.update(step=-1), "step -1 is not a step number"),
    "step-a-string": (lambda d: d.update(step="1"), 'step "1" is not a step number'),
    "step-a-float": (lambda d: d.update(step=1.0), "step 1.0 is not a step number"),
    "run-a-bool": (lambda d: d.update(run=True), "run true is not a run number"),
    "kind-unknown": (lambda d: d.update(kind="video"), 'kind "video" is not text or image'),
    "image-with-text": (lambda d: d.update(kind="image"), "an image step with a text"),
    "text-missing": (lambda d: d.update(text=None), "a text step without its text"),
    "seed-a-float": (lambda d: d.update(seed=3.5), "seed 3.5 is not a seed"),
    "parameters-hash": (lambda d: d.update(parameters_hash="xyz"), "parameters_hash .* is not a sha256 hex digest"),
    "batch-size": (lambda d: d.update(batch_size=-2), "batch_size -2 is not a batch size"),
    "time-too-large": (lambda d: d.update(started_us=2**64), "started_us .* is not a time"),
    "field-unknown": (lambda d: d.update(hsh="x"), 'has no field "hsh"'),
    "field-missing": (lambda d: d.pop("seed"), "without seed"),
    "type-unknown": (lambda d: d.update(type="stp"), 'type "stp" is neither step nor event'),
    "model-empty": (lambda d: d.update(model=""), 'model "" is not a model name'),
}


@pytest.mark.parametrize("damage", list(VALUE_DAMAGE))
def test_decode_record_refuses_a_bad_value(damage):
    """Each field is checked for the type and format encode_record writes: before, any JSON with the
    right keys decoded (a non-hex hash failed later, deep in resume, naming no file or line)."""
    from panicflow.store.journal import BadRecord, decode_record

    good = _good_text_step()
    assert decode_record(json.dumps(good)) == StepRecord(**{k: v for k, v in good.items() if k != "type"})
    change, reason = VALUE_DAMAGE[damage]
    change(good)
    with pytest.raises(BadRecord, match=reason):
        decode_record(json.dumps(good))


@pytest.mark.parametrize("event", [{"event": "paused"}, {"step": -3}, {"error": 7}, {"run": "0"}])
def test_decode_record_refuses_a_bad_event(event):
    from panicflow.store.journal import BadRecord, decode_record

    good = {"type": "event", "run": 0, "event": "failed", "step": 2, "error": "boom"}
    assert decode_record(json.dumps(good)) == RunEvent(0, "failed", 2, "boom")
    with pytest.raises(BadRecord):
        decode_record(json.dumps({**good, **event}))


def _experiment_journal(tmp_path):
    store = Store(str(tmp_path / "store"), create=True)
    exp = Experiment.create(store.root, "20250101-000000-abcdef", validate_config(CONFIG))
    return store, Experiment(store.root, exp.id)


def _write_lines(journal: Journal, lines: list[dict]) -> str:
    name = "00000001-0000000000-abcdef.jsonl"
    journal.root.write_bytes(f"{journal.prefix}/{name}", "".join(json.dumps(d) + "\n" for d in lines).encode())
    return name


# values that parse and have the right format, but that the experiment never wrote
EXPERIMENT_DAMAGE = {
    "model-not-the-networks": (lambda d: d.update(model="DummyT2I"), "model 'DummyT2I' is not the network's model at step 1"),
    "model-unknown": (lambda d: d.update(model="NoSuchModel"), "model 'NoSuchModel' is not the network's model"),
    "kind-not-the-models": (lambda d: d.update(step=0, model="DummyT2I"), "kind 'text' is not DummyT2I's output kind"),
    "run-not-in-experiment": (lambda d: d.update(run=7), "run 7 is not a run of this experiment"),
    "step-past-max-length": (lambda d: d.update(step=11), "step 11 is past max_length 10"),
    "seed-not-the-runs": (lambda d: d.update(seed=4), "seed 4 is not the run's seed 3"),
    "step-out-of-order": (lambda d: d.update(step=3), "step 3 of run 0 comes before its step 1"),
}


@pytest.mark.parametrize("damage", list(EXPERIMENT_DAMAGE))
def test_a_value_that_does_not_fit_the_experiment_names_the_file_and_line(tmp_path, damage):
    """The journal of an experiment also checks each line against its config (runs, networks, seeds) and
    the order steps are journaled in: JournalDamaged, a StoreError (exit 2), naming the file, the line
    and the way on, instead of a wrong model or seed recorded in the rows or a run continued from a hole."""
    from panicflow.store.journal import JournalDamaged

    store, exp = _experiment_journal(tmp_path)
    first = _line(_step(0, 0, store))
    bad = _good_text_step()
    change, reason = EXPERIMENT_DAMAGE[damage]
    change(bad)
    name = _write_lines(exp.journal, [first, bad])
    with pytest.raises(JournalDamaged, match=reason) as info:
        list(exp.journal.read())
    assert isinstance(info.value, StoreError)
    assert (info.value.segment, info.value.line) == (name, 2)
    message = str(info.value)
    assert f"{name} is damaged at line 2: " in message and "\n" not in message
    assert f"panicflow doctor {exp.id} --fix" in message


def test_a_bad_value_in_a_journal_names_the_file_and_line(tmp_path):
    """The issue's case: one character of a hash changed; resume failed with `ValueError: not a sha256 hex
    digest` naming no file or line."""
    journal = _journal(tmp_path)
    journal.append([_step(0, 0), _step(0, 1), _step(0, 2)])
    name = journal.names()[0]
    path = os.path.join(journal.root.path, *journal.prefix.split("/"), name)
    lines = open(path).read().splitlines()
    bad = json.loads(lines[1])
    bad["hash"] = "Z" + bad["hash"][1:]
    lines[1] = json.dumps(bad)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match=rf"journal .*{name} is damaged at line 2: hash \"Z.*\" is not a sha256 hex digest"):
        list(journal.read())


def test_survey_drops_the_damaged_run_from_the_bad_line_on_and_keeps_the_others(tmp_path):
    """What `doctor --fix` does: the bad line, and its run's later steps and events (computed from what
    the bad line recorded), go; everything before it, and the other runs, stay byte for byte."""
    store, exp = _experiment_journal(tmp_path)
    journal = exp.journal
    steps = {(run, k): _line(_step(run, k, store)) for run in (0, 1) for k in range(6)}
    order = [steps[(run, k)] for k in range(6) for run in (0, 1)]  # interleaved, as batches are
    order.insert(9, {"type": "event", "run": 0, "event": "failed", "step": 5, "error": "boom"})  # after run 0 step 4
    bad_at = order.index(steps[(0, 2)])
    order[bad_at] = {**order[bad_at], "hash": "g" + order[bad_at]["hash"][1:]}
    name = _write_lines(journal, order)
    survey = journal.survey()
    [damage] = survey.damaged
    assert (damage.segment, damage.line, damage.run, damage.step) == (name, bad_at + 1, 0, 2)
    assert survey.cuts == {0: 2}
    kept = [(r.run, r.step) for r in survey.records]
    assert kept == [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]  # run 0's failure went too
    before = open(os.path.join(journal.root.path, *journal.prefix.split("/"), name), "rb").read().split(b"\n")
    journal.drop(survey)
    after = open(os.path.join(journal.root.path, *journal.prefix.split("/"), name), "rb").read().split(b"\n")
    assert after == [line for n, line in enumerate(before, 1) if n not in survey.drops[name]]
    assert [(r.run, r.step) for r in journal.read()] == kept
    assert journal.survey().damaged == []


def test_survey_of_a_line_whose_run_is_damaged_drops_the_run_it_was(tmp_path):
    """A line whose run field is bad cannot say which run it was; the steps of that run after it then come
    out of order, and the first of them says which run lost its step."""
    store, exp = _experiment_journal(tmp_path)
    journal = exp.journal
    order = [_line(_step(run, k, store)) for k in range(4) for run in (0, 1)]
    order[2] = {**order[2], "run": -1}  # run 0 step 1
    name = _write_lines(journal, order)
    with pytest.raises(StoreError, match=r"line 3: run -1 is not a run number.*drops this line"):
        list(journal.read())
    survey = journal.survey()
    assert [(d.line, d.run) for d in survey.damaged] == [(3, None), (5, 0)]
    assert survey.cuts == {0: 1}
    assert [(r.run, r.step) for r in survey.records] == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 3)]
    journal.drop(survey)
    assert journal.survey().damaged == [] and len(list(journal.read())) == 5


def test_a_clear_cut_short_leaves_a_journal_that_still_reads_in_order(tmp_path):
    """clear() runs right after the experiment is marked complete: a kill there leaves some files.
    Removed oldest first, the newest file was left alone, starting mid-run ("step 20 of run 0 comes
    before its step 0"); removed newest first, what is left is the journal's beginning."""
    first = _journal(tmp_path)
    for process in range(3):
        Journal(first.root, first.prefix).append([_step(0, 2 * process), _step(0, 2 * process + 1)])
    names = first.names()
    deleted = []
    real_delete = first.root.delete

    def delete_one_then_die(key):
        if deleted:
            raise KeyboardInterrupt  # the kill, after one file
        deleted.append(key)
        real_delete(key)

    first.root.delete = delete_one_then_die
    with pytest.raises(KeyboardInterrupt):
        first.clear()
    first.root.delete = real_delete
    assert deleted == [f"{first.prefix}/{names[-1]}"]
    assert [r.step for r in first.read()] == [0, 1, 2, 3]  # in order: nothing raised


def test_a_complete_experiment_ignores_a_journal_left_behind(client, tmp_path):
    """A complete experiment has everything in Zarr: a file left by a clear cut short (by an older
    version, oldest first: a segment that starts mid-run) must not stop status, resume or doctor."""
    import panicflow
    from panicflow.api import doctor

    store = str(tmp_path / "store")
    eid = panicflow.run_experiment(CONFIG, store=store, client=client)
    exp = Store(store).experiment(eid)
    Journal(exp.root, exp.journal.prefix).append([_step(0, 6), _step(0, 7)])  # a newest file, left alone
    assert exp.journal.names() and exp.read_state()["state"] == "complete"
    status = panicflow.experiment_status(eid, store=store)
    assert status.state == "complete" and status.invocations == 20
    report = doctor(eid, store=store)
    assert {p.kind for p in report.experiments[0].problems} <= {"journal_leftover"}, report.to_dict()
    panicflow.resume_experiment(eid, store=store, client=client)  # no JournalDamaged
    assert panicflow.experiment_status(eid, store=store).state == "complete"
    assert not exp.journal.names()  # the resume's end cleared it
