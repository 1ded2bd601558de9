"""What a pretrained BrainLM was trained on (dataset hash, subject -> split), and the leakage check of `brainmm embed`.

`brainmm pretrain` writes `brainmm_pretraining.json` into its model folder; `brainmm embed` reads it and refuses to
embed a dataset whose val/test subjects were in the pretraining train split (their embeddings would have seen
them), unless `allow_split_mismatch` is set; a dataset with another hash but no such subject only gets a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from brainmm.errors import BrainmmError

LOG = logging.getLogger("brainmm.embed")
PRETRAINING_FILE = "brainmm_pretraining.json"


def pretraining_record(ds: Any) -> dict[str, Any]:
    """The record of an `FmriDataset` a model is pretrained on: its path, data hash and subject -> split."""
    split = dict(zip(ds.split["subject_id"].astype(str), ds.split["split"].astype(str)))
    return {"dataset": str(Path(ds.path).resolve()), "data_hash": ds.manifest["data_hash"], "split": split}


def check_pretraining_split(model: str | Path, ds: Any, allow: bool) -> None:
    """Refuse (or with `allow` warn about) val/test subjects of `ds` that were in the model's pretraining train split."""
    path = Path(model) / PRETRAINING_FILE
    if not path.is_file():
        return
    try:
        record = json.loads(path.read_text())
        trained = {s for s, split in record["split"].items() if split == "train"}
        hash_ = str(record["data_hash"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BrainmmError(f"{path}: not a readable pretraining record ({type(err).__name__}: {err})") from None
    now = dict(zip(ds.split["subject_id"].astype(str), ds.split["split"].astype(str)))
    leaked = sorted(s for s, split in now.items() if split in ("val", "test") and s in trained)
    if leaked:
        message = (f"embed: {len(leaked)} val/test subject(s) of dataset {ds.path} (e.g. {leaked[:5]}) were in the "
                   f"train split the model {model} was pretrained on (dataset {record.get('dataset')}, hash "
                   f"{hash_[:12]}), so their embeddings are not held out")
        if not allow:
            raise BrainmmError(f"{message}; embed the dataset with the pretraining split (ingest with --split-from), "
                               "or pass allow_split_mismatch=true (--allow-split-mismatch) to embed anyway")
        LOG.warning("%s (allowed by allow_split_mismatch)", message)
    elif hash_ != ds.manifest["data_hash"]:
        LOG.warning("embed: the model %s was pretrained on another dataset (%s, hash %s; this one: %s); none of this "
                    "dataset's val/test subjects was in its train split", model, record.get("dataset"), hash_[:12],
                    ds.manifest["data_hash"][:12])
