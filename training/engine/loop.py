"""The training loop: a few obvious lines per step, masks enforced after every step, metrics
logged as training runs, and a resume state written at every epoch boundary.

What an algorithm adds to a step (extra loss terms, its own parameters and optimizers, hooks
around the step) comes in through ``training.engine.extensions.Extension``; the step stays the same."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.engine.checkpoint import atomic_save, safe_load
from training.data import Dataset, Split, TrainBatches, eval_batches
from training.errors import UserError
from training.engine.extensions import BatchNormL1, Extension, ParamGroup
from training.hparams import TrainingHparams
from training.sparsity.masks import Mask, MaskEnforcer
from training.engine.metrics_log import MetricsLog
from training.engine.seeding import derive_seed
from training.engine.steps import Step, parse_steps

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def make_optimizer(params: Iterable, hp: TrainingHparams) -> torch.optim.Optimizer:
    """The optimizer ``hp`` names over ``params`` (tensors, or parameter-group dicts whose own
    settings override ``hp``'s)."""
    params = list(params)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                               weight_decay=hp.weight_decay)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    raise UserError(f"unknown optimizer {hp.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")


def check_training(hp: TrainingHparams) -> None:
    """Raise ``UserError`` for numbers no optimizer accepts."""
    if hp.seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {hp.seed}")
    if not 0 < hp.lr <= FLOAT32_MAX:  # the optimizers multiply float32 tensors by it
        raise UserError(f"--lr must be positive and at most {FLOAT32_MAX:.3g} (float32's largest), got {hp.lr}")
    if not 0 <= hp.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {hp.momentum}")
    if not hp.bn_l1 >= 0:
        raise UserError(f"--bn-l1 must be non-negative, got {hp.bn_l1}")
    if not hp.weight_decay >= 0:
        raise UserError(f"--weight-decay must be non-negative, got {hp.weight_decay}")
    if not hp.gamma > 0:
        raise UserError(f"--gamma must be positive, got {hp.gamma}")
    if hp.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {hp.batch_size}")
    if hp.nesterov and (hp.optimizer != "sgd" or hp.momentum == 0):
        raise UserError("--nesterov needs --optimizer sgd with a non-zero --momentum")


