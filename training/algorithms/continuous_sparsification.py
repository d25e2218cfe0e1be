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
import fnmatch
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from training.engine import checkpoint as ckpt_io
from training.commands import Command, prepare_run, run_flags
from training.engine.cost import training_cost
from training.errors import UserError
from training.engine.extensions import Extension, ParamGroup
from training.hparams import Config, TrainingHparams, add_dataclass_flags, dumps
from training.algorithms.imp import train_level_zero, train_ticket
from training.engine.loop import Schedule, train
from training.sparsity.masks import SigmoidMask, apply_mask, dense_mask, parametrize_weights, plain_weights_and_mask, prunable_names
from training.engine.metrics_log import MetricsLog
from training.engine.runs import Run, resolve_device
from training.engine.steps import Step

SAVARESE = 'Savarese et al., "Winning the lottery with continuous sparsification"'
SECTIONS = ("dataset", "model", "training")
SCORES_FORMAT = "lth-toolkit/cs-scores"


def _f(default: Any, help: str, choices: Optional[list[str]] = None, flag: Optional[str] = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class CSHparams:
    """The hyperparameters of continuous sparsification; fields left at their default are left out
    of the run's hash (like every section of ``training.hparams.Config``)."""

    penalty: float = _f(2e-5, "lambda: weight of the L1 penalty on the soft mask, summed over masked weights "
                              "(paper: 1e-10 Conv-6, 1e-8 ResNet-18)", flag="--lambda")
    mask_init: float = _f(0.05, "s_0: initial value of every mask parameter; it sets the sparsity the search "
                                "finds (paper: -0.03 to 0.03)")
    beta_initial: float = _f(1.0, "beta_0: temperature at the start of every round")
    beta_final: float = _f(100.0, "beta_T: temperature at the end of every round (paper: 100 Conv-6, 200 ResNet-18)")
    beta_schedule: str = _f("iteration", "grow beta once per iteration (the paper's beta_T^(t/T)) or once per epoch "
                                         "(the authors' code)", ["iteration", "epoch"])
    mask_optimizer: str = _f("adam", "optimizer of the mask parameters: adam (its own rate, --mask-lr) or sgd "
                                     "(the weights' momentum and learning-rate schedule, or a constant --mask-lr)",
                             ["adam", "sgd"])
    mask_lr: Optional[float] = _f(None, "learning rate of the mask parameters (default: 3e-4 with adam; the "
                                        "weights' schedule with sgd)")
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


def check_frozen(hp: Any) -> None:
    """``UserError`` for a rewinding flag with ``--freeze-weights`` (the weights never move, so W^k = W^0)."""
    if not hp.freeze_weights:
        return
    if Step.parse(hp.rewind, "-k/--rewind").value != 0:
        raise UserError(f"-k/--rewind {hp.rewind} means nothing with --freeze-weights: the weights never leave W^0; "
                        "drop -k")
    if getattr(hp, "search_rewind", False):
        raise UserError("--search-rewind means nothing with --freeze-weights: the weights never leave W^0")


def freeze_parameters(model: nn.Module) -> None:
    """Take every parameter of ``model`` out of training (``requires_grad`` off): no optimizer holds it,
    so it stays bit-identical to its current value (call before the mask forms are attached)."""
    for p in model.parameters():
        p.requires_grad_(False)


def evaluated_level(run: Run, level: int, mask: Optional[dict[str, torch.Tensor]], meta: Optional[dict] = None) -> None:
    """Write ``level_L``'s init.pt, rewind.pt and final.pt as W^0 under ``mask`` (None: dense), not
    trained (iteration 0), final.pt with its losses (nats) and accuracies (in [0, 1]) on the test,
    validation (if any) and training splits: a level of a ``--freeze-weights`` run."""
    from training.engine.loop import evaluate

    model = run.new_model()
    apply_mask(model, mask)
    meta = {"weights": "frozen at W^0 (--freeze-weights)", **(meta or {})}
    for kind in ("init", "rewind"):
        if not (run.level_dir(level) / f"{kind}.pt").exists():
            run.save(model, mask, 0, level, kind, meta)
    results: dict[str, float] = {}
    for split in ("test", "val", "train"):
        data = getattr(run.data, split)
        if data is not None:
            results[f"{split}_loss"], results[f"{split}_accuracy"] = evaluate(model, data)
    results["stopped_at"] = 0
    run.save(model, mask, 0, level, "final", {"results": results, "start_iteration": 0, **meta})


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def masked_names(model: nn.Module, hp: CSHparams) -> list[str]:
    """The prunable weights of ``model`` that carry a mask (``--mask-layers`` minus ``--dense-layers``),
    in registration order; ``UserError`` for a pattern that names no prunable weight."""
    names = prunable_names(model)
    for flag, text in (("--mask-layers", hp.mask_layers), ("--dense-layers", hp.dense_layers)):
        for pattern in _patterns(text):
            if not fnmatch.filter(names, pattern):
                raise UserError(f"{flag} pattern {pattern!r} matches no prunable weight of this model "
                                f"({', '.join(names)})")
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in _patterns(hp.mask_layers))
              and not any(fnmatch.fnmatchcase(n, p) for p in _patterns(hp.dense_layers))]
    if not chosen:
        raise UserError("--mask-layers and --dense-layers leave no weight with a mask")
    return chosen


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
        return w * (self.soft() * self.scale)


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
            lr = 3e-4 if hp.mask_lr is None else hp.mask_lr
            return [ParamGroup(scores, optimizer=lambda p: torch.optim.Adam(p, lr=lr))]
        schedule = Schedule.build(training, self.ipe)
        return [ParamGroup(scores, optimizer=lambda p: torch.optim.SGD(
            p, lr=training.lr, momentum=training.momentum, nesterov=training.nesterov),
            lr=schedule if hp.mask_lr is None else (lambda t: hp.mask_lr))]

    def loss(self) -> Optional[torch.Tensor]:
        if not self.hp.penalty:
            return None
        return self.hp.penalty * sum(form.soft().sum() for form in self.forms.values())

    def before_step(self, t: int) -> None:
        self.set_beta(t)

    def after_step(self, t: int) -> None:
        self.set_beta(t + 1)  # evaluations after the step see the network at iteration t + 1

    def scores(self) -> dict[str, torch.Tensor]:
        return {name: form.scores.detach().clone() for name, form in self.forms.items()}


