"""An independent, sequential implementation of run semantics, to check the scheduler against.

It calls the model classes directly, one step at a time, with none of the
scheduler, journal or Zarr code: step i uses network[i % len(network)], step
0 gets the prompt, every step the run's seed, the next model sees the output
as stored (images decoded from their WEBP bytes), and a seeded run stops at
the first output whose stored bytes repeat an earlier one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from panicflow.models import REGISTRY
from panicflow.store.objects import decode_image, encode_image


@dataclass
class OracleRun:
    models: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    stop_reason: str = "length"
    loop_start: int = -1
    loop_period: int = -1


def stored(output) -> tuple[bytes, object]:
    """(stored bytes, what the next model sees)."""
    if isinstance(output, str):
        return output.encode("utf-8"), output
    data = encode_image(output)
    return data, decode_image(data)


def reference_run(network, seed, prompt, max_length) -> OracleRun:
    impls = {name: REGISTRY[name].factory(REGISTRY[name]) for name in set(network)}
    run = OracleRun()
    seen: dict[str, int] = {}
    current = prompt
    for step in range(max_length):
        name = network[step % len(network)]
        out = impls[name].generate([current], [seed])[0]
        data, current = stored(out)
        digest = hashlib.sha256(data).hexdigest()
        run.models.append(name)
        run.hashes.append(digest)
        run.texts.append(out if isinstance(out, str) else "")
        if digest in seen:
            run.stop_reason, run.loop_start, run.loop_period = "loop", seen[digest], step - seen[digest]
            break
        seen[digest] = step
    return run
