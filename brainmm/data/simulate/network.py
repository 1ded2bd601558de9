"""Brain network model: parcel layout, modules, coupling, and batched exact Ornstein-Uhlenbeck integration.

Each subject's dynamics are dx = A x dt + dB with noise covariance S and a symmetric A = W - diag(1/tau).
A symmetric A is diagonalised once (A = U diag(lam) U^T); in that basis every mode is an AR(1) process with
the exact discretisation a = exp(lam * TR) and closed-form stationary and innovation covariances, so the
integration is exact, starts stationary and costs one elementwise update per timepoint for all recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainmm.data.simulate.config import BrainConfig, EffectConfig
from brainmm.errors import BrainmmError

CENTER_MM = np.array([0.0, -18.0, 10.0])  # MNI-like brain centre
SEMI_AXES_MM = np.array([68.0, 88.0, 58.0])
MIDLINE_MM = 4.0  # right-hemisphere parcels have x >= this


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means (seeded); an empty cluster takes the point farthest from its centre."""
    centers = points[rng.choice(len(points), k, replace=False)].copy()
    sq = (points**2).sum(axis=1)
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(iters):
        d = sq[:, None] - 2 * points @ centers.T + (centers**2).sum(axis=1)[None]
        labels = d.argmin(axis=1)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, points)
        nonempty = counts > 0
        centers[nonempty] = sums[nonempty] / counts[nonempty, None]
        for j in np.flatnonzero(~nonempty):
            far = int(d[np.arange(len(points)), labels].argmax())
            centers[j] = points[far]
            labels[far] = j
    return centers, labels


