"""The doctor's checks of one experiment: metadata, arrays, chunks and their checksums, runs,
objects, embeddings, diagrams and the journal, each finding a ``Problem`` in a ``Scan``."""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import PanicflowError
from ..models import REGISTRY, Kind
from ..store import Store, consolidated
from ..store.experiment import INVOCATION_ARRAYS, VECTOR_DIGEST, Experiment, vector_digest
from ..store.journal import StepRecord, supersede
from .common import (
    CREATOR_ARRAYS,
    DIAGRAM_STATUSES,
    DIGEST_RE,
    EMPTY_TEXT_HASH,
    LATER_COLUMNS,
    PAIR_ARRAYS,
    PARAMS,
    STOP_REASONS,
    Arrays,
    Layout,
    Run,
    Scan,
    expected_end,
    generate_one,
    has_checksum,
    is_pair_array,
    is_task_array,
    is_vector_digest,
    known,
    log,
    ranges,
    sha,
    short,
    without_checksum,
)


class Scanner:
    """Checks one experiment against the store contract; ``scan()`` gives what it found."""

    def __init__(self, store: Store, exp: Experiment, verified: set[str]) -> None:
        self.store = store
        self.root = store.root
        self.exp = exp
        self.verified = verified  # object digests checked good (objects are immutable), shared with the repair
        # laying out the config takes ~70 ms (every array created in memory), as long as the rest of a small
        # experiment's scan, and `--fix` scans again after each phase: made at the first scan, then kept (it
        # is a function of exp.config and exp.run_chunks, both read once per Experiment)
        self._layout: Layout | None = None

    def scan(self) -> Scan:
        s = Scan()
        self._blocks: dict[str, tuple[int, np.ndarray | None]] = {}  # path -> (first run, rows): _read_row
        exp = self.exp
        try:
            s.cfg = exp.config
        except PanicflowError as exc:
            s.add("experiment", str(exc), path=f"{exp.prefix}/experiment.json")
            return s
        except Exception as exc:  # noqa: BLE001 - never crash on a damaged store
            s.add("experiment", f"experiment.json cannot be read: {short(exc)}", path=f"{exp.prefix}/experiment.json")
            return s
        try:
            s.state = str(exp.read_state().get("state"))
            s.effective = exp.effective_state()
        except Exception as exc:  # noqa: BLE001
            s.state = s.effective = "unknown"
            log.debug("state unreadable: %s", exc)
        try:
            if self._layout is None:
                self._layout = Layout(exp)
            s.layout = self._layout
        except Exception as exc:  # noqa: BLE001
            s.add("experiment", f"cannot lay out the stored config to compare against: {short(exc)}")
            return s
        self._check_metadata(s)
        z = Arrays(exp)
        self._check_creator_arrays(s, z)
        self._read_journal(s)
        self._read_runs(s, z)
        for r in s.runs.values():
            try:
                self._check_run(s, r)
                self._check_replay(s, r)
            except Exception as exc:  # noqa: BLE001
                s.add("unreadable", f"checking run {r.index} failed: {short(exc)}", run=r.index)
        self._check_objects(s)
        self._check_embeddings(s, z)
        self._check_diagrams(s, z)
        self._check_other_chunks(s, z)
        if s.state == "complete" and s.journal_files:
            s.add("journal_leftover", f"{s.journal_files} journal file(s) left in a complete experiment (harmless)",
                  path=f"{exp.prefix}/journal")
        self._check_progress(s, z)
        self._check_consolidated(s)
        if s.without_task_times:
            s.notes.append(f"the {' and '.join(sorted(s.without_task_times))} have no task times (started_at, ended_at, "
                           "worker): the experiment was created before panicflow recorded them; a resume adds them")
        if s.without_vector_digests:
            s.notes.append(f"the embeddings of {', '.join(sorted(s.without_vector_digests))} have no vector digests "
                           f"({VECTOR_DIGEST}): the experiment was created before panicflow recorded them, so their "
                           "vectors are checked for their NaN pattern only; a resume adds the array")
        for m, n in sorted(s.undigested.items()):
            s.notes.append(f"{n} run(s) of {m} were embedded without a vector digest (before panicflow recorded "
                           "them): their vectors are checked for their NaN pattern only")
        if s.unchecksummed:
            arrays = sum(doc.get("node_type") == "array" for doc in s.layout.docs.values())
            s.notes.append(f"{len(s.unchecksummed)} of {arrays} arrays were created without chunk checksums "
                           "(before panicflow added them): a changed byte in their chunks is found only where it "
                           "breaks decoding or a check")
        return s

    # ------------------------------------------------------------- metadata
    def _check_metadata(self, s: Scan) -> None:
        layout = s.layout
        for node, want in sorted(layout.docs.items()):
            key = f"{self.exp.data_key}/{layout.meta_key(node)}"
            where = {"path": node or "/"}
            try:
                raw = self.root.read_bytes(key)
            except FileNotFoundError:
                s.bad_meta.add(node)
                if is_task_array(node):  # an experiment from before task times: no problem, resume adds them
                    s.without_task_times.add(node.split("/")[0])
                    continue
                if is_vector_digest(node):  # likewise from before vector digests
                    s.without_vector_digests.add(node.split("/")[1])
                    continue
                s.add("metadata", f"{layout.meta_key(node)} is missing", **where)
                continue
            except Exception as exc:  # noqa: BLE001
                s.add("metadata", f"{layout.meta_key(node)} cannot be read: {short(exc)}", **where)
                s.bad_meta.add(node)
                continue
            try:
                doc = json.loads(raw)
                if not isinstance(doc, dict):
                    raise TypeError("not a JSON object")
            except (ValueError, TypeError) as exc:
                s.add("metadata", f"{layout.meta_key(node)} is damaged (not JSON: {short(exc)})", **where)
                s.bad_meta.add(node)
                continue
            diff = self._meta_diff(node, doc, want)
            if diff:
                s.add("metadata", f"{layout.meta_key(node)} differs from the layout: {diff}", **where)
                s.bad_meta.add(node)
            elif want.get("node_type") == "array":
                if without_checksum(doc.get("codecs")) != without_checksum(want.get("codecs")):
                    s.codecs_differ.add(node)
                if not has_checksum(doc.get("codecs")):
                    s.unchecksummed.add(node)
        # any other zarr.json under data.zarr must at least parse
        for key in self._walk_meta(""):
            node = key[: -len("zarr.json")].rstrip("/")
            if node in layout.docs:
                continue
            try:
                json.loads(self.root.read_bytes(f"{self.exp.data_key}/{key}"))
            except Exception as exc:  # noqa: BLE001
                s.add("metadata", f"{key} (not part of the layout) is damaged: {short(exc)}", path=node)

    def _walk_meta(self, prefix: str, depth: int = 0) -> list[str]:
        """zarr.json keys under data.zarr, not descending into chunk folders."""
        base = f"{self.exp.data_key}/{prefix}".rstrip("/")
        out = []
        try:
            if "zarr.json" in self.root.list(base):
                out.append(f"{prefix}zarr.json")
            if depth < 6:
                for d in self.root.list_dirs(base):
                    if d != "c":
                        out.extend(self._walk_meta(f"{prefix}{d}/", depth + 1))
        except Exception as exc:  # noqa: BLE001 - a folder that cannot be listed: its nodes are checked one by one
            log.debug("cannot list %s: %s", base, exc)
        return out

    def _meta_diff(self, node: str, doc: dict, want: dict) -> str:
        bad = []
        for key, value in want.items():
            if key == "codecs":
                continue  # zarr versions may spell codecs differently; decoding the chunks checks them
            got = doc.get(key)
            if key == "attributes":  # ours must be there (units, calendar, model...); descriptions are prose
                if not isinstance(got, dict) or any(got.get(k) != v for k, v in value.items() if k != "description"):
                    bad.append(key)
            elif key == "shape" and is_pair_array(node):
                if not (isinstance(got, list) and len(got) == 2 and got[0] == value[0] and isinstance(got[1], int) and got[1] >= 1):
                    bad.append(key)
            elif got != value:
                bad.append(key)
        return ", ".join(bad)

    # ------------------------------------------------------- reading arrays
    def _array(self, s: Scan, z: Arrays, path: str):
        if path in s.bad_meta:
            return None
        s.read_arrays.add(path)
        try:
            return z.get(path)
        except Exception as exc:  # noqa: BLE001
            s.add("metadata", f"{path}: cannot be opened: {short(exc)}", path=path)
            s.bad_meta.add(path)
            return None

    def _read_per_run(self, s: Scan, z: Arrays, path: str) -> np.ndarray | None:
        """A run-chunked array whole, read once per scan; undecodable chunks read as fill values
        (and are reported)."""
        if path not in s.per_run:
            s.per_run[path] = self._read_whole(s, z, path)
        return s.per_run[path]

    def _read_whole(self, s: Scan, z: Arrays, path: str) -> np.ndarray | None:
        a = self._array(s, z, path)
        if a is None:
            return None
        try:
            return a[...]
        except Exception as exc:  # noqa: BLE001 - read chunk by chunk below, to find the bad chunks
            log.debug("%s: reading chunk by chunk: %s", path, exc)
        out = np.empty(a.shape, dtype=object)
        out[...] = a.fill_value.item() if isinstance(a.fill_value, np.generic) else a.fill_value
        n_runs, per = a.shape[0], a.chunks[0]
        for b in range(0, n_runs, per):
            block = slice(b, min(b + per, n_runs))
            try:
                out[block] = a[block]
                continue
            except Exception as exc:  # noqa: BLE001
                first = exc
            if all(c >= n for c, n in zip(a.chunks[1:], a.shape[1:])):  # one chunk across the block: that one
                self._bad_chunk(s, a, path, (b // per, *(0 for _ in a.shape[1:])), first)
                continue
            for r in range(block.start, block.stop):
                row = self._read_row(s, a, path, r)
                if row is not None:
                    out[r] = row
        return out

    def _read_row(self, s: Scan, a, path: str, r: int):
        """Row ``r``; chunk by chunk when a chunk does not decode (those parts read as fill values).
        None for a 1-D array whose chunk does not decode. Where a chunk holds several runs, their
        rows are read together, once per scan (the last block read is kept per array)."""
        per = a.chunks[0]
        if per > 1:
            b = r - r % per
            block = self._blocks.get(path)
            if block is None or block[0] != b:
                try:
                    block = (b, a[b: b + per])
                except Exception:  # noqa: BLE001 - a chunk that does not decode: this row alone, below
                    block = (b, None)
                self._blocks[path] = block
            if block[1] is not None:
                return block[1][r - b]
        try:
            return a[r]
        except Exception as exc:  # noqa: BLE001
            first = exc
        shape, chunks = a.shape[1:], a.chunks[1:]
        if not shape:
            self._bad_chunk(s, a, path, (r // a.chunks[0],), first, run=r)
            return None
        row = np.empty(shape, dtype=object)
        row[...] = a.fill_value.item() if isinstance(a.fill_value, np.generic) else a.fill_value
        counts = [-(-n // c) for n, c in zip(shape, chunks)]
        for coords in np.ndindex(*counts):
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, shape))
            try:
                row[region] = a[(r, *region)]
            except Exception as exc:  # noqa: BLE001
                self._bad_chunk(s, a, path, (r // a.chunks[0], *coords), exc, run=r)
        return row

    def _bad_chunk(self, s: Scan, a, path: str, coords: tuple[int, ...], exc: BaseException, run: int | None = None) -> None:
        """Report an undecodable chunk (``coords`` in chunks of ``a.chunks``): for ``run`` (the row being read),
        else for the run it holds, or for no run when it holds several (named in the detail). A one-run chunk
        inside a shard (the rows of 16 runs in one object) is named by its shard's object."""
        shards = a.shards if coords else None
        stored = tuple(c * ic // sc for c, ic, sc in zip(coords, a.chunks, shards)) if shards else coords
        try:
            key = a.metadata.encode_chunk_key(stored)
        except Exception:  # noqa: BLE001
            key = "c/" + "/".join(map(str, stored))
        if run is None and coords:
            run = int(coords[0]) if a.chunks[0] == 1 else None
        if coords in s.bad_chunks[path] and run is None:
            return  # reported already
        s.bad_chunks[path].add(coords)
        if "checksum do not match" in str(exc):  # zarr's crc32c codec
            why = "is damaged: its bytes no longer match their crc32c checksum (changed after they were written)"
        else:
            why = f"cannot be decoded: {short(exc)}"
        per = (shards or a.chunks)[0] if coords else 1  # runs per object
        if per > 1:
            first = int(stored[0]) * per
            runs = f"runs {first}-{min(first + per, a.shape[0]) - 1}"
            why += f" (run {run}'s rows, in the shard of {runs})" if shards else f" (it holds {runs})"
        s.add("unreadable", f"chunk {path}/{key} {why}", run=run, path=f"{path}/{key}")

    def _check_creator_arrays(self, s: Scan, z: Arrays) -> None:
        for name in CREATOR_ARRAYS:
            a = self._array(s, z, name)
            if a is None:
                continue
            try:
                got = a[...]
            except Exception as exc:  # noqa: BLE001
                self._bad_chunk(s, a, name, (0,) * len(a.shape), exc)
                continue
            want = s.layout.creator[name]
            if got.shape != want.shape or not np.array_equal(np.asarray(got.tolist(), dtype=object), np.asarray(want.tolist(), dtype=object)):
                s.add("layout", f"{name} differs from the experiment's config", path=name)

    def _read_journal(self, s: Scan) -> None:
        journal = self.exp.journal
        try:
            s.journal_files = len(journal.names())
            if s.state == "complete":
                return  # everything is in Zarr: files left by a clear cut short are only a leftover (below)
            survey = journal.survey()  # every line validated as resume reads it; what dropping the bad ones takes
        except Exception as exc:  # noqa: BLE001
            s.add("journal", f"the journal cannot be read: {short(exc)}", path=journal.prefix)
            return
        for d in survey.damaged:
            if d.run is not None and d.run in survey.cuts:
                drop = f"run {d.run}'s journaled steps from step {survey.cuts[d.run]} on"
            else:
                drop = "this line"
            s.add("journal", f"journal {d.segment} is damaged at line {d.line}: {d.reason} (resume stops on it); "
                             f"`--fix` drops {drop}, which resume then computes again",
                  run=d.run, step=d.step, path=f"{journal.prefix}/{d.segment}:{d.line}")
        for rec in survey.records:  # in the order written, as resume reads them
            if isinstance(rec, StepRecord):
                supersede(s.journal[rec.run], rec)

    def _read_runs(self, s: Scan, z: Arrays) -> None:
        cfg = s.cfg
        n_steps = cfg.max_length
        ends = {name: self._read_per_run(s, z, name) for name in ("stop_reason", "length", "loop_start", "loop_period", "error")}
        for spec in cfg.runs():
            r = Run(spec.index, spec)
            r.models = [spec.model_at(k) for k in range(n_steps)]
            r.kinds = [REGISTRY[m].output_kind.value for m in r.models]
            for name, values in ends.items():
                value = None if values is None else values[spec.index]
                if isinstance(value, np.generic):
                    value = value.item()
                setattr(r, {"stop_reason": "stop"}.get(name, name), value)
            s.runs[spec.index] = r
        stops = [r.stop for r in s.runs.values()]
        s.all_ended = all(stops)
        s.finished = s.state == "complete" or (s.state == "failed" and s.all_ended)
        # rows: after the markers, so that a running experiment is read consistently
        arrays = {name: self._array(s, z, name) for name in INVOCATION_ARRAYS}
        for r in s.runs.values():
            for name, a in arrays.items():
                if a is None:
                    r.rows[name] = None
                    continue
                row = self._read_row(s, a, name, r.index)
                fill = INVOCATION_ARRAYS[name][1]
                r.rows[name] = [None] * n_steps if row is None else [known(v, fill) for v in row.tolist()]
            r.L_rows = self._rows_extent(r)
            if isinstance(r.length, int) and 0 <= r.length <= n_steps and r.ended:
                r.L = r.length
            else:
                r.L = r.L_rows

    @staticmethod
    def _rows_extent(r: Run) -> int:
        last = -1
        for name in ("model", "kind", "output_hash", "invocation_seed", "started_at", "ended_at"):
            vals = r.rows.get(name)
            if vals:
                for k in range(len(vals) - 1, last, -1):
                    if vals[k] is not None:
                        last = k
                        break
        return last + 1

    # ---------------------------------------------------------------- runs
    def _check_run(self, s: Scan, r: Run) -> None:
        i, n_steps = r.index, s.cfg.max_length
        if r.stop is None:
            return  # stop_reason unreadable: reported already
        if not r.ended:
            if s.finished:
                s.add("run_unended", f"run {i} has no stop_reason in a finished experiment", run=i, path="stop_reason")
            for k, h in enumerate(r.rows.get("output_hash") or []):  # flushed rows of a running run
                if h is not None and DIGEST_RE.fullmatch(str(h)):
                    s.refs.setdefault(h, []).append((i, k))
            for k, h in enumerate((r.rows.get(PARAMS) or []) if PARAMS else []):
                if h is not None and DIGEST_RE.fullmatch(str(h)):
                    s.param_refs.setdefault(h, []).append((i, k))
            for k, rec in s.journal.get(i, {}).items():
                if DIGEST_RE.fullmatch(rec.hash):
                    s.refs.setdefault(rec.hash, []).append((i, k))
                ph = getattr(rec, "parameters_hash", "")
                if ph and DIGEST_RE.fullmatch(ph):
                    s.param_refs.setdefault(ph, []).append((i, k))
            return
        L = r.L
        if r.stop not in STOP_REASONS:
            s.add("stop_reason", f"run {i}: unknown stop_reason {r.stop!r}", run=i, path="stop_reason")
        if not (isinstance(r.length, int) and 0 <= r.length <= n_steps):
            s.add("stop_reason", f"run {i} ended ({r.stop}) but its length is {r.length} (the rows go to step {r.L_rows - 1})",
                  run=i, path="length")
        rows = r.rows
        hashes = rows.get("output_hash")
        texts = rows.get("text")
        for name, values in rows.items():
            if values is None:
                continue
            fill_missing = []
            for k in range(L):
                v = values[k]
                if name == "text":
                    if r.kinds[k] == Kind.TEXT.value and v is None:
                        h = hashes[k] if hashes else None
                        if h != EMPTY_TEXT_HASH:
                            fill_missing.append(k)
                elif v is None:
                    fill_missing.append(k)
            # the earlier tool recorded no seeds for unseeded runs: their imported steps (a prefix) have none
            unrecorded = (name == "invocation_seed" and not r.seeded and bool(self.exp.meta.get("imported_from"))
                          and fill_missing == list(range(len(fill_missing))))  # docs/legacy-import.md
            if fill_missing and not unrecorded and not (name in LATER_COLUMNS and len(fill_missing) == L):
                s.add("run_gap", f"run {i}: {name} is missing at step(s) {ranges(fill_missing)} (length {L})",
                      run=i, step=fill_missing[0], path=name)
            extra = [k for k in range(L, n_steps) if values[k] is not None]
            if extra:
                s.add("run_extra", f"run {i}: {name} has values after its length {L}, at step(s) {ranges(extra)}",
                      run=i, step=extra[0], path=name)
        wrong: dict[str, list[int]] = defaultdict(list)
        for k in range(L):
            if rows.get("model") and rows["model"][k] is not None and rows["model"][k] != r.models[k]:
                wrong["model"].append(k)
            if rows.get("kind") and rows["kind"][k] is not None and rows["kind"][k] != r.kinds[k]:
                wrong["kind"].append(k)
            seed = rows["invocation_seed"][k] if rows.get("invocation_seed") else None
            if seed is not None and ((r.seeded and seed != r.spec.seed) or seed < 0):
                wrong["invocation_seed"].append(k)
            h = hashes[k] if hashes else None
            if h is not None and not DIGEST_RE.fullmatch(str(h)):
                wrong["output_hash"].append(k)
            ph = rows[PARAMS][k] if PARAMS and rows.get(PARAMS) else None
            if ph is not None and not DIGEST_RE.fullmatch(str(ph)):
                wrong[PARAMS].append(k)
            if texts:
                t = texts[k]
                if r.kinds[k] == Kind.IMAGE.value and t is not None or r.kinds[k] == Kind.TEXT.value and t is not None and h is not None and sha(t.encode("utf-8")) != h:
                    wrong["text"].append(k)
            if rows.get("started_at") and rows.get("ended_at"):
                a, b = rows["started_at"][k], rows["ended_at"][k]
                if a is not None and b is not None and b < a:
                    wrong["ended_at"].append(k)
        for name, ks in wrong.items():
            why = {
                "model": "is not the network's model", "kind": "is not the model's output kind",
                "invocation_seed": f"is not the run's seed {r.spec.seed}" if r.seeded else "is negative",
                "output_hash": "is not a sha256 hex digest", "parameters_hash": "is not a sha256 hex digest",
                "text": "does not match the output (a text must hash to output_hash; images have none)",
                "ended_at": "is before started_at",
            }[name]
            s.add("run_mismatch", f"run {i}: {name} {why} at step(s) {ranges(ks)}", run=i, step=ks[0], path=name)
        if hashes is not None:
            for k in range(L):
                h = hashes[k]
                if h is not None and DIGEST_RE.fullmatch(str(h)):
                    s.refs.setdefault(h, []).append((i, k))
        if PARAMS and rows.get(PARAMS) is not None:
            for k in range(L):
                h = rows[PARAMS][k]
                if h is not None and DIGEST_RE.fullmatch(str(h)):
                    s.param_refs.setdefault(h, []).append((i, k))
        # the stop rule, recomputed from the outputs
        if hashes is None or any(h is None for h in hashes[:L]) or r.stop not in STOP_REASONS:
            return
        expected = expected_end(r.seeded, list(hashes[:L]), n_steps)
        stored = (r.stop, r.length, r.loop_start, r.loop_period)
        issues = []
        if r.stop == "failed":
            if expected is not None:
                issues.append(f"marked failed, but its outputs end it ({expected[0]}) after {expected[1]} step(s)")
            if not r.error:
                issues.append("failed without an error")
            if (r.loop_start, r.loop_period) != (-1, -1):
                issues.append(f"loop_start/loop_period are {r.loop_start}/{r.loop_period} for a failed run")
        elif expected is None:
            if not (r.stop == "loop" and self._tool_loop(r, hashes[:L])):
                what = "an unseeded run must reach" if not r.seeded else "no repeated output, so it must reach"
                issues.append(f"stopped ({r.stop}) after {L} step(s); {what} max_length {n_steps}")
        elif expected[1] < L:
            issues.append(f"went on after its output at step {expected[1] - 1} repeated step {expected[2]}"
                          if expected[0] == "loop" else f"has {L} steps, more than max_length")
        elif stored != expected:
            issues.append(
                "stored (stop_reason, length, loop_start, loop_period) = "
                f"({r.stop}, {r.length}, {r.loop_start}, {r.loop_period}), its outputs give "
                f"({expected[0]}, {expected[1]}, {expected[2]}, {expected[3]})"
            )
        elif r.error:
            issues.append(f"ended ({r.stop}) with an error {r.error!r}")
        if r.stop == "loop" and not r.seeded:
            issues.append("an unseeded run never stops on a loop")
        if issues:
            s.add("stop_reason", f"run {i}: " + "; ".join(issues), run=i, path="stop_reason")

    def _tool_loop(self, r: Run, hashes: list) -> bool:
        """An imported run the earlier tool stopped on an image repeat under its own rule (legacy/rules.py)."""
        if not (r.seeded and self.exp.meta.get("imported_from")):
            return False
        from ..legacy.rules import tool_loop

        return tool_loop(self.store.objects, hashes, r.loop_start, r.loop_period)

    def _check_replay(self, s: Scan, r: Run) -> None:
        """Re-run the steps of cheap deterministic models (``ModelSpec.cheap_replay``) from their stored
        input and seed: every output must follow from its predecessor. Catches what no other check can
        see, such as two coordinators' chains stitched together or two outputs swapped."""
        if not r.ended or r.stop == "failed" or not r.models:
            return
        if not all(getattr(REGISTRY.get(m), "cheap_replay", False) for m in set(r.models[: r.L])):
            return
        hashes, texts, seeds = r.rows.get("output_hash"), r.rows.get("text"), r.rows.get("invocation_seed")
        if hashes is None or seeds is None:
            return
        bad: list[int] = []
        value: object = r.spec.prompt
        for k in range(r.L):
            h, seed = hashes[k], seeds[k]
            if h is None or seed is None or not DIGEST_RE.fullmatch(str(h)):
                return  # reported by _check_run
            data, nxt = generate_one(r.models[k], value, int(seed))
            if sha(data) != h:
                bad.append(k)
                if r.kinds[k] == Kind.TEXT.value:  # go on from what is stored, to find every break
                    nxt = texts[k] if texts and texts[k] is not None else None
                else:
                    nxt = self.store.objects.get_image(h) if self.store.objects.exists(h) else None
                if nxt is None:
                    break
            value = nxt
        if bad:
            s.add("step_unfollowed",
                  f"run {r.index}: the output at step(s) {ranges(bad)} is not what {r.models[bad[0]]} gives for the "
                  "step's input and seed (outputs swapped or edited, or two coordinators wrote this run); "
                  f"re-run the experiment's run {r.index} from step {bad[0]}: its later steps cannot be trusted",
                  run=r.index, step=bad[0], path="output_hash")

    # ------------------------------------------------------------- objects
    def _check_objects(self, s: Scan) -> None:
        digests = [d for d in {**s.refs, **s.param_refs} if d not in self.verified]

        def check(digest: str) -> tuple[str, str, str]:
            key = self.store.objects.key_for(digest)
            try:
                data = self.root.read_bytes(key)
            except FileNotFoundError:
                return digest, "object_missing", "missing"
            except Exception as exc:  # noqa: BLE001
                return digest, "object_corrupt", f"cannot be read: {short(exc)}"
            if sha(data) != digest:
                return digest, "object_corrupt", f"its bytes hash to {sha(data)[:12]}..., not to its name"
            return digest, "ok", ""

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(check, digests))
        for digest, status, why in results:
            if status == "ok":
                self.verified.add(digest)
                continue
            refs = s.refs.get(digest) or s.param_refs[digest]
            run, step = refs[0]
            r = s.runs.get(run)
            model = r.models[step] if r else None
            kind = (r.kinds[step] if r else "?") if digest in s.refs else "parameters"
            more = f" (and {len(refs) - 1} other reference(s))" if len(refs) > 1 else ""
            s.add(status, f"{kind} object {digest[:16]}... of run {run} step {step}{more}: {why}",
                  run=run, step=step, model=model, path=self.store.objects.key_for(digest))

    # ---------------------------------------------------------- embeddings
    def _check_embeddings(self, s: Scan, z: Arrays) -> None:
        for m in s.cfg.embedding_models:
            done = self._read_per_run(s, z, f"embeddings/{m}/done")
            if done is None:
                continue
            vec = self._array(s, z, f"embeddings/{m}/vector")
            digests = None if m in s.without_vector_digests else self._read_per_run(s, z, f"embeddings/{m}/{VECTOR_DIGEST}")
            input_kind = REGISTRY[m].input_kind.value
            for r in s.runs.values():
                if not r.ended or r.stop == "failed":
                    if r.stop == "failed" and bool(done[r.index]):
                        s.add("embedding_rows", f"run {r.index} failed, yet {m} is marked done", run=r.index, model=m,
                              path=f"embeddings/{m}/done")
                    continue
                if not bool(done[r.index]):
                    if s.finished:
                        s.add("embedding_missing", f"run {r.index} ended ({r.stop}) but its {m} embeddings are not done",
                              run=r.index, model=m, path=f"embeddings/{m}/done")
                    continue
                if vec is None:
                    continue
                before = len(s.problems)
                rows = self._read_row(s, vec, f"embeddings/{m}/vector", r.index)
                if rows is None or len(s.problems) > before:
                    continue  # undecodable chunks: reported, and --fix deletes them first
                stored = rows
                rows = np.asarray(rows, dtype=np.float64)
                nan = np.isnan(rows)
                present, partial = ~nan.any(axis=1), nan.any(axis=1) & ~nan.all(axis=1)
                want = np.zeros(len(rows), dtype=bool)
                want[: r.L] = [k == input_kind for k in r.kinds[: r.L]]
                missing = np.flatnonzero(want & ~present)
                extra = np.flatnonzero(present & ~want)
                s.embedded_rows[(r.index, m)] = int(present.sum())
                if len(missing) or len(extra) or partial.any():
                    parts = []
                    if len(missing):
                        parts.append(f"no vector at step(s) {ranges(missing.tolist())}")
                    if len(extra):
                        parts.append(f"vectors where {m} does not apply, at step(s) {ranges(extra.tolist())}")
                    if partial.any():
                        parts.append(f"partly NaN vectors at step(s) {ranges(np.flatnonzero(partial).tolist())}")
                    s.add("embedding_rows", f"run {r.index} / {m}: " + "; ".join(parts), run=r.index, model=m,
                          step=int((missing.tolist() + extra.tolist() + [0])[0]), path=f"embeddings/{m}/vector")
                elif digests is not None:
                    self._check_vector_digest(s, r, m, str(digests[r.index]), stored)

    @staticmethod
    def _check_vector_digest(s: Scan, r: Run, m: str, recorded: str, stored) -> None:
        """The run's vectors against the digest recorded beside ``done`` when they were committed: a value
        changed through Zarr (which writes a new checksum for the chunk) keeps the NaN pattern but not this."""
        if recorded == "":
            s.undigested[m] = s.undigested.get(m, 0) + 1  # embedded before digests were recorded: a note
            return
        path = f"embeddings/{m}/{VECTOR_DIGEST}"
        if not DIGEST_RE.fullmatch(recorded):
            s.add("embedding_digest", f"run {r.index} / {m}: the recorded vector digest {recorded[:20]!r} is not a "
                                      "sha256 hex digest", run=r.index, model=m, path=path)
            return
        got = vector_digest(np.asarray(stored[: r.L], dtype=np.float32))
        if got != recorded:
            s.add("embedding_digest", f"run {r.index} / {m}: its vectors hash to {got[:12]}..., not to the digest "
                                      f"{recorded[:12]}... recorded when they were written (changed since)",
                  run=r.index, model=m, path=path)

    # ------------------------------------------------------------ diagrams
    def _check_diagrams(self, s: Scan, z: Arrays) -> None:
        from ..analysis.topology import persistent_entropy

        maxdim = s.cfg.persistence.maxdim
        for m in s.cfg.embedding_models:
            d = f"diagrams/{m}"
            status = self._read_per_run(s, z, f"{d}/status")
            if status is None:
                continue
            entropy = self._read_per_run(s, z, f"{d}/entropy")
            n_points = self._read_per_run(s, z, f"{d}/n_points")
            pairs = {name: self._array(s, z, f"{d}/{name}") for name in PAIR_ARRAYS}
            for r in s.runs.values():
                i = r.index
                st = str(status[i])
                if not r.ended:
                    continue
                if not st:
                    if s.finished:
                        s.add("diagram_missing", f"run {i} / {m}: no persistence diagram (empty status)",
                              run=i, model=m, path=f"{d}/status")
                    continue
                issues = []
                if st not in DIAGRAM_STATUSES:
                    issues.append(f"unknown status {st!r}")
                if r.stop == "failed" and st != "run_failed":
                    issues.append(f"status {st!r} for a failed run")
                if entropy is None or n_points is None or any(a is None for a in pairs.values()):
                    if issues:
                        s.add("diagram_inconsistent", f"run {i} / {m}: " + "; ".join(issues), run=i, model=m, path=f"{d}/status")
                    continue
                before = len(s.problems)
                rows = {name: self._read_row(s, a, f"{d}/{name}", i) for name, a in pairs.items()}
                if len(s.problems) > before or any(v is None for v in rows.values()):
                    continue  # undecodable chunks: reported, and --fix deletes them first
                birth = np.asarray(rows["birth"], dtype=np.float64)
                death = np.asarray(rows["death"], dtype=np.float64)
                dim = np.asarray(rows["dimension"], dtype=np.int64)
                n = int((dim != -1).sum())
                ent = np.asarray(entropy[i], dtype=np.float64)
                if (dim[:n] == -1).any() or (dim[n:] != -1).any():
                    issues.append("pairs are not a padded prefix")
                elif np.isnan(birth[:n]).any() or np.isnan(death[:n]).any() or not np.isnan(birth[n:]).all() or not np.isnan(death[n:]).all():
                    issues.append("birth/death do not match the dimensions of the pairs")
                elif (dim[:n] > maxdim).any() or (dim[:n] < -1).any():
                    issues.append(f"pair dimensions outside 0..{maxdim}")
                elif st.startswith("ok"):
                    for k in range(maxdim + 1):
                        sel = dim[:n] == k
                        e = ent[k] if k < len(ent) else np.nan
                        try:
                            # NaN when no pair has a finite length (an H0 of only its infinite bar)
                            want = persistent_entropy([np.stack([birth[:n][sel], death[:n][sel]], axis=1)])[0]
                        except ValueError as exc:
                            issues.append(f"H{k}: {exc}")
                            continue
                        if np.isnan(e) and not np.isnan(want) and sel.any():
                            issues.append(f"H{k} has {int(sel.sum())} pairs but no entropy")
                        elif not np.isclose(e, want, rtol=1e-9, atol=1e-12, equal_nan=True) and not (np.isnan(e) and not sel.any()):
                            issues.append(f"H{k} entropy {float(e)!r} but its pairs give {float(want)!r}")
                    npts = int(n_points[i])
                    if npts >= 2 and not (dim[:n] == 0).any():
                        issues.append(f"no H0 pairs for {npts} points")
                    emb = s.embedded_rows.get((i, m))
                    if emb is not None and npts != emb:
                        issues.append(f"n_points {npts} but {emb} embedded rows")
                else:
                    if n:
                        issues.append(f"{n} pairs stored with status {st!r}")
                    if not np.isnan(ent).all():
                        issues.append(f"entropy stored with status {st!r}")
                if issues:
                    s.add("diagram_inconsistent", f"run {i} / {m}: " + "; ".join(issues), run=i, model=m, path=f"{d}/status")

    # ---------------------------------------------------- other chunks
    def _check_other_chunks(self, s: Scan, z: Arrays) -> None:
        """Read the arrays no check above read, chunk by chunk, so that every checksum is verified."""
        for node, doc in sorted(s.layout.docs.items()):
            if doc.get("node_type") != "array" or node in s.read_arrays or node in s.bad_meta:
                continue
            a = self._array(s, z, node)
            if a is None:
                continue
            try:
                a[...]
                continue
            except Exception as exc:  # noqa: BLE001 - find the chunks that do not decode
                log.debug("%s: reading chunk by chunk: %s", node, exc)
            for coords in np.ndindex(*a.cdata_shape):
                region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, a.chunks, a.shape))
                try:
                    a[region]
                except Exception as exc:  # noqa: BLE001
                    self._bad_chunk(s, a, node, coords, exc)

    # ------------------------------------------ consolidated metadata
    def _check_consolidated(self, s: Scan) -> None:
        """The copy of every node's metadata in the root zarr.json (store/consolidated.py): xarray
        trusts it, so a stale one is read as the hierarchy; a finished experiment should have one.
        Not while a node's own metadata is wrong: that is fixed first, and this checked after."""
        if any(p.kind == "metadata" for p in s.problems):
            return
        try:
            stale = consolidated.check(self.exp)
        except Exception as exc:  # noqa: BLE001
            s.add("consolidated", f"the consolidated metadata in data.zarr/zarr.json cannot be checked: {short(exc)}",
                  path="zarr.json")
            return
        if stale:
            s.add("consolidated", f"the consolidated metadata in data.zarr/zarr.json is stale: it {stale} (xarray's "
                                  "open_* would read the old hierarchy)", path="zarr.json")
        elif s.finished and not consolidated.present(self.exp):
            # not damage (experiments finished before panicflow wrote it have none): a note, and --fix writes it
            s.unconsolidated = True
            s.notes.append("data.zarr has no consolidated metadata although the experiment is finished (xarray's "
                           "open_* warns and reads each node's zarr.json); `doctor --fix` writes it")

    # ------------------------------------------------------- progress
    def _check_progress(self, s: Scan, z: Arrays) -> None:
        """An experiment that no coordinator runs and that is not finished has work left that only
        resume does: say so (doctor was clean on one whose own resume had been killed)."""
        if s.finished or s.effective == "running" or s.cfg is None:
            return
        eid = self.exp.id
        if s.state == "created" and not self.root.exists(f"{self.exp.prefix}/state.json"):
            what = "has no state.json (never started, or lost)"
        elif s.state == "failed":
            what = "stopped on an error before every run ended"
        else:
            what = "interrupted (no coordinator is running it)"
        todo = []
        unended = sum(not r.ended for r in s.runs.values())
        if unended:
            todo.append(f"{unended} of {len(s.runs)} runs to finish")
        for name, kind in (("embeddings", "done"), ("diagrams", "status")):
            left = 0
            for m in s.cfg.embedding_models:
                marks = self._read_per_run(s, z, f"{name}/{m}/{kind}")
                if marks is not None:
                    left += sum(1 for r in s.runs.values() if r.ended and r.stop != "failed" and not marks[r.index])
            if left:
                todo.append(f"{left} {name[:-1]} marker(s) to write")
        left = "; ".join(todo) if todo else "nothing left to compute, not marked complete"
        s.add("interrupted", f"experiment {eid} {what}: {left}; run `panicflow experiment resume {eid}`",
              path=f"{self.exp.prefix}/state.json")
