"""Do model calls wait behind the CPU stages? The GPU stand-in's busy fraction with and without
the coordinator's CPU-stage slots (issue 7 item 9).

A real multi-process cluster, started as users start one (``dask scheduler`` and ``dask worker``
processes, tests/cluster_util.py): one "GPU" worker (``--resources GPU=1``, ``--gpu-threads``
threads) and ``--cpu-workers`` CPU workers. The experiment's network is [SleepT2I, DummyI2T]:
SleepT2I (panicflow/models/testing.py) sleeps ``--sleep`` seconds per call and needs the GPU
resource. ``--feeders`` unseeded runs go on for ``--length`` steps and keep the GPU fed;
``--seeded`` fixed-seed runs fall into loops at steps between about 160 and 1,000 (the same
steps in every trial), so their embeddings (DummyText, DummyVision) and diagrams (``--maxdim``,
seconds each at maxdim 2) run while the other runs go on.

Each trial runs in a fresh process with a fresh cluster and stops once every run has ended
(the later stages are not what is measured). The arms, interleaved so that all see the same
machine load:

* ``slots``: the coordinator as it is (diagrams and CPU embedders wait for a CPU slot:
  ``Coordinator._drain_cpu_queue``, ``_cpu_stage_worker``);
* ``base`` (with ``--compare DIR``): the same with the panicflow of another checkout;
* ``none``: the policy switched off in the benchmark's process (``_is_cpu_stage`` patched to
  False): every CPU-stage task is submitted at once, placed by Dask alone;
* ``alone`` (reference): no CPU-stage task runs during the runs stage (``_drain_cpu_queue``
  patched to hold them): what the GPU gets on this machine with nothing beside it.

Reported per trial, from the journal (each model call's start and end), Dask's task stream
and a scheduler plugin that notes when each task reached the scheduler:

* ``runs_s``: the runs stage, from the first model call's start to the last one's end;
* ``gpu_busy``: the sum of SleepT2I's call durations (its ``generate``) over ``runs_s`` (calls
  never overlap: one GPU); ``gpu_gap_max_s``, its longest idle gap; ``gpu_task_share``: the
  same with the whole task (inputs decoded, outputs encoded and stored, the GPU held);
* ``no_gpu_task_call_waiting_s``: how long a GPU call had reached the scheduler while no GPU
  task ran (the GPU starved though there was work for it);
* ``i2t_wait_ms`` (mean) and ``i2t_wait_max_s``: from a DummyI2T call reaching the scheduler to
  its start on a worker;
* ``cpu_on_gpu_worker_s``: seconds of diagram and embedding tasks that ran on the GPU worker
  during the runs stage, and ``gpu_worker_full_s``: how long they held every thread of it (no
  thread left for a model call); ``diagrams``/``embeddings``: how many were done by its end.

    .venv/bin/python scripts/benchmark_starvation.py --quick     # a dry run (about a minute)
    .venv/bin/python scripts/benchmark_starvation.py --repeat 2  # the figures in docs/performance.md
    ... --compare /tmp/base   # the slots arm also with the panicflow of another checkout (``base``)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("slots", "none", "alone")
GPU_MODEL = "SleepT2I"
CPU_STAGES = ("diagram", "embed")


class RunsStageOver(Exception):
    """Raised from the progress callback once every run has ended: the trial stops there."""


def submit_times_plugin():
    """A scheduler plugin that keeps when each task reached the scheduler (its first transition)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class SubmitTimes(SchedulerPlugin):
        name = "benchmark-submit-times"

        def __init__(self) -> None:
            self.times: dict = {}

        def transition(self, key, start, finish, *args, **kwargs) -> None:
            if start == "released":
                self.times.setdefault(key, time.time())

    return SubmitTimes()


def measure(spans: list[tuple[float, float]], within: tuple[float, float] = (-float("inf"), float("inf"))) -> float:
    """Length of the union of intervals, the parts ``within`` an interval only."""
    lo, hi = within
    total, end = 0.0, -float("inf")
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        if b > max(a, end):
            total += b - max(a, end)
            end = b
    return total


