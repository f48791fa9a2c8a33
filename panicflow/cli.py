"""The command line: `panicflow experiment run|resume|status|list`, `panicflow models` and `panicflow doctor`.

Human output (progress bars, summaries) goes to stderr and the result a
script wants goes to stdout: the experiment id, or JSON with --json. Text read
from a store is printed through ``display.shown`` (no terminal escapes).
Exit codes: 0 success, 2 a user error (bad config, unknown id, bad store, bad
arguments), 130 interrupted (Ctrl-C), 1 anything else.

Imports are light here and in the command modules registered below (analysis/cli.py,
visual/cli.py, legacy/cli.py): `--version` and `--help` load typer and rich only, `experiment
status` and `list` the store and Zarr (panicflow/status.py); the API, distributed, xarray and the
rest are imported inside the commands that use them (tests/test_cli_startup.py checks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .display import printable, shown
from .errors import Interrupted, RunsFailed, StoreIOError, UserError
from .scheduler.cluster import LOCALHOST  # a constant: the module imports distributed only when it connects

if TYPE_CHECKING:
    from rich.progress import Progress

    from .status import ExperimentStatus

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Generative models chained in a loop, at scale, on Dask.")
experiment_app = typer.Typer(no_args_is_help=True, help="Run, resume and inspect experiments.")
app.add_typer(experiment_app, name="experiment")



def _register_analysis() -> None:
    """``panicflow analyse ...``, ``panicflow export tables`` and ``panicflow plot`` (panicflow/analysis/cli.py)."""
    from .analysis.cli import analyse_app, export_tables_cmd, plot_cmd
    from .visual.cli import register as register_visual

    app.add_typer(analyse_app, name="analyse")
    export_app = typer.Typer(no_args_is_help=True, help="Export experiment data.")
    export_app.command("tables")(export_tables_cmd)
    register_visual(app, export_app)  # export video|timeline|images|gallery, report (panicflow/visual/cli.py)
    app.add_typer(export_app, name="export")
    app.command("plot")(plot_cmd)


_register_analysis()


def _register_import() -> None:
    """``panicflow import legacy`` (panicflow/legacy/cli.py)."""
    from .legacy.cli import import_app

    app.add_typer(import_app, name="import")


_register_import()

err = Console(stderr=True)

# Options shared by several commands, defined once; typer reads them from the annotations
StoreOpt = Annotated[
    Optional[str], typer.Option("--store", help="Store folder or fsspec URL (default: $PANICFLOW_STORE or ./panicflow-store)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SchedulerOpt = Annotated[
    Optional[str], typer.Option("--scheduler", help="Address of an existing Dask scheduler to use (default: $DASK_SCHEDULER_ADDRESS, if set).")
]
SchedulerFileOpt = Annotated[Optional[Path], typer.Option(
    "--scheduler-file", help="Use the Dask scheduler whose address this file holds (dask scheduler --scheduler-file PATH)."
)]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Worker processes for the embedded LocalCluster (default: one per core).")]
GpusOpt = Annotated[Optional[int], typer.Option("--gpus", help="Start a dask-cuda LocalCUDACluster: one worker per GPU (needs panicflow[gpu]).")]
HostOpt = Annotated[str, typer.Option(
    "--host", help="Interface the embedded LocalCluster listens on; 0.0.0.0 opens it to the network (docs/security.md)."
)]
DashboardOpt = Annotated[Optional[str], typer.Option(
    "--dashboard-address", help="Dashboard of the embedded LocalCluster, HOST:PORT or PORT (default: --host, port 8787)."
)]
_PEM = dict(exists=True, dir_okay=False, readable=True)
TlsCaOpt = Annotated[Optional[Path], typer.Option("--tls-ca-file", help="CA certificate (PEM) to verify a tls:// scheduler.", **_PEM)]
TlsCertOpt = Annotated[Optional[Path], typer.Option("--tls-cert", help="Client certificate (PEM) for a tls:// scheduler.", **_PEM)]
TlsKeyOpt = Annotated[Optional[Path], typer.Option("--tls-key", help="Key of --tls-cert (PEM), unless the certificate file holds it.", **_PEM)]
GraceOpt = Annotated[Optional[float], typer.Option(
    "--grace", min=0, help="Seconds results in flight get to land after SIGTERM, SIGHUP or Ctrl-C (default: the panicflow.stop-grace setting, 5; 0: stop at once).",
)]


def _store(store: Optional[str]) -> str:
    from .store import default_location

    return store or default_location()


def _cluster(
    scheduler: Optional[str], scheduler_file: Optional[Path], workers: Optional[int], gpus: Optional[int], host: str,
    dashboard_address: Optional[str], tls_ca_file: Optional[Path], tls_cert: Optional[Path], tls_key: Optional[Path],
) -> dict[str, Any]:
    """The keyword arguments of ``api.run_experiment`` and ``api.resume_experiment`` that say where to run."""
    return dict(
        scheduler=scheduler, scheduler_file=scheduler_file, workers=workers, gpus=gpus, host=host,
        dashboard_address=dashboard_address, security=_security(tls_ca_file, tls_cert, tls_key),
    )


def _cluster_options(
    scheduler: Optional[str], scheduler_file: Optional[Path], workers: Optional[int], gpus: Optional[int], host: str,
    tls_ca_file: Optional[Path], tls_cert: Optional[Path], tls_key: Optional[Path],
) -> str:
    """The options that name the same cluster again, for the resume command a stop prints: run as
    printed without them, resume would start a local cluster instead of joining the one it ran on."""
    import os
    import shlex

    import dask.config

    parts: list[str] = []
    if scheduler_file is not None:
        parts += ["--scheduler-file", os.path.abspath(scheduler_file)]
    elif scheduler:
        parts += ["--scheduler", scheduler]
    elif workers is None and gpus is None and dask.config.get("scheduler-address", None):
        parts += ["--scheduler", dask.config.get("scheduler-address")]  # what $DASK_SCHEDULER_ADDRESS named then
    if workers is not None:
        parts += ["--workers", str(workers)]
    if gpus is not None:
        parts += ["--gpus", str(gpus)]
    if host != LOCALHOST and not (scheduler or scheduler_file):
        parts += ["--host", host]
    for option, path in (("--tls-ca-file", tls_ca_file), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None:
            parts += [option, os.path.abspath(path)]
    return " ".join(shlex.quote(p) for p in parts)


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
    """Rich progress bars for the three stages, fed by coordinator snapshots: steps first (runs end
    in waves), and per bar the time left from scheduler/eta.py, with rates over the last minute of
    snapshots (the estimate of the /panicflow page and `status --json`, not rich's own per bar)."""

    def __init__(self, enabled: bool) -> None:
        from .scheduler import eta

        self.enabled = enabled
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.window = eta.Window()
        self.eta: dict[str, Any] | None = None  # the latest estimate

    def start(self, exp, client) -> None:
        if not self.enabled:
            return
        from rich.progress import Progress

        from .scheduler.dashboard import page_url as dashboard_page

        err.print(f"experiment [bold]{shown(exp.id)}[/] in {shown(exp.path_for_display())}")
        err.print(f"Dask dashboard: {escape(client.dashboard_link)}")
        page = dashboard_page(client)
        if page:
            err.print(f"panicflow progress: {escape(page)} (and panicflow_* metrics on /metrics)")
        self.progress = Progress(*self.columns(), console=err, transient=False)
        self.progress.start()

    @staticmethod
    def columns() -> tuple:
        """Name, bar, done/total, time elapsed, and the time left of ``rows`` (not rich's own)."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        return (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}", markup=False))

    def rows(self, snap, now: float | None = None) -> dict[str, tuple[int, int, str]]:
        """Per bar: done, total and the time left (``eta.brief``); the estimate is kept in ``self.eta``."""
        from .scheduler import eta
        from .scheduler.dashboard import snapshot_dict

        d = snapshot_dict(snap)
        self.window.add(time.monotonic() if now is None else now, d)
        self.eta = eta.estimate(eta.work_left(d), self.window.rates())

        def left(*where: str) -> str:
            text = eta.brief(self.eta, *where)
            return text if text == "done" else f"{text} left"

        steps = left("invocations")
        rows = {"steps (invocations)": (snap.invocations, snap.invocations_max, steps),
                "runs": (snap.runs_ended, snap.runs, steps)}
        for m, n in snap.embeddings.items():
            rows[f"embeddings {m}"] = (n, snap.runs_to_embed, left("embeddings", m))
        for m, n in snap.diagrams.items():
            rows[f"diagrams {m}"] = (n, snap.runs, left("diagrams", m))
        return rows

    def update(self, snap) -> None:
        if not self.progress:
            return
        for name, (done, total, left) in self.rows(snap).items():
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(escape(name), total=total, eta=left)
            self.progress.update(self.tasks[name], completed=done, total=total, eta=left)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()


def _print_summary(status: ExperimentStatus, wall: float | None = None) -> None:
    # names, paths and errors come from the store: neither Rich markup nor terminal escapes (display.py)
    from rich.table import Table

    title = f"experiment {status.id}" + (f" ({status.name})" if status.name else "")
    table = Table(title=shown(title), show_header=False)
    table.add_row("state", shown(status.state))
    table.add_row("results", shown(f"{status.store} (panicflow.open_experiment({status.id!r}, store={status.store!r}))"))
    most = status.invocations_max
    share = f" ({100 * status.invocations / most:.0f}%)" if most else ""
    table.add_row("steps (invocations)", f"{status.invocations} of at most {most}{share}")
    if status.state == "running":  # scheduler/eta.py: from the rates the store shows over the last minute
        from .scheduler import eta

        table.add_row("time left", eta.describe(status.eta))
    table.add_row("runs", f"{status.runs_complete} complete, {status.runs_failed} failed, {status.runs} in all")
    table.add_row("stop reasons", shown(", ".join(f"{k}: {v}" for k, v in sorted(status.stop_reasons.items())) or "-"))
    table.add_row("embeddings (runs)", shown(", ".join(f"{k}: {v}" for k, v in status.embeddings.items())))
    table.add_row("persistence diagrams", shown(", ".join(f"{k}: {v}" for k, v in status.persistence_diagrams.items())))
    for model, outcome in status.diagram_outcomes.items():
        if any(outcome.values()):
            table.add_row(f"  {shown(model)}", ", ".join(f"{v} {k}" for k, v in outcome.items()))
    for run, error in list(status.errors.items())[:10]:
        table.add_row(f"run {run} failed", shown(error))
    if wall is not None:
        table.add_row("wall time", f"{wall:.1f} s")
    err.print(table)


def _runs_failed(exc: RunsFailed, bars: _Bars) -> str:
    bars.stop()
    err.print(f"[red]error:[/] {shown(exc)}", highlight=False, soft_wrap=True)
    return exc.experiment_id


def _finish(eid: str, store: str, as_json: bool, wall: float) -> None:
    from .status import experiment_status

    status = experiment_status(eid, store=store)
    if as_json:
        print(json.dumps({**status.to_dict(), "wall_time_s": round(wall, 3)}))
    else:
        _print_summary(status, wall)
        print(eid)
    if status.state != "complete":
        raise typer.Exit(1)


class _Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP stopped ``experiment run`` or ``resume``: ``main`` prints ``line``
    and exits with ``code`` (128 + the signal's number: 130, 143, 129; scheduler/stopping.py)."""

    def __init__(self, experiment_id: str | None, store: str, reason: str = "SIGINT", cluster: str = "") -> None:
        from .scheduler.stopping import EXIT_CODES

        import shlex

        self.reason, self.code = reason, EXIT_CODES.get(reason, 130)
        by = "" if reason == "SIGINT" else f" ({reason})"
        if experiment_id:
            command = " ".join(["panicflow experiment resume", experiment_id, "--store", shlex.quote(store), cluster]).strip()
            self.line = f"interrupted{by}; {command} finishes it"
        else:
            self.line = f"interrupted{by} before the experiment was created; nothing to resume"
        super().__init__(self.line)


def _error_text(exc: BaseException) -> str:
    """An error on one line: StoreIOError's message says it all, anything else is named by its type."""
    text = str(exc) if isinstance(exc, StoreIOError) else f"{type(exc).__name__}: {exc}"
    return printable(" ".join(text.split("\n")))


def _completed(experiment_id: str, store: str) -> bool:
    from .status import experiment_status

    try:
        return experiment_status(experiment_id, store=store).state == "complete"
    except Exception:  # unreadable now: not known to be complete
        return False


def _execute(start: Callable[..., str], store: str, as_json: bool, experiment_id: str | None = None,
             grace: float | None = None, cluster: str = "", id_file: Path | None = None) -> None:
    """Run or resume an experiment with progress bars, then print its summary (or JSON) and id.

    ``start(progress=..., on_start=..., stop=...)`` runs it and returns its id. Ctrl-C, SIGTERM
    or SIGHUP stop it (gracefully while the coordinator runs: ``grace`` seconds for results in
    flight) with the id on stdout and one line saying how to resume on the same cluster
    (``cluster``: its options), exit 128 + the signal (``_Interrupted``), unless it had
    completed; any other error once the experiment is known still gives --json its id and the error.
    """
    from .scheduler.stopping import StopRequest

    bars = _Bars(not as_json)
    t0 = time.monotonic()
    known = {"id": experiment_id}
    stop = StopRequest(grace, say=_say)  # None: the panicflow.stop-grace setting

    def on_start(exp, client) -> None:
        known["id"] = exp.id
        if id_file is not None:
            _write_id(id_file, exp.id)
        bars.start(exp, client)

    try:
        eid = start(progress=bars.update, on_start=on_start, stop=stop)
    except RunsFailed as exc:  # the summary (or JSON) still follows; _finish exits 1
        eid = _runs_failed(exc, bars)
    except (KeyboardInterrupt, Interrupted) as exc:
        eid = known["id"]
        if eid is None or not _completed(eid, store):  # one that completed before the signal exits 0
            bars.stop()
            reason = exc.reason if isinstance(exc, Interrupted) else (_SIGNAL_CAME[0] or "SIGINT")
            stop = _Interrupted(eid, store, reason, cluster)
            if as_json:
                print(json.dumps({"id": eid, "state": "interrupted", "error": stop.line}))
            elif eid:
                print(eid)  # what a script reads from stdout, as when it completes
            raise stop from None
    except UserError:
        raise
    except Exception as exc:
        eid = getattr(exc, "experiment_id", "") or known["id"]
        if as_json and eid:
            print(json.dumps({"id": eid, "error": _error_text(exc)}))
        raise
    finally:
        bars.stop()
    with _ctrl_c_ignored():  # it has ended: a signal now would only lose its summary (and exit 130)
        _finish(eid, store, as_json, time.monotonic() - t0)


def _write_id(path: Path, experiment_id: str) -> None:
    """The id, once the experiment exists and before it runs, for a job script that may be killed
    before the command prints anything (scripts/panicflow-job): written whole or not at all."""
    import os
    import tempfile

    path = Path(path).absolute()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(experiment_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _say(line: str) -> None:
    err.print(shown(line), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP ignored meanwhile (signal handlers are the main thread's to set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@experiment_app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Experiment config, JSON or YAML."),
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    as_json: JsonOpt = False,
    host: HostOpt = LOCALHOST,
    dashboard_address: DashboardOpt = None,
    tls_ca_file: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    grace: GraceOpt = None,
    id_file: Annotated[Optional[Path], typer.Option(
        "--id-file", dir_okay=False, help="Write the experiment's id to this file as soon as it exists (for job scripts).",
    )] = None,
) -> None:
    """Run an experiment to the end; prints its id."""
    from .config import load_config

    # a config error is the commonest mistake: one line before distributed and the API are imported (1 s)
    cfg = load_config(config)
    from . import api

    cluster = _cluster(scheduler, scheduler_file, workers, gpus, host, dashboard_address, tls_ca_file, tls_cert, tls_key)
    again = _cluster_options(scheduler, scheduler_file, workers, gpus, host, tls_ca_file, tls_cert, tls_key)
    if id_file is not None and not Path(id_file).absolute().parent.is_dir():
        raise UserError(f"--id-file: folder {Path(id_file).absolute().parent} does not exist; create it or give another path")
    _execute(lambda **hooks: api.run_experiment(cfg, store=_store(store), **cluster, **hooks), _store(store), as_json,
             grace=grace, cluster=again, id_file=id_file)


@experiment_app.command("resume")
def resume_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
    scheduler_file: SchedulerFileOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also give failed runs another go."),
    as_json: JsonOpt = False,
    host: HostOpt = LOCALHOST,
    dashboard_address: DashboardOpt = None,
    tls_ca_file: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    grace: GraceOpt = None,
) -> None:
    """Finish an interrupted experiment."""
    from . import api

    cluster = _cluster(scheduler, scheduler_file, workers, gpus, host, dashboard_address, tls_ca_file, tls_cert, tls_key)
    again = _cluster_options(scheduler, scheduler_file, workers, gpus, host, tls_ca_file, tls_cert, tls_key)
    _execute(
        lambda **hooks: api.resume_experiment(experiment_id, store=_store(store), retry_failed=retry_failed, **cluster, **hooks),
        _store(store), as_json, experiment_id, grace=grace, cluster=again,
    )


@experiment_app.command("status")
def status_cmd(
    experiment_id: Optional[str] = typer.Argument(None, help="Experiment id or prefix (default: the newest)."),
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-stage progress of one experiment."""
    from .status import experiment_status, list_experiments  # not the API: no distributed, no xarray

    if experiment_id is None:
        experiments = list_experiments(_store(store))
        if not experiments:
            raise UserError(f"no experiments in {_store(store)}; run one with `panicflow experiment run CONFIG`")
        experiment_id = max(experiments, key=lambda e: e["created_at"] or "")["id"]
    status = experiment_status(experiment_id, store=_store(store))
    if as_json:
        print(json.dumps(status.to_dict()))
    else:
        _print_summary(status)


@experiment_app.command("list")
def list_cmd(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Every experiment in the store; a damaged one is listed as such (and the exit status is 2)."""
    from .status import list_experiments  # not the API: no distributed, no xarray

    experiments = list_experiments(_store(store))
    if as_json:
        print(json.dumps(experiments))
    else:
        from rich.table import Table

        table = Table("id", "name", "state", "runs", "created")
        for e in experiments:
            row = (e["id"], e["name"] or "", e["state"], "" if e["runs"] is None else str(e["runs"]), e["created_at"] or "")
            table.add_row(*map(shown, row))
        Console().print(table)
    damaged = [e["error"] for e in experiments if e["state"] == "damaged"]
    if damaged:
        raise UserError(*damaged)


def _model_row(spec) -> dict[str, Any]:
    """What `panicflow models --json` says of one registry entry (docs/cli.md)."""
    from .models.cache import approx_gb
    from .models.families import weights_present

    extra = spec.extra
    return {
        "name": spec.name,
        "kind": spec.role.value,
        "input": spec.input_kind.value,
        "output": spec.output_kind.value if spec.output_kind else f"vector[{spec.dim}]",
        "description": spec.description,
        "hf_id": extra.get("hf_id"),
        "revision": extra.get("revision") if extra.get("hf_id") else None,
        "dim": spec.dim,
        "dtype": extra.get("dtype"),
        "approx_gpu_gb": approx_gb(spec),
        "weights_present": weights_present(spec),
        "gated": bool(extra.get("gated", False)),
        "batch_size": spec.default_batch_size,
        "max_batch": extra.get("max_batch"),
        # False: its batched outputs depend on the batch, so it is called one input at a time
        "batch_reproducible": bool(extra.get("batch_reproducible", True)),
        "batch_note": " ".join(n for n in (extra.get("max_batch_note"), extra.get("batch_note")) if n) or None,
        "generation": {k: extra[k] for k in _GENERATION_KEYS if k in extra} or None,
    }


# the generation settings `models --json` shows (each invocation records what it used, docs/models.md)
_GENERATION_KEYS = ("width", "height", "steps", "guidance", "offload", "prompt", "chat", "max_new_tokens", "do_sample",
                    "decoding", "temperature", "top_p", "prompt_prefix", "truncate_dim", "padding_side", "pooling")


@app.command("models")
def models_cmd(as_json: JsonOpt = False) -> None:
    """Every model panicflow knows, with its kind and output."""
    from .models import list_models

    rows = [_model_row(s) for s in list_models()]
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    weights = {True: "present", False: "missing", None: "-"}
    table = Table("name", "kind", "input", "output", "description", "weights")
    for r in rows:
        table.add_row(*map(escape, (r["name"], r["kind"], r["input"], r["output"], r["description"], weights[r["weights_present"]])))
    Console().print(table)


@app.command("doctor")
def doctor_cmd(
    experiment_id: Optional[str] = typer.Argument(None, help="Experiment id or prefix (default: every experiment)."),
    fix: bool = typer.Option(False, "--fix", help="Repair what can be rebuilt from the store, and report what was done."),
    store: StoreOpt = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check experiments against the store contract (objects, runs, embeddings, diagrams, metadata); exit 1 if problems remain."""
    from . import api
    from .doctor import render

    report = api.doctor(
        experiment_id, store=_store(store), fix=fix, scheduler=scheduler, workers=workers,
        say=lambda text: err.print(f"[dim]{shown(text)}[/]"),
    )
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        render(report, err)
    if report.exit_code:
        # SystemExit, not typer.Exit: with standalone_mode=False click returns typer.Exit's code
        # from app() instead of raising it, and main() would then exit 0
        raise SystemExit(report.exit_code)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("panicflow")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from . import __version__ as number
        print(f"panicflow {number}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print panicflow's version and exit."
    )] = False,
) -> None:
    pass


_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_SIGNAL_CAME: list[str | None] = [None]  # the signal that stopped the command, for its exit status


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT, SIGTERM, SIGHUP outside a running coordinator (which stops gracefully instead:
    scheduler/stopping.py): quiet what Dask logs about the waits and the cluster the interrupt
    cuts short (the one line `main` prints says it all), then interrupt as Ctrl-C would."""
    _SIGNAL_CAME[0] = signal.Signals(signum).name
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    raise KeyboardInterrupt


_on_signal.panicflow_handler = True  # type: ignore[attr-defined]  # replaced while the coordinator runs


_NOISY = ("distributed", "bokeh", "tornado")


class _Quiet(logging.Filter):
    """What distributed, bokeh and tornado log below ERROR, dropped by the root logger's handlers.

    Setting their loggers to ERROR is not enough: the commands import distributed only once they
    need it, after ``main`` has set the levels, and importing it sets them back (INFO; its
    ``initialize_logging``). It adds no handler of its own when the root logger has one (``main``'s
    ``basicConfig``), so its records reach the root's handlers, where this filter keeps them out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.partition(".")[0] not in _NOISY


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes (2: user error, 130/143/129: Ctrl-C/SIGTERM/SIGHUP, 1: anything else)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    quiet, handlers = _Quiet(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    _SIGNAL_CAME[0] = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main_thread:  # nohup's ignored SIGHUP stays ignored
        previous = {s: signal.signal(s, _on_signal) for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN or s == signal.SIGINT}
    try:
        # with standalone_mode=False click returns the code of a typer.Exit (e.g. _finish's 1 for an
        # experiment that did not complete) instead of raising it: pass it on, or failures exit 0
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        for line in exc.lines:
            err.print(f"[red]error:[/] {shown(line)}", highlight=False, soft_wrap=True)
        return 2
    except _Interrupted as exc:
        err.print(shown(exc.line), highlight=False, soft_wrap=True)
        return exc.code
    except typer.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:  # pragma: no cover
        return int(exc.code or 0)
    except KeyboardInterrupt:  # outside a command
        err.print(_stopped_line())
        return _stopped_code()
    except Exception as exc:
        # typer vendors click: find its exception classes through the exception itself
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "UsageError" in names or "BadParameter" in names:
            exc.show(file=sys.stderr)
            return 2
        if "Abort" in names:
            return 1
        # soft_wrap: one line however long (paths), as scripts and tests/test_faults.py read it
        err.print(f"[red]error:[/] {escape(_error_text(exc))}", highlight=False, soft_wrap=True)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for h in handlers:
            h.removeFilter(quiet)
    if code == 130 and _SIGNAL_CAME[0]:  # typer turns a signal's KeyboardInterrupt in a command (outside _execute) into 130
        err.print(_stopped_line())
        return _stopped_code()
    return code if isinstance(code, int) else 0


def _stopped_code() -> int:
    from .scheduler.stopping import EXIT_CODES

    return EXIT_CODES.get(_SIGNAL_CAME[0] or "SIGINT", 130)


def _stopped_line() -> str:
    came = _SIGNAL_CAME[0]
    return "interrupted" + (f" ({came})" if came and came != "SIGINT" else "")


if __name__ == "__main__":
    sys.exit(main())
