"""The command line: `panicflow experiment run|resume|status|list` and `panicflow models`.

Human output (progress bars, summaries) goes to stderr and the result a
script wants goes to stdout: the experiment id, or JSON with --json.
Exit codes: 0 success, 2 a user error (bad config, unknown id, bad store), 1 anything else.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import api
from .errors import RunsFailed, UserError
from .models import list_models
from .scheduler.dashboard import page_url as dashboard_page
from .store import default_location

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generative models chained in a loop, at scale, on Dask.")
experiment_app = typer.Typer(no_args_is_help=True, help="Run, resume and inspect experiments.")
app.add_typer(experiment_app, name="experiment")



def _register_analysis() -> None:
    """``panicflow analyse ...`` and ``panicflow export tables`` (panicflow/analysis/cli.py)."""
    from .analysis.cli import analyse_app, export_tables_cmd

    app.add_typer(analyse_app, name="analyse")
    export_app = typer.Typer(no_args_is_help=True, help="Export experiment data.")
    export_app.command("tables")(export_tables_cmd)
    app.add_typer(export_app, name="export")


_register_analysis()

err = Console(stderr=True)

StoreOpt = typer.Option(None, "--store", help="Store folder or fsspec URL (default: $PANICFLOW_STORE or ./panicflow-store)")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
SchedulerOpt = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler to use (default: $DASK_SCHEDULER_ADDRESS, if set).")
SchedulerFileOpt = typer.Option(
    None, "--scheduler-file", help="Use the Dask scheduler whose address this file holds (dask scheduler --scheduler-file PATH)."
)
WorkersOpt = typer.Option(None, "--workers", help="Worker processes for the embedded LocalCluster (default: one per core).")
GpusOpt = typer.Option(None, "--gpus", help="Start a dask-cuda LocalCUDACluster: one worker per GPU (needs panicflow[gpu]).")
HostOpt = typer.Option("127.0.0.1", "--host", help="Interface the embedded LocalCluster listens on; 0.0.0.0 opens it to the network (docs/security.md).")
DashboardOpt = typer.Option(None, "--dashboard-address", help="Dashboard of the embedded LocalCluster, HOST:PORT or PORT (default: --host, port 8787).")
_PEM = dict(exists=True, dir_okay=False, readable=True)
TlsCaOpt = typer.Option(None, "--tls-ca-file", help="CA certificate (PEM) to verify a tls:// scheduler.", **_PEM)
TlsCertOpt = typer.Option(None, "--tls-cert", help="Client certificate (PEM) for a tls:// scheduler.", **_PEM)
TlsKeyOpt = typer.Option(None, "--tls-key", help="Key of --tls-cert (PEM), unless the certificate file holds it.", **_PEM)


def _store(store: Optional[str]) -> str:
    return store or default_location()


def _security(ca_file: Optional[Path], cert: Optional[Path], key: Optional[Path]):
    """A ``distributed.security.Security`` from the --tls-* options, or None without them."""
    if ca_file is None and cert is None and key is None:
        return None
    if ca_file is None or cert is None:
        raise UserError("--tls-ca-file: TLS needs both --tls-ca-file and --tls-cert (and --tls-key unless the certificate holds it)")
    from distributed.security import Security

    files = {"tls_ca_file": str(ca_file)}
    for role in ("client", "scheduler", "worker"):  # scheduler, worker: an embedded cluster (no --scheduler) uses TLS too
        files[f"tls_{role}_cert"] = str(cert)
        files[f"tls_{role}_key"] = str(key) if key else None
    return Security(require_encryption=True, **files)


class _Bars:
    """Rich progress bars for the three stages, fed by coordinator snapshots."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}

    def start(self, exp, client) -> None:
        if not self.enabled:
            return
        err.print(f"experiment [bold]{escape(exp.id)}[/] in {escape(exp.path_for_display())}")
        err.print(f"Dask dashboard: {escape(client.dashboard_link)}")
        page = dashboard_page(client)
        if page:
            err.print(f"panicflow progress: {escape(page)} (and panicflow_* metrics on /metrics)")
        self.progress = Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, transient=False,
        )
        self.progress.start()

    def update(self, snap) -> None:
        if not self.progress:
            return
        rows = {"runs": (snap.runs_ended, snap.runs), "invocations": (snap.invocations, snap.invocations_max)}
        for m, n in snap.embeddings.items():
            rows[f"embeddings {m}"] = (n, snap.runs_to_embed)
        for m, n in snap.diagrams.items():
            rows[f"diagrams {m}"] = (n, snap.runs)
        for name, (done, total) in rows.items():
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=total)
            self.progress.update(self.tasks[name], completed=done, total=total)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()


