"""`panicflow doctor`: check experiments against the store contract, and repair what can be rebuilt.

docs/store.md is the contract and docs/doctor.md the user's guide. What is checked, per experiment:

* the Zarr metadata: every ``zarr.json`` of the layout exists, is JSON, and describes the
  node ``Experiment.create`` lays out for the stored config (shape, dtype, chunks, fill
  value, dimension names, our attributes); any other ``zarr.json`` under ``data.zarr`` parses;
* the arrays written at creation (``run``, ``step``, ``network``, ``seed``, ``prompt``);
* every chunk it reads decodes;
* runs: every step below ``length`` has ``model`` (the network's), ``kind`` (that model's
  output kind), ``output_hash``, ``text`` (texts only, hashing to ``output_hash``),
  ``invocation_seed`` (the run's seed when seeded) and timestamps; nothing after ``length``;
* stop reasons: the end is recomputed from ``output_hash`` and the seed exactly as the
  coordinator decides it (a seeded run stops at its first repeated output, with
  ``loop_start``/``loop_period``; otherwise at ``max_length``; an unseeded run never loops);
* objects: every output referenced by the rows (and by the journal) exists and hashes to its name;
* embeddings: for a run whose ``done`` is set, non-NaN rows exactly at the steps whose kind
  is the embedder's input kind, and rows that hash to the ``vector_sha256`` recorded with
  ``done`` (experiments from before it have none: a note); ``done`` set for every ended,
  non-failed run of a finished experiment;
* diagrams: a status for every run of a finished experiment; for a status, pairs form a
  padded prefix, entropy equals the persistent entropy of the stored pairs, ``n_points``
  equals the embedded rows; no pairs where nothing was computed;
* checksums: every chunk of an array created with the crc32c codec is checked against it when
  read (a changed byte is an ``unreadable`` chunk); arrays without it (stores created before)
  are named in a note;
* the journal: every line a valid record of this experiment, in order (``Journal.survey``); a
  damaged line is named by file and line;
* leftovers: journal files of a complete experiment, experiment folders whose creation
  crashed (no ``experiment.json``; only when checking the whole store);
* consolidated metadata: none that differs from the nodes' own, and one in a finished experiment;
* an experiment no coordinator runs that is not finished (interrupted, its markers cleared by a
  killed ``doctor --fix``, or its state.json lost) is a problem that says to resume it.

A "finished" experiment is one whose coordinator wrote ``complete`` (or ``failed`` with
every run ended): only there are missing embeddings, diagrams or stop reasons problems;
elsewhere they are work that ``panicflow experiment resume`` still has to do.

``fix=True`` repairs in phases, re-checking after each (a repaired ``zarr.json`` can reveal
data problems behind it): 1. metadata, regenerated from the stored config; 2. chunks that
cannot be decoded are deleted (they read as fill values, i.e. missing, afterwards; in a
shard of runs' rows only the damaged run's chunk is replaced);
3. rows, run ends, creation arrays, objects, leftovers, from the store itself (journal,
config, surviving columns, re-running deterministic models and accepting only outputs
that hash to what the store already holds), and damaged journal lines dropped with their
run's records from there on (resume computes those steps again); 4. embeddings and diagrams, by clearing their
markers and letting the normal resume machinery recompute them; 5. the consolidated metadata,
written again. A problem is reported
``fixed`` when the final check no longer finds it.

The package: ``scan`` (the checks), ``repair`` (the fixes and orphan folders), ``report``
(problems, reports, rendering), ``common`` (what both use). Resuming is passed in by the caller
(``panicflow.api.doctor``), so nothing here imports the API.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from ..errors import UserError
from ..store import Store
from ..store.experiment import Experiment
from ..store.lease import ExperimentBusy
from .common import PARAMS, Scan, log, short
from .repair import Repairer, check_orphan
from .repair import orphans as find_orphans
from .report import KINDS, PHASE_NAMES, DoctorReport, ExperimentReport, Problem, render
from .scan import Scanner


# ---------------------------------------------------------------------------------- entry
def _fix_rounds(scanner: Scanner, doc: Repairer, exp: Experiment, scan: Scan, record, say, max_rounds: int) -> Scan:
    """Fix phase by phase (earliest phase first), rescanning after each; the last scan."""
    attempted: set[tuple] = set()
    for _ in range(max_rounds):
        todo = [p for p in scan.problems if KINDS.get(p.kind) and p.key not in attempted]
        if not todo:
            break
        phase = min(KINDS[p.kind] for p in todo)
        batch = [p for p in todo if KINDS[p.kind] == phase]
        say(f"{exp.id}: fixing {len(batch)} problem(s): {PHASE_NAMES[phase]}")
        try:
            doc.fix_phase(phase, batch, scan)
        except Exception as exc:  # noqa: BLE001
            for p in batch:
                doc.note(p, f"fix failed: {short(exc)}")
        attempted |= {p.key for p in batch}
        scan = scanner.scan()
        record(scan)
    return scan


def _doctor_experiment(store: Store, exp: Experiment, fix: bool, say, resume, max_rounds: int = 8) -> ExperimentReport:
    verified: set[str] = set()
    scanner, doc = Scanner(store, exp, verified), Repairer(store, exp, verified, say, resume)
    rep = ExperimentReport(id=exp.id)
    seen: dict[tuple, Problem] = {}

    def record(scan: Scan) -> None:
        for p in scan.problems:
            if p.key not in seen:
                seen[p.key] = p

    scan = scanner.scan()
    rep.state = scan.effective
    record(scan)
    if fix and (scan.problems or scan.unconsolidated):
        if scan.effective == "running":
            for p in scan.problems:
                doc.note(p, "the experiment is running; stop it before `doctor --fix`")
        else:
            try:
                exp.take("doctor --fix")  # no coordinator may start while doctor repairs
            except ExperimentBusy as exc:
                for p in scan.problems:
                    doc.note(p, str(exc))
                fix = False
            try:
                if fix:
                    scan = _fix_rounds(scanner, doc, exp, scan, record, say, max_rounds)
                if fix and scan.unconsolidated and not scan.problems:
                    doc.fix_phase(5, [], scan)
                    scan = scanner.scan()
            finally:
                if exp.lease is not None:
                    exp.lease.release()
                    exp.lease = None
            rep.state = scan.effective
    final = {p.key for p in scan.problems}
    for key, p in seen.items():
        p.fixed = fix and key not in final
        for text in doc.notes.get(key, []):
            p.detail += f" [{text}]"
    rep.problems = list(seen.values())
    rep.actions = doc.actions
    rep.notes = list(scan.notes)
    return rep


def run_doctor(
    experiment_id: str | None = None,
    store: Store | str | None = None,
    *,
    fix: bool = False,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    say: Callable[[str], None] | None = None,
    resume: Callable[..., Any] | None = None,
) -> DoctorReport:
    """Check one experiment (or all, with no id); with ``fix``, repair what can be rebuilt.

    ``resume(experiment_id, store=, client=)`` recomputes cleared embeddings and diagrams
    (``panicflow.api.resume_experiment``; without it they are left for the user to resume).
    Raises ``UserError`` for a store that cannot be opened or an unknown id; every
    problem inside the store is reported, never raised.
    """
    st = store if isinstance(store, Store) else Store(store)
    say = say or (lambda text: log.info(text))
    if experiment_id is not None:
        experiments = [st.experiment(experiment_id)]
        orphans: list[str] = []
    else:
        experiments = [Experiment(st.root, eid) for eid in st.experiment_ids()]
        try:
            orphans = find_orphans(st)
        except Exception:  # noqa: BLE001
            orphans = []
    report = DoctorReport(store=st.location, fix=fix)
    with ExitStack() as stack:
        clients: list = []

        def recompute(exp: Experiment) -> None:
            from ..scheduler.cluster import connect

            if resume is None:
                raise RuntimeError(f"no resume given: run `panicflow experiment resume {exp.id}`")
            if exp.lease is not None:  # resume takes the experiment itself
                exp.lease.release()
                exp.lease = None
            if not clients:
                if client is not None:
                    clients.append(client)
                else:
                    say("starting a Dask cluster to recompute")
                    clients.append(stack.enter_context(connect(None, scheduler=scheduler, workers=workers, dashboard_address=":0")))
            resume(exp.id, store=st, client=clients[0])

        for exp in experiments:
            try:
                report.experiments.append(_doctor_experiment(st, exp, fix, say, recompute))
            except UserError:
                raise
            except Exception as exc:
                log.exception("doctor failed on %s", exp.id)
                rep = ExperimentReport(id=exp.id)
                rep.problems.append(Problem("experiment", f"doctor could not check it: {short(exc)}"))
                report.experiments.append(rep)
        for name in orphans:
            report.experiments.append(check_orphan(st, name, fix, say))
    return report


__all__ = ["KINDS", "PARAMS", "DoctorReport", "ExperimentReport", "Problem", "render", "run_doctor"]
