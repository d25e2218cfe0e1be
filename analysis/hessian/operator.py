"""The loss Hessian of a model over a data set, as a batched linear operator.

H is the exact Hessian of the mean cross-entropy over all the examples given, accumulated batch
by batch with weight |batch| / N. Three ways to compute the products, all exact:

- ``strategy="rop"`` (the default on CPU where the model allows it): Pearlmutter's R-operator
  (``analysis.hessian.rop``), with each batch's forward and backward pass computed once and cached, and
  the k vectors of a call sharing each pass over a small batch (folded into its batch axis). Models made of convolutions, linear layers,
  batch norm (evaluation mode), ReLU, pooling and residual additions qualify: every model in
  ``training.models`` except MobileNetV3 (hardswish).
- ``strategy="loop"``: autograd's double backward. For each batch, one forward and one
  differentiable backward pass are shared by the k vectors of a call, then each vector costs one
  more backward pass through that graph. Any model.
- ``strategy="batched"``: the same, with all k vectors through the graph at once with
  ``is_grads_batched`` (the default on CUDA, where small layers are bound by kernel launches,
  and where the R-operator has not been measured yet: see ``choose_strategy``).

The operator checks once, on construction, that it is deterministic (two products of the same
vector agree), as curvlinops does, and refuses ``mode="train"`` on a model with active dropout
(a random operator, not symmetric) unless ``allow_dropout=True``.

Two spaces:
- ``full``: all trainable parameters (those the loss depends on) at the model's point.
- ``ticket``: the Hessian restricted to the unpruned coordinates, P H P with P the mask's
  projection; vectors live on the active coordinates only (biases and normalisation parameters,
  never pruned, are active).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import replace_all_batch_norm_modules_

from training.errors import UserError
from training.sparsity.masks import Mask

from .rop import RopEngine

Batch = tuple[torch.Tensor, torch.Tensor]


def choose_strategy(requested: str, device: torch.device, rop_reason: Optional[str]) -> str:
    """The Hessian-vector product strategy to use: ``requested`` unless it is ``"auto"``.

    ``"auto"`` picks the R-operator (``"rop"``) on CPU when the model allows it (``rop_reason``
    is None), else ``"loop"``; on CUDA it picks ``"batched"`` (autograd with ``is_grads_batched``):
    the R-operator engine has only been measured on CPU so far, and stays opt-in on a GPU until
    a GPU measurement says it pays. Raises ``UserError`` when ``"rop"`` is asked for a model it
    cannot run."""
    if requested not in ("auto", "rop", "loop", "batched"):
        raise UserError(f"unknown HVP strategy {requested!r}; choose auto, rop, loop or batched")
    if requested == "rop" and rop_reason is not None:
        raise UserError(f"the R-operator strategy cannot run this model: {rop_reason}; "
                        "use --hvp loop (strategy='loop')")
    if requested != "auto":
        return requested
    if torch.device(device).type == "cuda":
        return "batched"
    return "rop" if rop_reason is None else "loop"


def active_dropout(model: nn.Module) -> list[str]:
    """Names of the dropout modules of ``model`` that would drop something in training mode."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


