"""Continuous sparsification (Savarese, Silva & Maire, "Winning the lottery with continuous
sparsification", Alg. 3 and sec. 3-4): learn the mask by gradient descent, then train each
round's binary ticket like an IMP level.

Every masked weight ``w`` gets a mask parameter ``s`` of its shape; the network uses
``w * sigmoid(beta * s)`` (``training.sparsity.masks.SigmoidMask``) and the loss adds
``lambda * ||sigmoid(beta * s)||_1``. Within a round beta grows exponentially from beta_0 to beta_T:
per iteration, ``beta_t = beta_0 * (beta_T / beta_0) ** (t / T)`` (the paper's ``beta_T ** (t / T)``
for beta_0 = 1; the default), or once per epoch, epoch ``e`` of ``E`` at
``beta_0 * (beta_T / beta_0) ** (e / (E - 1))`` (the authors' code). After a round,
``s <- min(beta_T * s_T, s_0)`` and ``beta <- beta_0``; the weights carry over (the default, the
paper's ResNet setting) or are rewound to W^k (``--search-rewind``).

A run folder ``cs-HASH/`` holds:

    level_0/           the dense network trained from W^0 (init.pt, rewind.pt = W^k, final.pt): the
                       baseline and the W^k every ticket starts from, bit-identical to level 0 of an
                       IMP run with the same dataset, model and training settings
    level_R/search.pt  the search network at the end of round R: raw weights, zero outside the
                       binary mask b(s) = [s > 0], and that mask (every analysis tool reads it)
    level_R/scores.pt  the raw weights and mask scores s_T of round R (what round R + 1 starts from)
    level_R/search_state.pt  resume state while round R searches
    level_R/mask.pt, init.pt, rewind.pt, final.pt   round R's ticket b(s_T), trained exactly like an
                       IMP level: from W^k (iteration k) to T with the pruned weights held at zero
    search.jsonl       the search rounds' metrics (``level`` = round, soft mask at the current beta)
    summary.json       IMP's per-level summary plus, per ticket, its search cost (epochs and
                       backpropagation MACs, cumulative, counted like every run's) under ``search``

Differences from the authors' public code (github.com/lolemacs/continuous-sparsification), each
documented in the README; the paper's choice is the default:

- Reset: the code calls ``prune()`` after setting the temperature back to 1, so it computes
  ``min(s_T, s_0)``, not the paper's ``min(beta_T * s_T, s_0)``: ``--reset code``.
- Mask scaling: the code multiplies the mask by ``1 / sigmoid(s_0)`` so that the effective weights
  start equal to ``w``: ``--scale-mask``. The ticket is unaffected (it is ``b(s)`` on W^k).
- Sparsity: the code reports the fraction of soft-mask entries that underflowed to exactly 0 during
  the search; the density here is always that of ``b(s)``; the code's count is recorded beside it
  (``soft_density`` in ``summary.json``), for comparison only.
- W^k: the code takes the rewind point from the first search round (weights trained under the
  soft mask); here it is the dense network's W^k (level 0), the point IMP's tickets start from, so
  CS and IMP tickets are compared on equal terms.
- Optimizer state: the code keeps its optimizers across rounds; here every round starts afresh,
  as Alg. 3's "go back to step 2" reads.

Supermasks on frozen weights (``--freeze-weights``; Savarese et al. Fig. 2 after Zhou et al.,
"Deconstructing lottery tickets"): only the mask parameters are trained. Every parameter of the
network (weights, biases, batch-norm scales and shifts) stays at W^0 bit for bit; batch-norm running
statistics, which are buffers, not weights, still track the batches. Nothing else is trained, so
the run has no dense level and no ticket training: ``level_0`` is W^0 evaluated as it is (init.pt,
rewind.pt and final.pt all W^0, iteration 0), and round R's ``mask.pt``/``init.pt``/``rewind.pt``/
``final.pt`` are W^0 under b(s_T), evaluated untrained: the supermask. Inside the mask every
checkpoint's weights equal W^0; outside they are zero (``masked_weights = "zero"``), and the full
W^0 is in ``level_0/init.pt`` and in every ``scores.pt``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from training.algorithms.mask_search import (
    MaskSearch,
    check_frozen,
    prepare_search,
    search_flags,
    run_mask_search,
)
from training.commands import Command, run_flags
from training.engine.extensions import Extension, ParamGroup
from training.engine.loop import Schedule
from training.engine.runs import Run
from training.engine.steps import Step
from training.errors import UserError
from training.hparams import Config, TrainingHparams
from training.sparsity.masks import SigmoidMask, parametrize_weights

SAVARESE = 'Savarese et al., "Winning the lottery with continuous sparsification"'
SECTIONS = ("dataset", "model", "training")
# The paper's Conv-6 runs move each score by at most 3e-4 x ~33,000 Adam steps per round (about 10);
# the MNIST-1D default has 960 steps per round (32 per epoch x 30), so its rate is 5e-3 (at most about 5).
DEFAULT_ADAM_MASK_LR = 5e-3


def _f(default: Any, help: str, choices: Optional[list[str]] = None, flag: Optional[str] = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class CSHparams:
    """The hyperparameters of continuous sparsification; fields left at their default are left out
    of the run's hash (like every section of ``training.hparams.Config``)."""

    penalty: float = _f(5e-6, "lambda: weight of the L1 penalty on the soft mask, summed over masked weights "
                              "(paper: 1e-10 Conv-6, 1e-8 ResNet-18)", flag="--lambda")
    mask_init: float = _f(0.05, "s_0: initial value of every mask parameter; it sets the sparsity the search "
                                "finds (paper: -0.03 to 0.03)")
    beta_initial: float = _f(1.0, "beta_0: temperature at the start of every round")
    beta_final: float = _f(1000.0, "beta_T: temperature at the end of every round (paper: 100 Conv-6, 200 ResNet-18; "
                                   "1000 here, so that the soft mask ends binary after the MNIST-1D default's 960 "
                                   "steps per round)")
    beta_schedule: str = _f("iteration", "grow beta once per iteration (the paper's beta_T^(t/T)) or once per epoch "
                                         "(the authors' code)", ["iteration", "epoch"])
    mask_optimizer: str = _f("adam", "optimizer of the mask parameters: adam (its own rate, --mask-lr) or sgd "
                                     "(the weights' momentum and learning-rate schedule, or a constant --mask-lr)",
                             ["adam", "sgd"])
    mask_lr: Optional[float] = _f(None, f"learning rate of the mask parameters (default: {DEFAULT_ADAM_MASK_LR:g} with "
                                        f"adam, the paper's 3e-4 scaled to this scale's fewer steps; the weights' "
                                        f"schedule with sgd)")
    mask_layers: str = _f("*", "weights that carry a mask: comma-separated globs on prunable weight names")
    dense_layers: str = _f("", "weights left dense (no mask parameter), globs; e.g. '*shortcut*,fc.weight' "
                               "(the paper's ResNet-18)")
    rewind: str = _f("0", "tickets are trained from W^k, the dense network after k steps: 0, '500it' or '2ep'",
                     flag="-k")
    search_rewind: bool = _f(False, "rewind the weights to W^k between rounds (the paper's optional step; its "
                                    "ResNet runs do not)")
    reset: str = _f("paper", "between rounds: paper, s <- min(beta_T * s_T, s_0); code, s <- min(s_T, s_0) (the "
                             "authors' code)", ["paper", "code"])
    scale_mask: bool = _f(False, "multiply the mask by 1 / sigmoid(s_0) so that it starts at 1 (the authors' code)")
    freeze_weights: bool = _f(False, "learn only the mask: every parameter stays at W^0 (a supermask, Savarese et "
                                     "al. Fig. 2 after Zhou et al.); no dense training, the tickets are evaluated "
                                     "untrained")

    def canonical(self) -> str:
        """``cs(...)``: the fields that differ from their defaults, the run's extra identity."""
        return "cs(" + ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                                if getattr(self, f.name) != f.default) + ")"


