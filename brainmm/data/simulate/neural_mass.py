"""Brain signals from neurolib's whole-brain Hopf model on its bundled structural connectome (brain.generator: neurolib).

brainmm defines neither the node dynamics nor the connectome here: every recording is one run of neurolib's own
numba integrator (`neurolib.models.hopf.timeIntegration`) of N Stuart-Landau (Hopf) oscillators coupled diffusively
through neurolib's averaged, max-normalised DTI matrix (`neurolib.utils.loadData.Dataset`). The model runs at the
BOLD time scale (Deco et al. 2017: a near 0, 0.04-0.07 Hz, white noise 0.02), is sampled at the TR and passed
through the HRF of network.py when `brain.hrf`. brainmm only sets the parameters per subject:

* local: node v's effective bifurcation parameter a_v = a + bifurcation * tanh(x_v). neurolib's Hopf kernel takes
  one `a` for all nodes, so the model runs at a_max = a + bifurcation and a constant per-node input (`x_ext`) holds
  node v at a fixed point of radius r_v, r_v^2 = (a_max - a_v) / 2, where its linearised damping is exactly a_v;
* coupling: within-module entries of row v of Cmat are multiplied by 1 + coupling * tanh(x_v),

with x_v = effect_size * f_{s, m(v)} (+ the population offset) for nodes of driven modules, 0 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from brainmm.data.simulate.aal2 import AAL2_CORTEX
from brainmm.data.simulate.config import BrainConfig, EffectConfig, NeuralMassConfig
from brainmm.data.simulate.network import _kmeans, hrf_filter, hrf_kernel
from brainmm.errors import BrainmmError

MODEL = "neurolib.models.hopf (HopfModel's timeIntegration), neurolib 0.6.2"
REFERENCE_SEEDS = (0, 1, 2, 3)  # neurolib seeds of the baseline runs that fix the signal scale
MODULE_SEED = 0  # the k-means partition is a property of the atlas and n_modules, not of the cohort seed


def import_neurolib() -> Any:
    """neurolib's Hopf integrator module, or a one-line error naming the extra that installs it."""
    try:
        from neurolib.models.hopf import timeIntegration
    except ImportError as err:
        raise BrainmmError(f"brain.generator 'neurolib' needs neurolib ({err}); "
                           f"pip install 'brainmm[sim-neurolib]'") from None
    return timeIntegration


class _GlobalRandomState:
    """Restore numpy's global RNG on exit: neurolib seeds and draws from it (`np.random.seed`)."""

    def __enter__(self) -> None:
        self.state = np.random.get_state()

    def __exit__(self, *exc: object) -> None:
        np.random.set_state(self.state)


def load_connectome(dataset: str) -> np.ndarray:
    """neurolib's averaged, max-normalised structural connectivity [80, 80] (zero diagonal), read from its wheel."""
    import_neurolib()
    from neurolib.utils.loadData import Dataset

    with _GlobalRandomState():
        cmat = np.array(Dataset(dataset).Cmat, dtype=np.float64)
    if cmat.shape != (len(AAL2_CORTEX), len(AAL2_CORTEX)):
        raise BrainmmError(f"neurolib dataset {dataset!r}: Cmat has shape {cmat.shape}, expected "
                           f"({len(AAL2_CORTEX)}, {len(AAL2_CORTEX)}) (neurolib 0.6.2's AAL2 cortex)")
    np.fill_diagonal(cmat, 0.0)
    return cmat


def region_modules(coords: np.ndarray, n_modules: int) -> np.ndarray:
    """Bilateral modules: k-means (fixed seed) of the mirrored left/right pair centroids, numbered by mean y."""
    left, right = coords[0::2], coords[1::2]  # neurolib's order is L, R, L, R, ...
    pairs = np.column_stack([(right[:, 0] - left[:, 0]) / 2, (left[:, 1:] + right[:, 1:]) / 2])
    centers, labels = _kmeans(pairs, n_modules, np.random.default_rng(MODULE_SEED))
    rank = np.argsort(np.argsort(centers[:, 1], kind="stable"), kind="stable")
    return np.repeat(rank[labels], 2)