class HessianOperator:
    """``H @ v`` for the mean loss of ``model`` over ``batches``; call it on a (k, dim) tensor.

    ``mode="eval"`` (default) uses batch norm running statistics and no dropout; ``mode="train"``
    normalises each batch with its own statistics (running statistics are not touched); with
    active dropout it is refused (``UserError``) unless ``allow_dropout``, and then each product
    draws new dropout masks. Parameters that are frozen or that the loss does not reach are left
    out and listed in ``skipped``.

    On construction one product of a random vector is computed twice; if the two differ by more
    than the arithmetic's rounding (``determinism_tolerance``), the operator is refused, unless
    dropout was allowed (then ``deterministic`` is False and ``determinism_error`` says how far
    apart they were). The check is not counted in ``products`` and ``passes``.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], space: str = "full",
                 mask: Optional[Mask] = None, mode: str = "eval", dtype: Optional[torch.dtype] = None,
                 strategy: str = "auto", cache_bytes: int = 1 << 30, allow_dropout: bool = False,
                 check_determinism: bool = True):
        if space not in ("full", "ticket"):
            raise UserError(f"unknown space {space!r}; choose full or ticket")
        if mode not in ("eval", "train"):
            raise UserError(f"unknown mode {mode!r}; choose eval or train")
        if not batches:
            raise UserError("the Hessian needs at least one batch of data")
        model = copy.deepcopy(model)
        if dtype is not None:
            model = model.to(dtype)
        dropout = active_dropout(model) if mode == "train" else []
        if dropout and not allow_dropout:
            raise UserError(f"--mode train with active dropout ({', '.join(dropout)}) makes the Hessian random "
                            "and not symmetric; use --mode eval, or --allow-dropout (allow_dropout=True) "
                            "to accept a random operator")
        if mode == "train":
            model.train()
            replace_all_batch_norm_modules_(model)  # batch statistics, no running-stat updates
        else:
            model.eval()
        self.model, self.mode, self.space = model, mode, space
        self.batches = [(x.to(dtype) if dtype is not None and x.is_floating_point() else x, y) for x, y in batches]
        self.examples = sum(len(y) for _, y in self.batches)

        named = dict(model.named_parameters())
        frozen = [n for n, p in named.items() if not p.requires_grad]
        candidates = [n for n, p in named.items() if p.requires_grad]
        x, y = self.batches[0]
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [named[n] for n in candidates], allow_unused=True)
        self.names = [n for n, g in zip(candidates, grads) if g is not None]
        self.skipped = frozen + [n for n, g in zip(candidates, grads) if g is None]
        self.params = {n: named[n].detach() for n in self.names}
        self.shapes = [self.params[n].shape for n in self.names]
        self.sizes = [self.params[n].numel() for n in self.names]
        self.full_dim = sum(self.sizes)
        example = next(iter(self.params.values()))
        self.dtype, self.device = example.dtype, example.device
        # the R-operator treats dropout as the identity: right in eval mode only
        self.rop_reason = (f"dropout is active in train mode ({', '.join(dropout)})" if dropout
                           else RopEngine.check(model))
        strategy = choose_strategy(strategy, self.device, self.rop_reason)
        self.strategy = strategy
        self._engine: Optional[RopEngine] = None
        if strategy == "rop":
            self._engine = RopEngine(model, self.names, self.batches, [1.0 / self.examples] * len(self.batches),
                                     cache_bytes=cache_bytes)

        self.active: Optional[torch.Tensor] = None
        if space == "ticket":
            if mask is None or all(bool(m.all()) for m in mask.values()):
                raise UserError("--space ticket needs a pruned checkpoint; this one is dense (no pruned weights)")
            parts = []
            for n in self.names:
                m = mask.get(n)
                parts.append(m.to(self.device).flatten() if m is not None
                             else torch.ones(self.params[n].numel(), dtype=torch.bool, device=self.device))
            self.active = torch.cat(parts)
        self.dim = int(self.active.sum()) if self.active is not None else self.full_dim
        self.products = 0  # Hessian-vector products computed (k per call)
        self.quadratic_forms = 0  # v^T H v computed without the product
        self.passes = 0  # passes over the data

        self._param_list = [named[n] for n in self.names]
        self.allow_dropout = allow_dropout
        self.deterministic: Optional[bool] = None
        self.determinism_error: Optional[float] = None
        if check_determinism:
            self._check_determinism()

    @property
    def determinism_tolerance(self) -> float:
        """The largest relative difference ||Hv - Hv'|| / ||Hv|| between two products of one
        vector that counts as rounding: 10^4 machine epsilons of the operator's dtype."""
        return 1e4 * torch.finfo(self.dtype).eps

    def _check_determinism(self) -> None:
        """Two double-backward products of one vector on the first batch must agree: a random
        forward pass (dropout in train mode, a noisy layer) would make them differ. One batch is
        enough to see it, and keeps the check cheap next to the estimators' hundreds of products
        (the R-operator's cached passes are deterministic by construction once cached)."""
        v = torch.randn(1, self.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        columns = self._columns(v)
        try:
            first, second = (self._autograd_products(columns, 1, self.batches[:1]) for _ in range(2))
        except RuntimeError as exc:
            if "not implemented" not in str(exc):
                raise
            raise UserError(f"the Hessian of this model cannot be computed: {str(exc).splitlines()[0]}") from None
        scale = float(first.norm())
        self.determinism_error = float((first - second).norm()) / scale if scale > 0 else float((first - second).norm())
        self.deterministic = self.determinism_error <= self.determinism_tolerance
        if not self.deterministic and not self.allow_dropout:
            raise UserError(f"the Hessian-vector products are not deterministic: two products of the same "
                            f"vector differ by {self.determinism_error:.1e} (relative; rounding allows "
                            f"{self.determinism_tolerance:.0e}); the model's forward pass is random")

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (k, dim), or (dim,) for one vector."""
        single = V.dim() == 1
        V = V[None] if single else V
        k = V.shape[0]
        columns = self._columns(V)
        if self._engine is not None:
            out = torch.cat([h.reshape(k, -1) for h in self._engine(columns)], dim=1)
        else:
            out = self._autograd_products(columns, k)
        self.products += V.shape[0]
        self.passes += 1
        if self.active is not None:
            out = out[:, self.active]
        return out[0] if single else out

    def quadratic_form(self, V: torch.Tensor) -> torch.Tensor:
        """v^T H v for each row of V (k, dim): a (k,) tensor. Half the cost of ``H V`` with the
        R-operator (no tangent backward pass); otherwise computed from ``H V``."""
        if self._engine is None:
            return (V.to(self.device, self.dtype) * self(V)).sum(dim=1)
        columns = self._columns(V)
        self.quadratic_forms += V.shape[0]
        self.passes += 1
        return self._engine.quadratic(columns)

    def _columns(self, V: torch.Tensor) -> list[torch.Tensor]:
        """(k, dim) vectors of the operator's space as one (k, *shape) tensor per parameter."""
        if V.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} entries, got {V.shape[1]}")
        V = V.to(self.device, self.dtype)
        if self.active is not None:
            full = torch.zeros(V.shape[0], self.full_dim, dtype=self.dtype, device=self.device)
            full[:, self.active] = V
            V = full
        k = V.shape[0]
        return [c.reshape(k, *shape) for c, shape in zip(torch.split(V, self.sizes, dim=1), self.shapes)]

    def _autograd_products(self, columns: list[torch.Tensor], k: int,
                           batches: Optional[Sequence[Batch]] = None) -> torch.Tensor:
        out = torch.zeros(k, self.full_dim, dtype=self.dtype, device=self.device)
        for x, y in self.batches if batches is None else batches:
            loss = F.cross_entropy(self.model(x), y)
            grads = torch.autograd.grad(loss, self._param_list, create_graph=True)
            if self.strategy == "batched":
                hv = torch.autograd.grad(grads, self._param_list, columns, is_grads_batched=True)
                out.add_(torch.cat([h.reshape(k, -1) for h in hv], dim=1), alpha=len(y) / self.examples)
                continue
            for i in range(k):
                hv = torch.autograd.grad(grads, self._param_list, [c[i] for c in columns], retain_graph=i < k - 1)
                out[i].add_(torch.cat([h.reshape(-1) for h in hv]), alpha=len(y) / self.examples)
        return out

    def gradient_norm(self) -> float:
        """||grad L|| over the data (in the operator's space); a quick sanity number."""
        total = torch.zeros(self.full_dim, dtype=self.dtype, device=self.device)
        for x, y in self.batches:
            g = torch.autograd.grad(F.cross_entropy(self.model(x), y), self._param_list)
            total.add_(torch.cat([gi.reshape(-1) for gi in g]), alpha=len(y) / self.examples)
        return float((total[self.active] if self.active is not None else total).norm())


def tune_allocator() -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the system.

    Hessian-vector products allocate and free the same multi-megabyte buffers thousands of
    times; with glibc's default each one is a fresh ``mmap`` whose pages fault in again, which
    made CPU transposed convolutions about 3x slower here. This sets ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` to 1 GiB for the whole process (the CLIs call it; libraries importing
    ``analysis`` are left alone). Returns whether it applied (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
