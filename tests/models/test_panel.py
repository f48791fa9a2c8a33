"""The earlier tool's panel (issue 23) on tiny random-weight builds of the same architectures.

Each architecture is built from config objects (``random_init``), saved with ``save_pretrained``
and loaded back through the registry and the family's real loading code, then called batched and
one input at a time (GLM-Image through the scheduler's one-input-per-call path). PixtralProcessor
(Pixtral, FLUX.2 [dev]) and Qwen2.5-VL's processor run without torchvision (``families.processors``:
on PIL where it does not import, on torchvision where it does). Gemma 3n is not built: its vision
tower needs timm, which imports torchvision (docs/models.md; ``test_gemma3n_is_not_built_without_timm``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from panicflow.models import REGISTRY, Role, cache, get_spec  # noqa: E402

# the libraries an architecture needs beyond the models extra
NEEDS: dict[str, str] = {}


def importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # torchvision from PyPI raises RuntimeError beside a CPU torch built elsewhere
        return False
    return True


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the suite runs one process per core (scripts/test), and these toys' many
    small kernels ran up to 10x slower with two threads per process on a loaded 2-core machine
    (GLM-Image's prior writes 258 tokens a call: 0.5 s with one thread, 5.7 s with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torchvision_available() -> bool:
    from panicflow.models.families.processors import torchvision_available

    return torchvision_available()


def available(arch: str):
    need = NEEDS.get(arch)
    marks = [pytest.mark.skipif(not importable(need), reason=f"{arch}'s processor needs {need}")] if need else []
    return pytest.param(arch, marks=marks, id=arch)


def images(n: int) -> list[Image.Image]:
    rng = np.random.RandomState(3)
    return [Image.fromarray(rng.randint(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------------ text-to-image

PROMPTS = ["a red fox in the snow", 'a shop sign that says "open"']  # quoted text: the glyph encoders
TINY_FLUX2 = {"max_sequence_length": 16, "text_encoder_out_layers": [1, 2, 3]}
# architecture: (catalog entry, the tiny build's call arguments)
PANEL_T2I = {"flux2-klein": ("Flux2Klein", TINY_FLUX2), "flux2": ("Flux2Dev", TINY_FLUX2),
             "hunyuan-image": ("HunyuanImage", {}), "glm-image": ("GLMImage", {})}
PIPELINES = {"flux2-klein": "Flux2KleinPipeline", "flux2": "Flux2Pipeline", "hunyuan-image": "HunyuanImagePipeline",
             "glm-image": "GlmImagePipeline"}


def register_t2i(arch: str, tiny_saved, local_model) -> str:
    """The tiny build of ``arch``, saved, as a local entry with its catalog entry's settings (32 px, 2 steps)."""
    name, call_kwargs = PANEL_T2I[arch]
    entry = get_spec(name).extra
    settings = {k: entry[k] for k in ("guidance", "dtype", "offload", "batch_reproducible") if k in entry}
    local_model(f"tiny-{arch}", Role.TEXT_TO_IMAGE, "diffusers", tiny_saved(arch), width=32, height=32, steps=2,
                call_kwargs=call_kwargs, **settings)
    return f"tiny-{arch}"


@pytest.fixture(params=[available("flux2-klein"), available("flux2"), available("hunyuan-image")])
def panel_t2i(request, tiny_saved, local_model):
    return register_t2i(request.param, tiny_saved, local_model)


def test_panel_t2i_batched_and_single_calls_agree_and_reproduce(panel_t2i):
    model = cache.get_model(panel_t2i)
    batch = model.generate(PROMPTS, [7, 8])
    assert [im.size for im in batch] == [(32, 32)] * 2 and all(im.mode == "RGB" for im in batch)
    for image, prompt, seed in zip(batch, PROMPTS, [7, 8]):  # per-item generators: the batch barely matters
        (alone,) = model.generate([prompt], [seed])
        assert np.abs(pixels(image) - pixels(alone)).max() <= 2
    cache.clear()
    again = cache.get_model(panel_t2i).generate(PROMPTS, [7, 8])
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(batch, again))
    other = cache.get_model(panel_t2i).generate(PROMPTS[:1], [9])
    assert np.abs(pixels(other[0]) - pixels(batch[0])).max() > 10


