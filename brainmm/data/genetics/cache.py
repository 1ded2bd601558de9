"""Content-addressed on-disk store of DNA sequence embeddings, safe for concurrent writers.

Key = sha256(encoder cache key + "\\n" + sequence). Each encoder gets its own folder
`<root>/<sha256(cache key)[:16]>/` holding `encoder.json` (the cache key and dimension) and `packs/`:
immutable safetensors files with `keys` [K, 32] (uint8 digests) and `vectors` [K, D] (float32). A writer
(one process or one torchrun rank) adds whole packs, each written to a temp file and renamed, and named by
the hash of its keys, so concurrent writers never clobber each other and a reader never sees half a pack.
Readers index every pack present; a key stored twice has the same vector either way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from brainmm.errors import BrainmmError
from brainmm.io import atomic_file, atomic_write_json


class EmbeddingCache:
    """Sequence -> embedding store for one encoder (identified by its cache key) under `root`."""

    def __init__(self, root: str | Path, cache_key: str, dim: int) -> None:
        self.cache_key = cache_key
        self.dim = int(dim)
        self.dir = Path(root) / hashlib.sha256(cache_key.encode()).hexdigest()[:16]
        self.packs_dir = self.dir / "packs"
        self.packs_dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "encoder.json"
        if info.is_file():
            saved = json.loads(info.read_text())
            if saved.get("cache_key") != cache_key or saved.get("dim") != self.dim:
                raise BrainmmError(f"embedding cache {self.dir}: made for encoder {saved.get('cache_key')!r} "
                                   f"(dim {saved.get('dim')}), not {cache_key!r} (dim {self.dim})")
        else:
            atomic_write_json(info, {"cache_key": cache_key, "dim": self.dim})
        self._index: dict[bytes, tuple[Path, int]] = {}
        self._seen: set[str] = set()
        self.refresh()

    def key(self, sequence: str) -> bytes:
        """The 32-byte content key of `sequence` under this encoder."""
        return hashlib.sha256(f"{self.cache_key}\n{sequence}".encode()).digest()

    def refresh(self) -> None:
        """Index packs written since the last scan (e.g. by other processes)."""
        from safetensors import safe_open

        for pack in sorted(self.packs_dir.glob("*.safetensors")):
            if pack.name in self._seen:
                continue
            try:
                with safe_open(str(pack), framework="numpy") as fh:
                    keys = fh.get_tensor("keys")
                    shape = fh.get_slice("vectors").get_shape()
            except Exception as err:  # safetensors raises several types for bad files
                raise BrainmmError(f"embedding cache pack {pack}: unreadable ({err.__class__.__name__}); "
                                   "delete it to recompute its embeddings") from None
            if keys.ndim != 2 or keys.shape[1] != 32 or list(shape) != [len(keys), self.dim]:
                raise BrainmmError(f"embedding cache pack {pack}: shapes keys {list(keys.shape)}, vectors "
                                   f"{list(shape)}; expected [K, 32] and [K, {self.dim}]")
            for row, k in enumerate(keys):
                self._index.setdefault(k.tobytes(), (pack, row))
            self._seen.add(pack.name)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get_many(self, keys: list[bytes]) -> np.ndarray:
        """Vectors [len(keys), dim] for keys that are all present (KeyError names the first missing)."""
        from safetensors.numpy import load_file

        out = np.empty((len(keys), self.dim), dtype=np.float32)
        by_pack: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            pack, row = self._index[k]
            by_pack.setdefault(pack, []).append((i, row))
        for pack, pairs in by_pack.items():
            vectors = load_file(str(pack))["vectors"]
            dst, src = zip(*pairs)
            out[list(dst)] = vectors[list(src)]
        return out

    def put_many(self, keys: list[bytes], vectors: np.ndarray) -> Path | None:
        """Store vectors [len(keys), dim] as one new pack (atomic); returns its path."""
        from safetensors.numpy import save_file

        if not keys:
            return None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise BrainmmError(f"embedding cache: got vectors of shape {list(vectors.shape)} for {len(keys)} keys; "
                               f"expected [{len(keys)}, {self.dim}]")
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        pack = self.packs_dir / f"{hashlib.sha256(key_arr.tobytes()).hexdigest()[:40]}.safetensors"
        with atomic_file(pack, suffix=".safetensors") as tmp:
            save_file({"keys": key_arr, "vectors": vectors}, str(tmp))
        for row, k in enumerate(keys):
            self._index.setdefault(k, (pack, row))
        self._seen.add(pack.name)
        return pack

    def items(self) -> dict[bytes, np.ndarray]:
        """Every stored key and vector (for checks and merges)."""
        keys = sorted(self._index)
        return dict(zip(keys, self.get_many(keys)))
