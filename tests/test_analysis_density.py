"""Density and noise (issue 24 item 3): k-nearest-neighbour distances against brute force in numpy, the noise
sweep against direct hdbscan calls, noise by caption length against a pandas join of the exported tables."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering, density, tables
from panicflow.analysis.cli import analyse_app
from panicflow.errors import UserError


@pytest.fixture(scope="module")
def copied(analysis_experiment, tmp_path_factory):
    """A copy of the shared experiment's store: these tests write results into it."""
    store, eid = analysis_experiment
    dst = str(tmp_path_factory.mktemp("density") / "store")
    shutil.copytree(store, dst)
    return dst, eid


def _unit_vectors(store, eid, model):
    t = tables.table("embeddings", eid, store)
    t = t[t.embedding_model == model].sort_values(["run", "step"])
    x = np.stack(t.vector.to_numpy()).astype(np.float64)
    return t.run.to_numpy(), t.step.to_numpy(), x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_knn(x, k):
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k]


def test_knn_against_brute_force_with_duplicates():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6))
    x[5] = x[7]  # a duplicate: a neighbour at distance 0, the point itself left out
    np.testing.assert_allclose(density.knn(x, 4), _brute_knn(x, 4), atol=1e-9)
    with pytest.raises(UserError, match="--k"):
        density.knn(x, 40)


def test_stored_knn_distances(copied):
    store, eid = copied
    path = density.knn_distances(eid, "DummyText", store, k=5)
    assert path == "analysis/knn/DummyText-k5"
    runs, steps, x = _unit_vectors(store, eid, "DummyText")
    want = _brute_knn(x, 5)
    t = density.knn_table(eid, store).sort_values(["run", "step", "k"])
    got = t.distance.to_numpy().reshape(-1, 5)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (t.groupby(["run", "step"]).size() == 5).all() and len(got) == len(x)
    from panicflow.analysis.results import experiment, open_result

    attrs = dict(open_result(experiment(store, eid), "knn").attrs)
    assert attrs["parameters"]["k"] == 5 and attrs["n_vectors"] == len(x) and "scikit-learn" in attrs["versions"]
    assert density.knn_figure(t).axes


def test_a_sample_of_queries_has_the_exact_distances_of_its_vectors(copied):
    """--queries N: N vectors (a seeded sample), each measured against every vector, exactly as in a full run."""
    store, eid = copied
    runs, steps, x = _unit_vectors(store, eid, "DummyText")
    want = _brute_knn(x, 3)
    path = density.knn_distances(eid, "DummyText", store, k=3, queries=25, seed=7, name="sample")
    t = density.knn_table(eid, store, path.rsplit("/", 1)[1]).sort_values(["run", "step", "k"])
    measured = t[["run", "step"]].drop_duplicates().to_numpy()
    assert len(measured) == 25 < len(x)
    at = {(r, s): i for i, (r, s) in enumerate(zip(runs, steps))}
    rows = np.array([at[(r, s)] for r, s in measured])
    np.testing.assert_array_equal(rows, density.query_rows(len(x), 25, 7))  # the sample is the seed's
    np.testing.assert_allclose(t.distance.to_numpy().reshape(-1, 3), want[rows], atol=1e-6)
    again = density.knn_distances(eid, "DummyText", store, k=3, queries=25, seed=8, name="other")
    assert not density.knn_table(eid, store, again.rsplit("/", 1)[1])[["run", "step"]].drop_duplicates().equals(
        t[["run", "step"]].drop_duplicates().reset_index(drop=True))
    from panicflow.analysis.results import experiment, open_result

    attrs = dict(open_result(experiment(store, eid), "knn", "sample").attrs)
    assert attrs["n_queries"] == 25 and attrs["n_vectors"] == len(x) and attrs["parameters"]["queries"] == 25
    assert len(density.query_rows(len(x), 0, 0)) == len(density.query_rows(len(x), 10**6, 0)) == len(x)
    with pytest.raises(UserError, match="--queries"):
        density.query_rows(len(x), -1, 0)


