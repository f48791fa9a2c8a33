"""`panicflow import legacy`: databases of the earlier PANIC-TDA tool into the store.

The databases are written by tests/legacy_util.py in the tool's schema and byte formats.
Each imported experiment is checked against the SQLite rows with queries of its own
(not the importer's), then used as a native one: status, open_experiment, doctor,
drift, tables, sequences, resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import panicflow
from panicflow import api
from panicflow.cli import main
from panicflow.errors import RunsFailed, UserError
from panicflow.legacy import importer, locate

from legacy_util import LegacyWriter, cluster, loop_hash, simulate, uuid7, webp

SOUND = dict(networks=[["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]], seeds=[1, -1],
             prompts=["a red circle", "a cat"], embedding_models=["DummyText", "DummyVision"], max_length=30)


def build_sound(path: Path, constraints: bool) -> dict:
    w = LegacyWriter(path, constraints=constraints)
    exp = simulate(w, **SOUND, rng=random.Random(5))
    cluster(w, "DummyText", exp["runs"])
    w.close()
    return exp


@pytest.fixture(scope="module")
def sound(tmp_path_factory):
    """(database, store, experiment id) of the sound database with the migrations' constraints, imported."""
    base = tmp_path_factory.mktemp("legacy-sound")
    db, store = base / "trajectory_data.sqlite", str(base / "store")
    build_sound(db, constraints=True)
    report = panicflow.import_legacy(db, store=store)
    assert report.complete, report.to_dict()
    return db, store, report.experiment_ids[0]


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


def check_against_source(db: Path, store: str, eid: str) -> None:
    """Every imported run, step, vector, diagram and label equals its legacy row (a sound database)."""
    con = sqlite3.connect(db)
    tree = panicflow.open_experiment(eid, store=store)
    root, legacy = tree["/"].ds, tree["legacy"].ds
    lid = eid.removeprefix("legacy-")
    runs = con.execute("SELECT id, network, seed, initial_prompt FROM run WHERE experiment_id = ? ORDER BY rowid", (lid,)).fetchall()
    assert sorted(str(x).replace("-", "") for x in legacy.run_id.values) == sorted(r[0] for r in runs)
    medoids = sorted(m for (m,) in con.execute("SELECT DISTINCT medoid_embedding_id FROM embeddingcluster WHERE medoid_embedding_id IS NOT NULL"))
    clusters = tree["analysis/clusters"]
    (cname,) = list(clusters.children)
    label = clusters[cname].ds.label.values
    for i, run_id in enumerate(str(x).replace("-", "") for x in legacy.run_id.values):
        network, seed, prompt = con.execute("SELECT network, seed, initial_prompt FROM run WHERE id = ?", (run_id,)).fetchone()
        assert (root.network.values[i], int(root.seed.values[i]), root.prompt.values[i]) == (",".join(json.loads(network)), seed, prompt)
        rows = con.execute("SELECT id, sequence_number, model, type, output_text, output_image_data, started_at, completed_at, seed "
                           "FROM invocation WHERE run_id = ? ORDER BY sequence_number", (run_id,)).fetchall()
        n = int(root.length.values[i])
        assert n == len(rows)
        outputs = []
        for k, (inv, seq, model, typ, text, image, t0, t1, inv_seed) in enumerate(rows):
            assert seq == k
            assert str(legacy.invocation_id.values[i, k]).replace("-", "") == inv
            assert root.model.values[i, k] == model and root.kind.values[i, k] == typ.lower()
            data = text.encode() if text is not None else image
            assert root.output_hash.values[i, k] == hashlib.sha256(data).hexdigest()
            assert root.text.values[i, k] == (text or "")
            assert int(root.invocation_seed.values[i, k]) == inv_seed  # the run's seed, or -1: not recorded
            assert root.started_at.values[i, k] == np.datetime64(_us(t0), "us")
            assert root.ended_at.values[i, k] == np.datetime64(_us(t1), "us")
            outputs.append(text if text is not None else panicflow.load_image(root.output_hash.values[i, k], store=store))
        # the tool's stop rule, computed here from the outputs
        seen: dict[str, int] = {}
        expected = ("length", -1, -1)
        for k, out in enumerate(outputs):
            h = loop_hash(out)
            if seed != -1 and h in seen:
                expected = ("loop", seen[h], k - seen[h])
                assert k == n - 1
                break
            seen.setdefault(h, k)
        assert (root.stop_reason.values[i], int(root.loop_start.values[i]), int(root.loop_period.values[i])) == expected
        for model in ("DummyText", "DummyVision"):
            vec = tree[f"embeddings/{model}"].ds.vector.values[i]
            emb = con.execute("SELECT i.sequence_number, e.vector FROM embedding e JOIN invocation i ON i.id = e.invocation_id "
                              "WHERE i.run_id = ? AND e.embedding_model = ?", (run_id, model)).fetchall()
            assert {k for k, _ in emb} == set(np.flatnonzero(~np.isnan(vec).any(axis=1)))
            for k, blob in emb:
                np.testing.assert_array_equal(vec[k], np.frombuffer(blob, dtype="<f4"))
            d = tree[f"diagrams/{model}"].ds
            (blob,) = con.execute("SELECT diagram_data FROM persistencediagram WHERE run_id = ? AND embedding_model = ?",
                                  (run_id, model)).fetchone()
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                for dim in range(3):
                    sel = d.dimension.values[i] == dim
                    pairs = np.column_stack([d.birth.values[i][sel], d.death.values[i][sel]])
                    np.testing.assert_array_equal(pairs, npz[f"dgms_{dim}"].astype(np.float64))
                np.testing.assert_allclose(np.nan_to_num(d.entropy.values[i], nan=0.0), npz["entropy"], rtol=1e-4, atol=1e-6)
                # the tool's own values are kept as it stored them, -0.0 of an empty dimension included (issue 24 item 6)
                tool = tree["legacy/tool_entropy"].ds[model].values[i]
                np.testing.assert_array_equal(tool, npz["entropy"].astype(np.float64))
                assert (np.signbit(tool) == np.signbit(npz["entropy"])).all()
            assert d.attrs["imported"]["point_cloud"] == "raw" and d.attrs["imported"]["unit_normalised"] is False
            assert d.status.values[i] == "ok" and int(d.n_points.values[i]) == len(emb)
        got = {int(k): int(v) for k, v in enumerate(label[i]) if v != -2}
        want = {}
        for seq, medoid in con.execute(
                "SELECT i.sequence_number, ec.medoid_embedding_id FROM embeddingcluster ec JOIN embedding e ON e.id = ec.embedding_id "
                "JOIN invocation i ON i.id = e.invocation_id WHERE i.run_id = ?", (run_id,)):
            want[seq] = -1 if medoid is None else medoids.index(medoid)
        assert got == want


