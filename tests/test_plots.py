"""Every chart renders from a small experiment to a real PNG (not blank) and a well-formed SVG."""

import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from analysis_util import analysis_experiment  # noqa: F401
from panicflow.analysis import clustering, drift
from panicflow.analysis.plots import KINDS, plot
from panicflow.analysis.results import list_results
from panicflow.cli import main
from panicflow.errors import UserError
from panicflow.store import Store


@pytest.fixture(scope="module")
def with_inputs(analysis_experiment, client, tmp_path_factory):
    """A copy of the analysis experiment with a drift result and a clustering, and a copy with no analysis at all."""
    store, eid = analysis_experiment
    root = tmp_path_factory.mktemp("plots")
    full, bare = str(root / "full"), str(root / "bare")
    shutil.copytree(store, full)
    shutil.rmtree(os.path.join(full, "experiments", Store(full).experiment(eid).id, "data.zarr", "analysis"), ignore_errors=True)
    shutil.copytree(full, bare)
    drift.semantic_drift(eid, "DummyVision", store=full, client=client)
    clustering.cluster([eid], "DummyText", store=full, client=client, min_cluster_size=5, reduce="pca:4", name="plots")
    return full, bare, eid


def _check_image(png, svg):
    with Image.open(png) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= 1000 and h >= 500  # 7 in at 200 dpi: prints at full page width
        rgb = im.convert("RGB")
        assert len(rgb.getcolors(maxcolors=w * h)) > 20  # drawn, not blank
        pixels = np.asarray(rgb, dtype=np.int16)
        assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum() > 1000  # data in colour, not only grey axes and text
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and len(list(root.iter())) > 50


@pytest.mark.parametrize("kind", KINDS)
def test_each_chart_renders(with_inputs, tmp_path, kind):
    store, _, eid = with_inputs
    paths = plot(eid, kind, out=tmp_path / "charts", store=store)
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.is_file() for p in paths)
    assert paths[0].stem == (kind if kind in ("diagrams", "entropy", "drift") else f"{kind}-plots")
    _check_image(*paths)
    assert not [p for p in (tmp_path / "charts").iterdir() if p.name.endswith(".tmp")]
    if kind in ("transitions", "stays"):  # computed and stored when missing
        assert "plots" in list_results(Store(store).experiment(eid), "sequences")


@pytest.mark.parametrize("kind, command", [("drift", "panicflow analyse drift"), ("clusters", "panicflow analyse cluster"),
                                           ("map", "panicflow analyse cluster"), ("stays", "panicflow analyse cluster")])
def test_missing_input_names_the_command(with_inputs, tmp_path, capsys, kind, command):
    _, bare, eid = with_inputs
    with pytest.raises(UserError, match=command):
        plot(eid, kind, out=tmp_path, store=bare)
    assert main(["plot", eid, kind, "--out", str(tmp_path), "--store", bare]) == 2
    err = capsys.readouterr().err.strip()
    assert command in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli(with_inputs, tmp_path, capsys):
    store, _, eid = with_inputs
    assert main(["plot", eid, "map", "--clustering", "plots", "--out", str(tmp_path), "--store", store]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "map-plots.png"), str(tmp_path / "map-plots.svg")]
    assert main(["plot", eid, "histogram", "--store", store]) == 2
    assert "choose one of diagrams" in capsys.readouterr().err
