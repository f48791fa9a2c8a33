"""Run chunking for a million runs (issue 8 item 17): the arrays only the coordinator writes hold many
runs per chunk, runs in progress reach Zarr before their first 1024-step chunk, and experiments laid
out one run per chunk (every experiment before) still open, resume and pass the doctor."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from gph import ripser_parallel
from scipy.spatial.distance import pdist, squareform

import panicflow
from panicflow.api import doctor
from panicflow.config import validate_config
from panicflow.models import REGISTRY
from panicflow.scheduler import coordinator
from panicflow.store import Store, experiment
from panicflow.store.experiment import (
    ONE_RUN_PER_CHUNK,
    RUN_CHUNKS,
    Experiment,
    ExperimentWriter,
    RunEnd,
    read_markers,
)
from panicflow.store.journal import StepRecord

from oracle import reference_run

CONFIG = {
    "name": "layout",
    # 20 seeded runs: runs 0-15 share one chunk of the (run, step) arrays, 16-19 the next
    "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]],
    "seeds": [3, 22, 57, 71, 90],
    "prompts": ["a cat", "a dog"],
    "embedding_models": ["DummyText"],
    "max_length": 40,
    "persistence": {"maxdim": 1},
}
N_RUNS = 20


def _data(store: str, eid: str) -> str:
    return os.path.join(store, "experiments", eid, "data.zarr")


def _arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out = {}
    for name, node in group.members():
        if isinstance(node, zarr.Array):
            out[prefix + name] = node
        else:
            out.update(_arrays(node, f"{prefix}{name}/"))
    return out


def _files(folder: str) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


def _objects(a: zarr.Array) -> int:
    """Stored objects of an array whose every chunk holds a value: one per shard where it is sharded."""
    return int(np.prod([-(-n // c) for n, c in zip(a.shape, a.shards or a.chunks)]))


# ------------------------------------------------------------------------------------ object count
def test_twenty_thousand_runs_make_fewer_objects_than_runs(tmp_path):
    n = 20_000
    cfg = validate_config({**CONFIG, "networks": [["DummyT2I", "DummyI2T"]], "seeds": list(range(n)), "prompts": ["a"],
                           "max_length": 4})
    st = Store(str(tmp_path / "store"), create=True)
    exp = Experiment.create(st.root, "many", cfg)
    arrays = _arrays(exp.group())
    for path, a in arrays.items():
        if path not in ("run", "step", "network", "seed", "prompt"):  # written at creation, one chunk each
            # one run per object only for the vectors: their (run, model) task is the writer of their chunks
            assert ((a.shards or a.chunks)[0] == 1) == path.endswith("/vector"), path
    # written as a finished experiment has them (fill values are not stored): every (run,) and (run,
    # homology_dim) array, and of the sharded (run, step) and (run, pair) ones output_hash (the others are
    # sharded alike; writing 20,000 one-run chunks into shards takes seconds per array)
    written = {path: a for path, a in arrays.items() if a.shards is None and a.ndim <= 2 and path.split("/")[-1] not in
               ("run", "step", "network", "seed", "prompt", "vector") or path == "output_hash"}
    for path, a in written.items():
        a[...] = np.full(a.shape, "x") if a.dtype.kind in "OTU" else np.ones(a.shape, dtype=a.dtype)
    files = _files(_data(str(tmp_path / "store"), "many"))
    metadata = len(list(Path(_data(str(tmp_path / "store"), "many")).rglob("zarr.json")))
    creator = 5  # run, step, network, seed, prompt: one chunk each
    assert files == metadata + creator + sum(_objects(a) for a in written.values())
    # one run per chunk: an object per run (and per chunk along the other dimensions) in every array
    one_run_per_chunk = sum(n * int(np.prod(a.cdata_shape[1:])) for a in written.values())
    assert files < n and files < one_run_per_chunk / 10, (files, one_run_per_chunk)

    # the coordinator's grouped writes land in the right runs of shared chunks
    writer = ExperimentWriter(exp)
    runs = [0, 1, 15, 16, 4095, 4096, 19_999]
    rows = {r: [StepRecord(run=r, step=k, model="DummyT2I", kind="image", hash=f"{r:060d}{k:04d}", text=None, seed=r,
                           started_us=1, ended_us=2, parameters_hash="p", batch_id=f"b{r}", batch_size=1, batch_position=0)
                for k in range(3)] for r in runs}
    writer.write_rows(rows)
    writer.write_run_ends({r: RunEnd(3, "loop", 0, 2) for r in runs})
    markers = read_markers(Experiment(st.root, "many"))
    g = exp.group(read_only=True)
    for r in runs:
        assert (markers["stop_reason"][r], int(markers["length"][r])) == ("loop", 3)
        assert list(g["output_hash"][r]) == [f"{r:060d}{k:04d}" for k in range(3)] + ["x"]  # step 3: as before
    assert markers["stop_reason"][2] == "x" and markers["stop_reason"][4094] == "x"  # neighbours untouched


# ----------------------------------------------------------------------------- end to end, new layout
@pytest.fixture(scope="module")
def pristine(client, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("layout") / "store")
    eid = panicflow.run_experiment(CONFIG, store=store, client=client)
    arrays = {path: a[...] for path, a in _arrays(zarr.open_group(_data(store, eid), mode="r")).items()}
    return store, eid, arrays


def _check_against_oracle(tree) -> None:
    """Rows and run ends of every run equal the sequential oracle's; vectors equal the embedder called on the
    oracle's texts; pairs equal giotto-ph called on the stored vectors."""
    root = tree["/"].ds.load()
    emb, dgm = tree["embeddings/DummyText"].ds.load(), tree["diagrams/DummyText"].ds.load()
    embedder = REGISTRY["DummyText"].factory(REGISTRY["DummyText"])
    for spec in validate_config(CONFIG).runs():
        i, want = spec.index, reference_run(spec.network, spec.seed, spec.prompt, CONFIG["max_length"])
        n = len(want.hashes)
        assert (root.stop_reason[i].item(), int(root.length[i])) == (want.stop_reason, n), i
        assert (int(root.loop_start[i]), int(root.loop_period[i])) == (want.loop_start, want.loop_period), i
        assert list(root.output_hash[i, :n].values) == want.hashes, i
        assert list(root.text[i, :n].values) == want.texts, i
        assert (root.output_hash[i, n:].values == "").all(), i
        texts = [k for k, t in enumerate(want.texts) if t]
        vectors = emb.vector[i].values
        np.testing.assert_array_equal(vectors[texts], embedder.embed([want.texts[k] for k in texts]), err_msg=str(i))
        assert np.isnan(np.delete(vectors, texts, axis=0)).all(), i
        assert dgm.status[i].item() == "ok" and int(dgm.n_points[i]) == len(texts), i
        dist = squareform(pdist(vectors[texts].astype(np.float64)))
        expected = ripser_parallel(dist, metric="precomputed", maxdim=1, n_threads=1)["dgms"]
        dims = dgm.dimension[i].values
        for k, d in enumerate(expected):
            got = np.stack([dgm.birth[i].values[dims == k], dgm.death[i].values[dims == k]], axis=1)
            np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], d[np.lexsort(d.T[::-1])].astype(np.float64))


