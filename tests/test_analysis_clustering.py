"""Clustering against direct hdbscan / scikit-learn calls on the same vectors."""

import hdbscan
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

import panicflow
from analysis_util import analysis_experiment, frozen_rule_brute_force  # noqa: F401
from panicflow.analysis import clustering
from panicflow.analysis.results import list_results, open_result
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


def _noisy(n=900, seed=0):
    """Unit vectors of overlapping blobs of different spreads and uniform noise: data where min_samples and
    epsilon change the clustering (well-separated blobs come out the same under any setting)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, 12))
    which = rng.integers(0, 8, n)
    x = centers[which] + rng.uniform(0.3, 1.2, 8)[which, None] * rng.normal(size=(n, 12))
    x[: n // 10] = rng.uniform(-3, 3, (n // 10, 12))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


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


def test_sample_with_another_library_labels_the_rest_by_the_frozen_rule(blobs_experiment, client):
    """--sample with a library that cannot predict (scikit-learn here; fast-hdbscan and EVoC alike): the sampled vectors
    keep the fit's labels and are the frozen model's members; every other vector takes the label of its nearest member
    (scipy's cdist: analysis_util.frozen_rule_brute_force) when within that cluster's threshold, else -1, with probability NaN."""
    store, eid = blobs_experiment
    name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, reduce="pca:8", sample=200,
                              algorithm="sklearn")
    g = open_result(Store(store).experiment(eid), "clusters", name)
    v, run, step = _stored_vectors(store, eid)
    x = (v.astype(np.float64) - g["pca_mean"][...]) @ g["pca_components"][...].T
    lab, prob = g["label"][...][run, step], g["probability"][...][run, step]
    fitted = ~np.isnan(prob)  # scikit-learn's probabilities for the 200 it fitted (0 for its noise)
    assert fitted.sum() == 200 and g.attrs["parameters"]["sample"] == 200 and g.attrs["parameters"]["algorithm"] == "sklearn"
    members = fitted & (lab >= 0)
    np.testing.assert_allclose(g["frozen_feature"][...], x[members], atol=1e-5)
    np.testing.assert_array_equal(g["frozen_label"][...], lab[members])
    want = frozen_rule_brute_force(x[~fitted], g)
    np.testing.assert_array_equal(lab[~fitted], want)
    assert (want >= 0).mean() > 0.5  # blobs: most unsampled vectors join a cluster
    assert list(g["size"][...]) == [int((lab == c).sum()) for c in g["cluster_id"][...]]


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
    ({"reduce": "pca"}, "--reduce: expected"),
    ({"reduce": "pca:1.5"}, "--reduce: expected"),
    ({"reduce": "pca:0"}, "--reduce: expected"),
    ({"min_cluster_size": 1}, "--min-cluster-size"),
    ({"algorithm": "kmeans"}, "--algorithm"),
    ({"sample": 3}, "--sample: must be at least"),
    ({"preset": "nope"}, "--preset"),
    ({"cluster_selection_epsilon": -0.1}, "--cluster-selection-epsilon"),
])
def test_user_errors(blobs_experiment, client, kw, message):
    store, eid = blobs_experiment
    with pytest.raises(UserError, match=message):
        clustering.cluster([eid], MODEL, store=store, client=client, **kw)


def _mst_weights(x, neighbours_besides_self):
    """Sorted edge weights of a minimum spanning tree of the mutual reachability distances, the core distance being
    the distance to the k-th neighbour not counting the point itself: scipy and numpy, no clustering library."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist as dist

    d = dist(x.astype(np.float64), x.astype(np.float64))
    core = np.sort(d, axis=1)[:, neighbours_besides_self]  # column 0 is the point itself
    mr = np.maximum(d, np.maximum(core[:, None], core[None, :]))
    np.fill_diagonal(mr, 0)
    return np.sort(minimum_spanning_tree(mr).data)


def test_hdbscan_min_samples_k_is_sklearn_k_plus_one():
    """The fact docs/analysis.md states and min_samples_note records: the hdbscan package's min_samples k is the
    density scikit-learn calls k + 1 (scikit-learn counts the point itself). Checked on data where min_samples
    matters: the spanning tree's weights against an independent computation, the labels against scikit-learn."""
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import adjusted_rand_score

    x = _noisy(600)
    for k in (2, 4, 9):
        ours = hdbscan.HDBSCAN(min_cluster_size=10, min_samples=k, approx_min_span_tree=False).fit(x)
        weights = np.sort(ours.single_linkage_tree_.to_numpy()[:, 2])
        np.testing.assert_allclose(weights, _mst_weights(x, k), rtol=1e-5, atol=1e-6)
        assert np.abs(weights - _mst_weights(x, k - 1)).max() > 1e-3  # the same number is another density
        same = HDBSCAN(min_cluster_size=10, min_samples=k + 1, copy=True).fit(x)
        other = HDBSCAN(min_cluster_size=10, min_samples=k, copy=True).fit(x)
        # equal up to how each library breaks ties in the tree
        assert adjusted_rand_score(ours.labels_, same.labels_) > 0.99
        assert adjusted_rand_score(ours.labels_, same.labels_) >= adjusted_rand_score(ours.labels_, other.labels_)
    assert "scikit-learn's min_samples 5" in clustering.min_samples_note("hdbscan", 4)
    assert "hdbscan package's min_samples 3" in clustering.min_samples_note("sklearn", 4)


@pytest.fixture(scope="module")
def noisy_experiment(blobs_experiment, tmp_path_factory):
    """The blobs experiment with the _noisy vectors (zero-padded to the model's dimension) instead."""
    import shutil

    store, eid = blobs_experiment
    copy = str(tmp_path_factory.mktemp("noisy") / "store")
    shutil.copytree(store, copy)
    vec = Store(copy).experiment(eid).group()[f"embeddings/{MODEL}/vector"]
    v = vec[...]
    has = ~np.isnan(v).any(axis=2)
    x = _noisy(int(has.sum()), seed=3)
    v[has] = 0.0
    v[has, : x.shape[1]] = x
    vec[...] = v
    return copy, eid


def test_defaults_are_stored_in_effect(noisy_experiment, client):
    """Default: --reduce auto is the full space for a small set, and min_samples is stored as the value in effect
    (= min_cluster_size), not null (issue 24 item 6); labels equal a direct hdbscan call."""
    store, eid = noisy_experiment
    name = clustering.cluster([eid], MODEL, store=store, client=client)
    a = clustering.assignments(eid, name, store=store)
    p = a["attrs"]["parameters"]
    assert p["reduce"] == "none" and p["reduce_requested"] == "auto" and "explained_variance" not in a["attrs"]
    assert p["min_cluster_size"] == 10 and p["min_samples"] == 10 and p["algorithm"] == "hdbscan"
    assert p["cluster_selection_epsilon"] == 0.0 and p["allow_single_cluster"] is False
    assert a["attrs"]["requested"]["min_samples"] is None
    assert "scikit-learn's min_samples 11 is the same setting" in a["attrs"]["min_samples_note"]
    assert a["attrs"]["duplicates"] == clustering.DUPLICATE_RULE
    v, run, step = _stored_vectors(store, eid)
    np.testing.assert_array_equal(a["label"][run, step], hdbscan.HDBSCAN(min_cluster_size=10).fit(v).labels_)


def test_explained_variance_recorded_and_low_variance_warns(noisy_experiment, client, monkeypatch):
    store, eid = noisy_experiment
    v, run, step = _stored_vectors(store, eid)
    with pytest.warns(clustering.LowVarianceWarning, match=r"keeps \d+% of the variance"):
        name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, reduce="pca:2")
    a = clustering.assignments(eid, name, store=store)["attrs"]
    ref = PCA(n_components=2, svd_solver="full").fit(v)  # an independent fit on the same unit vectors
    assert a["explained_variance"] == pytest.approx(ref.explained_variance_ratio_.sum(), rel=1e-4)
    np.testing.assert_allclose(a["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-4)
    assert a["explained_variance"] < clustering.LOW_VARIANCE
    # a variance target: the fewest components keeping 90 %, as scikit-learn picks them; no warning
    target = PCA(n_components=0.9, svd_solver="full").fit(v)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", clustering.LowVarianceWarning)
        name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5, reduce="pca:0.9")
    a = clustering.assignments(eid, name, store=store)["attrs"]
    assert a["parameters"]["reduce"] == f"pca:{target.n_components_}" and a["parameters"]["reduce_requested"] == "pca:0.9"
    assert a["explained_variance"] >= 0.9
    # auto above AUTO_FULL_SPACE_MAX vectors: that variance target
    monkeypatch.setattr(clustering, "AUTO_FULL_SPACE_MAX", 10)
    a = clustering.assignments(eid, clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=5),
                               store=store)["attrs"]
    assert a["parameters"]["reduce"] == f"pca:{target.n_components_}" and a["parameters"]["reduce_requested"] == "auto"


