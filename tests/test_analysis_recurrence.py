"""Recurrence and topology (issue 24 item 5): recurrence rates and return times against loops over scipy's
cosine distances, sliding-window persistence against giotto-ph called directly, normalised entropy against the
formula written out in numpy, and the per-run table against pandas over the exported tables."""

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from typer.testing import CliRunner

from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering, recurrence as R, sequences, tables
from panicflow.analysis.cli import analyse_app
from panicflow.analysis.results import experiment, open_result
from panicflow.errors import UserError

MODEL = "DummyVision"


@pytest.fixture(scope="module")
def prepared(analysis_experiment, client, tmp_path_factory):
    """A copy of the shared store with a clustering of MODEL and its sequences (these tests write results)."""
    store, eid = analysis_experiment
    dst = str(tmp_path_factory.mktemp("recurrence") / "store")
    shutil.copytree(store, dst)
    name = clustering.cluster([eid], MODEL, store=dst, client=client, min_cluster_size=3, name="rec")
    sequences.sequences(eid, name, store=dst)
    return dst, eid, name


def _trajectories(store, eid, model):
    t = tables.table("embeddings", eid, store)
    t = t[t.embedding_model == model].sort_values(["run", "step"])
    return {int(r): (g.step.to_numpy(), np.stack(g.vector.to_numpy()).astype(np.float64)) for r, g in t.groupby("run")}


def _labels(store, eid, name):
    a = tables.table("assignments", eid, store)
    a = a[a.clustering == name]
    return {(int(r), int(s)): int(l) for r, s, l in zip(a.run, a.step, a.label)}


def _naive_returns(rec):
    """Return times written as a walk: leave i's neighbourhood, then count steps until back in it."""
    out, censored = [], 0
    for i in range(len(rec)):
        left = False
        for j in range(i + 1, len(rec)):
            if not rec[i][j]:
                left = True
            elif left:
                out.append((i, j - i))
                break
        else:
            censored += left
    return out, censored


def _naive_rate(rec, min_lag):
    pairs = [(i, j) for i in range(len(rec)) for j in range(i + min_lag, len(rec))]
    return sum(bool(rec[i][j]) for i, j in pairs) / len(pairs)


def test_recurrence_functions_against_loops():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 3, size=30)
    rs = R.symbol_recurrences(labels)
    loop = [[labels[i] == labels[j] and labels[i] >= 0 for j in range(30)] for i in range(30)]
    assert rs.tolist() == loop
    x = rng.normal(size=(30, 5))
    d = cdist(x, x, "cosine")
    rd = R.distance_recurrences(x, 0.6)
    np.testing.assert_array_equal(rd, d <= 0.6)
    for r in (rs, rd):
        for lag in (1, 3):
            assert R.recurrence_rate(r, lag) == pytest.approx(_naive_rate(r.tolist(), lag))
        i, t, c = R.return_times(r)
        want, censored = _naive_returns(r.tolist())
        assert list(zip(i.tolist(), t.tolist())) == want and c == censored
    a, b = rs[np.triu_indices(30, 1)], rd[np.triu_indices(30, 1)]
    assert R.jaccard(rs, rd) == pytest.approx((a & b).sum() / (a | b).sum())
    # 0 0 1 0: point 0 returns after 3 points, point 1 after 2; point 2 leaves and never returns
    i, t, c = R.return_times(R.symbol_recurrences(np.array([0, 0, 1, 0])))
    assert list(zip(i.tolist(), t.tolist())) == [(0, 3), (1, 2)] and c == 1  # point 2 (cluster 1) left for good


def test_normalised_entropy_against_the_formula():
    rng = np.random.default_rng(2)
    births = rng.uniform(0, 1, 12)
    dgm = np.column_stack([births, births + rng.uniform(0.01, 1, 12)])
    dgm_inf = np.vstack([dgm, [[0.0, np.inf]], [[0.3, 0.3]]])  # an infinite and a zero-length bar: left out
    single = np.array([[0.0, 1.0]])
    equal = np.array([[0.0, 1.0], [1.0, 2.0], [0.5, 1.5]])
    got = R.normalised_entropy([dgm, dgm_inf, single, equal, np.zeros((0, 2))])
    length = dgm[:, 1] - dgm[:, 0]
    p = length / length.sum()
    hand = -(p * np.log(p)).sum() / np.log(len(p))
    assert got[0] == pytest.approx(hand) and got[1] == pytest.approx(hand)
    assert np.isnan(got[2]) and got[3] == pytest.approx(1.0) and np.isnan(got[4])
    assert R.finite_bars(dgm_inf) == 12


