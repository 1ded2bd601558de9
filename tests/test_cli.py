"""`brainmm.cli`: help, a user error as one line with exit 2, flags anywhere among overrides, and a description
for every command (the demo's matching its defaults)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from stage_inputs import check_error, run

from brainmm.cli import build_parser, main
from brainmm.errors import BrainmmError
from brainmm.pipeline import PipelineConfig


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


def test_flags_anywhere_among_overrides() -> None:
    parser = build_parser()
    args = parser.parse_args(["align", "a=1", "--resume", "b=2", "--config", "c.yaml"])
    assert args.overrides == ["a=1", "b=2"] and args.resume and args.config == "c.yaml"
    args = parser.parse_args(["run", "p.yaml", "x=1", "--overwrite", "y=2"])
    assert args.overrides == ["x=1", "y=2"] and args.overwrite
    args = parser.parse_args(["genetics", "matrix", "--vcf", "v", "a=1", "--set", "b=2", "c=3"])
    assert args.overrides == ["a=1", "c=3"] and args.set == ["b=2"]


def test_genetics_takes_bare_overrides(tmp_path: Path, capsys) -> None:
    code, err = run(["-q", "genetics", "matrix", "--vcf", str(tmp_path / "x.vcf.gz"), "min_maf=lots"], capsys)
    check_error(code, err, r"config field 'min_maf': expected a number, got 'lots'")


def _subparsers(parser: argparse.ArgumentParser, path: str = "brainmm") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[f"{path} {name}"] = child
                found.update(_subparsers(child, f"{path} {name}"))
    return found


def test_every_command_describes_itself_and_demo_describes_the_demo() -> None:
    commands = _subparsers(build_parser())
    assert "brainmm genetics import" in commands and "brainmm demo" in commands
    assert {name for name, p in commands.items() if not (p.description or "").strip()} == set()
    assert "embedding table" in commands["brainmm genetics import"].format_help()
    demo = " ".join(commands["brainmm demo"].description.split())
    defaults = PipelineConfig()
    assert ("connectivity" in demo) == ("connectivity" in defaults.brain_inputs)
    tower = defaults.genetics.genotype_mlp.kind
    assert "MLP tower" not in demo if tower == "table" else "MLP" in demo
    assert f"genetics.genotype_mlp.kind {tower}" in demo
    assert f"initialised by {defaults.align.head.init.upper()}" in demo
    assert ("explain" in demo) == defaults.evaluate.explain.enabled
