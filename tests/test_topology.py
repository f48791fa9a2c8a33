"""compute_diagram against a direct giotto-ph call and persim's entropy (independent sources)."""

from __future__ import annotations

import numpy as np
import pytest
from gph import ripser_parallel
from scipy.spatial.distance import pdist, squareform
from persim.persistent_entropy import persistent_entropy as persim_entropy

from panicflow.analysis import topology
from panicflow.analysis.topology import (
    PersistenceOptions,
    compute_diagram,
    estimate_cost,
    persistent_entropy,
)


def direct(points: np.ndarray, maxdim: int = 2, collapse: bool | None = None) -> list[np.ndarray]:
    """What a researcher gets calling giotto-ph directly."""
    if collapse is None:
        collapse = PersistenceOptions().collapse_edges
    dist = squareform(pdist(np.asarray(points, dtype=np.float64)))
    return ripser_parallel(dist, metric="precomputed", maxdim=maxdim, collapse_edges=collapse, n_threads=1,
                           return_generators=False)["dgms"]


def uniform_cloud(n: int = 30, dups: int = 20, seed: int = 0) -> np.ndarray:
    """Like DummyText/DummyVision: i.i.d. uniform 768-d vectors, with exact duplicates."""
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 768)).astype(np.float32)
    return np.concatenate([pts, pts[rng.integers(0, n, dups)]])


def walk(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=(n, dim)), axis=0).astype(np.float32)


def test_matches_direct_call_and_persim_entropy() -> None:
    pts = uniform_cloud()
    res = compute_diagram(pts, PersistenceOptions())
    expected = direct(pts)
    assert [len(d) for d in expected][1:] != [0, 0], "test cloud must have H1/H2 bars"
    assert (res.status, res.reason, res.n_points, res.n_points_used, res.maxdim_used) == ("ok", "", 50, 50, 2)
    assert len(res.diagrams) == 3
    for got, want in zip(res.diagrams, expected):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want.astype(np.float64))
    assert np.isinf(res.diagrams[0][:, 1]).sum() == 1  # unreduced H0
    np.testing.assert_allclose(res.entropy, persim_entropy([d.astype(np.float64) for d in expected]), rtol=1e-12)
    assert res.entropy.dtype == np.float64 and res.entropy.shape == (3,)


def test_persistent_entropy_edge_cases() -> None:
    bars = np.array([[0.0, 1.0], [0.5, 2.0], [0.0, np.inf]])
    np.testing.assert_allclose(persistent_entropy([bars]), persim_entropy([bars]))
    assert persistent_entropy([np.empty((0, 2))])[0] == 0.0
    # A zero-length bar is dropped (persim raises on it); the rest is unchanged.
    with_zero = np.vstack([bars, [[0.3, 0.3]]])
    np.testing.assert_allclose(persistent_entropy([with_zero]), persim_entropy([bars]))
    with pytest.raises(ValueError, match="born after dying"):
        persistent_entropy([np.array([[1.0, 0.5]])])


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_points(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "ripser_parallel", lambda *a, **k: pytest.fail("giotto called"))
    res = compute_diagram(np.zeros((n, 768), np.float32), PersistenceOptions())
    assert (res.status, res.n_points, res.n_points_used, res.maxdim_used) == ("too_few_points", n, 0, -1)
    assert [d.shape for d in res.diagrams] == [(0, 2)] * 3 and np.isnan(res.entropy).all()


