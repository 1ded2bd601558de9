"""The DNAEncoder interface and the machinery every family shares.

A family subclasses `DNAEncoder`, implements `load()` (set `self.model`, read the tokenizer) and
`tokenize()` (sequences -> `TokenBatch`), optionally overrides `forward_hidden()` (model call ->
hidden states of the selected layer), and registers itself with `@register_dna_encoder("name")`.
Everything else is shared: normalisation, tiling, reverse-complement handling, batching by length,
pooling, the output dimension and the cache key. A model that computes both strands in one pass
(Caduceus-PS) sets `rc_in_model`; its `forward_hidden()` then returns [B, T, 2H] states whose second
half is the reverse strand aligned to each position, and no reverse-complement sequences are run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from encoders.dna.sequences import (
    IUPAC_POLICIES,
    SequenceReport,
    normalize_sequences,
    reverse_complement,
    tile_windows,
)
from encoders.errors import EncoderInputError
from encoders.weights import check_weight_files, quiet_transformers

logger = logging.getLogger("encoders.dna")

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POOLINGS = ("mean", "last", "cls", "max")
RC_MODES = ("none", "average", "concat")

# Files that define a model for the cache key (weights, config, tokenizer, remote code).
_IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".txt", ".model", ".py")
_IDENTITY_SKIP = re.compile(r"^(readme|license|licence|notice|citation)", re.IGNORECASE)


@dataclass(frozen=True)
class DNAEncoderConfig:
    """Options shared by every family; a family may subclass this to add its own fields.

    `pooling` and `rc` left as None take the family default. `layer` indexes the model's
    `hidden_states` (0 = embeddings, -1 = last layer; a module name for families that hook modules).
    `window`/`overlap` are in bases: longer sequences are tiled and the window embeddings averaged;
    with `window=None` a sequence longer than the model context is an error. `iupac`: "error" rejects IUPAC ambiguity codes, "n" reads them as N.
    """

    path: str
    layer: int | str = -1
    pooling: str | None = None
    rc: str | None = None
    window: int | None = None
    overlap: int = 0
    iupac: str = "error"
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    batch_size: int = 8


@dataclass
class TokenBatch:
    """Model input for a batch: ids and attention mask [B, T]; `content_mask` marks tokens made of bases."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    content_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        """The same batch on `device`."""
        return TokenBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.content_mask)))


def pad_token_rows(rows: Sequence[np.ndarray], spans: Sequence[tuple[int, int]], pad_id: int,
                   side: str = "right") -> TokenBatch:
    """Pad 1-D id arrays into a TokenBatch; `spans[i]` = (start, end) of the content tokens in row i."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    offsets = width - lengths if side == "left" else np.zeros_like(lengths)
    for i, row in enumerate(rows):
        ids[i, offsets[i]:offsets[i] + len(row)] = row
    pos = np.arange(width)[None, :]
    attention = (pos >= offsets[:, None]) & (pos < (offsets + lengths)[:, None])
    span = np.asarray(spans, dtype=np.int64).reshape(len(rows), 2) + offsets[:, None]
    content = (pos >= span[:, :1]) & (pos < span[:, 1:])
    return TokenBatch(torch.from_numpy(ids), torch.from_numpy(attention.astype(np.int64)),
                      torch.from_numpy(content))


