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


# ------------------------------------------------------------- size limits, cost
def test_more_runs_than_the_limit_are_refused_before_anything_is_built(monkeypatch):
    """2,000,000 runs: one line at once, before pydantic or the checks walk the lists (they would
    take minutes; issue 8 item 3). Shown by making every later stage fail, not by timing."""
    import panicflow.config as config

    def never(*args, **kwargs):
        raise AssertionError("the config was validated item by item before its size was checked")

    monkeypatch.setattr(config.ExperimentConfig, "model_validate", never)
    monkeypatch.setattr(config, "_semantic_problems", never)
    monkeypatch.setattr(config.ExperimentConfig, "runs", never)
    lines = problems(seeds=list(range(2_000_000)))
    assert lines == ["networks: networks x seeds x prompts makes more than 1_000_000 runs "
                     "(1 x 2_000_000 x 1 = 2_000_000); split the experiment"]


def test_duplicate_and_bad_seeds_among_many_are_each_reported_once():
    """Linear in the number of seeds (seeds.count(s) in a loop took minutes at 40,000 seeds)."""
    seeds = list(range(50_000)) + [7, 7, -5]
    lines = problems(seeds=seeds, embedding_models=["DummyText", "DummyText"])
    assert lines.count("seeds: 7 is listed twice (identical runs); use -1 for repeated unseeded runs") == 1
    assert sum(line.startswith("seeds: -5 is negative") for line in lines) == 1
    assert lines.count("embedding_models: 'DummyText' is listed twice") == 1
    assert len(validate_config({**GOOD, "seeds": list(range(50_000)) + [-1, -1]}).seeds) == 50_002


def _stored(tmp_path, raw):
    from panicflow.store import Store
    from panicflow.store.experiment import Experiment

    store = Store(str(tmp_path / "store"), create=True)
    exp = Experiment.create(store.root, "20250101-000000-abcdef", validate_config(raw))
    return store, exp


def test_a_stored_config_is_not_validated_again_unless_it_changed(tmp_path, monkeypatch):
    import panicflow.config as config
    from panicflow.errors import StoreError
    from panicflow.store.experiment import Experiment

    store, exp = _stored(tmp_path, GOOD)
    meta_path = tmp_path / "store" / "experiments" / exp.id / "experiment.json"
    checks = []
    real = config._semantic_problems
    monkeypatch.setattr(config, "_semantic_problems", lambda *a, **k: checks.append(1) or real(*a, **k))
    assert Experiment(store.root, exp.id).config == validate_config(GOOD)
    assert checks == [1]  # the validate_config(GOOD) above, not the stored config
    # edited by hand (the recorded digest no longer matches): validated in full, a clear error
    meta = json.loads(meta_path.read_text())
    meta["config"]["seeds"] = [3, 3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="its stored config is invalid: seeds: 3 is listed twice"):
        Experiment(store.root, exp.id).config
    # an experiment written before digests were recorded: validated in full, as before
    meta["config"]["seeds"] = [3, 4]
    del meta["config_sha256"]
    meta_path.write_text(json.dumps(meta))
    checks.clear()
    assert Experiment(store.root, exp.id).config.seeds == [3, 4]
    assert checks == [1]


def test_a_stored_config_naming_a_model_this_process_lacks_is_an_error(tmp_path, monkeypatch):
    from panicflow.errors import StoreError
    from panicflow.models import REGISTRY
    from panicflow.store.experiment import Experiment

    store, exp = _stored(tmp_path, GOOD)
    monkeypatch.delitem(REGISTRY, "DummyI2T")  # as a test model is without PANICFLOW_TEST_MODELS
    with pytest.raises(StoreError, match=r"its stored config is invalid: networks\[0\]\[1\]: unknown model 'DummyI2T'"):
        Experiment(store.root, exp.id).config


# ------------------------------------------- booleans are not numbers (issue 21 item 5)
@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"seeds": [True]}, "seeds[0]: Input should be a valid integer, got a boolean (true)"),
        ({"seeds": [1, False]}, "seeds[1]: Input should be a valid integer, got a boolean (false)"),
        ({"max_length": True}, "max_length: Input should be a valid integer, got a boolean (true)"),
        ({"batch_size": {"DummyT2I": True}}, "batch_size.DummyT2I: Input should be a valid integer, got a boolean (true)"),
        ({"persistence": {"maxdim": True}}, "persistence.maxdim: Input should be a valid integer, got a boolean (true)"),
        ({"persistence": {"memory_budget_gb": True}}, "persistence.memory_budget_gb: Input should be a valid number, got a boolean (true)"),
        ({"persistence": {"time_limit_s": True}}, "persistence.time_limit_s: Input should be a valid number, got a boolean (true)"),
        ({"retry": {"max_attempts": True}}, "retry.max_attempts: Input should be a valid integer, got a boolean (true)"),
        ({"retry": {"backoff_s": False}}, "retry.backoff_s: Input should be a valid number, got a boolean (false)"),
        ({"batching": {"group_size": True}}, "batching.group_size: Input should be a valid integer, got a boolean (true)"),
    ],
)
def test_a_boolean_where_a_number_is_expected_is_refused(changes, expected):
    """YAML ``true`` was taken as 1 (``seeds: [true]`` ran seed 1, ``max_length: true`` one step)
    while ``1.5`` was refused: a boolean is refused like any other non-number, one line."""
    assert problems(**changes) == [expected]


def test_booleans_are_reported_with_every_other_problem_from_a_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("networks: [[DummyT2I, DummyI2T]]\nseeds: [true, 1, 1.5]\nprompts: [a cat]\n"
                                     "embedding_models: [DummyText]\nmax_length: true\nretry: {max_attempts: yes}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.lines == [
        "seeds[0]: Input should be a valid integer, got a boolean (true)",
        "seeds[2]: Input should be a valid integer, got a number with a fractional part",
        "max_length: Input should be a valid integer, got a boolean (true)",
        "retry.max_attempts: Input should be a valid integer, got a boolean (true)",
    ]
    assert validate_config({**GOOD, "persistence": {"collapse_edges": True}}).persistence.collapse_edges is True  # a real bool


def test_a_stored_config_holding_a_boolean_number_stays_readable(tmp_path):
    """Older versions took ``true`` as 1: an experiment whose stored config somehow holds one (edited,
    or written before this rule) is still read, as 1, with or without its digest."""
    from panicflow.store.experiment import Experiment

    store, exp = _stored(tmp_path, GOOD)
    meta_path = tmp_path / "store" / "experiments" / exp.id / "experiment.json"
    meta = json.loads(meta_path.read_text())
    meta["config"].update(seeds=[True, 2], max_length=True)
    meta["config"]["retry"]["max_attempts"] = True
    meta_path.write_text(json.dumps(meta))
    config = Experiment(store.root, exp.id).config
    assert (config.seeds, config.max_length, config.retry.max_attempts) == ([1, 2], 1, 1)
    assert validate_config({**GOOD, "seeds": [True]}, stored=True).seeds == [1]