def parcel_layout(n_parcels: int, n_modules: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bilateral parcel centroids in an MNI-like ellipsoid (right hemisphere first, left = mirror) and modules.

    Parcels are k-means centres of uniform points in the right half-ellipsoid; modules are k-means clusters of
    the right parcels, mirrored, so every module is bilateral and spatially contiguous.
    """
    half = n_parcels // 2
    pool_size = max(4000, 40 * half)
    pool = np.empty((0, 3))
    while len(pool) < pool_size:
        unit = rng.uniform(-1, 1, (4 * pool_size, 3))
        unit = unit[(unit**2).sum(axis=1) <= 1]
        pts = CENTER_MM + unit * SEMI_AXES_MM
        pool = np.concatenate([pool, pts[pts[:, 0] >= MIDLINE_MM]])
    right, _ = _kmeans(pool[:pool_size], half, rng)
    right = np.round(right[np.lexsort((right[:, 2], right[:, 1]))], 1)  # sorted by y, then z
    centers, labels = _kmeans(right, n_modules, rng)
    rank = np.argsort(np.argsort(centers[:, 1], kind="stable"), kind="stable")  # modules numbered by mean y
    modules = rank[labels]
    left = right * np.array([-1.0, 1.0, 1.0])
    return np.concatenate([right, left]), np.concatenate([modules, modules])


def base_coupling(coords: np.ndarray, modules: np.ndarray, cfg: BrainConfig) -> np.ndarray:
    """W0 = exp(-d / distance_scale) * (1 + module_weight * same_module) + homotopic_weight * mirror pairs,
    zero diagonal, scaled to spectral radius coupling / tau."""
    n = len(coords)
    if cfg.coupling == 0:
        return np.zeros((n, n))
    dist = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    w = np.exp(-dist / cfg.distance_scale) * (1 + cfg.module_weight * (modules[:, None] == modules[None]))
    half = n // 2
    idx = np.arange(half)
    w[idx, idx + half] += cfg.homotopic_weight
    w[idx + half, idx] += cfg.homotopic_weight
    np.fill_diagonal(w, 0.0)
    return w * cfg.coupling / (cfg.tau * np.linalg.eigvalsh(w)[-1])


def hrf_kernel(tr: float, length_s: float = 32.0) -> np.ndarray:
    """Canonical double-gamma HRF (peak ~5 s, undershoot ~15 s, ratio 1/6) sampled at TR, unit sum."""
    from scipy.special import gammaln

    t = np.arange(0.0, length_s, tr)

    def gamma_pdf(shape: float) -> np.ndarray:
        return np.exp((shape - 1) * np.log(np.maximum(t, 1e-12)) - t - gammaln(shape)) * (t > 0)

    h = gamma_pdf(6) - gamma_pdf(16) / 6
    return h / h.sum()


@dataclass
class Network:
    """Everything shared by all subjects, plus how factors modulate it."""

    coords: np.ndarray  # [V, 3] mm
    modules: np.ndarray  # [V] module index
    w0: np.ndarray  # [V, V] base coupling
    tau: float
    noise_cov: np.ndarray  # [V, V] state noise covariance (scaled so the baseline observed variance is ~1)
    hrf: np.ndarray  # [L] kernel (length 1 = none)
    tr: float

    @property
    def n_parcels(self) -> int:
        """V."""
        return len(self.coords)

    def subject_operators(
        self, drive: np.ndarray, effects: EffectConfig, offset: np.ndarray | None = None
    ) -> np.ndarray:
        """A_s = W0 * (1 + c tanh(x) within modules) - diag(exp(-b tanh(x)) / tau), x = es * u (+ offset): [C, V, V].

        `offset` [C, V] is a non-genetic shift of the drive (the population's group effect), not scaled by es.
        """
        x = effects.effect_size * drive  # [C, V]; u = 0 outside driven modules
        t = np.tanh(x if offset is None else x + offset)
        same = (self.modules[:, None] == self.modules[None]) & ~np.eye(self.n_parcels, dtype=bool)
        a = self.w0[None] * (1 + effects.coupling * t[:, :, None] * same[None])
        idx = np.arange(self.n_parcels)
        a[:, idx, idx] = -np.exp(-effects.timescale * t) / self.tau
        return a


def _modal_covariances(
    lam: np.ndarray, u: np.ndarray, noise_cov: np.ndarray, tr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Stationary covariance P and one-step innovation covariance Q of the modes y = U^T x.

    With A = U diag(lam) U^T the Lyapunov equation is elementwise in the eigenbasis:
    P_mn = (U^T S U)_mn / -(lam_m + lam_n), and Q = P * (1 - a_m a_n) with a = exp(lam * TR).
    """
    s = np.swapaxes(u, -1, -2) @ noise_cov @ u
    p = s / -(lam[..., :, None] + lam[..., None, :])
    a = np.exp(lam * tr)
    return p, p * (1 - a[..., :, None] * a[..., None, :])


def _hrf_gain(hrf: np.ndarray, a: np.ndarray) -> np.ndarray:
    """G_mn = sum_ij h_i h_j a_m^(j-i)+ a_n^(i-j)+ = r_0 + S_m + S_n, r_d the HRF autocorrelation."""
    r = np.correlate(hrf, hrf, mode="full")[len(hrf) - 1 :]
    s = (a[..., None] ** np.arange(1, len(hrf))) @ r[1:]
    return r[0] + s[..., :, None] + s[..., None, :]


def build_network(cfg: BrainConfig, rng: np.random.Generator) -> Network:
    """Parcels, modules, base coupling, HRF and the noise covariance that gives unit baseline variance."""
    coords, modules = parcel_layout(cfg.n_parcels, cfg.n_modules, rng)
    n = len(coords)
    w0 = base_coupling(coords, modules, cfg)
    hrf = hrf_kernel(cfg.tr) if cfg.hrf else np.ones(1)
    same = (modules[:, None] == modules[None]).astype(np.float64)
    corr = (1 - cfg.module_noise - cfg.global_noise) * np.eye(n) + cfg.module_noise * same + cfg.global_noise
    lam, u = np.linalg.eigh(w0 - np.eye(n) / cfg.tau)
    p, _ = _modal_covariances(lam, u, corr, cfg.tr)
    # Observed (HRF-filtered) variance of parcel v: sum_mn U_vm U_vn P_mn G_mn.
    var = np.einsum("vm,vn,mn->v", u, u, p * _hrf_gain(hrf, np.exp(lam * cfg.tr)))
    return Network(coords, modules, w0, cfg.tau, corr / var.mean(), hrf, cfg.tr)


def simulate_signals(
    net: Network, operators: np.ndarray, n_sessions: int, n_timepoints: int, rngs: list[np.random.Generator]
) -> tuple[np.ndarray, float]:
    """Stationary latent parcel signals [C * n_sessions, T, V] (before gain/noise); also the largest eigenvalue.

    `operators` holds one A per subject ([C, V, V]); `rngs` one generator per recording (subject-major). Each
    recording's generator supplies its own noise, so results do not depend on how subjects are batched.
    """
    lam, u = np.linalg.eigh(operators)
    max_eig = float(lam.max())
    if not max_eig < 0:
        raise BrainmmError(f"simulation: unstable network (largest eigenvalue {max_eig:.3g} >= 0); "
                           f"lower brain.coupling or effects.coupling")
    p, q = _modal_covariances(lam, u, net.noise_cov, net.tr)
    chol_p, chol_q = np.linalg.cholesky(p), np.linalg.cholesky(q)
    if n_sessions > 1:
        lam, u, chol_p, chol_q = (np.repeat(arr, n_sessions, axis=0) for arr in (lam, u, chol_p, chol_q))
    n_kernel = len(net.hrf)
    n_total = n_timepoints + n_kernel - 1
    xi = np.stack([r.standard_normal((n_total, lam.shape[1])) for r in rngs])  # [C, T', V]
    eta = xi @ np.swapaxes(chol_q, 1, 2)  # innovations ~ N(0, Q)
    eta[:, 0] = (chol_p @ xi[:, 0, :, None])[..., 0]  # y_0 ~ N(0, P): start stationary
    eta = np.ascontiguousarray(eta.transpose(1, 0, 2))  # [T', C, V]
    a = np.exp(lam * net.tr)  # [C, V]
    for t in range(1, n_total):  # AR(1) per mode, in place: y_t = a * y_{t-1} + eta_t
        eta[t] += a * eta[t - 1]
    x = np.matmul(eta.transpose(1, 0, 2), np.swapaxes(u, 1, 2))  # x_t = U y_t -> [C, T', V]
    return hrf_filter(x, net.hrf, n_timepoints), max_eig


def hrf_filter(x: np.ndarray, hrf: np.ndarray, n_timepoints: int) -> np.ndarray:
    """Causal 'valid' convolution along time (axis -2): [..., n_timepoints + len(hrf) - 1, V] -> [..., n_timepoints,
    V]; unchanged for a length-1 kernel (no HRF)."""
    if len(hrf) == 1:
        return x
    out = np.zeros(x.shape[:-2] + (n_timepoints, x.shape[-1]))
    for k, h in enumerate(hrf):
        start = len(hrf) - 1 - k
        out += h * x[..., start : start + n_timepoints, :]
    return out
