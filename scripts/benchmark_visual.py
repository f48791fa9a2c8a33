"""Time and peak memory of the visual exports on a dummy experiment (docs/visual.md, "Measured").

    .venv/bin/python scripts/benchmark_visual.py [--seeds 8] [--prompts 4] [--steps 400] [--resolution hd]
    .venv/bin/python scripts/benchmark_visual.py --experiment ID --store S     (an existing experiment)
    ... [--exports video,images,report,timeline]                                  (which exports, default all)

Runs one experiment of the CPU dummy models (2 networks x seeds x prompts runs of up to --steps
steps) into a temporary store, then each export in a fresh process, printing its wall time and
that process's peak resident memory (ru_maxrss, after importing panicflow, which is most of it) and, for the
video, the peak of the ffmpeg process it pipes frames into (RUSAGE_CHILDREN's ru_maxrss once ffmpeg has
exited: the largest child's peak; the two run at the same time, so the video needs their sum).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
import panicflow.visual.video, panicflow.visual.images, panicflow.visual.report, panicflow.visual.timeline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
what, eid, store, out, resolution = sys.argv[1:]
t = time.monotonic()
if what == "video":
    panicflow.visual.video.export_video(eid, out + "/m.mp4", store=store, resolution=resolution)
elif what == "images":
    panicflow.visual.images.export_images(eid, out + "/images", store=store)
elif what == "timeline":  # the figure of every run
    panicflow.visual.timeline.export_timeline_figure(eid, out + "/timeline.png", store=store, note=print)
else:
    panicflow.visual.report.write_report(eid, out + "/r.html", store, plots=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # ffmpeg (and its `-version` check), waited for
result = {"export": what, "seconds": round(time.monotonic() - t, 1), "peak_rss_mib": round(peak / 1024),
          "after_import_mib": round(base / 1024)}
if what == "video":
    result["ffmpeg_peak_rss_mib"] = round(children / 1024)
print(json.dumps(result))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--resolution", default="hd")
    ap.add_argument("--experiment", help="Export this experiment of --store instead of running one.")
    ap.add_argument("--store")
    ap.add_argument("--exports", default="video,images,report,timeline")
    a = ap.parse_args()
    import panicflow

    tmp = tempfile.mkdtemp(prefix="panicflow-visual-bench-")
    store, eid = a.store or os.path.join(tmp, "store"), a.experiment
    if eid is None:
        cfg = {"name": "visual-bench", "networks": [["DummyT2I", "DummyI2T"], ["DummyT2I2", "DummyI2T2"]],
               "seeds": [-1] * a.seeds, "prompts": [f"prompt number {i}" for i in range(a.prompts)],
               "embedding_models": ["DummyText"], "max_length": a.steps}
        t = time.monotonic()
        eid = panicflow.run_experiment(cfg, store=store, workers=2)
        print(json.dumps({"experiment": eid, "seconds": round(time.monotonic() - t, 1)}))
    status = panicflow.experiment_status(eid, store=store)
    print(json.dumps({"experiment": eid, "runs": status.runs, "invocations": status.invocations}))
    for what in a.exports.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, what, eid, store, tmp, a.resolution],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip())
    print(f"files under {tmp}")


if __name__ == "__main__":
    main()
