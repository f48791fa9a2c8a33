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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from ..errors import UserError
from .frames import draw_text, fit_tile, font, line_height, save_image
from .source import Picture, RunInfo, RunSelection, Source

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
CARD = (242, 242, 242)


def spaced(n: int, k: int) -> list[int]:
    """k evenly spaced indices of n items (all of them when n <= k), first and last included."""
    if n <= k:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def chosen_pictures(source: Source, info: RunInfo, k: int) -> list[Picture]:
    wanted = set(spaced(source.picture_count(info), k))
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
        raise UserError("--runs: name the runs to draw, e.g. --runs 0,3,7-9")
    if steps < 1:
        raise UserError(f"--steps: must be at least 1 (got {steps})")
    if not 32 <= tile <= 2048:
        raise UserError(f"--tile: must be from 32 to 2048 pixels (got {tile})")
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
