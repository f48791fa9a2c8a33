"""Drawing with Pillow: fonts, wrapped text, image tiles, thumbnails and image files.

The font is DejaVu Sans as matplotlib ships it (a dependency), never a system path,
so every machine draws the same pixels and covers Latin, Greek and Cyrillic text.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError

Box = tuple[int, int, int, int]  # left, top, width, height
Colour = tuple[int, int, int]

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), max(1, int(size)))


def line_height(f: ImageFont.FreeTypeFont) -> int:
    ascent, descent = f.getmetrics()
    return int((ascent + descent) * 1.1)


def wrap(text: str, f: ImageFont.FreeTypeFont, width: int, max_lines: int) -> tuple[list[str], bool]:
    """Greedy word wrap to ``width`` pixels (a word wider than a line is broken), and whether text
    was left over, in which case the last kept line ends with an ellipsis."""
    words = " ".join(text.split()).split(" ") if text.strip() else []
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if f.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while f.getlength(word) > width and len(word) > 1:  # a word longer than a line
            cut = max(1, _fitting_prefix(word, f, width))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if len(lines) <= max_lines:
        return lines, False
    lines = lines[:max_lines]
    lines[-1] = _ellipsized(lines[-1], f, width)
    return lines, True


def _fitting_prefix(word: str, f: ImageFont.FreeTypeFont, width: int) -> int:
    lo, hi = 0, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if f.getlength(word[:mid]) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _ellipsized(line: str, f: ImageFont.FreeTypeFont, width: int) -> str:
    while line and f.getlength(line + "…") > width:
        line = line[:-1]
    return line + "…"


def draw_text(draw: ImageDraw.ImageDraw, box: Box, text: str, size: int, colour: Colour, *, bold: bool = False,
              align: str = "center", valign: str = "center", min_size: int = 8) -> None:
    """``text`` wrapped into ``box``, shrinking the font (down to ``min_size``) until it fits;
    what still does not fit is cut with an ellipsis."""
    x, y, w, h = box
    if w <= 2 or h <= 2 or not text:
        return
    size = max(1, int(size))
    while True:
        f = font(size, bold)
        lh = line_height(f)
        lines, cut = wrap(text, f, w, max(1, h // lh))
        if not cut or size <= min_size:
            break
        size = max(min_size, int(size * 0.85))
    total = len(lines) * lh
    top = y + {"top": 0, "center": (h - total) // 2, "bottom": h - total}[valign]
    for i, line in enumerate(lines):
        lw = f.getlength(line)
        left = x + {"left": 0, "center": (w - lw) / 2, "right": w - lw}[align]
        draw.text((left, top + i * lh), line, font=f, fill=colour)


def fit_tile(image: Image.Image, size: int, background: Colour = (0, 0, 0)) -> Image.Image:
    """``image`` scaled to fit a ``size`` x ``size`` square, centred on ``background``."""
    tile = Image.new("RGB", (size, size), background)
    if image.mode == "RGBA":
        flat = Image.new("RGB", image.size, background)
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    scale = size / max(image.width, image.height)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap: a cheap box reduction first, then Lanczos over the last factor of 3 (1024 px images to small tiles)
    scaled = image.convert("RGB").resize(shape, Image.Resampling.LANCZOS, reducing_gap=3.0 if scale < 1 else None)
    tile.paste(scaled, ((size - scaled.width) // 2, (size - scaled.height) // 2))
    return tile


def thumbnail_bytes(image: Image.Image, size: int, quality: int = 85) -> bytes:
    """A JPEG of ``image`` with its longest side at most ``size``, for pages (JPEG: encoded
    ten times faster than a lossy WEBP, and a page holds thousands)."""
    small = image.convert("RGB")
    small.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)  # never enlarges
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_format(path: str | os.PathLike, what: str) -> str:
    """The Pillow format for an output file, from its suffix (a UserError for any other)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"--out: {what} is written as {', '.join(IMAGE_SUFFIXES)}; {str(path)!r} has another suffix")
    return IMAGE_SUFFIXES[suffix]


def save_image(image: Image.Image, path: str | os.PathLike) -> str:
    """Save atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    fmt = image_format(path, "an image")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    options = {"quality": 92} if fmt in ("JPEG", "WEBP") else {"optimize": False}
    (image if image.mode == "RGB" else image.convert("RGB")).save(tmp, format=fmt, **options)  # convert copies: a 50 Mpx figure twice
    os.replace(tmp, path)
    return str(path)
