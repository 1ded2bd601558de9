"""The cost plan: estimated wall time, peak memory and disk per stage, from the data shapes and measured rates.

Each stage's cost is a linear model in its work units (`stage_units`): time = base_s + s_per_unit * work,
peak RSS = base_mb + mb_per_unit * size, disk = base_bytes + bytes_per_unit * size. The coefficients are measured per device
and kept in `RATES` with where they came from (benchmarks/ukb_shape.md, benchmarks/brainlm_cost.py). A stage on
a device without measured rates is shown as unknown rather than guessed. During a run, `refine` rescales the
remaining stages by how the finished ones compared with their estimates.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LONG_STAGE_S = 1800.0  # a stage expected to take longer than this gets a warning before it starts
# config keys that cut each stage's cost (named in the warning)
KNOBS = {
    "simulate": ["simulate.n_subjects", "simulate.brain.n_timepoints", "simulate.genotypes.n_blocks"],
    "ingest": ["ingest.num_timepoints"],
    "connectivity": ["connectivity.batch_size", "connectivity.kind (correlation is the cheapest)"],
    "pretrain": ["pretrain.train.max_steps", "pretrain.train.batch_size", "pretrain.model.arch.timepoint_patching_size",
                 "pretrain.model.arch.hidden_size", "ingest.num_timepoints", "brain_inputs=[connectivity] (no BrainLM)",
                 "embed.model (a pretrained checkpoint)"],
    "embed": ["embed.device (a GPU)", "embed.precision=bf16", "ingest.num_timepoints",
              "brain_inputs=[connectivity] (no BrainLM)"],
    "genetics": ["genetics.matrix.variants / regions (fewer variants)", "genetics.matrix.min_maf"],
    "align": ["align.train.epochs", "align.train.patience", "align.train.device (a GPU)"],
    "evaluate": ["evaluate.explain.enabled (or explain.n_boot)", "evaluate.baselines.shuffled_pairs",
                 "evaluate.baselines.methods", "evaluate.probes.representations (genetics: one column per variant)"],
}


@dataclass(frozen=True)
class Rate:
    """One stage's coefficients on one device."""

    s_per_unit: float
    base_s: float = 0.0
    mb_per_unit: float = 0.0
    base_mb: float | None = 0.0  # None: peak memory not measured on this device
    bytes_per_unit: float = 0.0
    base_bytes: float = 0.0


# Measured rates per device. "cpu": AMD EPYC (Zen 4), 2 cores, torch/BLAS threads 2 (CPU seconds).
#   simulate .. align: fitted between the N = 2,000 run and the N = 10,000 run of `python benchmarks/ukb_shape.py
#   --path fc` (424 parcels x 490 TRs, 20,000 variants; `--report` on both runs' records, benchmarks/ukb_shape.md,
#   2026-12-07); evaluate (probes, retrieval, baselines, shuffled-pair control, figures, explain): intercepts from
#   the N = 1,000 and 2,000 runs, slopes through the whole N = 10,000 evaluate of 2026-12-08 (Intel Xeon, 2 cores:
#   3,045 CPU-s, 8,627 MB anonymous peak, with explain's settled decisions and the shared probe folds; the old
#   slopes said 3,894 CPU-s and 7.2 GB). pretrain, embed:
#   `python benchmarks/brainlm_cost.py` at 424 parcels (same page).
RATES: dict[str, dict[str, Rate]] = {
    "cpu": {
        "simulate": Rate(s_per_unit=2.395e-07, base_s=10.2, mb_per_unit=1.853e-06, base_mb=287, bytes_per_unit=3.489,
                         base_bytes=9.735e+07),
        "ingest": Rate(s_per_unit=2.879e-08, base_s=2.6, mb_per_unit=3.055e-08, base_mb=1119, bytes_per_unit=3.780,
                       base_bytes=9.635e+07),
        "connectivity": Rate(s_per_unit=6.660e-11, base_s=23.1, mb_per_unit=4.977e-08, base_mb=709, bytes_per_unit=3.770,
                             base_bytes=4.142e+07),
        "genetics": Rate(s_per_unit=6.075e-08, base_s=1.3, mb_per_unit=1.715e-07, base_mb=494, bytes_per_unit=3.770,
                         base_bytes=1.109e+07),
        "align": Rate(s_per_unit=2.743e-08, base_s=239.4, mb_per_unit=1.630e-05, base_mb=1945, bytes_per_unit=0.090,
                      base_bytes=3.750e+08),
        "evaluate": Rate(s_per_unit=1.036e-06, base_s=50.7, mb_per_unit=4.350e-06, base_mb=3856, bytes_per_unit=1.547,
                         base_bytes=5.951e+07),
        # median CPU s per FLOP over 4 shapes (hidden 64 / 256, 4,240-20,776 tokens; spread 1.9-2.6e-11); memory: the
        # 5M shape's 1.52 GB peak over its activations (an upper bound: base included)
        "pretrain": Rate(s_per_unit=2.04e-11, mb_per_unit=1.17e-4),
        # median over the same shapes (1.1-1.5e-11); peak memory not measured; tables: float32 recordings + subjects
        "embed": Rate(s_per_unit=1.43e-11, base_mb=None, bytes_per_unit=8.0),
    },
}
RATES_SOURCE = {"cpu": "AMD EPYC and Intel Xeon 2-core VMs, benchmarks/ukb_shape.md (2026-12-07/08; CPU seconds, so an "
                         "idle machine's wall time is at most this)"}


