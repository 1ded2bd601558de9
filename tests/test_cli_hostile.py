"""`brainmm.cli` under hostile inputs, the bad-input catalogue: every stage refuses a malformed input with exit
code 2, ONE line on stderr naming the file/field and what was expected, no traceback, and no files in the output
folder.

Most cases run the CLI in-process (`brainmm.cli.main`); a few run `python -m brainmm.cli` as real processes.
docs/bad-inputs.md lists the cases; the valid inputs they edit are tests/stage_inputs.py (fixture `world`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from stage_inputs import T, V, World, align_argv, check_error, embed, ingest, matrix, pretrain

from brainmm.cli import main


@dataclass
class Case:
    """One malformed input: `make(world, out)` writes it and returns the argv; `match` must be in the error line."""

    id: str
    make: Callable[[World, Path], list[str]]
    match: str


def _edited_series(w: World, name: str, write: Callable[[Path], None]) -> Path:
    """A copy of the cohort whose third recording is the file `name` written by `write`."""
    folder = w.root / "cases" / name
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(w.src / "cohort.csv", dtype=str)
    df["path"] = [str(w.src / p) for p in df["path"]]
    write(folder / name)
    df.loc[2, "path"] = str(folder / name)
    df.to_csv(folder / "cohort.csv", index=False)
    return folder / "cohort.csv"


def _edited_cohort(w: World, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    df = pd.read_csv(w.src / "cohort.csv", dtype=str)
    df = edit(df.assign(path=[str(w.src / p) for p in df["path"]]))
    path = w.root / "cases" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def series_case(id: str, name: str, write: Callable[[np.ndarray, Path], None], match: str) -> Case:
    """The third recording of the cohort replaced by `write(good_series, path)`."""

    def make(w: World, out: Path) -> list[str]:
        x = np.load(w.src / "s0.npy")
        return ingest(w, _edited_series(w, name, lambda p: write(x, p)), out)

    return Case(id, make, match)


def _nan(x: np.ndarray, p: Path) -> None:
    y = x.copy()
    y[5, 2] = np.nan
    np.save(p, y)


def _constant(x: np.ndarray, p: Path) -> None:
    y = x.copy()
    y[:, 1] = 3.0
    np.save(p, y)


def _pickled(x: np.ndarray, p: Path) -> None:
    np.save(p, np.array([{"a": 1}] * T, dtype=object), allow_pickle=True)  # a pickle in disguise


FMRI_CASES = [
    series_case("fmri-nan-values", "nan.npy", _nan,
                r"recording 'sub2' \(.*nan\.npy\): parcel 2 \('2'\) has NaN/Inf values; .*--bad-parcels"),
    series_case("fmri-constant-parcel", "const.npy", _constant, r"const\.npy\): parcel 1 .* is constant over time"),
    series_case("fmri-square-ambiguous-orientation", "square.npy", lambda x, p: np.save(p, x[:V]),
                r"square\.npy: shape \[6, 6\] is ambiguous .*--orientation time-parcel or parcel-time"),
    series_case("fmri-wrong-parcel-count", "five.npy", lambda x, p: np.save(p, x[:, :5]),
                r"five\.npy: shape \[30, 5\] matches neither \[T, 6\] .* nor \[6, T\]"),
    series_case("fmri-too-short", "short.npy", lambda x, p: np.save(p, x[:8]),
                r"short\.npy\): 8 time points, shorter than one window of 10; pass --drop-short"),
    series_case("fmri-empty-file", "empty.csv", lambda x, p: p.write_text(""), r"empty\.csv: file is empty"),
    series_case("fmri-non-numeric-table", "text.csv",
                lambda x, p: p.write_text("\n".join(",".join(["1", "2", "x", "4", "5", "6"]) for _ in range(T))),
                r"text\.csv: expected a numeric table"),
    series_case("fmri-3d-array", "cube.npy", lambda x, p: np.save(p, x[None]),
                r"cube\.npy: expected a 2-D array \(time x parcels\), got shape \[1, 30, 6\]"),
    series_case("fmri-pickled-npy", "object.npy", _pickled,
                r"object\.npy: not a numeric \.npy array \(Object arrays cannot be loaded when allow_pickle=False\)"),
    series_case("fmri-corrupt-mat", "broken.mat", lambda x, p: p.write_bytes(b"garbage garbage garbage"),
                r"broken\.mat: not a readable MATLAB \.mat file"),
    series_case("fmri-unknown-format", "sheet.xlsx", lambda x, p: p.write_bytes(b"PK\x03\x04"),
                r"sheet\.xlsx: unknown format '\.xlsx'; expected \.csv, \.tsv"),
    Case("coords-wrong-count",
         lambda w, out: ingest(w, w.src / "cohort.csv", out, coords=_text(w, "five.tsv", "x\ty\tz\n" + "1\t2\t3\n" * 5)),
         r"s0\.npy: shape \[30, 6\] matches neither .* for 5 parcels \(the parcel count of coordinates file "
         r".*five\.tsv\)"),
    Case("coords-non-numeric",
         lambda w, out: ingest(w, w.src / "cohort.csv", out, coords=_text(w, "text.tsv", "x\ty\tz\n" + "1\ty\t3\n" * V)),
         r"coordinates file .*text\.tsv: x, y, z must be numbers"),
    Case("coords-missing",
         lambda w, out: ingest(w, w.src / "cohort.csv", out, no_coords=True),
         r"parcel coordinates are needed: pass a coordinates table \(--coords\) or a labels atlas \(--atlas\)"),
    Case("cohort-duplicate-subject-id",
         lambda w, out: ingest(w, _edited_cohort(w, "dup", lambda d: d.assign(
             subject_id=["sub0", "sub1", "sub2", "sub1", *d["subject_id"][4:]])), out),
         r"dup\.csv: duplicate subject_id \(add a 'session' column .*\): row 2 and row 4 both have subject_id='sub1'"),
    Case("cohort-missing-file",
         lambda w, out: ingest(w, _edited_cohort(w, "gone", lambda d: d.assign(
             path=[*d["path"][:4], "gone.npy", *d["path"][5:]])), out),
         r"gone\.csv: row 5, column 'path': file .*gone\.npy does not exist"),
    Case("cohort-missing-column",
         lambda w, out: ingest(w, _edited_cohort(w, "nocol", lambda d: d.rename(columns={"path": "file_path"})), out),
         r"nocol\.csv: missing required column\(s\) 'path'; it has 'subject_id', 'file_path', 'age'"),
    Case("cohort-no-rows",
         lambda w, out: ingest(w, _edited_cohort(w, "header", lambda d: d.iloc[:0]), out),
         r"header\.csv: has no rows"),
    Case("cohort-bad-tr",
         lambda w, out: ingest(w, _edited_cohort(w, "tr", lambda d: d.assign(tr="-1")), out),
         r"tr\.csv: row 1, column 'tr': expected seconds > 0, got '-1'"),
    Case("cohort-subject-in-two-families",
         lambda w, out: ingest(w, _edited_cohort(w, "families", lambda d: d.assign(
             subject_id=["sub0", "sub0", *d["subject_id"][2:]], session=["1", "2"] + ["1"] * (len(d) - 2),
             family=[f"f{i}" for i in range(len(d))])), out),
         r"families\.csv: subject_id 'sub0' has different 'family' values \['f0', 'f1'\] \(rows 1, 2\)"),
    Case("split-table-misses-subjects",
         lambda w, out: ingest(w, w.src / "cohort.csv", out, "--split-from", str(_text(
             w, "split.csv", "subject_id,group,split\nsub0,sub0,train\n"))),
         r"split file .*split\.csv: subjects \['sub1', .*\] of the cohort are not in it"),
]


def _text(w: World, name: str, text: str) -> Path:
    path = w.root / "cases" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _atlas_case(id: str, image: str, match: str, atlas: str = "atlas.nii.gz", coords: bool = False) -> Case:
    """Three good 4-D images and one `image` (see _write_nifti) parcellated with `atlas`."""

    def make(w: World, out: Path) -> list[str]:
        folder = _write_nifti(w)
        paths = ["good1.nii.gz", "good2.nii.gz", "good3.nii.gz", image]
        pd.DataFrame({"subject_id": ["a", "b", "c", "d"], "path": paths, "tr": 1.0}).to_csv(
            folder / f"cohort_{id}.csv", index=False)
        argv = ["-q", "fmri", "ingest", "--cohort", str(folder / f"cohort_{id}.csv"), "--atlas", str(folder / atlas),
                "--out", str(out), "--num-timepoints", "4"]
        return argv + (["--coords", str(w.src / "coords.tsv")] if coords else [])

    return Case(id, make, match)


def _write_nifti(w: World) -> Path:
    """A 3-label atlas on a 4x4x3 grid and 4-D images: good, other shape, shifted affine, 3-D."""
    import nibabel as nib

    folder = w.root / "nifti"
    if folder.is_dir():
        return folder
    folder.mkdir()
    rng = np.random.default_rng(1)
    atlas = np.zeros((4, 4, 3), dtype=np.int16)
    atlas[:2, :2], atlas[2:, :2], atlas[:, 2:] = 1, 2, 3
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), folder / "atlas.nii.gz")
    nib.save(nib.Nifti1Image(atlas.astype(np.float32) + 0.5, np.eye(4)), folder / "probabilistic.nii.gz")
    image = rng.normal(size=(4, 4, 3, 12)).astype(np.float32)
    for i in (1, 2, 3, 4):
        nib.save(nib.Nifti1Image(image + i, np.eye(4)), folder / f"good{i}.nii.gz")
    nib.save(nib.Nifti1Image(rng.normal(size=(5, 4, 3, 12)).astype(np.float32), np.eye(4)), folder / "shape.nii.gz")
    shifted = np.eye(4)
    shifted[0, 3] = 10.0
    nib.save(nib.Nifti1Image(image, shifted), folder / "shifted.nii.gz")
    return folder


ATLAS_CASES = [
    _atlas_case("atlas-shape-mismatch", "shape.nii.gz",
                r"image .*shape\.nii\.gz \(shape \[5, 4, 3\]\) and atlas .*atlas\.nii\.gz \(shape \[4, 4, 3\]\) differ "
                r"in shape or affine: the shapes differ; .*--resample-atlas"),
    _atlas_case("atlas-affine-mismatch", "shifted.nii.gz",
                r"shifted\.nii\.gz .*differ in shape or affine: the affines differ by up to 10 \(image origin "
                r"\[10\.0, 0\.0, 0\.0\] mm, atlas origin \[0\.0, 0\.0, 0\.0\] mm\)"),
    _atlas_case("atlas-probabilistic", "good4.nii.gz", r"atlas .*probabilistic\.nii\.gz: expected integer labels",
                atlas="probabilistic.nii.gz"),
    _atlas_case("atlas-coords-count-mismatch", "good4.nii.gz",
                r"coordinates file .*coords\.tsv: 6 rows, but atlas .*atlas\.nii\.gz has 3 parcels", coords=True),
    Case("nifti-without-atlas",
         lambda w, out: ingest(w, _edited_series(w, "bold.nii.gz", lambda p: shutil.copy(
             _write_nifti(w) / "good1.nii.gz", p)), out),
         r"row 3 is a NIfTI image \(bold\.nii\.gz\); parcellating images needs a labels atlas \(--atlas\)"),
]


def _vcf(w: World, name: str, contig: str = "1", samples: list[str] | None = None, ref_mismatch: bool = False,
         records: bool = True, extra_sample: bool = False) -> Path:
    """A VCF variant of cohort.vcf.gz: renamed contig, wrong REF at the first record, no records, one more sample."""
    import pysam

    from brainmm.data.genetics.simulate import VcfRecord, write_vcf

    src = pysam.VariantFile(str(w.gen / "cohort.vcf.gz"))
    names = list(src.header.samples)
    recs = []
    for i, r in enumerate(src):
        ref = r.ref
        if ref_mismatch and i == 0:
            ref = "T" if r.ref != "T" else "G"
        alt = r.alts[0] if r.alts[0] != ref else ("C" if ref != "C" else "G")
        gts = [r.samples[s]["GT"] for s in names] + ([(0, 1)] if extra_sample else [])
        recs.append(VcfRecord(contig, r.pos, ref, (alt,), gts))
    src.close()
    path = w.root / "cases" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_vcf(path, {contig: 400}, names + (["stranger"] if extra_sample else []), recs if records else [])
    return path


def haplotypes(w: World, out: Path, vcf: Path | None = None, fasta: Path | None = None,
               regions: Path | None = None, *extra: str) -> list[str]:
    return ["-q", "genetics", "haplotypes", "--vcf", str(vcf or w.gen / "cohort.vcf.gz"),
            "--fasta", str(fasta or w.gen / "ref.fa"), "--regions", str(regions or w.gen / "regions.bed"),
            "--out", str(out / "haplotypes.fa"), *extra]


def dna_embed(w: World, out: Path, model: Path, *extra: str, family: str = "nt") -> list[str]:
    return ["-q", "genetics", "embed", "--vcf", str(w.gen / "cohort.vcf.gz"), "--fasta", str(w.gen / "ref.fa"),
            "--regions", str(w.gen / "regions.bed"), "--encoder", family, "--encoder-path", str(model),
            "--cache-dir", str(w.root / "dna-cache"), "--out", str(out / "dna"), *extra]


def _model_copy(w: World, source: str, name: str, edit: Callable[[Path], None]) -> Path:
    """A copy of the world's model folder `source` changed by `edit` (made once per module)."""
    folder = w.root / "models" / name
    if not folder.is_dir():
        shutil.copytree(w.root / source, folder)
        edit(folder)
    return folder


