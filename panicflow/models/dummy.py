"""Deterministic CPU models for tests and demos.

They follow the earlier tool's dummy formulas (reference section 3.4) so that
seeded runs really do fall into loops, with two deliberate differences:

* each call uses a private ``random.Random``/``np.random.RandomState`` instead
  of the process-global generators, so concurrent batches cannot disturb each
  other and batching never changes an item's output;
* there is no time- or uuid-based path for seed -1: the scheduler draws and
  stores a fresh seed for every unseeded invocation, so every output can be
  reproduced from its stored seed.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
from PIL import Image

from .base import EmbeddingModel, GenerativeModel, Role

IMAGE_SIZE = 256
EMBEDDING_DIM = 768


def _hash8(text: str) -> int:
    """The first 32 bits of sha256(text), as the reference dummies use."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _first_pixels(image: Image.Image, count: int) -> list[tuple[int, ...]]:
    """The first ``count`` pixels in row-major order, as tuples (``getdata()[:count]``)."""
    image = image.convert("RGB")
    width = image.width
    return [image.getpixel((i % width, i // width)) for i in range(min(count, width * image.height))]


class _SolidColour(GenerativeModel):
    """Text-to-image: a solid colour drawn from (seed, prompt)."""

    role = Role.TEXT_TO_IMAGE
    offset = 0
    ranges: tuple[tuple[int, int], ...] = ((0, 100), (200, 255), (200, 255))

    def generate(self, inputs: list[str], seeds: list[int]) -> list[Image.Image]:
        out = []
        for prompt, seed in zip(inputs, seeds, strict=True):
            rng = random.Random(seed + _hash8(prompt) + self.offset)
            colour = tuple(rng.randint(lo, hi) for lo, hi in self.ranges)
            out.append(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour))
        return out

    def parameters(self) -> dict[str, int]:
        return {"width": IMAGE_SIZE, "height": IMAGE_SIZE}


class DummyT2I(_SolidColour):
    """Cyan-ish solid images."""


class DummyT2I2(_SolidColour):
    """Magenta-ish solid images."""

    offset = 2000
    ranges = ((200, 255), (0, 100), (200, 255))


class _TemplateCaption(GenerativeModel):
    """Image-to-text: a caption drawn from (seed, first pixels of the image)."""

    role = Role.IMAGE_TO_TEXT
    offset = 0
    template = "dummy caption: {adj} {noun} #{num}"
    adjectives = ["bright", "dark", "vivid", "muted", "complex", "simple", "detailed", "abstract"]
    nouns = ["scene", "image", "picture", "view", "composition", "artwork", "photo", "visual"]
    numbers = (100, 999)

    def generate(self, inputs: list[Image.Image], seeds: list[int]) -> list[str]:
        out = []
        for image, seed in zip(inputs, seeds, strict=True):
            rng = random.Random(seed + _hash8(str(_first_pixels(image, 10))) + self.offset)
            adj = rng.choice(self.adjectives)
            noun = rng.choice(self.nouns)
            out.append(self.template.format(adj=adj, noun=noun, num=rng.randint(*self.numbers)))
        return out


class DummyI2T(_TemplateCaption):
    """Captions like 'dummy caption: vivid scene #123'."""


class DummyI2T2(_TemplateCaption):
    """Captions like 'dummy v2: bold frame #1234'."""

    offset = 1000
    template = "dummy v2: {adj} {noun} #{num}"
    adjectives = ["colorful", "monochrome", "sharp", "blurred", "dynamic", "static", "bold", "subtle"]
    nouns = ["display", "capture", "moment", "frame", "snapshot", "impression", "rendering", "portrayal"]
    numbers = (1000, 9999)


def _padded(values: list[int]) -> np.ndarray:
    vec = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    values = values[:EMBEDDING_DIM]
    vec[: len(values)] = np.asarray(values, dtype=np.float32) / 255.0
    return vec


class DummyText(EmbeddingModel):
    """Uniform random vector seeded by the sum of code points (anagrams collide)."""

    role = Role.TEXT_EMBEDDER
    dim = EMBEDDING_DIM

    def embed(self, inputs: list[str]) -> np.ndarray:
        rows = [np.random.RandomState(sum(map(ord, text)) % 2**32).rand(self.dim) for text in inputs]
        return np.asarray(rows, dtype=np.float32).reshape(len(inputs), self.dim)


class DummyText2(EmbeddingModel):
    """Code points of the first 100 characters, zero-padded, divided by 255."""

    role = Role.TEXT_EMBEDDER
    dim = EMBEDDING_DIM

    def embed(self, inputs: list[str]) -> np.ndarray:
        rows = [_padded([ord(c) for c in text[:100]]) for text in inputs]
        return np.asarray(rows, dtype=np.float32).reshape(len(inputs), self.dim)


class DummyVision(EmbeddingModel):
    """Uniform random vector seeded by the image size and its first 100 pixels."""

    role = Role.IMAGE_EMBEDDER
    dim = EMBEDDING_DIM

    def embed(self, inputs: list[Image.Image]) -> np.ndarray:
        rows = []
        for image in inputs:
            seed = image.width + image.height + sum(sum(p) for p in _first_pixels(image, 100))
            rows.append(np.random.RandomState(seed % 2**32).rand(self.dim))
        return np.asarray(rows, dtype=np.float32).reshape(len(inputs), self.dim)


class DummyVision2(EmbeddingModel):
    """Channel values of the first pixels, flattened, padded to 768, divided by 255."""

    role = Role.IMAGE_EMBEDDER
    dim = EMBEDDING_DIM

    def embed(self, inputs: list[Image.Image]) -> np.ndarray:
        rows = [_padded([c for p in _first_pixels(image, EMBEDDING_DIM // 3) for c in p]) for image in inputs]
        return np.asarray(rows, dtype=np.float32).reshape(len(inputs), self.dim)


GENERATIVE = [DummyT2I, DummyT2I2, DummyI2T, DummyI2T2]
EMBEDDERS = [DummyText, DummyText2, DummyVision, DummyVision2]
