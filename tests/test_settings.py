"""panicflow's settings (panicflow/settings.py, docs/settings.md): one dask.config namespace,
read from Dask's YAML files and DASK_PANICFLOW__* variables, the older PANICFLOW_* variables
still working, checked values, and the same settings on the workers of a cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import dask
import pytest

from panicflow import settings
from panicflow.config import ExperimentConfig
from panicflow.errors import PermanentError, UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_legacy_variables(monkeypatch):
    """The runner's own PANICFLOW_* settings must not leak into these tests."""
    for var in settings.LEGACY:
        monkeypatch.delenv(var, raising=False)


def child(code: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose only Dask/panicflow settings are ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("DASK_") and k not in settings.LEGACY}
    clean["DASK_CONFIG"] = str(tmp_path / "no-dask-config")  # not the user's ~/.config/dask
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**clean, **(env or {})})


LOOKUP_ALL = """
    import json
    from panicflow import settings
    print(json.dumps({s.name: settings.lookup(s.name) for s in settings.SETTINGS.values()}))
"""


def test_defaults_are_the_shipped_yaml_merged_into_dask_config():
    assert dask.config.get("panicflow.lease-ttl") == 30
    assert dask.config.get("panicflow.diagram.time-limit") == 3600
    want = {"panicflow.store": "./panicflow-store", "panicflow.max-in-flight": 2, "panicflow.lease-ttl": 30.0,
            "panicflow.progress-interval": 1.0, "panicflow.progress-stale": 30.0,
            "panicflow.progress-retention": 3600.0, "panicflow.stop-grace": 5.0,
            "panicflow.diagram.memory-budget-gb": None, "panicflow.diagram.time-limit": 3600.0,
            "panicflow.model-memory-gb": None, "panicflow.models-dir": None,
            "panicflow.trust-remote-code": False, "panicflow.device": None}
    got = settings.effective()
    assert {k: got[k] for k in want} == want
    assert settings.lookup("max-in-flight") == (2, "panicflow's default")

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]

    # no default without a checked setting, nor the reverse
    assert sorted(leaves(settings.defaults)) == sorted(s.key for s in settings.SETTINGS.values()) == sorted(got)
    from panicflow.store import DEFAULT_STORE
    from panicflow.store.lease import LEASE_TTL_S

    assert (DEFAULT_STORE, LEASE_TTL_S) == (want["panicflow.store"], want["panicflow.lease-ttl"])


def test_the_yaml_file_ships_with_the_package():
    assert Path(settings.DEFAULTS_FILE) == ROOT / "panicflow" / "panicflow.yaml"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'panicflow = \[[^]]*"\*\.yaml"', pyproject)