# ---------------------------------------------------------------------------------------------
# The run


def run_cs(config: Config, cs: Optional[CSHparams] = None, rounds: int = 3, *, out: str | Path = "runs",
           data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
           on_epoch_end: Optional[Callable[[int], None]] = None,
           after_step: Optional[Callable[[int, int], None]] = None) -> Run:
    """Run (or resume) ``rounds`` rounds of continuous sparsification and train each round's ticket;
    return the run with ``summary.json`` written (accuracies in [0, 1], costs in epochs and MACs).

    ``rounds`` is not part of the run's identity: asking for more later extends the same folder.
    ``after_step(round, t)`` is called after every search step (tests use it to kill a run)."""
    cs = cs or CSHparams()
    check_cs(cs)
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    config.pruning = None
    search_hp = dataclasses.replace(config.training, early_stopping=None)

    def validate(model: nn.Module) -> None:
        masked_names(model, cs)
        _check_rewind(config, cs, data_dir)

    run = Run(config, "cs", Path(out), resolve_device(device), data_dir, progress, (cs.canonical(),), on_epoch_end,
              validate=validate)
    ipe = run.iterations_per_epoch
    k = Step.parse(cs.rewind, "-k/--rewind").iterations(ipe)
    _record_cs(run, cs)
    names = masked_names(run.new_model(), cs)
    search_log = MetricsLog(run.dir / "search.jsonl")

    # level 0: the dense network, W^k and the dense baseline (as IMP's level 0); W^0 itself when frozen
    if cs.freeze_weights and not run.level_done(0):
        evaluated_level(run, 0, run.mask_for(0, lambda: dense_mask(run.new_model())))
    if not run.level_done(0):
        model = run.new_model()
        train_level_zero(run, model, run.mask_for(0, lambda: dense_mask(model)), rewind=k)

    for r in range(1, rounds + 1):
        scores_path = run.level_dir(r) / "scores.pt"
        if not scores_path.exists():
            _search_round(run, r, cs, search_hp, names, k, search_log, after_step)
        if not run.level_done(r) and cs.freeze_weights:
            mask = run.mask_for(r, lambda: {n: m.to(torch.bool) for n, m in _read_scores(scores_path)["mask"].items()})
            evaluated_level(run, r, mask, {"cs_round": r})
        if not run.level_done(r):
            mask = run.mask_for(r, lambda: {n: m.to(torch.bool) for n, m in _read_scores(scores_path)["mask"].items()})
            train_ticket(run, r, mask, k, meta={"cs_round": r})
        _write_summary(run, rounds)
    entries = _write_summary(run, rounds)
    if progress:
        run.print_summary(entries)
        print(f"{'round':>5}  {'ticket density':>14}  {'ticket test acc':>15}  {'search epochs (cumulative)':>26}")
        for e in entries[1:]:
            print(f"{e['level']:>5}  {100 * e['density']:>13.2f}%  {100 * e['test_accuracy']:>14.2f}%  "
                  f"{e['search']['cumulative_epochs']:>26.1f}")
    return run


