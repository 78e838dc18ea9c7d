"""Voxelwise one-class SVMs on siamese-autoencoder latents (Alaverdyan et al. 2020).

For every model voxel an RBF one-class SVM is fitted on the controls' latent vectors at
that voxel (one ``d``-dimensional sample per control, ``n`` = 10..75 controls), and a
patient is scored with its decision function: ``f(z) = sum_i alpha_i K(sv_i, z) - rho``,
``K(x, y) = exp(-gamma ||x - y||^2)``. Sign convention as scikit-learn's
``OneClassSVM.decision_function``: negative = outside the controls' support (anomalous).
Decision values are in the kernel's units (dimensionless, roughly in ``[-nu n, nu n]``).

Hundreds of thousands of tiny problems are solved at once with a batched SMO
(``fit_batched``: libsvm's algorithm vectorised over voxels with torch on CPU) instead
of one libsvm call per voxel. The model on disk is
one ``ocsvm.safetensors`` (voxel indices, float16 support vectors, alpha, rho, gamma) and
its card ``ocsvm.json``; it is read chunk by chunk when loaded lazily.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import OCSVM_GAMMA, OCSVM_NU
from ..threads import thread_limits
from ..weightfiles import LazyRows, save_weights, verified_card
from .zscore import MAD_TO_SD

NU = OCSVM_NU  # defaults and their rationale: config.py
GAMMA = OCSVM_GAMMA
TOL = 1e-4
"""Default stopping tolerance of ``fit_batched``: the maximal KKT violation
``max_{a_i>0} G_i - min_{a_i<C} G_i`` in libsvm's scale (``G = Q alpha``, alpha in
[0, 1]); libsvm/scikit-learn stop at 1e-3 on the same quantity."""
MAX_ITER = 100_000
"""Iteration cap (pair updates) per problem of ``fit_batched`` (problems not converged by
then are kept as they are and counted in a warning); ~80-150 suffice for 75 controls."""
CHUNK_MB = 256.0
"""Default memory budget (MB) for the kernel matrices of one chunk of problems."""
FORMAT = "petsynth-ocsvm/1"
TENSORS = "ocsvm.safetensors"
CARD = "ocsvm.json"
_KEYS = ("ijk", "sv", "alpha", "rho", "gamma")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _gamma_per_problem(X: np.ndarray, gamma: float | str) -> np.ndarray:
    """gamma (V,) float32 for problems X (V, n, d): a constant or the per-problem "scale"."""
    V, _, d = X.shape
    if isinstance(gamma, str):
        if gamma != "scale":
            raise ValueError(f"gamma must be a positive number or 'scale', got {gamma!r}")
        flat = X.reshape(V, -1)
        var = np.concatenate(
            [flat[s : s + 4096].astype(np.float64).var(axis=1) for s in range(0, V, 4096)]
        )  # float64 4096 rows at a time: no full-size copy
        safe = np.where(var > 0, var, 1.0)
        return np.where(var > 0, 1.0 / (d * safe), 1.0).astype(np.float32)
    if not float(gamma) > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return np.full(V, float(gamma), dtype=np.float32)


def _rbf(X: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Batched RBF kernel matrices (B, n, n) of samples X (B, n, d), gamma (B,)."""
    Xc = X - X.mean(dim=1, keepdim=True)  # distances are shift-invariant; less cancellation
    sq = (Xc * Xc).sum(-1)
    K = torch.baddbmm(sq[:, :, None] + sq[:, None, :], Xc, Xc.transpose(1, 2), alpha=-2.0)
    K.clamp_(min=0.0).mul_(-gamma[:, None, None]).exp_()  # squared distances -> kernel
    K.diagonal(dim1=1, dim2=2).fill_(1.0)
    return K


_AT_BOUND = 1e-6
"""Alphas (libsvm scale, bounds 0 and 1) this close to a bound count as at the bound in
the batched SMO."""


