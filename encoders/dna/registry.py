"""Name registry for DNA encoder families (timm-style): one module per family, one decorator each."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from encoders.dna.base import DNAEncoder, DNAEncoderConfig
from encoders.errors import EncoderInputError

_REGISTRY: dict[str, type[DNAEncoder]] = {}

# Built-in families and the module that registers each; imported on first use so that
# `import encoders.dna` stays light.
BUILTIN_FAMILIES: dict[str, str] = {
    "generator": "encoders.dna.generator",
    "nt": "encoders.dna.nucleotide_transformer",
    "dnabert2": "encoders.dna.dnabert2",
    "hyenadna": "encoders.dna.hyenadna",
    "hf": "encoders.dna.hf",
    "caduceus": "encoders.dna.caduceus",
    "evo2": "encoders.dna.evo2",
}


def register_dna_encoder(name: str) -> Callable[[type[DNAEncoder]], type[DNAEncoder]]:
    """Class decorator: register a DNAEncoder subclass under `name` (sets `cls.family`)."""

    def wrap(cls: type[DNAEncoder]) -> type[DNAEncoder]:
        if not (isinstance(cls, type) and issubclass(cls, DNAEncoder)):
            raise TypeError(f"register_dna_encoder({name!r}) expects a DNAEncoder subclass, got {cls!r}")
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"DNA encoder family {name!r} is already registered by {known.__module__}")
        cls.family = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_builtin(name: str) -> None:
    module = BUILTIN_FAMILIES.get(name)
    if module is not None and name not in _REGISTRY and importlib.util.find_spec(module) is not None:
        importlib.import_module(module)


def list_dna_encoders() -> list[str]:
    """Names of all available families (built-in modules present in this install, plus registered ones)."""
    for name in BUILTIN_FAMILIES:
        _import_builtin(name)
    return sorted(_REGISTRY)


def get_dna_encoder_class(name: str) -> type[DNAEncoder]:
    """The class registered under `name`."""
    _import_builtin(name)
    if name not in _REGISTRY:
        raise EncoderInputError(f"family: unknown DNA encoder {name!r}; available: {', '.join(list_dna_encoders())}")
    return _REGISTRY[name]


def create_dna_encoder(name: str, path: str | None = None, **options: Any) -> DNAEncoder:
    """Load family `name` from the local folder `path`; `options` are fields of the family's config class."""
    cls = get_dna_encoder_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise EncoderInputError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields - {'path'}))}")
    if path is None:
        raise EncoderInputError(f"path: {name} needs the local folder that holds the model")
    return cls(cls.config_class(path=str(path), **options))


__all__ = ["DNAEncoderConfig", "create_dna_encoder", "get_dna_encoder_class", "list_dna_encoders",
           "register_dna_encoder"]