def check_cs(hp: CSHparams) -> None:
    """Raise ``UserError`` (one line naming the flag) for settings that mean nothing."""
    for name, value in (("--beta-initial", hp.beta_initial), ("--beta-final", hp.beta_final)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value}")
    if hp.beta_final < hp.beta_initial:
        raise UserError(f"--beta-final (beta_T = {hp.beta_final}) must be at least --beta-initial "
                        f"(beta_0 = {hp.beta_initial}): the temperature grows during a round")
    if not (math.isfinite(hp.penalty) and hp.penalty >= 0):
        raise UserError(f"--lambda must be non-negative, got {hp.penalty}")
    if not math.isfinite(hp.mask_init):
        raise UserError(f"--mask-init must be a finite number, got {hp.mask_init}")
    if hp.mask_lr is not None and not (math.isfinite(hp.mask_lr) and hp.mask_lr > 0):
        raise UserError(f"--mask-lr must be positive, got {hp.mask_lr}")
    if hp.beta_schedule not in ("iteration", "epoch"):
        raise UserError(f"--beta-schedule must be iteration or epoch, got {hp.beta_schedule!r}")
    if hp.mask_optimizer not in ("adam", "sgd"):
        raise UserError(f"--mask-optimizer must be adam or sgd, got {hp.mask_optimizer!r}")
    if hp.reset not in ("paper", "code"):
        raise UserError(f"--reset must be paper or code, got {hp.reset!r}")
    Step.parse(hp.rewind, "-k/--rewind")
    check_frozen(hp)


