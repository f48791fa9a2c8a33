"""What the command line imports before it does anything (issue 21 item 1).

`panicflow --version` used to take 2 s, and `experiment status` as long, because the CLI imported
the API, distributed, xarray, pandas and giotto-ph before reading its arguments. The CLI modules
now import heavy packages inside the commands that use them; these tests hold that line by
looking at what a fresh process imported (``python -X importtime`` lists every module it
loads). The times themselves are measured by scripts/benchmark_startup.py (docs/performance.md,
"Command start"), not here: a timed test would fail on a loaded machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# never loaded by `import panicflow.cli`, `panicflow --version` or any `--help`: typer and rich only
# (and pydantic, which typer itself imports to convert the arguments of a command)
NOT_FOR_HELP = ("distributed", "dask", "xarray", "pandas", "gph", "torch", "transformers", "diffusers", "matplotlib",
                "sklearn", "hdbscan", "scipy", "zarr", "numpy", "PIL", "yaml", "fsspec")
# never loaded by `experiment status` and `list`: they read the store (zarr, the config, the
# settings through dask.config), nothing that computes
NOT_FOR_STATUS = ("distributed", "xarray", "pandas", "gph", "torch", "transformers", "diffusers", "matplotlib",
                  "sklearn", "hdbscan", "scipy", "numba", "gudhi", "bokeh", "tornado")


def _imports(*args: str, code: str | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -m panicflow ARGS`` (or ``python -c CODE``) with -X importtime: the process,
    and the top-level packages it imported."""
    command = ["-c", code] if code is not None else ["-m", "panicflow", *args]
    proc = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    loaded = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2 and "[us]" not in line:  # not the header
            loaded.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return proc, loaded


