"""The step journal: the runs stage's source of truth until an experiment completes.

The coordinator is its only writer. After every model call it appends one JSON
line per invocation (and one per run event, such as a run marked failed) before
it acts on the result. A crash therefore loses at most the calls in flight,
never a recorded step, and a step is recorded once because the next step of a
run is only submitted after the previous one is in the journal. Zarr arrays are
materialised from it; the journal is removed once the experiment is complete
and everything is in Zarr.

On a local folder each coordinator process appends to one segment file (a new
one every ``SEGMENT_BYTES``) with one ``write`` per call, and fsyncs it at most
every ``SYNC_EVERY_S`` and when it stops: a killed process loses nothing it
wrote (the page cache survives it), a power cut at most the last second, which
resume computes again like calls in flight. A reader may meet a torn last line
(being written, or cut by a power cut): it is ignored. On object storage, where
nothing can be appended to, each call writes one whole file (one PUT).

Files are read in the order they were written, because events such as
``failed`` and ``retry`` of one run only mean something in order. A file is
named ``<session>-<seq>-<token>.jsonl``: ``session`` is one more than the
highest session already in the journal, taken once by each coordinator
process (so a resumed coordinator's files sort after its predecessor's
whatever the clocks say; the lease, store/lease.py, keeps two coordinators
from driving one experiment at once), ``seq`` counts that process's files,
``token`` keeps two writers that broke that rule from replacing each other's
files. Files of older journals (``<uuid>.jsonl``, written in no recorded
order) are read first, by name.

Every line is validated when read (``decode_record``: each field's type and format, a text
hashing to its ``hash``; the experiment's ``check``: a run and step of the experiment, the
network's model and its output kind, a seeded run's seed; and the order: a run's step is never
recorded before the steps it follows). A line that fails is ``JournalDamaged``, naming the file
and line: resume stops on it instead of acting on a value nobody wrote. ``Journal.survey`` finds
every such line and what dropping it takes (that run's records from the line on, so that they
are computed again), and ``Journal.drop`` rewrites the files without them (``panicflow doctor
--fix``, docs/doctor.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ..errors import StoreError
from .root import StoreRoot


@dataclass(frozen=True)
class StepRecord:
    run: int
    step: int
    model: str
    kind: str  # output kind: "text" | "image"
    hash: str  # sha256 of the stored bytes
    text: str | None  # the text for text outputs
    seed: int  # the seed the model was called with (drawn fresh for unseeded runs)
    started_us: int  # microseconds since the epoch, for the whole batch call
    ended_us: int
    parameters_hash: str = ""  # JSON object in the object store: model id, revision, size, steps...
    batch_id: str = ""  # the model call it was computed in (journals before format 2 lack these)
    batch_size: int = 0
    batch_position: int = -1


@dataclass(frozen=True)
class RunEvent:
    run: int
    event: str  # "failed" | "retry"
    step: int
    error: str = ""


SEGMENT_BYTES = 64 << 20  # a local segment is closed and a new one started past this size
SYNC_EVERY_S = 1.0  # a local segment is fsynced at most this often (and when the coordinator stops)


def encode_record(rec: StepRecord | RunEvent) -> str:
    """One journal line (without its newline); also the pending-step spool's format."""
    kind = "step" if isinstance(rec, StepRecord) else "event"
    return json.dumps({"type": kind, **vars(rec)}, ensure_ascii=False)  # flat: no asdict deep copy