@pytest.mark.filterwarnings("ignore:The default value of `copy`:FutureWarning")  # the tool's call, as it was
def test_panic_tda_preset_equals_the_earlier_tools_call(noisy_experiment, client):
    """--preset panic-tda: the earlier tool's clustering (reference 2.8), checked against its own call on the
    same unit vectors: scikit-learn's HDBSCAN, min sizes max(2, int(0.001 n)), epsilon, a single cluster allowed."""
    from sklearn.cluster import HDBSCAN

    store, eid = noisy_experiment
    v, run, step = _stored_vectors(store, eid)
    for eps, extra in ((0.5, {}), (0.1, {"cluster_selection_epsilon": 0.1, "min_cluster_size": 8, "min_samples": 8})):
        name = clustering.cluster([eid], MODEL, store=store, client=client, preset="panic-tda", **extra)
        a = clustering.assignments(eid, name, store=store)
        size = extra.get("min_cluster_size", max(2, int(len(v) * 0.001)))
        tool = HDBSCAN(min_cluster_size=size, min_samples=size, cluster_selection_epsilon=eps, allow_single_cluster=True,
                       metric="euclidean", store_centers="medoid", n_jobs=-1).fit(v)
        np.testing.assert_array_equal(a["label"][run, step], tool.labels_)
        np.testing.assert_allclose(a["probability"][run, step], tool.probabilities_, rtol=1e-6)
        p = a["attrs"]["parameters"]
        assert (p["algorithm"], p["preset"], p["reduce"], p["allow_single_cluster"]) == ("sklearn", "panic-tda", "none", True)
        assert p["min_cluster_size"] == p["min_samples"] == size and p["cluster_selection_epsilon"] == eps
        assert a["attrs"]["library"] == "scikit-learn" and "scikit-learn" in a["attrs"]["versions"]