@dataclass
class Shapes:
    """What the cost depends on; None = not known before the stage that produces it."""

    subjects: int | None = None
    recordings: int | None = None
    parcels: int | None = None
    timepoints: int | None = None  # per recording (the longest)
    window: int = 200  # ingest.num_timepoints
    variants: int | None = None
    source: str = ""


@dataclass
class StageCost:
    """One stage's estimate (None: unknown)."""

    stage: str
    seconds: float | None = None
    peak_mb: float | None = None
    disk_bytes: float | None = None
    device: str = "cpu"
    note: str = ""
    table_seconds: float | None = None  # the estimate from the rate table (`seconds` is refined during a run)


@dataclass
class CostPlan:
    """The estimates of the stages that run, in order."""

    shapes: Shapes
    stages: dict[str, StageCost] = field(default_factory=dict)

    def long_stages(self) -> list[StageCost]:
        """Stages expected to take over LONG_STAGE_S."""
        return [c for c in self.stages.values() if c.seconds is not None and c.seconds > LONG_STAGE_S]


# ------------------------------------------------------------------------------------------ shapes


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _variants(m: Any) -> int | None:
    """Variants before QC in a real genotype source (PLINK sidecars, BGEN header); None for a VCF (not counted)."""
    for key, side in (("bed", ".bim"), ("pgen", ".pvar")):
        if getattr(m, key):
            path = Path(getattr(m, key)).with_suffix(side)
            if path.is_file():
                n = _count_lines(path)
                if side == ".pvar":
                    with path.open() as f:
                        n -= sum(1 for line in f if line.startswith("#"))  # header lines
                return n
    if m.bgen and Path(m.bgen).is_file():
        with open(m.bgen, "rb") as f:
            head = f.read(12)
        return int.from_bytes(head[8:12], "little") if len(head) == 12 else None
    return None


def data_shapes(cfg: Any) -> Shapes:
    """The shapes of a PipelineConfig's data: the simulation's settings, a dataset's manifest or a cohort table."""
    d, window = cfg.data, cfg.ingest.num_timepoints
    s = Shapes(window=window)
    if d.fmri_dataset and (Path(d.fmri_dataset) / "manifest.json").is_file():
        man = json.loads((Path(d.fmri_dataset) / "manifest.json").read_text())
        s.subjects, s.recordings, s.parcels = man["num_subjects"], man["num_recordings"], man["num_parcels"]
        s.timepoints, s.window, s.source = man["timepoints_per_recording"]["max"], man["num_timepoints"], "dataset"
    elif d.fmri_cohort and Path(d.fmri_cohort).is_file():
        s.source = "cohort table"
        with contextlib.suppress(Exception):  # the ingest stage reports a bad table; the plan shows '?'
            _cohort_shapes(cfg, Path(d.fmri_cohort), s)
    elif not d.fmri_cohort and not d.fmri_dataset:
        sim = cfg.simulate
        s.subjects, s.recordings = sim.n_subjects, sim.n_subjects * sim.brain.n_sessions
        s.parcels, s.timepoints, s.source = sim.brain.n_parcels, sim.brain.n_timepoints, "simulation"
        s.variants = sim.genotypes.n_blocks * sim.genotypes.snps_per_block
    m = cfg.genetics.matrix
    if cfg.genetics.kind == "genotype_matrix" and any((m.bed, m.pgen, m.bgen)):
        s.variants = _variants(m)
    return s


