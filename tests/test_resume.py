"""Kill the whole experiment process (coordinator, scheduler and workers) with SIGKILL, resume,
and compare with an uninterrupted run: every fixed-seed run bit for bit, and unseeded runs
complete, with no gap or duplicate, each stored seed reproducing its output.

The kills at each stage (early and mid runs, embeddings, diagrams) are made on one experiment,
each in a process that resumed from the kill before: every kill point is still reached, left
interrupted and resumed from, and what the last resume ends with must equal the uninterrupted run
(an experiment per kill point, each then resumed in full, took four times the time and checked
no more: tests/test_faults.py kills the coordinator alone, at points of every stage, the same way)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import faults_util as fu
import panicflow

FIXED = {  # every run fixed-seed: the whole result is reproducible bit for bit
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [22, 57, 5],
    "prompts": ["a cat", "a dog"],
    "embedding_models": ["DummyText", "DummyVision2"],
    "max_length": 60,
    "batch_size": {"DummyT2I": 3, "DummyI2T": 3},
    "persistence": {"maxdim": 1},
}
# FIXED's runs (in the same order: seed by seed, prompt by prompt) and two unseeded ones: the
# uninterrupted run of FIXED is the reference of its seeded runs ("a cat" loops at step 28 with seed
# 22; every other run goes to max_length), so that one experiment is built for both references
CONFIG = {**FIXED, "seeds": [*FIXED["seeds"], -1]}


def _start(config_path, store, *command):
    """``panicflow experiment run CONFIG`` (or ``experiment COMMAND...``) on an embedded one-worker cluster."""
    env = {**os.environ, "PANICFLOW_TEST_MODELS": "1"}
    command = command or ("run", str(config_path))
    return subprocess.Popen(
        [sys.executable, "-m", "panicflow", "experiment", *command, "--store", store, "--workers", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )


_watches: dict[str, fu.Watch] = {}


def _count(store, pattern) -> int:
    if pattern == JOURNAL:  # journaled steps (one appended file per coordinator process, all kept until complete),
        # read on from where the last look stopped: a look parsing every journal again, 20 times a second,
        # took CPU from the coordinator it watches
        return _watches.setdefault(store, fu.Watch(store)).steps()
    marked = 0  # runs set in the marker arrays matching pattern (a chunk may hold many runs)
    for path in glob.glob(os.path.join(store, pattern)):
        try:
            marked += sum(bool(v) for v in zarr.open_array(path, mode="r")[:].tolist())
        except Exception:  # noqa: BLE001 - not there yet
            continue
    return marked


def _reached(store, pattern, count) -> bool:
    return _count(store, pattern) >= count


def _kill_when(proc, store, pattern, count, timeout=120):
    """SIGKILL the process group once ``count`` steps are journaled, or runs are set in the markers ``pattern`` names."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _reached(store, pattern, count):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


def _snapshot(store, eid):
    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds.load()
    out = {"root": root}
    for m in CONFIG["embedding_models"]:
        out[f"e/{m}"] = tree[f"embeddings/{m}"].ds.load()
        out[f"d/{m}"] = tree[f"diagrams/{m}"].ds.load()
    return out


@pytest.fixture(scope="module")
def fixed_experiment(client, tmp_path_factory):
    """(store, id) of an uninterrupted run of FIXED, the reference of every test here that compares."""
    store = str(tmp_path_factory.mktemp("fixed") / "store")
    return store, panicflow.run_experiment(FIXED, store=store, client=client)


@pytest.fixture(scope="module")
def uninterrupted(fixed_experiment):
    return _snapshot(*fixed_experiment)


JOURNAL = "experiments/*/journal/*.jsonl"
EMBEDDED = "experiments/*/data.zarr/embeddings/*/done"
DIAGRAMS = "experiments/*/data.zarr/diagrams/*/status"


# where the process is killed, in turn: (stage, what is counted, how many); a count the experiment has
# passed when a resume starts becomes one more than it has, so that every kill interrupts new work
KILLS = [("early-runs", JOURNAL, 12), ("mid-runs", JOURNAL, 150), ("embeddings", EMBEDDED, 3), ("diagrams", DIAGRAMS, 4)]


