"""The `brainmm` package (brainmm/__init__.py): no network access at run time: MLflow telemetry off outside
pytest (a real process with sockets blocked), and `brainmm demo` and a DNA-model stage with sockets blocked."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from stage_inputs import REPO, arch_overrides, ingest, write_fmri_cohort, write_genetics, write_nt

SITECUSTOMIZE = '''
import os, socket
_log = os.environ["NETLOG"]
def _record(what):
    with open(_log, "a") as fh:
        fh.write(repr(what) + "\\n")
    raise OSError("network blocked by the test")
def _local(address):
    host = address[0] if isinstance(address, tuple) else address
    return not isinstance(address, tuple) or host in ("127.0.0.1", "::1", "localhost")
_connect = socket.socket.connect
def connect(self, address):
    if not _local(address):
        _record(("connect", address))
    return _connect(self, address)
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        _record(("getaddrinfo", host))
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = connect
socket.socket.connect_ex = connect
socket.getaddrinfo = getaddrinfo
'''


CI_VARS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "TRAVIS", "BUILDKITE",
           "CIRCLECI", "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "TEAMCITY_VERSION",
           "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def _clean_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in CI_VARS and not k.startswith("RUNBOT_")}
    env.update(PYTHONPATH=f"{site}{os.pathsep}{REPO}", NETLOG=str(tmp_path / "net.log"), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    return env


@pytest.mark.slow
def test_mlflow_telemetry_is_off_outside_pytest(tmp_path: Path, _migrated_mlflow_db: Path) -> None:
    """The real CLI, without PYTEST_CURRENT_TEST (MLflow disables telemetry under pytest by itself), with sockets
    blocked: `brainmm pretrain` (MLflow run, metrics, artifacts) makes no connection and no DNS lookup."""
    env = _clean_env(tmp_path)
    # control: without brainmm, telemetry is on in this environment, and the guard sees its host being looked up
    probe = ("import importlib, mlflow, requests, mlflow.telemetry.utils as u\n"
             "print(u.is_telemetry_disabled())\n"
             "try:\n requests.get(u._get_config_url(mlflow.__version__), timeout=1)\nexcept Exception:\n pass\n"
             "import brainmm\nprint(importlib.reload(u).is_telemetry_disabled())")
    seen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert seen.stdout.split() == ["False", "True"], seen.stderr[-2000:]
    assert "mlflow-telemetry" in (tmp_path / "net.log").read_text()
    (tmp_path / "net.log").unlink()
    write_fmri_cohort(tmp_path / "fmri", n_subjects=8)
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    cli = [sys.executable, "-m", "brainmm.cli", "-q"]
    src = tmp_path / "fmri"
    steps = [ingest(None, src / "cohort.csv", tmp_path / "dataset", coords=src / "coords.tsv")[1:],
             ["pretrain", f"data.dataset={tmp_path / 'dataset'}", f"output_dir={tmp_path / 'pre'}",
              "train.max_steps=2", "train.batch_size=2", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
              *arch_overrides()]]
    for argv in steps:
        proc = subprocess.run([*cli, *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pre").is_dir()
    log = tmp_path / "net.log"
    assert not log.exists(), f"network attempts: {log.read_text()}"


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)) and not isinstance(address, tuple):
        return True  # AF_UNIX path
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Refuse (and record) every connection or name lookup that is not loopback or a unix socket."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo

    def guard(address) -> None:
        if not _is_local(address):
            attempts.append(repr(address))
            raise OSError(f"network access blocked by the test: {address!r}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        guard(address)
        return real_create(address, *args, **kwargs)

    def getaddrinfo(host, *args, **kwargs):
        guard((host, 0))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)  # the code itself must stay offline
    return attempts


def test_the_network_guard_blocks_remote_hosts(no_network: list[str]) -> None:
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("203.0.113.5", 443), timeout=1)
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("huggingface.co", 443)
    assert _is_local(("127.0.0.1", 5000)) and _is_local("/tmp/sock") and not _is_local(("pypi.org", 443))
    assert len(no_network) == 2
    no_network.clear()


# `brainmm demo` shrunk to seconds: every stage of the pipeline (simulate -> ingest -> pretrain -> embed ->
# genotype matrix -> align with a genotype MLP tower -> evaluate with figures and MLflow models)
TINY_DEMO = [
    "threads=1", "simulate.n_subjects=40", "simulate.brain.n_parcels=8", "simulate.brain.n_timepoints=60",
    "simulate.brain.n_modules=2", "simulate.factors.n_factors=2", "simulate.genotypes.n_blocks=4",
    "ingest.num_timepoints=20", "pretrain.model.arch.timepoint_patching_size=10", "pretrain.train.max_steps=4",
    "pretrain.train.batch_size=4", "align.train.epochs=2", "align.train.batch_size=4",
    "evaluate.probes.targets=[age]", "evaluate.probes.n_splits=2", "evaluate.probes.n_boot=20",
    "evaluate.retrieval.n_boot=20", "evaluate.baselines.n_permutations=10", "evaluate.baselines.shuffled_pairs=false",
]


@pytest.mark.slow
def test_the_demo_pipeline_runs_without_network(no_network: list[str], tmp_path: Path, _migrated_mlflow_db: Path,
                                                monkeypatch, capsys) -> None:
    from brainmm.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    code = main(["-q", "demo", "--out", str(tmp_path / "demo"), f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 *TINY_DEMO])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (tmp_path / "demo" / "evaluate" / "metrics.json").is_file()
    assert "Retrieval" in capsys.readouterr().out
    assert no_network == [], f"connection attempts: {no_network}"


def test_dna_embeddings_run_without_network(no_network: list[str], tmp_path: Path) -> None:
    """The stage the demo does not run: a DNA foundation model (tokenizer + weights) on personal haplotypes."""
    from brainmm.cli import main

    subjects = [f"sub{i}" for i in range(6)]
    write_genetics(tmp_path / "genetics", subjects)
    g = tmp_path / "genetics"
    assert main(["-q", "genetics", "embed", "--vcf", str(g / "cohort.vcf.gz"), "--fasta", str(g / "ref.fa"),
                 "--regions", str(g / "regions.bed"), "--encoder", "nt", "--encoder-path", str(write_nt(tmp_path / "nt")),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out" / "dna")]) == 0
    from brainmm.embeddings import EmbeddingTable

    assert EmbeddingTable.load(tmp_path / "out" / "dna").ids == subjects
    assert no_network == [], f"connection attempts: {no_network}"
