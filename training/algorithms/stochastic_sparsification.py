"""Iterative stochastic sparsification (Savarese, Silva & Maire, "Winning the lottery with continuous
sparsification", Alg. 2, after Zhou et al., "Deconstructing lottery tickets"): learn a distribution
over masks by gradient descent, remove for good every weight whose mask parameter fell, rewind,
repeat; train each round's ticket like an IMP level.

Every masked weight ``w`` gets a mask parameter ``s`` of its shape. Each training step draws
``m ~ Bernoulli(sigmoid(s))`` (``BernoulliMask``: ``m = [u < sigmoid(s)]`` with ``u`` uniform noise
from a stream seeded by (run seed, round, iteration), so a run and its resumed copy draw the same
masks) and the network uses ``w * m``; the loss adds ``lambda * ||sigmoid(s)||_1``. The gradient
reaches ``s`` by the straight-through estimator (Bengio et al.): the sampling is taken as the
identity on the probability ``p = sigmoid(s)``, so ``dL/ds = dL/dm * sigmoid(s) * (1 - sigmoid(s))``.
``s`` is trained by plain SGD with its own rate (the paper: 20; 100 for supermasks on frozen
weights) and no weight decay. Evaluations use the mode, ``w * [sigmoid(s) > 0.5]``.

Rounds (Alg. 2): round 1 starts from W^0 and s = s_0; after round R every ``s`` that ended below
its initial value s_0 is set to -inf (sigmoid(-inf) = 0: the weight is never drawn again and gets
no gradient), the others keep their value s_T (Alg. 2 resets nothing else), and the weights rewind
to W^k. Round R's ticket is the mode ``[sigmoid(s_T) > 0.5]`` (``--ticket mode``, the default: a
deterministic choice) or one draw ``m ~ Bernoulli(sigmoid(s_T))`` from a seeded stream
(``--ticket sample``, Alg. 2's step 3), trained like an IMP level from W^k of the dense network
(level 0) with the pruned weights held at zero.

The run folder is continuous sparsification's (``training.algorithms.continuous_sparsification``), under
``iss-HASH/``: level_0 (the dense network, W^k), per round ``level_R/search.pt`` (the search
network, weights zero outside its mode), ``level_R/scores.pt`` (s_T, the ticket's mask and the
raw weights; the same file format as continuous sparsification's), the ticket's mask/init/rewind/
final, ``search.jsonl`` and ``summary.json`` with the search cost. ``--freeze-weights`` learns only
the mask over W^0 (Savarese et al. Fig. 2, Zhou et al.'s supermasks), as ``cs --freeze-weights``
does: every checkpoint's weights are W^0 inside the mask and zero outside.

Departures from the paper: none in the algorithm; where it is silent, the choices are stated
above (the estimator, survivors keep s_T, removal compares with s_0, evaluation by the mode).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from training.algorithms.mask_search import MaskSearch, check_frozen, prepare_search, run_mask_search, search_flags
from training.commands import Command, run_flags
from training.engine.extensions import Extension, ParamGroup
from training.engine.runs import Run
from training.engine.seeding import derive_seed, generator
from training.engine.steps import Step
from training.errors import UserError
from training.hparams import Config
from training.sparsity.masks import WeightForm, _StraightThrough, parametrize_weights

SAVARESE = 'Savarese et al., "Winning the lottery with continuous sparsification"'
SECTIONS = ("dataset", "model", "training")
TICKETS = ("mode", "sample")
PAPER_MASK_LR, PAPER_FROZEN_MASK_LR = 20.0, 100.0


def _f(default: Any, help: str, choices: Optional[list[str]] = None, flag: Optional[str] = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class ISSHparams:
    """The hyperparameters of iterative stochastic sparsification; fields left at their default are
    left out of the run's hash."""

    penalty: float = _f(1e-8, "lambda: weight of the L1 penalty on the mask probabilities sigmoid(s), summed over "
                              "masked weights (the paper's 1e-8)", flag="--lambda")
    mask_init: float = _f(1.0, "s_0: initial value of every mask parameter (the paper's 1; its supermasks vary it "
                               "from -5 to 5 to set the sparsity)")
    mask_lr: Optional[float] = _f(None, f"learning rate of plain SGD on the mask parameters (default: the paper's "
                                        f"{PAPER_MASK_LR:g}, {PAPER_FROZEN_MASK_LR:g} with --freeze-weights)")
    mask_layers: str = _f("*", "weights that carry a mask: comma-separated globs on prunable weight names")
    dense_layers: str = _f("", "weights left dense (no mask parameter), globs; e.g. 'fc.weight'")
    rewind: str = _f("0", "W^k: the weights rewind to the dense network after k steps between rounds, and the "
                          "tickets train from there: 0, '500it' or '2ep'", flag="-k")
    ticket: str = _f("mode", "round R's ticket: mode, [sigmoid(s_T) > 0.5]; or sample, one seeded draw from "
                             "Bernoulli(sigmoid(s_T)) (Alg. 2's step 3)", list(TICKETS))
    freeze_weights: bool = _f(False, "learn only the mask: every parameter stays at W^0 (a supermask: Savarese et "
                                     "al. Fig. 2's stochastic sparsification, after Zhou et al.); no dense training, "
                                     "the tickets are evaluated untrained")

    def canonical(self) -> str:
        """``iss(...)``: the fields that differ from their defaults, the run's extra identity."""
        return "iss(" + ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                                 if getattr(self, f.name) != f.default) + ")"

    def learning_rate(self) -> float:
        """The SGD learning rate of the mask parameters."""
        if self.mask_lr is not None:
            return self.mask_lr
        return PAPER_FROZEN_MASK_LR if self.freeze_weights else PAPER_MASK_LR


