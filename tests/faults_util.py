"""Fault injection for panicflow: helpers shared by tests/test_faults.py and scripts/fault_report.py.

Everything here drives panicflow the way a user does: Dask scheduler and workers
started as separate processes (``dask scheduler``, ``dask worker``), coordinators
started as ``python -m panicflow experiment run|resume ... --scheduler ADDR --json``
subprocesses, and faults injected from outside (SIGKILL of one process, a worker
killed mid-batch, a model that raises, a store that stops accepting writes).

Each ``*_trials`` function runs one kind of fault and returns ``Trial`` records
(what was injected, whether the experiment completed, steps lost, steps
duplicated, and the problems found); the tests assert on them and the report
script tabulates them.

Counting:

* steps lost: steps the uninterrupted reference has that the final store lacks
  or holds with other content (fixed-seed runs), missing steps of unseeded runs
  (a gap, or fewer than ``max_length``), and journaled steps (recorded before a
  fault) that the final store does not hold as recorded;
* steps duplicated: (run, step) pairs recorded more than once in the journal,
  and steps beyond the reference length of a fixed-seed run.

Also runnable: ``python tests/faults_util.py inject ERRNO_NAME N STORE -- ARGS...``
runs ``panicflow ARGS...`` with every write into STORE after the first N
failing with that OS error (os.replace / os.link raise), in that process only;
``python tests/faults_util.py pause CONTROL SPEC -- ARGS...`` runs it stopping at
the points of SPEC until the test says go (see ``PAUSES``).
"""

from __future__ import annotations

import copy
import errno
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
DASK = str(Path(sys.executable).with_name("dask"))

# The experiment every fault is applied to (6 runs, 504 steps). Seeds 22 and 57 make
# "a cat" loop (steps 28 and 76), "a dog" runs to max_length; seed -1 is unseeded.
CONFIG: dict[str, Any] = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [22, 57, -1],
    "prompts": ["a cat", "a dog"],
    "embedding_models": ["DummyText", "DummyVision2"],
    "max_length": 100,
    "batch_size": {"DummyT2I": 6, "DummyI2T": 6},
    "persistence": {"maxdim": 1},
    "retry": {"max_attempts": 3, "backoff_s": 0.05},
}

ROOT_VARS = ("length", "stop_reason", "loop_start", "loop_period", "error", "model", "kind", "output_hash",
             "text", "invocation_seed")
DIAGRAM_VARS = ("status", "reason", "n_points", "entropy", "birth", "death", "dimension")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every process started here: test models on, tests/ importable."""
    env = {**os.environ, "PANICFLOW_TEST_MODELS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def flaky_config() -> dict[str, Any]:
    cfg = copy.deepcopy(CONFIG)
    cfg["networks"] = [["FlakyT2I", "DummyI2T"]]
    cfg["batch_size"] = {"FlakyT2I": 2, "DummyI2T": 3}
    cfg["retry"] = {"max_attempts": 5, "backoff_s": 0.01}
    return cfg


# ------------------------------------------------------------------ processes
def _stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL the process group of a process started with start_new_session."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class ProcessCluster:
    """``dask scheduler`` plus ``workers`` x ``dask worker --nworkers 1 --nthreads 1`` (with nanny)."""

    def __init__(self, workers: int = 2, env: dict[str, str] | None = None, logdir: str | None = None) -> None:
        self.n = workers
        self.env = env or child_env()
        self.logdir = logdir or tempfile.mkdtemp(prefix="panicflow-cluster-")
        os.makedirs(self.logdir, exist_ok=True)
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _popen(self, args: list[str], log: str) -> subprocess.Popen:
        out = open(os.path.join(self.logdir, log), "wb")
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def start(self) -> "ProcessCluster":
        sched_file = os.path.join(self.logdir, "scheduler.json")
        self.scheduler = self._popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", sched_file,
             "--idle-timeout", "600"],  # gone by itself if a test run dies without stopping it
            "scheduler.log",
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(sched_file):
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler.log')}")
            time.sleep(0.05)
        time.sleep(0.05)  # the file is written in one go, but be safe
        self.address = json.loads(Path(sched_file).read_text())["address"]
        for i in range(self.n):
            self.workers.append(self._popen(
                [DASK, "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1",
                 "--no-dashboard", "--name", f"w{i}", "--death-timeout", "60"],
                f"worker{i}.log",
            ))
        with self.client() as c:
            c.wait_for_workers(self.n, timeout=90)
        return self

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="20s")

    def log(self, name: str) -> str:
        try:
            return Path(self.logdir, name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        for w in self.workers:
            _stop(w)
        _stop(self.scheduler)

    def __enter__(self) -> "ProcessCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])


class Cli:
    """One ``python -m panicflow ...`` coordinator subprocess, output to files."""

    def __init__(self, args: list[str], logdir: str, env: dict[str, str] | None = None,
                 inject: tuple[str, int, str] | None = None, pause: tuple[str, str] | None = None) -> None:
        os.makedirs(logdir, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out_path = os.path.join(logdir, f"cli-{stamp}.out")
        self.err_path = os.path.join(logdir, f"cli-{stamp}.err")
        if inject:
            cmd = [PYTHON, str(HERE / "faults_util.py"), "inject", inject[0], str(inject[1]), inject[2], "--", *args]
        elif pause:
            cmd = [PYTHON, str(HERE / "faults_util.py"), "pause", pause[0], pause[1], "--", *args]
        else:
            cmd = [PYTHON, "-m", "panicflow", *args]
        self.args = args
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # its own session: a Ctrl-C of the test does not reach it, and we kill exactly this pid
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env or child_env(), start_new_session=True)

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> bool:
        """SIGKILL the coordinator (only it: with --scheduler it starts no other process)."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return True

    def wait(self, timeout: float = 240) -> CliResult:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"panicflow {' '.join(self.args)} ran over {timeout} s: {self.stderr()[-2000:]}")
        return CliResult(rc, Path(self.out_path).read_text(), self.stderr())

    def stderr(self) -> str:
        return Path(self.err_path).read_text(errors="replace")


def cli(args: list[str], logdir: str, timeout: float = 240, **kw) -> CliResult:
    return Cli(args, logdir, **kw).wait(timeout)


def write_config(config: dict[str, Any], path: str) -> str:
    Path(path).write_text(json.dumps(config))
    return path


