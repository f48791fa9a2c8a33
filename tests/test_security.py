"""Security properties (docs/security.md), each tested for real.

* a model name resolves only to a registry entry: nothing is imported from a config;
* nothing read from the store can point outside it (object digests, planted hashes);
* nothing in the store is read with pickle (a scan of panicflow's source, and the
  store's files are JSON, raw object bytes and Zarr v3 with plain codecs);
* the cluster panicflow starts listens on 127.0.0.1 unless asked otherwise;
* a TLS-secured scheduler (``distributed.security.Security``) works from the CLI
  and the API, and a connection without certificates is refused with a clear error.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import panicflow
from panicflow.config import validate_config
from panicflow.errors import ConfigError, UnknownModel
from panicflow.models import get_spec
from panicflow.scheduler.cluster import connect, dashboard_bind
from panicflow.store import Store
from panicflow.store.experiment import Experiment
from panicflow.store.objects import CorruptObject

PACKAGE = Path(panicflow.__file__).parent
TINY = {
    "name": "security",
    "networks": [["DummyT2I", "DummyI2T"]],
    "seeds": [3],
    "prompts": ["a cat"],
    "embedding_models": ["DummyText", "DummyVision"],
    "max_length": 6,
}


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "panicflow", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


# ------------------------------------------------------- model names, registry
HOSTILE_NAMES = [
    "os.system", "__import__", "panicflow.models.dummy.DummyT2I", "panicflow.models.dummy:DummyT2I",
    "builtins.eval", "subprocess.Popen", "DummyT2I.__class__", "__builtins__", "importlib.import_module",
    "../DummyT2I", "dummyt2i", "DummyT2I ", "",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_model_names_resolve_only_to_registry_entries(name):
    with pytest.raises(UnknownModel):
        get_spec(name)
    cfg = {**TINY, "networks": [[name, "DummyI2T"]], "embedding_models": [name], "batch_size": {name: 2}}
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    text = "\n".join(info.value.lines)
    assert f"networks[0][0]: unknown model {name!r}" in text
    assert f"embedding_models[0]: unknown model {name!r}" in text


def test_validating_hostile_names_imports_nothing(monkeypatch):
    validate_config(TINY)  # let pydantic finish its own lazy imports first
    imported: list[str] = []
    real_import = builtins.__import__

    def spy(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    for name in HOSTILE_NAMES:
        with pytest.raises(ConfigError):
            validate_config({**TINY, "networks": [[name]], "embedding_models": [name]})
    monkeypatch.undo()
    assert imported == []


def test_a_fresh_process_imports_nothing_named_in_a_config():
    code = (
        "import sys, panicflow.config as c\n"
        "before = set(sys.modules)\n"
        f"names = {HOSTILE_NAMES!r} + ['antigravity', 'this', 'webbrowser']\n"
        "for n in names:\n"
        "    try: c.validate_config({'networks': [[n]], 'seeds': [1], 'prompts': ['p'], 'embedding_models': [n], 'max_length': 2})\n"
        "    except c.ConfigError: pass\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------- nothing escapes the store
@pytest.fixture
def planted(tmp_path):
    """An experiment whose output_hash array holds a real digest and planted ones."""
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("secret outside the store")
    st = Store(tmp_path / "store", create=True)
    exp = Experiment.create(st.root, "x", validate_config(TINY))
    good = st.objects.put_image(Image.new("RGB", (8, 8), (1, 2, 3)))
    linked = "ab" * 32  # a well-formed digest whose object is a link out of the store
    link = tmp_path / "store" / "objects" / "ab" / "ab" / linked
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    hashes = [good, "../../../../etc/passwd", str(outside), "/etc/passwd", "objects/../../outside-secret.txt", linked]
    exp.group()["output_hash"][0, : len(hashes)] = np.array(hashes)
    return st.location, exp.id, hashes


def test_planted_hashes_cannot_read_outside_the_store(planted):
    store, eid, hashes = planted
    tree = panicflow.open_experiment(eid, store=store)
    read = [str(h) for h in tree["output_hash"].values[0, : len(hashes)]]
    assert read == hashes
    assert panicflow.load_image(read[0], store=store).getpixel((0, 0)) == (1, 2, 3)
    for digest in read[1:-1]:  # not digests: refused before any file is opened
        for load in (panicflow.load_image, panicflow.load_text):
            with pytest.raises(ValueError, match="not a sha256 hex digest"):
                load(digest, store=store)
    for load in (panicflow.load_image, panicflow.load_text):  # a digest whose file leads out: its bytes do not match
        with pytest.raises(CorruptObject):
            load(read[-1], store=store)


# ------------------------------------------------------------- no pickle, ever
def _unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Lines of ``source`` that could unpickle (or eval) data: imports, names, calls and keywords."""
    hits: list[str] = []
    tree = ast.parse(source, filename)
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    unsafe_modules = ("pickle", "cpickle", "cloudpickle", "dill", "shelve", "marshal", "joblib")

    def hit(node, why):
        hits.append(f"{filename}:{node.lineno}: {why}")

    def dotted(node) -> str:
        if isinstance(node, ast.Attribute):
            return f"{dotted(node.value)}.{node.attr}"
        return node.id if isinstance(node, ast.Name) else ""

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(part.lower() in unsafe_modules for n in names for part in n.split(".")):
                hit(node, f"imports {names}")
        elif isinstance(node, ast.Name) and "pickle" in node.id.lower():
            hit(node, f"name {node.id}")
        elif isinstance(node, ast.Attribute) and "pickle" in node.attr.lower():
            hit(node, f"attribute .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if "pickle" in node.value.lower():
                hit(node, f"string {node.value[:40]!r}")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                hit(node.value, "allow_pickle not False")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            const = lambda key, value: isinstance(kwargs.get(key), ast.Constant) and kwargs[key].value is value  # noqa: E731
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") and not const("allow_pickle", False):
                hit(node, f"{name}( without allow_pickle=False")
            if name.split(".")[-1] == "load" and name.split(".")[0] == "torch" and not const("weights_only", True):
                hit(node, f"{name}( without weights_only=True")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pandas.read_pickle", "pd.read_pickle"):
                hit(node, f"{name}(")
            if name in ("eval", "exec"):
                hit(node, f"{name}(")
    return hits


def test_the_scanner_finds_what_it_looks_for():
    bad = (
        "import pickle\nfrom cloudpickle import loads\nimport numpy as np\nimport torch, yaml\n"
        "np.load('a.npy')\nnp.load('a.npy', allow_pickle=True)\ntorch.load('w.pt')\nyaml.load(s)\n"
        "x = getattr(__import__('pickle'), 'loads')\neval('1')\n"
    )
    hits = _unsafe_loads(bad)
    assert len(hits) >= 9, hits
    good = (
        '"""Docstrings may say pickle."""\nimport numpy as np, torch, yaml\n# a comment about pickle\n'
        "np.load('a.npy', allow_pickle=False)\ntorch.load('w.pt', weights_only=True)\nyaml.safe_load(s)\nmodel.eval()\n"
    )
    assert _unsafe_loads(good) == []


def test_panicflow_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    hits = [h for f in files for h in _unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE.parent)))]
    assert hits == []


