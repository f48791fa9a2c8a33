"""Deterministic batching (issue 12): a fixed-seed run's batches, and so its bytes, depend on the config alone.

Real architectures at a tiny size (a diffusers SDXL pipeline, a BLIP-2 captioner, a
sentence-transformers text embedder, a CLIP image embedder; seeded random weights, built
on the workers) make outputs depend on the batch through batched kernels; the stores
written on 1 worker process and on the session cluster's 2, and after a SIGKILL of the coordinator and a
resume, must still be identical.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dask.utils import key_split

import panicflow
from panicflow.config import validate_config
from panicflow.models import REGISTRY
from cluster_util import journaled_steps
from panicflow.scheduler.coordinator import batch_groups, task_key, task_prefix

HERE = Path(__file__).resolve().parent


def test_groups_are_a_function_of_the_config():
    cfg = validate_config({
        "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]], "seeds": [1, 2, -1],
        "prompts": ["a", "b", "c"], "embedding_models": ["DummyText"], "max_length": 5,
        "batch_size": {"DummyT2I": 4, "DummyI2T": 8, "DummyT2I2": 2},
    })
    groups = batch_groups(cfg)
    runs = cfg.runs()
    assert groups == batch_groups(validate_config(cfg.model_dump()))
    # auto: unseeded runs are batched freely, fixed-seed runs in groups of one network only
    assert [g is None for g in groups] == [r.seed == -1 for r in runs]
    by_group: dict[int, list] = {}
    for run, g in zip(runs, groups):
        if g is not None:
            by_group.setdefault(g, []).append(run)
    for members in by_group.values():
        assert len({r.network for r in members}) == 1
        # a group never exceeds the smallest batch size of its network's models: one call each step
        assert len(members) <= min(cfg.batch_size_for(m) for m in members[0].network)
    # network 1: 6 fixed-seed runs in groups of min(4, 8); network 2: 6 in groups of min(2, 64)
    assert sorted(len(m) for m in by_group.values()) == [2, 2, 2, 2, 4]

    free = validate_config({**cfg.model_dump(), "batching": {"mode": "free"}})
    assert set(batch_groups(free)) == {None}
    every = validate_config({**cfg.model_dump(), "batching": {"mode": "deterministic", "group_size": 3}})
    assert None not in batch_groups(every)
    assert max(np.bincount(batch_groups(every))) == 3


def test_task_names_read_stage_and_model_on_the_dashboard():
    for name, spec in REGISTRY.items():
        stage = "embed" if spec.role.is_embedder else ("t2i" if spec.output_kind.value == "image" else "i2t")
        for key in (task_key(stage, name, "0123456789abcdef0123456789abcdef"), task_key(stage, name, "run12", "89abcdef")):
            assert key_split(key) == task_prefix(stage, name) == f"{stage}_{name.replace('-', '_')}", key
            assert key_split(key).isascii(), key  # what a user types to filter the task stream finds it


@pytest.mark.parametrize("invariant, calls", [("none", [3]), ("per_item", [1, 1, 1])])
def test_per_item_mode_calls_the_model_once_per_input(tmp_path, monkeypatch, invariant, calls):
    """``batching.invariant: per_item``: every output is what the model gives that input alone."""
    from panicflow.models import cache
    from panicflow.scheduler import tasks
    from panicflow.store import Store

    model = cache.get_model("DummyT2I")
    sizes: list[int] = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda inputs, seeds: sizes.append(len(inputs)) or real(inputs, seeds))
    store = Store(str(tmp_path / "store"), create=True)
    prompts, seeds = ["a", "bb", "ccc"], [1, 2, 3]
    out = tasks.invoke_batch(store.location, "DummyT2I", prompts, seeds, invariant)
    assert sizes == calls
    alone = [tasks.invoke_batch(store.location, "DummyT2I", [p], [s])["outputs"][0] for p, s in zip(prompts, seeds)]
    assert out["outputs"] == alone
    params = json.loads(store.objects.get_bytes(out["parameters_hash"]))
    assert params.get("batch_invariant", "none") == invariant


# ---------------------------------------------------------------------------------- real models

pytest.importorskip("torch")
pytest.importorskip("diffusers")

CONFIG = {
    "name": "tiny-real",
    "networks": [["TinySDXL", "TinyBLIP2"]],
    "seeds": [3, 4],
    "prompts": ["a red fox in the snow", "a lighthouse", "an extremely long prompt " * 5],
    "embedding_models": ["TinyBertText", "TinyCLIPVision"],
    "max_length": 8,
    "persistence": {"maxdim": 1},
}
# the same data whatever the cluster; batch_id is a fresh id per call, so it is compared by the groups it forms
COMPARED = ("length", "stop_reason", "loop_start", "model", "output_hash", "text", "invocation_seed",
            "batch_size", "batch_position")


def _snapshot(store: str, eid: str) -> dict[str, np.ndarray]:
    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    out = {name: root[name].values.astype(object) if root[name].dtype.kind in "OTU" else root[name].values for name in COMPARED}
    ids = root["batch_id"].values.astype(object)
    # the invocations sharing each call, as sets of (run, step): the batches themselves
    calls: dict[str, list] = {}
    for (run, step), bid in np.ndenumerate(ids):
        if bid:
            calls.setdefault(bid, []).append((run, step))
    out["batches"] = np.array(sorted(str(sorted(v)) for v in calls.values()))
    for model in CONFIG["embedding_models"]:
        out[f"{model}/vector"] = tree[f"embeddings/{model}"].ds.vector.values
        d = tree[f"diagrams/{model}"].ds
        for name in ("status", "birth", "death", "entropy"):
            out[f"{model}/{name}"] = d[name].values.astype(object) if d[name].dtype.kind in "OTU" else d[name].values
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # NaN == NaN here; bit for bit otherwise


@pytest.fixture(scope="module")
def clusters(client):
    """{1: a cluster of one worker process, 2: the session's of two} (a third cluster of 3 workers cost ~20 s
    of worker starts and model loads on two cores, and proves no more than 1 against 2)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as one:
        assert len(client.scheduler_info()["workers"]) == 2
        yield {1: one, 2: client}