def _print_summary(status: api.ExperimentStatus, wall: float | None = None) -> None:
    # names, paths and errors are the user's text, not Rich markup
    title = f"experiment {status.id}" + (f" ({status.name})" if status.name else "")
    table = Table(title=escape(title), show_header=False)
    table.add_row("state", status.state)
    table.add_row("results", escape(f"{status.store} (panicflow.open_experiment({status.id!r}, store={status.store!r}))"))
    table.add_row("runs", f"{status.runs_complete} complete, {status.runs_failed} failed, {status.runs} in all")
    table.add_row("invocations", str(status.invocations))
    table.add_row("stop reasons", escape(", ".join(f"{k}: {v}" for k, v in sorted(status.stop_reasons.items())) or "-"))
    table.add_row("embeddings (runs)", ", ".join(f"{k}: {v}" for k, v in status.embeddings.items()))
    table.add_row("persistence diagrams", ", ".join(f"{k}: {v}" for k, v in status.persistence_diagrams.items()))
    for model, outcome in status.diagram_outcomes.items():
        if any(outcome.values()):
            table.add_row(f"  {escape(model)}", ", ".join(f"{v} {k}" for k, v in outcome.items()))
    for run, error in list(status.errors.items())[:10]:
        table.add_row(f"run {run} failed", escape(error))
    if wall is not None:
        table.add_row("wall time", f"{wall:.1f} s")
    err.print(table)


def _runs_failed(exc: RunsFailed, bars: _Bars) -> str:
    bars.stop()
    err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return exc.experiment_id


def _finish(eid: str, store: str, as_json: bool, wall: float) -> None:
    status = api.experiment_status(eid, store=store)
    if as_json:
        print(json.dumps({**status.to_dict(), "wall_time_s": round(wall, 3)}))
    else:
        _print_summary(status, wall)
        print(eid)
    if status.state != "complete":
        raise typer.Exit(1)


@experiment_app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Experiment config, JSON or YAML."),
    store: Optional[str] = StoreOpt,
    scheduler: Optional[str] = SchedulerOpt,
    scheduler_file: Optional[Path] = SchedulerFileOpt,
    workers: Optional[int] = WorkersOpt,
    gpus: Optional[int] = GpusOpt,
    as_json: bool = JsonOpt,
    host: str = HostOpt,
    dashboard_address: Optional[str] = DashboardOpt,
    tls_ca_file: Optional[Path] = TlsCaOpt,
    tls_cert: Optional[Path] = TlsCertOpt,
    tls_key: Optional[Path] = TlsKeyOpt,
) -> None:
    """Run an experiment to the end; prints its id."""
    bars = _Bars(not as_json)
    t0 = time.monotonic()
    started: dict[str, str] = {}

    def on_start(exp, client):
        started["id"] = exp.id
        bars.start(exp, client)

    try:
        eid = api.run_experiment(
            config, store=_store(store), scheduler=scheduler, workers=workers, progress=bars.update, on_start=on_start,
            security=_security(tls_ca_file, tls_cert, tls_key), host=host, dashboard_address=dashboard_address, gpus=gpus,
            scheduler_file=scheduler_file,
        )
    except RunsFailed as exc:  # the summary (or JSON) still follows; _finish exits 1
        eid = _runs_failed(exc, bars)
    finally:
        bars.stop()
    _finish(eid, _store(store), as_json, time.monotonic() - t0)