def test_resume_after_sigkills_at_every_stage_equals_uninterrupted(client, tmp_path, uninterrupted):
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(CONFIG))
    store = str(tmp_path / "store")
    eid = None
    for stage, pattern, count in KILLS:
        target = max(count, _count(store, pattern) + 1)
        proc = _start(cfg_path, store, *(("resume", eid) if eid else ()))
        killed = _kill_when(proc, store, pattern, target)
        assert killed, f"{stage}: the experiment finished before the kill point ({target}); make it longer"
        [eid] = [e["id"] for e in panicflow.list_experiments(store)]
        before = panicflow.experiment_status(eid, store=store)
        assert before.state == "interrupted", (stage, before)
    panicflow.resume_experiment(eid, store=store, client=client)
    after = panicflow.experiment_status(eid, store=store)
    assert after.state == "complete"
    got, want = _snapshot(store, eid), uninterrupted
    seeds = got["root"].seed.values
    seeded = [i for i, s in enumerate(seeds) if s != -1]
    unseeded = [i for i, s in enumerate(seeds) if s == -1]
    # the seeded runs are FIXED's, in its order: the uninterrupted run of FIXED is theirs
    assert seeded == list(range(len(want["root"].seed))) and unseeded, seeds
    np.testing.assert_array_equal(seeds[seeded], want["root"].seed.values)
    r, w = got["root"], want["root"]
    for name in ("length", "stop_reason", "loop_start", "loop_period", "model", "kind", "output_hash", "text",
                 "invocation_seed"):
        np.testing.assert_array_equal(r[name].values[seeded], w[name].values, err_msg=name)
    for m in CONFIG["embedding_models"]:
        np.testing.assert_array_equal(got[f"e/{m}"].vector.values[seeded], want[f"e/{m}"].vector.values)
        for name in ("status", "n_points", "entropy"):
            np.testing.assert_array_equal(got[f"d/{m}"][name].values[seeded], want[f"d/{m}"][name].values)
        for name, pad in (("birth", np.nan), ("death", np.nan), ("dimension", -1)):
            # the pair axis is as wide as the largest diagram of any run, unseeded runs' included, whose
            # draws differ between the two experiments: compare the common width, the rest is padding
            g, w_ = got[f"d/{m}"][name].values[seeded], want[f"d/{m}"][name].values
            k = min(g.shape[1], w_.shape[1])
            np.testing.assert_array_equal(g[:, :k], w_[:, :k], err_msg=name)
            for extra in (g[:, k:], w_[:, k:]):
                assert (np.isnan(extra) if np.isnan(pad) else extra == pad).all(), name
    for i in unseeded:  # complete, no gap, no duplicate
        n = CONFIG["max_length"]
        assert int(r.length[i]) == n and r.stop_reason[i].item() == "length"
        assert (r.output_hash[i].values != "").all()
        assert not np.isnat(r.started_at[i].values).any()
        for m in CONFIG["embedding_models"]:
            assert got[f"d/{m}"].status[i].item() == "ok"
    # the journal is gone once everything is in Zarr
    assert not glob.glob(os.path.join(store, JOURNAL))


