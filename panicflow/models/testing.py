"""Models for testing failure paths; registered only when PANICFLOW_TEST_MODELS=1.

The variable is read at import time, in the coordinator and in every worker
process (spawned workers inherit the environment), so a test sets it before
starting its cluster.

* ``ConstantT2I`` draws the same grey image whatever the prompt or seed, so a
  seeded run repeats its first image at step 2.
* ``PoisonT2I`` behaves like DummyT2I but raises for any prompt containing
  "poison": a run that can never succeed.
* ``FlakyT2I`` behaves like DummyT2I but raises on a fraction of calls
  (``PANICFLOW_TEST_FLAKY_RATE``, default 0.05), a stand-in for transient
  CUDA errors.
"""

from __future__ import annotations

import os
import random

from PIL import Image

from .base import ModelSpec
from .dummy import IMAGE_SIZE, DummyT2I


class ConstantT2I(DummyT2I):
    """The same grey image for every prompt and seed."""

    def generate(self, inputs, seeds):
        return [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (128, 128, 128)) for _ in inputs]


class PoisonT2I(DummyT2I):
    """Fails on any prompt containing 'poison'."""

    def generate(self, inputs, seeds):
        for prompt in inputs:
            if "poison" in prompt:
                raise RuntimeError(f"PoisonT2I refuses {prompt!r}")
        return super().generate(inputs, seeds)


class FlakyT2I(DummyT2I):
    """Fails on a random fraction of calls."""

    def __init__(self) -> None:
        self.rate = float(os.environ.get("PANICFLOW_TEST_FLAKY_RATE", "0.05"))
        self.rng = random.Random()

    def generate(self, inputs, seeds):
        if self.rng.random() < self.rate:
            raise RuntimeError("FlakyT2I: simulated transient failure")
        return super().generate(inputs, seeds)


def specs() -> list[ModelSpec]:
    return [
        ModelSpec(name=cls.__name__, role=cls.role, factory=(lambda c: lambda spec: c())(cls),
                  description=(cls.__doc__ or "test model").strip().splitlines()[0] + " (testing)")
        for cls in (ConstantT2I, PoisonT2I, FlakyT2I)
    ]


def enabled() -> bool:
    return os.environ.get("PANICFLOW_TEST_MODELS") == "1"