# ----------------------------------------------------------------- watching
class Watch:
    """Cheap, frequent looks at an experiment's files while a coordinator writes them.

    Journal files only grow (a coordinator appends to its own segment), so each
    is read from where the last look stopped, whole lines only, and kept:
    ``records`` is every step and event ever journaled, even after the
    coordinator deletes the journal on completion.
    """

    def __init__(self, store: str, eid: str | None = None) -> None:
        self.store = store
        self.eid = eid
        self.files: dict[str, list[dict]] = {}
        self.read_to: dict[str, int] = {}  # bytes of each file read so far

    def experiment_id(self) -> str | None:
        if self.eid is None:
            found = sorted(glob.glob(os.path.join(self.store, "experiments", "*", "experiment.json")))
            if found:
                self.eid = Path(found[0]).parent.name
        return self.eid

    def _exp(self, *parts: str) -> str:
        return os.path.join(self.store, "experiments", self.eid or "", *parts)

    def tap(self) -> None:
        """Read journal files not seen yet."""
        if not self.experiment_id():
            return
        try:
            names = os.listdir(self._exp("journal"))
        except FileNotFoundError:
            return
        for name in sorted(names):
            if name.endswith(".jsonl") and not name.startswith("."):
                try:
                    with open(self._exp("journal", name), "rb") as f:
                        f.seek(self.read_to.get(name, 0))
                        data = f.read()
                except FileNotFoundError:  # deleted on completion meanwhile
                    continue
                whole = data[: data.rfind(b"\n") + 1]  # a line being appended is read next time
                self.read_to[name] = self.read_to.get(name, 0) + len(whole)
                self.files.setdefault(name, []).extend(json.loads(line) for line in whole.splitlines() if line.strip())

    def journal_files(self) -> int:
        try:
            return sum(1 for n in os.listdir(self._exp("journal")) if n.endswith(".jsonl") and not n.startswith("."))
        except FileNotFoundError:
            return 0

    def steps(self) -> int:
        """Steps journaled so far (ever, by any coordinator of this experiment)."""
        self.tap()
        return sum(1 for lines in self.files.values() for r in lines if r["type"] == "step")

    def records(self) -> list[dict]:
        self.tap()
        return [r for lines in self.files.values() for r in lines]

    def _marked(self, pattern: str) -> int:
        """Runs set in the marker arrays matching ``pattern``, read from Zarr (a chunk may hold many runs)."""
        import zarr

        n = 0
        for path in glob.glob(self._exp("data.zarr", pattern)):
            try:
                n += sum(bool(v) for v in zarr.open_array(path, mode="r")[:].tolist())
            except Exception:  # noqa: BLE001 - not there yet
                continue
        return n

    def embedded(self) -> int:
        return self._marked("embeddings/*/done") if self.experiment_id() else 0

    def diagrams(self) -> int:
        return self._marked("diagrams/*/status") if self.experiment_id() else 0

    def ended(self) -> int:
        return self._marked("stop_reason") if self.experiment_id() else 0

    def state(self) -> str:
        return self._state().get("state", "none")

    def _state(self) -> dict[str, Any]:
        if not self.experiment_id():
            return {}
        try:
            return json.loads(Path(self._exp("state.json")).read_text())
        except (FileNotFoundError, ValueError):
            return {"state": "created"}

    def working(self, pid: int) -> bool:
        """Whether the coordinator ``pid`` has loaded the experiment and started (its state.json)."""
        return self._state().get("pid") == pid

    def progress(self) -> tuple:
        return (self.steps(), self.embedded(), self.diagrams(), self.state())

    def point(self) -> dict[str, Any]:
        """Where the experiment is now."""
        return {"journaled_steps": self.steps(), "embedded": self.embedded(), "diagrams": self.diagrams(),
                "runs_ended": self.ended(), "state": self.state(), "journal_files": self.journal_files()}


# --------------------------------------------------------------- kill points
STAGES = ("delay", "runs-early", "runs-late", "embeddings", "diagrams", "before-complete", "cleanup")


@dataclass
class KillPoint:
    stage: str
    threshold: float  # journaled steps, embedded or diagram markers; seconds for "delay"

    def describe(self) -> str:
        unit = {"delay": "s after its first progress", "runs-early": "journaled steps", "runs-late": "journaled steps",
                "embeddings": "embedding markers", "diagrams": "diagram markers",
                "before-complete": "diagram markers (all)", "cleanup": "state complete"}[self.stage]
        return f"{self.stage} @ {self.threshold:g} {unit}"


def draw_kill_points(rng: random.Random, n: int, total_steps: int, total_markers: int) -> list[KillPoint]:
    """``n`` kill points: every stage at least once, the rest drawn at random."""
    stages = list(STAGES) + [rng.choice(STAGES[:5]) for _ in range(n - len(STAGES))]
    rng.shuffle(stages)
    points = []
    for stage in stages:
        if stage == "delay":
            t = round(rng.uniform(0.02, 0.6), 2)  # short: the whole experiment takes a few seconds
        elif stage == "runs-early":
            t = int(rng.uniform(0.02, 0.35) * total_steps)
        elif stage == "runs-late":
            t = int(rng.uniform(0.6, 0.98) * total_steps)
        elif stage in ("embeddings", "diagrams"):
            t = rng.randint(1, total_markers - 1)
        elif stage == "before-complete":
            t = total_markers
        else:
            t = 0
        points.append(KillPoint(stage, max(t, 1) if stage in ("runs-early", "runs-late") else t))
    return points


def order(points: list[KillPoint]) -> list[KillPoint]:
    """Kill points in the order an experiment reaches them (delays stay where they were drawn)."""
    rank = {s: i for i, s in enumerate(STAGES)}
    staged = sorted((p for p in points if p.stage != "delay"), key=lambda p: (rank[p.stage], p.threshold))
    out, it = [], iter(staged)
    for p in points:
        out.append(p if p.stage == "delay" else next(it))
    if out and out[0].stage == "delay" and staged:  # the first kill waits for the experiment to exist
        out.remove(staged[0])
        out.insert(0, staged[0])
    return out


def first_staged(group: list[KillPoint], rest: list[KillPoint], total_steps: int
                 ) -> tuple[list[KillPoint], list[KillPoint], list[KillPoint]]:
    """(group, rest, []) where ``group`` holds a staged point (not a delay) to start an experiment with:
    the first kill of an experiment waits for its id, which a delay cannot do. A group of delays only
    (delays carried from an experiment that finished before them) takes the first staged point of
    ``rest``; where none is left, its first delay becomes an early-runs point (the same early kill,
    counted in steps)."""
    group, rest = list(group), list(rest)
    if group and all(p.stage == "delay" for p in group):
        staged = next((p for p in rest if p.stage != "delay"), None)
        if staged is not None:
            rest.remove(staged)
            group.insert(0, staged)
        else:
            group[0] = KillPoint("runs-early", max(1, int(0.1 * total_steps)))
    return group, rest, []


