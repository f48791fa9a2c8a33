"""The coordinator: drives every run of an experiment with Dask futures.

Runs are independent and their steps sequential. The coordinator keeps, per
model, the runs whose next step needs that model, and submits them in batches
(up to the model's batch size) whenever a slot is free, so workers stay busy
as results come back and no step waits for a global barrier. When a run ends
it is materialised into Zarr and its embeddings are submitted at once; when
an embedding is written the run's persistence diagram is submitted.

Crash safety: a batch's results go to the journal (one atomic file) before
the coordinator acts on them, and it submits step k+1 of a run only after
step k is journaled. ``load`` rebuilds the exact same state from the journal
and the Zarr markers, so a resumed experiment continues as if never stopped.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from distributed import Client, Future, wait

from ..config import UNSEEDED, ExperimentConfig, RunSpec
from ..models import REGISTRY, Kind
from ..store import Store
from ..store.experiment import (
    HEARTBEAT_S,
    STEP_CHUNK,
    Experiment,
    ExperimentWriter,
    RunEnd,
    now_us,
    read_markers,
)
from ..store.journal import RunEvent, StepRecord
from . import tasks

log = logging.getLogger(__name__)

# Dask runs higher priorities first: keep the model calls flowing, then embed, then diagrams
PRIORITY = {"invoke": 30, "embed": 20, "diagram": 10}
GATHER_TIMEOUT_S = 10.0  # results are small: longer means one is being computed again (a worker died)


@dataclass
class RunState:
    spec: RunSpec
    max_length: int
    steps: list[StepRecord] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # output hash -> first step (seeded runs)
    end: RunEnd | None = None
    flushed: int = 0  # steps already materialised in Zarr
    materialised: bool = False  # stop_reason written
    busy: bool = False  # a model call for this run is in flight
    attempts: int = 0  # failed attempts at the current step
    solo: bool = False  # retry alone after its batch kept failing
    not_before: float = 0.0  # monotonic time before which it is not retried
    embedded: set[str] = field(default_factory=set)
    diagrams: set[str] = field(default_factory=set)

    @property
    def next_model(self) -> str:
        return self.spec.model_at(len(self.steps))

    def add(self, rec: StepRecord) -> None:
        """Append one step and decide whether the run ends with it."""
        self.steps.append(rec)
        if self.spec.seed != UNSEEDED:
            first = self.seen.get(rec.hash)
            if first is not None:
                self.end = RunEnd(len(self.steps), "loop", first, rec.step - first)
                return
            self.seen[rec.hash] = rec.step
        if len(self.steps) >= self.max_length:
            self.end = RunEnd(len(self.steps), "length")

    def input_for_next(self) -> str:
        if not self.steps:
            return self.spec.prompt
        last = self.steps[-1]
        return last.text if last.kind == Kind.TEXT.value else last.hash


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


@dataclass
class _Task:
    kind: str  # invoke | embed | diagram
    model: str
    runs: list[int]
    seeds: list[int] = field(default_factory=list)
    workers: frozenset[str] = frozenset()  # the holders it was (loosely) restricted to, if any


class Coordinator:
    def __init__(
        self,
        client: Client,
        store: Store,
        exp: Experiment,
        progress: Callable[[Progress], None] | None = None,
        max_in_flight: int | None = None,
        retry_failed: bool = False,
    ) -> None:
        self.retry_failed = retry_failed
        self.client = client
        self.store = store
        self.exp = exp
        self.config: ExperimentConfig = exp.config
        self.writer = ExperimentWriter(exp)
        self.progress_cb = progress
        threads = sum(client.nthreads().values()) or 1
        # two batches per worker thread: one running, one queued so the worker never idles
        self.max_in_flight = max_in_flight or 2 * threads
        self.in_flight: dict[Future, _Task] = {}
        # model -> workers that ran it: they hold it resident, so its batches go there first
        self.holders: dict[str, set[str]] = defaultdict(set)
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        # a cluster whose workers declare a GPU resource (LocalCUDACluster, --gpus, or the user's):
        # models that need a GPU run only there, one batch per GPU at a time
        self.gpu_cluster = any("GPU" in (w.get("resources") or {}) for w in workers.values())
        self.runs: list[RunState] = []
        self._last_beat = 0.0
        self._last_progress = 0.0

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Rebuild every run's state from the journal and the Zarr markers."""
        cfg = self.config
        self.runs = [RunState(spec, cfg.max_length) for spec in cfg.runs()]
        markers = read_markers(self.exp)
        by_run: dict[int, dict[int, StepRecord]] = defaultdict(dict)
        failures: dict[int, RunEvent] = {}
        for rec in self.exp.journal.read():
            if isinstance(rec, StepRecord):
                by_run[rec.run].setdefault(rec.step, rec)  # a step is recorded once; keep the first
            elif rec.event == "failed":
                failures[rec.run] = rec
            elif rec.event == "retry":
                failures.pop(rec.run, None)
        for st in self.runs:
            i = st.spec.index
            records = by_run.get(i, {})
            for step in range(len(records)):
                if step not in records or st.end is not None:
                    break
                st.add(records[step])
            if st.end is None and i in failures:
                st.end = RunEnd(len(st.steps), "failed", error=failures[i].error)
            stored_reason = str(markers["stop_reason"][i])
            if stored_reason == "failed" and i not in failures:
                stored_reason = ""  # retried after it failed: the journal's retry event wins
            if stored_reason:
                st.materialised = True
                st.flushed = len(st.steps)
                if st.end is None:  # journal already cleared: trust the materialised run
                    st.end = RunEnd(int(markers["length"][i]), stored_reason)
            # else st.flushed stays 0: rewriting from the start is idempotent and heals a torn flush
            for m in cfg.embedding_models:
                if markers["embedded"][m][i]:
                    st.embedded.add(m)
                if str(markers["diagram_status"][m][i]):
                    st.diagrams.add(m)

    @property
    def _step_chunk(self) -> int:
        return min(self.config.max_length, STEP_CHUNK)

    # ------------------------------------------------------------------ driving
    def run(self) -> Progress:
        self.load()
        self.exp.write_state("running", started_us=now_us())
        if self.retry_failed:
            self._reopen_failed_runs()
        try:
            for st in self.runs:  # runs that ended before a crash but were not fully handled
                if st.end is not None:
                    self._on_run_end(st)
            while True:
                self._submit_model_calls()
                if not self.in_flight:
                    waiting = [st.not_before for st in self._waiting_runs()]
                    if not waiting:
                        break
                    time.sleep(max(0.0, min(waiting) - time.monotonic()))
                    continue
                try:
                    done, _ = wait(list(self.in_flight), timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within the heartbeat interval
                    done = set()
                    self._requeue_stranded()
                finished = [f for f in done if f.status == "finished"]
                results = self._gather(finished) if finished else {}
                for fut in done:
                    if fut not in results and fut.status in ("lost", "pending", "finished"):
                        # finished, but the worker holding its result died before we read it: Dask
                        # computes it again (we still hold the future), so wait for it; handled as a
                        # failure it made a diagram "error" for good (tests/test_faults.py, worker kill)
                        continue
                    self._handle(fut, self.in_flight.pop(fut), results.get(fut))
                self._tick()
        except BaseException as exc:
            for fut in self.in_flight:
                fut.cancel()
            try:
                if isinstance(exc, KeyboardInterrupt):
                    self.exp.write_state("interrupted")
                else:
                    self.exp.write_state("failed", error=f"{type(exc).__name__}: {exc}")
            except OSError as state_exc:
                # the store itself may be what failed (full, read-only): this write then fails too,
                # and raising it would hide the original error; the dead pid reads as "interrupted"
                log.debug("could not record the state of experiment %s: %s", self.exp.id, state_exc)
            raise
        snap = self.snapshot()
        failed = snap.stop_reasons.get("failed", 0)
        if failed:
            self.exp.write_state("failed", error=f"{failed} run(s) failed; see their error in `panicflow experiment status`")
        else:
            self.exp.write_state("complete", completed_us=now_us())
            self.exp.journal.clear()  # everything is in Zarr now
        self._report(force=True)
        return snap

    def _reopen_failed_runs(self) -> None:
        """Give failed runs another go from the step that failed."""
        failed = [st for st in self.runs if st.end is not None and st.end.stop_reason == "failed"]
        if not failed:
            return
        self.exp.journal.append([RunEvent(st.spec.index, "retry", len(st.steps)) for st in failed])
        for st in failed:
            st.end, st.materialised, st.flushed, st.attempts, st.solo = None, False, 0, 0, False
            self.writer.clear_run_end(st.spec.index)
            for model in list(st.diagrams):
                self.writer.clear_diagram_status(st.spec.index, model)
            st.diagrams.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_beat > HEARTBEAT_S:
            self.exp.write_state("running", started_us=now_us())
            self._last_beat = now
        self._report()

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress_cb and (force or now - self._last_progress > 0.2):
            self._last_progress = now
            self.progress_cb(self.snapshot())

    def _waiting_runs(self) -> list[RunState]:
        return [st for st in self.runs if st.end is None and not st.busy]

    def _submit_model_calls(self) -> None:
        now = time.monotonic()
        ready: dict[str, list[RunState]] = defaultdict(list)
        for st in self._waiting_runs():
            if st.not_before <= now:
                ready[st.next_model].append(st)
        while ready:
            invokes = sum(1 for t in self.in_flight.values() if t.kind == "invoke")
            free = self.max_in_flight - invokes
            if free <= 0:
                return
            model = max(ready, key=lambda m: len(ready[m]))  # the model most runs are waiting for
            queue = ready[model]
            solo = [st for st in queue if st.solo]
            if solo:
                batch = [solo[0]]
            else:
                size = min(self.config.batch_size_for(model), math.ceil(len(queue) / free))
                batch = queue[:size]
            for st in batch:
                queue.remove(st)
            if not queue:
                del ready[model]
            self._submit_invoke(model, batch)

    def _submit_invoke(self, model: str, batch: list[RunState]) -> None:
        # unseeded runs get a fresh seed per invocation, recorded with it
        seeds = [secrets.randbelow(2**31) if st.spec.seed == UNSEEDED else st.spec.seed for st in batch]
        inputs = [st.input_for_next() for st in batch]
        for st in batch:
            st.busy = True
        placement = self._placement(model)
        fut = self.client.submit(
            tasks.invoke_batch, self.store.location, model, inputs, seeds,
            key=f"invoke-{model}-{uuid.uuid4().hex}", pure=False, priority=PRIORITY["invoke"],
            **placement,
        )
        self.in_flight[fut] = _Task(
            "invoke", model, [st.spec.index for st in batch], seeds, frozenset(placement.get("workers", ()))
        )

    def _gather(self, futures: list[Future]) -> dict[Future, Any]:
        """Their results in one round trip, or {} after GATHER_TIMEOUT_S.

        A result lost with its worker makes ``gather`` wait until Dask has computed it again,
        for ever if that task is stranded (see ``_requeue_stranded``): the loop must come back
        to requeue it. Futures left out are handled in a later round.
        """
        try:
            values = self.client.sync(self.client.gather, futures, callback_timeout=GATHER_TIMEOUT_S)
        except TimeoutError:
            log.warning("results of %d tasks not back in %s s (a worker died?); waiting for them", len(futures), GATHER_TIMEOUT_S)
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
            del self.in_flight[fut]
            if task.kind == "invoke":  # never journaled: its runs are simply submitted again
                for i in task.runs:
                    self.runs[i].busy = False
            else:
                self._submit_embed(self.runs[task.runs[0]], task.model)

    # ----------------------------------------------------------------- results
    def _handle(self, fut: Future, task: _Task, result: Any = None) -> None:
        if fut.status != "finished":
            exc = fut.exception() if fut.status == "error" else RuntimeError(f"task {fut.status}")
            if task.kind == "invoke":
                self._invoke_failed(task, exc)
                return
            if task.kind == "diagram":  # e.g. a worker killed for memory: record it, go on
                st = self.runs[task.runs[0]]
                error = f"{type(exc).__name__}: {exc}"
                self.writer.write_diagram(st.spec.index, task.model, _failed_run_result(self.config, error, "error"))
                st.diagrams.add(task.model)
                return
            raise RuntimeError(f"{task.kind} task for run {task.runs[0]} / {task.model} failed: {exc!r}") from exc
        if result is None:
            result = fut.result()
        if task.kind == "invoke":
            self._invoke_done(task, result)
        elif task.kind == "embed":
            st = self.runs[task.runs[0]]
            self.writer.mark_embedded(st.spec.index, task.model)
            st.embedded.add(task.model)
            self._submit_diagram(st, task.model)
        else:
            st = self.runs[task.runs[0]]
            self.writer.write_diagram(st.spec.index, task.model, result)
            st.diagrams.add(task.model)

    def _invoke_done(self, task: _Task, result: dict[str, Any]) -> None:
        spec = REGISTRY[task.model]
        if result.get("worker"):
            self.holders[task.model].add(result["worker"])
        records = []
        for i, seed, (digest, text) in zip(task.runs, task.seeds, result["outputs"], strict=True):
            st = self.runs[i]
            records.append(
                StepRecord(
                    run=i, step=len(st.steps), model=task.model, kind=spec.output_kind.value, hash=digest,
                    text=text, seed=seed, started_us=result["started_us"], ended_us=result["ended_us"],
                    parameters_hash=result["parameters_hash"],
                )
            )
        self.exp.journal.append(records)  # recorded before anything depends on it
        for rec in records:
            st = self.runs[rec.run]
            st.busy, st.attempts, st.solo = False, 0, False
            st.add(rec)
            if st.end is not None:
                self._on_run_end(st)
            elif len(st.steps) % self._step_chunk == 0:
                self.writer.write_steps(rec.run, st.steps[st.flushed :])
                st.flushed = len(st.steps)

    def _invoke_failed(self, task: _Task, exc: BaseException) -> None:
        retry = self.config.retry
        batch = [self.runs[i] for i in task.runs]
        for st in batch:
            st.busy = False
            st.attempts += 1
        exhausted = max(st.attempts for st in batch) >= retry.max_attempts
        log.warning("%s failed for runs %s (attempt %d): %r", task.model, task.runs, batch[0].attempts, exc)
        if exhausted and len(batch) > 1:
            for st in batch:  # find the culprit: every run tries again on its own
                st.solo, st.attempts, st.not_before = True, 0, 0.0
            return
        if exhausted:
            st = batch[0]
            error = f"{task.model} at step {len(st.steps)}: {type(exc).__name__}: {exc}"
            self.exp.journal.append([RunEvent(st.spec.index, "failed", len(st.steps), error)])
            st.end = RunEnd(len(st.steps), "failed", error=error)
            self._on_run_end(st)
            return
        delay = retry.backoff_s * 2 ** (batch[0].attempts - 1)
        for st in batch:
            st.not_before = time.monotonic() + delay

    def _on_run_end(self, st: RunState) -> None:
        i = st.spec.index
        if not st.materialised:
            self.writer.write_steps(i, st.steps[st.flushed :])
            st.flushed = len(st.steps)
            self.writer.write_run_end(i, st.end)
            st.materialised = True
        for model in self.config.embedding_models:
            if st.end.stop_reason == "failed":
                if model not in st.diagrams:
                    self.writer.write_diagram(i, model, _failed_run_result(self.config, st.end.error))
                    st.diagrams.add(model)
            elif model not in st.embedded:
                self._submit_embed(st, model)
            else:
                self._submit_diagram(st, model)

    def _submit_embed(self, st: RunState, model: str) -> None:
        self._submit(
            "embed", model, st, tasks.embed_run, self.store.location, self.exp.id, st.spec.index, model,
            st.end.length, self.config.batch_size_for(model),
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
        if self.holders.get(model):
            out["workers"] = sorted(self.holders[model])
            out["allow_other_workers"] = True  # a preference: an idle worker may still load it
        return out

    def _submit(self, kind: str, model: str, st: RunState, fn, *args) -> None:
        placement = self._placement(model) if kind == "embed" else {}
        fut = self.client.submit(
            fn, *args, key=f"{kind}-{model}-run{st.spec.index}-{uuid.uuid4().hex[:8]}", pure=False,
            priority=PRIORITY[kind], retries=self.config.retry.max_attempts - 1, **placement,
        )
        self.in_flight[fut] = _Task(kind, model, [st.spec.index], workers=frozenset(placement.get("workers", ())))

    # ----------------------------------------------------------------- summary
    def snapshot(self) -> Progress:
        models = self.config.embedding_models
        ended = [st for st in self.runs if st.end is not None]
        return Progress(
            runs=len(self.runs),
            runs_ended=len(ended),
            invocations=sum(len(st.steps) for st in self.runs),
            invocations_max=sum(st.end.length if st.end else st.max_length for st in self.runs),
            embeddings={m: sum(m in st.embedded for st in self.runs) for m in models},
            diagrams={m: sum(m in st.diagrams for st in self.runs) for m in models},
            stop_reasons=dict(Counter(st.end.stop_reason for st in ended)),
            runs_to_embed=sum(1 for st in self.runs if not (st.end and st.end.stop_reason == "failed")),
        )


def _failed_run_result(config: ExperimentConfig, error: str, status: str = "run_failed"):
    from ..analysis.topology import DiagramResult
    import numpy as np

    maxdim = config.persistence.maxdim
    return DiagramResult(
        status=status, reason=error, n_points=0, n_points_used=0, maxdim_used=-1,
        diagrams=[np.zeros((0, 2)) for _ in range(maxdim + 1)], entropy=np.full(maxdim + 1, np.nan),
    )

