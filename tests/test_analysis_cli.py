"""The analyse commands through typer, on the session's cluster (--scheduler)."""

import json

import typer
from typer.testing import CliRunner

from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis.cli import analyse_app, export_tables_cmd

app = typer.Typer()
app.add_typer(analyse_app, name="analyse")
export = typer.Typer()
export.command("tables")(export_tables_cmd)
app.add_typer(export, name="export")


def test_cli(analysis_experiment, client, tmp_path):
    store, eid = analysis_experiment
    sched = client.scheduler.address
    run = CliRunner().invoke
    r = run(app, ["analyse", "cluster", eid, "--model", "DummyText", "--min-cluster-size", "5", "--reduce", "pca:4",
                  "--store", store, "--scheduler", sched, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["path"].startswith("analysis/clusters/hdbscan-DummyText-")
    r = run(app, ["analyse", "drift", eid, "--model", "DummyText", "--store", store, "--scheduler", sched])
    assert r.exit_code == 0 and "analysis/drift/DummyText" in r.stdout
    r = run(app, ["analyse", "distances", eid, "--model", "DummyText", "--runs", "0,1,2", "--store", store, "--scheduler", sched])
    assert r.exit_code == 0 and "analysis/distances/" in r.stdout
    r = run(app, ["analyse", "results", eid, "--store", store, "--json"])
    from panicflow.analysis.results import KINDS  # every kind listed, the later analyses' too

    assert set(json.loads(r.stdout)) == set(KINDS) >= {"clusters", "drift", "distances", "divergence", "sequences", "entropy"}
    r = run(app, ["export", "tables", eid, "--format", "csv", "--out", str(tmp_path), "--no-vectors", "--store", store])
    assert r.exit_code == 0 and (tmp_path / "assignments.csv").exists()
    r = run(app, ["analyse", "cluster", eid, "--model", "DummyText", "--reduce", "tsne", "--store", store, "--scheduler", sched])
    assert r.exit_code != 0 and "--reduce: expected" in str(r.exception)


def test_every_result_kind_names_the_command_that_stores_it():
    """A missing result says which `panicflow analyse` command computes it: that command must exist
    (the later kinds said `noise_sweep`, not `noise-sweep`)."""
    from panicflow.analysis.cli import analyse_app
    from panicflow.analysis.results import KINDS, kind_command

    commands = {c.name or c.callback.__name__ for c in analyse_app.registered_commands}
    # the command's name, then options (bounded: `divergence --measures bounded`)
    assert {kind: kind_command(kind) for kind in KINDS if kind_command(kind).split()[0] not in commands} == {}
