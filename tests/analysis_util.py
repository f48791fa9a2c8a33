"""A small finished experiment shared by the tests/test_analysis_*.py modules."""

ANALYSIS_CONFIG = {
    "name": "analysis",
    "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]],
    "seeds": [1, 2, -1, -1],
    "prompts": ["a cat", "a red circle"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 40,
}

import pytest  # noqa: E402


_MADE: dict[str, tuple[str, str]] = {}


@pytest.fixture(scope="session")
def analysis_experiment(client, tmp_path_factory):
    """(store path, experiment id) of a finished 16-run experiment with a text and an image embedder.

    Made once per session even though each module imports this fixture (so pytest sees one per module).
    """
    import panicflow

    if "exp" not in _MADE:
        store = str(tmp_path_factory.mktemp("analysis") / "store")
        _MADE["exp"] = (store, panicflow.run_experiment(ANALYSIS_CONFIG, store=store, client=client))
    return _MADE["exp"]
