"""Memory budget checks: refuse a model or buffer that cannot fit, before anything is allocated."""

from __future__ import annotations

from brainmm.errors import BrainmmError
from encoders.weights import available_memory


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


def check_param_budget(n_params: int, what: str, bytes_per_param: int = 4, copies: int = 1) -> int:
    """Refuse (BrainmmError naming `what`) `n_params` parameters of `bytes_per_param` bytes, held `copies` times
    (e.g. 4 for training with Adam: weights, gradients, two moments), when that exceeds the available memory.

    Returns the estimated bytes. Call it with the parameter count of a model built on torch's meta device (or
    computed from the config), before the real model is built: e.g. `align` for `head.hidden_dim`, `pretrain`
    for the BrainLM config.
    """
    need = int(n_params) * int(bytes_per_param) * int(copies)
    available, total = available_memory()
    if need > available:
        raise BrainmmError(
            f"{what}: {int(n_params):,} parameters need about {human_bytes(need)} "
            f"({bytes_per_param} bytes x {copies} cop{'y' if copies == 1 else 'ies'}), more than this machine's "
            f"available memory ({human_bytes(available)} of {human_bytes(total)}); check the model sizes in the config"
        )
    return need


def proc_status_mb(field: str) -> float | None:
    """One memory line of /proc/self/status (e.g. "VmHWM", "RssAnon") in MB; None where it cannot be read."""
    import contextlib
    from pathlib import Path

    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


def anon_rss_mb() -> float | None:
    """This process's anonymous resident memory (RssAnon: heap, arrays, tensors; not the file pages it has mapped,
    which the kernel can drop), MB; None where /proc is not available."""
    return proc_status_mb("RssAnon")


class AnonPeak:
    """The largest `anon_rss_mb` seen while the block runs, sampled every `interval` s by a daemon thread (the kernel
    keeps a peak of all resident memory, VmHWM, but none of the anonymous part alone)."""

    def __init__(self, interval: float = 0.2) -> None:
        import threading

        self.interval, self.peak_mb = interval, anon_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="brainmm-anon-peak", daemon=True)

    def _sample(self) -> None:
        now = anon_rss_mb()
        if now is not None:
            self.peak_mb = max(self.peak_mb or 0.0, now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> AnonPeak:
        if self.peak_mb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()
