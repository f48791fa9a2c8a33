"""Every stored result of the issue 24 analyses reaches `panicflow export tables` and `panicflow plot`: each
exported table is its command's own table (the function the command writes with --out / --tables, and the files
themselves for knn and dynamics) with experiment_id and result in front, Parquet keeps the declared schema, an
assigned clustering is in `assignments` with its distances, and each chart is a real PNG and SVG; without a
result the tables are empty and the chart names the command to run."""

import os
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from analysis_util import analysis_experiment, check_chart as _check_image  # noqa: F401
from panicflow.analysis import clustering, density, dynamics, plots, recurrence as R, sequences, stability, tables
from panicflow.analysis.assign import assign
from panicflow.analysis.cli import analyse_app
from panicflow.analysis.results import kind_command, list_results, open_result
from panicflow.cli import main
from panicflow.errors import UserError
from panicflow.store import Store

MODEL = "DummyText"  # a text model: its vectors embed captions (noise_caption needs that)

# table -> (result kind, the command's table of (experiment, store, result)), as cli_clustering, cli_dynamics and
# cli_recurrence make them
COMMAND_TABLES = {
    "stability": ("stability", lambda e, s, r: stability.stability_table(e, s, r)),
    **{f"dynamics_{w}": ("dynamics", lambda e, s, r, w=w: dynamics.dynamics_table(e, w, s, result=r)) for w in dynamics.TABLES},
    "knn": ("knn", lambda e, s, r: density.knn_table(e, s, r)),
    "noise_sweep": ("noise_sweep", lambda e, s, r: density.sweep_table(e, s, r)),
    "noise_caption": ("noise_caption", lambda e, s, r: density.caption_table(e, s, r)),
    "recurrence": ("recurrence", lambda e, s, r: R.recurrence_tables(e, s, r)[0]),
    "recurrence_returns": ("recurrence", lambda e, s, r: R.recurrence_tables(e, s, r)[1]),
    "windows": ("windows", lambda e, s, r: R.windows_table(e, s, r)),
    "run_table": ("run_table", lambda e, s, r: R.run_table_frame(e, s, r)),
}


@pytest.fixture(scope="module")
def stores(analysis_experiment, client, tmp_path_factory):
    """A copy of the analysis experiment with one result of every kind (knn twice; knn and dynamics made by their
    commands, which also write their own table files), and a bare copy with no analysis at all."""
    store, eid = analysis_experiment
    root = tmp_path_factory.mktemp("exports")
    full, bare, files = str(root / "full"), str(root / "bare"), root / "commands"
    shutil.copytree(store, bare)
    shutil.rmtree(os.path.join(bare, "experiments", Store(bare).experiment(eid).id, "data.zarr", "analysis"), ignore_errors=True)
    shutil.copytree(bare, full)
    name = clustering.cluster([eid], MODEL, store=full, client=client, min_cluster_size=5, reduce="pca:4", name="x")
    sequences.sequences(eid, name, store=full)
    stability.stability([eid], MODEL, store=full, client=client, resamples=4, min_cluster_size=5, reduce="pca:4", name="st")
    assign([eid], name, eid, store=full, client=client, name="asg")
    runner = CliRunner()
    for args in (["dynamics", eid, "--clustering", name, "--tables", str(files)],
                 ["knn", eid, "--model", MODEL, "--k", "3", "--out", str(files)]):
        res = runner.invoke(analyse_app, [*args, "--store", full])
        assert res.exit_code == 0, res.output
    density.knn_distances(eid, MODEL, full, k=2, name="k2")  # a second result of a kind: its own row set
    density.noise_sweep(eid, MODEL, full, sizes=(2, 3, 5, 8), name="sw")
    density.noise_by_caption(eid, name, full)
    R.recurrence(eid, name, full)
    R.window_persistence(eid, MODEL, full, window=6, stride=6)
    R.run_table(eid, name, full)
    return full, bare, eid, name, files


@pytest.fixture(scope="module")
def exported(stores, tmp_path_factory):
    full, _, eid, _, _ = stores
    root = tmp_path_factory.mktemp("exported")
    return {fmt: tables.export_tables(eid, root / fmt, fmt=fmt, store=full) for fmt in ("parquet", "csv")}


def test_every_result_kind_has_a_table_and_a_chart():
    assert set(tables.RESULT_TABLES) == set(COMMAND_TABLES) and set(COMMAND_TABLES) <= set(tables.TABLES)
    assert {kind for kind, _ in COMMAND_TABLES.values()} == set(plots.RESULT_KINDS) and set(plots.RESULT_KINDS) <= set(plots.KINDS)
    for name in COMMAND_TABLES:
        assert tables.SCHEMAS[name].names[:2] == ["experiment_id", "result"]