@dataclass
class Schedule:
    """Learning rate as a pure function of the iteration (nothing to save when resuming)."""

    hp: TrainingHparams
    total: int
    warmup: int
    milestones: list[int]

    @classmethod
    def build(cls, hp: TrainingHparams, iterations_per_epoch: int) -> "Schedule":
        if hp.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {hp.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        check_training(hp)
        total = Step.parse(hp.train_for, "--train-for").iterations(iterations_per_epoch)
        if total < 1:
            raise UserError(f"--train-for {hp.train_for} is empty; train for at least 1 iteration")
        warmup = Step.parse(hp.warmup, "--warmup").iterations(iterations_per_epoch)
        milestones = [s.iterations(iterations_per_epoch) for s in parse_steps(hp.milestones, "--milestones")]
        if hp.schedule == "step" and not milestones:
            raise UserError("--schedule step needs --milestones, e.g. '80ep,120ep'")
        if warmup >= total:
            raise UserError(f"--warmup {hp.warmup} is not shorter than --train-for {hp.train_for}")
        late = [(step, m) for step, m in zip(parse_steps(hp.milestones, "--milestones"), milestones) if m >= total]
        if hp.schedule == "step" and late:
            step, m = late[0]
            raise UserError(f"--milestones point {step} (iteration {m}) is not before the end of training "
                            f"(--train-for {hp.train_for} = {total} iterations), so the rate would never decay "
                            f"there; drop it or train longer")
        return cls(hp, total, warmup, sorted(milestones))

    def __call__(self, iteration: int) -> float:
        """Learning rate for the step that takes the model from ``iteration`` to ``iteration + 1``."""
        lr = self.hp.lr
        if self.hp.schedule == "step":
            lr *= self.hp.gamma ** sum(iteration >= m for m in self.milestones)
        elif self.hp.schedule == "cosine":
            progress = (iteration - self.warmup) / max(1, self.total - self.warmup)
            lr *= 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        if iteration < self.warmup:
            lr *= (iteration + 1) / self.warmup
        return lr


class Optimizers:
    """The weights' optimizer (``hp``: every trainable model parameter that no extension claims,
    plus the extensions' groups without an optimizer of their own) and the extensions' own
    optimizers, stepped together; each parameter group's learning rate follows its schedule."""

    def __init__(self, model: nn.Module, hp: TrainingHparams, schedule: Callable[[int], float],
                 groups: Sequence[ParamGroup] = ()):
        claimed = {id(p) for g in groups for p in g.params}
        if len(claimed) != sum(len(g.params) for g in groups):
            raise ValueError("a parameter is in more than one extension parameter group")
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
        main_groups, main_rates = ([{"params": weights}], [schedule]) if weights else ([], [])
        for g in groups:
            if g.optimizer is None:  # a group of the weights' optimizer; a fixed options["lr"] is kept
                main_groups.append({"params": list(g.params), **g.options})
                main_rates.append(g.lr or (None if "lr" in g.options else schedule))
        self.main = make_optimizer(main_groups, hp) if main_groups else None
        # (optimizer, group index, its learning rate at iteration t): by index, because
        # load_state_dict replaces an optimizer's parameter-group dicts
        self.rates = [(self.main, i, rate) for i, rate in enumerate(main_rates) if rate is not None]
        self.own: list[torch.optim.Optimizer] = []
        for g in groups:
            if g.optimizer is not None:
                self.own.append(g.optimizer(list(g.params)))
                self.rates += [(self.own[-1], i, g.lr) for i in range(len(self.own[-1].param_groups)) if g.lr is not None]
        self.all = ([self.main] if self.main else []) + self.own

    def set_lr(self, t: int) -> None:
        """Set every group's learning rate for the step from iteration ``t``."""
        for opt, i, rate in self.rates:
            opt.param_groups[i]["lr"] = rate(t)

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.all:
            opt.step()

    def state_dict(self) -> dict:
        """``optimizer``: the weights' optimizer (the key resume states always had); ``own_optimizers``."""
        return {"optimizer": self.main.state_dict() if self.main else None,
                "own_optimizers": [opt.state_dict() for opt in self.own]}

    def load_state_dict(self, state: dict) -> None:
        if self.main is not None:
            self.main.load_state_dict(state["optimizer"])
        own = state.get("own_optimizers", [])
        if len(own) != len(self.own):
            raise UserError(f"the resume state has {len(own)} extension optimizers, this run has {len(self.own)}; "
                            f"delete the level's state.pt to start the level again")
        for opt, saved in zip(self.own, own):
            opt.load_state_dict(saved)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> tuple[float, float]:
    """Return (mean cross-entropy loss in nats, accuracy in [0, 1]) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    for x, y in eval_batches(split, batch_size):
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = max(1, len(split))
    return float(loss_sum) / n, int(correct) / n


def check_lengths(hp: TrainingHparams, iterations_per_epoch: int, rewind: str = "0") -> tuple[int, int, int]:
    """Validate the lengths of a run; return (total iterations, rewind iteration, eval cadence)."""
    schedule = Schedule.build(hp, iterations_per_epoch)
    k = Step.parse(rewind, "--rewind").iterations(iterations_per_epoch)
    every = Step.parse(hp.eval_every, "--eval-every").iterations(iterations_per_epoch)
    if k >= schedule.total:
        raise UserError(f"rewind point {rewind} (iteration {k}) is not before the end of training "
                        f"({hp.train_for} = {schedule.total} iterations); rewind earlier or train longer")
    if every < 1:
        raise UserError(f"--eval-every {hp.eval_every} must be at least 1 iteration")
    return schedule.total, k, every


class BestValidation:
    """Early stopping on the validation split: keeps the weights of the evaluation with the best
    validation accuracy (the earliest on ties) and counts evaluations since; ``patience`` > 0 stops
    training after that many evaluations without improvement."""

    def __init__(self, patience: int):
        self.patience, self.accuracy, self.since = patience, -1.0, 0
        self.row: dict = {}
        self.weights: dict = {}

    def update(self, model: nn.Module, row: dict) -> bool:
        """Record evaluation ``row``; return True when training should stop."""
        if row["val_accuracy"] > self.accuracy:
            self.accuracy, self.since, self.row = row["val_accuracy"], 0, dict(row)
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience

    def state(self) -> dict:
        return {"accuracy": self.accuracy, "since": self.since, "row": self.row, "weights": self.weights}

    def restore(self, state: dict) -> None:
        self.accuracy, self.since, self.row, self.weights = (state["accuracy"], state["since"], state["row"],
                                                             state["weights"])


def train(model: nn.Module, data: Dataset, hp: TrainingHparams, *, start: int = 0, end: Optional[int] = None,
          mask: Optional[Mask] = None, log: Optional[MetricsLog] = None, level: int = 0,
          save_points: Iterable[int] = (), on_save: Optional[Callable[[int], None]] = None,
          state_path: Optional[Path] = None, progress: bool = True,
          on_epoch_end: Optional[Callable[[int], None]] = None,
          frozen: Optional[dict[str, torch.Tensor]] = None, extensions: Sequence[Extension] = ()) -> dict:
    """Train ``model`` (already on the data's device) from iteration ``start`` to ``end``.

    Pruned weights (``mask``) stay exactly zero, or at ``frozen``'s values if given (RISE).
    With ``hp.early_stopping`` set, the model ends with the weights of its best validation
    evaluation and the returned metrics are that evaluation's (``stopped_at`` says where training
    ended). Training never stops before the last of ``save_points`` (the rewind point W^k of a
    lottery run), so every checkpoint asked for is written even when patience runs out earlier;
    it stops at that point, or at the first evaluation after it without improvement.
    ``on_save(t)`` runs after iteration ``t`` for each
    ``t`` in ``save_points``. With ``state_path``, a resume state is written at every epoch
    boundary and, if present, training continues from it. Returns the final metrics.

    ``extensions`` add loss terms, parameter groups, optimizers and hooks to every step
    (``training.engine.extensions``); ``hp.bn_l1`` adds ``BatchNormL1`` after them.
    """
    batches = TrainBatches(data.train, hp.batch_size, hp.seed, data.augment)
    ipe = batches.iterations_per_epoch
    total, _, eval_every = check_lengths(hp, ipe)
    end = total if end is None else end
    schedule = Schedule.build(hp, ipe)
    extensions = [*extensions, *([BatchNormL1(model, hp.bn_l1)] if hp.bn_l1 else [])]
    for ext in extensions:
        ext.begin(model, start=start, end=end, iterations_per_epoch=ipe)
    optimizers = Optimizers(model, hp, schedule, [g for ext in extensions for g in ext.param_groups()])
    enforce = MaskEnforcer(model, mask, frozen)
    enforce()
    save_points = set(save_points)
    hold_until = max(save_points, default=start)  # early stopping waits for the last save point

    def out_of_patience() -> bool:
        return best is not None and best.patience > 0 and best.since >= best.patience and t >= hold_until

    t = start
    pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (loss, correct, n) since the last eval
    best: Optional[BestValidation] = None
    if hp.early_stopping is not None:
        if data.val is None:
            raise UserError("--early-stopping needs a validation split: set --val-fraction, e.g. 0.1")
        if hp.early_stopping < 0:
            raise UserError(f"--early-stopping must be at least 0, got {hp.early_stopping}")
        best = BestValidation(hp.early_stopping)
    if state_path is not None and state_path.exists():
        state = safe_load(state_path, "resume state")
        model.load_state_dict(state["model"])
        optimizers.load_state_dict(state)
        for ext, saved in zip(extensions, state.get("extensions", [])):
            ext.load_state_dict(saved)
        t = int(state["iteration"])
        device = next(model.parameters()).device
        pending = [(l.to(device), c.to(device), int(n)) for l, c, n in state["pending"]]
        if best is not None and state.get("best"):
            best.restore(state["best"])
    if log is not None:  # drop what a killed attempt logged past the point we restart from
        resumed, at = t > start, t
        log.keep_only(lambda r: r.get("level", 0) < level
                      or (resumed and r.get("level") == level and r["iteration"] <= at))

    clock = time.perf_counter()

    def record(iteration: int) -> dict:
        row: dict = {"level": level, "iteration": iteration, "epoch": iteration / ipe, "lr": schedule(max(iteration - 1, 0))}
        if pending:
            losses = torch.stack([p[0] for p in pending])
            row["train_loss"] = float(losses.double().mean())
            row["train_accuracy"] = float(sum(int(p[1]) for p in pending)) / sum(p[2] for p in pending)
        row["test_loss"], row["test_accuracy"] = evaluate(model, data.test)
        if data.val is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(model, data.val)
        row["seconds"] = time.perf_counter() - clock
        if log is not None:
            log.write(row)
        return row

    def check_finite(upto: int) -> None:
        if not pending:
            return
        losses = torch.stack([p[0] for p in pending])
        bad = torch.nonzero(~torch.isfinite(losses)).flatten()
        if len(bad):
            at = upto - len(pending) + int(bad[0]) + 1
            where = f"; last good resume state: {state_path}" if state_path is not None and state_path.exists() else ""
            raise UserError(f"loss became {float(losses[bad[0]])} at iteration {at} (epoch {at / ipe:.2f}) of level "
                            f"{level}; training stopped{where}. Lower --lr or check the data")

    stop = False
    last = record(t) if t == start else {}
    if t == start and best is not None:
        best.update(model, last)
        stop = out_of_patience()
    if t == start and t in save_points and on_save is not None:
        on_save(t)
    bar = tqdm(total=end - start, initial=t - start, desc=f"level {level}", unit="it",
               disable=None if progress else True, leave=False, dynamic_ncols=True)  # None: no bar in log files
    model.train()
    while t < end and not stop:
        epoch = t // ipe
        torch.manual_seed(derive_seed(hp.seed, "dropout", level, epoch))
        for x, y in batches.epoch(epoch, skip=t - epoch * ipe):
            for ext in extensions:
                ext.before_step(t)
            optimizers.set_lr(t)
            out = model(x)
            loss = F.cross_entropy(out, y)  # what is logged as train_loss
            terms = [term for ext in extensions if (term := ext.loss()) is not None]
            optimizers.zero_grad()
            (loss + sum(terms) if terms else loss).backward()
            optimizers.step()
            for ext in extensions:
                ext.after_step(t)
            enforce()
            pending.append((loss.detach(), (out.argmax(1) == y).sum(), len(y)))
            t += 1
            bar.update(1)
            if t in save_points and on_save is not None:
                on_save(t)
            if t % eval_every == 0 or t == end:
                check_finite(t)
                last = record(t)
                pending = []
                bar.set_postfix(test_acc=f"{last['test_accuracy']:.3f}")
                if best is not None:
                    best.update(model, last)
            stop = out_of_patience()
            if t == end or stop:
                break
        if t % ipe == 0 and t < end and not stop:
            check_finite(t)
            if state_path is not None:
                atomic_save({"model": model.state_dict(), **optimizers.state_dict(), "iteration": t,
                             "extensions": [ext.state_dict() for ext in extensions],
                             "pending": [(l.cpu(), c.cpu(), n) for l, c, n in pending],
                             "best": best.state() if best is not None else None}, state_path)
            if on_epoch_end is not None:
                on_epoch_end(t // ipe)
    bar.close()
    if best is not None:
        device = next(model.parameters()).device
        model.load_state_dict({k: v.to(device) for k, v in best.weights.items()})
        last = dict(best.row)
    last["stopped_at"] = t
    return last
