"""Config validation: every rule, every problem reported at once, one line each."""

from __future__ import annotations

import json

import pytest

from panicflow.config import load_config, validate_config
from panicflow.errors import ConfigError

GOOD = {
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [1, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 10,
}


def problems(**changes) -> list[str]:
    raw = {**GOOD, **changes}
    raw = {k: v for k, v in raw.items() if v is not ...}
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    return info.value.lines


def test_good_config_gives_the_cartesian_product_of_runs():
    cfg = validate_config({**GOOD, "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]], "prompts": ["a", "b"]})
    runs = cfg.runs()
    assert len(runs) == 2 * 2 * 2
    assert [(r.network[0], r.seed, r.prompt) for r in runs[:4]] == [
        ("DummyT2I", 1, "a"), ("DummyT2I", 1, "b"), ("DummyT2I", -1, "a"), ("DummyT2I", -1, "b")]
    assert [r.index for r in runs] == list(range(8))


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"networks": [["DummyT2I", "Nope"]]}, "networks[0][1]: unknown model 'Nope'"),
        ({"networks": [["DummyI2T", "DummyT2I"]]}, "networks[0]: must start with a model that takes text"),
        ({"networks": [["DummyT2I", "DummyT2I2"]]}, "networks[0][1]: 'DummyT2I2' takes text but 'DummyT2I' before it outputs image"),
        ({"networks": [["DummyT2I"]]}, "networks[0][0]: 'DummyT2I' takes text but 'DummyT2I' before it around the cycle outputs image"),
        ({"networks": [["DummyT2I", "DummyText"]]}, "networks[0][1]: 'DummyText' is an embedding model"),
        ({"networks": []}, "networks: must not be empty"),
        ({"networks": [[]]}, "networks[0]: a network needs at least one model"),
        ({"seeds": []}, "seeds: must not be empty"),
        ({"prompts": []}, "prompts: must not be empty"),
        ({"prompts": ["  "]}, "prompts[0]: must not be blank"),
        ({"embedding_models": []}, "embedding_models: must not be empty"),
        ({"embedding_models": ["Nope"]}, "embedding_models[0]: unknown model 'Nope'"),
        ({"embedding_models": ["DummyI2T"]}, "embedding_models[0]: 'DummyI2T' is a image-to-text model, not an embedder"),
        ({"max_length": 0}, "max_length: must be at least 1 (got 0)"),
        ({"max_length": "ten"}, "max_length: Input should be a valid integer"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"seeds": [3, 3]}, "seeds: 3 is listed twice"),
        ({"seeds": [-2]}, "seeds: -2 is negative"),
        ({"max_length": ...}, "max_length: Field required"),
        ({"batch_size": {"Nope": 3}}, "batch_size.Nope: unknown model 'Nope'"),
        ({"persistence": {"maxdim": 9}}, "persistence.maxdim: Input should be less than or equal to 3"),
    ],
)
def test_each_rule_names_the_field(changes, expected):
    lines = problems(**changes)
    assert any(line.startswith(expected) for line in lines), lines


def test_embedding_model_that_can_embed_none_of_a_networks_outputs():
    # every valid dummy network outputs both kinds, so use a network that outputs images only
    # (it also breaks the cycle rule; both are reported)
    lines = problems(networks=[["DummyT2I", "DummyI2T"], ["DummyT2I"]], embedding_models=["DummyVision", "DummyText"])
    assert "embedding_models[1]: 'DummyText' embeds text, but networks[1] outputs no text" in lines
    assert not any(line.startswith("embedding_models[0]") for line in lines)


def test_every_problem_reported_at_once_one_line_each():
    lines = problems(
        networks=[["DummyI2T", "Nope"]], seeds=[], prompts=[], embedding_models=["Nope2"], max_length=-1, extra=1
    )
    assert len(lines) >= 6
    assert all("\n" not in line for line in lines)
    text = "\n".join(lines)
    for fragment in ("extra: unknown key", "seeds: must not be empty", "prompts: must not be empty",
                     "max_length: must be at least 1", "networks[0][1]: unknown model 'Nope'",
                     "embedding_models[0]: unknown model 'Nope2'"):
        assert fragment in text


def test_load_config_from_yaml_and_json(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(GOOD))
    (tmp_path / "c.yaml").write_text("networks: [[DummyT2I, DummyI2T]]\nseeds: [1, -1]\nprompts: [a cat]\n"
                                     "embedding_models: [DummyText]\nmax_length: 10\n")
    assert load_config(tmp_path / "c.json") == load_config(tmp_path / "c.yaml")


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
