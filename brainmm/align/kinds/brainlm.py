"""Tower kind `brainlm`: a BrainLM encoder (Nystromformer or ViT-MAE, from the checkpoint's model_type) on an fMRI
dataset's windows: frozen (its embeddings computed once by `brainmm embed`, cached), last N blocks, full, or LoRA.

Training reads one random window per recording per step; evaluation averages the embeddings of the tiled windows of
each recording (`BrainWindows`, its input provider). Saved as what fine-tuning changed + the base checkpoint's hash.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from brainmm.align.towers import BrainSide, BrainTowerConfig, TowerKind, check_trainable, register_tower
from brainmm.errors import BrainmmError
from encoders.lora_config import LoraSettings

if TYPE_CHECKING:
    import torch

    from brainmm.data.fmri import FmriDataset, FmriWindows
    from brainmm.embeddings import EmbeddingTable
    from encoders.brainlm.tower import BrainLMTower

LOG = logging.getLogger("brainmm.align")
BrainTrainable = Literal["frozen", "last_n", "full", "lora"]
WHERE = "align config field 'towers.brain"


@dataclass
class BrainLMTowerConfig(BrainTowerConfig):
    """`towers.brain` of kind brainlm: a checkpoint run on an fMRI dataset's windows."""

    kind: str = "brainlm"
    checkpoint: str = ""  # BrainLM checkpoint folder (model_type brainlm_mae or vit_mae)
    dataset: str = ""  # fMRI dataset folder (`brainmm fmri ingest`)
    pooling: Literal["cls", "mean", "time_then_voxel"] = "cls"  # ViT-MAE: cls | mean
    num_timepoints: int = 0  # window length; 0 = the dataset's (ViT-MAE: always 200)
    trainable: BrainTrainable = "frozen"
    last_n: int = 0  # with trainable: last_n, the last N encoder layers (+ the final LayerNorm) train
    lora: LoraSettings = field(default_factory=LoraSettings)  # with trainable: lora (rank, alpha, dropout, targets)
    lr: float | None = None  # tower learning rate (null: train.lr)
    gradient_checkpointing: bool = False  # recompute encoder layers in the backward pass (less memory)
    eval_batch_size: int = 64  # windows per forward pass when embedding tiled windows
    cache_dir: str = ""  # `brainmm embed` cache for a frozen tower; "" = <brainmm data dir>/brain-embeddings


# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class BrainDataset:
    """The fMRI dataset of a BrainLM tower, checked against the model, and the window length."""

    dataset: FmriDataset
    num_timepoints: int

    @property
    def recording_ids(self) -> list[str]:
        """Every recording, storage order."""
        return self.dataset.recording_ids()

    @property
    def subjects(self) -> list[str]:
        """Subject of every recording, storage order."""
        return [str(s) for s in self.dataset.recordings["subject_id"]]