def test_stored_recurrence_against_scipy(prepared):
    store, eid, name = prepared
    path = R.recurrence(eid, name, store, quantile=0.1, min_lag=2)
    g = open_result(experiment(store, eid), "recurrence", path.rsplit("/", 1)[1])
    traj = _trajectories(store, eid, MODEL)
    labels = _labels(store, eid, name)
    pooled = np.concatenate([cdist(x, x, "cosine")[np.triu_indices(len(x), 1)] for _, x in traj.values()])
    eps = np.quantile(pooled, 0.1)
    assert g.attrs["parameters"]["threshold"] == pytest.approx(eps)
    assert g.attrs["parameters"]["min_lag"] == 2 and "quantile 0.1" in g.attrs["parameters"]["threshold_rule"]
    runs, returns = R.recurrence_tables(eid, store, g.basename)
    for run, (steps, x) in traj.items():
        rd = (cdist(x, x, "cosine") <= eps).tolist()
        lab = [labels[(run, int(s))] for s in steps]
        rs = [[a == b and a >= 0 for b in lab] for a in lab]
        row = runs[runs.run == run].iloc[0]
        assert row.n_points == len(x)
        assert row.rr_distance == pytest.approx(_naive_rate(rd, 2))
        assert row.rr_symbol == pytest.approx(_naive_rate(rs, 2))
        for src, rec in (("distance", rd), ("symbol", rs)):
            want, censored = _naive_returns(rec)
            got = returns[(returns.run == run) & (returns.source == src)]
            assert list(zip(got.step, got.time)) == [(int(steps[i]), t) for i, t in want]
            assert row[f"censored_{src}"] == censored
    assert R.recurrence_figure(runs, returns, eps).axes
    with pytest.raises(UserError, match="--threshold"):
        R.recurrence(eid, name, store, threshold=3.0)


def test_sliding_windows_against_giotto(prepared):
    from gph import ripser_parallel

    store, eid, _ = prepared
    R.window_persistence(eid, MODEL, store, window=8, stride=5, maxdim=1, name="w8")
    t = R.windows_table(eid, store, "w8")
    traj = _trajectories(store, eid, MODEL)
    n_windows = 0
    for run, (steps, x) in traj.items():
        for a in range(0, len(x) - 8 + 1, 5):
            dgms = ripser_parallel(x[a:a + 8], maxdim=1)["dgms"]
            for k, dgm in enumerate(dgms):
                row = t[(t.run == run) & (t.start == steps[a]) & (t.homology_dim == k)].iloc[0]
                assert row.end == steps[a + 7]
                fin = dgm[np.isfinite(dgm[:, 1])]
                length = fin[:, 1] - fin[:, 0]
                length = length[length > 1e-6]
                assert row.bars == len(length)
                if len(length) >= 1:
                    p = length / length.sum()
                    assert row.entropy == pytest.approx(-(p * np.log(p)).sum(), rel=1e-4, abs=1e-6)
                if len(length) >= 2:
                    assert row.entropy_normalised == pytest.approx(-(p * np.log(p)).sum() / np.log(len(p)), rel=1e-4)
            n_windows += 1
    assert n_windows == t.run.size // 2 > 0
    assert R.windows_figure(t).axes
    with pytest.raises(UserError, match="--window"):
        R.window_persistence(eid, MODEL, store, window=2)