def test_outputs_lost_in_a_power_cut_are_computed_again(client, tmp_path):
    """Workers do not flush outputs to disk (issue 7 item 8): a power cut may lose the newest objects
    while their journal lines survived. Simulated after a SIGKILL: the newest image of a seeded run
    is torn (emptied), the newest text of another run deleted. Resume must compute the image (and
    the steps after it) again, write the text again from its journal line, and end exactly where an
    uninterrupted run ends."""
    from oracle import reference_run
    from panicflow.store import Store

    config = {**CONFIG, "seeds": [-1, 8], "prompts": ["a lighthouse in a storm"], "max_length": 100}
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(config))
    store = str(tmp_path / "store")
    proc = _start(cfg_path, store)
    assert _kill_when(proc, store, JOURNAL, 40), "the experiment finished before the kill point"
    st = Store(store)
    [eid] = st.experiment_ids()
    records = [r for r in st.experiment(eid).journal.read() if hasattr(r, "hash")]
    newest = {}
    for r in records:
        newest[(r.run, r.kind)] = r
    torn, lost = newest[(0, "image")], newest[(0, "text")]  # run 0 is unseeded: it goes to max_length
    path = lambda h: os.path.join(store, "objects", h[:2], h[2:4], h)  # noqa: E731
    open(path(torn.hash), "wb").close()
    os.remove(path(lost.hash))
    panicflow.resume_experiment(eid, store=store, client=client)
    if lost.step < torn.step:  # else the step was dropped with the ones after the torn image
        assert st.objects.verify(lost.hash)  # written again from its journal line
    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    for i, seed in enumerate(root.seed.values):
        n = int(root.length[i])
        hashes = root.output_hash[i, :n].values
        assert all(st.objects.verify(h) for h in hashes)  # the torn image is not referenced, or was made again
        if seed != -1:
            want = reference_run(tuple(config["networks"][0]), int(seed), config["prompts"][0], config["max_length"])
            assert list(root.output_hash[i, :n].values) == want.hashes[:n]
    from panicflow.api import doctor

    assert doctor(eid, store=store).clean


# ------------------------------------------------- a journal line damaged in place (issue 21 item 3)
# when and where things ran, and which model call computed each output (a run computed again from a
# dropped step goes in other batches than its group did): what a repeat does not reproduce, the outputs aside
UNREPEATABLE = ("started_at", "ended_at", "worker", "batch_id", "batch_size", "batch_position")


def _all_arrays(store, eid):
    g = zarr.open_group(os.path.join(store, "experiments", eid, "data.zarr"), mode="r")
    out = {}

    def walk(group, prefix=""):
        for name, node in group.members():
            if isinstance(node, zarr.Array):
                if name not in UNREPEATABLE:
                    out[prefix + name] = node[...]
            else:
                walk(node, f"{prefix}{name}/")

    walk(g)
    return out


@pytest.fixture(scope="module")
def fixed_reference(fixed_experiment):
    return _all_arrays(*fixed_experiment)


class _Stop(Exception):
    """Stops the coordinator after a number of journal appends, as a crash would."""


def _damage_hash(line: dict) -> None:
    line["hash"] = "g" + line["hash"][1:]  # one character of the digest: no longer hex


def _damage_step(line: dict) -> None:
    line["step"] = -line["step"]