def _matvec(K: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``K x`` for symmetric K (B, n, n), x (B, n), computed as ``x^T K`` (row-vector bmm
    is ~3x faster on CPU than the column-vector one)."""
    return torch.bmm(x[:, None, :], K)[:, 0, :]


def _smo_chunk(
    K: torch.Tensor, nu: float, tol: float, max_iter: int, check_every: int = 4
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """libsvm's SMO (second-order working set selection, Fan et al. 2005) on a batch of
    one-class problems at once, one pair update per problem and iteration.

    Dual in libsvm's scale: ``min 1/2 a^T K a`` s.t. ``0 <= a_i <= 1``, ``sum a = nu n``,
    started as libsvm starts (the first ``floor(nu n)`` alphas at 1, the next at the
    rest). Per iteration and problem: ``i = argmax_{a_i < 1} -G_i``, ``j`` among
    ``a_j > 0`` with the largest second-order gain ``b_j^2 / (2 - 2 K_ij)``, the pair
    moved to its clipped optimum and ``G = K a`` updated with two kernel rows (O(n) per
    problem, all problems in lockstep as (B, n) tensor operations). A problem stops when
    ``max_{a<1} -G + max_{a>0} G < tol`` (libsvm's criterion), checked every
    ``check_every`` iterations; finished problems are dropped from the batch once they
    are a quarter of it (copying K is the expensive part). Returns ``(a, G,
    n_unconverged, iterations)`` with ``G = K a`` recomputed exactly.
    """
    K_all = K
    B, n, _ = K.shape
    total = float(nu) * n
    n_full = min(int(total), n)
    start = torch.zeros(n, dtype=K.dtype)
    start[:n_full] = 1.0
    if n_full < n:
        start[n_full] = total - n_full
    a = start.expand(B, n).contiguous()
    G = _matvec(K, a)
    out_a, out_g = torch.empty_like(a), torch.empty_like(G)
    index = torch.arange(B)  # rows of the output
    finished = torch.zeros(B, dtype=torch.bool)
    rows = torch.arange(B)
    n_left = 0
    it = 0
    for it in range(1, max_iter + 1):
        # alphas within _AT_BOUND of a bound count as at it: float32 sums leave e.g.
        # 1 - 6e-8 after a clipped move, which would be picked again and again
        Gmax, i = (-G).masked_fill_(a >= 1.0 - _AT_BOUND, -math.inf).max(1)
        low = a > _AT_BOUND
        if it % check_every == 1 or check_every == 1 or it == max_iter:
            Gmax2 = G.masked_fill(~low, -math.inf).amax(1)
            new = ((Gmax + Gmax2) < tol) & ~finished
            if it == max_iter:
                n_left = int((~finished & ~new).sum())
                new = ~finished
            if new.any():
                out_a[index[new]] = a[new]
                out_g[index[new]] = G[new]
                finished |= new
            if bool(finished.all()):
                break
            if int(finished.sum()) * 4 >= len(finished):
                keep = ~finished
                K, a, G, index = K[keep], a[keep], G[keep], index[keep]
                Gmax, i, low = Gmax[keep], i[keep], low[keep]
                finished = finished[keep]
                rows = torch.arange(len(index))
        Ki = K[rows, i]
        b = G + Gmax[:, None]  # G_j - G_i
        quad = (2.0 - 2.0 * Ki).clamp_(min=1e-12)  # K_ii + K_jj - 2 K_ij, RBF diagonal 1
        # candidates j: violations of at least tol / 2 (the most violating j of an
        # unconverged problem has b >= tol); smaller b are float32 noise between
        # near-identical controls (synthetic PETs), whose huge b^2 / quad would be
        # chosen forever without moving G
        gain = (-(b * b) / quad).masked_fill_(~(low & (b > 0.5 * tol)), math.inf)
        best, j = gain.min(1)
        Kj = K[rows, j]
        ai, aj = a[rows, i], a[rows, j]
        pair = ai + aj
        delta = (G[rows, i] - G[rows, j]) / quad[rows, j]
        ai_new = torch.minimum(
            torch.maximum(ai - delta, (pair - 1.0).clamp(min=0.0)), pair.clamp(max=1.0)
        )
        ai_new = torch.where(torch.isfinite(best), ai_new, ai)  # no violating pair: no move
        step = ai_new - ai
        a[rows, i] = ai_new
        a[rows, j] = pair - ai_new
        G.add_(step[:, None] * (Ki - Kj))
    return out_a, _matvec(K_all, out_a), n_left, it


def _rho(a: torch.Tensor, G: torch.Tensor, cap: float) -> torch.Tensor:
    """libsvm's rho: mean G over free alphas, else mid of the bounds (``cap`` the upper
    bound of alpha, 1 in libsvm's scale).

    Alphas within ``1e-5 cap`` of a bound count as at the bound: when the optimum sits
    exactly on the bounds (degenerate, rho anywhere in ``[lb, ub]``), a float32 solution
    a hair inside would otherwise pick one end where libsvm takes the midpoint.
    """
    eps = 1e-5 * cap
    inf = torch.tensor(float("inf"), dtype=a.dtype)
    at_low, at_up = a <= eps, a >= cap - eps
    free = ~(at_low | at_up)
    n_free = free.sum(-1)
    mean_free = (G * free).sum(-1) / n_free.clamp(min=1)
    ub = torch.where(at_low, G, inf).amin(-1)  # a_i = 0 needs G_i >= rho
    lb = torch.where(at_up, G, -inf).amax(-1)  # a_i = C needs G_i <= rho
    ub = torch.where(torch.isinf(ub), lb, ub)
    lb = torch.where(torch.isinf(lb), ub, lb)
    return torch.where(n_free > 0, mean_free, 0.5 * (ub + lb))


def _chunk_size(n: int, d: int, itemsize: int, chunk_mb: float) -> int:
    """Problems per chunk so that ~4 (n, n) matrices and the data fit in ``chunk_mb``."""
    per_problem = itemsize * (4 * n * n + 2 * n * d + 16 * n)
    return max(1, int(chunk_mb * 2**20 // per_problem))


def _checked(X: np.ndarray, nu: float, max_iter: int) -> np.ndarray:
    """``X`` as an array after :func:`fit_batched`'s input checks (ValueError)."""
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must be (V, n, d), got shape {X.shape}")
    V, n, d = X.shape
    if n < 1 or d < 1:
        raise ValueError(f"X has no samples or no features: shape {X.shape}")
    if not 0.0 < float(nu) <= 1.0:
        raise ValueError(f"nu must be in (0, 1], got {nu}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X has non-finite values")
    return X


def _solve(
    X: np.ndarray, nu: float, gamma: float | str, tol: float, max_iter: int, chunk_mb: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """:func:`fit_batched`'s work on checked ``X`` (V, n, d) with torch's current thread
    count: ``(alpha, rho, gamma, unconverged, iterations, problems per chunk)``."""
    V, n, d = X.shape
    gammas = _gamma_per_problem(X, gamma)
    alpha = np.zeros((V, n), dtype=np.float32)
    rho = np.zeros(V, dtype=np.float32)
    step = _chunk_size(n, d, 4, chunk_mb)
    n_left = n_iter = 0
    with torch.inference_mode():
        for start in range(0, V, step):
            stop = min(V, start + step)
            xs = torch.from_numpy(np.ascontiguousarray(X[start:stop], dtype=np.float32))
            K = _rbf(xs, torch.from_numpy(gammas[start:stop]))
            a, G, left, iters = _smo_chunk(K, float(nu), tol, max_iter)
            n_left += left
            n_iter = max(n_iter, iters)
            del K
            alpha[start:stop] = a.numpy()
            rho[start:stop] = _rho(a, G, 1.0).numpy()
    return alpha, rho, gammas, n_left, n_iter, step


def _warn_unconverged(n_left: int, V: int, tol: float, max_iter: int) -> None:
    if n_left:
        warnings.warn(
            f"one-class SVM: {n_left} of {V} problems did not reach tol={tol} "
            f"in {max_iter} iterations",
            RuntimeWarning,
            stacklevel=3,
        )


def fit_batched(
    X: np.ndarray,
    nu: float = NU,
    gamma: float | str = GAMMA,
    *,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    chunk_mb: float = CHUNK_MB,
    threads: int | None = None,
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit V independent RBF one-class SVMs at once; ``X`` is (V, n, d) (e.g. voxels x
    controls x latent dimensions).

    Solves the dual ``min 1/2 a^T K a`` s.t. ``0 <= a_i <= 1``, ``sum a = nu n`` of every
    problem with libsvm's algorithm (SMO with second-order working set selection, same
    start, same stopping rule) run on all problems of a chunk in lockstep
    (``_smo_chunk``) until the KKT violation is below ``tol``, then rho from the KKT
    conditions as libsvm does. ``gamma`` is a positive number or
    ``"scale"`` (``1 / (d * X_v.var())`` per problem). Problems are processed in chunks
    whose kernel matrices take about ``chunk_mb`` MB; torch uses ``threads`` threads
    (None = torch's current setting). A dict passed as ``info`` receives ``iterations``
    (most iterations of any chunk), ``unconverged`` and ``chunk`` (problems per chunk).

    Returns ``(alpha (V, n), rho (V,), gamma (V,))`` as float32, scaled like libsvm and
    scikit-learn (``sum alpha = nu n``, ``0 <= alpha <= 1``), so that
    ``decision_batched(alpha, rho, gamma, X, Z)`` equals scikit-learn's
    ``OneClassSVM(kernel="rbf", nu=nu, gamma=gamma).fit(X[v]).decision_function(Z[v])``.
    """
    X = _checked(X, nu, max_iter)
    V = X.shape[0]
    with thread_limits(threads, env=False):
        alpha, rho, gammas, n_left, n_iter, step = _solve(X, nu, gamma, tol, max_iter, chunk_mb)
    if info is not None:
        info.update(iterations=n_iter, unconverged=n_left, chunk=step)
    _warn_unconverged(n_left, V, tol, max_iter)
    return alpha, rho, gammas


def decision_batched(
    alpha: np.ndarray,
    rho: np.ndarray,
    gamma: np.ndarray | float,
    SV: Any,
    Z: np.ndarray,
    chunk: int = 4096,
    threads: int | None = None,
) -> np.ndarray:
    """Decision values (V,) float32 of one new sample per problem:
    ``f_v = sum_i alpha[v, i] exp(-gamma_v ||SV[v, i] - Z[v]||^2) - rho_v``.

    ``alpha`` (V, m), ``rho`` (V,), ``gamma`` (V,) or a number, ``SV`` (V, m, d) (any
    float dtype, or anything sliceable by rows such as a lazily read tensor), ``Z``
    (V, d). Padding support vectors have alpha 0. Negative = outside the support.
    """
    alpha = np.asarray(alpha, dtype=np.float32)
    V = alpha.shape[0]
    rho = np.asarray(rho, dtype=np.float32).reshape(V)
    gamma = np.array(np.broadcast_to(np.asarray(gamma, dtype=np.float32), (V,)))
    Z = np.asarray(Z)
    if Z.shape[0] != V or tuple(SV.shape[:2]) != alpha.shape:
        raise ValueError(f"shape mismatch: alpha {alpha.shape}, SV {tuple(SV.shape)}, Z {Z.shape}")
    out = np.empty(V, dtype=np.float32)
    with thread_limits(threads, env=False), torch.inference_mode():
        for start in range(0, V, max(1, int(chunk))):
            stop = min(V, start + max(1, int(chunk)))
            sv = torch.from_numpy(np.asarray(SV[start:stop], dtype=np.float32))
            z = torch.from_numpy(np.asarray(Z[start:stop], dtype=np.float32))
            dist = ((sv - z[:, None, :]) ** 2).sum(-1)
            k = torch.exp(-torch.from_numpy(gamma[start:stop])[:, None] * dist)
            f = (torch.from_numpy(alpha[start:stop]) * k).sum(-1)
            out[start:stop] = (f - torch.from_numpy(rho[start:stop])).numpy()
    return out


@dataclass
class OCSVMModel:
    """Voxelwise one-class SVMs on one template grid.

    ``ijk`` (V, 3) int32 voxel indices on the grid ``shape`` (``affine``: voxel -> mm);
    ``sv`` (V, m, d) float16 support vectors (latent vectors of controls), ``m`` the
    largest number of support vectors of any voxel, padded rows have ``alpha`` 0;
    ``alpha`` (V, m), ``rho`` (V,), ``gamma`` (V,) float32 in scikit-learn's scale.
    ``sv`` and ``alpha`` may be lazily read row slicers (``load_model(lazy=True)``).
    ``meta``: nu, gamma rule, n_samples and whatever the caller adds.
    """

    ijk: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    sv: Any
    alpha: Any
    rho: np.ndarray
    gamma: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        return int(self.ijk.shape[0])

    def mask(self) -> np.ndarray:
        """Boolean map (grid shape) of the model's voxels."""
        out = np.zeros(self.shape, dtype=bool)
        out[tuple(self.ijk.T)] = True
        return out


def fit_model(
    latents: np.ndarray,
    ijk: np.ndarray,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    nu: float = NU,
    gamma: float | str = GAMMA,
    meta: dict | None = None,
    *,
    chunk: int = 16384,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
    chunk_mb: float = CHUNK_MB,
    threads: int | None = None,
    pool: Executor | None = None,
) -> OCSVMModel:
    """Fit one OC-SVM per voxel on the controls' latents (n_subjects, V, d) (same voxel
    order as ``ijk`` (V, 3), e.g. ``np.argwhere(mask)``) and keep only support vectors.

    Voxels are fitted ``chunk`` at a time (bounded memory), each in solver chunks of
    ``chunk_mb`` (``fit_batched``, with ``tol`` and ``max_iter``) on ``threads`` torch
    threads, or, with a ``pool`` (``threads.worker_pool``), one solver chunk per task in
    its threads (the same chunks: the same model). Support vectors are stored as float16
    (ValueError if a latent does not fit), ordered as the subjects.
    """
    latents = np.asarray(latents)
    if latents.ndim != 3:
        raise ValueError(f"latents must be (n_subjects, V, d), got shape {latents.shape}")
    n, V, d = latents.shape
    ijk = np.asarray(ijk, dtype=np.int32).reshape(-1, 3)
    if ijk.shape[0] != V:
        raise ValueError(f"{ijk.shape[0]} voxel indices for {V} voxels of latents")
    if n < 2:
        raise ValueError(f"need at least 2 control latents per voxel, got {n}")
    shape = tuple(int(s) for s in shape)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(shape)):
        raise ValueError(f"voxel indices outside the grid {shape}")
    alpha = np.zeros((V, n), dtype=np.float32)
    rho = np.zeros(V, dtype=np.float32)
    gammas = np.zeros(V, dtype=np.float32)
    step = _chunk_size(n, d, 4, chunk_mb)
    ranges = [
        (a, min(start + chunk, V, a + step))
        for start in range(0, V, chunk)
        for a in range(start, min(start + chunk, V), step)
    ]  # solver chunks within ``chunk``s, as fit_batched of each ``chunk`` makes them

    def solve(a: int, b: int) -> tuple[int, int]:
        X = np.ascontiguousarray(latents[:, a:b].transpose(1, 0, 2), dtype=np.float32)
        if X.size and (X.max() > _FLOAT16_MAX or X.min() < -_FLOAT16_MAX):
            raise ValueError("latents exceed the float16 range of the stored support vectors")
        X = _checked(X, nu, max_iter)
        alpha[a:b], rho[a:b], gammas[a:b], left, iters, _ = _solve(
            X, nu, gamma, tol, max_iter, chunk_mb
        )
        return left, iters

    if pool is None:
        with thread_limits(threads, env=False):
            done = [solve(a, b) for a, b in ranges]
    else:
        done = list(pool.map(lambda r: solve(*r), ranges))
    _warn_unconverged(sum(left for left, _ in done), V, tol, max_iter)
    is_sv = alpha > 0
    m = max(1, int(is_sv.sum(1).max(initial=0)))
    order = np.argsort(~is_sv, axis=1, kind="stable")[:, :m]  # support vectors first
    alpha_c = np.take_along_axis(alpha, order, axis=1)
    sv = np.empty((V, m, d), dtype=np.float16)
    for start in range(0, V, chunk):
        stop = min(V, start + chunk)
        sub = latents[:, start:stop].transpose(1, 0, 2)  # (v, n, d) view
        sv[start:stop] = np.take_along_axis(sub, order[start:stop, :, None], axis=1)
    sv[alpha_c == 0] = 0
    info = {
        "nu": float(nu),
        "gamma": gamma if isinstance(gamma, str) else float(gamma),
        "n_samples": int(n),
        "latent_dim": int(d),
    }
    return OCSVMModel(
        ijk,
        shape,
        np.asarray(affine, dtype=np.float64),
        sv,
        alpha_c,
        rho,
        gammas,
        {**(meta or {}), **info},
    )


class BlockRows:
    """A (V, m, d) tensor held as consecutive row blocks, each an array or a ``.npy``
    file (read when needed) of shape (V_b, m_b, d) with m_b <= m, zero-padded to m
    columns: the support vectors of a model fitted block by block (``spill``,
    ``concat_models``), which ``save_model`` streams to disk one block at a time."""

    def __init__(self, blocks: list[np.ndarray | Path], shape: tuple[int, ...], dtype) -> None:
        self.blocks, self.shape, self.dtype = list(blocks), tuple(shape), np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self):
        """The padded blocks in order, (V_b, m, d) arrays of ``dtype``."""
        for block in self.blocks:
            data = np.load(block) if isinstance(block, (str, Path)) else np.asarray(block)
            out = np.zeros((len(data), *self.shape[1:]), self.dtype)
            out[:, : data.shape[1]] = data
            yield out

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("block rows can only be sliced by rows")
        start, stop, step = rows.indices(self.shape[0])
        out, at = [], 0
        for chunk in self.chunks():  # only blocks overlapping the rows are kept
            lo, hi = max(start, at), min(stop, at + len(chunk))
            if lo < hi:
                out.append(chunk[lo - at : hi - at])
            at += len(chunk)
        empty = np.zeros((0, *self.shape[1:]), self.dtype)
        return np.concatenate([empty, *out])[::step]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)


def spill(model: OCSVMModel, path: str | Path) -> OCSVMModel:
    """``model`` with its support vectors moved to the ``.npy`` file ``path`` (``sv``
    becomes a :class:`BlockRows`), so that the models of many voxel blocks can be kept
    until they are saved without their support vectors in memory."""
    path = Path(path)
    np.save(path, np.asarray(model.sv))
    sv = BlockRows([path], np.shape(model.sv), np.float16)
    return OCSVMModel(
        model.ijk, model.shape, model.affine, sv, model.alpha, model.rho, model.gamma, model.meta
    )


def concat_models(models: list[OCSVMModel]) -> OCSVMModel:
    """One model from models of disjoint voxel blocks on the same grid (``fit_model``
    called block by block to bound memory); support vectors padded to the largest m.

    The list is emptied as its models are copied into the result, so that the blocks'
    arrays are freed one by one (memory ~ the result plus one block). When a block's
    support vectors were spilled to disk (``spill``) they stay there: the result's
    ``sv`` is then a :class:`BlockRows` of all blocks (nothing copied)."""
    if not models:
        raise ValueError("no models to concatenate")
    first = models[0]
    if len(models) == 1:
        return models.pop()
    m = max(int(np.asarray(x.alpha).shape[1]) for x in models)
    d = int(first.sv.shape[2])
    V = sum(x.n_voxels for x in models)
    ijk = np.concatenate([x.ijk for x in models])
    rho = np.concatenate([x.rho for x in models])
    gamma = np.concatenate([x.gamma for x in models])
    spilled = any(isinstance(x.sv, BlockRows) for x in models)
    blocks = [] if spilled else None
    sv = None if spilled else np.zeros((V, m, d), dtype=np.float16)
    alpha = np.zeros((V, m), dtype=np.float32)
    shape, affine, meta = first.shape, first.affine, dict(first.meta)
    del first
    start = 0
    while models:
        part = models.pop(0)
        a = np.asarray(part.alpha)
        stop = start + a.shape[0]
        alpha[start:stop, : a.shape[1]] = a
        if blocks is None:
            sv[start:stop, : a.shape[1]] = np.asarray(part.sv)
        elif isinstance(part.sv, BlockRows):
            blocks.extend(part.sv.blocks)
        else:
            blocks.append(np.asarray(part.sv))
        start = stop
        del part, a
    if blocks is not None:
        sv = BlockRows(blocks, (V, m, d), np.float16)
    return OCSVMModel(ijk, shape, affine, sv, alpha, rho, gamma, meta)


def save_model(model: OCSVMModel, folder: str | Path) -> Path:
    """Write ``ocsvm.safetensors`` and its card ``ocsvm.json`` into ``folder``.

    The card holds the sha256 of the tensors file, nu, the gamma rule, n_samples, grid
    shape and affine, ``meta`` and library versions. Same model -> same bytes. Returns
    the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "ijk": np.ascontiguousarray(model.ijk, dtype=np.int32),
        "sv": model.sv  # streamed block by block
        if isinstance(model.sv, BlockRows)
        else np.ascontiguousarray(np.asarray(model.sv), dtype=np.float16),
        "alpha": np.ascontiguousarray(np.asarray(model.alpha), dtype=np.float32),
        "rho": np.ascontiguousarray(model.rho, dtype=np.float32),
        "gamma": np.ascontiguousarray(model.gamma, dtype=np.float32),
    }
    meta = dict(model.meta)
    card = {
        "format": FORMAT,
        "tensors_file": TENSORS,
        "sha256": None,
        "nu": meta.get("nu"),
        "gamma": meta.get("gamma"),
        "n_samples": meta.get("n_samples"),
        "n_voxels": model.n_voxels,
        "latent_dim": int(tensors["sv"].shape[2]),
        "max_support_vectors": int(tensors["sv"].shape[1]),
        "shape": [int(s) for s in model.shape],
        "affine": np.asarray(model.affine, dtype=np.float64).tolist(),
        "meta": meta,
        "versions": meta.get("versions"),
    }
    save_weights(tensors, folder / TENSORS, FORMAT, card, card_file=folder / CARD)
    return folder


def load_model(folder: str | Path, lazy: bool = True) -> OCSVMModel:
    """Read a model folder written by ``save_model``; the tensors' sha256 must match the card.

    With ``lazy`` the support vectors and alphas stay on disk and are read row chunk by
    row chunk (``safetensors.safe_open``) when scoring; voxel indices, rho and gamma are
    read at once. Raises ValueError (one line) for a missing/invalid card, a sha256
    mismatch or unexpected tensors.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    path, cpath = folder / TENSORS, folder / CARD
    if not cpath.is_file() or not path.is_file():
        raise ValueError(f"{folder}: not a one-class SVM model (missing {CARD} or {TENSORS})")
    card = verified_card(path, cpath, FORMAT)
    try:
        with safe_open(str(path), framework="np") as fh:
            keys = set(fh.keys())
            if keys != set(_KEYS):
                raise ValueError(f"{path}: unexpected tensors {sorted(keys)}")
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in _KEYS}
            small = {k: fh.get_tensor(k) for k in ("ijk", "rho", "gamma")}
            big = {k: (None if lazy else fh.get_tensor(k)) for k in ("sv", "alpha")}
    except SafetensorError as exc:
        raise ValueError(f"{path}: unreadable ({' '.join(str(exc).split())})") from None
    V = shapes["ijk"][0]
    if (
        shapes["ijk"] != (V, 3)
        or shapes["rho"] != (V,)
        or shapes["gamma"] != (V,)
        or len(shapes["sv"]) != 3
        or shapes["alpha"] != shapes["sv"][:2]
        or shapes["sv"][0] != V
    ):
        raise ValueError(f"{path}: inconsistent tensor shapes {shapes}")
    if lazy:
        big["sv"] = LazyRows(path, "sv", shapes["sv"], np.float16)
        big["alpha"] = LazyRows(path, "alpha", shapes["alpha"], np.float32)
    return OCSVMModel(
        ijk=small["ijk"],
        shape=tuple(card["shape"]),
        affine=np.asarray(card["affine"]),
        sv=big["sv"],
        alpha=big["alpha"],
        rho=small["rho"],
        gamma=small["gamma"],
        meta=dict(card.get("meta", {})),
    )


