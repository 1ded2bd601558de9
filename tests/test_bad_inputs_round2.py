"""Bad-input catalogue, round 2 (issue 19): memory bombs, silent damage, signals, umask, locks, CLI grammar,
small-N intervals and MLflow telemetry. docs/bad-inputs.md lists the cases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_bad_inputs import WINDOW, check_error, ingest, write_brainlm, write_fmri_cohort

from brainmm.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 8-subject cohort (time series, cohort.csv, coords.tsv)."""
    folder = tmp_path_factory.mktemp("round2") / "fmri"
    write_fmri_cohort(folder)
    return folder


def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def ingest_argv(src: Path, out: Path, cohort: Path | None = None, *extra: str) -> list[str]:
    argv = ["-q", "fmri", "ingest", "--cohort", str(cohort or src / "cohort.csv"), "--coords",
            str(src / "coords.tsv"), "--out", str(out), "--num-timepoints", str(WINDOW)]
    return argv + list(extra)


def edited_cohort(src: Path, tmp: Path, path3: str) -> Path:
    """The cohort with absolute paths and its third recording pointing at `path3`."""
    df = pd.read_csv(src / "cohort.csv", dtype=str)
    df["path"] = [str(src / p) for p in df["path"]]
    df.loc[2, "path"] = path3
    df.to_csv(tmp / "cohort.csv", index=False)
    return tmp / "cohort.csv"


# ------------------------------------------------------------------------------------------- configs


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    names = "abcdefghijklmnop"
    for i in range(1, levels + 1):
        text += f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]\n"
    return text


def test_yaml_billion_laughs_is_refused_at_once(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "lol.yaml"
    cfg.write_text(billion_laughs())
    assert len(cfg.read_bytes()) < 500
    code, err = run(["-q", "embed", "--config", str(cfg)], capsys)
    check_error(code, err, r"config file .*lol\.yaml: YAML: aliases expand to more than 100000 nodes")
    recursive = tmp_path / "rec.yaml"
    recursive.write_text("a: &a [1, *a]\n")
    check_error(*run(["-q", "embed", "--config", str(recursive)], capsys), r"rec\.yaml: YAML: a recursive alias")


def test_small_aliases_still_work() -> None:
    from brainmm.config import safe_load_bounded

    assert safe_load_bounded("base: &b {x: 1}\nother: *b\n") == {"base": {"x": 1}, "other": {"x": 1}}


def test_long_values_are_cut_in_config_errors(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "long.yaml"
    cfg.write_text("pooling: [" + ",".join(["x" * 100] * 1000) + "]\n")
    code, err = run(["-q", "embed", "--config", str(cfg)], capsys)
    line = check_error(code, err, r"config field 'pooling': expected one of .*\.\.\. \(\d+ characters\)")
    assert len(line) < 600


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "inf"])
def test_non_finite_floats_are_refused(value: str, capsys) -> None:
    code, err = run(["-q", "align", "--config", str(REPO / "configs" / "align_clip.yaml"), f"train.lr={value}"], capsys)
    check_error(code, err, r"config field 'train\.lr': expected a finite number, got")
    code, err = run(["-q", "pretrain", f"train.base_lr={value}"], capsys)
    check_error(code, err, r"config field 'train\.base_lr': expected a finite number, got")


def test_a_field_may_allow_non_finite_values() -> None:
    from dataclasses import dataclass, field

    from brainmm.config import ALLOW_NONFINITE, ConfigError, load_config

    @dataclass
    class Cfg:
        limit: float = field(default=1.0, metadata=ALLOW_NONFINITE)
        lr: float = 1e-3

    assert load_config(Cfg, None, ["limit=.inf"]).limit == float("inf")
    with pytest.raises(ConfigError, match="'lr': expected a finite number"):
        load_config(Cfg, None, ["lr=.nan"])


# ------------------------------------------------------------------------------------- fMRI ingest


