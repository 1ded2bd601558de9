"""Package namespaces that import a public name's defining module on first access (PEP 562): reading and checking
a config (`from brainmm.align import AlignConfig`) loads no torch, transformers or mlflow."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: public name -> the module defining it, imported when first used."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
