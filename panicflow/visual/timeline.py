"""Run timelines: one image per run, a row of evenly spaced pictures with their captions between.

```
run 3 · DummyT2I → DummyI2T · seed 7 · loop from step 12, period 4
prompt: a red balloon over the sea
 step 0        step 0 caption     step 12      ...
[image]  [caption written of it]  [image]  [caption]  ...
```

The k pictures are those at ``round(i * (n - 1) / (k - 1))`` of the run's n pictures, always
the first and the last; each is followed by the caption written of it. Pictures are streamed
in run order and only the chosen ones decoded.

The figure (``export_timeline_figure``, the earlier tool's first figure): every chosen run in one
image, runs in rows grouped by prompt (prompt at the group's left), networks in columns
(network at the top), each cell the run's k pictures as above, without captions:

```
experiment ID · 16 runs · 8 pictures each, evenly spaced
             DummyT2I → DummyI2T                 DummyT2I2 → DummyI2T2
+--------+   run 0 · seed 1 · 40 steps (...)     run 8 · seed 1 · ...
| a cat  |   [img][img][img]...                  [img][img][img]...
|        |   step 0 step 6 ...                   step 0 ...
|        |   run 2 · seed 2 ...                  run 10 · seed 2 ...
+--------+   ...
```

Row j of a prompt's group holds the j-th chosen run (by run number) of each network with that
prompt, so a row is one seed when every pair has its runs. The canvas is held whole, so its size
is capped (``MAX_SIDE``, ``MAX_PIXELS``): a figure that would be larger at ``tile`` is drawn with
the largest tile that fits, and one that does not fit at 32 px is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from ..errors import UserError
from .frames import draw_text, fit_tile, font, image_format, line_height, save_image
from .source import Picture, RunInfo, RunSelection, Source

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
CARD = (242, 242, 242)
RULE = (215, 215, 215)

# The figure is drawn on one canvas: at most 16,383 px a side (WebP's limit; PNG and JPEG allow more, viewers barely)
# and 50 Mpx (150 MB of RGB while drawn). 200 runs (4 networks x 5 prompts x 10 seeds) of 8 pictures at 256 px
# would be 9,040 x 16,086 px (145 Mpx, 436 MB); they are drawn at 148 px, 5,208 x 9,516.
MAX_SIDE = 16383
MAX_PIXELS = 50_000_000
MIN_TILE = 32


def spaced(n: int, k: int) -> list[int]:
    """k evenly spaced indices of n items (all of them when n <= k), first and last included."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def chosen_pictures(source: Source, info: RunInfo, k: int, count: int | None = None) -> list[Picture]:
    """The k evenly spaced pictures of the run (``count``: its number of pictures, when already known)."""
    wanted = set(spaced(source.picture_count(info) if count is None else count, k))
    return [p for i, p in enumerate(source.pictures(info)) if i in wanted]


