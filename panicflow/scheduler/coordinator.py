"""The coordinator: drives every run of an experiment with Dask futures.

Runs are independent and their steps sequential. The coordinator keeps, per
model, the runs whose next step needs that model, and submits them in batches
(up to the model's batch size) whenever a slot is free, so workers stay busy
as results come back and no step waits for a global barrier. When a run ends
it is materialised into Zarr and its embeddings are submitted at once; when
an embedding is written the run's persistence diagram is submitted.

Crash safety: a batch's results are appended to the journal (one write to
this process's segment file, or one file on object storage: store/journal.py)
before the coordinator acts on them, and it submits step k+1 of a run only
after step k is journaled. ``load`` rebuilds the exact same state from the
journal and the Zarr markers, so a resumed experiment continues as if never
stopped.

Stopping on request (SIGTERM at a walltime, SIGHUP, Ctrl-C, ``cancel()``:
scheduler/stopping.py): nothing new is submitted, results in flight land for
at most the grace, the rest is cancelled, the experiment is marked
``interrupted`` and ``Interrupted`` is raised.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import secrets
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from distributed import Client, Future

from .. import settings
from ..config import UNSEEDED, ExperimentConfig, RunSpec
from ..analysis.topology import status_group
from ..errors import Interrupted, PermanentError, StoreWriteFailed
from ..models import REGISTRY, Kind
from ..store import Store, consolidated
from ..store.experiment import (
    HEARTBEAT_S,
    STEP_CHUNK,
    Experiment,
    ExperimentWriter,
    RunEnd,
    now_us,
    read_markers,
)
from ..store.journal import RunEvent, StepRecord, supersede
from ..store.lease import LeaseLost
from . import tasks
from .inflight import InFlight, Task
from .pending import PendingSteps
from .stopping import StopRequest
from .versions import mismatch_lines, package_versions, worker_info

log = logging.getLogger(__name__)

# Dask runs higher priorities first. Within a stage the oldest runs go first (``wave_ranks``), so
# that runs end in waves instead of all together at the end; embeddings and diagrams of runs that
# ended before any model call, so that results come while runs go on (the coordinator holds CPU
# stages back to the CPU slots, so model calls keep the other threads: _drain_cpu_queue). Every
# priority is 0 or below, Dask's default: the model calls waiting in Dask (the backlog) never hold
# back other work on a shared cluster, an analysis of this experiment's ended runs included.
STAGE_ORDER = {"embed": 0, "diagram": 1, "invoke": 2}
RANKS = 2**40  # more than any experiment's runs: a stage's priorities never reach the next one's

CLUSTER_LOOK_S = 2.0  # how often the coordinator looks at the cluster's workers (they come and go)
NO_WORKERS_WARN_S = 60.0  # with none, a warning this often: an adaptive cluster may still start some
VERIFY_WINDOW_S = 120.0  # outputs journaled this long before a crash are checked on resume (power cuts)
GATHER_TIMEOUT_S = 10.0  # results are small: longer means one is being computed again (a worker died)
# Runs still going are written to Zarr (their steps not yet in a full 1024-step chunk) at least this
# often, so that readers see them (docs/store.md, "Reading while writing"); less often only where
# writing them took more than SHOW_SHARE of the coordinator's time (very many runs going at once)
SHOW_RUNNING_S = 30.0
SHOW_GROUP = 256  # runs whose rows one write of _show_running holds in memory (16 per row chunk)
SHOW_SHARE = 0.1


def session_provenance(config: ExperimentConfig) -> dict[str, Any]:
    """What a coordinator session computes with, as recorded in the store (Experiment.record_session).

    Versions are the coordinator's; the coordinator adds each worker's (``workers``) as it
    meets them, and warns where they differ (``Coordinator._look_at_new_workers``)."""
    from ..analysis.topology import PersistenceOptions

    versions = package_versions()
    embedders = {}
    for m in config.embedding_models:
        spec = REGISTRY[m]
        embedders[m] = {"dim": spec.dim, "input": spec.input_kind.value, "description": spec.description,
                        **{k: v for k, v in spec.extra.items() if isinstance(v, (str, int, float, bool, type(None)))}}
    persistence = config.persistence.model_dump()
    defaults = PersistenceOptions()
    cfg = config.persistence
    persistence.update(
        collapse_edges_effective=defaults.collapse_edges if cfg.collapse_edges is None else cfg.collapse_edges,
        memory_budget_effective=(f"{cfg.memory_budget_gb} GB" if cfg.memory_budget_gb is not None
                                 else "a share of each worker's memory limit (scheduler/tasks.py _memory_budget_gb)"),
        n_threads=defaults.n_threads, library="giotto-ph ripser_parallel",
        metric="euclidean between the stored float32 vectors (an exact float64 distance matrix, metric='precomputed')",
        coefficients="Z/2",
    )
    return {"versions": versions, "embedders": embedders, "persistence": persistence}


@dataclass
class RunState:
    """What the coordinator keeps of one run: only what its next step and loop detection need.

    Steps live in the journal and in Zarr; here only the last one and those not yet written to
    Zarr: since the last full 1024-step chunk or the last time running runs were shown
    (``Coordinator._show_running``), or what a resume read from the journal. Those wait in a
    local temporary file, 8 bytes each in memory (scheduler/pending.py), so the coordinator's
    memory grows neither with the length of the runs nor with the steps between two shows,
    which come seldom when many runs are going (issue 7 item 7: about 490 bytes per step in
    memory held +350 MB with 10,000 runs of 100 steps). Loop detection reads the rest from Zarr.
    """

    spec: RunSpec
    max_length: int
    n_steps: int = 0
    last: StepRecord | None = None
    pending: PendingSteps = field(default_factory=PendingSteps)  # recorded, not in Zarr yet: on local disk
    end: RunEnd | None = None
    flushed: int = 0  # steps in Zarr: pending starts here
    materialised: bool = False  # stop_reason written
    busy: bool = False  # a model call for this run is in flight
    attempts: int = 0  # failed attempts at the current step
    solo: bool = False  # retry alone after its batch kept failing
    group: int | None = None  # deterministic batching: the fixed group it advances with; None: free
    probing: bool = False  # deterministic: a solo call whose output is discarded, to find a failing input
    probed_at: int = -1  # the step at which a solo probe of this run succeeded
    not_before: float = 0.0  # monotonic time before which it is not retried
    embedded: set[str] = field(default_factory=set)
    diagrams: set[str] = field(default_factory=set)

    @property
    def next_model(self) -> str:
        return self.spec.model_at(self.n_steps)

    def add(self, rec: StepRecord, first: int | None = None) -> None:
        """Append one step and decide whether the run ends with it; ``first``: the earlier step
        of a seeded run with the same output (see ``Coordinator._first_occurrence``)."""
        self.n_steps += 1
        self.last = rec
        self.pending.append(rec)
        if first is not None and self.spec.seed != UNSEEDED:
            self.end = RunEnd(self.n_steps, "loop", first, rec.step - first)
        elif self.n_steps >= self.max_length:
            self.end = RunEnd(self.n_steps, "length")

    def mark_flushed(self) -> None:
        self.flushed = self.n_steps
        self.pending.clear()

    def input_for_next(self) -> str:
        if self.last is None:
            return self.spec.prompt
        return self.last.text if self.last.kind == Kind.TEXT.value else self.last.hash


@dataclass
class Progress:
    """A snapshot for progress bars and summaries."""

    runs: int
    runs_ended: int
    invocations: int
    invocations_max: int
    embeddings: dict[str, int]  # runs embedded per model
    diagrams: dict[str, int]  # runs with a diagram status per model
    stop_reasons: dict[str, int]
    runs_to_embed: int
    invocations_by_model: dict[str, int] = field(default_factory=dict)
    diagram_outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> ok/fallback/skipped/failed
    # per generative model, invocations at most: a run going may make max_length steps, one that ended made its length
    invocations_max_by_model: dict[str, int] = field(default_factory=dict)


class Coordinator:
    def __init__(
        self,
        client: Client,
        store: Store,
        exp: Experiment,
        progress: Callable[[Progress], None] | None = None,
        max_in_flight: int | None = None,
        retry_failed: bool = False,
        stop: StopRequest | None = None,
    ) -> None:
        self.retry_failed = retry_failed
        self.stop = stop or StopRequest()  # SIGTERM, Ctrl-C, cancel(): scheduler/stopping.py
        self.client = client
        self.store = store
        self.exp = exp
        self.config: ExperimentConfig = exp.config
        exp.upgrade()  # an experiment of an older format gets the arrays this version writes
        self.writer = ExperimentWriter(exp)
        self.progress_cb = progress
        self._fixed_in_flight = max_in_flight
        self._per_thread = settings.get("max-in-flight")  # a bad setting fails here, before anything is submitted
        # model calls beyond the slots, full batches only, so that Dask sees the work that waits: an
        # adaptive cluster scales up on it (issue 20 item 5), a worker that joins takes from it
        self.backlog = settings.get("backlog")
        self.in_flight = InFlight(getattr(client, "loop", None))
        # model -> workers that ran it: they hold it resident, so its batches go there first
        self.holders: dict[str, set[str]] = defaultdict(set)
        # CPU stages (diagrams, embedders without a GPU) wait here for a free CPU slot, so that
        # model calls never queue behind them on a worker's threads (_drain_cpu_queue)
        self.cpu_queue: deque[tuple[str, str, int, Callable, tuple]] = deque()  # (kind, model, run, fn, args)
        self._last_cluster_look = -math.inf
        self._no_workers_since: float | None = None  # since when the cluster has had no worker
        self.workers: dict[str, dict[str, Any]] = {}  # address -> host and versions, of every worker met
        self._session: dict[str, Any] | None = None  # the provenance record, once run() started
        self._refresh_cluster()
        self.runs: list[RunState] = []
        self.invocations_by_model: Counter[str] = Counter()
        # per embedding model: diagrams ok / fallback / skipped / failed (analysis.topology.STATUS_GROUPS)
        self.diagram_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self._last_beat = 0.0
        self._last_progress = 0.0

    # ------------------------------------------------------------------ cluster
    def _refresh_cluster(self) -> None:
        """Size the work in flight to the workers there now: clusters grow and shrink while an
        experiment runs (adaptive clusters, dask-jobqueue, Kubernetes, a `dask worker` started
        by hand), so nothing here is fixed when the experiment starts."""
        now = time.monotonic()
        if now - self._last_cluster_look < CLUSTER_LOOK_S:
            return
        self._last_cluster_look = now
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        if workers:
            self._no_workers_since = None
        elif self._no_workers_since is None:
            self._no_workers_since = now
        elif now - self._no_workers_since >= NO_WORKERS_WARN_S:  # left, or never came: say so, keep waiting
            self._no_workers_since = now
            log.warning("no Dask worker is connected to %s; waiting for one (start one with `dask worker %s`)",
                        self.client.scheduler.address, self.client.scheduler.address)
        threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
        gpu_workers = {a for a, w in workers.items() if "GPU" in (w.get("resources") or {})}
        # a cluster whose workers declare a GPU resource (LocalCUDACluster, --gpus, or the user's):
        # models that need a GPU run only there, one batch per GPU at a time
        self.gpu_cluster = bool(gpu_workers)
        self.gpu_workers = gpu_workers
        self.cpu_workers = sorted(set(workers) - gpu_workers)
        self.worker_threads = {a: int(w.get("nthreads", 1)) for a, w in workers.items()}
        # two batches per worker thread (panicflow.max-in-flight): one running, one queued so the worker never idles
        self.max_in_flight = self._fixed_in_flight or self._per_thread * threads
        # CPU-stage slots: the threads model calls do not need. On GPU workers one thread each
        # feeds the GPU; on a CPU-only cluster half the threads while runs remain, all after
        if gpu_workers:
            self.cpu_slots = max(1, threads - len(gpu_workers))
        else:
            self.cpu_slots = max(1, threads // 2)
        self.all_threads = threads
        if self._session is not None and self._look_at_new_workers(set(workers)):
            self.exp.record_session(self._session)  # workers that joined an elastic cluster

    def _look_at_new_workers(self, addresses: set[str]) -> bool:
        """Ask the workers not met before for their host and versions (one ``Client.run``, only
        when the cluster changed), keep them for the session's provenance record, and warn where
        their versions differ from the coordinator's. Whether there were any."""
        new = sorted(addresses - set(self.workers))
        if not new:
            return False
        answers = self.client.run(worker_info, workers=new, on_error="return")
        met = {}
        for address, answer in answers.items():
            # an error: the worker left under the question, or cannot run panicflow (its tasks will say)
            met[address] = answer if isinstance(answer, dict) else {"error": f"{type(answer).__name__}: {answer}"}
        for line in mismatch_lines(self._session["versions"], met):
            log.warning("%s", line)
        self.workers.update(met)
        return True

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Rebuild every run's state from the journal and the Zarr markers."""
        cfg = self.config
        self.runs = [RunState(spec, cfg.max_length) for spec in cfg.runs()]
        # runs to look at in the next round, and those waiting for a model call: each round looks at
        # these, never at every run, so its work does not grow with the experiment (issue 7 item 7)
        self._dirty: set[int] = set(range(len(self.runs)))
        self._open: set[int] = set()  # runs not ended
        self._backoff: set[int] = set()  # idle runs waiting for their retry time
        self._ready: dict[str, dict[int, None]] = defaultdict(dict)  # free batching: model -> idle runs
        self._oldest: dict[str, list[tuple[int, int]]] = defaultdict(list)  # model -> heap of (rank, run) of _ready's
        self._ready_model: dict[int, str] = {}  # run -> the model it waits in _ready for
        self._rank = wave_ranks(cfg)  # run -> its place in the waves: lower goes first
        self._ready_groups: dict[tuple[int, int], None] = {}  # deterministic: (group, step)s whose runs all wait
        self._members: dict[int, list[RunState]] = defaultdict(list)  # deterministic group -> its runs
        self._solo: set[int] = set()  # idle runs retrying alone (free batching)
        self._next_show = 0.0  # monotonic time of the next _show_running: at the first tick
        self.invocations_by_model: Counter[str] = Counter()
        self.diagram_outcomes = defaultdict(Counter)
        self._group_rank: dict[int, int] = {}  # deterministic group -> the rank of its oldest run
        for st, group in zip(self.runs, batch_groups(cfg)):
            st.group = group
            if group is not None:
                self._members[group].append(st)
                rank = self._rank[st.spec.index]
                self._group_rank[group] = min(rank, self._group_rank.get(group, rank))
        markers = read_markers(self.exp)
        by_run: dict[int, dict[int, StepRecord]] = defaultdict(dict)
        failures: dict[int, RunEvent] = {}
        # complete: everything is in Zarr, and a journal left by a clear cut short is not read
        journal = self.exp.journal.read() if self.exp.read_state().get("state") != "complete" else ()
        for rec in journal:
            if isinstance(rec, StepRecord):
                supersede(by_run[rec.run], rec)  # a step computed again (a power cut) replaces the rest of its run
            elif rec.event == "failed":
                failures[rec.run] = rec
            elif rec.event == "retry":
                failures.pop(rec.run, None)
        self._verify_recent_outputs(by_run, markers)
        for st in self.runs:
            i = st.spec.index
            records = by_run.pop(i, {})
            seen: dict[str, int] = {}  # the whole run is in the journal here: find its loop directly
            for step in range(len(records)):
                if step not in records or st.end is not None:
                    break
                rec = records[step]
                st.add(rec, seen.get(rec.hash))
                seen.setdefault(rec.hash, step)
                self.invocations_by_model[rec.model] += 1
            if st.end is None and i in failures:
                st.end = RunEnd(st.n_steps, "failed", error=failures[i].error)
            stored_reason = str(markers["stop_reason"][i])
            if stored_reason == "failed" and i not in failures:
                stored_reason = ""  # retried after it failed: the journal's retry event wins
            if stored_reason:
                st.materialised = True
                st.mark_flushed()
                if st.end is None:  # journal already cleared: trust the materialised run
                    st.end = RunEnd(int(markers["length"][i]), stored_reason)
            # else st.flushed stays 0 and every step is pending: rewriting from the start is
            # idempotent and heals a torn flush
            for m in cfg.embedding_models:
                if markers["embedded"][m][i]:
                    st.embedded.add(m)
                if status := str(markers["diagram_status"][m][i]):
                    st.diagrams.add(m)
                    self.diagram_outcomes[m][status_group(status)] += 1

    def _verify_recent_outputs(self, by_run: dict[int, dict[int, StepRecord]], markers: dict) -> None:
        """After a power cut, the newest journaled outputs may be missing or torn: workers do not
        flush objects to disk (``StoreRoot.unsynced``), the page cache does within about 30 s.
        Check the outputs journaled in the last ``VERIFY_WINDOW_S`` before the newest step of
        every run still going; a lost text is written again from the journal, and at the first
        lost image the run's later steps (computed from it) are dropped: they run again."""
        if not self.store.root.is_local:
            return  # object storage: an object exists only once its PUT succeeded
        newest = max((r.ended_us for recs in by_run.values() for r in recs.values()), default=0)
        since = newest - int(VERIFY_WINDOW_S * 1e6)
        objects = self.store.objects
        for i, records in by_run.items():
            if str(markers["stop_reason"][i]):
                continue  # ended and materialised before the crash: already flushed long ago
            for step in sorted(k for k, r in records.items() if r.ended_us >= since):
                rec = records[step]
                if objects.verify(rec.hash):
                    continue
                self.store.root.delete(objects.key_for(rec.hash))  # a torn object would block its rewrite
                if rec.kind == Kind.TEXT.value and rec.text is not None:
                    objects.put_text(rec.text)
                    continue
                log.warning("run %d: output of step %d was lost (power cut?); computing it again", i, step)
                self.writer.clear_steps(i, step, max(records) + 1)  # shown while it ran: not its rows any more
                for k in [k for k in records if k >= step]:
                    del records[k]
                break

    @property
    def _step_chunk(self) -> int:
        return min(self.config.max_length, STEP_CHUNK)

    # ------------------------------------------------------------------ driving
    def run(self) -> Progress:
        self.load()
        self.exp.write_state("running", started_us=now_us())
        consolidated.drop(self.exp)  # pair widths may grow now: no stale consolidated copy meanwhile
        # the workers' versions are in the record before any task is submitted
        self._session = {"started_us": now_us(), **session_provenance(self.config), "workers": self.workers}
        self._look_at_new_workers(set(self.worker_threads))
        self.exp.record_session(self._session)
        if self.retry_failed:
            self._reopen_failed_runs()
        try:
            # runs that ended before a crash but were not fully handled
            self._on_run_end(*[st for st in self.runs if st.end is not None])
            finished = False
            while not self.stop.requested:
                self._submit_model_calls()
                self._drain_cpu_queue()
                if not self.in_flight:
                    self._look_at_dirty_runs()
                    waiting = [self.runs[i].not_before for i in self._backoff]
                    if not waiting:
                        finished = True
                        break
                    self.stop.wait(max(0.0, min(waiting) - time.monotonic()))
                    continue
                self._collect(1.0)
                self._tick()
            if not finished:
                self._wind_down()
        except BaseException as exc:
            for fut in self.in_flight:
                fut.cancel()
            for st in self.runs:  # abandoned (the journal has them): the spool may empty for the next experiment
                st.pending.clear()
            try:
                self.exp.journal.close()  # what was appended, durable
                if isinstance(exc, Interrupted):
                    self.exp.write_state("interrupted", reason=exc.reason)
                elif isinstance(exc, KeyboardInterrupt):
                    self.exp.write_state("interrupted", reason="SIGINT")
                else:
                    self.exp.write_state("failed", error=f"{type(exc).__name__}: {exc}")
            except (OSError, LeaseLost) as state_exc:
                # the store itself may be what failed (full, read-only): this write then fails too,
                # and raising it would hide the original error; the dead pid reads as "interrupted"
                log.debug("could not record the state of experiment %s: %s", self.exp.id, state_exc)
            raise
        snap = self.snapshot()
        failed = snap.stop_reasons.get("failed", 0)
        self.exp.journal.close()
        # every data write is done: consolidate before the final state (a crash in between is redone by resume)
        consolidated.write(self.exp)
        if failed:
            self.exp.write_state("failed", error=f"{failed} run(s) failed; see their error in `panicflow experiment status`")
        else:
            self.exp.write_state("complete", completed_us=now_us())
            self.exp.journal.clear()  # everything is in Zarr now
        self._report(force=True)
        return snap

    def _collect(self, timeout: float, deadline: float = math.inf) -> None:
        """Wait up to ``timeout`` for tasks in flight and act on those that ended (results read
        by ``deadline`` at the latest)."""
        done = self.in_flight.ended(timeout)
        if not done and not self.stop.requested:  # nothing ended within the heartbeat interval
            self._requeue_stranded()
        finished = [f for f in done if f.status == "finished"]
        results = self._gather(finished, deadline) if finished else {}
        for fut in done:
            if fut not in results and fut.status in ("lost", "pending", "finished"):
                # finished, but the worker holding its result died before we read it: Dask
                # computes it again (we still hold the future), so wait for it; handled as a
                # failure it made a diagram "error" for good (tests/test_faults.py, worker kill)
                self.in_flight.again(fut)
                continue
            task = self.in_flight.pop(fut)
            self._dirty.update(task.runs)
            self._handle(fut, task, results.get(fut))

    def _wind_down(self) -> None:
        """Stop on request: submit nothing more, let results in flight land (journaled, marked)
        until the grace ends, then raise ``Interrupted`` (``run`` cancels what is left)."""
        stop = self.stop
        self.cpu_queue.clear()  # never submitted: resume submits them again
        if self.in_flight and not stop.hard:
            log.info("stopping (%s): %d tasks in flight get %g s", stop.reason, len(self.in_flight), stop.grace_s)
        while self.in_flight and not stop.hard:
            left = stop.deadline() - time.monotonic()
            if left <= 0:
                break
            self._collect(min(1.0, left), stop.deadline())
            self._report()
        raise Interrupted(self.exp.id, stop.reason or "cancel")

    def _reopen_failed_runs(self) -> None:
        """Give failed runs another go from the step that failed."""
        failed = [st for st in self.runs if st.end is not None and st.end.stop_reason == "failed"]
        if not failed:
            return
        self.exp.journal.append([RunEvent(st.spec.index, "retry", st.n_steps) for st in failed])
        for st in failed:
            # its steps stay in Zarr (materialised when it failed): only the markers are undone
            st.end, st.materialised, st.attempts, st.solo = None, False, 0, False
            self.writer.clear_run_end(st.spec.index)
            for model in list(st.diagrams):
                self.writer.clear_diagram_status(st.spec.index, model)
            st.diagrams.clear()
            self._dirty.add(st.spec.index)

    def _tick(self) -> None:
        self._refresh_cluster()
        now = time.monotonic()
        if now >= self._next_show:
            self._show_running()
        if now - self._last_beat > HEARTBEAT_S:
            self.exp.write_state("running", started_us=now_us())
            self._last_beat = now
        self._report()

    def _show_running(self) -> None:
        """Write the recorded steps of runs still going that Zarr does not have yet (the journal has
        them), grouped so that runs sharing a chunk rewrite it once. Every SHOW_RUNNING_S, or
        after SHOW_SHARE of the time it took, whichever is longer."""
        began = time.monotonic()
        going = sorted((st for st in map(self.runs.__getitem__, self._open) if st.end is None and st.pending),
                       key=lambda st: st.spec.index)
        # SHOW_GROUP runs at a time (a multiple of every layout's runs per chunk, so each chunk is
        # still rewritten once): their pending steps come back from disk a group at a time
        for _, group in itertools.groupby(going, key=lambda st: st.spec.index // SHOW_GROUP):
            group = list(group)
            self.writer.write_rows({st.spec.index: list(st.pending) for st in group})
            for st in group:
                st.mark_flushed()
        took = time.monotonic() - began
        self._next_show = time.monotonic() + max(SHOW_RUNNING_S, took / SHOW_SHARE)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress_cb and (force or now - self._last_progress > 0.5):
            self._last_progress = now
            self.progress_cb(self.snapshot())

    def _look_at_dirty_runs(self) -> None:
        """File the runs whose state changed since the last round (their call came back, failed, was
        lost, their retry time came) where the next round looks: the ready queues, or the backoff set."""
        now = time.monotonic()
        due = [i for i in self._backoff if self.runs[i].not_before <= now]
        self._backoff.difference_update(due)
        self._dirty.update(due)
        for i in self._dirty:
            st = self.runs[i]
            if (model := self._ready_model.pop(i, None)) is not None:
                self._ready[model].pop(i, None)
            if st.end is None:
                self._open.add(i)
            else:
                self._open.discard(i)
            if st.solo and st.end is None:
                self._solo.add(i)
            else:
                self._solo.discard(i)
            if st.end is not None or st.busy:
                continue
            if st.not_before > now:
                self._backoff.add(i)
            elif st.group is None:
                self._ready[st.next_model][i] = None
                self._ready_model[i] = st.next_model
                heapq.heappush(self._oldest[st.next_model], (self._rank[i], i))
        # a group's (group, step) is ready once all its runs there wait: look again at every group a
        # changed run belongs to (one that ended, or whose probe came back, frees the others)
        for group in {self.runs[i].group for i in self._dirty} - {None}:
            for step in {m.n_steps for m in self._members[group] if m.end is None}:
                members = self._group_at(group, step)
                if all(not m.busy and m.not_before <= now for m in members):
                    self._ready_groups[(group, step)] = None
        self._dirty.clear()

    def _group_at(self, group: int, step: int) -> list[RunState]:
        return [m for m in self._members[group] if m.end is None and m.n_steps == step]

    def _submit_model_calls(self) -> None:
        """Submit model calls for the runs that wait: into free slots first, spread over them;
        then, up to ``self.backlog`` more, full batches beyond the slots, so that Dask sees the work that
        waits (an adaptive cluster scales on it, a worker that joins takes from it) while a
        partial batch waits for a slot, and for runs to fill it. The oldest runs first (waves)."""
        self._look_at_dirty_runs()
        if self.stop.requested:
            return
        now = time.monotonic()
        for key in sorted(self._ready_groups, key=lambda k: (self._group_rank[k[0]], k[1])):
            members = self._group_at(*key)
            if not all(not m.busy and m.not_before <= now for m in members):
                del self._ready_groups[key]  # a member was submitted or failed since: it files the key again
                continue
            if self._free_slots() <= 0 and self._backlog_room() <= 0:  # a group is one call, full by definition
                break
            del self._ready_groups[key]
            if members:
                self._submit_group(members)
        while True:
            queues = {m: q for m, q in self._ready.items() if q}
            if not queues:
                return
            free = self._free_slots()
            if free > 0:
                model = max(queues, key=lambda m: len(queues[m]))  # the model most runs are waiting for
                queue = queues[model]
                solo = [i for i in self._solo if i in queue]  # a run retrying alone after its batch kept failing
                if solo:
                    self._submit_invoke(model, [self.runs[min(solo)]])
                    continue
                size = min(self.config.batch_size_for(model), math.ceil(len(queue) / free))
            else:
                full = [m for m, q in queues.items() if len(q) >= self.config.batch_size_for(m)]
                if not full or self._backlog_room() <= 0:
                    return
                model = min(full, key=self._oldest_waiting)
                size = self.config.batch_size_for(model)
            self._submit_invoke(model, self._take_oldest(model, size))  # takes them out of the queue

    def _free_slots(self) -> int:
        return self.max_in_flight - self.in_flight.invokes

    def _backlog_room(self) -> int:
        return self.max_in_flight + self.backlog - self.in_flight.invokes

    def _oldest_waiting(self, model: str) -> int:
        """The rank of the oldest run waiting for ``model`` (stale heap entries dropped)."""
        heap, queue = self._oldest[model], self._ready[model]
        while heap and heap[0][1] not in queue:
            heapq.heappop(heap)
        return heap[0][0] if heap else RANKS

    def _take_oldest(self, model: str, size: int) -> list[RunState]:
        """The ``size`` oldest runs waiting for ``model`` (they leave the queue when submitted)."""
        heap, queue = self._oldest[model], self._ready[model]
        if len(heap) > 4 * len(queue) + 64:  # entries of runs taken otherwise (solo retries): rebuild
            heap[:] = [(self._rank[i], i) for i in queue]
            heapq.heapify(heap)
        taken: dict[int, None] = {}
        while heap and len(taken) < size:
            _, i = heapq.heappop(heap)
            if i in queue:
                taken[i] = None
        return [self.runs[i] for i in taken]

    def _submit_group(self, runs: list[RunState]) -> None:
        """One (group, step) of deterministic batching: the same batches on any cluster, after any resume.

        The group's runs at this step, in run order, in one call. A run whose solo call is a probe (its batch kept failing) is called alone and its output
        discarded; the batch then goes on without the runs whose probe failed.
        """
        runs = sorted(runs, key=lambda st: st.spec.index)
        model = runs[0].next_model
        step = runs[0].n_steps
        probes = [st for st in runs if st.solo]
        if probes:
            for st in probes:
                # a second failure of the batch after every probe passed: the failure is not one
                # input's; commit solo outputs (recorded as batches of 1) rather than loop for ever
                st.probing = st.probed_at != step
                self._submit_invoke(model, [st], probe=st.probing)
            return
        self._submit_invoke(model, runs)  # a group never exceeds a batch of its models (batch_groups)

    def _submit_invoke(self, model: str, batch: list[RunState], probe: bool = False) -> None:
        # unseeded runs get a fresh seed per invocation, recorded with it
        seeds = [secrets.randbelow(2**31) if st.spec.seed == UNSEEDED else st.spec.seed for st in batch]
        inputs = [st.input_for_next() for st in batch]
        for st in batch:
            st.busy = True
            if (m := self._ready_model.pop(st.spec.index, None)) is not None:
                self._ready[m].pop(st.spec.index, None)
        placement = self._placement(model)
        batch_id = uuid.uuid4().hex
        stage = "t2i" if REGISTRY[model].output_kind is Kind.IMAGE else "i2t"
        fut = self.client.submit(
            tasks.invoke_batch, self.store.location, model, inputs, seeds, self.config.batching.invariant,
            key=task_key(stage, model, batch_id), pure=False,
            priority=self._priority("invoke", min(self._rank[st.spec.index] for st in batch)),
            **placement,
        )
        self.in_flight.add(fut, Task(
            "invoke", model, [st.spec.index for st in batch], seeds, frozenset(placement.get("workers", ())),
            batch_id=batch_id, probe=probe,
        ))

    def _gather(self, futures: list[Future], deadline: float = math.inf) -> dict[Future, Any]:
        """Their results in one round trip, or {} after GATHER_TIMEOUT_S (or at ``deadline``).

        A result lost with its worker makes ``gather`` wait until Dask has computed it again,
        for ever if that task is stranded (see ``_requeue_stranded``): the loop must come back
        to requeue it. Futures left out are handled in a later round.
        """
        timeout = max(0.1, min(GATHER_TIMEOUT_S, deadline - time.monotonic()))
        try:
            values = self.client.sync(self.client.gather, futures, callback_timeout=timeout)
        except TimeoutError:
            if not self.stop.requested:
                log.warning("results of %d tasks not back in %s s (a worker died?); waiting for them", len(futures), timeout)
            return {}
        return dict(zip(futures, values))

    def _requeue_stranded(self) -> None:
        """Submit again the tasks restricted to holders that are all gone.

        Dask parks a task whose worker restrictions (even loose ones) cannot be met while no
        worker runs, and never reconsiders it for workers that come back at new addresses (a
        restarted worker): with the only worker, or all at once, killed, the experiment hung
        for ever (tests/test_faults.py, worker kill).
        """
        tied = [(fut, task) for fut, task in self.in_flight.items() if task.workers]
        if not tied:
            return
        alive = set(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        for holders in self.holders.values():
            holders &= alive
        stranded = [(fut, task) for fut, task in tied if not task.workers & alive]
        if not stranded:
            return
        running = {key for keys in self.client.processing().values() for key in keys}
        for fut, task in stranded:
            if fut.key in running or fut.status not in ("pending", "lost"):  # loose: may run or be done elsewhere
                continue
            fut.cancel()
            self.in_flight.pop(fut)
            if task.kind == "invoke":  # never journaled: its runs are simply submitted again
                for i in task.runs:
                    self.runs[i].busy = False
                self._dirty.update(task.runs)
            else:
                self._submit_embed(self.runs[task.runs[0]], task.model)

    # ----------------------------------------------------------------- results
    def _handle(self, fut: Future, task: Task, result: Any = None) -> None:
        if fut.status != "finished":
            exc = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}")
            if task.kind == "invoke":
                self._invoke_failed(task, exc)
                return
            if task.kind == "diagram":  # e.g. a worker killed for memory: record it, go on
                st = self.runs[task.runs[0]]
                error = f"{type(exc).__name__}: {exc}"
                self._record_diagram(st, task.model, _failed_run_result(self.config, error, "error"))
                return
            raise RuntimeError(f"{task.kind} task for run {task.runs[0]} / {task.model} failed: {exc!r}") from exc
        if result is None:
            result = fut.result()
        if isinstance(result, StoreWriteFailed):  # a task's write into a full or read-only store (store_faults.py)
            raise result
        if task.kind == "invoke":
            self._invoke_done(task, result)
        elif task.kind == "embed":
            st = self.runs[task.runs[0]]
            self.writer.mark_embedded(st.spec.index, task.model, result)  # result: when and where it ran
            st.embedded.add(task.model)
            self._submit_diagram(st, task.model)
        else:
            st = self.runs[task.runs[0]]
            self._record_diagram(st, task.model, result)

    def _invoke_done(self, task: Task, result: dict[str, Any]) -> None:
        spec = REGISTRY[task.model]
        if result.get("worker"):
            self.holders[task.model].add(result["worker"])
        if task.probe:  # the input is sound; its step is computed again with its group
            st = self.runs[task.runs[0]]
            st.busy, st.attempts, st.solo, st.probing, st.probed_at = False, 0, False, False, st.n_steps
            return
        records = []
        n = len(task.runs)
        new = result.get("new") or [False] * n  # False: look in the run's history
        for pos, (i, seed, (digest, text)) in enumerate(zip(task.runs, task.seeds, result["outputs"], strict=True)):
            st = self.runs[i]
            records.append(
                StepRecord(
                    run=i, step=st.n_steps, model=task.model, kind=spec.output_kind.value, hash=digest,
                    text=text, seed=seed, started_us=result["started_us"], ended_us=result["ended_us"],
                    parameters_hash=result["parameters_hash"], batch_id=task.batch_id, batch_size=n,
                    batch_position=pos,
                )
            )
        self.exp.journal.append(records)  # recorded before anything depends on it
        self.invocations_by_model[task.model] += len(records)
        ended, full = [], []
        for rec, created in zip(records, new):
            st = self.runs[rec.run]
            st.busy, st.attempts, st.solo = False, 0, False
            st.add(rec, self._first_occurrence(st, rec, created))
            if st.end is not None:
                ended.append(st)
            elif st.n_steps % self._step_chunk == 0:
                full.append(st)
        # runs of one batch often share a chunk: one write of their rows for all of them
        self.writer.write_rows({st.spec.index: list(st.pending) for st in full})
        for st in full:
            st.mark_flushed()
        if ended:
            self._on_run_end(*ended)

    def _invoke_failed(self, task: Task, exc: BaseException) -> None:
        retry = self.config.retry
        batch = [self.runs[i] for i in task.runs]
        for st in batch:
            st.busy = False
            st.attempts += 1
            st.probing = False
        exhausted = max(st.attempts for st in batch) >= retry.max_attempts
        log.warning("%s failed for runs %s (attempt %d): %r", task.model, task.runs, batch[0].attempts, exc)
        if isinstance(exc, PermanentError):
            # retrying cannot heal it (a model not installed, the store missing on a worker), and
            # the cause is the model or the worker, not one input: every run of the call fails now
            self._fail_runs(batch, task.model, exc)
            return
        if exhausted and len(batch) > 1:
            for st in batch:  # find the culprit: every run tries again on its own
                st.solo, st.attempts, st.not_before = True, 0, 0.0
            return
        if exhausted:
            self._fail_runs(batch, task.model, exc)
            return
        delay = retry.backoff_s * 2 ** (batch[0].attempts - 1)
        for st in batch:
            st.not_before = time.monotonic() + delay

    def _first_occurrence(self, st: RunState, rec: StepRecord, created: bool) -> int | None:
        """The earlier step of this seeded run whose output is ``rec``'s, or None.

        An output whose object this call created was never stored before, so it cannot repeat
        anything (every earlier output of the run is in the store before it is journaled). Any
        other is looked up in the run's history: the steps not yet in Zarr, then its Zarr row,
        instead of a per-run set of every hash kept in memory.
        """
        if st.spec.seed == UNSEEDED or created:
            return None
        for earlier in st.pending:
            if earlier.hash == rec.hash:
                return earlier.step
        if st.flushed:
            hits = np.flatnonzero(self.writer.read_hashes(st.spec.index, st.flushed) == rec.hash)
            if hits.size:
                return int(hits[0])
        return None

    def _record_diagram(self, st: RunState, model: str, result) -> None:
        self.writer.write_diagram(st.spec.index, model, result)
        st.diagrams.add(model)
        self.diagram_outcomes[model][status_group(result.status)] += 1

    def _fail_runs(self, batch: list[RunState], model: str, exc: BaseException) -> None:
        events, ended = [], []
        for st in batch:
            error = f"{model} at step {st.n_steps}: {type(exc).__name__}: {exc}"
            events.append(RunEvent(st.spec.index, "failed", st.n_steps, error))
            st.end = RunEnd(st.n_steps, "failed", error=error)
            ended.append(st)
        self.exp.journal.append(events)  # recorded before anything depends on it
        self._on_run_end(*ended)

    def _on_run_end(self, *ended: RunState) -> None:
        """Materialise runs that ended (the rows of all of them, then their ends: one write per array,
        so runs sharing a chunk rewrite it once), then submit their embeddings."""
        fresh = [st for st in ended if not st.materialised]
        self.writer.write_rows({st.spec.index: list(st.pending) for st in fresh})
        for st in fresh:
            st.mark_flushed()
        self.writer.write_run_ends({st.spec.index: st.end for st in fresh})
        for st in fresh:
            st.materialised = True
        for st in ended:
            self._submit_after_end(st)

    def _submit_after_end(self, st: RunState) -> None:
        for model in self.config.embedding_models:
            if st.end.stop_reason == "failed":
                if model not in st.diagrams:
                    self._record_diagram(st, model, _failed_run_result(self.config, st.end.error))
            elif model not in st.embedded:
                self._submit_embed(st, model)
            else:
                self._submit_diagram(st, model)

    def _submit_embed(self, st: RunState, model: str) -> None:
        self._submit(
            "embed", model, st, tasks.embed_run, self.store.location, self.exp.id, st.spec.index, model,
            st.end.length, self.config.batch_size_for(model), getattr(self.exp.lease, "epoch", 0),
        )

    def _submit_diagram(self, st: RunState, model: str) -> None:
        if model in st.diagrams:
            return
        options = self.config.persistence.model_dump()
        self._submit(
            "diagram", model, st, tasks.diagram_run, self.store.location, self.exp.id,
            st.spec.index, model, st.end.length, options,
        )

    def _placement(self, model: str) -> dict[str, Any]:
        """Where a model's task may run: GPU workers for GPU models, its holders first."""
        out: dict[str, Any] = {}
        if self.gpu_cluster and float(REGISTRY[model].extra.get("approx_gpu_gb", 0) or 0) > 0:
            out["resources"] = {"GPU": 1}
        holders = self.holders.get(model)
        if holders:
            # its holders first, while they have a thread for it: Dask queues a loosely restricted
            # task on a busy holder rather than run it elsewhere, so a preference kept regardless
            # left workers that joined later idle (issue 7 item 4: 4 workers, 2 calls at a time)
            room = sum(self.worker_threads.get(w, 1) for w in holders)
            busy = self.in_flight.by_model[model]
            if busy < room:
                out["workers"] = sorted(holders)
                # a preference (an idle worker may still load it), but never beside a resource: Dask's
                # loose restrictions drop the resource too, and its work stealing handed GPU calls to an
                # idle CPU worker, which crashed on them (KeyError: 'GPU'; scripts/benchmark_waves.py).
                # Held to its holders while they have a thread for it, a GPU call still runs soon.
                if "resources" not in out:
                    out["allow_other_workers"] = True
        return out

    def _submit(self, kind: str, model: str, st: RunState, fn, *args) -> None:
        if self.stop.requested:
            return  # stopping: resume submits it (its marker is not written)
        if self._is_cpu_stage(kind, model):
            self.cpu_queue.append((kind, model, st.spec.index, fn, args))
            self._drain_cpu_queue()
            return
        self._submit_now(kind, model, st, fn, *args)

    def _submit_now(self, kind: str, model: str, st: RunState, fn, *args, worker: str | None = None) -> None:
        placement = self._placement(model) if kind == "embed" else {}
        if worker is not None:  # a CPU stage on a GPU cluster: pinned, see _cpu_stage_worker
            placement = {"workers": [worker]}
        fut = self.client.submit(
            fn, *args, key=task_key(kind, model, f"run{st.spec.index}", uuid.uuid4().hex[:8]), pure=False,
            priority=self._priority(kind, self._rank[st.spec.index]), retries=self.config.retry.max_attempts - 1,
            **placement,
        )
        self.in_flight.add(fut, Task(kind, model, [st.spec.index], workers=frozenset(placement.get("workers", ())),
                                     cpu=self._is_cpu_stage(kind, model)))

    @staticmethod
    def _priority(kind: str, rank: int) -> int:
        """Dask's priority of a task of ``kind`` for the run(s) of ``rank``: by stage, then oldest first."""
        return -(STAGE_ORDER[kind] * RANKS + rank)

    def _is_cpu_stage(self, kind: str, model: str) -> bool:
        if kind == "diagram":
            return True
        return kind == "embed" and not (self.gpu_cluster and float(REGISTRY[model].extra.get("approx_gpu_gb", 0) or 0) > 0)

    def _drain_cpu_queue(self) -> None:
        """Submit queued CPU-stage tasks while CPU slots are free (all threads once runs are done)."""
        if not self.cpu_queue or self.stop.requested:
            return
        # runs not ended are idle or have a model call in flight: no scan of every run
        runs_left = bool(self._open)
        slots = self.cpu_slots if runs_left else max(self.cpu_slots, self.all_threads)
        busy = self.in_flight.cpu
        while self.cpu_queue and busy < slots:
            worker = self._cpu_stage_worker(runs_left) if self.gpu_cluster else None
            if self.gpu_cluster and worker is None:
                return  # no thread free that the GPUs' model calls do not need
            kind, model, i, fn, args = self.cpu_queue.popleft()
            st = self.runs[i]
            if kind == "diagram" and model in st.diagrams:
                continue  # recorded meanwhile (its run failed)
            self._submit_now(kind, model, st, fn, *args, worker=worker)
            busy += 1

    def _cpu_stage_worker(self, runs_left: bool) -> str | None:
        """On a GPU cluster, the worker with the most threads free for a CPU stage (CPU workers
        first), or None. While runs remain, each GPU worker keeps one thread for its GPU's model
        calls. The task is pinned there: placed loosely on the CPU workers, Dask's work stealing
        moved diagrams onto a GPU worker until they held every thread of it and the GPU waited
        (scripts/benchmark_starvation.py, docs/performance.md)."""
        used = self.in_flight.cpu_by_worker

        def free(w: str) -> int:
            return self.worker_threads[w] - used[w] - (runs_left and w in self.gpu_workers)

        best = max(self.worker_threads, key=lambda w: (free(w), w not in self.gpu_workers), default=None)
        return best if best is not None and free(best) > 0 else None

    # ----------------------------------------------------------------- summary
    def snapshot(self) -> Progress:
        # every 0.5 s on experiments of 10,000+ runs: passes that Python runs in C (Counter, chain); with the
        # per-model maxima it takes no longer than it did without them (10,000 runs, half ended: about 4 ms)
        models = self.config.embedding_models
        runs = self.runs
        ended = [st for st in runs if st.end is not None]
        every = self.__dict__.get("_snapshot_shapes")  # (network, max_length) of every run: fixed once loaded
        if every is None or every[0] is not runs or every[1] != len(runs):
            every = self._snapshot_shapes = (runs, len(runs), Counter((st.spec.network, st.max_length) for st in runs))
        # (network, length) -> runs: those going at their max_length, those that ended at their length
        shapes = every[2] - Counter((st.spec.network, st.max_length) for st in ended)
        shapes.update((st.spec.network, st.end.length) for st in ended)
        max_by_model: Counter[str] = Counter()
        for (network, length), n in shapes.items():  # step k of a run calls network[k % len(network)]
            k = len(network)
            for j, model in enumerate(network):
                max_by_model[model] += n * max(0, (length - j + k - 1) // k)
        reasons = Counter(st.end.stop_reason for st in ended)
        embedded = Counter(itertools.chain.from_iterable(st.embedded for st in runs))
        diagrams = Counter(itertools.chain.from_iterable(st.diagrams for st in runs))
        return Progress(
            runs=len(runs),
            runs_ended=len(ended),
            invocations=sum(self.invocations_by_model.values()),
            invocations_max=sum(length * n for (_, length), n in shapes.items()),
            embeddings={m: embedded[m] for m in models},
            diagrams={m: diagrams[m] for m in models},
            stop_reasons=dict(reasons),
            runs_to_embed=len(runs) - reasons["failed"],
            invocations_by_model=dict(self.invocations_by_model),
            diagram_outcomes={m: dict(self.diagram_outcomes[m]) for m in models},
            invocations_max_by_model=dict(max_by_model),
        )


def batch_groups(config: ExperimentConfig) -> list[int | None]:
    """Per run, its deterministic batching group, or None where it is batched freely.

    Runs of one network, in run order, ``group_size`` at a time, at most the smallest batch
    size of the network's models (the default), so a group is always one model call: were it
    cut into several calls, runs ending at different steps would shift the cuts depending on
    timing. A function of the config alone: that is what makes a fixed-seed run's batches the
    same everywhere.
    """
    batching = config.batching
    out: list[int | None] = []
    counters: dict[tuple[str, ...], int] = defaultdict(int)
    group_ids: dict[tuple[tuple[str, ...], int], int] = {}
    for spec in config.runs():
        deterministic = batching.mode == "deterministic" or (batching.mode == "auto" and spec.seed != UNSEEDED)
        if not deterministic:
            out.append(None)
            continue
        largest = min(config.batch_size_for(m) for m in spec.network)
        size = min(batching.group_size or largest, largest)
        k = counters[spec.network]
        counters[spec.network] += 1
        out.append(group_ids.setdefault((spec.network, k // size), len(group_ids)))
    return out


def wave_ranks(config: ExperimentConfig) -> list[int]:
    """Per run, its place in the order runs are served: the first run of every network, then the
    second of every network, and so on (runs are networks x seeds x prompts, so the first waves
    hold every network's first seed over its prompts). Served oldest first, runs end in waves
    while the others wait, and the first finished runs cover every network: what a researcher
    looks at while a weeks-long experiment goes on (issue 20 item 6). Which run goes first changes
    only when a step is computed, never what it computes (fixed-seed groups are ``batch_groups``')."""
    position: dict[tuple[str, ...], int] = defaultdict(int)
    networks: dict[tuple[str, ...], int] = {}
    keys = []
    for spec in config.runs():
        keys.append((position[spec.network], networks.setdefault(spec.network, len(networks)), spec.index))
        position[spec.network] += 1
    ranks = [0] * len(keys)
    for rank, key in enumerate(sorted(keys)):
        ranks[key[2]] = rank
    return ranks


# Dask's key_split (the dashboard's task-group names, the task stream, performance reports) keeps
# the first "-"-separated word whole and stops at the first later word with a digit: the stage and
# the model therefore share the first word, joined by "_", and a model's own "-" (all-MiniLM-L6-v2)
# becomes "_" too: t2i_DummyT2I, i2t_DummyI2T, embed_all_MiniLM_L6_v2, diagram_DummyText. Plain
# ASCII, so that what a user types to filter the dashboard finds them (docs/clusters.md).
STAGES = ("t2i", "i2t", "embed", "diagram")


def task_prefix(stage: str, model: str) -> str:
    """What the dashboard shows for a model's tasks of one stage: ``<stage>_<model>``, ``-`` as ``_``."""
    return f"{stage}_{model.replace('-', '_')}"


def task_key(stage: str, model: str, *parts: str) -> str:
    """``<stage>_<model>-<parts...>``, named so that ``key_split`` gives ``task_prefix(stage, model)``."""
    return "-".join([task_prefix(stage, model), *parts])


def _failed_run_result(config: ExperimentConfig, error: str, status: str = "run_failed"):
    from ..analysis.topology import DiagramResult
    import numpy as np

    maxdim = config.persistence.maxdim
    return DiagramResult(
        status=status, reason=error, n_points=0, n_points_used=0, maxdim_used=-1,
        diagrams=[np.zeros((0, 2)) for _ in range(maxdim + 1)], entropy=np.full(maxdim + 1, np.nan),
    )

