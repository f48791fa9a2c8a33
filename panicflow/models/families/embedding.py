"""Embedders: sentence-transformers, CLIP/SigLIP, jina-clip-v2, nomic-embed-vision and ColQwen (ColNomic).

Every embedder returns float32 rows; ``normalize`` (on by default) makes them
unit length, after any Matryoshka truncation. Prompt prefixes documented by a
model's authors (``extra['prompt_prefix']``, e.g. Nomic's ``search_document: ``)
are prepended to every text here, explicitly, rather than left to a library
option that a model's custom code may ignore.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..base import EmbeddingModel, ModelSpec, Role
from ._common import check_dim, check_remote_code, dtype_name, pick_device, pick_dtype, record, require, resolve_weights


def _texts(name: str, inputs: list[Any]) -> list[str]:
    for text in inputs:
        if not isinstance(text, str):
            raise TypeError(f"{name} embeds text, got {type(text).__name__}")
    return list(inputs)


def _images(name: str, inputs: list[Any]) -> list[Image.Image]:
    out = []
    for image in inputs:
        if not isinstance(image, Image.Image):
            raise TypeError(f"{name} embeds PIL images, got {type(image).__name__}")
        out.append(image.convert("RGB"))
    return out


def _finish(rows, normalize: bool, truncate_dim: int | None = None) -> np.ndarray:
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().float().cpu().numpy()
    rows = np.asarray(rows, dtype=np.float32)
    if truncate_dim:
        rows = rows[:, :truncate_dim]
    if normalize:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = rows / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(rows, dtype=np.float32)


def _features(out) -> torch.Tensor:
    """``get_text_features``/``get_image_features`` return a tensor (transformers 4) or an output (5)."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class _Embedder(EmbeddingModel):
    def __init__(self, spec: ModelSpec, device: str, dtype) -> None:
        self.spec = spec
        self.role = spec.role  # one class serves both text and image entries
        self.device = device
        self.dtype = dtype
        self.prefix: str = spec.extra.get("prompt_prefix", "")
        self.normalize = bool(spec.extra.get("normalize", True))
        self.truncate_dim: int | None = spec.extra.get("truncate_dim")

    def _check(self, rows: np.ndarray, n: int) -> np.ndarray:
        check_dim(self.spec, rows.shape[1])
        self.dim = rows.shape[1]
        return rows.reshape(n, self.dim)

    def parameters(self) -> dict[str, Any]:
        return record(
            self.spec,
            prompt_prefix=self.prefix,
            normalize=self.normalize,
            truncate_dim=self.truncate_dim,
            dtype=dtype_name(self.dtype),
            device=str(self.device),
        )


