"""Divergence (FTLE) against scipy's pdist and linregress on the stored vectors, and on known exponents."""

import json
import shutil

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import linregress
from typer.testing import CliRunner

import panicflow
from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import divergence
from panicflow.analysis.cli import analyse_app
from panicflow.errors import UserError
from panicflow.store import Store


def test_fit_recovers_a_known_exponent_and_matches_linregress():
    t = np.arange(0, 60, 2)
    exact = divergence.fit_exponent(t, 0.01 * np.exp(0.05 * t))
    assert exact.exponent == pytest.approx(0.05, rel=1e-10) and exact.r_squared == pytest.approx(1.0)
    assert exact.intercept == pytest.approx(np.log(0.01)) and exact.n == len(t)
    rng = np.random.default_rng(3)
    d = np.exp(-2 + 0.03 * t + rng.normal(0, 0.4, len(t)))
    d[[4, 9]] = 0.0  # no log: left out of the fit
    fit = divergence.fit_exponent(t, d)
    ok = d > 0
    ref = linregress(t[ok], np.log(d[ok]))
    assert fit.n == ok.sum()
    assert fit.exponent == pytest.approx(ref.slope, rel=1e-10)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-10)
    assert fit.r_squared == pytest.approx(ref.rvalue ** 2, rel=1e-10)
    assert fit.stderr == pytest.approx(ref.stderr, rel=1e-10)
    assert np.isnan(divergence.fit_exponent(t[:2], d[:2]).exponent)


def _groups(ds_root):
    keys = list(zip(ds_root.network.values.astype(str), ds_root.prompt.values.astype(str)))
    return {k: [r for r, kk in enumerate(keys) if kk == k] for k in sorted(set(keys))}


@pytest.mark.parametrize("model", ["DummyText", "DummyVision"])
def test_stored_divergence_matches_pdist_and_linregress(analysis_experiment, client, model):
    store, eid = analysis_experiment
    path = divergence.divergence(eid, model, store=store, client=client)
    assert path == f"analysis/divergence/{model}"
    tree = panicflow.open_experiment(eid, store=store)
    ds, root = tree[path].ds, tree["/"].ds
    vec = tree[f"embeddings/{model}"].ds.vector.values.astype(np.float64)
    groups = _groups(root)
    assert [(n, p) for n, p in zip(ds.group_network.values, ds.group_prompt.values)] == list(groups)
    for i, (key, runs) in enumerate(groups.items()):
        assert len(runs) == 4 and ds.n_pairs.values[i] == 6
        assert ds.status.values[i] == ("ok" if ds.r_squared.values[i] >= divergence.MIN_R_SQUARED else "poor-fit")
        assert (ds.run_group.values[runs] == i).all()
        steps = np.flatnonzero(~np.isnan(vec[runs]).any(axis=(0, 2)))
        u = vec[runs][:, steps] / np.linalg.norm(vec[runs][:, steps], axis=2, keepdims=True)
        expected = np.array([pdist(u[:, j]).mean() for j in range(len(steps))])
        np.testing.assert_allclose(ds.mean_distance.values[i, steps], expected, rtol=1e-9)
        assert np.isnan(np.delete(ds.mean_distance.values[i], steps)).all()
        ref = linregress(steps, np.log(expected))
        assert ds.exponent.values[i] == pytest.approx(ref.slope, rel=1e-6, abs=1e-12)
        assert ds.r_squared.values[i] == pytest.approx(ref.rvalue ** 2, rel=1e-6, abs=1e-12)
        assert ds.stderr.values[i] == pytest.approx(ref.stderr, rel=1e-6)
        assert ds.n_steps.values[i] == ds.n_fit_steps.values[i] == len(steps)


def test_known_exponent_end_to_end(analysis_experiment, tmp_path):
    """Vectors that part exponentially, e0 + eps exp(lambda t) v_run, give back lambda (no client: computed here)."""
    store, eid = analysis_experiment
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    g = Store(copy).experiment(eid).group()
    vec = g["embeddings/DummyVision/vector"]
    v = vec[...]
    has = ~np.isnan(v).any(axis=2)
    rng = np.random.default_rng(0)
    e0 = np.zeros(v.shape[2])
    e0[0] = 1.0
    lam, eps = 0.05, 1e-4
    for run in range(v.shape[0]):
        direction = rng.normal(size=v.shape[2])
        direction[0] = 0
        for s in np.flatnonzero(has[run]):
            v[run, s] = e0 + eps * np.exp(lam * s) * direction
    vec[...] = v.astype(np.float32)
    path = divergence.divergence(eid, "DummyVision", store=copy, fit_steps=(0, 30))
    ds = panicflow.open_experiment(eid, store=copy)[path].ds
    assert path.endswith("DummyVision-0-30")
    np.testing.assert_allclose(ds.exponent.values, lam, atol=2e-3)
    assert (ds.r_squared.values > 0.99).all()
    assert (ds.n_fit_steps.values == 15).all() and (ds.n_steps.values == 20).all()  # even steps < 30 of 40


