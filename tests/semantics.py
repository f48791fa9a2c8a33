"""The config of the shared semantics experiment (tests/conftest.py runs it once per session).

A module of its own: tests/models has a conftest too, so `from conftest import` is ambiguous.
"""

# Seeds 22 and 57 make seeded dummy runs of "a cat" fall into loops within 90 steps
# (found with tests/oracle.py); ConstantT2I loops at once; seed -1 never stops early.
SEMANTICS_CONFIG = {
    "name": "semantics",
    "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"], ["ConstantT2I", "DummyI2T"]],
    "seeds": [57, 22, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyText2", "DummyVision", "DummyVision2"],
    "max_length": 90,
    "batch_size": {"DummyT2I": 2},
}