def test_cli_warns_in_one_line_and_takes_the_preset(noisy_experiment, client):
    from typer.testing import CliRunner

    from panicflow.analysis.cli import analyse_app

    store, eid = noisy_experiment
    sched = client.scheduler.address
    r = CliRunner().invoke(analyse_app, ["cluster", eid, "--model", MODEL, "--min-cluster-size", "5", "--reduce", "pca:2",
                                         "--store", store, "--scheduler", sched])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "warning" in ln.lower()]
    assert len(lines) == 1 and lines[0].startswith("warning: --reduce pca:2: the PCA keeps") and "LowVarianceWarning" not in r.stderr
    assert "of the variance kept" in r.stderr
    r = CliRunner().invoke(analyse_app, ["cluster", eid, "--model", MODEL, "--preset", "panic-tda", "--cluster-selection-epsilon",
                                         "0.3", "--store", store, "--scheduler", sched, "--json"])
    assert r.exit_code == 0, r.output
    out = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert out["algorithm"] == "sklearn" and out["reduce"] == "none" and out["explained_variance"] is None
    p = clustering.assignments(eid, out["name"], store=store)["attrs"]["parameters"]
    assert p["cluster_selection_epsilon"] == 0.3 and p["allow_single_cluster"] is True
    assert "warning" not in r.stderr.lower()


