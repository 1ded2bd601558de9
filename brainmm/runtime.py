"""Process-wide run settings: quiet mode, progress bars, log file, seeding."""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_QUIET = False
LOG = logging.getLogger("brainmm")


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the moment (tests and notebooks swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _console_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger("brainmm").handlers if isinstance(h, _ConsoleHandler)]


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and info messages on the console (the run's log file still gets them)."""
    global _QUIET
    _QUIET = quiet
    for h in _console_handlers():
        h.setLevel(logging.WARNING if quiet else logging.INFO)


def is_quiet() -> bool:
    """Whether the console is quiet."""
    return _QUIET or os.environ.get("BRAINMM_QUIET") == "1"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar on stderr (hidden with --quiet)."""
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, disable=is_quiet(), leave=False, dynamic_ncols=True)


def setup_logging(quiet: bool = False) -> None:
    """Console logging for the CLI: one line per message, no tracebacks for user errors."""
    root = logging.getLogger("brainmm")
    if not _console_handlers():
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    set_quiet(quiet)


def log_to_file(run_dir: str | Path) -> Path:
    """Also write the brainmm log to `run_dir/brainmm.log` (appending: a resumed run keeps one log)."""
    path = Path(run_dir) / "brainmm.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("brainmm")
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU runs are then bit-reproducible)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