def test_zero_byte_npy(src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    cohort = edited_cohort(src, tmp_path, str(tmp_path / "empty.npy"))
    code, err = run(ingest_argv(src, tmp_path / "out", cohort), capsys)
    check_error(code, err, r"empty\.npy: not a numeric \.npy array \(the file is empty \(0 bytes\)\)")
    assert not (tmp_path / "out").exists()


def test_symlink_loop_in_cohort_paths(src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    cohort = edited_cohort(src, tmp_path, str(tmp_path / "a.npy"))
    code, err = run(ingest_argv(src, tmp_path / "out", cohort), capsys)
    check_error(code, err, r"table .*cohort\.csv: row 3, column 'path': path .*a\.npy cannot be resolved "
                           r"\(a symbolic-link loop\?\)")


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


def test_headerless_csv_with_a_bom_keeps_its_first_time_point(tmp_path: Path) -> None:
    from brainmm.data.fmri.readers import load_array

    x = np.arange(12, dtype=np.float64).reshape(4, 3) + 0.5
    text = "\n".join(",".join(str(v) for v in row) for row in x) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "plain.csv").write_text(text)
    np.testing.assert_array_equal(load_array(tmp_path / "bom.csv"), x)
    np.testing.assert_array_equal(load_array(tmp_path / "plain.csv"), x)


def _tiny_parcel(src: Path, tmp: Path) -> tuple[Path, Path]:
    """Parcel 1 scaled to ~1e-39 (an IQR tiny but not zero) in the training recordings, normal in the test one
    (sub7): dividing by that IQR overflows float32. Returns (cohort, split table)."""
    folder = tmp / "tiny"
    folder.mkdir()
    df = pd.read_csv(src / "cohort.csv", dtype=str)
    for i, p in enumerate(df["path"]):
        x = np.load(src / p).astype(np.float64)
        if i < 6:
            x[:, 1] *= 1e-39
        np.save(folder / p, x)
    df.to_csv(folder / "cohort.csv", index=False)
    split = pd.DataFrame({"subject_id": df["subject_id"], "group": df["subject_id"],
                          "split": ["train"] * 6 + ["val", "test"]})
    split.to_csv(folder / "split.csv", index=False)
    return folder / "cohort.csv", folder / "split.csv"


def test_near_zero_iqr_counts_as_zero(src: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    cohort, split = _tiny_parcel(src, tmp_path)
    code, err = run(ingest_argv(src, tmp_path / "out", cohort, "--split-from", str(split)), capsys)
    check_error(code, err, r"robust normalisation: parcel 1 \('1'\) has an interquartile range of [1-9][0-9.]*e-(39|40) "
                           r"over the training split \(zero in effect")
    assert main(ingest_argv(src, tmp_path / "zeroed", cohort, "--split-from", str(split), "--bad-parcels", "zero")) == 0
    from brainmm.data.fmri import FmriDataset

    ds = FmriDataset.load(tmp_path / "zeroed")
    signals = np.concatenate([np.asarray(r["signal"]) for r in ds.data])
    assert np.isfinite(signals).all() and (signals[:, 1] == 0).all()
    # the last line of defence: were the spread taken at face value (the old check, IQR > 0), the values
    # overflow float32, and ingest refuses to write them
    monkeypatch.setattr(sys.modules["brainmm.data.fmri.ingest"], "near_zero_spread", lambda spread: ~(np.asarray(spread) > 0))
    code, err = run(ingest_argv(src, tmp_path / "out", cohort, "--split-from", str(split)), capsys)
    check_error(code, err, r"recording 'sub[67]' \(.*s[67]\.npy\): parcel 1 \('1'\) is not finite after robust "
                           r"normalisation \(\d+ values\)")
    assert not (tmp_path / "out").exists()


def test_non_finite_normalised_values_are_refused() -> None:
    from brainmm.data.fmri.normalise import NormStats, near_zero_spread

    assert near_zero_spread(np.array([1.0, 2.0, 1e-40, 0.0, np.nan, 1e-7])).tolist() == [
        False, False, True, True, True, True]
    stats = NormStats("robust", ["a", "b"], median=[0.0, 0.0], iqr=[1.0, 1e-300])
    assert not np.isfinite(stats.transform(np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]))).all()