def _truncate(file: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_bytes((folder / file).read_bytes()[:300])


def _edit_json(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


def _pickle_bin(folder: Path) -> None:
    """Replace the safetensors weights by a pytorch_model.bin that needs unpickling code to load."""
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.ones(2), "payload": Path("/tmp")}, folder / "pytorch_model.bin")


GENETICS_CASES = [
    Case("genetics-ref-mismatch", lambda w, out: haplotypes(w, out, _vcf(w, "refmm.vcf.gz", ref_mismatch=True)),
         r"VCF .*refmm\.vcf\.gz: REF allele of 1:60 ./. does not match the reference FASTA .*ref\.fa \(FASTA has "
         r"'.' at 1:60\); wrong genome build or FASTA\?"),
    Case("genetics-contig-names", lambda w, out: haplotypes(w, out, _vcf(w, "chr.vcf.gz", contig="chr1")),
         r"contig '1' \(reference FASTA / regions\) is not in VCF .*chr\.vcf\.gz \(VCF contigs: chr1\); the VCF calls "
         r"it 'chr1': add the alias 1=chr1 \(config inputs.contig_aliases, flag --contig-alias\)"),
    Case("genetics-region-contig-not-in-fasta",
         lambda w, out: haplotypes(w, out, regions=_text(w, "chr.bed", "chr1\t50\t150\tr1\n")),
         r"region 'r1': contig 'chr1' is not in the reference FASTA .*ref\.fa \(contigs: 1\)"),
    Case("genetics-not-a-fasta", lambda w, out: haplotypes(w, out, fasta=_text(w, "junk.fa", "not a fasta\n")),
         r"reference FASTA .*junk\.fa: not a FASTA file \(expected a '>name' header line first, got 'not a fasta'\)"),
    Case("genetics-empty-vcf", lambda w, out: matrix(w, out, _vcf(w, "empty.vcf.gz", records=False)),
         r"VCF .*empty\.vcf\.gz: no variant records"),
    Case("genetics-unknown-sample", lambda w, out: matrix(w, out, _vcf(w, "extra.vcf.gz", extra_sample=True)),
         r"1 of 9 samples of .*extra\.vcf\.gz are not in the split table .*split\.csv \(e\.g\. stranger\); .*"
         r"--drop-unmatched-samples"),
    Case("genetics-plain-gzip-vcf",
         lambda w, out: matrix(w, out, _gzip(w)),
         r"VCF .*plain\.vcf\.gz: gzip-compressed but not bgzip, which htslib cannot read; recompress it with `bgzip`"),
    Case("genetics-bad-pgs-weights",
         lambda w, out: matrix(w, out, None, "--pgs-weights", str(_text(w, "pgs.tsv", "foo\tbar\n1\t2\n"))),
         r"PGS weights .*pgs\.tsv: missing column 'variant_id' \(expected variant_id, effect_allele"),
    Case("genetics-sample-column-missing",
         lambda w, out: haplotypes(w, out, None, None, None, "--cohort", str(_text(
             w, "samples.csv", "subject_id,vcf_id\nsub0,sub0\n")), "--sample-column", "vcfid"),
         r"table .*samples\.csv: missing required column\(s\) 'vcfid'; it has 'subject_id', 'vcf_id'"),
    Case("genetics-import-duplicate-ids",
         lambda w, out: ["-q", "genetics", "import", "--table", str(_text(w, "vectors.csv", "subject_id,a,b\ns1,1,2\n"
                                                                           "s1,3,4\n")), "--out", str(out / "t")],
         r"embedding file .*vectors\.csv: subject id\(s\) \['s1'\] appear more than once"),
    Case("dna-model-corrupt-safetensors",
         lambda w, out: dna_embed(w, out, _model_copy(w, "nt", "nt-corrupt", _truncate("model.safetensors"))),
         r"nt-corrupt/model\.safetensors is not a readable safetensors file"),
    Case("dna-model-missing-vocab",
         lambda w, out: dna_embed(w, out, _model_copy(w, "nt", "nt-no-vocab", lambda f: (f / "vocab.txt").unlink())),
         r"tokenizer: .*nt-no-vocab lacks vocab\.txt"),
    Case("dna-model-wrong-shapes",
         lambda w, out: dna_embed(w, out, _model_copy(w, "nt", "nt-shape", _edit_json(hidden_size=16,
                                                                                      intermediate_size=32))),
         r"nt: weights in .*nt-shape do not fit the EsmModel its config\.json describes: shape "),
    Case("dna-model-remote-code-not-trusted",
         lambda w, out: dna_embed(w, out, _model_copy(w, "nt", "nt-remote", _edit_json(
             auto_map={"AutoModel": "modeling_x.M"})), family="hf"),
         r"hf: config\.json maps \['AutoModel'\] to code in the folder; this runs Python code shipped in .*nt-remote\. "
         r"Pass trust_remote_code=True if you trust that folder\."),
]