def test_store_files_are_json_raw_objects_or_plain_zarr(client, tmp_path):
    """Run a tiny experiment; while it runs, every journal file is JSON lines; after, every file is known."""
    store = str(tmp_path / "store")
    journal_lines = 0

    def progress(_snapshot):
        nonlocal journal_lines
        for f in (tmp_path / "store").glob("experiments/*/journal/*.jsonl"):
            try:
                text = f.read_text(encoding="utf-8")
            except FileNotFoundError:  # cleared at the end
                continue
            for line in text.splitlines():
                assert isinstance(json.loads(line), dict)
                journal_lines += 1

    eid = panicflow.run_experiment(TINY, store=store, client=client, progress=progress)
    assert journal_lines > 0
    root = tmp_path / "store"
    assert json.loads((root / "panicflow-store.json").read_text())["version"] == 1
    meta = json.loads((root / "experiments" / eid / "experiment.json").read_text())
    assert meta["config"]["networks"] == TINY["networks"]
    codecs: set[str] = set()
    for f in root.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(root).parts
        if rel[0] == "objects":  # raw WebP or UTF-8 bytes, named by their sha256
            continue
        if f.suffix == ".beat" and rel[2] == "lease":  # the owner's heartbeat: JSON too
            assert isinstance(json.loads(f.read_text()), dict)
            continue
        if f.suffix == ".json":
            doc = json.loads(f.read_text())
            if f.name == "zarr.json":
                assert doc["zarr_format"] == 3
                codecs |= {c["name"] for c in doc.get("codecs", [])}
                assert "object_codec" not in json.dumps(doc)
            continue
        assert "data.zarr" in rel and "c" in rel, f"unexpected file {f}"  # a Zarr v3 chunk
    assert codecs <= {"bytes", "zstd", "vlen-utf8", "vlen-bytes", "blosc", "gzip", "crc32c", "transpose"}, codecs


