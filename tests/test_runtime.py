"""`brainmm.runtime`: a quiet console with a full log file, progress bars only on a terminal (one line per loop
in a log), and seeding: the same config and seed give bit-identical datasets, embeddings, heads and metrics on CPU.

The determinism test runs the whole pipeline (simulate -> ingest -> genotype matrix -> DNA embeddings with a tiny
model -> pretrain -> brain embeddings -> align -> evaluate) twice in separate folders through the CLI; the tables,
weights and metric files of both runs must be byte-identical."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest
from stage_inputs import BRAINLM_ARCH, REPO, write_nt

from brainmm import runtime
from brainmm.cli import main


def test_quiet_console_but_full_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from brainmm.runtime import log_to_file, setup_logging

    setup_logging(quiet=True)
    path = log_to_file(tmp_path)
    log = logging.getLogger("brainmm.test")
    log.info("detail line")
    log.warning("warning line")
    for h in logging.getLogger("brainmm").handlers:
        h.flush()
    err = capsys.readouterr().err
    assert "detail line" not in err and "warning line" in err
    assert "detail line" in path.read_text()
    setup_logging(quiet=False)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_only_on_a_terminal(terminal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log file got a redrawn bar per step (168 KB); now it gets one line per loop."""
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    runtime.setup_logging(quiet=False)
    try:
        assert list(runtime.progress(range(50), desc="align epoch 3", unit="it")) == list(range(50))
    finally:
        runtime.set_quiet(False)
    text = stream.getvalue()
    assert runtime._HF_BARS_OFF is not terminal  # transformers / datasets / hub bars follow the same rule
    if terminal:
        assert "\r" in text and "align epoch 3" in text  # tqdm's bar
    else:
        assert "\r" not in text and text.count("\n") == 1, text
        assert text.startswith("align epoch 3: 50 it in ")


def test_quiet_progress_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    runtime.setup_logging(quiet=True)
    try:
        assert sum(runtime.progress(range(5), desc="x")) == 10
    finally:
        runtime.set_quiet(False)
    assert stream.getvalue() == ""


# Outputs whose bytes must not change between two runs (relative to a run's root). Files that hold their own
# path, an MLflow run id or a timestamp (configs, run.json, logs, table sidecars, the dataset manifest) are
# compared through the content hashes they carry instead (see the test).
SAME_BYTES = [
    "dataset/normalisation.json", "dataset/split.csv", "dataset/coords.tsv",
    "genetics/genotypes.safetensors", "genetics/genotypes.variants.tsv", "genetics/dna.safetensors",
    "pretrain/model/model.safetensors", "pretrain/metrics.json",
    "embed/brain.safetensors", "embed/brain_subjects.safetensors",
    "align/heads.safetensors", "align/metrics.json",
    "align/evaluation/metrics.csv", "align/evaluation/metrics.json",
]


def simulate(root: Path) -> Path:
    """A tiny simulated cohort with sequences (reference, regions, phased haplotypes)."""
    from brainmm.config import load_config
    from brainmm.data.simulate import SimulationConfig, simulate_cohort

    cfg = load_config(SimulationConfig, REPO / "configs" / "simulate.yaml", [
        "n_subjects=40", "write_sequences=true", "brain.n_parcels=8", "brain.n_timepoints=40", "brain.n_modules=2",
        "factors.n_factors=2", "factors.n_causal=2", "genotypes.n_blocks=3", "genotypes.snps_per_block=4",
        "genotypes.block_bp=150", "genotypes.gap_bp=50", "genotypes.family_fraction=0.25"])
    return simulate_cohort(cfg, root)


