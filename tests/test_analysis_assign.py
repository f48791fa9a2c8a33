"""One clustering across experiments (issue 24 item 1): a stored clustering applied without refitting (`analyse
assign`), stability under subsampling (`analyse stability`) and EVoC, each against an independent computation."""

import json
import os
import shutil

import hdbscan
import numpy as np
import pytest
from scipy.spatial.distance import cdist

import panicflow
from analysis_util import analysis_experiment, frozen_rule_brute_force  # noqa: F401
from panicflow.analysis import clustering
from panicflow.analysis.assign import assign
from panicflow.analysis.results import open_result
from panicflow.errors import UserError
from panicflow.store import Store

MODEL = "DummyText"


def _blobs(v, has, rng, centers, spread=0.05):
    which = rng.integers(0, len(centers), has.sum())
    v[has] = (centers[which] + spread * rng.normal(size=(has.sum(), v.shape[2]))).astype(np.float32)
    return v


@pytest.fixture(scope="module")
def two_experiments(analysis_experiment, tmp_path_factory):
    """A store with the analysis experiment twice: A (6 noisy blobs) and B (the same blobs drawn again, and 20 vectors
    far from every blob), so B's vectors are new to a clustering fitted on A."""
    store, eid = analysis_experiment
    copy = str(tmp_path_factory.mktemp("assign") / "store")
    shutil.copytree(store, copy)
    a = Store(copy).experiment(eid).id
    b = a[:-1] + ("0" if a[-1] != "0" else "1")
    shutil.copytree(os.path.join(copy, "experiments", a), os.path.join(copy, "experiments", b))
    rng = np.random.default_rng(7)
    for i, e in enumerate((a, b)):
        vec = Store(copy).experiment(e).group()[f"embeddings/{MODEL}/vector"]
        v = vec[...]
        has = ~np.isnan(v).any(axis=2)
        if i == 0:
            centers = rng.normal(size=(6, v.shape[2]))
        v = _blobs(v, has, rng, centers)
        if i == 1:
            far = np.argwhere(has)[:20]
            v[far[:, 0], far[:, 1]] = rng.normal(size=(20, v.shape[2])).astype(np.float32)
        vec[...] = v
    return copy, a, b


def _stored_vectors(store, eid):
    vec = panicflow.open_experiment(eid, store=store)[f"embeddings/{MODEL}"].ds.vector.values.astype(np.float64)
    run, step = np.nonzero(~np.isnan(vec).any(axis=2))
    v = vec[run, step]
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), run, step


def test_frozen_model_and_assign_against_brute_force(two_experiments, client):
    store, a, b = two_experiments
    name = clustering.cluster([a], MODEL, store=store, client=client, min_cluster_size=5, reduce="pca:8")
    g = open_result(Store(store).experiment(a), "clusters", name)
    assert g.attrs["fitted"] is True and g.attrs["frozen_in"] == a and g.attrs["frozen_k"] == 5
    v, run, step = _stored_vectors(store, a)
    labels = g["label"][...][run, step]
    members = np.flatnonzero(labels >= 0)
    # the stored PCA reproduces the clustering's space, and the stored members are the fit's members
    x = (v.astype(np.float64) - g["pca_mean"][...]) @ g["pca_components"][...].T
    np.testing.assert_allclose(g["frozen_feature"][...], x[members], atol=1e-5)
    np.testing.assert_array_equal(g["frozen_label"][...], labels[members])
    # core distances: the 5th nearest fitted vector besides the point, by cdist; thresholds their per-cluster maximum
    core = np.sort(cdist(x[members], x), axis=1)[:, 5]
    np.testing.assert_allclose(g["frozen_core_distance"][...], core, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["threshold"][...], [core[labels[members] == c].max() for c in g["cluster_id"][...]], rtol=1e-4)

    # the fitted corpus re-assigned: every member keeps its label; the brute force agrees everywhere
    again = assign([a], name, a, store=store, client=client)
    r = clustering.assignments(a, again, store=store)
    got = r["label"][run, step]
    np.testing.assert_array_equal(got[members], labels[members])
    np.testing.assert_array_equal(got, frozen_rule_brute_force(x, g))
    assert r["attrs"]["fitted"] is False and r["attrs"]["source_clustering"] == name and r["attrs"]["source_experiment"] == a
    assert r["attrs"]["parameters"]["model"] == MODEL and r["attrs"]["inputs"] == [a] and np.isnan(r["probability"]).all()

    # another experiment, not refitted: the brute force on its vectors; the 20 far vectors are noise
    name_b = assign([b], name, a, store=store, client=client)
    rb = clustering.assignments(b, name_b, store=store)
    vb, rr, ss = _stored_vectors(store, b)
    xb = (vb.astype(np.float64) - g["pca_mean"][...]) @ g["pca_components"][...].T
    got_b = rb["label"][rr, ss]
    np.testing.assert_array_equal(got_b, frozen_rule_brute_force(xb, g))
    far = np.argwhere(~np.isnan(Store(store).experiment(b).group()[f"embeddings/{MODEL}/vector"][...]).any(axis=2))[:20]
    far_lab = rb["label"][far[:, 0], far[:, 1]]
    assert (far_lab == -1).all()
    assert (got_b >= 0).mean() > 0.8  # the blobs drawn again land in their clusters
    assert list(rb["size"]) == [int((got_b == c).sum()) for c in rb["cluster_id"]]
    # a clusters-kind result: the sequences read it like a fitted one
    from panicflow.analysis.sequences import sequences

    assert sequences(b, name_b, store=store).endswith(name_b)
    from panicflow.analysis.plots import describe_clustering, figure

    assert f"fitted on {a}, assigned without refitting" in describe_clustering(rb["attrs"])
    assert figure(b, "clusters", store, clustering=name_b, store_results=False) is not None
    with pytest.raises(UserError, match="not fitted"):
        assign([a], name_b, b, store=store, client=client)


