"""Experiment configuration: parsing and validation.

A config is a JSON or YAML mapping. Validation reports every problem at once,
one line each, naming the field, and nothing is written before it passes.
Runs are the cartesian product networks x seeds x prompts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .models import REGISTRY, Kind

UNSEEDED = -1


class PersistenceConfig(BaseModel):
    """How persistence diagrams are computed (giotto-ph ``ripser_parallel``)."""

    model_config = ConfigDict(extra="forbid")
    maxdim: int = Field(2, ge=0, le=3)
    collapse_edges: bool | None = None  # None: the measured default in analysis.topology
    memory_budget_gb: float | None = Field(None, gt=0)  # None: a share of the worker's memory limit
    fallback: Literal["skip", "h1", "subsample"] = "skip"


class RetryConfig(BaseModel):
    """Retries of failed model calls (transient errors such as CUDA faults)."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(3, ge=1)
    backoff_s: float = Field(1.0, ge=0)


class ExperimentConfig(BaseModel):
    """What to run. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    networks: list[list[str]]
    seeds: list[int]
    prompts: list[str]
    embedding_models: list[str]
    max_length: int
    name: str | None = None
    batch_size: dict[str, int] = Field(default_factory=dict)  # per model; defaults from the registry
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    def runs(self) -> list["RunSpec"]:
        """Every run, in the order networks x seeds x prompts."""
        return [
            RunSpec(index=i, network=tuple(net), seed=seed, prompt=prompt)
            for i, (net, seed, prompt) in enumerate(itertools.product(self.networks, self.seeds, self.prompts))
        ]

    def batch_size_for(self, model: str) -> int:
        return self.batch_size.get(model) or REGISTRY[model].default_batch_size

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


@dataclass(frozen=True)
class RunSpec:
    index: int
    network: tuple[str, ...]
    seed: int
    prompt: str

    def model_at(self, step: int) -> str:
        return self.network[step % len(self.network)]


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "config"


def _semantic_problems(raw: dict[str, Any]) -> list[str]:
    """Checks pydantic cannot express; run on whatever parts of ``raw`` are well-formed."""
    problems: list[str] = []

    def listof(key, typ):
        val = raw.get(key)
        return val if isinstance(val, list) and all(isinstance(v, typ) for v in val) else None

    networks = raw.get("networks")
    networks = networks if isinstance(networks, list) else None
    for key in ("networks", "seeds", "prompts", "embedding_models"):
        if isinstance(raw.get(key), list) and not raw[key]:
            problems.append(f"{key}: must not be empty")
    max_length = raw.get("max_length")
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length < 1:
        problems.append(f"max_length: must be at least 1 (got {max_length})")

    output_kinds: list[set[Kind] | None] = []
    for n, net in enumerate(networks or []):
        if not isinstance(net, list) or not all(isinstance(m, str) for m in net):
            output_kinds.append(None)
            continue
        if not net:
            problems.append(f"networks[{n}]: a network needs at least one model")
            output_kinds.append(None)
            continue
        known = True
        for i, m in enumerate(net):
            spec = REGISTRY.get(m)
            if spec is None:
                problems.append(f"networks[{n}][{i}]: unknown model {m!r} (see `panicflow models`)")
                known = False
            elif spec.role.is_embedder:
                problems.append(f"networks[{n}][{i}]: {m!r} is an embedding model; networks take generative models")
                known = False
        first = REGISTRY.get(net[0])
        if first is not None and not first.role.is_embedder and first.input_kind is not Kind.TEXT:
            problems.append(
                f"networks[{n}]: must start with a model that takes text (the prompt), "
                f"but {net[0]!r} takes {first.input_kind.value}"
            )
        if not known:
            output_kinds.append(None)
            continue
        specs = [REGISTRY[m] for m in net]
        for i, spec in enumerate(specs):
            prev = specs[i - 1]  # i == 0 wraps around: the last model's output feeds the first
            if prev.output_kind is not spec.input_kind:
                where = " around the cycle" if i == 0 else ""
                problems.append(
                    f"networks[{n}][{i}]: {spec.name!r} takes {spec.input_kind.value} but "
                    f"{prev.name!r} before it{where} outputs {prev.output_kind.value}"
                )
        output_kinds.append({s.output_kind for s in specs})

    for e, name in enumerate(listof("embedding_models", str) or []):
        spec = REGISTRY.get(name)
        if spec is None:
            problems.append(f"embedding_models[{e}]: unknown model {name!r} (see `panicflow models`)")
            continue
        if not spec.role.is_embedder:
            problems.append(f"embedding_models[{e}]: {name!r} is a {spec.role.value} model, not an embedder")
            continue
        for n, kinds in enumerate(output_kinds):
            if kinds is not None and spec.input_kind not in kinds:
                problems.append(
                    f"embedding_models[{e}]: {name!r} embeds {spec.input_kind.value}, "
                    f"but networks[{n}] outputs no {spec.input_kind.value}"
                )
    names = listof("embedding_models", str) or []
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"embedding_models: {name!r} is listed twice")

    seeds = listof("seeds", int) or []
    for seed in sorted({s for s in seeds if s != UNSEEDED and seeds.count(s) > 1}):
        problems.append(f"seeds: {seed} is listed twice (identical runs); use -1 for repeated unseeded runs")
    for s in seeds:
        if s < UNSEEDED:
            problems.append(f"seeds: {s} is negative; seeds are >= 0, or -1 for unseeded")
    for p, prompt in enumerate(listof("prompts", str) or []):
        if not prompt.strip():
            problems.append(f"prompts[{p}]: must not be blank")
    for model, size in (raw.get("batch_size") or {}).items() if isinstance(raw.get("batch_size"), dict) else []:
        if model not in REGISTRY:
            problems.append(f"batch_size.{model}: unknown model {model!r}")
        elif isinstance(size, int) and size < 1:
            problems.append(f"batch_size.{model}: must be at least 1 (got {size})")
    return problems


def validate_config(raw: Any) -> ExperimentConfig:
    """An ``ExperimentConfig`` from a mapping, or ``ConfigError`` listing every problem."""
    if isinstance(raw, ExperimentConfig):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config: must be a mapping of fields, got {type(raw).__name__}")
    problems: list[str] = []
    try:
        config = ExperimentConfig.model_validate(raw, strict=False)
    except ValidationError as exc:
        config = None
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                problems.append(f"{_loc(err['loc'])}: unknown key (allowed: {', '.join(ExperimentConfig.model_fields)})")
            else:
                problems.append(f"{_loc(err['loc'])}: {err['msg']}")
    problems += _semantic_problems(raw)
    if problems:
        # several pydantic errors can name one field; keep the first of each line
        raise ConfigError(*dict.fromkeys(problems))
    assert config is not None
    return config


def load_config(source: ExperimentConfig | dict | str | Path) -> ExperimentConfig:
    """A validated config from an object, a mapping, or a JSON/YAML file path."""
    if isinstance(source, (ExperimentConfig, dict)):
        return validate_config(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config: no such file {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
    return validate_config(raw)
