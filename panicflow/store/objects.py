"""Content-addressed objects (texts, images) on top of a ``StoreRoot``.

An object's name is the sha256 of its bytes, so writing is idempotent and
concurrent writers of the same object cannot conflict. Images are stored as
lossless WebP: exact pixels, and the same image always gives the same bytes
(hence the same digest).
"""

from __future__ import annotations

import hashlib
import io
import re

from PIL import Image

from panicflow.errors import PanicflowError
from panicflow.store.root import StoreRoot

HASH = "sha256"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class CorruptObject(PanicflowError):
    """A stored object's bytes no longer match its digest."""


class MissingObject(PanicflowError, KeyError):
    """No object with that digest in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_image(image: Image.Image) -> bytes:
    """Lossless WebP; deterministic since only pixels reach the encoder."""
    if image.mode not in ("RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    buf = io.BytesIO()
    # exact=True keeps the RGB under fully transparent pixels, which libwebp
    # would otherwise rewrite; no exif/icc is passed, so metadata never changes
    # the digest.
    image.save(buf, format="WEBP", lossless=True, exact=True)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """A fully loaded RGB (or RGBA) image, detached from ``data``."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode not in ("RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return image


class ObjectStore:
    """Immutable blobs under ``{prefix}/ab/cd/abcd...`` keyed by their sha256."""

    def __init__(self, root: StoreRoot, prefix: str = "objects") -> None:
        self.root = root
        self.prefix = prefix.strip("/")

    def key_for(self, digest: str) -> str:
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise ValueError(f"not a {HASH} hex digest: {digest!r}")
        return f"{self.prefix}/{digest[:2]}/{digest[2:4]}/{digest}"

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; its digest and whether this call created the object."""
        digest = content_hash(data)
        return digest, self.root.write_bytes_once(self.key_for(digest), data)

    def put_bytes(self, data: bytes) -> str:
        return self.put(data)[0]

    def put_text(self, text: str) -> str:
        return self.put_bytes(text.encode("utf-8"))

    def put_image(self, image: Image.Image) -> str:
        return self.put_bytes(encode_image(image))

    def get_bytes(self, digest: str, verify: bool = False) -> bytes:
        key = self.key_for(digest)
        try:
            data = self.root.read_bytes(key)
        except FileNotFoundError:
            raise MissingObject(f"no object {digest} in {self.root.path_for_display(self.prefix)}") from None
        if verify and content_hash(data) != digest:
            raise CorruptObject(f"object {self.root.path_for_display(key)} does not match its {HASH}")
        return data

    def get_text(self, digest: str) -> str:
        return self.get_bytes(digest).decode("utf-8")

    def get_image(self, digest: str) -> Image.Image:
        return decode_image(self.get_bytes(digest))

    def exists(self, digest: str) -> bool:
        return self.root.exists(self.key_for(digest))

    def verify(self, digest: str) -> bool:
        """True when the object exists and its bytes hash to ``digest``."""
        try:
            self.get_bytes(digest, verify=True)
        except (MissingObject, CorruptObject):
            return False
        return True