def test_panel_t2i_records_its_generation_settings(panel_t2i):
    model = cache.get_model(panel_t2i)
    params = model.parameters()
    arch = panel_t2i.removeprefix("tiny-")
    if arch == "flux2":  # a PixtralProcessor, with or without torchvision
        assert type(model.pipeline.tokenizer).__name__ == "PixtralProcessor"
    assert params["pipeline"] == PIPELINES[arch] and params["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert (params["width"], params["height"], params["steps"]) == (32, 32, 2) and params["dtype"] == "float32"
    if arch == "hunyuan-image":  # no guidance_scale argument: its guider's scale is recorded
        assert not model.takes_guidance and params["guidance"] == model.pipeline.guider.guidance_scale == 3.5
    else:
        assert params["guidance"] == (1.0 if arch == "flux2-klein" else 3.5)
        assert params["text_encoder_out_layers"] == [1, 2, 3]


def test_glm_image_is_called_one_input_at_a_time_and_reproduces(tiny_saved, local_model, tmp_path):
    """GLM-Image's pipeline seeds its autoregressive prior from the first item for the whole batch; its
    entry (``batch_reproducible: False``) makes the scheduler call it once per input: every stored image
    is what its prompt and seed give alone, again on every call."""
    from panicflow.scheduler import tasks
    from panicflow.store import Store

    name = register_t2i("glm-image", tiny_saved, local_model)
    store = Store(str(tmp_path / "store"), create=True)
    out = tasks.invoke_batch(store.location, name, PROMPTS, [7, 8])
    params = json.loads(store.objects.get_bytes(out["parameters_hash"]))
    assert params["batch_invariant"] == "per_item" and params["pipeline"] == "GlmImagePipeline"
    assert params["guidance"] == 7.5 and (params["width"], params["steps"]) == (32, 2)
    stored = [store.objects.get_image(digest) for digest, _ in out["outputs"]]
    assert [im.size for im in stored] == [(32, 32)] * 2
    model = cache.get_model(name)
    alone = [model.generate([prompt], [seed])[0] for prompt, seed in zip(PROMPTS, [7, 8])]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(stored, alone))
    # why: called on the batch at once, the second image comes from the first item's prior seed
    batched = model.generate(PROMPTS, [7, 8])
    assert np.abs(pixels(batched[1]) - pixels(alone[1])).max() > 10
    assert np.abs(pixels(model.generate(PROMPTS[1:], [9])[0]) - pixels(alone[1])).max() > 10  # seeds matter


def test_a_model_whose_batch_is_not_reproducible_is_called_one_input_at_a_time(tmp_path, monkeypatch):
    """GLM-Image's pipeline seeds its prior from the first item for the whole batch: the scheduler
    calls such an entry (``batch_reproducible: False``) one input at a time, and records it."""
    from panicflow.scheduler import tasks
    from panicflow.store import Store

    assert get_spec("GLMImage").extra["batch_reproducible"] is False
    dummy = get_spec("DummyT2I")
    REGISTRY["GlmLike"] = dataclasses.replace(dummy, name="GlmLike", extra={"batch_reproducible": False})
    model = cache.get_model("GlmLike")
    sizes: list[int] = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda inputs, seeds: sizes.append(len(inputs)) or real(inputs, seeds))
    store = Store(str(tmp_path / "store"), create=True)
    out = tasks.invoke_batch(store.location, "GlmLike", ["a", "bb", "ccc"], [1, 2, 3])
    assert sizes == [1, 1, 1]
    assert json.loads(store.objects.get_bytes(out["parameters_hash"]))["batch_invariant"] == "per_item"


# ------------------------------------------------------------------------------------ image-to-text

CAPTIONERS = {"mllama": "LLaMA32Vision", "pixtral": "Pixtral", "qwen2.5-vl": "Qwen25VL7B"}


