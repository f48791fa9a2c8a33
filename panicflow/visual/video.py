"""The mosaic video: every chosen run in one frame, advancing one image per frame.

Layout (docs/visual.md): prompts are rows and networks columns, in config order; the runs
of one (prompt, network) pair (its seeds) form a block of cells, laid out in the number of
columns that makes the cells largest at the requested resolution, so the grid fills the
frame whatever the counts (blocks with fewer runs leave their last cells empty). A cell is
the run's current image with its caption (the text written of it) underneath; a run that
has no more images keeps its last one, its caption greyed. A cell of at least
``LABEL_MIN_TILE`` pixels is labelled on its image: run and seed at the top left, the step of
the picture shown at the bottom left (a frame's cells are one picture index, not one step:
runs of other networks, and ended runs, are at other steps). Prompt captions run down the
left, network captions across the top, the step of the running runs' pictures top left, a
progress strip along the bottom.

Frames are drawn one at a time and piped as raw RGB into ffmpeg (the binary imageio-ffmpeg
ships, or a system one), so memory holds one frame, one tile per cell and a block of steps
per run, however long the runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError
from .frames import draw_text, fit_tile, font, line_height
from .source import Picture, RunInfo, RunSelection, Source

RESOLUTIONS = {"hd": (1920, 1080), "4k": (3840, 2160), "8k": (7680, 4320)}
CODECS = {"h264": ("libx264", ["-tag:v", "avc1"]), "h265": ("libx265", ["-tag:v", "hvc1"])}
CONTAINERS = (".mp4", ".mov", ".mkv")
CAPTION_MIN_TILE = 96  # below this a caption would be unreadable: the cells get the room instead
LABEL_MIN_TILE = 72  # below this "run 12 · seed 3" would cover most of the image's width: the frame's counter gives the step
# Tagged BT.709 (primaries, transfer and matrix) in the frames themselves, and converted with that matrix explicitly:
# -color_primaries/-color_trc alone left both "unknown" in the stream with ffmpeg 9 (the frames' own unset values win), and an
# older ffmpeg's implicit RGB -> YUV conversion used the BT.601 matrix whatever the tag said (red cells drawn orange-ish).
COLOUR_FILTER = ("scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
                 "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv")

BACKGROUND = (0, 0, 0)
LABEL = (235, 235, 235)
CAPTION = (200, 200, 200)
CAPTION_ENDED = (100, 100, 100)
STRIP = (45, 45, 45)
STRIP_FILL = (230, 230, 230)
CELL_LABEL_BOX = (0, 0, 0)  # opaque: legible over any picture

Progress = Callable[[int, int], None]


def parse_resolution(resolution: str) -> tuple[int, int]:
    """``hd``, ``4k``, ``8k`` or ``WIDTHxHEIGHT`` (even numbers, at least 64x64)."""
    key = resolution.strip().lower()
    if key in RESOLUTIONS:
        return RESOLUTIONS[key]
    try:
        w, h = (int(v) for v in key.split("x"))
    except ValueError:
        raise UserError(f"--resolution: choose hd, 4k, 8k or WIDTHxHEIGHT (e.g. 1280x720), not {resolution!r}") from None
    if w < 64 or h < 64 or w > 8192 or h > 8192 or w % 2 or h % 2:
        raise UserError(f"--resolution: {w}x{h} is not allowed; width and height must be even, from 64 to 8192")
    return w, h


@dataclass
class Layout:
    width: int
    height: int
    tile: int
    caption_h: int
    cells: dict[int, tuple[int, int]]  # run -> top-left corner of its tile
    prompt_boxes: list[tuple[str, tuple[int, int, int, int]]]
    network_boxes: list[tuple[str, tuple[int, int, int, int]]]
    counter_box: tuple[int, int, int, int]
    strip_h: int
    label_size: int
    caption_size: int = field(init=False)
    cell_label_size: int = field(init=False)  # 0: cells too small to label

    def __post_init__(self) -> None:
        self.caption_size = max(7, round(self.tile * 0.075))
        self.cell_label_size = max(8, round(self.tile * 0.06)) if self.tile >= LABEL_MIN_TILE else 0

    def cell_label_boxes(self, run: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """(left, top, width, height) of the run's two label bands, the run at the top of its image, the step at the bottom
        (a label is as wide as its text, at most this)."""
        x, y = self.cells[run]
        h = line_height(font(self.cell_label_size)) + 2 * self.cell_label_pad
        return (x, y, self.tile, h), (x, y + self.tile - h, self.tile, h)

    @property
    def cell_label_pad(self) -> int:
        return max(1, self.cell_label_size // 4)


def layout(runs: list[RunInfo], width: int, height: int) -> Layout:
    """Where every cell and caption goes in a ``width`` x ``height`` frame."""
    prompts = list(dict.fromkeys(r.prompt for r in runs))
    networks = list(dict.fromkeys(r.network for r in runs))
    blocks: dict[tuple[int, int], list[RunInfo]] = {}
    for r in runs:
        blocks.setdefault((prompts.index(r.prompt), networks.index(r.network)), []).append(r)
    per_block = max(len(b) for b in blocks.values())
    n_p, n_n = len(prompts), len(networks)

    label_size = max(9, height // 45)
    header_h = int(line_height(font(label_size)) * 2.2)
    strip_h = max(4, height // 90)
    label_w = max(48, int(width * 0.12))
    margin = max(2, height // 120)
    gap = max(2, int(min(width, height) * 0.012))  # between blocks
    pad = max(1, gap // 4)  # between the cells of a block
    area_w = width - label_w - 2 * margin
    area_h = height - header_h - strip_h - 2 * margin

    def best(caption_ratio: float) -> tuple[int, int]:
        options = []
        for cols in range(1, per_block + 1):
            rows = math.ceil(per_block / cols)
            tw = (area_w - (n_n - 1) * gap - n_n * (cols - 1) * pad) / (n_n * cols)
            th = (area_h - (n_p - 1) * gap - n_p * (rows - 1) * pad) / (n_p * rows * (1 + caption_ratio))
            options.append((int(min(tw, th)), -rows, cols))
        tile, _, cols = max(options)
        return tile, cols

    caption_ratio = 0.22
    tile, cols = best(caption_ratio)
    if tile < CAPTION_MIN_TILE:
        caption_ratio = 0.0
        tile, cols = best(0.0)
    if tile < 4:
        raise UserError(f"--resolution: {width}x{height} is too small for {len(runs)} runs; choose a larger one or fewer --runs")
    caption_h = int(tile * caption_ratio)
    rows = math.ceil(per_block / cols)
    block_w = cols * tile + (cols - 1) * pad
    block_h = rows * (tile + caption_h) + (rows - 1) * pad
    grid_w = n_n * block_w + (n_n - 1) * gap
    grid_h = n_p * block_h + (n_p - 1) * gap
    x0 = label_w + margin + (area_w - grid_w) // 2
    y0 = header_h + margin + (area_h - grid_h) // 2

    cells = {}
    for (p, n), members in blocks.items():
        bx, by = x0 + n * (block_w + gap), y0 + p * (block_h + gap)
        for i, r in enumerate(members):
            cells[r.run] = (bx + (i % cols) * (tile + pad), by + (i // cols) * (tile + caption_h + pad))
    prompt_boxes = [(prompt, (margin, y0 + p * (block_h + gap), x0 - 2 * margin, block_h)) for p, prompt in enumerate(prompts)]
    network_boxes = [(" → ".join(net), (x0 + n * (block_w + gap), margin, block_w, header_h - margin)) for n, net in enumerate(networks)]
    return Layout(width, height, tile, caption_h, cells, prompt_boxes, network_boxes,
                  counter_box=(margin, margin, label_w - margin, header_h - margin), strip_h=strip_h, label_size=label_size)


class _Cell:
    """One run's cell: its pictures, streamed, and the tile drawn for the current one."""

    def __init__(self, source: Source, info: RunInfo, lay: Layout) -> None:
        self.source, self.info, self.lay = source, info, lay
        self.pictures: Iterator[Picture] = source.pictures(info)
        self.current: Picture | None = None
        self.ended = False
        self._key: tuple | None = None
        self._tile: Image.Image | None = None

    def advance(self) -> None:
        nxt = next(self.pictures, None)
        if nxt is None:
            self.ended = True
        else:
            self.current = nxt

    def tile(self) -> Image.Image:
        key = (self.current.hash if self.current else None, self.ended)
        if key != self._key:  # a run standing still (a loop's repeats, or ended) is drawn once
            self._key, self._tile = key, self._draw()
        return self._tile

    def _draw(self) -> Image.Image:
        lay = self.lay
        cell = Image.new("RGB", (lay.tile, lay.tile + lay.caption_h), BACKGROUND)
        draw = ImageDraw.Draw(cell)
        if self.current is None:
            draw_text(draw, (0, 0, lay.tile, lay.tile), "no images", lay.caption_size, CAPTION_ENDED)
            return cell
        cell.paste(fit_tile(self.source.image(self.current.hash), lay.tile, BACKGROUND), (0, 0))
        if lay.cell_label_size:  # the run's label is part of the cached tile; the step's is drawn on each frame
            top, _ = lay.cell_label_boxes(self.info.run)
            draw_cell_label(draw, lay, (0, 0, top[2], top[3]), run_label(self.info))
        if lay.caption_h:
            colour = CAPTION_ENDED if self.ended else CAPTION
            draw_text(draw, (2, lay.tile + 1, lay.tile - 4, lay.caption_h - 2), self.current.caption,
                      lay.caption_size, colour, min_size=7)
        return cell