def kill_at(proc: Cli, watch: Watch, point: KillPoint, total_markers: int, timeout: float = 180) -> dict[str, Any] | None:
    """SIGKILL ``proc`` at ``point``; where it was killed, or None when it finished first.

    A threshold the experiment has already passed when ``proc`` starts becomes
    "one more step (marker) than now", so that every kill interrupts new work.
    """
    start = time.monotonic()
    stage = point.stage
    metric: Callable[[], float]
    if stage == "delay":
        # counted from this coordinator's first progress (a step, marker or state it wrote), so that the
        # kill lands in its work, not in its start-up (imports, connecting, loading the journal)
        began: list[float] = []
        base: list[tuple] = []

        def metric() -> float:
            if not began:
                if not base:
                    if watch.working(proc.proc.pid):
                        base.append(watch.progress())
                elif watch.progress() != base[0]:
                    began.append(time.monotonic())
            return time.monotonic() - began[0] if began else -1.0

        target = point.threshold
    elif stage in ("runs-early", "runs-late"):
        metric, target = watch.steps, point.threshold
    elif stage == "embeddings":
        metric, target = watch.embedded, point.threshold
    elif stage in ("diagrams", "before-complete"):
        metric, target = watch.diagrams, point.threshold
    else:
        metric, target = (lambda: float(watch.state() == "complete")), 1
    if stage != "delay" and watch.experiment_id():
        now = metric()
        if now >= target:
            if stage in ("embeddings", "diagrams", "before-complete") and now >= total_markers:
                stage, metric, target = "cleanup", (lambda: float(watch.state() == "complete")), 1
            elif stage != "cleanup":
                target = now + 1
    # near the end, poll without sleeping to catch the short windows around `complete`
    end_game = stage in ("cleanup", "before-complete")
    spin = False
    deadline = start + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if watch.experiment_id() and metric() >= target:
            killed = proc.kill()
            if not killed:
                return None
            where = watch.point()
            where.update(stage=stage, target=target, after_s=round(time.monotonic() - start, 2))
            return where
        if not spin:
            spin = end_game and watch.diagrams() >= total_markers - 1
            time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"kill point {point.describe()} not reached in {timeout} s: {proc.stderr()[-2000:]}")


# ---------------------------------------------------------------- comparing
def snapshot(store: str, eid: str, models: list[str]) -> dict[str, Any]:
    """Every array of an experiment, as numpy arrays, read through panicflow.open_experiment."""
    import panicflow

    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    out: dict[str, Any] = {name: root[name].values for name in (*ROOT_VARS, "seed", "started_at")}
    for m in models:
        e, d = tree[f"embeddings/{m}"].ds, tree[f"diagrams/{m}"].ds
        out[f"e/{m}/vector"] = e.vector.values
        out[f"e/{m}/done"] = e.done.values
        for name in DIAGRAM_VARS:
            out[f"d/{m}/{name}"] = d[name].values
    return out


def _equal(a, b) -> bool:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return a.tobytes() == b.tobytes() or bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)


def compare_to_reference(got: dict[str, Any], ref: dict[str, Any], config: dict[str, Any], store: str,
                         compare_models: bool = True) -> Verdict:
    """Fixed-seed runs bit for bit; unseeded runs complete, gapless, every seed reproducing its output."""
    v = Verdict()
    seeds = ref["seed"]
    n_max = config["max_length"]
    models = config["embedding_models"]
    for i, seed in enumerate(seeds):
        if seed == -1:
            continue
        n_ref = int(ref["length"][i])
        got_hashes = got["output_hash"][i]
        v.lost += sum(1 for k in range(n_ref) if got_hashes[k] != ref["output_hash"][i][k])
        v.duplicated += sum(1 for k in range(n_ref, n_max) if got_hashes[k] != "")
        for name in ROOT_VARS:
            if name == "model" and not compare_models:
                continue
            if not _equal(got[name][i], ref[name][i]):
                v.problems.append(f"run {i} (seed {seed}): {name} differs from the uninterrupted run")
        for m in models:
            if not _equal(got[f"e/{m}/vector"][i], ref[f"e/{m}/vector"][i]):
                v.problems.append(f"run {i}: embeddings/{m}/vector differs")
            if not bool(got[f"e/{m}/done"][i]):
                v.problems.append(f"run {i}: embeddings/{m} not done")
            for name in DIAGRAM_VARS:
                a, b = got[f"d/{m}/{name}"][i], ref[f"d/{m}/{name}"][i]
                if name in ("birth", "death", "dimension"):  # padded widths may differ: compare the pairs
                    a, b = _trim(a, name), _trim(b, name)
                if not _equal(a, b):
                    what = f": {a!r}, expected {b!r}" if name in ("status", "reason") else ""
                    v.problems.append(f"run {i}: diagrams/{m}/{name} differs{what}")
    for i, seed in enumerate(seeds):
        if seed != -1:
            continue
        hashes = got["output_hash"][i]
        missing = sum(1 for h in hashes if h == "")
        v.lost += missing
        if missing or int(got["length"][i]) != n_max or got["stop_reason"][i] != "length":
            v.problems.append(f"unseeded run {i}: length {got['length'][i]}, {missing} empty steps")
        v.problems += reproduce_unseeded(store, got, i, config)
        for m in models:
            if not bool(got[f"e/{m}/done"][i]) or not got[f"d/{m}/status"][i].startswith("ok"):
                v.problems.append(f"unseeded run {i}: {m} embedding or diagram missing ({got[f'd/{m}/status'][i]!r})")
    return v


def _trim(a, name):
    import numpy as np

    a = np.asarray(a)
    keep = (a != -1) if name == "dimension" else ~np.isnan(a)
    n = int(np.nonzero(keep)[0].max()) + 1 if keep.any() else 0
    return a[:n]


_IMPLS: dict[str, Any] = {}
TEST_T2I = {"FlakyT2I": "DummyT2I", "PoisonT2I": "DummyT2I"}


def reproduce_unseeded(store: str, got: dict[str, Any], i: int, config: dict[str, Any]) -> list[str]:
    """Call the models directly: every stored seed must give the stored output from the stored input."""
    import panicflow
    from panicflow.models import REGISTRY
    from panicflow.store.objects import encode_image

    problems = []
    network = config["networks"][0]
    prompt = config["prompts"][i % len(config["prompts"])]
    for step in range(int(got["length"][i])):
        name = str(got["model"][i, step])
        base = TEST_T2I.get(name, name)  # FlakyT2I and PoisonT2I draw DummyT2I's images
        if base not in _IMPLS:
            _IMPLS[base] = REGISTRY[base].factory(REGISTRY[base])
        if step == 0:
            given: Any = prompt
        elif got["kind"][i, step - 1] == "text":
            given = str(got["text"][i, step - 1])
        else:
            given = panicflow.load_image(str(got["output_hash"][i, step - 1]), store=store)
        out = _IMPLS[base].generate([given], [int(got["invocation_seed"][i, step])])[0]
        data = out.encode() if isinstance(out, str) else encode_image(out)
        if hashlib.sha256(data).hexdigest() != got["output_hash"][i, step]:
            problems.append(f"unseeded run {i} step {step}: its stored seed does not reproduce its output")
            break
        if name != network[step % len(network)]:
            problems.append(f"unseeded run {i} step {step}: model {name} out of cycle")
            break
    return problems


def check_journal(records: list[dict], got: dict[str, Any]) -> Verdict:
    """Journaled steps must be in the final store as recorded, each (run, step) once."""
    v = Verdict()
    seen: dict[tuple[int, int], dict] = {}
    for r in records:
        if r["type"] != "step":
            continue
        key = (r["run"], r["step"])
        if key in seen:
            v.duplicated += 1
            v.problems.append(f"run {key[0]} step {key[1]} journaled twice")
            continue
        seen[key] = r
        i, k = key
        if got["output_hash"][i, k] != r["hash"] or int(got["invocation_seed"][i, k]) != r["seed"]:
            v.lost += 1
            v.problems.append(f"run {i} step {k}: journaled {r['hash'][:12]} (seed {r['seed']}) but the store holds "
                              f"{got['output_hash'][i, k][:12]!r} (seed {got['invocation_seed'][i, k]})")
    return v


