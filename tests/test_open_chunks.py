"""`open_experiment(..., chunks=...)`: Dask arrays computed on the user's cluster, equal to the eager
open; the selection idioms on them are in tests/test_xarray_idioms.py (its "dask" cases)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import get_task_stream

import panicflow
from panicflow.api import RUN_LABELS
from panicflow.errors import RunsFailed
from test_xarray_idioms import CONFIG as IDIOMS_CONFIG

CONFIG = {**IDIOMS_CONFIG, "name": "chunks"}  # the idiom tests' experiment: a failed network, strings in `error`
MODEL = "DummyText"


@pytest.fixture(scope="module")
def experiment(client, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("chunks") / "store")
    with pytest.raises(RunsFailed) as failed:
        panicflow.run_experiment(CONFIG, store=store, client=client)
    return store, failed.value.experiment_id


def _raw(store: str, eid: str) -> zarr.Group:
    return zarr.open_group(os.path.join(store, "experiments", eid, "data.zarr"), mode="r", use_consolidated=False)


def _data_variables(tree: xr.DataTree):
    for node in tree.subtree:
        for name, var in node.to_dataset(inherit=False).data_vars.items():
            yield f"{node.path}/{name}", var


@pytest.mark.parametrize("chunks", [{}, "auto", {"run": 3}], ids=["stored", "auto", "run3"])
def test_values_equal_the_eager_open_and_every_variable_is_dask(experiment, chunks):
    store, eid = experiment
    eager = panicflow.open_experiment(eid, store=store).compute()
    lazy = panicflow.open_experiment(eid, store=store, chunks=chunks)
    for path, var in _data_variables(lazy):
        assert var.chunks is not None, path
    for node in lazy.subtree:  # the run labels: coordinates in memory, for groupby and sel
        ds = node.to_dataset(inherit=False)
        if "run" in ds.dims:
            assert all(ds[name].chunks is None for name in RUN_LABELS), node.path
    xr.testing.assert_identical(eager, lazy.compute())


def test_stored_chunks_are_the_dask_chunks(experiment):
    from dask.array.core import normalize_chunks

    store, eid = experiment
    raw = _raw(store, eid)
    tree = panicflow.open_experiment(eid, store=store, chunks={})
    for node, name in ((f"embeddings/{MODEL}", "vector"), ("/", "text"), (f"diagrams/{MODEL}", "birth"), ("/", "length")):
        a = raw[name if node == "/" else f"{node}/{name}"]
        stored = a.shards or a.chunks  # a sharded array: one task per shard (one object)
        assert tree[node].ds[name].chunks == normalize_chunks(stored, a.shape), (node, name)


def test_a_reduction_computes_on_the_cluster(experiment, client):
    store, eid = experiment
    raw = _raw(store, eid)
    tree = panicflow.open_experiment(eid, store=store, chunks="auto")
    vector, root = tree[f"embeddings/{MODEL}"].ds.vector, tree["/"].ds
    with get_task_stream(client) as tasks:  # the workers are other processes: the graph travelled there
        total, texts = client.compute([vector.sum(), (root.text != "").sum()], sync=True)
    assert tasks.data, "nothing ran on the cluster"
    assert float(total) == pytest.approx(float(np.nansum(raw[f"embeddings/{MODEL}/vector"][...], dtype=np.float64)), rel=1e-6)
    assert int(texts) == int((raw["text"][...] != "").sum())


def test_an_in_progress_view_is_a_snapshot_of_its_markers(experiment, tmp_path):
    """While an experiment runs, the view shows the markers read before its metadata, as Dask arrays too:
    a diagram marked later is not shown half-read (its pairs may be wider than the view)."""
    src, eid = experiment
    store = str(tmp_path / "store")
    shutil.copytree(src, store)
    exp = panicflow.api._store(store).experiment(eid)
    exp.write_state("running")
    g = exp.group()
    status = g[f"diagrams/{MODEL}/status"]
    was = str(status[0])
    assert was.startswith("ok")
    status[0] = ""  # not marked yet when the view is opened
    tree = panicflow.open_experiment(eid, store=store, chunks={})
    status[0] = was  # marked after
    view = tree[f"diagrams/{MODEL}"].ds.status
    assert view.chunks is not None
    assert view.values[0] == "" and list(view.values[1:]) == [str(s) for s in status[1:]]
