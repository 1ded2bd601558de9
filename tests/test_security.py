"""Security: no unpickling or code execution on data, remote code only when the user asks for it, MLflow servers
on loopback only, and no network access at run time (`brainmm demo` and a DNA-model stage with sockets blocked)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import ipaddress
import pkgutil
import re
import shutil
import socket
from pathlib import Path

import pytest
from test_bad_inputs import write_genetics, write_nt

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("brainmm", "encoders", "alignment", "benchmarks")
PACKAGES = ("brainmm", "encoders", "alignment")


def source_files() -> list[Path]:
    files = sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))
    assert len(files) > 50
    return files


def _name(node: ast.AST) -> str:
    """Dotted name of a call target (`torch.load`, `pickle.loads`, `eval`), '' when not a plain name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


UNPICKLERS = {"pickle.load", "pickle.loads", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
              "joblib.load", "pd.read_pickle", "pandas.read_pickle", "shelve.open", "marshal.load", "marshal.loads"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader",
                     "_BoundedLoader"}  # brainmm.config's SafeLoader subclass (checked below)


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every call that can run code hidden in data, or trusts remote code by itself."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "cPickle", "dill", "marshal"):
            found.append((node.lineno, f"from {node.module} import ..."))
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in UNPICKLERS:
            found.append((node.lineno, f"{name}()"))
        if name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
            found.append((node.lineno, f"{name}()"))
        if name == "torch.load" and not _is_true(_kw(node, "weights_only")):
            found.append((node.lineno, "torch.load() without weights_only=True"))
        if name == "yaml.load" and _name(_kw(node, "Loader") or ast.Constant(None)) not in SAFE_YAML_LOADERS:
            found.append((node.lineno, "yaml.load() without SafeLoader"))
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            found.append((node.lineno, f"{name}()"))
        if _is_true(_kw(node, "allow_pickle")):
            found.append((node.lineno, "allow_pickle=True"))
        if _is_true(_kw(node, "trust_remote_code")):
            found.append((node.lineno, "trust_remote_code=True hard-coded (it must come from the user)"))
        if _is_true(_kw(node, "shell")):
            found.append((node.lineno, "subprocess with shell=True"))
    return found


def test_the_scanner_catches_each_pattern() -> None:
    bad = """
import pickle, torch, yaml, numpy as np
from pickle import loads
pickle.load(open("x", "rb"))
torch.load("w.pt")
torch.load("w.pt",
           map_location="cpu", weights_only=False)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
eval(cell)
exec(code)
np.load("x.npy", allow_pickle=True)
AutoModel.from_pretrained(path, trust_remote_code=True)
subprocess.run(cmd, shell=True)
"""
    good = """
torch.load("w.pt", weights_only=True)
torch.load("w.pt", map_location="cpu",
           weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
model.eval()
np.load("x.npy", allow_pickle=False)
AutoModel.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
"""
    assert [line for line, _ in unsafe_calls(ast.parse(bad))] == [3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14]
    assert unsafe_calls(ast.parse(good)) == []


def test_the_bounded_yaml_loader_is_a_safe_loader() -> None:
    import yaml

    from brainmm.config import _BoundedLoader

    assert issubclass(_BoundedLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=_BoundedLoader)  # noqa: S506


def test_no_unsafe_deserialisation_or_code_execution_in_the_source() -> None:
    problems = [f"{path.relative_to(REPO)}:{line}: {what}" for path in source_files()
                for line, what in unsafe_calls(ast.parse(path.read_text(), str(path)))]
    assert not problems, "\n".join(problems)


def _modules() -> list[str]:
    names = list(PACKAGES)
    for package in PACKAGES:
        mod = importlib.import_module(package)
        names += [m.name for m in pkgutil.walk_packages(mod.__path__, f"{package}.")]
    return names


def _nested_flags(obj, where: str) -> list[tuple[str, object]]:
    """(path, value) of every trust_remote_code attribute in a config object and its nested sections."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "trust_remote_code":
            out.append((f"{where}.{f.name}", value))
        elif dataclasses.is_dataclass(value):
            out += _nested_flags(value, f"{where}.{f.name}")
    return out


def test_trust_remote_code_defaults_to_off_everywhere() -> None:
    """Every dataclass field and function parameter named trust_remote_code defaults to False, and so does every
    config built from defaults (nested sections included)."""
    fields, params, built = [], [], []
    for name in _modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != name:
                continue
            if dataclasses.is_dataclass(obj) and isinstance(obj, type):
                fields += [(f"{name}.{obj.__qualname__}", f.default) for f in dataclasses.fields(obj)
                           if f.name == "trust_remote_code"]
                required = [f for f in dataclasses.fields(obj) if f.init and f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING]
                if not required:
                    built += _nested_flags(obj(), f"{name}.{obj.__qualname__}()")
            candidates = [obj] if inspect.isfunction(obj) else (
                [m for m in vars(obj).values() if inspect.isfunction(m)] if inspect.isclass(obj) else [])
            for fn in candidates:
                p = inspect.signature(fn).parameters.get("trust_remote_code")
                if p is not None:
                    params.append((f"{name}.{fn.__qualname__}", p.default))
    names = {n for n, _ in fields + params + built}
    # the DNA encoder options, the genetics stage config and the tokenizer loader are among them
    assert {"encoders.dna.base.DNAEncoderConfig", "brainmm.data.genetics.config.EncoderSection",
            "encoders.dna.hf.load_dna_tokenizer",
            "brainmm.data.genetics.config.GeneticsEmbedConfig().encoder.trust_remote_code"} <= names
    assert [x for x in fields + params + built if x[1] is not False] == []


# `mlflow server` / `mlflow ui` command lines in code, scripts and docs: loopback only.
SERVER_TEXT = re.compile(r"mlflow\s+(server|ui)\b[^\n`\"']*")
HOST_FLAG = re.compile(r"(?:--host|-h)[ =](\S+)")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _server_lists(tree: ast.AST) -> list[list[str]]:
    """String-literal argument lists of subprocess calls that start an MLflow server (["mlflow", "server", ...])."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List):
            items = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
            if "mlflow" in items and ("server" in items or "ui" in items):
                out.append(items)
    return out