def experiment_status(store: str, eid: str) -> dict[str, Any]:
    import panicflow

    return panicflow.experiment_status(eid, store=store).to_dict()


# -------------------------------------------------------------- reference
def run_reference(config: dict[str, Any], store: str, client) -> tuple[str, dict[str, Any]]:
    """An uninterrupted run of ``config`` on ``client``'s cluster: (id, snapshot)."""
    import panicflow

    eid = panicflow.run_experiment(config, store=store, client=client)
    return eid, snapshot(store, eid, config["embedding_models"])


def total_steps(ref: dict[str, Any], config: dict[str, Any]) -> int:
    return int(sum(int(n) if s != -1 else config["max_length"] for n, s in zip(ref["length"], ref["seed"])))


@dataclass
class Trial:
    fault: str
    point: str
    completed: bool
    lost: int
    duplicated: int
    problems: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    experiment: str = ""  # trials of one experiment share it (several kills, then one final resume)


def _finished(trial: Trial, res: CliResult, what: str = "") -> bool:
    """Whether the coordinator ``res`` completed its experiment; if so ``trial`` is completed."""
    trial.completed = res.rc == 0 and bool(res.stdout.strip()) and res.json["state"] == "complete"
    if not trial.completed:
        trial.problems.append(f"{what}rc {res.rc}: {res.stderr[-1500:]}")
    return trial.completed


def judge(trial: Trial, store: str, eid: str, ref: dict[str, Any], config: dict[str, Any], records: list[dict],
          compare_models: bool = True) -> dict[str, Any]:
    """Charge ``trial`` with what the final store lacks against the reference and the journal
    ``records``; the final store's snapshot."""
    got = snapshot(store, eid, config["embedding_models"])
    v = compare_to_reference(got, ref, config, store, compare_models)
    j = check_journal(records, got)
    trial.lost += v.lost + j.lost
    trial.duplicated += v.duplicated + j.duplicated
    trial.problems += v.problems + j.problems
    return got


# ------------------------------------------------------- 1. SIGKILL coordinator
def sigkill_coordinator_trials(address: str, workdir: str, ref: dict[str, Any], *, seed: int = 1234,
                               kills: int = 22, per_experiment: int = 11, config: dict[str, Any] = CONFIG,
                               log: Callable[[str], None] = lambda s: None) -> list[Trial]:
    """SIGKILL the coordinator ``kills`` times at points drawn by ``random.Random(seed)``,
    several times per experiment (kill, resume, kill again...), then resume each to the end.

    A point the experiment finished before (a delay drawn late: its embeddings and diagrams no
    longer wait for its last run, so little is left once the runs end) did not kill anything: it
    is tried again in a next experiment, so that the kills that land do not depend on the timing."""
    rng = random.Random(seed)
    total = total_steps(ref, config)
    markers = len(ref["seed"]) * len(config["embedding_models"])
    pending = draw_kill_points(rng, kills, total, markers)
    cfg_path = write_config(config, os.path.join(workdir, "config.json"))
    trials: list[Trial] = []
    g = -1
    while pending and g < 2 * kills // per_experiment + 2:
        g += 1
        group, pending, carried = first_staged(pending[:per_experiment], pending[per_experiment:], total)
        group = order(group)
        store = os.path.join(workdir, f"store{g}")
        logs = os.path.join(workdir, f"logs{g}")
        watch = Watch(store)
        exp_trials: list[tuple[Trial, int]] = []
        for n, point in enumerate(group):
            eid = watch.experiment_id()
            if eid and watch.state() == "complete":  # an earlier kill landed late: nothing left to interrupt
                log(f"experiment {g}: {point.describe()}: the experiment is complete; tried in the next one")
                carried.append(point)
                continue
            if n == 0:
                assert point.stage != "delay" or eid, "the first kill of an experiment needs its id to exist"
                proc = Cli(["experiment", "run", cfg_path, "--store", store, "--scheduler", address, "--json"], logs)
            else:
                proc = Cli(["experiment", "resume", eid, "--store", store, "--scheduler", address, "--json"], logs)
            where = kill_at(proc, watch, point, markers)
            if where is None:  # it finished before the kill point
                res = proc.wait()
                log(f"experiment {g}: {point.describe()}: finished first (rc {res.rc}); tried in the next one")
                trials.append(Trial("SIGKILL coordinator", point.describe(), res.rc == 0, 0, 0,
                                    [] if res.rc == 0 else [res.stderr[-1000:]], {"killed": False}, f"sigkill-{g}"))
                carried.append(point)
                continue
            status = experiment_status(store, watch.experiment_id())
            where["state_after_kill"] = status["state"]
            records = watch.records()
            trial = Trial("SIGKILL coordinator", point.describe(), False, 0, 0, [], {"killed": True, **where},
                          f"sigkill-{g}")
            if status["state"] not in ("interrupted", "complete"):
                trial.problems.append(f"state after the kill is {status['state']!r}")
            exp_trials.append((trial, len(records)))
            trials.append(trial)
            log(f"experiment {g}: killed at {point.describe()}: {where}")
        eid = watch.experiment_id()
        res = cli(["experiment", "resume", eid, "--store", store, "--scheduler", address, "--json"], logs)
        final_state = res.json["state"] if res.stdout.strip() else "?"
        got = snapshot(store, eid, config["embedding_models"])
        final = compare_to_reference(got, ref, config, store)
        leftovers = glob.glob(os.path.join(store, "experiments", eid, "journal", "*.jsonl"))
        all_records = watch.records()
        for k, (trial, n_records) in enumerate(exp_trials):
            j = check_journal(all_records[:n_records], got)
            prev = check_journal(all_records[: exp_trials[k - 1][1]], got) if k else Verdict()
            trial.completed = res.rc == 0 and final_state == "complete"
            trial.lost = j.lost - prev.lost
            trial.duplicated = j.duplicated - prev.duplicated
            trial.problems += j.problems[len(prev.problems):]
        if exp_trials:  # what only the final store shows is charged to the experiment's last kill
            last = exp_trials[-1][0]
            last.lost += final.lost
            last.duplicated += final.duplicated
            last.problems += final.problems
            if res.rc != 0 or final_state != "complete":
                last.problems.append(f"final resume: rc {res.rc}, state {final_state}: {res.stderr[-1500:]}")
            if leftovers:
                last.problems.append(f"{len(leftovers)} journal files left after completion")
        log(f"experiment {g}: final resume rc {res.rc} state {final_state}, lost {final.lost}, "
            f"problems {final.problems[:3]}")
        shutil.rmtree(store, ignore_errors=True)
        pending = carried + pending
    return trials


# ------------------------------------------------------- 2. worker killed
# how the coordinator's task keys start: model calls are named by their stage (t2i, i2t; "invoke" before)
TASK_PREFIXES = {"invoke": ("invoke", "t2i", "i2t"), "embed": ("embed",)}


