"""``import_legacy``: every experiment of an earlier PANIC-TDA database into a panicflow store.

Per experiment (docs/legacy-import.md):

1. Take the experiment's lease (``legacy-<legacy uuid>``: the id is fixed by the source, so a
   second import finds it) and lay out its Zarr arrays with ``Experiment.create``. Its
   ``experiment.json``, the marker that makes an experiment exist for every other command,
   is kept aside (``experiment.json.importing``) until the import is verified.
2. One run at a time: read and check its rows (``convert.read_run``), store its objects,
   then write its rows, end, vectors, diagrams, cluster labels and legacy ids, and last its
   content digest in ``legacy/digest``: the run's marker. An interrupted import skips the
   runs that have one; rewriting a run without one writes the same values again.
3. Finish as the coordinator does: clusterings' per-cluster arrays and ``status``; the journal
   holds the steps of failed runs (as a failed native experiment's does); the content of
   every run, its objects and every table's counts are checked against the source; then
   ``state.json`` and, last, ``experiment.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from ..config import config_digest
from ..errors import StoreUnavailable
from ..store import Store, consolidated
from ..store.experiment import STEP_CHUNK, Experiment, ExperimentWriter, chunk_compressors, now_us, vector_digest, write_embedding_rows
from ..store.journal import RunEvent, StepRecord
from . import verify
from .convert import IMPORTED_DIAGRAMS, IMPORTED_REASON, Clustering, Context, RunData, read_run
from .plan import Plan, experiment_id_for, plan_experiment
from .report import TABLES, ExperimentEntry, ImportReport
from .schema import LegacyDB, hyphenated, json_value, legacy_uuid

Progress = Callable[[str, int, int], None]  # (what, done, total)
LEGACY = "legacy"  # the Zarr group of the legacy ids, per-run import reports and digests
TOOL_ENTROPY = "tool_entropy"  # legacy/tool_entropy/<model>: the entropies the tool stored, as it stored them


def import_legacy(
    path: str,
    store: str | Store | None = None,
    *,
    dry_run: bool = False,
    skip_diagrams: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Import every experiment of the earlier tool's SQLite database at ``path`` into ``store``.

    Idempotent and resumable: an experiment already imported is left as it is, an interrupted one
    continues where it stopped. ``dry_run`` reads and checks everything and writes nothing.
    ``skip_diagrams`` leaves the persistence diagrams out (``panicflow experiment resume`` then
    computes them). Returns an ``ImportReport`` (``.to_dict()``, ``.complete``, ``.experiment_ids``);
    raises ``UserError`` for a file that is not such a database or a store that cannot be used.
    """
    t0 = time.monotonic()
    db = LegacyDB(path)
    try:
        st = _open_store(store, dry_run)
        report = ImportReport(str(db.path), st.location if st else (str(store) if store else None), dry_run)
        report.notes += db.schema_notes()
        plans = [plan_experiment(row, db.runs(row["id"])) for row in db.experiments()]
        clusterings = _clusterings(db, plans, report)
        total = sum(len(p.slots) for p in plans)
        done = 0
        for plan in plans:
            entry = _ExperimentImport(db, st, plan, plans, clusterings, dry_run, skip_diagrams).run(
                lambda n: progress and progress("runs", done + n, total))
            done += len(plan.slots)
            report.experiments.append(entry)
        _totals(db, report, clusterings)
    finally:
        db.close()
    report.seconds = time.monotonic() - t0
    return report


def _open_store(store: str | Store | None, dry_run: bool) -> Store | None:
    if isinstance(store, Store):
        return store
    if not dry_run:
        return Store(store, create=True)
    try:  # a dry run reads a store to tell what is already imported, and never creates one
        return Store(store)
    except StoreUnavailable:
        return None