def test_mlflow_servers_bind_loopback_only() -> None:
    commands = []
    texts = [*source_files(), *REPO.glob("docs/*.md"), REPO / "README.md", REPO / "Makefile",
             *REPO.glob("scripts/*"), *REPO.glob("configs/*.yaml"),
             *(p for p in REPO.glob("tests/*.py") if p.name != Path(__file__).name)]  # not this scanner
    for path in texts:
        text = path.read_text()
        for match in SERVER_TEXT.finditer(text):
            hosts = [h.replace("\\", "") for h in HOST_FLAG.findall(match.group(0))]  # regexes in tests
            commands.append((path.name, match.group(0), hosts))
        if path.suffix == ".py":
            for items in _server_lists(ast.parse(text)):
                # no --host: MLflow's default, 127.0.0.1; a host that is not a literal counts as exposed
                hosts = [items[items.index("--host") + 1] or "<not a literal>"] if "--host" in items else []
                commands.append((path.name, " ".join(str(i) for i in items), hosts))
    assert any(name == "conftest.py" for name, _, _ in commands), "the mlflow_server fixture was not found"
    # the test fixture names its host explicitly; everything else binds loopback (MLflow's default) or names it
    conftest = [hosts for name, _, hosts in commands if name == "conftest.py" and hosts]
    assert conftest and all(h == ["127.0.0.1"] for h in conftest)
    exposed = [(name, cmd) for name, cmd, hosts in commands if any(h not in LOOPBACK for h in hosts)]
    assert not exposed, exposed
    assert "0.0.0.0" not in "".join(p.read_text() for p in texts)


# ---------------------------------------------------------------------------------------------- network


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)) and not isinstance(address, tuple):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Refuse (and record) every connection or name lookup that is not loopback or a unix socket."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def guard(address) -> None:
        if not _is_local(address):
            attempts.append(repr(address))
            raise OSError(f"network access blocked by the test: {address!r}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        guard(address)
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        guard((host, 0))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # the code itself must stay offline
    return attempts


def test_the_network_guard_blocks_remote_hosts(no_network: list[str]) -> None:
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("203.0.113.5", 443), timeout=1)
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    assert _is_local(("127.0.0.1", 5000)) and _is_local("/tmp/sock") and not _is_local(("pypi.org", 443))
    assert len(no_network) == 2
    no_network.clear()


# `brainmm demo` shrunk to seconds: every stage of the pipeline (simulate -> ingest -> pretrain -> embed ->
# genotype matrix -> align with a genotype MLP tower -> evaluate with figures and MLflow models)
TINY_DEMO = [
    "threads=1", "simulate.n_subjects=40", "simulate.brain.n_parcels=8", "simulate.brain.n_timepoints=60",
    "simulate.brain.n_modules=2", "simulate.factors.n_factors=2", "simulate.genotypes.n_blocks=4",
    "ingest.num_timepoints=20", "pretrain.model.arch.timepoint_patching_size=10", "pretrain.train.max_steps=4",
    "pretrain.train.batch_size=4", "align.train.epochs=2", "align.train.batch_size=4",
    "evaluate.probes.targets=[age]", "evaluate.probes.n_splits=2", "evaluate.probes.n_boot=20",
    "evaluate.retrieval.n_boot=20", "evaluate.baselines.n_permutations=10", "evaluate.baselines.shuffled_pairs=false",
]


@pytest.mark.slow
def test_the_demo_pipeline_runs_without_network(no_network: list[str], tmp_path: Path, _migrated_mlflow_db: Path,
                                                monkeypatch, capsys) -> None:
    from brainmm.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    code = main(["-q", "demo", "--out", str(tmp_path / "demo"), f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 *TINY_DEMO])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (tmp_path / "demo" / "evaluate" / "metrics.json").is_file()
    assert "Retrieval" in capsys.readouterr().out
    assert no_network == [], f"connection attempts: {no_network}"


def test_dna_embeddings_run_without_network(no_network: list[str], tmp_path: Path) -> None:
    """The stage the demo does not run: a DNA foundation model (tokenizer + weights) on personal haplotypes."""
    from brainmm.cli import main

    subjects = [f"sub{i}" for i in range(6)]
    write_genetics(tmp_path / "genetics", subjects)
    g = tmp_path / "genetics"
    assert main(["-q", "genetics", "embed", "--vcf", str(g / "cohort.vcf.gz"), "--fasta", str(g / "ref.fa"),
                 "--regions", str(g / "regions.bed"), "--encoder", "nt", "--encoder-path", str(write_nt(tmp_path / "nt")),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out" / "dna")]) == 0
    from brainmm.embeddings import EmbeddingTable

    assert EmbeddingTable.load(tmp_path / "out" / "dna").ids == subjects
    assert no_network == [], f"connection attempts: {no_network}"
