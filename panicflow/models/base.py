"""The two interfaces every model implements, real or dummy.

The scheduler only ever calls these batch methods, so dummy models and real
GPU models go through exactly the same code paths. Outputs are plain Python
values: ``str`` for text and ``PIL.Image.Image`` for images; embeddings are a
float32 array of shape ``(batch, dim)``.

Seeds: every item of a batch carries its own seed (an ``int >= 0``). The
scheduler draws a fresh seed for runs configured with seed -1 and stores it,
so a model never sees -1 and every output can be reproduced from its inputs.
A model gives each item the output its seed determines, not one drawn from a
stream shared with the batch; the last bits can still depend on the batch
(batched kernels), which deterministic batching makes a function of the config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar

import numpy as np


class Kind(str, Enum):
    """What a model consumes or produces."""

    TEXT = "text"
    IMAGE = "image"


class Role(str, Enum):
    """The four kinds of model a registry entry can be."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_TEXT = "image-to-text"
    TEXT_EMBEDDER = "text-embedder"
    IMAGE_EMBEDDER = "image-embedder"

    @property
    def input_kind(self) -> Kind:
        return Kind.TEXT if self in (Role.TEXT_TO_IMAGE, Role.TEXT_EMBEDDER) else Kind.IMAGE

    @property
    def output_kind(self) -> Kind | None:
        """The kind of output of a generative model; None for embedders."""
        return {Role.TEXT_TO_IMAGE: Kind.IMAGE, Role.IMAGE_TO_TEXT: Kind.TEXT}.get(self)

    @property
    def is_embedder(self) -> bool:
        return self in (Role.TEXT_EMBEDDER, Role.IMAGE_EMBEDDER)


class GenerativeModel(ABC):
    """A text-to-image or image-to-text model called on batches."""

    role: ClassVar[Role]

    @abstractmethod
    def generate(self, inputs: list[Any], seeds: list[int]) -> list[Any]:
        """One output per input, item ``i`` generated with ``seeds[i]``."""

    def parameters(self) -> dict[str, Any]:
        """Generation parameters recorded with every invocation (size, steps...)."""
        return {}


class EmbeddingModel(ABC):
    """A model that maps texts or images to vectors, called on batches."""

    role: ClassVar[Role]
    dim: ClassVar[int]

    @abstractmethod
    def embed(self, inputs: list[Any]) -> np.ndarray:
        """A float32 array of shape ``(len(inputs), dim)``."""


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: what a model is, and how to build it.

    ``factory`` builds the model on the worker that will run it; it receives
    the spec and may import heavy libraries (torch) only then.
    """

    name: str
    role: Role
    factory: Callable[["ModelSpec"], GenerativeModel | EmbeddingModel]
    dim: int | None = None  # embedders only
    description: str = ""
    default_batch_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific settings (HF id, dtype...)
    # deterministic, batch-invariant and fast on a CPU: `panicflow doctor` re-runs every step of
    # such models to check that each output follows from its input and seed
    cheap_replay: bool = False

    @property
    def input_kind(self) -> Kind:
        return self.role.input_kind

    @property
    def output_kind(self) -> Kind | None:
        return self.role.output_kind
