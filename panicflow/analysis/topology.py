"""Persistent homology of one embedding trajectory (a bag of points).

The diagrams are what a researcher gets from giotto-ph directly:
``ripser_parallel(D, metric="precomputed", maxdim=..., collapse_edges=...,
n_threads=..., return_generators=False)`` where ``D`` is the exact euclidean
distance matrix of the points (``exact_distances``), coefficients in Z/2, no
threshold (giotto-ph uses the enclosing radius) and unreduced homology (H0
keeps one infinite bar). Around that call this module adds a memory estimate,
so that a cloud too large for the machine is skipped or reduced with a
recorded reason instead of killing a worker, and (by default) runs the call in
a child process of the calling thread (``diagram_process``): giotto-ph
deadlocks when two threads of one process call it at once, and only a child
process can be stopped at a time limit or held to a memory cap.

Why a precomputed matrix: with raw points giotto-ph computes distances through
sklearn's ``|x|^2 + |y|^2 - 2 x.y``, so exact duplicates (a looping run repeats
outputs exactly) land at a rounding-noise distance (1e-8..1e-7) that depends on
the BLAS thread count, adding tiny H0 bars that differ between machines. H1 and
H2 are the same either way.

What the numbers are (docs/diagrams.md):

* Precision: distances are exact float64, but giotto-ph filters and reports in
  float32, so births and deaths are float32 values widened to float64 (about 7
  significant digits; two bars closer than that may be merged or swapped).
* Duplicates: duplicate points are kept (the cloud is the run's trajectory as
  stored); their zero-length bars are not reported, so H0 has one bar per
  distinct point (one of them infinite). They make the computation dearer
  (100 points with 30 distinct took 15x the time of the 30 distinct ones), and
  the cost model is fitted on such clouds too.
* Entropy: NaN where a diagram has no finite bar of positive length (or was not
  computed: see ``DiagramResult.maxdim_used``), 0.0 for a single finite bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from .diagram_process import ChildDied, ChildError, OverTime, exact_distances, ripser_diagrams, run_in_child

if TYPE_CHECKING:
    from ..store.experiment import TaskTiming

__all__ = [
    "DiagramResult", "PersistenceOptions", "STATUS_GROUPS", "compute_diagram", "estimate_cost",
    "exact_distances", "persistent_entropy", "status_group",
]

# What a stored ``status`` means for a summary: ok | fallback | skipped | failed ("" is pending).
STATUS_GROUPS = {
    "ok": "ok",
    "ok_h1_fallback": "fallback",
    "ok_subsampled": "fallback",
    "over_budget": "skipped",
    "over_time": "skipped",
    "too_few_points": "skipped",
    "error": "failed",
    "run_failed": "failed",
}


def status_group(status: str) -> str:
    """``ok``, ``fallback``, ``skipped``, ``failed``, or ``pending`` for an empty status."""
    return STATUS_GROUPS.get(status, "failed") if status else "pending"


# Peak memory of a diagram's child process: BASE + one term per homology dimension computed,
# each 1.5-2x the largest measured by scripts/measure_diagram_memory.py (docs/diagrams.md).
_BASE_GB = 0.3  # the idle child (python, numpy, scipy, giotto-ph): 0.16-0.17 GB; the rest is slack
_H0_BYTES_PER_N2 = 48.0  # distance matrices: 27-32 bytes * n^2 measured at 2,500-5,000 points
_GB_AT_1000 = {1: 0.6, 2: 3.2, 3: 80.0}  # H1: loops 0.34 GB; H2: walks 2.1 GB; H3: loops 0.41 GB at 300
_EXPONENT = {1: 2.6, 2: 3.7, 3: 4.0}  # H1: to 4.4 GB at 2,500 (issue 8); H2: measured-facts; H3: 3.7 measured
# Seconds with one thread, on random walks (measured-facts.md; H3: 14.5 s at 150 points); other
# shapes differ by 100x either way, so these only go into messages
_SECONDS_AT_1000 = {0: 3.6, 1: 3.6, 2: 182.0, 3: 2e5}
_TIME_EXPONENT = {0: 3.6, 1: 3.6, 2: 3.6, 3: 5.0}


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
    time_limit_s: float | None = None  # None: no limit; enforced only in a child process (isolated)


@dataclass
class DiagramResult:
    # ok | ok_h1_fallback | ok_subsampled | over_budget | over_time | too_few_points | error
    # (and run_failed, written by the coordinator): STATUS_GROUPS says which are ok/fallback/skipped/failed
    status: str
    reason: str  # human-readable; empty for plain "ok"
    n_points: int  # points given
    n_points_used: int  # 0 when not computed
    maxdim_used: int  # H0..H(maxdim_used) were computed; -1 when not computed
    diagrams: list[np.ndarray]  # float64 (k, 2) per dim 0..options.maxdim; empty where not computed
    entropy: np.ndarray  # float64 (options.maxdim + 1,), NaN where not computed or no finite bar
    used: np.ndarray | None = None  # sorted indices into the given points of those used; None: all (if computed)
    subsample_seed: int = -1  # seed of the subsample; -1 when there is none
    steps: np.ndarray | None = None  # the step of each given point, where the caller knows it (diagram_run)
    timing: TaskTiming | None = None  # when and on which worker the diagram task ran (diagram_run)

    def used_indices(self) -> np.ndarray:
        """Indices of the points the diagrams were computed from (empty when not computed)."""
        if self.maxdim_used < 0:
            return np.zeros(0, dtype=np.int64)
        return np.arange(self.n_points, dtype=np.int64) if self.used is None else np.asarray(self.used, dtype=np.int64)


def estimate_cost(n_points: int, maxdim: int) -> tuple[float, float]:
    """(seconds, GB of peak memory of the child process) expected for H0..H``maxdim`` of n points.

    Memory, fitted on peak RSS measured by scripts/measure_diagram_memory.py (giotto-ph
    0.2.4, exact distances, one thread, 768-d clouds; the table is in docs/diagrams.md)::

        0.3 GB + 48 B * n^2                      (H0: the distance matrices)
               + 0.6 GB * (n/1000)^2.6           (maxdim >= 1)
               + 3.2 GB * (n/1000)^3.7           (maxdim >= 2)
               + 80 GB * (n/1000)^4               (maxdim 3)

    Each term is 1.5-2x the largest measured on trajectory-like, looping (10x duplicated)
    and i.i.d. uniform clouds; H1 also covers the 4.55 GB measured at 2,500 points that
    the earlier estimate (0.65 GB) let through. i.i.d. unit vectors (nearly equidistant)
    take more memory per point below ~300 points (H1 at 300: 0.48 GB, estimated 0.36 GB)
    but so much time that the time limit stops them first; the child's memory cap
    catches what the estimate misses.

    Seconds: ``182 s * (n/1000)^3.6`` for maxdim 2 on random walks, 50x less for
    maxdim 0-1 (measured-facts.md), ``2e5 s * (n/1000)^5`` for maxdim 3; only for
    messages, since geometry changes it 100x either way (i.i.d. unit vectors: H2 of
    150 points took 41 s). maxdim above 3 is not modelled: (inf, inf).
    """
    if n_points < 2 or maxdim < 0:
        return 0.0, 0.0
    if maxdim > 3:
        return float("inf"), float("inf")
    scale = n_points / 1000.0
    gb = _BASE_GB + _H0_BYTES_PER_N2 * n_points**2 / 1e9
    for k in range(1, maxdim + 1):
        gb += _GB_AT_1000[k] * scale ** _EXPONENT[k]
    return _SECONDS_AT_1000[maxdim] * scale ** _TIME_EXPONENT[maxdim], gb


def persistent_entropy(diagrams: Sequence[np.ndarray]) -> np.ndarray:
    """Persistent entropy of each diagram: natural log, not normalised, infinite bars dropped.

    Same as ``persim.persistent_entropy(dgms, keep_inf=False, normalize=False)``
    wherever persim gives a value. A diagram without a finite bar of positive length
    gives NaN (there is no distribution of lengths); one such bar gives 0.0 (never
    -0.0). persim raises on a zero-length bar; here such a bar is dropped, which is
    the limit p*ln(p) -> 0 and leaves the total length unchanged. giotto-ph does not
    emit zero-length bars, so this only matters for diagrams from elsewhere. A bar
    with death < birth raises ValueError.
    """
    out = np.full(len(diagrams), np.nan, dtype=np.float64)
    for i, dgm in enumerate(diagrams):
        dgm = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
        finite = dgm[dgm[:, 1] != np.inf]
        lengths = finite[:, 1] - finite[:, 0]
        if (lengths < 0).any():
            raise ValueError("a bar is born after dying")
        lengths = lengths[lengths > 0]
        if lengths.size:
            p = lengths / lengths.sum()
            out[i] = -np.sum(p * np.log(p)) + 0.0  # + 0.0 turns the -0.0 of a single bar into 0.0
    return out


def memory_cap_gb(budget_gb: float) -> float:
    """The data memory a diagram's child process may take: the budget, with room to spare.

    A safety net under the estimate, not a second budget: the estimate (peak RSS, with
    its margin) decides what is computed; the cap (``RLIMIT_DATA``, which also counts
    memory reserved but never touched: about RSS + 0.1 GB + 20 % measured) stops a cloud
    the estimate got wrong before it takes the machine's memory.
    """
    return 1.25 * budget_gb + 0.25


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


def compute_diagram(
    points: np.ndarray, options: PersistenceOptions, rng_seed: int = 0, *, isolated: bool = True,
) -> DiagramResult:
    """Diagrams and entropies of one point cloud, within ``options.memory_budget_gb``.

    The budget is checked here, before anything is computed: a cloud whose estimate
    exceeds it is skipped or reduced (``options.fallback``). With ``isolated`` (the
    default) giotto-ph runs in this thread's child process (``diagram_process``):
    safe from several threads at once, stopped after ``options.time_limit_s``
    (status ``over_time``), held to ``memory_cap_gb(budget)`` of data memory, and a
    child that dies (status ``error``, with the reason) harms only
    itself. ``isolated=False`` calls giotto-ph in this process: no time limit, and
    never from two threads at once.

    Raises ValueError for a non-2-D array or any non-finite value: the caller must
    pass only real points (missing embeddings are the caller's to drop).
    ``rng_seed`` only drives the subsample fallback (docs/diagrams.md: the sampling rule).
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

    maxdim, idx, seed, status, reason = options.maxdim, None, -1, "ok", ""
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
            # The sampling rule (docs/diagrams.md): m points uniformly without replacement, sorted
            # so they keep trajectory order (the homology ignores order anyway).
            idx = np.sort(np.random.default_rng(rng_seed).choice(n, size=m, replace=False))
            seed, status = rng_seed, "ok_subsampled"
            reason = f"{over}; used a random subsample of {m} points (seed {rng_seed})"
        else:
            why = {"skip": "skipped", "h1": "H1 only would not fit either; skipped",
                   "subsample": "no subsample of 2 or more points fits; skipped"}[options.fallback]
            return not_computed("over_budget", f"{over}; {why}")

    used = points if idx is None else points[idx]
    if isolated:
        what = f"H0-H{maxdim} of {len(used)} points"
        est_s, est_gb = estimate_cost(len(used), maxdim)
        cap = None if budget is None else memory_cap_gb(budget)
        try:
            dgms = run_in_child(used, maxdim, options.collapse_edges, options.n_threads, options.time_limit_s, cap).diagrams
        except OverTime:
            return not_computed(
                "over_time", f"stopped after {options.time_limit_s:g} s (persistence.time_limit_s) computing {what} "
                             f"(estimated {est_s:.0f} s on a random walk)")
        except ChildDied as exc:
            oom = " (the kernel's out-of-memory killer sends SIGKILL)" if exc.returncode == -9 else ""
            return not_computed("error", f"{exc} computing {what}{oom}; estimated {est_gb:.2f} GB"
                                         + ("" if cap is None else f", memory cap {cap:.2f} GB"))
        except ChildError as exc:
            return not_computed("error", f"the diagram computation failed on {what}: {exc}; estimated {est_gb:.2f} GB"
                                         + ("" if cap is None else f", memory cap {cap:.2f} GB"))
    else:
        dgms = ripser_diagrams(used, maxdim, options.collapse_edges, options.n_threads)
    diagrams = list(dgms) + empty[maxdim + 1 :]
    entropy = np.full(ndims, np.nan)
    entropy[: maxdim + 1] = persistent_entropy(diagrams[: maxdim + 1])
    return DiagramResult(status, reason, n, len(used), maxdim, diagrams, entropy, used=idx, subsample_seed=seed)
