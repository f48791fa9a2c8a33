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
* ``SleepT2I`` behaves like DummyT2I but each call sleeps
  ``PANICFLOW_TEST_SLEEP_S`` seconds (default 0.2) and, on a cluster whose
  workers declare a ``GPU`` resource, needs one: a stand-in for a GPU model.
  ``SleepI2T`` is the same for DummyI2T: with both, a network's model calls
  all wait on the "GPU" and leave the CPU to the other stages.
* ``TinySDXL``, ``TinyBLIP2``, ``TinyBertText``, ``TinyCLIPVision``: real
  architectures (diffusers, transformers, sentence-transformers, CLIP) at a
  tiny size with seeded random weights, built on the worker from their
  configs (``families.random_init``): the real model code, offline, where
  batched kernels make outputs depend on the batch (needs the models extra).
"""

from __future__ import annotations

import os
import random

from PIL import Image

from .base import ModelSpec
from .dummy import IMAGE_SIZE, DummyI2T, DummyT2I


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


class SleepT2I(DummyT2I):
    """DummyT2I that takes PANICFLOW_TEST_SLEEP_S seconds per call (a GPU model stand-in)."""

    def generate(self, inputs, seeds):
        import time

        time.sleep(float(os.environ.get("PANICFLOW_TEST_SLEEP_S", "0.2")))
        return super().generate(inputs, seeds)


class SleepI2T(DummyI2T):
    """DummyI2T that takes PANICFLOW_TEST_SLEEP_S seconds per call (a GPU model stand-in)."""

    def generate(self, inputs, seeds):
        import time

        time.sleep(float(os.environ.get("PANICFLOW_TEST_SLEEP_S", "0.2")))
        return super().generate(inputs, seeds)


TINY_MODELS = {"TinySDXL": "sdxl", "TinyBLIP2": "blip2", "TinyBertText": "bert-embedder", "TinyCLIPVision": "clip-vision"}


def specs() -> list[ModelSpec]:
    from .catalog import random_weights_spec

    out = [
        ModelSpec(name=cls.__name__, role=cls.role, factory=(lambda c: lambda spec: c())(cls),
                  description=(cls.__doc__ or "test model").strip().splitlines()[0] + " (testing)")
        for cls in (ConstantT2I, PoisonT2I, FlakyT2I)
    ]
    out.append(ModelSpec(name="SleepT2I", role=SleepT2I.role, factory=lambda spec: SleepT2I(),
                         description="DummyT2I taking PANICFLOW_TEST_SLEEP_S per call; needs a GPU resource (testing)",
                         extra={"approx_gpu_gb": 1}, cheap_replay=True))  # DummyT2I's outputs; doctor replays sleep too unless PANICFLOW_TEST_SLEEP_S=0
    out.append(ModelSpec(name="SleepI2T", role=SleepI2T.role, factory=lambda spec: SleepI2T(),
                         description="DummyI2T taking PANICFLOW_TEST_SLEEP_S per call; needs a GPU resource (testing)",
                         extra={"approx_gpu_gb": 1}, cheap_replay=True))
    for name, architecture in TINY_MODELS.items():
        # batch 4: small enough that a handful of runs makes several groups; no GPU memory to claim
        out.append(random_weights_spec(name, architecture, "tiny", batch=4, approx_gpu_gb=0))
    return out


def enabled() -> bool:
    return os.environ.get("PANICFLOW_TEST_MODELS") == "1"
