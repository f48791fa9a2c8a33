"""How long an experiment has left: one estimate for every surface (issue 20 item 4).

The terminal bars, the scheduler's ``/panicflow`` page and ``/metrics``, ``panicflow experiment
status --json`` and the report page all compute the estimate here, from the same inputs, so
they agree. Pure: only the standard library (no distributed, xarray or pandas), so it can run
in the scheduler, the coordinator, a CLI reading the store, or a test.

Inputs:

* the work done and at most to do, from a snapshot with the names of ``status --json``
  (``dashboard.SNAPSHOT_KEYS``): ``work_left(snapshot)`` gives, per stage and model,
  what is left:

  - ``invocations``: per generative model, at most ``invocations_max_by_model`` minus
    ``invocations_by_model`` (a run still going may make up to ``max_length`` steps; one that
    ended made its length; step k of a run calls ``network[k % len(network)]``);
  - ``embeddings``: per embedding model, runs that did not fail minus runs embedded;
  - ``diagrams``: per embedding model, runs minus runs with a persistence diagram (a failed
    run's is recorded at once);

* rates per stage and model over a recent window (``WINDOW_S``): from successive snapshots
  (``Window``: the terminal bars, the scheduler's plugin) or from the times the store
  recorded (``rates_from_counts``: ``status --json`` counts the steps, embeddings and diagrams
  that ended in the window).

``estimate(left, rates)`` combines them. Stages overlap: runs end in waves while others still
go, and a run is embedded, then given its diagram, as soon as it ends. So each stage finishes
no sooner than the stage it waits on: invocations finish in ``max(left / rate)`` over their
models; embeddings of a model in ``max(left / rate, invocations' time)``; that model's
diagrams in ``max(left / rate, its embeddings' time)``; the experiment when its last stage
does. A stage with work left and no measured rate yet (nothing of it ended in the window:
before the first runs end, embeddings and diagrams have none) is not guessed: it is named in
``unknown``, ``partial`` is true, and ``seconds_left`` is a lower bound from the stages that
have a rate (None when none has).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping

STAGES = ("invocations", "embeddings", "diagrams")
WINDOW_S = 60.0  # rates are measured over the last minute
MIN_SPAN_S = 2.0  # a window shorter than this measures no rate yet


def done_counts(snapshot: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per stage and model, the work done so far (a snapshot with ``status --json`` names)."""
    return {
        "invocations": {str(m): int(n) for m, n in (snapshot.get("invocations_by_model") or {}).items()},
        "embeddings": {str(m): int(n) for m, n in (snapshot.get("embeddings") or {}).items()},
        "diagrams": {str(m): int(n) for m, n in (snapshot.get("persistence_diagrams") or {}).items()},
    }


