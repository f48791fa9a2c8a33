"""The remote-code families (Moondream2, jina-clip-v2, nomic-embed-vision) around stand-in models.

Their real architectures live in the models' repositories (trust_remote_code) and
cannot be built offline; these tests drive each family class through the
documented API of its model (``caption``, ``encode_text``/``encode_image``, CLS
of ``last_hidden_state``) with small stand-ins, so the seeding, prefixes,
truncation and normalisation panicflow adds are checked.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from panicflow.models import get_spec  # noqa: E402
from panicflow.models.families.captioning import MoondreamCaptioner  # noqa: E402
from panicflow.models.families.embedding import JinaClipEmbedder, NomicVisionEmbedder  # noqa: E402


def images(n):
    return [Image.new("RGB", (8 + i, 8), (10 * i, 20, 30)) for i in range(n)]


class FakeMoondream:
    """``caption(image, length=..., settings=...) -> {"caption": ...}``, sampling from torch's global RNG."""

    def __init__(self):
        self.calls = []

    def caption(self, image, length="normal", settings=None):
        self.calls.append((image.size, length, settings))
        words = ["a", "cat", "dog", "on", "mat", "in", "sun", "rain"]
        picks = torch.randint(0, len(words), (4,)).tolist()
        return {"caption": "  " + " ".join(words[i] for i in picks) + f" {image.size[0]} "}


def test_moondream_seeds_each_item_and_uses_its_caption_api():
    spec = get_spec("Moondream")
    fake = FakeMoondream()
    model = MoondreamCaptioner(spec, fake, "cpu", torch.float32)
    imgs = images(3)
    batch = model.generate(imgs, [5, 6, 5])
    assert batch == [model.generate([im], [s])[0] for im, s in zip(imgs, [5, 6, 5])]
    assert all(c == c.strip() for c in batch)
    assert fake.calls[0][1] == "short"
    params = model.parameters()
    assert params["hf_id"] == "vikhyatk/moondream2" and params["revision"] == "2025-01-09"
    with pytest.raises(TypeError):
        model.generate(["text"], [1])


class FakeJina:
    """``encode_text(texts, task=, truncate_dim=)`` and ``encode_image(images, truncate_dim=)`` as numpy."""

    def __init__(self):
        self.seen = {}

    def _rows(self, keys, truncate_dim):
        rows = np.stack([np.random.RandomState(abs(hash(k)) % 2**32).randn(1024) for k in keys])
        return rows[:, :truncate_dim] * 3.0  # not unit length: the family normalises after truncating

    def encode_text(self, texts, task=None, truncate_dim=None, batch_size=None):
        self.seen["task"], self.seen["texts"] = task, list(texts)
        return self._rows(texts, truncate_dim)

    def encode_image(self, imgs, truncate_dim=None, batch_size=None):
        self.seen["images"] = len(imgs)
        return self._rows([im.size for im in imgs], truncate_dim)


@pytest.mark.parametrize("name", ["JinaClip", "JinaClipVision"])
def test_jina_clip_truncates_and_normalises(name):
    spec = get_spec(name)
    fake = FakeJina()
    model = JinaClipEmbedder(spec, fake, "cpu", torch.float32)
    inputs = ["a red fox", "a lighthouse"] if name == "JinaClip" else images(2)
    rows = model.embed(inputs)
    assert rows.shape == (2, 768) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    if name == "JinaClip":
        assert fake.seen["task"] == "retrieval.query" and model.parameters()["task"] == "retrieval.query"
    assert model.embed([]).shape == (0, 768)


class FakeProcessor:
    def __call__(self, imgs, return_tensors="pt"):
        pixels = torch.stack([torch.full((3, 4, 4), float(im.size[0])) for im in imgs])
        return _Batch(pixel_values=pixels)


class _Batch(dict):
    def to(self, device):
        return self


class FakeNomicVision(torch.nn.Module):
    def forward(self, pixel_values):
        n = pixel_values.shape[0]
        hidden = torch.zeros(n, 5, 768)
        hidden[:, 0, 0] = pixel_values[:, 0, 0, 0]  # CLS depends on the image
        hidden[:, 0, 1] = 1.0
        hidden[:, 1:, 2] = 100.0  # patch tokens must not leak into the embedding
        return SimpleNamespace(last_hidden_state=hidden)


def test_nomic_vision_takes_the_cls_token_and_normalises():
    model = NomicVisionEmbedder(get_spec("NomicVision"), FakeNomicVision(), FakeProcessor(), "cpu", torch.float32)
    rows = model.embed(images(2))
    assert rows.shape == (2, 768)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    assert np.all(rows[:, 2] == 0)
    expected = np.array([8.0, 1.0]) / np.hypot(8.0, 1.0)
    assert np.allclose(rows[0, :2], expected, atol=1e-6)
