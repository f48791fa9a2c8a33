"""Tidy tables of an experiment, streamed from Zarr a block of runs at a time.

Tables (columns in docs/tables.md): ``runs``, ``invocations``, ``embeddings``, ``bars``,
``entropies``, ``drift``, ``clusters``, ``assignments``, and from the later analyses
``divergence``, ``divergence_curves``, ``stays``, ``transitions``, ``entropy_summary``, and of the
bounded-space measures and paraphrase pairs (bounded.py) ``bounded``, ``bounded_curves``, ``bounded_groups``,
``bounded_group_curves``, ``divergence_pairs``, ``divergence_pairs_curves``. Each is produced as a stream of
``pyarrow.RecordBatch`` (``iter_table``), so exporting a million invocations holds one block
of runs in memory; ``table`` collects one into a pandas DataFrame; ``export_tables`` writes
them all as Parquet or CSV files (in CSV the embedding vector is a JSON list in a string).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..errors import UserError
from .results import ANALYSIS, list_results, open_store

TABLES = ("runs", "invocations", "embeddings", "bars", "entropies", "drift", "clusters", "assignments",
          "divergence", "divergence_curves", "stays", "transitions", "entropy_summary",
          "bounded", "bounded_curves", "bounded_groups", "bounded_group_curves", "divergence_pairs", "divergence_pairs_curves")
RUNS_PER_BLOCK = 64

_TS = pa.timestamp("us", tz="UTC")
SCHEMAS = {
    "runs": pa.schema([("experiment_id", pa.string()), ("run", pa.int64()), ("network", pa.string()), ("seed", pa.int64()),
                       ("prompt", pa.string()), ("length", pa.int32()), ("stop_reason", pa.string()),
                       ("loop_start", pa.int32()), ("loop_period", pa.int32()), ("error", pa.string())]),
    "invocations": pa.schema([("experiment_id", pa.string()), ("run", pa.int64()), ("step", pa.int64()), ("model", pa.string()),
                              ("kind", pa.string()), ("output_hash", pa.string()), ("text", pa.string()),
                              ("invocation_seed", pa.int64()), ("started_at", _TS), ("ended_at", _TS)]),
    "embeddings": pa.schema([("experiment_id", pa.string()), ("run", pa.int64()), ("step", pa.int64()),
                             ("embedding_model", pa.string()), ("vector", pa.list_(pa.float32()))]),
    "bars": pa.schema([("experiment_id", pa.string()), ("run", pa.int64()), ("embedding_model", pa.string()),
                       ("homology_dim", pa.int8()), ("birth", pa.float64()), ("death", pa.float64()), ("persistence", pa.float64())]),
    "entropies": pa.schema([("experiment_id", pa.string()), ("run", pa.int64()), ("embedding_model", pa.string()),
                            ("homology_dim", pa.int8()), ("entropy", pa.float64()), ("status", pa.string()),
                            ("n_points", pa.int64()), ("n_points_used", pa.int64())]),
    "drift": pa.schema([("experiment_id", pa.string()), ("run", pa.int64()), ("step", pa.int64()), ("embedding_model", pa.string()),
                        ("cosine_distance", pa.float32()), ("unit_euclidean_distance", pa.float32())]),
    "clusters": pa.schema([("experiment_id", pa.string()), ("clustering", pa.string()), ("embedding_model", pa.string()),
                           ("cluster_id", pa.int32()), ("size", pa.int64()), ("medoid_experiment", pa.string()),
                           ("medoid_run", pa.int64()), ("medoid_step", pa.int64())]),
    "assignments": pa.schema([("experiment_id", pa.string()), ("clustering", pa.string()), ("embedding_model", pa.string()),
                              ("run", pa.int64()), ("step", pa.int64()), ("label", pa.int32()), ("probability", pa.float32()),
                              ("distance", pa.float32())]),
    "divergence": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                             ("network", pa.string()), ("prompt", pa.string()), ("n_runs", pa.int64()), ("n_pairs", pa.int64()),
                             ("n_steps", pa.int64()), ("n_fit_steps", pa.int64()), ("exponent", pa.float64()),
                             ("intercept", pa.float64()), ("r_squared", pa.float64()), ("stderr", pa.float64()), ("status", pa.string())]),
    "divergence_curves": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                                    ("network", pa.string()), ("prompt", pa.string()), ("step", pa.int64()), ("mean_distance", pa.float64())]),
    "stays": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("clustering", pa.string()),
                        ("embedding_model", pa.string()), ("run", pa.int64()), ("network", pa.string()), ("label", pa.int32()),
                        ("start_step", pa.int64()), ("end_step", pa.int64()), ("length", pa.int64()), ("final", pa.bool_())]),
    "transitions": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("clustering", pa.string()),
                              ("embedding_model", pa.string()), ("network", pa.string()), ("from_label", pa.int32()),
                              ("to_label", pa.int32()), ("count", pa.int64())]),
    "entropy_summary": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("network", pa.string()),
                                  ("embedding_model", pa.string()), ("homology_dim", pa.int8()), ("n", pa.int64()),
                                  ("n_missing", pa.int64()), ("mean", pa.float64()), ("std", pa.float64()), ("median", pa.float64()),
                                  ("min", pa.float64()), ("max", pa.float64()), ("statistic", pa.string()), ("ci_low", pa.float64()),
                                  ("ci_high", pa.float64()), ("confidence_level", pa.float64()), ("method", pa.string()),
                                  ("n_resamples", pa.int64()), ("seed", pa.int64()), ("n_points_min", pa.int64()),
                                  ("n_points_median", pa.float64()), ("n_points_max", pa.int64()), ("adjusted_mean", pa.float64()),
                                  ("adjusted_se", pa.float64()), ("points_slope", pa.float64()), ("reference_points", pa.float64())]),
    "bounded": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()), ("run", pa.int64()),
                          ("network", pa.string()), ("prompt", pa.string()), ("n_vectors", pa.int64()),
                          ("mean_resultant_length", pa.float64()), ("decay_time", pa.float64()), ("decay_status", pa.string()),
                          ("plateau", pa.float64()), ("plateau_ratio", pa.float64()), ("saturation_time", pa.float64()),
                          ("saturation_status", pa.string())]),
    "bounded_curves": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                                 ("run", pa.int64()), ("network", pa.string()), ("prompt", pa.string()), ("lag", pa.int64()),
                                 ("msad", pa.float64()), ("n_pairs", pa.int64()), ("autocorrelation", pa.float64())]),
    "bounded_groups": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                                 ("network", pa.string()), ("prompt", pa.string()), ("n_runs", pa.int64()), ("plateau", pa.float64()),
                                 ("plateau_ratio", pa.float64()), ("saturation_time", pa.float64()), ("saturation_status", pa.string()),
                                 ("decay_time", pa.float64()), ("decay_status", pa.string())]),
    "bounded_group_curves": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                                       ("network", pa.string()), ("prompt", pa.string()), ("lag", pa.int64()), ("msad", pa.float64()),
                                       ("n_pairs", pa.int64()), ("autocorrelation", pa.float64())]),
    "divergence_pairs": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                                   ("network", pa.string()), ("prompt_a", pa.string()), ("prompt_b", pa.string()), ("pairing", pa.string()),
                                   ("n_runs_a", pa.int64()), ("n_runs_b", pa.int64()), ("n_pairs", pa.int64()), ("n_steps", pa.int64()),
                                   ("n_fit_steps", pa.int64()), ("exponent", pa.float64()), ("intercept", pa.float64()),
                                   ("r_squared", pa.float64()), ("stderr", pa.float64()), ("status", pa.string())]),
    "divergence_pairs_curves": pa.schema([("experiment_id", pa.string()), ("result", pa.string()), ("embedding_model", pa.string()),
                                          ("network", pa.string()), ("prompt_a", pa.string()), ("prompt_b", pa.string()),
                                          ("step", pa.int64()), ("mean_distance", pa.float64())]),
}


def _exp(experiment_id: str, store: str | None):
    from ..store import default_location

    return open_store(str(store) if store is not None else default_location()).experiment(experiment_id)


def iter_table(name: str, experiment_id: str, store: str | None = None, *, vectors: bool = True,
               runs_per_block: int = RUNS_PER_BLOCK) -> Iterator[pa.RecordBatch]:
    """The table ``name`` of one experiment as record batches of at most ``runs_per_block`` runs.

    ``vectors=False`` leaves the ``vector`` column out of ``embeddings``.
    """
    if name not in TABLES:
        raise UserError(f"table: unknown table {name!r}; choose from {', '.join(TABLES)}")
    exp = _exp(experiment_id, store)
    g = exp.group(read_only=True)
    n_runs = g["run"].shape[0]
    schema = SCHEMAS[name] if vectors or name != "embeddings" else SCHEMAS[name].remove(SCHEMAS[name].get_field_index("vector"))
    if name in RESULT_TABLES:
        yield from _result_batches(name, exp, store, schema)
        return
    models = list(exp.config.embedding_models)
    lengths = np.where(g["stop_reason"][:] != "", g["length"][:], 0).astype(np.int64)
    for a in range(0, n_runs, runs_per_block):
        b = min(n_runs, a + runs_per_block)
        cols = _block(name, exp, g, models, lengths, a, b, vectors)
        for c in cols:
            if len(c["run"]):
                c["experiment_id"] = np.full(len(c["run"]), exp.id)
                yield pa.RecordBatch.from_pydict({f.name: c[f.name] for f in schema}, schema=schema)


def _block(name, exp, g, models, lengths, a, b, vectors) -> list[dict]:
    runs = np.arange(a, b)
    if name == "runs":
        return [{"run": runs, "network": g["network"][a:b], "seed": g["seed"][a:b], "prompt": g["prompt"][a:b],
                 "length": g["length"][a:b], "stop_reason": g["stop_reason"][a:b], "loop_start": g["loop_start"][a:b],
                 "loop_period": g["loop_period"][a:b], "error": g["error"][a:b]}]
    steps_n = g["output_hash"].shape[1]
    valid = np.arange(steps_n)[None, :] < lengths[a:b, None]
    r, s = np.nonzero(valid)
    if name == "invocations":
        c = {"run": runs[r], "step": s}
        for k in ("model", "kind", "output_hash", "text", "invocation_seed"):
            c[k] = g[k][a:b][r, s]
        for k in ("started_at", "ended_at"):
            t = np.asarray(g[k][a:b][r, s], dtype=np.int64)  # microseconds since 1970; int64 min = not recorded
            c[k] = pa.array(t, pa.int64(), mask=t == np.iinfo(np.int64).min).cast(_TS)
        return [c]
    if name == "embeddings":
        out = []
        for m in models:
            v = g[f"embeddings/{m}/vector"][a:b]
            done = g[f"embeddings/{m}/done"][a:b]
            ok = valid & done[:, None] & ~np.isnan(v).any(axis=2)
            rr, ss = np.nonzero(ok)
            c = {"run": runs[rr], "step": ss, "embedding_model": np.full(len(rr), m)}
            if vectors:
                flat = v[rr, ss].astype(np.float32)
                c["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]).cast(pa.list_(pa.float32()))
            out.append(c)
        return out
    if name in ("bars", "entropies"):
        out = []
        for m in models:
            d = g[f"diagrams/{m}"]
            status = d["status"][a:b]
            okr = np.array([str(x).startswith("ok") for x in status])
            if name == "entropies":
                e = d["entropy"][a:b]
                rr, kk = np.nonzero(np.broadcast_to(status[:, None] != "", e.shape))
                out.append({"run": runs[rr], "embedding_model": np.full(len(rr), m), "homology_dim": kk.astype(np.int8),
                            "entropy": e[rr, kk], "status": status[rr], "n_points": d["n_points"][a:b][rr],
                            "n_points_used": d["n_points_used"][a:b][rr]})
            else:
                birth, death, dim = d["birth"][a:b], d["death"][a:b], d["dimension"][a:b]
                rr, pp = np.nonzero((dim >= 0) & okr[:, None])
                bi, de = birth[rr, pp], death[rr, pp]
                out.append({"run": runs[rr], "embedding_model": np.full(len(rr), m), "homology_dim": dim[rr, pp].astype(np.int8),
                            "birth": bi, "death": de, "persistence": de - bi})
        return out
    if name == "drift":
        out = []
        for m, _ in list_results(exp, "drift").items():
            grp = g[f"{ANALYSIS}/drift/{m}"]
            cos, euc = grp["cosine_distance"][a:b], grp["unit_euclidean_distance"][a:b]
            rr, ss = np.nonzero(~np.isnan(cos))
            out.append({"run": runs[rr], "step": ss, "embedding_model": np.full(len(rr), m),
                        "cosine_distance": cos[rr, ss], "unit_euclidean_distance": euc[rr, ss]})
        return out
    if name in _LATER:
        return [c for rname, attrs in list_results(exp, _LATER[name]).items()
                for c in _later(name, g[f"{ANALYSIS}/{_LATER[name]}/{rname}"], rname, attrs, g, a, b)]
    out = []
    for cname, attrs in list_results(exp, "clusters").items():
        grp = g[f"{ANALYSIS}/clusters/{cname}"]
        model = attrs["parameters"]["model"]
        if name == "clusters":
            if a:  # per clustering, not per run: once
                continue
            ids = grp["cluster_id"][:]
            out.append({"run": ids, "clustering": np.full(len(ids), cname), "embedding_model": np.full(len(ids), model),
                        "cluster_id": ids, "size": grp["size"][:], "medoid_experiment": grp["medoid_experiment"][:],
                        "medoid_run": grp["medoid_run"][:], "medoid_step": grp["medoid_step"][:]})
        else:
            lab, prob = grp["label"][a:b], grp["probability"][a:b]
            rr, ss = np.nonzero(lab >= -1)
            # an assigned clustering (analyse assign) stores each vector's distance to its nearest fitted member
            dist = grp["distance"][a:b][rr, ss] if "distance" in grp else np.full(len(rr), np.nan, np.float32)
            out.append({"run": runs[rr], "step": ss, "clustering": np.full(len(rr), cname), "embedding_model": np.full(len(rr), model),
                        "label": lab[rr, ss], "probability": prob[rr, ss], "distance": dist})
    return out


_LATER = {"divergence": "divergence", "divergence_curves": "divergence", "stays": "sequences",
          "transitions": "sequences", "entropy_summary": "entropy", "bounded": "bounded", "bounded_curves": "bounded",
          "bounded_groups": "bounded", "bounded_group_curves": "bounded", "divergence_pairs": "divergence_pairs",
          "divergence_pairs_curves": "divergence_pairs"}


def _later(name, grp, rname, attrs, g, a, b) -> list[dict]:
    """Rows of one divergence, sequences or entropy result: per run for stays, else once (in the first block)."""
    if name == "stays":
        run = grp["stay_run"][:]
        lo, hi = np.searchsorted(run, [a, b])  # stays are sorted by run
        sl = slice(int(lo), int(hi))
        return [{"run": run[sl], "result": np.full(hi - lo, rname), "clustering": np.full(hi - lo, attrs["clustering"]),
                 "embedding_model": np.full(hi - lo, attrs["model"]), "network": g["network"][a:b][run[sl] - a],
                 "label": grp["stay_label"][sl], "start_step": grp["stay_start"][sl], "end_step": grp["stay_end"][sl],
                 "length": grp["stay_length"][sl], "final": grp["stay_final"][sl]}]
    if name in ("bounded", "bounded_curves"):
        return _bounded_runs(name, grp, rname, attrs, a, b)
    if a:
        return []
    if name == "transitions":
        n = grp["transition_count"].shape[0]
        return [{"run": np.zeros(n), "result": np.full(n, rname), "clustering": np.full(n, attrs["clustering"]),
                 "embedding_model": np.full(n, attrs["model"]), "network": grp["transition_network"][:],
                 "from_label": grp["transition_from"][:], "to_label": grp["transition_to"][:], "count": grp["transition_count"][:]}]
    if name == "entropy_summary":
        n, p = grp["n"].shape[0], attrs["parameters"]
        c = {k: grp[k][:] for k in ("n", "n_missing", "mean", "std", "median", "min", "max", "ci_low", "ci_high")}
        for k in ("n_points_min", "n_points_median", "n_points_max", "adjusted_mean", "adjusted_se", "points_slope", "reference_points"):
            # a result stored before these were computed: -1 / NaN
            c[k] = grp[k][:] if k in grp else np.full(n, -1 if k in ("n_points_min", "n_points_max") else np.nan)
        return [c | {"run": np.zeros(n), "result": np.full(n, rname), "network": grp["group_network"][:],
                     "embedding_model": grp["group_model"][:], "homology_dim": grp["group_homology_dim"][:].astype(np.int8),
                     "statistic": np.full(n, p["statistic"]), "confidence_level": np.full(n, p["confidence_level"]),
                     "method": np.full(n, p["method"]), "n_resamples": np.full(n, p["n_resamples"]), "seed": np.full(n, p["seed"])}]
    if name in ("bounded_groups", "bounded_group_curves", "divergence_pairs", "divergence_pairs_curves"):
        return _bounded_groups(name, grp, rname, attrs)
    net, prompt = grp["group_network"][:], grp["group_prompt"][:]
    common = {"result": rname, "embedding_model": attrs["model"]}
    if name == "divergence":
        n = len(net)
        return [{"run": np.zeros(n), **{k: np.full(n, v) for k, v in common.items()}, "network": net, "prompt": prompt,
                 **{k: grp[k][:] for k in ("n_runs", "n_pairs", "n_steps", "n_fit_steps", "exponent", "intercept",
                                           "r_squared", "stderr", "status")}}]
    d = grp["mean_distance"][:]
    gg, ss = np.nonzero(~np.isnan(d))
    return [{"run": gg, **{k: np.full(len(gg), v) for k, v in common.items()}, "network": net[gg], "prompt": prompt[gg],
             "step": ss, "mean_distance": d[gg, ss]}]


def _bounded_runs(name, grp, rname, attrs, a, b) -> list[dict]:
    """Rows of runs a..b of a bounded result: one per run with a vector, or per (run, lag) with a pair."""
    rg = grp["run_group"][a:b]
    net, prompt = grp["group_network"][:], grp["group_prompt"][:]
    if name == "bounded":
        rr = np.flatnonzero(rg >= 0)
        c = {k: grp[k][a:b][rr] for k in ("n_vectors", "mean_resultant_length", "decay_time", "decay_status", "plateau",
                                           "plateau_ratio", "saturation_time", "saturation_status")}
    else:
        pairs = grp["msad_pairs"][a:b]
        rr, kk = np.nonzero(pairs > 0)
        c = {"lag": grp["lag"][:][kk], "msad": grp["msad"][a:b][rr, kk], "n_pairs": pairs[rr, kk],
             "autocorrelation": grp["autocorrelation"][a:b][rr, kk]}
    n = len(rr)
    return [c | {"run": a + rr, "result": np.full(n, rname), "embedding_model": np.full(n, attrs["model"]),
                 "network": net[rg[rr]], "prompt": prompt[rg[rr]]}]


def _bounded_groups(name, grp, rname, attrs) -> list[dict]:
    """Rows of the groups of a bounded or divergence_pairs result (once), or of their curves."""
    net = grp["group_network"][:]
    if name.startswith("bounded"):
        labels = {"prompt": grp["group_prompt"][:]}
    else:
        labels = {"prompt_a": grp["prompt_a"][:], "prompt_b": grp["prompt_b"][:]}
    if name == "bounded_groups":
        gg = np.arange(len(net))
        c = {"n_runs": grp["group_n_runs"][:], **{k: grp[f"group_{k}"][:] for k in (
            "plateau", "plateau_ratio", "saturation_time", "saturation_status", "decay_time", "decay_status")}}
    elif name == "divergence_pairs":
        gg = np.arange(len(net))
        c = {"pairing": np.full(len(gg), attrs["parameters"]["pairing"]), **{k: grp[k][:] for k in (
            "n_runs_a", "n_runs_b", "n_pairs", "n_steps", "n_fit_steps", "exponent", "intercept", "r_squared", "stderr", "status")}}
    elif name == "bounded_group_curves":
        pairs = grp["group_msad_pairs"][:]
        gg, kk = np.nonzero(pairs > 0)
        c = {"lag": grp["lag"][:][kk], "msad": grp["group_msad"][:][gg, kk], "n_pairs": pairs[gg, kk],
             "autocorrelation": grp["group_autocorrelation"][:][gg, kk]}
    else:
        d = grp["mean_distance"][:]
        gg, ss = np.nonzero(~np.isnan(d))
        c = {"step": ss, "mean_distance": d[gg, ss]}
    n = len(gg)
    return [c | {"run": gg, "result": np.full(n, rname), "embedding_model": np.full(n, attrs["model"]), "network": net[gg],
                 **{k: v[gg] for k, v in labels.items()}}]


def _module(name: str):
    import importlib

    return importlib.import_module(f"{__package__}.{name}")


# The tables of the issue 24 analyses: each is the tidy table its `analyse` command writes (--out, --tables),
# made by the same function, led by experiment_id and result; a row set per stored result of the kind.
# table -> (result kind, the command's table function of (experiment id, store, result name))
RESULT_TABLES = {
    "stability": ("stability", lambda e, s, r: _module("stability").stability_table(e, s, r)),
    **{f"dynamics_{w}": ("dynamics", lambda e, s, r, w=w: _module("dynamics").dynamics_table(e, w, s, result=r))
       for w in ("runs", "states", "transitions", "timescales", "networks")},
    "knn": ("knn", lambda e, s, r: _module("density").knn_table(e, s, r)),
    "noise_sweep": ("noise_sweep", lambda e, s, r: _module("density").sweep_table(e, s, r)),
    "noise_caption": ("noise_caption", lambda e, s, r: _module("density").caption_table(e, s, r)),
    "recurrence": ("recurrence", lambda e, s, r: _module("recurrence").recurrence_tables(e, s, r)[0]),
    "recurrence_returns": ("recurrence", lambda e, s, r: _module("recurrence").recurrence_tables(e, s, r)[1]),
    "windows": ("windows", lambda e, s, r: _module("recurrence").windows_table(e, s, r)),
    "run_table": ("run_table", lambda e, s, r: _module("recurrence").run_table_frame(e, s, r)),
}
RUN_TABLE_MAXDIM = 3  # run_table: entropy_hk, entropy_normalised_hk, bars_hk for k = 0..3 (the config's highest maxdim)


def _result_schema(*cols: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([("experiment_id", pa.string()), ("result", pa.string()), *cols])


_S, _I, _F, _I32 = pa.string(), pa.int64(), pa.float64(), pa.int32()
_DYN = (("clustering", _S), ("embedding_model", _S))
SCHEMAS.update({
    "stability": _result_schema(("embedding_model", _S), ("algorithm", _S), ("resample", _I), ("fraction", _F), ("n_points", _I),
                                ("ari", _F), ("n_clusters", _I), ("n_noise", _I), ("full_n_clusters", _I)),
    "dynamics_runs": _result_schema(*_DYN, ("run", _I), ("network", _S), ("absorbed", pa.bool_()), ("absorption_step", _I),
                                    ("absorption_vectors", _I), ("core", _I), ("final_state", _I), ("loop_period", _I),
                                    ("milestones", _I), ("stop_reason", _S), ("transit", _I), ("unassigned", _I)),
    "dynamics_states": _result_schema(*_DYN, ("network", _S), ("label", _I32), ("censored", _I), ("dwell_fit", _S),
                                      ("dwell_mean", _F), ("geometric_p", _F), ("loglik_ratio", _F), ("p_value", _F),
                                      ("set", _I32), ("stationary", _F), ("stays", _I), ("zeta_exponent", _F)),
    "dynamics_transitions": _result_schema(*_DYN, ("network", _S), ("from", _I32), ("to", _I32), ("count", _F), ("probability", _F)),
    "dynamics_timescales": _result_schema(*_DYN, ("network", _S), ("lag", _I), ("index", _I), ("value", _F)),
    "dynamics_networks": _result_schema(*_DYN, ("name", _S), ("absorbed", _I), ("connected", _I), ("core", _I), ("runs", _I),
                                        ("sets", _I), ("transit", _I), ("unassigned", _I)),
    "knn": _result_schema(("run", _I), ("step", _I), ("k", _I), ("distance", _F)),
    "noise_sweep": _result_schema(("min_cluster_size", _I), ("min_samples", _I), ("n_clusters", _I), ("n_noise", _I),
                                  ("noise_fraction", _F)),
    "noise_caption": _result_schema(("run", _I), ("step", _I), ("captioner", _S), ("caption_chars", _I), ("caption_words", _I),
                                    ("noise", pa.bool_())),
    "recurrence": _result_schema(("run", _I), ("n_points", _I), ("rr_distance", _F), ("rr_symbol", _F), ("jaccard", _F),
                                 ("mean_return_distance", _F), ("mean_return_symbol", _F), ("n_returns_distance", _I),
                                 ("n_returns_symbol", _I), ("censored_distance", _I), ("censored_symbol", _I)),
    "recurrence_returns": _result_schema(("run", _I), ("source", _S), ("step", _I), ("time", _I)),
    "windows": _result_schema(("run", _I), ("start", _I), ("end", _I), ("homology_dim", _I), ("bars", _I), ("entropy", _F),
                              ("entropy_normalised", _F)),
    "run_table": _result_schema(("run", _I), ("network", _S), ("prompt", _S), ("n_points", _I), ("n_points_used", _I),
                                ("duplicates", _I),
                                *[c for k in range(RUN_TABLE_MAXDIM + 1)
                                  for c in ((f"entropy_h{k}", _F), (f"entropy_normalised_h{k}", _F), (f"bars_h{k}", _I))],
                                ("mean_dwell", _F), ("max_dwell", _I), ("n_clusters", _I), ("noise_fraction", _F),
                                ("rr_distance", _F), ("rr_symbol", _F)),
})
TABLES += tuple(RESULT_TABLES)


def _result_batches(name: str, exp, store: str | None, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One batch per stored result of the table's kind: the command's own table with experiment_id and result
    (a column the result lacks, e.g. run_table's entropy_h3 when the diagrams stop at H2, is null). A table
    that has its own experiment_id keeps it (dynamics_runs of a pooled result: each run's experiment)."""
    from ..store import default_location

    kind, frame = RESULT_TABLES[name]
    location = str(store) if store is not None else default_location()
    for rname in list_results(exp, kind):
        df = frame(exp.id, location, rname)
        if len(df):
            df = df.assign(**{k: v for k, v in (("experiment_id", exp.id), ("result", rname)) if k not in df.columns})
            yield pa.RecordBatch.from_arrays([pa.array(df[f.name], f.type, from_pandas=True) if f.name in df.columns
                                              else pa.nulls(len(df), f.type) for f in schema], schema=schema)