def work_left(snapshot: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per stage and model, the work left at most (see the module's docstring)."""
    done = done_counts(snapshot)
    runs = int(snapshot.get("runs") or 0)
    failed = int(snapshot.get("runs_failed") or 0)
    max_by_model = snapshot.get("invocations_max_by_model") or {}
    if max_by_model:
        invocations = {str(m): max(0, int(n) - done["invocations"].get(str(m), 0)) for m, n in max_by_model.items()}
    elif "invocations_max" in snapshot:  # a snapshot without the per-model maxima: one line for all models
        invocations = {"all": max(0, int(snapshot["invocations_max"]) - int(snapshot.get("invocations") or 0))}
    else:
        invocations = {}
    return {
        "invocations": invocations,
        "embeddings": {m: max(0, runs - failed - n) for m, n in done["embeddings"].items()},
        "diagrams": {m: max(0, runs - n) for m, n in done["diagrams"].items()},
    }


def rates_from_counts(counts: Mapping[str, Mapping[str, int]], seconds: float) -> dict[str, dict[str, float]]:
    """Rates per stage and model from what ended in the last ``seconds`` ({} if too short to say)."""
    if not seconds >= MIN_SPAN_S:
        return {}
    return {stage: {str(m): int(n) / seconds for m, n in per_model.items()} for stage, per_model in counts.items()}


class Window:
    """Successive snapshots of the last ``window_s`` seconds, and the rates they show."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, dict[str, dict[str, int]]]] = deque()

    def add(self, t: float, snapshot: Mapping[str, Any]) -> None:
        self.samples.append((t, done_counts(snapshot)))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def clear(self) -> None:
        self.samples.clear()

    def span(self) -> float:
        return self.samples[-1][0] - self.samples[0][0] if len(self.samples) >= 2 else 0.0

    def rates(self) -> dict[str, dict[str, float]]:
        """Per stage and model, work done per second over the window ({} until it spans ``MIN_SPAN_S``)."""
        dt = self.span()
        if dt < MIN_SPAN_S:
            return {}
        (_, first), (_, last) = self.samples[0], self.samples[-1]
        return {stage: {m: max(0, n - first[stage].get(m, 0)) / dt for m, n in last[stage].items()} for stage in STAGES}


def estimate(left: Mapping[str, Mapping[str, int]], rates: Mapping[str, Mapping[str, float]],
             window_s: float = WINDOW_S) -> dict[str, Any]:
    """Seconds left, per stage and model and in all (see the module's docstring).

    Returns ``{"seconds_left", "partial", "unknown", "window_s", "stages"}``. ``stages[stage]`` has
    ``left`` (summed over models), ``per_second`` (the measured rates summed; None: none measured),
    ``seconds_left`` (when the stage will be done, from now, waiting on the stage before it),
    ``partial`` and ``by_model``: per model the same ``left``, ``per_second``, ``seconds_left`` and
    ``partial``. Where ``partial``, ``seconds_left`` is a lower bound (the work left there, or before
    it, has no measured rate yet) and None where not even that is known. 0 once nothing is left.
    """
    unknown: list[str] = []
    stages: dict[str, Any] = {}
    for stage in STAGES:
        per_model = left.get(stage) or {}
        stage_rates = rates.get(stage) or {}
        by_model: dict[str, Any] = {}
        for model, n in per_model.items():
            rate = stage_rates.get(model)
            rate = float(rate) if rate is not None and math.isfinite(rate) and rate > 0 else None
            wait, wait_partial = _upstream(stages, stage, model)  # the stage before must be done first
            if n <= 0:
                seconds, partial = 0.0, False
            elif rate is not None:
                seconds, partial = max(n / rate, wait or 0.0), wait_partial
            else:  # not guessed: at least as long as what it waits on
                seconds, partial = wait, True
                if stage not in unknown:
                    unknown.append(stage)
            by_model[model] = {"left": int(n), "per_second": _round(rate, 4), "seconds_left": _round(seconds, 1),
                               "partial": partial}
        rows = list(by_model.values())
        known = [r["seconds_left"] for r in rows if r["seconds_left"] is not None]
        measured = [r["per_second"] for r in rows if r["per_second"] is not None]
        stages[stage] = {
            "left": sum(r["left"] for r in rows),
            "per_second": _round(sum(measured), 4) if measured else None,
            "seconds_left": max(known) if known else (None if any(r["partial"] for r in rows) else 0.0),
            "partial": any(r["partial"] for r in rows),
            "by_model": by_model,
        }
    known_total = [s["seconds_left"] for s in stages.values() if s["seconds_left"] is not None]
    if any(s["left"] > 0 and s["seconds_left"] is None for s in stages.values()) and not known_total:
        total: float | None = None
    else:
        total = max(known_total, default=0.0)
    return {"seconds_left": total, "partial": bool(unknown), "unknown": unknown, "window_s": window_s,
            "stages": stages}


def _upstream(stages: Mapping[str, Any], stage: str, model: str) -> tuple[float | None, bool]:
    """When the work a stage's model waits on is done, and whether that is a lower bound: every
    model's invocations for embeddings, the same embedder's embeddings for diagrams."""
    if stage == "embeddings":
        rows = list(stages.get("invocations", {}).get("by_model", {}).values())
    elif stage == "diagrams":
        row = stages.get("embeddings", {}).get("by_model", {}).get(model)
        rows = [row] if row else []
    else:
        return None, False
    known = [r["seconds_left"] for r in rows if r["seconds_left"] is not None]
    return (max(known) if known else None), any(r["partial"] for r in rows)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(float(x), digits)


def seconds_text(seconds: float | None) -> str:
    """``1h 02m``, ``3m 20s``, ``45s``; ``?`` for None."""
    if seconds is None:
        return "?"
    s = int(math.ceil(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def _part(eta: Mapping[str, Any], stage: str | None, model: str | None) -> tuple[float | None, bool]:
    """``(seconds_left, partial)`` of everything, of one ``stage``, or of one stage's ``model``."""
    part: Mapping[str, Any] = eta
    if stage is not None:
        part = (eta.get("stages") or {}).get(stage) or {}
        if model is not None:
            part = (part.get("by_model") or {}).get(model) or {}
    return part.get("seconds_left"), bool(part.get("partial"))


def describe(eta: Mapping[str, Any] | None, stage: str | None = None, model: str | None = None) -> str:
    """One line for people: ``about 3m 20s left``, ``at least 3m 20s left (no rate yet: diagrams)``,
    ``done``, ``unknown (no rate yet: invocations)``; of everything, or of one ``stage``, or of one
    stage's ``model``."""
    if not eta:
        return "unknown"
    seconds, partial = _part(eta, stage, model)
    upto = STAGES.index(stage) + 1 if stage in STAGES else len(STAGES)
    why = [s for s in (eta.get("unknown") or []) if s in STAGES[:upto]] if partial else []
    note = f" (no rate yet: {', '.join(why)})" if why else ""
    if seconds is None:
        return "unknown" + note
    if seconds == 0 and not partial:
        return "done"
    return f"{'at least' if partial else 'about'} {seconds_text(seconds)} left{note}"


def for_state(eta: Mapping[str, Any] | None, state: str) -> str:
    """``describe`` while running; ``done`` once complete or failed (no work left); else ``not running``."""
    if state == "running":
        return describe(eta)
    return "done" if state in ("complete", "failed") else f"not running ({state})"


def brief(eta: Mapping[str, Any] | None, stage: str | None = None, model: str | None = None) -> str:
    """``describe`` in a few characters, for a progress bar's column: ``~3m 20s``, ``≥3m 20s``, ``?``, ``done``."""
    if not eta:
        return "?"
    seconds, partial = _part(eta, stage, model)
    if seconds is None:
        return "?"
    if seconds == 0 and not partial:
        return "done"
    return f"{'≥' if partial else '~'}{seconds_text(seconds)}"


__all__ = ["MIN_SPAN_S", "STAGES", "WINDOW_S", "Window", "brief", "describe", "for_state", "done_counts", "estimate", "rates_from_counts",
           "seconds_text", "work_left"]
