"""Fixtures for the model tests: an isolated registry, cache and weight lookup."""

from __future__ import annotations

import os

import pytest

from panicflow.models import REGISTRY, cache
from panicflow.models.base import ModelSpec, Role
from panicflow.models.families import _common, build

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach a hub


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path_factory):
    """No user models dir, an empty Hugging Face cache, no remote code; registry and cache restored."""
    for var in (_common.MODELS_DIR_ENV, _common.TRUST_REMOTE_CODE_ENV, _common.DEVICE_ENV, cache.MEMORY_ENV):
        monkeypatch.delenv(var, raising=False)
    try:
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    except ImportError:
        pass
    before = dict(REGISTRY)
    _common.configure()
    cache.set_memory_budget(None)
    yield
    cache.clear()
    cache.set_memory_budget(None)
    _common.configure()
    REGISTRY.clear()
    REGISTRY.update(before)


@pytest.fixture
def local_model():
    """Register an entry whose weights are in a local folder; returns its spec."""

    def make(name: str, role: Role, family: str, path, dim: int | None = None, **extra) -> ModelSpec:
        extra = dict(family=family, hf_id=f"test/{name}", revision="test", local_dir=str(path), **extra)
        spec = ModelSpec(name=name, role=role, factory=build, dim=dim, extra=extra)
        REGISTRY[name] = spec
        return spec

    return make


@pytest.fixture(scope="session")
def tiny_saved(tmp_path_factory):
    """Build, once per session, a tiny random-weight architecture and save it: its folder."""
    built: dict[str, object] = {}

    def get(architecture: str):
        if architecture not in built:
            import torch

            from panicflow.models.families import random_init

            torch.manual_seed(0)
            folder = tmp_path_factory.mktemp(architecture)
            random_init.save(random_init.build(architecture, "tiny"), folder)
            built[architecture] = folder
        return built[architecture]

    return get
