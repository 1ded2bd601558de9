"""The neurolib generator family (brain.generator: neurolib): files, determinism, the planted effect, config errors."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import brainmm.data.simulate.cohort as cohort_module
from brainmm.config import ConfigError, load_config
from brainmm.data.simulate import SimulationConfig, simulate_cohort
from brainmm.errors import BrainmmError

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "n_subjects=4", "brain.generator=neurolib", "brain.n_parcels=80", "brain.n_modules=5", "brain.n_timepoints=40",
    "brain.tr=0.735", "factors.n_factors=4", "genotypes.n_blocks=12", "genotypes.snps_per_block=6",
    "effects.timescale=0", "effects.bifurcation=0.05", "neural_mass.transient_s=20",
]
needs_neurolib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("neurolib") is None, reason="needs the sim-neurolib extra")


def tiny(*overrides: str) -> SimulationConfig:
    """A tiny neurolib cohort config (TINY, then `overrides`)."""
    return load_config(SimulationConfig, None, [*TINY, *overrides])


def fmri_hashes(root: Path) -> dict[str, str]:
    """sha256 of every fMRI array under root."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "fmri").glob("*.npy"))}


@needs_neurolib
def test_files_shapes_and_determinism(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny("brain.n_sessions=2")
    np.random.seed(123)
    out = simulate_cohort(cfg, tmp_path / "a")
    assert np.random.random() == np.random.RandomState(123).random()  # neurolib's global reseeding is undone
    cohort = pd.read_csv(out / "cohort.csv")
    assert len(cohort) == 8
    for f in cohort["file"]:
        ts = np.load(out / f)
        assert ts.shape == (40, 80) and ts.dtype == np.float32 and np.isfinite(ts).all()
    coords = pd.read_csv(out / "coords.tsv", sep="\t")
    assert coords.shape == (80, 3)
    assert np.allclose(coords["x"].to_numpy()[0::2] < 0, True) and (coords["x"].to_numpy()[1::2] > 0).all()
    truth = json.loads((out / "truth.json").read_text())
    brain = truth["brain"]
    assert brain["generator"] == "neurolib" and len(brain["regions"]) == 80 and brain["regions"][0] == "Precentral_L"
    modules = np.array(brain["modules"])
    assert set(modules) == {0, 1, 2, 3, 4} and (modules[0::2] == modules[1::2]).all()  # bilateral modules
    params = np.load(out / "neural_mass.npz")
    assert params["a"].shape == params["x_ext"].shape == params["coupling_multiplier"].shape == (4, 80)
    assert json.loads((out / "manifest.json").read_text())["n_parcels"] == 80
    # Same seed -> the same arrays, whatever the batching (one generator per recording); another seed differs.
    monkeypatch.setattr(cohort_module, "CHUNK_ELEMENTS", 1)
    a, b = fmri_hashes(out), fmri_hashes(simulate_cohort(cfg, tmp_path / "b"))
    assert a == b and len(a) == 8
    c = fmri_hashes(simulate_cohort(tiny("brain.n_sessions=2", "seed=1"), tmp_path / "c"))
    assert all(a[k] != c[k] for k in a)


@needs_neurolib
def test_effect_size_sets_the_driven_parameters(tmp_path: Path) -> None:
    null = np.load(simulate_cohort(tiny("effects.effect_size=0"), tmp_path / "null") / "neural_mass.npz")
    assert np.all(null["a"] == -0.02) and np.all(null["coupling_multiplier"] == 1)
    assert np.all(null["x_ext"] == null["x_ext"][0, 0])  # every node of every subject: the same parameters
    out = simulate_cohort(tiny("effects.effect_size=1"), tmp_path / "on")
    params = np.load(out / "neural_mass.npz")
    factors = pd.read_csv(out / "factors.csv")
    modules = np.array(json.loads((out / "truth.json").read_text())["brain"]["modules"])
    for k in range(4):
        f = factors[f"factor_{k + 1}"].to_numpy()
        on = modules == k
        assert np.array_equal(np.sign(params["a"][:, on] + 0.02), np.sign(f)[:, None] * np.ones(on.sum()))
        assert np.array_equal(np.sign(params["coupling_multiplier"][:, on] - 1),
                              np.sign(f)[:, None] * np.ones(on.sum()))
    assert np.all(params["a"][:, modules == 4] == -0.02)  # module 5 is not driven (4 factors)
    assert np.all(params["coupling_multiplier"][:, modules == 4] == 1)


@needs_neurolib
def test_a_positive_factor_raises_within_module_fc() -> None:
    from brainmm.data.simulate.neural_mass import _latent, build_neural_mass, subject_parameters

    cfg = tiny("brain.n_timepoints=300", "brain.hrf=false", "neural_mass.transient_s=60")
    effects = replace(cfg.effects, effect_size=3.0, coupling=0.9)
    net = build_neural_mass(cfg.brain, cfg.neural_mass, effects)
    on = net.modules == 0
    drive = np.zeros((2, 80))
    drive[0, on], drive[1, on] = 1.0, -1.0  # the same noise (seed) for a +1 SD and a -1 SD subject
    params = subject_parameters(net, drive, effects)
    fc = [np.corrcoef(_latent(net, params, i, 300, seed=7).T)[np.ix_(on, on)] for i in (0, 1)]
    off = ~np.eye(on.sum(), dtype=bool)
    assert fc[0][off].mean() > fc[1][off].mean() + 0.1


def test_wrong_combinations_are_one_line_config_errors() -> None:
    cases = {
        "brain.n_parcels": ["brain.n_parcels=48"],
        "effects.timescale": ["effects.timescale=0.3"],
        "effects.bifurcation": ["brain.generator=ou", "brain.n_parcels=48"],
        "neural_mass.max_dt": ["neural_mass.max_dt=0"],
    }
    for name, overrides in cases.items():
        with pytest.raises(ConfigError) as err:
            tiny(*overrides).validate()
        assert name in str(err.value) and "\n" not in str(err.value)
    cfg = load_config(SimulationConfig, REPO / "configs" / "simulate_neurolib.yaml")
    cfg.validate()
    assert cfg.brain.generator == "neurolib" and cfg.brain.n_parcels == 80


def test_missing_neurolib_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from brainmm.data.simulate.neural_mass import import_neurolib

    monkeypatch.setitem(sys.modules, "neurolib.models.hopf", None)
    with pytest.raises(BrainmmError, match=r"pip install 'brainmm\[sim-neurolib\]'") as err:
        import_neurolib()
    assert "\n" not in str(err.value)
