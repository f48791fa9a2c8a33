"""HDBSCAN clustering of the embeddings of one or several experiments, on the Dask cluster.

What is clustered: every stored vector of one embedding model in the chosen experiments,
scaled to unit length (so euclidean distance orders pairs as cosine distance does),
optionally reduced by PCA (``reduce="pca:K"``, the default K=32; ``"none"`` clusters the
768-d vectors themselves, which hdbscan does slowly). Clustering several experiments at once
puts them in one space, so their labels can be compared.

How it runs (no process but the one hdbscan task holds more than one run's vectors):

1. one task per run counts its vectors;
2. ``pca:K``: a PCA (scikit-learn, full SVD) is fitted on a worker to at most
   ``pca_fit_size`` unit vectors drawn at random over all runs (all of them if fewer), then
   one task per run projects that run; the projected vectors stay on the workers;
3. one task gathers the (projected) vectors and runs hdbscan (or fast-hdbscan); with
   ``sample=N`` it fits N vectors drawn at random and every other vector gets
   ``hdbscan.approximate_predict``'s label (the fit's own label for the sampled ones);
4. medoids: per cluster the member with the smallest summed cosine distance to the other
   members, in the original (unreduced) space. With unit vectors that sum is
   n - x . S (S = sum of the members), so two passes of one task per run find it exactly.

Result, in each input experiment's store, ``analysis/clusters/<name>``:
``label`` (run, step) int32 (-1 noise, -2 no vector of this model), ``probability``
(run, step) float32 (hdbscan's membership strength; NaN without a vector), and per cluster
``cluster_id``, ``size`` (over all inputs), ``medoid_experiment``, ``medoid_run``,
``medoid_step``. Attributes: every parameter, the input experiments, the library and the
versions. The default name is derived from the parameters and inputs, so a second
clustering with other parameters is stored beside the first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from distributed import Client

from ..errors import UserError
from .results import check_model, embedded_runs, open_store, read_vectors, unit, versions, write_result

KIND = "clusters"
ALGORITHMS = ("hdbscan", "fast_hdbscan")


@dataclass(frozen=True)
class ClusterParams:
    model: str
    min_cluster_size: int = 10
    min_samples: int | None = None
    reduce: str = "pca:32"
    sample: int | None = None
    algorithm: str = "hdbscan"
    seed: int = 0
    pca_fit_size: int = 50_000

    def components(self) -> int | None:
        return None if self.reduce == "none" else int(self.reduce.split(":", 1)[1])

    def check(self) -> None:
        r = self.reduce
        if not (r == "none" or (r.startswith("pca:") and r[4:].isdigit() and int(r[4:]) >= 1)):
            raise UserError(f"--reduce: expected pca:K (K a positive integer) or none, got {r!r}")
        if self.min_cluster_size < 2:
            raise UserError(f"--min-cluster-size: must be at least 2 (got {self.min_cluster_size})")
        if self.min_samples is not None and self.min_samples < 1:
            raise UserError(f"--min-samples: must be at least 1 (got {self.min_samples})")
        if self.sample is not None and self.sample < self.min_cluster_size:
            raise UserError(f"--sample: must be at least --min-cluster-size ({self.min_cluster_size}), got {self.sample}")
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"--algorithm: choose {' or '.join(ALGORITHMS)}, not {self.algorithm!r}")
        if self.algorithm == "fast_hdbscan" and self.sample is not None:
            raise UserError("--sample: only with --algorithm hdbscan (fast_hdbscan cannot label unseen vectors)")


# ------------------------------------------------------------------ worker tasks
def _count(loc: str, eid: str, model: str, run: int) -> int:
    return len(read_vectors(loc, eid, model, run)[0])


def _unit_rows(loc: str, eid: str, model: str, run: int, rows: np.ndarray | None = None) -> np.ndarray:
    v = unit(read_vectors(loc, eid, model, run)[1])
    return (v if rows is None else v[rows]).astype(np.float32)


def _fit_pca(k: int, seed: int, *parts: np.ndarray):
    from sklearn.decomposition import PCA

    x = np.concatenate(parts)
    if k > min(x.shape):
        raise UserError(f"--reduce pca:{k}: at most {min(x.shape)} components for {x.shape[0]} vectors of dimension {x.shape[1]}")
    return PCA(n_components=k, svd_solver="full", random_state=seed).fit(x)


def _features(loc: str, eid: str, model: str, run: int, pca) -> np.ndarray:
    v = _unit_rows(loc, eid, model, run)
    return v if pca is None or len(v) == 0 else pca.transform(v).astype(np.float32)


def _take(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return x[rows]


def _fit(params: dict, *parts: np.ndarray):
    """The clustering itself: returns (clusterer or None, labels, probabilities)."""
    x = np.concatenate(parts)
    kw = {"min_cluster_size": params["min_cluster_size"], "min_samples": params["min_samples"]}
    if params["algorithm"] == "fast_hdbscan":
        import fast_hdbscan

        c = fast_hdbscan.HDBSCAN(**kw).fit(x)
        return None, c.labels_.astype(np.int32), c.probabilities_.astype(np.float32)
    import hdbscan

    c = hdbscan.HDBSCAN(metric="euclidean", prediction_data=params["sample"] is not None, **kw).fit(x)
    return c, c.labels_.astype(np.int32), c.probabilities_.astype(np.float32)


def _labels_of(fit) -> tuple[np.ndarray, np.ndarray]:
    return fit[1], fit[2]


def _predict(fit, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import hdbscan

    if len(x) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    labels, strengths = hdbscan.approximate_predict(fit[0], x)
    return labels.astype(np.int32), strengths.astype(np.float32)


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
def cluster(
    experiment_ids: Sequence[str],
    model: str,
    store: str | None = None,
    client: Client | None = None,
    *,
    min_cluster_size: int = 10,
    min_samples: int | None = None,
    reduce: str = "pca:32",
    sample: int | None = None,
    algorithm: str = "hdbscan",
    seed: int = 0,
    pca_fit_size: int = 50_000,
    name: str | None = None,
) -> str:
    """Cluster the ``model`` embeddings of the experiments; returns the result's name.

    Needs a ``distributed.Client`` (the work runs on its cluster; without one a LocalCluster
    of two processes is started and closed here). See the module docstring for what is stored.
    """
    from ..store import default_location

    params = ClusterParams(model, min_cluster_size, min_samples, reduce, sample, algorithm, seed, pca_fit_size)
    params.check()
    if not experiment_ids:
        raise UserError("cluster: give at least one experiment id")
    st = open_store(str(store) if store is not None else default_location())
    exps = [st.experiment(e) for e in experiment_ids]
    if len({e.id for e in exps}) != len(exps):
        raise UserError("cluster: an experiment is named twice")
    for exp in exps:
        check_model(exp, model)
    if client is None:
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
            return _cluster(st, exps, params, c, name)
    return _cluster(st, exps, params, client, name)


def _cluster(st, exps, params: ClusterParams, client: Client, name: str | None) -> str:
    loc = st.location
    units = [(e.id, int(r)) for e in exps for r in embedded_runs(e, params.model)]
    args = [(loc, eid, params.model, run) for eid, run in units]
    counts = np.array(client.gather([client.submit(_count, *a, pure=False) for a in args]), dtype=np.int64)
    total = int(counts.sum())
    if total < params.min_cluster_size:
        raise UserError(f"cluster: only {total} {params.model} vectors in these experiments; need at least --min-cluster-size ({params.min_cluster_size})")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng(params.seed)

    def per_unit(global_rows: np.ndarray) -> list[np.ndarray]:
        global_rows = np.sort(global_rows)
        return [global_rows[(global_rows >= offsets[i]) & (global_rows < offsets[i + 1])] - offsets[i] for i in range(len(units))]

    sampled = None
    if params.sample is not None and params.sample < total:
        sampled = per_unit(rng.choice(total, params.sample, replace=False))
    pca = None
    k = params.components()
    if k is not None:
        fit_rows = sampled if sampled is not None and params.sample <= params.pca_fit_size else (
            per_unit(rng.choice(total, params.pca_fit_size, replace=False)) if total > params.pca_fit_size else None)
        rows = [client.submit(_unit_rows, *a, None if fit_rows is None else fit_rows[i], pure=False)
                for i, a in enumerate(args) if fit_rows is None or len(fit_rows[i])]
        pca = client.submit(_fit_pca, k, params.seed, *rows, pure=False)
    feats = [client.submit(_features, *a, pca, pure=False) for a in args]
    p = {"min_cluster_size": params.min_cluster_size, "min_samples": params.min_samples,
         "algorithm": params.algorithm, "sample": params.sample if sampled is not None else None}
    if sampled is None:
        fit = client.submit(_fit, p, *feats, pure=False)
        labels, probs = client.gather(client.submit(_labels_of, fit, pure=False))
        unit_labels = [labels[offsets[i]:offsets[i + 1]] for i in range(len(units))]
        unit_probs = [probs[offsets[i]:offsets[i + 1]] for i in range(len(units))]
    else:
        parts = [client.submit(_take, f, s, pure=False) for f, s in zip(feats, sampled) if len(s)]
        fit = client.submit(_fit, p, *parts, pure=False)
        fit_labels, fit_probs = client.gather(client.submit(_labels_of, fit, pure=False))
        predicted = client.gather([client.submit(_predict, fit, f, pure=False) for f in feats])
        unit_labels, unit_probs, pos = [], [], 0
        for (lab, pr), s in zip(predicted, sampled):  # the sampled vectors keep the fit's own labels
            lab, pr = lab.copy(), pr.copy()
            lab[s], pr[s] = fit_labels[pos:pos + len(s)], fit_probs[pos:pos + len(s)]
            pos += len(s)
            unit_labels.append(lab)
            unit_probs.append(pr)
    del feats, fit, pca
    medoids = _medoids(client, args, unit_labels)
    all_labels = np.concatenate(unit_labels) if unit_labels else np.zeros(0, np.int32)
    ids = np.array(sorted(medoids), dtype=np.int32)
    sizes = np.array([int((all_labels == c).sum()) for c in ids], dtype=np.int64)

    inputs = [e.id for e in exps]
    record = asdict(params)
    if name is None:
        digest = hashlib.sha256(json.dumps([record, inputs]).encode()).hexdigest()[:8]
        name = f"{params.algorithm}-{params.model}-{digest}"
    lib = "hdbscan" if params.algorithm == "hdbscan" else "fast-hdbscan"
    attrs = {"kind": KIND, "parameters": record, "inputs": inputs, "library": lib,
             "versions": versions(lib, "scikit-learn", "numpy"), "n_vectors": total, "n_clusters": len(ids),
             "n_noise": int((all_labels == -1).sum()),
             "space": "unit-normalised vectors" + (f", PCA to {k} dimensions" if k else "") + ", euclidean",
             "medoid": "member with the smallest summed cosine distance to the cluster's members, in the original space"}
    for exp in exps:
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
        }, attrs)
    return name


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