@pytest.fixture
def panel_captioner(tiny_saved, local_model):
    def make(arch: str, folder=None, **extra):
        entry = dict(get_spec(CAPTIONERS[arch]).extra)
        settings = {k: entry[k] for k in ("model_class", "chat", "prompt", "decoding", "do_sample", "nested_images")
                    if k in entry}
        settings.update(max_new_tokens=6, dtype=entry["dtype"], **extra)
        local_model(f"tiny-{arch}", Role.IMAGE_TO_TEXT, "transformers-captioner", folder or tiny_saved(arch),
                    **settings)
        return cache.get_model(f"tiny-{arch}")

    return make


@pytest.mark.parametrize("arch", [available(a) for a in CAPTIONERS])
def test_panel_captioners_batched_and_single(panel_captioner, arch):
    """The entries' own settings (chat prompt, the weights' generation config: greedy here), batched
    and one image at a time."""
    model = panel_captioner(arch)
    imgs = images(3)
    batch = model.generate(imgs, [1, 2, 3])
    assert len(batch) == 3 and all(isinstance(c, str) and c for c in batch)
    assert batch == [model.generate([im], [9])[0] for im in imgs]
    params = model.parameters()
    assert params["prompt"] == "Describe this image." and params["chat"] and params["max_new_tokens"] == 6
    assert params["decoding"] == "generation_config" and params["do_sample"] is False
    # the image backend is recorded: PIL where torchvision does not import, torchvision where it does
    assert params["image_processor"].endswith("Pil") is not torchvision_available()


@pytest.mark.skipif(importable("torchvision"), reason="the stand-ins apply where torchvision does not import")
def test_processors_that_need_torchvision_load_without_it(tiny_saved):
    """AutoProcessor cannot load PixtralProcessor or Qwen2.5-VL's processor without torchvision; the
    captioner's loader gets the real classes from the same folder, on the PIL image processors."""
    import transformers

    from panicflow.models.families.processors import load_processor, saved_processor_class

    for arch, name, module in [("pixtral", "PixtralProcessor", "pixtral.processing_pixtral"),
                               ("qwen2.5-vl", "Qwen2_5_VLProcessor", "qwen2_5_vl.processing_qwen2_5_vl")]:
        folder = tiny_saved(arch)
        assert saved_processor_class(folder) == name
        with pytest.raises((ImportError, OSError), match="[Tt]orchvision|video processor"):
            transformers.AutoProcessor.from_pretrained(str(folder))
        processor = load_processor(folder)
        assert type(processor).__name__ == name and type(processor).__module__ == f"transformers.models.{module}"
        assert type(processor.image_processor).__name__.endswith("Pil")
        assert processor.get_attributes() == ["image_processor", "tokenizer"]  # Qwen2.5-VL: no video processor
    # FLUX.2 [dev]'s tokenizer is a PixtralProcessor too: loaded the same way, registered after the pipeline
    from panicflow.models.families.diffusion import processor_components

    assert type(processor_components(tiny_saved("flux2"))["tokenizer"]).__name__ == "PixtralProcessor"
    assert processor_components(tiny_saved("flux2-klein")) == {}


@pytest.mark.skipif(importable("timm"), reason="timm imports here: Gemma 3n could be built (no tiny build yet)")
def test_gemma3n_is_not_built_without_timm():
    """Gemma 3n has no tiny build: transformers makes its vision tower (MobileNet-V5) a TimmWrapperModel,
    which needs timm, whatever the vision config's size; timm (1.0.31) imports torchvision, which does
    not import beside this machine's torch. This pins the first half, so the table in docs/models.md
    learns when it stops being true."""
    from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

    config = Gemma3nConfig(
        text_config=dict(vocab_size=300, vocab_size_per_layer_input=300, hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         hidden_size_per_layer_input=8, num_kv_shared_layers=0, laurel_rank=4,
                         layer_types=["sliding_attention", "full_attention"], activation_sparsity_pattern=[0.0, 0.0]),
        vision_config=dict(hidden_size=32, vocab_offset=300, model_args={"channel_multiplier": 0.1}),
        audio_config=dict(hidden_size=32, vocab_offset=428, conf_num_hidden_layers=1, conf_num_attention_heads=2),
    )
    with pytest.raises(ImportError, match="TimmWrapperModel requires the timm library"):
        Gemma3nForConditionalGeneration(config)