@pytest.mark.parametrize("damage", [_damage_hash, _damage_step], ids=["hash-not-hex", "step-negative"])
def test_a_damaged_journal_line_is_named_found_by_doctor_and_fixed_bit_for_bit(client, tmp_path, monkeypatch,
                                                                              fixed_reference, damage):
    """A journal line that parses but holds a bad value: resume said `ValueError: not a sha256 hex digest`
    (no file, no line, then a zarr atexit traceback) and doctor only "interrupted". Now resume names the
    file and line in one line (exit 2), doctor reports it, `doctor --fix` drops that run's steps from the
    line on, and resume computes them again: the result equals an uninterrupted run, array for array."""
    from panicflow.api import doctor
    from panicflow.store import Store
    from panicflow.store.journal import Journal

    store = str(tmp_path / "store")
    append, calls, started = Journal.append, [], []

    def append_then_stop(self, records):
        append(self, records)
        calls.append(1)
        if len(calls) == 14:
            raise _Stop

    with monkeypatch.context() as m:
        m.setattr(Journal, "append", append_then_stop)
        with pytest.raises(_Stop):
            panicflow.run_experiment(FIXED, store=store, client=client, on_start=lambda exp, _: started.append(exp.id))
    [eid] = started
    exp = Store(store).experiment(eid)
    [segment] = exp.journal.names()
    path = os.path.join(store, "experiments", eid, "journal", segment)
    lines = open(path).read().splitlines()
    records = [json.loads(line) for line in lines]
    # a step of run 1 with later lines of run 1 after it: those were computed from it
    at = next(i for i, r in enumerate(records) if r["type"] == "step" and r["run"] == 1 and r["step"] == 2)
    assert any(r["run"] == 1 and r["step"] > 2 for r in records[at + 1:])
    damage(records[at])
    lines[at] = json.dumps(records[at])
    open(path, "w").write("\n".join(lines) + "\n")

    found = doctor(eid, store=store)
    [p] = [p for p in found.problems if p.kind == "journal"]
    assert p.path.endswith(f"{segment}:{at + 1}") and p.run == 1 and f"line {at + 1}" in p.detail

    proc = subprocess.run(
        [sys.executable, "-m", "panicflow", "experiment", "resume", eid, "--store", store,
         "--scheduler", client.scheduler.address],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PANICFLOW_TEST_MODELS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"{segment} is damaged at line {at + 1}" in error and f"panicflow doctor {eid} --fix" in error
    for noise in ("Traceback", "Exception ignored", "Cannot close a running event loop"):
        assert noise not in proc.stderr, proc.stderr

    fixed = doctor(eid, store=store, fix=True, client=client)
    assert [p.fixed for p in fixed.problems if p.kind == "journal"] == [True], fixed.to_dict()
    panicflow.resume_experiment(eid, store=store, client=client)
    assert panicflow.experiment_status(eid, store=store).state == "complete"
    got = _all_arrays(store, eid)
    assert sorted(got) == sorted(fixed_reference)
    for name, want in fixed_reference.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    st = Store(store)
    assert all(st.objects.verify(h) for h in got["output_hash"].ravel() if h)
    assert doctor(eid, store=store).clean


def test_a_step_computed_again_supersedes_its_older_records_on_the_next_resume(client, tmp_path):
    """After a power cut lost an output, its step and those after it are computed again and
    journaled again (``_verify_recent_outputs``). Were the experiment stopped once more before it
    ended, the next resume must go on from the newer records: keeping the older ones (the first
    record of each step, as load did) went back to the output the power cut had lost."""
    from PIL import Image

    from panicflow.config import validate_config
    from panicflow.scheduler.coordinator import Coordinator
    from panicflow.store import Store
    from panicflow.store.experiment import Experiment
    from panicflow.store.journal import StepRecord

    st = Store(str(tmp_path / "store"), create=True)
    cfg = validate_config({"networks": [["DummyT2I", "DummyI2T"]], "seeds": [-1], "prompts": ["a cat"],
                           "embedding_models": ["DummyText"], "max_length": 10})
    exp = Experiment.create(st.root, st.new_experiment_id(), cfg)

    def step(k: int, tag: str) -> StepRecord:
        if k % 2 == 0:
            digest, text, model, kind = st.objects.put_image(Image.new("RGB", (8, 8), (k, len(tag), 0))), None, "DummyT2I", "image"
        else:
            text = f"caption {k} {tag}"
            digest, model, kind = st.objects.put_text(text), "DummyI2T", "text"
        return StepRecord(run=0, step=k, model=model, kind=kind, hash=digest, text=text, seed=k + len(tag),
                          started_us=1_000_000 + k, ended_us=1_000_001 + k)

    first = [step(k, "a") for k in range(5)]
    again = [step(k, "bb") for k in (3, 4)]  # steps 3 and 4 computed again, with new draws
    with exp.take():
        exp.journal.append(first)
        exp.journal.append(again)
        exp.journal.close()
        coord = Coordinator(client, st, exp)
        coord.load()
    run = coord.runs[0]
    assert run.n_steps == 5
    assert [r.hash for r in run.pending] == [r.hash for r in first[:3] + again]
    assert run.last.hash == again[-1].hash
    # the same record twice (an append written again) changes nothing
    coord2_records = [r.hash for r in first[:3] + again]
    with exp.take():
        exp.journal.append([again[0]])
        exp.journal.close()
        coord2 = Coordinator(client, st, exp)
        coord2.load()
    assert [r.hash for r in coord2.runs[0].pending] == coord2_records