def pool_hidden(hidden: torch.Tensor, batch: TokenBatch, pooling: str) -> torch.Tensor:
    """Pool [B, T, H] states to [B, H]: mean/max over content tokens, last or first (CLS) real token."""
    if pooling in ("mean", "max"):
        mask = batch.content_mask.unsqueeze(-1)
        if pooling == "max":
            return hidden.masked_fill(~mask, float("-inf")).amax(dim=1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
    real = batch.attention_mask.bool()
    if pooling == "last":
        index = positions.masked_fill(~real, -1).amax(dim=1)
    elif pooling == "cls":
        index = positions.masked_fill(~real, hidden.shape[1]).amin(dim=1)
    else:
        raise EncoderInputError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (real path, size, mtime); HF hub blobs are named by their SHA-256."""
    real = Path(os.path.realpath(path))
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_MEMO:
        if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
            _HASH_MEMO[key] = real.name
        else:
            with open(real, "rb") as fh:
                _HASH_MEMO[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _HASH_MEMO[key]


def model_fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in `folder` (top level) that defines the model: weights, configs, tokenizer, code."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix in _IDENTITY_SUFFIXES and not _IDENTITY_SKIP.match(p.name)
                   and not p.name.startswith("."))
    return {p.name: file_sha256(p) for p in files}


class DNAEncoder(ABC):
    """Embeds DNA sequences with one pretrained model loaded from a local folder.

    `embed(seqs)` -> [N, dim] float32 CPU tensor; `embed(seqs, per_token=True)` -> one [T_i, dim]
    tensor per sequence, one row per content token (what a token is depends on the family: a 6-mer
    or single base for k-mer models, a base for character models, a BPE piece for DNABERT-2).
    """

    family: ClassVar[str] = ""                 # set by register_dna_encoder
    config_class: ClassVar[type[DNAEncoderConfig]] = DNAEncoderConfig
    version: ClassVar[int] = 1                 # bump when tokenization/pooling logic changes (cache key)
    default_pooling: ClassVar[str] = "mean"
    default_rc: ClassVar[str] = "average"
    poolings: ClassVar[tuple[str, ...]] = POOLINGS
    rc_modes: ClassVar[tuple[str, ...]] = RC_MODES
    padding_side: ClassVar[str] = "right"
    window_multiple: ClassVar[int] = 1          # windows must be a multiple of this many bases
    single_base_tokens: ClassVar[bool] = False  # content tokens are single bases (per-token RC alignment)
    # True when the model computes the reverse strand itself (RC-equivariant parameter sharing): with
    # rc != "none", forward_hidden() returns [B, T, 2H] = [forward ‖ reverse strand at the same position]
    # and embed() runs no reverse-complement sequences. Class-level default; a family whose checkpoints
    # differ (Caduceus PS vs Ph) sets it on the instance in load(). Needs mean or max pooling.
    rc_in_model: bool = False

    def __init__(self, config: DNAEncoderConfig):
        self.config = self._resolve(config)
        self.path = Path(self.config.path).expanduser()
        if not self.path.is_dir():
            raise EncoderInputError(f"path: model folder {self.path} does not exist or is not a folder")
        self.device = self._device(self.config.device)
        self.dtype = DTYPES[self.config.dtype]
        self.model: torch.nn.Module | None = None
        self.last_report = SequenceReport()
        self._cache_key: str | None = None
        self._probed: tuple[int, int] | None = None
        self.load()
        self._check_layer()
        if self.rc_in_model and self.config.rc != "none" and self.config.pooling not in ("mean", "max"):
            raise EncoderInputError(
                f"pooling: {self.family} model in {self.path} computes the reverse strand in the same pass, "
                f"which pairs with 'mean' or 'max' pooling only (rc={self.config.rc!r}); got "
                f"{self.config.pooling!r}")

    # ---- configuration -------------------------------------------------------------------------
    def _resolve(self, config: DNAEncoderConfig) -> DNAEncoderConfig:
        """Fill family defaults and validate every shared option."""
        if not isinstance(config, self.config_class):
            raise EncoderInputError(f"{self.family}: expected a {self.config_class.__name__}, "
                                    f"got {type(config).__name__}")
        config = dataclasses.replace(config, pooling=config.pooling or self.default_pooling,
                                     rc=config.rc or self.default_rc)
        checks = [("pooling", config.pooling, self.poolings), ("rc", config.rc, self.rc_modes),
                  ("iupac", config.iupac, IUPAC_POLICIES), ("dtype", config.dtype, tuple(DTYPES))]
        for name, value, allowed in checks:
            if value not in allowed:
                raise EncoderInputError(f"{name}: {self.family} supports {allowed}, got {value!r}")
        if config.batch_size < 1:
            raise EncoderInputError(f"batch_size: expected >= 1, got {config.batch_size}")
        if config.window is not None:
            if config.window < 1 or config.window % self.window_multiple:
                raise EncoderInputError(f"window: expected a positive multiple of {self.window_multiple} "
                                        f"bases for {self.family}, got {config.window}")
            if not 0 <= config.overlap < config.window:
                raise EncoderInputError(f"overlap: expected 0 <= overlap < window ({config.window}), "
                                        f"got {config.overlap}")
        elif config.overlap:
            raise EncoderInputError("overlap: only meaningful with a window; set window or overlap=0")
        return config

    @staticmethod
    def _device(name: str) -> torch.device:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise EncoderInputError(f"device: {name!r} is not a torch device ({err})") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EncoderInputError(f"device: {name!r} requested but CUDA is not available here")
        return device

    def _check_layer(self) -> None:
        """Validate `config.layer` against the loaded model (families with named layers override this)."""
        if not isinstance(self.config.layer, int) or isinstance(self.config.layer, bool):
            raise EncoderInputError(f"layer: expected an int (hidden_states index), got {self.config.layer!r}")
        n = self.num_hidden_states
        if not -n <= self.config.layer < n:
            raise EncoderInputError(f"layer: {self.family} model in {self.path} has hidden_states indices "
                                    f"{-n}..{n - 1} (0 = embeddings), got {self.config.layer}")

    # ---- what a family provides ----------------------------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Load model and tokenizer from `self.path` (local files only); set `self.model`."""

    @abstractmethod
    def tokenize(self, sequences: list[str]) -> TokenBatch:
        """Turn normalised sequences (uppercase ACGTN) into a padded TokenBatch."""

    def run_model(self, batch: TokenBatch, output_hidden_states: bool) -> Any:
        """One forward pass; the output has `last_hidden_state` (and `hidden_states` when asked)."""
        return self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          output_hidden_states=output_hidden_states)

    def forward_hidden(self, batch: TokenBatch) -> torch.Tensor:
        """Hidden states [B, T, H] of the configured layer ([B, T, 2H] with `rc_in_model` and rc != 'none')."""
        last = self.config.layer in (-1, self.num_hidden_states - 1)
        out = self.run_model(batch, output_hidden_states=not last)
        return out.last_hidden_state if last else out.hidden_states[self.config.layer]

    def probe(self) -> tuple[int, int]:
        """(len(hidden_states), hidden size) measured with one forward pass on a 12-bp input."""
        if self._probed is None:
            batch = self.tokenize(["ACGTACGTACGT"]).to(self.device)
            with torch.inference_mode():
                states = self.run_model(batch, output_hidden_states=True).hidden_states
            self._probed = (len(states), int(states[-1].shape[-1]))
        return self._probed

    @property
    def hidden_size(self) -> int:
        """Width of one token state (before reverse-complement concatenation)."""
        return int(self.model.config.hidden_size)

    @property
    def num_hidden_states(self) -> int:
        """Length of the model's hidden_states tuple (embeddings + one per layer)."""
        return int(self.model.config.num_hidden_layers) + 1

    @property
    def max_tokens(self) -> int | None:
        """Longest model input in tokens (specials included), or None when unbounded."""
        return None

    # ---- shared helpers for families ---------------------------------------------------------
    def require_files(self, *names: str) -> None:
        """Raise a clear error naming the folder when any of `names` is missing from it."""
        missing = [n for n in names if not (self.path / n).is_file()]
        if missing:
            raise EncoderInputError(f"{self.family}: model folder {self.path} lacks {', '.join(missing)}")

    def read_config_json(self) -> dict[str, Any]:
        """The folder's config.json as a dict (clear error when missing or not JSON)."""
        from encoders.weights import read_json

        self.require_files("config.json")
        config = read_json(self.path / "config.json")  # bad JSON, bad bytes, nesting too deep: EncoderInputError
        if not isinstance(config, dict):
            raise EncoderInputError(f"{self.path / 'config.json'}: must hold a JSON object of settings")
        return config

    def load_weights(self, model_cls: Any, ignore_missing: tuple[str, ...] = (), **kwargs: Any) -> torch.nn.Module:
        """`model_cls.from_pretrained(self.path)` offline in the configured dtype, moved to the device.

        Raises when weights of the base model are missing or mismatched (a wrong or partial checkpoint
        would otherwise run with random weights); heads, poolers and modules named in `ignore_missing`
        (prefixes relative to the base model) are ignored.
        """
        check_weight_files(self.path)  # damaged files: one clear error instead of a safetensors traceback
        with quiet_transformers():
            model, info = model_cls.from_pretrained(self.path, local_files_only=True, dtype=self.dtype,
                                                    output_loading_info=True, ignore_mismatched_sizes=True,
                                                    **kwargs)
        prefix = f"{model.base_model_prefix}." if model.base_model is not model else ""
        ignored = tuple(prefix + p for p in (*ignore_missing, "pooler."))
        missing = sorted(k for k in info["missing_keys"] if k.startswith(prefix) and not k.startswith(ignored))
        mismatched = sorted(f"{k[0]} (checkpoint {list(k[1])}, model {list(k[2])})" if isinstance(k, tuple)
                            else str(k) for k in info["mismatched_keys"])
        problems = [f"shape {m}" for m in mismatched] + [f"missing {m}" for m in missing]
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise EncoderInputError(f"{self.family}: weights in {self.path} do not fit the {type(model).__name__} "
                                    f"its config.json describes: {'; '.join(problems[:3])}{more}")
        return model.to(self.device).eval()

    def require_remote_code(self, why: str) -> None:
        """Refuse unless the user passed trust_remote_code=True; then log whose code will run."""
        if not self.config.trust_remote_code:
            raise EncoderInputError(
                f"{self.family}: {why}; this runs Python code shipped in {self.path}. "
                "Pass trust_remote_code=True if you trust that folder.")
        logger.warning("trust_remote_code=True: running model code from %s", self.path)

    # ---- embedding ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Output dimension (hidden size, doubled when rc='concat')."""
        return self.hidden_size * (2 if self.config.rc == "concat" else 1)

    def embed(self, sequences: Sequence[str], per_token: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Embed sequences: [N, dim] float32 CPU tensor, or a list of [T_i, dim] tensors with per_token."""
        seqs, self.last_report = normalize_sequences(sequences, self.config.iupac)
        rc = self.config.rc
        if per_token and rc != "none" and not self.single_base_tokens:
            raise EncoderInputError(f"rc: per-token output with rc={rc!r} needs single-base tokens; "
                                    f"{self.family} tokens are not, use rc='none'")
        in_model = rc != "none" and self.rc_in_model  # the reverse strand comes with the forward pass
        unique: dict[str, int] = {}
        fwd_idx: list[int] = []
        rc_idx: list[int] = []
        owner: list[int] = []
        for i, seq in enumerate(seqs):
            windows = tile_windows(len(seq), self.config.window, self.config.overlap)
            if per_token and len(windows) > 1:
                raise EncoderInputError(f"sequences[{i}]: per-token output needs one window, but "
                                        f"{len(seq)} bp is longer than window={self.config.window}")
            for start, end in windows:
                piece = seq[start:end]
                fwd_idx.append(unique.setdefault(piece, len(unique)))
                if rc != "none" and not in_model:
                    rev = reverse_complement(piece)
                    rc_idx.append(unique.setdefault(rev, len(unique)))
                owner.append(i)
        h = self.hidden_size
        width = 2 * h if in_model else h
        if per_token:
            states = self._run(list(unique), per_token=True, width=width)
            if rc == "none":
                return [states[f] for f in fwd_idx]
            if in_model:
                return [self._combine_strands(states[f][:, :h], states[f][:, h:]) for f in fwd_idx]
            # single-base tokens: position j of the RC strand pairs with position j of the forward strand
            return [self._combine_strands(states[f], states[r].flip(0)) for f, r in zip(fwd_idx, rc_idx)]
        pooled = self._run(list(unique), per_token=False, width=width)
        if not seqs:
            return torch.zeros(0, self.dim)
        vectors = pooled[fwd_idx]
        if in_model:
            vectors = self._combine_strands(vectors[:, :h], vectors[:, h:])
        elif rc != "none":
            vectors = self._combine_strands(vectors, pooled[rc_idx])
        owners = torch.tensor(owner)
        counts = torch.bincount(owners, minlength=len(seqs)).unsqueeze(1).to(vectors.dtype)
        return torch.zeros(len(seqs), vectors.shape[1]).index_add_(0, owners, vectors) / counts

    def _combine_strands(self, fwd: torch.Tensor, rev: torch.Tensor) -> torch.Tensor:
        """Forward- and reverse-strand states of the same rows: their mean (rc='average') or [fwd ‖ rev]."""
        return (fwd + rev) / 2 if self.config.rc == "average" else torch.cat([fwd, rev], dim=-1)

    def _run(self, pieces: list[str], per_token: bool, width: int) -> Any:
        """Model outputs (`width` channels) for unique pieces, longest first in batches; rows in input order."""
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k]), reverse=True)
        pooled = torch.zeros(len(pieces), width)
        tokens: list[torch.Tensor | None] = [None] * len(pieces)
        step = self.config.batch_size
        for b in range(0, len(order), step):
            idx = order[b:b + step]
            batch = self.tokenize([pieces[k] for k in idx])
            limit = self.max_tokens
            if limit is not None and batch.input_ids.shape[1] > limit:
                longest = len(pieces[idx[0]])
                raise EncoderInputError(
                    f"sequence of {longest} bp needs {batch.input_ids.shape[1]} tokens, more than the "
                    f"{limit} the {self.family} model in {self.path} takes; set window= (bases per "
                    "forward pass) to tile long sequences")
            batch = batch.to(self.device)
            with torch.inference_mode():
                hidden = self.forward_hidden(batch).float()
                if per_token:
                    rows = [h[m].cpu() for h, m in zip(hidden, batch.content_mask)]
                else:
                    rows = pool_hidden(hidden, batch, self.config.pooling).cpu()
            if per_token:
                for k, row in zip(idx, rows):
                    tokens[k] = row.clone()
            else:
                pooled[idx] = rows
        return tokens if per_token else pooled

    # ---- identity ------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Everything that determines the embeddings (hashed into cache_key; store it beside caches)."""
        options = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)
                   if f.name not in ("path", "device", "batch_size")}
        return {"family": self.family, "version": self.version, "files": model_fingerprint(self.path),
                "options": options}

    def cache_key(self) -> str:
        """Stable id of (family, model files' SHA-256, layer, pooling, rc, window, overlap, dtype, options).

        `trust_remote_code` is part of it (NT-v2 runs different code with and without it); the folder
        path, device and batch size are not.
        """
        if self._cache_key is None:
            blob = json.dumps(self.identity(), sort_keys=True).encode()
            self._cache_key = f"{self.family}-{hashlib.sha256(blob).hexdigest()[:32]}"
        return self._cache_key

    def __repr__(self) -> str:
        cfg = self.config
        return (f"{type(self).__name__}(path={str(self.path)!r}, layer={cfg.layer}, pooling={cfg.pooling!r}, "
                f"rc={cfg.rc!r}, window={cfg.window}, dim={self.dim})")