class SlowModels(WorkerPlugin):
    """A worker plugin: the named models take ``delay`` s more per batch (same outputs),
    so that a worker killed while invocations run is killed mid-batch."""

    name = "faults-slow-models"

    def __init__(self, names: list[str], delay: float) -> None:
        self.names = list(names)
        self.delay = delay

    def setup(self, worker=None) -> None:
        import dataclasses

        from panicflow.models import REGISTRY
        from panicflow.models.cache import unload

        for name in self.names:
            spec = REGISTRY[name]
            if getattr(spec.factory, "_slow", False):
                continue
            REGISTRY[name] = dataclasses.replace(spec, factory=_slow_factory(spec.factory, self.delay))
            unload(name)

    def teardown(self, worker=None) -> None:
        """The models as they were (unregistering the plugin leaves a shared cluster as it found it)."""
        import dataclasses

        from panicflow.models import REGISTRY
        from panicflow.models.cache import unload

        for name in self.names:
            spec = REGISTRY[name]
            inner = getattr(spec.factory, "_inner", None)
            if inner is not None:
                REGISTRY[name] = dataclasses.replace(spec, factory=inner)
                unload(name)


def _slow_factory(factory, delay):
    def build(spec):
        return _Slow(factory(spec), delay)

    build._slow = True
    build._inner = factory
    return build