def test_generation_config_sampling_is_read_recorded_and_seeded_per_item(panel_captioner, tiny_saved, tmp_path):
    import shutil

    folder = tmp_path / "mllama"
    shutil.copytree(tiny_saved("mllama"), folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=2.0, top_p=0.95, repetition_penalty=1.05)
    (folder / "generation_config.json").write_text(json.dumps(config))
    model = panel_captioner("mllama", folder=folder)
    params = model.parameters()
    assert params["do_sample"] and params["temperature"] == 2.0 and params["top_p"] == 0.95
    assert params["repetition_penalty"] == 1.05 and params["sampling"] == "per-item gumbel-max"
    img = images(1)[0]
    captions = model.generate([img] * 4, [0, 1, 2, 3])
    assert len(set(captions)) > 1
    assert model.generate([img] * 4, [0, 1, 2, 3]) == captions


# ------------------------------------------------------------------------------------ embedders

TEXTS = ["a cat on a mat", "a dog", "the quick brown fox jumps over the lazy dog"]


def check_rows(rows: np.ndarray, n: int, dim: int) -> None:
    assert rows.shape == (n, dim) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_qwen3_embedder_pools_the_last_token_batched_and_single(tiny_saved, local_model):
    local_model("tiny-qwen3", Role.TEXT_EMBEDDER, "sentence-transformers", tiny_saved("qwen3-embedder"), dim=32,
                **{k: v for k, v in get_spec("Qwen3Embed").extra.items() if k in ("padding_side", "normalize")})
    model = cache.get_model("tiny-qwen3")
    assert model.model.tokenizer.padding_side == "left"
    rows = model.embed(TEXTS)
    check_rows(rows, 3, 32)
    assert np.allclose(rows, np.concatenate([model.embed([t]) for t in TEXTS]), atol=1e-5)
    assert get_spec("Qwen3Embed").dim == 2560 and get_spec("Qwen3Embed").extra.get("truncate_dim") is None


@pytest.fixture
def colqwen(tiny_saved, local_model):
    def make(role: Role, name=None, folder=None, **extra):
        name = name or f"tiny-colqwen-{role.value}"
        local_model(name, role, "colqwen", folder or tiny_saved("colqwen-text"), dim=16, **extra)
        return cache.get_model(name)

    return make


@pytest.mark.parametrize("role", [Role.TEXT_EMBEDDER, Role.IMAGE_EMBEDDER], ids=["text", "vision"])
def test_colqwen_mean_pools_token_vectors_batched_and_single(colqwen, role):
    model = colqwen(role)
    inputs = TEXTS if role is Role.TEXT_EMBEDDER else images(3)
    rows = model.embed(inputs)
    check_rows(rows, 3, 16)
    single = np.concatenate([model.embed([x]) for x in inputs])
    assert np.allclose(rows, single, atol=1e-4)
    assert "mean of token vectors" in model.parameters()["pooling"]
    # the documented reduction, recomputed from the model's own multi-vector output
    if role is Role.TEXT_EMBEDDER:
        batch = model.processor.tokenizer(inputs[:1], return_tensors="pt")
        keep = batch["attention_mask"].bool()
    else:
        batch = model.processor(images=inputs[:1], return_tensors="pt")
        keep = batch["input_ids"] == model.image_token_id
        assert 0 < int(keep.sum()) < batch["input_ids"].shape[1]  # the prompt around the image is left out
    with torch.inference_mode():
        vectors = model.model(**batch).embeddings[0][keep[0]]
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(vectors)), atol=1e-4)  # unit token vectors
    mean = vectors.mean(dim=0)
    assert np.allclose(rows[0], (mean / mean.norm()).numpy(), atol=1e-4)