def _gzip(w: World) -> Path:
    import gzip

    path = w.root / "cases" / "plain.vcf.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(gzip.open(w.gen / "cohort.vcf.gz").read()))
    return path


MODEL_CASES = [
    Case("brainlm-missing-config",
         lambda w, out: embed(w, out, _model_copy(w, "brainlm", "no-config", lambda f: (f / "config.json").unlink())),
         r"embed config field 'model': .*no-config has no config\.json \(expected a BrainLM checkpoint folder"),
    Case("brainlm-missing-weights",
         lambda w, out: embed(w, out, _model_copy(w, "brainlm", "no-weights",
                                                  lambda f: (f / "model.safetensors").unlink())),
         r"BrainLM checkpoint .*no-weights: no weights \(model\.safetensors or pytorch_model\.bin\)"),
    Case("brainlm-corrupt-safetensors",
         lambda w, out: embed(w, out, _model_copy(w, "brainlm", "corrupt", _truncate("model.safetensors"))),
         r"corrupt/model\.safetensors is not a readable safetensors file \(SafetensorError"),
    Case("brainlm-wrong-shapes",
         lambda w, out: embed(w, out, _model_copy(w, "brainlm", "shapes", _edit_json(hidden_size=16,
                                                                                    intermediate_size=32))),
         r"checkpoint .*shapes: tensor 'embeddings\.cls_token' has shape \[1, 1, 8\] but the config gives "
         r"\[1, 1, 16\] \(and 23 more mismatched tensor\(s\)\)"),
    Case("brainlm-parcels-differ-from-dataset",
         lambda w, out: embed(w, out, _model_copy(w, "brainlm", "parcels", _edit_json(num_brain_voxels=V + 1))),
         r"fMRI dataset .*dataset has 6 parcels .*, but the model expects num_brain_voxels=7"),
    Case("brainlm-unsafe-pickle-weights",
         lambda w, out: embed(w, out, _model_copy(w, "brainlm", "pickled", _pickle_bin)),
         r"pickled/pytorch_model\.bin cannot be read as a PyTorch state dict with weights_only=True: it holds Python "
         r"objects that only unpickling can rebuild \(it needs pathlib\.PosixPath\), and unpickling runs code"),
    Case("brainlm-inspect-corrupt",
         lambda w, out: ["-q", "brainlm", "inspect", str(_model_copy(w, "brainlm", "corrupt",
                                                                     _truncate("model.safetensors")))],
         r"corrupt/model\.safetensors is not a readable safetensors file"),
    Case("config-unknown-key", lambda w, out: embed(w, out, None, "colour=blue"),
         r"unknown config key\(s\) 'colour' at top level; valid keys: allow_split_mismatch, batch_size, cache_dir"),
    Case("config-wrong-type", lambda w, out: embed(w, out, None, "batch_size=many"),
         r"config field 'batch_size': expected an integer, got 'many'"),
    Case("config-not-in-choices", lambda w, out: embed(w, out, None, "pooling=median"),
         r"config field 'pooling': expected one of 'cls', 'mean', 'time_then_voxel', got 'median'"),
    Case("config-override-without-equals", lambda w, out: embed(w, out, None, "pooling"),
         r"override 'pooling': expected KEY=VALUE with a dotted key"),
    Case("config-file-not-yaml",
         lambda w, out: ["-q", "genetics", "matrix", "--config", str(_text(w, "broken.yaml", "vcf: [1, 2\n")),
                         "--out", str(out / "g")],
         r"config file .*broken\.yaml: not valid YAML at line 2"),
    Case("config-file-missing", lambda w, out: ["-q", "embed", "--config", str(w.root / "none.yaml")],
         r"config file .*none\.yaml: not found \(expected a YAML file\)"),
    Case("config-unknown-section-key",
         lambda w, out: ["-q", "evaluate", "--align-dir", str(w.root / "align"), "retrieval.n_bot=10"],
         r"unknown config key\(s\) 'n_bot' at section 'retrieval'; valid keys: ks, kway"),
    Case("pretrain-missing-dataset", lambda w, out: pretrain(w, out, f"data.dataset={w.root / 'nowhere'}"),
         r"pretrain config field 'data\.dataset': .*nowhere is not a folder \(expected a dataset made by `brainmm fmri "
         r"ingest`\)"),
    Case("pretrain-batch-larger-than-data", lambda w, out: pretrain(w, out, "train.batch_size=512"),
         r"pretrain config field 'train\.batch_size': 512 is more than the \d+ training windows"),
]


