"""Run an experiment in the background: watch it, stop it, finish it.

    python docs/examples/background.py [STORE]
"""

import sys
import time

from distributed import Client, LocalCluster

import panicflow
from panicflow.errors import Interrupted


def main(store: str = "./panicflow-store") -> None:
    config = {
        "name": "background",
        "networks": [["DummyT2I", "DummyI2T"]],
        "seeds": [1, 2, 3, 4],
        "prompts": ["a lighthouse in the fog"],
        "embedding_models": ["DummyText"],
        "max_length": 300,
    }
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        # returns once the experiment exists (a bad config or store raises here); it runs in a background thread
        handle = panicflow.submit_experiment(config, store=store, client=client)
        print("submitted", handle.id)

        # handle.progress: the coordinator's latest snapshot (None until the first)
        while not handle.done() and (handle.progress is None or handle.progress.invocations < 200):
            time.sleep(0.1)
        p = handle.progress
        print(f"{p.invocations} of at most {p.invocations_max} steps, {p.runs_ended} of {p.runs} runs ended")

        # as Ctrl-C: nothing new starts, results in flight land, then it is marked interrupted
        if handle.cancel():
            try:
                handle.result()
            except Interrupted as exc:
                print("stopped:", exc)
        print("state:", handle.status().state)

        if handle.cancelled():  # finish it, in the background again
            handle = panicflow.submit_resume(handle.id, store=store, client=client)
        print("result:", handle.result(timeout=600))  # waits; raises RunsFailed when runs failed
        status = handle.status()
        print(f"state={status.state!r}, {status.invocations} steps")


if __name__ == "__main__":  # LocalCluster starts worker processes: keep the guard
    main(*sys.argv[1:])
