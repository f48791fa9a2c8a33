"""An fsspec URL works the same way as a local folder: a whole experiment on memory://."""

from __future__ import annotations

import uuid

import numpy as np

import panicflow


def test_experiment_on_an_fsspec_memory_store():
    from distributed import Client, LocalCluster

    store = f"memory://panicflow-{uuid.uuid4().hex}"
    cfg = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": [22], "prompts": ["a cat"],
           "embedding_models": ["DummyText"], "max_length": 12}
    # memory:// lives in one process, so the workers are threads here
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        eid = panicflow.run_experiment(cfg, store=store, client=client)
    status = panicflow.experiment_status(eid, store=store)
    assert status.state == "complete" and status.invocations == 12
    tree = panicflow.open_experiment(eid, store=store)
    root = tree["/"].ds
    assert root.stop_reason[0].item() == "length"
    assert panicflow.load_text(root.output_hash[0, 1].item(), store=store) == root.text[0, 1].item()
    v = tree["embeddings/DummyText"].ds.vector[0].values
    assert (~np.isnan(v).any(axis=1)).sum() == 6
    assert [e["id"] for e in panicflow.list_experiments(store)] == [eid]