def _leaky_split(w: World) -> Path:
    split = pd.read_csv(w.root / "tables" / "split.csv", dtype=str)
    first = split.iloc[[0]].assign(split="test" if split.iloc[0]["split"] != "test" else "val")
    path = w.root / "cases" / "leaky_split.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([split, first]).to_csv(path, index=False)
    return path


def _table(w: World, name: str, edit: Callable) -> Path:
    from brainmm.embeddings import EmbeddingTable

    table = EmbeddingTable.load(w.root / "tables" / "dna")
    edit(table)
    path = w.root / "cases" / name
    EmbeddingTable(table.ids, table.vectors, table.meta).save(path)
    return path


def _renamed(table) -> None:
    table.ids = [f"g{i:02d}" for i in range(len(table.ids))]


def _nan_row(table) -> None:
    table.vectors[3, 1] = np.inf


def _moved_subject(w: World) -> Path:
    """The align run, copied, with a training subject moved to the test split in its split table afterwards."""
    run = w.root / "cases" / "align-moved"
    if not run.is_dir():
        shutil.copytree(w.root / "align", run)
        split = pd.read_csv(w.root / "tables" / "split.csv", dtype=str)
        split.loc[split.index[split["split"] == "train"][0], "split"] = "test"
        split.to_csv(run / "moved_split.csv", index=False)
        config = (run / "config.yaml").read_text().replace(str(w.root / "tables" / "split.csv"),
                                                           str(run / "moved_split.csv"))
        (run / "config.yaml").write_text(config)
    return run


