"""Experiment configuration: parsing and validation.

A config is a JSON or YAML mapping. Validation reports every problem at once,
one line each, naming the field, and nothing is written before it passes.
Runs are the cartesian product networks x seeds x prompts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

from .display import is_control
from .errors import ConfigError
from .models import REGISTRY, Kind

UNSEEDED = -1
MAX_SEED = 2**63 - 1  # seeds are stored as int64
MAX_LENGTH = 1_000_000  # steps per run
MAX_RUNS = 1_000_000  # networks x seeds x prompts


def _no_bool(kind: str):
    """A before-validator refusing YAML/JSON booleans where a number is expected: pydantic would take
    ``true`` as 1 (``seeds: [true]`` ran seed 1) while it refuses 1.5. A stored config (validated with
    ``context={"stored": True}``) is still read as before, so no older experiment becomes unreadable."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and not (info.context or {}).get("stored"):
            raise PydanticCustomError("bool_number", "Input should be a valid {kind}, got a boolean ({value})",
                                      {"kind": kind, "value": str(value).lower()})
        return value

    return BeforeValidator(check)


Int = Annotated[int, _no_bool("integer")]  # nested inside lists and dicts (seeds, batch_size values)
_INT = _no_bool("integer")  # on a whole field, before an ``int | None`` union (one error, not one per member)
_FLOAT = _no_bool("number")


class PersistenceConfig(BaseModel):
    """How persistence diagrams are computed (giotto-ph ``ripser_parallel``)."""

    model_config = ConfigDict(extra="forbid")
    maxdim: Annotated[int, _INT] = Field(2, ge=0, le=3)
    collapse_edges: bool | None = None  # None: the measured default in analysis.topology
    # None: the worker's panicflow.diagram.memory-budget-gb setting, by default a share of its memory limit
    memory_budget_gb: Annotated[float | None, _FLOAT] = Field(None, gt=0, allow_inf_nan=False)
    fallback: Literal["skip", "h1", "subsample"] = "skip"
    # a diagram still computing after this long is stopped and recorded as over_time (never wait for ever);
    # None: the worker's panicflow.diagram.time-limit setting (default 3600 s; docs/settings.md)
    time_limit_s: Annotated[float | None, _FLOAT] = Field(None, gt=0, allow_inf_nan=False)


class RetryConfig(BaseModel):
    """Retries of failed model calls (transient errors such as CUDA faults)."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: Annotated[int, _INT] = Field(3, ge=1)
    backoff_s: Annotated[float, _FLOAT] = Field(1.0, ge=0, allow_inf_nan=False)


class BatchingConfig(BaseModel):
    """Which runs share a model call (docs/config.md, "Batching and reproducibility").

    ``deterministic``: fixed groups of runs (per network, in run order, ``group_size`` at a time)
    advance together, so the batch a step is computed in depends on the config alone and a
    fixed-seed run gives the same bytes on any cluster and after any resume. ``free``: whatever
    runs are ready share a call (fastest to fill, but batched kernels make outputs depend on
    the batch). ``auto``: deterministic for fixed-seed runs, free for unseeded ones.
    ``invariant: per_item`` calls the model once per item inside a batch task: outputs never
    depend on the batch at all, at the cost of the model's batching speed-up.
    """

    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "deterministic", "free"] = "auto"
    group_size: Annotated[int | None, _INT] = Field(None, ge=1)  # None: the smallest batch size of the network's models
    invariant: Literal["none", "per_item"] = "none"


class ExperimentConfig(BaseModel):
    """What to run. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    networks: list[list[str]]
    seeds: list[Int]
    prompts: list[str]
    embedding_models: list[str]
    max_length: Annotated[int, _INT]
    name: str | None = None
    batch_size: dict[str, Int] = Field(default_factory=dict)  # per model; defaults from the registry
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

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


_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, shortened; never fails (huge ints cannot be printed)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(key: Any) -> str:
    """A mapping key as it appears in a field path: bare if simple, else quoted on one line."""
    return key if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key) else _show(key)


