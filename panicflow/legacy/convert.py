"""One legacy run, read and checked: what panicflow stores for it, and what happens to every source row.

Nothing here writes to the store except the content-addressed objects (through
``sink``); the importer writes the rest. Every row of the run's invocations,
embeddings, diagrams and cluster assignments gets exactly one outcome in
``RunData.tally`` (``imported`` or why not), so the counts add up to the source's.

Rules (docs/legacy-import.md):

* one row per step: of several rows of one (run, sequence_number), the one with an
  output that the next step took as its input, else the latest with an output;
* a run is the longest gapless prefix of sound steps (the network's model, an output
  of the model's kind that can be stored); it ends as the coordinator would end it:
  a fixed-seed run at its first repeated output (``loop``), any run at ``max_length``
  (``length``), otherwise it is ``failed`` with an error saying where and why it stops;
* an embedding set of (run, model) is imported only when complete (a vector at every
  step the model applies to); otherwise it is left for ``panicflow experiment resume``;
* a diagram is imported only when it was computed from exactly the imported vectors.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..analysis.topology import DiagramResult, PersistenceOptions, compute_diagram, persistent_entropy
from ..config import UNSEEDED, ExperimentConfig
from ..models import REGISTRY, Kind
from ..store.experiment import NO_TIME, RunEnd
from ..store.journal import StepRecord
from ..store.objects import decode_image, encode_image
from .plan import RunSlot
from .report import IMPORTED
from .rules import jpeg30
from .schema import InvocationRow, LegacyDB, hyphenated, read_diagram, read_vector

IMPORTED_REASON = "imported from the earlier PANIC-TDA tool (giotto-ph on the raw vectors, float32 pairs)"
# what an imported diagram was computed from and how, as data: diagrams/<model>.attrs["imported"] (reference 2.6)
IMPORTED_DIAGRAMS = {
    "computed_by": "panic-tda", "library": "giotto-ph ripser_parallel", "maxdim": 2, "metric": "euclidean",
    "point_cloud": "raw", "unit_normalised": False, "coefficients": "Z/2", "threshold": "enclosing radius",
    "collapse_edges": False, "pairs": "float32", "runs": "those whose reason is IMPORTED_REASON",
    "reason": IMPORTED_REASON,
    "note": "the run's stored embedding vectors as they are (not scaled to unit length); the tool's entropy is kept in "
            "legacy/tool_entropy/<model>, diagrams/<model>/entropy is recomputed from the pairs (NaN without a finite bar)",
}
MAX_ISSUES = 20  # lines of detail kept per run
# outputs that cannot be stored: each is its own outcome in the counts
OUTPUT_PROBLEMS = ("null output", "output_text is not text", "text with NUL characters", "text that is not valid UTF-8",
                   "output_image_data is not a blob", "image that cannot be decoded")


@dataclass
class Clustering:
    """One legacy clustering result, as the runs' assignments need it."""

    legacy_id: str  # 32 hex
    row: dict[str, Any]
    model: str
    name: str  # analysis/clusters/<name>
    labels: dict[str | None, int]  # medoid embedding id (32 hex; None: outlier) -> cluster label
    sizes: dict[str | None, int]
    experiments: set[str]  # legacy experiment ids (32 hex) with assignments


@dataclass
class Context:
    """What reading a run needs besides its rows."""

    db: LegacyDB
    config: ExperimentConfig
    sink: Callable[[str, bytes], None] | None  # (digest, bytes) -> stores the object; None: dry run
    parameters: dict[str, str]  # model -> digest of its parameters object
    skip_diagrams: bool = False
    clusterings: dict[str, Clustering] = field(default_factory=dict)  # legacy id -> clustering


