"""HDBSCAN clustering of the embeddings of one or several experiments, on the Dask cluster.

What is clustered: every stored vector of one embedding model in the chosen experiments,
scaled to unit length (so euclidean distance orders pairs as cosine distance does),
optionally reduced by PCA: ``reduce="pca:K"`` to K dimensions, ``"pca:F"`` (0 < F < 1) to the
fewest that keep the fraction F of the variance, ``"none"`` not at all, and ``"auto"`` (the
default) the full space up to ``AUTO_FULL_SPACE_MAX`` vectors and ``pca:0.9`` above. A PCA to
32 dimensions kept 51 % of the variance of all-MiniLM-L6-v2 embeddings of English sentences and
changed their clustering (ARI 0.42 against the full space's, which agreed with itself at 0.83
on 90 % subsamples), where the fewest components keeping 90 % (162) gave 0.80
(docs/analysis.md, scripts/measure_reduce_default.py); so the stored result records the
variance kept (``explained_variance``) and a PCA that keeps less than ``LOW_VARIANCE`` warns
(``LowVarianceWarning``). Clustering several experiments at
once puts them in one space, so their labels can be compared.

Libraries (``algorithm``): ``hdbscan`` (default), ``fast_hdbscan``, ``sklearn``
(``sklearn.cluster.HDBSCAN``, the earlier tool's) and ``evoc`` (``evoc.EVoC``: ``base_min_cluster_size`` =
min_cluster_size, ``min_samples``, ``random_state`` = seed; no epsilon or single-cluster setting;
fast_hdbscan and evoc come with ``pip install 'panicflow[fast]'``). Their ``min_samples`` count differently: the
hdbscan package's k is scikit-learn's k + 1 (scikit-learn counts the point itself), so the same
number is a different density; the stored parameters hold the value in effect and
``min_samples_note`` says which convention. ``preset="panic-tda"`` is the earlier tool's clustering:
scikit-learn's HDBSCAN on the unit vectors without PCA, ``min_cluster_size = min_samples =
max(2, int(0.001 n))`` for n vectors, ``cluster_selection_epsilon`` 0.5 (its CLI's default; pass
the value its clustering recorded) and ``allow_single_cluster=True``; any setting given
explicitly overrides the preset's.

How it runs (no process but the one hdbscan task holds more than one run's vectors):

1. one task per run counts its vectors;
2. ``pca:K``: a PCA (scikit-learn, full SVD) is fitted on a worker to at most
   ``pca_fit_size`` unit vectors drawn at random over all runs (all of them if fewer), then
   one task per run projects that run; the projected vectors stay on the workers;
3. one task gathers the (projected) vectors and runs hdbscan (or fast-hdbscan); with
   ``sample=N`` it fits N vectors drawn at random and every other vector gets, with hdbscan,
   ``hdbscan.approximate_predict``'s label and strength, and with the other libraries the frozen
   model's label (``ASSIGNMENT_RULE``, as ``analyse assign``: probability NaN); the sampled vectors
   keep the fit's own, and a vector bit-identical to a sampled one takes that one's label and probability;
   exact duplicates: the libraries join bit-identical vectors at their core distance, not 0, and break
   the ties arbitrarily, so copies of one vector could come out noise and member; after every fit each
   group of bit-identical vectors gets one label and probability (``DUPLICATE_RULE``, ``_tie_duplicates``):
   the most common non-noise label among them (ties: the smallest), noise only if all are noise, and
   the largest probability among those with that label;
4. medoids: per cluster the member with the smallest summed cosine distance to the other
   members, in the original (unreduced) space. With unit vectors that sum is
   n - x . S (S = sum of the members), so two passes of one task per run find it exactly.

Result, in each input experiment's store, ``analysis/clusters/<name>``:
``label`` (run, step) int32 (-1 noise, -2 no vector of this model), ``probability``
(run, step) float32 (hdbscan's membership strength; NaN without a vector), and per cluster
``cluster_id``, ``size`` (over all inputs), ``medoid_experiment``, ``medoid_run``,
``medoid_step``. Attributes: ``parameters`` (every setting in effect: none is left null, a
variance target's components resolved), ``requested`` (what the call gave), the input
experiments, the library and the versions, ``min_samples_note``, and with a PCA
``explained_variance`` (the fraction of the variance of the unit vectors the PCA fit kept) and
``explained_variance_ratio`` (per component), ``duplicates`` (``DUPLICATE_RULE``). The frozen model (``fitted: true``; panicflow/analysis/assign.py
applies it to other experiments without refitting), in the first input experiment only (``frozen_in``):
``frozen_feature`` (reference, feature; the fitted cluster members in the clustering's space), ``frozen_label``,
``frozen_core_distance`` (distance to the ``frozen_k``-th nearest fitted vector besides itself, k = min_samples in
the hdbscan package's count), per cluster ``threshold`` (the largest core distance of its members), and with a
PCA ``pca_mean`` and ``pca_components``; the rule is ``ASSIGNMENT_RULE`` (``nearest_assign``). The default name is derived from the parameters and inputs, so a second
clustering with other parameters is stored beside the first.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
from distributed import Client

from ..errors import UserError
from .results import check_model, embedded_runs, open_store, read_vectors, unit, versions, write_result

KIND = "clusters"
ALGORITHMS = ("hdbscan", "fast_hdbscan", "sklearn", "evoc")
LIBRARIES = {"hdbscan": "hdbscan", "fast_hdbscan": "fast-hdbscan", "sklearn": "scikit-learn", "evoc": "evoc"}
EXTRA = {"fast_hdbscan": "fast_hdbscan", "evoc": "evoc"}  # algorithm -> module installed by panicflow[fast]
DEFAULT_MIN_CLUSTER_SIZE = 10
# --reduce auto (the default): the full space up to this many vectors (hdbscan took 141 s for 10k x 768,
# reference/measured-facts.md), else the fewest PCA components that keep AUTO_VARIANCE of the variance. Chosen on
# scripts/measure_reduce_default.py (docs/analysis.md): pca:32 kept 51 % of the variance of real sentence embeddings
# and gave ARI 0.42 against the full space; pca:0.9 gave 0.80, the full space's own agreement on subsamples 0.83
AUTO_FULL_SPACE_MAX = 20_000
AUTO_VARIANCE = 0.9
LOW_VARIANCE = 0.9  # a PCA that keeps less of the variance than this warns (LowVarianceWarning)
PRESETS = ("panic-tda",)
# the earlier tool's clustering (reference section 2.8): scikit-learn's HDBSCAN on the unit vectors, no PCA,
# min_cluster_size = min_samples = max(2, int(0.001 n)), allow_single_cluster, and its CLI's --epsilon default
PANIC_TDA_EPSILON = 0.5


class LowVarianceWarning(UserWarning):
    """The PCA before the clustering kept less than ``LOW_VARIANCE`` of the variance."""


def panic_tda_min_size(n: int) -> int:
    """The earlier tool's min_cluster_size and min_samples for n vectors: max(2, int(0.001 n))."""
    return max(2, int(n * 0.001))