def _cohort_shapes(cfg: Any, table: Path, s: Shapes) -> None:
    """Subjects and recordings of a cohort table; parcels from the coordinates or label file; the first recording's
    length (a NIfTI header, or the array of a time-series file)."""
    from brainmm.data import cohort as ct
    from brainmm.data.fmri.readers import is_nifti, load_array, read_coords

    df = ct.read_table(table)
    s.recordings, s.subjects = len(df), int(df["subject_id"].nunique())
    labels = cfg.ingest.atlas_labels or cfg.ingest.coords
    if labels:
        s.parcels = len(read_coords(labels)[0]) if labels == cfg.ingest.coords else len(ct.read_table(labels))
    first = ct.resolve_paths(df.head(1), "file" if "file" in df and "path" not in df else "path")[0]
    if is_nifti(first):
        import nibabel

        s.timepoints = int(nibabel.load(first).shape[3])
    else:
        shape = load_array(first).shape
        s.timepoints = shape[0] if s.parcels == shape[1] else shape[1] if s.parcels == shape[0] else max(shape)
        s.parcels = s.parcels or min(shape)


# ------------------------------------------------------------------------------------------- units


def _layer(h: int, i: int, n: float) -> float:
    """Multiply-adds of one layer over n tokens: projections and MLP (linear in n) and the attention products
    (QK^T and AV: quadratic in n; brainmm's BrainLM layers compute exact attention through SDPA)."""
    return (4 * h * h + 2 * h * i) * n + 2 * n * n * h


def _tokens(arch: dict[str, Any]) -> float:
    return arch["num_brain_voxels"] * arch["num_timepoints_per_voxel"] / arch["timepoint_patching_size"]


def pretrain_units(arch: dict[str, Any], batch: int) -> float:
    """Training FLOPs of one step (forward + backward = 3 x forward; the encoder sees the unmasked tokens, the
    decoder all), from a BrainLMConfig dict."""
    tokens, keep = _tokens(arch), 1 - arch.get("mask_ratio", 0.2)
    enc = arch["num_hidden_layers"] * _layer(arch["hidden_size"], arch["intermediate_size"], keep * tokens + 1)
    dec = arch["decoder_num_hidden_layers"] * _layer(arch["decoder_hidden_size"], arch["decoder_intermediate_size"],
                                                     tokens + 1)
    return 6.0 * batch * (enc + dec)


def embed_units(arch: dict[str, Any]) -> float:
    """Forward FLOPs of embedding one window (encoder only, every token)."""
    return 2.0 * arch["num_hidden_layers"] * _layer(arch["hidden_size"], arch["intermediate_size"], _tokens(arch) + 1)


def checkpoint_bytes(arch: dict[str, Any]) -> float:
    """The pretraining folder: two checkpoints (float32 weights + two AdamW moments: 12 bytes per parameter) and the
    final model (4 bytes per parameter), counting the layers' parameters (the embeddings are small)."""
    h, i, dh, di = arch["hidden_size"], arch["intermediate_size"], arch["decoder_hidden_size"], \
        arch["decoder_intermediate_size"]
    params = arch["num_hidden_layers"] * (4 * h * h + 2 * h * i) + arch["decoder_num_hidden_layers"] * \
        (4 * dh * dh + 2 * dh * di)
    return 28.0 * params


def _windows(timepoints: int, window: int) -> int:
    from brainmm.data.fmri.windows import tile_starts

    return max(len(tile_starts(timepoints, window)), 1)