def test_a_run_of_the_new_layout_equals_the_oracle(pristine):
    store, eid, _ = pristine
    g = zarr.open_group(_data(store, eid), mode="r")
    assert g["stop_reason"].chunks == (N_RUNS,) and g["diagrams/DummyText/status"].chunks == (N_RUNS,)
    # the rows: shards of 16 runs (runs 0-15, 16-19), each run's rows a chunk of their own inside
    assert g["output_hash"].shards == (RUN_CHUNKS.rows, CONFIG["max_length"])
    assert g["output_hash"].chunks == (1, CONFIG["max_length"])
    assert sorted(os.listdir(os.path.join(_data(store, eid), "output_hash", "c"))) == ["0", "1"]
    assert g["embeddings/DummyText/vector"].chunks[0] == 1
    assert Store(store).experiment(eid).run_chunks == RUN_CHUNKS
    _check_against_oracle(panicflow.open_experiment(eid, store=store))
    assert doctor(eid, store=store).clean


@pytest.mark.parametrize("damage", ["deleted", "undecodable"])
@pytest.mark.parametrize("chunk", ["output_hash/c/0/0", "stop_reason/c/0", "diagrams/DummyText/status/c/0"])
def test_doctor_rebuilds_a_chunk_that_runs_share(pristine, tmp_path, client, chunk, damage):
    src, eid, want = pristine
    store = str(tmp_path / "store")
    shutil.copytree(src, store)
    path = Path(_data(store, eid), *chunk.split("/"))
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"\x00not a chunk" * 5)
    found = doctor(eid, store=store)
    assert found.exit_code == 1, found.to_dict()
    if damage == "undecodable":
        unreadable = [p for p in found.problems if p.kind == "unreadable"]
        assert {p.path for p in unreadable} == {chunk} and all("runs 0-" in p.detail for p in unreadable)
        # a (run,) chunk of 4096 runs is one problem; a shard of rows one per run read from it (16)
        assert len(unreadable) == (RUN_CHUNKS.rows if chunk.startswith("output_hash") else 1)
    fixed = doctor(eid, store=store, fix=True, client=client)
    assert fixed.exit_code == 0, fixed.to_dict()
    assert doctor(eid, store=store).clean
    got = {path: a[...] for path, a in _arrays(zarr.open_group(_data(store, eid), mode="r")).items()}
    for name, values in want.items():
        if not name.endswith(("/started_at", "/ended_at", "/worker")):  # task times: the recomputing tasks' own
            np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_doctor_replaces_one_runs_rows_in_a_shard_and_keeps_the_others(pristine, tmp_path, client):
    """A changed byte in run 5's rows fails only their checksum: the doctor rewrites them alone."""
    src, eid, want = pristine
    store = str(tmp_path / "store")
    shutil.copytree(src, store)
    shard = Path(_data(store, eid), "invocation_seed", "c", "0", "0")
    data = bytearray(shard.read_bytes())
    # the shard's index, at its end: (offset, length) per one-run chunk, then a crc32c of the index
    index = np.frombuffer(bytes(data[-(RUN_CHUNKS.rows * 16 + 4):-4]), dtype="<u8").reshape(RUN_CHUNKS.rows, 2)
    data[int(index[5, 0]) + 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    a = zarr.open_array(_data(store, eid), path="invocation_seed", mode="r")
    np.testing.assert_array_equal(a[4], want["invocation_seed"][4])  # the others read as before
    found = doctor(eid, store=store)
    [p] = [p for p in found.problems if p.kind == "unreadable"]
    assert (p.run, p.path) == (5, "invocation_seed/c/0/0") and "crc32c" in p.detail
    fixed = doctor(eid, store=store, fix=True, client=client)
    assert fixed.exit_code == 0, fixed.to_dict()
    assert any("replaced the undecodable rows of run(s) 5 in invocation_seed/c/0/0" in a for a in fixed.experiments[0].actions)
    assert doctor(eid, store=store).clean
    np.testing.assert_array_equal(zarr.open_array(_data(store, eid), path="invocation_seed", mode="r")[...],
                                  want["invocation_seed"])


# ------------------------------------------------------------------------------- runs in progress
def test_a_running_run_is_visible_before_its_first_chunk(client, tmp_path, monkeypatch):
    """A 40-step run is far from its first 1024-step chunk: its rows reach Zarr every SHOW_RUNNING_S."""
    monkeypatch.setattr(coordinator, "SHOW_RUNNING_S", 0.2)
    config = {**CONFIG, "networks": [["SleepT2I", "DummyI2T"]], "seeds": [3], "prompts": ["a cat"], "max_length": 40}
    store = str(tmp_path / "store")
    started: list[str] = []
    seen: list[tuple[int, list[str]]] = []  # (invocations journaled, output_hash shown) while the run went on

    def look(progress) -> None:
        # called by the coordinator between its rounds, so nothing is half-written
        if started and progress.runs_ended == 0 and progress.invocations >= 4:
            root = panicflow.open_experiment(started[0], store=store)["/"].ds
            assert root.stop_reason[0].item() == ""
            seen.append((progress.invocations, [str(h) for h in root.output_hash[0].values]))

    eid = panicflow.run_experiment(config, store=store, client=client, progress=look,
                                   on_start=lambda exp, _: started.append(exp.id))
    final = [str(h) for h in panicflow.open_experiment(eid, store=store)["/"].ds.output_hash[0].values]
    shown = [hashes for _, hashes in seen if any(hashes)]
    assert shown, f"no row of the running run was visible in {len(seen)} looks"
    for hashes in shown:  # a prefix of the final rows: no step lost, changed or shown twice
        k = sum(1 for h in hashes if h)
        assert hashes[:k] == final[:k] and not any(hashes[k:])
    assert max(sum(1 for h in hashes if h) for hashes in shown) >= 4


# ----------------------------------------------------------------------------------- old layout
class Stop(Exception):
    """Stops the coordinator mid-way, as a crash between two rounds would."""


def test_an_experiment_laid_out_one_run_per_chunk_opens_resumes_and_passes_doctor(client, tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    started: list[str] = []

    def stop_midway(progress) -> None:
        if progress.invocations >= 200:
            raise Stop

    monkeypatch.setattr(coordinator, "SHOW_RUNNING_S", 0.0)  # rows of running runs written at every round
    with monkeypatch.context() as old:
        old.setattr(experiment, "RUN_CHUNKS", ONE_RUN_PER_CHUNK)
        with pytest.raises(Stop):
            panicflow.run_experiment(CONFIG, store=store, client=client, progress=stop_midway,
                                     on_start=lambda exp, _: started.append(exp.id))
    [eid] = started
    exp = Store(store).experiment(eid)
    assert "run_chunks" not in exp.meta and exp.run_chunks == ONE_RUN_PER_CHUNK  # as experiments before it
    assert panicflow.experiment_status(eid, store=store).state != "complete"
    panicflow.open_experiment(eid, store=store)["/"].ds.load()  # opens while unfinished
    panicflow.resume_experiment(eid, store=store, client=client)
    g = zarr.open_group(_data(store, eid), mode="r")
    for path, a in _arrays(g).items():
        if path not in ("run", "step", "network", "seed", "prompt"):
            assert a.chunks[0] == 1 and a.shards is None, path  # resumed in its own layout
    _check_against_oracle(panicflow.open_experiment(eid, store=store))
    report = doctor(eid, store=store)
    assert report.clean, report.to_dict()


def test_run_chunks_in_experiment_json_are_checked(tmp_path):
    cfg = validate_config({**CONFIG})
    st = Store(str(tmp_path / "store"), create=True)
    Experiment.create(st.root, "x", cfg)
    meta = Path(tmp_path / "store" / "experiments" / "x" / "experiment.json")
    assert '"run_chunks"' in meta.read_text()
    meta.write_text(meta.read_text().replace(f'"marks": {RUN_CHUNKS.marks}', '"marks": 0'))
    with pytest.raises(panicflow.errors.StoreError, match="run_chunks"):
        Experiment(st.root, "x").run_chunks
