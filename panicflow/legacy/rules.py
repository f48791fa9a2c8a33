"""The earlier tool's loop rule, where it differs from panicflow's.

panicflow ends a fixed-seed run at the first output whose stored bytes repeat an earlier
one. The tool compared texts the same way (sha256), but images after re-encoding them as
JPEG quality 30 (``get_output_hash``), so two images that differ in a few pixel values
could count as a repeat. A run it stopped that way is imported as the ``loop`` it was,
with the tool's ``loop_start``/``loop_period``, and ``panicflow doctor`` accepts such a loop
in an imported experiment when the two images are equal under this rule.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Sequence

from PIL import Image


def jpeg30(image: Image.Image) -> str:
    """The tool's hash of an image: sha256 of its JPEG quality-30 encoding."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=30)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def tool_loop(objects: Any, hashes: Sequence[str], loop_start: Any, loop_period: Any) -> bool:
    """Whether a run of these output hashes ends on the tool's image repeat of step ``loop_start``."""
    last = len(hashes) - 1
    if not isinstance(loop_start, int) or not isinstance(loop_period, int) or loop_start < 0 or loop_start + loop_period != last:
        return False
    try:
        return jpeg30(objects.get_image(hashes[loop_start])) == jpeg30(objects.get_image(hashes[last]))
    except Exception:  # noqa: BLE001 - a text, a missing or damaged object: not such a loop
        return False
