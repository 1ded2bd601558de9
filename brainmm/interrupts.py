"""Ctrl-C and SIGTERM as one KeyboardInterrupt, held back while a write is in progress.

The CLI installs `handle_interrupts()`: SIGINT and SIGTERM raise KeyboardInterrupt, except while the main thread
is inside a write that must not be cut in half (a `deferred_interrupts()` block: checkpoint saves, atomic file
renames, tracking writes; or any MLflow / SQLAlchemy call, found on the interrupted stack). Then the signal is
held and raised as soon as the write ends, so an MLflow store is never left mid-transaction ("database is
locked") and a run can still be closed as KILLED. One interrupt per process: later signals are ignored while the
first is handled (torchrun and a terminal both signal on one Ctrl-C), except that a second signal more than
`FORCE_AFTER_S` seconds after a held one stops a write that hangs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

# modules whose frames on the interrupted stack mean "a tracking write is in progress"
CRITICAL_MODULES = ("mlflow", "sqlalchemy", "alembic", "brainmm.tracking", "brainmm.pipeline.tracking")
RECHECK_S = 0.02  # how often a held signal checks whether the write has ended (SIGALRM timer)
FORCE_AFTER_S = 2.0  # a second signal this long after a held one is delivered at once
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    """Process-wide: whether handlers are installed, the deferral depth and the held signal."""

    installed = False
    depth = 0
    held: int | None = None
    held_at = 0.0
    delivered = False
    timer = False  # whether the recheck timer (ITIMER_REAL) is ours and running
    previous_alarm: Callable | int | None = None  # the SIGALRM handler before ours (called for alarms not ours)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _in_critical_code(frame: FrameType | None) -> bool:
    """Whether the interrupted stack runs code of CRITICAL_MODULES."""
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if any(name == m or name.startswith(m + ".") for m in CRITICAL_MODULES):
            return True
        frame = frame.f_back
    return False


def _recheck_later() -> None:
    _State.timer = True
    signal.setitimer(signal.ITIMER_REAL, RECHECK_S)


def _stop_timer() -> None:
    if _State.timer:  # never cancel a timer someone else set
        _State.timer = False
        with contextlib.suppress(ValueError):
            signal.setitimer(signal.ITIMER_REAL, 0)


def _deliver(signum: int) -> None:
    _State.held = None
    _State.delivered = True
    _stop_timer()
    raise KeyboardInterrupt(f"signal {signum}")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGINT / SIGTERM: raise KeyboardInterrupt now, or hold it while a write is in progress."""
    if _State.delivered:
        return  # the first interrupt is being handled: its cleanup must not be cut short
    if _State.held is not None:
        if time.monotonic() - _State.held_at >= FORCE_AFTER_S:
            _deliver(signum)  # the user insists: stop the write that hangs
        return
    if _State.depth > 0 or _in_critical_code(frame):
        _State.held, _State.held_at = signum, time.monotonic()
        _recheck_later()
        return
    _deliver(signum)


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    """Timer tick while a signal is held: deliver it once the write has ended."""
    if not _State.timer:  # someone else's alarm
        if callable(_State.previous_alarm):
            _State.previous_alarm(signum, frame)
        return
    _State.timer = False
    if _State.held is None or _State.delivered:
        return
    if _State.depth > 0 or _in_critical_code(frame):
        _recheck_later()
        return
    _deliver(_State.held)


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Install the handlers (main thread only; elsewhere a no-op) and restore the previous ones afterwards."""
    if not _main_thread() or _State.installed:
        yield
        return
    watched = (*SIGNALS, signal.SIGALRM)
    previous: dict[int, Callable | int | None] = {s: signal.getsignal(s) for s in watched}
    _State.installed, _State.depth, _State.held, _State.delivered = True, 0, None, False
    _State.previous_alarm = previous[signal.SIGALRM]
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield
    finally:
        _stop_timer()
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _State.installed, _State.held = False, None


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block (a write that must not be cut in half) ends, then raise it."""
    if not _main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.held is not None and not _State.delivered:
            _deliver(_State.held)


def stop_on_first() -> None:
    """Ignore further signals from now on (the CLI is handling an interrupt: its cleanup must finish)."""
    _State.delivered = True


def caused_by_interrupt(err: BaseException | None) -> bool:
    """Whether `err` is a KeyboardInterrupt or was raised while one propagated (e.g. a store error in cleanup)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
