"""Storage roots and the content-addressed object store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

import panicflow
from panicflow.errors import PanicflowError
from panicflow.store.objects import (
    CorruptObject,
    MissingObject,
    ObjectStore,
    content_hash,
    decode_image,
    encode_image,
)
from panicflow.store.root import FsspecRoot, LocalRoot, StoreRoot, open_root

PACKAGE_DIR = str(Path(panicflow.__file__).parent)


def noise_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    bands = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, bands), dtype=np.uint8)
    return Image.fromarray(pixels if bands > 1 else pixels[..., 0], mode)


def all_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def memory_url():
    name = f"memory://pf-test-{uuid.uuid4().hex}"
    yield name
    fs = MemoryFileSystem()
    path = fs._strip_protocol(name)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(params=["local", "file-url", "fsspec-file", "memory"])
def root(request, tmp_path, memory_url) -> StoreRoot:
    kind = request.param
    if kind == "local":
        return open_root(tmp_path / "store")
    if kind == "file-url":
        return open_root((tmp_path / "store").as_uri())
    if kind == "fsspec-file":  # the fsspec code path on a real disk
        return FsspecRoot((tmp_path / "store").as_uri())
    return open_root(memory_url)


# --- opening roots -----------------------------------------------------------


def test_open_root_kinds_and_creates_nothing(tmp_path, memory_url):
    local = open_root(tmp_path / "a" / "b")
    assert isinstance(local, LocalRoot) and local.is_local
    assert local.url == str(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()

    rel = open_root("some/relative/dir")
    assert rel.url == os.path.abspath("some/relative/dir")
    assert not Path("some").exists()

    url = (tmp_path / "c").as_uri()
    file_root = open_root(url)
    assert isinstance(file_root, LocalRoot) and file_root.url == url
    assert not (tmp_path / "c").exists()

    mem = open_root(memory_url)
    assert isinstance(mem, FsspecRoot) and not mem.is_local and mem.url == memory_url
    assert not MemoryFileSystem().exists(MemoryFileSystem._strip_protocol(memory_url))


# --- key validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/abs", "a//b", "a\\b", "a/", "", ".", "a/./b", "a\x00b"]
)
def test_bad_keys_rejected(root, key):
    with pytest.raises(ValueError):
        root.read_bytes(key)
    with pytest.raises(ValueError):
        root.write_bytes(key, b"x")
    with pytest.raises(ValueError):
        root.write_bytes_once(key, b"x")
    with pytest.raises(ValueError):
        root.exists(key)
    with pytest.raises(ValueError):
        root.delete(key)


def test_bad_prefix_rejected_in_listing(root):
    for prefix in ["../x", "/abs", "a//b", "a\\b"]:
        with pytest.raises(ValueError):
            root.list(prefix)
        with pytest.raises(ValueError):
            root.list_dirs(prefix)


def test_nothing_written_outside_root(tmp_path):
    root = open_root(tmp_path / "store")
    with pytest.raises(ValueError):
        root.write_bytes("../escaped", b"x")
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("digest", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61])
def test_bad_digest_rejected(tmp_path, digest):
    store = ObjectStore(open_root(tmp_path))
    with pytest.raises(ValueError):
        store.key_for(digest)
    with pytest.raises(ValueError):
        store.get_bytes(digest)


# --- root basics -------------------------------------------------------------


def test_root_read_write_list_delete(root):
    with pytest.raises(FileNotFoundError):
        root.read_bytes("a/missing")
    assert root.list("a") == [] and root.list_dirs("a") == []

    root.write_bytes("a/one.txt", b"1")
    root.write_bytes("a/sub/two.txt", b"2")
    root.write_bytes("a/.hidden/three.txt", b"3")
    assert root.read_bytes("a/one.txt") == b"1"
    assert root.exists("a/one.txt") and not root.exists("a/nope")
    assert root.list("a") == ["one.txt"]
    assert root.list_dirs("a") == ["sub"]
    assert root.list_dirs("") == ["a"]
    assert root.list("a/one.txt") == []  # a file is not a folder

    root.write_bytes("a/one.txt", b"new")
    assert root.read_bytes("a/one.txt") == b"new"
    assert root.write_bytes_once("a/one.txt", b"other") is False
    assert root.read_bytes("a/one.txt") == b"new"
    assert root.write_bytes_once("a/four.txt", b"4") is True
    assert root.list("a") == ["four.txt", "one.txt"]

    root.delete("a/one.txt")
    root.delete("a/one.txt")  # missing is fine
    assert not root.exists("a/one.txt")
    assert root.list("a") == ["four.txt"]
    assert root.path_for_display("a/four.txt").endswith("a/four.txt")


def test_list_ignores_temporaries(root):
    root.write_bytes("d/real", b"r")
    # A temporary left by a crashed writer, and a dot-folder.
    if isinstance(root, LocalRoot):
        (Path(root.path) / "d" / ".tmp-deadbeef").write_bytes(b"partial")
        (Path(root.path) / "d" / ".cache").mkdir()
    else:
        root.fs.makedirs(f"{root.root}/d/.cache", exist_ok=True)  # needed on disk
        root.fs.pipe_file(f"{root.root}/d/.tmp-deadbeef", b"partial")
        root.fs.pipe_file(f"{root.root}/d/.cache/x", b"x")
    root.write_bytes("d/sub/x", b"x")
    assert root.list("d") == ["real"]
    assert root.list_dirs("d") == ["sub"]


def test_zarr_store_sees_root_data(root):
    arr = zarr.create_array(root.zarr_store("arrays/a"), shape=(6,), chunks=(3,), dtype="f4")
    arr[:] = np.arange(6, dtype="f4")
    assert "zarr.json" in root.list("arrays/a")
    assert json.loads(root.read_bytes("arrays/a/zarr.json"))["shape"] == [6]
    back = zarr.open_array(root.zarr_store("arrays/a", read_only=True), mode="r")
    np.testing.assert_array_equal(back[:], np.arange(6, dtype="f4"))
    with pytest.raises(Exception):
        back[0] = 1.0


# --- atomic writes -----------------------------------------------------------


def test_write_bytes_replaces_atomically(tmp_path):
    """A reader racing a writer only ever sees one whole version."""
    root = open_root(tmp_path)
    versions = [bytes([65 + i]) * (1 << 20) for i in range(2)]
    root.write_bytes("f", versions[0])
    stop = time.monotonic() + 0.5
    seen: set[bytes] = set()
    bad: list[int] = []

    def writer() -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            root.write_bytes("f", versions[i % 2])

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while thread.is_alive():
        data = root.read_bytes("f")
        reads += 1
        if data in versions:
            seen.add(data[:1])
        else:
            bad.append(len(data))
    thread.join()
    assert not bad, f"partial reads of sizes {bad[:5]}"
    assert reads > 10 and seen == {b"A", b"B"}
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_failed_write_leaves_old_content_and_no_temp(tmp_path, monkeypatch):
    root = open_root(tmp_path)
    root.write_bytes("d/f", b"old")

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        root.write_bytes("d/f", b"new")
    monkeypatch.setattr(os, "link", boom)
    with pytest.raises(OSError, match="disk on fire"):
        root.write_bytes_once("d/g", b"new")
    monkeypatch.undo()
    assert root.read_bytes("d/f") == b"old"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["f"]


def test_put_twice_is_idempotent(tmp_path):
    store = ObjectStore(open_root(tmp_path))
    data = b"hello world"
    d1, created1 = store.put(data)
    d2, created2 = store.put(data)
    assert d1 == d2 == content_hash(data) and (created1, created2) == (True, False)
    assert store.put_bytes(data) == d1
    files = all_files(tmp_path)
    assert files == [tmp_path / "objects" / d1[:2] / d1[2:4] / d1]
    assert not [p for p in tmp_path.rglob(".tmp-*")]


# --- object round trips ------------------------------------------------------


def test_content_hash():
    assert content_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_encode_image_lossless_and_deterministic(mode):
    image = noise_image(1, mode=mode)
    if mode == "RGBA":  # fully transparent pixels must keep their colour too
        pixels = np.array(image)
        pixels[:8, :, 3] = 0
        image = Image.fromarray(pixels, "RGBA")
    data = encode_image(image)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert encode_image(image) == data
    assert encode_image(image.copy()) == data
    with_meta = image.copy()
    with_meta.info["comment"] = b"ignored"
    assert encode_image(with_meta) == data
    back = decode_image(data)
    assert back.mode == mode and back.size == image.size
    np.testing.assert_array_equal(np.array(back), np.array(image))


def test_encode_image_converts_other_modes():
    gray = noise_image(2, mode="L")
    back = decode_image(encode_image(gray))
    assert back.mode == "RGB"
    np.testing.assert_array_equal(np.array(back), np.array(gray.convert("RGB")))
    la = Image.merge("LA", [gray, gray])
    assert decode_image(encode_image(la)).mode == "RGBA"


def test_round_trip_text_and_image(root):
    store = ObjectStore(root)
    text = "a red fox — über alles 🦊"
    td = store.put_text(text)
    assert td == content_hash(text.encode("utf-8"))
    assert store.get_text(td) == text

    image = noise_image(3, size=96)
    idig = store.put_image(image)
    assert idig == content_hash(encode_image(image))
    back = store.get_image(idig)
    assert back.mode == "RGB" and back.size == image.size
    np.testing.assert_array_equal(np.array(back), np.array(image))
    assert store.put_image(image.copy()) == idig

    for digest in (td, idig):
        assert store.exists(digest) and store.verify(digest)
        assert root.list(store.key_for(digest).rsplit("/", 1)[0]) == [digest]
    assert root.list_dirs("objects") == sorted({td[:2], idig[:2]})


# --- corruption and missing objects -----------------------------------------


def test_corrupt_object_detected(tmp_path):
    store = ObjectStore(open_root(tmp_path))
    digest = store.put_text("some text")
    path = tmp_path / store.key_for(digest)
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))
    assert store.get_bytes(digest) == bytes(raw)  # no check unless asked
    with pytest.raises(CorruptObject) as info:
        store.get_bytes(digest, verify=True)
    assert isinstance(info.value, PanicflowError)
    assert store.exists(digest) and not store.verify(digest)


def test_missing_object(root):
    store = ObjectStore(root)
    digest = content_hash(b"never stored")
    assert not store.exists(digest) and not store.verify(digest)
    with pytest.raises(MissingObject) as info:
        store.get_bytes(digest)
    assert isinstance(info.value, PanicflowError) and isinstance(info.value, KeyError)
    assert digest in str(info.value)
    with pytest.raises(MissingObject):
        store.get_image(digest)


# --- concurrent writers ------------------------------------------------------

# Each worker loads the same objects, waits for the go file so that all start
# together, then puts them in its own order while reading back (with
# verification) objects it sees exist: a partial file would fail the read.
_WORKER = r"""
import json, os, random, sys, time, types
# Skip the package __init__ files (they import the whole API, ~1 s of CPU per
# process): errors, root and objects still load from the same files.
for name, folder in [("panicflow", ""), ("panicflow.store", "store")]:
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [os.path.join(sys.argv[5], folder)]
from panicflow.store.objects import ObjectStore, content_hash
from panicflow.store.root import open_root

