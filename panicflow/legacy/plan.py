"""From a legacy ``experimentconfig`` row and its runs to a panicflow config and run slots.

panicflow's runs are the product networks x seeds x prompts, in that order, as the
earlier tool created them (``engine.init_runs``); each legacy run takes the slot of
its (network, seed, prompt), several runs with one key (seed -1 repeated) in the
order they were created. The model names are the same in both tools (every legacy
model, dummies included, is in panicflow's registry); a name panicflow does not know
cannot be stored in a valid config, so:

* an unknown generative model: the experiment is not imported (its runs cannot be
  replayed, checked or resumed by any panicflow command);
* an unknown embedding model, or one that embeds a kind its networks never output:
  left out of the config, with its embeddings and diagrams (reported).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..config import ExperimentConfig, RunSpec, validate_config
from ..errors import ConfigError
from ..models import REGISTRY
from .schema import hyphenated, json_value, legacy_uuid


@dataclass
class RunSlot:
    spec: RunSpec
    row: dict[str, Any] | None  # the legacy run row; None: the database has no run for this slot
    legacy_id: str = ""  # 32 hex


@dataclass
class Plan:
    legacy_id: str  # 32 hex
    row: dict[str, Any]
    config: ExperimentConfig | None = None
    reason: str = ""  # why the experiment cannot be imported
    slots: list[RunSlot] = field(default_factory=list)
    extra_runs: list[dict[str, Any]] = field(default_factory=list)  # runs that fit no slot
    dropped_models: dict[str, str] = field(default_factory=dict)  # embedding model -> why it is left out

    @property
    def experiment_id(self) -> str:
        return experiment_id_for(self.legacy_id)


def experiment_id_for(legacy_hex: str) -> str:
    """The panicflow id of an imported experiment: fixed by the legacy id, so a second import finds it."""
    return f"legacy-{legacy_hex}"


def plan_experiment(row: dict[str, Any], runs: list[dict[str, Any]]) -> Plan:
    legacy_id = legacy_uuid(row["id"]) or ""
    plan = Plan(legacy_id, row)
    if not legacy_id:
        plan.reason = f"experimentconfig id {row['id']!r} is not a UUID"
        return plan
    raw = {k: json_value(row[k]) for k in ("networks", "seeds", "prompts", "embedding_models")}
    bad = [k for k, v in raw.items() if not isinstance(v, list)]
    if bad:
        plan.reason = f"{', '.join(bad)}: not a JSON list"
        return plan
    unknown = sorted({m for net in raw["networks"] if isinstance(net, list) for m in net
                      if isinstance(m, str) and m not in REGISTRY})
    if unknown:
        plan.reason = f"generative model(s) {', '.join(map(repr, unknown))} unknown to panicflow (see `panicflow models`)"
        return plan
    embedders = []
    for m in dict.fromkeys(map(str, raw["embedding_models"])):  # a name listed twice is one model
        if m not in REGISTRY or not REGISTRY[m].role.is_embedder:
            plan.dropped_models[m] = "unknown embedding model"
        else:
            embedders.append(m)
    cfg = {**raw, "embedding_models": embedders, "max_length": row["max_length"],
           "name": f"panic-tda {hyphenated(legacy_id)}", "persistence": {"maxdim": 2, "collapse_edges": False}}
    # drop embedders that apply to no output of these networks (the tool let vision models run on texts)
    try:
        validate_config(cfg)
    except ConfigError as exc:
        for line in exc.lines:
            if line.startswith("embedding_models[") and "outputs no" in line:
                model = embedders[int(line[len("embedding_models["):line.index("]")])]
                plan.dropped_models[model] = "embeds a kind of output its networks do not make"
        cfg["embedding_models"] = [m for m in embedders if m not in plan.dropped_models]
    try:
        plan.config = validate_config(cfg)
    except ConfigError as exc:
        plan.reason = "its config is not valid for panicflow: " + "; ".join(exc.lines[:5])
        return plan
    plan.slots, plan.extra_runs = _assign(plan.config, runs)
    return plan


def _run_key(row: dict[str, Any]) -> tuple | None:
    network = json_value(row["network"])
    if not isinstance(network, list) or not all(isinstance(m, str) for m in network):
        return None
    seed = row["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        return None
    return tuple(network), seed, row["initial_prompt"]


def _assign(config: ExperimentConfig, runs: list[dict[str, Any]]) -> tuple[list[RunSlot], list[dict[str, Any]]]:
    """Each legacy run (in creation order) to the next free slot of its (network, seed, prompt)."""
    free: dict[tuple, list[int]] = defaultdict(list)
    specs = config.runs()
    for spec in specs:
        free[(spec.network, spec.seed, spec.prompt)].append(spec.index)
    for slots in free.values():
        slots.reverse()  # pop() from the end takes them in order
    taken: dict[int, dict[str, Any]] = {}
    extra = []
    for row in runs:
        key = _run_key(row)
        if key is None or not free.get(key) or not legacy_uuid(row["id"]):
            extra.append(row)
            continue
        taken[free[key].pop()] = row
    slots = [RunSlot(spec, taken.get(spec.index), legacy_uuid(taken[spec.index]["id"]) if spec.index in taken else "")
             for spec in specs]
    return slots, extra