def run_pipeline(root: Path, uri: str, nt_model: Path, evaluate: tuple[str, ...] = ()) -> Path:
    """Every stage through `brainmm.cli.main` on tiny settings, outputs under `root`; returns `root`.

    `evaluate`: extra overrides of the evaluate stage (by default it skips figures and MLflow models).
    """
    sim = simulate(root / "sim")
    arch = [f"model.arch.{k}={'null' if v is None else v}" for k, v in BRAINLM_ARCH.items()]
    ds = root / "dataset"
    steps = [
        ["fmri", "ingest", "--cohort", str(sim / "cohort.csv"), "--coords", str(sim / "coords.tsv"),
         "--out", str(ds), "--num-timepoints", "20"],
        ["genetics", "matrix", "--vcf", str(sim / "genotypes.vcf.gz"), "--split", str(ds / "split.csv"),
         "--out", str(root / "genetics" / "genotypes")],
        ["genetics", "embed", "--vcf", str(sim / "haplotypes.vcf.gz"), "--fasta", str(sim / "reference.fa"),
         "--regions", str(sim / "regions.bed"), "--encoder", "nt", "--encoder-path", str(nt_model),
         "--cache-dir", str(root / "dna-cache"), "--out", str(root / "genetics" / "dna")],
        ["pretrain", f"data.dataset={ds}", f"output_dir={root / 'pretrain'}", "data.windows_per_recording=2",
         "train.max_steps=4", "train.batch_size=8", "train.checkpoint_every=2", "train.log_every=1",
         "train.device=cpu", "eval.every=2", f"tracking.uri={uri}", *arch],
        ["embed", f"model={root / 'pretrain' / 'model'}", f"dataset={ds}", f"out={root / 'embed' / 'brain'}",
         f"cache_dir={root / 'brain-cache'}", "device=cpu", "batch_size=8"],
        ["align", "--config", str(REPO / "configs" / "align_multimodal.yaml"),
         f"data.brain={root / 'embed' / 'brain_subjects'}",
         f"data.genetics={{dna: {root / 'genetics' / 'dna'}, genotype: {root / 'genetics' / 'genotypes'}}}",
         f"data.split={ds / 'split.csv'}", f"output_dir={root / 'align'}", "head.hidden_dim=16", "head.out_dim=8",
         "train.batch_size=4", "train.epochs=3", "train.device=cpu", f"tracking.uri={uri}"],
        ["evaluate", "--align-dir", str(root / "align"), f"data.cohort={ds}", "probes.targets=[age]",
         "probes.n_splits=2", "probes.n_boot=50", "probes.n_permutations=1", "retrieval.n_boot=50",
         "baselines.n_permutations=20", "figures.enabled=false", "model.log=false", *evaluate],
    ]
    for argv in steps:
        assert main(["-q", *argv]) == 0, argv
    return root


@pytest.mark.slow
def test_same_config_and_seed_give_identical_bytes(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch) -> None:
    import json

    from brainmm.data.fmri import FmriDataset
    from brainmm.embeddings import EmbeddingTable

    monkeypatch.chdir(tmp_path)
    nt = write_nt(tmp_path / "nt")
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(_migrated_mlflow_db, tmp_path / name / "mlflow.db")
        runs.append(run_pipeline(tmp_path / name, f"sqlite:///{tmp_path / name / 'mlflow.db'}", nt))
    a, b = runs

    differing = [rel for rel in SAME_BYTES if (a / rel).read_bytes() != (b / rel).read_bytes()]
    assert not differing, f"not reproducible: {differing}"
    for folder in ("sim", "dataset/data", "align/embeddings"):  # every file of these folders
        files = sorted(p.relative_to(a) for p in (a / folder).rglob("*") if p.is_file()
                       and p.name not in ("manifest.json", "config.yaml") and not p.name.endswith(".json"))
        assert files, folder
        differing = [str(f) for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
        assert not differing, f"not reproducible: {differing}"
    # content hashes recorded next to the data
    assert FmriDataset.load(a / "dataset").manifest["data_hash"] == FmriDataset.load(b / "dataset").manifest["data_hash"]
    for stem in ("genetics/genotypes", "genetics/dna"):
        assert EmbeddingTable.load(a / stem).meta["data_hash"] == EmbeddingTable.load(b / stem).meta["data_hash"]
    ma = json.loads((a / "align" / "metrics.json").read_text())
    assert ma["val"]["score"] >= 0 and len(ma["history"]) == 3  # a real run, not an empty file
