"""Entropy summary against pandas on the stored entropies, and its bootstrap intervals against a numpy bootstrap."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import entropy, tables
from panicflow.analysis.cli import analyse_app
from panicflow.errors import UserError


def _expected(store, eid) -> pd.DataFrame:
    """Per (network, model, dim), from the tidy tables: the finite entropies of usable diagrams."""
    ent = tables.table("entropies", eid, store=store).merge(tables.table("runs", eid, store=store)[["run", "network"]], on="run")
    ent["usable"] = ent.status.str.startswith("ok") & np.isfinite(ent.entropy)
    return ent


def _summary(store, eid, path) -> pd.DataFrame:
    ds = panicflow.open_experiment(eid, store=store)[path].ds
    return pd.DataFrame({k: ds[k].values for k in ds.data_vars}).set_index(["group_network", "group_model", "group_homology_dim"])


def test_statistics_match_pandas(analysis_experiment):
    store, eid = analysis_experiment
    path = entropy.entropy_summary(eid, store=store)
    assert path == "analysis/entropy/mean-bca-0.95-9999-0"
    got = _summary(store, eid, path)
    ent = _expected(store, eid)
    assert len(got) == 2 * 2 * 3  # networks x models x homology dims
    for (net, model, dim), rows in ent.groupby(["network", "embedding_model", "homology_dim"]):
        row = got.loc[(net, model, dim)]
        v = rows.entropy[rows.usable]
        assert row.n == len(v) and row.n_missing == (~rows.usable).sum()
        for name, value in {"mean": v.mean(), "std": v.std(ddof=1), "median": v.median(), "min": v.min(), "max": v.max()}.items():
            assert row[name] == pytest.approx(value, rel=1e-12), name
        pts = rows.n_points_used[rows.usable]  # the point count with every summary (issue 24 item 6)
        assert (row.n_points_min, row.n_points_max) == (pts.min(), pts.max()) and row.n_points_median == pts.median()
        assert row.ci_low <= row["mean"] <= row.ci_high
    assert (got.n_missing > 0).any()  # some H2 diagrams of the dummy runs have no finite bar
    attrs = panicflow.open_experiment(eid, store=store)[path].ds.attrs
    assert attrs["parameters"] == {"statistic": "mean", "confidence_level": 0.95, "n_resamples": 9999, "method": "BCa", "seed": 0}
    assert "scipy" in attrs["versions"]


def test_percentile_interval_matches_a_numpy_bootstrap(analysis_experiment):
    store, eid = analysis_experiment
    got = _summary(store, eid, entropy.entropy_summary(eid, store=store, method="percentile", n_resamples=9999, seed=1))
    ent = _expected(store, eid)
    rng = np.random.default_rng(12345)  # an independent stream: agreement within Monte Carlo error
    for (net, model, dim), rows in ent.groupby(["network", "embedding_model", "homology_dim"]):
        v = rows.entropy[rows.usable].to_numpy()
        means = v[rng.integers(0, len(v), (200_000, len(v)))].mean(axis=1)  # the bootstrap distribution, closely
        row = got.loc[(net, model, dim)]
        for p, value in ((0.025, row.ci_low), (0.975, row.ci_high)):
            # a p-quantile estimated from 9999 resamples lies, with overwhelming probability, between the true
            # (p - d)- and (p + d)-quantiles, d = 5 standard errors of a proportion: a band in rank, not in value,
            # because the bootstrap distribution of a mean of 8 values is lumpy (a fixed tolerance in value failed)
            d = 5 * np.sqrt(p * (1 - p) / 9999)
            lo, hi = np.quantile(means, [max(p - d, 0.0), min(p + d, 1.0)])
            assert lo - 1e-9 <= value <= hi + 1e-9, (net, model, dim, p, value, lo, hi)


def test_seeded_and_edge_cases():
    v = np.random.default_rng(0).normal(2.0, 0.3, 12)
    a, b, c = (entropy.summarise(v, seed=s) for s in (7, 7, 8))
    assert a == b and a["ci_low"] != c["ci_low"]
    med = entropy.summarise(v, statistic="median", method="percentile")
    assert med["ci_low"] <= np.median(v) <= med["ci_high"] and med["median"] == pytest.approx(np.median(v))
    assert entropy.summarise(np.full(5, 1.5))["ci_low"] == entropy.summarise(np.full(5, 1.5))["ci_high"] == 1.5
    one = entropy.summarise(np.array([2.0, np.nan]))
    assert one["n"] == 1 and one["mean"] == 2.0 and np.isnan(one["ci_low"]) and np.isnan(one["std"])
    assert entropy.summarise(np.array([]))["n"] == 0


@pytest.mark.parametrize("kw, message", [
    ({"statistic": "mode"}, "--statistic"), ({"confidence": 95}, "--confidence"),
    ({"n_resamples": 10}, "--n-resamples"), ({"method": "jackknife"}, "--method"),
])
def test_user_errors(analysis_experiment, kw, message):
    store, eid = analysis_experiment
    with pytest.raises(UserError, match=message):
        entropy.entropy_summary(eid, store=store, **kw)


def test_cli_and_table(analysis_experiment):
    store, eid = analysis_experiment
    r = CliRunner().invoke(analyse_app, ["entropy", eid, "--statistic", "median", "--method", "percentile", "--n-resamples", "500", "--store", store, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["path"] == "analysis/entropy/median-percentile-0.95-500-0" and len(out["groups"]) == 12
    df = tables.table("entropy_summary", eid, store=store)
    df = df[df.result == "median-percentile-0.95-500-0"]
    assert len(df) == 12 and set(df.statistic) == {"median"} and set(df.n_resamples) == {500}
    assert all("n_points_min" in g and "adjusted_mean" in g for g in out["groups"])
    r = CliRunner().invoke(analyse_app, ["entropy", eid, "--n-resamples", "200", "--name", "cli-points", "--store", store])
    assert r.exit_code == 0 and " points" in r.stderr and "n=" in r.stderr
    assert (df.ci_low <= df["median"]).all() and (df["median"] <= df.ci_high).all()


def _fwl(values, points, ref):
    """The analysis of covariance by hand (Frisch-Waugh-Lovell): the common slope from the within-network variation,
    each network's mean moved along it to ln(ref), and that estimate's standard error."""
    x = {k: np.log(np.asarray(p, float)) for k, p in points.items()}
    sxy = sum(((x[k] - x[k].mean()) * (values[k] - values[k].mean())).sum() for k in values)
    sxx = sum(((x[k] - x[k].mean()) ** 2).sum() for k in values)
    b = sxy / sxx
    resid = np.concatenate([values[k] - values[k].mean() - b * (x[k] - x[k].mean()) for k in values])
    s2 = (resid ** 2).sum() / (len(resid) - len(values) - 1)
    adj = {k: values[k].mean() + b * (np.log(ref) - x[k].mean()) for k in values}
    se = {k: np.sqrt(s2 * (1 / len(values[k]) + (np.log(ref) - x[k].mean()) ** 2 / sxx)) for k in values}
    return b, adj, se


def test_adjusted_means_control_for_the_point_count():
    """Two networks of equal entropy at equal length, one with short (looped) runs: the raw means differ, the
    adjusted ones do not; estimates against scikit-learn's least squares, standard errors against the formula."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(2)
    points = {"A": rng.choice([500, 500, 500, 70, 120], 30), "B": np.full(25, 500), "C": rng.integers(60, 500, 20)}
    level = {"A": 2.0, "B": 2.0, "C": 2.4}
    values = {k: level[k] + 0.8 * np.log(p) + rng.normal(0, 0.05, len(p)) for k, p in points.items()}
    got = entropy.adjusted_means(values, points)
    ref = float(np.median(np.concatenate(list(points.values()))))
    assert got["reference_points"] == ref == 500
    assert abs(values["A"].mean() - values["B"].mean()) > 0.2  # pooled lengths: A looks lower
    assert got["adjusted"]["A"] == pytest.approx(got["adjusted"]["B"], abs=0.05)
    assert got["adjusted"]["C"] - got["adjusted"]["B"] == pytest.approx(0.4, abs=0.05)
    names = list(values)
    onehot = np.concatenate([np.eye(3)[[i] * len(values[k])] for i, k in enumerate(names)])
    x = np.column_stack([onehot, np.log(np.concatenate([points[k] for k in names]))])
    lr = LinearRegression(fit_intercept=False).fit(x, np.concatenate([values[k] for k in names]))
    assert got["slope"] == pytest.approx(lr.coef_[-1], rel=1e-9)
    b, adj, se = _fwl(values, points, ref)
    assert got["slope"] == pytest.approx(b, rel=1e-9)
    for i, k in enumerate(names):
        assert got["adjusted"][k] == pytest.approx(lr.coef_[i] + lr.coef_[-1] * np.log(ref), rel=1e-9)
        assert got["adjusted"][k] == pytest.approx(adj[k], rel=1e-9) and got["se"][k] == pytest.approx(se[k], rel=1e-9)
    # no network whose runs differ in length: the slope is not estimable, and nothing is made up
    same = entropy.adjusted_means({"A": values["A"][:5], "B": values["B"][:5]}, {"A": np.full(5, 500), "B": np.full(5, 70)})
    assert np.isnan(same["slope"]) and np.isnan(same["adjusted"]["A"]) and same["reference_points"] == pytest.approx(285)
    assert np.isnan(entropy.adjusted_means({"A": np.array([])}, {"A": np.array([], int)})["slope"])


