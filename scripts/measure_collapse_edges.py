"""Time giotto-ph's ``collapse_edges`` False vs True on dummy-model trajectory clouds.

A run alternates DummyT2I and DummyI2T (max_length counts both), exactly as the
scheduler chains them: a fixed seed stops at the first output equal to an earlier
one (that output is kept); seed -1 draws a fresh seed every step and never stops
early. Each run's texts go through DummyText/DummyText2 and its images through
DummyVision/DummyVision2, giving one cloud per embedder. Every diagram is computed
in a subprocess with a time cap, so a pathological cloud reports "timeout"
instead of hanging the script.

    .venv/bin/python scripts/measure_collapse_edges.py [--timeout 60] [--maxdim 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from panicflow.models.dummy import DummyI2T, DummyT2I, DummyText, DummyText2, DummyVision, DummyVision2

PROMPTS = ["a red balloon over the sea", "the last lighthouse"]
FIXED_SEEDS = [42, 7]

# Runs in the child: time one ripser_parallel call and save its diagrams.
_CHILD = """
import sys, time, numpy as np
from gph import ripser_parallel
pts = np.load(sys.argv[1]); collapse = sys.argv[2] == "1"; maxdim = int(sys.argv[3])
t = time.perf_counter()
dgms = ripser_parallel(pts, maxdim=maxdim, collapse_edges=collapse, n_threads=1, return_generators=False)["dgms"]
t = time.perf_counter() - t
np.savez(sys.argv[4], t=t, *dgms)
"""


def run_chain(prompt: str, seed: int, max_length: int, draw: np.random.Generator) -> tuple[list, list]:
    """(texts, images) of one run; the prompt itself is not an output."""
    t2i, i2t = DummyT2I(), DummyI2T()
    texts, images, seen = [], [], set()
    current = prompt
    for step in range(max_length):
        s = int(draw.integers(0, 2**31 - 1)) if seed == -1 else seed
        if step % 2 == 0:
            current = t2i.generate([current], [s])[0]
            images.append(current)
            key = ("image", current.tobytes())
        else:
            current = i2t.generate([current], [s])[0]
            texts.append(current)
            key = ("text", current)
        if seed != -1:
            if key in seen:
                break
            seen.add(key)
    return texts, images


def time_diagram(points: np.ndarray, collapse: bool, maxdim: int, timeout: float, tmp: Path):
    """(seconds or None on timeout, diagrams or None)."""
    src, dst = tmp / "pts.npy", tmp / "dgms.npz"
    np.save(src, points)
    dst.unlink(missing_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-c", _CHILD, str(src), "1" if collapse else "0", str(maxdim), str(dst)],
            check=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, None
    with np.load(dst) as z:
        return float(z["t"]), [z[f"arr_{i}"] for i in range(maxdim + 1)]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Equal as multisets of bars (the order of bars may differ)."""
    return all(
        x.shape == y.shape and np.array_equal(x[np.lexsort(x.T[::-1])], y[np.lexsort(y.T[::-1])])
        for x, y in zip(a, b)
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--maxdim", type=int, default=2)
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 1000])
    args = ap.parse_args()
    embedders = {"DummyText": (DummyText(), 0), "DummyText2": (DummyText2(), 0),
                 "DummyVision": (DummyVision(), 1), "DummyVision2": (DummyVision2(), 1)}
    draw = np.random.default_rng(2024)  # seed -1 runs: reproducible fresh seeds
    runs, seen_runs = [], set()
    for max_length in args.lengths:
        for prompt, fixed in zip(PROMPTS, FIXED_SEEDS):
            for seed in (fixed, -1):
                texts, images = run_chain(prompt, seed, max_length, draw)
                if (prompt, seed, len(texts) + len(images)) in seen_runs:
                    continue  # a fixed-seed run that looped before 200 steps is the same at 1000
                seen_runs.add((prompt, seed, len(texts) + len(images)))
                runs.append((max_length, prompt, seed, texts, images))

    header = f"{'embedder':<13}{'seed':>5}{'len':>6}{'steps':>6}{'n':>5}{'distinct':>9}{'False s':>9}{'True s':>9}  same"
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as d:
        for max_length, prompt, seed, texts, images in runs:
            for name, (model, uses_images) in embedders.items():
                pts = model.embed(images if uses_images else texts)
                distinct = len(np.unique(pts, axis=0))
                res = [time_diagram(pts, c, args.maxdim, args.timeout, Path(d)) for c in (False, True)]
                times = [f"{t:9.2f}" if t is not None else f"{'timeout':>9}" for t, _ in res]
                ok = "n/a" if None in (res[0][1], res[1][1]) else ("yes" if same(res[0][1], res[1][1]) else "NO")
                kind = "-1" if seed == -1 else "fixed"
                print(f"{name:<13}{kind:>5}{max_length:>6}{len(texts) + len(images):>6}{len(pts):>5}"
                      f"{distinct:>9}{times[0]}{times[1]}  {ok}", flush=True)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
