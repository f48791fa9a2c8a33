"""The usual xarray idioms work on what `panicflow.open_experiment` returns.

Zarr gives strings as NumPy's variable-width StringDType, which cannot be promoted to
float: `Dataset.where` (it fills with NaN) and `isin` raised on any node holding one.
Every result is checked against the same selection made on the plain Zarr arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import panicflow
from panicflow.errors import RunsFailed

CONFIG = {
    "name": "idioms",
    # PoisonT2I fails the "poison" prompt's runs at once: a third stop reason, and errors
    "networks": [["DummyT2I", "DummyI2T"], ["PoisonT2I", "DummyI2T"]],
    "seeds": [22, -1],
    "prompts": ["a cat", "a poison dog"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 12,
    "retry": {"max_attempts": 1, "backoff_s": 0},
}


@pytest.fixture(scope="module")
def experiment(client, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("idioms") / "store")
    try:
        eid = panicflow.run_experiment(CONFIG, store=store, client=client)
    except RunsFailed as exc:
        eid = exc.experiment_id
    return store, eid


@pytest.fixture(scope="module", params=[None, "auto"], ids=["numpy", "dask"])
def tree(experiment, request):
    """The tree read lazily into NumPy, and as Dask arrays (``chunks``): every idiom works on both."""
    store, eid = experiment
    return panicflow.open_experiment(eid, store=store, chunks=request.param)


@pytest.fixture(scope="module")
def raw(experiment):
    """The Zarr group itself, read without panicflow or xarray: the independent side."""
    store, eid = experiment
    return zarr.open_group(f"{store}/experiments/{eid}/data.zarr", mode="r")


def _strs(values) -> list[str]:
    return [str(v) for v in values]


def _mask(cond):
    """A condition on data variables for ``where(..., drop=True)``: with Dask arrays xarray wants it
    computed first (it cannot drop by a lazy mask); a no-op on NumPy. Conditions on the run labels
    (coordinates, always in memory) need nothing."""
    return cond.compute()


def test_strings_are_python_objects_and_still_lazy(tree):
    for path in ("/", "embeddings/DummyText", "diagrams/DummyText"):
        ds = tree[path].ds
        kinds = {name: var.dtype.kind for name, var in ds.variables.items()}
        assert "T" not in kinds.values(), (path, kinds)
    root = tree["/"].ds
    assert root.text.dtype == object and root.model.dtype == object
    assert not isinstance(root.text.variable._data, np.ndarray)  # converted when read, not at open
    assert isinstance(root.text[0, 1].values.item(), str)  # .values: Dask arrays have no .item()


def test_where_drop_on_the_root(tree, raw):
    ds = tree["/"].ds
    stop = _strs(raw["stop_reason"][:])
    assert {"length", "failed"} <= set(stop)  # the selections below are not all-or-nothing
    kept = ds.where(ds.stop_reason == "length", drop=True)
    assert list(kept.run.values) == [i for i, r in enumerate(stop) if r == "length"]
    assert _strs(kept.text.values[0]) == _strs(raw["text"][kept.run.values[0]])
    by_model = ds.where(_mask(ds.model == "DummyI2T"), drop=True)  # a (run, step) mask
    model = np.asarray(_strs(raw["model"][:].ravel())).reshape(raw["model"].shape)
    assert by_model.sizes["step"] == int((model == "DummyI2T").any(axis=0).sum())
    failed = ds.where(_mask(ds.error != ""), drop=True)
    assert _strs(failed.error.values) == [e for e in _strs(raw["error"][:]) if e]


def test_where_drop_on_an_embeddings_and_a_diagrams_node(tree, raw):
    emb = tree["embeddings/DummyText"].ds
    kept = emb.where(emb.prompt == "a cat", drop=True)
    cats = [i for i, p in enumerate(_strs(raw["prompt"][:])) if p == "a cat"]
    assert list(kept.run.values) == cats
    np.testing.assert_array_equal(kept.vector.values, raw["embeddings/DummyText/vector"][cats])
    dg = tree["diagrams/DummyText"].ds
    status = _strs(raw["diagrams/DummyText/status"][:])
    ok = dg.where(_mask(dg.status == "ok"), drop=True)
    assert list(ok.run.values) == [i for i, s in enumerate(status) if s == "ok"]
    np.testing.assert_array_equal(ok.entropy.values, raw["diagrams/DummyText/entropy"][ok.run.values])
    masked = dg.where(dg.stop_reason != "failed")  # no drop: the failed runs' values become NaN
    assert masked.sizes == dg.sizes and masked.entropy.isnull().all(dim="homology_dim").sum() >= 1


def test_sel_by_run_labels(tree, raw):
    ds = tree["/"].ds
    networks, seeds, prompts = _strs(raw["network"][:]), list(raw["seed"][:]), _strs(raw["prompt"][:])
    one = ds.set_xindex("prompt").sel(prompt="a cat")
    assert list(one.run.values) == [i for i, p in enumerate(prompts) if p == "a cat"]
    net = ds.set_xindex("network").sel(network="PoisonT2I,DummyI2T")
    assert list(net.run.values) == [i for i, n in enumerate(networks) if n == "PoisonT2I,DummyI2T"]
    seeded = tree["embeddings/DummyVision"].ds.set_xindex("seed").sel(seed=22)
    assert list(seeded.run.values) == [i for i, s in enumerate(seeds) if s == 22]
    both = ds.isel(run=((ds.prompt == "a cat") & (ds.seed == -1)).values)
    assert list(both.run.values) == [i for i in range(len(seeds)) if prompts[i] == "a cat" and seeds[i] == -1]


def test_groupby_prompt(tree, raw):
    ds = tree["/"].ds
    mean = ds.length.groupby("prompt").mean()
    lengths, prompts = raw["length"][:], np.asarray(_strs(raw["prompt"][:]))
    for prompt in ("a cat", "a poison dog"):
        assert float(mean.sel(prompt=prompt)) == pytest.approx(lengths[prompts == prompt].mean())
    per_prompt = tree["diagrams/DummyText"].ds.entropy.groupby("prompt").max()
    assert set(per_prompt.prompt.values) == {"a cat", "a poison dog"}


def test_to_dataframe(tree, raw):
    frame = tree["/"].ds[["length", "stop_reason", "error"]].to_dataframe()
    assert list(frame["stop_reason"]) == _strs(raw["stop_reason"][:])
    assert list(frame["error"]) == _strs(raw["error"][:])
    assert frame["stop_reason"].map(type).eq(str).all()
    diagrams = tree["diagrams/DummyText"].ds[["status", "entropy"]].to_dataframe()
    assert len(diagrams) == raw["diagrams/DummyText/entropy"].size


def test_isin(tree, raw):
    ds = tree["/"].ds
    ended = ds.where(ds.stop_reason.isin(["length", "loop"]), drop=True)
    assert list(ended.run.values) == [i for i, r in enumerate(_strs(raw["stop_reason"][:])) if r in ("length", "loop")]
    dg = tree["diagrams/DummyVision"].ds
    assert int(dg.status.isin(["ok"]).sum()) == _strs(raw["diagrams/DummyVision/status"][:]).count("ok")
