"""`panicflow doctor`: damage a finished experiment on purpose, one fault per test, and check that
doctor finds it, that --fix repairs it (where the store holds what it takes), that a last check
is clean, and that the repaired store equals a copy taken before the damage."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import panicflow
from panicflow.api import doctor
from panicflow.doctor import PARAMS
from panicflow.store import experiment

CONFIG = {
    "name": "doctor",
    "networks": [["DummyT2I", "DummyI2T"]],
    # 22 loops after 28 steps, 57 reaches max_length, -1 is unseeded (a fresh stored seed per step)
    "seeds": [22, 57, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 30,
}
LOOP, LENGTH, UNSEEDED = 0, 1, 2


@pytest.fixture(scope="module")
def pristine(client, tmp_path_factory):
    """(store, id, snapshot) of one finished experiment, never modified. Laid out one run per chunk, as
    every experiment before run_chunks: these tests damage one run's chunks (tests/test_layout_scale.py
    damages chunks that runs share, in the layout new experiments get)."""
    store = str(tmp_path_factory.mktemp("doctor") / "store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment, "RUN_CHUNKS", experiment.ONE_RUN_PER_CHUNK)
        eid = panicflow.run_experiment(CONFIG, store=store, client=client)
    g = zarr.open_group(_data(store, eid), mode="r")
    assert list(g["stop_reason"][:]) == ["loop", "length", "length"]
    return store, eid, _snapshot(store, eid)


@pytest.fixture
def exp(pristine, tmp_path):
    """A fresh copy of the pristine store to damage: (store, id)."""
    src, eid, _ = pristine
    store = str(tmp_path / "store")
    shutil.copytree(src, store)
    return store, eid


def _data(store, eid):
    return os.path.join(store, "experiments", eid, "data.zarr")


def _snapshot(store, eid):
    """Every array's values, every zarr.json and every object's bytes."""
    data = _data(store, eid)
    arrays = {}

    def walk(group, prefix=""):
        for name, node in group.members():
            if isinstance(node, zarr.Array):
                arrays[prefix + name] = node[...]
            else:
                walk(node, f"{prefix}{name}/")

    walk(zarr.open_group(data, mode="r"))
    metas = {os.path.relpath(p, data): Path(p).read_bytes() for p in glob.glob(f"{data}/**/zarr.json", recursive=True)}
    metas["zarr.json"] = Path(data, "zarr.json").read_bytes()
    objects = {os.path.relpath(p, store): Path(p).read_bytes() for p in glob.glob(f"{store}/objects/*/*/*")}
    return {"arrays": arrays, "meta": metas, "objects": objects}


# when and on which worker each embedding and diagram task ran: a repair that runs one again records its new run
TASK_TIMES = {f"{stage}/{m}/{name}" for stage in ("embeddings", "diagrams") for m in CONFIG["embedding_models"]
              for name in ("started_at", "ended_at", "worker")}


def assert_same(pristine, store, eid, skip=()):
    want = pristine[2]
    got = _snapshot(store, eid)
    assert sorted(got["arrays"]) == sorted(want["arrays"])
    for name, values in want["arrays"].items():
        if name not in skip and name not in TASK_TIMES:
            np.testing.assert_array_equal(got["arrays"][name], values, err_msg=name)
    assert got["objects"].keys() == want["objects"].keys()
    for key, data in want["objects"].items():
        assert got["objects"][key] == data, key
    assert got["meta"] == want["meta"]


def kinds(report, fixed=None):
    return {p.kind for p in report.problems if fixed is None or p.fixed == fixed}


def check_fix_check(store, eid, kind, client):
    """doctor finds ``kind``; --fix repairs everything; a last check is clean."""
    found = doctor(eid, store=store)
    assert found.exit_code == 1 and kind in kinds(found), found.to_dict()
    fixed = doctor(eid, store=store, fix=True, client=client)
    assert fixed.exit_code == 0, fixed.to_dict()
    assert kind in kinds(fixed, fixed=True)
    assert fixed.experiments[0].actions
    after = doctor(eid, store=store)
    assert after.clean and after.exit_code == 0, after.to_dict()
    return found, fixed


def _array(store, eid, path):
    return zarr.open_array(_data(store, eid), path=path, mode="r+")


def _object_path(store, digest):
    return os.path.join(store, "objects", digest[:2], digest[2:4], digest)


def _output(store, eid, run, kind, nth=2):
    """(step, digest) of the nth output of ``kind`` in ``run``."""
    g = zarr.open_group(_data(store, eid), mode="r")
    steps = [k for k, v in enumerate(g["kind"][run]) if v == kind]
    return steps[nth], str(g["output_hash"][run, steps[nth]])


def _flip(path, at):
    data = bytearray(Path(path).read_bytes())
    data[at] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "panicflow", "doctor", *args], capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PANICFLOW_TEST_MODELS": "1"},
    )


# ------------------------------------------------------------------------------- CLI, exit codes
def test_clean_store_exits_0(pristine):
    store, eid, _ = pristine
    proc = cli("--store", store, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [e["id"] for e in out["experiments"]] == [eid]
    assert out["experiments"][0]["problems"] == []
    assert out["summary"]["clean"] is True and out["summary"]["problems"] == 0


def test_user_errors_exit_2(pristine, tmp_path):
    store, _, _ = pristine
    proc = cli("no-such-experiment", "--store", store)
    assert proc.returncode == 2 and "no experiment" in proc.stderr
    proc = cli("--store", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and "no panicflow store" in proc.stderr


def test_cli_finds_and_fixes_a_deleted_diagram_status(pristine, exp):
    store, eid = exp
    os.remove(os.path.join(_data(store, eid), "diagrams", "DummyVision", "status", "c", str(LENGTH)))
    proc = cli(eid, "--store", store, "--json")
    assert proc.returncode == 1, proc.stderr
    [problem] = json.loads(proc.stdout)["experiments"][0]["problems"]
    assert problem["kind"] == "diagram_missing" and problem["run"] == LENGTH and problem["model"] == "DummyVision"
    assert problem["fixed"] is False
    proc = cli(eid, "--store", store, "--fix", "--workers", "1", "--json")  # starts its own LocalCluster to resume
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["summary"] == {**out["summary"], "problems": 1, "fixed": 1, "remaining": 0, "clean": True}
    assert doctor(eid, store=store).clean
    assert_same(pristine, store, eid)
    assert panicflow.experiment_status(eid, store=store).state == "complete"


def test_cli_exit_1_when_a_problem_remains(exp):
    store, eid = exp
    os.remove(os.path.join(_data(store, eid), "started_at", "c", str(LENGTH), "0"))
    proc = cli("--store", store, "--fix", "--json", "--workers", "1")
    assert proc.returncode == 1, proc.stderr
    [problem] = json.loads(proc.stdout)["experiments"][0]["problems"]
    assert problem["kind"] == "run_gap" and problem["fixed"] is False
    assert "cannot be rebuilt" in problem["detail"] and "journal" in problem["detail"]
    human = cli(eid[:12], "--store", store)  # an id prefix; the table goes to stderr
    assert human.returncode == 1 and "run_gap" in human.stderr and "started_at" in human.stderr


# --------------------------------------------------------------------------------------- objects
def test_image_object_with_a_flipped_byte_is_rebuilt_by_the_model(pristine, exp, client):
    store, eid = exp
    step, digest = _output(store, eid, LOOP, "image")
    _flip(_object_path(store, digest), 40)
    found, _ = check_fix_check(store, eid, "object_corrupt", client)
    [p] = found.problems
    assert (p.run, p.step, p.model) == (LOOP, step, "DummyT2I")
    assert_same(pristine, store, eid)


def test_text_object_with_a_flipped_byte_is_rewritten_from_the_text_array(pristine, exp, client):
    store, eid = exp
    _, digest = _output(store, eid, LENGTH, "text")
    _flip(_object_path(store, digest), 3)
    check_fix_check(store, eid, "object_corrupt", client)
    assert_same(pristine, store, eid)


@pytest.mark.parametrize("kind, run", [("image", UNSEEDED), ("text", LOOP)])
def test_deleted_object_is_rebuilt(pristine, exp, client, kind, run):
    store, eid = exp
    _, digest = _output(store, eid, run, kind, nth=4)
    os.remove(_object_path(store, digest))
    check_fix_check(store, eid, "object_missing", client)
    assert_same(pristine, store, eid)


@pytest.mark.skipif(PARAMS is None, reason="no parameters_hash column in this layout")
def test_deleted_parameters_object_is_rebuilt_from_the_model(pristine, exp, client):
    store, eid = exp
    digest = str(zarr.open_array(_data(store, eid), path=PARAMS, mode="r")[LOOP, 1])
    os.remove(_object_path(store, digest))
    found, _ = check_fix_check(store, eid, "object_missing", client)
    assert "parameters object" in found.problems[0].detail
    assert_same(pristine, store, eid)


def test_image_that_the_model_does_not_reproduce_is_reported_unrepairable(pristine, exp):
    # a different stored seed stands in for a non-deterministic model: the re-run gives another image
    store, eid = exp
    step, digest = _output(store, eid, UNSEEDED, "image")
    os.remove(_object_path(store, digest))
    seeds = _array(store, eid, "invocation_seed")
    seeds[UNSEEDED, step] = int(seeds[UNSEEDED, step]) + 1
    report = doctor(eid, store=store, fix=True)
    assert report.exit_code == 1
    [p] = [p for p in report.problems if p.kind == "object_missing"]
    assert not p.fixed and "not deterministic" in p.detail
    assert not os.path.exists(_object_path(store, digest))  # nothing wrong was written


# ------------------------------------------------------------------------- embeddings, diagrams
def test_deleted_embedding_chunk_is_recomputed_by_resume(pristine, exp, client):
    store, eid = exp
    os.remove(os.path.join(_data(store, eid), "embeddings", "DummyText", "vector", "c", str(LOOP), "0", "0"))
    found, fixed = check_fix_check(store, eid, "embedding_rows", client)
    [p] = [p for p in found.problems if p.kind == "embedding_rows"]
    assert (p.run, p.model) == (LOOP, "DummyText")
    assert any("resum" in a for a in fixed.experiments[0].actions)
    assert_same(pristine, store, eid)
    assert panicflow.experiment_status(eid, store=store).state == "complete"


def test_entropy_that_disagrees_with_the_pairs_is_recomputed(pristine, exp, client):
    store, eid = exp
    _array(store, eid, "diagrams/DummyText/entropy")[UNSEEDED, 1] = 0.25
    check_fix_check(store, eid, "diagram_inconsistent", client)
    assert_same(pristine, store, eid)


# -------------------------------------------------------------------------------- zarr metadata
@pytest.mark.parametrize(
    "node",
    ["output_hash", "embeddings/DummyText/vector", "diagrams/DummyVision/birth", "embeddings/DummyText", ""],
    ids=["root-array", "vector", "resizable-pairs", "group", "root-group"],
)
def test_truncated_zarr_json_is_regenerated(pristine, exp, client, node):
    store, eid = exp
    path = os.path.join(_data(store, eid), node, "zarr.json")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    found, _ = check_fix_check(store, eid, "metadata", client)
    assert [p.kind for p in found.problems] == ["metadata"]  # nothing behind it is blamed
    assert_same(pristine, store, eid)  # zarr.json byte for byte, chunks untouched


# --------------------------------------------------------------------------- (run, step) arrays
@pytest.mark.parametrize(
    "array, run, kind",
    [
        ("output_hash", LOOP, "run_gap"),  # images re-run from the stored texts, texts hashed
        ("output_hash", UNSEEDED, "run_gap"),  # with the stored per-step seeds
        ("text", LENGTH, "run_gap"),  # read back from the text objects
        ("kind", LENGTH, "run_gap"),  # from the config
        ("length", LOOP, "stop_reason"),  # from the loop in the outputs
        ("stop_reason", LENGTH, "run_unended"),
        ("loop_start", LOOP, "stop_reason"),
        *([(PARAMS, UNSEEDED, "run_gap")] if PARAMS else []),  # what the models report, if the store holds it
    ],
)
def test_deleted_root_chunk_is_rebuilt(pristine, exp, client, array, run, kind):
    store, eid = exp
    chunk = os.path.join(_data(store, eid), array, "c", str(run))
    os.remove(chunk if os.path.isfile(chunk) else os.path.join(chunk, "0"))
    check_fix_check(store, eid, kind, client)
    assert_same(pristine, store, eid)


def test_outputs_and_texts_both_lost_are_rebuilt_from_step_0(pristine, exp, client):
    store, eid = exp
    for array in ("output_hash", "text"):
        os.remove(os.path.join(_data(store, eid), array, "c", str(LOOP), "0"))
    _, fixed = check_fix_check(store, eid, "run_gap", client)
    assert any("re-ran step(s) 0-27" in a for a in fixed.experiments[0].actions)
    assert_same(pristine, store, eid)


@pytest.mark.parametrize("array, run", [("started_at", LOOP), ("invocation_seed", UNSEEDED)])
def test_what_only_the_journal_held_is_reported_unrepairable(pristine, exp, array, run):
    store, eid = exp
    os.remove(os.path.join(_data(store, eid), array, "c", str(run), "0"))
    report = doctor(eid, store=store, fix=True)
    assert report.exit_code == 1
    [p] = report.problems
    assert (p.kind, p.run, p.path, p.fixed) == ("run_gap", run, array, False)
    assert "cannot be rebuilt" in p.detail and "journal" in p.detail
    assert_same(pristine, store, eid, skip={array})


def test_seeded_run_invocation_seed_comes_from_the_config(pristine, exp, client):
    store, eid = exp
    os.remove(os.path.join(_data(store, eid), "invocation_seed", "c", str(LENGTH), "0"))
    check_fix_check(store, eid, "run_gap", client)
    assert_same(pristine, store, eid)


@pytest.mark.parametrize(
    "chunk", ["output_hash/c/2/0", "embeddings/DummyVision/vector/c/0/0/0", "diagrams/DummyText/status/c/1"]
)
def test_undecodable_chunk_is_replaced(pristine, exp, client, chunk):
    store, eid = exp
    Path(_data(store, eid), *chunk.split("/")).write_bytes(b"\x00not a chunk" * 5)
    found, _ = check_fix_check(store, eid, "unreadable", client)
    assert any(p.path == chunk for p in found.problems)
    assert_same(pristine, store, eid)


def test_stop_reason_that_disagrees_with_the_outputs(pristine, exp, client):
    store, eid = exp
    _array(store, eid, "loop_period")[LOOP] = 3
    found, _ = check_fix_check(store, eid, "stop_reason", client)
    assert "its outputs give (loop, 28, 1, 26)" in found.problems[0].detail
    assert_same(pristine, store, eid)


def test_a_run_that_went_on_after_its_loop_is_unrepairable(exp):
    store, eid = exp
    hashes = _array(store, eid, "output_hash")
    hashes[LENGTH, 9] = hashes[LENGTH, 3]  # a seeded run must have stopped at this repeat
    report = doctor(eid, store=store)
    details = " ".join(p.detail for p in report.problems if p.kind == "stop_reason")
    assert "went on after its output at step 9 repeated step 3" in details


# ------------------------------------------------------------------------------ whole store
def test_orphan_folder_and_damaged_experiment_json(pristine, exp):
    store, eid = exp
    os.makedirs(os.path.join(store, "experiments", "20200101-000000-abcdef", "data.zarr"))
    broken = os.path.join(store, "experiments", "20200101-000001-broken")
    shutil.copytree(os.path.join(store, "experiments", eid), broken)
    Path(broken, "experiment.json").write_text("{")
    report = doctor(store=store, fix=True)
    by_id = {e.id: e for e in report.experiments}
    assert [p.kind for p in by_id["20200101-000000-abcdef"].problems] == ["orphan"]
    assert by_id["20200101-000000-abcdef"].problems[0].fixed
    assert not os.path.exists(os.path.join(store, "experiments", "20200101-000000-abcdef"))
    [p] = by_id["20200101-000001-broken"].problems
    assert p.kind == "experiment" and not p.fixed and "damaged" in p.detail
    assert by_id[eid].problems == []
    assert report.exit_code == 1


def test_running_experiment_is_checked_but_not_touched(exp):
    store, eid = exp
    e = panicflow.store.Store(store).experiment(eid)
    with e.take():  # as a coordinator does: this process, alive, renewing its lease
        e.write_state("running")
        assert socket.gethostname() == e.read_state()["host"]
        _, digest = _output(store, eid, LOOP, "text")
        os.remove(_object_path(store, digest))
        report = doctor(eid, store=store, fix=True)
        [p] = report.problems
        assert p.kind == "object_missing" and not p.fixed and "running" in p.detail
        assert not os.path.exists(_object_path(store, digest))


# ----------------------------------------------------------------------- checksums (issue 8 item 5)
def _vector_chunk(store, eid, run=LOOP, model="DummyText"):
    return os.path.join(_data(store, eid), "embeddings", model, "vector", "c", str(run), "0", "0")


def _edit_a_value(path):
    """Replace the first non-NaN float32 of an uncompressed vector chunk by a plausible other value."""
    data = bytearray(Path(path).read_bytes())
    values = np.frombuffer(bytes(data[:-4]), dtype="<f4")  # the last 4 bytes are the crc32c
    at = int(np.flatnonzero(~np.isnan(values))[0])
    data[4 * at: 4 * at + 4] = np.float32(values[at] + 0.125).tobytes()
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped-byte", "edited-value"])
def test_a_changed_embedding_chunk_fails_its_checksum(pristine, exp, client, damage):
    """Vectors are stored uncompressed: before chunks had checksums, either change read back as
    another valid float and doctor was clean."""
    store, eid = exp
    path = _vector_chunk(store, eid)
    if damage == "flipped-byte":
        _flip(path, 100)
    else:
        _edit_a_value(path)
    found, _ = check_fix_check(store, eid, "unreadable", client)
    [p] = [p for p in found.problems if p.kind == "unreadable"]
    assert p.path == f"embeddings/DummyText/vector/c/{LOOP}/0/0" and p.run == LOOP
    assert "no longer match their crc32c checksum" in p.detail
    assert_same(pristine, store, eid)


def _strip_checksums(store, eid):
    """Make the experiment look created before chunks had checksums: no crc32c codec in any
    zarr.json, no 4-byte checksum at the end of any chunk."""
    data = _data(store, eid)
    for meta in glob.glob(f"{data}/**/zarr.json", recursive=True):
        doc = json.loads(Path(meta).read_text())
        if doc.get("node_type") != "array":  # the root's consolidated copy of every node's metadata too
            for node in (doc.get("consolidated_metadata") or {}).get("metadata", {}).values():
                if "codecs" in node:
                    node["codecs"] = [c for c in node["codecs"] if c["name"] != "crc32c"]
            Path(meta).write_text(json.dumps(doc, indent=2))
            continue
        doc["codecs"] = [c for c in doc["codecs"] if c["name"] != "crc32c"]
        Path(meta).write_text(json.dumps(doc, indent=2))
        for chunk in Path(meta).parent.glob("c/**/*"):
            if chunk.is_file():
                chunk.write_bytes(chunk.read_bytes()[:-4])


def test_a_store_without_checksums_still_opens_and_doctor_says_so(exp, tmp_path):
    store, eid = exp
    _strip_checksums(store, eid)
    tree = panicflow.open_experiment(eid, store=store)
    assert list(tree["/"].ds.stop_reason.values) == ["loop", "length", "length"]
    report = doctor(eid, store=store)
    assert report.clean, report.to_dict()
    [note] = report.experiments[0].notes
    assert "created without chunk checksums" in note
    proc = cli(eid, "--store", store)
    assert proc.returncode == 0 and "without chunk checksums" in proc.stderr


def test_a_truncated_zarr_json_of_a_store_without_checksums_is_regenerated_without(exp, client):
    store, eid = exp
    _strip_checksums(store, eid)
    path = Path(_data(store, eid), "output_hash", "zarr.json")
    before = path.read_bytes()
    path.write_bytes(before[:40])
    check_fix_check(store, eid, "metadata", client)
    assert json.loads(path.read_bytes())["codecs"] == json.loads(before)["codecs"]


# -------------------------------------------------------------- unfinished experiments (item 6)
def test_markers_cleared_by_a_killed_fix_say_to_resume(pristine, exp, client):
    """doctor --fix clears markers, marks the experiment interrupted and resumes; if that resume
    dies, the next doctor must not be clean (it was: nothing is missing while not finished)."""
    from panicflow.doctor import run_doctor

    store, eid = exp
    _array(store, eid, "diagrams/DummyText/entropy")[UNSEEDED, 1] = 0.25

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    fixing = run_doctor(eid, store, fix=True, client=client, resume=killed)
    assert fixing.exit_code == 1
    report = doctor(eid, store=store)
    [p] = report.problems
    assert p.kind == "interrupted" and report.exit_code == 1
    assert f"run `panicflow experiment resume {eid}`" in p.detail
    assert "1 diagram marker(s) to write" in p.detail
    panicflow.resume_experiment(eid, store=store, client=client)
    assert doctor(eid, store=store).clean
    assert_same(pristine, store, eid)


def test_a_lost_state_json_says_to_resume(exp, client):
    store, eid = exp
    os.remove(os.path.join(store, "experiments", eid, "state.json"))
    report = doctor(eid, store=store)
    [p] = report.problems
    assert p.kind == "interrupted" and "has no state.json" in p.detail
    assert "nothing left to compute" in p.detail and f"panicflow experiment resume {eid}" in p.detail
    proc = cli(eid, "--store", store, "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["experiments"][0]["problems"][0]["kind"] == "interrupted"
    panicflow.resume_experiment(eid, store=store, client=client)
    assert doctor(eid, store=store).clean


# ------------------------------------------------------------ vector digests (issue 21 item 4)
def _first_vector_step(store, eid, run=LOOP, model="DummyText"):
    rows = zarr.open_array(_data(store, eid), path=f"embeddings/{model}/vector", mode="r")[run]
    return int(np.flatnonzero(~np.isnan(rows).any(axis=1))[0])


def test_a_vector_changed_through_zarr_fails_its_digest_and_is_recomputed(pristine, exp, client):
    """Zarr writes a new checksum with the chunk, and the NaN pattern is unchanged: doctor was clean. The
    digest recorded beside `done` when the vectors were committed is not."""
    store, eid = exp
    step = _first_vector_step(store, eid)
    vectors = _array(store, eid, "embeddings/DummyText/vector")
    vectors[LOOP, step, 0] = vectors[LOOP, step, 0] + np.float32(0.125)
    found, fixed = check_fix_check(store, eid, "embedding_digest", client)
    [p] = found.problems
    assert (p.kind, p.run, p.model) == ("embedding_digest", LOOP, "DummyText")
    assert f"run {LOOP} / DummyText" in p.detail and p.path == "embeddings/DummyText/vector_sha256"
    assert any("resum" in a for a in fixed.experiments[0].actions)
    assert_same(pristine, store, eid)


def test_every_embedded_run_records_the_digest_of_its_vectors(pristine):
    from panicflow.store.experiment import vector_digest

    store, eid, _ = pristine
    g = zarr.open_group(_data(store, eid), mode="r")
    lengths = g["length"][:]
    for m in CONFIG["embedding_models"]:
        digests, done, vectors = g[f"embeddings/{m}/vector_sha256"], g[f"embeddings/{m}/done"], g[f"embeddings/{m}/vector"]
        assert (digests.chunks, digests.shards) == (done.chunks, done.shards)  # one writer: done's
        assert "little-endian float32" in digests.attrs["description"]
        for run, n in enumerate(lengths):
            assert done[run]
            assert str(digests[run]) == vector_digest(vectors[run, :n]), (m, run)


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_an_experiment_without_vector_digests_opens_passes_doctor_and_resumes(exp, client):
    """Experiments written before the digests have none: they open, doctor notes it (not a problem),
    and a resume adds the array; runs embedded from then on get a digest, the older ones stay without."""
    from panicflow.store.experiment import vector_digest

    store, eid = exp
    data = _data(store, eid)
    for m in CONFIG["embedding_models"]:
        shutil.rmtree(os.path.join(data, "embeddings", m, "vector_sha256"))
    zarr.consolidate_metadata(data, zarr_format=3)  # of the hierarchy as it is now, without them
    tree = panicflow.open_experiment(eid, store=store)
    assert "vector_sha256" not in tree["embeddings/DummyText"].ds and "done" in tree["embeddings/DummyText"].ds
    report = doctor(eid, store=store)
    assert report.clean, report.to_dict()
    assert any("no vector digests" in note for note in report.experiments[0].notes)

    g = zarr.open_group(data, mode="r+", use_consolidated=False)
    g["diagrams/DummyText/status"][LENGTH] = ""  # run LENGTH's embedding and diagram are done again by a resume
    g["embeddings/DummyText/done"][LENGTH] = False
    panicflow.resume_experiment(eid, store=store, client=client)
    g = zarr.open_group(data, mode="r", use_consolidated=False)
    digests = g["embeddings/DummyText/vector_sha256"]
    assert digests.chunks == g["embeddings/DummyText/done"].chunks
    n = int(g["length"][LENGTH])
    assert str(digests[LENGTH]) == vector_digest(g["embeddings/DummyText/vector"][LENGTH, :n])
    assert str(digests[LOOP]) == "" and str(g["embeddings/DummyVision/vector_sha256"][LENGTH]) == ""
    after = doctor(eid, store=store)
    assert after.clean, after.to_dict()
    notes = " ".join(after.experiments[0].notes)
    assert "no vector digests" not in notes and "embedded without a vector digest" in notes
