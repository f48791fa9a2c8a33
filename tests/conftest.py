"""Shared fixtures: one LocalCluster with worker processes for the whole session."""

from __future__ import annotations

import os

# Test-only models (ConstantT2I, PoisonT2I, FlakyT2I) must be registered in the
# coordinator and in the spawned workers, which inherit this environment.
os.environ["PANICFLOW_TEST_MODELS"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


# Seeds 22 and 57 make seeded dummy runs of "a cat" fall into loops within 90 steps
# (found with tests/oracle.py); ConstantT2I loops at once; seed -1 never stops early.
SEMANTICS_CONFIG = {
    "name": "semantics",
    "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"], ["ConstantT2I", "DummyI2T"]],
    "seeds": [57, 22, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyText2", "DummyVision", "DummyVision2"],
    "max_length": 90,
    "batch_size": {"DummyT2I": 2},
}


@pytest.fixture(scope="session")
def semantics_experiment(client, tmp_path_factory):
    """(store path, experiment id) of one finished experiment shared by several test modules."""
    import panicflow

    store = str(tmp_path_factory.mktemp("semantics") / "store")
    eid = panicflow.run_experiment(SEMANTICS_CONFIG, store=store, client=client)
    return store, eid
