"""Clustering against direct hdbscan / scikit-learn calls on the same vectors."""

import hdbscan
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering
from panicflow.analysis.results import list_results
from panicflow.errors import UserError
from panicflow.store import Store

MODEL = "DummyText"


@pytest.fixture(scope="module")
def blobs_experiment(analysis_experiment, tmp_path_factory):
    """A copy of the analysis experiment whose DummyText vectors are replaced by 6 noisy blobs
    (dummy embeddings are hash-like and have no clusters to find)."""
    import shutil

    store, eid = analysis_experiment
    copy = str(tmp_path_factory.mktemp("blobs") / "store")
    shutil.copytree(store, copy)
    g = Store(copy).experiment(eid).group()
    vec = g[f"embeddings/{MODEL}/vector"]
    v = vec[...]
    has = ~np.isnan(v).any(axis=2)
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(6, v.shape[2]))
    which = rng.integers(0, 6, has.sum())
    v[has] = (centers[which] + 0.05 * rng.normal(size=(has.sum(), v.shape[2]))).astype(np.float32)
    vec[...] = v
    return copy, eid


def _stored_vectors(store, eid):
    """Unit vectors in (run, step) order, with their (run, step), read from the tree."""
    vec = panicflow.open_experiment(eid, store=store)[f"embeddings/{MODEL}"].ds.vector.values.astype(np.float64)
    run, step = np.nonzero(~np.isnan(vec).any(axis=2))
    v = vec[run, step]
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), run, step


def _check_medoids(a, v, run, step):
    lab = a["label"][run, step]
    for c, mr, ms in zip(a["cluster_id"], a["medoid_run"], a["medoid_step"]):
        members = np.flatnonzero(lab == c)
        total = cdist(v[members].astype(np.float64), v[members].astype(np.float64), "cosine").sum(axis=1)
        best = members[np.argmin(total)]
        assert total[np.flatnonzero(members == best)[0]] == pytest.approx(
            total[np.flatnonzero((run[members] == mr) & (step[members] == ms))[0]], rel=1e-9, abs=1e-9)
        assert lab[(run == mr) & (step == ms)][0] == c


def test_no_reduction_equals_direct_hdbscan(blobs_experiment, client):
    store, eid = blobs_experiment
    name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, reduce="none")
    a = clustering.assignments(eid, name, store=store)
    v, run, step = _stored_vectors(store, eid)
    direct = hdbscan.HDBSCAN(min_cluster_size=5).fit(v)
    assert direct.labels_.max() >= 1  # the data has clusters to find
    np.testing.assert_array_equal(a["label"][run, step], direct.labels_)
    np.testing.assert_allclose(a["probability"][run, step], direct.probabilities_, rtol=1e-6)
    mask = np.ones(a["label"].shape, bool)
    mask[run, step] = False
    assert (a["label"][mask] == -2).all() and np.isnan(a["probability"][mask]).all()
    assert list(a["size"]) == [int((direct.labels_ == c).sum()) for c in a["cluster_id"]]
    _check_medoids(a, v, run, step)
    assert a["attrs"]["library"] == "hdbscan" and a["attrs"]["versions"]["hdbscan"] == hdbscan.__version__ if hasattr(
        hdbscan, "__version__") else "hdbscan" in a["attrs"]["versions"]
    assert a["attrs"]["parameters"]["reduce"] == "none" and a["attrs"]["inputs"] == [Store(store).experiment(eid).id]


def test_pca_equals_direct_pca_then_hdbscan_and_kept_beside(blobs_experiment, client):
    store, eid = blobs_experiment
    first = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, reduce="none")
    name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, min_samples=3, reduce="pca:8")
    assert name != first
    found = list_results(Store(store).experiment(eid), "clusters")
    assert {first, name} <= set(found)  # the second clustering is beside the first
    a = clustering.assignments(eid, name, store=store)
    v, run, step = _stored_vectors(store, eid)
    x = PCA(n_components=8, svd_solver="full", random_state=0).fit_transform(v).astype(np.float32)
    direct = hdbscan.HDBSCAN(min_cluster_size=5, min_samples=3).fit(x)
    from sklearn.metrics import adjusted_rand_score

    # per-run projection may differ from the one-block projection in the last float bits
    assert adjusted_rand_score(a["label"][run, step], direct.labels_) > 0.98
    tree = panicflow.open_experiment(eid, store=store)  # results do not break the tree
    assert tree[f"analysis/clusters/{name}"].ds.label.dims == ("run", "step")


def test_sample_labels_everything(blobs_experiment, client):
    store, eid = blobs_experiment
    name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, reduce="pca:8", sample=200)
    a = clustering.assignments(eid, name, store=store)
    v, run, step = _stored_vectors(store, eid)
    assert len(v) > 200
    lab = a["label"][run, step]
    assert (lab >= -1).all() and a["attrs"]["parameters"]["sample"] == 200
    assert a["size"].sum() == (lab >= 0).sum()


def test_two_experiments_in_one_space(blobs_experiment, client, tmp_path):
    import shutil

    store, eid = blobs_experiment
    exp = Store(store).experiment(eid)
    store2 = str(tmp_path / "copy")
    shutil.copytree(store, store2)  # the same experiment under a second id: identical vectors
    import os

    os.rename(os.path.join(store2, "experiments", exp.id), os.path.join(store2, "experiments", exp.id + "b"))
    shutil.copytree(os.path.join(store2, "experiments", exp.id + "b"), os.path.join(store2, "experiments", exp.id))
    name = clustering.cluster([exp.id, exp.id + "b"], MODEL, store=store2, client=client, min_cluster_size=5, reduce="none")
    a1, a2 = (clustering.assignments(e, name, store=store2) for e in (exp.id, exp.id + "b"))
    np.testing.assert_array_equal(a1["label"], a2["label"])  # one space: identical vectors, identical labels
    assert a1["attrs"]["inputs"] == [exp.id, exp.id + "b"]


@pytest.mark.parametrize("kw, message", [
    ({"reduce": "pca"}, "--reduce: expected pca:K"),
    ({"min_cluster_size": 1}, "--min-cluster-size"),
    ({"algorithm": "kmeans"}, "--algorithm"),
    ({"algorithm": "fast_hdbscan", "sample": 100}, "--sample: only with"),
])
def test_user_errors(blobs_experiment, client, kw, message):
    store, eid = blobs_experiment
    with pytest.raises(UserError, match=message):
        clustering.cluster([eid], MODEL, store=store, client=client, **kw)
