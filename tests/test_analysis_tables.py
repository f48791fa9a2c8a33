"""Tidy tables: readable by pandas (and pyarrow), equal to the arrays they come from."""

import numpy as np
import pandas as pd
import pytest

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering, drift, tables
from panicflow.errors import UserError


@pytest.fixture(scope="module")
def with_results(analysis_experiment, client):
    store, eid = analysis_experiment
    drift.semantic_drift(eid, "DummyVision", store=store, client=client)
    name = clustering.cluster([eid], "DummyText", store=store, client=client, min_cluster_size=5, reduce="pca:4", name="tables")
    return store, eid, name


def test_export_parquet_and_csv(with_results, tmp_path):
    store, eid, name = with_results  # the experiment is shared: other modules' results may be there too
    tree = panicflow.open_experiment(eid, store=store)
    root, n_runs = tree["/"].ds, tree["/"].ds.sizes["run"]
    for fmt in ("parquet", "csv"):
        paths = tables.export_tables(eid, tmp_path / fmt, fmt=fmt, store=store)
        assert set(paths) == set(tables.TABLES)
        read = pd.read_parquet if fmt == "parquet" else pd.read_csv
        runs = read(paths["runs"])
        assert len(runs) == n_runs and list(runs.prompt) == [str(p) for p in root.prompt.values]
        inv = read(paths["invocations"])
        assert len(inv) == int(root.length.values.sum())
        row = inv[(inv.run == 3) & (inv.step == 5)].iloc[0]
        assert row.output_hash == str(root.output_hash.values[3, 5])
        emb = read(paths["embeddings"])
        vec = tree["embeddings/DummyText"].ds.vector.values
        assert (emb.embedding_model == "DummyText").sum() == int((~np.isnan(vec).any(axis=2)).sum())
        one = emb[(emb.embedding_model == "DummyText")].iloc[0]
        v = one.vector if fmt == "parquet" else __import__("json").loads(one.vector)
        np.testing.assert_array_equal(np.asarray(v, np.float32), vec[one.run, one.step])
        bars = read(paths["bars"])
        dg = tree["diagrams/DummyVision"].ds
        assert (bars.embedding_model == "DummyVision").sum() == int((dg.dimension.values >= 0).sum())
        ent = read(paths["entropies"])
        e = ent[(ent.embedding_model == "DummyText") & (ent.run == 2) & (ent.homology_dim == 1)].entropy.iloc[0]
        assert e == pytest.approx(tree["diagrams/DummyText"].ds.entropy.values[2, 1])
        dr = read(paths["drift"])
        assert (dr.embedding_model == "DummyVision").sum() == int((~np.isnan(tree["analysis/drift/DummyVision"].ds.cosine_distance.values)).sum())
        cl, asg = read(paths["clusters"]), read(paths["assignments"])
        cl, asg = cl[cl.clustering == name], asg[asg.clustering == name]
        assert len(asg) == int((~np.isnan(vec).any(axis=2)).sum())
        sizes = asg[asg.label >= 0].groupby("label").size()
        assert dict(zip(cl.cluster_id, cl["size"])) == {int(k): int(v) for k, v in sizes.items()}


def test_python_tables_and_streaming(with_results):
    store, eid, _ = with_results
    df = tables.table("embeddings", eid, store=store, vectors=False)
    assert "vector" not in df.columns and len(df) > 0
    batches = list(tables.iter_table("invocations", eid, store=store, runs_per_block=3))
    assert len(batches) >= 5 and max(b.num_rows for b in batches) <= 3 * 40
    assert str(tables.table("invocations", eid, store=store).started_at.dtype).startswith("datetime64")
    with pytest.raises(UserError, match="unknown table"):
        tables.table("nope", eid, store=store)