@pytest.mark.parametrize("constraints", [True, False], ids=["migrated", "create_all"])
def test_imported_experiment_equals_the_database_row_by_row(tmp_path, constraints):
    db, store = tmp_path / "db.sqlite", str(tmp_path / "store")
    build_sound(db, constraints)
    report = panicflow.import_legacy(db, store=store)
    assert report.complete and report.exit_code == 0
    (eid,) = report.experiment_ids
    check_against_source(db, store, eid)
    status = api.experiment_status(eid, store=store)
    assert status.state == "complete" and status.runs == 8 and status.runs_failed == 0
    assert status.stop_reasons.get("loop") and status.stop_reasons.get("length")  # some of the tool's loops are JPEG repeats
    assert status.invocations == report.totals["invocation"]["source"]
    doctor = api.doctor(eid, store=store)
    assert doctor.clean, doctor.to_dict()
    for table, t in report.totals.items():  # every row accounted for
        assert t["source"] == t["imported"] + sum(t["skipped"].values()), table
        assert not t["skipped"], table


def test_byte_formats_of_the_writer(tmp_path):
    """The test databases hold the tool's formats, so the importer is tested on what it will meet."""
    db = tmp_path / "db.sqlite"
    build_sound(db, constraints=True)
    con = sqlite3.connect(db)
    inv_id, image = con.execute("SELECT id, output_image_data FROM invocation WHERE type = 'IMAGE' LIMIT 1").fetchone()
    assert len(inv_id) == 32 and inv_id == inv_id.lower() and image[:4] == b"RIFF" and image[8:16] == b"WEBPVP8L"
    (vector,) = con.execute("SELECT vector FROM embedding LIMIT 1").fetchone()
    assert len(vector) == 768 * 4
    (blob,) = con.execute("SELECT diagram_data FROM persistencediagram LIMIT 1").fetchone()
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["dgms_0", "dgms_1", "dgms_2", "dgms_count", "entropy"]
        assert npz["dgms_0"].dtype == np.float32 and npz["entropy"].dtype == np.float32 and np.isinf(npz["dgms_0"][:, 1]).sum() == 1
    (started,) = con.execute("SELECT started_at FROM invocation LIMIT 1").fetchone()
    assert datetime.strptime(started, "%Y-%m-%d %H:%M:%S.%f")