def _with_duplicates(seed, copies):
    """120 points of 3 blobs in 4-d and ``copies`` more exact copies of 6 points at the blobs' edges, shuffled: the
    data where a library's ties split bit-identical rows (seeds found by trying)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3, size=(3, 4))
    x = (centers[rng.integers(0, 3, 120)] + rng.normal(size=(120, 4))).astype(np.float32)
    d = np.linalg.norm(x - centers[np.argmin(((x[:, None] - centers[None]) ** 2).sum(-1), 1)], axis=1)
    pick = rng.choice(np.argsort(d)[-18:], 6, replace=False)
    x = np.concatenate([x] + [x[pick]] * copies)
    return x[rng.permutation(len(x))]


def _split_groups(x, labels, probs):
    """The groups of bit-identical rows of x (row indices) whose labels or probabilities differ."""
    _, inv = np.unique(x, axis=0, return_inverse=True)
    inv = inv.ravel()
    groups = [np.flatnonzero(inv == g) for g in np.unique(inv)]
    return [r for r in groups if len(r) > 1 and (len(set(labels[r])) > 1 or len(set(probs[r])) > 1)]


FIT = {"min_cluster_size": 5, "min_samples": 5, "cluster_selection_epsilon": 0.0, "allow_single_cluster": False,
       "sample": None, "seed": 0}


@pytest.mark.parametrize("algorithm, seed, copies", [("hdbscan", 4, 4), ("sklearn", 58, 1)])
def test_bit_identical_vectors_share_one_label(algorithm, seed, copies):
    """hdbscan joins exact duplicates at their core distance and breaks ties arbitrarily (scikit-learn alike): the raw
    fit here puts one copy of a vector in noise and the others in a cluster; ``_fit`` gives them one label."""
    from sklearn.cluster import HDBSCAN

    x = _with_duplicates(seed, copies)
    raw = (hdbscan.HDBSCAN(min_cluster_size=5, min_samples=5) if algorithm == "hdbscan"
           else HDBSCAN(min_cluster_size=5, min_samples=5, copy=True)).fit(x)
    split = _split_groups(x, raw.labels_, raw.probabilities_)
    assert split and any(-1 in raw.labels_[r] and (raw.labels_[r] >= 0).any() for r in split)  # the premise
    c, labels, probs = clustering._fit(FIT | {"algorithm": algorithm}, x[:100], x[100:])
    assert _split_groups(x, labels, probs) == []
    for r in split:  # the members' label, and its largest probability
        want = np.bincount(raw.labels_[r][raw.labels_[r] >= 0]).argmax()
        assert labels[r[0]] == want and probs[r[0]] == np.float32(raw.probabilities_[r][raw.labels_[r] == want].max())
    other = np.ones(len(x), bool)
    other[np.concatenate(split)] = False
    np.testing.assert_array_equal(labels[other], raw.labels_[other])  # the rest as the library gave it
    np.testing.assert_array_equal(probs[other], raw.probabilities_[other].astype(np.float32))
    assert (c is not None) == (algorithm == "hdbscan")


def test_tie_duplicates_rule():
    """The most common non-noise label of a group (ties: the smallest), noise only if all are noise; the largest
    probability among the rows with that label; rows without a copy untouched."""
    x = np.array([[0, 0], [9, 9], [0, 0], [0, 0], [0, 0], [2, 2], [2, 2], [3, 3], [3, 3], [5, 5]], np.float32)
    lab = np.array([-1, 7, 1, 1, 0, 0, 1, -1, -1, 4])
    prob = np.array([0, .9, .2, .6, .8, .3, .4, 0, 0, .5])
    labels, probs = clustering._tie_duplicates(x, lab, prob)
    np.testing.assert_array_equal(labels, [1, 7, 1, 1, 1, 0, 0, -1, -1, 4])
    np.testing.assert_array_equal(probs, np.array([.6, .9, .6, .6, .6, .3, .3, 0, 0, .5], np.float32))
    assert labels.dtype == np.int32 and probs.dtype == np.float32
    np.testing.assert_array_equal(lab, [-1, 7, 1, 1, 0, 0, 1, -1, -1, 4])  # the inputs are not changed


@pytest.mark.parametrize("algorithm", ["hdbscan", "sklearn"])
def test_sampled_vectors_identical_to_fitted_ones_take_their_label(algorithm):
    """--sample: a vector the fit did not see that is bit-identical to a fitted one takes the fitted one's (shared) label
    and probability, not approximate_predict's or the frozen rule's."""
    x = _with_duplicates(4, 4)
    p = FIT | {"algorithm": algorithm, "sample": len(x)}
    fit = clustering._fit(p, x)
    frozen = None if algorithm == "hdbscan" else clustering._with_tree(clustering._frozen(p, fit, x))
    seen = clustering._fitted_rows(fit, x)
    labels, probs = clustering._predict(fit, x, frozen, seen)
    np.testing.assert_array_equal(labels, fit[1])
    np.testing.assert_array_equal(probs, fit[2])
    rng = np.random.default_rng(0)
    new = rng.normal(size=(5, 4)).astype(np.float32) * 10  # far from every fitted vector
    both = np.concatenate([x[:3], new])
    labels, probs = clustering._predict(fit, both, frozen, seen)
    np.testing.assert_array_equal(labels[:3], fit[1][:3])
    np.testing.assert_array_equal(labels[3:], clustering._predict(fit, new, frozen, None)[0])
    if algorithm == "hdbscan":  # approximate_predict alone gives a fitted vector another strength than the fit's
        alone = clustering._predict(fit, x, None, None)
        assert not np.array_equal(alone[1], fit[2])
    else:  # the frozen rule alone gives fitted noise near a cluster that cluster's label
        assert (clustering._predict(fit, x, frozen, None)[0] != fit[1]).any() and np.isnan(probs[3:]).all()
