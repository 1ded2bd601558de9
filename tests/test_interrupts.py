"""Ctrl-C / SIGTERM at any moment: exit 130, one line, no traceback, MLflow runs KILLED, checkpoints readable.

Signals are sent at the k-th write of a run (an MLflow store commit, an artifact copy, a checkpoint's torch.save, an
atomic rename) for seeded k across the whole run, in-process through `brainmm.cli.main`; the write must finish
before the interrupt is raised. Real processes (`brainmm align`, `brainmm run`) are signalled at seeded random
delays.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from stage_inputs import REPO, arch_overrides, ingest_argv, write_tables
from test_pipeline import TINY

from brainmm import interrupts
from brainmm.cli import main
from brainmm.train.common import load_checkpoint

SEED = 20261207
# (module, class, function, only when called from this module): MLflow store commits and artifact copies, checkpoint
# saves, the renames of brainmm's atomic table / file writes
WRITES = (("sqlalchemy.orm", "Session", "commit", None),
          ("mlflow.store.artifact.local_artifact_repo", "LocalArtifactRepository", "log_artifact", None),
          ("torch", None, "save", "brainmm.train.common"), ("os", None, "replace", "brainmm.io"))


class SignalAtWrite:
    """Counts writes (WRITES); sends `signum` to this process from inside the `k`-th one and records whether that
    write then ran to its end (it must: the interrupt is held until the write is over)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int, signum: int = signal.SIGINT,
                 armed: Callable[[], bool] = lambda: True) -> None:
        import importlib

        self.k, self.signum, self.armed, self.count, self.sent, self.finished = k, signum, armed, 0, False, False
        for module, cls, name, caller in WRITES:
            owner = importlib.import_module(module)
            owner = getattr(owner, cls) if cls else owner
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), caller))

    def _wrap(self, fn, caller: str | None):
        def write(*args, **kwargs):
            if caller and sys._getframe(1).f_globals.get("__name__") != caller or not self.armed():
                return fn(*args, **kwargs)
            self.count += 1
            if self.count != self.k:
                return fn(*args, **kwargs)
            os.kill(os.getpid(), self.signum)
            self.sent = True
            time.sleep(0.01)  # the handler runs now, inside the write
            out = fn(*args, **kwargs)
            self.finished = True
            return out
        return write


def statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("SELECT status FROM runs ORDER BY start_time")]


def check_interrupted(rc: int, err: str, db: Path, out: Path) -> None:
    """Exit 130, one line, no traceback, no run left RUNNING or FAILED (the stopped ones are KILLED, earlier ones
    FINISHED), every checkpoint left readable, no temp files."""
    assert rc == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "brainmm: interrupted" and "Traceback" not in err, err[-3000:]
    assert "could not mark" not in err, err[-3000:]
    assert set(statuses(db)) <= {"KILLED", "FINISHED"}, statuses(db)
    for ckpt in out.rglob("step-*.pt"):
        assert load_checkpoint(ckpt)["model"]
    assert not [p for p in out.rglob("*.tmp")], "half-written files left"


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    write_tables(tmp_path / "tables", n=30)
    return tmp_path / "tables"


def align_argv(t: Path, out: Path, db: Path, epochs: int = 3) -> list[str]:
    return ["-q", "align", "--config", str(REPO / "configs" / "align_clip.yaml"), f"data.brain={t / 'brain'}",
            f"data.genetics={{dna: {t / 'dna'}}}", f"data.split={t / 'split.csv'}", f"output_dir={out}",
            "head.hidden_dim=8", "head.out_dim=4", "train.batch_size=4", f"train.epochs={epochs}",
            "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=2", "train.patience=0",
            "train.device=cpu", f"tracking.uri=sqlite:///{db}", "tracking.experiment=interrupts"]


# ------------------------------------------------------------------------------------------------- units


@pytest.fixture
def handlers() -> Iterator[None]:
    with interrupts.handle_interrupts():
        yield


