"""A stored clustering applied to other experiments without refitting (issue 24 item 1).

``assign(target_ids, clustering, source)`` reads the frozen model that ``cluster`` stored with the
clustering ``clustering`` of the experiment ``source`` (in its first input experiment, attribute
``frozen_in``): the PCA's mean and components if the vectors were reduced, and the fitted cluster
members' clustering-space vectors, labels and core distances, with per cluster a threshold (the
largest core distance of its members). Every vector of the clustering's model in the targets is
scaled to unit length, projected by that PCA, and takes the cluster of its nearest fitted member
(euclidean) when it lies within that cluster's threshold, else noise (-1)
(``clustering.ASSIGNMENT_RULE``, ``clustering.nearest_assign``; a KD-tree over the members, built once
and broadcast, where the space has at most ``clustering.TREE_MAX_DIM`` dimensions, so a target vector
is compared with the members near it, not with each of a million). Nothing is refitted: the same stored arrays give the
same labels.

The result is a clusters-kind result (``analysis/clusters/<name>`` in each target), so
``analyse sequences``, ``analyse dynamics``, the charts and the tables read it like a fitted one:
``label`` (run, step), ``probability`` (NaN: no membership strength without a fit), ``distance``
(run, step; to the nearest fitted member), ``cluster_id`` (the source's clusters), ``size`` (in the
targets), medoids over the targets (-1 / "" for a cluster no target vector joined) and ``threshold``.
Attributes: ``fitted: false``, ``source_clustering``, ``source_experiment``, ``source_inputs``, the
source's ``parameters`` (model, algorithm, reduction), ``inputs`` (the targets) and the versions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
from distributed import Client

from ..errors import UserError
from . import clustering as C
from .results import embedded_runs, open_result, open_store, read_vectors, versions, write_result


def load_frozen(st, source: str, clustering: str | None) -> tuple[dict, dict, str]:
    """(frozen model arrays, the clustering's attributes, its name) of a stored fitted clustering."""
    g = open_result(st.experiment(source), C.KIND, clustering)
    attrs, name = dict(g.attrs), g.basename
    if not attrs.get("fitted", True):
        raise UserError(f"--clustering {name}: an assignment of {attrs.get('source_clustering')!r} (not fitted); "
                        f"assign with --clustering {attrs.get('source_clustering')} --from {attrs.get('source_experiment')}")
    holder = g
    if "frozen_feature" not in g and attrs.get("frozen_in"):
        holder = open_result(st.experiment(attrs["frozen_in"]), C.KIND, name)
    if "frozen_feature" not in holder and attrs.get("imported_from"):
        raise UserError(f"--clustering {name}: imported from the earlier tool (its labels only, no frozen model); cluster "
                        f"with `panicflow analyse cluster {source} --model {attrs['parameters']['model']}` and assign from that")
    if "frozen_feature" not in holder:
        raise UserError(f"--clustering {name}: stored without its frozen model (computed before `analyse assign` existed); "
                        f"cluster again")
    frozen = {"feature": holder["frozen_feature"][...], "label": holder["frozen_label"][...],
              "cluster_id": holder["cluster_id"][...], "threshold": holder["threshold"][...]}
    if "pca_mean" in holder:
        frozen["pca_mean"], frozen["pca_components"] = holder["pca_mean"][...], holder["pca_components"][...]
    return frozen, attrs, name


def project(v: np.ndarray, frozen: dict) -> np.ndarray:
    """Unit vectors into the clustering's space: the stored PCA's (v - mean) @ components.T, or as they are."""
    if "pca_mean" not in frozen:
        return np.asarray(v, np.float64)
    return (np.asarray(v, np.float64) - frozen["pca_mean"]) @ np.asarray(frozen["pca_components"], np.float64).T


def _assign_run(loc: str, eid: str, model: str, run: int, frozen: dict) -> tuple[np.ndarray, np.ndarray]:
    x = project(C._unit_rows(loc, eid, model, run), frozen)
    return C.assign_frozen(x, frozen)


def assign(experiment_ids: Sequence[str], clustering: str | None, source: str, store: str | None = None,
           client: Client | None = None, *, name: str | None = None) -> str:
    """Label the vectors of ``experiment_ids`` with the stored clustering ``clustering`` of ``source`` (the most
    recent if None) without refitting; returns the result's name (module docstring)."""
    from ..store import default_location

    if not experiment_ids:
        raise UserError("assign: give at least one experiment id")
    st = open_store(str(store) if store is not None else default_location())
    frozen, src_attrs, cname = load_frozen(st, source, clustering)
    model = src_attrs["parameters"]["model"]
    exps = C.open_experiments(st, experiment_ids, model, "assign")
    if client is None:
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
            return _assign(st, exps, frozen, src_attrs, cname, st.experiment(source).id, model, c, name)
    return _assign(st, exps, frozen, src_attrs, cname, st.experiment(source).id, model, client, name)


def _assign(st, exps, frozen, src_attrs, cname, source_id, model, client: Client, name: str | None) -> str:
    loc = st.location
    units = [(e.id, int(r)) for e in exps for r in embedded_runs(e, model)]
    args = [(loc, eid, model, run) for eid, run in units]
    # with the KD-tree over the fitted members, built once here and sent to every worker (not once per run)
    [fz] = client.scatter([C._with_tree(frozen)], broadcast=True)
    found = client.gather([client.submit(_assign_run, *a, fz, pure=False) for a in args])
    unit_labels = [f[0] for f in found]
    medoids = C._medoids(client, args, unit_labels)
    ids = np.asarray(frozen["cluster_id"], np.int32)
    all_labels = np.concatenate(unit_labels) if unit_labels else np.zeros(0, np.int32)
    sizes = np.array([int((all_labels == c).sum()) for c in ids], dtype=np.int64)
    inputs = [e.id for e in exps]
    if name is None:
        digest = hashlib.sha256(json.dumps([cname, source_id, inputs]).encode()).hexdigest()[:6]
        name = f"{cname}-assigned-{digest}"
    keep = ("parameters", "min_samples_note", "space", "explained_variance", "explained_variance_ratio", "frozen_k")
    attrs = {k: src_attrs[k] for k in keep if k in src_attrs} | {
        "kind": C.KIND, "fitted": False, "source_clustering": cname, "source_experiment": source_id,
        "source_inputs": src_attrs.get("inputs", []), "inputs": inputs,
        "requested": {"clustering": cname, "source": source_id, "experiments": inputs},
        "library": "panicflow", "versions": versions("numpy"), "n_vectors": int(len(all_labels)), "n_clusters": int(len(ids)),
        "n_noise": int((all_labels == -1).sum()), "assignment_rule": C.ASSIGNMENT_RULE,
        "medoid": "member with the smallest summed cosine distance to the cluster's members in the targets, in the original space"}
    thr = np.asarray(frozen["threshold"], np.float32)
    for exp in exps:
        g = exp.group(read_only=True)
        n_runs, n_steps = g["output_hash"].shape
        lab = np.full((n_runs, n_steps), -2, np.int32)
        dist = np.full((n_runs, n_steps), np.nan, np.float32)
        for (eid, run), a, (ul, ud) in zip(units, args, found):
            if eid == exp.id:
                steps = read_vectors(*a)[0]
                lab[run, steps], dist[run, steps] = ul, ud
        write_result(exp, C.KIND, name, {
            "label": (["run", "step"], lab, {"description": "cluster of the step's embedding by the frozen model; -1 noise, -2 no vector"}),
            "probability": (["run", "step"], np.full((n_runs, n_steps), np.nan, np.float32),
                            {"description": "NaN: an assignment has no membership strength"}),
            "distance": (["run", "step"], dist, {"description": "distance to the nearest fitted member, in the clustering's space"}),
            "cluster_id": (["cluster"], ids, {"description": "cluster label (the source clustering's)"}),
            "size": (["cluster"], sizes, {"description": "members over all target experiments"}),
            "threshold": (["cluster"], thr, {"description": "the source's threshold (largest core distance of its fitted members)"}),
            "medoid_experiment": (["cluster"], np.array([medoids.get(int(c), ("", -1, -1))[0] for c in ids], dtype=str),
                                  {"description": "experiment of the medoid ('' no member)"}),
            "medoid_run": (["cluster"], np.array([medoids.get(int(c), ("", -1, -1))[1] for c in ids], dtype=np.int64),
                           {"description": "run of the medoid (-1 no member)"}),
            "medoid_step": (["cluster"], np.array([medoids.get(int(c), ("", -1, -1))[2] for c in ids], dtype=np.int64),
                            {"description": "step of the medoid (-1 no member)"}),
        }, attrs)
    return name
