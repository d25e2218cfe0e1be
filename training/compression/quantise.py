"""Weight sharing (Han, Mao & Dally, "Deep Compression", ICLR 2016, sec. 3): k-means over each
layer's surviving weights (never across layers), centroids initialised linearly over
[min, max] (the paper's best initialisation), and fine-tuning of the shared values, the gradient
of a centroid being the sum of the gradients of the weights that share it (the paper's eq. 3),
with the mask and the assignments fixed.

A b-bit layer has 2 ** b codes: code 0 is the exact zero (the filler entries of the sparse
storage use it) and the other 2 ** b - 1 are shared values.
"""
from __future__ import annotations

import fnmatch
from typing import Optional

import numpy as np
import torch
from torch import nn

from training.errors import UserError
from training.sparsity.masks import Mask, WeightForm

MAX_BITS = 16


def layer_kind(model: nn.Module, name: str) -> str:
    """``"conv"`` for a convolution's weight, ``"fc"`` for a linear layer's (``name`` as in the state dict)."""
    module = dict(model.named_modules())[name.rpartition(".")[0]]
    return "conv" if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else "fc"


def check_bits(value: int, what: str) -> None:
    """``UserError`` unless ``value`` is a bit width in [1, 16]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BITS:
        raise UserError(f"{what} must be a whole number of bits from 1 to {MAX_BITS}, got {value}")


def parse_layer_bits(text: str, names: list[str], flag: str = "--layer-bits") -> list[tuple[str, int]]:
    """``'features.*=6,classifier.*=4'`` -> [(glob, bits)], each glob matching at least one of
    ``names`` and each width in [1, 16]; ``UserError`` (one line) otherwise."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pattern, sep, value = part.partition("=")
        pattern = pattern.strip()
        try:
            bits = int(value)
        except ValueError:
            bits = None
        if not sep or not pattern or bits is None:
            raise UserError(f"{flag} entry {part!r} is not GLOB=BITS (e.g. 'features.*=6')")
        check_bits(bits, f"{flag} bits for {pattern!r}")
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise UserError(f"{flag} pattern {pattern!r} matches no prunable layer; layers are: {', '.join(names)}")
        rules.append((pattern, bits))
    return rules


def bits_per_layer(model: nn.Module, names: list[str], conv: int, fc: int, rules: list[tuple[str, int]]) -> dict[str, int]:
    """The bit width of every layer of ``names``: the first matching glob of ``rules``, else
    ``conv`` or ``fc`` by the layer's kind."""
    out = {}
    for name in names:
        out[name] = next((b for p, b in rules if fnmatch.fnmatchcase(name, p)),
                         conv if layer_kind(model, name) == "conv" else fc)
    return out


def kmeans_linear(values: np.ndarray, k: int, max_iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means (Lloyd) of ``values`` with ``k`` centroids initialised linearly over [min, max];
    return (centroids as float32, ascending; the index of every value's centroid). A centroid
    that loses all its values keeps its place. Iterates until no assignment changes."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(values) == 0 or k < 1:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    centroids = np.linspace(values.min(), values.max(), k)
    assign = None
    for _ in range(max_iterations):
        edges = (centroids[1:] + centroids[:-1]) / 2  # centroids stay sorted: 1-D Lloyd keeps their order
        new = np.searchsorted(edges, values, side="left")
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        sums = np.bincount(assign, weights=values, minlength=k)
        counts = np.bincount(assign, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids.astype(np.float32), assign


class SharedWeights(WeightForm):
    """A layer's weight formed from its shared values: ``codebook[assign]`` where kept, 0 elsewhere.

    The raw weight is ignored; indexing ``codebook`` by ``assign`` makes autograd add up the
    gradients of the weights that share a value, which is the paper's eq. 3."""

    def __init__(self, codebook: torch.Tensor, assign: torch.Tensor, keep: torch.Tensor):
        super().__init__()
        self.codebook = nn.Parameter(codebook.detach().clone().float())
        self.register_buffer("assign", assign.detach().clone().long())
        self.register_buffer("keep", keep.detach().clone().bool())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.codebook.numel() == 0:
            return torch.zeros_like(w)
        return torch.where(self.keep, self.codebook[self.assign], torch.zeros((), dtype=w.dtype, device=w.device))

    def binary(self) -> torch.Tensor:
        return self.keep.clone()

    def decoded(self) -> torch.Tensor:
        """The layer's weights (detached)."""
        with torch.no_grad():
            return self.forward(torch.zeros(self.keep.shape, device=self.keep.device))


def quantise_layer(weight: torch.Tensor, keep: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with linear initialisation over the kept entries of ``weight`` with 2 ** bits - 1
    centroids; return (codebook, assignment tensor of the weight's shape, 0 where not kept)."""
    kept = weight.detach().cpu()[keep.cpu()].double().numpy()
    centroids, assign = kmeans_linear(kept, (1 << bits) - 1)
    full = torch.zeros(weight.shape, dtype=torch.long)
    full[keep.cpu()] = torch.from_numpy(assign).long()
    return torch.from_numpy(centroids), full


def share_weights(model: nn.Module, mask: Mask, bits: dict[str, int]) -> dict[str, SharedWeights]:
    """Quantise every layer of ``mask`` of ``model`` (in place) and make its weight the
    ``SharedWeights`` form of its codebook; only the codebooks stay trainable (the raw weights of
    those layers no longer matter and are frozen, as is every other parameter). Returns the forms
    by weight name."""
    from training.sparsity.masks import parametrize_weights

    def make(name: str, w: torch.Tensor) -> SharedWeights:
        book, assign = quantise_layer(w, mask[name], bits[name])
        return SharedWeights(book, assign, mask[name]).to(w.device)

    for p in model.parameters():
        p.requires_grad_(False)
    return parametrize_weights(model, make, list(mask))


def check_threshold(quality: Optional[float]) -> None:
    """``UserError`` unless ``quality`` is None or a positive finite number."""
    if quality is not None and not (np.isfinite(quality) and quality > 0):
        raise UserError(f"--prune-quality must be a positive number (the threshold in units of each layer's "
                        f"weight standard deviation), got {quality}")


def threshold_mask(state: dict[str, torch.Tensor], mask: Mask, quality: float) -> Mask:
    """Han et al.'s pruning rule: in every layer of ``mask``, keep the kept weights whose magnitude
    exceeds ``quality`` times the standard deviation of the layer's kept weights."""
    out = {}
    for name, keep in mask.items():
        w = state[name].detach().to(keep.device)
        kept = w[keep]
        std = float(kept.double().std()) if kept.numel() > 1 else 0.0
        out[name] = keep & (w.abs() > quality * std)
    return out
