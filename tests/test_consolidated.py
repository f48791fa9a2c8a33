"""Consolidated metadata (panicflow/store/consolidated.py): written when an experiment finishes,
never stale after a later change of the hierarchy, checked and rewritten by doctor.

Every direct ``xr.open_*`` of a finished experiment is made with warnings as errors: xarray warns
when it finds no consolidated metadata, and reads a stale copy as if it were the hierarchy."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

import panicflow
from panicflow.analysis import clustering
from panicflow.api import doctor
from panicflow.store import Store, consolidated

CONFIG = {
    "name": "consolidated",
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [22, 57],
    "prompts": ["a cat", "a dog"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 24,
}
MODEL = "DummyText"


@pytest.fixture(scope="module")
def finished(client, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("consolidated") / "store")
    eid = panicflow.run_experiment(CONFIG, store=store, client=client)
    return store, eid


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished experiment's store to change: (store, id)."""
    src, eid = finished
    store = str(tmp_path / "store")
    shutil.copytree(src, store)
    return store, eid


def _data(store: str, eid: str) -> str:
    return os.path.join(store, "experiments", eid, "data.zarr")


def _open(store: str, eid: str) -> xr.DataTree:
    """A direct xarray open, as a user would make it: any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_datatree(_data(store, eid), engine="zarr")


def _actual_shape(store: str, eid: str, path: str) -> tuple[int, ...]:
    """From the array's own zarr.json: what the hierarchy is, whatever the root claims."""
    with open(os.path.join(_data(store, eid), path, "zarr.json")) as f:
        return tuple(json.load(f)["shape"])


def test_direct_xarray_opens_of_a_finished_experiment_do_not_warn(finished):
    store, eid = finished
    exp = Store(store).experiment(eid)
    assert exp.read_state()["state"] == "complete"
    assert consolidated.present(exp) and consolidated.check(exp) is None
    tree = _open(store, eid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = xr.open_zarr(_data(store, eid))
        diagrams = xr.open_zarr(_data(store, eid), group=f"diagrams/{MODEL}")
    raw = zarr.open_group(_data(store, eid), mode="r", use_consolidated=False)
    assert set(tree.children) == {"embeddings", "diagrams"}
    assert list(root.stop_reason.values) == list(raw["stop_reason"][:])
    np.testing.assert_array_equal(diagrams.birth.values, raw[f"diagrams/{MODEL}/birth"][:])


def test_open_experiment_reads_no_node_metadata_of_a_finished_experiment(finished, monkeypatch):
    """With consolidated metadata the whole hierarchy is in the root zarr.json: on object storage
    one read instead of one per node."""
    from zarr.storage import LocalStore

    store, eid = finished
    reads: list[str] = []
    get = LocalStore.get

    async def counting(self, key, *args, **kwargs):
        reads.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting)
    tree = panicflow.open_experiment(eid, store=store)
    nodes = [k for k in reads if k.endswith("zarr.json") and k != "zarr.json"]
    assert nodes == [], nodes
    assert "zarr.json" in reads and tree[f"diagrams/{MODEL}"].ds.sizes["pair"] == _actual_shape(store, eid, f"diagrams/{MODEL}/birth")[1]


def test_an_analysis_result_is_in_the_consolidated_metadata(copy, client):
    store, eid = copy
    name = clustering.cluster([eid], MODEL, store=store, client=client, min_cluster_size=3, reduce="none")
    exp = Store(store).experiment(eid)
    assert consolidated.check(exp) is None
    node = _open(store, eid)[f"analysis/clusters/{name}"]
    assert node.attrs["status"] == "complete"
    raw = zarr.open_group(_data(store, eid), mode="r", use_consolidated=False)[f"analysis/clusters/{name}"]
    np.testing.assert_array_equal(node.ds.label.values, raw["label"][:])


def test_resume_after_a_crash_before_complete_consolidates(copy, client):
    """A crash between the last data write and `complete`: resume finds nothing to do, and writes
    the consolidated metadata (and the state) again."""
    store, eid = copy
    exp = Store(store).experiment(eid)
    consolidated.drop(exp)
    exp.write_state("running")
    assert not consolidated.present(exp)
    panicflow.resume_experiment(eid, store=store, client=client)
    assert exp.read_state()["state"] == "complete"
    assert consolidated.present(exp) and consolidated.check(exp) is None
    _open(store, eid)