TRACKING_CASES = [
    Case("mlflow-unreachable-server", lambda w, out: pretrain(w, out, "tracking.uri=http://127.0.0.1:9"),
         r"tracking server http://127\.0\.0\.1:9 is unreachable \(.*\); start it \(mlflow server --host 127\.0\.0\.1"),
    Case("mlflow-bad-scheme", lambda w, out: pretrain(w, out, "tracking.uri=ftp://example.org/mlflow"),
         r"tracking URI 'ftp://example\.org/mlflow': unsupported scheme 'ftp'; expected one of sqlite://, http://"),
    Case("mlflow-file-store", lambda w, out: pretrain(w, out, f"tracking.uri=file://{w.root / 'mlruns'}"),
         r"tracking URI 'file://.*mlruns': the MLflow file store is refused by MLflow 3; use sqlite:///"),
    Case("mlflow-sqlite-folder-missing", lambda w, out: pretrain(w, out, "tracking.uri=sqlite:////nowhere/mlflow.db"),
         r"tracking URI 'sqlite:////nowhere/mlflow\.db': folder /nowhere does not exist"),
    Case("evaluate-unreachable-server",
         lambda w, out: ["-q", "evaluate", "--run", "0" * 32, "tracking_uri=http://127.0.0.1:9"],
         r"tracking server http://127\.0\.0\.1:9 is unreachable"),
    Case("align-tables-share-no-subject",
         lambda w, out: align_argv(w, out, dna=_table(w, "renamed", _renamed)),
         r"genetics table .*renamed \('dna'\) and brain table .*brain share no subject id: 30 brain subjects "
         r"\(e\.g\. \['s00', 's01', 's02'\]\), 30 genetics subjects \(e\.g\. \['g00', 'g01', 'g02'\]\)"),
    Case("align-split-leakage", lambda w, out: align_argv(w, out, split=_leaky_split(w)),
         r"split leakage: subject_id \['s\d\d'\] appear in more than one split"),
    Case("align-nan-embeddings", lambda w, out: align_argv(w, out, dna=_table(w, "inf_row", _nan_row)),
         r"embedding table .*inf_row \(data\.genetics\.dna\): 1 rows with NaN/inf values, e\.g\. \['s03'\]"),
    Case("align-missing-table", lambda w, out: align_argv(w, out, brain=w.root / "missing"),
         r"embedding table .*missing\.safetensors: not found \(expected .*missing\.safetensors and .*missing\.json\)"),
    Case("evaluate-split-leakage", lambda w, out: ["-q", "evaluate", "--align-dir", str(_moved_subject(w))],
         r"split leakage: subject ids \['s\d\d'\] \(1 in all\) appear in more than one split"),
    Case("evaluate-unknown-run-id", lambda w, out: ["-q", "evaluate", "--run", "0" * 32, f"tracking_uri={w.uri}"],
         r"align run id '0{32}': not found in the MLflow backend sqlite:///"),
    Case("evaluate-missing-align-dir", lambda w, out: ["-q", "evaluate", "--align-dir", str(w.root / "no-run")],
         r"align folder .*no-run: does not exist \(expected the output_dir of `brainmm align`\)"),
]


