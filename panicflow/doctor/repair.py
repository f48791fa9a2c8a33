"""The doctor's repairs, in phases (``KINDS``): metadata regenerated from the stored config,
undecodable chunks deleted, runs and objects rebuilt from what the store still holds, embeddings
and diagrams recomputed through resume; and experiment folders whose creation never finished."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..models import REGISTRY, Kind
from ..store import Store, consolidated
from ..store.experiment import INVOCATION_ARRAYS, RUN_END_ARRAYS, Experiment
from ..store.root import StoreRoot
from .common import (
    DIGEST_RE,
    EMPTY_TEXT_HASH,
    JOURNAL_FIELDS,
    LATER_COLUMNS,
    PAIR_ARRAYS,
    PARAMS,
    Arrays,
    Problem,
    Run,
    Scan,
    expected_end,
    generate_one,
    is_pair_array,
    known,
    log,
    ranges,
    sha,
    short,
    without_checksum,
)
from .report import KINDS, ExperimentReport

ORPHAN_MIN_AGE_S = 600  # an experiment folder younger than this may still be being created


class Repairer:
    """Fixes what a ``Scan`` found, phase by phase; ``notes`` say why a problem was left."""

    def __init__(self, store: Store, exp: Experiment, verified: set[str], say: Callable[[str], None],
                 resume: Callable[[Experiment], None]) -> None:
        self.store = store
        self.root = store.root
        self.exp = exp
        self.say = say
        self._resume = resume
        self.verified = verified  # object digests checked good, shared with the scan
        self.notes: dict[tuple, list[str]] = defaultdict(list)
        self.actions: list[str] = []

    def note(self, p: Problem, text: str) -> None:
        if text not in self.notes[p.key]:
            self.notes[p.key].append(text)

    def act(self, text: str) -> None:
        self.actions.append(text)
        self.say(f"{self.exp.id}: {text}")

    def fix_phase(self, phase: int, problems: list[Problem], s: Scan) -> None:
        if phase == 1:
            self._fix_metadata(problems, s)
        elif phase == 2:
            self._fix_chunks(problems, s)
        elif phase == 3:
            self._fix_runs_and_objects(problems, s)
        elif phase == 4:
            self._fix_derived(problems, s)
        elif phase == 5:
            self._fix_consolidated(s)

    # ---------------------------------------------------------- metadata
    def _fix_metadata(self, problems: list[Problem], s: Scan) -> None:
        import zarr

        layout = s.layout
        consolidated.drop(self.exp)  # it would go stale; phase 5 writes it again
        for p in problems:
            node = "" if p.path in ("/", None) else p.path
            if node not in layout.docs:
                self.note(p, "not part of the layout: cannot be regenerated")
                continue
            key = f"{self.exp.data_key}/{layout.meta_key(node)}"
            data = layout.meta[layout.meta_key(node)]
            if layout.docs[node].get("node_type") == "array" and self._without_checksums(s):
                doc = json.loads(data)
                doc["codecs"] = without_checksum(doc["codecs"])
                data = json.dumps(doc, indent=2).encode()
                self.note(p, "without chunk checksums, like the other arrays of this experiment")
            if is_pair_array(node):
                model = node.split("/")[1]
                cap, how = self._pair_capacity(s, model)
                doc = json.loads(data)
                if doc["shape"][1] != cap:
                    doc["shape"][1] = cap
                    data = json.dumps(doc, indent=2).encode()
                self.note(p, f"pair capacity {cap} ({how})")
            try:
                old = self.root.read_bytes(key)
            except Exception:  # noqa: BLE001
                old = None
            try:
                self.root.write_bytes(key, data)
                store = self.root.zarr_store(self.exp.data_key, read_only=True)
                if layout.docs[node].get("node_type") == "array":
                    a = zarr.open_array(store=store, path=node, mode="r", zarr_format=3)
                    if a.shape and a.shape[0]:
                        a[0]  # the chunks must decode with the regenerated codecs
                else:
                    zarr.open_group(store=store, path=node, mode="r", zarr_format=3)
            except Exception as exc:  # noqa: BLE001
                if old is not None:
                    try:
                        self.root.write_bytes(key, old)
                    except Exception as restore_exc:  # noqa: BLE001
                        self.note(p, f"could not put the old file back: {short(restore_exc)}")
                self.note(p, f"regenerated metadata does not read the stored chunks ({short(exc)}); left as it was")
                continue
            self.act(f"regenerated {layout.meta_key(node)}")

    @staticmethod
    def _without_checksums(s: Scan) -> bool:
        """Whether most readable arrays were created without the checksum codec (an older store)."""
        arrays = {n for n, d in s.layout.docs.items() if d.get("node_type") == "array" and n not in s.bad_meta}
        return 2 * len(s.unchecksummed & arrays) > len(arrays)

    def _pair_capacity(self, s: Scan, model: str) -> tuple[int, str]:
        """The (resizable) pair dimension of diagrams/<model>: from a readable sibling, else the chunk files."""
        d = f"diagrams/{model}"
        for name in PAIR_ARRAYS:
            node = f"{d}/{name}"
            if node in s.bad_meta:
                continue
            try:
                shape = json.loads(self.root.read_bytes(f"{self.exp.data_key}/{node}/zarr.json"))["shape"]
                return int(shape[1]), f"from {name}"
            except Exception as exc:  # noqa: BLE001
                log.debug("%s: no shape from its metadata: %s", node, exc)
        want = s.layout.docs[f"{d}/birth"]
        cap = int(want["shape"][1])
        chunk = int(want["chunk_grid"]["configuration"]["chunk_shape"][1])
        for name in PAIR_ARRAYS:
            base = f"{self.exp.data_key}/{d}/{name}/c"
            try:
                for run_dir in self.root.list_dirs(base):
                    for j in self.root.list(f"{base}/{run_dir}"):
                        if j.isdigit():
                            cap = max(cap, (int(j) + 1) * chunk)
            except Exception as exc:  # noqa: BLE001
                log.debug("%s: cannot list its chunks: %s", base, exc)
        return cap, "inferred from the chunk files"

    # -------------------------------------------------------------- chunks
    def _fix_chunks(self, problems: list[Problem], s: Scan) -> None:
        deleted: set[str] = set()
        for p in problems:
            path = p.path or ""
            if path in deleted:  # a chunk of several runs, reported for each run read from it
                continue
            array = next((a for a in s.bad_chunks if path.startswith(a + "/c/") or path == a), None)
            if array is None:
                self.note(p, "no chunk to delete")
                continue
            if array in s.codecs_differ:
                self.note(p, "the array's codecs differ from this panicflow's layout; not deleting its chunks")
                continue
            if self._rewrite_in_shard(array, path, s):
                deleted.add(path)
                continue
            try:
                self.root.delete(f"{self.exp.data_key}/{path}")
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"cannot delete it: {short(exc)}")
                continue
            deleted.add(path)
            self.act(f"deleted undecodable chunk {path} (it now reads as missing and is rebuilt below)")

    def _rewrite_in_shard(self, array: str, path: str, s: Scan) -> bool:
        """In a shard of runs' rows, replace only the one-run chunks that do not decode with fill values
        (they read as missing and are rebuilt below), keeping the shard's other runs. False where the array
        is not sharded, or where the shard itself does not read (its index): then it is deleted whole."""
        a = Arrays(self.exp, read_only=False).get(array)
        if a.shards is None:
            return False
        bad = [c for c in sorted(s.bad_chunks[array]) if path == f"{array}/" + a.metadata.encode_chunk_key(
            tuple(k * ic // sc for k, ic, sc in zip(c, a.chunks, a.shards)))]
        try:
            for coords in bad:
                a[tuple(slice(k * ic, min((k + 1) * ic, n)) for k, ic, n in zip(coords, a.chunks, a.shape))] = a.fill_value
        except Exception as exc:  # noqa: BLE001 - the shard's index is damaged too
            log.debug("%s: cannot rewrite chunks inside it: %s", path, exc)
            return False
        self.act(f"replaced the undecodable rows of run(s) {ranges(sorted({c[0] for c in bad}))} in {path}, keeping its "
                 "other runs (they now read as missing and are rebuilt below)")
        return True

    # ------------------------------------------------- runs and objects
    def _fix_runs_and_objects(self, problems: list[Problem], s: Scan) -> None:
        z = Arrays(self.exp, read_only=False)
        by_kind: dict[str, list[Problem]] = defaultdict(list)
        for p in problems:
            by_kind[p.kind].append(p)
        for p in by_kind.get("layout", []):
            try:
                z.get(p.path)[...] = s.layout.creator[p.path]
                self.act(f"rewrote {p.path} from the config")
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"rewrite failed: {short(exc)}")
        run_kinds = ("run_gap", "run_extra", "run_mismatch", "stop_reason", "run_unended")
        runs: dict[int, list[Problem]] = defaultdict(list)
        for kind in run_kinds:
            for p in by_kind.get(kind, []):
                runs[p.run].append(p)
        for i, ps in sorted(runs.items()):
            try:
                notes = self._repair_run(s, z, s.runs[i])
            except Exception as exc:  # noqa: BLE001
                notes = [f"repair failed: {short(exc)}"]
            for p in ps:
                for text in notes:
                    self.note(p, text)
        broken = by_kind.get("object_missing", []) + by_kind.get("object_corrupt", [])
        for p in sorted(broken, key=lambda p: (p.run or 0, p.step or 0)):
            try:
                self._repair_object(s, p)
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"repair failed: {short(exc)}")
        if by_kind.get("journal"):
            try:
                self._fix_journal(by_kind["journal"], s, z)
            except Exception as exc:  # noqa: BLE001
                for p in by_kind["journal"]:
                    self.note(p, f"repair failed: {short(exc)}")
        for p in by_kind.get("journal_leftover", []):
            try:
                self.exp.journal.clear()
                self.act("deleted the journal left in a complete experiment")
            except Exception as exc:  # noqa: BLE001
                self.note(p, f"cannot delete it: {short(exc)}")

    def _fix_journal(self, problems: list[Problem], s: Scan, z: Arrays) -> None:
        """Drop the damaged journal lines and, for each run they belong to, its records from there on
        (``Journal.survey``), so that resume computes those steps again (fixed-seed runs: the same
        outputs). A run that ended and was materialised is trusted from its rows; one materialised as
        failed is reopened (its end and diagram markers cleared, as ``resume --retry-failed`` does);
        the rows a running run showed past the drop are cleared."""
        if s.state == "complete":
            for p in problems:
                self.note(p, "a complete experiment's journal is not needed: it is deleted (journal_leftover)")
            return
        journal = self.exp.journal
        survey = journal.survey()  # again, now that doctor holds the lease
        if not survey.damaged:
            return
        journal.drop(survey)
        stops = z.get("stop_reason")
        reopened, cleared = [], []
        for run, step in sorted(survey.cuts.items()):
            stop = str(stops[run])
            if stop and stop != "failed":
                continue  # ended and materialised: its rows, certified by stop_reason, are what resume uses
            if stop == "failed":
                z.get("stop_reason")[run] = ""  # the marker first
                for name, (_, fill, _) in RUN_END_ARRAYS.items():
                    z.get(name)[run] = fill
                for m in s.cfg.embedding_models:
                    z.get(f"diagrams/{m}/status")[run] = ""
                reopened.append(run)
            for name, (_, fill, _) in INVOCATION_ARRAYS.items():
                z.get(name)[run, step:] = fill
            cleared.append(f"run {run} from step {step}")
        runs = ", ".join(f"run {run} from step {step}" for run, step in sorted(survey.cuts.items())) or "no run known"
        self.act(f"dropped {survey.dropped} journal line(s) ({len(survey.damaged)} damaged; {runs}); "
                 f"`panicflow experiment resume {self.exp.id}` computes those steps again")
        if cleared:
            self.act(f"cleared the rows shown past the dropped steps ({', '.join(cleared)})")
        if reopened:
            self.act(f"reopened failed run(s) {ranges(reopened)}: their failure was among the dropped records")

    def _object_ok(self, digest: str) -> bool:
        if digest in self.verified:
            return True
        if self.store.objects.verify(digest):
            self.verified.add(digest)
            return True
        return False

    def _generate(self, model: str, value: Any, seed: int) -> tuple[bytes, Any]:
        return generate_one(model, value, seed)

    @staticmethod
    def _parameters_json(model: str) -> bytes:
        """The parameters object of an invocation of ``model``, as ``tasks.invoke_batch`` stores it."""
        from ..models.cache import get_model

        params = json.dumps({"model": model, **get_model(model).parameters()}, sort_keys=True, default=str)
        return params.encode("utf-8")

    def _input_of(self, r: Run, k: int, hashes: list, texts: list, cache: dict[int, Any]) -> Any:
        """What the model of step k saw: the prompt, the previous text, or the previous image as stored."""
        if k == 0:
            return r.spec.prompt
        if r.kinds[k - 1] == Kind.TEXT.value:
            if texts[k - 1] is None and hashes[k - 1] == EMPTY_TEXT_HASH:
                return ""
            return texts[k - 1]
        if k - 1 in cache:
            return cache[k - 1]
        h = hashes[k - 1]
        if h is None or not self._object_ok(h):
            return None
        return self.store.objects.get_image(h)

    def _repair_run(self, s: Scan, z: Arrays, r: Run) -> list[str]:
        """Rebuild a run's rows and end from the journal, the config, the surviving columns and
        deterministic re-runs checked against the objects in the store."""
        notes: list[str] = []
        n_steps = s.cfg.max_length
        i = r.index
        cols = {name: (list(vals) if vals is not None else None) for name, vals in r.rows.items()}
        if any(v is None for v in cols.values()):
            return ["some (run, step) arrays cannot be opened; fix their metadata first"]
        # how many steps: the length, unless the rows alone end the run consistently elsewhere
        L = r.L
        if r.L_rows != L and not s.journal.get(i):
            hs = cols["output_hash"][: r.L_rows]
            if all(h is not None for h in hs):
                end = expected_end(r.seeded, hs, n_steps)
                if end is not None and end[1] == r.L_rows:
                    L = r.L_rows
        if not r.ended and s.journal.get(i):
            L = max(L, max(s.journal[i]) + 1)
        hashes, texts, seeds = cols["output_hash"], cols["text"], cols["invocation_seed"]
        # 1. the journal, exact where it still holds the steps
        for k, rec in s.journal.get(i, {}).items():
            if k >= n_steps:
                continue
            for name, (_, fill, _) in INVOCATION_ARRAYS.items():
                if name in ("model", "kind") or cols[name][k] is not None:
                    continue
                if name == "text":
                    value = rec.text if rec.kind == Kind.TEXT.value else None
                else:
                    value = known(getattr(rec, JOURNAL_FIELDS.get(name, name), None), fill)
                if value is not None:
                    cols[name][k] = value
        # 2. the config decides model, kind and (seeded runs) the seed
        for k in range(L):
            cols["model"][k] = r.models[k]
            cols["kind"][k] = r.kinds[k]
            if r.seeded:
                seeds[k] = r.spec.seed
            if r.kinds[k] == Kind.IMAGE.value:
                texts[k] = None
            if hashes[k] is not None and not DIGEST_RE.fullmatch(str(hashes[k])):
                hashes[k] = None
        # 3. texts and their hashes from each other, or from the text objects
        for k in range(L):
            if r.kinds[k] != Kind.TEXT.value:
                continue
            t, h = texts[k], hashes[k]
            if t is not None and h is not None and sha(t.encode("utf-8")) != h:
                if self._object_ok(h):
                    texts[k] = self.store.objects.get_bytes(h).decode("utf-8")
                elif self.store.objects.exists(sha(t.encode("utf-8"))):
                    hashes[k] = sha(t.encode("utf-8"))
                else:
                    notes.append(f"step {k}: text and output_hash disagree and neither is confirmed by an object")
            elif t is None and h is not None:
                if h == EMPTY_TEXT_HASH:
                    texts[k] = ""
                elif self._object_ok(h):
                    texts[k] = self.store.objects.get_bytes(h).decode("utf-8")
            elif h is None and t is not None:
                hashes[k] = sha(t.encode("utf-8"))
        # 4. re-run the models where an output is still unknown, keeping only outputs the store holds
        cache: dict[int, Any] = {}
        rerun, failed = [], []
        for k in range(L):
            if hashes[k] is not None:
                continue
            value = self._input_of(r, k, hashes, texts, cache)
            seed = seeds[k]
            if value is None or seed is None:
                failed.append(k)
                continue
            try:
                data, nxt = self._generate(r.models[k], value, seed)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"step {k}: re-running {r.models[k]} failed: {short(exc)}")
                failed.append(k)
                continue
            digest = sha(data)
            if not self._object_ok(digest):
                notes.append(f"step {k}: re-running {r.models[k]} (seed {seed}) gave an output the store does not hold "
                             "(a non-deterministic model?)")
                failed.append(k)
                continue
            hashes[k] = digest
            if r.kinds[k] == Kind.TEXT.value:
                texts[k] = nxt
            else:
                cache[k] = nxt
            rerun.append(k)
        if rerun:
            self.act(f"run {i}: re-ran step(s) {ranges(rerun)} and matched their outputs with the store")
        if failed:
            notes.append(f"output of step(s) {ranges(failed)} cannot be rebuilt (input or seed unknown, or not reproducible)")
        if PARAMS:  # the parameters object of a model: what it reports, if the store holds exactly that
            params: dict[str, str | None] = {}
            for k in range(L):
                if cols[PARAMS][k] is not None and not DIGEST_RE.fullmatch(str(cols[PARAMS][k])):
                    cols[PARAMS][k] = None
                if cols[PARAMS][k] is None:
                    model = r.models[k]
                    if model not in params:
                        try:
                            digest = sha(self._parameters_json(model))
                            params[model] = digest if self._object_ok(digest) else None
                        except Exception:  # noqa: BLE001
                            params[model] = None
                    cols[PARAMS][k] = params[model]
            missing = [k for k in range(L) if cols[PARAMS][k] is None]
            if missing:
                notes.append(f"{PARAMS} of step(s) {ranges(missing)} cannot be rebuilt: the models now report "
                             "parameters the store does not hold")
        lost = {name: [k for k in range(L) if cols[name][k] is None]
                for name in INVOCATION_ARRAYS if name not in ("model", "kind", "output_hash", "text", PARAMS)}
        for name, ks in lost.items():
            if ks and not (name in LATER_COLUMNS and len(ks) == L):
                why = {"invocation_seed": "an unseeded run's seeds are recorded only once, in the journal",
                       "started_at": "timestamps are recorded only once, in the journal",
                       "ended_at": "timestamps are recorded only once, in the journal"}.get(
                    name, "it is recorded only once, in the journal")
                notes.append(f"{name} of step(s) {ranges(ks)} cannot be rebuilt: {why}")
        # 5. write the columns that changed (whole rows: whole chunks, so damaged chunks are replaced)
        changed = []
        for name, (dtype, fill, _) in INVOCATION_ARRAYS.items():
            values = [fill if (k >= L or cols[name][k] is None) else cols[name][k] for k in range(n_steps)]
            if name == "text":
                values = ["" if (k >= L or r.kinds[k] != Kind.TEXT.value or texts[k] is None) else texts[k] for k in range(n_steps)]
            before = [fill if v is None else v for v in r.rows[name]]
            if values != before:
                arr = np.array(values, dtype=object if dtype is str else dtype)
                if dtype is str:
                    arr = np.array([str(v) for v in values])
                z.get(name)[i, :] = arr
                changed.append(name)
        if changed:
            self.act(f"run {i}: rewrote {', '.join(changed)}")
        # 6. the end of the run, from its outputs
        if any(h is None for h in hashes[:L]):
            return notes + ["the end of the run cannot be checked while outputs are missing"]
        if r.stop == "failed":
            return notes
        if not r.ended and not s.finished:
            return notes
        if not r.ended and r.error:  # a failed run that lost its marker: its error says so
            end = expected_end(r.seeded, list(hashes[:L]), n_steps)
            if end is not None:
                return notes + ["it has an error, yet its outputs end it normally; not rewriting its end"]
            z.get("length")[i] = L
            z.get("loop_start")[i] = -1
            z.get("loop_period")[i] = -1
            z.get("stop_reason")[i] = "failed"
            self.act(f"run {i}: restored its end (failed after {L} steps, as its error says)")
            return notes
        end = expected_end(r.seeded, list(hashes[:L]), n_steps)
        if end is None or end[1] != L:
            return notes + ["its outputs contradict the stop rule (the run would end elsewhere); not rewriting its end"]
        stored = (r.stop, r.length, r.loop_start, r.loop_period, r.error or "")
        want = (end[0], end[1], end[2], end[3], "")
        if stored != want:
            z.get("length")[i] = end[1]
            z.get("loop_start")[i] = end[2]
            z.get("loop_period")[i] = end[3]
            z.get("error")[i] = ""
            z.get("stop_reason")[i] = end[0]  # the marker, last
            self.act(f"run {i}: rewrote its end from its outputs ({end[0]}, length {end[1]})")
        return notes

    def _repair_object(self, s: Scan, p: Problem) -> None:
        digest = p.path.rsplit("/", 1)[-1]
        if self._object_ok(digest):
            return
        refs = s.refs.get(digest, [])
        tried = []
        if not refs and digest in s.param_refs:
            models = sorted({s.runs[run].models[k] for run, k in s.param_refs[digest]})
            for model in models:
                try:
                    data = self._parameters_json(model)
                except Exception as exc:  # noqa: BLE001
                    tried.append(f"{model}: {short(exc)}")
                    continue
                if self._restore(digest, data, f"rewrote parameters object {digest[:16]}... from what {model} reports"):
                    return
                tried.append(f"{model} now reports other parameters")
            self.note(p, "unrepairable: " + "; ".join(tried))
            return
        for run, k in refs[:4]:
            r = s.runs[run]
            if r.kinds[k] == Kind.TEXT.value:
                candidates = [r.rows["text"][k] if r.rows.get("text") else None]
                rec = s.journal.get(run, {}).get(k)
                if rec is not None:
                    candidates.append(rec.text)
                for t in candidates:
                    if t is not None and self._restore(
                        digest, t.encode("utf-8"), f"rewrote text object {digest[:16]}... from the text of run {run} step {k}"
                    ):
                        return
                tried.append(f"run {run} step {k}: no stored text hashes to it")
                continue
            hashes = list(r.rows.get("output_hash") or [None] * len(r.kinds))
            texts = list(r.rows.get("text") or [None] * len(r.kinds))
            seeds = r.rows.get("invocation_seed") or [None] * len(r.kinds)
            seed = seeds[k] if seeds[k] is not None else (r.spec.seed if r.seeded else None)
            rec = s.journal.get(run, {}).get(k)
            if seed is None and rec is not None:
                seed = rec.seed
            value = self._input_of(r, k, hashes, texts, {})
            if value is None or seed is None:
                tried.append(f"run {run} step {k}: its input or seed is unknown")
                continue
            try:
                data, _ = self._generate(r.models[k], value, seed)
            except Exception as exc:  # noqa: BLE001
                tried.append(f"run {run} step {k}: re-running {r.models[k]} failed: {short(exc)}")
                continue
            if self._restore(digest, data, f"rebuilt image object {digest[:16]}... by re-running {r.models[k]} "
                                           f"(run {run} step {k}, seed {seed})"):
                return
            tried.append(f"run {run} step {k}: re-running {r.models[k]} (seed {seed}) gave a different image "
                         "(the model is not deterministic)")
        self.note(p, "unrepairable: " + ("; ".join(tried) or "no reference to rebuild it from"))

    def _restore(self, digest: str, data: bytes, action: str) -> bool:
        """Write ``data`` as the object ``digest`` if it hashes to it."""
        if sha(data) != digest:
            return False
        self.root.write_bytes(self.store.objects.key_for(digest), data)
        self.verified.add(digest)
        self.act(action)
        return True

    # ----------------------------------------------- embeddings, diagrams
    @staticmethod
    def _runs_with_damaged_outputs(s: Scan) -> set[int]:
        """Runs whose outputs are not known to be right: recomputing their embeddings would be wrong."""
        if any(KINDS.get(p.kind) in (1, 2) or p.kind == "experiment" for p in s.problems):
            return set(s.runs)  # metadata or chunks still broken: recompute nothing
        out: set[int] = set()
        for p in s.problems:
            if p.kind in ("object_missing", "object_corrupt"):
                digest = (p.path or "").rsplit("/", 1)[-1]
                out |= {run for run, _ in s.refs.get(digest, [])}
            elif p.kind in ("run_unended", "stop_reason", "layout") or (
                p.kind in ("run_gap", "run_mismatch", "run_extra") and p.path in ("output_hash", "text", "kind", "model")
            ):
                out.add(p.run if p.run is not None else -1)
        if -1 in out:
            return set(s.runs)
        return out

    def _fix_derived(self, problems: list[Problem], s: Scan) -> None:
        damaged_runs = self._runs_with_damaged_outputs(s)
        if s.effective == "running":
            for p in problems:
                self.note(p, "the experiment is running; stop it first")
            return
        clear: dict[tuple[int, str], set[str]] = defaultdict(set)  # (run, model) -> {"done", "status"}
        for p in problems:
            if p.run in damaged_runs:
                self.note(p, f"not recomputed: run {p.run}'s outputs are damaged (see its other problems)")
                continue
            if p.kind in ("embedding_missing", "embedding_rows", "embedding_digest"):
                clear[(p.run, p.model)] |= {"done", "status"}
            else:
                clear[(p.run, p.model)].add("status")
        if not clear:
            return
        z = Arrays(self.exp, read_only=False)
        if s.state in ("complete", "failed"):
            self.exp.write_state("interrupted", note="panicflow doctor cleared markers; resume recomputes them")
        for (run, m), what in sorted(clear.items()):
            z.get(f"diagrams/{m}/status")[run] = ""  # the derived marker first
            if "done" in what:
                z.get(f"embeddings/{m}/done")[run] = False
        n_emb = sum("done" in w for w in clear.values())
        cleared = f"cleared {n_emb} embedding marker(s) and {len(clear)} diagram status(es)"
        if not s.all_ended:
            # resume would also run the unfinished runs (from step 0 where their rows are lost): leave that to the user
            self.act(f"{cleared}; `panicflow experiment resume {self.exp.id}` recomputes them")
            for p in problems:
                self.note(p, "marker cleared; not recomputed here because some runs have not ended")
            return
        self.act(f"{cleared}; resuming to recompute them")
        try:
            self._resume(self.exp)
        except Exception as exc:  # noqa: BLE001
            for p in problems:
                self.note(p, f"resume failed: {short(exc)}")
            return
        self.act("resume finished")



    def _fix_consolidated(self, s: Scan) -> None:
        consolidated.drop(self.exp)
        if s.finished:
            consolidated.write(self.exp)
            self.act("rewrote the consolidated metadata of data.zarr from every node's zarr.json")
        else:
            self.act("removed the stale consolidated metadata of data.zarr (written when the experiment finishes)")


# ------------------------------------------------------------------------------ orphans
def orphans(store: Store) -> list[str]:
    ids = set(store.experiment_ids())
    return [d for d in store.root.list_dirs("experiments") if d not in ids]


def _orphan_age_s(name: str) -> float | None:
    try:
        created = datetime.strptime(name[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return (datetime.now(UTC) - created).total_seconds()


def _delete_tree(root: StoreRoot, prefix: str) -> None:
    if root.is_local:
        import os
        import shutil

        shutil.rmtree(os.path.join(root.path, *prefix.split("/")))  # type: ignore[attr-defined]
    else:
        root.fs.rm(f"{root.root}/{prefix}", recursive=True)  # type: ignore[attr-defined]


def check_orphan(store: Store, name: str, fix: bool, say: Callable[[str], None]) -> ExperimentReport:
    rep = ExperimentReport(id=name, state="no experiment.json")
    prefix = f"experiments/{name}"
    p = Problem("orphan", "experiment folder without experiment.json: its creation never finished", path=prefix)
    rep.problems.append(p)
    if not fix:
        return rep
    root = store.root
    try:
        ran = root.exists(f"{prefix}/state.json") or bool(root.list(f"{prefix}/journal"))
    except Exception:  # noqa: BLE001
        ran = True
    age = _orphan_age_s(name)
    if ran:
        p.detail += "; it has a state or a journal, so it is left for you to inspect"
    elif age is not None and age < ORPHAN_MIN_AGE_S:
        p.detail += f"; created {age:.0f} s ago, maybe still being created: left alone"
    else:
        try:
            _delete_tree(root, prefix)
            p.fixed = not root.exists(prefix)
            if p.fixed:
                rep.actions.append(f"deleted {prefix}")
                say(f"{name}: deleted the folder (creation never finished)")
        except Exception as exc:  # noqa: BLE001
            p.detail += f"; cannot delete it: {short(exc)}"
    return rep