def trial(arm: str, p: dict) -> dict:
    os.environ["PANICFLOW_TEST_MODELS"] = "1"  # SleepT2I, read when panicflow is imported
    sys.path.insert(0, str(HERE.parent / "tests"))
    from cluster_util import DaskCluster, child_env

    import panicflow
    from dask.utils import key_split
    from panicflow.scheduler import coordinator
    from panicflow.store import Store
    from panicflow.store.journal import StepRecord

    marks: dict = {}
    if arm == "none":  # every CPU-stage task submitted at once, placed by Dask alone
        coordinator.Coordinator._is_cpu_stage = lambda self, kind, model: False
    elif arm == "alone":  # CPU-stage tasks held back until the trial ends: the GPU's share with nothing beside it
        def hold(self) -> None:
            if not self._open:  # every run ended: stop before the coordinator finds nothing in flight and ends
                marks["snap"] = self.snapshot()
                raise RunsStageOver

        coordinator.Coordinator._drain_cpu_queue = hold
    config = {
        "name": f"starvation-{arm}",
        "networks": [[GPU_MODEL, "DummyI2T"]],
        "seeds": [-1] * p["feeders"] + list(range(1, p["seeded"] + 1)),
        "prompts": ["a lighthouse in a storm"],
        "embedding_models": ["DummyText", "DummyVision"],
        "max_length": p["length"],
        "persistence": {"maxdim": p["maxdim"]},
    }

    def on_start(exp, client) -> None:
        marks["exp"], marks["t0"] = exp.id, time.time()

    def progress(snap) -> None:
        if snap.runs_ended == snap.runs:
            marks["snap"] = snap
            raise RunsStageOver

    with tempfile.TemporaryDirectory(prefix="panicflow-starvation-") as tmp:
        env = child_env(PANICFLOW_TEST_SLEEP_S=str(p["sleep"]))
        cluster = DaskCluster(0, env=env, workdir=tmp, worker_args=["--resources", "GPU=1"])
        with cluster:
            gpu = cluster.add_worker(nthreads=p["gpu_threads"])
            cluster.worker_args = []  # the CPU workers: no GPU resource
            for _ in range(p["cpu_workers"]):
                cluster.add_worker(nthreads=p["cpu_threads"])
            store = os.path.join(tmp, "store")
            with cluster.client() as client:
                gpu_address = cluster.worker_address(gpu, client)
                client.get_task_stream()  # starts the scheduler's recording of the task stream
                client.register_plugin(submit_times_plugin())
                try:
                    panicflow.run_experiment(config, store=store, client=client, on_start=on_start, progress=progress)
                except RunsStageOver:
                    pass
                stream = client.get_task_stream(start=marks["t0"])
                submitted = client.run_on_scheduler(lambda dask_scheduler: dict(
                    dask_scheduler.plugins["benchmark-submit-times"].times))
        calls = [r for r in Store(store).experiment(marks["exp"]).journal.read() if isinstance(r, StepRecord)]
    first = min(r.started_us for r in calls) / 1e6
    last = max(r.ended_us for r in calls) / 1e6
    gpu_calls = sorted({(r.started_us / 1e6, r.ended_us / 1e6) for r in calls if r.model == GPU_MODEL})  # one per batch
    busy = measure(gpu_calls)  # calls never overlap (one GPU): their sum
    gaps = [b[0] - a[1] for a, b in zip(gpu_calls, gpu_calls[1:])]
    computed = {task["key"]: ss for task in stream for ss in task["startstops"] if ss["action"] == "compute"}
    # from reaching the scheduler to starting on a worker, per model call
    waits: dict[str, list[tuple[float, float]]] = {"t2i": [], "i2t": []}
    for key, ss in computed.items():
        stage = key_split(key).split("_")[0]
        if stage in waits and key in submitted:
            waits[stage].append((submitted[key], ss["start"]))
    # no GPU task running while a call for the GPU waited: union(waiting) minus union(GPU tasks), where a
    # GPU task spans the whole task (inputs decoded, outputs encoded and stored: the GPU resource is held)
    gpu_tasks = [(ss["start"], ss["stop"]) for key, ss in computed.items() if key_split(key).startswith("t2i")]
    stage = (first, last)
    idle_with_work = measure(waits["t2i"] + gpu_tasks, stage) - measure(gpu_tasks, stage)
    i2t_wait = [b - a for a, b in waits["i2t"]]
    spans = [(max(ss["start"], first), min(ss["stop"], last)) for task in stream  # within the runs stage
             if task["worker"] == gpu_address and key_split(task["key"]).startswith(CPU_STAGES)
             for ss in task["startstops"] if ss["action"] == "compute"]
    spans = [(a, b) for a, b in spans if b > a]
    on_gpu_worker = sum(b - a for a, b in spans)
    full, running, since = 0.0, 0, 0.0  # time every thread of the GPU worker ran a CPU stage
    for t, delta in sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans]):
        if running >= p["gpu_threads"]:
            full += t - since
        running, since = running + delta, t
    snap = marks["snap"]
    return {
        "arm": arm, "runs_s": round(last - first, 1), "gpu_busy": round(busy / (last - first), 3),
        "gpu_calls": len(gpu_calls), "gpu_gap_max_s": round(max(gaps, default=0.0), 2),
        "gpu_task_share": round(measure(gpu_tasks, stage) / (last - first), 3),
        "no_gpu_task_call_waiting_s": round(idle_with_work, 1),
        "i2t_wait_ms": round(1000 * sum(i2t_wait) / max(1, len(i2t_wait)), 1),
        "i2t_wait_max_s": round(max(i2t_wait, default=0.0), 2),
        "cpu_on_gpu_worker_s": round(on_gpu_worker, 1), "gpu_worker_full_s": round(full, 1), "invocations": len(calls),
        "diagrams": sum(snap.diagrams.values()), "embeddings": sum(snap.embeddings.values()),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeders", type=int, default=8, help="unseeded runs (they never stop early)")
    ap.add_argument("--seeded", type=int, default=24, help="fixed-seed runs (they loop and end early)")
    ap.add_argument("--length", type=int, default=600, help="max_length")
    ap.add_argument("--maxdim", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0.05, help="seconds per SleepT2I call")
    ap.add_argument("--gpu-threads", type=int, default=2)
    ap.add_argument("--cpu-workers", type=int, default=1)
    ap.add_argument("--cpu-threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="pairs of trials")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--quick", action="store_true", help="4 + 4 runs x 200 steps, maxdim 1")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--compare", metavar="DIR",
                    help="also the slots arm with the panicflow of another checkout (label base), interleaved")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one trial, in this process
    args = ap.parse_args()
    if args.one:
        arm, params = json.loads(args.one)
        print(json.dumps(trial(arm, params)))
        return
    if args.quick:
        args.feeders, args.seeded, args.length, args.maxdim = 4, 4, 200, 1
    params = {k: getattr(args, k) for k in
              ("feeders", "seeded", "length", "maxdim", "sleep", "gpu_threads", "cpu_workers", "cpu_threads")}
    print(json.dumps(params), flush=True)
    trials = [(arm, arm, None) for arm in args.arms]
    if args.compare:
        trials.insert(1, ("base", "slots", os.path.abspath(args.compare)))
    rows = []
    for _ in range(args.repeat):
        for label, arm, code in trials:  # interleaved: every arm sees the same machine load
            env = dict(os.environ)
            if code:  # the coordinator and the workers (which inherit it) import panicflow from there
                env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps([arm, params])],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"trial {label} failed:\n{out.stderr[-3000:]}")
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "arm": label})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"params": params, "rows": rows}, indent=1))
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