def run_label(info: RunInfo) -> str:
    return f"run {info.run} · " + ("unseeded" if info.seed == -1 else f"seed {info.seed}")


def step_label(picture: Picture, ended: bool) -> str:
    return f"step {picture.step}" + (" · ended" if ended else "")


def draw_cell_label(draw: ImageDraw.ImageDraw, lay: Layout, box: tuple[int, int, int, int], text: str) -> None:
    """A band as wide as ``text`` (at most the cell) at ``box``, the text light on black."""
    x, y, w, h = box
    pad, size = lay.cell_label_pad, lay.cell_label_size
    w = min(w, int(font(size).getlength(text)) + 2 * pad + 1)
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=CELL_LABEL_BOX)
    draw_text(draw, (x + pad, y + pad, w - 2 * pad, h - 2 * pad), text, size, LABEL, align="left", min_size=size)


def cell_label_image(lay: Layout, text: str) -> Image.Image:
    """The band of ``draw_cell_label`` as an image of its own, to paste (drawing the text per cell cost 20% of a frame)."""
    _, h = lay.cell_label_boxes(next(iter(lay.cells)))[1][2:]
    w = min(lay.tile, int(font(lay.cell_label_size).getlength(text)) + 2 * lay.cell_label_pad + 1)
    image = Image.new("RGB", (w, h), CELL_LABEL_BOX)
    draw_cell_label(ImageDraw.Draw(image), lay, (0, 0, w, h), text)
    return image