def test_nan_rows_rejected() -> None:
    pts = walk(10)
    pts[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_diagram(pts, PersistenceOptions())
    with pytest.raises(ValueError):
        compute_diagram(np.zeros(768), PersistenceOptions())


@pytest.mark.parametrize("maxdim", [0, 1])
def test_maxdim_option(maxdim: int) -> None:
    pts = uniform_cloud()
    res = compute_diagram(pts, PersistenceOptions(maxdim=maxdim))
    assert res.maxdim_used == maxdim and len(res.diagrams) == maxdim + 1 and res.entropy.shape == (maxdim + 1,)
    for got, want in zip(res.diagrams, direct(pts, maxdim)):
        np.testing.assert_array_equal(got, want)


def test_estimate_cost_model() -> None:
    t2, gb2 = estimate_cost(1000, 2)
    assert t2 == pytest.approx(182.0) and gb2 >= 2.3  # the measured anchor
    t1, gb1 = estimate_cost(1000, 1)
    assert t1 == pytest.approx(182.0 / 50) and gb1 < gb2
    gbs = [estimate_cost(n, 2)[1] for n in range(2, 3000, 50)]
    assert gbs == sorted(gbs)
    assert estimate_cost(10, 3) == (float("inf"), float("inf"))


def test_fallback_skip() -> None:
    res = compute_diagram(uniform_cloud(), PersistenceOptions(memory_budget_gb=0.01))
    assert res.status == "over_budget" and res.maxdim_used == -1 and res.n_points_used == 0
    assert "exceeds the 0.01 GB budget" in res.reason and "skipped" in res.reason
    assert [len(d) for d in res.diagrams] == [0, 0, 0] and np.isnan(res.entropy).all()


def test_fallback_h1() -> None:
    pts = walk(150)  # above n~110, where the H2 estimate exceeds the H1 estimate
    h1_gb, h2_gb = estimate_cost(150, 1)[1], estimate_cost(150, 2)[1]
    assert h1_gb < h2_gb
    res = compute_diagram(pts, PersistenceOptions(memory_budget_gb=(h1_gb + h2_gb) / 2, fallback="h1"))
    assert res.status == "ok_h1_fallback" and res.maxdim_used == 1 and "H1" in res.reason
    assert len(res.diagrams) == 3 and len(res.diagrams[2]) == 0 and np.isnan(res.entropy[2])
    for got, want in zip(res.diagrams, direct(pts, 1)):
        np.testing.assert_array_equal(got, want)
    # H1 does not fit either: skipped.
    res = compute_diagram(pts, PersistenceOptions(memory_budget_gb=0.01, fallback="h1"))
    assert res.status == "over_budget" and "skipped" in res.reason


def test_fallback_subsample() -> None:
    pts = uniform_cloud(n=100, dups=50)
    opts = PersistenceOptions(memory_budget_gb=estimate_cost(60, 2)[1], fallback="subsample")
    res = compute_diagram(pts, opts, rng_seed=3)
    assert res.status == "ok_subsampled" and (res.n_points, res.n_points_used, res.maxdim_used) == (150, 60, 2)
    assert "60 points" in res.reason
    idx = np.sort(np.random.default_rng(3).choice(150, size=60, replace=False))
    for got, want in zip(res.diagrams, direct(pts[idx])):
        np.testing.assert_array_equal(got, want)
    again = compute_diagram(pts, opts, rng_seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(res.diagrams, again.diagrams))
    # Nothing fits (budget below the process baseline): skipped.
    res = compute_diagram(pts, PersistenceOptions(memory_budget_gb=0.01, fallback="subsample"))
    assert res.status == "over_budget"


@pytest.mark.parametrize("cloud", ["walk3", "walk768", "uniform"])
def test_collapse_edges_gives_identical_diagrams(cloud: str) -> None:
    pts = {"walk3": walk(80, 3), "walk768": walk(80), "uniform": uniform_cloud()}[cloud]
    plain = compute_diagram(pts, PersistenceOptions(collapse_edges=False))
    collapsed = compute_diagram(pts, PersistenceOptions(collapse_edges=True))
    for a, b in zip(plain.diagrams, collapsed.diagrams):
        np.testing.assert_array_equal(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])])
    np.testing.assert_allclose(plain.entropy, collapsed.entropy)


def test_duplicates_give_no_rounding_noise_bars_and_the_same_h1_h2_as_raw_points():
    pts = uniform_cloud(n=30, dups=20)
    result = compute_diagram(pts, PersistenceOptions(maxdim=2))
    h0 = result.diagrams[0]
    finite = h0[np.isfinite(h0[:, 1])]
    assert (finite[:, 1] - finite[:, 0] > 1e-3).all()  # no 1e-7 bars from duplicates
    assert len(h0) == len(np.unique(pts, axis=0))  # one bar per distinct point
    raw = ripser_parallel(pts, maxdim=2, n_threads=1)["dgms"]  # giotto-ph's own metric path
    for k in (1, 2):
        np.testing.assert_allclose(np.sort(result.diagrams[k], axis=0), np.sort(raw[k], axis=0), rtol=1e-5)