def test_zarr_v2_metadata_with_a_pickle_codec_is_never_read(tmp_path):
    """A data.zarr replaced by Zarr v2 metadata whose codec would unpickle a chunk: refused, nothing runs."""
    st = Store(tmp_path / "store", create=True)
    exp = Experiment.create(st.root, "x", validate_config(TINY))
    data = tmp_path / "store" / "experiments" / "x" / "data.zarr"
    shutil.rmtree(data)
    (data / "stop_reason").mkdir(parents=True)
    (data / ".zgroup").write_text('{"zarr_format": 2}')
    (data / "stop_reason" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": {"id": "pickle"},
        "fill_value": None, "order": "C", "filters": None}))
    marker = tmp_path / "PWNED"
    # pickle protocol 0 of os.system("touch <marker>"), written by hand: this test imports no pickle either
    payload = f"cposix\nsystem\n(V touch {marker}\ntR.".encode()
    (data / "stop_reason" / "0").write_bytes(payload)
    proc = cli("experiment", "status", exp.id, "--store", str(tmp_path / "store"))
    assert proc.returncode == 2 and "its data.zarr is missing or damaged" in proc.stderr, proc.stderr
    with pytest.raises(Exception):
        panicflow.open_experiment(exp.id, store=str(tmp_path / "store"))
    assert not marker.exists()


# ------------------------------------------------------------ listen on localhost
def _listening(pid: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def _bound_hosts(c) -> dict[str, set[str]]:
    """Every address the cluster behind ``c`` listens on: the scheduler and the nannies live in
    this process (inspected as objects), the workers in their own (inspected with psutil)."""
    from distributed.comm import get_address_host

    def node_hosts(node) -> set[str]:
        hosts = {get_address_host(listener.listen_address) for listener in node.listeners}
        server = getattr(node, "http_server", None)
        return hosts | ({s.getsockname()[0] for s in server._sockets.values()} if server else set())

    scheduler = c.cluster.scheduler
    worker_pids = list(c.run(os.getpid).values())
    assert os.getpid() not in worker_pids
    return {
        "scheduler": {get_address_host(listener.listen_address) for listener in scheduler.listeners},
        "dashboard": {s.getsockname()[0] for s in scheduler.http_server._sockets.values()},
        "nannies": set().union(*(node_hosts(n) for n in c.cluster.workers.values())),
        "worker processes": set().union(*(_listening(p) for p in worker_pids)),
    }


def test_embedded_cluster_listens_on_localhost_only():
    with connect(workers=1) as c:
        hosts = _bound_hosts(c)
        link = c.dashboard_link
    assert all(h == {"127.0.0.1"} for h in hosts.values()), hosts
    assert link.startswith("http://127.0.0.1:")


def test_host_option_moves_the_cluster_elsewhere():
    # 127.0.0.2 is another loopback address: proves the option is honoured without opening anything
    with connect(workers=1, host="127.0.0.2", dashboard_address=0) as c:
        hosts = _bound_hosts(c)
    assert all(h == {"127.0.0.2"} for h in hosts.values()), hosts


def test_dashboard_address_without_a_host_stays_on_the_cluster_host():
    assert dashboard_bind(None) == "127.0.0.1:8787"
    assert dashboard_bind(8788) == "127.0.0.1:8788"
    assert dashboard_bind(":0") == "127.0.0.1:0"
    assert dashboard_bind("0", host="10.0.0.5") == "10.0.0.5:0"
    assert dashboard_bind("0.0.0.0:8787") == "0.0.0.0:8787"  # asked for explicitly


# ------------------------------------------------------------------------- TLS
def _certificates(folder: Path, name: str) -> dict[str, str]:
    """A CA and a certificate it signed (for 127.0.0.1), as PEM files; openssl, else cryptography."""
    ca, cert, key = (str(folder / f"{name}-{x}.pem") for x in ("ca", "cert", "key"))
    if shutil.which("openssl"):
        ext = folder / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ca_key, csr = str(folder / f"{name}-ca-key.pem"), str(folder / f"{name}.csr")
        for cmd in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", f"/CN={name} CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
             "-extfile", str(ext)],
        ):
            subprocess.run(["openssl", *cmd], check=True, capture_output=True, timeout=60)
        return {"ca": ca, "cert": cert, "key": key}
    pytest.importorskip("cryptography", reason="TLS tests need the openssl command or the cryptography package")
    from distributed.security import Security

    tmp = Security.temporary()  # one self-signed certificate, as PEM text
    Path(ca).write_text(tmp.tls_ca_file)
    Path(cert).write_text(tmp.tls_client_cert)
    Path(key).write_text(tmp.tls_client_key)
    return {"ca": ca, "cert": cert, "key": key}