# ------------------------------------------------------------------------------ clusterings
def _clusterings(db: LegacyDB, plans: list[Plan], report: ImportReport) -> dict[str, Clustering]:
    """Every clustering result, with its cluster labels (a dense rank of the medoid embedding
    ids, as the tool's ``load_clusters_df`` numbered them) and sizes over all its assignments."""
    importable = {p.legacy_id for p in plans if not p.reason}
    out = {}
    for row in db.clusterings():
        cid = legacy_uuid(row["id"])
        entry = {"legacy_id": hyphenated(cid) if cid else str(row["id"]), "model": str(row["embedding_model"]),
                 "name": "", "experiments": [], "status": ""}
        report.clusterings.append(entry)
        if not cid:
            entry["status"] = "not imported: its id is not a UUID"
            continue
        sizes: Counter = Counter()
        experiments = set()
        for exp_id, medoid, n in db.clustering_members(row["id"]):
            sizes[legacy_uuid(medoid)] += n
            if legacy_uuid(exp_id):
                experiments.add(legacy_uuid(exp_id))
        medoids = sorted(m for m in sizes if m is not None)
        labels: dict[str | None, int] = {m: i for i, m in enumerate(medoids)}
        labels[None] = -1
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", entry["model"])
        cl = Clustering(cid, row, entry["model"], f"legacy-{safe}-{cid}", labels, dict(sizes), experiments & importable)
        out[cid] = cl
        entry.update(name=cl.name, experiments=[experiment_id_for(e) for e in sorted(cl.experiments)],
                     clusters=len(medoids), members=sum(sizes.values()), noise=sizes.get(None, 0))
    return out


# ------------------------------------------------------------------------------ one experiment
class _MetaAside:
    """The store root as ``Experiment.create`` sees it, except that ``experiment.json`` (which makes
    the experiment exist for every other command) goes to ``experiment.json.importing`` until the
    import is verified."""

    def __init__(self, root, prefix: str) -> None:
        self._root, self._marker, self.aside = root, f"{prefix}/experiment.json", f"{prefix}/experiment.json.importing"

    def write_bytes(self, key: str, data: bytes) -> None:
        self._root.write_bytes(self.aside if key == self._marker else key, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._root, name)