def test_cli_and_errors(analysis_experiment, client):
    store, eid = analysis_experiment
    r = CliRunner().invoke(analyse_app, ["divergence", eid, "--model", "DummyText", "--fit-steps", "0:", "--name", "cli",
                                         "--store", store, "--scheduler", client.scheduler.address, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["path"] == "analysis/divergence/cli" and len(out["groups"]) == 4
    assert all(np.isfinite(g["r_squared"]) and g["n_pairs"] == 6 for g in out["groups"])
    assert all(g["status"] == ("ok" if g["r_squared"] >= 0.8 else "poor-fit") for g in out["groups"])
    with pytest.raises(UserError, match="no embedding model 'Nope'"):
        divergence.divergence(eid, "Nope", store=store)
    for bad in ("5", "a:b", "9:3", "-1:4"):
        with pytest.raises(UserError, match="--fit-steps"):
            divergence.parse_window(bad)
    assert divergence.parse_window(":40") == (0, 40) and divergence.parse_window("10:") == (10, None)


def test_poor_fit_is_not_ok():
    """A fit with R^2 0.002 is reported as poor-fit (issue 24 item 4), at the documented threshold."""
    t = np.arange(60)
    rng = np.random.default_rng(5)
    noise = divergence.fit_exponent(t, np.exp(-1 + rng.normal(0, 0.3, len(t))))  # saturated: no trend
    assert noise.r_squared < 0.05 and divergence.fit_status(noise) == "poor-fit"
    good = divergence.fit_exponent(t, 0.01 * np.exp(0.05 * t))
    assert divergence.fit_status(good) == "ok"
    assert divergence.fit_status(noise, min_r_squared=0.0) == "ok"
    assert divergence.fit_status(divergence.fit_exponent(t[:2], np.ones(2))).startswith("fewer than 3 steps")
    assert divergence.MIN_R_SQUARED == 0.8


def test_poor_fits_stored_printed_and_tabled(analysis_experiment, client):
    """The dummy runs saturate at once, so every group's fit is poor: stored, printed and exported as poor-fit."""
    from panicflow.analysis import tables

    store, eid = analysis_experiment
    r = CliRunner().invoke(analyse_app, ["divergence", eid, "--model", "DummyVision", "--name", "poor", "--store", store,
                                         "--scheduler", client.scheduler.address])
    assert r.exit_code == 0, r.output
    ds = panicflow.open_experiment(eid, store=store)["analysis/divergence/poor"].ds
    poor = ds.r_squared.values < 0.8
    assert poor.any() and (ds.status.values[poor] == "poor-fit").all() and (ds.status.values[~poor] == "ok").all()
    assert ds.attrs["parameters"]["min_r_squared"] == 0.8
    assert r.stderr.count("poor-fit: R^2") == poor.sum()
    df = tables.table("divergence", eid, store=store)
    assert (df[df.result == "poor"].status.to_numpy() == ds.status.values).all()
    r = CliRunner().invoke(analyse_app, ["divergence", eid, "--model", "DummyVision", "--name", "lenient", "--min-r-squared", "0",
                                         "--store", store, "--scheduler", client.scheduler.address, "--json"])
    assert r.exit_code == 0 and {g["status"] for g in json.loads(r.stdout.strip().splitlines()[-1])["groups"]} == {"ok"}
    from panicflow.analysis.plots import figure  # the chart draws by the result's own threshold, as its status says

    for result, good in (("poor", False), ("lenient", True)):
        texts = [t.get_text() for ax in figure(eid, "divergence", store=store, result=result).axes if ax.get_legend()
                 for t in ax.get_legend().get_texts()]
        assert any("λ =" in t for t in texts) == good and any("poor fit" in t for t in texts) != good
    r = CliRunner().invoke(analyse_app, ["divergence", eid, "--model", "DummyVision", "--min-r-squared", "2", "--store", store])
    assert r.exit_code != 0 and "--min-r-squared" in str(r.exception)