def test_unknown_tr_is_announced_once(src: Path, tmp_path: Path, capsys) -> None:
    code, err = run(ingest_argv(src, tmp_path / "out"), capsys)
    assert code == 0
    assert err.count("TR unknown for every recording") == 1 and "assumed equal" in err, err
    df = pd.read_csv(src / "cohort.csv").assign(path=lambda d: [str(src / p) for p in d["path"]])
    df["tr"] = [2.0] * 4 + [None] * 4
    df.to_csv(tmp_path / "some.csv", index=False)
    code, err = run(ingest_argv(src, tmp_path / "out2", tmp_path / "some.csv"), capsys)
    assert code == 0 and "TR unknown for 4 of 8 recordings" in err and "assumed 2 s" in err, err
    df["tr"] = [2.0] * 4 + [0.72] * 4
    df.to_csv(tmp_path / "mixed.csv", index=False)
    check_error(*run(ingest_argv(src, tmp_path / "out3", tmp_path / "mixed.csv"), capsys),
                r"recordings have different TRs \[0\.72, 2\.0\] s")


# ---------------------------------------------------------------------------------- locks and modes


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


# -------------------------------------------------------------------------------------- checkpoints


def test_absurd_hidden_size_is_refused_before_allocation(tmp_path: Path, capsys) -> None:
    folder = write_brainlm(tmp_path / "huge")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 10_000_000
    (folder / "config.json").write_text(json.dumps(config))
    code, err = run(["-q", "brainlm", "inspect", str(folder)], capsys)  # inspect accepts mismatches: the budget
    check_error(code, err, r"checkpoint .*huge: the model its config\.json describes \(400,050,620,040,741 parameters\) "
                           r"needs about 1,600,202\.5 GB, more than this machine's available memory \([0-9.,]+ GB of")
    from encoders.brainlm import BrainLMForPretraining
    from encoders.errors import EncoderInputError

    with pytest.raises(EncoderInputError, match=r"tensor '.*' has shape \[.*8\] but the config gives \[.*10000000\]"):
        BrainLMForPretraining.from_pretrained(folder)  # embed/pretrain: the header comparison comes first


def test_check_param_budget() -> None:
    from brainmm.errors import BrainmmError
    from brainmm.memory import available_memory, check_param_budget

    available, total = available_memory()
    assert 0 < available <= total
    assert check_param_budget(1000, "head") == 4000
    with pytest.raises(BrainmmError, match=r"align config field 'head\.hidden_dim': 1,000,000,000,000 parameters "
                                           r"need about 16\.0 TB \(4 bytes x 4 copies\)"):
        check_param_budget(10**12, "align config field 'head.hidden_dim'", copies=4)


def test_checkpoint_errors_point_to_inspect(tmp_path: Path, capsys) -> None:
    from test_bad_inputs import BRAINLM_ARCH

    folder = write_brainlm(tmp_path / "wide")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 2 * BRAINLM_ARCH["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    from encoders.brainlm import BrainLMForPretraining
    from encoders.errors import EncoderInputError

    with pytest.raises(EncoderInputError, match=rf"; `brainmm brainlm inspect {folder}` lists them all$"):
        BrainLMForPretraining.from_pretrained(folder)


# ---------------------------------------------------------------------------------------- genetics inputs


def test_genetics_import_of_a_string_array(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    (tmp_path / "ids.txt").write_text("s1\ns2\n")
    code, err = run(["-q", "genetics", "import", "--table", str(tmp_path / "s.npy"), "--ids", str(tmp_path / "ids.txt"),
                     "--out", str(tmp_path / "out" / "t")], capsys)
    check_error(code, err, r"embedding file .*s\.npy: expected numeric vectors, got dtype <U1 \(e\.g\. 'a'\)")
    assert not (tmp_path / "out").exists()


def test_ragged_pgs_weights(tmp_path: Path) -> None:
    from brainmm.data.genetics.matrix import PolygenicScores
    from brainmm.errors import BrainmmError

    path = tmp_path / "pgs.tsv"
    path.write_text("variant_id\teffect_allele\tpgs1\n1:60:T:A\tA\t0.5\n1:90:G:C\tC\t0.1\t9\t9\n")
    with pytest.raises(BrainmmError, match=r"PGS weights .*pgs\.tsv: not a readable table \(Error tokenizing data\. "
                                           r"C error: Expected 3 fields in line 3, saw 5\)"):
        PolygenicScores(path, n_subjects=2)


def test_pickled_genotype_tower_names_the_blocked_global(tmp_path: Path) -> None:
    import torch

    from encoders.errors import EncoderInputError
    from encoders.genotype import GenotypeEncoder, GenotypeEncoderConfig

    folder = tmp_path / "tower"
    GenotypeEncoder(GenotypeEncoderConfig(n_snps=5, hidden_sizes=(4,), output_size=3)).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.ones(2), "payload": Path("/tmp")}, folder / "pytorch_model.bin")
    with pytest.raises(EncoderInputError, match=r"pytorch_model\.bin cannot be read as a PyTorch state dict with "
                                                r"weights_only=True: .*\(it needs pathlib\.PosixPath\)"):
        GenotypeEncoder.from_pretrained(folder, local_files_only=True)


