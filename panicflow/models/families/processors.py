"""Loading a transformers processor where torchvision does not import.

transformers 5 gives most image processors two backends, torchvision and PIL
(``Qwen2VLImageProcessor`` / ``Qwen2VLImageProcessorPil``), and
``AutoProcessor`` picks torchvision when it imports, PIL otherwise. Two
processors of the panel fail outright without torchvision all the same:

- ``PixtralProcessor`` (Pixtral; FLUX.2 [dev]'s tokenizer): its module imports
  the torchvision image processor's module for one helper,
  ``get_resize_output_image_size``, which the PIL module defines identically;
  the class is marked as needing torchvision and resolves to a placeholder.
- ``Qwen2_5_VLProcessor`` (Qwen2.5-VL): it holds a video processor, which
  exists only with torchvision.

Where transformers finds no torchvision, ``load_processor`` loads the same
class from the same files: Pixtral's module imported with the PIL module
standing in for the torchvision one while it imports, and a processor with a
video processor loaded without it (images and text only, which is all a
captioner gives it). Its image processor is then the PIL one, whose pixel values
differ from torchvision's only where an image is resized (docs/models.md,
"Extra libraries"); ``image_processor_name`` says which one a model got.
Everywhere else (torchvision present, other processors) it is
``AutoProcessor.from_pretrained``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

# processors whose module imports a torchvision image processor module only for helpers that the PIL
# module defines the same way (transformers 5.25): class -> (its module, the torchvision module, the PIL one)
PIL_STAND_INS: dict[str, tuple[str, str, str]] = {
    "PixtralProcessor": ("transformers.models.pixtral.processing_pixtral",
                         "transformers.models.pixtral.image_processing_pixtral",
                         "transformers.models.pixtral.image_processing_pil_pixtral"),
}

# the files of a saved processor that may name its class, in the order transformers reads them
_CLASS_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def torchvision_available() -> bool:
    """Whether transformers will use torchvision (its own test: installed, with a version)."""
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _is_placeholder(cls) -> bool:
    return bool(getattr(type(cls), "is_dummy", False))


def processor_class(name: str):
    """The transformers processor class ``name``, the real one even where torchvision does not import."""
    import transformers

    cls = getattr(transformers, name, None)
    if cls is not None and not _is_placeholder(cls):
        return cls
    if name not in PIL_STAND_INS:
        raise ImportError(f"the processor {name} needs torchvision, which does not import here")
    module_name, torchvision_module, pil_module = PIL_STAND_INS[name]
    if module_name not in sys.modules:
        stand_in = importlib.import_module(pil_module)
        before = sys.modules.get(torchvision_module)
        sys.modules[torchvision_module] = stand_in
        try:
            importlib.import_module(module_name)
        finally:
            if before is None:
                sys.modules.pop(torchvision_module, None)
            else:
                sys.modules[torchvision_module] = before
    return getattr(sys.modules[module_name], name)


_WITHOUT_VIDEO: dict[type, type] = {}


def without_video_processor(cls):
    """``cls`` (a processor with a video processor) taking images and text only: the same class with
    ``video_processor`` left out of its sub-processors, under the same name (it saves as ``cls``)."""
    if "video_processor" not in cls.get_attributes():
        return cls
    if cls not in _WITHOUT_VIDEO:
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # cls.__init__ passes video_processor=None on; ProcessorMixin pairs its arguments with the
            # sub-processors this signature names (image_processor, tokenizer), so it is dropped
            cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        _WITHOUT_VIDEO[cls] = type(cls.__name__, (cls,), {
            "__init__": __init__, "__module__": cls.__module__,
            "__doc__": f"{cls.__name__} without its video processor (torchvision does not import)",
        })
    return _WITHOUT_VIDEO[cls]


def saved_processor_class(path: str | Path) -> str | None:
    """The processor class a saved folder names (``processor_class``), or None."""
    for name in _CLASS_FILES:
        file = Path(path) / name
        if file.is_file():
            try:
                got = json.loads(file.read_text()).get("processor_class")
            except (OSError, ValueError, AttributeError):
                continue
            if got:
                return got
    return None


def needs_stand_in(name: str | None) -> bool:
    """Whether ``AutoProcessor`` cannot load the processor class ``name`` here but ``load_processor`` can."""
    if not name or torchvision_available():
        return False
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        return False
    if _is_placeholder(cls):
        return name in PIL_STAND_INS
    from transformers import ProcessorMixin

    return isinstance(cls, type) and issubclass(cls, ProcessorMixin) and "video_processor" in cls.get_attributes()


def load_processor(path: str | Path, *, class_name: str | None = None, **kwargs: Any):
    """``AutoProcessor.from_pretrained(path, **kwargs)``, or where torchvision does not import and the
    processor (``class_name``, else the one the folder names) needs it, the same class loaded as the
    module docstring says."""
    import transformers

    name = class_name or saved_processor_class(path)
    if not kwargs.get("trust_remote_code") and needs_stand_in(name):
        return without_video_processor(processor_class(name)).from_pretrained(str(path), **kwargs)
    return transformers.AutoProcessor.from_pretrained(str(path), **kwargs)


def image_processor_name(processor) -> str | None:
    """The class of ``processor``'s image processor (``...Pil``: the PIL backend), or None."""
    image_processor = getattr(processor, "image_processor", None)
    return None if image_processor is None else type(image_processor).__name__