def score(
    model: OCSVMModel, latents: np.ndarray, chunk: int = 4096, threads: int | None = None
) -> np.ndarray:
    """Decision values (V,) float32 of a patient's latents (V, d) at the model's voxels
    (same order as ``model.ijk``); negative = outside the controls' support."""
    latents = np.asarray(latents)
    if latents.shape[0] != model.n_voxels or latents.ndim != 2:
        raise ValueError(
            f"latents shape {latents.shape} does not match the model's {model.n_voxels} voxels"
        )
    out = np.empty(model.n_voxels, dtype=np.float32)
    for start in range(0, model.n_voxels, chunk):
        stop = min(model.n_voxels, start + chunk)
        out[start:stop] = decision_batched(
            model.alpha[start:stop],
            model.rho[start:stop],
            model.gamma[start:stop],
            model.sv[start:stop],
            latents[start:stop],
            chunk=chunk,
            threads=threads,
        )
    return out


def score_volume(
    model: OCSVMModel, latents: np.ndarray, chunk: int = 4096, threads: int | None = None
) -> np.ndarray:
    """``score`` as a float32 map of the grid shape: decision values at the model's voxels,
    0 elsewhere (0 is also the decision boundary, so use ``model.mask()`` to tell them
    apart; 0 rather than NaN keeps the map safe for smoothing and NIfTI viewers)."""
    out = np.zeros(model.shape, dtype=np.float32)
    out[tuple(model.ijk.T)] = score(model, latents, chunk=chunk, threads=threads)
    return out


