#!/usr/bin/env python
"""Throughput and peak memory of `panicflow import legacy` on generated databases of the earlier tool.

Each database is written with tests/legacy_util.py in the tool's schema and formats, sized by
its images: unseeded runs of two-model networks (``DummyT2I``/``DummyI2T``, 1000 steps, so 500
images and 500 captions a run), every image a distinct 256x256 noise picture (about 192 KiB as
lossless WEBP, written at the lowest effort so that generating a gigabyte takes minutes), a
random 768-d float32 vector per output for ``DummyText`` (captions) and ``DummyVision``
(images), one persistence diagram per run and model (H0 computed by giotto-ph; H1 and H2
empty, which the importer reads as it reads any), and one clustering of the ``DummyText``
vectors. The import runs in a fresh process (``python -m panicflow import legacy --json``);
its wall time, CPU time and peak resident memory (``ru_maxrss`` of that child, from ``wait4``) are reported with the
rows per second, one JSON line per database size. Peak memory that stays the same from the
smallest database to the largest is what "streams" means here.

    nice -n 10 .venv/bin/python scripts/benchmark_legacy_import.py 0.25 1.0 [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STEPS = 1000  # steps per run
IMAGE_BYTES = 196_700  # a 256x256 noise picture as lossless WEBP


def generate(path: Path, gigabytes: float, seed: int = 0) -> dict:
    """A database of about ``gigabytes`` GB; returns what it holds."""
    import gph
    from PIL import Image

    from legacy_util import LegacyWriter, diagram_blob, persim_entropy

    runs = max(1, round(gigabytes * 1e9 / (IMAGE_BYTES * STEPS / 2)))
    rng = np.random.default_rng(seed)
    w = LegacyWriter(path, constraints=True)
    prompts = [f"prompt {k}" for k in range(runs)]
    exp = w.experiment([["DummyT2I", "DummyI2T"]], [-1], prompts, ["DummyText", "DummyVision"], STEPS)
    text_ids = []
    for prompt in prompts:
        run = w.run(exp, ["DummyT2I", "DummyI2T"], -1, prompt, STEPS)
        prev, vectors = None, {"DummyText": [], "DummyVision": []}
        for seq in range(STEPS):
            if seq % 2 == 0:
                out = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
                prev = w.invocation(run, seq, "DummyT2I", out, -1, prev, fast=True)
                model = "DummyVision"
            else:
                prev = w.invocation(run, seq, "DummyI2T", f"caption {seq} of {prompt}: {random.Random(seq).random()}", -1, prev)
                model = "DummyText"
            v = rng.random(768, dtype=np.float32)
            eid = w.embedding(prev, model, v)
            vectors[model].append(v)
            if model == "DummyText":
                text_ids.append(eid)
        for model, vs in vectors.items():
            h0 = gph.ripser_parallel(np.asarray(vs), maxdim=0, n_threads=1)["dgms"][0]
            dgms = [h0, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)]
            w.diagram(run, model, diagram_blob({"dgms": dgms, "entropy": persim_entropy(dgms)}))
        w.conn.commit()
    cid = w.clustering("DummyText")
    medoids = text_ids[:: max(1, len(text_ids) // 20)][:20]
    for k, eid in enumerate(text_ids):
        w.assign(eid, cid, None if k % 10 == 0 else medoids[k % len(medoids)])
    w.close()
    return {"runs": runs, "invocations": runs * STEPS}


def measure(db: Path, store: Path) -> dict:
    """Import ``db`` in a fresh process; its wall time, own peak RSS (wait4) and the report's figures."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out, err = store.with_suffix(".json"), store.with_suffix(".err")
    t0 = time.monotonic()
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "panicflow", "import", "legacy", str(db), "--store", str(store), "--json"],
                                stdout=fo, stderr=fe, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"import failed ({code}): {err.read_text()[-2000:]}")
    report = json.loads(out.read_text())
    out.unlink()
    err.unlink()
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "import_s": report["seconds"], "rows": report["rows"], "rows_per_s": report["rows_per_s"],
            "invocations_per_s": round(report["tables"]["invocation"]["imported"] / report["seconds"], 1),
            "tables": {t: v["imported"] for t, v in report["tables"].items()},
            "state": report["experiments"][0]["state"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gigabytes", type=float, nargs="+", help="database sizes to generate and import, in GB")
    ap.add_argument("--workdir", default=None, help="where the databases and stores go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the databases and stores")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="legacy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for gb in args.gigabytes:
            db, store = work / f"legacy-{gb:g}GB.sqlite", work / f"store-{gb:g}GB"
            t0 = time.monotonic()
            made = generate(db, gb)
            gen_s = time.monotonic() - t0
            result = measure(db, store)
            print(json.dumps({"database_gb": round(db.stat().st_size / 1e9, 3), **made, "generate_s": round(gen_s, 1),
                              "store_gb": round(sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e9, 3),
                              **result}), flush=True)
            if not args.keep:
                db.unlink()
                shutil.rmtree(store)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
