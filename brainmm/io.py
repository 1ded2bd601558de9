"""Atomic writes, run-folder locks and file hashing: nothing half-written, no two writers, modes by the umask."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brainmm.errors import BrainmmError
from brainmm.interrupts import deferred_interrupts

LOCK_PARENTS_LEFT: list[Path] = []  # folders a failed locked run made and could not remove yet (innermost first)


def current_umask() -> int:
    """The process umask (read from /proc on Linux, so no other thread ever sees it changed)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a mkstemp/mkdtemp result (0600/0700) the mode a plain open()/mkdir() would: 0666/0777 & ~umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """mkdtemp in `parent` (created if missing) with the umask's mode; unwritable parents raise BrainmmError."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    except OSError as err:
        raise _unwritable(parent, err) from None
    try:
        honour_umask(tmp, folder=True)
    except BaseException:  # Ctrl-C / SIGTERM right after mkdtemp: leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _unwritable(folder: Path, err: OSError) -> BrainmmError:
    reason = err.strerror or type(err).__name__
    return BrainmmError(f"output folder {folder}: cannot write there ({reason}); choose a writable folder")


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as err:
        raise _unwritable(path.parent, err) from None
    try:
        os.close(fd)
        honour_umask(name)
    except BaseException:  # Ctrl-C / SIGTERM right after mkstemp: leave nothing behind
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _refuse_folder_target(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        raise BrainmmError(f"output file {path}: is an existing folder (expected a file path)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    _refuse_folder_target(path)
    tmp = None
    try:
        with deferred_interrupts():  # Ctrl-C / SIGTERM wait for the (small) write to finish
            tmp = _tmp_sibling(path)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON (indented, sorted keys) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path to write; on success it is renamed to `path`, on failure removed.

    `suffix` keeps an extension on the temp name for writers that insist on one (e.g. numpy, safetensors).
    """
    path = Path(path)
    _refuse_folder_target(path)
    tmp = None
    try:
        tmp = _tmp_sibling(path, suffix)
        yield tmp
        with deferred_interrupts():
            honour_umask(tmp)  # again: some writers (safetensors) replace the file with a 0600 one of their own
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path`, on failure it is removed.

    The folder gets the umask's mode (mkdtemp alone would leave it 0700). An existing file at `path` is refused
    (never replaced by a folder), as is an unwritable parent.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BrainmmError(f"output folder {path}: is an existing file (expected a folder path)")
    if path.exists() and not overwrite:
        raise BrainmmError(f"output folder {path} already exists (pass --overwrite to replace it)")
    tmp = None
    try:
        tmp = make_temp_dir(path.parent, f".{path.name}.")
        yield tmp
        with deferred_interrupts():  # an interrupt between the two renames would leave no `path`
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def run_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the output `path` (a run folder or a table stem) while a stage writes it.

    The lock is `fcntl.flock` on `<parent>/.<name>.lock` (a sibling, so it also guards folders that
    `atomic_dir` creates or replaces at the end); the file holds the owner's pid and is removed on release.
    A second writer is refused at once with a BrainmmError naming the folder and the holder's pid. The lock is
    advisory (brainmm processes honour it) and is released by the kernel when a process dies, so a crash never
    leaves a stale lock. Every stage that writes a run folder wraps its work in it:
    `with run_lock(cfg.output_dir): ...`.
    """
    import fcntl

    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # removed again if left empty
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(path.parent, err) from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise _unwritable(path.parent, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BrainmmError(
                f"output {path} is being written by another brainmm process (pid {holder}, lock {lock}); "
                "wait for it to finish or choose another output folder"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    failed = False
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    except BaseException:
        failed = True
        raise
    finally:
        lock.unlink(missing_ok=True)  # before unlocking, so a waiter never locks a removed file
        os.close(fd)
        for i, folder in enumerate(made):
            try:
                folder.rmdir()
            except OSError:
                if failed:  # the run's own files go later (runtime.discard_new_log): these folders go with them
                    LOCK_PARENTS_LEFT.extend(made[i:])
                break


def check_output_folder(path: str | os.PathLike) -> Path:
    """Refuse a run folder that is an existing file or an existing folder this process cannot write (one line)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BrainmmError(f"output folder {path}: is an existing file (expected a folder path)")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise BrainmmError(f"output folder {path}: cannot write there (Permission denied); choose a writable folder")
    return path


def main_process_lock(path: str | os.PathLike, is_main: bool) -> contextlib.AbstractContextManager:
    """`run_lock(path)` in the main process of a torchrun job (other ranks write nothing of their own)."""
    return run_lock(path) if is_main else contextlib.nullcontext()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