def standardize(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Robust self-standardisation of one patient's decision-value map over ``mask``:
    ``(s - median) / (1.4826 MAD)`` inside the mask, 0 outside (float64, grid of
    ``scores``).

    The result is in SD units of this brain's own scores, negative = more anomalous than
    the brain's typical voxel, and is thresholded like a Z map (e.g. at -1.65). When the
    MAD is 0 (more than half the voxels share one value) the SD is used instead;
    ValueError if the scores are constant over the mask.
    """
    scores = np.asarray(scores, dtype=np.float64)
    inside = np.asarray(mask) != 0
    if inside.shape != scores.shape:
        raise ValueError(f"mask shape {inside.shape} does not match scores {scores.shape}")
    values = scores[inside]
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("scores are empty or not finite inside the mask")
    centre = float(np.median(values))
    spread = MAD_TO_SD * float(np.median(np.abs(values - centre)))
    if not spread > 0:
        spread = float(values.std())
    if not spread > 0 or not math.isfinite(spread):
        raise ValueError("scores are constant over the mask; cannot standardize")
    out = np.zeros(scores.shape)
    out[inside] = (values - centre) / spread
    return out


__all__ = [
    "BlockRows",
    "CARD",
    "CHUNK_MB",
    "GAMMA",
    "MAX_ITER",
    "NU",
    "OCSVMModel",
    "concat_models",
    "TENSORS",
    "TOL",
    "decision_batched",
    "fit_batched",
    "fit_model",
    "load_model",
    "save_model",
    "score",
    "score_volume",
    "spill",
    "standardize",
]