@pytest.fixture(scope="module")
def reference(clusters, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("one-worker") / "store")
    eid = panicflow.run_experiment(CONFIG, store=store, client=clusters[1])
    return _snapshot(store, eid)


def test_one_and_two_workers_write_identical_stores(clusters, reference, tmp_path):
    store = str(tmp_path / "store")
    eid = panicflow.run_experiment(CONFIG, store=store, client=clusters[2])
    got = _snapshot(store, eid)
    _assert_same(reference, got)
    # the batches really were shared calls: groups of 4 and 2 runs of one network
    assert set(np.unique(got["batch_size"])) - {0} == {2, 4}


def test_a_killed_and_resumed_experiment_equals_an_uninterrupted_one(clusters, reference, tmp_path):
    store = str(tmp_path / "store")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    env = {**os.environ, "PANICFLOW_TEST_MODELS": "1", "PYTHONPATH": str(HERE)}
    address = clusters[2].scheduler.address
    proc = subprocess.Popen(
        [sys.executable, "-m", "panicflow", "experiment", "run", str(config), "--store", store,
         "--scheduler", address, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    # kill it at a random point of the runs stage: after 1 to all-but-one of the steps the uninterrupted
    # experiment journaled (fixed-seed runs of tiny random models loop early: far fewer than 6 x 8)
    total = int(reference["length"].sum())
    assert total >= 2
    target = random.Random(os.getpid()).randint(1, total - 1)
    deadline = time.monotonic() + 600
    journals = Path(store) / "experiments"
    while time.monotonic() < deadline and proc.poll() is None:
        if journaled_steps(store) >= target:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the experiment ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (eid,) = [p.name for p in journals.iterdir()]
    panicflow.resume_experiment(eid, store=store, client=clusters[2])
    _assert_same(reference, _snapshot(store, eid))


def test_an_experiment_of_format_1_is_upgraded_when_resumed(client, tmp_path):
    """Experiments written before the batch_* and diagram provenance arrays existed still open, and a
    resume adds those arrays (empty) before it writes anything."""
    import shutil

    from panicflow.store import Store

    store = str(tmp_path / "store")
    cfg = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": [3], "prompts": ["a cat"],
           "embedding_models": ["DummyText"], "max_length": 4, "persistence": {"maxdim": 0}}
    eid = panicflow.run_experiment(cfg, store=store, client=client)
    folder = Path(store) / "experiments" / eid
    removed = ["batch_id", "batch_size", "batch_position", "diagrams/DummyText/point_used"]
    for name in removed:
        shutil.rmtree(folder / "data.zarr" / name)
    root = folder / "data.zarr" / "zarr.json"  # a format-1 experiment has no consolidated metadata either
    root.write_text(json.dumps({k: v for k, v in json.loads(root.read_text()).items() if k != "consolidated_metadata"}))
    meta = json.loads((folder / "experiment.json").read_text())
    (folder / "experiment.json").write_text(json.dumps({**meta, "format": 1}))
    assert "batch_id" not in panicflow.open_experiment(eid, store=store)["/"].ds  # format 1 still opens
    panicflow.resume_experiment(eid, store=store, client=client)
    exp = Store(store).experiment(eid)
    assert exp.meta["format"] == 2
    tree = panicflow.open_experiment(eid, store=store)
    assert (tree["/"].ds.batch_size.values == 0).all()  # present, empty: those calls were not recorded
    assert "point_used" in tree["diagrams/DummyText"].ds