def _security(files: dict[str, str], roles=("client",)):
    from distributed.security import Security

    kwargs = {"tls_ca_file": files["ca"], "require_encryption": True}
    for role in roles:
        kwargs[f"tls_{role}_cert"], kwargs[f"tls_{role}_key"] = files["cert"], files["key"]
    return Security(**kwargs)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    from distributed import LocalCluster

    folder = tmp_path_factory.mktemp("tls")
    files = _certificates(folder, "good")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, protocol="tls://", host="127.0.0.1",
        dashboard_address="127.0.0.1:0", security=_security(files, ("scheduler", "worker", "client")),
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        yield cluster.scheduler_address, files, folder


def _config_file(folder: Path) -> str:
    path = folder / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_cli_runs_on_a_tls_scheduler(tls_cluster, tmp_path):
    address, files, folder = tls_cluster
    proc = cli("experiment", "run", _config_file(tmp_path), "--store", str(tmp_path / "store"), "--json",
               "--scheduler", address, "--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["state"] == "complete" and out["runs_complete"] == 1


def test_api_runs_on_a_tls_scheduler(tls_cluster, tmp_path):
    address, files, _ = tls_cluster
    store = str(tmp_path / "store")
    eid = panicflow.run_experiment(TINY, store=store, scheduler=address, security=_security(files))
    assert panicflow.experiment_status(eid, store=store).state == "complete"


def test_tls_scheduler_refuses_plain_and_unknown_clients(tls_cluster, tmp_path):
    address, files, folder = tls_cluster
    rogue = _certificates(tmp_path, "rogue")  # a certificate from a CA the cluster does not trust
    cfg = _config_file(tmp_path)
    cases = [
        ((address,), "is a TLS scheduler; pass --tls-ca-file and --tls-cert"),
        ((address.replace("tls://", "tcp://"),), "cannot connect to tcp://127.0.0.1:"),
        ((address, "--tls-ca-file", rogue["ca"], "--tls-cert", rogue["cert"], "--tls-key", rogue["key"]), "cannot connect to tls://"),
    ]
    for i, (args, message) in enumerate(cases):
        store = tmp_path / f"store{i}"
        proc = cli("experiment", "run", cfg, "--store", str(store), "--scheduler", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert all(line.startswith("error: ") for line in proc.stderr.splitlines()), proc.stderr
        assert not store.exists()


def test_embedded_cluster_with_tls(tmp_path):
    """The --tls-* options without --scheduler: the LocalCluster started here uses TLS between its processes."""
    files = _certificates(tmp_path, "local")
    proc = cli("experiment", "run", _config_file(tmp_path), "--store", str(tmp_path / "store"), "--json", "--workers", "1",
               "--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "complete"
