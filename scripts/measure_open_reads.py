#!/usr/bin/env python
"""Store reads of ``panicflow.open_experiment`` on a finished experiment, with and without its
consolidated metadata (store/consolidated.py): each read is one GET on object storage.

Counts the zarr store's ``get`` calls (metadata: ``zarr.json``; the rest: chunks, read for the run
labels and the index coordinates) of one open, and the wall time of the open, with the consolidated
copy and after removing it. Runs a small experiment of the dummy models first (``--runs`` seeds,
``--models`` embedding models), in a temporary store unless ``--store`` names one. One JSON line.

    nice -n 10 .venv/bin/python scripts/measure_open_reads.py [--runs 8] [--models 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from zarr.storage import LocalStore

import panicflow
from panicflow.store import Store, consolidated

reads: list[str] = []
_get = LocalStore.get


async def _counting_get(self, key, *args, **kwargs):
    reads.append(key)
    return await _get(self, key, *args, **kwargs)


def _open(store: str, eid: str) -> dict[str, float]:
    reads.clear()
    t0 = time.perf_counter()
    panicflow.open_experiment(eid, store=store)
    seconds = time.perf_counter() - t0
    meta = sum(k.endswith("zarr.json") for k in reads)
    return {"reads": len(reads), "metadata_reads": meta, "chunk_reads": len(reads) - meta, "open_s": round(seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--models", type=int, default=2, choices=(1, 2))
    ap.add_argument("--store")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    store = args.store or tempfile.mkdtemp(prefix="open-reads-") + "/store"
    config = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": list(range(args.runs)), "prompts": ["a cat"],
              "embedding_models": ["DummyText", "DummyVision"][: args.models], "max_length": 24}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        eid = panicflow.run_experiment(config, store=store, client=client)
    LocalStore.get = _counting_get
    exp = Store(store).experiment(eid)
    _open(store, eid)  # warm-up: imports and caches are not the open's
    with_copy = _open(store, eid)
    consolidated.drop(exp)
    without = _open(store, eid)
    consolidated.write(exp)
    print(json.dumps({"runs": args.runs, "models": args.models, "consolidated": with_copy, "not_consolidated": without}))


if __name__ == "__main__":
    main()