def render(source: Source, info: RunInfo, pictures: list[Picture], tile: int) -> Image.Image:
    gap = max(4, tile // 16)
    title_size, small = max(10, tile // 11), max(8, tile // 16)
    head_h = 2 * line_height(font(title_size)) + gap
    label_h = line_height(font(small)) + gap // 2
    n = max(1, len(pictures))
    width = gap + n * (2 * tile + 2 * gap)
    height = gap + head_h + label_h + tile + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    line = line_height(font(title_size))
    draw_text(draw, (gap, gap, width - 2 * gap, line), f"{info.label} · {info.ending}", title_size, INK,
              bold=True, align="left")
    draw_text(draw, (gap, gap + line, width - 2 * gap, line), f"prompt: {info.prompt}", title_size, MUTED, align="left")
    y = gap + head_h
    if not pictures:
        draw_text(draw, (gap, y, width - 2 * gap, tile), "no images", title_size, MUTED)
    for i, p in enumerate(pictures):
        x = gap + i * (2 * tile + 2 * gap)
        draw_text(draw, (x, y, tile, label_h), f"step {p.step} · {p.model}", small, MUTED, align="left", valign="top")
        canvas.paste(fit_tile(source.image(p.hash), tile, BACKGROUND), (x, y + label_h))
        cx = x + tile + gap
        draw.rectangle([cx, y + label_h, cx + tile - 1, y + label_h + tile - 1], fill=CARD)
        draw_text(draw, (cx + gap, y + label_h + gap, tile - 2 * gap, tile - 2 * gap), p.caption or "(no caption)",
                  max(9, tile // 12), INK if p.caption else MUTED, min_size=8)
    return canvas


def _check(steps: int, tile: int) -> None:
    if steps < 1:
        raise UserError(f"--steps: must be at least 1 (got {steps})")
    if not 32 <= tile <= 2048:
        raise UserError(f"--tile: must be from 32 to 2048 pixels (got {tile})")


@dataclass
class FigureLayout:
    """Where everything of the figure goes, at one tile size."""

    tile: int
    width: int
    height: int
    pitch: int  # from one picture of a strip to the next
    label_h: int  # a run's heading above its strip, and the step labels under it
    title_size: int
    small: int
    title_box: tuple[int, int, int, int]
    network_boxes: list[tuple[str, tuple[int, int, int, int]]]
    prompt_boxes: list[tuple[str, tuple[int, int, int, int]]]  # the group's grey card, the prompt inside
    rules: list[int]  # y of the lines between groups
    cells: dict[int, tuple[int, int]]  # run -> top-left corner of its first picture

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def fits(self) -> bool:
        return self.width <= MAX_SIDE and self.height <= MAX_SIDE and self.pixels <= MAX_PIXELS


def figure_layout(infos: list[RunInfo], k: int, tile: int) -> FigureLayout:
    """The figure of ``infos`` with strips of ``k`` pictures of ``tile`` pixels; prompts and networks in the order
    of their first run (config order)."""
    prompts = list(dict.fromkeys(r.prompt for r in infos))
    networks = list(dict.fromkeys(r.network for r in infos))
    groups: dict[str, dict[tuple, list[RunInfo]]] = {p: {n: [] for n in networks} for p in prompts}
    for r in sorted(infos, key=lambda r: r.run):
        groups[r.prompt][r.network].append(r)
    t = tile
    gap, pad, col_gap = max(4, t // 16), max(2, t // 32), max(16, t // 4)
    title_size, small = max(10, t // 11), max(8, t // 16)
    label_h = line_height(font(small)) + 2
    title_h = line_height(font(title_size, True)) + gap
    net_h = 2 * line_height(font(title_size, True)) + gap
    label_w = max(120, round(1.5 * t))
    strip_w = k * t + (k - 1) * pad
    row_h = label_h + t + label_h + gap
    x0 = gap + label_w + gap
    width = x0 + len(networks) * strip_w + (len(networks) - 1) * col_gap + gap
    network_boxes = [(" → ".join(n), (x0 + i * (strip_w + col_gap), gap + title_h, strip_w, net_h - gap))
                     for i, n in enumerate(networks)]
    y = gap + title_h + net_h
    cells, prompt_boxes, rules = {}, [], []
    for g, prompt in enumerate(prompts):
        if g:
            rules.append(y + gap)
            y += 2 * gap + 1
        rows = max(len(members) for members in groups[prompt].values())
        prompt_boxes.append((prompt, (gap, y, label_w, rows * row_h - gap)))
        for i, n in enumerate(networks):
            for j, r in enumerate(groups[prompt][n]):
                cells[r.run] = (x0 + i * (strip_w + col_gap), y + j * row_h + label_h)
        y += rows * row_h
    height = y + gap
    return FigureLayout(t, width, height, t + pad, label_h, title_size, small, (gap, gap, width - 2 * gap, title_h - gap),
                        network_boxes, prompt_boxes, rules, cells)


def fit_figure(infos: list[RunInfo], k: int, tile: int) -> FigureLayout:
    """The layout at ``tile``, or at the largest smaller tile that keeps the figure within the caps."""
    lay = figure_layout(infos, k, tile)
    if lay.fits():
        return lay
    lo, hi = MIN_TILE, tile - 1  # the size grows with the tile: the largest that fits, by bisection
    if not figure_layout(infos, k, lo).fits():
        small = figure_layout(infos, k, lo)
        raise UserError(f"--runs: {len(infos)} runs of {k} pictures make a {small.width:,} x {small.height:,} px figure even at "
                        f"{lo} px a picture (at most {MAX_SIDE:,} px a side and {MAX_PIXELS // 1_000_000} Mpx); "
                        f"choose fewer --runs or --steps")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if figure_layout(infos, k, mid).fits():
            lo = mid
        else:
            hi = mid - 1
    return figure_layout(infos, k, lo)


def render_figure(source: Source, infos: list[RunInfo], lay: FigureLayout, pictures: Callable[[RunInfo], list[Picture]],
                  k: int, progress: Callable[[int, int], None] | None = None) -> Image.Image:
    from .video import run_label

    canvas = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    t = lay.tile
    each = "1 picture" if k == 1 else f"{k} pictures each, evenly spaced from the first to the last"
    draw_text(draw, lay.title_box, f"experiment {source.id} · {len(infos)} runs · {each}", lay.title_size, INK, bold=True,
              align="left")
    for text, box in lay.network_boxes:
        draw_text(draw, box, text, lay.title_size, INK, bold=True, valign="bottom")
    for text, (x, y, w, h) in lay.prompt_boxes:
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=CARD)
        draw_text(draw, (x + 4, y + 4, w - 8, h - 8), text, lay.title_size, INK, valign="top", min_size=8)  # beside its first row
    for y in lay.rules:
        draw.line([(lay.title_box[0], y), (lay.width - lay.title_box[0], y)], fill=RULE)
    for done, info in enumerate(sorted(infos, key=lambda r: r.run)):
        x, y = lay.cells[info.run]
        strip_w = k * t + (k - 1) * (lay.pitch - t)
        draw_text(draw, (x, y - lay.label_h, strip_w, lay.label_h), f"{run_label(info)} · {info.ending}", lay.small, MUTED,
                  align="left", min_size=lay.small)
        chosen = pictures(info)
        if not chosen:
            draw_text(draw, (x, y, strip_w, t), "no images", lay.small, MUTED)
        for i, p in enumerate(chosen):
            canvas.paste(fit_tile(source.image(p.hash), t, BACKGROUND), (x + i * lay.pitch, y))
            draw_text(draw, (x + i * lay.pitch, y + t, t, lay.label_h), f"step {p.step}", lay.small, MUTED, min_size=lay.small)
        if progress:
            progress(done + 1, len(infos))
    return canvas


def export_timeline_figure(
    experiment_id: str,
    out: str | os.PathLike,
    runs: RunSelection = None,
    *,
    store: str | os.PathLike | None = None,
    steps: int = 8,
    tile: int = 256,
    progress: Callable[[int, int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> str:
    """One image of ``runs`` (default: every finished run) at ``out`` (.png, .jpg or .webp); returns its path.

    Runs in rows grouped by prompt, networks in columns, each cell a strip of ``steps`` pictures picked as the per-run
    timeline picks them. ``tile`` is reduced when the figure would exceed ``MAX_SIDE`` / ``MAX_PIXELS``, saying so
    through ``note(text)``; ``progress(done, total)`` is called per run drawn.
    """
    _check(steps, tile)
    image_format(out, "the figure")
    source = Source(experiment_id, store)
    infos = source.run_info(source.select(runs))
    counts = {r.run: source.picture_count(r) for r in infos}
    k = max(1, min(steps, max(counts.values())))  # no wider than the longest run needs
    lay = fit_figure(infos, k, tile)
    if lay.tile < tile and note:
        big = figure_layout(infos, k, tile)
        note(f"the figure at --tile {tile} would be {big.width:,} x {big.height:,} px; drawn at {lay.tile} px a picture, "
             f"{lay.width:,} x {lay.height:,} px (at most {MAX_SIDE:,} px a side and {MAX_PIXELS // 1_000_000} Mpx)")
    image = render_figure(source, infos, lay, lambda r: chosen_pictures(source, r, k, counts[r.run]), k, progress)
    return save_image(image, out)


def export_timeline(
    experiment_id: str,
    out: str | os.PathLike,
    runs: RunSelection,
    *,
    store: str | os.PathLike | None = None,
    steps: int = 8,
    tile: int = 256,
    fmt: str = "png",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """One timeline image per run of ``runs`` into the folder ``out`` (``run-<n>.<fmt>``); returns the paths.

    ``steps``: pictures per timeline; ``tile``: their size in pixels; ``fmt``: png, jpg or webp.
    """
    if runs is None:
        raise UserError("--runs: name the runs to draw, e.g. --runs 0,3,7-9 (or --figure: every run in one image)")
    _check(steps, tile)
    if fmt not in ("png", "jpg", "webp"):
        raise UserError(f"--format: choose png, jpg or webp, not {fmt!r}")
    source = Source(experiment_id, store)
    infos = source.run_info(source.select(runs))
    folder = Path(out)
    width = max(4, len(str(source.n_runs - 1)))
    written = []
    for i, info in enumerate(infos):
        image = render(source, info, chosen_pictures(source, info, steps), tile)
        written.append(save_image(image, folder / f"run-{info.run:0{width}d}.{fmt}"))
        if progress:
            progress(i + 1, len(infos))
    return written