def check_iss(hp: ISSHparams) -> None:
    """Raise ``UserError`` (one line naming the flag) for settings that mean nothing."""
    if not (math.isfinite(hp.penalty) and hp.penalty >= 0):
        raise UserError(f"--lambda must be non-negative, got {hp.penalty}")
    if not math.isfinite(hp.mask_init):
        raise UserError(f"--mask-init must be a finite number, got {hp.mask_init}")
    if hp.mask_lr is not None and not (math.isfinite(hp.mask_lr) and hp.mask_lr > 0):
        raise UserError(f"--mask-lr must be positive, got {hp.mask_lr}")
    if hp.ticket not in TICKETS:
        raise UserError(f"--ticket must be mode or sample, got {hp.ticket!r}")
    Step.parse(hp.rewind, "-k/--rewind")
    check_frozen(hp)


def remove_fallen(scores: torch.Tensor, initial: float) -> torch.Tensor:
    """Alg. 2's step between rounds: -inf wherever ``scores`` ended below ``initial`` (s_0), the
    score itself elsewhere (removed weights stay removed: -inf is below every s_0)."""
    return torch.where(scores < initial, torch.full_like(scores, -math.inf), scores)


class BernoulliMask(WeightForm):
    """``w * m`` with ``m ~ Bernoulli(sigmoid(s))`` while training and the straight-through gradient
    ``dL/ds = dL/dm * sigmoid'(s)``; ``w * [s > 0]`` (the mode) in eval mode.

    ``noise`` (uniform in [0, 1), the weight's shape) is what the next training forward passes
    compare ``sigmoid(s)`` with; an extension sets it before each step from a seeded stream. When it
    is None a training forward draws its own from the global generator. ``chosen``, when set, is the
    binary mask ``binary()`` reports (a sampled ticket) instead of the mode."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = nn.Parameter(scores.detach().clone())
        self.noise: Optional[torch.Tensor] = None
        self.chosen: Optional[torch.Tensor] = None

    def probability(self) -> torch.Tensor:
        """sigmoid(s): the probability that each weight is drawn, in [0, 1]."""
        return torch.sigmoid(self.scores)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return w * (self.scores.detach() > 0)
        p = self.probability()
        u = self.noise if self.noise is not None else torch.rand_like(p)
        return w * _StraightThrough.apply(p, u < p.detach())

    def binary(self) -> torch.Tensor:
        return (self.chosen if self.chosen is not None else self.scores.detach() > 0).clone()


def sample_ticket(scores: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One draw of ``Bernoulli(sigmoid(scores))`` as a bool tensor, from the CPU generator ``g``."""
    p = torch.sigmoid(scores.detach().cpu().float())
    return (torch.rand(p.shape, generator=g) < p).to(scores.device)