def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends(handlers: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred_interrupts():
            with interrupts.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append("inner")
            done.append("outer")
        done.append("after")  # never: raised as the outer block ends
    assert done == ["inner", "outer"]


def test_a_signal_inside_mlflow_code_waits_for_it_to_return(handlers: None) -> None:
    """The catch-all: no deferred block, but the interrupted stack runs MLflow / SQLAlchemy code."""
    code = "def write(log):\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(0.1)\n    log.append('written')\n"
    for module, held in (("mlflow.store.fake", True), ("somewhere.else", False)):
        scope = {"__name__": module, "os": os, "signal": signal, "time": time}
        exec(code, scope)
        log: list[str] = []
        with pytest.raises(KeyboardInterrupt):
            scope["write"](log)
            time.sleep(1.0)  # the held signal is raised by the recheck timer once the write has returned
        assert log == (["written"] if held else []), module
        interrupts._State.delivered = False


def test_a_second_signal_after_a_while_stops_a_write_that_hangs(handlers: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interrupts, "FORCE_AFTER_S", 0.05)
    code = ("def write(log):\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.01)\n    log.append('held')\n"
            "    time.sleep(0.1)\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(0.1)\n    log.append('never')\n")
    scope = {"__name__": "mlflow.store.hangs", "os": os, "signal": signal, "time": time}
    exec(code, scope)
    log: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        scope["write"](log)
    assert log == ["held"]


def test_one_interrupt_per_process_and_the_handlers_restored_after() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    with interrupts.handle_interrupts():
        interrupts.stop_on_first()
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the first interrupt's cleanup is running
        time.sleep(0.05)
    assert {s: signal.getsignal(s) for s in before} == before


def test_caused_by_interrupt_follows_the_exception_chain() -> None:
    try:
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
    except RuntimeError as err:
        assert interrupts.caused_by_interrupt(err)
    assert not interrupts.caused_by_interrupt(RuntimeError("bug"))


class LockedClient:
    """An MLflow client whose set_terminated fails with `error` the first `fails` times."""

    def __init__(self, fails: int, error: str = "(sqlite3.OperationalError) database is locked") -> None:
        self.fails, self.error, self.calls = fails, error, []

    def set_terminated(self, run_id: str, status: str, end_time: int | None = None) -> None:
        self.calls.append(status)
        if len(self.calls) <= self.fails:
            raise RuntimeError(self.error)


@pytest.mark.slow
def test_the_final_status_update_is_retried_while_sqlite_is_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    from brainmm import tracking

    monkeypatch.setattr(tracking, "LOCK_WAIT_S", 0.0)
    client = LockedClient(fails=2)
    tracking.terminate(client, "r", "KILLED")
    assert client.calls == ["KILLED"] * 3
    client = LockedClient(fails=99)  # locked on every try: the error surfaces after LOCK_RETRIES tries
    with pytest.raises(RuntimeError, match="locked"):
        tracking.terminate(client, "r", "KILLED")
    assert len(client.calls) == tracking.LOCK_RETRIES
    client = LockedClient(fails=1, error="other")  # any other error is not retried
    with pytest.raises(RuntimeError, match="other"):
        tracking.terminate(client, "r", "KILLED")
    assert client.calls == ["KILLED"]


# ------------------------------------------------------------------------------------------- align runs


@pytest.mark.slow
def test_align_interrupted_at_the_kth_write_for_many_k(tables: Path, tmp_path: Path, _migrated_mlflow_db: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(_migrated_mlflow_db, tmp_path / "full.db")
    counter = SignalAtWrite(monkeypatch, k=-1)
    assert main(align_argv(tables, tmp_path / "full", tmp_path / "full.db")) == 0
    total = counter.count
    assert total > 40 and statuses(tmp_path / "full.db") == ["FINISHED"]
    monkeypatch.undo()
    rng = random.Random(SEED)
    ks = sorted({1, 2, *rng.sample(range(3, total - 6), 6)})  # the last writes close the finished run
    for i, k in enumerate(ks):
        signum = signal.SIGTERM if i % 3 == 2 else signal.SIGINT
        db, out = tmp_path / f"k{k}.db", tmp_path / f"k{k}"
        shutil.copy(_migrated_mlflow_db, db)
        capsys.readouterr()
        with monkeypatch.context() as m:
            hook = SignalAtWrite(m, k, signum)
            rc = main(align_argv(tables, out, db))
        assert hook.sent and hook.finished, f"k={k}: the write was cut short"
        check_interrupted(rc, capsys.readouterr().err, db, out)
        assert statuses(db) in ([], ["KILLED"]), (k, statuses(db))
    assert any(statuses(tmp_path / f"k{k}.db") == ["KILLED"] for k in ks)


def _popen(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "brainmm.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, ready, delay: float, signum: int, timeout: float = 300) -> tuple[int, str]:
    """Wait for `ready()`, sleep `delay`, send `signum`; the process must still be running then."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended (rc {proc.returncode}) too early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "never got ready"
            time.sleep(0.02)
        time.sleep(delay)
        assert proc.poll() is None, "ended before the signal"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_align_process_signalled_at_a_random_moment(signum: int, tables: Path, tmp_path: Path,
                                                          _migrated_mlflow_db: Path) -> None:
    rng = random.Random(SEED + signum)
    for attempt in range(1):  # one process per signal (~20 s each); the in-process test covers many moments
        db, out = tmp_path / f"{attempt}.db", tmp_path / f"run{attempt}"
        shutil.copy(_migrated_mlflow_db, db)
        proc = _popen(align_argv(tables, out, db, epochs=400), tmp_path)
        rc, err = signal_when(proc, lambda o=out: any((o / "checkpoints").glob("step-*.pt")),
                              rng.uniform(0, 0.3), signum)
        check_interrupted(rc, err, db, out)
        assert statuses(db) == ["KILLED"]
        assert torch.load(max((out / "checkpoints").glob("step-*.pt")), weights_only=True)["progress"]["step"] > 0


# ------------------------------------------------------------------------------------------- brainmm run


def pipeline_argv(out: str = "out") -> list[str]:
    return ["demo", "--quiet", "--out", out, *TINY, "threads=1"]


@pytest.fixture
def workdir(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working folder, with its own mlflow.db (the pipeline's default backend)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


def test_brainmm_run_interrupted_inside_its_align_stage_ends_parent_and_stage_killed(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The parent run (driven through the client) was FAILED after an interrupt although the README says KILLED."""
    tmp_path = workdir
    k = random.Random(SEED).randint(1, 30)
    hook = SignalAtWrite(monkeypatch, k, signal.SIGINT, armed=lambda: (tmp_path / "out" / "align" / "run.json").exists())
    rc = main(pipeline_argv())
    assert hook.sent and hook.finished, f"k={k}: the write was cut short"
    check_interrupted(rc, capsys.readouterr().err, tmp_path / "mlflow.db", tmp_path / "out")
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        stages = dict(con.execute("SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                  "WHERE t.key = 'brainmm.stage'"))
    assert stages.get("pipeline") == "KILLED" and stages.get("align") == "KILLED", stages
    assert json.loads((tmp_path / "out" / "pipeline.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_real_brainmm_run_sigterm_at_a_random_moment(tmp_path: Path, _migrated_mlflow_db: Path) -> None:
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    proc = _popen(pipeline_argv(), tmp_path)
    log = tmp_path / "out" / "brainmm.log"
    rc, err = signal_when(proc, lambda: log.is_file() and "] pretrain" in log.read_text(),
                          random.Random(SEED).uniform(0, 3.0), signal.SIGTERM)
    check_interrupted(rc, err, tmp_path / "mlflow.db", tmp_path / "out")
    assert "KILLED" in statuses(tmp_path / "mlflow.db")  # the parent and the stage running then


def test_an_interrupt_before_the_pipeline_enters_its_stages_still_kills_the_parent(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The parent run is created through the client before run.py's try block: the CLI ends it from OPEN_RUNS."""
    from brainmm import tracking
    from brainmm.pipeline.tracking import PipelineRun

    tmp_path = workdir

    def interrupted(self, cfg, artifact_file="config.yaml"):
        raise KeyboardInterrupt

    monkeypatch.setattr(PipelineRun, "log_config", interrupted)
    check_interrupted(main(pipeline_argv()), capsys.readouterr().err, tmp_path / "mlflow.db", tmp_path / "out")
    assert statuses(tmp_path / "mlflow.db") == ["KILLED"] and tracking.OPEN_RUNS == {}


@pytest.mark.slow
def test_sigterm_ends_the_run_as_killed(src: Path, tmp_path: Path, _migrated_mlflow_db: Path) -> None:
    assert main(ingest_argv(src, tmp_path / "dataset")) == 0
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "pre"
    argv = [sys.executable, "-m", "brainmm.cli", "-q", "pretrain", f"data.dataset={tmp_path / 'dataset'}",
            f"output_dir={out}", "train.max_steps=100000", "train.batch_size=2", "train.checkpoint_every=5",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *arch_overrides()]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.rglob("*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # wait for the first checkpoint
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "brainmm: interrupted" in err and "Traceback" not in err, err[-3000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM runs")]
    assert statuses == ["KILLED"], statuses
    import torch

    checkpoints = list(out.rglob("*.pt"))
    assert checkpoints
    for f in checkpoints:  # every checkpoint left behind is complete
        assert torch.load(f, map_location="cpu", weights_only=True)["model"]
    assert not [p for p in out.rglob("*.tmp")], "half-written files left"