class SentenceTransformerEmbedder(_Embedder):
    """Text embedders packaged for sentence-transformers (MiniLM, STSB models, Nomic text)."""

    def __init__(self, spec: ModelSpec, model, device: str, dtype) -> None:
        super().__init__(spec, device, dtype)
        self.model = model
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = spec.dim or dim()

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "SentenceTransformerEmbedder":
        require("sentence_transformers")
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        if spec.extra.get("random_init"):
            from .random_init import build_for_spec

            return cls(spec, build_for_spec(spec, device, dtype), device, dtype)
        from sentence_transformers import SentenceTransformer

        trust = check_remote_code(spec)
        path = str(resolve_weights(spec))
        kwargs: dict[str, Any] = {}
        if spec.extra.get("padding_side"):  # Qwen3-Embedding pools the last token: pad on the left
            import inspect

            key = "processor_kwargs" if "processor_kwargs" in inspect.signature(SentenceTransformer).parameters else "tokenizer_kwargs"
            kwargs[key] = {"padding_side": spec.extra["padding_side"]}
        model = SentenceTransformer(
            path,
            device=device,
            trust_remote_code=trust,
            local_files_only=True,
            model_kwargs={"dtype": dtype},
            **kwargs,
        )
        return cls(spec, model.eval(), device, dtype)

    def embed(self, inputs: list[str]) -> np.ndarray:
        texts = [self.prefix + t for t in _texts(self.spec.name, inputs)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self.model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return self._check(_finish(rows, self.normalize, self.truncate_dim), len(texts))


class ClipEmbedder(_Embedder):
    """A dual-encoder (CLIP, SigLIP) embedding text or images into one shared space.

    The text and image registry entries of one model hold the same ``hf_id``;
    the entry's role picks ``get_text_features`` or ``get_image_features``.
    ``extra['text_padding']`` is ``"max_length"`` for SigLIP, which was trained
    on padded text (``text_max_length``, 64).
    """

    def __init__(self, spec: ModelSpec, model, processor, device: str, dtype) -> None:
        super().__init__(spec, device, dtype)
        self.model = model.eval()
        self.processor = processor
        self.padding = spec.extra.get("text_padding", True)
        self.max_length = spec.extra.get("text_max_length")
        self.dim = spec.dim or model.config.projection_dim

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "ClipEmbedder":
        (transformers,) = require("transformers")
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        if spec.extra.get("random_init"):
            from .random_init import build_for_spec

            model, processor = build_for_spec(spec, device, dtype)
            return cls(spec, model, processor, device, dtype)
        trust = check_remote_code(spec)
        path = str(resolve_weights(spec))
        model = transformers.AutoModel.from_pretrained(
            path, dtype=dtype, local_files_only=True, trust_remote_code=trust
        )
        processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=trust)
        return cls(spec, model.to(device), processor, device, dtype)

    def embed(self, inputs: list[Any]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            if self.role is Role.TEXT_EMBEDDER:
                texts = [self.prefix + t for t in _texts(self.spec.name, inputs)]
                kwargs: dict[str, Any] = {"padding": self.padding, "truncation": True}
                if self.max_length:
                    kwargs["max_length"] = self.max_length
                batch = self.processor(text=texts, return_tensors="pt", **kwargs).to(self.device)
                rows = _features(self.model.get_text_features(**batch))
            else:
                batch = self.processor(images=_images(self.spec.name, inputs), return_tensors="pt").to(self.device)
                rows = _features(self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.dtype)))
        return self._check(_finish(rows, self.normalize, self.truncate_dim), len(inputs))


