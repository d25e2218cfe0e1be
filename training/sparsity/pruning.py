"""Pruning: score the kept weights, then remove exactly the requested number of the lowest.

Scores (higher = more important):
- ``magnitude``: |w|.
- ``random``: uniform noise from a seeded generator (the random-pruning control).
- ``lamp``: Lee et al. (2021), the score Sahu et al. ("Not all lotteries are made equal") prune
  with. Within a layer, sort the kept weights by magnitude; weight u scores w_u^2 / sum_{v >= u} w_v^2, the sum running over the
  kept weights of that layer at least as large as u (u itself included). Scores are comparable
  across layers, so LAMP is meant to be used with global scope.

Only kept weights compete, so each new mask is nested in the previous one. Ties are broken by
position (layer order, then flat index), so pruning is deterministic.

``SCORES`` is the registry of every score ``--score`` accepts: the three above, the scores that
need the network (SNIP, SynFlow: ``training.sparsity.saliency``) and the structured ones that remove whole
channels (L1-filter, network slimming: ``training.sparsity.channels``). A new score is a function plus one
``Score`` line there.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch

from training.sparsity.channels import bn_scale_scores, l1_filter_scores
from training.errors import UserError
from training.hparams import check_fraction
from training.sparsity.masks import Mask
from training.sparsity.saliency import ScoreContext, snip_scores, synflow_scores
from training.engine.seeding import generator

if TYPE_CHECKING:
    from training.hparams import PruningHparams

Scores = dict[str, torch.Tensor]


def magnitude_scores(weights: dict[str, torch.Tensor], mask: Mask, seed: int = 0) -> Scores:
    return {name: weights[name].detach().abs().float() for name in mask}


def random_scores(weights: dict[str, torch.Tensor], mask: Mask, seed: int = 0) -> Scores:
    gen = generator(seed, "random-pruning")
    return {name: torch.rand(m.shape, generator=gen) for name, m in mask.items()}


def lamp_scores(weights: dict[str, torch.Tensor], mask: Mask, seed: int = 0) -> Scores:
    scores = {}
    for name, m in mask.items():
        w2 = (weights[name].detach().double().cpu() ** 2).flatten()
        keep = m.cpu().flatten()
        alive = torch.nonzero(keep).flatten()
        order = torch.argsort(w2[alive], stable=True)
        sorted_w2 = w2[alive][order]
        # suffix sums: for the i-th smallest, the sum of it and everything larger
        suffix = sorted_w2.flip(0).cumsum(0).flip(0)
        layer = torch.zeros_like(w2)
        layer[alive[order]] = torch.where(suffix > 0, sorted_w2 / suffix, torch.zeros_like(suffix))
        scores[name] = layer.reshape(m.shape).float()
    return scores


SCORE_KINDS = {
    "weights": "from the weights alone: fn(weights, mask, seed) -> scores",
    "network": "needs the network (and, for SNIP, data): fn(mask, ScoreContext) -> scores; pruning at "
               "initialisation",
    "structured": "whole channels (training.sparsity.channels): fn(model, mask, channel pairs) -> one score per channel",
}


@dataclass(frozen=True)
class Score:
    """A pruning score (higher = more important): its ``name`` (``--score``), its ``kind`` (a key
    of ``SCORE_KINDS``, which says how ``fn`` is called) and its function. ``rounds``: a network
    score re-scored and pruned over ``ScoreContext.synflow_rounds`` rounds (SynFlow).
    ``per_layer``: a structured score ranks channels within each layer, not across layers."""

    name: str
    kind: str
    fn: Callable[..., object]
    rounds: bool = False
    per_layer: bool = False

    @property
    def needs_network(self) -> bool:
        """Whether the score needs a ``ScoreContext`` (the network), not just the weights."""
        return self.kind != "weights"


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("magnitude", "weights", magnitude_scores),
    Score("random", "weights", random_scores),
    Score("lamp", "weights", lamp_scores),
    Score("snip", "network", snip_scores),
    Score("synflow", "network", synflow_scores, rounds=True),
    Score("l1-filter", "structured", l1_filter_scores, per_layer=True),
    Score("slimming", "structured", bn_scale_scores),
)}
NETWORK_SCORES = tuple(n for n, s in SCORES.items() if s.needs_network)  # need a ScoreContext (the network)
STRUCTURED_SCORES = tuple(n for n, s in SCORES.items() if s.kind == "structured")  # remove whole channels


def score_named(name: str, kind: Optional[str] = None) -> Score:
    """The registered score ``name`` (of ``kind``, when given); ``UserError`` (one line) otherwise."""
    known = [n for n, s in SCORES.items() if kind is None or s.kind == kind]
    if name not in known:
        what = "pruning score" if kind is None else f"{kind} score"
        raise UserError(f"unknown {what} {name!r}; choose one of: {', '.join(known)}")
    return SCORES[name]


def _parse_layer_fractions(text: str) -> list[tuple[str, float]]:
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pattern, sep, value = part.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if not sep or not pattern or rate != rate:
            raise UserError(f"--layer-fractions entry {part!r} is not NAME=FRACTION (e.g. 'features.*=0.15')")
        check_fraction(rate, f"--layer-fractions rate for {pattern!r}", allow_zero=True)
        rules.append((pattern.strip(), rate))
    return rules


def layer_rates(mask: Mask, fraction: float, scope: str, output_name: Optional[str] = None,
                output_fraction: Optional[float] = None, layer_fractions: str = "") -> list[tuple[list[str], float]]:
    """Group the masked layers into (names, fraction) pruning groups.

    A layer matched by ``layer_fractions`` (first matching glob wins) or the output layer with
    ``output_fraction`` set forms its own group; the rest form one group (global scope) or one
    group per layer (layer-wise scope).
    """
    check_fraction(fraction, "pruning fraction")
    if scope not in ("global", "layerwise"):
        raise UserError(f"unknown pruning scope {scope!r}; choose global or layerwise")
    if output_fraction is not None:
        check_fraction(output_fraction, "--output-fraction", allow_zero=True)
    rules = _parse_layer_fractions(layer_fractions)
    for pattern, _ in rules:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in mask):
            raise UserError(f"--layer-fractions pattern {pattern!r} matches no prunable layer; "
                            f"layers are: {', '.join(mask)}")
    groups: list[tuple[list[str], float]] = []
    shared: list[str] = []
    for name in mask:
        rate = next((r for p, r in rules if fnmatch.fnmatchcase(name, p)), None)
        if rate is None and name == output_name and output_fraction is not None:
            rate = output_fraction
        if rate is not None:
            groups.append(([name], rate))
        elif scope == "layerwise":
            groups.append(([name], fraction))
        else:
            shared.append(name)
    if shared:
        groups.append((shared, fraction))
    return groups


def prune_group(scores: Scores, mask: Mask, names: list[str], fraction: float,
                target_density: Optional[float] = None) -> Mask:
    """Remove ``round(fraction * kept)`` of the kept weights in ``names`` with the lowest scores,
    or, with ``target_density``, as many as leave ``round(target_density * size)`` of the group."""
    kept_flat = torch.cat([mask[n].flatten().cpu() for n in names])
    score_flat = torch.cat([scores[n].flatten().cpu().float() for n in names])
    alive = torch.nonzero(kept_flat).flatten()
    if target_density is None:
        n_remove = int(fraction * len(alive) + 0.5)
    else:
        n_remove = max(0, len(alive) - int(target_density * len(kept_flat) + 0.5))
    new_flat = kept_flat.clone()
    if n_remove:
        order = torch.argsort(score_flat[alive], stable=True)
        new_flat[alive[order[:n_remove]]] = False
    out, offset = {}, 0
    for n in names:
        size = mask[n].numel()
        out[n] = new_flat[offset : offset + size].reshape(mask[n].shape).to(mask[n].device)
        offset += size
    return out


def prune(weights: dict[str, torch.Tensor], mask: Mask, fraction: float, *, score: str = "magnitude",
          scope: str = "global", output_name: Optional[str] = None, output_fraction: Optional[float] = None,
          layer_fractions: str = "", seed: int = 0, target_density: Optional[float] = None,
          context: Optional["ScoreContext"] = None) -> Mask:
    """Return a new mask with a ``fraction`` of the kept weights removed (see ``layer_rates``).

    ``weights`` maps parameter names to tensors (a ``state_dict`` works). The result is nested
    in ``mask`` and removes exactly ``round(rate * kept)`` weights from each group. With
    ``target_density`` every group is instead cut to ``round(target_density * group size)``
    weights, so pruning schedules that end at the same density end at the same count.
    ``score="snip"`` or ``"synflow"`` needs ``context`` (the network, and data for SNIP).
    """
    kind = score_named(score)
    if kind.needs_network:
        return _prune_with_network(weights, mask, fraction, kind, scope, output_name, output_fraction,
                                   layer_fractions, target_density, context)
    if target_density is not None:
        check_fraction(target_density, "target density")
        if output_fraction is not None or layer_fractions:
            raise UserError("a target density applies to every layer alike; drop --output-fraction and "
                            "--layer-fractions")
    missing = [n for n in mask if n not in weights]
    if missing:
        raise UserError(f"weights for masked layers are missing: {', '.join(missing)}")
    scores = kind.fn(weights, mask, seed)
    new_mask: Mask = {}
    for names, rate in layer_rates(mask, fraction, scope, output_name, output_fraction, layer_fractions):
        new_mask.update(prune_group(scores, mask, names, rate, target_density))
    return {n: new_mask[n] for n in mask}


def _prune_with_network(weights, mask, fraction, score: Score, scope, output_name, output_fraction, layer_fractions,
                        target_density, context) -> Mask:
    """SNIP in one shot; SynFlow over ``context.synflow_rounds`` rounds, each keeping
    round(kept0 * d^(r/R)) of every group, d the final density, so the end count is exact."""
    if context is None:
        raise UserError(f"the {score.name} score needs the network (and data); it cannot be computed from weights "
                        "alone")
    if score.kind == "structured":
        from training.sparsity.channels import prune_channels

        if target_density is not None or output_fraction is not None or layer_fractions:
            raise UserError("structured pruning takes --fraction (of the remaining channels) only")
        check_fraction(fraction, "pruning fraction")
        return prune_channels(context.model, mask, fraction, score.name)
    if target_density is not None and (output_fraction is not None or layer_fractions):
        raise UserError("a target density applies to every layer alike; drop --output-fraction and --layer-fractions")
    groups = layer_rates(mask, fraction, scope, output_name, output_fraction, layer_fractions)
    finals = {tuple(names): (1 - rate) for names, rate in groups}
    start = {tuple(names): sum(int(mask[n].sum()) for n in names) for names, _ in groups}
    sizes = {tuple(names): sum(mask[n].numel() for n in names) for names, _ in groups}
    rounds = context.synflow_rounds if score.rounds else 1
    current = dict(mask)
    for r in range(1, rounds + 1):
        scores = score.fn(current, context)
        new: Mask = {}
        for names, _ in groups:
            key = tuple(names)
            if target_density is not None:
                goal = int(target_density ** (r / rounds) * sizes[key] + 0.5)
            else:
                goal = int(start[key] * finals[key] ** (r / rounds) + 0.5)
            alive = sum(int(current[n].sum()) for n in names)
            remove = (alive - goal) / alive if alive else 0.0
            new.update(prune_group(scores, current, names, max(remove, 0.0)))
        current = {n: new[n] for n in mask}
    return current


def prune_by(hp: "PruningHparams", weights: dict[str, torch.Tensor], mask: Mask, output_layer: Optional[str], *,
             seed: int = 0, target_density: Optional[float] = None, context: Optional["ScoreContext"] = None,
             score: Optional[str] = None) -> Mask:
    """``prune`` with the settings of ``hp`` (``score`` overrides ``hp.score``)."""
    return prune(weights, mask, hp.fraction, score=score or hp.score, scope=hp.scope, output_name=output_layer,
                 output_fraction=hp.output_fraction, layer_fractions=hp.layer_fractions, seed=seed,
                 target_density=target_density, context=context)
