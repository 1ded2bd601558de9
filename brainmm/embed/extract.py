"""Brain embeddings from a frozen BrainLM: tiled windows of every recording -> encode -> mean per recording.

Each recording is cut into deterministic tiled windows (starts 0, T, 2T, ... plus one window ending at the last
time point, see `brainmm.data.fmri.windows.tile_starts`); every window is encoded at mask ratio 0 and the
recording's vector is the plain mean of its window vectors (the overlapping last window counts once like the
others). The subject table is the mean over a subject's recordings.

Streaming: windows come in batches from the windows Dataset, and a recording's vector is written to disk as
soon as its last window is encoded, so memory does not grow with the number of recordings. Under torchrun
every rank embeds a contiguous, disjoint slice of the recordings into its own part file, and rank 0 merges the
parts in order.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from brainmm.config import save_config
from brainmm.distributed import DistInfo, barrier, broadcast_object, distributed, shard_range
from brainmm.embed.cache import StreamingTable, cache_key, dataset_hash, entry_dir, is_complete
from brainmm.embed.config import EmbedConfig
from brainmm.embed.model import (
    FrozenBrainLM,
    brain_tower_folder,
    default_window,
    load_frozen_brainlm,
    model_hash,
    read_model_config,
    read_tower_info,
)
from brainmm.errors import BrainmmError
from brainmm.io import atomic_file, atomic_write_json, main_process_lock, make_temp_dir
from encoders.precision import autocast, resolve_precision

LOG = logging.getLogger("brainmm.embed")
MERGE_ROWS = 4096  # rows per block when merging part files


@dataclass
class EmbedResult:
    """Where the tables are: `recordings` / `subjects` are table stems (EmbeddingTable.load reads them)."""

    recordings: Path
    subjects: Path
    cache_entry: Path
    cache_hit: bool
    num_recordings: int
    num_subjects: int


def default_cache_dir() -> Path:
    """`<brainmm data dir>/brain-embeddings`."""
    from brainmm.data.fetch import data_dir

    return data_dir() / "brain-embeddings"


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def run_brain_embed(cfg: EmbedConfig) -> EmbedResult | None:
    """The whole stage; returns the result on rank 0 (None on other ranks) after writing the tables to `cfg.out`."""
    cfg = replace(cfg, **{k: str(Path(getattr(cfg, k)).expanduser()) for k in ("model", "dataset", "cache_dir", "out")
                          if getattr(cfg, k)})
    for name in ("model", "dataset"):
        value = getattr(cfg, name)
        if not value:
            raise BrainmmError(f"embed config field '{name}': expected a folder, got nothing")
        if not Path(value).is_dir():
            raise BrainmmError(f"embed config field '{name}': {value} is not a folder")
    tower = brain_tower_folder(cfg.model)
    if tower is not None:  # an align run's BrainLM tower embeds with the pooling it was trained with
        cfg = replace(cfg, pooling=read_tower_info(tower)["pooling"])
    with distributed(cfg.device) as info, main_process_lock(_stem(cfg.out), info.is_main):
        return _run(cfg, info)


def _run(cfg: EmbedConfig, info: DistInfo) -> EmbedResult | None:
    from brainmm.data.fmri import FmriDataset
    from brainmm.data.fmri.provenance import check_pretraining_split

    ds = FmriDataset.load(cfg.dataset)
    if info.is_main:
        check_pretraining_split(cfg.model, ds, cfg.allow_split_mismatch)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    fields = None
    if info.is_main:
        tower = brain_tower_folder(cfg.model)
        default = (read_tower_info(tower)["num_timepoints"] if tower is not None
                   else default_window(read_model_config(cfg.model)))
        window = cfg.num_timepoints or default  # null and explicit: one key
        fields = {"model": model_hash(cfg.model), "dataset": dataset_hash(cfg.dataset), "pooling": cfg.pooling,
                  "num_timepoints": window, "windows": "tiled", "aggregate": "mean",
                  "precision": resolve_precision(cfg.precision, info.device)}
    fields = broadcast_object(fields)
    key = cache_key(fields)
    entry = entry_dir(cache_dir, key)
    hit = broadcast_object(is_complete(entry) if info.is_main else None)
    if hit:
        LOG.info("embed: cached tables found in %s (the model is not run)", entry)
        return _publish(cfg, entry, True) if info.is_main else None

    frozen = load_frozen_brainlm(cfg.model, info.device, cfg.pooling)
    num_t = _window(cfg, frozen, ds)
    windows = ds.windows(None, num_t, mode="tiled")
    rec_ids = ds.recording_ids(None)
    work = Path(broadcast_object(_workdir(cache_dir, key) if info.is_main else None))
    mine = shard_range(len(rec_ids), info.rank, info.world_size)
    try:
        _embed_part(frozen, windows, mine, cfg, info, work / f"part-{info.rank:05d}.f32")
        barrier()
        if info.is_main:
            meta = _meta(cfg, frozen, ds, fields, key, num_t, info.world_size)
            _merge(work, ds, rec_ids, frozen.dim, info.world_size, meta)
            atomic_write_json(work / "entry" / "key.json", {"key": key, **fields})
            _install(work / "entry", entry)
        barrier()
    finally:
        if info.is_main:
            shutil.rmtree(work, ignore_errors=True)
    return _publish(cfg, entry, False) if info.is_main else None


def _window(cfg: EmbedConfig, frozen: FrozenBrainLM, ds) -> int:
    """The window length, checked against the model and the dataset (parcels, order, length)."""
    from brainmm.data.fmri import check_compatible

    num_t = cfg.num_timepoints or frozen.num_timepoints
    if frozen.tower:
        check_compatible(ds, frozen.num_parcels, ds.num_timepoints)
        coords = frozen.model.coords.double().cpu().numpy()
        if not np.allclose(np.asarray(ds.coords, dtype=np.float64), coords, atol=1e-3):
            raise BrainmmError(f"fMRI dataset {ds.path}: its parcel coordinates differ from those the BrainLM tower "
                               f"in {cfg.model} was trained with (another atlas or parcel order?)")
    if (frozen.kind == "vit_mae" or frozen.tower) and num_t != frozen.num_timepoints:
        raise BrainmmError(f"embed config field 'num_timepoints': {cfg.model} takes windows of exactly "
                           f"{frozen.num_timepoints} time points, got {num_t}")
    if frozen.patch_size and num_t % frozen.patch_size:
        raise BrainmmError(f"embed config field 'num_timepoints': {num_t} is not a multiple of the model's "
                           f"timepoint_patching_size {frozen.patch_size}")
    if ds.num_parcels != frozen.num_parcels or (frozen.parcel_order and ds.manifest["parcel_order"] != frozen.parcel_order):
        check_compatible(ds, frozen.num_parcels, ds.num_timepoints, frozen.parcel_order)
    short = ds.recordings[ds.recordings["num_timepoints"] < num_t]
    if len(short):
        raise BrainmmError(f"fMRI dataset {ds.path}: recording {short['recording_id'].iloc[0]!r} has "
                           f"{int(short['num_timepoints'].iloc[0])} time points, fewer than the window of {num_t}")
    return num_t


def _workdir(cache_dir: Path, key: str) -> str:
    return str(make_temp_dir(cache_dir, f".{key[:24]}."))  # the umask's mode, like every other output


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"signal_vectors": torch.stack([it["signal_vectors"] for it in items]),
            "xyz_vectors": torch.stack([it["xyz_vectors"] for it in items]),
            "recording": torch.tensor([it["recording"] for it in items])}


class _Slice(Dataset):
    """Windows `first..last-1` of a tiled windows Dataset; each item also carries its recording position."""

    def __init__(self, windows, first: int, last: int) -> None:
        self.windows, self.first, self.last = windows, int(first), int(last)

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = self.first + int(index)
        item = self.windows[i]
        item["recording"] = int(self.windows.items[i, 0])
        return item


def _embed_part(frozen: FrozenBrainLM, windows, recordings: range, cfg: EmbedConfig, info: DistInfo,
                path: Path) -> None:
    """Embed this rank's recordings into a raw float32 file, one row per recording, in order (streaming)."""
    from brainmm.runtime import progress

    first = np.searchsorted(windows.items[:, 0], recordings.start, side="left")
    last = np.searchsorted(windows.items[:, 0], recordings.stop, side="left")
    loader = DataLoader(_Slice(windows, first, last), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, collate_fn=_collate,
                        pin_memory=info.device.type == "cuda")
    expected = recordings.start
    current, total, count = None, None, 0
    with open(path, "wb") as fh:
        def flush() -> None:
            nonlocal expected
            if current != expected:  # every recording has >= 1 window, in storage order
                raise RuntimeError(f"embed: recording {current} came out of order (expected {expected})")
            fh.write((total / count).astype("<f4").tobytes())
            expected += 1

        batches = progress(loader, desc="embed", total=len(loader), unit="batch") if info.is_main else loader
        for batch in batches:
            with autocast(cfg.precision, info.device):  # bf16: products in bf16, the vectors come back float32
                vectors = frozen.encode(batch["signal_vectors"].to(info.device, non_blocking=True),
                                        batch["xyz_vectors"].to(info.device, non_blocking=True), cfg.pooling)
            vectors = vectors.double().cpu().numpy()
            if not np.isfinite(vectors).all():
                raise BrainmmError(f"embed: the model returned NaN/inf for recording(s) at positions "
                                   f"{sorted(set(batch['recording'].tolist()))[:5]} of {cfg.dataset}")
            for rec, vec in zip(batch["recording"].tolist(), vectors):
                if rec != current:
                    if current is not None:
                        flush()
                    current, total, count = rec, np.zeros_like(vec), 0
                total += vec
                count += 1
        if current is not None:
            flush()
    if expected != recordings.stop:
        raise RuntimeError(f"embed: rank {info.rank} wrote {expected - recordings.start} of {len(recordings)} rows")


