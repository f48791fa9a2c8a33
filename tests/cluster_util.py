"""A real Dask cluster for tests, started the way users start one.

``dask scheduler`` and N ``dask worker ADDRESS`` processes (each with its nanny, and
their defaults: one thread per core unless ``nthreads`` is given), run from a
folder of their own, not the test's current folder, so nothing can rely on the
client and the workers sharing a working directory. They get the test
environment (``child_env``: ``PANICFLOW_TEST_MODELS=1``, tests/ on ``PYTHONPATH``).

Usage::

    from cluster_util import DaskCluster

    with DaskCluster(workers=2, nthreads=1) as cluster, cluster.client() as client:
        cluster.address             # tcp://127.0.0.1:PORT (also cluster.scheduler_file)
        cluster.dashboard           # http://127.0.0.1:PORT, the scheduler's HTTP server
        name = cluster.add_worker() # "w2"; waits until it has joined
        cluster.kill_worker(name)   # SIGKILL the worker and its nanny: it leaves for good
        cluster.add_worker(wrap=elsewhere(folder))  # a worker that sees its own empty `folder`
        cluster.kill_worker("w0", restart=True)  # SIGKILL the worker only: its nanny restarts it
        cluster.stop_worker("w1")   # SIGTERM: a graceful exit
        cluster.log("w0")           # the tail of a process's output, for assertion messages

or as a pytest fixture: ``dask_cluster = cluster_fixture(workers=2, scope="module")`` at
module level. Teardown SIGTERMs then SIGKILLs every process group it started
(each process is started in a session of its own), even after a failed start;
``--death-timeout`` and ``--idle-timeout`` end them by themselves should the test
process die without tearing down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
DASK = str(Path(sys.executable).with_name("dask"))
START_TIMEOUT_S = 120  # two cores shared by everyone: imports alone take seconds


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the processes started here: test models on, tests/ importable."""
    env = {**os.environ, "PANICFLOW_TEST_MODELS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    env.pop("DASK_SCHEDULER_ADDRESS", None)  # a worker must join the scheduler it is given
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` (then SIGKILL after ``timeout``) to the process group of a process started with
    ``start_new_session``: the ``dask worker`` nanny and the worker process it started."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:  # the group may outlive its leader (a worker whose nanny died): always finish it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class DaskCluster:
    """``dask scheduler`` and ``workers`` x ``dask worker ADDRESS`` as separate processes.

    ``nthreads`` None keeps ``dask worker``'s default (one thread per core); ``env`` is the
    processes' environment (default ``child_env()``); ``workdir`` holds their current folder
    (``workdir/cwd``), the scheduler file and the logs (default: a temporary folder, removed
    at teardown); ``worker_args`` are added to every ``dask worker`` command line.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        nthreads: int | None = None,
        env: dict[str, str] | None = None,
        workdir: str | os.PathLike | None = None,
        worker_args: list[str] | None = None,
    ) -> None:
        self.n_start = workers
        self.nthreads = nthreads
        self.env = env if env is not None else child_env()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="panicflow-cluster-"))
        self.cwd = self.workdir / "cwd"
        self.logdir = self.workdir / "logs"
        self.scheduler_file = str(self.workdir / "scheduler.json")
        self.worker_args = list(worker_args or [])
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}  # name -> the `dask worker` process (its nanny)
        self.address = ""
        self.dashboard = ""
        self._count = 0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "DaskCluster":
        try:
            self.cwd.mkdir(parents=True, exist_ok=True)
            self.logdir.mkdir(parents=True, exist_ok=True)
            self.scheduler = self._popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                 "--scheduler-file", self.scheduler_file, "--idle-timeout", "900"],
                "scheduler",
            )
            info = self._read_scheduler_file()
            self.address = info["address"]
            port = info.get("services", {}).get("dashboard")
            self.dashboard = f"http://127.0.0.1:{port}" if port else ""
            names = [self._spawn_worker() for _ in range(self.n_start)]
            if names:
                self.wait_for_workers(names)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process started here (workers first), then remove a temporary workdir."""
        for proc in self.workers.values():
            stop_process(proc)
        stop_process(self.scheduler)
        self.workers.clear()
        self.scheduler = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "DaskCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ workers
    def add_worker(self, *, nthreads: int | None = None, env: dict[str, str] | None = None, wait: bool = True,
                   wrap: list[str] | None = None, args: list[str] | None = None) -> str:
        """Start one more ``dask worker`` (``nthreads`` as for the constructor); return its name.
        ``env`` replaces the environment; ``wrap`` is a command that runs it (see ``elsewhere``);
        ``args`` are added to its command line (``["--resources", "GPU=1"]``)."""
        name = self._spawn_worker(nthreads=nthreads, env=env, wrap=wrap, args=args)
        if wait:
            self.wait_for_workers([name])
        return name

    def kill_worker(self, name: str, *, restart: bool = False) -> None:
        """SIGKILL worker ``name``. By default with its nanny: it leaves the cluster for good.
        ``restart=True`` kills only the worker process; its nanny starts a new one (at a new address)."""
        if not restart:
            proc = self.workers.pop(name)
            stop_process(proc, timeout=0, sig=signal.SIGKILL)
            return
        with self.client() as c:
            pids = c.run(os.getpid, workers=[self.worker_address(name, c)])
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)

    def stop_worker(self, name: str, timeout: float = 30) -> None:
        """SIGTERM worker ``name`` (``dask worker`` closes gracefully); it leaves the cluster."""
        stop_process(self.workers.pop(name), timeout=timeout)

    def worker_address(self, name: str, client=None) -> str:
        """The current address of worker ``name`` (it changes when its nanny restarts it)."""
        info = self._info(client)
        for addr, w in info.items():
            if w.get("name") == name:
                return addr
        raise KeyError(f"no worker {name!r} in the cluster (it has {sorted(w.get('name') for w in info.values())})")

    def worker_names(self, client=None) -> list[str]:
        """Names of the workers the scheduler knows now."""
        return sorted(str(w.get("name")) for w in self._info(client).values())

    def wait_for_workers(self, names: list[str], timeout: float = START_TIMEOUT_S) -> None:
        """Until every worker in ``names`` has joined the scheduler."""
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while True:
                missing = set(names) - set(self.worker_names(c))
                if not missing:
                    return
                dead = [n for n in missing if n in self.workers and self.workers[n].poll() is not None]
                if dead or time.monotonic() > deadline:
                    why = "exited" if dead else f"did not join in {timeout} s"
                    raise RuntimeError(f"dask worker {sorted(missing)} {why}: {self.log(sorted(missing)[0])}")
                time.sleep(0.1)

    # ------------------------------------------------------------ helpers
    def client(self, **kw: Any):
        """A new ``distributed.Client`` of this cluster (close it, or use it in ``with``)."""
        from distributed import Client

        return Client(self.address, timeout="30s", **kw)

    def log(self, name: str, chars: int = 3000) -> str:
        """The last ``chars`` of the output of ``"scheduler"`` or a worker."""
        try:
            return (self.logdir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _info(self, client=None) -> dict[str, dict]:
        if client is None:
            with self.client() as c:
                return c.scheduler_info(n_workers=-1)["workers"]
        return client.scheduler_info(n_workers=-1)["workers"]

    def _spawn_worker(self, nthreads: int | None = None, env: dict[str, str] | None = None,
                      wrap: list[str] | None = None, args: list[str] | None = None) -> str:
        name = f"w{self._count}"
        self._count += 1
        command = [DASK, "worker", self.address, "--name", name, "--host", "127.0.0.1", "--death-timeout", "60"]
        threads = nthreads if nthreads is not None else self.nthreads
        if threads is not None:
            command += ["--nthreads", str(threads)]
        self.workers[name] = self._popen([*(wrap or []), *command, *self.worker_args, *(args or [])], name, env)
        return name

    def _popen(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.logdir / f"{name}.log", "ab") as out:
            # a session of its own: teardown signals exactly this group, a Ctrl-C of the test does not reach it
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                                    cwd=self.cwd, start_new_session=True)

    def _read_scheduler_file(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return json.loads(Path(self.scheduler_file).read_text())
            except (OSError, ValueError):  # not there yet, or half written
                pass
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler')}")
            time.sleep(0.05)


def elsewhere(folder: str | os.PathLike) -> list[str] | None:
    """A ``wrap`` for ``add_worker``: the worker sees an empty ``folder`` of its own (a tmpfs in a
    private mount namespace), as a worker on another machine sees its own disk there. None where
    this process may not mount (not root, no ``unshare``): skip the test then."""
    folder = os.fspath(folder)
    if not shutil.which("unshare") or subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", folder], capture_output=True
    ).returncode != 0:
        return None
    # sh runs mount, then exec: the worker keeps the pid Popen knows, and the namespace dies with it
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs "$0" && exec "$@"', folder]


def cluster_fixture(workers: int = 2, scope: str = "function", **kwargs: Any):
    """A pytest fixture yielding a started ``DaskCluster(workers, **kwargs)``.

    Assign it at module level in a test module: ``dask_cluster = cluster_fixture(2, scope="module")``.
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _fixture() -> Iterator[DaskCluster]:
        with DaskCluster(workers, **kwargs) as cluster:
            yield cluster

    return _fixture


def journaled_steps(store: str) -> int:
    """Steps recorded so far in the journals of every experiment in ``store`` (0 while it is being created):
    how tests watch an experiment running beside them."""
    from panicflow.store import Store
    from panicflow.store.journal import StepRecord

    folder = Path(store) / "experiments"
    if not folder.is_dir():
        return 0
    try:
        st = Store(store)
        return sum(isinstance(r, StepRecord) for eid in os.listdir(folder) for r in st.experiment(eid).journal.read())
    except Exception:  # caught mid-creation: look again
        return 0


__all__ = ["DaskCluster", "child_env", "cluster_fixture", "elsewhere", "journaled_steps", "stop_process"]
