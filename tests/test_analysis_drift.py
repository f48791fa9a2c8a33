"""Semantic drift against a direct numpy computation on the stored vectors."""

import numpy as np
import pytest

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import drift
from panicflow.analysis.results import list_results
from panicflow.models.cache import get_model
from panicflow.store import Store


def _expected(vectors, ref):
    cos = vectors @ ref / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(ref))
    chord = np.linalg.norm(vectors / np.linalg.norm(vectors, axis=1, keepdims=True) - ref / np.linalg.norm(ref), axis=1)
    return 1 - cos, chord


@pytest.mark.parametrize("model", ["DummyText", "DummyVision"])
def test_drift_matches_numpy(analysis_experiment, client, model):
    store, eid = analysis_experiment
    path = drift.semantic_drift(eid, model, store=store, client=client)
    assert path == f"analysis/drift/{model}"
    tree = panicflow.open_experiment(eid, store=store)  # the result sits in the tree without breaking it
    ds = tree[path].ds
    vec = tree[f"embeddings/{model}"].ds.vector.values.astype(np.float64)
    prompts = tree["/"].ds.prompt.values
    for run in range(vec.shape[0]):
        has = ~np.isnan(vec[run]).any(axis=1)
        assert has.sum() > 0
        if model == "DummyText":  # the prompt itself, embedded by the same model
            ref = np.asarray(get_model(model).embed([str(prompts[run])]), dtype=np.float64)[0]
        else:
            ref = vec[run][np.flatnonzero(has)[0]]
        cos, chord = _expected(vec[run][has], ref)
        np.testing.assert_allclose(ds.cosine_distance.values[run][has], cos, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds.unit_euclidean_distance.values[run][has], chord, rtol=1e-5, atol=1e-6)
        assert np.isnan(ds.cosine_distance.values[run][~has]).all()
        # they are two different measures: the chord is sqrt(2 (1 - cos))
        np.testing.assert_allclose(chord, np.sqrt(np.maximum(2 * cos, 0)), atol=1e-6)
    if model == "DummyVision":
        assert np.nanmax(np.abs(ds.cosine_distance.values[:, 0])) < 1e-6  # first image is the reference
    attrs = list_results(Store(store).experiment(eid), "drift")[model]
    assert attrs["reference"] == ("prompt" if model == "DummyText" else "first_image")
    assert attrs["inputs"] == [Store(store).experiment(eid).id] and "numpy" in attrs["versions"]


def test_drift_unknown_model(analysis_experiment, client):
    store, eid = analysis_experiment
    with pytest.raises(panicflow.errors.UserError, match="no embedding model 'Nope'"):
        drift.semantic_drift(eid, "Nope", store=store, client=client)
