"""Cluster galleries: example images of each cluster of a stored clustering, the medoid first.

One row per cluster, largest first, the ``DEFAULT_LIMIT`` largest unless asked otherwise (137
clusters made one 1,397 x 41,971 px image, 654 MiB at its peak): a heading with the cluster's
size and, as its label, the medoid's caption; then the medoid (outlined) and up to
``examples - 1`` other members, each labelled with its run and step and its caption underneath. A member is shown as the picture of its step: an image with the
caption written of it, or a caption with the image it was written from (text embedders cluster
captions), exactly as ``Source.shown`` pairs them.

Examples are distinct pictures drawn at random, the same for the same ``seed``: every member
gets the priority ``sha256(seed, image hash, caption)`` and each cluster keeps the ``k`` lowest
(a bottom-k sample), so repeats of one picture (a loop) count once. The labels are read one run
at a time and only k candidates per cluster are kept, whatever the experiment's size.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from typing import Callable

from PIL import Image, ImageDraw

from ..analysis.results import ANALYSIS, list_results
from ..errors import UserError
from .frames import draw_text, fit_tile, font, image_format, line_height, save_image
from .source import Source

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
ACCENT = (214, 90, 20)
EMPTY = (235, 235, 235)

Shown = tuple[str | None, str]  # (image hash, caption)
Example = tuple[str | None, str, int, int]  # (image hash, caption, run, step): a picture and where it is
DEFAULT_LIMIT = 24  # clusters drawn unless --limit says otherwise (0: every one)


def find_clustering(source: Source, model: str, clustering: str | None) -> tuple[str, dict]:
    """The name and attributes of the complete clustering of ``model`` to show (by default the newest)."""
    models = list(source.config.embedding_models)
    if model not in models:
        raise UserError(f"--model: experiment {source.id} has no embedding model {model!r}; choose one of {', '.join(models)}")
    found = {n: a for n, a in list_results(source.exp, "clusters").items() if a.get("parameters", {}).get("model") == model}
    if not found:
        raise UserError(f"experiment {source.id} has no clustering of {model}; compute one first "
                        f"(`panicflow analyse cluster {source.id} --model {model}`)")
    if clustering is None:
        clustering = max(found, key=lambda n: found[n].get("created_at", ""))
    elif clustering not in found:
        raise UserError(f"--clustering: experiment {source.id} has no complete clustering {clustering!r} of {model}; "
                        f"choose one of {', '.join(found)}")
    return clustering, found[clustering]


def _priority(seed: int, shown: Shown) -> int:
    key = f"{seed}\0{shown[0]}\0{shown[1]}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def sample_members(source: Source, group, k: int, seed: int, exclude: dict[int, Shown],
                   progress: Callable[[int, int], None] | None = None,
                   clusters: set[int] | None = None) -> dict[int, list[Example]]:
    """Per cluster (of ``clusters``, default all), up to ``k`` distinct pictures of its members in this
    experiment (bottom-k by priority), each with the run and step it was first drawn at."""
    labels = group["label"]
    heaps: dict[int, list[tuple[int, Shown, tuple[int, int]]]] = {}
    kept: dict[int, set[Shown]] = {}
    n_runs = labels.shape[0]
    for run in range(n_runs):
        row = labels[run]
        if progress:
            progress(run + 1, n_runs)
        if not (row >= 0).any() or not source.finished(run):
            continue
        info = source.run_info([run])[0]
        for step, digest, caption in source.shown(info):
            c = int(row[step])
            if c < 0 or (clusters is not None and c not in clusters):
                continue
            shown = (digest, caption)
            if shown == exclude.get(c) or shown in kept.setdefault(c, set()):
                continue
            item = (-_priority(seed, shown), shown, (run, step))  # a max-heap of the k lowest priorities
            heap = heaps.setdefault(c, [])
            if len(heap) < k:
                heapq.heappush(heap, item)
                kept[c].add(shown)
            elif item > heap[0]:
                kept[c].discard(heapq.heapreplace(heap, item)[1])
                kept[c].add(shown)
    return {c: [(*s, *where) for _, s, where in sorted(h, reverse=True)] for c, h in heaps.items()}


def _shown_at(source: Source, run: int, step: int) -> Shown:
    info = source.run_info([run])[0]
    for s, digest, caption in source.shown(info):
        if s == step:
            return digest, caption
    return None, ""


def export_gallery(
    experiment_id: str,
    out: str | os.PathLike,
    model: str,
    clustering: str | None = None,
    *,
    store: str | os.PathLike | None = None,
    examples: int = 8,
    tile: int = 160,
    limit: int | None = DEFAULT_LIMIT,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Draw the gallery of a stored clustering of ``model`` (default: its newest) to ``out`` (.png, .jpg, .webp):
    its ``limit`` largest clusters (None or 0: every one)."""
    image_format(out, "the gallery")
    if examples < 1:
        raise UserError(f"--examples: must be at least 1 (got {examples})")
    if not 32 <= tile <= 1024:
        raise UserError(f"--tile: must be from 32 to 1024 pixels (got {tile})")
    if limit is not None and limit < 0:
        raise UserError(f"--limit: must be 0 (every cluster) or more (got {limit})")
    limit = limit or None
    source = Source(experiment_id, store)
    name, attrs = find_clustering(source, model, clustering)
    group = source.exp.group(read_only=True)[f"{ANALYSIS}/clusters/{name}"]
    ids, sizes = group["cluster_id"][:], group["size"][:]
    order = sorted(range(len(ids)), key=lambda i: (-int(sizes[i]), int(ids[i])))[:limit]
    medoids: dict[int, Shown] = {}
    medoid_at: dict[int, tuple[int, int]] = {}
    for i in order:
        eid, run, step = str(group["medoid_experiment"][i]), int(group["medoid_run"][i]), int(group["medoid_step"][i])
        medoid_source = source if eid == source.id else Source(eid, source.store)
        medoids[int(ids[i])] = _shown_at(medoid_source, run, step)
        medoid_at[int(ids[i])] = (run, step) if eid == source.id else (-1, -1)  # -1: in another experiment
    chosen = {int(ids[i]) for i in order}
    members = sample_members(source, group, examples - 1, seed, medoids, progress, clusters=chosen)
    rows = [(int(ids[i]), int(sizes[i]), (*medoids[int(ids[i])], *medoid_at[int(ids[i])]), members.get(int(ids[i]), []))
            for i in order]
    shown = f"the {len(order)} largest of " if len(order) < len(ids) else ""
    title = (f"{source.exp.name or source.id} · clustering {name} of {model}: {shown}{attrs.get('n_clusters', len(ids))} "
             f"clusters, {attrs.get('n_noise', '?')} of {attrs.get('n_vectors', '?')} vectors noise")
    return save_image(render(source, title, rows, examples, tile), out)


