"""What an import did: per experiment and per table, rows imported and why the others were not."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TABLES = ("experimentconfig", "run", "invocation", "embedding", "persistencediagram", "clusteringresult", "embeddingcluster")
IMPORTED = "imported"


def table_counts(tally: Counter) -> dict[str, dict[str, Any]]:
    """(table, outcome) -> rows, as {table: {"imported": n, "skipped": {why: n}}}."""
    out: dict[str, dict[str, Any]] = {}
    for (table, outcome), n in sorted(tally.items()):
        if not n:
            continue
        t = out.setdefault(table, {"imported": 0, "skipped": {}})
        if outcome == IMPORTED:
            t["imported"] += n
        else:
            t["skipped"][outcome] = t["skipped"].get(outcome, 0) + n
    return out


@dataclass
class ExperimentEntry:
    legacy_id: str  # hyphenated
    experiment_id: str  # panicflow id
    status: str = "pending"  # imported | already imported | would import | not imported | verification failed
    reason: str = ""
    state: str = ""  # the panicflow state: complete | failed | interrupted
    runs: int = 0
    stop_reasons: dict[str, int] = field(default_factory=dict)
    tally: Counter = field(default_factory=Counter)
    source: dict[str, int] = field(default_factory=dict)  # rows per table in the legacy database
    pending: dict[str, int] = field(default_factory=dict)  # "embeddings"/"diagrams" -> (run, model) pairs left for resume
    issues: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # verification

    def to_dict(self) -> dict[str, Any]:
        return {
            "legacy_id": self.legacy_id, "experiment_id": self.experiment_id, "status": self.status, "reason": self.reason,
            "state": self.state, "runs": self.runs, "stop_reasons": dict(self.stop_reasons), "source": dict(self.source),
            "tables": table_counts(self.tally), "left_for_resume": dict(self.pending), "issues": self.issues[:50],
            "verification_problems": self.problems[:50],
        }


@dataclass
class ImportReport:
    database: str
    store: str | None
    dry_run: bool
    experiments: list[ExperimentEntry] = field(default_factory=list)
    clusterings: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> source, imported, skipped
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rows: int = 0  # source rows read (all tables)

    @property
    def complete(self) -> bool:
        """Every experiment is in the store (imported now or before) and verified."""
        return all(e.status in ("imported", "already imported", "would import") for e in self.experiments)

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else 1

    @property
    def experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.experiments if e.status in ("imported", "already imported")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database, "store": self.store, "dry_run": self.dry_run, "complete": self.complete,
            "experiments": [e.to_dict() for e in self.experiments], "clusterings": self.clusterings,
            "tables": self.totals, "notes": self.notes, "seconds": round(self.seconds, 3), "rows": self.rows,
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds else None,
        }


def render(report: ImportReport, console) -> None:
    """The summary, for people (the CLI prints it on stderr)."""
    from rich.markup import escape

    say = lambda text, style="": console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), soft_wrap=True)  # noqa: E731
    verb = "would import" if report.dry_run else "imported"
    say(f"legacy import of {report.database}" + (" (dry run)" if report.dry_run else f" into {report.store}"), "bold")
    for e in report.experiments:
        line = f"{e.experiment_id}: {e.status}" + (f", {e.state}" if e.state else "") + (f": {e.reason}" if e.reason else "")
        if e.status not in ("not imported",):
            t = table_counts(e.tally)
            got = lambda name: f"{t.get(name, {}).get('imported', 0)}/{e.source.get(name, 0)}"  # noqa: E731
            stops = ", ".join(f"{v} {k}" for k, v in sorted(e.stop_reasons.items()))
            line += (f"; {e.runs} runs ({stops}); invocations {got('invocation')}, embeddings {got('embedding')}, "
                     f"diagrams {got('persistencediagram')}")
            left = " and ".join(f"{v} {k}" for k, v in e.pending.items() if v)
            if left:
                line += f"; left for `panicflow experiment resume`: {left}"
        say(line, "red" if e.status in ("not imported", "verification failed") else "")
        for problem in e.problems[:10]:
            say(f"  verification: {problem}", "red")
        for issue in e.issues[:5]:
            say(f"  {issue}", "dim")
        if len(e.issues) > 5:
            say(f"  ... {len(e.issues) - 5} more in --json", "dim")
    for c in report.clusterings:
        where = f" as analysis/clusters/{c['name']} in {len(c['experiments'])} experiment(s)" if c.get("experiments") else ""
        say(f"clustering {c['legacy_id']} ({c['model']}): {c['status']}{where}")
    skipped = [(name, why, n) for name, t in report.totals.items() for why, n in t.get("skipped", {}).items()]
    if skipped:
        say(f"rows not {verb}, by table and reason:")
        for name, why, n in skipped:
            say(f"  {name}: {why}: {n}")
    for line in report.notes:
        say(line, "dim")
    rate = f", {report.rows / report.seconds:,.0f} rows/s" if report.seconds and report.rows else ""
    say(f"{report.rows:,} source rows read in {report.seconds:.1f} s{rate}")