@dataclass
class NeuralMass:
    """The neurolib network shared by all subjects, and how factors set its per-subject parameters."""

    labels: list[str]  # [V] AAL2 region names
    coords: np.ndarray  # [V, 3] mm
    modules: np.ndarray  # [V] module index
    cmat: np.ndarray  # [V, V] neurolib's Cmat (zero diagonal)
    hrf: np.ndarray  # [L] kernel (length 1 = none)
    tr: float
    cfg: NeuralMassConfig
    steps_per_tr: int
    scale: float = 1.0  # multiplies the latent signal so that the baseline observed variance is ~1

    @property
    def n_parcels(self) -> int:
        """V."""
        return len(self.coords)

    @property
    def dt(self) -> float:
        """Euler step (s): an integer fraction of the TR."""
        return self.tr / self.steps_per_tr

    @property
    def omega(self) -> float:
        """Angular frequency (rad/s) of every node."""
        return 2 * np.pi * self.cfg.frequency_hz


@dataclass
class SubjectParameters:
    """Per-subject neurolib parameters, [C, V] each: effective a, the input x_ext, the Cmat row multiplier."""

    a: np.ndarray
    x_ext: np.ndarray
    coupling: np.ndarray
    a_max: float  # the `a` neurolib integrates with

    def rows(self, subjects: np.ndarray) -> SubjectParameters:
        """The parameters of the subjects `subjects` (row indices)."""
        return SubjectParameters(self.a[subjects], self.x_ext[subjects], self.coupling[subjects], self.a_max)


def build_neural_mass(brain: BrainConfig, cfg: NeuralMassConfig, effects: EffectConfig) -> NeuralMass:
    """Connectome, regions, modules and HRF; the signal scale from baseline runs (effect_size 0, fixed seeds)."""
    labels = [r[0] for r in AAL2_CORTEX]
    coords = np.array([r[1:] for r in AAL2_CORTEX], dtype=np.float64)
    net = NeuralMass(labels, coords, region_modules(coords, brain.n_modules), load_connectome(cfg.dataset),
                     hrf_kernel(brain.tr) if brain.hrf else np.ones(1), brain.tr, cfg,
                     int(np.ceil(brain.tr / cfg.max_dt - 1e-9)))
    base = subject_parameters(net, np.zeros((1, net.n_parcels)), replace(effects, effect_size=0.0))
    runs = [_latent(net, base, 0, brain.n_timepoints, seed) for seed in REFERENCE_SEEDS]
    net.scale = float(1 / np.sqrt(np.mean([x.var(axis=0).mean() for x in runs])))
    return net


def subject_parameters(
    net: NeuralMass, drive: np.ndarray, effects: EffectConfig, offset: np.ndarray | None = None
) -> SubjectParameters:
    """a_v = a + bifurcation * tanh(x), x_ext holding node v at damping a_v, Cmat rows * (1 + coupling * tanh(x)).

    `drive` [C, V] is f_{s, m(v)} on driven modules (0 elsewhere); `offset` [C, V] a non-genetic shift of x.
    """
    x = effects.effect_size * drive
    t = np.tanh(x if offset is None else x + offset)
    a_max = net.cfg.a + effects.bifurcation
    a = net.cfg.a + effects.bifurcation * t
    r2 = np.maximum(a_max - a, 0.0) / 2  # fixed-point radius^2: linearised damping a_max - 2 r^2 = a
    x_ext = np.sqrt(r2) * np.hypot(a_max - r2, net.omega)  # |b| = r |a_max - r^2 + i omega|
    return SubjectParameters(a, x_ext, 1 + effects.coupling * t, a_max)