@dataclass(frozen=True)
class ClusterParams:
    """What a clustering was asked for; ``None`` means the default (or the preset's), resolved by ``effective``."""

    model: str
    min_cluster_size: int | None = None
    min_samples: int | None = None
    reduce: str | None = None
    sample: int | None = None
    algorithm: str | None = None
    seed: int = 0
    pca_fit_size: int = 50_000
    cluster_selection_epsilon: float | None = None
    allow_single_cluster: bool | None = None
    preset: str | None = None

    def check(self) -> None:
        if self.reduce is not None:
            parse_reduce(self.reduce)
        if self.preset is not None and self.preset not in PRESETS:
            raise UserError(f"--preset: choose {' or '.join(PRESETS)}, not {self.preset!r}")
        if self.min_cluster_size is not None and self.min_cluster_size < 2:
            raise UserError(f"--min-cluster-size: must be at least 2 (got {self.min_cluster_size})")
        if self.min_samples is not None and self.min_samples < 1:
            raise UserError(f"--min-samples: must be at least 1 (got {self.min_samples})")
        if self.cluster_selection_epsilon is not None and not self.cluster_selection_epsilon >= 0:
            raise UserError(f"--cluster-selection-epsilon: must be at least 0 (got {self.cluster_selection_epsilon})")
        mcs = self.min_cluster_size or DEFAULT_MIN_CLUSTER_SIZE
        if self.sample is not None and self.sample < mcs:
            raise UserError(f"--sample: must be at least --min-cluster-size ({mcs}), got {self.sample}")
        algorithm = self.algorithm or ("sklearn" if self.preset == "panic-tda" else "hdbscan")
        if algorithm not in ALGORITHMS:
            raise UserError(f"--algorithm: choose {', '.join(ALGORITHMS)}, not {algorithm!r}")
        if algorithm == "evoc" and (self.cluster_selection_epsilon is not None or self.allow_single_cluster is not None):
            raise UserError("--algorithm evoc: has no --cluster-selection-epsilon or --allow-single-cluster")
        if algorithm in EXTRA:
            import importlib.util

            if importlib.util.find_spec(EXTRA[algorithm]) is None:
                raise UserError(f"--algorithm {algorithm}: the {LIBRARIES[algorithm]} package is not installed; "
                                f"pip install 'panicflow[fast]'")

    def effective(self, n_vectors: int) -> dict[str, Any]:
        """The settings used for ``n_vectors`` vectors, every default resolved (``reduce`` still ``auto``'s choice
        of none or pca:F; the components a variance target gives are known after the PCA)."""
        self.check()
        tda = self.preset == "panic-tda"
        mcs = self.min_cluster_size or (panic_tda_min_size(n_vectors) if tda else DEFAULT_MIN_CLUSTER_SIZE)
        reduce = self.reduce or ("none" if tda else "auto")
        if reduce == "auto":
            reduce = "none" if n_vectors <= AUTO_FULL_SPACE_MAX else f"pca:{AUTO_VARIANCE:g}"
        return {
            "model": self.model, "preset": self.preset, "algorithm": self.algorithm or ("sklearn" if tda else "hdbscan"),
            "min_cluster_size": mcs,
            # hdbscan and scikit-learn both default min_samples to min_cluster_size; the preset sets both to 0.1 %
            "min_samples": self.min_samples or (panic_tda_min_size(n_vectors) if tda else mcs),
            "cluster_selection_epsilon": float(self.cluster_selection_epsilon if self.cluster_selection_epsilon is not None
                                               else PANIC_TDA_EPSILON if tda else 0.0),
            "allow_single_cluster": bool(self.allow_single_cluster if self.allow_single_cluster is not None else tda),
            "reduce": reduce, "reduce_requested": self.reduce or ("none" if tda else "auto"),
            "sample": self.sample, "seed": self.seed, "pca_fit_size": self.pca_fit_size,
        }


def parse_reduce(text: str) -> int | float | None:
    """``none`` -> None, ``pca:K`` -> K components, ``pca:F`` (0 < F < 1) -> the fewest components keeping the
    fraction F of the variance; ``auto`` -> None here (resolved by ``ClusterParams.effective``)."""
    r = text.strip().lower()
    if r in ("none", "auto"):
        return None
    if r.startswith("pca:"):
        v = r[4:]
        if v.isdigit() and int(v) >= 1:
            return int(v)
        try:
            f = float(v)
        except ValueError:
            f = -1.0
        if 0 < f < 1 and not v.isdigit():
            return f
    raise UserError(f"--reduce: expected auto, none, pca:K (K a positive integer) or pca:F (0 < F < 1: keep that "
                    f"fraction of the variance), got {text!r}")


def min_samples_note(algorithm: str, min_samples: int) -> str:
    """How ``min_samples`` counts, per library (the same k means a different density in each)."""
    if algorithm == "evoc":
        return (f"evoc: min_samples {min_samples} and base_min_cluster_size (= min_cluster_size) of its own graph-based "
                f"clustering (n_neighbors 15, noise_level 0.5, random_state = seed)")
    if algorithm == "sklearn":
        return (f"scikit-learn: min_samples {min_samples} counts the point itself; the hdbscan package's "
                f"min_samples {min_samples - 1} is the same setting")
    return (f"{LIBRARIES[algorithm]}: min_samples {min_samples} counts neighbours besides the point; scikit-learn's "
            f"min_samples {min_samples + 1} is the same setting")


# ------------------------------------------------------------------ worker tasks
def _count(loc: str, eid: str, model: str, run: int) -> int:
    return len(read_vectors(loc, eid, model, run)[0])


def _unit_rows(loc: str, eid: str, model: str, run: int, rows: np.ndarray | None = None) -> np.ndarray:
    v = unit(read_vectors(loc, eid, model, run)[1])
    return (v if rows is None else v[rows]).astype(np.float32)


def _fit_pca(k: int | float, seed: int, *parts: np.ndarray):
    from sklearn.decomposition import PCA

    x = np.concatenate(parts)
    if isinstance(k, int) and k > min(x.shape):
        raise UserError(f"--reduce pca:{k}: at most {min(x.shape)} components for {x.shape[0]} vectors of dimension {x.shape[1]}")
    return PCA(n_components=k, svd_solver="full", random_state=seed).fit(x)


def _explained(pca) -> tuple[int, list[float]]:
    """(components, the fraction of the variance each keeps) of a fitted PCA."""
    return int(pca.n_components_), [float(r) for r in pca.explained_variance_ratio_]


def _features(loc: str, eid: str, model: str, run: int, pca) -> np.ndarray:
    v = _unit_rows(loc, eid, model, run)
    return v if pca is None or len(v) == 0 else pca.transform(v).astype(np.float32)


