"""Process-wide run settings: quiet mode, progress bars, log file, seeding."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_QUIET = False
LOG = logging.getLogger("brainmm")
# Progress bars of the Hugging Face libraries follow --quiet: environment variables for later imports...
_HF_BAR_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
# ...and the switches of modules already imported: (module, disable, enable).
_HF_BAR_SWITCHES = (
    ("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar"),
    ("datasets.utils.logging", "disable_progress_bar", "enable_progress_bar"),
    ("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars"),
)
_HF_BARS_SET: list[str] = []  # the environment variables set here (removed again when quiet is switched off)
_HF_BARS_OFF = False  # whether this module switched the Hugging Face bars off
_LOG_CREATED: list[Path] = []  # the run log and the folders made for it by this process (innermost first)


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
    """Silence progress bars (ours and the Hugging Face libraries') and info messages on the console.

    The run's log file still gets every message. The Hugging Face bars are also off when stderr is not a terminal
    (a log file would get every redraw); ours then print one line per loop (`progress`).
    """
    global _QUIET
    _QUIET = quiet
    for h in _console_handlers():
        h.setLevel(logging.WARNING if quiet else logging.INFO)
    _hf_progress_bars(not is_quiet() and _stderr_is_terminal())


def _hf_progress_bars(enabled: bool) -> None:
    """Switch transformers/datasets/huggingface_hub progress bars off, or back on if this module turned them off."""
    global _HF_BARS_OFF
    if enabled != _HF_BARS_OFF:  # already in that state (on by default, or switched off here)
        return
    _HF_BARS_OFF = not enabled
    if enabled:
        for var in _HF_BARS_SET:
            os.environ.pop(var, None)
        _HF_BARS_SET.clear()
    else:
        for var in _HF_BAR_ENV:
            if var not in os.environ:
                os.environ[var] = "1"
                _HF_BARS_SET.append(var)
    for module, disable, enable in _HF_BAR_SWITCHES:
        loaded = sys.modules.get(module)
        name = enable if enabled else disable
        if loaded is not None and hasattr(loaded, name):
            with warnings.catch_warnings():  # a user's own *_DISABLE_PROGRESS_BARS=1 wins, and needs no warning
                warnings.simplefilter("ignore", UserWarning)
                getattr(loaded, name)()


def is_quiet() -> bool:
    """Whether the console is quiet."""
    return _QUIET or os.environ.get("BRAINMM_QUIET") == "1"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar on stderr when it is a terminal; elsewhere (a log file, a pipe) one line when the loop
    ends instead of a bar redrawn at every step. Hidden with --quiet."""
    if is_quiet():
        yield from iterable
        return
    if not _stderr_is_terminal():
        start, n = time.perf_counter(), 0
        for item in iterable:
            yield item
            n += 1
        LOG.info("%s: %d %s in %.1f s", desc, n, unit, time.perf_counter() - start)  # a loop left early: no line
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


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
    created = [] if path.exists() else [path]
    folder = path.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    _close_log_file()
    _LOG_CREATED[:] = created
    root = logging.getLogger("brainmm")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the file also gets per-epoch details; the console handler stays at INFO/WARNING
    return path


def _close_log_file() -> None:
    root = logging.getLogger("brainmm")
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()


def discard_new_log() -> None:
    """Close the run log; delete it, and the folders made for it when empty, if this process created it.

    The CLI calls this after a user error, so that a run refused for bad input leaves no files behind
    (a resumed run's existing log is kept).
    """
    from brainmm.io import LOCK_PARENTS_LEFT

    _close_log_file()
    for path in _LOG_CREATED:
        try:
            if path.is_dir():
                path.rmdir()  # only when empty
            else:
                path.unlink(missing_ok=True)
        except OSError:
            break
    _LOG_CREATED.clear()
    for folder in LOCK_PARENTS_LEFT:  # the parents of a refused run's locked folder (brainmm.io.run_lock)
        try:
            folder.rmdir()
        except OSError:
            break
    LOCK_PARENTS_LEFT.clear()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU runs are then bit-reproducible)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
