"""The rules of docs/architecture.md: one-way imports between units in the documented layer order, no source
file over 600 lines, and the security rules: no unpickling or code execution on data, remote code only when the
user asks for it (trust_remote_code defaults to off everywhere), MLflow servers on loopback only."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def _imports(path: Path) -> set[str]:
    """Every module a file imports (module level and inside functions), as dotted names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _unit(module: str) -> str | None:
    """The unit of a dotted module name: `brainmm.<subpackage or module>`, or `alignment` / `encoders`."""
    parts = module.split(".")
    if parts[0] in ("alignment", "encoders"):
        return parts[0]
    if parts[0] == "brainmm" and len(parts) > 1:
        return f"brainmm.{parts[1]}"
    return None


def _exists(unit: str) -> bool:
    """Whether a unit is a package or module of this repository (not a name such as `brainmm.__version__`)."""
    path = REPO / Path(*unit.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def unit_graph() -> dict[str, set[str]]:
    """Which unit imports which (edges between different units only)."""
    graph: dict[str, set[str]] = {}
    for root in ("brainmm", "alignment", "encoders"):
        for path in (REPO / root).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            src = _unit(module.removesuffix(".__init__"))
            for target in _imports(path):
                dst = _unit(target)
                if src and dst and dst != src and _exists(dst):
                    graph.setdefault(src, set()).add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between units (as the path of units), found by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []


def test_no_two_units_import_each_other() -> None:
    graph = unit_graph()
    assert "brainmm.train" in graph and "brainmm.embed" in graph  # the graph covers the application units
    assert cycles(graph) == []


def test_libraries_never_import_the_application() -> None:
    graph = unit_graph()
    assert "brainmm" not in {u.split(".")[0] for u in graph.get("alignment", set()) | graph.get("encoders", set())}
    assert "encoders" not in graph.get("alignment", set())


def test_no_source_file_over_600_lines() -> None:
    roots = ("brainmm", "alignment", "encoders", "benchmarks")
    long = {str(p.relative_to(REPO)): n for r in roots for p in (REPO / r).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_evaluation_and_pipeline_use_only_the_align_public_api() -> None:
    private = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith("brainmm.align."))
               for d in ("evaluate", "pipeline", "commands") for p in (REPO / "brainmm" / d).rglob("*.py")}
    public = set(__import__("brainmm.align", fromlist=["__all__"]).__all__)
    # `from brainmm.align import X` records "brainmm.align.X": allowed only for names of brainmm/align/__init__.py
    bad = {f: [m for m in mods if m.split(".")[2] not in public] for f, mods in private.items()}
    assert {f: m for f, m in bad.items() if m} == {}


def documented_layers() -> list[set[str]]:
    """The brainmm layers, bottom to top, as drawn in docs/architecture.md ("`a, b` -> `c` -> ...")."""
    text = (REPO / "docs" / "architecture.md").read_text()
    match = re.search(r"Within brainmm the\s+layers are, bottom to top[^:]*:\s*(.*?)\.\s+Shared", text, re.S)
    assert match, "docs/architecture.md: the layer sentence is missing"
    return [{"brainmm." + u.strip(" `\n") for u in part.split(",")} for part in match.group(1).split("->")]


def layer_violations(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """Every brainmm unit missing from the layers, and every import that does not point to a lower layer."""
    rank = {u: i for i, layer in enumerate(layers) for u in layer}
    units = {u for u, targets in graph.items() for u in (u, *targets) if u.startswith("brainmm.")}
    bad = [f"{u}: not in the documented layers" for u in sorted(units - set(rank))]
    return bad + [f"{src} -> {dst}" for src, targets in sorted(graph.items()) for dst in sorted(targets)
                  if src in rank and dst in rank and rank[dst] >= rank[src]]


def test_layer_checker_finds_sideways_and_upward_imports() -> None:
    layers = [{"brainmm.a"}, {"brainmm.b", "brainmm.c"}]
    assert layer_violations({"brainmm.b": {"brainmm.a"}}, layers) == []
    assert layer_violations({"brainmm.b": {"brainmm.c"}, "brainmm.a": {"brainmm.b", "brainmm.x"}}, layers) == [
        "brainmm.x: not in the documented layers", "brainmm.a -> brainmm.b", "brainmm.b -> brainmm.c"]


def test_imports_follow_the_documented_layer_order() -> None:
    assert layer_violations(unit_graph(), documented_layers()) == []


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


def _resolves(name: str) -> bool:
    """Whether a dotted name (`brainmm.io.run_lock`, `align.loop`: relative to brainmm) is a module or attribute."""
    for candidate in (name, f"brainmm.{name}"):
        parts = candidate.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return True
    return False


def test_the_code_named_on_the_architecture_page_exists() -> None:
    """Every dotted code name (`brainmm.x.y`, `alignment.x`, `encoders.x`, `align.x` ...) and every repository path
    in backticks on docs/architecture.md exists: a renamed module or function fails here, not in a reader's hands."""
    text = re.sub(r"```.*?```", "", (REPO / "docs" / "architecture.md").read_text(), flags=re.S)
    units = {"brainmm", "alignment", "encoders"} | {p.stem for p in (REPO / "brainmm").iterdir()
                                                    if p.suffix == ".py" or (p / "__init__.py").is_file()}
    tokens = {re.sub(r"\(.*", "", t).strip() for t in re.findall(r"`([^`]+)`", text)}
    names = {t for t in tokens if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", t) and t.split(".")[0] in units}
    paths = {t for t in tokens if re.fullmatch(r"[\w./-]+/[\w./-]*", t) and "/" in t and not t.startswith(".")
             and t.split("/")[0] in {"brainmm", "alignment", "encoders", "tests", "docs", "configs", "benchmarks"}}
    assert len(names) > 20 and len(paths) > 3
    assert sorted(n for n in names if not _resolves(n)) == []
    assert sorted(p for p in paths if not (REPO / p).exists()) == []


def test_every_test_file_is_named_after_what_it_tests() -> None:
    """tests/test_<name>.py: <name> starts with a module or package of brainmm/, alignment/, encoders/ (any depth),
    a benchmarks/ script, a configs/ file or this page (`architecture`); `test_bad_inputs_round2.py` or
    `test_core.py` (named by history) fail here."""
    known = {"brainmm", "alignment", "encoders", "architecture", "configs", "benchmarks"}
    for root in ("brainmm", "alignment", "encoders"):
        known |= {p.stem for p in (REPO / root).rglob("*.py")} | {p.name for p in (REPO / root).rglob("*") if p.is_dir()}
    known |= {p.stem for p in (REPO / "benchmarks").glob("*.py")} | {p.stem for p in (REPO / "configs").glob("*.yaml")}
    files = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    assert len(files) > 50
    assert [f for f in files if f.removeprefix("test_").removesuffix(".py").split("_")[0] not in known] == []