def test_noise_sweep_equals_direct_hdbscan(copied):
    import hdbscan

    store, eid = copied
    sizes = [3, 5, 10]
    density.noise_sweep(eid, "DummyVision", store, sizes=sizes, name="sweep")
    t = density.sweep_table(eid, store, "sweep")
    _, _, x = _unit_vectors(store, eid, "DummyVision")
    def direct(z, m):  # hdbscan's fit, exact duplicates given one label as analyse cluster gives them
        c = hdbscan.HDBSCAN(min_cluster_size=m, min_samples=m, metric="euclidean").fit(z)
        return clustering._tie_duplicates(z, c.labels_, c.probabilities_)[0]

    for m, row in zip(sizes, t.itertuples()):
        labels = direct(x.astype(np.float32), m)
        assert row.min_cluster_size == m and row.min_samples == m
        assert row.n_noise == (labels == -1).sum() and row.noise_fraction == pytest.approx((labels == -1).mean())
        assert row.n_clusters == len(set(labels) - {-1})
    assert density.sweep_figure(t).axes
    # with a PCA: fitted once on all vectors (fewer than pca_fit_size), as analyse cluster fits it
    from sklearn.decomposition import PCA

    density.noise_sweep(eid, "DummyVision", store, sizes=[3, 6], reduce="pca:4", name="sweep-pca")
    t = density.sweep_table(eid, store, "sweep-pca")
    x32 = x.astype(np.float32)
    z = PCA(n_components=4, svd_solver="full", random_state=0).fit(x32).transform(x32).astype(np.float32)
    for m, row in zip([3, 6], t.itertuples()):
        labels = direct(z, m)
        assert row.n_noise == (labels == -1).sum() and row.n_clusters == len(set(labels) - {-1})


def test_noise_against_caption_length(copied, client):
    store, eid = copied
    name = clustering.cluster([eid], "DummyText", store=store, client=client, min_cluster_size=3, name="text3")
    density.noise_by_caption(eid, name, store)
    got = density.caption_table(eid, store, name).sort_values(["run", "step"]).reset_index(drop=True)
    inv = tables.table("invocations", eid, store)
    lab = tables.table("assignments", eid, store)
    lab = lab[lab.clustering == name]
    want = inv[inv.kind == "text"].merge(lab, on=["run", "step"]).sort_values(["run", "step"]).reset_index(drop=True)
    assert len(got) == len(want) > 0
    assert got.captioner.tolist() == want.model.tolist()
    assert got.caption_chars.tolist() == want.text.str.len().tolist()
    assert got.caption_words.tolist() == want.text.str.split().str.len().tolist()
    assert got.noise.tolist() == (want.label == -1).tolist()
    from panicflow.analysis.results import experiment, open_result

    per = open_result(experiment(store, eid), "noise_caption", name).attrs["per_captioner"]
    for c, grp in want.groupby("model"):
        assert per[c]["n"] == len(grp) and per[c]["noise_fraction"] == pytest.approx((grp.label == -1).mean())
    assert density.caption_figure(got).axes
    with pytest.raises(UserError, match="embeds no captions"):
        vis = clustering.cluster([eid], "DummyVision", store=store, client=client, min_cluster_size=3, name="vis3")
        density.noise_by_caption(eid, vis, store)


def test_commands_write_table_and_chart(copied, tmp_path):
    store, eid = copied
    runner = CliRunner()
    res = runner.invoke(analyse_app, ["knn", eid, "--model", "DummyVision", "--k", "3", "--store", store, "--out",
                                      str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["path"] == "analysis/knn/DummyVision-k3"
    csv = pd.read_csv(tmp_path / "knn-DummyVision-k3.csv")
    assert list(csv.columns) == ["run", "step", "k", "distance"] and (tmp_path / "knn-DummyVision-k3.png").stat().st_size > 0
    res = runner.invoke(analyse_app, ["noise-sweep", eid, "--model", "DummyVision", "--sizes", "4,6", "--store", store,
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    name = res.stdout.strip().rsplit("/", 1)[1]
    assert pd.read_csv(tmp_path / f"noise_sweep-{name}.csv").min_cluster_size.tolist() == [4, 6]
    res = runner.invoke(analyse_app, ["noise-sweep", eid, "--model", "DummyVision", "--sizes", "a,b", "--store", store])
    assert isinstance(res.exception, UserError) and "--sizes" in str(res.exception)