class StochasticSparsification(Extension):
    """What ISS adds to ``train()``: a ``BernoulliMask`` on each of ``names`` (scores from ``scores``,
    else s_0), fresh seeded noise before every step (a function of the run seed, the round and the
    iteration: a resumed run draws the same masks), the L1 penalty on sigmoid(s) and plain SGD on
    the scores (no weight decay, no momentum)."""

    def __init__(self, model: nn.Module, hp: ISSHparams, names: list[str], seed: int, round: int,
                 scores: Optional[dict[str, torch.Tensor]] = None):
        self.hp, self.seed, self.round = hp, seed, round

        def make(name: str, w: torch.Tensor) -> BernoulliMask:
            return BernoulliMask(scores[name].to(w) if scores is not None else torch.full_like(w, hp.mask_init))

        self.forms: dict[str, BernoulliMask] = parametrize_weights(model, make, names)  # type: ignore[assignment]

    def param_groups(self) -> list[ParamGroup]:
        lr = self.hp.learning_rate()
        return [ParamGroup([form.scores for form in self.forms.values()],
                           optimizer=lambda p: torch.optim.SGD(p, lr=lr))]

    def loss(self) -> Optional[torch.Tensor]:
        if not self.hp.penalty:
            return None
        return self.hp.penalty * sum(form.probability().sum() for form in self.forms.values())

    def before_step(self, t: int) -> None:
        first = next(iter(self.forms.values())).scores
        g = torch.Generator(device=first.device).manual_seed(derive_seed(self.seed, "iss-mask", self.round, t))
        for form in self.forms.values():
            form.noise = torch.rand(form.scores.shape, generator=g, device=form.scores.device,
                                    dtype=form.scores.dtype)

    def scores(self) -> dict[str, torch.Tensor]:
        return {name: form.scores.detach().clone() for name, form in self.forms.items()}


# ---------------------------------------------------------------------------------------------
# The run


class ISSSearch(MaskSearch):
    """Iterative stochastic sparsification's rounds for ``run_mask_search``: round 1 from W^0 and s_0,
    later rounds from W^k and the previous round's scores with the fallen ones at -inf; the ticket is
    the mode (or one seeded sample, ``--ticket sample``)."""

    name = "iss"
    extra_column = ("search alive", "soft_density")

    def __init__(self, hp: ISSHparams, seed: int):
        self.hp, self.seed = hp, seed

    def start(self, run: Run, r: int, previous: Optional[dict], k: int):
        if previous is None:
            return None, 0, None
        scores = {n: remove_fallen(s.to(run.device), self.hp.mask_init) for n, s in previous["scores"].items()}
        return run.load_state(0, "rewind"), k, scores

    def extension(self, model: nn.Module, run: Run, r: int, names: list[str],
                  scores: Optional[dict[str, torch.Tensor]]) -> Extension:
        return StochasticSparsification(model, self.hp, names, self.seed, r, scores)

    def finish(self, run: Run, r: int, ext: Extension):
        assert isinstance(ext, StochasticSparsification)
        final = ext.scores()
        if self.hp.ticket == "sample":
            g = generator(self.seed, "iss-ticket", r)
            for name, form in ext.forms.items():
                form.chosen = sample_ticket(final[name], g)
        ticket = {name: form.binary() for name, form in ext.forms.items()}
        s0 = self.hp.mask_init
        alive = sum(int(torch.isfinite(s).sum()) for s in final.values()) / sum(s.numel() for s in final.values())
        fallen = sum(int((s < s0).sum()) for s in final.values())  # removed before the next round
        fallen_now = sum(int(((s < s0) & torch.isfinite(s)).sum()) for s in final.values())
        not_binary = sum(int(((p > 1e-6) & (p < 1 - 1e-6)).sum()) for p in (torch.sigmoid(s) for s in final.values()))
        return final, ticket, {"soft_density": alive, "soft_not_binary": not_binary, "removed_total": fallen,
                               "removed_now": fallen_now, "ticket": self.hp.ticket}


