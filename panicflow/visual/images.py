"""Every image of the chosen runs as files, with a CSV index.

```
OUT/index.csv                               run,network,prompt,run_seed,step,model,seed,caption,hash,file
OUT/run-0003/run-0003_step-00012.webp       (names carry run and step, so they survive being moved)
```

WEBP (the default) copies the stored bytes as they are: the lossless original, whose sha256
is the ``hash`` column. PNG and JPEG are decoded and re-encoded. ``network`` (its models,
comma-separated, as the store's ``network``), ``prompt`` and ``run_seed`` say which run it is;
``seed`` is the seed the model drew the image with, ``caption`` the text written of it
(docs/visual.md). Images are
read and written one at a time, each file atomically; ``index.csv`` is written last, under a
temporary name renamed when complete, so an index lists only files that exist.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .frames import save_image
from .source import RunSelection, Source

FORMATS = ("webp", "png", "jpg")
INDEX_COLUMNS = ("run", "network", "prompt", "run_seed", "step", "model", "seed", "caption", "hash", "file")


def export_images(
    experiment_id: str,
    out: str | os.PathLike,
    runs: RunSelection = None,
    *,
    store: str | os.PathLike | None = None,
    fmt: str = "webp",
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Write the images of ``runs`` (default: every finished run) under ``out``; returns the index's path."""
    if fmt not in FORMATS:
        raise UserError(f"--format: choose {', '.join(FORMATS)}, not {fmt!r}")
    source = Source(experiment_id, store)
    infos = source.run_info(source.select(runs))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(source.picture_count(i) for i in infos)
    run_w = max(4, len(str(source.n_runs - 1)))
    step_w = max(5, len(str(source.config.max_length - 1)))
    index = folder / "index.csv"
    tmp = folder / ".index.csv.tmp"
    done = 0
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(INDEX_COLUMNS)
        for info in infos:
            sub = folder / f"run-{info.run:0{run_w}d}"
            sub.mkdir(exist_ok=True)
            for p in source.pictures(info):
                name = f"{sub.name}/run-{info.run:0{run_w}d}_step-{p.step:0{step_w}d}.{fmt}"
                if fmt == "webp":
                    _write_atomic(folder / name, source.image_bytes(p.hash))
                else:
                    save_image(source.image(p.hash), folder / name)
                writer.writerow((info.run, ",".join(info.network), info.prompt, info.seed, p.step, p.model, p.seed,
                                 p.caption, p.hash, name))
                done += 1
                if progress:
                    progress(done, total)
    os.replace(tmp, index)
    return str(index)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
