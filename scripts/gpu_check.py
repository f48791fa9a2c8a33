#!/usr/bin/env python
"""Throughput of real model architectures, called directly and driven by an experiment.

Run by hand on a GPU machine (needs ``pip install 'panicflow[models,gpu]'``)::

    python scripts/gpu_check.py                      # SDXL-Turbo, BLIP-2, BERT-base; batches 1 8 32 64
    python scripts/gpu_check.py --t2i flux           # FLUX.1-schnell instead of SDXL-Turbo
    python scripts/gpu_check.py --device cpu --tiny  # dry run of the whole script on a CPU (toy sizes)

It builds three real architectures with random weights (nothing is
downloaded): a text-to-image pipeline (SDXL-Turbo's UNet, VAE and two CLIP
text encoders at 256 px, 4 steps; or FLUX.1-schnell's), a BLIP-2 OPT-2.7b
captioner (30 new tokens, sampled) and a BERT-base sentence embedder.

1. Direct: each model is loaded through the registry in this process and called
   at each batch size; images, captions or texts per second.
2. Experiment: the same three models (as random-weight registry entries, sent
   to the workers with a ``ModelPlugin`` and preloaded) run a panicflow
   experiment on a ``dask_cuda.LocalCUDACluster`` (a ``LocalCluster`` with a
   ``GPU`` resource on a CPU), network [text-to-image, captioner] with the
   embedder, every model at the same batch size. The direct throughputs predict
   how long that experiment's model calls take back to back; the check reports
   predicted / measured (goal: at least 0.8).

3. Panel (``--panel [NAME ...]``, issue 23): each catalog entry of the earlier tool's panel
   (Flux2Klein, Flux2Dev, GLMImage, HunyuanImage, Qwen25VL7B, Gemma3n, Pixtral, LLaMA32Vision,
   Qwen3Embed, ColNomic, ColNomicVision) on its architecture with random weights at tiny sizes,
   in the entry's dtype on the GPU: loaded through the registry, called on a batch of the entry's
   largest safe batch (at most 4), then on the same inputs one at a time; it reports seconds per
   item both ways and the largest difference (pixels of 255, differing captions, or the largest
   embedding difference; GLM-Image's batched images differ by design, its entry says
   ``batch_reproducible: False``). An entry without a tiny build (Gemma 3n), or whose processor needs a
   library that is missing, is reported as such. ``--panel`` alone runs only this part:
   ``python scripts/gpu_check.py --panel``.

Prints a table and, with ``--json PATH``, writes every number there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from panicflow.models import cache  # noqa: E402
from panicflow.models.catalog import random_weights_spec  # noqa: E402

GOAL = 0.8


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes of the same architectures (a CPU dry run)")
    p.add_argument("--t2i", choices=["sdxl", "flux"], default="sdxl", help="text-to-image architecture")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1 8 32 64 (tiny: 1 4 8)")
    p.add_argument("--min-seconds", type=float, default=None, help="time each batch size at least this long")
    p.add_argument("--max-new-tokens", type=int, default=30, help="caption length (random weights never stop early)")
    p.add_argument("--experiment-batch", type=int, default=None,
                   help="batch size of every model in the experiment (default: 32, tiny 4)")
    p.add_argument("--runs", type=int, default=None, help="runs in the experiment (default: 2 x batch)")
    p.add_argument("--max-length", type=int, default=6, help="steps per run in the experiment")
    p.add_argument("--gpus", type=int, default=1, help="workers (one per GPU) in the experiment's cluster")
    p.add_argument("--skip-direct", action="store_true")
    p.add_argument("--skip-experiment", action="store_true")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--panel", nargs="*", default=None, metavar="NAME",
                   help="the earlier tool's panel entries (all when no name is given), tiny sizes; only this part")
    args = p.parse_args(argv)
    if args.batch_sizes is None:
        args.batch_sizes = [1, 4, 8] if args.tiny else [1, 8, 32, 64]
    if args.min_seconds is None:
        args.min_seconds = 0.0 if args.tiny else 3.0
    if args.experiment_batch is None:
        args.experiment_batch = 4 if args.tiny else 32
    if args.runs is None:
        args.runs = 2 * args.experiment_batch
    return args


def specs(args) -> dict[str, object]:
    """The three random-weight registry entries, by role."""
    scale = "tiny" if args.tiny else "full"
    common = {"device": args.device}
    t2i = random_weights_spec(f"gpu-check-{args.t2i}", args.t2i, scale, **common)
    i2t = random_weights_spec("gpu-check-blip2", "blip2", scale, max_new_tokens=args.max_new_tokens, **common)
    emb = random_weights_spec("gpu-check-bert", "bert-embedder", scale, **common)
    return {"text-to-image": t2i, "image-to-text": i2t, "embedder": emb}


def inputs_for(role: str, n: int, size: int) -> list:
    from PIL import Image

    rng = np.random.RandomState(n)
    if role == "image-to-text":
        return [Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    words = "a quiet harbour at dawn with fishing boats and gulls over grey water under low clouds".split()
    return [" ".join(rng.choice(words, 14)) + f" #{i}" for i in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def call(model, role: str, items: list, seeds: list[int]):
    return model.embed(items) if role == "embedder" else model.generate(items, seeds)


def direct(args, entries) -> dict[str, dict[int, float]]:
    """Items per second of each model at each batch size, called in this process."""
    out: dict[str, dict[int, float]] = {}
    for role, spec in entries.items():
        cache.register_specs([spec])
        t = time.perf_counter()
        model = cache.get_model(spec.name)
        print(f"{role:14s} {spec.name}: built in {time.perf_counter() - t:.1f}s", flush=True)
        size = spec.extra.get("width", 256) if role == "text-to-image" else (32 if args.tiny else 256)
        out[role] = {}
        for batch in args.batch_sizes:
            items = inputs_for(role, batch, size)
            seeds = list(range(batch))
            try:
                call(model, role, items, seeds)  # warm-up (kernels, allocator)
                _sync(args.device)
                done, t = 0, time.perf_counter()
                while True:
                    call(model, role, items, seeds)
                    _sync(args.device)
                    done += batch
                    elapsed = time.perf_counter() - t
                    if elapsed >= args.min_seconds and done >= batch:
                        break
                rate = done / elapsed
            except RuntimeError as exc:  # out of memory at a large batch: report and go on
                if "out of memory" not in str(exc).lower():
                    raise
                rate = float("nan")
                _free(args.device)
            out[role][batch] = rate
            print(f"{role:14s} batch {batch:4d}: {rate:10.2f} /s", flush=True)
        cache.unload(spec.name)
        del model
        _free(args.device)
    return out


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def make_cluster(args):
    import distributed

    common = dict(threads_per_worker=1, dashboard_address=":0", resources={"GPU": 1})
    if args.device.startswith("cuda"):
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            sys.exit("the experiment half needs dask-cuda: pip install 'panicflow[gpu]'")
        visible = ",".join(str(i) for i in range(args.gpus))
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=visible, **common)
    return distributed.LocalCluster(n_workers=args.gpus, processes=True, **common)


def experiment(args, entries, rates) -> dict[str, object]:
    """Run a panicflow experiment with the three models and compare with the direct rates."""
    import distributed

    import panicflow

    batch = args.experiment_batch
    t2i, i2t, emb = entries["text-to-image"], entries["image-to-text"], entries["embedder"]
    config = {
        "name": "gpu-check",
        "networks": [[t2i.name, i2t.name]],
        "seeds": list(range(args.runs)),
        "prompts": ["a lighthouse on a cliff in a storm"],
        "embedding_models": [emb.name],
        "max_length": args.max_length,
        "batch_size": {t2i.name: batch, i2t.name: batch, emb.name: batch},
    }
    cluster = make_cluster(args)
    client = distributed.Client(cluster)
    try:
        names = [t2i.name, i2t.name, emb.name]
        t = time.perf_counter()
        client.register_plugin(cache.ModelPlugin(specs=[t2i, i2t, emb], preload=names))
        print(f"experiment: {len(client.scheduler_info()['workers'])} worker(s), models loaded in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        for spec in (t2i, i2t, emb):
            cache.register_specs([spec])  # the client validates the config against its registry
        with tempfile.TemporaryDirectory() as store:
            t = time.perf_counter()
            panicflow.run_experiment(config, store=store, client=client)
            wall = time.perf_counter() - t
        held = cache.held_models(client)
    finally:
        client.close()
        cluster.close()
    steps = args.runs * args.max_length
    t2i_calls = (args.max_length + 1) // 2 * args.runs
    i2t_calls = args.max_length // 2 * args.runs
    predicted = None
    if rates:
        def rate(role: str) -> float:
            r = rates[role]
            return r.get(batch) or r[min(r, key=lambda b: abs(b - batch))]

        predicted = t2i_calls / rate("text-to-image") + i2t_calls / rate("image-to-text") + i2t_calls / rate("embedder")
    result = {
        "batch": batch, "runs": args.runs, "max_length": args.max_length, "steps": steps,
        "wall_s": wall, "steps_per_s": steps / wall, "predicted_direct_s": predicted,
        "ratio": (predicted / wall) if predicted else None, "held_models": held,
    }
    print(f"experiment: {steps} steps ({t2i_calls} images, {i2t_calls} captions, {i2t_calls} embeddings) in "
          f"{wall:.1f}s = {steps / wall:.2f} steps/s", flush=True)
    if predicted:
        verdict = "meets" if predicted / wall >= GOAL else "MISSES"
        print(f"experiment: direct calls at batch {batch} would take {predicted:.1f}s; "
              f"ratio {predicted / wall:.2f} ({verdict} the {GOAL:.0%} goal)", flush=True)
    return result


# the panel's catalog entries and the random-weight architecture each runs on (None: no tiny build)
PANEL = {
    "Flux2Klein": "flux2-klein", "Flux2Dev": "flux2", "GLMImage": "glm-image", "HunyuanImage": "hunyuan-image",
    "Qwen25VL7B": "qwen2.5-vl", "Gemma3n": None, "Pixtral": "pixtral", "LLaMA32Vision": "mllama",
    "Qwen3Embed": "qwen3-embedder", "ColNomic": "colqwen-text", "ColNomicVision": "colqwen-vision",
}


def _difference(role: str, batch, alone) -> float:
    if role == "embedder":
        return float(np.abs(np.asarray(batch) - np.asarray(alone)).max())
    if role == "image-to-text":
        return float(sum(a != b for a, b in zip(batch, alone)))
    return float(max(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
                     for a, b in zip(batch, alone)))


def panel(args) -> dict[str, dict[str, object]]:
    """Each panel entry's architecture on the device: a batch, then one input at a time."""
    from panicflow.models import get_spec

    out: dict[str, dict[str, object]] = {}
    for name in args.panel or list(PANEL):
        if name not in PANEL:
            sys.exit(f"--panel: {name!r} is not a panel entry; known: {', '.join(PANEL)}")
        entry, arch = get_spec(name), PANEL[name]
        if arch is None:
            out[name] = {"status": "no tiny build (docs/models.md)"}
            print(f"panel {name:14s} no tiny build", flush=True)
            continue
        role = "embedder" if entry.role.is_embedder else entry.role.value
        spec = random_weights_spec(f"gpu-check-{name}", arch, "tiny", device=args.device, dtype=entry.extra["dtype"])
        n = min(int(entry.extra.get("max_batch", 4)), 4)
        items = inputs_for("text-to-image" if entry.input_kind.value == "text" else "image-to-text", n, 48)
        seeds = list(range(n))
        try:
            cache.register_specs([spec])
            model = cache.get_model(spec.name)
            call(model, role, items, seeds)  # warm-up
            _sync(args.device)
            t = time.perf_counter()
            batch = call(model, role, items, seeds)
            _sync(args.device)
            batched_s = (time.perf_counter() - t) / n
            t = time.perf_counter()
            alone = [out_ for item, seed in zip(items, seeds) for out_ in call(model, role, [item], [seed])]
            _sync(args.device)
            single_s = (time.perf_counter() - t) / n
        except ImportError as exc:  # a processor that needs torchvision or timm
            out[name] = {"status": f"skipped: {str(exc).strip().splitlines()[0]}"}
            print(f"panel {name:14s} {out[name]['status']}", flush=True)
            continue
        # batch_reproducible False (GLM-Image): a batched output depends on its batch, so the difference
        # is expected to be large (experiments call it one input at a time)
        reproducible = bool(entry.extra.get("batch_reproducible", True))
        result = {"status": "ok", "architecture": arch, "batch": n, "s_per_item_batched": batched_s,
                  "s_per_item_single": single_s, "max_difference": _difference(role, batch, alone),
                  "batch_reproducible": reproducible, "parameters": model.parameters()}
        out[name] = result
        print(f"panel {name:14s} {arch:15s} batch {n}: {batched_s * 1000:8.1f} ms/item batched, "
              f"{single_s * 1000:8.1f} ms/item alone, max difference {result['max_difference']:g}"
              + ("" if reproducible else " (batch_reproducible: False, called one input at a time)"), flush=True)
        cache.unload(spec.name)
        del model
        _free(args.device)
    return out


def main(argv=None) -> dict[str, object]:
    args = parse(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: use --device cpu --tiny for a dry run")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.panel is not None:
        results = {"device": args.device, "panel": panel(args)}
        if args.device.startswith("cuda"):
            import torch

            results["gpu"] = torch.cuda.get_device_name(0)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return results
    entries = specs(args)
    results: dict[str, object] = {"device": args.device, "tiny": args.tiny, "t2i": args.t2i}
    if args.device.startswith("cuda"):
        import torch

        results["gpu"] = torch.cuda.get_device_name(0)
    rates = {} if args.skip_direct else direct(args, entries)
    results["direct"] = rates
    if not args.skip_experiment:
        results["experiment"] = experiment(args, entries, rates)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