class _Slow:
    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def generate(self, inputs, seeds):
        time.sleep(self.delay)
        return self.inner.generate(inputs, seeds)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _wait_replaced(client, dead: set[str], n: int, timeout: float = 90) -> None:
    """Until the nannies have restarted the killed workers: ``n`` workers, none of ``dead``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            workers = set(client.scheduler_info(n_workers=-1)["workers"])
        except OSError:
            workers = set()
        if len(workers) >= n and not workers & dead:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed workers {sorted(dead)} were not replaced in {timeout} s")


def worker_kill_trials(workdir: str, ref: dict[str, Any], *, kills: int = 2, config: dict[str, Any] = CONFIG,
                       log: Callable[[str], None] = lambda s: None, timeout: float = 240,
                       address: str | None = None) -> list[Trial]:
    """A real cluster (`dask scheduler` and two `dask worker --nworkers 1 --nthreads 1`, each with
    its nanny, as processes): a ProcessCluster of its own, or the one at ``address`` (two workers
    with nannies, such as ProcessCluster(2)). SIGKILL a worker while it executes a model batch,
    ``kills`` times over the runs stage, then both workers at once mid-batch, then one while it
    embeds; the nannies restart them (at new addresses) each time."""
    total = total_steps(ref, config)
    cfg_path = write_config(config, os.path.join(workdir, "config.json"))
    store = os.path.join(workdir, "store")
    trials: list[Trial] = []
    with ExitStack() as stack:
        if address is None:
            address = stack.enter_context(ProcessCluster(2, logdir=os.path.join(workdir, "cluster"))).address
        from distributed import Client

        client = stack.enter_context(Client(address, timeout="20s"))
        client.register_plugin(SlowModels(["DummyT2I", "DummyI2T"], 0.04), name=SlowModels.name)
        stack.callback(client.unregister_worker_plugin, SlowModels.name)
        watch = Watch(store)
        proc = Cli(["experiment", "run", cfg_path, "--store", store, "--scheduler", address, "--json"],
                   os.path.join(workdir, "logs"))
        stack.callback(proc.kill)  # a shared cluster is left with no coordinator of this test on it
        # the embed kill last: embedding tasks run until after the last model call, not the other way round
        targets = [("invoke", int(total * f), "one") for f in (0.15, 0.4)[:kills]]
        targets += [("invoke", int(total * 0.6), "all"), ("embed", 0, "one")]
        for prefix, steps, which in targets:
            busy: list[str] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if watch.steps() >= steps:
                    # call_stack: the tasks each worker is executing right now (not merely assigned)
                    try:
                        stacks = client.call_stack()
                    except OSError:  # a worker just died or restarted under the question: ask again
                        stacks = {}
                    busy = sorted(w for w, running in stacks.items()
                                  if any(str(k).startswith(TASK_PREFIXES[prefix]) for k in running))
                    if busy:
                        break
                time.sleep(0.01)
            if not busy:
                log(f"no worker was running a {prefix} task")
                continue
            victims = busy[:1] if which == "one" else sorted(client.scheduler_info(n_workers=-1)["workers"])
            pids = client.run(os.getpid, workers=victims)
            where = watch.point()
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            log(f"killed {which} worker(s) {victims} (pids {list(pids.values())}) running {prefix} at {where}")
            label = "SIGKILL worker mid-batch" if which == "one" else "SIGKILL all workers mid-batch"
            trials.append(Trial(label, f"{prefix} @ {where['journaled_steps']} steps",
                                False, 0, 0, [], {"pids": list(pids.values()), **where}, "worker-kill"))
            _wait_replaced(client, set(victims), 2)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            watch.tap()
            time.sleep(0.05)
        hung = proc.poll() is None
        if hung:
            stuck = client.run_on_scheduler(lambda dask_scheduler: {str(ts.key): ts.state for ts in dask_scheduler.tasks.values()})
            proc.kill()
        res = proc.wait()
    if hung:
        for t in trials:
            t.problems.append(f"the experiment did not finish in {timeout} s; scheduler tasks: {stuck}")
        return trials
    if trials:  # what the final store shows is charged to the last kill
        if _finished(trials[-1], res):
            judge(trials[-1], store, watch.experiment_id(), ref, config, watch.records())
        for t in trials:
            t.completed = trials[-1].completed
    return trials


# ------------------------------------------------------- 3. flaky and failing models
def flaky_trials(address: str, workdir: str, ref: dict[str, Any],
                 log: Callable[[str], None] = lambda s: None) -> list[Trial]:
    """FlakyT2I failing 5% of calls (the cluster's workers run with PANICFLOW_TEST_FLAKY_RATE=0.05)."""
    config = flaky_config()
    cfg_path = write_config(config, os.path.join(workdir, "flaky.json"))
    store = os.path.join(workdir, "flaky-store")
    watch = Watch(store)
    proc = Cli(["experiment", "run", cfg_path, "--store", store, "--scheduler", address, "--json"],
               os.path.join(workdir, "logs"))
    while proc.poll() is None:
        watch.tap()
        time.sleep(0.05)
    res = proc.wait()
    failures = res.stderr.count("FlakyT2I failed")
    log(f"flaky: rc {res.rc}, {failures} failed FlakyT2I calls retried")
    trial = Trial("FlakyT2I 5% + retries", f"{failures} failed calls", False, 0, 0, [], {"failed_calls": failures},
                  "flaky")
    if _finished(trial, res):
        got = judge(trial, store, res.json["id"], ref, config, watch.records(), compare_models=False)
        expected_models = ["FlakyT2I" if m == "DummyT2I" else m for m in ref["model"].ravel()]
        if list(got["model"].ravel()) != expected_models:
            trial.problems.append("model names differ from the reference's (FlakyT2I for DummyT2I)")
    return [trial]


POISON_CONFIG: dict[str, Any] = {
    "networks": [["PoisonT2I", "DummyI2T"]],
    "seeds": [5, -1],
    "prompts": ["a poison apple", "a fine apple"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 12,
    "retry": {"max_attempts": 2, "backoff_s": 0.01},
}


def poison_trials(address: str, workdir: str, log: Callable[[str], None] = lambda s: None) -> list[Trial]:
    """PoisonT2I fails for every prompt with "poison": only those runs fail, the error shows in
    ``status --json``, and ``resume --retry-failed`` tries them again (they fail again)."""
    from oracle import reference_run

    config = POISON_CONFIG
    cfg_path = write_config(config, os.path.join(workdir, "poison.json"))
    store = os.path.join(workdir, "poison-store")
    logs = os.path.join(workdir, "logs")
    trial = Trial("PoisonT2I permanent failure", "prompt with 'poison'", False, 0, 0, experiment="poison")
    p = trial.problems
    res = cli(["experiment", "run", cfg_path, "--store", store, "--scheduler", address, "--json"], logs)
    run_json = res.json
    eid = run_json["id"]
    if res.rc != 1:
        p.append(f"run: exit code {res.rc}, expected 1 (finished with a failed run)")
    st = cli(["experiment", "status", eid, "--store", store, "--json"], logs).json
    runs = [(net, seed, prompt) for net in config["networks"] for seed in config["seeds"] for prompt in config["prompts"]]
    poisoned = {str(i) for i, (_, _, prompt) in enumerate(runs) if "poison" in prompt}
    if st["state"] != "failed":
        p.append(f"status: state {st['state']!r}, expected 'failed'")
    if set(st["errors"]) != poisoned:
        p.append(f"status: errors for runs {sorted(st['errors'])}, expected {sorted(poisoned)}")
    if not all("PoisonT2I refuses" in e for e in st["errors"].values()):
        p.append(f"status: errors do not say why: {st['errors']}")
    if st["runs_complete"] != len(runs) - len(poisoned):
        p.append(f"status: {st['runs_complete']} runs complete, expected {len(runs) - len(poisoned)}")
    retry = cli(["experiment", "resume", eid, "--store", store, "--scheduler", address, "--retry-failed", "--json"], logs)
    st2 = cli(["experiment", "status", eid, "--store", store, "--json"], logs).json
    retried = retry.stderr.count("PoisonT2I failed")
    if retried < 1:
        p.append("resume --retry-failed did not call PoisonT2I again")
    if retry.rc != 1 or st2["state"] != "failed" or set(st2["errors"]) != poisoned:
        p.append(f"after --retry-failed: rc {retry.rc}, state {st2['state']!r}, errors {st2['errors']}")
    got = snapshot(store, eid, config["embedding_models"])
    for i, (net, seed, prompt) in enumerate(runs):
        if str(i) in poisoned:
            if got["stop_reason"][i] != "failed" or int(got["length"][i]) != 0:
                p.append(f"run {i}: stop_reason {got['stop_reason'][i]!r} length {got['length'][i]}")
            for m in config["embedding_models"]:
                if got[f"d/{m}/status"][i] != "run_failed":
                    p.append(f"run {i}: diagram {m} status {got[f'd/{m}/status'][i]!r}")
            continue
        n = int(got["length"][i])
        missing = sum(1 for h in got["output_hash"][i] if h == "")
        if seed == -1:
            trial.lost += missing
            p += reproduce_unseeded(store, got, i, config)
        else:
            want = reference_run(("DummyT2I", "DummyI2T"), seed, prompt, config["max_length"])
            trial.lost += sum(1 for k, h in enumerate(want.hashes) if got["output_hash"][i][k] != h)
            if n != len(want.hashes):
                p.append(f"run {i}: length {n}, expected {len(want.hashes)}")
    trial.completed = not p
    trial.detail = {"errors": st2["errors"], "retried_calls": retried}
    log(f"poison: {trial}")
    return [trial]


# ------------------------------------------------------- 4. concurrent writers and a reader
def read_consistent_prefix(store: str, eid: str, models: list[str],
                           opened: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One reader's look, as a user takes it: open_experiment, then load every node.
    ``opened`` is called once open_experiment has returned (or failed): a paused writer goes on
    then, so that the loads run while it writes."""
    import panicflow

    try:
        try:
            tree = panicflow.open_experiment(eid, store=store)
        finally:
            opened()
        root = tree["/"].ds.load()
        look: dict[str, Any] = {name: root[name].values for name in ("stop_reason", "length", "output_hash")}
        for m in models:
            e, d = tree[f"embeddings/{m}"].ds.load(), tree[f"diagrams/{m}"].ds.load()
            done = e.done.values
            look[f"e/{m}/done"] = done
            look[f"e/{m}/vector"] = {int(i): e.vector.values[i] for i in done.nonzero()[0]}
            status = d.status.values
            look[f"d/{m}/status"] = status
            look[f"d/{m}/rows"] = {
                i: {name: d[name].values[i] for name in DIAGRAM_VARS if name != "status"}
                for i, s in enumerate(status) if s
            }
    except Exception as exc:  # noqa: BLE001  -- a read that fails is a finding, not a crash of the test
        return {"error": f"{type(exc).__name__}: {exc}"}
    return look


def check_look(look: dict[str, Any], final: dict[str, Any], models: list[str]) -> list[str]:
    """What in one reader's look is not the consistent prefix of the final store it should be."""
    if "error" in look:
        return [f"read failed: {look['error']}"]
    problems = []
    for i, reason in enumerate(look["stop_reason"]):
        hashes = look["output_hash"][i]
        nonempty = [k for k, h in enumerate(hashes) if h]
        if any(hashes[k] != final["output_hash"][i][k] for k in nonempty):
            problems.append(f"run {i}: an output_hash differs from the final one")
        if reason:
            n = int(look["length"][i])
            if reason != final["stop_reason"][i] or n != int(final["length"][i]):
                problems.append(f"run {i}: stop_reason/length {reason!r}/{n} differ from the final ones")
            if nonempty != list(range(n)):
                problems.append(f"run {i}: marked {reason!r} with length {n} but {len(nonempty)} output hashes")
    for m in models:
        for i, vec in look[f"e/{m}/vector"].items():
            if not _equal(vec, final[f"e/{m}/vector"][i]):
                problems.append(f"run {i}: embeddings/{m} marked done but the vectors differ from the final ones")
        for i, s in enumerate(look[f"d/{m}/status"]):
            if s and s != final[f"d/{m}/status"][i]:
                problems.append(f"run {i}: diagrams/{m} status {s!r} differs from the final one")
        for i, row in look[f"d/{m}/rows"].items():
            for name, a in row.items():
                b = final[f"d/{m}/{name}"][i]
                if name in ("birth", "death", "dimension"):
                    width = min(len(a), len(b))
                    if not _equal(_trim(a, name), _trim(b, name)) and not (
                        len(a) < len(b) and _equal(a, b[:width])):
                        problems.append(f"run {i}: diagrams/{m}/{name} differs from the final one")
                    elif len(a) < len(b) and not _equal(_trim(a, name), _trim(b, name)):
                        problems.append(f"run {i}: diagrams/{m}/{name} read truncated: the pair axis "
                                        f"grew between open_experiment and the read")
                elif not _equal(a, b):
                    problems.append(f"run {i}: diagrams/{m}/{name} differs from the final one")
    return sorted(set(problems))


# Where the first coordinator of concurrent_trials stops until the reader has opened the experiment:
# after these many journaled steps (of 504), embedding markers and diagrams (of 12 each).
PAUSES = "steps=60,250,450;embedded=1,7;diagrams=1,7"
PAUSE_COUNT = sum(len(p.split("=")[1].split(",")) for p in PAUSES.split(";"))


def concurrent_trials(address: str, workdir: str, ref: dict[str, Any], config: dict[str, Any] = CONFIG,
                      log: Callable[[str], None] = lambda s: None) -> list[Trial]:
    """Two coordinators write two experiments into one store at once, while a reader keeps
    opening the first with panicflow.open_experiment.

    How many looks fit in while the writers run depends on the machine's load (50 unloaded, 6
    with four busy loops on two cores: a look then takes 15 s). So the first coordinator also
    stops at the ``PAUSES`` points until a look has opened the experiment: those ``PAUSE_COUNT``
    looks land in every stage whatever the speeds, and load while the writers go on; the others
    are taken whenever the reader is free."""
    cfg_path = write_config(config, os.path.join(workdir, "config.json"))
    store = os.path.join(workdir, "shared-store")
    logs = os.path.join(workdir, "logs")
    control = os.path.join(workdir, "control")
    os.makedirs(store)
    os.makedirs(control)
    import panicflow

    panicflow.api._store(store, create=True)  # the marker first: two creators racing on it is another test
    args = ["experiment", "run", cfg_path, "--store", store, "--scheduler", address, "--json"]
    procs = [Cli(args, logs, pause=(control, PAUSES)), Cli(args, logs)]
    models = config["embedding_models"]
    looks: list[dict[str, Any]] = []
    answered: list[str] = []
    eid = None
    watches: dict[str, Watch] = {}
    while any(p.poll() is None for p in procs):
        ids = sorted(Path(p).parent.name for p in glob.glob(os.path.join(store, "experiments", "*", "experiment.json")))
        for i in ids:
            watches.setdefault(i, Watch(store, i)).tap()
        waiting = [n for n in os.listdir(control) if n.startswith("pause-") and n not in answered]
        if waiting:  # the paused writer waits for this look to open the experiment
            point = json.loads(Path(control, waiting[0]).read_text())
            eid = point["experiment"]
            looks.append(read_consistent_prefix(store, eid, models, opened=Path(control, f"go-{point['point']}").touch))
            answered.append(waiting[0])
            continue
        if eid:
            looks.append(read_consistent_prefix(store, eid, models))
        time.sleep(0.02)
    results = [p.wait() for p in procs]
    held = len(answered)
    trials = []
    for k, res in enumerate(results):
        trial = Trial("2 coordinators, 1 store + reader", f"experiment {k + 1} of 2", False, 0, 0,
                      experiment=f"concurrent-{k}")
        trials.append(trial)
        if not _finished(trial, res):
            continue
        this = res.json["id"]
        got = judge(trial, store, this, ref, config, watches[this].records() if this in watches else [])
        if this == eid:
            bad = [(n, p) for n, look in enumerate(looks) for p in check_look(look, got, models)]
            trial.detail.update(reads=len(looks), held_reads=held, inconsistent_reads=len({n for n, _ in bad}))
            trial.problems += [f"read {n}: {p}" for n, p in bad[:20]]
            trial.point += f" + {len(looks)} reads while written ({held} at pauses)"
            if held != PAUSE_COUNT:
                trial.problems.append(f"the first coordinator paused at {held} of {PAUSE_COUNT} points")
    log(f"concurrent: {len(looks)} reads ({held} at pauses); {[t.problems[:3] for t in trials]}")
    return trials


# ------------------------------------------------------- 5. store stops accepting writes
def store_fault_trials(address: str, workdir: str, ref: dict[str, Any], faults: list[tuple[str, int]],
                       config: dict[str, Any] = CONFIG, log: Callable[[str], None] = lambda s: None) -> list[Trial]:
    """For each (errno name, N): the coordinator's writes into the store fail after N; it must
    stop with one clear line (exit 1, naming the store and the error), and once the fault is
    lifted ``resume`` must finish the experiment equal to the reference."""
    cfg_path = write_config(config, os.path.join(workdir, "config.json"))
    trials = []
    for code, after in faults:
        store = os.path.join(workdir, f"store-{code}-{after}")
        logs = os.path.join(workdir, f"logs-{code}-{after}")
        watch = Watch(store)
        trial = Trial(f"store write fails ({code})", f"after {after} writes", False, 0, 0,
                      experiment=f"store-{code}-{after}")
        res = cli(["experiment", "run", cfg_path, "--store", store, "--scheduler", address, "--json"], logs,
                  inject=(code, after, store))
        resume_after_store_fault(trial, res, code, watch, address, logs, ref, config)
        log(f"store fault {code} after {after}: {trial.detail} {trial.problems[:3]}")
        trials.append(trial)
    return trials


def resume_after_store_fault(trial: Trial, res: CliResult, code: str, watch: Watch, address: str, logs: str,
                             ref: dict[str, Any], config: dict[str, Any], at: dict[str, Any] | None = None,
                             lift: Callable[[], Any] = lambda: None) -> None:
    """The coordinator ``res`` was stopped by a store fault ``code``: one clear line and a resumable
    state; once ``lift`` has lifted the fault, resume must finish the experiment like the reference."""
    store = watch.store
    trial.problems += judge_store_error(res, store, code)
    eid = watch.experiment_id()
    if eid is None:
        trial.problems.append("the experiment was not created")
        return
    state = experiment_status(store, eid)["state"]
    trial.detail = {"rc": res.rc, "stderr": res.stderr.strip()[-400:], "state": state, "at": at or watch.point()}
    if state not in ("interrupted", "failed"):
        trial.problems.append(f"state after the fault: {state!r}")
    lift()
    done = cli(["experiment", "resume", eid, "--store", store, "--scheduler", address, "--json"], logs)
    if _finished(trial, done, "resume after the fault: "):
        judge(trial, store, eid, ref, config, watch.records())


def judge_store_error(res: CliResult, store: str, code: str) -> list[str]:
    """The CLI must say it in one line: exit 1, the store named, the OS error, no traceback."""
    problems = []
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    strerror = os.strerror(getattr(errno, code))
    if res.rc != 1:
        problems.append(f"exit code {res.rc}, expected 1")
    if "Traceback" in res.stderr:
        problems.append("a traceback on stderr")
    if len(errors) != 1:
        problems.append(f"{len(errors)} 'error:' lines on stderr, expected 1: {lines[-5:]}")
    elif lines[-1] != errors[0]:
        problems.append(f"the error is not one line, or not the last one: {lines[-5:]}")
    else:
        if strerror not in errors[0]:
            problems.append(f"the error does not name the OS error {strerror!r}: {errors[0]}")
        if store not in errors[0]:
            problems.append(f"the error does not name the store {store}: {errors[0]}")
    return problems


def read_only_mount_trials(address: str, workdir: str, ref: dict[str, Any], config: dict[str, Any] = CONFIG,
                           log: Callable[[str], None] = lambda s: None) -> list[Trial]:
    """A real read-only store: a bind mount remounted read-only mid-run (every process sees it:
    coordinator and workers). Needs mount permission; returns [] without it."""
    real, mnt = os.path.join(workdir, "ro-real"), os.path.join(workdir, "ro-store")
    os.makedirs(real)
    os.makedirs(mnt)
    if subprocess.run(["mount", "--bind", real, mnt], capture_output=True).returncode != 0:
        return []
    try:
        cfg_path = write_config(config, os.path.join(workdir, "config.json"))
        logs = os.path.join(workdir, "logs-ro")
        watch = Watch(mnt)
        total = total_steps(ref, config)
        proc = Cli(["experiment", "run", cfg_path, "--store", mnt, "--scheduler", address, "--json"], logs)
        deadline = time.monotonic() + 120
        while watch.steps() < total // 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        at = watch.point()
        for _ in range(200):  # EBUSY while a file there is open for writing: try again
            remount = subprocess.run(["mount", "-o", "remount,ro,bind", mnt], capture_output=True, text=True)
            if remount.returncode == 0:
                break
            time.sleep(0.01)
        else:
            proc.kill()
            raise AssertionError(f"could not remount the store read-only: {remount.stderr}")
        res = proc.wait(120)
        trial = Trial("store read-only (bind mount, all processes)", f"at {at['journaled_steps']} steps", False, 0, 0,
                      experiment="ro-mount")
        resume_after_store_fault(trial, res, "EROFS", watch, address, logs, ref, config, at=at,
                                 lift=lambda: subprocess.run(["mount", "-o", "remount,rw,bind", mnt], check=True))
        log(f"read-only mount: {trial.detail} {trial.problems[:3]}")
        return [trial]
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)


# ------------------------------------------------------------------- report
def table(trials: list[Trial]) -> str:
    rows: dict[str, list[Trial]] = {}
    for t in trials:
        rows.setdefault(t.fault, []).append(t)
    head = ("fault injected", "trials", "experiments completed", "steps lost", "steps duplicated")
    body = []
    for f, ts in rows.items():
        experiments: dict[str, bool] = {}
        for n, t in enumerate(ts):
            key = t.experiment or f"#{n}"
            experiments[key] = experiments.get(key, True) and t.completed
        body.append((f, str(len(ts)), f"{sum(experiments.values())}/{len(experiments)}", str(sum(t.lost for t in ts)),
                     str(sum(t.duplicated for t in ts))))
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), "-+-".join("-" * w for w in widths), *(fmt.format(*r) for r in body)])


