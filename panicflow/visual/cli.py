"""`panicflow export video|timeline|images|gallery` and `panicflow report`.

``register(app, export_app)`` adds them to panicflow/cli.py's app and its ``export`` group.
Each command calls the Python function of the same name in panicflow.visual; paths written go
to stdout (a JSON list with --json), a progress bar to stderr once the work takes a few seconds.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import typer

StoreOpt = typer.Option(None, "--store", help="Store folder or fsspec URL (default: $PANICFLOW_STORE or ./panicflow-store)")
JsonOpt = typer.Option(False, "--json", help="Print the written paths as JSON on stdout.")
RunsOpt = typer.Option(None, "--runs", help="Runs to show, e.g. 0,3,7-9 (default: every finished run).")


def _store(store: Optional[str]) -> str:
    from ..store import default_location

    return store or default_location()


class DelayedBar:
    """A rich progress bar on stderr that appears only once the work has run ``delay_s`` seconds;
    called with (done, total)."""

    def __init__(self, label: str, delay_s: float = 2.0) -> None:
        self.label, self.delay_s, self.t0 = label, delay_s, time.monotonic()
        self.progress = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            if time.monotonic() - self.t0 < self.delay_s:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=total)
        self.progress.update(self.task, completed=done, total=total)

    def __enter__(self) -> "DelayedBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print(paths: list[str], as_json: bool) -> None:
    print(json.dumps(paths) if as_json else "\n".join(paths))


def video_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    out: Optional[str] = typer.Option(None, "--out", help="Video file, .mp4 .mov or .mkv (default: mosaic-ID.mp4)."),
    fps: float = typer.Option(2.0, "--fps", help="Images per second."),
    resolution: str = typer.Option("hd", "--resolution", help="hd (1920x1080), 4k, 8k or WIDTHxHEIGHT."),
    runs: Optional[str] = RunsOpt,
    codec: str = typer.Option("h264", "--codec", help="h264 (plays everywhere) or h265 (smaller files)."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """The mosaic video: prompts as rows, networks as columns, each cell one run's images with their captions."""
    from .video import export_video

    with DelayedBar("video frames") as bar:
        path = export_video(experiment_id, out or f"mosaic-{experiment_id}.mp4", store=_store(store), runs=runs, fps=fps,
                            resolution=resolution, codec=codec, progress=bar)
    _print([path], as_json)