def test_doctor_finds_and_writes_missing_consolidated_metadata(copy):
    store, eid = copy
    exp = Store(store).experiment(eid)
    consolidated.drop(exp)  # as a crash during an analysis, after it was removed, leaves it
    found = doctor(eid, store=store).experiments[0]
    # not damage (experiments finished before panicflow consolidated have none): a note, and --fix writes it
    assert found.problems == [] and any("no consolidated" in n for n in found.notes), found.notes
    fixed = doctor(eid, store=store, fix=True).experiments[0]
    assert fixed.problems == [] and any("consolidated" in a for a in fixed.actions), fixed.actions
    assert consolidated.present(exp) and doctor(eid, store=store).clean
    assert not any("no consolidated" in n for n in doctor(eid, store=store).experiments[0].notes)
    _open(store, eid)


def test_doctor_finds_stale_consolidated_metadata_and_resume_widens_what_it_says(copy, client):
    """The pair arrays narrowed behind the consolidated copy's back (as a panicflow without it would
    change the hierarchy): doctor reports the stale copy, --fix recomputes the diagrams through
    resume, and the consolidated metadata then has the width resume gave the pair axis."""
    store, eid = copy
    exp = Store(store).experiment(eid)
    wide = _actual_shape(store, eid, f"diagrams/{MODEL}/birth")[1]
    g = zarr.open_group(_data(store, eid), mode="r+", use_consolidated=False)
    for name in ("birth", "death", "dimension"):
        g[f"diagrams/{MODEL}/{name}"].resize((len(CONFIG["seeds"]) * len(CONFIG["prompts"]), 2))
    assert _open(store, eid)[f"diagrams/{MODEL}"].ds.sizes["pair"] == wide  # what a reader trusts: wrong
    found = doctor(eid, store=store).experiments[0]
    stale = [p for p in found.problems if p.kind == "consolidated"]
    assert len(stale) == 1 and "stale" in stale[0].detail and f"diagrams/{MODEL}/birth" in stale[0].detail
    report = doctor(eid, store=store, fix=True, client=client)
    assert report.clean, [p.to_dict() for e in report.experiments for p in e.remaining]
    width = _actual_shape(store, eid, f"diagrams/{MODEL}/birth")[1]
    pairs = g[f"diagrams/{MODEL}/dimension"][:]
    assert 2 < width == int((pairs != -1).sum(axis=1).max())  # resume wrote the widest diagram, no more
    tree = _open(store, eid)
    assert tree[f"diagrams/{MODEL}"].ds.sizes["pair"] == width
    np.testing.assert_array_equal(tree[f"diagrams/{MODEL}"].ds.birth.values, g[f"diagrams/{MODEL}/birth"][:])
    assert consolidated.check(exp) is None


def test_resume_drops_it_before_changing_the_hierarchy(copy, client, monkeypatch):
    """A coordinator session removes the consolidated copy before its first write that can change the
    hierarchy, so a crash mid-session leaves none (missing), never a stale one."""
    from panicflow.store.experiment import Experiment

    store, eid = copy
    exp = Store(store).experiment(eid)
    seen: list[bool] = []
    record = Experiment.record_session

    def spy(self, info):
        seen.append(consolidated.present(self))
        return record(self, info)

    monkeypatch.setattr(Experiment, "record_session", spy)
    panicflow.resume_experiment(eid, store=store, client=client)
    assert seen == [False]
    assert consolidated.present(exp) and consolidated.check(exp) is None


def test_open_experiment_reads_the_nodes_when_it_is_removed_meanwhile(copy, monkeypatch):
    """Removed between open_experiment's look and its open (a resume or an analysis starting): the
    open reads each node's metadata instead of failing."""
    store, eid = copy
    exp = Store(store).experiment(eid)
    seen = consolidated.present

    def seen_then_dropped(e):
        found = seen(e)
        consolidated.drop(e)
        return found

    monkeypatch.setattr(consolidated, "present", seen_then_dropped)
    tree = panicflow.open_experiment(eid, store=store)
    assert not seen(exp)
    assert tree[f"diagrams/{MODEL}"].ds.sizes["pair"] == _actual_shape(store, eid, f"diagrams/{MODEL}/birth")[1]
