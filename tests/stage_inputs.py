"""Small valid inputs of every stage for the CLI-level tests (an fMRI cohort, genetics files, a tiny BrainLM
and Nucleotide Transformer, embedding tables and their split), the argv of each stage on them, `run` (a CLI call
in this process) and `check_error`: the one-line user-error contract (exit 2, one line, no traceback)."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainmm.cli import main

REPO = Path(__file__).resolve().parents[1]
V, T, WINDOW = 6, 30, 10  # parcels, time points per recording, window length
BRAINLM_ARCH = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                    decoder_hidden_size=8, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                    decoder_intermediate_size=16, timepoint_patching_size=5, conv_kernel_size=None)
NT_VOCAB = (["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
            + ["".join(p) for p in itertools.product("ATCG", repeat=6)] + list("ATCGN"))


@dataclass
class World:
    """Small valid inputs of every stage (the bad cases are edits of these)."""

    root: Path
    uri: str  # sqlite tracking URI

    @property
    def src(self) -> Path:
        return self.root / "fmri"

    @property
    def gen(self) -> Path:
        return self.root / "genetics"


def write_fmri_cohort(src: Path, n_subjects: int = 8, seed: int = 0) -> None:
    """`n_subjects` recordings [T, V] (.npy) with a shared slow signal, cohort.csv and coords.tsv."""
    rng = np.random.default_rng(seed)
    src.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_subjects):
        slow = np.cumsum(rng.normal(size=(T, 1)), axis=0)
        x = slow * rng.uniform(0.5, 1.5, size=(1, V)) + rng.normal(size=(T, V))
        np.save(src / f"s{s}.npy", x.astype(np.float32))
        rows.append({"subject_id": f"sub{s}", "path": f"s{s}.npy", "age": 20 + 3 * s})
    pd.DataFrame(rows).to_csv(src / "cohort.csv", index=False)
    coords = rng.uniform(-60, 60, size=(V, 3))
    pd.DataFrame(coords, columns=["x", "y", "z"]).to_csv(src / "coords.tsv", sep="\t", index=False)


def write_genetics(gen: Path, subjects: list[str], seed: int = 0) -> None:
    """ref.fa (contig '1', 400 bp), regions.bed (2 regions), cohort.vcf.gz (phased SNVs of `subjects`)."""
    from brainmm.data.genetics.simulate import VcfRecord, write_fasta, write_vcf

    rng = np.random.default_rng(seed)
    gen.mkdir(parents=True, exist_ok=True)
    seq = "".join(rng.choice(list("ACGT"), size=400))
    write_fasta(gen / "ref.fa", {"1": seq})
    (gen / "regions.bed").write_text("1\t50\t150\tr1\n1\t200\t300\tr2\n")
    records = []
    for pos in (60, 90, 120, 220, 250, 280):
        ref = seq[pos - 1]
        alt = "A" if ref != "A" else "C"
        gts = [tuple(int(a) for a in rng.integers(0, 2, size=2)) for _ in subjects]
        records.append(VcfRecord("1", pos, ref, (alt,), gts))
    write_vcf(gen / "cohort.vcf.gz", {"1": 400}, subjects, records)


def write_brainlm(folder: Path, parcels: int = V, window: int = WINDOW, seed: int = 0) -> Path:
    """A tiny random-init BrainLM MAE checkpoint folder."""
    from encoders.brainlm import BrainLMConfig, BrainLMForPretraining

    torch.manual_seed(seed)
    model = BrainLMForPretraining(BrainLMConfig(**BRAINLM_ARCH, num_brain_voxels=parcels,
                                                num_timepoints_per_voxel=window))
    model.save_pretrained(folder)
    return folder


def write_nt(folder: Path, seed: int = 1) -> Path:
    """A tiny random-init Nucleotide Transformer v1 folder (native ESM weights + 6-mer vocab.txt)."""
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(seed)
    config = EsmConfig(vocab_size=len(NT_VOCAB), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, pad_token_id=1, mask_token_id=2, max_position_embeddings=66,
                       position_embedding_type="absolute", token_dropout=True)
    EsmForMaskedLM(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(NT_VOCAB) + "\n")
    return folder


def write_tables(root: Path, n: int = 30, seed: int = 0) -> None:
    """brain / dna embedding tables sharing a latent signal, and their split table."""
    from brainmm.data.splits import make_split, save_split
    from brainmm.embeddings import EmbeddingTable

    rng = np.random.default_rng(seed)
    subjects = [f"s{i:02d}" for i in range(n)]
    z = rng.normal(size=(n, 3))
    EmbeddingTable(subjects, z @ rng.normal(size=(3, 6)) + 0.1 * rng.normal(size=(n, 6)), {}).save(root / "brain")
    EmbeddingTable(subjects, z @ rng.normal(size=(3, 5)) + 0.1 * rng.normal(size=(n, 5)), {}).save(root / "dna")
    save_split(make_split(subjects, seed=0), root / "split.csv")


def align_argv(w: World, out: Path, *extra: str, brain: Path | None = None, dna: Path | None = None,
               split: Path | None = None) -> list[str]:
    """A tiny `brainmm align` on the world's tables."""
    t = w.root / "tables"
    return ["-q", "align", "--config", str(REPO / "configs" / "align_clip.yaml"), f"data.brain={brain or t / 'brain'}",
            f"data.genetics={{dna: {dna or t / 'dna'}}}", f"data.split={split or t / 'split.csv'}",
            f"output_dir={out}", "head.hidden_dim=8", "head.out_dim=4", "train.batch_size=4", "train.epochs=1",
            "train.warmup_steps=1", "train.device=cpu", f"tracking.uri={w.uri}", "tracking.experiment=bad-inputs",
            *extra]