def _take(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return x[rows]


def _fit(params: dict, *parts: np.ndarray):
    """The clustering itself: returns (hdbscan's clusterer or None, labels, probabilities), bit-identical rows given one
    label and probability (``_tie_duplicates``)."""
    x = np.concatenate(parts)
    if params["algorithm"] == "evoc":  # EVoC's own graph-based clustering (labels_, membership_strengths_)
        import evoc

        c = evoc.EVoC(base_min_cluster_size=params["min_cluster_size"], min_samples=params["min_samples"],
                      random_state=params.get("seed", 0)).fit(x)
        return None, *_tie_duplicates(x, c.labels_, c.membership_strengths_)
    kw = {"min_cluster_size": params["min_cluster_size"], "min_samples": params["min_samples"],
          "cluster_selection_epsilon": params["cluster_selection_epsilon"], "allow_single_cluster": params["allow_single_cluster"]}
    if params["algorithm"] == "sklearn":  # the earlier tool's library
        from sklearn.cluster import HDBSCAN

        c, keep = HDBSCAN(metric="euclidean", copy=True, **kw).fit(x), False
    elif params["algorithm"] == "fast_hdbscan":
        import fast_hdbscan

        c, keep = fast_hdbscan.HDBSCAN(**kw).fit(x), False
    else:
        import hdbscan

        c, keep = hdbscan.HDBSCAN(metric="euclidean", prediction_data=params["sample"] is not None, **kw).fit(x), True
    return (c if keep else None), *_tie_duplicates(x, c.labels_, c.probabilities_)


DUPLICATE_RULE = ("bit-identical clustering-space vectors share one label and probability: the most common non-noise "
                  "label among them (ties: the smallest), noise only if all of them are noise, and the largest "
                  "probability among those with that label; with --sample a vector the fit did not see that is "
                  "identical to a fitted one takes that one's")


def _row_keys(x: np.ndarray) -> np.ndarray:
    """Each row of x as one np.void scalar of its bytes (equal keys: bit-identical rows)."""
    x = np.ascontiguousarray(x)
    return x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()


def _tie_duplicates(x: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label and probability per group of bit-identical rows (``DUPLICATE_RULE``): the libraries split them by ties."""
    labels, probs = np.asarray(labels).astype(np.int32), np.asarray(probs).astype(np.float32)
    if len(x) < 2:
        return labels, probs
    _, inv, counts = np.unique(_row_keys(x), return_inverse=True, return_counts=True)
    inv = inv.ravel()
    rows = np.flatnonzero(counts[inv] > 1)
    if len(rows) == 0:
        return labels, probs
    g, lab, pr = inv[rows], labels[rows], probs[rows]
    o = np.lexsort((lab, g))  # by group, then label
    g, lab, pr, rows = g[o], lab[o], pr[o], rows[o]
    start = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])])  # one (group, label) pair each
    pg, plab = g[start], lab[start]
    pcount = np.diff(np.r_[start, len(g)])
    pprob = np.maximum.reduceat(pr, start)
    # per group the pair that is not noise, then the most common, then the smallest label
    best = np.lexsort((plab, -pcount, plab < 0, pg))
    best = best[np.r_[True, pg[best][1:] != pg[best][:-1]]]
    winner_lab = np.empty(len(counts), np.int32)
    winner_pr = np.empty(len(counts), np.float32)
    winner_lab[pg[best]], winner_pr[pg[best]] = plab[best], pprob[best]
    labels[rows], probs[rows] = winner_lab[g], winner_pr[g]
    return labels, probs


def _fitted_rows(fit, *parts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct rows a fit saw (``_row_keys``, sorted) with their (shared) labels and probabilities: a vector the
    fit did not see takes those of its bit-identical fitted row (``_predict``)."""
    keys, first = np.unique(_row_keys(np.concatenate(parts)), return_index=True)
    return keys, fit[1][first], fit[2][first]


def _labels_of(fit) -> tuple[np.ndarray, np.ndarray]:
    return fit[1], fit[2]


def _predict(fit, x: np.ndarray, frozen: dict | None, seen=None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, strengths) of vectors the sampled fit did not see: the frozen rule if ``frozen`` is given (a library
    that cannot predict; ``_with_tree``'s model; strength NaN), else hdbscan's ``approximate_predict``; a vector
    bit-identical to a fitted one takes its label and probability (``seen``: ``_fitted_rows``)."""
    if len(x) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    if frozen is not None:
        labels, _ = assign_frozen(x, frozen)
        strengths = np.full(len(labels), np.nan, np.float32)
    else:
        import hdbscan

        labels, strengths = hdbscan.approximate_predict(fit[0], x)
        labels, strengths = labels.astype(np.int32), strengths.astype(np.float32)
    if seen is not None and len(seen[0]):
        keys = _row_keys(x)
        if keys.dtype == seen[0].dtype:
            j = np.minimum(np.searchsorted(seen[0], keys), len(seen[0]) - 1)
            hit = seen[0][j] == keys
            labels[hit], strengths[hit] = seen[1][j[hit]], seen[2][j[hit]]
    return labels, strengths


ASSIGNMENT_RULE = ("a vector (unit, projected by the stored PCA) takes the cluster of its nearest fitted member "
                   "(euclidean) when within that cluster's threshold, the largest core distance of its fitted members; "
                   "else noise (-1)")


def frozen_k(algorithm: str, min_samples: int) -> int:
    """Neighbours besides the point in the frozen model's core distance: min_samples in the hdbscan package's count."""
    return max(1, min_samples - 1 if algorithm == "sklearn" else min_samples)


# A KD-tree finds exact nearest neighbours with far fewer distances than brute force in the reduced spaces
# clusterings fit (``--reduce auto`` keeps 10-30 components), where the vectors cluster; at a million fitted members
# brute force is 1e12 distances. Above this dimension a tree prunes little and blocked brute force (BLAS) is faster.
TREE_MAX_DIM = 32


def neighbour_tree(ref: np.ndarray):
    """scipy's KD-tree over ``ref`` (float64) when its dimension is at most ``TREE_MAX_DIM``, else None (brute force)."""
    from scipy.spatial import cKDTree

    ref = np.asarray(ref, np.float64)
    return cKDTree(ref) if ref.ndim == 2 and len(ref) and ref.shape[1] <= TREE_MAX_DIM else None


def core_distances(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Distance of each ``x[rows]`` to its k-th nearest row of ``x`` besides itself (euclidean)."""
    k = min(k, len(x) - 1)
    if k < 1 or len(rows) == 0:
        return np.zeros(len(rows), np.float32)
    tree = neighbour_tree(x)
    if tree is not None:
        d, _ = tree.query(np.asarray(x[rows], np.float64), k=k + 1, workers=-1)
        return d[:, k].astype(np.float32)
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x[rows])
    return d[:, k].astype(np.float32)


def _frozen(params: dict, fit, *parts: np.ndarray) -> dict:
    """The frozen model of a fit: its members' clustering-space vectors, labels and core distances, and per cluster the
    threshold (the largest core distance of its members)."""
    x = np.concatenate(parts)
    labels = fit[1]
    members = np.flatnonzero(labels >= 0)
    k = frozen_k(params["algorithm"], params["min_samples"])
    core = core_distances(x, members, k)
    ref_label = labels[members].astype(np.int32)
    ids = np.unique(ref_label).astype(np.int32)
    thr = np.array([core[ref_label == c].max() for c in ids], np.float32)
    return {"feature": x[members].astype(np.float32), "label": ref_label, "core_distance": core, "cluster_id": ids,
            "threshold": thr, "k": k}


def _with_tree(frozen: dict) -> dict:
    """The frozen model and the KD-tree over its members (``neighbour_tree``), built once and sent to the workers that
    label vectors with it (those a sampled fit did not see; ``analyse assign``'s)."""
    return frozen | {"tree": neighbour_tree(frozen["feature"])}


def assign_frozen(x: np.ndarray, frozen: dict) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_assign`` of the rows of x (in the clustering's space) by a frozen model, by its tree if it has one."""
    return nearest_assign(x, frozen["feature"], frozen["label"], frozen["cluster_id"], frozen["threshold"],
                          tree=frozen.get("tree"))


def _pca_arrays(pca) -> dict:
    return {"pca_mean": np.asarray(pca.mean_, np.float64), "pca_components": np.asarray(pca.components_, np.float64)}


def nearest_assign(x: np.ndarray, ref: np.ndarray, ref_label: np.ndarray, cluster_id: np.ndarray,
                   threshold: np.ndarray, block_bytes: int = 1 << 26, tree=None) -> tuple[np.ndarray, np.ndarray]:
    """The frozen assignment (``ASSIGNMENT_RULE``): (label, distance to the nearest reference vector) of each row of x,
    in float64: by ``tree`` (``neighbour_tree(ref)``, built once by the caller) if given, else by brute force a block
    of rows at a time."""
    n = len(x)
    labels, dist = np.full(n, -1, np.int32), np.full(n, np.nan, np.float64)
    if n == 0 or len(ref) == 0:
        return labels, dist
    thr = dict(zip(np.asarray(cluster_id).tolist(), np.asarray(threshold, np.float64).tolist()))
    by_label = np.vectorize(lambda c: thr[int(c)], otypes=[np.float64])
    if tree is not None:
        d, j = tree.query(np.asarray(x, np.float64), k=1)
        lab = np.asarray(ref_label)[j]
        return np.where(d <= by_label(lab), lab, -1).astype(np.int32), d
    r = np.asarray(ref, np.float64)
    r2 = (r * r).sum(axis=1)
    step = max(1, block_bytes // (8 * len(r)))
    for a in range(0, n, step):
        xb = np.asarray(x[a:a + step], np.float64)
        d2 = (xb * xb).sum(axis=1)[:, None] - 2 * xb @ r.T + r2[None, :]
        j = np.argmin(d2, axis=1)
        d = np.linalg.norm(xb - r[j], axis=1)  # the exact distance to the nearest
        lab = ref_label[j]
        labels[a:a + step] = np.where(d <= by_label(lab), lab, -1)
        dist[a:a + step] = d
    return labels, dist


def _cluster_sums(loc: str, eid: str, model: str, run: int, labels: np.ndarray) -> dict[int, np.ndarray]:
    v = unit(read_vectors(loc, eid, model, run)[1])
    return {int(c): v[labels == c].sum(axis=0) for c in np.unique(labels) if c >= 0}


def _merge_sums(*parts: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for p in parts:
        for c, s in p.items():
            out[c] = out[c] + s if c in out else s.copy()
    return out


def _best_members(loc: str, eid: str, model: str, run: int, labels: np.ndarray, sums: dict[int, np.ndarray]):
    """Per cluster in this run: (x . S, step) of its member closest (in summed cosine distance) to all members."""
    steps, v = read_vectors(loc, eid, model, run)
    v = unit(v)
    out = {}
    for c in np.unique(labels):
        if c < 0:
            continue
        idx = np.flatnonzero(labels == c)
        score = v[idx] @ sums[int(c)]
        best = int(np.argmax(score))
        out[int(c)] = (float(score[best]), int(steps[idx[best]]))
    return out


# ---------------------------------------------------------------------- driver
def open_experiments(st, experiment_ids, model: str, command: str) -> list:
    """The named experiments, each once and each with ``model`` embeddings (else a UserError naming ``command``)."""
    exps = [st.experiment(e) for e in experiment_ids]
    if len({e.id for e in exps}) != len(exps):
        raise UserError(f"{command}: an experiment is named twice")
    for exp in exps:
        check_model(exp, model)
    return exps


def cluster(
    experiment_ids: Sequence[str],
    model: str,
    store: str | None = None,
    client: Client | None = None,
    *,
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    reduce: str | None = None,
    sample: int | None = None,
    algorithm: str | None = None,
    seed: int = 0,
    pca_fit_size: int = 50_000,
    cluster_selection_epsilon: float | None = None,
    allow_single_cluster: bool | None = None,
    preset: str | None = None,
    name: str | None = None,
) -> str:
    """Cluster the ``model`` embeddings of the experiments; returns the result's name.

    Defaults: ``min_cluster_size`` 10, ``min_samples`` = min_cluster_size, ``reduce="auto"``, ``algorithm="hdbscan"``,
    ``cluster_selection_epsilon`` 0, ``allow_single_cluster`` False; ``preset="panic-tda"`` changes them to the
    earlier tool's (module docstring). A PCA that keeps less than ``LOW_VARIANCE`` of the variance warns
    (``LowVarianceWarning``). Needs a ``distributed.Client`` (the work runs on its cluster; without one a
    LocalCluster of two processes is started and closed here). See the module docstring for what is stored.
    """
    from ..store import default_location

    params = ClusterParams(model, min_cluster_size, min_samples, None if reduce is None else reduce.strip().lower(), sample,
                           algorithm, seed, pca_fit_size, cluster_selection_epsilon, allow_single_cluster, preset)
    params.check()
    if not experiment_ids:
        raise UserError("cluster: give at least one experiment id")
    st = open_store(str(store) if store is not None else default_location())
    exps = open_experiments(st, experiment_ids, model, "cluster")
    if client is None:
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
            return _cluster(st, exps, params, c, name)
    return _cluster(st, exps, params, client, name)


def _prepare(st, exps, params: ClusterParams, client: Client) -> SimpleNamespace:
    """Count the vectors, resolve the settings, fit the PCA if any (warning below LOW_VARIANCE) and project every run
    on the workers: the inputs of a clustering (``feats``: one future per (experiment, run) unit, in order)."""
    loc = st.location
    units = [(e.id, int(r)) for e in exps for r in embedded_runs(e, params.model)]
    args = [(loc, eid, params.model, run) for eid, run in units]
    counts = np.array(client.gather([client.submit(_count, *a, pure=False) for a in args]), dtype=np.int64)
    total = int(counts.sum())
    eff = params.effective(total)
    if total < eff["min_cluster_size"]:
        raise UserError(f"cluster: only {total} {params.model} vectors in these experiments; need at least --min-cluster-size ({eff['min_cluster_size']})")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng(params.seed)

    def per_unit(global_rows: np.ndarray) -> list[np.ndarray]:
        global_rows = np.sort(global_rows)
        return [global_rows[(global_rows >= offsets[i]) & (global_rows < offsets[i + 1])] - offsets[i] for i in range(len(units))]

    sampled = None
    if params.sample is not None and params.sample < total:
        sampled = per_unit(rng.choice(total, params.sample, replace=False))
    pca = None
    k = parse_reduce(eff["reduce"])
    explained: tuple[int, list[float]] | None = None
    if k is not None:
        fit_rows = sampled if sampled is not None and params.sample <= params.pca_fit_size else (
            per_unit(rng.choice(total, params.pca_fit_size, replace=False)) if total > params.pca_fit_size else None)
        rows = [client.submit(_unit_rows, *a, None if fit_rows is None else fit_rows[i], pure=False)
                for i, a in enumerate(args) if fit_rows is None or len(fit_rows[i])]
        pca = client.submit(_fit_pca, k, params.seed, *rows, pure=False)
        explained = client.gather(client.submit(_explained, pca, pure=False))
        eff["reduce"] = f"pca:{explained[0]}"  # a variance target's components, known now
        kept = float(sum(explained[1]))
        if kept < LOW_VARIANCE:
            warnings.warn(LowVarianceWarning(
                f"--reduce {eff['reduce']}: the PCA keeps {kept:.0%} of the variance of the {params.model} vectors "
                f"(below {LOW_VARIANCE:.0%}); the clustering may differ from the full space's (--reduce none, or "
                f"pca:{AUTO_VARIANCE:g} for the fewest components that keep {AUTO_VARIANCE:.0%})"), stacklevel=4)
    feats = [client.submit(_features, *a, pca, pure=False) for a in args]
    return SimpleNamespace(loc=loc, units=units, args=args, total=total, eff=eff, offsets=offsets, sampled=sampled,
                           pca=pca, explained=explained, feats=feats)


def _fit_settings(params: ClusterParams, eff: dict, sampled) -> dict:
    p = {k_: eff[k_] for k_ in ("min_cluster_size", "min_samples", "algorithm", "cluster_selection_epsilon", "allow_single_cluster")}
    p["sample"] = params.sample if sampled is not None else None
    p["seed"] = params.seed
    return p


def _cluster(st, exps, params: ClusterParams, client: Client, name: str | None) -> str:
    prep = _prepare(st, exps, params, client)
    loc, units, args, total, eff = prep.loc, prep.units, prep.args, prep.total, prep.eff
    offsets, sampled, pca, explained, feats = prep.offsets, prep.sampled, prep.pca, prep.explained, prep.feats
    p = _fit_settings(params, eff, sampled)
    if sampled is None:
        fit = client.submit(_fit, p, *feats, pure=False)
        frozen = client.submit(_frozen, p, fit, *feats, pure=False)
        labels, probs = client.gather(client.submit(_labels_of, fit, pure=False))
        unit_labels = [labels[offsets[i]:offsets[i + 1]] for i in range(len(units))]
        unit_probs = [probs[offsets[i]:offsets[i + 1]] for i in range(len(units))]
    else:
        parts = [client.submit(_take, f, s, pure=False) for f, s in zip(feats, sampled) if len(s)]
        fit = client.submit(_fit, p, *parts, pure=False)
        frozen = client.submit(_frozen, p, fit, *parts, pure=False)
        fit_labels, fit_probs = client.gather(client.submit(_labels_of, fit, pure=False))
        lookup = None if p["algorithm"] == "hdbscan" else client.submit(_with_tree, frozen, pure=False)
        seen = client.submit(_fitted_rows, fit, *parts, pure=False)
        predicted = client.gather([client.submit(_predict, fit, f, lookup, seen, pure=False) for f in feats])
        del seen
        unit_labels, unit_probs, pos = [], [], 0
        for (lab, pr), s in zip(predicted, sampled):  # the sampled vectors keep the fit's own labels
            lab, pr = lab.copy(), pr.copy()
            lab[s], pr[s] = fit_labels[pos:pos + len(s)], fit_probs[pos:pos + len(s)]
            pos += len(s)
            unit_labels.append(lab)
            unit_probs.append(pr)
    frozen = client.gather(frozen)  # the frozen model: the fitted members' features, core distances, thresholds
    if pca is not None:
        frozen.update(client.gather(client.submit(_pca_arrays, pca, pure=False)))
    del feats, fit, pca
    medoids = _medoids(client, args, unit_labels)
    all_labels = np.concatenate(unit_labels) if unit_labels else np.zeros(0, np.int32)
    ids = np.array(sorted(medoids), dtype=np.int32)
    sizes = np.array([int((all_labels == c).sum()) for c in ids], dtype=np.int64)

    inputs = [e.id for e in exps]
    record = eff  # the settings in effect, none left null
    if name is None:
        digest = hashlib.sha256(json.dumps([record, inputs]).encode()).hexdigest()[:8]
        name = f"{eff['algorithm']}-{params.model}-{digest}"
    lib = LIBRARIES[eff["algorithm"]]
    attrs = {"kind": KIND, "parameters": record, "requested": asdict(params), "inputs": inputs, "library": lib,
             "versions": versions(*dict.fromkeys([lib, "scikit-learn", "numpy"])), "n_vectors": total, "n_clusters": len(ids),
             "n_noise": int((all_labels == -1).sum()),
             "min_samples_note": min_samples_note(eff["algorithm"], eff["min_samples"]),
             "space": "unit-normalised vectors" + (f", PCA to {explained[0]} dimensions" if explained else "") + ", euclidean",
             "medoid": "member with the smallest summed cosine distance to the cluster's members, in the original space",
             "fitted": True, "frozen_in": exps[0].id, "frozen_k": frozen["k"], "assignment_rule": ASSIGNMENT_RULE,
             "duplicates": DUPLICATE_RULE}
    if explained is not None:
        attrs["explained_variance"] = float(sum(explained[1]))
        attrs["explained_variance_ratio"] = explained[1]
    for i, exp in enumerate(exps):
        g = exp.group(read_only=True)
        n_runs, n_steps = g["output_hash"].shape
        lab = np.full((n_runs, n_steps), -2, np.int32)
        prob = np.full((n_runs, n_steps), np.nan, np.float32)
        for (eid, run), a, ul, up in zip(units, args, unit_labels, unit_probs):
            if eid == exp.id:
                steps = read_vectors(*a)[0]  # steps only; cheap next to the clustering
                lab[run, steps], prob[run, steps] = ul, up
        write_result(exp, KIND, name, {
            "label": (["run", "step"], lab, {"description": "cluster of the step's embedding; -1 noise, -2 no vector"}),
            "probability": (["run", "step"], prob, {"description": "membership strength in its cluster (hdbscan probabilities_)"}),
            "cluster_id": (["cluster"], ids, {"description": "cluster label"}),
            "size": (["cluster"], sizes, {"description": "members over all input experiments"}),
            "medoid_experiment": (["cluster"], np.array([medoids[c][0] for c in ids], dtype=str), {"description": "experiment of the medoid"}),
            "medoid_run": (["cluster"], np.array([medoids[c][1] for c in ids], dtype=np.int64), {"description": "run of the medoid"}),
            "medoid_step": (["cluster"], np.array([medoids[c][2] for c in ids], dtype=np.int64), {"description": "step of the medoid"}),
        } | (_frozen_arrays(frozen, ids) if i == 0 else {}), attrs)
    return name


def _frozen_arrays(frozen: dict, ids: np.ndarray) -> dict:
    """The frozen model's arrays, stored with the clustering in its first input experiment (``frozen_in``)."""
    thr = np.full(len(ids), np.nan, np.float32)
    thr[np.searchsorted(ids, frozen["cluster_id"])] = frozen["threshold"]
    out = {
        "threshold": (["cluster"], thr, {"description": "largest core distance of the cluster's fitted members (frozen assignment)"}),
        "frozen_feature": (["reference", "feature"], frozen["feature"],
                           {"description": "clustering-space vectors (unit, PCA-projected if reduced) of the fitted cluster members"}),
        "frozen_label": (["reference"], frozen["label"], {"description": "cluster of each fitted member"}),
        "frozen_core_distance": (["reference"], frozen["core_distance"],
                                 {"description": "distance to the k-th nearest fitted vector besides itself (k: frozen_k)"}),
    }
    if "pca_mean" in frozen:
        out["pca_mean"] = (["dimension"], frozen["pca_mean"], {"description": "PCA mean of the unit vectors"})
        out["pca_components"] = (["component", "dimension"], frozen["pca_components"], {"description": "PCA components (rows)"})
    return out


def _medoids(client: Client, args: list[tuple], unit_labels: list[np.ndarray]) -> dict[int, tuple[str, int, int]]:
    sums = [client.submit(_cluster_sums, *a, lab, pure=False) for a, lab in zip(args, unit_labels)]
    while len(sums) > 1:  # a tree of merges on the workers
        sums = [client.submit(_merge_sums, *sums[i:i + 16], pure=False) for i in range(0, len(sums), 16)]
    if not sums:
        return {}
    best: dict[int, tuple[float, str, int, int]] = {}
    found = client.gather([client.submit(_best_members, *a, lab, sums[0], pure=False) for a, lab in zip(args, unit_labels)])
    for a, per in zip(args, found):
        for c, (score, step) in per.items():
            if c not in best or score > best[c][0]:
                best[c] = (score, a[1], a[3], step)
    return {c: v[1:] for c, v in best.items()}


def assignments(experiment_id: str, name: str | None = None, store: str | None = None) -> dict[str, Any]:
    """A stored clustering of one experiment as numpy arrays (label, probability, clusters) and its attributes."""
    from ..store import default_location
    from .results import open_result

    exp = open_store(str(store) if store is not None else default_location()).experiment(experiment_id)
    g = open_result(exp, KIND, name)
    return {k: g[k][...] for k in ("label", "probability", "cluster_id", "size", "medoid_experiment", "medoid_run", "medoid_step")} | {
        "attrs": dict(g.attrs), "name": g.basename}
