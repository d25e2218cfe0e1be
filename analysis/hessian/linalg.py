"""Spectral algorithms for any symmetric linear operator given as a batched matvec.

``matvec(V)`` maps a (k, n) tensor of k vectors to the (k, n) tensor of their products; the
algorithms hand it all the vectors they need at once, so an operator that shares one pass over
the data between its k vectors (the Hessian operator does) pays per pass, not per vector.

- ``top_eigenvalues``: Lanczos with full reorthogonalisation, stopped when the residual bounds
  of the wanted Ritz pairs fall below a relative tolerance; residuals ||A y - theta y|| are then
  measured with one more (batched) product, and each pair is marked converged or not.
- ``hutchinson_trace``: a fixed budget of Rademacher probes, with the standard error.
- ``slq`` and ``gaussian_density``: stochastic Lanczos quadrature for the spectral density.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from each w[p] its components along basis[p, :j] (two passes of Gram-Schmidt)."""
    for _ in range(2):
        w = w - torch.einsum("pj,pjn->pn", torch.einsum("pjn,pn->pj", basis, w), basis)
    return w


def lanczos(matvec: MatVec, start: torch.Tensor, steps: int,
            stop: Optional[Callable[[np.ndarray, np.ndarray, int], bool]] = None
            ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Run ``steps`` Lanczos steps from each row of ``start`` (p, n) at once, with full
    reorthogonalisation. Returns (alpha (p, m), beta (p, m - 1), basis (p, m, n)), m <= steps.

    ``stop(alpha, beta, m)`` may end the run early. A breakdown (an invariant subspace, beta ~ 0)
    ends it too: the tridiagonal matrix is then exact.
    """
    if steps < 1:
        raise ValueError(f"Lanczos needs at least 1 step, got {steps}")
    p, n = start.shape
    steps = min(steps, n)
    basis = torch.zeros(p, steps, n, dtype=start.dtype, device=start.device)
    q = start / start.norm(dim=1, keepdim=True)
    alphas, betas = [], []
    for j in range(steps):
        basis[:, j] = q
        w = matvec(q)
        alpha = (w * q).sum(dim=1)
        alphas.append(alpha.double().cpu().numpy())
        w = _orthogonalise(w, basis[:, : j + 1])
        if j == steps - 1:
            break
        beta = w.norm(dim=1)
        a, b = np.stack(alphas, axis=1), (np.stack(betas, axis=1) if betas else np.zeros((p, 0)))
        scale = max(1.0, float(np.abs(a).max()))
        if stop is not None and stop(a, b, j + 1):
            break
        if float(beta.max()) <= 1e-10 * scale:
            break
        betas.append(beta.double().cpu().numpy())
        q = w / beta.clamp_min(1e-30)[:, None]
    m = len(alphas)
    a = np.stack(alphas, axis=1)
    b = np.stack(betas, axis=1)[:, : m - 1] if betas else np.zeros((p, 0))
    return a, b, basis[:, :m]


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix (alpha, beta)."""
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    return np.linalg.eigh(T)


@dataclass
class Eigenpairs:
    values: np.ndarray  # descending
    residuals: np.ndarray  # ||A y - theta y|| for unit Ritz vectors y
    vectors: torch.Tensor  # (k, n)
    steps: int
    products: int  # matrix-vector products used
    converged: np.ndarray  # bool per value: its measured residual meets the tolerance (see top_eigenvalues)

    @property
    def converged_prefix(self) -> int:
        """How many of the values, from the top, converged without a gap: the ones that may be
        called the top eigenvalues."""
        failed = np.flatnonzero(~self.converged)
        return int(failed[0]) if len(failed) else len(self.converged)


def top_eigenvalues(matvec: MatVec, n: int, k: int = 1, max_steps: int = 100, tol: float = 1e-5,
                    generator: Optional[torch.Generator] = None, dtype=torch.float32, device="cpu") -> Eigenpairs:
    """The k algebraically largest eigenvalues of the operator, with measured residuals.

    Lanczos (full reorthogonalisation) stops once |beta_m s_{m,i}| <= tol * |theta_i| for the top
    k Ritz pairs (in exact arithmetic that bound is the residual norm), on breakdown, or after
    ``max_steps`` steps. The residuals ||A y - theta y|| are then measured, not bounded, and a pair
    counts as converged when ``residual <= tol * |theta| + 100 * eps * max|theta|`` (the second
    term is the rounding floor of the arithmetic, eps of ``dtype``). Values that did not converge
    (Lanczos stopped at ``max_steps`` first) are Ritz values, not necessarily eigenvalues: with
    fewer steps than wanted values, the lowest ones can be interior or negative.
    Returns ``min(k, n, steps taken)`` values.
    """
    if k < 1 or max_steps < 1:
        raise ValueError(f"need k >= 1 and max_steps >= 1, got k={k}, max_steps={max_steps}")
    k, steps = min(k, n), min(max_steps, n)
    start = torch.randn(n, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    basis = torch.zeros(1, steps, n, dtype=dtype, device=device)
    q = (start / start.norm())[None]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        basis[:, j] = q
        w = matvec(q)
        alphas.append(float((w * q).sum()))
        w = _orthogonalise(w, basis[:, : j + 1])
        beta = float(w.norm())
        scale = max(1.0, max(abs(a) for a in alphas))
        if j + 1 >= k and ((j + 1) % 5 == 0 or j == steps - 1 or beta <= 1e-10 * scale):
            theta, s = tridiagonal_eigh(np.array(alphas), np.array(betas))
            bound = np.abs(beta * s[-1, -k:])
            if beta <= 1e-10 * scale or np.all(bound <= tol * np.maximum(np.abs(theta[-k:]), 1e-12)):
                break
        if j == steps - 1:
            break
        betas.append(beta)
        q = w / max(beta, 1e-30)
    m = len(alphas)
    theta, s = tridiagonal_eigh(np.array(alphas), np.array(betas[: m - 1]))
    order = np.argsort(theta)[::-1][:k]
    coeffs = torch.as_tensor(s[:, order].T.copy(), dtype=dtype, device=device)  # (k, m)
    vectors = coeffs @ basis[0, :m]
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    products = matvec(vectors)
    values = theta[order]
    lam = torch.as_tensor(values, dtype=dtype, device=device)[:, None]
    residuals = (products - lam * vectors).norm(dim=1).double().cpu().numpy()
    floor = 100 * torch.finfo(dtype).eps * float(np.abs(theta).max(initial=0.0))
    converged = residuals <= tol * np.abs(values) + floor
    return Eigenpairs(values=values, residuals=residuals, vectors=vectors, steps=m, products=m + len(values),
                      converged=converged)


@dataclass
class TraceEstimate:
    mean: float
    std_error: float
    probes: int
    samples: np.ndarray  # v^T A v per probe


def rademacher(count: int, n: int, generator: Optional[torch.Generator], dtype, device) -> torch.Tensor:
    """``count`` vectors of i.i.d. +-1 entries, drawn on the CPU (same numbers on any device)."""
    return (torch.randint(0, 2, (count, n), generator=generator).to(dtype) * 2 - 1).to(device)


def hutchinson_trace(matvec: MatVec, n: int, probes: int = 64, batch: int = 16,
                     generator: Optional[torch.Generator] = None, dtype=torch.float32, device="cpu") -> TraceEstimate:
    """tr(A) ~ mean of v^T A v over ``probes`` Rademacher vectors (a fixed budget, ``batch`` per call).

    An operator with a ``quadratic_form(V)`` method (``HessianOperator``) is asked for v^T A v
    directly, which can be cheaper than A v.
    """
    if probes < 1:
        raise ValueError(f"the trace needs at least 1 probe, got {probes}")
    quadratic = getattr(matvec, "quadratic_form", None)
    samples = []
    for start in range(0, probes, batch):
        V = rademacher(min(batch, probes - start), n, generator, dtype, device)
        values = quadratic(V) if quadratic is not None else (V * matvec(V)).sum(dim=1)
        samples.append(values.double().cpu().numpy())
    values = np.concatenate(samples)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return TraceEstimate(float(values.mean()), se, len(values), values)


@dataclass
class Quadrature:
    nodes: np.ndarray  # (probes, m) Ritz values
    weights: np.ndarray  # (probes, m) squared first components; each row sums to 1
    steps: int


def slq(matvec: MatVec, n: int, probes: int = 8, steps: int = 80, generator: Optional[torch.Generator] = None,
        dtype=torch.float32, device="cpu") -> Quadrature:
    """Stochastic Lanczos quadrature: one Lanczos run per normalised Rademacher probe, all probes
    advancing together (one batched product per step)."""
    if probes < 1 or steps < 1:
        raise ValueError(f"SLQ needs probes >= 1 and steps >= 1, got {probes} and {steps}")
    start = rademacher(probes, n, generator, dtype, device)
    a, b, _ = lanczos(matvec, start, steps)
    nodes, weights = [], []
    m = a.shape[1]
    for p in range(probes):
        theta, s = tridiagonal_eigh(a[p], b[p, : m - 1])
        nodes.append(theta)
        weights.append(s[0] ** 2)
    return Quadrature(np.array(nodes), np.array(weights), m)


def gaussian_density(q: Quadrature, grid: Optional[np.ndarray] = None, sigma: Optional[float] = None,
                     points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The spectral density as a sum of Gaussians of width ``sigma`` at the quadrature nodes,
    averaged over probes; returns (grid, density), normalised to integrate to 1 on the grid."""
    lo, hi = float(q.nodes.min()), float(q.nodes.max())
    span = max(hi - lo, 1e-12)
    sigma = sigma if sigma is not None else span / 100
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    diff = (grid[None, None, :] - q.nodes[:, :, None]) / sigma
    kernel = np.exp(-0.5 * diff ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = (q.weights[:, :, None] * kernel).sum(axis=1).mean(axis=0)
    area = np.trapezoid(density, grid)
    return grid, density / area if area > 0 else density