def _loc(parts: tuple) -> str:
    out = ""
    for i, p in enumerate(parts):
        if p == "[key]":  # pydantic's tag for an error in a dict key itself
            continue
        if isinstance(p, int) and not isinstance(p, bool) and i > 0:
            out += f"[{p}]"
        else:
            out += f".{_key(p)}" if out else _key(p)
    return out or "config"


_SECTIONS: dict[tuple, type[BaseModel]] = {
    ("persistence",): PersistenceConfig, ("retry",): RetryConfig, ("batching",): BatchingConfig,
}


def _bad_text(text: str) -> str | None:
    """Why a string cannot be stored (UTF-8 in Zarr and JSON), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    return None


def _is_prompt_control(ch: str) -> bool:
    """C0 and C1 controls and DEL, except tab, newline and carriage return."""
    return ch not in "\t\n\r" and unicodedata.category(ch) == "Cc"


def _semantic_problems(raw: dict[str, Any], typed: bool = False, stored: bool = False) -> list[str]:
    """Checks pydantic cannot express; run on whatever parts of ``raw`` are well-formed
    (``typed``: all of it, as pydantic dumped it; ``stored``: the config of an existing
    experiment, which rules added since must not make unreadable). Linear in the number of seeds and prompts."""
    problems: list[str] = []

    def listof(key, typ):
        val = raw.get(key)
        if not isinstance(val, list):
            return None
        # a boolean is an int to Python but not a number here (pydantic reports it)
        return val if typed or all(isinstance(v, typ) and not isinstance(v, bool) for v in val) else None

    networks = raw.get("networks")
    networks = networks if isinstance(networks, list) else None
    for key in ("networks", "seeds", "prompts", "embedding_models"):
        if isinstance(raw.get(key), list) and not raw[key]:
            problems.append(f"{key}: must not be empty")
    max_length = raw.get("max_length")
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length < 1:
        problems.append(f"max_length: must be at least 1 (got {_show(max_length)})")
    if isinstance(max_length, int) and max_length > MAX_LENGTH:
        problems.append(f"max_length: must be at most {MAX_LENGTH:_} (got {_show(max_length)})")

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
    for name in [n for n, count in Counter(names).items() if count > 1]:
        problems.append(f"embedding_models: {name!r} is listed twice")

    seeds = listof("seeds", int) or []
    if len(set(seeds)) < len(seeds):
        for seed in sorted(s for s, count in Counter(seeds).items() if s != UNSEEDED and count > 1):
            problems.append(f"seeds: {seed} is listed twice (identical runs); use -1 for repeated unseeded runs")
    for s in seeds if seeds and (min(seeds) < UNSEEDED or max(seeds) > MAX_SEED) else []:
        if s < UNSEEDED:
            problems.append(f"seeds: {_show(s)} is negative; seeds are >= 0, or -1 for unseeded")
        elif s > MAX_SEED:
            problems.append(f"seeds: {_show(s)} is too large; seeds are at most 2**63 - 1")
    for p, prompt in enumerate(listof("prompts", str) or []):
        if not prompt.strip():
            problems.append(f"prompts[{p}]: must not be blank")
        elif why := _bad_text(prompt):
            problems.append(f"prompts[{p}]: {why}")
        elif not stored and (bad := next((ch for ch in prompt if _is_prompt_control(ch)), None)):
            # an ESC or BEL in a prompt is a paste accident; it would reach the model and every table. Newlines
            # and tabs (YAML block prompts) and format characters (ZWJ in emoji, ZWNJ in Persian) are text.
            problems.append(f"prompts[{p}]: must not contain control character {bad!r} (escapes, BEL, ...); "
                            f"remove it: {_show(prompt)}")
    if isinstance(raw.get("name"), str) and (why := _bad_text(raw["name"])):
        problems.append(f"name: {why}")
    elif isinstance(raw.get("name"), str) and not stored and any(map(is_control, raw["name"])):
        # names are printed by `experiment list` and status: an ESC sequence would drive the terminal
        problems.append(f"name: must not contain control characters (escapes, newlines, tabs...); got {_show(raw['name'])}")
    for model, size in (raw.get("batch_size") or {}).items() if isinstance(raw.get("batch_size"), dict) else []:
        if model not in REGISTRY:
            problems.append(f"batch_size.{_key(model)}: unknown model {_show(model)}")
        elif isinstance(size, int) and not isinstance(size, bool) and size < 1:
            problems.append(f"batch_size.{_key(model)}: must be at least 1 (got {_show(size)})")
    return problems


def _too_many_runs(raw: dict[str, Any]) -> str | None:
    """The run limit, checked on the raw lists before anything of their size is built or validated."""
    sizes = [raw.get(k) for k in ("networks", "seeds", "prompts")]
    if not all(isinstance(v, list) for v in sizes):
        return None
    n = len(sizes[0]) * len(sizes[1]) * len(sizes[2])
    if n <= MAX_RUNS:
        return None
    return (f"networks: networks x seeds x prompts makes more than {MAX_RUNS:_} runs "
            f"({len(sizes[0]):_} x {len(sizes[1]):_} x {len(sizes[2]):_} = {n:_}); split the experiment")


def validate_config(raw: Any, *, stored: bool = False) -> ExperimentConfig:
    """An ``ExperimentConfig`` from a mapping, or ``ConfigError`` listing every problem.

    Linear in the size of the config; more than ``MAX_RUNS`` runs are refused at once, alone.
    ``stored``: the config of an existing experiment (``validate_stored_config``).
    """
    if isinstance(raw, ExperimentConfig):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config: must be a mapping of fields, got {type(raw).__name__}")
    if too_many := _too_many_runs(raw):
        raise ConfigError(too_many)  # before pydantic and the checks walk millions of items
    problems: list[str] = []
    try:
        config = ExperimentConfig.model_validate(raw, strict=False, context={"stored": stored})
    except ValidationError as exc:
        config = None
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                section = _SECTIONS.get(tuple(err["loc"][:-1]), ExperimentConfig)
                problems.append(f"{_loc(err['loc'])}: unknown key (allowed: {', '.join(section.model_fields)})")
            else:
                problems.append(f"{_loc(err['loc'])}: {err['msg']}")
    # On a valid config, check the values pydantic converted ("0" -> 0, -5.0 -> -5), not the raw ones.
    problems += _semantic_problems(raw if config is None else config.model_dump(), typed=config is not None, stored=stored)
    if problems:
        # several pydantic errors can name one field; keep the first of each line
        raise ConfigError(*dict.fromkeys(problems))
    assert config is not None
    return config


def config_digest(config: ExperimentConfig) -> str:
    """sha256 of a validated config's JSON: recorded in experiment.json when it is created."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()