CASES = FMRI_CASES + ATLAS_CASES + GENETICS_CASES + MODEL_CASES + TRACKING_CASES


def test_catalogue_ids_are_unique_and_cover_every_stage() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    commands = {c.id.split("-")[0] for c in CASES}
    assert {"fmri", "atlas", "coords", "cohort", "genetics", "dna", "brainlm", "config", "mlflow", "align",
            "evaluate", "pretrain"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line(case: Case, world: World, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a stray default output (mlflow.db, runs/) would show up here
    out = tmp_path / "out"
    argv = case.make(world, out)
    capsys.readouterr()
    code = main(argv)
    check_error(code, capsys.readouterr().err, case.match)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert not left, f"files left behind: {left}"


# The same promise end to end, in real processes (exit status and stderr as a shell sees them).
PROCESS_CASES = ["fmri-nan-values", "genetics-ref-mismatch", "brainlm-inspect-corrupt"]


@pytest.mark.slow
def test_real_processes_exit_2_with_one_line(world: World, tmp_path: Path) -> None:
    by_id = {c.id: c for c in CASES}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = []
    for i, case_id in enumerate(PROCESS_CASES):  # the first one without -q
        cwd = tmp_path / case_id
        cwd.mkdir()
        out = cwd / "out"
        argv = by_id[case_id].make(world, out)
        if i == 0:
            argv = argv[1:]  # its progress bar must erase itself before the error line
        proc = subprocess.Popen([sys.executable, "-m", "brainmm.cli", *argv], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # bytes: keep the '\r's
        runs.append((by_id[case_id], out, proc))
    for case, out, proc in runs:
        _, err = proc.communicate(timeout=120)
        check_error(proc.returncode, err.decode(), case.match, quiet=case is not runs[0][0])
        assert not list(out.parent.iterdir()), f"{case.id}: files left {list(out.parent.iterdir())}"
