"""The loss Hessian of a checkpoint: top eigenvalues, trace and spectral density.

- ``operator``: the Hessian of the mean training loss as a batched linear operator
  (``HessianOperator``), in the full space or the ticket's subspace.
- ``rop``: exact Hessian-vector products by Pearlmutter's R-operator, the operator's CPU default.
- ``linalg``: Lanczos, Hutchinson and stochastic Lanczos quadrature for any symmetric operator.
- ``spectrum``: ``analyze(path, Settings(...))`` on one checkpoint, and the density plot.
- ``cli``: ``python -m analysis.hessian ckpt.pt [more.pt ...]`` (``__main__`` runs it).

The names below are the public API: ``from analysis.hessian import analyze, Settings``.
"""
from .cli import DENSITY_NAME, JSON_NAME, main, make_parser
from .linalg import (
    Eigenpairs,
    Quadrature,
    TraceEstimate,
    gaussian_density,
    hutchinson_trace,
    lanczos,
    slq,
    top_eigenvalues,
)
from .operator import HessianOperator, active_dropout, choose_strategy, tune_allocator
from .rop import RopEngine
from .spectrum import (
    THIRD_PARTY_NOISE,
    Settings,
    analyze,
    estimator_generators,
    hessian_batches,
    plot_densities,
    pyhessian_crosscheck,
)

__all__ = [
    "DENSITY_NAME", "JSON_NAME", "main", "make_parser",
    "Eigenpairs", "Quadrature", "TraceEstimate", "gaussian_density", "hutchinson_trace", "lanczos", "slq",
    "top_eigenvalues",
    "HessianOperator", "active_dropout", "choose_strategy", "tune_allocator",
    "RopEngine",
    "THIRD_PARTY_NOISE", "Settings", "analyze", "estimator_generators", "hessian_batches", "plot_densities",
    "pyhessian_crosscheck",
]
