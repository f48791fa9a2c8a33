"""panicflow's settings: one ``dask.config`` namespace, ``panicflow.*`` (docs/settings.md).

The defaults live in ``panicflow/panicflow.yaml`` and are merged into ``dask.config``
when this module is imported, the way distributed ships ``distributed.yaml``; so every
setting can be given like any Dask setting: in a Dask YAML file (``~/.config/dask/``,
or the folder named by ``$DASK_CONFIG``), as a ``DASK_PANICFLOW__*`` environment
variable (``DASK_PANICFLOW__LEASE_TTL=60``, ``DASK_PANICFLOW__DIAGRAM__TIME_LIMIT=2h``),
or with ``dask.config.set({"panicflow.lease-ttl": 60})``.

``get(name)`` returns a setting's effective value, the first of:

1. ``override_with``: an explicit argument of the caller (``--store``, ``store=``...),
   when not None;
2. the older ``PANICFLOW_*`` environment variable of the setting, if it has one and it
   is set to something non-empty (they keep working: ``LEGACY``);
3. ``dask.config``: ``dask.config.set``, then ``DASK_PANICFLOW__*`` variables, then
   Dask's YAML files (Dask's own order);
4. the shipped default (``panicflow.yaml``).

Every value is checked: a value of the wrong kind raises ``SettingError`` (a
``panicflow.errors.UserError``: the CLI prints it and exits 2) with one line naming the
setting, where the value came from, and what to give.

Worker processes read their own settings: a ``Nanny`` (``LocalCluster``, ``dask
worker``) hands its dask.config to the worker process it starts, and environment
variables are inherited; a ``dask worker`` started by hand therefore uses its own
environment and YAML files, not the coordinator's.

This module is imported by the CLI before anything heavy: it imports ``dask.config``
and ``yaml`` only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import dask.config
import yaml
from dask.utils import parse_timedelta

from .errors import PermanentError, UserError

NAMESPACE = "panicflow"
DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "panicflow.yaml")

with open(DEFAULTS_FILE, encoding="utf-8") as _f:
    defaults: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(defaults)


class SettingError(UserError, PermanentError):
    """A setting with a value of the wrong kind (one line: the setting, where the value came
    from, what to give). Permanent: a task on a worker that raises it is not retried."""


@dataclass(frozen=True)
class Setting:
    """One setting: ``name`` under ``panicflow.``, its kind, and its older variable."""

    name: str  # e.g. "lease-ttl", "diagram.time-limit"
    kind: str  # "text", "count", "seconds", "gb", "flag"
    meaning: str
    legacy: str | None = None  # the PANICFLOW_* variable that keeps working
    nullable: bool = False  # null is a value (it means what ``meaning`` says)
    minimum: float = 0.0  # numbers: the least value
    strict: bool = True  # numbers: > minimum (else >=)

    @property
    def key(self) -> str:
        return f"{NAMESPACE}.{self.name}"

    @property
    def dask_variable(self) -> str:
        return "DASK_" + "__".join(p.upper().replace("-", "_") for p in self.key.split("."))

    @property
    def default(self) -> Any:
        value: Any = defaults
        for part in self.key.split("."):
            value = value[part]
        return value


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("store", "text", "where results go when no --store / store= is given: a folder or an fsspec URL",
                legacy="PANICFLOW_STORE"),
        Setting("max-in-flight", "count", "model calls the coordinator keeps in flight per worker thread",
                minimum=1, strict=False),
        Setting("backlog", "count", "model calls submitted beyond max-in-flight per thread (full batches only), so "
                "that Dask sees the work that waits (adaptive scaling); 0: none", minimum=0, strict=False),
        Setting("lease-ttl", "seconds", "an experiment's owner that has not renewed its lease for this long may "
                "be taken over", legacy="PANICFLOW_LEASE_TTL_S"),
        Setting("progress-interval", "seconds", "time between the progress snapshots sent to the scheduler's "
                "/panicflow page and /metrics", strict=False),
        Setting("progress-stale", "seconds", "on the scheduler: a running experiment without a progress snapshot "
                "for this long shows as stale on /panicflow and /metrics"),
        Setting("progress-retention", "seconds", "on the scheduler: an experiment that ended leaves /panicflow and "
                "/metrics this long after its last snapshot"),
        Setting("stop-grace", "seconds", "after SIGTERM, SIGHUP or Ctrl-C, how long the model calls in flight "
                "get to land before the coordinator stops", strict=False),
        Setting("diagram.memory-budget-gb", "gb", "largest estimated memory of one persistence diagram; null: half "
                "the worker's memory limit divided by its threads (persistence.memory_budget_gb wins)",
                nullable=True),
        Setting("diagram.time-limit", "seconds", "a diagram still computing after this long is stopped, "
                "over_time; null: no limit (persistence.time_limit_s wins)", nullable=True),
        Setting("model-memory-gb", "gb", "memory budget of the models resident in one worker; null: 90% of the "
                "GPU's memory when torch sees one, else unlimited", legacy="PANICFLOW_MODEL_MEMORY_GB",
                nullable=True, strict=False),
        Setting("models-dir", "text", "a folder of model weights, <models-dir>/<Hugging Face id>; null: none",
                legacy="PANICFLOW_MODELS_DIR", nullable=True),
        Setting("trust-remote-code", "flag", "allow the models that run Python code from their repositories",
                legacy="PANICFLOW_TRUST_REMOTE_CODE"),
        Setting("device", "text", 'the torch device real models load on ("cuda", "cuda:1", "cpu"); null: '
                "cuda when torch sees a GPU, else cpu", legacy="PANICFLOW_DEVICE", nullable=True),
    )
}

#: The older environment variables, and the setting each one gives.
LEGACY = {s.legacy: s.name for s in SETTINGS.values() if s.legacy}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_MISSING = object()


def setting(name: str) -> Setting:
    """The ``Setting`` called ``name`` (``"lease-ttl"``, or ``"panicflow.lease-ttl"``; ``_`` for ``-`` too)."""
    short = name.removeprefix(f"{NAMESPACE}.").replace("_", "-")
    try:
        return SETTINGS[short]
    except KeyError:
        raise KeyError(f"no panicflow setting {name!r}; the settings are {', '.join(SETTINGS)}") from None


def get(name: str, override_with: Any = None) -> Any:
    """The effective value of setting ``name``, checked (see the module's docstring for the order)."""
    return lookup(name, override_with)[0]


def lookup(name: str, override_with: Any = None) -> tuple[Any, str]:
    """``(value, source)``: the effective value of ``name`` and where it came from, in words
    (``"the argument"``, ``"$PANICFLOW_STORE"``, ``"$DASK_PANICFLOW__LEASE_TTL"``, ``"Dask config
    file /path/x.yaml"``, ``"dask.config"``, ``"panicflow's default"``)."""
    s = setting(name)
    if override_with is not None:
        return _check(s, override_with, "the argument"), "the argument"
    raw, source = _layers(s)[0]
    return _check(s, raw, source), source


def sources(name: str) -> list[tuple[Any, str]]:
    """Every ``(value, source)`` that gives setting ``name`` a non-null value, highest
    precedence first (the older variable, dask.config, the default), each checked: for
    settings that are search paths (``models-dir``) where every given folder counts."""
    s = setting(name)
    return [(_check(s, raw, source), source) for raw, source in _layers(s) if raw is not None]


def effective() -> dict[str, Any]:
    """Every setting's effective value in this process, by its full name (``panicflow.lease-ttl``)."""
    return {s.key: get(s.name) for s in SETTINGS.values()}


# ---------------------------------------------------------------------------- internals
def _layers(s: Setting) -> list[tuple[Any, str]]:
    """``(raw value, source)`` of the layers that say something, highest first; the last one
    is always there (dask.config, or the shipped default when dask.config was cleared)."""
    out: list[tuple[Any, str]] = []
    if s.legacy:
        env = os.environ.get(s.legacy)
        if env is not None and env.strip():
            out.append((env, f"${s.legacy}"))
    value = dask.config.get(s.key, default=_MISSING)
    if value is _MISSING:
        out.append((s.default, "panicflow's default"))
    else:
        out.append((value, _dask_source(s, value)))
    return out


def _dask_source(s: Setting, value: Any) -> str:
    """Where a dask.config value most likely came from: a DASK_ variable, a YAML file, the
    shipped default, or dask.config.set (or a parent process handing its config on)."""
    want = s.key.replace("_", "-")
    for var, text in os.environ.items():
        if var.startswith("DASK_") and var[5:].lower().replace("__", ".").replace("_", "-") == want:
            if dask.config.interpret_value(text) == value:
                return f"${var}"
    if value == s.default:
        return "panicflow's default"
    try:
        for path, cfg in dask.config.collect_yaml(dask.config.paths, return_paths=True):
            if dask.config.get(s.key, default=_MISSING, config=cfg) == value:
                return f"Dask config file {path}"
    except Exception:  # a broken YAML file: Dask itself reports it
        pass
    return "dask.config"


def _bad(s: Setting, value: Any, source: str, want: str) -> SettingError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return SettingError(f"setting {s.key}: {shown} from {source} is not {want} (docs/settings.md)")


def _check(s: Setting, value: Any, source: str) -> Any:
    """``value`` as the setting's kind, or a one-line ``UserError``."""
    if isinstance(value, str) and source.startswith("$PANICFLOW_"):
        value = value.strip()
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and s.kind != "text"):
        if s.nullable:
            return None
        raise _bad(s, value, source, _WANT[s.kind](s))
    if s.kind == "text":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
            raise _bad(s, value, source, _WANT["text"](s))
        return str(value)
    if s.kind == "flag":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise _bad(s, value, source, _WANT["flag"](s))
    number = _number(value, seconds=s.kind == "seconds")
    if number is None or (s.kind == "count" and number != int(number)):
        raise _bad(s, value, source, _WANT[s.kind](s))
    if number < s.minimum or (s.strict and number == s.minimum):
        raise _bad(s, value, source, _WANT[s.kind](s))
    return int(number) if s.kind == "count" else number