@experiment_app.command("resume")
def resume_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    store: Optional[str] = StoreOpt,
    scheduler: Optional[str] = SchedulerOpt,
    scheduler_file: Optional[Path] = SchedulerFileOpt,
    workers: Optional[int] = WorkersOpt,
    gpus: Optional[int] = GpusOpt,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also give failed runs another go."),
    as_json: bool = JsonOpt,
    host: str = HostOpt,
    dashboard_address: Optional[str] = DashboardOpt,
    tls_ca_file: Optional[Path] = TlsCaOpt,
    tls_cert: Optional[Path] = TlsCertOpt,
    tls_key: Optional[Path] = TlsKeyOpt,
) -> None:
    """Finish an interrupted experiment."""
    bars = _Bars(not as_json)
    t0 = time.monotonic()
    try:
        eid = api.resume_experiment(
            experiment_id, store=_store(store), scheduler=scheduler, workers=workers, progress=bars.update,
            on_start=bars.start, retry_failed=retry_failed,
            security=_security(tls_ca_file, tls_cert, tls_key), host=host, dashboard_address=dashboard_address, gpus=gpus,
            scheduler_file=scheduler_file,
        )
    except RunsFailed as exc:
        eid = _runs_failed(exc, bars)
    finally:
        bars.stop()
    _finish(eid, _store(store), as_json, time.monotonic() - t0)


@experiment_app.command("status")
def status_cmd(
    experiment_id: Optional[str] = typer.Argument(None, help="Experiment id or prefix (default: the newest)."),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Per-stage progress of one experiment."""
    if experiment_id is None:
        experiments = api.list_experiments(_store(store))
        if not experiments:
            raise UserError(f"no experiments in {_store(store)}; run one with `panicflow experiment run CONFIG`")
        experiment_id = max(experiments, key=lambda e: e["created_at"] or "")["id"]
    status = api.experiment_status(experiment_id, store=_store(store))
    if as_json:
        print(json.dumps(status.to_dict()))
    else:
        _print_summary(status)


@experiment_app.command("list")
def list_cmd(store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Every experiment in the store; a damaged one is listed as such (and the exit status is 2)."""
    experiments = api.list_experiments(_store(store))
    if as_json:
        print(json.dumps(experiments))
    else:
        table = Table("id", "name", "state", "runs", "created")
        for e in experiments:
            row = (e["id"], e["name"] or "", e["state"], "" if e["runs"] is None else str(e["runs"]), e["created_at"] or "")
            table.add_row(*map(escape, row))
        Console().print(table)
    damaged = [e["error"] for e in experiments if e["state"] == "damaged"]
    if damaged:
        raise UserError(*damaged)


@app.command("models")
def models_cmd(as_json: bool = JsonOpt) -> None:
    """Every model panicflow knows, with its kind and output."""
    rows = [
        {
            "name": s.name,
            "kind": s.role.value,
            "input": s.input_kind.value,
            "output": s.output_kind.value if s.output_kind else f"vector[{s.dim}]",
            "description": s.description,
        }
        for s in list_models()
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "kind", "input", "output", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["input"], r["output"], r["description"])
    Console().print(table)


@app.command("doctor")
def doctor_cmd(
    experiment_id: Optional[str] = typer.Argument(None, help="Experiment id or prefix (default: every experiment)."),
    fix: bool = typer.Option(False, "--fix", help="Repair what can be rebuilt from the store, and report what was done."),
    store: Optional[str] = StoreOpt,
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check experiments against the store contract (objects, runs, embeddings, diagrams, metadata); exit 1 if problems remain."""
    from .doctor import render

    report = api.doctor(
        experiment_id, store=_store(store), fix=fix, scheduler=scheduler, workers=workers,
        say=lambda text: err.print(f"[dim]{escape(text)}[/]"),
    )
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        render(report, err)
    if report.exit_code:
        # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
        # from app() instead of raising it, and main() would then exit 0
        raise SystemExit(report.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes (2: user error, 1: anything else)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        # with standalone_mode=False click returns the code of a typer.Exit (e.g. _finish's 1 for an
        # experiment that did not complete) instead of raising it: pass it on, or failures exit 0
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        for line in exc.lines:
            err.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # pragma: no cover
        return int(exc.code or 0)
    except KeyboardInterrupt:
        err.print("interrupted; `panicflow experiment resume ID` finishes the experiment")
        return 130
    except Exception as exc:
        # typer vendors click: find its exception classes through the exception itself
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "UsageError" in names or "BadParameter" in names:
            exc.show(file=sys.stderr)
            return 2
        if "Abort" in names:
            return 1
        # soft_wrap: one line however long (paths), as scripts and tests/test_faults.py read it
        err.print(f"[red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
