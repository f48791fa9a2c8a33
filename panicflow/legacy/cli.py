"""`panicflow import legacy PATH.sqlite`: the earlier PANIC-TDA tool's database into the store."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

# the importer, the store and rich's progress bars are imported inside legacy_cmd: panicflow/cli.py
# registers this module, and `panicflow --help` should not load them (tests/test_cli_startup.py)


@contextlib.contextmanager
def _writing(location: str):
    """An import into a store that refuses writes (read-only, full): one line (exit 2), before the
    database is read, and so is a write refused later (panicflow/store/writable.py)."""
    from ..store import Store
    from ..store.writable import writing_into

    with writing_into(Store(location, create=True, lazy=True)):  # a new store is created by the import
        yield


import_app = typer.Typer(no_args_is_help=True, help="Import data written by other tools.")


@import_app.command("legacy")
def legacy_cmd(
    path: Path = typer.Argument(..., help="SQLite database of the earlier PANIC-TDA tool (db/trajectory_data.sqlite)."),
    store: Optional[str] = typer.Option(None, "--store", help="Store folder or fsspec URL (default: $PANICFLOW_STORE or ./panicflow-store)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read and check everything, write nothing, report what would be imported."),
    skip_diagrams: bool = typer.Option(False, "--skip-diagrams", help="Leave the persistence diagrams out; `panicflow experiment resume` computes them."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Import every experiment of the database (idempotent; an interrupted import continues); prints the experiment ids."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..store import default_location
    from .importer import import_legacy
    from .report import render

    err = Console(stderr=True)
    location = store or default_location()
    with (contextlib.nullcontext() if dry_run else _writing(location)), \
            Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=err, transient=True, disable=as_json) as bars:
        task = bars.add_task("runs", total=None)
        report = import_legacy(str(path), store=location, dry_run=dry_run, skip_diagrams=skip_diagrams,
                               progress=lambda what, done, total: bars.update(task, completed=done, total=total))
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        render(report, err)
        for eid in report.experiment_ids:
            print(eid)
    if report.exit_code:
        # SystemExit, not typer.Exit: panicflow.cli.main runs click with standalone_mode=False
        raise SystemExit(report.exit_code)
