"""The report page in a real headless Chromium (Debian's, at /usr/bin/chromium, driven by Playwright; nothing is
downloaded): it loads without console errors or requests beyond itself, the run viewer steps on a click and on the
right arrow key, a screenshot is not blank, and the served page shows progress as the status endpoint changes.
Issue 22 items 4-6: every run in the viewer within its byte budget (its pictures checked by their colour), the
table's filters, sorting and links, no sideways scroll at 390 px, and thumbnails in a printed full-page screenshot."""

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


# ---------------------------------------------------------------- issue 22 items 4-6
# The dummy models draw solid colours: a picture's mean colour says which one the page shows.


@pytest.fixture(scope="module")
def clustered(analysis_experiment, client, tmp_path_factory):
    """A copy of the analysis experiment holding exactly one clustering (DummyVision: colours, several clusters), and a written page
    of it with one wide chart: (store, experiment id, clustering name, page path)."""
    import shutil

    from panicflow.analysis import clustering

    store, eid = analysis_experiment
    tmp = tmp_path_factory.mktemp("report-items")
    copy = str(tmp / "store")
    shutil.copytree(store, copy)
    shutil.rmtree(os.path.join(copy, "experiments", eid, "data.zarr", "analysis"), ignore_errors=True)
    name = clustering.cluster([eid], "DummyVision", store=copy, client=client, min_cluster_size=5, reduce="pca:4")
    charts = tmp / "charts"
    charts.mkdir()
    Image.new("RGB", (1200, 500), CHART_COLOUR).save(charts / "wide.png")
    out = report.write_report(eid, tmp / "r.html", copy, charts=charts, max_runs=16)
    return copy, eid, name, out


CHART_COLOUR = (200, 60, 30)


def _colour_of(store: str, digest: str) -> np.ndarray:
    import panicflow

    return np.asarray(panicflow.load_image(digest, store=store).convert("RGB")).reshape(-1, 3).mean(0)


