"""The coordinator's tasks in flight: their futures, what each is, and the counts it asks for.

Model calls beyond the cluster's threads wait in Dask (issue 20 item 5: so that an adaptive
cluster sees the work that waits), so hundreds of tasks can be in flight. Two things therefore
cost nothing per task:

* the counts every submission asks for (model calls in flight, tasks per model, CPU-stage tasks
  per worker) are kept as tasks come and go, instead of a scan of every task;
* tasks that ended are found with one ``distributed.as_completed`` that every future joins
  once, instead of ``wait(FIRST_COMPLETED)`` over all of them each round (measured: 1.4 ms per
  round with 64 futures, 11 ms with 256, 87 ms with 1,024).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from distributed import Future, as_completed


@dataclass
class Task:
    kind: str  # invoke | embed | diagram
    model: str
    runs: list[int]
    seeds: list[int] = field(default_factory=list)
    workers: frozenset[str] = frozenset()  # the holders it was (loosely) restricted to, if any
    batch_id: str = ""  # invoke: the id recorded with each of its invocations
    probe: bool = False  # invoke: a solo probe whose output is discarded (deterministic batching)
    cpu: bool = False  # a CPU stage (diagram, embedder without a GPU): counted against the CPU slots


class InFlight:
    """Futures in flight and their tasks, with running counts; ``ended(timeout)`` gives those done."""

    def __init__(self, loop) -> None:
        self.tasks: dict[Future, Task] = {}
        self.invokes = 0  # model calls
        self.by_model: Counter[str] = Counter()  # model calls and embeddings, per model (a model held resident)
        self.cpu = 0  # CPU-stage tasks
        self.cpu_by_worker: Counter[str] = Counter()  # CPU-stage tasks pinned to each worker
        self._loop = loop  # the client's: two experiments in one process may use two clients
        self._watch: as_completed | None = None  # made at the first ended()
        self._new: list[Future] = []  # added since the last ended()

    def __len__(self) -> int:
        return len(self.tasks)

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def __contains__(self, fut: object) -> bool:
        return fut in self.tasks

    def __iter__(self) -> Iterator[Future]:
        return iter(list(self.tasks))

    def items(self) -> list[tuple[Future, Task]]:
        return list(self.tasks.items())

    def values(self) -> list[Task]:
        return list(self.tasks.values())

    def add(self, fut: Future, task: Task) -> None:
        self.tasks[fut] = task
        self._count(task, 1)
        self._new.append(fut)  # watched from the next ended(): one update for the round's submissions

    @property
    def _done(self) -> as_completed:
        if self._watch is None:
            self._watch = as_completed(loop=self._loop)
        return self._watch

    def pop(self, fut: Future) -> Task:
        task = self.tasks.pop(fut)
        self._count(task, -1)
        return task

    def again(self, fut: Future) -> None:
        """Watch ``fut`` again: it was done, but its result was lost with its worker and Dask
        computes it again (we still hold the future)."""
        self._new.append(fut)

    def _count(self, task: Task, sign: int) -> None:
        if task.kind == "invoke":
            self.invokes += sign
        if task.kind != "diagram":
            self.by_model[task.model] += sign
        if task.cpu:
            self.cpu += sign
            for w in task.workers:
                self.cpu_by_worker[w] += sign

    def ended(self, timeout: float) -> list[Future]:
        """The futures in flight that ended (finished, erred, cancelled) since the last call,
        waiting up to ``timeout`` seconds for a first one."""
        done = self._done
        if self._new:
            done.update(self._new)
            self._new = []
        deadline = time.monotonic() + timeout
        while not done.has_ready():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # as_completed notifies thread_condition after queueing a future: checked under it, no wake-up is missed
            with done.thread_condition:
                if not done.has_ready():
                    done.thread_condition.wait(min(left, 0.25))
        return [f for f in done.next_batch(block=False) if f in self.tasks]
