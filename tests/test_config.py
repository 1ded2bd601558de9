"""`brainmm.config`: typed configs from YAML and dotted overrides, errors naming the field, the bounded safe YAML
loader (alias bombs, recursive aliases), finite numbers, long values cut in messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
from stage_inputs import REPO, check_error, run

from brainmm.config import ConfigError, load_config, save_config


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


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    names = "abcdefghijklmnop"
    for i in range(1, levels + 1):
        text += f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]\n"
    return text


def test_yaml_billion_laughs_is_refused_at_once(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "lol.yaml"
    cfg.write_text(billion_laughs())
    assert len(cfg.read_bytes()) < 500
    code, err = run(["-q", "embed", "--config", str(cfg)], capsys)
    check_error(code, err, r"config file .*lol\.yaml: YAML: aliases expand to more than 100000 nodes")
    recursive = tmp_path / "rec.yaml"
    recursive.write_text("a: &a [1, *a]\n")
    check_error(*run(["-q", "embed", "--config", str(recursive)], capsys), r"rec\.yaml: YAML: a recursive alias")


def test_small_aliases_still_work() -> None:
    from brainmm.config import safe_load_bounded

    assert safe_load_bounded("base: &b {x: 1}\nother: *b\n") == {"base": {"x": 1}, "other": {"x": 1}}


def test_long_values_are_cut_in_config_errors(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "long.yaml"
    cfg.write_text("pooling: [" + ",".join(["x" * 100] * 1000) + "]\n")
    code, err = run(["-q", "embed", "--config", str(cfg)], capsys)
    line = check_error(code, err, r"config field 'pooling': expected one of .*\.\.\. \(\d+ characters\)")
    assert len(line) < 600


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "inf"])
def test_non_finite_floats_are_refused(value: str, capsys) -> None:
    code, err = run(["-q", "align", "--config", str(REPO / "configs" / "align_clip.yaml"), f"train.lr={value}"], capsys)
    check_error(code, err, r"config field 'train\.lr': expected a finite number, got")
    code, err = run(["-q", "pretrain", f"train.base_lr={value}"], capsys)
    check_error(code, err, r"config field 'train\.base_lr': expected a finite number, got")


def test_a_field_may_allow_non_finite_values() -> None:
    from dataclasses import dataclass, field

    from brainmm.config import ALLOW_NONFINITE, ConfigError, load_config

    @dataclass
    class Cfg:
        limit: float = field(default=1.0, metadata=ALLOW_NONFINITE)
        lr: float = 1e-3

    assert load_config(Cfg, None, ["limit=.inf"]).limit == float("inf")
    with pytest.raises(ConfigError, match="'lr': expected a finite number"):
        load_config(Cfg, None, ["lr=.nan"])


def test_the_bounded_yaml_loader_is_a_safe_loader() -> None:
    import yaml

    from brainmm.config import _BoundedLoader

    assert issubclass(_BoundedLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object/apply:os.system ['true']", Loader=_BoundedLoader)  # noqa: S506