def _arch(cfg: Any, s: Shapes) -> dict[str, Any]:
    a = cfg.pretrain.model.arch
    return {**vars(a), "num_brain_voxels": a.num_brain_voxels or s.parcels,
            "num_timepoints_per_voxel": a.num_timepoints_per_voxel or s.window, "mask_ratio": cfg.pretrain.model.mask_ratio}


def stage_units(stage: str, cfg: Any, s: Shapes) -> tuple[float, float] | None:
    """(work, size) units of a stage (see RATES), or None when a shape is unknown."""
    n, r, p, t, m = s.subjects, s.recordings, s.parcels, s.timepoints, s.variants
    edges = p * (p - 1) / 2 if p else None
    if stage == "pretrain":
        if not p:
            return None
        steps = cfg.pretrain.train.max_steps
        arch = _arch(cfg, s)
        layers = arch["num_hidden_layers"] + arch["decoder_num_hidden_layers"]
        size = cfg.pretrain.train.batch_size * _tokens(arch) * arch["hidden_size"] * layers  # activations
        return steps * pretrain_units(arch, cfg.pretrain.train.batch_size), size
    if stage == "embed":
        if not (r and p and t):
            return None
        arch = _arch(cfg, s)
        return r * _windows(t, s.window) * embed_units(arch), float(r * arch["hidden_size"])
    table = {
        "simulate": (r and p and t and n and m) and (r * p * t + n * m, r * p * t + n * m),
        "ingest": (r and p and t) and (r * p * t, r * p * t),
        "connectivity": (r and p and t) and (r * p * p * t, r * edges),
        "genetics": (n and m) and (n * m, n * m),
        "align": (n and m) and (cfg.align.train.epochs * n * (m + (p or 0)), n * m),
        "evaluate": (n and m and p) and (n * (m + _fc_methods(cfg) * edges), n * (m + edges * bool(_fc_methods(cfg)))),
    }
    value = table.get(stage)
    return tuple(map(float, value)) if value else None


def _fc_methods(cfg: Any) -> int:
    from brainmm.evaluate.baseline_registry import connectivity_methods

    return len(connectivity_methods(cfg.evaluate.baselines.methods))


# ----------------------------------------------------------------------------------------- estimate


def _device(cfg: Any, stage: str) -> str:
    """The device kind a stage runs on ("cpu" / "cuda")."""
    wanted = {"pretrain": cfg.pretrain.train.device, "embed": cfg.embed.device,
              "align": cfg.align.train.device}.get(stage, "cpu")
    if wanted == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(wanted).startswith("cuda") else "cpu"


def estimate_stage(stage: str, cfg: Any, s: Shapes) -> StageCost:
    """One stage's estimate from its units and the device's rates."""
    device = _device(cfg, stage)
    rate = RATES.get(device, {}).get(stage)
    cost = StageCost(stage, device=device)
    if rate is None:
        cost.note = f"no rates measured for {device}"
        return cost
    units = stage_units(stage, cfg, s)
    if units is None:
        cost.note = "shapes unknown before ingest"
        return cost
    work, size = units
    cost.seconds = cost.table_seconds = rate.base_s + rate.s_per_unit * work
    cost.peak_mb = None if rate.base_mb is None else rate.base_mb + rate.mb_per_unit * size
    cost.disk_bytes = (checkpoint_bytes(_arch(cfg, s)) if stage == "pretrain" else
                       rate.base_bytes + rate.bytes_per_unit * size)
    return cost


def estimate(cfg: Any, stages: list[str], shapes: Shapes | None = None) -> CostPlan:
    """The cost plan of `stages` of a (wired) PipelineConfig."""
    s = shapes or data_shapes(cfg)
    plan = CostPlan(s)
    for stage in stages:
        plan.stages[stage] = estimate_stage(stage, cfg, s)
    return plan