def test_stored_adjusted_means_and_point_columns(analysis_experiment, tmp_path):
    """On a copy whose point counts differ between runs (the dummy runs all reach max_length): what is stored."""
    import shutil

    from panicflow.store import Store

    src, eid = analysis_experiment
    store = str(tmp_path / "store")
    shutil.copytree(src, store)
    g = Store(store).experiment(eid).group()
    for model in ("DummyText", "DummyVision"):
        used = g[f"diagrams/{model}/n_points_used"]
        u = used[...]
        u[::3] = np.maximum(2, u[::3] // np.arange(2, 2 + len(u[::3])))  # every third run as if shorter
        used[...] = u
    path = entropy.entropy_summary(eid, store=store, n_resamples=200, name="points")
    got = _summary(store, eid, path)
    ent = _expected(store, eid)
    ent = ent[ent.usable]
    for (model, dim), rows in ent.groupby(["embedding_model", "homology_dim"]):
        values = {n: r.entropy.to_numpy() for n, r in rows.groupby("network")}
        points = {n: r.n_points_used.to_numpy() for n, r in rows.groupby("network")}
        expect = entropy.adjusted_means(values, points)
        within = sum(np.ptp(np.log(p.astype(float))) for p in points.values())
        for net in values:
            row = got.loc[(net, model, dim)]
            assert row.reference_points == float(np.median(rows.n_points_used))
            if within > 0 and len(rows) > len(values) + 1:
                b, adj, se = _fwl(values, points, row.reference_points)
                assert row.points_slope == pytest.approx(b, rel=1e-9) and row.adjusted_mean == pytest.approx(adj[net], rel=1e-9)
                assert row.adjusted_se == pytest.approx(se[net], rel=1e-9)
            else:
                assert np.isnan(row.adjusted_mean) and np.isnan(expect["slope"])
    assert np.isfinite(got.adjusted_mean).any()  # the dummy runs loop at different lengths: estimable somewhere
    df = tables.table("entropy_summary", eid, store=store)
    df = df[df.result == "points"]
    assert {"n_points_min", "n_points_median", "n_points_max", "adjusted_mean", "adjusted_se", "points_slope",
            "reference_points"} <= set(df.columns)
    assert (df.n_points_min <= df.n_points_max).all()
    table = tables.table("entropies", eid, store=store)
    d = panicflow.open_experiment(eid, store=store)["diagrams/DummyText"].ds
    one = table[(table.embedding_model == "DummyText") & (table.homology_dim == 0)].set_index("run")
    assert (one.n_points.to_numpy() == d.n_points.values[one.index]).all()
    assert (one.n_points_used.to_numpy() == d.n_points_used.values[one.index]).all()
