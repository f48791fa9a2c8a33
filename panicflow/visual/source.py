"""What the exports read: an experiment's finished runs and their pictures, streamed from the store.

A *picture* is one image step of a run with its caption: the text steps that follow it,
up to the next image (with the usual text-to-image / image-to-text networks, the caption
the image-to-text model wrote of that image). Steps are read ``BLOCK`` at a time from Zarr
(a run's chunk is 1024 steps), so a run of any length is never held whole in memory;
images are fetched from the object store one at a time, checked against their hash.
Only finished runs (with a ``stop_reason``) are shown: their rows are final (docs/store.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import UserError
from ..store import Experiment, Store, default_location
from ..store.objects import decode_image

BLOCK = 256
RunSelection = str | Sequence[int] | None


@dataclass(frozen=True)
class RunInfo:
    run: int
    network: tuple[str, ...]
    seed: int
    prompt: str
    length: int
    stop_reason: str
    loop_start: int
    loop_period: int

    @property
    def network_label(self) -> str:
        return " → ".join(self.network)

    @property
    def label(self) -> str:
        seed = "unseeded" if self.seed == -1 else f"seed {self.seed}"
        return f"run {self.run} · {self.network_label} · {seed}"

    @property
    def ending(self) -> str:
        if self.stop_reason == "loop":
            return f"{self.length} steps, a loop from step {self.loop_start} (period {self.loop_period})"
        if self.stop_reason == "length":
            return f"{self.length} steps (the maximum)"
        return f"{self.stop_reason} after {self.length} steps"


@dataclass(frozen=True)
class Picture:
    run: int
    step: int
    model: str
    seed: int
    hash: str
    caption: str  # the texts after this image, up to the next one ("" if none)


class Source:
    """One experiment of one store, opened read-only."""

    def __init__(self, experiment_id: str, store: str | os.PathLike | Store | None = None) -> None:
        self.store = store if isinstance(store, Store) else Store(str(store) if store is not None else default_location())
        self.exp: Experiment = self.store.experiment(experiment_id)
        self.config = self.exp.config
        g = self.exp.group(read_only=True)
        self._arrays = {name: g[name] for name in ("kind", "output_hash", "text", "model", "invocation_seed")}
        self._ends = {name: g[name] for name in ("stop_reason", "length", "loop_start", "loop_period")}
        self.n_runs = int(g["run"].shape[0])
        self._finished: np.ndarray | None = None  # every run's, once something needed them all

    @property
    def id(self) -> str:
        return self.exp.id

    # ------------------------------------------------------------------ runs
    def select(self, runs: RunSelection = None) -> list[int]:
        """Run numbers from ``runs`` ("0,3,7-9", a list, or None for every finished run), checked."""
        chosen = parse_runs(runs, self.n_runs)
        if chosen is None:
            chosen = [int(r) for r in np.flatnonzero(self.finished_runs())]
            if not chosen:
                raise UserError(f"experiment {self.id} has no finished runs yet; `panicflow experiment status {self.id}` shows its progress")
            return chosen
        unfinished = [info.run for info in self.run_info(chosen) if not info.stop_reason]
        if unfinished:
            raise UserError(f"--runs: run {unfinished[0]} of experiment {self.id} has not finished yet; choose finished runs")
        return chosen

    def finished_runs(self) -> np.ndarray:
        """A bool per run: has it ended (its ``stop_reason`` written)?"""
        if self._finished is None:
            self._finished = self._ends["stop_reason"][:] != ""
        return self._finished

    def finished(self, run: int) -> bool:
        if self._finished is not None:
            return bool(self._finished[run])
        return str(self._ends["stop_reason"][run]) != ""

    def run_info(self, runs: Sequence[int]) -> list[RunInfo]:
        """Labels of ``runs``: network, seed and prompt from the config (runs are networks x seeds x
        prompts, in that order), the ending from the runs' own chunks of the per-run arrays."""
        if not len(runs):
            return []
        index = np.asarray(runs, dtype=np.int64)
        ends = {name: a.oindex[index] for name, a in self._ends.items()}  # only these runs' chunks
        cfg = self.config
        n_seeds, n_prompts = len(cfg.seeds), len(cfg.prompts)
        out = []
        for i, r in enumerate(runs):
            reason = str(ends["stop_reason"][i])
            out.append(RunInfo(
                run=int(r), network=tuple(cfg.networks[r // (n_seeds * n_prompts)]), seed=int(cfg.seeds[(r // n_prompts) % n_seeds]),
                prompt=cfg.prompts[r % n_prompts], length=int(ends["length"][i]) if reason else 0, stop_reason=reason,
                loop_start=int(ends["loop_start"][i]), loop_period=int(ends["loop_period"][i]),
            ))
        return out

    # -------------------------------------------------------------- pictures
    def _steps(self, run: int, start: int, stop: int) -> Iterator[tuple[int, str, str, str, str, int]]:
        """(step, kind, hash, text, model, seed) of steps start..stop-1, read BLOCK steps at a time."""
        a = self._arrays
        for lo in range(start, stop, BLOCK):
            hi = min(stop, lo + BLOCK)
            cols = [a[k][run, lo:hi] for k in ("kind", "output_hash", "text", "model", "invocation_seed")]
            for i, (kind, digest, text, model, seed) in enumerate(zip(*(c.tolist() for c in cols))):
                yield lo + i, kind, digest, text, model, int(seed)

    def _groups(self, info: RunInfo, start: int = 0) -> Iterator[tuple[tuple | None, list[tuple[int, str]]]]:
        """((step, hash, model, seed) of an image or None before the first, [(step, text)] after it)."""
        image, texts = None, []
        for step, kind, digest, text, model, seed in self._steps(info.run, start, info.length):
            if kind == "image":
                if image is not None or texts:
                    yield image, texts
                image, texts = (step, digest, model, seed), []
            else:
                texts.append((step, text))
        if image is not None or texts:
            yield image, texts

    def pictures(self, info: RunInfo, start: int = 0) -> Iterator[Picture]:
        """The run's pictures from step ``start`` on, in order."""
        for image, texts in self._groups(info, start):
            if image is not None:
                step, digest, model, seed = image
                yield Picture(run=info.run, step=step, model=model, seed=seed, hash=digest,
                              caption="\n".join(t for _, t in texts if t))

    def shown(self, info: RunInfo) -> Iterator[tuple[int, str | None, str]]:
        """(step, image hash, caption) for every step: an image step with its caption, a text
        step with the image it was written from (None before the first image) and itself."""
        for image, texts in self._groups(info):
            if image is not None:
                yield image[0], image[1], "\n".join(t for _, t in texts if t)
            for step, text in texts:
                yield step, image[1] if image is not None else None, text

    def picture_count(self, info: RunInfo) -> int:
        a = self._arrays["kind"]
        return sum(int(np.count_nonzero(a[info.run, lo:min(info.length, lo + BLOCK)] == "image"))
                   for lo in range(0, info.length, BLOCK))

    def last_picture(self, info: RunInfo) -> Picture | None:
        """The run's last picture, reading only its last blocks."""
        start = max(0, info.length - BLOCK)
        while True:
            found = None
            for found in self.pictures(info, start):
                pass
            if found is not None or start == 0:
                return found
            start = max(0, start - BLOCK)

    # ---------------------------------------------------------------- images
    def image_bytes(self, digest: str) -> bytes:
        return self.store.objects.get_bytes(digest, verify=True)

    def image(self, digest: str) -> Image.Image:
        return decode_image(self.image_bytes(digest))


def parse_runs(runs: RunSelection, n_runs: int) -> list[int] | None:
    """``"0,3,7-9"`` or a sequence of ints as sorted unique run numbers; None stays None."""
    if runs is None:
        return None
    if isinstance(runs, str):
        chosen: set[int] = set()
        for part in (p.strip() for p in runs.split(",")):
            if not part:
                continue
            try:
                lo, _, hi = part.partition("-")
                first, last = int(lo), int(hi or lo)
            except ValueError:
                raise UserError(f"--runs: expected run numbers and ranges like 0,3,7-9, got {runs!r}") from None
            if last < first:
                raise UserError(f"--runs: the range {part!r} is empty; write it low-high")
            chosen.update(range(first, last + 1))
    else:
        chosen = {int(r) for r in runs}
    if not chosen:
        raise UserError("--runs: no runs given")
    bad = [r for r in sorted(chosen) if not 0 <= r < n_runs]
    if bad:
        raise UserError(f"--runs: there is no run {bad[0]}; the experiment has runs 0-{n_runs - 1}")
    return sorted(chosen)