class _ExperimentImport:
    def __init__(self, db: LegacyDB, st: Store | None, plan: Plan, plans: list[Plan], clusterings: dict[str, Clustering],
                 dry_run: bool, skip_diagrams: bool) -> None:
        self.db, self.st, self.plan, self.dry_run, self.skip_diagrams = db, st, plan, dry_run, skip_diagrams
        self.plans = {p.legacy_id: p for p in plans if p.legacy_id and not p.reason}  # where medoids are
        self.entry = ExperimentEntry(hyphenated(plan.legacy_id) if plan.legacy_id else str(plan.row["id"]), plan.experiment_id)
        self.clusterings = {k: c for k, c in clusterings.items()
                            if plan.legacy_id in c.experiments and plan.config and c.model in plan.config.embedding_models}

    # ------------------------------------------------------------------ driving
    def run(self, progress: Callable[[int], None]) -> ExperimentEntry:
        plan, entry = self.plan, self.entry
        entry.source = self.db.experiment_counts(plan.row["id"])
        entry.runs = len(plan.slots)
        if plan.reason:
            return self._not_imported(plan.reason)
        for model, why in plan.dropped_models.items():
            entry.issues.append(f"embedding model {model!r} left out: {why}")
        exp = Experiment(self.st.root, plan.experiment_id) if self.st else None
        if exp is not None and self.st.root.exists(f"{exp.prefix}/experiment.json"):
            return self._already(exp)
        if self.dry_run:
            ctx = self._context(None)
            for slot in plan.slots:
                self._add(read_run(ctx, slot))
                progress(slot.spec.index + 1)
            self._extra_runs()
            entry.status = "would import"
            return entry
        with exp.take("legacy import"):
            exp.write_state("running", started_us=now_us())
            consolidated.drop(exp)  # an earlier, interrupted session's (the layout is written again)
            self._create(exp)
            ctx = self._context(exp)
            writer = ExperimentWriter(exp)
            g = verify.Arrays(exp.group())
            digests = g[f"{LEGACY}/digest"][:]
            for slot in plan.slots:
                i = slot.spec.index
                if digests[i]:  # imported in an earlier session
                    self._add_recorded(json.loads(str(g[f"{LEGACY}/report"][i])), run=i)
                else:
                    with exp.root.deferred_sync():  # the run's objects are durable before its rows name them
                        data = read_run(ctx, slot)
                    self._write_run(exp, writer, g, data)
                    self._add(data)
                progress(i + 1)
            self._extra_runs()
            self._finish(exp, g)
        return entry

    def _not_imported(self, reason: str) -> ExperimentEntry:
        self.entry.status, self.entry.reason = "not imported", reason
        for table, n in self.entry.source.items():
            self.entry.tally[(table, "its experiment is not imported")] += n
        self.entry.tally[("experimentconfig", "not imported")] += 1
        return self.entry

    def _already(self, exp: Experiment) -> ExperimentEntry:
        """An experiment of this id is in the store: leave it, if it is this source's import."""
        try:
            meta = json.loads(exp.root.read_bytes(f"{exp.prefix}/experiment.json"))
        except ValueError:
            meta = {}
        imported = meta.get("imported_from") or {}
        if imported.get("experiment_id") != self.entry.legacy_id:
            return self._not_imported(f"the store already has an experiment {exp.id} that is not this one's import")
        if imported.get("source_counts") != self.entry.source:
            return self._not_imported(
                f"imported before from another state of this experiment (rows then {imported.get('source_counts')}, "
                f"now {self.entry.source}); delete {exp.prefix} from the store to import it again")
        self.entry.status, self.entry.state = "already imported", exp.effective_state()
        self.entry.tally.update({tuple(k.split("|", 1)): n for k, n in (meta.get("import") or {}).get("tally", {}).items()})
        self.entry.stop_reasons = (meta.get("import") or {}).get("stop_reasons", {})
        self.entry.pending = (meta.get("import") or {}).get("left_for_resume", {})
        return self.entry

    def _context(self, exp: Experiment | None) -> Context:
        cfg = self.plan.config
        sink = None
        if exp is not None:
            objects = self.st.objects

            def sink(digest: str, data: bytes) -> None:
                objects.root.write_bytes_once(objects.key_for(digest), data)

        parameters = {}
        for model in dict.fromkeys(m for net in cfg.networks for m in net):
            body = json.dumps({"model": model, "imported_from": "panic-tda",
                               "note": "the earlier tool recorded no generation parameters"}, sort_keys=True).encode()
            parameters[model] = hashlib.sha256(body).hexdigest()
            if sink is not None:
                sink(parameters[model], body)
        return Context(self.db, cfg, sink, parameters, self.skip_diagrams, dict(self.clusterings))

    # ------------------------------------------------------------------ layout
    def _create(self, exp: Experiment) -> None:
        """Lay the experiment out (again, if the config changed), with the legacy and clustering groups."""
        cfg, root = self.plan.config, exp.root
        aside = _MetaAside(root, exp.prefix)
        meta = None
        try:
            meta = json.loads(root.read_bytes(aside.aside))
        except (FileNotFoundError, ValueError):
            pass
        if meta is None or meta.get("config_sha256") != config_digest(cfg) or not root.exists(f"{exp.data_key}/zarr.json"):
            Experiment.create(aside, exp.id, cfg)
            meta = json.loads(root.read_bytes(aside.aside))
        exp.__dict__["meta"] = meta  # what Experiment.meta would read from experiment.json
        g = exp.group()
        n_runs, n_steps = len(self.plan.slots), cfg.max_length
        step_chunk = min(n_steps, STEP_CHUNK)
        lg = g.require_group(LEGACY)
        specs = {
            "run_id": (["run"], (1,), str, "", "the legacy run's UUID; empty where the database has no run for the slot"),
            "invocation_id": (["run", "step"], (1, step_chunk), str, "", "the legacy invocation's UUID of each imported step"),
            "report": (["run"], (1,), str, "", "what the import did with the run's rows (JSON)"),
            "digest": (["run"], (1,), str, "", "sha256 of the run's content as read from the legacy database; "
                                               "written last: the run's import marker"),
        }
        for name, (dims, chunks, dtype, fill, text) in specs.items():
            if name not in lg:
                shape = (n_runs,) if dims == ["run"] else (n_runs, n_steps)
                a = lg.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, dimension_names=dims,
                                    attributes={"description": text}, compressors=chunk_compressors(dtype))
                if name == "run_id":
                    a[...] = np.array([hyphenated(s.legacy_id) if s.legacy_id else "" for s in self.plan.slots])
        lg.attrs.update(self._provenance())
        te = lg.require_group(TOOL_ENTROPY)
        for model in cfg.embedding_models:
            if model not in te:
                dims = cfg.persistence.maxdim + 1
                te.create_array(model, shape=(n_runs, dims), chunks=(1, dims), dtype="float64", fill_value=np.nan,
                                dimension_names=["run", "homology_dim"], attributes={"description": (
                                    "the persistent entropy the earlier tool stored with the run's imported diagram, as it "
                                    "stored it (float32 widened; 0.0 or -0.0 for a dimension without a finite bar, where "
                                    f"diagrams/{model}/entropy is NaN); NaN: no imported diagram")})
            g[f"diagrams/{model}"].attrs.update({"imported": IMPORTED_DIAGRAMS})
        for cl in self.clusterings.values():
            parent = g.require_group("analysis").require_group("clusters")
            if cl.name in parent and parent[cl.name].attrs.get("status") in ("writing", "complete"):
                continue
            grp = parent.create_group(cl.name, overwrite=True)
            grp.attrs.update({"status": "writing"})
            grp.create_array("label", shape=(n_runs, n_steps), chunks=(1, n_steps), dtype="int32", fill_value=-2,
                             dimension_names=["run", "step"],
                             attributes={"description": "cluster of the step's embedding; -1 noise (the tool's outlier), "
                                                        "-2 not in this clustering"})
            grp.create_array("probability", shape=(n_runs, n_steps), chunks=(1, n_steps), dtype="float32",
                             fill_value=np.nan, dimension_names=["run", "step"],
                             attributes={"description": "not recorded by the earlier tool: NaN"})

    def _provenance(self) -> dict[str, Any]:
        row = self.plan.row
        return {"tool": "panic-tda", "database": str(self.db.path), "experiment_id": self.entry.legacy_id,
                "started_at": row.get("started_at"), "completed_at": row.get("completed_at")}

    # ------------------------------------------------------------------ one run
    def _write_run(self, exp: Experiment, writer: ExperimentWriter, g: verify.Arrays, data: RunData) -> None:
        i, n = data.index, len(data.steps)
        writer.write_steps(i, data.steps)
        writer.write_run_end(i, data.end)
        for model, vectors in data.vectors.items():
            write_embedding_rows(exp, i, model, vectors)
            writer.mark_embedded(i, model, digest=vector_digest(vectors))
        for model, result in data.diagrams.items():
            writer.write_diagram(i, model, result)
        for model, values in data.tool_entropy.items():
            g[f"{LEGACY}/{TOOL_ENTROPY}/{model}"][i, :len(values)] = values
        for cl_id, row in data.labels.items():
            g[f"analysis/clusters/{self.clusterings[cl_id].name}/label"][i, :n] = row
        if n:
            g[f"{LEGACY}/invocation_id"][i, :n] = np.array([hyphenated(x) for x in data.invocation_ids])
        report = {"tally": {f"{t}|{o}": c for (t, o), c in data.tally.items()}, "issues": data.issues,
                  "pending": {k: v for k, v in data.pending.items()}}
        g[f"{LEGACY}/report"][i] = json.dumps(report)
        exp.check_owner()
        g[f"{LEGACY}/digest"][i] = verify.source_digest(data, {k: c.name for k, c in self.clusterings.items()})  # the marker, last

    def _add(self, data: RunData) -> None:
        self._add_recorded({"tally": {f"{t}|{o}": c for (t, o), c in data.tally.items()}, "issues": data.issues,
                            "pending": dict(data.pending)}, data.end.stop_reason, data.index)

    def _add_recorded(self, report: dict[str, Any], stop_reason: str | None = None, run: int | None = None) -> None:
        e = self.entry
        for key, n in report["tally"].items():
            e.tally[tuple(key.split("|", 1))] += n
        for kind, models in report.get("pending", {}).items():
            e.pending[kind] = e.pending.get(kind, 0) + len(models)
        if stop_reason:
            e.stop_reasons[stop_reason] = e.stop_reasons.get(stop_reason, 0) + 1
        for line in report.get("issues", [])[:3]:
            if len(e.issues) < 50:
                e.issues.append(f"run {run}: {line}" if run is not None else line)

    def _extra_runs(self) -> None:
        """Runs of the experiment that fit no slot of its config: counted, with their rows."""
        e = self.entry
        e.tally[("experimentconfig", "imported")] += 1
        e.tally[("run", "imported")] += sum(1 for s in self.plan.slots if s.row is not None)
        for row in self.plan.extra_runs:
            e.tally[("run", "not in the experiment's networks x seeds x prompts")] += 1
            e.issues.append(f"legacy run {row['id']} is not in its experiment's networks x seeds x prompts: not imported")
        if self.plan.extra_runs:
            ids = [r["id"] for r in self.plan.extra_runs]
            for table, n in self.db.run_counts(ids).items():
                e.tally[(table, "its run is not in the experiment's config")] += n

    # ------------------------------------------------------------------ finishing
    def _finish(self, exp: Experiment, g: verify.Arrays) -> None:
        e, cfg = self.entry, self.plan.config
        for cl in self.clusterings.values():
            self._finish_clustering(exp, cl)
        self._journal_failed_runs(exp, g)
        e.problems = self._verify(exp, g)
        if e.problems:
            e.status = "verification failed"
            return
        notes = self._entropy_notes(g)
        e.issues[:0] = notes
        stops = g["stop_reason"][:]
        left = e.pending.get("embeddings", 0) + e.pending.get("diagrams", 0)
        failed = int((stops == "failed").sum())
        if not left:
            consolidated.write(exp)  # every write is done: before the final state, as the coordinator does
        if left:
            exp.write_state("interrupted")
        elif failed:
            exp.write_state("failed", error=f"{failed} run(s) failed; see their error in `panicflow experiment status`")
        else:
            exp.write_state("complete", completed_us=now_us())
        e.state = "interrupted" if left else "failed" if failed else "complete"
        e.stop_reasons = dict(Counter(map(str, stops)))
        meta = dict(exp.meta)
        meta["imported_from"] = {**self._provenance(), "source_counts": e.source,
                                 "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        meta["import"] = {"tally": {f"{t}|{o}": n for (t, o), n in e.tally.items() if n},
                          "stop_reasons": e.stop_reasons, "left_for_resume": e.pending,
                          "verified": "every run's content digest, its objects, and the rows of every table",
                          "notes": notes}
        exp.check_owner()
        exp.root.write_bytes(f"{exp.prefix}/experiment.json", json.dumps(meta, indent=2).encode())  # the marker, last
        exp.root.delete(_MetaAside(exp.root, exp.prefix).aside)
        e.status = "imported"

    def _entropy_notes(self, g: verify.Arrays) -> list[str]:
        """One line per model whose imported entropies of dimensions without a finite bar (the tool's -0.0) are NaN
        here: such a run leaves the dimension's summaries, which the tool's averages counted as 0."""
        out = []
        for model in self.plan.config.embedding_models:
            tool = g[f"{LEGACY}/{TOOL_ENTROPY}/{model}"][...]
            ours = g[f"diagrams/{model}/entropy"][...][:, : tool.shape[1]]
            empty = (tool == 0) & np.isnan(ours)
            if empty.any():
                per_dim = ", ".join(f"H{k}: {int(n)}" for k, n in enumerate(empty.sum(axis=0)) if n)
                out.append(f"{model}: {int(empty.sum())} entropies of dimensions without a finite bar ({per_dim} runs) were the "
                           f"tool's 0.0 (-0.0) and are NaN here, panicflow's value for no bar: an entropy summary leaves those "
                           f"runs out of that dimension where the tool's averages counted 0 (its values: "
                           f"legacy/{TOOL_ENTROPY}/{model})")
        return out

    def _finish_clustering(self, exp: Experiment, cl: Clustering) -> None:
        grp = exp.group()[f"analysis/clusters/{cl.name}"]
        if grp.attrs.get("status") == "complete":
            return
        medoids = [m for m in cl.labels if m is not None]
        where = [self._medoid_location(m) for m in medoids]
        arrays = {
            "cluster_id": (np.array([cl.labels[m] for m in medoids], dtype=np.int32), "cluster label"),
            "size": (np.array([cl.sizes.get(m, 0) for m in medoids], dtype=np.int64),
                     "members over all the clustering's assignments in the legacy database"),
            "medoid_experiment": (np.array([w[0] for w in where], dtype=str), "experiment of the medoid (empty: not imported)"),
            "medoid_run": (np.array([w[1] for w in where], dtype=np.int64), "run of the medoid (-1: not imported)"),
            "medoid_step": (np.array([w[2] for w in where], dtype=np.int64), "step of the medoid (-1: not imported)"),
            "legacy_medoid_embedding_id": (np.array([hyphenated(m) for m in medoids], dtype=str),
                                           "the medoid's embedding UUID in the legacy database"),
        }
        for name, (values, text) in arrays.items():
            kind = values.dtype.kind
            a = grp.create_array(name, shape=values.shape, chunks=(max(1, len(values)),),
                                 dtype=str if kind == "U" else values.dtype, fill_value="" if kind == "U" else -1,
                                 dimension_names=["cluster"], attributes={"description": text}, overwrite=True)
            if len(values):
                a[...] = values
        row = cl.row
        params = json_value(row.get("parameters")) if row.get("parameters") is not None else {}
        grp.attrs.update({
            "kind": "clusters", "parameters": {"model": cl.model, "algorithm": str(row["algorithm"]),
                                               **(params if isinstance(params, dict) else {})},
            "inputs": sorted(experiment_id_for(x) for x in cl.experiments), "library": "the earlier PANIC-TDA tool",
            "versions": {"panicflow": _version()}, "n_vectors": sum(cl.sizes.values()), "n_clusters": len(medoids),
            "n_noise": cl.sizes.get(None, 0),
            "space": "the tool's: unit-normalised vectors, euclidean (sklearn HDBSCAN)",
            "medoid": "the tool's medoid embedding (the member nearest sklearn's medoid)",
            "labels": "dense rank of the medoid embedding UUIDs (the tool's load_clusters_df numbering); -1 outliers",
            "imported_from": {"tool": "panic-tda", "clustering_result_id": hyphenated(cl.legacy_id),
                              "created_at": row.get("created_at"), "started_at": row.get("started_at"),
                              "completed_at": row.get("completed_at")},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        grp.attrs.update({"status": "complete"})  # the marker, last

    def _medoid_location(self, medoid: str) -> tuple[str, int, int]:
        """(panicflow experiment, run, step) of a medoid embedding; ("", -1, -1) outside the imported experiments."""
        loc = self.db.embedding_location(medoid)
        if loc is None:
            return "", -1, -1
        exp_hex, run_hex, seq = legacy_uuid(loc[0]), legacy_uuid(loc[1]), loc[2]
        plan = self.plans.get(exp_hex or "")
        if plan is None:
            return "", -1, -1
        run = next((s.spec.index for s in plan.slots if s.legacy_id == run_hex), -1)
        return (plan.experiment_id, run, int(seq)) if run >= 0 and isinstance(seq, int) else ("", -1, -1)

    def _journal_failed_runs(self, exp: Experiment, g: verify.Arrays) -> None:
        """The journal of a failed experiment holds its failed runs' steps and failure events, so that
        ``resume --retry-failed`` continues them from the step that stopped them, as it would a native run."""
        exp.journal.clear()
        stops, lengths, errors = g["stop_reason"][:], g["length"][:], g["error"][:]
        for i in np.flatnonzero(stops == "failed"):
            n = int(lengths[i])
            cols = {k: g[k][i, :n] for k in ("model", "kind", "output_hash", "text", "invocation_seed", "started_at",
                                            "ended_at", "parameters_hash", "batch_id", "batch_size", "batch_position")}
            records: list[StepRecord | RunEvent] = [
                StepRecord(run=int(i), step=k, model=str(cols["model"][k]), kind=str(cols["kind"][k]),
                           hash=str(cols["output_hash"][k]), text=str(cols["text"][k]) if cols["kind"][k] == "text" else None,
                           seed=int(cols["invocation_seed"][k]), started_us=int(cols["started_at"][k]),
                           ended_us=int(cols["ended_at"][k]), parameters_hash=str(cols["parameters_hash"][k]),
                           batch_id=str(cols["batch_id"][k]), batch_size=int(cols["batch_size"][k]),
                           batch_position=int(cols["batch_position"][k]))
                for k in range(n)]
            records.append(RunEvent(int(i), "failed", n, str(errors[i])))
            exp.journal.append(records)

    def _verify(self, exp: Experiment, g: verify.Arrays) -> list[str]:
        """Each run's content against its source digest, its objects, and the rows of every table."""
        models = list(self.plan.config.embedding_models)
        names = [c.name for c in self.clusterings.values()]
        problems: list[str] = []
        held: Counter = Counter()
        checked: set[str] = set()
        for slot in self.plan.slots:
            i = slot.spec.index
            if verify.stored_digest(g, i, models, names) != str(g[f"{LEGACY}/digest"][i]):
                problems.append(f"run {i}: the stored content differs from the legacy rows read (it is imported again next time)")
                g[f"{LEGACY}/digest"][i] = ""
            problems += verify.check_objects(exp, g, i, checked)
            held += verify.stored_counts(g, i, models, names)
        tally = self.entry.tally
        for table, n in self.entry.source.items():
            accounted = sum(c for (t, _), c in tally.items() if t == table)
            if accounted != n:
                problems.append(f"{table}: the database has {n} rows of this experiment, the import accounted for {accounted}")
        imported = verify.imported_counts(tally)
        for table in ("invocation", "embedding", "persistencediagram", "embeddingcluster"):
            if imported[table] != held[table]:
                problems.append(f"{table}: {imported[table]} rows imported, the store holds {held[table]}")
        return problems

def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("panicflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def _totals(db: LegacyDB, report: ImportReport, clusterings: dict[str, Clustering]) -> None:
    """Rows per table in the database, imported, and why not, orphans included."""
    tally: Counter = Counter()
    for e in report.experiments:
        tally.update(e.tally)
    done = {e.experiment_id for e in report.experiments if e.status in ("imported", "already imported", "would import")}
    for c in report.clusterings:
        if not c["status"]:
            c["experiments"] = [e for e in c["experiments"] if e in done]
            c["status"] = "imported" if c["experiments"] else "not imported: none of its experiments is imported"
        tally[("clusteringresult", "imported" if c["status"] == "imported" else c["status"])] += 1
    for table in TABLES:
        source = db.count(table)
        outcomes = {o: n for (t, o), n in tally.items() if t == table and n}
        orphans = source - sum(outcomes.values())
        if orphans > 0:
            outcomes["in no experiment of the database (orphan rows)" if table != "embeddingcluster"
                     else "in no imported run (orphan rows, or runs of experiments not imported)"] = orphans
        report.totals[table] = {"source": source, "imported": outcomes.pop("imported", 0), "skipped": outcomes}
    # rows read now: those of the experiments imported (or checked) in this session, and the clusterings
    report.rows = sum(sum(e.source.values()) for e in report.experiments if e.status != "already imported")
    report.rows += report.totals["clusteringresult"]["source"] + report.totals["embeddingcluster"]["source"]

