"""panicflow: generative models chained in a loop, at scale, on Dask.

The Python API; see docs/api.md.

The names below are imported on first use (PEP 562), not by ``import panicflow``: the
``panicflow`` command imports this package, and `panicflow --version`, `--help` or
`experiment status` should not load distributed, xarray or pandas (tests/test_cli_startup.py).
``panicflow.run_experiment(...)`` works as before; ``experiment_status`` and
``list_experiments`` load only the store (panicflow/status.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "ExperimentConfig": ".config",
    "load_config": ".config",
    "ExperimentStatus": ".status",
    "experiment_status": ".status",
    "list_experiments": ".status",
    "load_image": ".api",
    "load_text": ".api",
    "open_experiment": ".api",
    "resume_experiment": ".api",
    "run_experiment": ".api",
    "ExperimentHandle": ".handle",
    "submit_experiment": ".handle",
    "submit_resume": ".handle",
    "import_legacy": ".legacy",
}

# submodules that `import panicflow` used to import (and so were attributes of the package):
# `import panicflow; panicflow.api...` keeps working
_SUBMODULES = ("analysis", "api", "config", "display", "errors", "handle", "legacy", "models", "scheduler",
               "settings", "status", "store")

__all__ = [
    "ExperimentConfig",
    "ExperimentHandle",
    "experiment_status",
    "import_legacy",
    "list_experiments",
    "load_config",
    "load_image",
    "load_text",
    "open_experiment",
    "resume_experiment",
    "run_experiment",
    "submit_experiment",
    "submit_resume",
]

if TYPE_CHECKING:  # what type checkers and IDEs see: the names as if imported here
    from . import analysis, api, config, display, errors, handle, legacy, models, scheduler, settings, status, store
    from .api import load_image, load_text, open_experiment, resume_experiment, run_experiment
    from .config import ExperimentConfig, load_config
    from .handle import ExperimentHandle, submit_experiment, submit_resume
    from .legacy import import_legacy
    from .status import ExperimentStatus, experiment_status, list_experiments


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
