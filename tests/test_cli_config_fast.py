"""Config errors before heavy imports: `brainmm <cmd> --config bad.yaml` fails with one line, exit 2, and torch,
transformers and mlflow were never imported (checked in the failing process, not by wall time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "mlflow")
# runs the CLI in this process, then prints which heavy modules it imported (also after a SystemExit)
WRAPPER = """
import sys
from brainmm.cli import main
try:
    rc = main(sys.argv[1:])
finally:
    print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
sys.exit(rc)
"""


def _commands(bad: str, folder: str) -> dict[str, list[str]]:
    return {
        "align": ["align", "--config", bad],
        "evaluate": ["evaluate", "--align-dir", folder, "--config", bad],
        "explain": ["explain", "--align-dir", folder, "--config", bad],
        "run": ["run", bad],
        "pretrain": ["pretrain", "--config", bad],
        "embed": ["embed", "--config", bad],
        "genetics embed": ["genetics", "embed", "--config", bad],
        "genetics matrix": ["genetics", "matrix", "--config", bad],
        "genetics pca": ["genetics", "pca", "--config", bad],
    }


@pytest.mark.parametrize("command", list(_commands("", "")))
@pytest.mark.parametrize("problem", ["typo", "not_a_mapping"])
def test_config_error_before_heavy_imports(tmp_path: Path, command: str, problem: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nmae: x\n" if problem == "typo" else "- 1\n- 2\n")
    argv = _commands(str(bad), str(tmp_path))[command]
    done = subprocess.run([sys.executable, "-c", WRAPPER.format(heavy=HEAVY), *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert done.returncode == 2, done.stderr
    expected = "'nmae'" if problem == "typo" else "expected a mapping"
    assert len(lines) == 1 and lines[0].startswith("brainmm: error:") and expected in lines[0], done.stderr
    heavy = next(line for line in done.stderr.splitlines() if line.startswith("HEAVY="))
    assert heavy == "HEAVY=", f"{command}: imported {heavy[6:]} before reporting the config error"


@pytest.mark.parametrize(("argv", "expected"), [
    (["align", "--config", "{repo}/configs/align_clip.yaml", "data.brain={tmp}/nope", "data.genetics.dna={tmp}/dna"],
     "embedding table {tmp}/nope.safetensors: not found"),
    (["evaluate", "--align-dir", "{tmp}/no_run"], "align folder {tmp}/no_run: does not exist"),
])
def test_missing_input_paths_before_heavy_imports(tmp_path: Path, argv: list[str], expected: str) -> None:
    repo = Path(__file__).resolve().parents[1]
    argv = [a.format(repo=repo, tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", WRAPPER.format(heavy=HEAVY), *argv], capture_output=True,
                          text=True, cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert expected.format(tmp=tmp_path) in lines[0], done.stderr
    assert "HEAVY=\n" in done.stderr + "\n", done.stderr