@contextmanager
def workdir(prefix: str = "panicflow-faults-") -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------- inject
def _inject_main(argv: list[str]) -> int:
    """``inject ERRNO_NAME N STORE -- ARGS``: panicflow ARGS, with writes into STORE failing after N."""
    code_name, after, store = argv[0], int(argv[1]), os.path.realpath(argv[2])
    args = argv[argv.index("--") + 1 :]
    code = getattr(errno, code_name)
    count = 0
    real_replace, real_link = os.replace, os.link

    def guard(src, dst) -> None:
        nonlocal count
        if os.path.realpath(os.fspath(dst)).startswith(store + os.sep):
            count += 1
            if count > after:
                raise OSError(code, os.strerror(code), os.fspath(src), None, os.fspath(dst))

    def replace(src, dst, *a, **kw):
        guard(src, dst)
        return real_replace(src, dst, *a, **kw)

    def link(src, dst, *a, **kw):
        guard(src, dst)
        return real_link(src, dst, *a, **kw)

    real_open = os.open

    def open_(path, flags, *a, **kw):  # journal appends (LocalRoot.append_bytes) are writes too
        if flags & os.O_APPEND:
            guard(path, path)
        return real_open(path, flags, *a, **kw)

    os.replace, os.link, os.open = replace, link, open_
    from panicflow.cli import main

    try:
        return main(args)
    finally:
        if os.environ.get("PANICFLOW_FAULTS_COUNT_FILE"):  # how many writes it attempted, for choosing N
            Path(os.environ["PANICFLOW_FAULTS_COUNT_FILE"]).write_text(str(count))


