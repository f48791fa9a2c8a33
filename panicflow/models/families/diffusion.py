"""Text-to-image with diffusers pipelines (SDXL-Turbo, FLUX.1/2, SD 3.5, Z-Image, Sana, GLM-Image...).

One class for every diffusers model: ``DiffusionPipeline.from_pretrained``
picks the pipeline class from the weights' ``model_index.json``. Each batch
gets one ``torch.Generator`` per item, seeded with that item's seed, so the
initial latents and any per-step noise of item ``i`` come from its own
generator. Batched kernels can still change the last bit of a pixel with the
batch's size (seen on CPUs), so fixed-seed runs are batched deterministically:
the same batch on any cluster (``batching`` in docs/config.md).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..base import GenerativeModel, ModelSpec, Role
from ._common import check_remote_code, dtype_name, pick_device, pick_dtype, record, resolve_weights


class DiffusersTextToImage(GenerativeModel):
    """Any diffusers text-to-image pipeline, with per-item seeds inside a batch."""

    role = Role.TEXT_TO_IMAGE

    def __init__(self, spec: ModelSpec, pipeline, device: str, dtype) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.device = device
        self.dtype = dtype
        extra = spec.extra
        self.width = int(extra.get("width", 256))
        self.height = int(extra.get("height", 256))
        self.steps = int(extra.get("steps", 4))
        guidance = extra.get("guidance", 0.0)
        self.guidance = None if guidance is None else float(guidance)
        self.call_kwargs: dict[str, Any] = dict(extra.get("call_kwargs", {}))
        self.offload = extra.get("offload") if str(device).startswith("cuda") else None  # a CPU never offloads
        pipeline.set_progress_bar_config(disable=True)
        # HunyuanImage takes no guidance_scale: its guider component holds the scale
        self.takes_guidance = "guidance_scale" in inspect.signature(type(pipeline).__call__).parameters

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "DiffusersTextToImage":
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        if spec.extra.get("random_init"):
            from .random_init import build_for_spec

            return cls(spec, build_for_spec(spec, device, dtype), device, dtype)
        from diffusers import DiffusionPipeline

        trust = check_remote_code(spec)
        path = resolve_weights(spec)
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        variant = spec.extra.get("variant")
        if variant and str(device).startswith("cuda") and _has_variant(path, variant):
            kwargs["variant"] = variant
        if trust:
            kwargs["trust_remote_code"] = True
        processors = processor_components(path)
        # diffusers checks a passed component against the class model_index.json names, which is a placeholder
        # here: the pipeline is loaded without them and they are registered after
        pipeline = DiffusionPipeline.from_pretrained(str(path), **kwargs, **dict.fromkeys(processors))
        if processors:
            pipeline.register_modules(**processors)
        offload = spec.extra.get("offload")
        if offload == "model" and str(device).startswith("cuda"):
            # one component on the GPU at a time (FLUX.2-dev: its 32B transformer, then its 24B text encoder)
            pipeline.enable_model_cpu_offload(device=device)
        elif offload == "sequential" and str(device).startswith("cuda"):
            pipeline.enable_sequential_cpu_offload(device=device)
        else:
            pipeline.to(device)
        return cls(spec, pipeline, device, dtype)

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        gen_device = self.device if str(self.device).startswith("cuda") else "cpu"
        return [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]

    def generate(self, inputs: list[str], seeds: list[int]) -> list[Image.Image]:
        if len(inputs) != len(seeds):
            raise ValueError("generate: one seed per input")
        if not inputs:
            return []
        for prompt in inputs:
            if not isinstance(prompt, str):
                raise TypeError(f"{self.spec.name} takes text prompts, got {type(prompt).__name__}")
        kwargs = dict(self.call_kwargs)
        if self.guidance is not None and self.takes_guidance:
            kwargs["guidance_scale"] = self.guidance
        with torch.inference_mode():
            out = self.pipeline(
                prompt=list(inputs),
                generator=self._generators(seeds),
                num_inference_steps=self.steps,
                height=self.height,
                width=self.width,
                num_images_per_prompt=1,
                output_type="pil",
                **kwargs,
            )
        return [image.convert("RGB") for image in out.images]

    def parameters(self) -> dict[str, Any]:
        return record(
            self.spec,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance=self.guidance if self.takes_guidance else self._guider_scale(),
            dtype=dtype_name(self.dtype),
            device=str(self.device),
            pipeline=type(self.pipeline).__name__,
            scheduler=type(self.pipeline.scheduler).__name__,
            **({"offload": self.offload} if self.offload else {}),
            **self.call_kwargs,
        )

    def _guider_scale(self) -> float | None:
        """The guidance scale of a pipeline whose guider component holds it (HunyuanImage)."""
        guider = getattr(self.pipeline, "guider", None)
        scale = getattr(guider, "guidance_scale", None)
        return None if scale is None else float(scale)


def processor_components(path: Path) -> dict[str, Any]:
    """The components of a diffusers folder that are transformers processors ``DiffusionPipeline`` cannot
    load here because torchvision does not import, loaded by ``processors.load_processor`` (FLUX.2 [dev]'s
    tokenizer, a ``PixtralProcessor``: the pipeline gives it text only, so its image backend never counts)."""
    from .processors import load_processor, needs_stand_in

    index = Path(path) / "model_index.json"
    if not index.is_file():
        return {}
    out: dict[str, Any] = {}
    for name, value in json.loads(index.read_text()).items():
        if (isinstance(value, list) and len(value) == 2 and value[0] == "transformers"
                and (Path(path) / name).is_dir() and needs_stand_in(value[1])):
            out[name] = load_processor(Path(path) / name, class_name=value[1])
    return out


def _has_variant(path: Path, variant: str) -> bool:
    return any(f".{variant}." in p.name for p in Path(path).rglob("*") if p.is_file())
