"""Shared fixtures: one LocalCluster with worker processes for the whole session."""

from __future__ import annotations

import os

# Test-only models (ConstantT2I, PoisonT2I, FlakyT2I) must be registered in the
# coordinator and in the spawned workers, which inherit this environment.
os.environ["PANICFLOW_TEST_MODELS"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``soak`` (long statistical runs, pyproject.toml) run only when ``-m`` is given:
    ``scripts/test -m soak`` runs them alone, ``-m "soak or not soak"`` with the rest."""
    if config.option.markexpr:
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]


def pytest_collection_finish(session):
    """Everything imported and collected so far (~550,000 objects once torch, transformers and Dask are in) is
    kept for the whole session: frozen out of the garbage collector's scans (``gc.freeze``), so a full
    collection (the models cache after each model test, Python's own every so often) scans only what the tests
    made since. A full collection took ~0.3 s before."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(scope="module", autouse=True)
def sigint_left_as_found(request):
    """Warn when a module leaves SIGINT ignored in this process (a suite's later subprocesses inherit it: the
    panicflow-loop test hung on it twice), and give it back, so that one module's leftover reaches no other."""
    import signal
    import warnings

    before = signal.getsignal(signal.SIGINT)
    yield
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and before != signal.SIG_IGN:
        warnings.warn(f"SIGINT left ignored by {request.module.__name__}")
        signal.signal(signal.SIGINT, before)


# Dask's own monitoring, sampled less often on the session cluster. At its defaults (a loop tick every
# 20 ms, a system monitor every 500 ms, the nanny's memory check every 100 ms, the task profiler) an idle
# LocalCluster of 2 workers took 3.5 CPU s in 40 s (9 % of a core), 0.6 s with these: for each of the
# suite's processes, the whole suite long, on 2 cores. panicflow reads none of them; every other cluster
# (the ones tests start the way users do, the CLI's own, a test's LocalCluster) keeps Dask's defaults.
QUIET_MONITORING = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
}


@pytest.fixture(scope="session")
def client():
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(QUIET_MONITORING):  # read when the servers start; the workers get a copy
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0")
    with cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def model_sleep(client):
    """``model_sleep(s)``: SleepT2I/SleepI2T calls on the session cluster's workers take ``s`` seconds.

    The workers read PANICFLOW_TEST_SLEEP_S from their own environment, fixed when the session
    started them: a test's ``monkeypatch.setenv`` never reaches them (they kept the 0.2 s default).
    """
    def set_sleep(seconds: float) -> None:
        client.run(lambda: os.environ.__setitem__("PANICFLOW_TEST_SLEEP_S", str(seconds)))

    yield set_sleep
    client.run(lambda: os.environ.pop("PANICFLOW_TEST_SLEEP_S", None))


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


from semantics import SEMANTICS_CONFIG  # noqa: E402


@pytest.fixture(scope="session")
def semantics_experiment(client, tmp_path_factory):
    """(store path, experiment id) of one finished experiment shared by several test modules."""
    import panicflow

    store = str(tmp_path_factory.mktemp("semantics") / "store")
    eid = panicflow.run_experiment(SEMANTICS_CONFIG, store=store, client=client)
    return store, eid
