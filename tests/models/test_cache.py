"""Resident models: LRU eviction by memory budget, reuse, and the same on a LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

from panicflow.models import _class_factory, cache
from panicflow.models.base import ModelSpec
from panicflow.models.dummy import DummyT2I, DummyText


def sized(name: str, cls, gb: float) -> ModelSpec:
    """A dummy model that claims ``gb`` of GPU memory."""
    return ModelSpec(name=name, role=cls.role, factory=_class_factory(cls), dim=getattr(cls, "dim", None),
                     extra={"approx_gpu_gb": gb})


SIZED = [sized("SizedA", DummyText, 4), sized("SizedB", DummyT2I, 4), sized("SizedC", DummyText, 4),
         sized("Huge", DummyText, 50)]


@pytest.fixture
def sized_models():
    cache.register_specs(SIZED)
    cache.set_memory_budget(10)


def test_resident_model_is_reused(sized_models):
    loads = cache.state()["loads"]  # this process's count: other modules may have loaded models before
    a = cache.get_model("SizedA")
    assert cache.get_model("SizedA") is a
    state = cache.state()
    assert state["loads"] == loads + 1 and state["models"]["SizedA"]["calls"] == 2


def test_least_recently_used_model_is_evicted(sized_models):
    a = cache.get_model("SizedA")
    cache.get_model("SizedB")
    assert cache.get_model("SizedA") is a  # A is now the most recently used
    cache.get_model("SizedC")  # 12 GB > 10: B goes
    assert cache.loaded_models() == ["SizedA", "SizedC"]
    assert cache.state()["evicted"][-1] == "SizedB" and cache.used_gb() == 8
    cache.get_model("SizedB")  # and comes back, pushing out A
    assert cache.loaded_models() == ["SizedC", "SizedB"]


def test_model_larger_than_the_budget_loads_alone(sized_models):
    cache.get_model("SizedA")
    cache.get_model("Huge")
    assert cache.loaded_models() == ["Huge"]


def test_budget_from_environment(monkeypatch, sized_models):
    cache.set_memory_budget(None)
    monkeypatch.setenv(cache.MEMORY_ENV, "5")
    assert cache.memory_budget_gb() == 5
    cache.get_model("SizedA")
    cache.get_model("SizedB")
    assert cache.loaded_models() == ["SizedB"]


def test_unlimited_without_budget():
    cache.register_specs(SIZED)
    assert cache.memory_budget_gb() is None  # torch not asked; no GPU here
    for name in ("SizedA", "SizedB", "SizedC", "Huge"):
        cache.get_model(name)
    assert len(cache.loaded_models()) == 4


def test_unload_and_invoke(sized_models):
    out, params = cache.invoke("SizedB", ["a red fox"], [3])
    assert len(out) == 1 and params["model"] == "SizedB" and params["width"] == 256
    emb, _ = cache.invoke("SizedA", ["a", "b"])
    assert emb.shape == (2, 768) and emb.dtype == np.float32
    with pytest.raises(ValueError):
        cache.invoke("SizedB", ["x"])  # generative models need seeds
    assert cache.unload("SizedB") and not cache.unload("SizedB")
    assert "SizedB" not in cache.loaded_models()


def test_clear_collects_garbage_only_when_it_evicted_a_model(sized_models, monkeypatch):
    """A full garbage collection took ~0.3 s at every clear (each model test's teardown, a worker plugin's) in a
    process that imported torch: only when a model was let go is there anything to free."""
    collections = []
    monkeypatch.setattr(cache, "_free_accelerator_memory", lambda: collections.append(1))
    cache.clear()
    assert collections == []  # nothing loaded
    cache.get_model("SizedA")
    cache.clear()
    assert collections == [1] and cache.loaded_models() == []


# --- on a LocalCluster: two worker processes, each with one "GPU" resource ------------------


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", resources={"GPU": 1}
    )
    client = distributed.Client(cluster)
    client.register_plugin(cache.ModelPlugin(specs=SIZED, memory_gb=10))
    yield client
    client.close()
    cluster.close()


def _on(client, address, fn, *args):
    future = client.submit(fn, *args, workers=[address], allow_other_workers=False, resources={"GPU": 1}, pure=False)
    return future.result()


def test_workers_keep_models_and_report_them(client):
    first, second = sorted(client.scheduler_info()["workers"])
    client.run(cache.clear)
    _on(client, first, cache.invoke, "SizedA", ["x"])
    pid = _on(client, first, cache.state)["pid"]
    _on(client, first, cache.invoke, "SizedA", ["y"])
    state = _on(client, first, cache.state)
    assert state["pid"] == pid and state["loads"] == 1 and state["models"]["SizedA"]["calls"] == 2
    assert state["budget_gb"] == 10
    assert cache.held_models(client) == {first: ["SizedA"], second: []}
    assert cache.workers_holding(client, "SizedA") == [first]


def test_workers_evict_least_recently_used(client):
    first, _ = sorted(client.scheduler_info()["workers"])
    client.run(cache.clear)
    for name in ("SizedA", "SizedB", "SizedA", "SizedC"):
        _on(client, first, cache.invoke, name, ["a prompt"], [1])
    assert cache.held_models(client)[first] == ["SizedA", "SizedC"]
    assert _on(client, first, cache.state)["evicted"][-1] == "SizedB"


def _address(client, name):
    return next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == name)


def test_restarted_worker_rebuilds(client):
    name = client.scheduler_info()["workers"][max(client.scheduler_info()["workers"])]["name"]
    out_before, _ = _on(client, _address(client, name), cache.invoke, "SizedB", ["same prompt"], [7])
    pid = _on(client, _address(client, name), cache.state)["pid"]
    client.restart_workers([name])
    address = _address(client, name)
    state = _on(client, address, cache.state)
    assert state["pid"] != pid and state["models"] == {} and state["budget_gb"] == 10  # a new, empty process
    out_after, _ = _on(client, address, cache.invoke, "SizedB", ["same prompt"], [7])  # entry re-registered
    assert np.array_equal(np.asarray(out_before[0]), np.asarray(out_after[0]))
    assert cache.held_models(client)[address] == ["SizedB"]
