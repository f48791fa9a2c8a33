"""Semantic drift: how far each step's embedding is from the start of its run.

The start (the reference) is, for a text embedder, the embedding of the run's prompt
itself (computed by the same model on a worker); for an image embedder, the run's first
embedded image. For every step with an embedding, two measures are stored, each named for
what it is (the earlier tool called the second one "cosine drift"):

* ``cosine_distance`` = 1 - cos(v, r), in [0, 2];
* ``unit_euclidean_distance`` = ||v/|v| - r/|r|||, the chord between the unit vectors,
  = sqrt(2 (1 - cos)), in [0, 2].

Steps without an embedding of that model are NaN. Result: ``analysis/drift/<model>`` in the
experiment's store, arrays on (run, step); one task per run on the cluster, so no process
holds more than one run's vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from distributed import Client

from ..models import REGISTRY, Kind
from .results import check_model, embedded_runs, experiment, read_vectors, unit, versions, write_result

KIND = "drift"


def embed_prompt(model: str, prompt: str) -> np.ndarray:
    """Run on a worker: the embedding of ``prompt`` by the text embedder ``model``."""
    from ..models.cache import get_model

    out = np.asarray(get_model(model).embed([prompt]), dtype=np.float64)
    return out[0]


def drift_of_run(location: str, experiment_id: str, model: str, run: int, reference: np.ndarray | None):
    """Run on a worker: (steps, cosine distance, unit euclidean distance) of one run.

    ``reference`` None means the run's first embedded vector (image embedders).
    """
    steps, v = read_vectors(location, experiment_id, model, run)
    if len(steps) == 0:
        return steps, np.zeros(0), np.zeros(0)
    ref = v[0] if reference is None else np.asarray(reference, dtype=np.float64)
    u, r = unit(v), unit(ref[None, :])[0]
    cos = u @ r
    return steps, 1.0 - cos, np.linalg.norm(u - r, axis=1)


def semantic_drift(experiment_id: str, model: str, store: str | None = None, client: Client | None = None) -> str:
    """Compute and store the semantic drift of every embedded run; returns the result's path.

    ``client`` is a ``distributed.Client`` (one task per run); without one the runs are
    computed here, one at a time.
    """
    from .results import open_store

    st = open_store(str(store) if store is not None else _default())
    exp = st.experiment(experiment_id)
    check_model(exp, model)
    g = exp.group(read_only=True)
    n_runs, n_steps = g["output_hash"].shape
    prompts = g["prompt"][:]
    runs = embedded_runs(exp, model)
    text = REGISTRY[model].input_kind is Kind.TEXT
    refs: dict[str, Any] = {}
    if text:
        for p in sorted({str(prompts[r]) for r in runs}):
            refs[p] = client.submit(embed_prompt, model, p, pure=False) if client else embed_prompt(model, p)
    args = [(st.location, exp.id, model, int(r), refs.get(str(prompts[r])) if text else None) for r in runs]
    if client is not None:
        futures = [client.submit(drift_of_run, *a, key=f"drift-{model}-{exp.id}-{a[3]}") for a in args]
        parts = client.gather(futures)
    else:
        parts = [drift_of_run(*a) for a in args]
    cos = np.full((n_runs, n_steps), np.nan, np.float32)
    euc = np.full((n_runs, n_steps), np.nan, np.float32)
    for r, (steps, c, e) in zip(runs, parts):
        cos[r, steps] = c
        euc[r, steps] = e
    ref_desc = "embedding of the run's prompt" if text else "the run's first embedded image"
    return write_result(
        exp, KIND, model,
        {
            "cosine_distance": (["run", "step"], cos, {"description": f"1 - cos between the step's embedding and the {ref_desc}"}),
            "unit_euclidean_distance": (["run", "step"], euc, {
                "description": f"euclidean distance between the unit-normalised step embedding and the {ref_desc} (chord, sqrt(2(1-cos)))"}),
        },
        {"kind": KIND, "model": model, "reference": "prompt" if text else "first_image",
         "inputs": [exp.id], "runs": [int(r) for r in runs], "versions": versions("numpy")},
    )


def _default() -> str:
    from ..store import default_location

    return default_location()
