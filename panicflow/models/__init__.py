"""The model registry: the only way a model name becomes code.

Names resolve to registry entries only (a config can never import arbitrary
code). Each entry says what the model consumes and produces; the model itself
is built lazily, on the worker that runs it, and kept there (see ``cache``).
"""

from __future__ import annotations

from ..errors import UnknownModel
from .base import EmbeddingModel, GenerativeModel, Kind, ModelSpec, Role
from . import dummy, testing

REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def _class_factory(cls):
    return lambda spec: cls()


for _cls in dummy.GENERATIVE + dummy.EMBEDDERS:
    register(
        ModelSpec(
            name=_cls.__name__,
            role=_cls.role,
            factory=_class_factory(_cls),
            dim=getattr(_cls, "dim", None),
            description=(_cls.__doc__ or "").strip().splitlines()[0] + " (dummy, CPU)",
            default_batch_size=64,
            cheap_replay=True,
        )
    )


if testing.enabled():
    for _spec in testing.specs():
        register(_spec)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; `panicflow models` lists the known ones") from None


def list_models() -> list[ModelSpec]:
    return list(REGISTRY.values())


__all__ = [
    "EmbeddingModel",
    "GenerativeModel",
    "Kind",
    "ModelSpec",
    "REGISTRY",
    "Role",
    "get_spec",
    "list_models",
    "register",
]
from . import catalog  # noqa: E402  (real-model entries)
