"""Persistent homology of one embedding trajectory (a bag of points).

The diagrams are what a researcher gets from giotto-ph directly:
``ripser_parallel(D, metric="precomputed", maxdim=..., collapse_edges=...,
n_threads=..., return_generators=False)`` where ``D`` is the exact euclidean
distance matrix of the points (``exact_distances``), coefficients in Z/2, no
threshold (giotto-ph uses the enclosing radius) and unreduced homology (H0
keeps one infinite bar). Around that call this module adds a memory estimate,
so that a cloud too large for the machine is skipped or reduced with a
recorded reason instead of killing a worker.

Why a precomputed matrix: with raw points giotto-ph computes distances through
sklearn's ``|x|^2 + |y|^2 - 2 x.y``, so exact duplicates (a looping run repeats
outputs exactly) land at a rounding-noise distance (1e-8..1e-7) that depends on
the BLAS thread count, adding tiny H0 bars that differ between machines. H1 and
H2 are the same either way. Duplicates also make the complex larger (100 points
with 30 distinct took 15x the time of the 30 distinct ones); we keep them, so
the cloud is the run's trajectory as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from gph import ripser_parallel
from scipy.spatial.distance import pdist, squareform

# Fitted on random-walk clouds of 768-d unit vectors, 1 thread (measured-facts.md).
_H2_SECONDS_AT_1000 = 182.0
_H2_GB_AT_1000 = 2.3
_TIME_EXPONENT = 3.6
_MEMORY_EXPONENT = 3.7
_H1_SPEEDUP = 50.0
_BASE_GB = 0.25  # interpreter + numpy + sklearn + giotto-ph: 0.17-0.19 GB peak RSS measured
_H1_BYTES_PER_N2 = 64.0  # 25-38 bytes * n^2 measured at n = 500..2000 (float32/float64 input)


@dataclass(frozen=True)
class PersistenceOptions:
    maxdim: int = 2
    # False (scripts/measure_collapse_edges.py, maxdim 2, 1 thread, identical diagrams
    # throughout): collapsing slows the expensive clouds, the random-vector embedders
    # DummyText/DummyVision at 500 points, from 11-22 s to 22-53 s (one >60 s timeout vs
    # 13 s), and speeds up only clouds that are cheap anyway (DummyText2/DummyVision2: 3-13 s
    # -> 0.6-2 s). Table totals 131 s vs 183 s and 89 s vs 130 s + a timeout. measured-facts:
    # 2-2.5x slower on 768-d random walks too. estimate_cost is also calibrated without it.
    collapse_edges: bool = False
    memory_budget_gb: float | None = None  # None: no limit
    fallback: Literal["skip", "h1", "subsample"] = "skip"  # used when the estimate exceeds the budget
    n_threads: int = 1  # two threads do the same total work; run one diagram per core instead


@dataclass
class DiagramResult:
    status: str  # "ok" | "too_few_points" | "over_budget" | "ok_h1_fallback" | "ok_subsampled"
    reason: str  # human-readable; empty for plain "ok"
    n_points: int  # points given
    n_points_used: int
    maxdim_used: int  # -1 when not computed
    diagrams: list[np.ndarray]  # float64 (k, 2) per dim 0..options.maxdim; empty where not computed
    entropy: np.ndarray  # float64 (options.maxdim + 1,), NaN where not computed


def estimate_cost(n_points: int, maxdim: int) -> tuple[float, float]:
    """(seconds, GB of peak process memory) expected for ``ripser_parallel`` on n points.

    Model, from giotto-ph 0.2.4 on random-walk clouds of 768-d unit vectors, 1 thread:

    * maxdim 2: ``182 s * (n/1000)^3.6`` and ``0.25 GB + 2.3 GB * (n/1000)^3.7``
      (measured 13.8 s / 0.33 GB at n=500, 45 s / 0.73 GB at 700, 182 s / 2.3 GB at 1000);
      never less than the maxdim-1 memory below.
    * maxdim 0 or 1: time 50x less than maxdim 2 (measured 0.27 s at 500, 3.4 s at
      1000; H0 alone is far cheaper, but we do not model it separately). Memory
      ``0.25 GB + 64 bytes * n^2``: the dense distance matrix and its condensed
      float32 copy plus the edge columns of the reduction; 25-38 bytes * n^2 above a
      0.17-0.19 GB process baseline was measured at n=500..2000, so this has a ~2x
      margin (10,000 points: about 6.7 GB).
    * maxdim > 2: not measured, returns (inf, inf) so any budget rejects it.

    The memory figures include the ~0.2 GB of the Python process itself, so they
    overstate what one more diagram costs inside an already running worker.
    Geometry matters more than n: i.i.d. points on a sphere took 41 s at n=150 for
    maxdim 2 (the model says 0.2 s) and the dummy models' random-vector embedders
    behave like that. So this is an upper estimate for trajectory-like clouds, not a
    bound for every cloud.
    """
    if n_points < 2 or maxdim < 0:
        return 0.0, 0.0
    if maxdim > 2:
        return float("inf"), float("inf")
    scale = n_points / 1000.0
    h1_gb = _BASE_GB + _H1_BYTES_PER_N2 * n_points**2 / 1e9
    if maxdim == 2:
        return _H2_SECONDS_AT_1000 * scale**_TIME_EXPONENT, max(
            h1_gb, _BASE_GB + _H2_GB_AT_1000 * scale**_MEMORY_EXPONENT
        )
    return _H2_SECONDS_AT_1000 / _H1_SPEEDUP * scale**_TIME_EXPONENT, h1_gb


def persistent_entropy(diagrams: Sequence[np.ndarray]) -> np.ndarray:
    """Persistent entropy of each diagram: natural log, not normalised, infinite bars dropped.

    Same as ``persim.persistent_entropy(dgms, keep_inf=False, normalize=False)``
    wherever persim gives a value; an empty diagram gives 0.0. persim raises on a
    zero-length bar; here such a bar is dropped, which is the limit p*ln(p) -> 0 and
    leaves the total length unchanged. giotto-ph does not emit zero-length bars
    (its near-zero H0 bars from duplicate points have positive length), so this only
    matters for diagrams from elsewhere. A bar with death < birth raises ValueError.
    """
    out = np.zeros(len(diagrams), dtype=np.float64)
    for i, dgm in enumerate(diagrams):
        dgm = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
        lengths = dgm[dgm[:, 1] != np.inf, 1] - dgm[dgm[:, 1] != np.inf, 0]
        if (lengths < 0).any():
            raise ValueError("a bar is born after dying")
        lengths = lengths[lengths > 0]
        if lengths.size:
            p = lengths / lengths.sum()
            out[i] = -np.sum(p * np.log(p))
    return out


def _largest_fitting_n(n_points: int, maxdim: int, budget_gb: float) -> int:
    """Largest n <= n_points whose estimated memory fits; 0 if none (estimate is monotone in n)."""
    lo, hi = 0, n_points
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_cost(mid, maxdim)[1] <= budget_gb:
            lo = mid
        else:
            hi = mid - 1
    return lo


def exact_distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distances computed pair by pair in float64 (scipy ``pdist``).

    giotto-ph's own metric path goes through sklearn's ``|x|^2 + |y|^2 - 2 x.y``,
    whose rounding depends on the BLAS and its thread count: exact duplicate
    points (every looping run has them) land at 1e-8..1e-7 apart and add tiny H0
    bars that differ between a worker (1 BLAS thread) and a notebook (several).
    Distances computed directly are exact for duplicates (0) and the same on
    every machine, so a diagram is reproducible wherever it is recomputed.
    """
    return squareform(pdist(np.asarray(points, dtype=np.float64), metric="euclidean"))