def run_iss(config: Config, iss: Optional[ISSHparams] = None, rounds: int = 3, *, out: str | Path = "runs",
            data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
            on_epoch_end: Optional[Callable[[int], None]] = None,
            after_step: Optional[Callable[[int, int], None]] = None) -> Run:
    """Run (or resume) ``rounds`` rounds of iterative stochastic sparsification and train each round's
    ticket (``training.algorithms.mask_search.run_mask_search``); return the run with ``summary.json``
    written (accuracies in [0, 1], costs in epochs and MACs). ``rounds`` is not part of the run's
    identity. ``after_step(round, t)`` is called after every search step (tests use it to kill a run)."""
    iss = iss or ISSHparams()
    check_iss(iss)
    return run_mask_search(config, ISSSearch(iss, config.training.seed), rounds, out=out, data_dir=data_dir,
                           device=device, progress=progress, on_epoch_end=on_epoch_end, after_step=after_step)


# ---------------------------------------------------------------------------------------------
# The command


def _prepare(args: argparse.Namespace):
    return prepare_search(args, ISSHparams, "iss_", check_iss, run_iss, SECTIONS)


ISS = Command(
    "iss", "iterative stochastic sparsification (Savarese et al.): learn Bernoulli masks, remove what falls, rewind",
    "Iterative stochastic sparsification (" + SAVARESE + ", Alg. 2): train the weights and a mask parameter s per "
    "weight, the network using w * m with m ~ Bernoulli(sigmoid(s)) drawn every step (seeded), the gradient reaching "
    "s by the straight-through estimator and the loss adding lambda * ||sigmoid(s)||_1; after each round every s "
    "that fell below s_0 is set to -inf (removed for good) and the weights rewind to W^k. Each round's ticket, the "
    "mode [sigmoid(s) > 0.5] by default, is trained like an IMP level, from W^k of the dense network with the "
    "pruned weights held at zero; summary.json holds the tickets' accuracy and the search cost. The defaults are "
    "the paper's: s_0 = 1, SGD with learning rate 20 on s, lambda = 1e-8.",
    """\
examples:
  python -m training iss                                  # demo: MNIST-1D CNN, 3 rounds
  python -m training iss --rounds 5 --ticket sample       # 5 rounds; tickets drawn from Bernoulli(sigmoid(s))
  python -m training iss --freeze-weights --mask-init 0   # a supermask on frozen W^0 (SGD lr 100 on s)
  python -m training iss --preset iss_conv6_cifar10 --device cuda     # the paper's Conv-6 setup (30 rounds)
  python -m training iss --preset ss_supermask_conv6_cifar10 --mask-init 0 --device cuda   # its Fig. 2 supermasks

Run the same command again to resume; raise --rounds to add rounds. The search rounds log to
search.jsonl (evaluated with the mode); their networks are level_R/search.pt; summary.json holds each
ticket's search cost (epochs, backprop MACs) and "soft_density", the fraction of weights not yet
removed (s > -inf).
""",
    run_flags(search_flags(ISSHparams, "iterative stochastic sparsification hyperparameters", "iss_"), SECTIONS), _prepare)