@pytest.mark.parametrize("name", list(COMMAND_TABLES))
def test_exported_table_is_the_commands_table(stores, exported, name):
    full, _, eid, _, _ = stores
    kind, command_table = COMMAND_TABLES[name]
    t = pq.read_table(exported["parquet"][name])
    assert t.schema.equals(tables.SCHEMAS[name], check_metadata=False)
    df = t.to_pandas()
    results = list(list_results(Store(full).experiment(eid), kind))
    assert results and sorted(df.result.unique()) == results and (df.experiment_id == eid).all()
    for r in results:
        want = command_table(eid, full, r).drop(columns=["experiment_id", "result"], errors="ignore")
        got = df[df.result == r].drop(columns=["experiment_id", "result"]).reset_index(drop=True)
        extra = [c for c in got.columns if c not in want.columns]
        # run_table: the schema has H0..H3, these diagrams stop at H2
        assert extra == (["entropy_h3", "entropy_normalised_h3", "bars_h3"] if name == "run_table" else [])
        assert got[extra].isna().all().all()
        assert len(want) > 0
        pd.testing.assert_frame_equal(got[list(want.columns)], want)
    assert tables.table(name, eid, full).shape == df.shape
    csv = pd.read_csv(exported["csv"][name])
    assert list(csv.columns) == tables.SCHEMAS[name].names and len(csv) == len(df)


def test_the_commands_files_equal_the_export(stores, exported):
    _, _, eid, _, files = stores
    knn = pd.read_csv(exported["csv"]["knn"])
    mine = knn[knn.result == f"{MODEL}-k3"].drop(columns=["experiment_id", "result"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, pd.read_csv(files / f"knn-{MODEL}-k3.csv"))
    for which in dynamics.TABLES:  # pandas writes a whole float as 3.0, pyarrow as 3: read back as int64
        written = pd.read_csv(files / f"dynamics_{which}.csv")
        pd.testing.assert_frame_equal(pd.read_csv(exported["csv"][f"dynamics_{which}"]), written, check_dtype=False)


def test_an_assigned_clustering_is_in_assignments_with_its_distances(stores, exported):
    full, _, eid, name, _ = stores
    asg = pd.read_parquet(exported["parquet"]["assignments"])
    g = open_result(Store(full).experiment(eid), "clusters", "asg")
    assert g.attrs["fitted"] is False
    lab = g["label"][...]
    r, s = np.nonzero(lab >= -1)
    a = asg[asg.clustering == "asg"]
    np.testing.assert_array_equal(a.run, r)
    np.testing.assert_array_equal(a.step, s)
    np.testing.assert_array_equal(a.label, lab[r, s])
    np.testing.assert_array_equal(a.distance, g["distance"][...][r, s])
    assert a.probability.isna().all() and a.distance.notna().all()
    assert asg[asg.clustering == name].distance.isna().all()  # a fitted clustering has no distance
    cl = pd.read_parquet(exported["parquet"]["clusters"])
    assert sorted(cl[cl.clustering == "asg"].cluster_id) == sorted(g["cluster_id"][...].tolist())


def test_no_result_an_empty_table(stores, tmp_path):
    _, bare, eid, _, _ = stores
    paths = tables.export_tables(eid, tmp_path, store=bare, tables=tuple(COMMAND_TABLES))
    for name, path in paths.items():
        t = pq.read_table(path)
        assert t.num_rows == 0 and t.schema.equals(tables.SCHEMAS[name], check_metadata=False)
        df = tables.table(name, eid, bare)
        assert len(df) == 0 and list(df.columns) == tables.SCHEMAS[name].names


@pytest.mark.parametrize("kind", plots.RESULT_KINDS)
def test_each_result_chart(stores, tmp_path, kind):
    full, _, eid, _, _ = stores
    name = open_result(Store(full).experiment(eid), kind).basename  # the most recent
    paths = plots.plot(eid, kind, out=tmp_path, store=full)
    assert [p.name for p in paths] == [f"{kind}-{name}.png", f"{kind}-{name}.svg"]
    _check_image(*paths)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert plots.figure(eid, kind, store=full, title=False).get_suptitle() == ""


@pytest.mark.parametrize("kind", plots.RESULT_KINDS)
def test_no_result_names_the_command(stores, tmp_path, capsys, kind):
    _, bare, eid, _, _ = stores
    command = f"panicflow analyse {kind_command(kind)} "
    with pytest.raises(UserError, match=re.escape(command)):
        plots.plot(eid, kind, out=tmp_path, store=bare)
    assert main(["plot", eid, kind, "--out", str(tmp_path), "--store", bare]) == 2
    err = capsys.readouterr().err.strip()
    assert command in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_plot_cli_chooses_the_result(stores, tmp_path, capsys):
    full, _, eid, _, _ = stores
    assert main(["plot", eid, "knn", "--result", "k2", "--out", str(tmp_path), "--store", full]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "knn-k2.png"), str(tmp_path / "knn-k2.svg")]
    assert main(["plot", eid, "knn", "--result", "nope", "--out", str(tmp_path / "no"), "--store", full]) == 2
    assert "no complete knn result 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