def compute_diagram(points: np.ndarray, options: PersistenceOptions, rng_seed: int = 0) -> DiagramResult:
    """Diagrams and entropies of one point cloud, within ``options.memory_budget_gb``.

    Raises ValueError for a non-2-D array or any non-finite value: the caller must
    pass only real points (missing embeddings are the caller's to drop).
    ``rng_seed`` only drives the subsample fallback.
    """
    points = np.asarray(points)
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, dim), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values; pass only real points")
    n = len(points)
    ndims = options.maxdim + 1
    empty = [np.empty((0, 2), dtype=np.float64) for _ in range(ndims)]

    def not_computed(status: str, reason: str) -> DiagramResult:
        return DiagramResult(status, reason, n, 0, -1, empty, np.full(ndims, np.nan))

    if n < 2:
        return not_computed("too_few_points", f"{n} point(s); persistent homology needs at least 2")

    maxdim, used, status, reason = options.maxdim, points, "ok", ""
    budget = options.memory_budget_gb
    gb = estimate_cost(n, maxdim)[1]
    if budget is not None and gb > budget:
        over = (
            f"estimated {gb:.2f} GB for {n} points up to H{maxdim} exceeds the {budget:g} GB budget"
        )
        if options.fallback == "h1" and maxdim > 1 and estimate_cost(n, 1)[1] <= budget:
            maxdim, status = 1, "ok_h1_fallback"
            reason = f"{over}; computed up to H1 only ({estimate_cost(n, 1)[1]:.2f} GB)"
        elif options.fallback == "subsample" and (m := _largest_fitting_n(n, maxdim, budget)) >= 2:
            # Sorted indices keep trajectory order; the homology ignores order anyway.
            idx = np.sort(np.random.default_rng(rng_seed).choice(n, size=m, replace=False))
            used, status = points[idx], "ok_subsampled"
            reason = f"{over}; used a random subsample of {m} points (seed {rng_seed})"
        else:
            why = {"skip": "skipped", "h1": "H1 only would not fit either; skipped",
                   "subsample": "no subsample of 2 or more points fits; skipped"}[options.fallback]
            return not_computed("over_budget", f"{over}; {why}")

    dgms = ripser_parallel(
        exact_distances(used),
        metric="precomputed",
        maxdim=maxdim,
        collapse_edges=options.collapse_edges,
        n_threads=options.n_threads,
        return_generators=False,
    )["dgms"]
    diagrams = [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in dgms] + empty[maxdim + 1 :]
    entropy = np.full(ndims, np.nan)
    entropy[: maxdim + 1] = persistent_entropy(diagrams[: maxdim + 1])
    return DiagramResult(status, reason, n, len(used), maxdim, diagrams, entropy)
