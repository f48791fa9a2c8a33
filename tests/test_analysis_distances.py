"""Diagram distances (gudhi) against persim and a Hungarian-algorithm oracle, and stored matrices."""

import numpy as np
import persim
import pytest
from scipy.optimize import linear_sum_assignment

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import distances
from panicflow.analysis.results import list_results
from panicflow.store import Store


def _random_diagram(rng, n):
    birth = rng.uniform(0, 1, n)
    return np.column_stack([birth, birth + rng.exponential(0.3, n)])


def _oracle_wasserstein(a, b, p, q):
    """W_p with ground metric L^q, by an optimal assignment on the diagonal-augmented cost matrix."""
    m, n = len(a), len(b)
    to_diag = lambda d: (d[:, 1] - d[:, 0]) / (2.0 if q == np.inf else 2 ** (1 / q))  # noqa: E731
    big = 1e18
    c = np.zeros((m + n, m + n))
    c[:m, :n] = np.linalg.norm(a[:, None, :] - b[None, :, :], ord=q, axis=2) ** p
    c[:m, n:] = big
    c[m:, :n] = big
    c[np.arange(m), n + np.arange(m)] = to_diag(a) ** p
    c[m + np.arange(n), np.arange(n)] = to_diag(b) ** p
    i, j = linear_sum_assignment(c)
    return c[i, j].sum() ** (1 / p)


@pytest.mark.parametrize("seed", range(8))
def test_against_persim_and_oracle(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_diagram(rng, rng.integers(0, 25)), _random_diagram(rng, rng.integers(1, 25))
    for p in (1, 2):
        for q in (np.inf, 2.0):
            assert distances.wasserstein(a, b, p, q) == pytest.approx(_oracle_wasserstein(a, b, p, q), rel=1e-5, abs=1e-9)
    # persim: W1 with a euclidean ground metric, bottleneck with L-infinity
    assert distances.wasserstein(a, b, 1, 2.0) == pytest.approx(persim.wasserstein(a, b), rel=1e-5, abs=1e-9)
    assert distances.bottleneck(a, b) == pytest.approx(persim.bottleneck(a, b), rel=1e-6, abs=1e-9)


def test_infinite_bars_left_out():
    a = np.array([[0.0, np.inf], [0.1, 0.5]])
    b = np.array([[0.0, np.inf], [0.1, 0.7]])
    assert distances.wasserstein(a, b, 1) == pytest.approx(0.2)
    assert distances.bottleneck(a, b) == pytest.approx(0.2)


def test_pairwise_matrix(analysis_experiment, client):
    store, eid = analysis_experiment
    path = distances.pairwise_distances([eid], "DummyText", store=store, client=client, runs=[0, 1, 2, 5, 9])
    tree = panicflow.open_experiment(eid, store=store)
    ds = tree[path].ds
    assert list(ds.diagram_run.values) == [0, 1, 2, 5, 9]
    dg = tree["diagrams/DummyText"].ds
    for metric in distances.METRICS:
        m = ds[metric].values
        assert m.shape == (3, 5, 5)
        np.testing.assert_allclose(m, np.swapaxes(m, 1, 2))
        assert (np.diagonal(m, axis1=1, axis2=2) == 0).all()
    # one entry recomputed from the raw stored pairs with persim (W1 needs a euclidean ground metric there)
    def raw(run, k):
        sel = dg.dimension.values[run] == k
        d = np.column_stack([dg.birth.values[run][sel], dg.death.values[run][sel]])
        return d[np.isfinite(d).all(axis=1)]
    for k in range(3):
        assert ds.bottleneck.values[k, 1, 3] == pytest.approx(persim.bottleneck(raw(1, k), raw(5, k)), rel=1e-6, abs=1e-12)
        assert ds.wasserstein_1.values[k, 0, 4] == pytest.approx(_oracle_wasserstein(raw(0, k), raw(9, k), 1, np.inf), rel=1e-5, abs=1e-12)
    assert ds.wasserstein_1.values[1].max() > 0
    attrs = list_results(Store(store).experiment(eid), "distances")[path.rsplit("/", 1)[1]]
    assert attrs["library"] == "gudhi" and "gudhi" in attrs["versions"] and attrs["parameters"]["runs"] == [0, 1, 2, 5, 9]
