"""Small real pretrained models that ship inside package-registry wheels (tests and demos)."""

from __future__ import annotations

from pathlib import Path

from brainmm.data.fetch import pip_unpacked
from brainmm.errors import BrainmmError
from brainmm.io import sha256_file

ANTICAPT_VERSION = "1.0"
HYENADNA_TINY_DIR = "anticapt/models/dataset1/finetuned_hyenadna"
APTAMER_FASTA = "anticapt/example/aptamer.fasta"

# Pinned contents of the anticapt 1.0 wheel: the .py files are the remote code that
# trust_remote_code=True will run, so they are checked before anyone loads them.
HYENADNA_TINY_SHA256 = {
    "config.json": "cfed78d4111c6b7a5cebcba3e790a8b7f604c09c66c07f36914447c38577e435",
    "configuration_hyena.py": "29cb6cae67f5010e279d67349e688663043f0bd6791a09c36d96da8cac3668a6",
    "modeling_hyena.py": "d78029cacea2c9259f1293fdb50b60f90872089469185e27d5c769086c475607",
    "pytorch_model.bin": "3ac8de259207c9f40a4685258900a2dff96d0e33cb698d204fa2350cdf28b34e",
    "tokenization_hyena.py": "d424da2f794958b0360e033bbf5edc9ee4e3e3126e883093621348f07761e408",
    "tokenizer_config.json": "6a4d61c9757ec25cfef8bfcdda1abff82f27cac332476c72ea5ebd3e65dea941",
}


def fetch_hyenadna_tiny(data_dir: Path) -> Path:
    """Folder of a real HyenaDNA-tiny checkpoint (d_model 128, 2 layers, remote code; GPL-3).

    It is `LongSafari/hyenadna-tiny-1k-seqlen-hf` fine-tuned on aptamers, shipped in the anticapt 1.0
    wheel; every file is checked against a pinned SHA-256. The wheel also holds two example
    sequences (`aptamer_fasta(data_dir)`).
    """
    folder = pip_unpacked("anticapt", ANTICAPT_VERSION, Path(data_dir)) / HYENADNA_TINY_DIR
    for name, digest in HYENADNA_TINY_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise BrainmmError(f"{path}: missing from the anticapt {ANTICAPT_VERSION} wheel")
        if sha256_file(path) != digest:
            raise BrainmmError(f"{path}: SHA-256 differs from the pinned anticapt {ANTICAPT_VERSION} file")
    return folder


def aptamer_fasta(data_dir: Path) -> Path:
    """The example FASTA of the same wheel (2 aptamer sequences the checkpoint was fine-tuned for)."""
    return pip_unpacked("anticapt", ANTICAPT_VERSION, Path(data_dir)) / APTAMER_FASTA