def _check_rewind(config: Config, cs: CSHparams, data_dir: Optional[str]) -> None:
    """Refuse a rewind point k at or after the end of a round (before any run folder exists)."""
    from training.data import load_dataset
    from training.engine.loop import check_lengths

    k, length = Step.parse(cs.rewind, "-k/--rewind"), Step.parse(config.training.train_for, "--train-for")
    if k.value == 0 or (k.unit == length.unit and k.value < length.value):
        return
    size = len(load_dataset(config.dataset, data_dir).train) if k.unit != length.unit else 1
    check_lengths(config.training, -(-size // max(1, config.training.batch_size)), cs.rewind)


def _record_cs(run: Run, cs: CSHparams) -> None:
    """Add the full CS hyperparameters (defaults included) to ``config.json`` under ``cs``."""
    import json

    path = run.dir / "config.json"
    stored = json.loads(path.read_text())
    if stored.get("cs") != dataclasses.asdict(cs):
        stored["cs"] = dataclasses.asdict(cs)
        ckpt_io.atomic_write_text(path, dumps(stored))


def _read_scores(path: Path) -> dict:
    obj = ckpt_io.safe_load(path, "mask scores")
    if not isinstance(obj, dict) or obj.get("format") != SCORES_FORMAT:
        raise UserError(f"{path} is not a continuous-sparsification scores file; delete it to search the round again")
    return obj


def _search_round(run: Run, r: int, cs: CSHparams, hp: TrainingHparams, names: list[str], k: int, log: MetricsLog,
                  after_step: Optional[Callable[[int, int], None]]) -> None:
    """Search round ``r``: from W^0 and s_0 (round 1), else from the previous round's weights (or W^k
    with ``search_rewind``) and its reset scores; write ``search.pt`` and ``scores.pt``."""
    model = run.new_model()
    if cs.freeze_weights:
        freeze_parameters(model)
    start, scores = 0, None
    if r > 1:
        previous = _read_scores(run.level_dir(r - 1) / "scores.pt")
        scores = {n: reset_scores(s.to(run.device), cs) for n, s in previous["scores"].items()}
        if cs.search_rewind:
            model.load_state_dict(run.load_state(0, "rewind"))
            start = k
        else:
            model.load_state_dict({n: v.to(run.device) for n, v in previous["weights"].items()})
    ext = ContinuousSparsification(model, cs, hp, names, scores)
    hooks: list[Extension] = [ext]
    if after_step is not None:
        hooks.append(_Hook(lambda t: after_step(r, t)))
    run.level_dir(r).mkdir(parents=True, exist_ok=True)
    metrics = train(model, run.data, hp, start=start, log=log, level=r, state_path=run.level_dir(r) / "search_state.pt",
                    progress=run.progress, extensions=hooks)
    ext.set_beta(run.total)
    cost = training_cost(model, run.data.input_shape, None, start, metrics["stopped_at"], len(run.data.train),
                         hp.batch_size)
    soft = [form.soft().detach() for form in ext.forms.values()]
    soft_density = sum(int((m != 0).sum()) for m in soft) / sum(m.numel() for m in soft)
    not_binary = sum(int(((m - (s > 0).to(m.dtype)).abs() > 1e-6).sum()) for m, s in zip(soft, ext.scores().values()))
    info = {"round": r, "start_iteration": start, "end_iteration": metrics["stopped_at"],
            "epochs": (metrics["stopped_at"] - start) / run.iterations_per_epoch, "beta_final": ext.forms[names[0]].beta,
            "backprop_macs": cost, "soft_density": soft_density, "soft_not_binary": not_binary,
            "results": {key: v for key, v in metrics.items() if key.startswith(("test_", "val_", "train_"))}}
    run.save(model, None, metrics["stopped_at"], r, "search", {"cs_search": info})
    raw = {name: p.detach().cpu().clone() for name, p in _raw_state(model).items()}
    ckpt_io.atomic_save({"format": SCORES_FORMAT, "round": r, "scores": {n: s.cpu() for n, s in ext.scores().items()},
                         "mask": {n: (s > 0).cpu() for n, s in ext.scores().items()}, "weights": raw, "info": info},
                        run.level_dir(r) / "scores.pt")
    state = run.level_dir(r) / "search_state.pt"
    if state.exists():
        state.unlink()


def _raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state under its plain names, raw weights (not multiplied by the mask)."""
    state, _ = plain_weights_and_mask(model)
    return state


class _Hook(Extension):
    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def after_step(self, t: int) -> None:
        self.fn(t)


def _write_summary(run: Run, rounds: int) -> list[dict]:
    """``run.write_summary()`` plus the search cost: per ticket level R, ``search`` holds round R's
    epochs, backprop MACs, soft-mask density (the code's count) and the cumulative cost of finding
    the ticket (the k dense warm-up iterations plus rounds 1..R); top-level ``search_cost`` is the
    total so far. Returns the entries as written."""
    import json

    entries = run.write_summary()
    ipe = run.iterations_per_epoch
    k = None
    epochs, macs = 0.0, 0.0
    for entry in entries:
        level = entry["level"]
        if level == 0:
            final = ckpt_io.read_checkpoint(run.level_dir(0) / "rewind.pt")
            k = final["step"]["iteration"]
            warm = training_cost(run.new_model(), run.data.input_shape, None, 0, k, len(run.data.train),
                                 run.config.training.batch_size)
            epochs, macs = k / ipe, warm["total"]
            entry["role"] = "dense"
            continue
        info = _read_scores(run.level_dir(level) / "scores.pt")["info"]
        epochs += info["epochs"]
        macs += info["backprop_macs"]["total"]
        entry["role"] = "ticket"
        entry["search"] = {"round": level, "epochs": info["epochs"], "backprop_macs": info["backprop_macs"]["total"],
                           "cumulative_epochs": epochs, "cumulative_backprop_macs": macs,
                           "soft_density": info["soft_density"], "soft_not_binary": info["soft_not_binary"],
                           "test_accuracy": info["results"].get("test_accuracy"),
                           "checkpoint": f"level_{level}/search.pt"}
    path = run.dir / "summary.json"
    stored = json.loads(path.read_text())
    stored["levels"] = entries
    stored["search_cost"] = {"epochs": epochs, "backprop_macs": macs,
                             "note": "k dense warm-up iterations (W^k) plus every finished search round; the ticket "
                                     "trainings and the dense baseline are not part of the search"}
    ckpt_io.atomic_write_text(path, dumps(stored))
    return entries


# ---------------------------------------------------------------------------------------------
# The command


def _add_cs_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int,
                        help="search rounds; each round's ticket is trained and recorded (default: the preset's, "
                             "else 3)")
    add_dataclass_flags(parser.add_argument_group("continuous sparsification hyperparameters"), CSHparams, dest_prefix="cs_")


def cs_from_args(args: argparse.Namespace) -> CSHparams:
    """Dataclass defaults, then the preset's values, then the flags given; checked."""
    from training.presets import preset_values

    values = preset_values(args.preset) if getattr(args, "preset", None) else {}
    given = vars(args)
    hp = CSHparams(**{f.name: given.get(f"cs_{f.name}", values.get(f.name, f.default)) for f in fields(CSHparams)})
    check_cs(hp)
    return hp


def _check_layers(config: Config, cs: CSHparams) -> None:
    """Refuse an unknown layer pattern before any folder exists (the model is built on the CPU)."""
    from training.data import dataset_spec
    from training.models import build_model

    spec = dataset_spec(config.dataset.dataset)
    masked_names(build_model(config.model.model, spec.classes, spec.shape, config.training.seed), cs)


def _prepare(args: argparse.Namespace):
    from training.presets import preset_values

    if args.rounds is None:
        args.rounds = (preset_values(args.preset) if args.preset else {}).get("rounds", 3)
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    cs = cs_from_args(args)
    return prepare_run(args, lambda config, **common: run_cs(config, cs, args.rounds, **common), sections=SECTIONS,
                       check=lambda config: (_check_layers(config, cs), _check_rewind(config, cs, args.data_dir)))


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
    run_flags(_add_cs_flags, SECTIONS), _prepare)