root_dir, objects_file, go_file, worker = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with open(objects_file, "rb") as f:
    blob = f.read()
sizes = json.loads(open(objects_file + ".json").read())
objects, at = [], 0
for n in sizes:
    objects.append(blob[at:at + n])
    at += n
store = ObjectStore(open_root(root_dir))
order = list(range(len(objects)))
random.Random(worker).shuffle(order)
print("ready", flush=True)
while not os.path.exists(go_file):
    time.sleep(0.001)
created, digests = [], {}
for i in order:
    digest, new = store.put(objects[i])
    digests[i] = digest
    if new:
        created.append(digest)
    for j in random.Random(worker * 100 + i).sample(order, 3):
        d = content_hash(objects[j])
        if store.exists(d):
            assert store.get_bytes(d, verify=True) == objects[j]
print(json.dumps({"created": created, "digests": [digests[i] for i in range(len(objects))]}), flush=True)
"""


def test_concurrent_writers(tmp_path):
    # 15 texts and 15 noise images of ~300 KB, encoded once here.
    objects = [f"text {i} ".encode() * (1000 * (i + 1)) for i in range(15)]
    objects += [encode_image(noise_image(i, size=320)) for i in range(15)]
    objects_file = tmp_path / "objects.bin"
    objects_file.write_bytes(b"".join(objects))
    Path(f"{objects_file}.json").write_text(json.dumps([len(o) for o in objects]))
    expected = [content_hash(o) for o in objects]

    root_dir, go_file = tmp_path / "store", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(root_dir), str(objects_file), str(go_file), str(w), PACKAGE_DIR],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for w in range(8)
    ]
    try:
        for p in procs:  # wait until every worker is ready, so that they race
            assert p.stdout.readline() == "ready\n", p.stderr.read()
        go_file.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    assert all(r["digests"] == expected for r in results)
    created = [d for r in results for d in r["created"]]
    assert sorted(created) == sorted(expected), "each object created by exactly one writer"

    store = ObjectStore(open_root(root_dir))
    for d in expected:
        assert store.verify(d)
    assert sorted(p.name for p in all_files(root_dir)) == sorted(expected)
    assert not list(root_dir.rglob(".tmp-*"))
    assert sum(p.stat().st_size for p in all_files(root_dir)) > 15 * 250_000


def test_deferred_sync_writes_atomically_and_flushes_once(tmp_path, monkeypatch):
    import panicflow.store.root as root_mod

    root = root_mod.open_root(str(tmp_path / "r"))
    store = ObjectStore(root)
    fsyncs, syncfs = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(root_mod.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(root_mod, "_syncfs", lambda folder: syncfs.append(folder) or True)
    with root.deferred_sync():
        digests = [store.put_text(f"caption {i}") for i in range(5)]
        with root.deferred_sync():  # nested blocks flush once, at the outer end
            digests.append(store.put_text("nested"))
        assert not syncfs
    assert fsyncs == [] and syncfs == [root.path]
    assert all(store.verify(d) for d in digests)
    store.put_text("outside")  # outside a block: fsync per object, as before
    assert len(fsyncs) == 1
