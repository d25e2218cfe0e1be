"""The loss Hessian of a model over a data set, as a batched linear operator.

H is the exact Hessian of the mean cross-entropy over all the examples given, accumulated batch
by batch with weight |batch| / N. For each batch, one forward pass and one differentiable
backward pass are shared by all k vectors of a call; then (reverse over reverse) either each
vector costs one more backward pass through that graph (``strategy="loop"``, fastest measured on
a CPU, ahead of ``vmap`` of ``jvp``-of-``grad``), or all k go through it at once with
``is_grads_batched`` (``strategy="batched"``, the default on CUDA, where small layers are
bound by kernel launches).

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
from training.masks import Mask

Batch = tuple[torch.Tensor, torch.Tensor]


class HessianOperator:
    """``H @ v`` for the mean loss of ``model`` over ``batches``; call it on a (k, dim) tensor.

    ``mode="eval"`` (default) uses batch norm running statistics and no dropout; ``mode="train"``
    normalises each batch with its own statistics (running statistics are not touched).
    Parameters that are frozen or that the loss does not reach are left out and listed in
    ``skipped``.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], space: str = "full",
                 mask: Optional[Mask] = None, mode: str = "eval", dtype: Optional[torch.dtype] = None,
                 strategy: str = "auto"):
        if space not in ("full", "ticket"):
            raise UserError(f"unknown space {space!r}; choose full or ticket")
        if mode not in ("eval", "train"):
            raise UserError(f"unknown mode {mode!r}; choose eval or train")
        if not batches:
            raise UserError("the Hessian needs at least one batch of data")
        model = copy.deepcopy(model)
        if dtype is not None:
            model = model.to(dtype)
        if mode == "train":
            model.train()
            replace_all_batch_norm_modules_(model)  # batch statistics, no running-stat updates
        else:
            model.eval()
        if strategy not in ("auto", "loop", "batched"):
            raise UserError(f"unknown HVP strategy {strategy!r}; choose auto, loop or batched")
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
        self.strategy = strategy if strategy != "auto" else ("batched" if self.device.type == "cuda" else "loop")

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
        self.passes = 0  # passes over the data

        self._param_list = [named[n] for n in self.names]

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (k, dim), or (dim,) for one vector."""
        single = V.dim() == 1
        V = V[None] if single else V
        if V.shape[1] != self.dim:
            raise ValueError(f"vectors must have {self.dim} entries, got {V.shape[1]}")
        V = V.to(self.device, self.dtype)
        if self.active is not None:
            full = torch.zeros(V.shape[0], self.full_dim, dtype=self.dtype, device=self.device)
            full[:, self.active] = V
            V = full
        k = V.shape[0]
        columns = [c.reshape(k, *shape) for c, shape in zip(torch.split(V, self.sizes, dim=1), self.shapes)]
        out = torch.zeros(k, self.full_dim, dtype=self.dtype, device=self.device)
        for x, y in self.batches:
            loss = F.cross_entropy(self.model(x), y)
            grads = torch.autograd.grad(loss, self._param_list, create_graph=True)
            if self.strategy == "batched":
                hv = torch.autograd.grad(grads, self._param_list, columns, is_grads_batched=True)
                out.add_(torch.cat([h.reshape(k, -1) for h in hv], dim=1), alpha=len(y) / self.examples)
                continue
            for i in range(k):
                hv = torch.autograd.grad(grads, self._param_list, [c[i] for c in columns], retain_graph=i < k - 1)
                out[i].add_(torch.cat([h.reshape(-1) for h in hv]), alpha=len(y) / self.examples)
        self.products += V.shape[0]
        self.passes += 1
        if self.active is not None:
            out = out[:, self.active]
        return out[0] if single else out

    def gradient_norm(self) -> float:
        """||grad L|| over the data (in the operator's space); a quick sanity number."""
        total = torch.zeros(self.full_dim, dtype=self.dtype, device=self.device)
        for x, y in self.batches:
            g = torch.autograd.grad(F.cross_entropy(self.model(x), y), self._param_list)
            total.add_(torch.cat([gi.reshape(-1) for gi in g]), alpha=len(y) / self.examples)
        return float((total[self.active] if self.active is not None else total).norm())
