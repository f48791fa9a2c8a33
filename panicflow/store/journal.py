"""The step journal: the runs stage's source of truth until an experiment completes.

The coordinator is its only writer. After every model call it writes one
file with one JSON line per invocation (and one per run event, such as a run
marked failed), atomically, before it acts on the result. A crash therefore
loses at most the calls in flight, never a recorded step, and a step is
recorded once because the next step of a run is only submitted after the
previous one is in the journal. Zarr arrays are materialised from it; the
journal is removed once the experiment is complete and everything is in Zarr.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

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


@dataclass(frozen=True)
class RunEvent:
    run: int
    event: str  # "failed" | "retry"
    step: int
    error: str = ""


class Journal:
    def __init__(self, root: StoreRoot, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def append(self, records: Iterable[StepRecord | RunEvent]) -> None:
        lines = []
        for rec in records:
            kind = "step" if isinstance(rec, StepRecord) else "event"
            lines.append(json.dumps({"type": kind, **asdict(rec)}, ensure_ascii=False))
        if lines:
            data = ("\n".join(lines) + "\n").encode("utf-8")
            self.root.write_bytes(f"{self.prefix}/{uuid.uuid4().hex}.jsonl", data)

    def read(self) -> Iterator[StepRecord | RunEvent]:
        for name in self.root.list(self.prefix):
            if not name.endswith(".jsonl"):
                continue
            data = self.root.read_bytes(f"{self.prefix}/{name}")
            for n, line in enumerate(data.split(b"\n"), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)  # plain JSON: nothing in the store is unpickled
                    kind = obj.pop("type")
                    rec = StepRecord(**obj) if kind == "step" else RunEvent(**obj)
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise StoreError(
                        f"journal {self.root.path_for_display(f'{self.prefix}/{name}')} is damaged at line {n}"
                    ) from None
                yield rec

    def clear(self) -> None:
        for name in self.root.list(self.prefix):
            self.root.delete(f"{self.prefix}/{name}")