def table(name: str, experiment_id: str, store: str | None = None, *, vectors: bool = True):
    """One table as a pandas DataFrame."""
    schema = SCHEMAS[name] if name in SCHEMAS else None
    batches = list(iter_table(name, experiment_id, store, vectors=vectors))
    if not batches:
        if schema is not None and not vectors and name == "embeddings":
            schema = schema.remove(schema.get_field_index("vector"))
        return pa.Table.from_batches([], schema=schema).to_pandas()
    return pa.Table.from_batches(batches).to_pandas()


def export_tables(experiment_id: str, out: str | os.PathLike, fmt: str = "parquet", store: str | None = None, *,
                  vectors: bool = True, tables: tuple[str, ...] = TABLES) -> dict[str, str]:
    """Write each table to ``out/<table>.<fmt>``, streamed; returns table -> path."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt not in ("parquet", "csv"):
        raise UserError(f"--format: choose parquet or csv, not {fmt!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in tables:
        path = folder / f"{name}.{fmt}"
        tmp = folder / f".{name}.{fmt}.tmp"
        schema = SCHEMAS[name] if vectors or name != "embeddings" else SCHEMAS[name].remove(SCHEMAS[name].get_field_index("vector"))
        if fmt == "csv" and "vector" in schema.names:
            schema = schema.set(schema.get_field_index("vector"), pa.field("vector", pa.string()))
        writer = pq.ParquetWriter(tmp, schema) if fmt == "parquet" else pacsv.CSVWriter(tmp, schema)
        try:
            for batch in iter_table(name, experiment_id, store, vectors=vectors):
                if fmt == "csv" and "vector" in batch.schema.names:
                    i = batch.schema.get_field_index("vector")
                    text = pa.array([json.dumps(v) for v in batch.column(i).to_pylist()], pa.string())
                    batch = pa.RecordBatch.from_arrays([text if j == i else batch.column(j) for j in range(batch.num_columns)], schema=schema)
                writer.write_batch(batch)
        finally:
            writer.close()
        os.replace(tmp, path)  # a finished file only
        written[name] = str(path)
    return written
