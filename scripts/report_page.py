"""The report page of a dummy experiment, measured in Chromium, and its screenshots (docs/visual.md, "The report page").

    .venv/bin/python scripts/report_page.py [--seeds 25] [--prompts 4] [--steps 60] [--screenshots docs/images]
    .venv/bin/python scripts/report_page.py --experiment ID --store S     (an existing experiment)

Runs one experiment of the CPU dummy models (2 networks x seeds x prompts runs, the first 10 seeds
fixed, the rest unseeded) with a DummyText clustering into a temporary store, writes its report
(charts drawn), and prints the page's size, how long it took, and in Debian's Chromium
(/usr/bin/chromium) the page's height at 1280 px and its width at a 390 px viewport. With
--screenshots DIR it saves report-desktop.png (1280 x 900, the runs table filtered and sorted) and
report-phone.png (390 x 844, the viewer on a run beyond the first 12), palette PNGs of a few
hundred KB.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def make_experiment(store: str, seeds: int, prompts: int, steps: int) -> str:
    import panicflow
    from distributed import Client, LocalCluster

    from panicflow.analysis import clustering

    words = ["a red balloon over the sea", "an old lighthouse at night", "a cat asleep on a long windowsill", "a blue door"]
    cfg = {"name": "report-demo", "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]],
           "seeds": list(range(1, min(seeds, 10) + 1)) + [-1] * max(0, seeds - 10),
           "prompts": [words[i] if i < len(words) else f"prompt number {i}" for i in range(prompts)],
           "embedding_models": ["DummyText"], "max_length": steps}
    eid = panicflow.run_experiment(cfg, store=store, workers=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, Client(lc) as c:
        clustering.cluster([eid], "DummyText", store=store, client=c, min_cluster_size=5, reduce="pca:4")
    return eid


def save_small(png: bytes, path: str) -> None:
    """A palette PNG (256 colours): the dummy pictures are flat colours, so it looks the same at a fraction of the bytes."""
    import io

    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=25)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--experiment", help="Report this experiment of --store instead of running one.")
    ap.add_argument("--store")
    ap.add_argument("--screenshots", help="Folder for report-desktop.png and report-phone.png.")
    a = ap.parse_args()
    os.environ.setdefault("PANICFLOW_TEST_MODELS", "1")
    tmp = tempfile.mkdtemp(prefix="panicflow-report-page-")
    store, eid = a.store or os.path.join(tmp, "store"), a.experiment
    if eid is None:
        eid = make_experiment(store, a.seeds, a.prompts, a.steps)
    from panicflow.visual import report

    out = os.path.join(tmp, "report.html")
    t = time.monotonic()
    report.write_report(eid, out, store)
    print(json.dumps({"experiment": eid, "seconds": round(time.monotonic() - t, 1), "bytes": os.path.getsize(out)}))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        for width in (1280, 390):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(f"file://{out}")
            print(json.dumps({"viewport": width, "height": page.evaluate("document.documentElement.scrollHeight"),
                              "scroll_width": page.evaluate("document.documentElement.scrollWidth"),
                              "viewer_runs": page.locator("#viewer-run option").count()}))
            page.close()
        if a.screenshots:
            os.makedirs(a.screenshots, exist_ok=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"file://{out}")
            page.fill("#f-text", "lighthouse")
            page.click('table.runs button.sort[data-sort="seed"]')
            page.mouse.move(0, 0)  # no row under the pointer (highlighted)
            page.evaluate("document.getElementById('runs').scrollIntoView()")
            save_small(page.screenshot(), os.path.join(a.screenshots, "report-desktop.png"))
            page.close()
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(f"file://{out}")
            run = page.eval_on_selector_all("#viewer-run option", "o => Number(o[Math.min(137, o.length - 1)].value)")
            page.goto(f"file://{out}#run-{run}")
            page.locator("#viewer-slider").fill("5")
            save_small(page.screenshot(), os.path.join(a.screenshots, "report-phone.png"))
            page.close()
        browser.close()
    print(f"files under {tmp}")


if __name__ == "__main__":
    main()
