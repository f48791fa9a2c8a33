"""The issue 24 analyses on an experiment imported from the earlier PANIC-TDA tool (a tiny database
written by tests/legacy_util.py), each through the CLI: cluster, assign, dynamics, knn, noise-sweep,
sequences, recurrence, windows, run-table and stability store a result whose content adds up to what
was imported (the vectors, the runs, the tool's loops and diagrams)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import panicflow
from panicflow.cli import main

from legacy_util import LegacyWriter, cluster, simulate

TINY = dict(networks=[["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]], seeds=[1, -1], prompts=["a red circle", "a cat"],
            embedding_models=["DummyText2", "DummyVision"], max_length=24)
MODEL = "DummyText2"  # code points of the captions: vectors with some structure (DummyText's are uniform noise)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(store, experiment id, the imported DummyText vectors per run) of a tiny legacy database, imported by the CLI."""
    base = tmp_path_factory.mktemp("legacy-analyses")
    db, store = base / "trajectory_data.sqlite", str(base / "store")
    w = LegacyWriter(db, constraints=True)
    exp = simulate(w, **TINY, rng=random.Random(3))
    cluster(w, MODEL, exp["runs"])  # the tool's own clustering, imported beside ours
    w.close()
    assert main(["import", "legacy", str(db), "--store", store]) == 0
    (eid,) = [e["id"] for e in panicflow.list_experiments(store)]
    vec = panicflow.open_experiment(eid, store=store)[f"embeddings/{MODEL}"].ds.vector.values
    return store, eid, (~np.isnan(vec).any(axis=2)).sum(axis=1)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _run(args, capsys, *, as_json=True):
    code = main([*args, "--json"] if as_json else args)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1]) if as_json else out


def test_every_analysis_on_an_imported_experiment(imported, client, capsys, tmp_path):
    store, eid, per_run = imported
    n_vectors, n_runs = int(per_run.sum()), len(per_run)
    sched = ["--store", store, "--scheduler", client.scheduler.address]
    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    assert n_vectors > 50 and (root.stop_reason.values == "loop").any()  # the old stop rule ended the seeded runs

    # cluster, then assign with the frozen model, to itself
    r = _run(["analyse", "cluster", eid, "--model", MODEL, "--min-cluster-size", "5", "--name", "leg", *sched], capsys)
    assert r["path"] == "analysis/clusters/leg"
    labels = panicflow.open_experiment(eid, store=store)["analysis/clusters/leg"].ds.label.values
    assert (labels >= -1).sum() == n_vectors and (labels >= 0).any()
    r = _run(["analyse", "assign", eid, "--clustering", "leg", "--from", eid, "--name", "leg-self", *sched], capsys)
    assert r["vectors"] == n_vectors and not r["fitted"]
    again = panicflow.open_experiment(eid, store=store)["analysis/clusters/leg-self"].ds.label.values
    members = labels >= 0
    np.testing.assert_array_equal(again[members], labels[members])  # every fitted member keeps its label
    assert ((again >= -1) == (labels >= -1)).all()

    # symbolic dynamics, under ours and under the tool's imported clustering
    r = _run(["analyse", "dynamics", eid, "--clustering", "leg", *sched[:2]], capsys)
    assert sum(n["runs"] for n in r["networks"]) == n_runs
    ds = panicflow.open_experiment(eid, store=store)[r["path"]].ds
    np.testing.assert_array_equal(ds.run_core.values + ds.run_transit.values + ds.run_unassigned.values, per_run)
    np.testing.assert_array_equal(ds.run_absorbed.values, root.stop_reason.values == "loop")
    assert ds.transition_count.values.sum() > 0
    (tool,) = [n for n in tree["analysis/clusters"].children if n not in ("leg", "leg-self")]  # the tool's, imported
    r = _run(["analyse", "dynamics", eid, "--clustering", tool, *sched[:2]], capsys)
    assert sum(n["runs"] for n in r["networks"]) == n_runs

    # density and noise
    r = _run(["analyse", "knn", eid, "--model", MODEL, "--k", "3", *sched[:2]], capsys)
    d = panicflow.open_experiment(eid, store=store)[r["path"]].ds.distance.values
    assert (~np.isnan(d).any(axis=2)).sum() == n_vectors and (d[~np.isnan(d)] >= 0).all()
    r = _run(["analyse", "noise-sweep", eid, "--model", MODEL, "--sizes", "3,5", *sched[:2]], capsys)
    sw = panicflow.open_experiment(eid, store=store)[r["path"]].ds
    assert sw.min_cluster_size.values.tolist() == [3, 5] and (sw.n_noise.values <= n_vectors).all()
    assert panicflow.open_experiment(eid, store=store)[r["path"]].attrs["n_vectors"] == n_vectors

    # recurrence, windows and the per-run table (on the imported diagrams: the tool's, of the raw vectors)
    _run(["analyse", "sequences", eid, "--clustering", "leg", *sched[:2]], capsys)
    r = _run(["analyse", "recurrence", eid, "--clustering", "leg", *sched[:2]], capsys)
    rec = panicflow.open_experiment(eid, store=store)[r["path"]].ds
    np.testing.assert_array_equal(rec.n_points.values[per_run > 0], per_run[per_run > 0])
    assert np.isfinite(rec.rr_distance.values[per_run > 1]).all()
    r = _run(["analyse", "windows", eid, "--model", MODEL, "--window", "5", "--stride", "3", *sched[:2]], capsys)
    win = panicflow.open_experiment(eid, store=store)[r["path"]].ds
    assert len(win.window_run) == sum((n - 5) // 3 + 1 for n in per_run if n >= 5) > 0
    r = _run(["analyse", "run-table", eid, *sched[:2], "--out", str(tmp_path)], capsys)
    from panicflow.analysis.recurrence import run_table_frame

    t = run_table_frame(eid, store)
    assert len(t) == int((per_run > 0).sum()) and t.n_points.tolist() == per_run[per_run > 0].tolist()
    ent = tree[f"diagrams/{MODEL}"].ds.entropy.values
    np.testing.assert_array_equal(t.entropy_h0.to_numpy(), ent[t.run.to_numpy(), 0])
    assert np.isfinite(t.entropy_h0).any() and (tmp_path / f"run_table-{r['path'].rsplit('/', 1)[1]}.csv").exists()

    # stability under subsampling
    r = _run(["analyse", "stability", eid, "--model", MODEL, "--min-cluster-size", "5", "--resamples", "2", *sched], capsys)
    assert r["n_points"] == round(0.8 * n_vectors) and len(r["quantiles"]) == 5 and -1 <= r["mean"] <= 1


def test_the_imported_clustering_cannot_be_assigned(imported, capsys):
    """The tool's clustering has labels but no frozen model: assign says so in one line (exit 2)."""
    store, eid, _ = imported
    tool = [n for n in panicflow.open_experiment(eid, store=store)["analysis/clusters"].children if n.startswith("legacy-")]
    assert main(["analyse", "assign", eid, "--clustering", tool[0], "--from", eid, "--store", store]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imported from the earlier tool" in err[0] and "analyse cluster" in err[0]
