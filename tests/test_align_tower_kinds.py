"""Tower kinds own their side: a toy brain kind in this one file (+ one `register_tower`) runs align, projection
and evaluate; a tower section's `kind` chooses its config class; older configs still load."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import brainmm.align as align
from brainmm.align.towers import BrainSide, BrainTowerConfig, TowerKind, register_tower, unregister_tower
from brainmm.config import ConfigError, dump_yaml, load_config, read_yaml, to_dict
from brainmm.data.splits import make_split, save_split
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the toy kind: one file


@dataclass
class ToyConfig(BrainTowerConfig):
    """A linear tower on the rows of a feature table."""

    kind: str = "toy_linear"
    table: str = ""
    out_dim: int = 6


class ToyTower(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


class ToyRows:
    """The input provider: some rows of the feature table."""

    batches = 0

    def __init__(self, table: EmbeddingTable, ids: Sequence[str]) -> None:
        index = {r: i for i, r in enumerate(table.ids)}
        self.x = torch.from_numpy(table.vectors[[index[r] for r in ids]]).float()

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, rows: Sequence[int], epoch: int) -> torch.Tensor:
        ToyRows.batches += 1
        return self.x[list(rows)]

    def features(self, tower: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            was = tower.training
            tower.eval()
            out = tower(self.x.to(next(tower.parameters()).device)).cpu()
            tower.train(was)
        return out


def _load_rows(path: str | Path) -> EmbeddingTable:
    return EmbeddingTable.load(path)


class ToyKind(TowerKind):
    tower_class = ToyTower

    def check(self, cfg: Any, side: str, where: str) -> None:
        if not cfg.table:
            raise BrainmmError(f"align config field '{where}.table': expected a feature table")

    def build_brain(self, cfg: Any, device: str) -> BrainSide:
        table, b = _load_rows(cfg.towers.brain.table), cfg.towers.brain
        rows = align.BrainRows.from_table(table, f"toy on {b.table}")
        rows.vectors, rows.dim = None, b.out_dim  # the tower reads the rows through the provider
        return BrainSide(rows, ToyTower(table.dim, b.out_dim), table, lambda split, ids, precision: ToyRows(table, ids))

    def save(self, cfg: Any, name: str, tower: Any, data: Any, folder: Path) -> dict[str, str]:
        from brainmm.embed.model import write_tower_file

        (folder / name).mkdir(parents=True)
        torch.save(tower.state_dict(), folder / name / "toy.pt")
        write_tower_file(folder / name, self.name, {"in_dim": tower.linear.in_features, "out_dim": tower.out_dim,
                                                    "table": cfg.towers.brain.table})
        return {"kind": self.name, "path": f"towers/{name}"}

    def load(self, folder: Path) -> nn.Module:
        from brainmm.embed.model import read_tower_file

        info = read_tower_file(folder, self.name)
        tower = ToyTower(info["in_dim"], info["out_dim"])
        tower.load_state_dict(torch.load(folder / "toy.pt"))
        return tower.eval()

    def describe(self, cfg: Any, data: Any, name: str) -> str:
        return f"- brain tower: toy linear on `{cfg.towers.brain.table}` ({data.brain.dim}-D)"

    def input_features(self, run_dir: Path, cfg: Any):
        def features() -> tuple[EmbeddingTable, str]:
            table, tower = _load_rows(cfg.towers.brain.table), self.load(run_dir / "towers" / "brain")
            h = ToyRows(table, table.ids).features(tower)
            return EmbeddingTable(table.ids, h.numpy(), dict(table.meta)), f"toy tower on {cfg.towers.brain.table}"

        return features

    def project(self, model: Any, source: str | Path, split: str | None, batch_size: int, precision: str):
        table = _load_rows(source)
        z = align.project_brain_features(model, ToyRows(table, table.ids).features(model.brain_tower))
        return EmbeddingTable(table.ids, z.numpy(), {**table.meta, "space": "shared"})


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture
def toy() -> Iterator[type]:
    register_tower("toy_linear", sides=("brain",), config=ToyConfig)(ToyKind)  # the one registration
    try:
        yield ToyKind
    finally:
        unregister_tower("toy_linear")


def make_inputs(root: Path, n: int = 60) -> dict[str, str]:
    rng = np.random.default_rng(0)
    subjects = [f"s{i:03d}" for i in range(n)]
    z = rng.normal(size=(n, 3))
    EmbeddingTable(subjects, z @ rng.normal(size=(3, 9)) + 0.2 * rng.normal(size=(n, 9)), {"model": "x"}).save(
        root / "features")
    EmbeddingTable(subjects, z @ rng.normal(size=(3, 5)) + 0.2 * rng.normal(size=(n, 5)), {}).save(root / "dna")
    save_split(make_split(subjects, seed=0), root / "split.csv")
    return {"features": str(root / "features"), "dna": str(root / "dna"), "split": str(root / "split.csv")}


@pytest.mark.slow  # end to end: align, projection and evaluate (the fast lane leaves it out)
def test_a_toy_brain_kind_runs_align_projection_and_evaluate(toy, tmp_path: Path, mlflow_uri: str) -> None:
    from brainmm.evaluate import EvaluateConfig, run_evaluate

    paths = make_inputs(tmp_path)
    cfg = load_config(align.AlignConfig, REPO / "configs" / "align_clip.yaml", [
        "towers.brain.kind=toy_linear", f"towers.brain.table={paths['features']}", "towers.brain.out_dim=4",
        "data.brain=", f"data.genetics={{dna: {paths['dna']}}}", f"data.split={paths['split']}",
        f"output_dir={tmp_path / 'run'}",
        "head.hidden_dim=16", "head.out_dim=8", "train.batch_size=8", "train.epochs=2", "train.warmup_steps=1",
        "train.device=cpu", f"tracking.uri={mlflow_uri}", "tracking.experiment=toy"])
    assert type(cfg.towers.brain) is ToyConfig and cfg.towers.brain.out_dim == 4  # kind chose the class
    assert to_dict(cfg)["towers"]["brain"] == {"kind": "toy_linear", "table": paths["features"], "out_dim": 4}
    ToyRows.batches = 0
    result = align.run_align(cfg)
    assert ToyRows.batches == result.metrics["steps"] > 0  # the loop iterated the kind's provider

    run = result.run_dir
    heads = json.loads((run / "heads.json").read_text())
    assert heads["towers"]["brain"] == {"kind": "toy_linear", "path": "towers/brain"}
    assert json.loads((run / "towers" / "brain" / "tower.json").read_text())["kind"] == "toy_linear"
    assert "toy linear on" in (run / "model_card.md").read_text()

    model = align.load_model(run)
    assert isinstance(model.brain_tower, ToyTower)
    test = EmbeddingTable.load(result.embeddings["test"]["brain"])
    projected = align.project_fmri(model, paths["features"]).subset(test.ids)  # projection through the kind
    assert np.allclose(projected.vectors, test.vectors, atol=1e-5)

    ev = run_evaluate(load_config(EvaluateConfig, REPO / "configs" / "evaluate.yaml", [
        f"align_dir={run}", "retrieval.n_boot=50", "baselines.n_permutations=20", "baselines.methods=[cca]",
        "probes.representations=[]", "explain.enabled=false", "figures.enabled=false",
        "retrieval.kway=0", f"output_dir={tmp_path / 'eval'}"]))
    assert "retrieval/brain_to_dna/R_at_1" in ev.metrics
    assert np.isfinite(ev.metrics["baseline/cca/brain_dna/canonical_corr_1"])  # on the toy tower's input features


def test_kind_chooses_the_config_class_and_old_configs_load(toy, tmp_path: Path) -> None:
    shipped = load_config(align.AlignConfig, REPO / "configs" / "align_brainlm.yaml")
    assert type(shipped.towers.brain).__name__ == "BrainLMTowerConfig"
    assert type(shipped.towers.genetics["genotype"]).__name__ == "GenotypeMLPTowerConfig"
    plain = load_config(align.AlignConfig, REPO / "configs" / "align_clip.yaml")
    assert plain.towers.brain.kind == "table" and to_dict(plain)["towers"]["brain"]["checkpoint"] == ""
    # a table section keeps a model kind's settings (inactive): switching kind uses them
    switched = load_config(align.AlignConfig, REPO / "configs" / "align_clip.yaml",
                           ["towers.brain.pooling=mean", "towers.brain.kind=brainlm", "towers.brain.checkpoint=c",
                            "towers.brain.dataset=d", "data.brain="])
    assert type(switched.towers.brain).__name__ == "BrainLMTowerConfig" and switched.towers.brain.pooling == "mean"
    # a model kind refuses another kind's settings unless they are that kind's defaults
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'pooling' at section 'towers.brain'; valid keys: "
                                          r"kind, out_dim, table"):
        load_config(align.AlignConfig, REPO / "configs" / "align_clip.yaml",
                    ["towers.brain.kind=toy_linear", "towers.brain.pooling=mean"])
    with pytest.raises(ConfigError, match=r"'towers.brain.kind': expected one of 'table', 'brainlm', 'toy_linear'"):
        load_config(align.AlignConfig, None, ["towers.brain.kind=vit"])
    # a resolved config (and the demo's) reads back to an equal config
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(shipped))
    assert load_config(align.AlignConfig, path) == shipped
    demo = read_yaml(REPO / "configs" / "demo.yaml")["align"]["towers"]
    assert to_dict(align.AlignConfig())["towers"] == demo


def test_no_stage_outside_the_kinds_tests_a_tower_kind_string() -> None:
    import re

    test = re.compile(r"""(kind|tower)[\w.()"'\[\]]*\s*(==|!=)\s*["'](table|brainlm|genotype_mlp)["']""")
    files = [REPO / "brainmm" / "align" / f"{m}.py" for m in ("loop", "report", "io", "project", "data")]
    for package in ("embed", "evaluate", "pipeline"):
        files += sorted((REPO / "brainmm" / package).glob("*.py"))
    found = [f"{p.relative_to(REPO)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
             if test.search(line)]
    assert found == []
    assert test.search('if record.get("kind") != "brainlm":') and test.search('brain_tower == "brainlm"')
