"""The store on an S3-compatible object store: a `moto_server` process on loopback, started here,
written to by separately started `dask worker` processes (tests/cluster_util.py) that share no
folder with the client. Credentials and the endpoint reach every process the usual way, through
the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL): docs/clusters.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

import panicflow  # noqa: E402
from cluster_util import DaskCluster, child_env  # noqa: E402
from s3_util import BUCKET, free_port, s3_env  # noqa: E402,F401 (a fixture)
from oracle import reference_run  # noqa: E402

CONFIG = {
    "name": "on-s3",
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [22, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 12,
}


@pytest.fixture(scope="module")
def s3_cluster(s3_env):
    with DaskCluster(2, nthreads=1, env=child_env(**s3_env)) as cluster:
        yield cluster


def test_an_experiment_on_s3_written_by_worker_processes(s3_cluster: DaskCluster, s3_env, tmp_path):
    store = f"s3://{BUCKET}/stores/one"
    eid = panicflow.run_experiment(CONFIG, store=store, scheduler=s3_cluster.address)
    status = panicflow.experiment_status(eid, store=store)
    assert status.state == "complete" and status.runs_complete == 2 and status.invocations == 24
    assert status.persistence_diagrams == {"DummyText": 2, "DummyVision": 2}
    assert [e["id"] for e in panicflow.list_experiments(store)] == [eid]

    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    want = reference_run(("DummyT2I", "DummyI2T"), 22, "a cat", 12)
    assert list(root.output_hash[0, :12].values) == want.hashes  # the seeded run, bit for bit
    assert panicflow.load_text(str(root.output_hash[0, 1].values), store=store) == str(root.text[0, 1].values)
    assert panicflow.load_image(str(root.output_hash[1, 0].values), store=store).size == (256, 256)
    v = tree["embeddings/DummyText"].ds.vector.values
    assert (~np.isnan(v).any(axis=2)).sum() == 12  # the 12 captions of the two runs
    diagrams = tree["diagrams/DummyVision"].ds
    assert list(diagrams.status.values) == ["ok", "ok"], list(diagrams.reason.values)
    assert not list(Path.cwd().glob(f"{BUCKET}*")) and not (s3_cluster.cwd / BUCKET).exists()  # nothing local

    # the CLI reads it back too, and no local folder named like the URL appeared anywhere
    res = subprocess.run([sys.executable, "-m", "panicflow", "experiment", "status", eid, "--store", store, "--json"],
                         cwd=tmp_path, env=child_env(**s3_env), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["invocations"] == 24
    assert list(tmp_path.iterdir()) == []


def test_a_worker_without_the_endpoint_is_named_before_anything_is_written(s3_cluster: DaskCluster, s3_env, tmp_path):
    """A worker whose environment points elsewhere (here: a port nobody listens on) cannot reach
    the bucket: one line names the store and that worker, exit 2, and the store stays empty."""
    import s3fs

    env = child_env(**{**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                       "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"})
    name = s3_cluster.add_worker(nthreads=1, env=env)
    try:
        address = s3_cluster.worker_address(name)
        (tmp_path / "config.json").write_text(json.dumps(CONFIG))
        store = f"s3://{BUCKET}/stores/two"
        res = subprocess.run(
            [sys.executable, "-m", "panicflow", "experiment", "run", "config.json", "--store", store,
             "--scheduler", s3_cluster.address], cwd=tmp_path, env=child_env(**s3_env), capture_output=True,
            text=True, timeout=300,
        )
        assert res.returncode == 2, res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, res.stderr[-3000:]
        assert f"store {store} cannot be used by 1 of 3 workers: {address} (cannot read it:" in errors[0]
        fs = s3fs.S3FileSystem()
        fs.invalidate_cache()
        assert not fs.exists(f"{BUCKET}/stores/two") or fs.ls(f"{BUCKET}/stores/two") == []
    finally:
        s3_cluster.kill_worker(name)
