"""Bad input, property-based: configs and command lines that are wrong in every way we can generate.

Every invalid config gives `ConfigError` (exit 2 from the CLI) with one line per
problem, each naming a field, never a traceback, and nothing written. Configs are
made by mutating a valid one; `validate_config` and `load_config` are tested in
process with many examples, the CLI in subprocesses with a few dozen (run in
parallel: each subprocess costs about a second of imports).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from panicflow.config import MAX_LENGTH, MAX_SEED, ExperimentConfig, load_config, validate_config
from panicflow.errors import ConfigError
from panicflow.models import REGISTRY

VALID = {
    "name": "fuzz",
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [1, -1],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText"],
    "max_length": 5,
    "batch_size": {"DummyT2I": 2},
    "persistence": {"maxdim": 1, "collapse_edges": None, "memory_budget_gb": 1.0, "fallback": "skip"},
    "retry": {"max_attempts": 2, "backoff_s": 0.1},
}
FIELDS = set(ExperimentConfig.model_fields)
SCALE = int(os.environ.get("PANICFLOW_FUZZ_SCALE", "1"))  # e.g. 20 for a long fuzzing session


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``node``: the root, each key, each list item."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


PATHS = _paths(VALID)

# ------------------------------------------------------------------ strategies
any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates, controls, markup...
tricky_text = st.sampled_from(
    ["", " ", "\n", "a\nb", "\r", "\x00", "\u2028", "\x85", "\ud800", "[/x]", "[red]", "é", "😀", "a: b", "..", "../x",
     "os.system", "__import__", "panicflow.models.dummy.DummyT2I", "DummyT2I ", "dummyt2i", "{x}", "%s", "\x1b[31m"]
)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, -2, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, -(10**30), MAX_LENGTH + 1, MAX_SEED + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text, tricky_text)
garbage = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(any_text, tricky_text), inner, max_size=3),
    max_leaves=8,
)
model_names = st.one_of(st.sampled_from(sorted(REGISTRY)), tricky_text, any_text)


def _set(raw: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return raw


def _delete(raw: Any, path: tuple) -> Any:
    if not path:
        return raw
    node = raw
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return raw


@st.composite
def mutated_configs(draw) -> Any:
    """A copy of VALID with one to three mutations; usually invalid, sometimes still valid."""
    raw: Any = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(raw)
        op = draw(st.sampled_from(["garbage", "garbage", "delete", "unknown_key", "number", "model", "text"]))
        path = draw(st.sampled_from(paths))
        try:
            if op == "garbage":
                raw = _set(raw, path, draw(garbage))
            elif op == "delete":
                raw = _delete(raw, path)
            elif op == "unknown_key":
                dicts = [p for p in paths if isinstance(_at(raw, p), dict)]
                if dicts:
                    where = _at(raw, draw(st.sampled_from(dicts)))
                    where[draw(st.one_of(any_text, tricky_text, st.integers(), st.none()))] = draw(garbage)
            elif op == "number":
                raw = _set(raw, path, draw(numbers))
            elif op == "model":
                raw = _set(raw, path, draw(model_names))
            else:
                raw = _set(raw, path, draw(st.one_of(any_text, tricky_text)))
        except (KeyError, IndexError, TypeError):
            pass  # the path went away with an earlier mutation
    return raw


def _at(raw: Any, path: tuple) -> Any:
    for p in path:
        raw = raw[p]
    return raw


# -------------------------------------------------------------------- checks
def _line_names_a_field(line: str, raw: Any) -> bool:
    """The part before ': ' is a config field, ``config``, or (quoted if need be) an unknown key of the root."""
    if ": " not in line:
        return False
    head = re.match(r"[A-Za-z_][A-Za-z0-9_-]*", line)
    if head and (head.group() in FIELDS or head.group() == "config"):
        return True
    if isinstance(raw, dict):  # an unknown top-level key, named as it was written
        for key in raw:
            if key in FIELDS:
                continue
            try:
                shown = {str(key), repr(key), repr(str(key))}
            except ValueError:  # an int too long to print
                shown = {"<int too large to print>"}
            if any(line.startswith(s[:57]) or line.startswith(f"<{s}") for s in shown):
                return True
    return False


def _check_problems(lines: list[str], raw: Any) -> None:
    assert lines, "a ConfigError with no lines"
    for line in lines:
        assert line.splitlines() == [line], f"not one line: {line!r}"
        assert _line_names_a_field(line, raw), f"names no field: {line!r}"
        assert "Traceback" not in line


def _check_valid(cfg: ExperimentConfig) -> None:
    """What the store relies on for a config that passed."""
    assert all(m in REGISTRY for net in cfg.networks for m in net)
    assert all(m in REGISTRY for m in cfg.embedding_models)
    assert 1 <= cfg.max_length <= MAX_LENGTH
    assert all(-1 <= s <= MAX_SEED for s in cfg.seeds)
    for text in [*cfg.prompts, cfg.name or ""]:
        text.encode("utf-8")
        assert "\x00" not in text
    assert validate_config(json.loads(cfg.to_json())) == cfg  # what experiment.json stores reads back the same


def _outcome(raw: Any) -> list[str] | None:
    """The problems of ``raw``, or None when it is valid (after checking the config)."""
    try:
        cfg = validate_config(raw)
    except ConfigError as exc:
        _check_problems(exc.lines, raw)
        return exc.lines
    _check_valid(cfg)
    return None


# ------------------------------------------------------ validate_config, fast
@settings(max_examples=600 * SCALE, deadline=None)
@given(mutated_configs())
def test_validate_config_never_crashes_and_names_the_field(raw):
    _outcome(raw)


@settings(max_examples=200 * SCALE, deadline=None)
@given(garbage)
def test_any_garbage_is_rejected_cleanly(raw):
    assert _outcome(raw) is not None


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({**VALID, "max_length": "0"}, "max_length: must be at least 1"),  # converted by pydantic, then checked
        ({**VALID, "seeds": [-5.0]}, "seeds: -5 is negative"),
        ({**VALID, "seeds": [2**63]}, "seeds: 9223372036854775808 is too large"),
        ({**VALID, "max_length": 10**15}, "max_length: must be at most 1_000_000"),
        ({**VALID, "max_length": -(10**5000)}, "max_length: must be at least 1 (got <int too large to print>)"),
        ({**VALID, "prompts": ["\ud800"]}, "prompts[0]: is not valid Unicode"),
        ({**VALID, "prompts": ["a\x00b"]}, "prompts[0]: must not contain NUL"),
        ({**VALID, "name": "\udfff"}, "name: is not valid Unicode"),
        ({**VALID, "persistence": {"memory_budget_gb": float("inf")}}, "persistence.memory_budget_gb: Input should be a finite number"),
        ({**VALID, "retry": {"backoff_s": float("inf")}}, "retry.backoff_s: Input should be a finite number"),
        ({**VALID, "persistence": {"foo": 1}}, "persistence.foo: unknown key (allowed: maxdim, collapse_edges"),
        ({**VALID, "a\nb": 1}, "'a\\nb': unknown key"),
        ({**VALID, 7: 1}, "7: Keys should be strings"),
        ({**VALID, "batch_size": {"x\ny": 1}}, "batch_size.'x\\ny': unknown model"),
        ({**VALID, "seeds": list(range(1001)), "prompts": [f"p{i}" for i in range(1000)], "networks": [["DummyT2I", "DummyI2T"]] * 2},
         "networks: networks x seeds x prompts makes more than 1_000_000 runs"),
    ],
)
def test_edge_cases_found_by_fuzzing(raw, expected):
    lines = _outcome(raw)
    assert lines is not None and any(line.startswith(expected) for line in lines), lines


def test_the_valid_config_is_valid():
    assert _outcome(VALID) is None


# --------------------------------------------------------- config files, fast
def _file_texts(raw: Any) -> st.SearchStrategy:
    options = [st.just(json.dumps(raw))]
    try:
        options.append(st.just(yaml.safe_dump(raw, allow_unicode=True)))
    except yaml.YAMLError:
        pass
    return st.one_of(*options)


@st.composite
def config_files(draw) -> tuple[str, bytes]:
    """(suffix, content): dumped mutations, truncated or corrupted dumps, empty files, random bytes."""
    suffix = draw(st.sampled_from([".json", ".yaml", ".yml", ".JSON", ".txt"]))
    kind = draw(st.sampled_from(["dump", "dump", "truncated", "bytes", "empty", "deep", "not_utf8", "huge_int"]))
    if kind == "empty":
        return suffix, draw(st.sampled_from([b"", b"\n", b"   \n", b"---\n", b"null\n", b"~\n", b'""']))
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=60))
    if kind == "not_utf8":
        return suffix, b"networks: [\xff\xfe]\n"
    if kind == "deep":
        depth = draw(st.sampled_from([5, 50, 300]))  # deeper ones: test_deeply_nested_files (slow to parse)
        return suffix, ("[" * depth + "]" * depth).encode()
    if kind == "huge_int":
        return suffix, f"max_length: {'9' * 5000}\n".encode()
    text = draw(_file_texts(draw(mutated_configs())))
    if kind == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return suffix, text.encode("utf-8", "surrogatepass")


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_files())
def test_load_config_files_never_crash(file):
    suffix, content = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"c{suffix}"
        path.write_bytes(content)
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            _check_problems(exc.lines, _parsed_or_none(path))
        else:
            _check_valid(cfg)


def _parsed_or_none(path: Path) -> Any:
    """The raw document (for naming unknown keys), or None when it does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except Exception:
        return None


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deeply_nested_files(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


def test_config_path_that_is_a_folder_or_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text("max_length: 3\n")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(locked)


# ----------------------------------------------------- through the CLI, slow
# Each subprocess costs ~1.5 s of CPU (imports).
POOL = max(1, min(8, os.cpu_count() or 1))

def _cli(args: list[str], cwd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "panicflow", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def _write_invalid(tmp: Path, i: int, file: tuple[str, bytes]) -> Path | None:
    suffix, content = file
    path = tmp / f"c{i}{suffix}"
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError:
        return path
    return None  # valid: not this test's business


# Hypothesis tries the simplest batch first (distinct minimal files), then a random one.
@settings(max_examples=2 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(config_files(), min_size=10, max_size=10, unique_by=lambda f: f[1]))
def test_cli_rejects_invalid_configs_with_exit_2_and_writes_nothing(files):
    """Batches of 10 config files through `experiment run`, each batch's subprocesses in parallel."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = [p for i, f in enumerate(files) if (p := _write_invalid(tmp, i, f)) is not None]
        assume(paths)
        store = tmp / "store"

        def one(path):
            return path, _cli(["experiment", "run", str(path), "--store", str(store), "--workers", "1"], cwd=tmp_name)

        with ThreadPoolExecutor(POOL) as pool:
            results = list(pool.map(one, paths))
        for path, proc in results:
            assert proc.returncode == 2, (path.read_bytes()[:200], proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr, proc.stderr
            assert proc.stdout == ""
            lines = proc.stderr.splitlines()
            assert lines and all(line.startswith("error: ") for line in lines), proc.stderr
            raw = _parsed_or_none(path)
            for line in lines:
                assert _line_names_a_field(line[len("error: "):], raw), line
        assert not store.exists()


# ------------------------------------------------------ command-line fuzzing
COMMANDS = [["experiment", "run"], ["experiment", "resume"], ["experiment", "status"], ["experiment", "list"], ["models"]]
OPTIONS = ["--store", "--json", "--workers", "--scheduler", "--retry-failed", "--host", "--dashboard-address",
           "--tls-ca-file", "--tls-cert", "--tls-key", "--help", "-h", "--", "-", "--store=", "--workers=x"]
arg_text = st.one_of(
    st.sampled_from(OPTIONS),
    st.sampled_from(["0", "-1", "1e9", "99999999999999999999999", "", " ", "x", "..", ".", "/", "[/x]", "tls://x:1",
                     "xyz://a", "memory://", "nope", "-3", "--", "é", "😀"]),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8).map(lambda s: "--" + s),
)
command_lines = st.tuples(st.sampled_from(COMMANDS), st.lists(arg_text, max_size=5)).map(lambda t: [*t[0], *t[1]])


@settings(max_examples=2 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command_lines, min_size=8, max_size=8, unique_by=tuple))
def test_cli_argument_fuzzing_never_crashes_or_writes(argvs):
    """Random options and values for every command: a usage error (2), never a traceback, nothing written.

    Runs in an empty folder with $PANICFLOW_STORE pointing at a missing store, so no
    command can find anything to act on; only `models` and `--help` may succeed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PANICFLOW_STORE": str(Path(tmp) / "missing-store")}
        with ThreadPoolExecutor(POOL) as pool:
            results = list(pool.map(lambda argv: (argv, _cli(argv, cwd=tmp, env=env)), argvs))
        for argv, proc in results:
            assert "Traceback" not in proc.stderr, (argv, proc.stderr)
            may_succeed = argv[0] == "models" or any(a in ("--help", "-h") for a in argv)
            assert proc.returncode in ((0, 2) if may_succeed else (2,)), (argv, proc.returncode, proc.stderr)
            if proc.returncode == 2:
                assert proc.stderr.strip(), argv
        assert os.listdir(tmp) == [], os.listdir(tmp)


BAD_CLUSTER_OPTIONS = [
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--workers", "abc"], "Invalid value for '--workers'"),
        (["--scheduler", "xyz://127.0.0.1:1"], "--scheduler: cannot use 'xyz://127.0.0.1:1'"),
        (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler: cannot connect to tcp://127.0.0.1:1"),
        (["--tls-cert", "c.yaml"], "--tls-ca-file: TLS needs both"),
        (["--tls-ca-file", "missing.pem", "--tls-cert", "c.yaml"], "'--tls-ca-file': file 'missing.pem' does not exist"),
        (["--tls-ca-file", "c.yaml", "--tls-cert", "c.yaml", "--scheduler", "tls://127.0.0.1:1"], "cannot load the TLS certificates"),
]


def test_bad_cluster_options_exit_2_and_write_nothing(tmp_path):
    """A valid config with a bad cluster option: nothing is written, not even a new store (in parallel)."""
    (tmp_path / "c.yaml").write_text(
        "networks: [[DummyT2I, DummyI2T]]\nseeds: [1]\nprompts: [hi]\nembedding_models: [DummyText]\nmax_length: 2\n")

    def one(case):
        args, _ = case
        return _cli(["experiment", "run", "c.yaml", "--store", f"s{BAD_CLUSTER_OPTIONS.index(case)}", *args], cwd=str(tmp_path))

    with ThreadPoolExecutor(len(BAD_CLUSTER_OPTIONS)) as pool:
        procs = list(pool.map(one, BAD_CLUSTER_OPTIONS))
    for (args, message), proc in zip(BAD_CLUSTER_OPTIONS, procs):
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]