def timeline_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    runs: Optional[str] = typer.Option(None, "--runs", help="Runs to draw, e.g. 0,3,7-9 (required without --figure; with it, default every finished run)."),
    figure: bool = typer.Option(False, "--figure", help="One image of all the runs instead: rows are runs grouped by prompt, columns networks."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the images, one per run (default: timelines-ID); with --figure the image file (default: timeline-ID.FORMAT)."),
    steps: int = typer.Option(8, "--steps", help="Images per timeline, evenly spaced, first and last included."),
    tile: int = typer.Option(256, "--tile", help="Image size in pixels (with --figure, smaller when the figure would pass 16,383 px or 50 Mpx)."),
    fmt: str = typer.Option("png", "--format", help="png, jpg or webp (with --figure and --out, the suffix of --out decides)."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """One image per run: a row of evenly spaced steps with the captions between them; or, with --figure, every run in one image."""
    from ..errors import UserError
    from .timeline import export_timeline, export_timeline_figure

    if figure:
        # a flag of this command, not a command of its own: the figure picks each run's pictures as the per-run
        # timelines do, with the same --runs, --steps and --tile
        if out is None and fmt not in ("png", "jpg", "webp"):
            raise UserError(f"--format: choose png, jpg or webp, not {fmt!r}")
        with DelayedBar("runs drawn") as bar:
            path = export_timeline_figure(experiment_id, out or f"timeline-{experiment_id}.{fmt}", runs, store=_store(store),
                                          steps=steps, tile=tile, progress=bar, note=lambda text: typer.echo(f"note: {text}", err=True))
        _print([path], as_json)
        return
    with DelayedBar("timelines") as bar:
        paths = export_timeline(experiment_id, out or f"timelines-{experiment_id}", runs, store=_store(store), steps=steps,
                                tile=tile, fmt=fmt, progress=bar)
    _print(paths, as_json)


def images_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the images and index.csv (default: images-ID)."),
    runs: Optional[str] = RunsOpt,
    fmt: str = typer.Option("webp", "--format", help="webp (the stored lossless bytes, as they are), png or jpg."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Every image of the chosen runs as files named by run and step, with index.csv (run, step, model, seed, caption, hash, file)."""
    from .images import export_images

    with DelayedBar("images") as bar:
        path = export_images(experiment_id, out or f"images-{experiment_id}", runs, store=_store(store), fmt=fmt, progress=bar)
    _print([path], as_json)


def gallery_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    model: str = typer.Option(..., "--model", help="Embedding model of the clustering."),
    clustering: Optional[str] = typer.Option(None, "--clustering", help="Name of the clustering (default: the newest of --model)."),
    out: Optional[str] = typer.Option(None, "--out", help="Image file, .png .jpg or .webp (default: gallery-ID-MODEL.png)."),
    examples: int = typer.Option(8, "--examples", help="Images per cluster, the medoid included."),
    tile: int = typer.Option(160, "--tile", help="Image size in pixels."),
    limit: int = typer.Option(24, "--limit", help="The N largest clusters (0: every one, as one tall image)."),
    seed: int = typer.Option(0, "--seed", help="Which random examples are drawn."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """Example images per cluster of a stored clustering, the medoid first with its caption as the label."""
    from .gallery import export_gallery

    with DelayedBar("runs scanned") as bar:
        path = export_gallery(experiment_id, out or f"gallery-{experiment_id}-{model}.png", model, clustering,
                              store=_store(store), examples=examples, tile=tile, limit=limit, seed=seed, progress=bar)
    _print([path], as_json)


def report_cmd(
    experiment_id: str = typer.Argument(..., help="Experiment id (or a unique prefix)."),
    out: Optional[str] = typer.Option(None, "--out", help="HTML file (default: report-ID.html)."),
    serve: bool = typer.Option(False, "--serve", help="Serve the page on 127.0.0.1 instead, live while the experiment runs."),
    port: int = typer.Option(8765, "--port", help="Port of --serve (0: any free port)."),
    charts: Optional[str] = typer.Option(None, "--charts", help="Folder of PNG/JPEG/SVG charts to include (e.g. from `panicflow plot`)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Without --charts: draw the `panicflow plot` charts that only read the store."),
    max_runs: int = typer.Option(200, "--max-runs", help="Rows of the runs table."),
    viewer_runs: Optional[int] = typer.Option(None, "--viewer-runs", help="Only the first N finished runs in the written page's viewer (default: every run of the table)."),
    viewer_frames: int = typer.Option(120, "--viewer-frames", help="At most N pictures per run in the written page's viewer, evenly spaced (fewer when --viewer-mib demands)."),
    viewer_mib: float = typer.Option(32.0, "--viewer-mib", help="MiB the written page's viewer images may take, as embedded: runs get fewer and smaller pictures to fit."),
    store: Optional[str] = StoreOpt, as_json: bool = JsonOpt,
) -> None:
    """One self-contained HTML page: config, provenance, progress, charts, runs with thumbnails, a run viewer."""
    from .report import serve_report, write_report

    if serve:
        server = serve_report(experiment_id, _store(store), port, charts=charts, plots=plots, max_runs=max_runs)
        typer.echo(f"panicflow report of {server.experiment_id}: {server.url} (Ctrl-C stops)", err=True)
        print(json.dumps({"url": server.url}) if as_json else server.url, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        return
    with DelayedBar("runs") as bar:
        path = write_report(experiment_id, out or f"report-{experiment_id}.html", _store(store), charts=charts, plots=plots, max_runs=max_runs,
                            viewer_runs=viewer_runs, viewer_frames=viewer_frames, viewer_mib=viewer_mib, progress=bar)
    _print([path], as_json)


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    for name, cmd in (("video", video_cmd), ("timeline", timeline_cmd), ("images", images_cmd), ("gallery", gallery_cmd)):
        export_app.command(name)(cmd)
    app.command("report")(report_cmd)
