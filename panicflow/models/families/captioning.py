"""Image-to-text with transformers (BLIP-2, Florence-2, Qwen2.5-VL) and Moondream2.

Seeded sampling inside a batch. ``generate`` in transformers draws samples
from one global random stream, so the caption of item ``i`` would depend on
the other items of its batch. ``TransformersCaptioner`` samples instead with
the Gumbel-max trick: after temperature and top-k/top-p, each row gets Gumbel
noise drawn from its own ``torch.Generator`` (seeded with the item's seed) and
decoding takes the argmax, which is an exact draw from the same distribution.
Row ``i`` draws one noise vector per step in a batch or alone, so the other
items never change its noise; its logits can still differ in the last bits
with the batch (padding to the longest input, batched kernels), which can
flip a sampled token: fixed-seed runs are therefore batched deterministically
(``batching`` in docs/config.md). With ``do_sample: False`` decoding is greedy (or beam
search with ``num_beams``) and the seed is not used.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import LogitsProcessor

from ..base import GenerativeModel, ModelSpec, Role
from ._common import check_remote_code, dtype_name, pick_device, pick_dtype, record, require, resolve_weights
from .processors import image_processor_name, load_processor


def _check_images(name: str, inputs: list[Any]) -> list[Image.Image]:
    out = []
    for image in inputs:
        if not isinstance(image, Image.Image):
            raise TypeError(f"{name} takes PIL images, got {type(image).__name__}")
        out.append(image.convert("RGB"))
    return out


class SeededGumbelSampler(LogitsProcessor):
    """A logits processor that turns greedy decoding into per-row seeded sampling."""

    def __init__(self, seeds: list[int], device, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        gen_device = device if str(device).startswith("cuda") else "cpu"
        self.generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
        self.gen_device = gen_device
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError("seeded sampling needs one sequence per item (num_beams=1)")
        scores = scores.float() / max(self.temperature, 1e-5)
        vocab = scores.shape[-1]
        if self.top_k and self.top_k < vocab:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1, None]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative - sorted_scores.softmax(dim=-1) > self.top_p  # the first token always stays
            scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
        uniform = torch.stack(
            [torch.rand(vocab, generator=g, device=self.gen_device, dtype=torch.float32) for g in self.generators]
        ).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        return scores + gumbel


class TransformersCaptioner(GenerativeModel):
    """Vision-language models with a processor and ``generate`` (BLIP-2, Florence-2, Qwen2.5-VL...).

    ``extra`` settings: ``model_class`` (a transformers class name, default
    ``AutoModelForImageTextToText``), ``prompt`` (text given with each image;
    none for BLIP-2's plain captioning, a task token such as ``<CAPTION>`` for
    Florence-2), ``chat`` (wrap the prompt in the processor's chat template, for
    instruction-tuned VLMs), ``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_k``, ``top_p``, ``num_beams`` (deterministic decoding only), ``nested_images`` (one list per
    image, for processors that take several images per text: Llama 3.2 Vision's), and ``decoding:
    generation_config``: decode as the weights' ``generation_config.json`` says (greedy, or sampling
    with its temperature/top-k/top-p, drawn per item as above; its repetition penalty applies), the
    values read at load and recorded with every invocation.
    """

    role = Role.IMAGE_TO_TEXT

    def __init__(self, spec: ModelSpec, model, processor, device: str, dtype) -> None:
        self.spec = spec
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.dtype = dtype
        extra = spec.extra
        self.prompt: str | None = extra.get("prompt")
        self.chat = bool(extra.get("chat", False))
        self.max_new_tokens = int(extra.get("max_new_tokens", 50))
        self.do_sample = bool(extra.get("do_sample", True))
        self.temperature = float(extra.get("temperature", 1.0))
        self.top_k = int(extra.get("top_k", 0))
        self.top_p = float(extra.get("top_p", 0.9))
        self.num_beams = int(extra.get("num_beams", 1))
        self.nested = bool(extra.get("nested_images", False))
        self.decoding = extra.get("decoding", "settings")
        self.repetition_penalty: float | None = None
        if self.decoding == "generation_config":
            self._from_generation_config(getattr(model, "generation_config", None))
        elif self.decoding != "settings":
            raise ValueError(f"{spec.name}: decoding must be 'settings' or 'generation_config', not {self.decoding!r}")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None and not model.config.is_encoder_decoder:
            tokenizer.padding_side = "left"  # batched decoder-only generation pads on the left

    def _from_generation_config(self, config) -> None:
        """Greedy or sampled decoding, with the weights' own settings (unset: transformers' defaults)."""
        def value(name, default):
            got = getattr(config, name, None) if config is not None else None
            return default if got is None else got

        self.do_sample = bool(value("do_sample", False))
        self.temperature = float(value("temperature", 1.0))
        self.top_k = int(value("top_k", 0))
        self.top_p = float(value("top_p", 1.0))
        self.num_beams = int(value("num_beams", 1))
        penalty = value("repetition_penalty", None)
        self.repetition_penalty = None if penalty is None else float(penalty)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "TransformersCaptioner":
        (transformers,) = require("transformers")
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        if spec.extra.get("random_init"):
            from .random_init import build_for_spec

            model, processor = build_for_spec(spec, device, dtype)
            return cls(spec, model, processor, device, dtype)
        trust = check_remote_code(spec)
        path = str(resolve_weights(spec))
        model_class = getattr(transformers, spec.extra.get("model_class", "AutoModelForImageTextToText"))
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        if trust:
            kwargs["trust_remote_code"] = True
        model = model_class.from_pretrained(path, **kwargs).to(device)
        # AutoProcessor, or where torchvision does not import, the same processor on PIL (Pixtral, Qwen2.5-VL)
        processor = load_processor(path, **({"trust_remote_code": True} if trust else {}))
        return cls(spec, model, processor, device, dtype)

    def _text(self, n: int) -> list[str] | None:
        if self.chat:
            content = [{"type": "image"}, {"type": "text", "text": self.prompt or "Describe this image."}]
            messages = [{"role": "user", "content": content}]
            return [self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)] * n
        return None if self.prompt is None else [self.prompt] * n

    def generate(self, inputs: list[Image.Image], seeds: list[int]) -> list[str]:
        if len(inputs) != len(seeds):
            raise ValueError("generate: one seed per input")
        if not inputs:
            return []
        images = _check_images(self.spec.name, inputs)
        text = self._text(len(images))
        kwargs: dict[str, Any] = {"images": [[im] for im in images] if self.nested else images, "return_tensors": "pt"}
        if text is not None:
            kwargs.update(text=text, padding=True)
        batch = self.processor(**kwargs).to(self.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if self.do_sample:
            from transformers import LogitsProcessorList

            sampler = SeededGumbelSampler(seeds, self.device, self.temperature, self.top_k, self.top_p)
            gen.update(num_beams=1, logits_processor=LogitsProcessorList([sampler]))
        else:
            gen["num_beams"] = self.num_beams
        gen.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**batch, **gen)
        input_ids = batch.get("input_ids")
        if input_ids is not None:  # decoder-only models return the prompt too: cut it
            n = input_ids.shape[1]
            if out.shape[1] >= n and torch.equal(out[:, :n], input_ids):
                out = out[:, n:]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(
            prompt=self.prompt,
            chat=self.chat,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            dtype=dtype_name(self.dtype),
            device=str(self.device),
        )
        if self.do_sample:
            params.update(
                sampling="per-item gumbel-max", temperature=self.temperature, top_k=self.top_k, top_p=self.top_p
            )
        else:
            params.update(num_beams=self.num_beams)
        if self.decoding == "generation_config":
            params.update(decoding="generation_config", repetition_penalty=self.repetition_penalty)
        image_processor = image_processor_name(self.processor)
        if image_processor:  # the torchvision or the PIL backend (...Pil): resized pixels differ slightly
            params.update(image_processor=image_processor)
        return record(self.spec, **params)


class MoondreamCaptioner(GenerativeModel):
    """Moondream2 through its own API (``model.caption(image, length=...)``), remote code.

    Moondream's ``caption`` takes one image at a time; a batch is a loop, and
    each item seeds torch's generators with its own seed before its call, so
    batching does not change a caption.
    """

    role = Role.IMAGE_TO_TEXT

    def __init__(self, spec: ModelSpec, model, device: str, dtype) -> None:
        self.spec = spec
        self.model = model
        self.device = device
        self.dtype = dtype
        self.length = spec.extra.get("length", "short")
        self.settings: dict[str, Any] = dict(spec.extra.get("settings", {}))

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "MoondreamCaptioner":
        (transformers,) = require("transformers")
        trust = check_remote_code(spec)
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        path = str(resolve_weights(spec))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=trust, dtype=dtype, local_files_only=True, device_map={"": device}
        )
        return cls(spec, model.eval(), device, dtype)

    def generate(self, inputs: list[Image.Image], seeds: list[int]) -> list[str]:
        if len(inputs) != len(seeds):
            raise ValueError("generate: one seed per input")
        out = []
        for image, seed in zip(_check_images(self.spec.name, inputs), seeds):
            torch.manual_seed(int(seed))
            kwargs: dict[str, Any] = {"length": self.length}
            if self.settings:
                kwargs["settings"] = self.settings
            with torch.inference_mode():
                out.append(self.model.caption(image, **kwargs)["caption"].strip())
        return out

    def parameters(self) -> dict[str, Any]:
        return record(
            self.spec, length=self.length, dtype=dtype_name(self.dtype), device=str(self.device), **self.settings
        )
