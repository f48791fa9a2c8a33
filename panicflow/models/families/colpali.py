"""ColNomic's published weights: a colpali-engine PEFT adapter over its base model, merged at load.

``nomic-ai/colnomic-embed-multimodal-3b`` holds ``adapter_config.json`` and
``adapter_model.safetensors`` (LoRA on the language model of ``Qwen/Qwen2.5-VL-3B-Instruct``,
plus the 128-d ``custom_text_proj``), not a full model. colpali-engine is not needed: the base
model loads as transformers' ``Qwen2_5_VLModel``, each LoRA pair is merged into its weight
(``W += scale * B @ A``, ``scale = lora_alpha / r``, or ``/ sqrt(r)`` with ``use_rslora``), and
``custom_text_proj`` becomes ``ColQwen2ForRetrieval.embedding_proj_layer``: the same computation
as colpali-engine's ``ColQwen2_5``. A LoRA weight that names no module of the base model is an
error, never skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from ..base import ModelSpec
from ._common import ModelNotAvailable, resolve_weights

PREFIX = "base_model.model."
PROJ = "custom_text_proj"


def _normal(name: str) -> str:
    """A module path without the wrappers that differ between transformers and colpali-engine
    versions (``model.``, ``language_model.``)."""
    parts = [p for p in name.split(".") if p not in ("model", "language_model")]
    return ".".join(parts)


def base_spec(spec: ModelSpec, adapter: dict) -> ModelSpec:
    """The entry's base model as an entry of its own, for the weight lookup (and its fetch command)."""
    hf_id = spec.extra.get("base_hf_id") or adapter.get("base_model_name_or_path")
    extra = {k: v for k, v in spec.extra.items() if k not in ("local_dir", "base_local_dir")}
    extra.update(hf_id=hf_id, revision=spec.extra.get("base_revision", "main"))
    if spec.extra.get("base_local_dir"):
        extra["local_dir"] = spec.extra["base_local_dir"]
    return dataclasses.replace(spec, name=f"{spec.name} (base {hf_id})", extra=extra)


def load_adapter(spec: ModelSpec, path: Path, dtype):
    """``ColQwen2ForRetrieval`` with the adapter in ``path`` merged into its base model."""
    import transformers
    from safetensors.torch import load_file

    adapter = json.loads((Path(path) / "adapter_config.json").read_text())
    base_path = resolve_weights(base_spec(spec, adapter))
    weights = load_file(str(Path(path) / "adapter_model.safetensors"))
    vlm = transformers.AutoModel.from_pretrained(str(base_path), dtype=dtype, local_files_only=True)
    proj = {k.removeprefix(PREFIX).split(PROJ + ".", 1)[1]: v for k, v in weights.items() if PROJ + "." in k}
    if "weight" not in proj:
        raise ModelNotAvailable(f"model {spec.name!r}: the adapter in {path} has no {PROJ} weight")
    config = transformers.ColQwen2Config(vlm_config=vlm.config.to_dict(), embedding_dim=proj["weight"].shape[0])
    with torch.device("meta"):
        model = transformers.ColQwen2ForRetrieval(config)
    model.vlm = vlm
    layer = torch.nn.Linear(proj["weight"].shape[1], proj["weight"].shape[0], bias="bias" in proj)
    layer.load_state_dict(proj)
    model.embedding_proj_layer = layer.to(dtype)
    merge_lora(spec, vlm, weights, adapter)
    return model.eval()


def merge_lora(spec: ModelSpec, vlm, weights: dict[str, torch.Tensor], adapter: dict) -> int:
    """Merge every LoRA pair of ``weights`` into ``vlm``'s linear layers; the number merged."""
    r = int(adapter["r"])
    alpha = float(adapter.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if adapter.get("use_rslora") else alpha / r
    modules = {_normal(name): m for name, m in vlm.named_modules() if isinstance(m, torch.nn.Linear)}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        key = key.removeprefix(PREFIX)
        for side in ("lora_A", "lora_B"):
            marker = f".{side}."
            if marker in key:
                pairs.setdefault(key.split(marker)[0], {})[side] = value
    for name, pair in pairs.items():
        module = modules.get(_normal(name))
        if module is None or set(pair) != {"lora_A", "lora_B"}:
            raise ModelNotAvailable(
                f"model {spec.name!r}: the adapter's LoRA weight {name!r} matches no layer of its base model"
            )
        with torch.no_grad():
            delta = pair["lora_B"].float() @ pair["lora_A"].float()
            module.weight.copy_((module.weight.float() + scale * delta.to(module.weight.device)).to(module.weight.dtype))
    return len(pairs)