# ------------------------------------------------------------------------------------------ CLI grammar


def test_flags_anywhere_among_overrides() -> None:
    parser = build_parser()
    args = parser.parse_args(["align", "a=1", "--resume", "b=2", "--config", "c.yaml"])
    assert args.overrides == ["a=1", "b=2"] and args.resume and args.config == "c.yaml"
    args = parser.parse_args(["run", "p.yaml", "x=1", "--overwrite", "y=2"])
    assert args.overrides == ["x=1", "y=2"] and args.overwrite
    args = parser.parse_args(["genetics", "matrix", "--vcf", "v", "a=1", "--set", "b=2", "c=3"])
    assert args.overrides == ["a=1", "c=3"] and args.set == ["b=2"]


def test_genetics_takes_bare_overrides(tmp_path: Path, capsys) -> None:
    code, err = run(["-q", "genetics", "matrix", "--vcf", str(tmp_path / "x.vcf.gz"), "min_maf=lots"], capsys)
    check_error(code, err, r"config field 'min_maf': expected a number, got 'lots'")


# ------------------------------------------------------------------------------------- small-N intervals


def test_wilson_interval_matches_textbook_values() -> None:
    from alignment.stats import wilson_ci

    lo, hi = wilson_ci(1.0, 2)
    z = 1.959963984540054
    assert lo == pytest.approx(1 / (1 + z * z / 2), rel=1e-12) and hi == 1.0  # p = 1: n / (n + z^2)
    lo, hi = wilson_ci(0.0, 10)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z), rel=1e-12)
    lo, hi = wilson_ci(0.5, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_tiny_n_retrieval_intervals_are_not_points() -> None:
    from alignment.retrieval import bootstrap_rank_metrics, chance_metrics

    with pytest.warns(UserWarning, match="only 2 subjects"):
        ci = bootstrap_rank_metrics(np.array([0, 0]), ks=(1,), n_boot=50)
    assert ci["R_at_1"][0] < 0.5 and ci["R_at_1"][1] == 1.0
    with pytest.warns(UserWarning):
        shuffled = bootstrap_rank_metrics(np.array([1, 1]), ks=(1,), n_boot=50)  # MRR 0.5 in every resample
    assert shuffled["mrr"][0] < 0.5 < shuffled["mrr"][1]
    assert shuffled["mrr"][0] < chance_metrics(2)["mrr"] < shuffled["mrr"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = bootstrap_rank_metrics(np.arange(40) % 5, ks=(1,), n_boot=50)  # no warning at 40 subjects
    assert big["R_at_1"][0] < 0.2 < big["R_at_1"][1]


# ---------------------------------------------------------------------------------------- processes


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
              *_arch()]]
    for argv in steps:
        proc = subprocess.run([*cli, *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pre").is_dir()
    log = tmp_path / "net.log"
    assert not log.exists(), f"network attempts: {log.read_text()}"


def _arch() -> list[str]:
    from test_bad_inputs import BRAINLM_ARCH

    return [f"model.arch.{k}={'null' if v is None else v}" for k, v in BRAINLM_ARCH.items()]


@pytest.mark.slow
def test_sigterm_ends_the_run_as_killed(src: Path, tmp_path: Path, _migrated_mlflow_db: Path) -> None:
    assert main(ingest_argv(src, tmp_path / "dataset")) == 0
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "pre"
    argv = [sys.executable, "-m", "brainmm.cli", "-q", "pretrain", f"data.dataset={tmp_path / 'dataset'}",
            f"output_dir={out}", "train.max_steps=100000", "train.batch_size=2", "train.checkpoint_every=5",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *_arch()]
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