def test_run_table_against_the_exported_tables(prepared):
    store, eid, name = prepared
    g = experiment(store, eid).group()
    hashes = g["output_hash"][0, :]
    hashes[4] = hashes[8] = hashes[0]  # run 0 repeats its first picture twice: 2 duplicates
    g["output_hash"][0, :] = hashes
    R.recurrence(eid, name, store, threshold=0.5, name="r05")
    R.run_table(eid, name, store, recurrence_result="r05", name="table")
    got = R.run_table_frame(eid, store, "table").set_index("run")
    runs = tables.table("runs", eid, store).set_index("run")
    inv = tables.table("invocations", eid, store)
    ent = tables.table("entropies", eid, store)
    bars = tables.table("bars", eid, store)
    labels = _labels(store, eid, name)
    rec = R.recurrence_tables(eid, store, "r05")[0].set_index("run")
    for run, (steps, x) in _trajectories(store, eid, MODEL).items():
        row = got.loc[run]
        assert row.network == runs.loc[run, "network"] and row.prompt == runs.loc[run, "prompt"]
        hashes = inv[(inv.run == run) & inv.step.isin(steps)].output_hash
        assert row.n_points == len(steps) and row.duplicates == len(hashes) - hashes.nunique()
        assert row.duplicates == (2 if run == 0 else 0)
        for k in range(3):
            e = ent[(ent.run == run) & (ent.embedding_model == MODEL) & (ent.homology_dim == k)].entropy.iloc[0]
            assert row[f"entropy_h{k}"] == pytest.approx(e, nan_ok=True)
            b = bars[(bars.run == run) & (bars.embedding_model == MODEL) & (bars.homology_dim == k)]
            length = (b.death - b.birth)[np.isfinite(b.death)]
            length = length[length > 0].to_numpy()
            assert row[f"bars_h{k}"] == len(length)
            if len(length) >= 2:
                p = length / length.sum()
                assert row[f"entropy_normalised_h{k}"] == pytest.approx(-(p * np.log(p)).sum() / np.log(len(p)))
        seq = [labels[(run, int(s))] for s in steps]
        stays = [(lab, len(list(grp))) for lab, grp in itertools.groupby(seq)]
        dwell = [n for lab, n in stays if lab >= 0]
        assert row.mean_dwell == pytest.approx(np.mean(dwell) if dwell else np.nan, nan_ok=True)
        assert row.max_dwell == (max(dwell) if dwell else 0)
        assert row.n_clusters == len({lab for lab in seq if lab >= 0})
        assert row.noise_fraction == pytest.approx(seq.count(-1) / len(seq))
        assert row.rr_distance == pytest.approx(rec.loc[run, "rr_distance"])
    assert R.run_table_figure(got.reset_index()).axes


def test_commands_write_tables_and_charts(prepared, tmp_path):
    store, eid, name = prepared
    runner = CliRunner()
    res = runner.invoke(analyse_app, ["recurrence", eid, "--clustering", name, "--threshold", "0.4", "--name", "cli",
                                      "--store", store, "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["path"] == "analysis/recurrence/cli"
    assert set(pd.read_csv(tmp_path / "recurrence-cli-returns.csv").columns) == {"run", "source", "step", "time"}
    assert (tmp_path / "recurrence-cli.png").stat().st_size > 0
    res = runner.invoke(analyse_app, ["windows", eid, "--model", MODEL, "--window", "6", "--stride", "6", "--store", store,
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / f"windows-{MODEL}-w6-s6-h1.png").exists()
    res = runner.invoke(analyse_app, ["run-table", eid, "--sequences", name, "--recurrence", "cli", "--store", store,
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / f"run_table-{name}.csv")
    assert len(table) == 16 and {"entropy_normalised_h1", "duplicates", "mean_dwell", "rr_distance"} <= set(table.columns)
    res = runner.invoke(analyse_app, ["results", eid, "--store", store, "--json"])
    found = json.loads(res.stdout)
    assert "cli" in found["recurrence"] and name in found["run_table"]


def test_entropy_explained_by_counts_against_sklearn(prepared):
    from sklearn.linear_model import LinearRegression

    store, eid, name = prepared
    R.run_table(eid, name, store, name="table-r2")
    g = open_result(experiment(store, eid), "run_table", "table-r2")
    t = R.run_table_frame(eid, store, "table-r2")
    cols = [c for c in t.columns if c.startswith("entropy")]
    assert set(g.attrs["explained_by_counts"]) == set(cols)
    for c in cols:
        d = t[[c, *R.PREDICTORS]].dropna()
        want = LinearRegression().fit(d[list(R.PREDICTORS)], d[c]).score(d[list(R.PREDICTORS)], d[c])
        got = g.attrs["explained_by_counts"][c]
        assert got["n"] == len(d) and got["r2"] == pytest.approx(want, abs=1e-9)


def test_pooled_threshold_exact_then_sampled():
    rng = np.random.default_rng(5)
    runs = [rng.normal(size=(n, 4)) for n in (30, 1, 45, 20)]
    pooled = np.concatenate([cdist(x, x, "cosine")[np.triu_indices(len(x), 1)] for x in runs])
    eps, used, total = R.pooled_threshold(iter(runs), 0.1)
    assert eps == pytest.approx(np.quantile(pooled, 0.1)) and used == total == len(pooled)
    eps, used, total = R.pooled_threshold(iter(runs), 0.5, max_pairs=400)
    assert used == 400 and total == len(pooled)
    assert abs(np.mean(pooled <= eps) - 0.5) < 0.08  # a uniform sample's median is near the median of all pairs


def test_duplicate_outputs_against_counter():
    from collections import Counter

    hashes = ["a", "b", "a", "", "c", "a", "b"]
    assert R.duplicate_outputs(hashes) == sum(c - 1 for h, c in Counter(hashes).items() if h) == 3