class BadRecord(ValueError):
    """A line that does not hold a record ``encode_record`` could have written: ``reason`` says
    which field is wrong; ``run`` and ``step`` are the line's run and step where those fields
    themselves are sound (None otherwise), so that a repair knows which run the line belongs to."""

    def __init__(self, reason: str, run: int | None = None, step: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.run, self.step = reason, run, step


INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
_SHA256 = re.compile(r"[0-9a-f]{64}")
KINDS = ("text", "image")  # models.Kind's values: an output kind
EVENTS = ("failed", "retry")


def _int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high  # not bool, not float: what encode_record wrote


def _digest(value: object) -> bool:
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


# field -> (valid?, what it must be); a StepRecord's or RunEvent's own fields, nothing else
_STEP_FIELDS: dict[str, tuple] = {
    "run": (lambda v: _int(v, 0, INT64[1]), "a run number (an integer >= 0)"),
    "step": (lambda v: _int(v, 0, INT64[1]), "a step number (an integer >= 0)"),
    "model": (lambda v: isinstance(v, str) and v != "", "a model name"),
    "kind": (lambda v: v in KINDS, "text or image"),
    "hash": (_digest, "a sha256 hex digest"),
    "text": (lambda v: v is None or isinstance(v, str), "a text or null"),
    "seed": (lambda v: _int(v, -1, INT64[1]), "a seed (an integer >= 0; -1 for steps imported without one)"),
    "started_us": (lambda v: _int(v, *INT64), "a time in microseconds (a 64-bit integer)"),
    "ended_us": (lambda v: _int(v, *INT64), "a time in microseconds (a 64-bit integer)"),
    "parameters_hash": (lambda v: v == "" or _digest(v), "a sha256 hex digest or empty"),
    "batch_id": (lambda v: isinstance(v, str), "a text"),
    "batch_size": (lambda v: _int(v, 0, INT32[1]), "a batch size (an integer >= 0)"),
    "batch_position": (lambda v: _int(v, -1, INT32[1]), "a position in the batch (an integer >= -1)"),
}
_STEP_REQUIRED = frozenset(("run", "step", "model", "kind", "hash", "text", "seed", "started_us", "ended_us"))
_EVENT_FIELDS: dict[str, tuple] = {
    "run": _STEP_FIELDS["run"],
    "event": (lambda v: v in EVENTS, "failed or retry"),
    "step": _STEP_FIELDS["step"],
    "error": (lambda v: isinstance(v, str), "a text"),
}
_EVENT_REQUIRED = frozenset(("run", "event", "step"))


def _shown(value: object, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=True) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_record(line: bytes | str, validate: bool = True) -> StepRecord | RunEvent:
    """What ``encode_record`` wrote. ``BadRecord`` (a ValueError) where the line is not JSON, or holds
    a field of another type or format than ``encode_record`` writes: a hash that is not a sha256 hex
    digest, a step that is negative or not an integer, a kind that is neither text nor image, a text
    that does not hash to its ``hash``, a field too many or missing... ``validate=False``: the fields
    unchecked, for lines this process wrote itself a moment ago (the pending-step spool)."""
    try:
        obj = json.loads(line)  # plain JSON: nothing in the store is unpickled
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not validate:
        kind = obj.pop("type")
        return StepRecord(**obj) if kind == "step" else RunEvent(**obj)
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object")
    run, step = obj.get("run"), obj.get("step")
    where = {"run": run if _STEP_FIELDS["run"][0](run) else None, "step": step if _STEP_FIELDS["step"][0](step) else None}
    kind = obj.pop("type", None)
    if kind == "step":
        fields, required, cls = _STEP_FIELDS, _STEP_REQUIRED, StepRecord
    elif kind == "event":
        fields, required, cls = _EVENT_FIELDS, _EVENT_REQUIRED, RunEvent
    else:
        raise BadRecord(f"type {_shown(kind)} is neither step nor event", **where)
    missing = sorted(required.difference(obj))
    if missing:
        raise BadRecord(f"a {kind} line without {', '.join(missing)}", **where)
    for name, value in obj.items():
        rule = fields.get(name)
        if rule is None:
            raise BadRecord(f"a {kind} line has no field {_shown(name)}", **where)
        if not rule[0](value):
            raise BadRecord(f"{name} {_shown(value)} is not {rule[1]}", **where)
    rec = cls(**obj)
    if kind == "step":
        if rec.kind == "text":
            if rec.text is None:
                raise BadRecord("a text step without its text", **where)
            try:
                data = rec.text.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRecord("text is not valid Unicode", **where) from None
            if hashlib.sha256(data).hexdigest() != rec.hash:
                raise BadRecord(f"text and hash disagree (the text hashes to {hashlib.sha256(data).hexdigest()[:12]}..., "
                                f"not {rec.hash[:12]}...)", **where)
        elif rec.text is not None:
            raise BadRecord("an image step with a text", **where)
    return rec


@dataclass(frozen=True)
class Damage:
    """One journal line that is not a valid record: ``segment`` (its file's name), ``line`` (from 1)
    and why; ``run``/``step`` where the line says them soundly (None otherwise)."""

    segment: str
    line: int
    reason: str
    run: int | None = None
    step: int | None = None


class JournalDamaged(StoreError):
    """A journal line that does not parse or holds a value ``encode_record`` never writes (resume and
    status stop on it): ``damage`` says which file, line and field; the message, in one line, how
    ``panicflow doctor ID --fix`` gets past it."""

    def __init__(self, message: str, damage: Damage) -> None:
        super().__init__(message)
        self.damage = damage
        self.segment, self.line, self.reason = damage.segment, damage.line, damage.reason


@dataclass
class JournalSurvey:
    """Every damaged line of a journal and what dropping it takes (``Journal.survey``).

    ``records``: the records kept, in the order written; ``damaged``: the bad lines; ``drops``:
    segment -> numbers of the lines to drop (the bad lines, and the records of their runs from
    there on); ``cuts``: run -> the first of its steps dropped (they are computed again)."""

    records: list[StepRecord | RunEvent] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)
    drops: dict[str, set[int]] = field(default_factory=dict)
    cuts: dict[int, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(len(lines) for lines in self.drops.values())


# <session>-<seq>-<token>.jsonl; zero-padded so that a listing sorted by name is in write order
_NAME = re.compile(r"(\d{8,})-(\d{10,})-([0-9a-f]{6})\.jsonl")


def _order(name: str) -> tuple:
    """Sort key: older unordered files (any other name) first, by name; then in write order."""
    m = _NAME.fullmatch(name)
    return (1, int(m[1]), int(m[2]), m[3]) if m else (0, name)


class Journal:
    def __init__(self, root: StoreRoot, prefix: str, fence: Callable[[], None] | None = None,
                 check: Callable[[StepRecord | RunEvent], None] | None = None, experiment_id: str = "") -> None:
        self.root = root
        self.prefix = prefix
        self.fence = fence  # raises when this process no longer owns the experiment (store/lease.py)
        # raises BadRecord for a record that does not fit the experiment (its runs, networks, seeds)
        self.check = check
        self.experiment_id = experiment_id  # names the repair in JournalDamaged's message
        self._session: int | None = None  # taken at the first append
        self._seq = itertools.count()
        self._token = secrets.token_hex(3)
        self._lock = threading.Lock()
        self._segment: str | None = None  # key of the local segment this process appends to
        self._appendable = True  # False once the root said it cannot append (object storage)
        self._size = 0
        self._synced = time.monotonic()
        self._dirty = False  # appended since the last fsync

    def _next_name(self) -> str:
        if self._session is None:
            self._session = 1 + max((int(m[1]) for n in self.names() if (m := _NAME.fullmatch(n))), default=0)
        return f"{self._session:08d}-{next(self._seq):010d}-{self._token}.jsonl"

    def append(self, records: Iterable[StepRecord | RunEvent]) -> None:
        lines = [encode_record(rec) for rec in records]
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if self.fence is not None:
            self.fence()
        with self._lock:
            if self._appendable:
                if self._segment is None:
                    self._segment, self._size = f"{self.prefix}/{self._next_name()}", 0
                now = time.monotonic()
                sync = self._size == 0 or now - self._synced >= SYNC_EVERY_S  # a new segment: its name too
                if self.root.append_bytes(self._segment, data, sync=sync):
                    self._size += len(data)
                    self._dirty = not sync
                    if sync:
                        self._synced = now
                    if self._size >= SEGMENT_BYTES:
                        self._segment = None
                    return
                self._appendable = False  # object storage: one whole file per call
                self._segment = None
            self.root.write_bytes(f"{self.prefix}/{self._next_name()}", data)

    def close(self) -> None:
        """Make everything appended durable (the coordinator, when it stops)."""
        with self._lock:
            if self._segment is not None and self._dirty:
                self.root.append_bytes(self._segment, b"", sync=True)
                self._dirty = False

    def names(self) -> list[str]:
        """The journal's files, in the order they were written (older unordered ones first)."""
        return sorted((n for n in self.root.list(self.prefix) if n.endswith(".jsonl")), key=_order)

    def _parse(self, name: str) -> Iterator[tuple[int, StepRecord | RunEvent | BadRecord]]:
        """(line number, record or why it is none) for every complete line of one file."""
        data = self.root.read_bytes(f"{self.prefix}/{name}")
        lines = data.split(b"\n")
        for n, line in enumerate(lines, 1):
            if not line.strip(b" \t\r\x00"):
                continue
            if n == len(lines):
                break  # no newline yet: a line being appended, or cut by a power cut; never acted on
            try:
                rec = decode_record(line)
                if self.check is not None:
                    self.check(rec)
            except BadRecord as exc:
                yield n, exc
                continue
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not expected: decode_record says why
                yield n, BadRecord(f"{type(exc).__name__}: {exc}"[:120])
                continue
            yield n, rec

    def _damaged(self, name: str, n: int, bad: BadRecord) -> JournalDamaged:
        damage = Damage(name, n, bad.reason, bad.run, bad.step)
        where = self.root.path_for_display(f"{self.prefix}/{name}")
        eid = self.experiment_id or "ID"
        if bad.run is not None:
            way = (f"`panicflow doctor {eid} --fix` drops run {bad.run}'s journaled steps from this line on, "
                   f"and `panicflow experiment resume {eid}` computes them again")
        else:
            way = (f"`panicflow doctor {eid} --fix` drops this line (and the steps of its run after it), "
                   f"and `panicflow experiment resume {eid}` computes them again")
        return JournalDamaged(f"journal {where} is damaged at line {n}: {bad.reason}; {way}", damage)

    def read_file(self, name: str) -> list[StepRecord | RunEvent]:
        """The records of one file; ``JournalDamaged`` (a ``StoreError``) naming the file and line
        if one does not parse or holds a bad value."""
        records: list[StepRecord | RunEvent] = []
        for n, rec in self._parse(name):
            if isinstance(rec, BadRecord):
                raise self._damaged(name, n, rec)
            records.append(rec)
        return records

    def read(self) -> Iterator[StepRecord | RunEvent]:
        """Every record, in the order written; ``JournalDamaged`` at the first line that is not a valid
        record, or that records a step of a run before the steps it follows (the coordinator journals
        a run's step only after the one before it)."""
        following: dict[int, int] = {}  # run -> the step its next new record must have
        for name in self.names():
            try:
                parsed = list(self._parse(name))
            except FileNotFoundError:
                continue  # deleted by a clear() meanwhile
            for n, rec in parsed:
                if not isinstance(rec, BadRecord):
                    rec = _in_order(rec, following)
                if isinstance(rec, BadRecord):
                    raise self._damaged(name, n, rec)
                yield rec

    def survey(self) -> JournalSurvey:
        """Every damaged line (as ``read`` judges them) and what dropping it takes, for ``drop``.

        A line that names its run soundly drops that run's records from the line on: its steps from
        the first the line could be (the run's next step there, or the line's own step if lower),
        and its later events; they are computed again. A line whose run is unknown is dropped alone:
        if steps of its run follow, they no longer follow in order, and the first of them is the
        damage that drops that run's records from there on. Records before the damage stay.
        """
        out = JournalSurvey()
        entries: list[tuple[str, int, StepRecord | RunEvent | BadRecord]] = []
        following: dict[int, int] = {}  # run -> its next new step
        cut: dict[int, tuple[int, int]] = {}  # damaged run -> (entry of its first damage, first step dropped)
        for name in self.names():
            try:
                parsed = list(self._parse(name))
            except FileNotFoundError:
                continue
            for n, rec in parsed:
                if not isinstance(rec, BadRecord) and rec.run not in cut:
                    rec = _in_order(rec, following)
                if isinstance(rec, BadRecord):
                    out.damaged.append(Damage(name, n, rec.reason, rec.run, rec.step))
                    if rec.run is not None and rec.run not in cut:
                        step = following.get(rec.run, 0)
                        cut[rec.run] = (len(entries), step if rec.step is None else min(step, rec.step))
                entries.append((name, n, rec))
        for at, (name, n, rec) in enumerate(entries):
            if isinstance(rec, BadRecord):
                keep = False
            elif rec.run not in cut:
                keep = True
            elif isinstance(rec, StepRecord):
                keep = rec.step < cut[rec.run][1]
            else:
                keep = at < cut[rec.run][0]  # an event after the damage is about steps that go
            if keep:
                out.records.append(rec)  # type: ignore[arg-type]
            else:
                out.drops.setdefault(name, set()).add(n)
        out.cuts = {run: step for run, (_, step) in cut.items()}
        return out

    def drop(self, survey: JournalSurvey) -> None:
        """Rewrite the files of ``survey.drops`` without those lines (each file replaced at once; the
        other lines byte for byte). Only with the experiment's lease held: nothing appends meanwhile."""
        if self.fence is not None:
            self.fence()
        for name, lines in sorted(survey.drops.items()):
            key = f"{self.prefix}/{name}"
            try:
                data = self.root.read_bytes(key)
            except FileNotFoundError:
                continue
            parts = data.split(b"\n")
            kept = [line for n, line in enumerate(parts, 1) if n not in lines]
            self.root.write_bytes(key, b"\n".join(kept))

    def clear(self) -> None:
        """Remove every file, the newest first: a clear cut short (a kill right after the experiment
        completed) leaves the oldest files, which still read in order."""
        if self.fence is not None:
            self.fence()
        self.close()
        for name in [*reversed(self.names()), *(n for n in self.root.list(self.prefix) if not n.endswith(".jsonl"))]:
            self.root.delete(f"{self.prefix}/{name}")


def supersede(steps: dict[int, StepRecord], rec: StepRecord) -> None:
    """Add ``rec`` to one run's ``steps`` (step -> record), read in the order written: a step recorded
    again with another output (computed again after a power cut lost its output: the coordinator's
    ``_verify_recent_outputs``) supersedes the run's records from that step on; the same record
    again changes nothing. What resume, status and doctor all read a run's steps as."""
    seen = steps.get(rec.step)
    if seen is None:
        steps[rec.step] = rec
    elif (seen.hash, seen.seed) != (rec.hash, rec.seed):
        for k in [k for k in steps if k >= rec.step]:
            del steps[k]
        steps[rec.step] = rec


def _in_order(rec: StepRecord | RunEvent, following: dict[int, int]) -> StepRecord | RunEvent | BadRecord:
    """``rec``, or why it cannot be where it is: a run's new step is journaled only after the step
    before it (``following``: run -> its next new step, updated here). A step recorded again
    (computed again after a power cut) is in order; so is any event."""
    if not isinstance(rec, StepRecord):
        return rec
    nxt = following.get(rec.run, 0)
    if rec.step > nxt:
        return BadRecord(f"step {rec.step} of run {rec.run} comes before its step {nxt} (a run's steps are "
                         "journaled in order)", run=rec.run)
    if rec.step == nxt:
        following[rec.run] = nxt + 1
    return rec