def _fixed_point(net: NeuralMass, params: SubjectParameters, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node's fixed point z* = -b / (a_max - r^2 + i omega) without coupling: the initial state [V, 1]."""
    r2 = np.maximum(params.a_max - params.a[i], 0.0) / 2
    z = -params.x_ext[i] / ((params.a_max - r2) + 1j * net.omega)
    return z.real[:, None], z.imag[:, None]


def _latent(net: NeuralMass, params: SubjectParameters, i: int, n_timepoints: int, seed: int) -> np.ndarray:
    """One neurolib run for subject row `i`: the node x sampled at the TR, HRF-filtered, demeaned: [T, V]."""
    integrate = import_neurolib()
    from neurolib.models.hopf.loadDefaultParams import loadDefaultParams

    v, n_kernel = net.n_parcels, len(net.hrf)
    n_samples = n_timepoints + n_kernel - 1
    n_steps = int(np.ceil(net.cfg.transient_s / net.dt)) + n_samples * net.steps_per_tr
    same = net.modules[:, None] == net.modules[None]
    cmat = net.cmat * np.where(same, params.coupling[i][:, None], 1.0)
    xs_init, ys_init = _fixed_point(net, params, i)
    with _GlobalRandomState():
        p = loadDefaultParams(Cmat=cmat, Dmat=np.zeros((v, v)), seed=seed)
        p.update({
            "dt": net.dt, "duration": (n_steps + 0.5) * net.dt, "seed": seed, "a": params.a_max, "w": net.omega,
            "K_gl": net.cfg.global_coupling, "coupling": "diffusive", "lengthMat": np.zeros((v, v)),
            # tau_ou = dt makes neurolib's OU input white: x += dt * sigma_ou * sqrt(dt) * xi = noise * sqrt(dt) * xi
            "tau_ou": net.dt, "sigma_ou": net.cfg.noise / net.dt, "x_ou": np.zeros(v), "y_ou": np.zeros(v),
            "x_ext": params.x_ext[i][:, None], "y_ext": np.zeros((v, 1)), "xs_init": xs_init, "ys_init": ys_init,
        })
        _, xs, _, _, _ = integrate.timeIntegration(p)
    x = xs[:, -n_samples * net.steps_per_tr :][:, net.steps_per_tr - 1 :: net.steps_per_tr].T  # [T', V]
    x = hrf_filter(x, net.hrf, n_timepoints)
    return x - x.mean(axis=0)


def simulate_neural_mass(
    net: NeuralMass, params: SubjectParameters, n_sessions: int, n_timepoints: int,
    rngs: list[np.random.Generator],
) -> np.ndarray:
    """Latent signals [C * n_sessions, T, V] (before gain/noise), one neurolib run per recording.

    `params` holds C subjects; `rngs` one generator per recording (subject-major), which draws that run's
    neurolib seed, so results do not depend on how subjects are batched.
    """
    out = np.empty((len(rngs), n_timepoints, net.n_parcels))
    for r, rng in enumerate(rngs):
        seed = int(rng.integers(0, 2**32 - 1))
        out[r] = net.scale * _latent(net, params, r // n_sessions, n_timepoints, seed)
    if not np.isfinite(out).all():
        raise BrainmmError("simulation: neurolib's Hopf model diverged; lower neural_mass.max_dt or "
                           "neural_mass.global_coupling")
    return out


def neural_mass_truth(net: NeuralMass, effects: EffectConfig) -> dict[str, Any]:
    """truth.json's brain section for the neurolib generator."""
    return {
        "generator": "neurolib",
        "model": MODEL,
        "dataset": net.cfg.dataset,
        "regions": net.labels,
        "modules": net.modules.tolist(),
        "dt_s": net.dt,
        "a_integrated": net.cfg.a + effects.bifurcation,
        "omega_rad_per_s": net.omega,
        "signal_scale": net.scale,
        "reference_seeds": list(REFERENCE_SEEDS),
        "hrf": net.hrf.tolist(),
        "per_subject_parameters": "neural_mass.npz",
    }
