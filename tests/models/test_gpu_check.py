"""scripts/gpu_check.py runs end to end on a CPU with toy sizes (the dry run a GPU run relies on)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_direct_and_experiment(tmp_path):
    gpu_check = load_script()
    out = tmp_path / "result.json"
    results = gpu_check.main([
        "--device", "cpu", "--tiny", "--batch-sizes", "1", "2", "--experiment-batch", "2", "--runs", "4",
        "--max-length", "4", "--json", str(out),
    ])
    assert out.exists()
    for role in ("text-to-image", "image-to-text", "embedder"):
        assert set(results["direct"][role]) == {1, 2} and all(r > 0 for r in results["direct"][role].values())
    exp = results["experiment"]
    assert exp["steps"] == 16 and exp["wall_s"] > 0 and exp["ratio"] > 0
    (held,) = exp["held_models"].values()  # one worker, holding the three models it preloaded
    assert sorted(held) == ["gpu-check-bert", "gpu-check-blip2", "gpu-check-sdxl"]


def test_panel_dry_run(tmp_path):
    """``--panel`` on a CPU: each named entry's architecture loaded, batched and one at a time."""
    gpu_check = load_script()
    results = gpu_check.main(["--device", "cpu", "--panel", "Flux2Klein", "ColNomicVision", "Gemma3n",
                              "--json", str(tmp_path / "panel.json")])
    panel = results["panel"]
    assert panel["Gemma3n"]["status"].startswith("no tiny build")
    for name in ("Flux2Klein", "ColNomicVision"):
        assert panel[name]["status"] == "ok" and panel[name]["s_per_item_batched"] > 0
    assert panel["Flux2Klein"]["batch"] == 2 and panel["Flux2Klein"]["max_difference"] <= 2
    assert panel["ColNomicVision"]["max_difference"] < 1e-4
    assert panel["Flux2Klein"]["parameters"]["pipeline"] == "Flux2KleinPipeline"
    assert set(gpu_check.PANEL) >= {"Flux2Klein", "Flux2Dev", "GLMImage", "HunyuanImage", "Qwen25VL7B", "Gemma3n",
                                    "Pixtral", "LLaMA32Vision", "Qwen3Embed", "ColNomic", "ColNomicVision"}