def brainlm_cpu_rule(cfg: Any, table_tower: bool) -> list[str]:
    """A CPU run without a BrainLM checkpoint whose pretraining is estimated over LONG_STAGE_S uses the FC-only path
    (brain_inputs [connectivity]) unless `stages.pretrain` is true; changes `cfg` and returns the printed note."""
    if (cfg.embed.model or cfg.stages.pretrain is not None or cfg.stages.embed is not None or cfg.align.data.brain
            or not table_tower or "brainlm" not in cfg.brain_inputs or _device(cfg, "pretrain") != "cpu"):
        return []
    shapes = data_shapes(cfg)
    cost = estimate_stage("pretrain", cfg, shapes)
    if cost.seconds is None or cost.seconds <= LONG_STAGE_S:
        return []
    cfg.brain_inputs = ["connectivity"]
    return [f"note: pretraining BrainLM on this CPU is estimated at {human_time(cost.seconds)} ({shapes.parcels} "
            f"parcels, windows of {shapes.window} TRs, {cfg.pretrain.train.max_steps} steps); without a checkpoint "
            "(embed.model) such a run uses the FC-only path (brain_inputs [connectivity]: no pretrain, no embed). "
            "Set stages.pretrain=true to pretrain anyway, or embed.model=<checkpoint folder> to use BrainLM."]


def refine(plan: CostPlan, measured: dict[str, float]) -> float:
    """Rescale the unfinished stages' table estimates by the median measured/table ratio of the finished stages
    (those estimated above a second); returns that ratio (1.0 when none is usable)."""
    ratios = [measured[k] / c.table_seconds for k, c in plan.stages.items()
              if k in measured and c.table_seconds and c.table_seconds > 1.0]
    ratio = statistics.median(ratios) if ratios else 1.0
    for k, c in plan.stages.items():
        if k not in measured and c.table_seconds is not None:
            c.seconds = c.table_seconds * ratio
    return ratio


# ------------------------------------------------------------------------------------------- render


def human_time(seconds: float | None) -> str:
    """'~12 s', '~3.5 min', '~2.1 h', or '?'."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.1f} min" if seconds < 5400 else f"~{seconds / 3600:.1f} h"


def human_bytes(n: float | None, unit: float = 1.0) -> str:
    """'512 MB', '3.2 GB' (decimal), or '?'."""
    if n is None:
        return "?"
    n *= unit
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def render(plan: CostPlan) -> str:
    """The plan as a table: stage, device, wall time, peak memory, disk; then a total."""
    s = plan.shapes
    shape = (f"{s.subjects if s.subjects is not None else '?'} subjects, {s.recordings or '?'} recordings, "
             f"{s.parcels or '?'} parcels x {s.timepoints or '?'} TRs (windows of {s.window}), "
             f"{s.variants if s.variants is not None else '?'} variants")
    devices = sorted({c.device for c in plan.stages.values()})
    lines = [f"plan ({shape}; from the {s.source or 'config'}); rates: " +
             "; ".join(RATES_SOURCE.get(d, f"{d}: none measured") for d in devices),
             f"  {'stage':13s} {'device':6s} {'wall':>10s} {'peak RSS':>9s} {'disk':>9s}"]
    for c in plan.stages.values():
        note = f"  ({c.note})" if c.note else ""
        lines.append(f"  {c.stage:13s} {c.device:6s} {human_time(c.seconds):>10s} {human_bytes(c.peak_mb, 1e6):>9s} "
                     f"{human_bytes(c.disk_bytes):>9s}{note}")
    known = [c for c in plan.stages.values() if c.seconds is not None]
    total = sum(c.seconds for c in known)
    disk = sum(c.disk_bytes or 0 for c in known)
    peak = max((c.peak_mb or 0 for c in known), default=0)
    partial = " (stages marked ? not included)" if len(known) < len(plan.stages) else ""
    lines.append(f"  {'total':13s} {'':6s} {human_time(total):>10s} {human_bytes(peak, 1e6):>9s} "
                 f"{human_bytes(disk):>9s}{partial}")
    return "\n".join(lines)


def warnings(plan: CostPlan) -> list[str]:
    """One line per stage expected to take over LONG_STAGE_S, naming the config keys that cut it."""
    return [f"warning: stage {c.stage} is expected to take {human_time(c.seconds)} (over {LONG_STAGE_S / 60:.0f} "
            f"minutes); keys that cut it: {', '.join(KNOBS[c.stage])}" for c in plan.long_stages()]
