"""The store's run chunking at scale: one run per chunk against the chunking of new experiments.

One run per chunk is every experiment's layout before ``run_chunks``; new experiments get
``RUN_CHUNKS`` (panicflow/store/experiment.py). Both side by side, in one process.

Part 1, for each number of runs and each layout, an experiment laid out by ``Experiment.create``
(networks [[DummyT2I, DummyI2T]], one prompt, N seeds, one embedder, persistence maxdim 1):

* creation time;
* objects (files) and bytes under data.zarr once every array a finished experiment has is
  written with plausible values (``--steps`` steps per run), written in blocks of whole chunks.
  Embedding vectors are not written: one run per chunk in both layouts (their task is the one
  writer of its chunks), they add N x models x ceil(steps/1024) objects to either;
* ``read_markers`` (what every resume, status and open of a running experiment reads) and
  ``open_experiment`` of the finished experiment with its ``stop_reason`` and ``length`` read.

"objects when finished" counts the chunk grids (every chunk or shard of every array and every
zarr.json, the vectors' chunks aside: an upper bound, as a chunk holding only fill values, such as
a run's empty `error`, is not stored); "objects written" is what is on disk. One run per chunk
writes N objects per array: beyond ``--old-max`` runs only the four arrays ``read_markers`` reads
are written (reported as "markers only"; objects written and bytes are theirs), beyond
``--old-markers-max`` nothing; the new layout is written whole up to ``--new-max`` runs, its
markers only beyond.

Part 2, the cost of a run end for R runs per object along ``run`` in the (run, step) arrays (as
``RunChunks.rows_of`` lays them out: shards of R one-run chunks, plain chunks for R = 1): 256
runs x 1024 steps (texts of 8-15 words on odd steps, as a captioner writes; images on even),
ending in random order, each written as the coordinator writes it (``ExperimentWriter.write_rows``
then ``write_run_ends``): milliseconds and bytes rewritten per run end (the size of every chunk
file the run's writes replaced), with ``text`` and ``output_hash`` apart, and the (run, step)
objects a 10^6-run experiment of 1024 steps would have.

Part 3, the same for the (run,) arrays with chunks of M runs: a run end's writes (``write_run_ends``)
in a finished experiment of 16,384 runs, and ``read_markers`` of it.

Part 4, what writing the steps of running runs costs (``Coordinator._show_running``, every 30 s):
D runs going, 10 new steps each (a second show, into chunks already written), in both layouts.

Part 5, Zarr sharding against plain chunks for ``text``: zarr 3.1 reads a whole shard and writes it
whole again to change part of it (``ShardingCodec._encode_partial_single``), re-encoding only the
inner chunks written: the bytes rewritten are those of a chunk of as many runs, the time is not.

    .venv/bin/python scripts/benchmark_layout.py --quick            # a minute or two
    .venv/bin/python scripts/benchmark_layout.py --runs 10000 100000    # about 40 minutes on 2 loaded cores
    .venv/bin/python scripts/benchmark_layout.py --runs 1000000 --parts 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from panicflow.config import validate_config  # noqa: E402
from panicflow.store import Store  # noqa: E402
from panicflow.store.experiment import (  # noqa: E402
    INVOCATION_ARRAYS,
    ONE_RUN_PER_CHUNK,
    RUN_CHUNKS,
    Experiment,
    ExperimentWriter,
    RunChunks,
    RunEnd,
    read_markers,
)
from panicflow.store.journal import StepRecord  # noqa: E402

LAYOUTS = {"one run per chunk": ONE_RUN_PER_CHUNK, "new": RUN_CHUNKS}
rng = np.random.default_rng(0)
WORDS = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(3, 10))) for _ in range(2000)]


def config(n_runs: int, steps: int):
    return validate_config({
        "name": f"layout-{n_runs}", "networks": [["DummyT2I", "DummyI2T"]], "seeds": list(range(n_runs)),
        "prompts": ["a lighthouse in a storm"], "embedding_models": ["DummyText"], "max_length": steps,
        "persistence": {"maxdim": 1},
    })


def plausible(name: str, shape: tuple[int, ...], dtype, fill) -> np.ndarray:
    """Values of the kind a finished experiment stores in array ``name``."""
    n = int(np.prod(shape))
    if name in ("output_hash", "parameters_hash", "batch_id"):
        return np.array([rng.bytes(32).hex() for _ in range(n)]).reshape(shape)
    if name == "text":
        return np.array([" ".join(rng.choice(WORDS, size=rng.integers(8, 16))) if k % 2 else ""
                         for k in range(n)]).reshape(shape)
    if name in ("model", "kind", "stop_reason", "status", "reason", "error", "worker"):
        return np.array(["DummyI2T", "length", "ok", ""])[rng.integers(0, 4, n)].reshape(shape)
    if np.dtype(dtype) == bool:
        return rng.random(shape) < 0.9
    if np.dtype(dtype).kind == "f":
        return rng.random(shape)
    return rng.integers(0, 1 << 30, shape).astype(dtype)


MARKERS = ("stop_reason", "length", "embeddings/DummyText/done", "diagrams/DummyText/status")  # what read_markers reads


def populate(exp: Experiment, only: tuple[str, ...] | None = None) -> None:
    """Every array but the creator's and the vectors (or those in ``only``), as a finished experiment has
    them, in blocks of whole chunks along ``run`` (values are generated per block: 10^6 runs of hashes do
    not fit)."""
    g = exp.group()
    arrays = []

    def walk(group, prefix=""):
        for name, node in group.members():
            if hasattr(node, "shape"):
                arrays.append((prefix + name, node))
            else:
                walk(node, f"{prefix}{name}/")

    walk(g)
    for path, a in arrays:
        name = path.rsplit("/", 1)[-1]
        if path in ("run", "step", "network", "seed", "prompt") or name == "vector" or only and path not in only:
            continue
        per = a.chunks[0] * max(1, 65536 // (a.chunks[0] * int(np.prod(a.shape[1:]))))
        for b in range(0, a.shape[0], per):
            block = slice(b, min(b + per, a.shape[0]))
            a[block] = plausible(name, (block.stop - block.start, *a.shape[1:]), a.dtype, a.fill_value)


def tree_size(path: str) -> tuple[int, int]:
    files = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
    return files, size


def finished_objects(exp: Experiment) -> int:
    """Objects of the experiment once finished, vectors aside: every chunk of every array and every
    zarr.json (what ``objects`` counts where everything is written; arrays of fill values store none)."""
    g = exp.group(read_only=True)
    arrays = {}

    def walk(group, prefix=""):
        for name, node in group.members():
            if hasattr(node, "shape"):
                arrays[prefix + name] = node
            else:
                walk(node, f"{prefix}{name}/")

    walk(g)
    groups = 1 + sum(1 for _ in g.groups()) + sum(1 for _, sub in g.groups() for _ in sub.groups())
    stored = {path: int(np.prod([-(-n // c) for n, c in zip(a.shape, a.shards or a.chunks)])) for path, a in arrays.items()}
    return groups + sum(1 + (0 if path.endswith("/vector") else stored[path]) for path in arrays)


def part1(runs: list[int], steps: int, full_max: dict, markers_max: dict, where: str) -> None:
    import panicflow

    print(f"\n## Part 1: layouts at scale ({steps} steps per run, vectors not written)\n")
    print("| runs | layout | run chunks (marks, rows) | create s | objects when finished | objects written | MiB "
          "| read_markers s | open + stop_reason, length s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in runs:
        cfg = config(n, steps)
        for label, rc in LAYOUTS.items():
            folder = tempfile.mkdtemp(dir=where)
            st = Store(f"{folder}/store", create=True)
            t0 = time.perf_counter()
            exp = Experiment.create(st.root, f"layout-{n}", cfg, rc)
            created = time.perf_counter() - t0
            fitted = rc.for_runs(n)
            cells = [f"{n:,}", label, f"{fitted.marks}, {fitted.rows}", f"{created:.2f}", f"{finished_objects(exp):,}"]
            only = MARKERS if n > full_max[label] else None
            if only and n > markers_max[label]:
                print("| " + " | ".join(cells + ["not written", "", "", ""]) + " |", flush=True)
                shutil.rmtree(folder)
                continue
            if only:
                cells[1] += " (markers only)"
            populate(exp, only)
            exp.write_state("complete")
            files, size = tree_size(st.root.zarr_store(exp.data_key).root)
            fresh = Experiment(st.root, exp.id)
            t0 = time.perf_counter()
            read_markers(fresh)
            markers = time.perf_counter() - t0
            t0 = time.perf_counter()
            ds = panicflow.open_experiment(exp.id, store=st)["/"].ds
            ds.stop_reason.values, ds.length.values
            opened = time.perf_counter() - t0
            cells += [f"{files:,}", f"{size / 2**20:,.1f}", f"{markers:.2f}", f"{opened:.2f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
            shutil.rmtree(folder)


def part2(rows_per_chunk: list[int], where: str, n_runs: int = 256, steps: int = 1024) -> None:
    print(f"\n## Part 2: a run end, for R runs per object of the (run, step) arrays ({n_runs} runs x {steps} steps)\n")
    print("| R | ms per run end | kB rewritten per run end (all arrays) | of which text | of which output_hash "
          "| (run, step) objects at 10^6 runs x 1024 steps |")
    print("|---|---|---|---|---|---|")
    cfg = config(n_runs, steps)
    runs = []
    for r in range(n_runs):
        recs = []
        for k in range(steps):
            text = " ".join(rng.choice(WORDS, size=rng.integers(8, 16))) if k % 2 else None
            recs.append(StepRecord(
                run=r, step=k, model="DummyI2T" if k % 2 else "DummyT2I", kind="text" if k % 2 else "image",
                hash=rng.bytes(32).hex(), text=text, seed=r, started_us=1_700_000_000_000_000 + k,
                ended_us=1_700_000_000_000_000 + k + 5, parameters_hash=rng.bytes(32).hex(), batch_id=rng.bytes(16).hex(),
                batch_size=4, batch_position=r % 4))
        runs.append(recs)
    order = rng.permutation(n_runs)
    for R in rows_per_chunk:
        folder = tempfile.mkdtemp(dir=where)
        st = Store(f"{folder}/store", create=True)
        exp = Experiment.create(st.root, "amplification", cfg, RunChunks(marks=RUN_CHUNKS.marks, rows=R))
        data = Path(st.root.zarr_store(exp.data_key).root)
        writer = ExperimentWriter(exp)
        total = {"all": 0, "text": 0, "output_hash": 0}
        t0 = time.perf_counter()
        for r in order:
            writer.write_rows({int(r): runs[r]})
            writer.write_run_ends({int(r): RunEnd(steps, "length")})
            for name in INVOCATION_ARRAYS:
                chunk = data / name / "c" / str(r // R) / "0"
                size = chunk.stat().st_size if chunk.exists() else 0
                total["all"] += size
                if name in total:
                    total[name] += size
        took = time.perf_counter() - t0
        objects = len(INVOCATION_ARRAYS) * -(-1_000_000 // R)
        print(f"| {R} | {1e3 * took / n_runs:.1f} | {total['all'] / n_runs / 1e3:,.0f} | {total['text'] / n_runs / 1e3:,.0f} "
              f"| {total['output_hash'] / n_runs / 1e3:,.0f} | {objects:,} |", flush=True)
        shutil.rmtree(folder)


def part3(marks_per_chunk: list[int], where: str, n_runs: int = 16_384, ends: int = 256) -> None:
    print(f"\n## Part 3: a run end, for M runs per chunk of the (run,) arrays ({n_runs:,} runs, {ends} run ends)\n")
    print("| M | ms per run end (5 run-end arrays) | kB rewritten per run end | read_markers s | (run,) objects at 10^6 runs |")
    print("|---|---|---|---|---|")
    cfg = config(n_runs, 1)
    order = rng.permutation(n_runs)[:ends]
    for M in marks_per_chunk:
        folder = tempfile.mkdtemp(dir=where)
        st = Store(f"{folder}/store", create=True)
        exp = Experiment.create(st.root, "marks", cfg, RunChunks(marks=M, rows=RUN_CHUNKS.rows))
        populate(exp, MARKERS + ("loop_start", "loop_period", "error"))  # a finished experiment's, then ends again
        data = Path(st.root.zarr_store(exp.data_key).root)
        writer = ExperimentWriter(exp)
        rewritten = 0
        t0 = time.perf_counter()
        for r in order:
            writer.write_run_ends({int(r): RunEnd(1, "length")})
            for name in ("length", "loop_start", "loop_period", "error", "stop_reason"):
                chunk = data / name / "c" / str(r // M)
                rewritten += chunk.stat().st_size if chunk.exists() else 0
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_markers(Experiment(st.root, exp.id))
        markers = time.perf_counter() - t0
        print(f"| {M:,} | {1e3 * took / ends:.1f} | {rewritten / ends / 1e3:.2f} | {markers:.2f} | {-(-1_000_000 // M):,} per array |",
              flush=True)
        shutil.rmtree(folder)


def part4(going: list[int], where: str, new_steps: int = 10, steps: int = 1024) -> None:
    print(f"\n## Part 4: showing running runs (Coordinator._show_running): D runs, {new_steps} new steps each\n")
    print("| D runs going | layout | s per show | chunks rewritten |")
    print("|---|---|---|---|")
    for d in going:
        cfg = config(d, steps)
        for label, rc in LAYOUTS.items():
            folder = tempfile.mkdtemp(dir=where)
            st = Store(f"{folder}/store", create=True)
            exp = Experiment.create(st.root, "show", cfg, rc)
            writer = ExperimentWriter(exp)
            took = []
            for first in (0, new_steps):  # the first show writes into empty chunks, the second into written ones
                rows = {r: [StepRecord(run=r, step=k, model="DummyI2T", kind="text", hash=rng.bytes(32).hex(),
                                       text=" ".join(rng.choice(WORDS, size=12)), seed=r, started_us=1, ended_us=2,
                                       parameters_hash="p", batch_id="b", batch_size=1, batch_position=0)
                            for k in range(first, first + new_steps)] for r in range(d)}
                t0 = time.perf_counter()
                writer.write_rows(rows)
                took.append(time.perf_counter() - t0)
            chunks = len(INVOCATION_ARRAYS) * -(-d // rc.for_runs(d).rows)
            print(f"| {d:,} | {label} | {took[1]:.2f} | {chunks:,} |", flush=True)
            shutil.rmtree(folder)


def part5(shard_runs: list[int], where: str, n_runs: int = 256, steps: int = 1024) -> None:
    """Zarr sharding (zarr 3.1) against plain chunks of as many runs, for ``text``: a shard of R runs with
    inner chunks of one run, the same codecs (zstd, crc32c) inside."""
    import zarr

    from panicflow.store.experiment import chunk_compressors

    print(f"\n## Part 5: `text` in plain chunks of R runs or in shards of R runs of 1-run inner chunks ({n_runs} runs x {steps} steps)\n")
    print("| R | layout | ms per run end | kB rewritten per run end | ms to read one run |")
    print("|---|---|---|---|---|")
    rows = [np.array([" ".join(rng.choice(WORDS, size=rng.integers(8, 16))) if k % 2 else "" for k in range(steps)])
            for _ in range(n_runs)]
    order = rng.permutation(n_runs)
    for R in shard_runs:
        for sharded in (False, True):
            folder = tempfile.mkdtemp(dir=where)
            layout = {"chunks": (1, steps), "shards": (R, steps)} if sharded else {"chunks": (R, steps)}
            a = zarr.create_array(zarr.storage.LocalStore(folder), name="text", shape=(n_runs, steps), dtype=str,
                                  fill_value="", compressors=chunk_compressors(str), **layout)
            rewritten = 0
            t0 = time.perf_counter()
            for r in order:
                a[r, :] = rows[r]
                rewritten += Path(folder, "text", "c", str(r // R), "0").stat().st_size
            took = time.perf_counter() - t0
            t0 = time.perf_counter()
            for r in range(0, n_runs, max(1, n_runs // 32)):
                a[r]
            one = (time.perf_counter() - t0) / len(range(0, n_runs, max(1, n_runs // 32)))
            print(f"| {R} | {'shards' if sharded else 'chunks'} | {1e3 * took / n_runs:.1f} | {rewritten / n_runs / 1e3:,.0f} "
                  f"| {1e3 * one:.1f} |", flush=True)
            shutil.rmtree(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--steps", type=int, default=16, help="steps per run in part 1 (default 16)")
    ap.add_argument("--old-max", type=int, default=10_000, help="write one-run-per-chunk experiments whole up to this many runs")
    ap.add_argument("--old-markers-max", type=int, default=100_000,
                    help="beyond --old-max, write their markers up to this many runs (then nothing)")
    ap.add_argument("--new-max", type=int, default=100_000, help="write new-layout experiments whole up to this many runs "
                                                                 "(then their markers only)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64], help="runs per chunk tried in part 2")
    ap.add_argument("--marks", type=int, nargs="+", default=[1, 256, 1024, 4096, 16384], help="runs per chunk tried in part 3")
    ap.add_argument("--going", type=int, nargs="+", default=[100, 1000], help="runs going at once in part 4")
    ap.add_argument("--shards", type=int, nargs="+", default=[16, 64], help="runs per shard tried in part 5")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="which parts to run (default all)")
    ap.add_argument("--quick", action="store_true", help="a dry run: 2,000 runs (1,000 written whole one run per "
                                                         "chunk), parts 2 to 4 small")
    ap.add_argument("--dir", default=None, help="where the experiments are written (default: a temporary folder)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.old_max, args.old_markers_max, args.going = [2_000], 1_000, 2_000, [64]
    small = {"n_runs": 32} if args.quick else {}
    where = tempfile.mkdtemp(prefix="panicflow-layout-", dir=args.dir)
    try:
        print(f"RUN_CHUNKS = {RUN_CHUNKS}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        full_max = {"one run per chunk": args.old_max, "new": args.new_max}
        markers_max = {"one run per chunk": args.old_markers_max, "new": 10**9}
        parts = {1: lambda: part1(args.runs, args.steps, full_max, markers_max, where),
                 2: lambda: part2(args.rows, where, **small),
                 3: lambda: part3(args.marks, where, **({"n_runs": 2_048, "ends": 32} if args.quick else {})),
                 4: lambda: part4(args.going, where), 5: lambda: part5(args.shards, where, **small)}
        for k in args.parts:
            parts[k]()
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
