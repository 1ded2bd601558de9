"""Numeric precision of the encoders: `auto | fp32 | bf16`, resolved per device, and the matching autocast context.

`bf16` means bfloat16 autocast: matrix products (linear layers, attention, the sequence convolution) run in
bfloat16 with fp32 accumulation while the parameters, the residual stream, layer norms, softmax statistics,
losses and returned embeddings stay float32. `auto` picks bf16 only where the device runs it fast: a CUDA GPU
with bf16 support, or a CPU with AMX (`amx_bf16`) or AVX512_BF16 (read from `torch.cpu.get_capabilities()`);
fp32 everywhere else (AVX2-only CPUs emulate bf16 and are slower in it than in fp32).

Training drivers wrap the forward in `autocast(precision, device)` and compute losses and contrastive logits
under `fp32()` (autocast off), so that a product of float32 embeddings is not cast down to bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from encoders.errors import EncoderInputError

PRECISIONS = ("auto", "fp32", "bf16")
Resolved = Literal["fp32", "bf16"]


def cpu_capabilities() -> dict[str, object]:
    """torch's view of this CPU (`torch.cpu.get_capabilities()`: ISA flags, name); empty where unavailable."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        return dict(get()) if get is not None else {}
    except RuntimeError:
        return {}


def _cpuinfo(key: str) -> str | None:
    """The first `key : value` of /proc/cpuinfo (Linux); None elsewhere or when absent."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpu_vendor() -> str:
    """`GenuineIntel`, `AuthenticAMD`, ... from /proc/cpuinfo (Linux); else guessed from torch's CPU name."""
    vendor = _cpuinfo("vendor_id")
    if vendor:
        return vendor
    name = str(cpu_capabilities().get("cpu_name", ""))
    return "GenuineIntel" if "Intel" in name else "AuthenticAMD" if "AMD" in name else name or "unknown"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo `model name`, else torch's CPU name)."""
    return _cpuinfo("model name") or str(cpu_capabilities().get("cpu_name", "unknown CPU"))


def cpu_fast_bf16(caps: dict[str, object] | None = None) -> bool:
    """Whether the CPU has bf16 hardware (AMX-BF16 tiles or AVX512_BF16 dot products)."""
    caps = cpu_capabilities() if caps is None else caps
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def cpu_isa(caps: dict[str, object] | None = None) -> str:
    """Short ISA summary for logs and benchmarks, e.g. `avx2 avx512 avx512_bf16 amx_bf16`."""
    caps = cpu_capabilities() if caps is None else caps
    flags = {"avx2": "avx2", "avx512_f": "avx512", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16"}
    return " ".join(name for key, name in flags.items() if caps.get(key)) or "no avx2"


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def resolve_precision(precision: str, device: torch.device | str) -> Resolved:
    """`auto`/`fp32`/`bf16` -> `fp32` or `bf16` for `device` (see the module docstring for `auto`)."""
    if precision not in PRECISIONS:
        raise EncoderInputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    dev = _device(device)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise EncoderInputError(f"precision 'bf16': the GPU {torch.cuda.get_device_name(dev)} has no bfloat16 "
                                "support; use precision fp32 or auto")
    if precision != "auto":
        return precision  # type: ignore[return-value]
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_fast_bf16() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for a resolved (or `auto`) precision; a no-op context for fp32."""
    dev = _device(device)
    if resolve_precision(precision, dev) == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def fp32() -> Iterator[None]:
    """Autocast off (every device type) inside: losses and contrastive logits computed here stay float32."""
    with contextlib.ExitStack() as stack:
        for kind in ("cpu", "cuda"):
            if torch.is_autocast_enabled(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield
