"""`brainmm.io`: atomic writes (nothing half-written; the umask honoured), output folders that cannot be written
(an existing file, /proc, /dev/null, a read-only folder, root included) and `run_lock` (one writer per output
folder, across processes, for every stage)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from stage_inputs import REPO, World, align_argv, check_error, embed, ingest_argv, left_in, pretrain, run

from brainmm.cli import main
from brainmm.io import atomic_dir, atomic_write_text


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            atomic_write_text(tmp / "a.txt", "half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        atomic_write_text(tmp / "a.txt", "whole")
    assert (target / "a.txt").read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_out_is_an_existing_file(src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "out").write_text("keep me")
    code, err = run(ingest_argv(src, tmp_path / "out", None, "--overwrite"), capsys)
    check_error(code, err, r"output folder .*out: is an existing file \(expected a folder path\)")
    assert (tmp_path / "out").read_text() == "keep me"


@pytest.mark.parametrize("where", ["/proc/brainmm-out/dataset", "/dev/null/dataset"])
def test_out_under_a_special_path(src: Path, where: str, capsys) -> None:
    code, err = run(ingest_argv(src, Path(where)), capsys)
    check_error(code, err, rf"output folder {Path(where).parent}: cannot write there \(")


def test_out_under_a_read_only_folder(src: Path, read_only_folder: Path, capsys) -> None:
    code, err = run(ingest_argv(src, read_only_folder / "dataset"), capsys)
    check_error(code, err, r"output folder .*ro: cannot write there \(Permission denied\)")


def test_a_second_writer_is_refused(src: Path, tmp_path: Path, capsys) -> None:
    from brainmm.io import run_lock

    out = tmp_path / "runs" / "dataset"
    with run_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        code, err = run(ingest_argv(src, out), capsys)
        check_error(code, err, rf"output .*dataset is being written by another brainmm process \(pid {os.getpid()}, "
                               r"lock .*\.dataset\.lock\)")
        assert not out.exists()
    assert not lock.exists()
    assert main(ingest_argv(src, out)) == 0  # released: the next writer proceeds
    assert sorted(p.name for p in out.parent.iterdir()) == ["dataset"]


def test_lock_holds_across_processes(tmp_path: Path) -> None:
    from brainmm.errors import BrainmmError
    from brainmm.io import run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from brainmm.io import run_lock\n"
                               f"with run_lock({str(tmp_path / 'run')!r}):\n print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BrainmmError, match=rf"pid {holder.pid}"), run_lock(tmp_path / "run"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path / "run"):  # a dead holder leaves no stale lock
        pass


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_honour_the_umask(src: Path, tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    from brainmm.io import atomic_dir, atomic_file, atomic_write_json

    before = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        with atomic_file(tmp_path / "w.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        assert main(ingest_argv(src, tmp_path / "dataset")) == 0
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == dir_mode
    for p in [tmp_path / "dataset", *(tmp_path / "dataset").rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (dir_mode if p.is_dir() else file_mode), p


def _stage_argv(w: World, stage: str, out: Path) -> tuple[list[str], Path]:
    """(argv, locked output path) of a tiny run of `stage` writing into `out`."""
    if stage == "align":
        return align_argv(w, out / "align"), out / "align"
    if stage == "pretrain":
        return pretrain(w, out / "pre"), out / "pre"
    if stage == "embed":
        return embed(w, out, None, f"cache_dir={out / 'cache'}"), out / "brain"
    if stage == "evaluate":
        return ["-q", "evaluate", "--align-dir", str(w.root / "align"), f"output_dir={out / 'eval'}",
                "retrieval.n_boot=20", "retrieval.kway=0", "baselines.methods=[]", "figures.enabled=false",
                "model.log=false"], out / "eval"
    return ["-q", "demo", "--out", str(out / "pipe"), f"tracking.uri={w.uri}"], out / "pipe"


STAGES = ["align", "pretrain", "embed", "evaluate", "pipeline"]


def test_a_second_writer_of_a_run_folder_is_refused(world: World, tmp_path: Path, capsys) -> None:
    """Another process holds the lock of each stage's output (as a running `brainmm align` would): every stage is
    refused with one line naming that process, and writes nothing."""
    out = tmp_path / "out"
    locked = {stage: _stage_argv(world, stage, out) for stage in STAGES}
    paths = [str(p) for _, p in locked.values()]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import contextlib, sys, time; from brainmm.io import run_lock\n"
                               f"with contextlib.ExitStack() as s:\n [s.enter_context(run_lock(p)) for p in {paths!r}]\n"
                               " print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        for stage, (argv, path) in locked.items():
            code, err = run(argv, capsys)
            check_error(code, err, rf"output .*{path.name} is being written by another brainmm process "
                                   rf"\(pid {holder.pid}, lock .*\.{path.name}\.lock\)")
            assert not path.exists(), stage
    finally:
        holder.kill()
        holder.wait()
    assert main(_stage_argv(world, "align", out)[0]) == 0  # the holder is gone (killed): no stale lock
    assert (out / "align" / "metrics.json").is_file()


def _output_argv(w: World, stage: str, target: Path) -> list[str]:
    if stage == "align":
        return align_argv(w, target)
    if stage == "pretrain":
        return pretrain(w, target)
    return ["-q", "evaluate", "--align-dir", str(w.root / "align"), f"output_dir={target}", "baselines.methods=[]",
            "figures.enabled=false", "model.log=false", "retrieval.n_boot=20"]


@pytest.mark.parametrize("stage", ["align", "pretrain", "evaluate"])
def test_output_dir_that_cannot_be_a_run_folder(world: World, stage: str, tmp_path: Path, capsys) -> None:
    monkey = tmp_path / "file"
    monkey.write_text("keep me")
    check_error(*run(_output_argv(world, stage, monkey), capsys),
                r"output folder .*file: is an existing file \(expected a folder path\)")
    assert monkey.read_text() == "keep me" and left_in(tmp_path) == ["file"]
    for special in ("/proc/brainmm-out/run", "/dev/null/run"):
        check_error(*run(_output_argv(world, stage, Path(special)), capsys),
                    rf"output folder {Path(special).parent}: cannot write there \(")


@pytest.mark.parametrize("stage", ["align", "pretrain", "evaluate"])
def test_output_dir_under_a_read_only_folder(world: World, stage: str, read_only_folder: Path, capsys) -> None:
    code, err = run(_output_argv(world, stage, read_only_folder / "run"), capsys)
    check_error(code, err, r"output folder .*ro: cannot write there \(Permission denied\)")