def ingest(w: World, cohort: Path, out: Path, *extra: str, coords: Path | None = None,
           no_coords: bool = False) -> list[str]:
    """`brainmm fmri ingest` of `cohort` with the world's coordinates (or `coords`, or none)."""
    argv = ["-q", "fmri", "ingest", "--cohort", str(cohort), "--out", str(out), "--num-timepoints", str(WINDOW)]
    if not no_coords:
        argv += ["--coords", str(coords or w.src / "coords.tsv")]
    return argv + list(extra)


def matrix(w: World, out: Path, vcf: Path | None = None, *extra: str) -> list[str]:
    """`brainmm genetics matrix` of the world's VCF (or `vcf`) with the dataset's split."""
    return ["-q", "genetics", "matrix", "--vcf", str(vcf or w.gen / "cohort.vcf.gz"),
            "--split", str(w.root / "dataset" / "split.csv"), "--out", str(out / "genotypes"), *extra]


def embed(w: World, out: Path, model: Path | None = None, *extra: str) -> list[str]:
    """`brainmm embed` of the world's dataset with its tiny BrainLM (or `model`)."""
    return ["-q", "embed", f"model={model or w.root / 'brainlm'}", f"dataset={w.root / 'dataset'}",
            f"out={out / 'brain'}", f"cache_dir={w.root / 'brain-cache'}", "device=cpu", *extra]


def pretrain(w: World, out: Path, *extra: str) -> list[str]:
    """A tiny `brainmm pretrain` (2 steps) on the world's dataset."""
    return ["-q", "pretrain", f"data.dataset={w.root / 'dataset'}", f"output_dir={out}", "train.max_steps=2",
            "train.batch_size=2", f"tracking.uri={w.uri}", *arch_overrides(), *extra]


def check_error(code: int, err: str, match: str, quiet: bool = True) -> str:
    """Exit code 2, exactly one line on stderr, `brainmm: error: ` + a message matching `match`, no traceback.

    With -q (`quiet`) nothing else may reach stderr, not even a progress bar.
    """
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    assert err and len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert not quiet or "\r" not in err, f"progress output despite -q: {err!r}"
    line = lines[0].rsplit("\r", 1)[-1]  # progress bars (when not quiet) erase themselves with carriage returns
    assert line.startswith("brainmm: error: "), line
    assert re.search(match, line), f"{match!r} not in {line!r}"
    return line


def run(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `brainmm <argv>` run in this process."""
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def ingest_argv(src: Path, out: Path, cohort: Path | None = None, *extra: str) -> list[str]:
    """`brainmm fmri ingest` of the cohort in `src` (or `cohort`) with its coordinates."""
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


def arch_overrides() -> list[str]:
    """`model.arch.<key>=<value>` overrides of BRAINLM_ARCH for `brainmm pretrain`."""
    return [f"model.arch.{k}={'null' if v is None else v}" for k, v in BRAINLM_ARCH.items()]


def left_in(folder: Path) -> list[str]:
    """Every path under `folder` (relative), [] when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
