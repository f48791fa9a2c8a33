"""The doctor's report: problems found (and fixed), what was done, and how it is shown."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

# Problem kinds, with the fix phase that handles them (None: reported only).
KINDS: dict[str, int | None] = {
    "experiment": None,  # experiment.json or its config unreadable: nothing else can be checked
    "interrupted": None,  # no coordinator, not finished: `panicflow experiment resume` finishes it
    "journal": 3,  # a journal line that does not parse or holds a bad value: that run's steps from there are dropped
    "metadata": 1,  # a zarr.json missing, damaged, or not the layout's
    "unreadable": 2,  # a chunk that cannot be decoded
    "layout": 3,  # run/step/network/seed/prompt differ from the config
    "run_gap": 3,  # a step below length lacks a value
    "run_extra": 3,  # values after length
    "run_mismatch": 3,  # a value contradicts the config or another column
    "stop_reason": 3,  # length/stop_reason/loop_start/loop_period disagree with the outputs
    "run_unended": 3,  # no stop_reason in a finished experiment
    "step_unfollowed": None,  # a deterministic step's output is not what its input and seed give
    "object_missing": 3,
    "object_corrupt": 3,
    "journal_leftover": 3,  # journal files of a complete experiment
    "orphan": 3,  # an experiment folder without experiment.json
    "embedding_missing": 4,
    "embedding_rows": 4,
    "embedding_digest": 4,  # the vectors of a run no longer hash to the digest recorded when they were committed
    "diagram_missing": 4,
    "diagram_inconsistent": 4,
    "consolidated": 5,  # the consolidated metadata (root zarr.json) stale, or missing in a finished experiment
}
PHASE_NAMES = {1: "metadata", 2: "undecodable chunks", 3: "runs and objects", 4: "embeddings and diagrams",
               5: "consolidated metadata"}


@dataclass
class Problem:
    kind: str
    detail: str
    run: int | None = None
    step: int | None = None
    model: str | None = None
    path: str | None = None  # array, object key or file the problem is about
    fixed: bool = False

    @property
    def key(self) -> tuple:
        return (self.kind, self.run, self.model, self.path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "run": self.run, "step": self.step, "model": self.model,
            "path": self.path, "detail": self.detail, "fixed": self.fixed,
        }


@dataclass
class ExperimentReport:
    id: str
    state: str | None = None
    problems: list[Problem] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts that are no problem (e.g. chunks without checksums)

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.fixed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "state": self.state, "problems": [p.to_dict() for p in self.problems],
            "actions": list(self.actions), "notes": list(self.notes),
        }


@dataclass
class DoctorReport:
    store: str
    fix: bool
    experiments: list[ExperimentReport] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return [p for e in self.experiments for p in e.problems]

    @property
    def remaining(self) -> list[Problem]:
        return [p for p in self.problems if not p.fixed]

    @property
    def clean(self) -> bool:
        return not self.remaining

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else 1

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for p in self.remaining:
            kinds[p.kind] += 1
        return {
            "experiments": len(self.experiments),
            "problems": len(self.problems),
            "fixed": sum(p.fixed for p in self.problems),
            "remaining": len(self.remaining),
            "remaining_by_kind": dict(kinds),
            "clean": self.clean,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "fix": self.fix,
            "experiments": [e.to_dict() for e in self.experiments], "summary": self.summary(),
        }



def render(report: DoctorReport, console) -> None:
    """The report as rich tables (the CLI prints it on stderr). Ids, names and details come from
    the store: ``shown`` escapes markup and terminal control characters alike."""
    from rich.table import Table

    from ..display import shown

    for e in report.experiments:
        if not e.problems:
            console.print(f"experiment [bold]{shown(e.id)}[/] ({shown(e.state)}): no problems")
            for n in e.notes:
                console.print(f"  note: {shown(n)}", highlight=False)
            continue
        table = Table("kind", "run", "step", "model", "detail", "fixed", title=shown(f"experiment {e.id} ({e.state})"),
                      title_justify="left")
        for p in e.problems:
            table.add_row(
                p.kind, "" if p.run is None else str(p.run), "" if p.step is None else str(p.step), shown(p.model or ""),
                shown(p.detail), ("[green]yes[/]" if p.fixed else "[red]no[/]") if report.fix else "-",
            )
        console.print(table)
        for a in e.actions:
            console.print(f"  {shown(a)}", highlight=False)
        for n in e.notes:
            console.print(f"  note: {shown(n)}", highlight=False)
    s = report.summary()
    if not report.experiments:
        console.print("no experiments in the store")
    if report.fix:
        console.print(f"{s['problems']} problem(s), {s['fixed']} fixed, {s['remaining']} remaining")
    else:
        console.print(f"{s['problems']} problem(s)" + ("; `panicflow doctor --fix` repairs what can be rebuilt" if s["problems"] else ""))
