"""Typed configs: YAML -> dataclasses with unknown-key and type errors, dotted overrides, resolved dumps.

Each stage defines its own dataclass (nested dataclasses for sections); this module only converts. A section's
class may choose the dataclass a mapping builds (classmethod `config_variant(value, where) -> (class, value)`, e.g.
`brainmm.align.towers.TowerConfig` by the section's `kind`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from brainmm.errors import BrainmmError
from brainmm.io import atomic_write_text

T = TypeVar("T")


class ConfigError(BrainmmError):
    """A config key is unknown, has the wrong type, or a file cannot be read."""


MAX_SHOWN = 200  # characters of a value repeated in an error message
MAX_YAML_NODES = 100_000  # nodes of a YAML document once its aliases are expanded (a config has hundreds)
ALLOW_NONFINITE = {"allow_nonfinite": True}  # dataclasses.field(metadata=...) of a float field that may be inf/nan


def _short(value: Any) -> str:
    """repr(value), cut to MAX_SHOWN characters (a config error never repeats a huge value)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES nodes (billion laughs)."""

    def compose_document(self):  # type: ignore[override]
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Node count with every alias expanded (memoised per node, so a shared subtree costs one visit)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise ConfigError("YAML: a recursive alias (a node that contains itself) is not a valid config")
    size = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        open_.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        for child in children:
            size += _expanded_size(child, memo, open_)
            if size > MAX_YAML_NODES:
                raise ConfigError(
                    f"YAML: aliases expand to more than {MAX_YAML_NODES} nodes (a config has hundreds); "
                    "refusing to expand it (nested aliases, 'billion laughs'?)"
                )
        open_.discard(key)
    memo[key] = size
    return size


def safe_load_bounded(text: str) -> Any:
    """yaml.safe_load with alias expansion bounded (MAX_YAML_NODES) and too-deep nesting refused."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise ConfigError("YAML: nested too deeply") from None


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, finite: bool = True) -> Any:
    """Check `value` against the annotation `tp` and convert it (dicts to dataclasses, ints to floats).

    Floats must be finite unless `finite` is False (fields with metadata ALLOW_NONFINITE).
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config field '{where}': expected {_type_name(tp)}, got {_short(value)}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where, finite)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"config field '{where}': expected {_type_name(tp)}, got {_short(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{where}': expected a list, got {_short(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config field '{where}': expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]", finite) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]", finite) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{where}': expected a mapping, got {_short(value)}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}", finite) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        variant = getattr(tp, "config_variant", None)
        if callable(variant):  # the class is chosen by the value (e.g. a tower section by its `kind`)
            tp, value = variant(value, where)
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{where}': expected a mapping, got {_short(value)}")
        return from_dict(tp, value, prefix=where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{where}': expected true/false, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{where}': expected a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if finite and not math.isfinite(number):
            raise ConfigError(f"config field '{where}': expected a finite number, got {_short(value)}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{where}': expected an integer, got {_short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field '{where}': expected a string, got {_short(value)}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"config field '{where}': expected a path, got {_short(value)}")
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config field '{where}': expected {_type_name(tp)}, got {_short(value)}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config{' section ' + repr(prefix) if prefix else ''}: expected a mapping, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"section '{prefix}'" if prefix else "top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(k) for k in unknown)} at {where}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], where, not fields[name].metadata.get("allow_nonfinite"))
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"config {'section ' + repr(prefix) if prefix else ''}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-YAML-safe dict of a config dataclass (paths as strings, tuples as lists)."""

    def clean(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: clean(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse 'a.b.c=VALUE' (VALUE read as YAML) into (['a','b','c'], value)."""
    if "=" not in text:
        raise ConfigError(f"override {_short(text)}: expected KEY=VALUE with a dotted key, e.g. model.hidden_size=256")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {_short(text)}: the key must be dotted names, e.g. train.lr=1e-4")
    try:
        value = safe_load_bounded(raw) if raw.strip() else ""
    except ConfigError as err:
        raise ConfigError(f"override {_short(key)}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {_short(text)}: value is not valid YAML ({err.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in place) and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {_short(text)}: '{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing file or bad YAML raise ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found (expected a YAML file)")
    try:
        data = safe_load_bounded(path.read_text())
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of `cls`, updated by the YAML at `path`, then by dotted overrides."""
    data = to_dict(cls()) if path is None else read_yaml(path)
    if path is not None:
        # Start from the defaults so partial files work, but report unknown keys from the file itself.
        from_dict(cls, data)  # validates keys/types of what the user wrote
        data = _deep_merge(to_dict(cls()), data)
    apply_overrides(data, list(overrides or []))
    return from_dict(cls, data)


def _deep_merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def dump_yaml(cfg: Any) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, dump_yaml(cfg))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict to dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