def test_imported_experiment_works_like_a_native_one(sound, client):
    from panicflow.analysis import drift, sequences, tables

    db, store, eid = sound
    assert [e["id"] for e in panicflow.list_experiments(store)] == [eid]
    tree = panicflow.open_experiment(eid[:12], store=store)
    assert tree["/"].ds.sizes == {"run": 8, "step": 30}
    path = drift.semantic_drift(eid, "DummyText", store=store, client=client)
    d = panicflow.open_experiment(eid, store=store)[path].ds
    vec = tree["embeddings/DummyText"].ds.vector.values
    assert np.array_equal(np.isnan(d.cosine_distance.values), np.isnan(vec).any(axis=2))
    invocations = tables.table("invocations", eid, store=store)
    assert len(invocations) == int(tree["/"].ds.length.sum())
    assignments = tables.table("assignments", eid, store=store)
    con = sqlite3.connect(db)
    assert len(assignments) == con.execute("SELECT count(*) FROM embeddingcluster").fetchone()[0]
    clusters = tables.table("clusters", eid, store=store)
    assert clusters["size"].sum() + (assignments["label"] == -1).sum() == len(assignments)
    assert sequences.sequences(eid, store=store)
    assert len(tables.table("bars", eid, store=store)) == int((tree["diagrams/DummyText"].ds.dimension.values >= 0).sum()
                                                                + (tree["diagrams/DummyVision"].ds.dimension.values >= 0).sum())


def test_empty_dimensions_entropy_is_said(sound):
    """The tool's -0.0 entropy of a dimension without a finite bar is NaN here: said in the import's notes (per run
    and per experiment, and in experiment.json), its value kept in legacy/tool_entropy (issue 24 item 6)."""
    db, store, eid = sound
    tree = panicflow.open_experiment(eid, store=store)
    meta = json.loads((Path(store) / "experiments" / eid / "experiment.json").read_text())
    notes = meta["import"]["notes"]
    for model in ("DummyText", "DummyVision"):
        tool = tree["legacy/tool_entropy"].ds[model].values
        ours = tree[f"diagrams/{model}"].ds.entropy.values
        empty = (tool == 0) & np.isnan(ours)
        assert (np.signbit(tool[empty])).all()  # the tool's -0.0
        line = [n for n in notes if n.startswith(f"{model}: ")]
        if empty.any():
            assert len(line) == 1 and f"{int(empty.sum())} entropies of dimensions without a finite bar" in line[0]
            run = int(np.flatnonzero(empty.any(axis=1))[0])
            report = json.loads(str(tree["legacy"].ds.report.values[run]))
            assert any("is stored as NaN" in issue for issue in report["issues"])
        else:
            assert not line
    assert any(((tree["legacy/tool_entropy"].ds[m].values == 0) & np.isnan(tree[f"diagrams/{m}"].ds.entropy.values)).any()
               for m in ("DummyText", "DummyVision"))  # the sound database has such diagrams: the test tests something


def test_legacy_ids_resolve(sound):
    db, store, eid = sound
    con = sqlite3.connect(db)
    lid = eid.removeprefix("legacy-")
    assert locate(lid, store=store) == {"experiment_id": eid, "run": None, "step": None}
    run_id, inv_id, seq = con.execute("SELECT r.id, i.id, i.sequence_number FROM invocation i JOIN run r ON r.id = i.run_id "
                                      "ORDER BY i.rowid DESC LIMIT 1").fetchone()
    run = locate(run_id, store=store)["run"]
    hyphenated = f"{inv_id[:8]}-{inv_id[8:12]}-{inv_id[12:16]}-{inv_id[16:20]}-{inv_id[20:]}"
    assert locate(hyphenated, store=store) == {"experiment_id": eid, "run": run, "step": seq}
    assert str(panicflow.open_experiment(eid, store=store)["legacy"].ds.run_id.values[run]).replace("-", "") == run_id
    assert locate(uuid7(), store=store) is None