class JinaClipEmbedder(_Embedder):
    """jina-clip-v2 through its own ``encode_text``/``encode_image`` (remote code).

    Text goes with ``task`` (default ``retrieval.query``, whose instruction
    prefix the model's code adds); both sides are truncated to
    ``truncate_dim`` (Matryoshka, default 768 of the native 1024) and then
    normalised again.
    """

    def __init__(self, spec: ModelSpec, model, device: str, dtype) -> None:
        super().__init__(spec, device, dtype)
        self.model = model
        self.task = spec.extra.get("task", "retrieval.query")
        self.truncate_dim = spec.extra.get("truncate_dim", 768)
        self.dim = spec.dim or self.truncate_dim

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "JinaClipEmbedder":
        (transformers,) = require("transformers")
        trust = check_remote_code(spec)
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        path = str(resolve_weights(spec))
        model = transformers.AutoModel.from_pretrained(
            path, trust_remote_code=trust, dtype=dtype, local_files_only=True
        )
        return cls(spec, model.to(device).eval(), device, dtype)

    def embed(self, inputs: list[Any]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            if self.role is Role.TEXT_EMBEDDER:
                texts = [self.prefix + t for t in _texts(self.spec.name, inputs)]
                rows = self.model.encode_text(
                    texts, task=self.task, truncate_dim=self.truncate_dim, batch_size=len(texts)
                )
            else:
                images = _images(self.spec.name, inputs)
                rows = self.model.encode_image(images, truncate_dim=self.truncate_dim, batch_size=len(images))
        return self._check(_finish(rows, self.normalize, self.truncate_dim), len(inputs))

    def parameters(self) -> dict[str, Any]:
        params = super().parameters()
        if self.role is Role.TEXT_EMBEDDER:
            params["task"] = self.task
        return params


class NomicVisionEmbedder(_Embedder):
    """nomic-embed-vision: the CLS token of the last hidden state, normalised (remote code)."""

    def __init__(self, spec: ModelSpec, model, processor, device: str, dtype) -> None:
        super().__init__(spec, device, dtype)
        self.model = model
        self.processor = processor
        self.dim = spec.dim or 768

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "NomicVisionEmbedder":
        (transformers,) = require("transformers")
        trust = check_remote_code(spec)
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        path = str(resolve_weights(spec))
        processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(
            path, trust_remote_code=trust, dtype=dtype, local_files_only=True
        )
        return cls(spec, model.to(device).eval(), processor, device, dtype)

    def embed(self, inputs: list[Image.Image]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.processor(_images(self.spec.name, inputs), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(pixel_values=batch["pixel_values"].to(self.dtype)).last_hidden_state
        return self._check(_finish(hidden[:, 0], self.normalize, self.truncate_dim), len(inputs))


def mean_pool(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of each row's token vectors where ``mask`` is set: ``(batch, tokens, dim)`` and
    ``(batch, tokens)`` -> ``(batch, dim)``, in float32. A row with no token set gives zeros.

    Masked tokens are left out, not multiplied by zero: a padding token's vector can be NaN (its
    attention row has nothing to attend to; CPU SDPA with one thread gives NaN there) and NaN * 0
    is NaN."""
    keep = mask.to(torch.bool).unsqueeze(-1)
    total = torch.where(keep, vectors.to(torch.float32), 0.0).sum(dim=1)
    return total / keep.sum(dim=1).to(torch.float32).clamp(min=1.0)


class ColQwenEmbedder(_Embedder):
    """A ColQwen2/2.5 multi-vector retriever (ColNomic) reduced to one vector per item.

    The model gives one 128-d unit vector per token (``ColQwen2ForRetrieval``: the backbone's last
    hidden state, projected, L2-normalised, zero at padding). panicflow keeps one vector per item:
    the **mean of the token vectors over the item's tokens, then L2-normalised**. Text: every
    non-padding token of the plain text (tokenised as it is, no query prefix or augmentation tokens,
    as colpali-engine's ``process_texts``). Images: only the image's own tokens (``<|image_pad|>``
    positions; the prompt around them is left out, as colpali-engine's
    ``mask_non_image_embeddings``). The earlier tool pooled the same way (mean of the non-zero
    token vectors), and stored the result normalised.

    Weights: a transformers ``ColQwen2ForRetrieval`` checkpoint, or a colpali-engine PEFT adapter
    (ColNomic's published form: ``adapter_config.json`` beside ``adapter_model.safetensors``) over
    its base model (``extra['base_hf_id']``), merged at load (``colpali.load_adapter``).
    """

    def __init__(self, spec: ModelSpec, model, processor, device: str, dtype) -> None:
        super().__init__(spec, device, dtype)
        self.model = model.eval()
        self.processor = processor
        self.dim = spec.dim or model.config.embedding_dim
        tokenizer = processor.tokenizer
        self.image_token_id = processor.image_token_id
        self.max_length = int(spec.extra.get("text_max_length", 512))
        tokenizer.padding_side = "left"

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> "ColQwenEmbedder":
        (transformers,) = require("transformers")
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        if spec.extra.get("random_init"):
            from .random_init import build_for_spec

            model, processor = build_for_spec(spec, device, dtype)
            return cls(spec, model, processor, device, dtype)
        path = resolve_weights(spec)
        if (path / "adapter_config.json").is_file():
            from .colpali import load_adapter

            model = load_adapter(spec, path, dtype)
        else:
            model = transformers.ColQwen2ForRetrieval.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        processor = transformers.ColQwen2Processor.from_pretrained(str(path), local_files_only=True)
        return cls(spec, model.to(device), processor, device, dtype)

    def embed(self, inputs: list[Any]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.role is Role.TEXT_EMBEDDER:
            texts = [self.prefix + t for t in _texts(self.spec.name, inputs)]
            batch = self.processor.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                                             return_tensors="pt").to(self.device)
            keep = batch["attention_mask"].bool()
        else:
            batch = self.processor(images=_images(self.spec.name, inputs), return_tensors="pt").to(self.device)
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            keep = (batch["input_ids"] == self.image_token_id) & batch["attention_mask"].bool()
        with torch.inference_mode():
            vectors = self.model(**batch).embeddings
        rows = mean_pool(vectors, keep)
        return self._check(_finish(rows, self.normalize, self.truncate_dim), len(inputs))

    def parameters(self) -> dict[str, Any]:
        params = super().parameters()
        params["pooling"] = "mean of token vectors (text: non-padding tokens; image: image tokens), then L2"
        return params
