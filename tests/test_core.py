"""The shared core: typed configs, atomic writes, splits, embedding tables, MLflow helpers, the CLI shell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from brainmm.cli import main
from brainmm.config import ConfigError, load_config, save_config
from brainmm.data.splits import check_no_leakage, make_split
from brainmm.embeddings import EmbeddingTable
from brainmm.errors import BrainmmError
from brainmm.io import atomic_dir, atomic_write_text
from brainmm.tracking import TrackingConfig, resolve_tracking_uri, sanitize_metric_name


@dataclass
class _Model:
    hidden_size: int = 32
    act: Literal["gelu", "relu"] = "gelu"


@dataclass
class _Cfg:
    lr: float = 1e-3
    name: str | None = None
    model: _Model = field(default_factory=_Model)
    layers: list[int] = field(default_factory=lambda: [1, 2])
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


def test_config_defaults_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-2\nmodel:\n  act: relu\n")
    assert load_config(_Cfg, path).lr == 0.01
    cfg = load_config(_Cfg, path, ["model.hidden_size=256", "layers=[3]", "fractions=[0.6, 0.2, 0.2]", "lr=1e-3"])
    assert cfg.fractions == (0.6, 0.2, 0.2) and cfg.lr == 1e-3
    assert cfg.model.act == "relu" and cfg.model.hidden_size == 256 and cfg.layers == [3]
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(_Cfg, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr: 1\n", "valid keys: fractions, layers, lr, model, name"),
        ("fractions: [1, 2]\n", "expected 3 items"),
        ("model:\n  hiden: 3\n", "section 'model'"),
        ("lr: fast\n", "'lr': expected a number"),
        ("model:\n  act: tanh\n", "one of 'gelu', 'relu'"),
        ("model:\n  hidden_size: 2.5\n", "expected an integer"),
        ("- 1\n", "expected a mapping"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(_Cfg, path)


def test_override_of_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match="valid keys: act, hidden_size"):
        load_config(_Cfg, None, ["model.width=3"])


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            atomic_write_text(tmp / "a.txt", "half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        atomic_write_text(tmp / "a.txt", "whole")
    assert (target / "a.txt").read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_split_is_grouped_and_reproducible() -> None:
    subjects = [f"s{i}" for i in range(40)]
    families = [f"f{i // 2}" for i in range(40)]
    a = make_split(subjects, families, seed=3)
    b = make_split(subjects, families, seed=3)
    assert a.equals(b)
    assert a.groupby("group")["split"].nunique().max() == 1
    assert set(a["split"]) == {"train", "val", "test"}
    check_no_leakage(a)
    leaky = a.copy()
    leaky.loc[0, "split"] = "test" if leaky.loc[0, "split"] != "test" else "train"
    with pytest.raises(BrainmmError, match="leakage"):
        check_no_leakage(leaky)


def test_embedding_table_roundtrip(tmp_path: Path) -> None:
    t = EmbeddingTable(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3), {"model": "m"})
    t.save(tmp_path / "emb")
    back = EmbeddingTable.load(tmp_path / "emb")
    assert back.ids == ["a", "b"] and back.meta == {"model": "m"}
    np.testing.assert_array_equal(back.vectors, t.vectors)
    np.testing.assert_array_equal(back.subset(["b"]).vectors, t.vectors[1:])
    with pytest.raises(BrainmmError, match="duplicate ids"):
        EmbeddingTable(["a", "a"], np.zeros((2, 1)))


def test_tracking_uri_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"
    with pytest.raises(BrainmmError, match="file store"):
        resolve_tracking_uri("file:///tmp/mlruns")
    with pytest.raises(BrainmmError, match="unsupported scheme 'ftp'"):
        resolve_tracking_uri("ftp://x")
    assert sanitize_metric_name("retrieval/brain_to_dna/R@1") == "retrieval/brain_to_dna/R_at_1"
    assert sanitize_metric_name("a(b)") == "a_b_"


def test_mlflow_run_logs_config_and_metrics(mlflow_uri: str) -> None:
    import mlflow

    from brainmm.tracking import log_config, log_metrics, start_run

    with start_run(TrackingConfig(experiment="t"), run_name="r") as run:
        log_config(_Cfg())
        log_metrics({"val/R@1": 0.5}, step=3)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["model.hidden_size"] == "32"
    assert got.data.metrics["val/R_at_1"] == 0.5


def test_cli_help_and_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "brainmm" in capsys.readouterr().out

    def broken(_dir: Path) -> Path:
        raise BrainmmError("sample 'x': file y.mat\nis missing")

    monkeypatch.setenv("BRAINMM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("brainmm.data.fetch.get_fetcher", lambda name: broken)
    rc = main(["data", "fetch", "hcp-sample"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == "brainmm: error: sample 'x': file y.mat is missing\n"
    assert "Traceback" not in err


def test_table_names_with_dots_do_not_collide(tmp_path: Path) -> None:
    EmbeddingTable(["a"], np.ones((1, 2)), {"which": "main"}).save(tmp_path / "x")
    EmbeddingTable(["a"], np.zeros((1, 3)), {"which": "pgs"}).save(tmp_path / "x.pgs")
    assert EmbeddingTable.load(tmp_path / "x").meta["which"] == "main"
    assert EmbeddingTable.load(tmp_path / "x.pgs").dim == 3


def test_quiet_console_but_full_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from brainmm.runtime import log_to_file, setup_logging

    setup_logging(quiet=True)
    path = log_to_file(tmp_path)
    log = logging.getLogger("brainmm.test")
    log.info("detail line")
    log.warning("warning line")
    for h in logging.getLogger("brainmm").handlers:
        h.flush()
    err = capsys.readouterr().err
    assert "detail line" not in err and "warning line" in err
    assert "detail line" in path.read_text()
    setup_logging(quiet=False)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_into_its_typed_config(path: Path) -> None:
    """configs/<stage>_*.yaml must load with no unknown key or wrong type (a renamed field breaks this test)."""
    from brainmm.align import AlignConfig
    from brainmm.data.simulate import SimulationConfig
    from brainmm.embed import EmbedConfig
    from brainmm.evaluate import EvaluateConfig
    from brainmm.pipeline import PipelineConfig
    from brainmm.train.pretrain import PretrainConfig

    kinds = {"align": AlignConfig, "embed": EmbedConfig, "pretrain": PretrainConfig, "evaluate": EvaluateConfig,
             "simulate": SimulationConfig, "demo": PipelineConfig, "pipeline": PipelineConfig}
    stage = path.stem.split("_")[0]
    assert stage in kinds, f"{path.name}: no config type for stage {stage!r}; name configs <stage>_*.yaml"
    cfg = load_config(kinds[stage], path)
    assert isinstance(cfg, kinds[stage])