def _heavy(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(set(forbidden) & loaded)


def test_importing_the_cli_loads_nothing_heavy():
    proc, loaded = _imports(code="import panicflow.cli")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "typer" in loaded and "panicflow" in loaded  # the log is read as it should be
    assert _heavy(loaded, NOT_FOR_HELP) == []


def test_importing_panicflow_loads_nothing_heavy_and_the_api_on_first_use():
    code = """
import sys, panicflow
assert "xarray" not in sys.modules and "distributed" not in sys.modules
assert set(panicflow.__all__) <= set(dir(panicflow)), "dir() lists the API"
assert panicflow.__version__
status = panicflow.experiment_status  # the store, no cluster
assert status.__name__ == "experiment_status" and status is panicflow.status.experiment_status
assert "xarray" not in sys.modules and "distributed" not in sys.modules, "experiment_status pulled in the API"
for name in panicflow.__all__:
    assert callable(getattr(panicflow, name)), name
assert panicflow.run_experiment is panicflow.api.run_experiment
assert panicflow.experiment_status is panicflow.api.experiment_status  # re-exported by the API
assert panicflow.import_legacy.__module__ == "panicflow.legacy.importer"
try:
    panicflow.no_such_thing
except AttributeError as exc:
    assert "no_such_thing" in str(exc)
else:
    raise AssertionError("no AttributeError")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    proc, loaded = _imports(code="import panicflow")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _heavy(loaded, NOT_FOR_HELP) == []


@pytest.mark.parametrize("args", [
    ("--version",), ("--help",), ("experiment", "run", "--help"), ("experiment", "status", "--help"),
    ("analyse", "cluster", "--help"), ("export", "video", "--help"), ("import", "legacy", "--help"), ("plot", "--help"),
], ids=lambda a: " ".join(a))
def test_version_and_help_load_nothing_heavy(args):
    proc, loaded = _imports(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    assert _heavy(loaded, NOT_FOR_HELP) == []


@pytest.fixture(scope="module")
def store_with_experiment(tmp_path_factory):
    """A store holding one experiment, created (not run: its status is read as any other's)."""
    from panicflow.config import validate_config
    from panicflow.store import Store
    from panicflow.store.experiment import Experiment

    st = Store(str(tmp_path_factory.mktemp("startup") / "store"), create=True)
    cfg = validate_config({"name": "startup", "networks": [["DummyT2I", "DummyI2T"]], "seeds": [1, 2], "prompts": ["a"],
                           "embedding_models": ["DummyText", "DummyVision"], "max_length": 5})
    exp = Experiment.create(st.root, st.new_experiment_id(), cfg)
    return st.location, exp.id


@pytest.mark.parametrize("args", [
    ("experiment", "status", "{id}", "--json"), ("experiment", "status", "--json"), ("experiment", "list", "--json"),
    ("experiment", "status", "{id}"), ("experiment", "list"),
], ids=lambda a: " ".join(a))
def test_status_and_list_read_the_store_without_the_cluster_stack(store_with_experiment, args):
    store, eid = store_with_experiment
    proc, loaded = _imports(*(a.format(id=eid) for a in args), "--store", store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "zarr" in loaded  # it did read the store
    assert _heavy(loaded, NOT_FOR_STATUS) == []
    if "--json" in args:
        out = json.loads(proc.stdout)
        ids = [e["id"] for e in out] if isinstance(out, list) else [out["id"]]
        assert ids == [eid]
        if isinstance(out, dict):
            assert out["runs"] == 2 and out["persistence_diagrams"] == {"DummyText": 0, "DummyVision": 0}
    else:
        assert eid in proc.stdout + proc.stderr  # the status table goes to stderr, the list to stdout


def test_models_does_not_load_torch():
    proc, loaded = _imports("models", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(m["name"] == "DummyT2I" for m in json.loads(proc.stdout))
    assert _heavy(loaded, ("torch", "transformers", "diffusers", "xarray", "pandas", "gph", "sklearn", "matplotlib")) == []


def test_a_bad_config_is_refused_before_the_cluster_stack_loads(tmp_path):
    """The commonest mistake, a config that does not validate, costs its one line and no more: not
    distributed, the API or xarray first (a second of imports for every mistake, and for every bad
    case a test sends through the CLI)."""
    bad = tmp_path / "c.yaml"
    bad.write_text("networks: [[DummyT2I, NoSuchModel]]\nseeds: [1]\nprompts: [a]\nembedding_models: [DummyText]\n")
    proc, loaded = _imports("experiment", "run", str(bad), "--store", str(tmp_path / "s"))
    assert proc.returncode == 2 and "NoSuchModel" in proc.stderr, proc.stderr[-2000:]
    assert _heavy(loaded, ("distributed", "xarray", "pandas", "bokeh", "gph", "torch", "sklearn")) == []
    assert not (tmp_path / "s").exists()


def test_running_an_experiment_does_not_load_xarray():
    """The coordinator writes Zarr directly; xarray is for reading results (open_experiment): half a
    second of import at every run and resume, in the coordinator's process."""
    proc, loaded = _imports(code="import panicflow.api, panicflow.scheduler.coordinator")
    assert proc.returncode == 0 and "distributed" in loaded, proc.stderr[-2000:]  # the log is read as it should be
    assert "xarray" not in loaded


def _commands(group, path=()):
    """(path, click command) of every command the CLI has."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer vendors click: no isinstance against click's classes)
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_help_lists_its_options():
    """Registering the command modules lazily lost none of them nor of their options."""
    import typer.main
    from typer.testing import CliRunner

    from panicflow.cli import app

    commands = dict(_commands(typer.main.get_command(app)))
    assert {("experiment", "run"), ("experiment", "status"), ("experiment", "list"), ("models",), ("doctor",),
            ("analyse", "cluster"), ("analyse", "results"), ("export", "tables"), ("export", "video"), ("report",),
            ("plot",), ("import", "legacy")} <= set(commands)
    runner = CliRunner()
    for path, cmd in commands.items():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0, (path, result.output)
        for param in cmd.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in result.output, (path, opt)