def beta_at(t: int, start: int, end: int, iterations_per_epoch: int, hp: CSHparams) -> float:
    """The temperature of the network at iteration ``t`` of a round that runs from ``start`` to
    ``end``: beta_0 at ``start``, beta_T at ``end`` (per epoch: the round's last epoch is at beta_T)."""
    if hp.beta_schedule == "iteration":
        progress = (t - start) / max(1, end - start)
    else:
        epochs = -(-(end - start) // iterations_per_epoch)
        epoch = min((t - start) // iterations_per_epoch, epochs - 1)
        progress = epoch / (epochs - 1) if epochs > 1 else 1.0
    return hp.beta_initial * (hp.beta_final / hp.beta_initial) ** min(max(progress, 0.0), 1.0)


def reset_scores(scores: torch.Tensor, hp: CSHparams) -> torch.Tensor:
    """The mask parameters a new round starts from: ``min(beta_T * s_T, s_0)`` (``--reset paper``) or
    ``min(s_T, s_0)`` (``--reset code``). Removed weights (s < 0) stay removed; kept ones restart at s_0
    (for s_0 > 0, once beta_T * s_T >= s_0)."""
    factor = hp.beta_final if hp.reset == "paper" else 1.0
    return torch.clamp(factor * scores, max=hp.mask_init)


class ScaledSigmoidMask(SigmoidMask):
    """``w * sigmoid(beta * s) / sigmoid(s_0)``: the authors' code's mask, 1 at the start (``--scale-mask``)."""

    def __init__(self, scores: torch.Tensor, scale: float):
        super().__init__(scores)
        self.scale = float(scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return super().forward(w) * self.scale


class ContinuousSparsification(Extension):
    """What continuous sparsification adds to ``train()``: a ``SigmoidMask`` on each of ``names``
    (scores from ``scores``, else s_0), the L1 penalty, the temperature schedule and the mask
    parameters' optimizer (no weight decay on them, whatever the weights' optimizer does)."""

    def __init__(self, model: nn.Module, hp: CSHparams, training: TrainingHparams, names: list[str],
                 scores: Optional[dict[str, torch.Tensor]] = None):
        self.hp, self.training = hp, training
        scale = 1 + math.exp(-hp.mask_init) if hp.scale_mask else None  # 1 / sigmoid(s_0)

        def make(name: str, w: torch.Tensor) -> SigmoidMask:
            s = scores[name].to(w) if scores is not None else torch.full_like(w, hp.mask_init)
            return SigmoidMask(s) if scale is None else ScaledSigmoidMask(s, scale)

        self.forms: dict[str, SigmoidMask] = parametrize_weights(model, make, names)  # type: ignore[assignment]
        self.start, self.end, self.ipe = 0, 1, 1

    def begin(self, model: nn.Module, *, start: int, end: int, iterations_per_epoch: int) -> None:
        self.start, self.end, self.ipe = start, end, iterations_per_epoch
        self.set_beta(start)

    def beta(self, t: int) -> float:
        return beta_at(t, self.start, self.end, self.ipe, self.hp)

    def set_beta(self, t: int) -> None:
        """Give every mask the temperature of iteration ``t``."""
        value = self.beta(t)
        for form in self.forms.values():
            form.beta = value

    def param_groups(self) -> list[ParamGroup]:
        scores = [form.scores for form in self.forms.values()]
        hp, training = self.hp, self.training
        if hp.mask_optimizer == "adam":
            lr = DEFAULT_ADAM_MASK_LR if hp.mask_lr is None else hp.mask_lr
            # fused: one kernel for all mask parameters (CPU and CUDA), the same update as the loop's
            return [ParamGroup(scores, optimizer=lambda p: torch.optim.Adam(p, lr=lr, fused=True))]
        schedule = Schedule.build(training, self.ipe)
        return [ParamGroup(scores, optimizer=lambda p: torch.optim.SGD(
            p, lr=training.lr, momentum=training.momentum, nesterov=training.nesterov),
            lr=schedule if hp.mask_lr is None else (lambda t: hp.mask_lr))]

    def loss(self) -> Optional[torch.Tensor]:
        if not self.hp.penalty:
            return None
        return self.hp.penalty * sum(form.take_training_soft().sum() for form in self.forms.values())

    def before_step(self, t: int) -> None:
        self.set_beta(t)

    def after_step(self, t: int) -> None:
        self.set_beta(t + 1)  # evaluations after the step see the network at iteration t + 1
        for form in self.forms.values():
            form.last_soft = None  # taken by loss() unless the penalty is 0

    def scores(self) -> dict[str, torch.Tensor]:
        return {name: form.scores.detach().clone() for name, form in self.forms.items()}


# ---------------------------------------------------------------------------------------------
# The run


class CSSearch(MaskSearch):
    """Continuous sparsification's rounds for ``run_mask_search``: round 1 from W^0 and s_0, later
    rounds from the previous round's weights (or W^k with ``--search-rewind``) and its reset scores;
    the ticket is b(s_T) = [s_T > 0]."""

    name = "cs"

    def __init__(self, hp: CSHparams, training: TrainingHparams):
        self.hp, self.training = hp, training

    def start(self, run: Run, r: int, previous: Optional[dict], k: int):
        if previous is None:
            return None, 0, None
        scores = {n: reset_scores(s.to(run.device), self.hp) for n, s in previous["scores"].items()}
        if self.hp.search_rewind:
            return run.load_state(0, "rewind"), k, scores
        return {n: v.to(run.device) for n, v in previous["weights"].items()}, 0, scores

    def extension(self, model: nn.Module, run: Run, r: int, names: list[str],
                  scores: Optional[dict[str, torch.Tensor]]) -> Extension:
        return ContinuousSparsification(model, self.hp, self.training, names, scores)

    def finish(self, run: Run, r: int, ext: Extension):
        assert isinstance(ext, ContinuousSparsification)
        ext.set_beta(run.total)
        final = ext.scores()
        soft = [form.soft().detach() for form in ext.forms.values()]
        soft_density = sum(int((m != 0).sum()) for m in soft) / sum(m.numel() for m in soft)
        not_binary = sum(int(((m - (s > 0).to(m.dtype)).abs() > 1e-6).sum()) for m, s in zip(soft, final.values()))
        return final, {n: s > 0 for n, s in final.items()}, {
            "beta_final": next(iter(ext.forms.values())).beta, "soft_density": soft_density,
            "soft_not_binary": not_binary}


def run_cs(config: Config, cs: Optional[CSHparams] = None, rounds: int = 3, *, out: str | Path = "runs",
           data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
           on_epoch_end: Optional[Callable[[int], None]] = None,
           after_step: Optional[Callable[[int, int], None]] = None) -> Run:
    """Run (or resume) ``rounds`` rounds of continuous sparsification and train each round's ticket
    (``training.algorithms.mask_search.run_mask_search``); return the run with ``summary.json``
    written (accuracies in [0, 1], costs in epochs and MACs). ``rounds`` is not part of the run's
    identity. ``after_step(round, t)`` is called after every search step (tests use it to kill a run)."""
    cs = cs or CSHparams()
    check_cs(cs)
    search = CSSearch(cs, dataclasses.replace(config.training, early_stopping=None))
    return run_mask_search(config, search, rounds, out=out, data_dir=data_dir, device=device, progress=progress,
                           on_epoch_end=on_epoch_end, after_step=after_step)


# ---------------------------------------------------------------------------------------------
# The command


def _prepare(args: argparse.Namespace):
    return prepare_search(args, CSHparams, "cs_", check_cs, run_cs, SECTIONS)


CS = Command(
    "cs", "continuous sparsification (Savarese et al.): learn the mask w * sigmoid(beta * s), train each round's ticket",
    "Continuous sparsification (" + SAVARESE + ", Alg. 3): train the weights and a mask parameter s per weight "
    "with the network using w * sigmoid(beta * s) and the loss adding lambda * ||sigmoid(beta * s)||_1, while beta "
    "grows from beta_0 to beta_T; reset s <- min(beta_T * s, s_0) and repeat for --rounds. Each round's ticket "
    "b(s) = [s > 0] is trained like an IMP level, from W^k of the dense network with the pruned weights held at "
    "zero; summary.json holds the tickets' accuracy and the search cost.",
    """\
examples:
  python -m training cs                                   # demo: MNIST-1D CNN, 3 rounds
  python -m training cs --mask-init -0.02 --rounds 2      # a sparser search (s_0 sets the sparsity)
  python -m training cs --beta-schedule epoch --reset code --scale-mask   # the authors' code's choices
  python -m training cs --preset cs_conv6_cifar10 --mask-init 0.01 --device cuda
  python -m training cs --preset cs_resnet18_cifar10 --device cuda

Run the same command again to resume; raise --rounds to add rounds. The search rounds log to
search.jsonl; their networks are level_R/search.pt (weights and the binary mask b(s), readable by
every analysis tool); summary.json holds each ticket's search cost (epochs, backprop MACs).
""",
    run_flags(search_flags(CSHparams, "continuous sparsification hyperparameters", "cs_"), SECTIONS), _prepare)