# -------------------------------------------------------------------- pause
def _pause_main(argv: list[str]) -> int:
    """``pause CONTROL SPEC -- ARGS``: panicflow ARGS, stopping at each point of SPEC (``PAUSES``)
    until the test has taken its look: at a point it writes CONTROL/pause-<point> (JSON: the point
    and the experiment id) and waits for CONTROL/go-<point>. A point is reached when the count of
    journaled steps, embedding markers or diagrams written by this process first reaches it."""
    control, spec = argv[0], argv[1]
    args = argv[argv.index("--") + 1 :]
    points = {kind: [int(n) for n in values.split(",")] for kind, values in (p.split("=") for p in spec.split(";"))}
    counts: dict[str, int] = dict.fromkeys(("steps", "embedded", "diagrams"), 0)
    from panicflow.store.experiment import ExperimentWriter
    from panicflow.store.journal import Journal, StepRecord

    def passed(kind: str, n: int, experiment: str) -> None:
        before = counts[kind]
        counts[kind] += n
        for at in points.get(kind, ()):
            if before < at <= counts[kind]:
                name = f"{kind}-{at}"
                tmp = Path(control, f".tmp-{name}")
                tmp.write_text(json.dumps({"point": name, "experiment": experiment}))
                tmp.rename(Path(control, f"pause-{name}"))
                deadline = time.monotonic() + 600  # a test that died must not hold it for ever
                while not Path(control, f"go-{name}").exists() and time.monotonic() < deadline:
                    time.sleep(0.005)

    real_append, real_embedded, real_diagram = Journal.append, ExperimentWriter.mark_embedded, ExperimentWriter.write_diagram

    def append(self, records):
        records = list(records)
        real_append(self, records)
        passed("steps", sum(isinstance(r, StepRecord) for r in records), self.prefix.split("/")[1])

    def mark_embedded(self, *a, **kw):
        real_embedded(self, *a, **kw)
        passed("embedded", 1, self.exp.id)

    def write_diagram(self, *a, **kw):
        real_diagram(self, *a, **kw)
        passed("diagrams", 1, self.exp.id)

    Journal.append, ExperimentWriter.mark_embedded, ExperimentWriter.write_diagram = append, mark_embedded, write_diagram
    from panicflow.cli import main

    return main(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "inject":
        sys.exit(_inject_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "pause":
        sys.exit(_pause_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} inject ERRNO_NAME N STORE | pause CONTROL SPEC -- PANICFLOW_ARGS...")
