"""Real-model families: one class per family, one registry entry per model.

A registry entry (``ModelSpec``) names its family in ``extra['family']``;
``build(spec)`` imports that family's module (and with it torch, transformers or
diffusers) only when a worker builds the model, so ``import panicflow`` stays
fast and works without the ``models`` extra.

=========================  =====================================  ===============================
family                     class                                  models
=========================  =====================================  ===============================
``diffusers``              ``diffusion.DiffusersTextToImage``     SDXL-Turbo, FLUX.1/2, SD 3.5, GLM-Image...
``transformers-captioner`` ``captioning.TransformersCaptioner``   BLIP-2, Florence-2, Qwen2.5-VL, Gemma 3n,
                                                                  Pixtral, Llama 3.2 Vision
``moondream``              ``captioning.MoondreamCaptioner``      Moondream2 (remote code)
``sentence-transformers``  ``embedding.SentenceTransformerEmbedder``  MiniLM, STSB, Nomic text
``clip``                   ``embedding.ClipEmbedder``             CLIP, SigLIP (text and image)
``jina-clip``              ``embedding.JinaClipEmbedder``         jina-clip-v2 (remote code)
``nomic-vision``           ``embedding.NomicVisionEmbedder``      nomic-embed-vision (remote code)
``colqwen``                ``embedding.ColQwenEmbedder``          ColNomic (text and images), mean-pooled
=========================  =====================================  ===============================
"""

from __future__ import annotations

import importlib

from ._common import (
    MissingExtra,
    ModelNotAvailable,
    RemoteCodeNotAllowed,
    check_remote_code,
    configure,
    resolve_weights,
    weights_present,
)

FAMILIES: dict[str, str] = {
    "diffusers": "diffusion:DiffusersTextToImage",
    "transformers-captioner": "captioning:TransformersCaptioner",
    "moondream": "captioning:MoondreamCaptioner",
    "sentence-transformers": "embedding:SentenceTransformerEmbedder",
    "clip": "embedding:ClipEmbedder",
    "jina-clip": "embedding:JinaClipEmbedder",
    "nomic-vision": "embedding:NomicVisionEmbedder",
    "colqwen": "embedding:ColQwenEmbedder",
}


def family_class(family: str):
    """The class implementing ``family`` (imports torch and friends)."""
    try:
        module, cls = FAMILIES[family].split(":")
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None
    from ._common import quiet, require

    require("torch", "transformers")
    quiet()
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def build(spec):
    """The ``ModelSpec.factory`` of every real model: load ``spec`` with its family's class.

    Permission and weights are checked before torch is imported, so that a
    missing model fails in a moment with one line.
    """
    if not spec.extra.get("random_init"):
        check_remote_code(spec)
        resolve_weights(spec)
    return family_class(spec.extra["family"]).from_spec(spec)


__all__ = [
    "FAMILIES",
    "MissingExtra",
    "ModelNotAvailable",
    "RemoteCodeNotAllowed",
    "build",
    "configure",
    "family_class",
    "resolve_weights",
]
