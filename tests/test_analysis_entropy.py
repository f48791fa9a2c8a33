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
    assert (df.ci_low <= df["median"]).all() and (df["median"] <= df.ci_high).all()
