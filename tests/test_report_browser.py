"""The report page in a real headless Chromium (Debian's, at /usr/bin/chromium, driven by Playwright; nothing is
downloaded): it loads without console errors or requests beyond itself, the run viewer steps on a click and on the
right arrow key, a screenshot is not blank, and the served page shows progress as the status endpoint changes."""

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from analysis_util import analysis_experiment  # noqa: F401
from playwright.sync_api import expect
from panicflow.visual import report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=(
    f"no Chromium at {CHROMIUM}: the report page needs a real browser; `apt-get install -y chromium` "
    "(scripts/bootstrap does it as root) to run these tests"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watched:
    """A page with its console errors, uncaught exceptions and requested URLs recorded."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.errors, self.urls = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.urls.append(r.url))


def _position(page) -> int:
    return int(re.search(r"image (\d+) /", page.inner_text("#viewer-pos")).group(1))


def _check_viewer(page):
    expect(page.locator("#viewer-pos")).to_contain_text("image 1 /")
    src = page.get_attribute("#viewer-image", "src")
    caption = page.inner_text("#viewer-caption")
    page.click("#viewer-next")
    assert _position(page) == 2 and page.get_attribute("#viewer-image", "src") != src or page.inner_text("#viewer-caption") != caption
    page.locator("body").press("ArrowRight")
    assert _position(page) == 3
    page.locator("body").press("ArrowLeft")
    assert _position(page) == 2
    page.click("#viewer-prev")
    assert _position(page) == 1 and page.is_disabled("#viewer-prev")
    assert page.evaluate("document.getElementById('viewer-image').naturalWidth") > 0  # the image decoded


def _not_blank(png: bytes) -> None:
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert shot.std() > 20, "the screenshot is (nearly) one colour"
    assert len(np.unique(shot[..., 0] << 16 | shot[..., 1] << 8 | shot[..., 2])) > 50  # colours in use


def test_written_page_in_chromium(browser, analysis_experiment, tmp_path):
    store, eid = analysis_experiment
    charts = tmp_path / "charts"
    charts.mkdir()
    Image.new("RGB", (120, 80), (30, 120, 200)).save(charts / "chart.png")
    out = report.write_report(eid, tmp_path / "r.html", store, charts=charts, max_runs=16, viewer_runs=3, viewer_frames=6)
    w = Watched(browser)
    w.page.goto(f"file://{out}")
    _check_viewer(w.page)
    # a run's "view" button opens it in the viewer
    w.page.click('button[data-run="2"]')
    expect(w.page.locator("#viewer-run")).to_have_value("2")
    expect(w.page.locator("#viewer-pos")).to_contain_text("image 1 /")
    assert _position(w.page) == 1 and w.page.locator("#viewer-slider").get_attribute("max") == "5"
    assert w.page.locator("table.runs tbody tr").count() == 16
    assert w.page.inner_text("#state") == "complete"
    # steps first (runs end in waves), then runs; the time left from scheduler/eta.py
    labels = w.page.locator("#bars > span:not(.count)").all_inner_texts()
    assert labels[:2] == ["steps (invocations)", "runs ended"], labels
    assert "time left" in w.page.inner_text("#facts") and "done" in w.page.inner_text("#facts")
    assert w.page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    _not_blank(w.page.screenshot(full_page=True))
    assert w.errors == []
    assert all(u.startswith(("file://", "data:")) for u in w.urls), [u for u in w.urls if not u.startswith("data:")]
    w.page.close()


def test_served_page_is_live(browser, analysis_experiment, monkeypatch):
    store, eid = analysis_experiment
    real = report._status
    finished = {"now": False}
    polled = []

    def status(source):  # the real numbers, but "running" with 3 runs ended until the test says otherwise
        polled.append(1)
        s = real(source)
        return s if finished["now"] else {**s, "state": "running", "runs_complete": 3, "runs_failed": 0,
                                          "invocations": s["invocations_max"] - 5, "eta_text": "about 2m 05s left"}

    monkeypatch.setattr(report, "_status", status)
    with report.serve_report(eid, store, port=0, plots=False, max_runs=16).start() as server:
        w = Watched(browser)
        w.page.goto(server.url)
        expect(w.page.locator("#updated")).to_contain_text("updated")  # polled api/status
        expect(w.page.locator("#state")).to_have_text("running")
        most = real(report.Source(eid, store))["invocations_max"]
        expect(w.page.locator("#bars .count").first).to_have_text(f"{most - 5} / {most}")  # steps first
        expect(w.page.locator("#bars .count").nth(1)).to_have_text("3 / 16")
        expect(w.page.locator("#facts")).to_contain_text("about 2m 05s left")
        finished["now"] = True
        expect(w.page.locator("#state")).to_have_text("complete", timeout=20_000)  # a later poll
        expect(w.page.locator("#bars .count").first).to_have_text(f"{most} / {most}")
        expect(w.page.locator("#bars .count").nth(1)).to_have_text("16 / 16")
        expect(w.page.locator("#reload-note")).to_have_text(re.compile(r"^13 more runs have ended"))  # than the page shows
        _check_viewer(w.page)
        w.page.select_option("#viewer-run", "7")
        expect(w.page.locator("#viewer-image")).to_have_attribute("alt", re.compile(r"^run 7, step 0$"))
        _not_blank(w.page.screenshot())
        assert w.errors == []
        assert all(u.startswith((server.url, "data:")) for u in w.urls)
        assert any(u.endswith("/api/status") for u in w.urls) and any("/api/run/7" in u for u in w.urls)
        w.page.close()
    assert len(polled) >= 3  # the page was made with one status and polled at least twice