@dataclass
class RunData:
    index: int
    steps: list[StepRecord]
    invocation_ids: list[str]
    end: RunEnd
    vectors: dict[str, np.ndarray]  # model -> (length, dim) float32, NaN where it does not apply; complete sets only
    diagrams: dict[str, DiagramResult]  # model -> diagram to store; absent: left for resume
    labels: dict[str, np.ndarray]  # clustering legacy id -> (length,) int32 labels, -2 where none
    tally: Counter = field(default_factory=Counter)  # (table, outcome) -> rows
    issues: list[str] = field(default_factory=list)
    pending: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # "embeddings"/"diagrams" -> models
    # model -> the entropy the tool stored with an imported diagram, per homology dimension, as it stored it (-0.0 kept)
    tool_entropy: dict[str, np.ndarray] = field(default_factory=dict)

    def note(self, line: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(line)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_run(ctx: Context, slot: RunSlot) -> RunData:
    spec = slot.spec
    if slot.row is None:
        end = RunEnd(0, "failed", error="the legacy database has no run for this network, seed and prompt")
        data = RunData(spec.index, [], [], end, {}, {}, {})
        _diagrams(ctx, data, None, {}, Counter())
        return data
    run_id = slot.row["id"]
    data = RunData(spec.index, [], [], RunEnd(0, "failed"), {}, {}, {})
    _steps(ctx, slot, ctx.db.invocations(run_id), data)
    step_of = {inv: k for k, inv in enumerate(data.invocation_ids)}
    kept, clouds = _embeddings(ctx, run_id, data, step_of)
    _diagrams(ctx, data, run_id, kept, clouds)
    _labels(ctx, run_id, data, step_of, kept)
    return data


# ---------------------------------------------------------------------------- invocations
def _choose(rows: list[InvocationRow]) -> tuple[dict[int, InvocationRow], set[int]]:
    """One row per sequence number (see the module docstring); the rowids of the others."""
    by_seq: dict[int, list[InvocationRow]] = defaultdict(list)
    for r in rows:
        if r.sequence_number is not None:
            by_seq[r.sequence_number].append(r)
    chosen: dict[int, InvocationRow] = {}
    wanted: str | None = None  # the invocation the next step took as input
    for seq in sorted(by_seq, reverse=True):
        cands = by_seq[seq]
        with_output = [r for r in cands if r.text is not None or r.has_image]
        pick = next((r for r in with_output if r.id == wanted), None) or (with_output or cands)[-1]
        chosen[seq] = pick
        wanted = pick.input_id
    others = {r.rowid for r in rows if r.sequence_number is None or chosen[r.sequence_number] is not r}
    return chosen, others


def _output(ctx: Context, row: InvocationRow, kind: Kind, data: RunData) -> tuple[bytes | None, str | None, str]:
    """(stored bytes, text, why not) of one invocation's output."""
    if kind is Kind.TEXT:
        text = row.text
        if text is None:
            return None, None, "null output"
        if not isinstance(text, str):
            return None, None, "output_text is not text"
        if "\x00" in text:
            return None, None, "text with NUL characters"
        try:
            return text.encode("utf-8"), text, ""
        except UnicodeEncodeError:
            return None, None, "text that is not valid UTF-8"
    if not row.has_image:
        return None, None, "null output"
    blob = ctx.db.image(row.rowid)
    if not isinstance(blob, bytes):
        return None, None, "output_image_data is not a blob"
    try:
        with Image.open(io.BytesIO(blob)) as im:
            fmt = im.format
            im.load()
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for a damaged file
        return None, None, "image that cannot be decoded"
    if fmt != "WEBP":  # panicflow stores images as lossless WEBP: same pixels, re-encoded
        data.note(f"step {row.sequence_number}: {fmt} image re-encoded as lossless WEBP")
        blob = encode_image(decode_image(blob))
    return blob, None, ""


def _steps(ctx: Context, slot: RunSlot, rows: list[InvocationRow], data: RunData) -> None:
    spec, max_length = slot.spec, ctx.config.max_length
    seeded = spec.seed != UNSEEDED
    chosen, others = _choose(rows)
    for r in rows:
        if r.rowid in others:
            data.tally[("invocation", "duplicate of another row of its step" if r.sequence_number is not None
                        else "no sequence_number")] += 1
    seen: dict[str, int] = {}
    end: RunEnd | None = None
    cut = ""  # why the run stops before its end
    cut_row = False  # the row of that step is unsound (and tallied as such)
    for k in range(max_length):
        row = chosen.get(k)
        if row is None:
            cut = f"the legacy run has no invocation at step {k} (the earlier tool recorded no reason)"
            break
        model = spec.model_at(k)
        kind = REGISTRY[model].output_kind
        blob, text, why = None, None, ""
        if row.model != model:
            why = f"made by {row.model!r}, not by the network's {model!r}"
        elif str(row.type).lower() != kind.value:
            why = f"type {row.type!r}, but {model} outputs {kind.value}"
        elif not row.id:
            why = "an id that is not a UUID"
        else:
            blob, text, why = _output(ctx, row, kind, data)
        if why:
            data.tally[("invocation", why if why in OUTPUT_PROBLEMS else "not what the network makes at that step")] += 1
            cut_row = True
            cut = f"step {k} (legacy invocation {hyphenated(row.id) if row.id else '?'}): {why}; its later steps are not imported"
            break
        digest = _digest(blob)
        if ctx.sink is not None:
            ctx.sink(digest, blob)
        started, ended = row.started_us, row.ended_us
        started = started if started is not None else ended
        ended = ended if ended is not None else started
        if started is not None and ended is not None and ended < started:
            data.note(f"step {k}: completed_at before started_at; stored ended_at = started_at")
            ended = started
        data.steps.append(StepRecord(
            run=spec.index, step=k, model=model, kind=kind.value, hash=digest, text=text,
            seed=spec.seed if seeded else UNSEEDED, started_us=NO_TIME if started is None else started,
            ended_us=NO_TIME if ended is None else ended, parameters_hash=ctx.parameters[model],
            batch_id=row.id, batch_size=1, batch_position=0))  # the tool called a model on one input at a time
        data.invocation_ids.append(row.id)
        data.tally[("invocation", IMPORTED)] += 1
        if seeded and digest in seen:
            end = RunEnd(k + 1, "loop", seen[digest], k - seen[digest])
            break
        seen.setdefault(digest, k)
    n = len(data.steps)
    if end is None and seeded and 2 <= n < max_length and not cut_row and data.steps[-1].kind == Kind.IMAGE.value:
        end = _tool_loop(ctx, chosen, data)
    for seq in chosen:
        if seq < 0:
            data.tally[("invocation", "negative sequence_number")] += 1
        elif seq > n or (seq == n and not cut_row):
            data.tally[("invocation", "after the run's end")] += 1
    if end is None:
        if n == max_length:
            end = RunEnd(n, "length")
        else:
            end = RunEnd(n, "failed", error=f"imported run stops at step {n} of {max_length}: "
                                            + (cut or f"the legacy run has no invocation at step {n}"))
            data.note(end.error)
    data.end = end


def _tool_loop(ctx: Context, chosen: dict[int, InvocationRow], data: RunData) -> RunEnd | None:
    """The tool's loop (rules.py) of a fixed-seed run that ends early on an image no earlier output
    repeats byte for byte: the first earlier image equal to it after JPEG quality-30 encoding."""
    n = len(data.steps)
    last = jpeg30(decode_image(ctx.db.image(chosen[n - 1].rowid)))
    for k in range(n - 1):
        if data.steps[k].kind == Kind.IMAGE.value and jpeg30(decode_image(ctx.db.image(chosen[k].rowid))) == last:
            data.note(f"stopped by the earlier tool at step {n - 1}, whose image repeats step {k}'s after JPEG "
                      "quality-30 encoding (its loop rule): imported as that loop")
            return RunEnd(n, "loop", k, n - 1 - k)
    return None


# ---------------------------------------------------------------------------- embeddings
def _embeddings(ctx: Context, run_id: Any, data: RunData, step_of: dict[str, int]) -> tuple[dict[str, dict[int, str]], Counter]:
    """Vectors of the complete (run, model) sets. Returns model -> step -> the imported embedding's
    id, and the embedding rows per model of the run (the point cloud the tool's diagram stage took)."""
    cfg = ctx.config
    failed = data.end.stop_reason == "failed"
    kinds = [s.kind for s in data.steps]
    found: dict[str, dict[int, tuple[str, np.ndarray]]] = defaultdict(dict)
    clouds: Counter = Counter()
    for emb_id, inv_id, model, blob in ctx.db.embeddings(run_id):
        clouds[model] += 1
        k = step_of.get(inv_id)
        if model not in cfg.embedding_models:
            outcome = "embedding model not imported"
        elif k is None:
            outcome = "its invocation is not imported"
        elif kinds[k] != REGISTRY[model].input_kind.value:
            outcome = "the model does not apply to that output's kind"
        elif failed:
            outcome = "the run failed (panicflow embeds no failed run)"
        elif k in found[model]:
            outcome = "duplicate of another embedding of its invocation"
        else:
            vector, outcome = read_vector(blob, REGISTRY[model].dim)
            if vector is not None:
                found[model][k] = (emb_id, vector)
                continue
        data.tally[("embedding", outcome)] += 1
    kept: dict[str, dict[int, str]] = {}
    for model in cfg.embedding_models:
        have = found.get(model, {})
        if failed:
            continue
        want = [k for k, kind in enumerate(kinds) if kind == REGISTRY[model].input_kind.value]
        missing = [k for k in want if k not in have]
        if missing:
            data.tally[("embedding", "its run's set is incomplete (left for resume)")] += len(have)
            data.pending["embeddings"].append(model)
            data.note(f"{model}: no usable vector at {len(missing)} step(s) (first {missing[0]}); "
                      "`panicflow experiment resume` computes this run's embeddings")
            continue
        vectors = np.full((len(kinds), REGISTRY[model].dim), np.nan, dtype=np.float32)
        for k, (_, v) in have.items():
            vectors[k] = v
        data.vectors[model] = vectors
        kept[model] = {k: emb_id for k, (emb_id, _) in have.items()}
        data.tally[("embedding", IMPORTED)] += len(have)
    return kept, clouds


# ---------------------------------------------------------------------------- diagrams
def _legacy_diagram(blob: Any, maxdim: int, n: int, cloud: int) -> tuple[list[np.ndarray] | None, np.ndarray | None, str, str]:
    """(pairs per dimension, the tool's entropy, outcome, detail) of one diagram row; pairs None when unusable."""
    dgms, why = read_diagram(blob)
    if dgms is None:
        return None, None, why.split(":")[0], why
    pairs = []
    for k in range(min(maxdim + 1, sum(1 for key in dgms if key.startswith("dgms_")))):
        a = np.asarray(dgms[f"dgms_{k}"])
        if a.dtype.kind != "f" or a.ndim != 2 or a.shape[1] != 2:
            return None, None, "pairs that are not a diagram", f"dgms_{k} is not an (n, 2) float array"
        a = a.astype(np.float64)
        if not np.isfinite(a[:, 0]).all() or np.isnan(a[:, 1]).any() or (a[:, 1] < a[:, 0]).any():
            return None, None, "pairs that are not a diagram", f"dgms_{k} has a bar without a finite birth or dying before it is born"
        pairs.append(a)
    if not pairs or not len(pairs[0]) or len(pairs[0]) > n:
        return None, None, "pairs that are not a diagram", f"{len(pairs[0]) if pairs else 0} H0 bars for {n} points"
    if cloud != n:
        return None, None, "computed from other points than those imported", f"computed from {cloud} embedding rows, not the {n} imported"
    return pairs, dgms.get("entropy"), IMPORTED, ""


def _diagrams(ctx: Context, data: RunData, run_id: Any, kept: dict[str, dict[int, str]], clouds: Counter) -> None:
    cfg = ctx.config
    maxdim = cfg.persistence.maxdim
    empty = [np.zeros((0, 2)) for _ in range(maxdim + 1)]
    rows: dict[Any, list] = defaultdict(list)
    for model, blob in ctx.db.diagrams(run_id) if run_id is not None else ():
        rows[model].append(blob)
    for model, blobs in rows.items():
        if model not in cfg.embedding_models:
            data.tally[("persistencediagram", "embedding model not imported")] += len(blobs)
    for model in cfg.embedding_models:
        blobs = rows.get(model, [])
        if data.end.stop_reason == "failed":
            data.diagrams[model] = DiagramResult("run_failed", data.end.error, 0, 0, -1, empty, np.full(maxdim + 1, np.nan))
            data.tally[("persistencediagram", "the run failed")] += len(blobs)
            continue
        if model not in data.vectors:
            data.tally[("persistencediagram", "the run's embeddings are incomplete (left for resume)")] += len(blobs)
            data.pending["diagrams"].append(model)
            continue
        steps = np.array(sorted(kept[model]), dtype=np.int64)
        n = len(steps)
        if n < 2:  # panicflow's rule, decided without computing anything
            data.diagrams[model] = compute_diagram(np.zeros((n, 1)), PersistenceOptions(maxdim=maxdim))
            data.tally[("persistencediagram", "fewer than 2 points (too_few_points)")] += len(blobs)
            continue
        if ctx.skip_diagrams:
            data.tally[("persistencediagram", "skipped (--skip-diagrams)")] += len(blobs)
            data.pending["diagrams"].append(model)
            continue
        result, why = None, "no persistence diagram in the legacy database"
        for blob in blobs:
            if result is not None:
                data.tally[("persistencediagram", "duplicate of another diagram of its run")] += 1
                continue
            pairs, legacy_entropy, outcome, detail = _legacy_diagram(blob, maxdim, n, clouds.get(model, 0))
            data.tally[("persistencediagram", outcome)] += 1
            if pairs is None:
                why = detail
                continue
            diagrams = pairs + empty[len(pairs):]
            entropy = persistent_entropy(diagrams)
            entropy[len(pairs):] = np.nan
            _compare_entropy(data, model, legacy_entropy, entropy[: len(pairs)])
            if legacy_entropy is not None:
                data.tool_entropy[model] = np.asarray(legacy_entropy, dtype=np.float64).reshape(-1)[:maxdim + 1]
            result = DiagramResult("ok", IMPORTED_REASON, n, n, len(pairs) - 1, diagrams, entropy, steps=steps)
        if result is None:
            data.pending["diagrams"].append(model)
            data.note(f"{model}: diagram not imported ({why}); `panicflow experiment resume` computes it")
        else:
            data.diagrams[model] = result


EMPTY_ENTROPY_NOTE = ("the tool's entropy {values} of a dimension without a finite bar (H{dims}) is stored as NaN, "
                      "panicflow's value for no bar: summaries leave the run out of that dimension where the tool's "
                      "counted 0; the tool's value is kept in legacy/tool_entropy/{model}")


def _compare_entropy(data: RunData, model: str, legacy: Any, ours: np.ndarray) -> None:
    """The stored entropy is recomputed from the pairs (in float64, as doctor checks it); say where the
    tool's float32 value disagrees (beyond float32 rounding), and where its 0.0 (-0.0, persim's sum over no
    bar) of a dimension without a finite bar becomes NaN."""
    if legacy is None:
        return
    legacy = np.asarray(legacy, dtype=np.float64).reshape(-1)[: len(ours)]
    ours = ours[: len(legacy)]
    empty = np.isnan(ours) & (legacy == 0)
    if empty.any():
        data.note(f"{model}: " + EMPTY_ENTROPY_NOTE.format(values=", ".join(repr(float(v)) for v in legacy[empty]),
                                                           dims=", H".join(map(str, np.flatnonzero(empty))), model=model))
    same = np.isclose(legacy, ours, rtol=1e-4, atol=1e-5) | empty
    if not same.all():
        data.note(f"{model}: the tool's entropy {legacy.tolist()} differs from the pairs' {ours.tolist()}; the pairs' is stored")


# ---------------------------------------------------------------------------- clusters
def _labels(ctx: Context, run_id: Any, data: RunData, step_of: dict[str, int], kept: dict[str, dict[int, str]]) -> None:
    n = len(data.steps)
    for cl_id, emb_id, inv_id, medoid in ctx.db.assignments(run_id):
        cl = ctx.clusterings.get(cl_id)
        k = step_of.get(inv_id)
        if cl is None:
            outcome = "its clustering result is missing"
        elif cl.model not in kept or k is None or kept[cl.model].get(k) != emb_id:
            outcome = "its embedding is not imported"
        else:
            row = data.labels.setdefault(cl_id, np.full(n, -2, dtype=np.int32))
            row[k] = cl.labels.get(medoid, -1)
            outcome = IMPORTED
        data.tally[("embeddingcluster", outcome)] += 1