def validate_stored_config(raw: Any, digest: Any = None) -> ExperimentConfig:
    """The config stored with an experiment, read by every status, list, resume and doctor.

    One that pydantic parses into a config with the ``digest`` recorded when it was validated
    at creation is not checked again (only its models are looked up: they come and go with
    versions and PANICFLOW_TEST_MODELS); a 1,000,000-run config costs a third of a full
    validation. Anything else (edited, damaged, recorded without a digest, or dumped differently
    by another version) is validated in full, so damage still gives every problem, one line each.
    """
    if isinstance(raw, dict) and isinstance(digest, str) and not _too_many_runs(raw):
        try:
            config: ExperimentConfig | None = ExperimentConfig.model_validate(raw, strict=False, context={"stored": True})
        except ValidationError:
            config = None
        if (
            config is not None
            and config_digest(config) == digest
            and all(m in REGISTRY for m in itertools.chain(*config.networks, config.embedding_models, config.batch_size))
        ):
            return config
    return validate_config(raw, stored=True)


def load_config(source: ExperimentConfig | dict | str | Path) -> ExperimentConfig:
    """A validated config from an object, a mapping, or a JSON/YAML file path."""
    if isinstance(source, (ExperimentConfig, dict)):
        return validate_config(source)
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"config: {str(path)!r} is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(f"config: no such file {str(path)!r}")
    is_json = path.suffix.lower() == ".json"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text) if is_json else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: JSONDecodeError, or an int too long to convert
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"config: {str(path)!r} is not valid {'JSON' if is_json else 'YAML'}: {first}") from None
    except RecursionError:
        raise ConfigError(f"config: {str(path)!r} is nested too deeply") from None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ConfigError(f"config: {str(path)!r} is empty")
    return validate_config(raw)