def test_assign_cli(two_experiments, client):
    from typer.testing import CliRunner

    from panicflow.analysis.cli import analyse_app

    store, a, b = two_experiments
    r = CliRunner().invoke(analyse_app, ["cluster", a, "--model", MODEL, "--min-cluster-size", "5", "--reduce", "pca:8",
                                         "--store", store, "--scheduler", client.scheduler.address, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    name = out["name"]  # --json: the variance the reduction kept, as stored
    assert 0 < out["explained_variance"] <= 1
    assert out["explained_variance"] == clustering.assignments(a, name, store=store)["attrs"]["explained_variance"]
    r = CliRunner().invoke(analyse_app, ["assign", b, "--clustering", name, "--from", a, "--store", store,
                                         "--scheduler", client.scheduler.address, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["fitted"] is False and out["source_clustering"] == name and out["path"] == f"analysis/clusters/{out['name']}"
    g = open_result(Store(store).experiment(a), "clusters", name)
    vb, rr, ss = _stored_vectors(store, b)
    xb = (vb.astype(np.float64) - g["pca_mean"][...]) @ g["pca_components"][...].T
    np.testing.assert_array_equal(clustering.assignments(b, out["name"], store=store)["label"][rr, ss], frozen_rule_brute_force(xb, g))


def _hand_ari(u, v):
    """Adjusted Rand index from the contingency table (Hubert and Arabie 1985), by hand."""
    from math import comb

    cu, cv = np.unique(u, return_inverse=True)[1], np.unique(v, return_inverse=True)[1]
    table = np.zeros((cu.max() + 1, cv.max() + 1), np.int64)
    np.add.at(table, (cu, cv), 1)
    index = sum(comb(int(n), 2) for n in table.flat)
    a = sum(comb(int(n), 2) for n in table.sum(axis=1))
    b = sum(comb(int(n), 2) for n in table.sum(axis=0))
    expected = a * b / comb(len(u), 2)
    top = (a + b) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


def test_stability_against_hand_ari(two_experiments, client, tmp_path):
    from typer.testing import CliRunner

    from panicflow.analysis.cli import analyse_app
    from panicflow.analysis.stability import stability_table

    store, a, _ = two_experiments
    r = CliRunner().invoke(analyse_app, ["stability", a, "--model", MODEL, "--min-cluster-size", "5", "--min-samples", "3",
                                         "--reduce", "none", "--resamples", "4", "--fraction", "0.7", "--seed", "3",
                                         "--out", str(tmp_path), "--store", store, "--scheduler", client.scheduler.address, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    v, _, _ = _stored_vectors(store, a)
    full = hdbscan.HDBSCAN(min_cluster_size=5, min_samples=3).fit(v).labels_
    rng = np.random.default_rng(3)
    m = int(round(0.7 * len(v)))
    expected = []
    for _ in range(4):
        rows = np.sort(rng.choice(len(v), m, replace=False))
        expected.append(_hand_ari(full[rows], hdbscan.HDBSCAN(min_cluster_size=5, min_samples=3).fit(v[rows]).labels_))
    t = stability_table(a, store, out["path"].rsplit("/", 1)[1])
    np.testing.assert_allclose(t["ari"], expected, rtol=1e-12)
    assert out["mean"] == pytest.approx(np.mean(expected)) and out["sd"] == pytest.approx(np.std(expected, ddof=1))
    assert out["quantiles"]["0.5"] == pytest.approx(np.median(expected)) and out["n_points"] == m
    assert out["full_n_clusters"] == len(set(full) - {-1})
    assert sorted(os.path.basename(f).rsplit(".", 1)[1] for f in out["files"]) == ["csv", "png", "svg"]
    assert list(t.columns[:5]) == ["experiment_id", "result", "embedding_model", "algorithm", "resample"]
    attrs = dict(open_result(Store(store).experiment(a), "stability", t["result"][0]).attrs)
    assert attrs["parameters"]["resamples"] == 4 and attrs["parameters"]["fraction"] == 0.7 and "hdbscan" in attrs["versions"]


def test_stability_user_errors(two_experiments, client):
    from panicflow.analysis.stability import stability

    store, a, _ = two_experiments
    with pytest.raises(UserError, match="--fraction"):
        stability([a], MODEL, store=store, client=client, fraction=1.0)
    with pytest.raises(UserError, match="--resamples"):
        stability([a], MODEL, store=store, client=client, resamples=0)


def test_evoc_equals_direct_call(two_experiments, client):
    """--algorithm evoc: the labels of a direct EVoC call with the same parameters and seed on the same unit vectors."""
    evoc = pytest.importorskip("evoc")
    store, a, _ = two_experiments
    name = clustering.cluster([a], MODEL, store=store, client=client, algorithm="evoc", min_cluster_size=8, reduce="none", seed=2)
    res = clustering.assignments(a, name, store=store)
    v, run, step = _stored_vectors(store, a)
    direct = evoc.EVoC(base_min_cluster_size=8, min_samples=8, random_state=2).fit(v)
    assert direct.labels_.max() >= 1
    np.testing.assert_array_equal(res["label"][run, step], direct.labels_)
    np.testing.assert_allclose(res["probability"][run, step], direct.membership_strengths_, rtol=1e-6)
    p = res["attrs"]["parameters"]
    assert (p["algorithm"], p["min_cluster_size"], p["min_samples"], p["seed"]) == ("evoc", 8, 8, 2)
    assert res["attrs"]["library"] == "evoc" and res["attrs"]["versions"]["evoc"] != "unknown"
    with pytest.raises(UserError, match="evoc: has no"):
        clustering.cluster([a], MODEL, store=store, client=client, algorithm="evoc", cluster_selection_epsilon=0.1)


def test_assign_from_a_clustering_of_two_experiments(two_experiments, client):
    """A corpus of two experiments: the frozen model lives in the first input; --from the second finds it there."""
    store, a, b = two_experiments
    name = clustering.cluster([a, b], MODEL, store=store, client=client, min_cluster_size=5, reduce="none", name="both")
    ga, gb = (open_result(Store(store).experiment(e), "clusters", name) for e in (a, b))
    assert "frozen_feature" in ga and "frozen_feature" not in gb and gb.attrs["frozen_in"] == a
    out = assign([a], name, b, store=store, client=client, name="again")
    r = clustering.assignments(a, out, store=store)
    v, run, step = _stored_vectors(store, a)
    fitted = ga["label"][...][run, step]
    members = fitted >= 0
    np.testing.assert_array_equal(r["label"][run, step][members], fitted[members])
    np.testing.assert_array_equal(r["label"][run, step], frozen_rule_brute_force(v.astype(np.float64), ga))
    assert r["attrs"]["source_inputs"] == [a, b] and r["attrs"]["source_experiment"] == b


def test_missing_library_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "evoc" else real(n, *a))
    with pytest.raises(UserError, match=r"the evoc package is not installed; pip install 'panicflow\[fast\]'"):
        clustering.ClusterParams(MODEL, algorithm="evoc").check()