def render(source: Source, title: str, rows: list[tuple[int, int, Example, list[Example]]], examples: int,
           tile: int) -> Image.Image:
    gap = max(6, tile // 12)
    big, small = max(11, tile // 9), max(8, tile // 14)
    head_h = line_height(font(big, True)) + 2 * line_height(font(big))
    caption_h = 4 * line_height(font(small)) + gap // 2  # "run R · step S", then the caption
    row_h = head_h + tile + caption_h + 2 * gap
    title_h = line_height(font(big, True)) + 2 * gap
    width = max(2 * gap + examples * (tile + gap) - gap, 6 * tile)
    canvas = Image.new("RGB", (width, title_h + max(1, len(rows)) * row_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw_text(draw, (gap, gap, width - 2 * gap, title_h - gap), title, big, INK, bold=True, align="left")
    if not rows:
        draw_text(draw, (gap, title_h, width - 2 * gap, row_h), "no clusters", big, MUTED)
    for r, (cid, size, medoid, others) in enumerate(rows):
        y = title_h + r * row_h
        line = line_height(font(big, True))
        draw_text(draw, (gap, y, width - 2 * gap, line), f"cluster {cid} · {size} members", big, INK, bold=True, align="left")
        draw_text(draw, (gap, y + line, width - 2 * gap, head_h - line), medoid[1] or "(no caption)", big, MUTED,
                  align="left", valign="top")
        y += head_h + gap // 2
        for i, (digest, caption, run, step) in enumerate([medoid, *others]):
            x = gap + i * (tile + gap)
            if digest is None:
                draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=EMPTY)
                draw_text(draw, (x, y, tile, tile), "no image", small, MUTED)
            else:
                canvas.paste(fit_tile(source.image(digest), tile, BACKGROUND), (x, y))
            if i == 0:
                w = max(2, tile // 40)
                draw.rectangle([x - w, y - w, x + tile + w - 1, y + tile + w - 1], outline=ACCENT, width=w)
            where = f"run {run} · step {step}" if run >= 0 else "in another experiment"
            label = line_height(font(small))
            draw_text(draw, (x, y + tile + gap // 2, tile, label), ("medoid · " if i == 0 else "") + where, small,
                      ACCENT if i == 0 else MUTED, align="left", min_size=7)
            draw_text(draw, (x, y + tile + gap // 2 + label, tile, caption_h - gap // 2 - label), caption,
                      small, ACCENT if i == 0 else INK, valign="top", min_size=7)
    return canvas