def test_mean_pool_ignores_masked_tokens():
    from panicflow.models.families.embedding import mean_pool

    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]])
    assert torch.allclose(mean_pool(vectors, torch.tensor([[1, 1, 0]])), torch.tensor([[0.5, 0.5]]))
    assert torch.equal(mean_pool(vectors, torch.tensor([[0, 0, 0]])), torch.zeros(1, 2))
    vectors[0, 2] = float("nan")  # a padding token's vector can be NaN (an attention row with nothing to attend)
    assert torch.allclose(mean_pool(vectors, torch.tensor([[1, 1, 0]])), torch.tensor([[0.5, 0.5]]))


def test_colnomic_adapter_is_merged_into_its_base_model(tiny_saved, tmp_path, colqwen):
    """ColNomic's published form: a colpali-engine PEFT adapter (LoRA on the language model, the
    128-d custom_text_proj) over Qwen2.5-VL; loaded here over a tiny base model."""
    import transformers
    from safetensors.torch import save_file

    tiny = transformers.ColQwen2ForRetrieval.from_pretrained(str(tiny_saved("colqwen-text")))
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    tiny.vlm.save_pretrained(str(base))
    transformers.ColQwen2Processor.from_pretrained(str(tiny_saved("colqwen-text"))).save_pretrained(str(adapter))
    gen = torch.Generator().manual_seed(5)
    r, alpha, hidden = 2, 4.0, tiny.vlm.config.text_config.hidden_size
    weights, expected = {}, {}
    for i in range(tiny.vlm.config.text_config.num_hidden_layers):
        for proj in ("q_proj", "v_proj"):
            module = tiny.vlm.language_model.layers[i].self_attn.get_submodule(proj)
            a = torch.randn(r, module.in_features, generator=gen)
            b = torch.randn(module.out_features, r, generator=gen)
            key = f"base_model.model.model.layers.{i}.self_attn.{proj}"  # colpali-engine's ColQwen2_5 layout
            weights[f"{key}.lora_A.weight"], weights[f"{key}.lora_B.weight"] = a, b
            expected[module] = module.weight.detach() + alpha / r * b @ a
    weights["base_model.model.custom_text_proj.weight"] = torch.randn(16, hidden, generator=gen)
    weights["base_model.model.custom_text_proj.bias"] = torch.randn(16, generator=gen)
    save_file(weights, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "base_model_name_or_path": "test/base"}))
    model = colqwen(Role.TEXT_EMBEDDER, name="adapter", folder=adapter, base_local_dir=str(base))
    with torch.no_grad():
        for module, weight in expected.items():
            module.weight.copy_(weight)
        tiny.embedding_proj_layer.weight.copy_(weights["base_model.model.custom_text_proj.weight"])
        tiny.embedding_proj_layer.bias.copy_(weights["base_model.model.custom_text_proj.bias"])
    reference = colqwen(Role.TEXT_EMBEDDER, name="reference")
    reference.model = tiny.eval()
    assert np.allclose(model.embed(TEXTS), reference.embed(TEXTS), atol=1e-5)
    assert not np.allclose(model.embed(TEXTS), colqwen(Role.TEXT_EMBEDDER, name="plain").embed(TEXTS), atol=1e-3)


def test_an_adapter_weight_that_matches_no_layer_is_an_error(tiny_saved, tmp_path):
    import transformers

    from panicflow.models.families import ModelNotAvailable
    from panicflow.models.families.colpali import merge_lora

    vlm = transformers.ColQwen2ForRetrieval.from_pretrained(str(tiny_saved("colqwen-text"))).vlm
    weights = {"base_model.model.model.layers.0.mlp.no_such_proj.lora_A.weight": torch.zeros(2, 4),
               "base_model.model.model.layers.0.mlp.no_such_proj.lora_B.weight": torch.zeros(4, 2)}
    with pytest.raises(ModelNotAvailable, match="no_such_proj"):
        merge_lora(get_spec("ColNomic"), vlm, weights, {"r": 2, "lora_alpha": 4})