def _colour_at(png: bytes, box: dict) -> np.ndarray:
    """The mean colour of the middle half of ``box`` (x, y, width, height) in a screenshot."""
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
    return shot[y + h // 4: y + h - h // 4, x + w // 4: x + w - w // 4].reshape(-1, 3).mean(0)


def _page_data(path) -> dict:
    import json

    text = open(path, encoding="utf-8").read()
    return json.loads(re.search(r'<script type="application/json" id="pf-data">(.*?)</script>', text, re.S).group(1))


def _visible_runs(page) -> list[int]:
    return [int(t) for t in page.locator("table.runs tbody tr:not([hidden]) td:first-child").all_inner_texts()]


def test_the_viewer_holds_every_run_within_its_budget(browser, analysis_experiment, tmp_path):
    """The viewer held 12 runs: at 200 runs 188 could not be viewed (issue 22 item 4). Now every
    finished run of the table, with as many evenly spaced pictures each as ``--viewer-mib`` allows
    (said on the page), and the run's prompt, network and seed above the picture."""
    from panicflow.visual.timeline import spaced

    store, eid = analysis_experiment
    source = report.Source(eid, store)
    infos = source.run_info(list(range(source.n_runs)))
    pictures = {i.run: list(source.pictures(i)) for i in infos}
    # generous: every picture of every run
    out = report.write_report(eid, tmp_path / "all.html", store, plots=False)
    data = _page_data(out)
    assert sorted(int(r) for r in data["viewer"]) == [i.run for i in infos]
    assert all([f["hash"] for f in data["viewer"][str(r)]] == [p.hash for p in pictures[r]] for r in pictures)
    assert "every picture of each" in open(out).read()
    # a budget of a fifth of that: fewer pictures a run, evenly spaced, and the page's images within the budget
    used = sum(len(k) + len(v) + 6 for k, v in data["images"].items() if k.startswith("v:"))
    budget = used / 5
    out = report.write_report(eid, tmp_path / "small.html", store, plots=False, viewer_mib=budget / 2**20)
    data, text = _page_data(out), open(out).read()
    held = sum(len(k) + len(v) + 6 for k, v in data["images"].items() if k.startswith("v:"))
    assert held <= budget
    k = int(re.search(r"up to (\d+) pictures of each, evenly spaced", text).group(1))
    assert 2 <= k < max(len(p) for p in pictures.values())
    for r, pics in pictures.items():  # every run, its pictures at the spaced indices
        assert [f["step"] for f in data["viewer"][str(r)]] == [pics[i].step for i in spaced(len(pics), k)], r
    # run 13 (beyond the old 12) opened by its link, #run-13: its prompt, network, seed and pictures
    run = 13
    info = next(i for i in infos if i.run == run)
    w = Watched(browser)
    w.page.goto(f"file://{out}#run-{run}")
    expect(w.page.locator("#viewer-run")).to_have_value(str(run))
    expect(w.page.locator("#viewer-info .prompt")).to_have_text(f"“{info.prompt}”")
    seed = "unseeded" if info.seed == -1 else f"seed {info.seed}"
    expect(w.page.locator("#viewer-info")).to_contain_text(f"run {run} · {info.network_label} · {seed}")
    assert w.page.locator("#viewer-run option").count() == len(infos)
    frames = data["viewer"][str(run)]
    expect(w.page.locator("#viewer-pos")).to_contain_text(f"image 1 / {len(frames)} ({len(frames)} of the run's {len(pictures[run])} pictures)")
    for i in (0, 1, len(frames) - 1):
        w.page.locator("#viewer-slider").fill(str(i))
        expect(w.page.locator("#viewer-image")).to_have_attribute("alt", f"run {run}, step {frames[i]['step']}")
        got = _colour_at(w.page.locator("#viewer-image").screenshot(), {"x": 0, "y": 0, "width": 384, "height": 384})
        assert np.abs(got - _colour_of(store, frames[i]["hash"])).max() < 8, (i, got)
    assert w.page.evaluate("document.getElementById('viewer-image').naturalWidth") <= int(re.search(r"at most (\d+) pixels", text).group(1))
    assert w.errors == []
    w.page.close()
    # --viewer-runs still holds only the first N
    data = _page_data(report.write_report(eid, tmp_path / "three.html", store, plots=False, viewer_runs=3))
    assert sorted(int(r) for r in data["viewer"]) == [0, 1, 2]


def test_the_runs_table_filters_sorts_and_links(browser, clustered):
    """No search, filter, sort or links at 200 runs (issue 22 item 5): filter by text, prompt, network,
    seed, stop reason and cluster; sort by a column; a row opens its run in the viewer, a chart opens
    larger, a cluster id leads to its gallery row."""
    from panicflow.store import Store

    store, eid, name, out = clustered
    source = report.Source(eid, store)
    infos = source.run_info(list(range(source.n_runs)))
    labels = Store(store).experiment(eid).group(read_only=True)[f"analysis/clusters/{name}/label"][:]
    w = Watched(browser)
    page = w.page
    page.goto(f"file://{out}")
    assert _visible_runs(page) == list(range(16))
    expect(page.locator("#f-count")).to_have_text("16 of 16 runs")
    page.fill("#f-text", "red circle")
    assert _visible_runs(page) == [i.run for i in infos if "red circle" in i.prompt]
    page.fill("#f-text", "")
    page.select_option("#f-prompt", "a cat")
    assert _visible_runs(page) == [i.run for i in infos if i.prompt == "a cat"]
    page.select_option("#f-prompt", "")
    page.select_option("#f-network", "DummyT2I2 → DummyI2T2")
    page.select_option("#f-seed", "unseeded")
    want = [i.run for i in infos if i.network_label == "DummyT2I2 → DummyI2T2" and i.seed == -1]
    assert _visible_runs(page) == want and len(want) == 4
    expect(page.locator("#f-count")).to_have_text("4 of 16 runs")
    page.select_option("#f-network", "")
    page.select_option("#f-seed", "")
    reason = infos[0].stop_reason
    page.select_option("#f-reason", reason)
    assert _visible_runs(page) == [i.run for i in infos if i.stop_reason == reason]
    page.select_option("#f-reason", "")
    visited = {int(c): [r for r in range(16) if (labels[r] == c).any()] for c in np.unique(labels[labels >= 0])}
    rare = min(visited, key=lambda c: (len(visited[c]), c))  # visited by the fewest runs
    page.fill("#f-cluster0", str(rare))
    want = visited[rare]
    assert _visible_runs(page) == want and 0 < len(want) < 16
    page.fill("#f-cluster0", "")
    # sort: a header's click, again for descending (ties by run number)
    page.click('table.runs button.sort[data-sort="seed"]')
    assert _visible_runs(page) == [i.run for i in sorted(infos, key=lambda i: (i.seed, i.run))]
    page.click('table.runs button.sort[data-sort="seed"]')
    assert _visible_runs(page) == [i.run for i in sorted(infos, key=lambda i: (-i.seed, i.run))]
    expect(page.locator('table.runs th[aria-sort="descending"]')).to_have_text("seed")
    page.select_option("#f-sort", "prompt")
    assert _visible_runs(page) == [i.run for i in sorted(infos, key=lambda i: (i.prompt, -i.run), reverse=True)]  # still descending
    # a row's click opens its run in the viewer
    row = page.locator("table.runs tbody tr", has=page.locator("td:first-child", has_text=re.compile(r"^14$")))
    row.locator("td.c-prompt").click()
    expect(page.locator("#viewer-run")).to_have_value("14")
    assert page.evaluate("location.hash") == "#run-14"
    expect(page.locator("#viewer-info .prompt")).to_have_text(f"“{infos[14].prompt}”")
    expect(page.locator("#viewer")).to_be_in_viewport()
    # a cluster id leads to its gallery row, opened: the medoid there is the stored medoid's picture
    link = page.locator("table.runs td.c-cluster a").first
    cid = int(link.inner_text())
    link.click()
    target = page.locator(f'.cluster[id$="-{cid}"]')
    expect(target).to_be_in_viewport()
    g = Store(store).experiment(eid).group(read_only=True)[f"analysis/clusters/{name}"]
    k = list(g["cluster_id"][:]).index(cid)
    run, step = int(g["medoid_run"][k]), int(g["medoid_step"][k])
    digest = next(d for s, d, _ in source.shown(infos[run]) if s == step)
    medoid = target.locator(".tile.medoid img")
    got = _colour_at(page.screenshot(), medoid.bounding_box())
    assert np.abs(got - _colour_of(store, digest)).max() < 8, got
    expect(target.locator(".tile.medoid")).to_contain_text(f"run {run} · step {step}")
    # a chart opens larger, and it is the chart
    chart = page.locator(".charts img").first
    chart.scroll_into_view_if_needed()
    small = chart.bounding_box()["width"]
    chart.click()
    expect(page.locator("#lightbox")).to_have_attribute("open", "")
    big = page.locator("#lightbox-image").bounding_box()
    assert big["width"] > 1.5 * small and big["width"] >= 1100, (small, big)
    assert np.abs(_colour_at(page.screenshot(), big) - CHART_COLOUR).max() < 8
    page.keyboard.press("Escape")
    expect(page.locator("#lightbox")).not_to_have_attribute("open", "")
    assert w.errors == []
    assert all(u.startswith(("file://", "data:")) for u in w.urls)
    page.close()


def test_no_sideways_scroll_at_phone_width(browser, clustered):
    """At 390 px the page scrolled sideways to 1,012 px: provenance values and the runs table
    (issue 22 item 6). The sha256s and parameters wrap, the table's rows become cards."""
    store, eid, name, out = clustered
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    page.goto(f"file://{out}")
    page.evaluate("for (const d of document.querySelectorAll('details')) d.open = true")  # the galleries too
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    widest = page.evaluate("Math.max(...[...document.querySelectorAll('body *')].filter(e => e.getClientRects().length)"
                           ".map(e => e.getBoundingClientRect().right))")
    assert widest <= 390, widest
    assert page.locator("table.runs tbody tr").first.bounding_box()["width"] <= 390
    assert "config sha256" in page.inner_text("#config")
    page.close()


def test_print_and_full_page_screenshots_show_every_thumbnail(browser, clustered):
    """Thumbnails loaded lazily, so a printed page or a full-page screenshot showed black squares
    below the first screen (issue 22 item 6): every thumbnail is its picture in a full-page
    screenshot of the print layout."""
    store, eid, name, out = clustered
    source = report.Source(eid, store)
    page = browser.new_page(viewport={"width": 1280, "height": 600})
    page.goto(f"file://{out}")
    page.emulate_media(media="print")
    assert page.evaluate("[...document.images].every(i => i.loading !== 'lazy')")
    shot = page.screenshot(full_page=True)
    boxes = page.evaluate("""[...document.querySelectorAll('table.runs tbody tr')].map(tr => {
        const r = tr.querySelectorAll('td.thumb img')[1].getBoundingClientRect();
        return {run: Number(tr.cells[0].innerText), x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; })""")
    assert len(boxes) == 16 and max(b["y"] for b in boxes) > 1500  # far below the first screen
    for b in boxes:
        last = source.last_picture(source.run_info([b["run"]])[0])
        got = _colour_at(shot, b)
        assert np.abs(got - _colour_of(store, last.hash)).max() < 8, (b["run"], got)
    assert len(page.pdf()) > 10_000  # and it prints
    page.close()
