"""Shared test fixtures: golden BrainLM fixtures, a per-test MLflow backend, the sample-data cache, a read-only
folder, and the small valid inputs of every stage (`world`, `src`; tests/stage_inputs.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker():
    """One torch and one BLAS thread for the whole session, module fixtures included: the suite runs on two workers
    sharing two cores, and a second thread per worker only oversubscribes them."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs torch on one thread: tiny models gain nothing from more, and CI has two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def brainlm_fixtures() -> Path:
    """Folder with the golden BrainLM fixtures ($BRAINMM_BRAINLM_FIXTURES, default ../shared/fixtures/brainlm).

    Missing fixtures fail the test (they are required, never skipped).
    """
    path = Path(os.environ.get("BRAINMM_BRAINLM_FIXTURES", REPO.parent / "shared" / "fixtures" / "brainlm"))
    if not (path / "A_brainlm_tiny_mse" / "config.json").is_file():
        pytest.fail(f"golden BrainLM fixtures not found at {path} (set BRAINMM_BRAINLM_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The sample-data cache shared by the whole test run ($BRAINMM_DATA_DIR or <repo>/.cache/brainmm-data)."""
    path = Path(os.environ.get("BRAINMM_DATA_DIR", REPO / ".cache" / "brainmm-data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated sqlite MLflow DB per test session (schema migration costs seconds; copies are instant)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    client.search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking URI for this test (artifacts land under tmp_path/mlartifacts)."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, local artifact root); yields its http URI."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A folder (mode 0500) that this process cannot write into, root included: as root, the calling thread drops
    CAP_DAC_OVERRIDE from its effective capabilities for the test (restored after), so the kernel's permission
    check applies to root as to anyone."""
    import ctypes

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words
    dropped = os.geteuid() == 0
    if dropped:
        assert libc.capget(header, data) == 0, os.strerror(ctypes.get_errno())
        saved = data[0]
        data[0] &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        assert libc.capset(header, data) == 0, os.strerror(ctypes.get_errno())
    try:
        with pytest.raises(PermissionError):
            (ro / "probe").mkdir()
        yield ro
    finally:
        if dropped:
            data[0] = saved
            libc.capset(header, data)
        ro.chmod(0o700)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, _migrated_mlflow_db: Path):
    """Small valid inputs of every stage (tests/stage_inputs.py), an fMRI dataset ingested from them and a tiny
    align run: what the CLI-level tests edit into bad inputs (each test copies before it changes anything)."""
    from stage_inputs import (
        WINDOW,
        World,
        align_argv,
        write_brainlm,
        write_fmri_cohort,
        write_genetics,
        write_nt,
        write_tables,
    )

    from brainmm.cli import main

    root = tmp_path_factory.mktemp("bad-inputs")
    shutil.copy(_migrated_mlflow_db, root / "mlflow.db")
    w = World(root, f"sqlite:///{root / 'mlflow.db'}")
    write_fmri_cohort(w.src)
    assert main(["-q", "fmri", "ingest", "--cohort", str(w.src / "cohort.csv"), "--coords", str(w.src / "coords.tsv"),
                 "--out", str(root / "dataset"), "--num-timepoints", str(WINDOW)]) == 0
    write_genetics(w.gen, [f"sub{s}" for s in range(8)])
    write_brainlm(root / "brainlm")
    write_nt(root / "nt")
    write_tables(root / "tables")
    cwd = os.getcwd()
    os.chdir(root)  # nothing of the align run may land in the repository
    try:
        assert main(align_argv(w, root / "align")) == 0
    finally:
        os.chdir(cwd)
    return w


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 8-subject fMRI cohort (time series, cohort.csv, coords.tsv; tests/stage_inputs.py)."""
    from stage_inputs import write_fmri_cohort

    folder = tmp_path_factory.mktemp("cohort") / "fmri"
    write_fmri_cohort(folder)
    return folder