def counter_lines(i: int, n_frames: int, steps: list[int]) -> tuple[str, str]:
    """The top-left corner: the step of the pictures of the runs still going (one value when their networks have equally
    many models per picture), and under it which picture of the video it is."""
    lo, hi = min(steps), max(steps)
    return (f"step {lo}" if lo == hi else f"steps {lo}–{hi}"), f"picture {i + 1} / {n_frames}"


def draw_counter(draw: ImageDraw.ImageDraw, lay: Layout, lines: tuple[str, str]) -> None:
    x, y, w, h = lay.counter_box
    for k, (text, bold) in enumerate(zip(lines, (True, False))):  # a line each: never "20" wrapped alone
        draw_text(draw, (x, y + k * h // 2, w, h // 2), text, lay.label_size * 0.8, CAPTION, bold=bold, align="left", min_size=7)


def _base(lay: Layout) -> Image.Image:
    frame = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    draw = ImageDraw.Draw(frame)
    for text, box in lay.prompt_boxes:
        draw_text(draw, box, text, lay.label_size, LABEL, min_size=7)
    for text, box in lay.network_boxes:
        draw_text(draw, box, text, lay.label_size, LABEL, bold=True, min_size=7)
    draw.rectangle([0, lay.height - lay.strip_h, lay.width, lay.height], fill=STRIP)
    return frame


def frames(source: Source, runs: list[RunInfo], width: int, height: int) -> tuple[int, Iterator[Image.Image]]:
    """(number of frames, the frames one by one): frame i shows the i-th image of every run."""
    lay = layout(runs, width, height)
    n_frames = max(source.picture_count(r) for r in runs)
    if n_frames == 0:
        raise UserError("video: the chosen runs have no images")

    def generate() -> Iterator[Image.Image]:
        base = _base(lay)
        cells = [_Cell(source, r, lay) for r in runs]
        for i in range(n_frames):
            frame = base.copy()
            draw = ImageDraw.Draw(frame)
            stamps: dict[str, Image.Image] = {}  # this frame's step labels: the running cells mostly share one
            for cell in cells:
                cell.advance()
                frame.paste(cell.tile(), lay.cells[cell.info.run])
                if lay.cell_label_size and cell.current is not None:
                    text = step_label(cell.current, cell.ended)
                    if text not in stamps:
                        stamps[text] = cell_label_image(lay, text)
                    x, y, _, _ = lay.cell_label_boxes(cell.info.run)[1]
                    frame.paste(stamps[text], (x, y))
            fill = round(lay.width * (i + 1) / n_frames)
            draw.rectangle([0, lay.height - lay.strip_h, fill - 1, lay.height], fill=STRIP_FILL)
            going = [c.current.step for c in cells if not c.ended and c.current is not None]  # never empty: the longest run goes on
            draw_counter(draw, lay, counter_lines(i, n_frames, going))
            yield frame

    return n_frames, generate()


def ffmpeg_exe() -> str:
    """imageio-ffmpeg's binary ($IMAGEIO_FFMPEG_EXE, the bundled one, then ffmpeg on the PATH)."""
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        raise UserError("video: no ffmpeg found; reinstall imageio-ffmpeg, or install ffmpeg (apt-get install ffmpeg)") from None


def export_video(
    experiment_id: str,
    out: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    runs: RunSelection = None,
    fps: float = 2.0,
    resolution: str = "hd",
    codec: str = "h264",
    crf: int = 20,
    progress: Progress | None = None,
) -> str:
    """Write the mosaic video of ``runs`` (default: every finished run) to ``out``; returns its path.

    ``resolution``: hd (1920x1080), 4k, 8k or WIDTHxHEIGHT; ``codec``: h264 (plays everywhere)
    or h265; ``out`` ends in .mp4, .mov or .mkv. ``progress(done, total)`` is called per frame.
    The file appears only when complete (written under a temporary name, then renamed).
    """
    import imageio_ffmpeg

    out = Path(out)
    if out.suffix.lower() not in CONTAINERS:
        raise UserError(f"--out: the video is written as {', '.join(CONTAINERS)}; {str(out)!r} has another suffix")
    if codec not in CODECS:
        raise UserError(f"--codec: choose {' or '.join(CODECS)}, not {codec!r}")
    if not 0 < fps <= 120:
        raise UserError(f"--fps: must be above 0 and at most 120 (got {fps})")
    width, height = parse_resolution(resolution)
    source = Source(experiment_id, store)
    chosen = source.run_info(source.select(runs))
    n_frames, stream = frames(source, chosen, width, height)
    ffmpeg_exe()  # a clear error before anything is drawn
    encoder, tag = CODECS[codec]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (width, height), fps=fps, codec=encoder, quality=None, macro_block_size=2, pix_fmt_out="yuv420p", ffmpeg_log_level="error",
        output_params=["-vf", COLOUR_FILTER, "-crf", str(crf), "-preset", "medium", *tag, "-movflags", "+faststart",
                       "-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709"],
    )
    try:
        writer.send(None)
        for i, frame in enumerate(stream):
            writer.send(np.asarray(frame, dtype=np.uint8).tobytes())
            if progress:
                progress(i + 1, n_frames)
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return str(out)