def _number(value: Any, seconds: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            if not seconds:
                return None
            try:  # "90s", "5 minutes", "2h": Dask's durations
                number = float(parse_timedelta(value.strip(), default="seconds"))
            except (KeyError, ValueError, TypeError):
                return None
    else:
        return None
    return number if math.isfinite(number) else None


def _bound(s: Setting) -> str:
    return f"{'>' if s.strict else '>='} {s.minimum:g}"


def _null(s: Setting, meaning: str) -> str:
    return f", or null ({meaning})" if s.nullable else ""


_WANT = {
    "text": lambda s: "a non-empty text; give a "
    + ("folder or an fsspec URL" if s.name in ("store", "models-dir") else "name such as cuda or cpu")
    + _null(s, "none" if s.name == "models-dir" else "automatic"),
    "flag": lambda s: "a yes or no; give true or false (1 or 0)",
    "count": lambda s: f"a whole number {_bound(s)}; give e.g. {s.default}",
    "seconds": lambda s: f"a duration {_bound(s)}; give seconds ({s.default if s.default is not None else 60}) "
    "or a Dask duration (90s, 2h)" + _null(s, "no limit"),
    "gb": lambda s: f"a number of GB {_bound(s)}; give e.g. 16" + _null(s, "the default budget"),
}

__all__ = ["LEGACY", "SETTINGS", "Setting", "SettingError", "defaults", "effective", "get", "lookup", "setting", "sources"]