# ------------------------------------------------------------------------------ faulty databases
class Boom:
    """Unpickling this creates a file: a diagram holding it must never be unpickled."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def build_faulty(path: Path, pickle_flag: Path) -> dict:
    """One experiment with every fault the tool's databases are known to hold (no unique constraints),
    one with an unknown model, one with an unknown embedder; orphans."""
    w = LegacyWriter(path, constraints=False)
    prompts = [f"prompt {k}" for k in range(9)]
    exp = simulate(w, [["DummyT2I", "DummyI2T"]], [-1], prompts, ["DummyText", "DummyVision"], 10, rng=random.Random(3))
    runs = {p: r for p, r in zip(prompts, exp["runs"])}
    x = w.conn.execute
    inv = lambda p, k: runs[p]["invocations"][k][0]  # noqa: E731
    # run 1: the tool's resume re-inserted step 3 after a NULL output; step 5 has two outputs, step 6 took the first
    x("INSERT INTO invocation (id, run_id, sequence_number, model, type, seed, started_at) "
      "VALUES (?, ?, 3, 'DummyI2T', 'TEXT', -1, '2025-08-01 12:00:00.000000')", (uuid7(), runs["prompt 1"]["id"]))
    w.invocation(runs["prompt 1"]["id"], 5, "DummyI2T", "a caption nobody took", -1, inv("prompt 1", 4))
    # run 2: a NULL output at step 4 (an image): the run stops there
    x("UPDATE invocation SET output_image_data = NULL WHERE id = ?", (inv("prompt 2", 4),))
    # run 3: a NULL vector where DummyText applies (incomplete: left for resume); DummyVision's NULL on a text (ignored)
    x("UPDATE embedding SET vector = NULL WHERE invocation_id = ? AND embedding_model = 'DummyText'", (inv("prompt 3", 3),))
    w.embedding(inv("prompt 3", 5), "DummyVision", None)
    # run 4: no DummyVision diagram, a NULL DummyText diagram
    x("DELETE FROM persistencediagram WHERE run_id = ? AND embedding_model = 'DummyVision'", (runs["prompt 4"]["id"],))
    x("UPDATE persistencediagram SET diagram_data = NULL WHERE run_id = ? AND embedding_model = 'DummyText'", (runs["prompt 4"]["id"],))
    # run 5: an image that cannot be decoded at step 2
    x("UPDATE invocation SET output_image_data = ? WHERE id = ?", (b"RIFF\x10\x00\x00\x00WEBPVP8Lgarbage", inv("prompt 5", 2)))
    # run 6: a diagram that would run code if unpickled; a vector of the wrong size (DummyVision incomplete)
    Boom.path = str(pickle_flag)
    buf = io.BytesIO()
    np.savez_compressed(buf, dgms_0=np.array([Boom()], dtype=object), dgms_count=np.array([1]))
    x("UPDATE persistencediagram SET diagram_data = ? WHERE run_id = ? AND embedding_model = 'DummyText'",
      (buf.getvalue(), runs["prompt 6"]["id"]))
    x("UPDATE embedding SET vector = ? WHERE invocation_id = ? AND embedding_model = 'DummyVision'", (b"\x00" * 12, inv("prompt 6", 0)))
    # run 7: a diagram archive that is not a zip; a duplicate diagram
    x("UPDATE persistencediagram SET diagram_data = ? WHERE run_id = ? AND embedding_model = 'DummyVision'",
      (b"PK\x03\x04 not really", runs["prompt 7"]["id"]))
    w.diagram(runs["prompt 7"]["id"], "DummyText", {"dgms": [np.array([[0.0, np.inf]], np.float32)], "entropy": np.zeros(1, np.float32)})
    # prompt 8: its run is gone; a run of a prompt the config does not have
    for table, col in (("embedding", "invocation_id IN (SELECT id FROM invocation WHERE run_id = ?)"),
                       ("persistencediagram", "run_id = ?"), ("invocation", "run_id = ?"), ("run", "id = ?")):
        x(f"DELETE FROM {table} WHERE {col}", (runs["prompt 8"]["id"],))
    extra = w.run(exp["id"], ["DummyT2I", "DummyI2T"], -1, "not in the config", 10)
    w.invocation(extra, 0, "DummyT2I", webp_image(1), -1)
    # orphans
    w.invocation(uuid7(), 0, "DummyT2I", webp_image(2), -1)
    w.embedding(uuid7(), "DummyText", np.zeros(768, np.float32))
    w.diagram(uuid7(), "DummyText", None)
    # an experiment with a generative model panicflow does not know; one with an unknown embedder
    unknown = w.experiment([["DeepDream", "DummyI2T"]], [-1], ["x"], ["DummyText"], 4)
    w.run(unknown, ["DeepDream", "DummyI2T"], -1, "x", 4)
    other = simulate(w, [["DummyT2I", "DummyI2T"]], [2], ["a dog"], ["DummyText", "NomicVisionV9"], 6, rng=random.Random(4))
    w.close()
    return {"faulty": exp["id"], "runs": runs, "unknown": unknown, "other": other["id"]}


def webp_image(value: int) -> bytes:
    from PIL import Image

    return webp(Image.new("RGB", (8, 8), (value, value, value)))


def test_faulty_database(tmp_path, client):
    db, store, flag = tmp_path / "db.sqlite", str(tmp_path / "store"), tmp_path / "unpickled"
    made = build_faulty(db, flag)
    report = panicflow.import_legacy(db, store=store)
    assert not flag.exists()  # the pickled diagram was refused, not loaded
    by_legacy = {e.legacy_id.replace("-", ""): e for e in report.experiments}
    assert by_legacy[made["unknown"]].status == "not imported" and "DeepDream" in by_legacy[made["unknown"]].reason
    assert not report.complete and report.exit_code == 1
    other = by_legacy[made["other"]]
    assert other.status == "imported" and other.state == "complete"
    assert any("NomicVisionV9" in line for line in other.issues)
    assert panicflow.open_experiment(other.experiment_id, store=store)["/"].ds.sizes["run"] == 1
    e = by_legacy[made["faulty"]]
    assert e.status == "imported" and e.state == "interrupted"  # embeddings and diagrams the database lacks: resume computes them
    t = report.to_dict()["tables"]
    skipped = t["invocation"]["skipped"]
    assert skipped["duplicate of another row of its step"] == 2
    assert skipped["null output"] == 1 and skipped["image that cannot be decoded"] == 1
    assert skipped["after the run's end"] == 5 + 7  # runs 2 and 5 stop at steps 4 and 2 of 10
    assert skipped["its run is not in the experiment's config"] == 1
    assert skipped["in no experiment of the database (orphan rows)"] == 1
    emb = t["embedding"]["skipped"]
    assert emb["null vector"] == 1 and emb["vector of 12 bytes, not 768 float32 values"] == 1
    assert emb["the model does not apply to that output's kind"] == 1
    assert emb["the run failed (panicflow embeds no failed run)"] == 4 + 2  # the steps runs 2 and 5 kept
    assert emb["its invocation is not imported"] == 6 + 8
    assert emb["its run's set is incomplete (left for resume)"] == 4 + 4
    assert emb["in no experiment of the database (orphan rows)"] == 1
    pd = t["persistencediagram"]["skipped"]
    assert pd["diagram_data is NULL"] == 1 and pd["diagram_data cannot be read"] == 2  # the pickle, the fake zip
    assert pd["duplicate of another diagram of its run"] == 1 and pd["the run failed"] == 4
    assert pd["computed from other points than those imported"] == 1
    assert pd["in no experiment of the database (orphan rows)"] == 1
    for table, counts in t.items():  # every row accounted for, orphans included
        assert counts["source"] == counts["imported"] + sum(counts["skipped"].values()), table

    tree = panicflow.open_experiment(e.experiment_id, store=store)
    ds = tree["/"].ds
    runs = {p: i for i, p in enumerate(ds.prompt.values)}
    assert int(ds.length.values[runs["prompt 1"]]) == 10 and ds.stop_reason.values[runs["prompt 1"]] == "length"
    con = sqlite3.connect(db)
    (taken,) = con.execute("SELECT output_text FROM invocation WHERE id = ?", (made["runs"]["prompt 1"]["invocations"][5][0],)).fetchone()
    assert ds.text.values[runs["prompt 1"], 5] == taken  # the output step 6 took, not the later duplicate
    for prompt, n, why in (("prompt 2", 4, "null output"), ("prompt 5", 2, "image that cannot be decoded"),
                           ("prompt 8", 0, "no run for this network, seed and prompt")):
        i = runs[prompt]
        assert ds.stop_reason.values[i] == "failed" and int(ds.length.values[i]) == n and why in ds.error.values[i]
    done = {m: tree[f"embeddings/{m}"].ds.done.values for m in ("DummyText", "DummyVision")}
    status = {m: tree[f"diagrams/{m}"].ds.status.values for m in ("DummyText", "DummyVision")}
    assert not done["DummyText"][runs["prompt 3"]] and done["DummyVision"][runs["prompt 3"]]
    assert not done["DummyVision"][runs["prompt 6"]]
    assert status["DummyVision"][runs["prompt 4"]] == "" and status["DummyText"][runs["prompt 4"]] == ""
    assert status["DummyText"][runs["prompt 6"]] == "" and status["DummyVision"][runs["prompt 7"]] == ""
    assert status["DummyText"][runs["prompt 7"]] == "ok"  # the first, sound diagram; the later duplicate is left
    assert status["DummyText"][runs["prompt 0"]] == "ok" and status["DummyText"][runs["prompt 2"]] == "run_failed"
    # run 3's DummyVision diagram is of a cloud with a NULL row the tool could not have used: not trusted
    assert e.pending == {"embeddings": 2, "diagrams": 2 + 2 + 2 + 1}

    # doctor tells what is left, as for an interrupted native experiment; resume computes it
    found = api.doctor(e.experiment_id, store=store).to_dict()["experiments"][0]["problems"]
    assert [p["kind"] for p in found] == ["interrupted"]
    with pytest.raises(RunsFailed):
        api.resume_experiment(e.experiment_id, store=store, client=client)
    after = api.experiment_status(e.experiment_id, store=store)
    assert after.state == "failed" and after.runs_failed == 3
    assert after.embeddings == {"DummyText": 6, "DummyVision": 6} and after.persistence_diagrams == {"DummyText": 9, "DummyVision": 9}
    assert api.doctor(e.experiment_id, store=store).clean
    # the imported rows are untouched by resume
    assert panicflow.open_experiment(e.experiment_id, store=store)["/"].ds.output_hash.equals(ds.output_hash)
    # failed runs continue from the step that stopped them, as a native experiment's do
    api.resume_experiment(e.experiment_id, store=store, client=client, retry_failed=True)
    retried = panicflow.open_experiment(e.experiment_id, store=store)["/"].ds
    i = runs["prompt 2"]
    assert retried.stop_reason.values[i] == "length" and int(retried.length.values[i]) == 10
    assert list(retried.output_hash.values[i, :4]) == list(ds.output_hash.values[i, :4])
    assert api.experiment_status(e.experiment_id, store=store).state == "complete"
    assert api.doctor(e.experiment_id, store=store).clean


# ------------------------------------------------------------------------------ idempotence, resume, dry run, CLI
def _files(store: str) -> dict[str, str]:
    out = {}
    for folder, _, names in os.walk(store):
        for name in names:
            p = os.path.join(folder, name)
            out[os.path.relpath(p, store)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def test_importing_twice_changes_nothing(sound):
    db, store, eid = sound
    before = _files(store)
    report = panicflow.import_legacy(db, store=store)
    assert [e.status for e in report.experiments] == ["already imported"] and report.complete
    assert _files(store) == before


def test_an_interrupted_import_continues(tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    build_sound(db, constraints=True)
    whole = str(tmp_path / "whole")
    panicflow.import_legacy(db, store=whole)
    store = str(tmp_path / "store")
    original, calls = importer._ExperimentImport._write_run, []

    def dies(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill in the middle of the import
        return original(self, *args)

    monkeypatch.setattr(importer._ExperimentImport, "_write_run", dies)
    with pytest.raises(KeyboardInterrupt):
        panicflow.import_legacy(db, store=store)
    assert panicflow.list_experiments(store) == []  # not an experiment until verified
    monkeypatch.setattr(importer._ExperimentImport, "_write_run", original)
    report = panicflow.import_legacy(db, store=store)
    assert report.complete
    (eid,) = report.experiment_ids
    a, b = panicflow.open_experiment(eid, store=whole), panicflow.open_experiment(eid, store=store)
    for node in a.subtree:
        path = node.path
        for name, var in node.to_dataset(inherit=False).data_vars.items():
            if name != "created_at":
                assert var.equals(b[path].to_dataset(inherit=False)[name]), f"{path}/{name}"
    objects = lambda s: {k: v for k, v in _files(s).items() if k.startswith("objects")}  # noqa: E731
    assert objects(whole) == objects(store)
    check_against_source(db, store, eid)


def test_verification_failure_and_changed_source(tmp_path, monkeypatch):
    from panicflow.legacy import verify

    db, store = tmp_path / "db.sqlite", str(tmp_path / "store")
    build_sound(db, constraints=True)
    original = verify.stored_digest
    monkeypatch.setattr(verify, "stored_digest", lambda g, run, *a: "0" * 64 if run == 2 else original(g, run, *a))
    report = panicflow.import_legacy(db, store=store)
    (e,) = report.experiments
    assert e.status == "verification failed" and report.exit_code == 1
    assert e.problems == ["run 2: the stored content differs from the legacy rows read (it is imported again next time)"]
    assert panicflow.list_experiments(store) == []  # not published
    monkeypatch.setattr(verify, "stored_digest", original)
    assert panicflow.import_legacy(db, store=store).complete
    # the source gains a row: the import in the store is not silently mixed with the new state
    con = sqlite3.connect(db)
    run_id = con.execute("SELECT id FROM run LIMIT 1").fetchone()[0]
    con.execute("INSERT INTO invocation (id, run_id, sequence_number, model, type, seed, started_at, output_text) "
                "VALUES (?, ?, 99, 'DummyI2T', 'TEXT', -1, '2025-08-02 00:00:00.000000', 'late')", (uuid7(), run_id))
    con.commit()
    again = panicflow.import_legacy(db, store=store)
    assert again.experiments[0].status == "not imported" and "another state" in again.experiments[0].reason


def test_dry_run_writes_nothing(tmp_path):
    db = tmp_path / "db.sqlite"
    build_faulty(db, tmp_path / "flag")
    dry = panicflow.import_legacy(db, store=str(tmp_path / "none"), dry_run=True)
    assert not (tmp_path / "none").exists()
    real = panicflow.import_legacy(db, store=str(tmp_path / "store"))
    assert [e.status for e in dry.experiments] == ["would import", "not imported", "would import"]
    assert dry.to_dict()["tables"] == real.to_dict()["tables"]


def test_skip_diagrams_leaves_them_to_resume(tmp_path):
    db, store = tmp_path / "db.sqlite", str(tmp_path / "store")
    build_sound(db, constraints=True)
    report = panicflow.import_legacy(db, store=store, skip_diagrams=True)
    (e,) = report.experiments
    assert e.state == "interrupted" and e.pending == {"diagrams": 16}
    assert report.totals["persistencediagram"]["skipped"] == {"skipped (--skip-diagrams)": 16}
    assert api.experiment_status(e.experiment_id, store=store).persistence_diagrams == {"DummyText": 0, "DummyVision": 0}


def test_cli(tmp_path, capsys):
    db, store = tmp_path / "db.sqlite", str(tmp_path / "store")
    build_sound(db, constraints=False)
    assert main(["import", "legacy", str(db), "--store", store, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] and out["experiments"][0]["state"] == "complete" and out["rows_per_s"] > 0
    assert main(["import", "legacy", str(db), "--store", store]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [out["experiments"][0]["experiment_id"]] and "already imported" in captured.err
    assert main(["import", "legacy", str(tmp_path / "missing.sqlite"), "--store", store]) == 2
    sqlite3.connect(tmp_path / "empty.sqlite").execute("CREATE TABLE t (x)")
    assert main(["import", "legacy", str(tmp_path / "empty.sqlite"), "--store", store]) == 2
    assert "not a database of the earlier PANIC-TDA tool" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["import", "legacy", str(db), "--store", str(tmp_path / "file")]) == 2
    with pytest.raises(UserError):
        panicflow.import_legacy(tmp_path / "file")