def tiled_features(tower: BrainLMTower, windows: FmriWindows, positions: Sequence[int] | None = None,
                   batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:
    """Mean tower embedding over the tiled windows of each recording at `positions` of `windows` (default: all).

    Runs in eval mode without gradients (the mode is restored); returns float32 `[len(positions), H]` on CPU.
    """
    import torch

    from brainmm.train.common import eval_mode
    from encoders.precision import autocast

    if windows.mode != "tiled":
        raise BrainmmError(f"tiled_features: expected tiled windows, got mode {windows.mode!r}")
    positions = list(range(len(windows.recording_ids))) if positions is None else list(positions)
    slot = {p: i for i, p in enumerate(positions)}
    items = [j for j in range(len(windows)) if int(windows.items[j, 0]) in slot]
    device = tower.coords.device
    sums = torch.zeros(len(positions), tower.out_dim, dtype=torch.float64, device=device)
    counts = torch.zeros(len(positions), dtype=torch.float64, device=device)
    with eval_mode(tower):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            signal = torch.stack([windows[j]["signal_vectors"] for j in chunk]).to(device, non_blocking=True)
            with autocast(precision, device):
                h = tower(signal)
            rows = torch.tensor([slot[int(windows.items[j, 0])] for j in chunk], device=device)
            sums.index_add_(0, rows, h.double())  # on the device: no host sync per batch
            counts.index_add_(0, rows, torch.ones(len(chunk), dtype=torch.float64, device=device))
    return (sums / counts.clamp_min(1).unsqueeze(1)).float().cpu()


class BrainWindows:
    """Some recordings (`recording_ids`) of one split: a random window each per step, or all tiled windows.

    Random windows come from `FmriDataset.windows(split, mode="random", seed)`: the window of a recording depends
    only on (seed, epoch, the recording's position in the split), never on batch order or process.
    """

    def __init__(self, data: BrainDataset, split: str | None, recording_ids: Sequence[str], seed: int,
                 batch_size: int = 64, precision: str = "fp32") -> None:
        self.random = data.dataset.windows(split, data.num_timepoints, mode="random", seed=seed)
        self.tiled = data.dataset.windows(split, data.num_timepoints, mode="tiled", seed=seed)
        position = {r: i for i, r in enumerate(self.random.recording_ids)}
        self.positions = [position[r] for r in recording_ids]
        self.batch_size, self.precision = batch_size, precision  # tiled embedding: windows per pass, train.precision

    def __len__(self) -> int:
        return len(self.positions)

    def batch(self, rows: Sequence[int], epoch: int) -> torch.Tensor:
        """Random windows `[B, V, T]` of the recordings at `rows` for `epoch`."""
        import torch

        self.random.set_epoch(epoch)
        return torch.stack([self.random[self.positions[r]]["signal_vectors"] for r in rows])

    def features(self, tower: BrainLMTower) -> torch.Tensor:
        """Tower embeddings `[rows, H]`: the mean over each recording's tiled windows (eval mode, no gradients)."""
        return tiled_features(tower, self.tiled, self.positions, self.batch_size, self.precision)


# ----------------------------------------------------------------------------------------------- build


def check_brainlm_pooling(cfg: BrainLMTowerConfig) -> str:
    """`towers.brain.pooling` must exist for the checkpoint's architecture; returns its model_type."""
    from brainmm.embed.model import read_model_config
    from encoders.brainlm.tower import POOLINGS

    model_type = read_model_config(cfg.checkpoint, f"{WHERE}.checkpoint'")["model_type"]
    if cfg.pooling not in POOLINGS[model_type]:
        raise BrainmmError(f"{WHERE}.pooling': {cfg.pooling!r} is not available for a {model_type} BrainLM "
                           f"({cfg.checkpoint}); expected one of {list(POOLINGS[model_type])}")
    return model_type


def build_brainlm_tower(cfg: BrainLMTowerConfig, data: BrainDataset) -> BrainLMTower:
    """The align tower of `towers.brain` (either architecture, its trainable mode set) on `data`'s parcels."""
    from encoders.brainlm.finetune import load_tower
    from encoders.errors import EncoderInputError
    from encoders.weights import quiet_transformers

    check_brainlm_pooling(cfg)
    try:
        with quiet_transformers():
            tower = load_tower(cfg.checkpoint, data.dataset.coords, cfg.pooling)
    except EncoderInputError as err:
        raise BrainmmError(f"{WHERE}.checkpoint': {err}") from None
    depth = len(tower.blocks())
    if cfg.trainable == "last_n" and cfg.last_n > depth:
        raise BrainmmError(f"{WHERE}.last_n': {cfg.last_n} is more than the {depth} blocks of the "
                           f"{tower.model_type} encoder in {cfg.checkpoint}")
    try:
        tower.set_trainable(cfg.trainable, cfg.last_n, cfg.lora if cfg.trainable == "lora" else None)
    except EncoderInputError as err:
        raise BrainmmError(f"{WHERE}.{'lora' if cfg.trainable == 'lora' else 'trainable'}': {err}") from None
    tower.gradient_checkpointing(cfg.gradient_checkpointing)
    tower.num_timepoints = data.num_timepoints
    return tower.eval()


def save_brainlm_tower(tower: BrainLMTower, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write what fine-tuning changed (`encoders.brainlm.finetune.save_finetuned`: the trainable tensors, the base
    folder and its weights hash) and tower.json (kind, window length, `meta`), as one atomic folder."""
    from brainmm.embed.model import write_tower_file
    from brainmm.io import atomic_dir
    from encoders.brainlm.finetune import save_finetuned

    folder = Path(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        save_finetuned(tower, tmp)
        write_tower_file(tmp, "brainlm", {"model_type": tower.model_type, "pooling": tower.pooling,
                                          "num_timepoints": int(getattr(tower, "num_timepoints", 0)), **meta})
    return folder


def open_brain_dataset(cfg: BrainLMTowerConfig) -> BrainDataset:
    """Load `towers.brain.dataset` and check it fits the checkpoint (parcels, window length, time patch).

    A ViT-MAE checkpoint takes windows of exactly 424 parcels x 200 time points (its tower sorts the parcels by Y
    itself, so any parcel order of the dataset works); a Nystromformer one the parcel count of its config and
    windows that are a multiple of its time patch.
    """
    from brainmm.data.fmri import FmriDataset, check_compatible
    from brainmm.embed.model import read_model_config
    from encoders.brainlm import BrainLMConfig
    from encoders.brainlm.vit import NUM_PARCELS, NUM_TIMEPOINTS

    config = read_model_config(cfg.checkpoint, f"{WHERE}.checkpoint'")
    vit = config["model_type"] == "vit_mae"
    if vit and cfg.num_timepoints not in (0, NUM_TIMEPOINTS):
        raise BrainmmError(f"{WHERE}.num_timepoints': a ViT-MAE BrainLM ({cfg.checkpoint}) takes windows of exactly "
                           f"{NUM_TIMEPOINTS} time points, got {cfg.num_timepoints}")
    defaults = BrainLMConfig()
    parcels = NUM_PARCELS if vit else int(config.get("num_brain_voxels", defaults.num_brain_voxels))
    try:
        ds = FmriDataset.load(cfg.dataset)
        t = NUM_TIMEPOINTS if vit else (cfg.num_timepoints or ds.num_timepoints)
        check_compatible(ds, parcels, t)
    except BrainmmError as err:
        what = f" (a ViT-MAE BrainLM takes windows of {NUM_PARCELS} parcels x {NUM_TIMEPOINTS} time points)" if vit else ""
        raise BrainmmError(f"{WHERE}.dataset': {err}{what}") from None
    patch = None if vit else int(config.get("timepoint_patching_size", defaults.timepoint_patching_size))
    if patch and t % patch:
        raise BrainmmError(f"{WHERE}.num_timepoints': windows of {t} time points are not a multiple of the "
                           f"checkpoint's timepoint_patching_size={patch}")
    return BrainDataset(ds, t)


def check_split_agrees(data: BrainDataset, split_path: str | Path) -> None:
    """The align split must put every shared subject where the dataset's split did (its statistics are train-fitted)."""
    from brainmm.data.splits import load_split

    ours = load_split(split_path)
    mine = dict(zip(ours["subject_id"].astype(str), ours["split"]))
    theirs = data.dataset.split
    bad = [(s, sp, mine[s]) for s, sp in zip(theirs["subject_id"].astype(str), theirs["split"])
           if s in mine and mine[s] != sp]
    if bad:
        s, sp, other = bad[0]
        raise BrainmmError(
            f"data.split {split_path} and the split of fMRI dataset {data.dataset.path} disagree for {len(bad)} "
            f"subject(s), e.g. {s!r} is '{other}' here and '{sp}' in the dataset, whose normalisation statistics were "
            f"fitted on its train split; ingest with --split-from {split_path} (or use the dataset's split.csv)"
        )


def frozen_brain_table(cfg: BrainLMTowerConfig, data: BrainDataset, device: str = "auto",
                       precision: str = "auto") -> EmbeddingTable:
    """Embeddings of every recording of `data` by the frozen `cfg.checkpoint`, from the `brainmm embed` cache.

    One vector per recording: the mean over its tiled windows (the embedding the trainable tower uses for
    evaluation). `brainmm.embed.run_brain_embed` computes it once (every torchrun rank a slice) and caches it under
    `cfg.cache_dir` by model hash, dataset hash, pooling and window length; later runs read it without running the
    model. Keyed by recording, with `meta.subject_id`. Call it on every rank.
    """
    from brainmm.align.tower_models import tower_precision
    from brainmm.distributed import broadcast_object
    from brainmm.embed import EmbedConfig, run_brain_embed
    from brainmm.embeddings import EmbeddingTable

    with tempfile.TemporaryDirectory() as tmp:  # run_brain_embed also publishes a copy; the cache entry is what we read
        result = run_brain_embed(EmbedConfig(
            model=str(cfg.checkpoint), dataset=str(cfg.dataset), pooling=cfg.pooling,
            num_timepoints=data.num_timepoints, batch_size=cfg.eval_batch_size, device=device,
            precision=tower_precision(precision, device), cache_dir=cfg.cache_dir or None, out=str(Path(tmp) / "brain")))
    entry = broadcast_object(None if result is None else str(result.cache_entry))  # rank 0 has the result
    return EmbeddingTable.load(Path(entry) / "recordings")


# ------------------------------------------------------------------------------------------------ kind


@register_tower("brainlm", sides=("brain",), config=BrainLMTowerConfig)
class BrainLMKind(TowerKind):
    """A BrainLM encoder on an fMRI dataset: frozen (its embeddings computed once), last N blocks, full, or LoRA."""

    pipeline_stages = ("pretrain", "embed")

    @property
    def tower_class(self) -> type:  # type: ignore[override]
        """The tower module class (for `kind_of`)."""
        from encoders.brainlm.tower import BrainLMTower

        return BrainLMTower

    def check(self, cfg: Any, side: str, where: str) -> None:
        from encoders.brainlm.lora import require_peft
        from encoders.errors import EncoderInputError

        for name in ("checkpoint", "dataset"):
            if not getattr(cfg, name):
                raise BrainmmError(f"align config field '{where}.{name}': kind brainlm needs it, got nothing")
        if cfg.num_timepoints < 0:
            raise BrainmmError(f"align config field '{where}.num_timepoints': expected >= 0 (0 = the dataset's), "
                               f"got {cfg.num_timepoints}")
        if cfg.eval_batch_size < 1:
            raise BrainmmError(f"align config field '{where}.eval_batch_size': expected >= 1, got {cfg.eval_batch_size}")
        check_trainable(cfg.trainable, cfg.last_n, cfg.lr, where)
        try:
            cfg.lora.check()
            if cfg.trainable == "lora":
                require_peft()
        except EncoderInputError as err:
            raise BrainmmError(f"align config field '{where}.lora': {err}") from None
        if cfg.trainable != "lora" and cfg.lora != type(cfg.lora)():
            raise BrainmmError(f"align config field '{where}.lora': only used with trainable: lora (got trainable: "
                               f"{cfg.trainable}); remove it or set trainable: lora")

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        from brainmm.align.data import BrainRows, check_table_finite

        b = cfg.towers.brain
        check_brainlm_pooling(b)
        dataset = open_brain_dataset(b)
        if not cfg.data.split:
            raise BrainmmError("align config field 'data.split': expected the split table CSV (e.g. the fMRI "
                               f"dataset's {Path(b.dataset) / 'split.csv'}), got nothing")
        check_split_agrees(dataset, cfg.data.split)
        source = f"BrainLM {b.checkpoint} on {b.dataset}"
        if b.trainable == "frozen":
            table = frozen_brain_table(b, dataset, device, cfg.train.precision)  # the precision the training core uses
            check_table_finite(table, f"frozen BrainLM embeddings ({source})")
            return BrainSide(BrainRows.from_table(table, source), None, dataset, self._inputs(cfg, dataset))
        tower = build_brainlm_tower(b, dataset)
        LOG.info("align: BrainLM tower (%s) %s, %d trainable tensors", tower.model_type, b.trainable,
                 len(tower.trainable_names()))
        meta = {"model": str(b.checkpoint), "model_type": tower.model_type, "pooling": b.pooling,
                "dataset": str(b.dataset), "num_timepoints": dataset.num_timepoints}
        rows = BrainRows(dataset.recording_ids, dataset.subjects, None, tower.out_dim, meta, source)
        return BrainSide(rows, tower, dataset, self._inputs(cfg, dataset))

    @staticmethod
    def _inputs(cfg: Any, dataset: BrainDataset) -> Callable[[str, Sequence[str], str], BrainWindows]:
        """The windows of some recordings of a split (seeded by train.seed), embedded in the run's precision."""
        return lambda split, ids, precision: BrainWindows(dataset, split, ids, cfg.train.seed,
                                                          cfg.towers.brain.eval_batch_size, precision)

    def save(self, cfg: Any, name: str, tower: Any, data: Any, folder: Path) -> dict[str, str] | None:
        from encoders.brainlm.tower import BrainLMTower

        b = cfg.towers.brain
        if not isinstance(tower, BrainLMTower):  # frozen: the heads were trained on its cached embeddings
            tower = build_brainlm_tower(b, data.brain_side.state)
        save_brainlm_tower(tower, folder / name, {"trainable": b.trainable, "dataset": str(Path(b.dataset).resolve())})
        return {"kind": self.name, "trainable": b.trainable, "path": f"towers/{name}"}

    def load(self, folder: Path) -> Any:
        from brainmm.embed.model import load_brainlm_tower

        return load_brainlm_tower(folder)

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        c, b = data.counts, cfg.towers.brain
        train_how = ("heads trained on its tiled-window means, computed once" if b.trainable == "frozen" else
                     "one random window per recording per step; evaluation: mean over tiled windows")
        trainable = {"last_n": f"last {b.last_n} blocks + final LayerNorm",
                     "lora": f"LoRA rank {b.lora.rank}, alpha {b.lora.alpha:g} on "
                             f"{b.lora.target_modules or 'the attention projections'}"}.get(b.trainable, b.trainable)
        model_type = data.brain.meta.get("model_type", "BrainLM")
        return (f"- brain tower: BrainLM `{b.checkpoint}` ({model_type}; {trainable}, {b.pooling} pooling, windows of "
                f"{data.brain.meta.get('num_timepoints', data.brain_side.state.num_timepoints)} time points; "
                f"{train_how}) on fMRI dataset `{b.dataset}` ({data.brain.dim}-D, {c['brain_rows']} recordings, "
                f"{c['brain_subjects']} subjects); saved as what changed + the base checkpoint's sha256")

    def input_features(self, run_dir: Path, cfg: Any) -> Callable[[], tuple[EmbeddingTable, str]]:
        """The saved tower (base checkpoint checked against its recorded hash now) on its fMRI dataset: `brainmm
        embed model=<align run>` (tiled windows, mean per recording; cached), in the run's precision."""
        from brainmm.align.io import run_precision
        from brainmm.embed import EmbedConfig, run_brain_embed
        from brainmm.embed.model import brain_tower_folder, check_tower_base
        from brainmm.embeddings import EmbeddingTable

        check_tower_base(brain_tower_folder(run_dir))
        b = cfg.towers.brain

        def features() -> tuple[EmbeddingTable, str]:
            with tempfile.TemporaryDirectory() as tmp:  # the cache entry stays; the published copy is not needed
                result = run_brain_embed(EmbedConfig(
                    model=str(run_dir), dataset=b.dataset, batch_size=b.eval_batch_size, device="auto",
                    cache_dir=b.cache_dir or None, precision=run_precision(run_dir), out=str(Path(tmp) / "brain")))
            stem = result.cache_entry / "recordings"
            return EmbeddingTable.load(stem), str(stem)

        return features

    def pipeline_inputs(self, cfg: Any, model: str, dataset: str, given: Callable[[str], str]) -> None:
        cfg.checkpoint = given(cfg.checkpoint) if cfg.checkpoint else model
        cfg.dataset = given(cfg.dataset) if cfg.dataset else dataset

    def project(self, model: Any, source: str | Path, split: str | None, batch_size: int,
                precision: str) -> EmbeddingTable:
        """An fMRI dataset's recordings: the tower's output averaged over each recording's tiled windows, then the
        brain head (the parcels must be those the tower was trained with)."""
        import numpy as np

        from brainmm.align.project import project_brain_features
        from brainmm.data.fmri import FmriDataset, check_compatible
        from brainmm.embeddings import EmbeddingTable

        tower = model.brain_tower
        coords = tower.coords.double().cpu().numpy()
        ds = check_compatible(FmriDataset.load(source), coords.shape[0], tower.num_timepoints)
        if ds.coords.shape != coords.shape or not np.allclose(ds.coords, coords, atol=1e-3):
            raise BrainmmError(f"fMRI dataset {ds.path}: its parcel coordinates differ from those the tower was "
                               "trained with (another atlas or parcel order?)")
        windows = ds.windows(split, tower.num_timepoints, mode="tiled")
        z = project_brain_features(model, tiled_features(tower, windows, batch_size=batch_size, precision=precision))
        subjects = dict(zip(windows.recording_ids, windows.subject_ids))
        meta = {"model": "brainmm.align", "space": "shared", "modality": "brain", "source": str(source),
                "split": split or "all", "subject_id": subjects}
        return EmbeddingTable(windows.recording_ids, z.numpy(), meta)
