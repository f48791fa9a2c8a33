"""panicflow: generative models chained in a loop, at scale, on Dask.

The Python API; see docs/api.md.
"""

from .api import (
    experiment_status,
    list_experiments,
    load_image,
    load_text,
    open_experiment,
    resume_experiment,
    run_experiment,
)
from .config import ExperimentConfig, load_config
from .handle import ExperimentHandle, submit_experiment, submit_resume
from .legacy import import_legacy

__version__ = "0.1.0"

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