def test_a_yaml_file_in_the_dask_config_folder(tmp_path):
    folder = tmp_path / "dask-config"
    folder.mkdir()
    (folder / "site.yaml").write_text(textwrap.dedent("""
        panicflow:
          lease-ttl: 12
          store: /shared/results
          diagram:
            time-limit: 2h
            memory-budget-gb: 3.5
          trust-remote-code: true
    """))
    proc = child(LOOKUP_ALL, tmp_path, {"DASK_CONFIG": str(folder)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    source = f"Dask config file {folder / 'site.yaml'}"
    assert got["lease-ttl"] == [12.0, source]
    assert got["store"] == ["/shared/results", source]
    assert got["diagram.time-limit"] == [7200.0, source]
    assert got["diagram.memory-budget-gb"] == [3.5, source]
    assert got["trust-remote-code"] == [True, source]
    assert got["max-in-flight"] == [2, "panicflow's default"]  # what the file does not name keeps its default


def test_dask_panicflow_variables(tmp_path):
    folder = tmp_path / "dask-config"
    folder.mkdir()
    (folder / "site.yaml").write_text("panicflow:\n  progress-interval: 4\n  stop-grace: 9\n")
    env = {"DASK_CONFIG": str(folder), "DASK_PANICFLOW__MAX_IN_FLIGHT": "4",
           "DASK_PANICFLOW__DIAGRAM__TIME_LIMIT": "null", "DASK_PANICFLOW__PROGRESS_INTERVAL": "0.5",
           "DASK_PANICFLOW__DEVICE": "cuda:1", "DASK_PANICFLOW__MODEL_MEMORY_GB": "20"}
    proc = child(LOOKUP_ALL, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["max-in-flight"] == [4, "$DASK_PANICFLOW__MAX_IN_FLIGHT"]
    assert got["diagram.time-limit"] == [None, "$DASK_PANICFLOW__DIAGRAM__TIME_LIMIT"]  # null: no limit
    assert got["progress-interval"] == [0.5, "$DASK_PANICFLOW__PROGRESS_INTERVAL"]  # the variable beats the file
    assert got["stop-grace"] == [9.0, f"Dask config file {folder / 'site.yaml'}"]
    assert got["device"] == ["cuda:1", "$DASK_PANICFLOW__DEVICE"]
    assert got["model-memory-gb"] == [20.0, "$DASK_PANICFLOW__MODEL_MEMORY_GB"]
    # and the code that reads them sees them
    proc = child("""
        from panicflow.models import cache
        from panicflow.scheduler import tasks
        print(cache.memory_budget_gb(), tasks._time_limit_s(None), tasks._time_limit_s(60.0))
    """, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["20.0", "None", "60.0"]


def test_the_older_panicflow_variables_keep_working(monkeypatch, tmp_path):
    from panicflow.models import cache
    from panicflow.models.base import ModelSpec, Role
    from panicflow.models.families import _common, build
    from panicflow.store import default_location
    from panicflow.store.lease import ttl_s

    assert settings.LEGACY == {
        "PANICFLOW_STORE": "store", "PANICFLOW_LEASE_TTL_S": "lease-ttl", "PANICFLOW_MODEL_MEMORY_GB": "model-memory-gb",
        "PANICFLOW_MODELS_DIR": "models-dir", "PANICFLOW_TRUST_REMOTE_CODE": "trust-remote-code",
        "PANICFLOW_DEVICE": "device",
    }
    assert default_location() == "./panicflow-store" and ttl_s() == 30 and not _common.remote_code_allowed()
    monkeypatch.setenv("PANICFLOW_STORE", str(tmp_path / "s"))
    monkeypatch.setenv("PANICFLOW_LEASE_TTL_S", "3")
    monkeypatch.setenv("PANICFLOW_MODEL_MEMORY_GB", "5")
    monkeypatch.setenv("PANICFLOW_MODELS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("PANICFLOW_TRUST_REMOTE_CODE", "1")
    monkeypatch.setenv("PANICFLOW_DEVICE", "cpu")
    assert settings.lookup("store") == (str(tmp_path / "s"), "$PANICFLOW_STORE")
    assert default_location() == str(tmp_path / "s")
    assert ttl_s() == 3.0
    cache.set_memory_budget(None)
    assert cache.memory_budget_gb() == 5.0
    _common.configure()
    assert _common.models_dirs() == [tmp_path / "weights"]
    assert _common.remote_code_allowed() is True
    spec = ModelSpec(name="m", role=Role.TEXT_EMBEDDER, factory=build, dim=3, extra={"family": "clip"})
    assert _common.pick_device(spec) == "cpu"  # torch is not asked
    monkeypatch.setenv("PANICFLOW_STORE", "")  # empty: not set, as before
    assert default_location() == "./panicflow-store"


def test_precedence_argument_then_older_variable_then_dask_config_then_default(monkeypatch, tmp_path):
    from panicflow.models.families import _common
    from panicflow.scheduler import tasks
    from panicflow.store import Store

    assert settings.get("store") == "./panicflow-store"
    with dask.config.set({"panicflow.store": str(tmp_path / "from-dask"), "panicflow.models-dir": "/dask-models",
                          "panicflow.trust-remote-code": True, "panicflow.lease-ttl": "2 minutes"}):
        assert settings.lookup("store") == (str(tmp_path / "from-dask"), "dask.config")
        assert settings.get("lease-ttl") == 120.0
        Store(None, create=True)  # made where the setting says
        assert (tmp_path / "from-dask" / "panicflow-store.json").exists()
        monkeypatch.setenv("PANICFLOW_STORE", str(tmp_path / "from-env"))
        monkeypatch.setenv("PANICFLOW_TRUST_REMOTE_CODE", "0")
        monkeypatch.setenv("PANICFLOW_MODELS_DIR", "/env-models")
        assert settings.lookup("store") == (str(tmp_path / "from-env"), "$PANICFLOW_STORE")
        assert _common.remote_code_allowed() is False  # the older variable wins over dask config
        _common.configure()
        assert _common.models_dirs() == [Path("/env-models"), Path("/dask-models")]  # a search path: both, in order
        assert settings.lookup("store", override_with="/explicit") == ("/explicit", "the argument")
    assert settings.get("store") == str(tmp_path / "from-env")
    monkeypatch.delenv("PANICFLOW_STORE")
    assert settings.get("store") == "./panicflow-store"
    # the diagram settings: an experiment config's persistence section wins over them
    assert ExperimentConfig.model_fields["persistence"].default_factory().time_limit_s is None
    with dask.config.set({"panicflow.diagram.time-limit": 5, "panicflow.diagram.memory-budget-gb": 0.5}):
        assert tasks._time_limit_s(None) == 5.0 and tasks._time_limit_s(60.0) == 60.0
        assert tasks._memory_budget_gb(None) == 0.5 and tasks._memory_budget_gb(2.0) == 2.0
    assert tasks._time_limit_s(None) == 3600.0
    assert tasks._memory_budget_gb(None) is None  # off a worker: no limit


@pytest.mark.parametrize("where, name, value, source, want", [
    ("dask", "lease-ttl", "soon", "dask.config", "a duration > 0"),
    ("dask", "max-in-flight", 2.5, "dask.config", "a whole number >= 1"),
    ("dask", "max-in-flight", True, "dask.config", "a whole number >= 1"),
    ("dask", "diagram.time-limit", -1, "dask.config", "or null (no limit)"),
    ("dask", "stop-grace", float("nan"), "dask.config", "a duration >= 0"),
    ("env", "PANICFLOW_LEASE_TTL_S", "thirty", "$PANICFLOW_LEASE_TTL_S", "a duration > 0"),
    ("env", "PANICFLOW_MODEL_MEMORY_GB", "16GB", "$PANICFLOW_MODEL_MEMORY_GB", "a number of GB >= 0"),
    ("env", "PANICFLOW_TRUST_REMOTE_CODE", "maybe", "$PANICFLOW_TRUST_REMOTE_CODE", "give true or false"),
    ("arg", "progress-interval", "x", "the argument", "a duration >= 0"),
])
def test_a_bad_value_is_one_line_naming_the_setting_its_source_and_what_to_give(monkeypatch, where, name, value,
                                                                                source, want):
    if where == "env":
        monkeypatch.setenv(name, value)
        name = settings.LEGACY[name]
    key = settings.setting(name).key
    with dask.config.set({key: value} if where == "dask" else {}), pytest.raises(UserError) as info:
        settings.get(name, override_with=value if where == "arg" else None)
    assert isinstance(info.value, PermanentError)  # a task on a worker is not retried for it
    (line,) = info.value.lines
    assert line.startswith(f"setting {key}: {value!r} from {source} is not ") and want in line, line


def test_a_bad_value_in_a_yaml_file_stops_the_cli_with_one_line(tmp_path):
    folder = tmp_path / "dask-config"
    folder.mkdir()
    (folder / "bad.yaml").write_text("panicflow:\n  store: ''\n")
    proc = child("""
        import sys
        from panicflow.__main__ import run
        sys.argv = ["panicflow", "experiment", "list"]
        run()
    """, tmp_path, {"DASK_CONFIG": str(folder)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"setting panicflow.store: '' from Dask config file {folder / 'bad.yaml'}" in lines[0]


def test_unknown_names_are_a_programming_error():
    with pytest.raises(KeyError, match="no panicflow setting 'lease_tll'"):
        settings.get("lease_tll")
    assert settings.get("panicflow.lease_ttl") == 30.0  # the full name and _ for - are fine


def test_importing_the_module_is_cheap(tmp_path):
    """The CLI imports it before anything heavy: dask.config and yaml only (the package's
    __init__ is stubbed here: this checks the module, whatever the package imports)."""
    proc = child(f"""
        import sys, types
        pkg = types.ModuleType("panicflow"); pkg.__path__ = [{str(ROOT / 'panicflow')!r}]
        sys.modules["panicflow"] = pkg
        import panicflow.settings
        assert panicflow.settings.get("stop-grace") == 5.0
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"distributed", "xarray", "pandas", "torch",
                                                                "numpy", "zarr", "pydantic", "panicflow.api"}}))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_settings_reach_the_tasks_on_the_workers_of_a_local_cluster(monkeypatch, tmp_path):
    """dask.config set in the coordinator's process is handed by each Nanny to its worker
    process, and the older variables are inherited: a task there sees both."""
    from distributed import Client, LocalCluster

    from panicflow.scheduler import tasks
    from panicflow.store import default_location
    from panicflow.store.lease import ttl_s

    monkeypatch.setenv("PANICFLOW_STORE", str(tmp_path / "legacy-store"))
    with dask.config.set({"panicflow.lease-ttl": 7.5, "panicflow.diagram.time-limit": "42s"}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
    with cluster, Client(cluster) as client:
        assert settings.get("lease-ttl") == 30.0  # here the context is over; the worker keeps what it was given
        (seen,) = client.run(lambda: (ttl_s(), default_location(), os.getpid())).values()
        assert seen[:2] == (7.5, str(tmp_path / "legacy-store")) and seen[2] != os.getpid()
        assert client.submit(tasks._time_limit_s, None, pure=False).result() == 42.0
        assert client.submit(tasks._time_limit_s, 9.0, pure=False).result() == 9.0  # the config's value wins


def test_docs_list_every_setting_with_its_variables_and_default():
    doc = (ROOT / "docs" / "settings.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:6]]
            for line in doc.splitlines() if line.startswith("| `panicflow.")}
    assert sorted(rows) == sorted(s.key for s in settings.SETTINGS.values())
    for s in settings.SETTINGS.values():
        dask_var, legacy, default, meaning = rows[s.key]
        assert dask_var == f"`{s.dask_variable}`" and legacy == (f"`{s.legacy}`" if s.legacy else "—"), s.key
        shown = "null" if s.default is None else str(s.default).lower() if isinstance(s.default, bool) else s.default
        assert default.split()[0] == f"`{shown}`" and meaning, s.key
    assert "docs/settings.md" in (ROOT / "README.md").read_text()