def _meta(cfg: EmbedConfig, frozen: FrozenBrainLM, ds, fields: dict[str, Any], key: str, num_t: int,
          world_size: int) -> dict[str, Any]:
    return {
        "kind": "brain_embeddings", "model": str(cfg.model), "model_type": frozen.kind,
        "model_hash": fields["model"], "layer": "encoder final LayerNorm", "pooling": cfg.pooling,
        "precision": fields["precision"],
        "dataset": str(cfg.dataset), "data_hash": fields["dataset"], "cache_key": key,
        "window": {"num_timepoints": num_t, "mode": "tiled", "aggregate": "mean of window vectors"},
        "input_scale": "signal / 5.6430855 (BrainLM tutorials)" if frozen.kind == "vit_mae" else None,
        "world_size": world_size,
    }


def _merge(work: Path, ds, rec_ids: list[str], dim: int, world_size: int, meta: dict[str, Any]) -> None:
    """Concatenate the part files into the recording table and average them into the subject table."""
    from brainmm.embeddings import EmbeddingTable

    table = ds.recordings.set_index("recording_id").loc[rec_ids]
    subjects = table["subject_id"].astype(str).tolist()
    splits = table["split"].astype(str).tolist()
    order = list(dict.fromkeys(subjects))
    row_of = {s: i for i, s in enumerate(order)}
    sums = np.zeros((len(order), dim))
    counts = np.zeros(len(order))
    out = work / "entry"
    out.mkdir()
    rows = 0
    with StreamingTable(out / "recordings", len(rec_ids), dim) as writer:
        for rank in range(world_size):
            part = work / f"part-{rank:05d}.f32"
            n = part.stat().st_size // (4 * dim)
            data = np.memmap(part, dtype="<f4", mode="r", shape=(n, dim)) if n else np.zeros((0, dim), "<f4")
            for b in range(0, n, MERGE_ROWS):
                block = np.asarray(data[b : b + MERGE_ROWS])
                writer.write(block)
                idx = [row_of[s] for s in subjects[rows : rows + len(block)]]
                np.add.at(sums, idx, block)
                np.add.at(counts, idx, 1)
                rows += len(block)
            del data
        writer.close()
    atomic_write_json(out / "recordings.json", {"ids": rec_ids, "dim": dim, "meta": {
        **meta, "level": "recording", "subject_id": dict(zip(rec_ids, subjects)), "split": dict(zip(rec_ids, splits))}})
    split_of = dict(zip(subjects, splits))
    EmbeddingTable(order, sums / counts[:, None], {
        **meta, "level": "subject", "split": {s: split_of[s] for s in order},
        "num_recordings": {s: int(c) for s, c in zip(order, counts)},
    }).save(out / "subjects")


def _install(src: Path, entry: Path) -> None:
    """Move a finished entry into the cache by one rename (another process may have installed it first)."""
    try:
        src.rename(entry)
    except OSError:
        if not is_complete(entry):
            raise


def _publish(cfg: EmbedConfig, entry: Path, hit: bool) -> EmbedResult:
    """Copy the cached tables to `cfg.out` (and `<out>_subjects`), with the resolved config beside them."""
    import json

    out = _stem(cfg.out)
    targets = {"recordings": out, "subjects": out.with_name(out.name + "_subjects")}
    for name, stem in targets.items():
        for ext in (".safetensors", ".json"):
            with atomic_file(stem.with_suffix(ext), suffix=ext) as tmp:
                shutil.copyfile(entry / f"{name}{ext}", tmp)
    save_config(cfg, out.with_name(out.name + ".config.yaml"))
    sizes = {n: len(json.loads((entry / f"{n}.json").read_text())["ids"]) for n in targets}
    LOG.info("embed: %d recordings, %d subjects -> %s(.safetensors/.json), %s", sizes["recordings"],
             sizes["subjects"], out, targets["subjects"])
    return EmbedResult(out, targets["subjects"], entry, hit, sizes["recordings"], sizes["subjects"])
