"""The training loop: a few obvious lines per step, masks enforced after every step, metrics
logged as training runs, and a resume state written at every epoch boundary.

What an algorithm adds to a step (extra loss terms, its own parameters and optimizers, hooks
around the step) comes in through ``training.engine.extensions.Extension``; the step stays the same."""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.engine import distributed
from training.engine.checkpoint import atomic_save, safe_load
from training.data import Dataset, Split, eval_batches, train_batches
from training.errors import TrainingDiverged, UserError
from training.engine.extensions import BatchNormL1, Extension, ParamGroup
from training.hparams import PRECISIONS, ExecutionHparams, TrainingHparams
from training.sparsity.masks import Mask, MaskEnforcer
from training.engine.metrics_log import MetricsLog
from training.engine.seeding import derive_seed
from training.engine.steps import Step, parse_steps

OPTIMIZERS = ("sgd", "adam")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
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

    def step(self, scaler: Optional["torch.amp.GradScaler"] = None) -> None:
        """Step every optimizer; through ``scaler`` (fp16) when given, which unscales the gradients
        and skips the step of an optimizer whose gradients hold inf or NaN."""
        if scaler is None:
            for opt in self.all:
                opt.step()
            return
        for opt in self.all:
            scaler.step(opt)
        scaler.update()

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


# ---------------------------------------------------------------------------------------------
# Execution: precision, memory format, compilation, determinism (``ExecutionHparams``)


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device_type``: nothing for fp32 (exact) and
    tf32 (fp32 storage; the GPU's TF32 matrix units, set by ``apply_execution``)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def check_execution(execution: ExecutionHparams, device: torch.device) -> None:
    """Raise ``UserError`` (one line naming the flag) for settings this machine cannot run:
    an unknown precision, a thread count below 1, a precision the device has no autocast for,
    ``--compile`` where ``torch.compile`` is missing. Commands call it before any work starts."""
    if execution.precision not in PRECISIONS:
        raise UserError(f"unknown --precision {execution.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if execution.threads < 1:
        raise UserError(f"--threads must be at least 1, got {execution.threads}")
    if execution.precision == "tf32" and device.type != "cuda":
        raise UserError("--precision tf32 uses a GPU's TF32 matrix units; on the CPU use fp32 or bf16")
    dtype = AUTOCAST_DTYPES.get(execution.precision)
    if dtype is not None:
        if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16: this GPU has no bfloat16; use fp16 or fp32")
        try:
            with torch.autocast(device.type, dtype=dtype):
                works = (torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)).dtype == dtype
        except RuntimeError:
            works = False
        if not works:
            raise UserError(f"--precision {execution.precision}: this torch build has no {device.type} autocast "
                            f"for {dtype}; use fp32")
    if execution.compile and not hasattr(torch, "compile"):
        raise UserError("--compile needs torch.compile (torch 2.0 or later)")


def apply_execution(execution: ExecutionHparams, device: torch.device) -> None:
    """Set the process-wide state ``execution`` asks for: on the CPU torch's thread count; on a
    GPU the TF32 switches (off unless ``precision`` is tf32, so that fp32 is exact fp32) and,
    with ``deterministic``, deterministic algorithms (``torch.use_deterministic_algorithms``,
    cuDNN without autotuning, cuBLAS's fixed workspace); without it cuDNN autotunes (fastest).

    What is deterministic: on the CPU every run, whatever these settings (same seed, settings and
    machine: bit-identical weights). On a GPU without ``deterministic``: not bit-identical run to
    run (cuDNN's autotuner may pick other kernels, atomics sum in any order); with it: bit-identical
    on the same GPU model, driver and torch version (an op with no deterministic kernel raises)."""
    if device.type == "cpu":
        torch.set_num_threads(execution.threads)
    if device.type == "cuda":
        tf32 = execution.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = not execution.deterministic
        torch.backends.cudnn.deterministic = execution.deterministic
        if execution.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS when a handle is made
    if execution.deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(execution.deterministic)


def _to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000,
             execution: Optional[ExecutionHparams] = None) -> tuple[float, float]:
    """Return (mean cross-entropy loss in nats, accuracy in [0, 1]) of ``model`` on ``split``,
    computed at ``execution``'s precision and memory format (default: exact fp32)."""
    execution = execution or ExecutionHparams()
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.device)
    for x, y in eval_batches(split, batch_size):
        with autocast(execution.precision, split.device.type):
            out = model(_to_memory_format(x, execution.channels_last))
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").double()
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


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel, which averages the gradients over the ranks.
    Buffers are not broadcast at each step: with batch norm over the global batch
    (``distributed.global_batch_norm``) they are the same on every rank."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch >= 2.13 names the switch forward_sync_buffers (and warns about broadcast_buffers)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}))


def _unmanaged(optimizers: "Optimizers", model: nn.Module) -> list[torch.Tensor]:
    """The parameters ``optimizers`` step that are not ``model``'s (an extension's own), whose
    gradients DistributedDataParallel does not average."""
    own = {id(p) for p in model.parameters()}
    return [p for opt in optimizers.all for g in opt.param_groups for p in g["params"] if id(p) not in own]


def _average_gradients(params: Sequence[torch.Tensor], world: int) -> None:
    """Average the gradients of ``params`` over the ranks (a missing gradient counts as zero)."""
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(distributed.all_sum(p.grad) / world)


def train(model: nn.Module, data: Dataset, hp: TrainingHparams, *, start: int = 0, end: Optional[int] = None,
          mask: Optional[Mask] = None, log: Optional[MetricsLog] = None, level: int = 0,
          save_points: Iterable[int] = (), on_save: Optional[Callable[[int], None]] = None,
          state_path: Optional[Path] = None, progress: bool = True,
          on_epoch_end: Optional[Callable[[int], None]] = None,
          frozen: Optional[dict[str, torch.Tensor]] = None, extensions: Sequence[Extension] = (),
          execution: Optional[ExecutionHparams] = None) -> dict:
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

    ``execution`` (default: exact fp32, no compilation) sets the precision (autocast of the
    forward pass and the loss; fp16 with a gradient scaler), the memory format of 2-D
    convolutions (channels-last for the training, back to contiguous at the end) and whether the
    forward pass is ``torch.compile``d; the masks are held exactly under every setting.

    No step waits for the device: metrics stay on it until an evaluation logs them (and at each
    epoch's resume point). fp16's gradient scaler is the exception: it reads back whether the
    gradients overflowed, once per step.

    Under torchrun (``training.engine.distributed``) the model trains wrapped in
    DistributedDataParallel on this rank's slice of every global batch, batch norm over the global
    batch; every rank checks first that all ranks start from the same weights under the same mask;
    only rank 0 logs, shows progress and writes the resume state.
    """
    execution = execution or ExecutionHparams()
    ddp = distributed.active()
    world = distributed.world_size() if ddp else 1
    batches = train_batches(data.train, hp.batch_size, hp.seed, data.augment,
                            *((distributed.rank(), world) if ddp else ()))
    ipe = batches.iterations_per_epoch
    total, _, eval_every = check_lengths(hp, ipe)
    end = total if end is None else end
    schedule = Schedule.build(hp, ipe)
    extensions = [*extensions, *([BatchNormL1(model, hp.bn_l1)] if hp.bn_l1 else [])]
    for ext in extensions:
        ext.begin(model, start=start, end=end, iterations_per_epoch=ipe)
    optimizers = Optimizers(model, hp, schedule, [g for ext in extensions for g in ext.param_groups()])
    device = next(model.parameters()).device
    if execution.channels_last:  # 4-D weights only: a model without 2-D convolutions is unchanged
        model.to(memory_format=torch.channels_last)
    forward: nn.Module = model
    if ddp:
        distributed.check_same(mask, f"the mask of level {level}")
        if frozen is not None:
            distributed.check_same(frozen, f"the frozen weights of level {level}")
        forward = _data_parallel(model, device)
        others = _unmanaged(optimizers, model)  # extension parameters DDP does not average
    # the compiled module shares the model's parameters: the enforcer below writes into both
    forward = torch.compile(forward) if execution.compile else forward
    scaler = torch.amp.GradScaler(device.type) if execution.precision == "fp16" else None
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
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        for ext, saved in zip(extensions, state.get("extensions", [])):
            ext.load_state_dict(saved)
        t = int(state["iteration"])
        device = next(model.parameters()).device
        pending = [(l.to(device), c.to(device), int(n)) for l, c, n in state["pending"]]
        if best is not None and state.get("best"):
            best.restore(state["best"])
        if ddp and not distributed.is_main():  # rank 0's share holds every rank's sums
            pending = [(torch.zeros_like(l), torch.zeros_like(c), n) for l, c, n in pending]
    if ddp:
        distributed.check_same(model.state_dict(), f"the weights level {level} starts from (iteration {t})")
    log = log if distributed.is_main() else None
    if log is not None:  # drop what a killed attempt logged past the point we restart from
        resumed, at = t > start, t
        log.keep_only(lambda r: r.get("level", 0) < level
                      or (resumed and r.get("level") == level and r["iteration"] <= at))

    clock = time.perf_counter()

    def global_pending() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """``pending`` as a single process has it: (mean loss of the global batch, correct, examples);
        under torchrun, one all-reduce of every rank's sums since the last evaluation."""
        if not ddp or not pending:
            return pending
        sums = distributed.all_sum(torch.stack([torch.stack([p[0].double(), p[1].double()]) for p in pending]))
        return [(s[0] / p[2], s[1].round().long(), p[2]) for s, p in zip(sums, pending)]

    def record(iteration: int, done: Optional[list] = None) -> dict:
        row: dict = {"level": level, "iteration": iteration, "epoch": iteration / ipe, "lr": schedule(max(iteration - 1, 0))}
        done = global_pending() if done is None else done
        if done:
            losses = torch.stack([p[0] for p in done])
            row["train_loss"] = float(losses.double().mean())
            correct = int(torch.stack([p[1] for p in done]).sum())  # one read-back, not one per step
            row["train_accuracy"] = float(correct) / sum(p[2] for p in done)
        row["test_loss"], row["test_accuracy"] = evaluate(model, data.test, execution=execution)
        if data.val is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(model, data.val, execution=execution)
        row["seconds"] = time.perf_counter() - clock
        if log is not None:
            log.write(row)
        return row

    def check_finite(upto: int, done: Optional[list] = None) -> None:
        done = global_pending() if done is None else done
        if not done:
            return
        losses = torch.stack([p[0] for p in done])
        bad = torch.nonzero(~torch.isfinite(losses)).flatten()
        if len(bad):
            at = upto - len(pending) + int(bad[0]) + 1
            where = f"; last good resume state: {state_path}" if state_path is not None and state_path.exists() else ""
            raise TrainingDiverged(f"loss became {float(losses[bad[0]])} at iteration {at} (epoch {at / ipe:.2f}) of "
                                   f"level {level} at lr {hp.lr:g}; training stopped{where}. Lower --lr or check "
                                   f"the data")

    stop = False
    last = record(t) if t == start else {}
    if t == start and best is not None:
        best.update(model, last)
        stop = out_of_patience()
    if t == start and t in save_points and on_save is not None:
        on_save(t)
    bar = tqdm(total=end - start, initial=t - start, desc=f"level {level}", unit="it",
               disable=None if progress and distributed.is_main() else True, leave=False, dynamic_ncols=True)  # None: no bar in log files
    model.train()
    with distributed.global_batch_norm(model):  # under torchrun: the global batch's statistics
        while t < end and not stop:
            epoch = t // ipe
            torch.manual_seed(derive_seed(hp.seed, "dropout", level, epoch))
            for x, y in batches.epoch(epoch, skip=t - epoch * ipe):
                for ext in extensions:
                    ext.before_step(t)
                optimizers.set_lr(t)
                with autocast(execution.precision, device.type):
                    out = forward(_to_memory_format(x, execution.channels_last))
                    if ddp:  # this rank's share of the global batch's mean loss; DDP averages over ranks
                        n_global = min(hp.batch_size, len(data.train) - (t % ipe) * hp.batch_size)
                        loss_sum = F.cross_entropy(out, y, reduction="sum")
                        loss = loss_sum * (world / n_global)
                    else:
                        loss = F.cross_entropy(out, y)  # what is logged as train_loss (fp32 under autocast too)
                terms = [term for ext in extensions if (term := ext.loss()) is not None]
                optimizers.zero_grad()
                total_loss = loss + sum(terms) if terms else loss
                (total_loss if scaler is None else scaler.scale(total_loss)).backward()
                if ddp and others:
                    _average_gradients(others, world)
                optimizers.step(scaler)
                for ext in extensions:
                    ext.after_step(t)
                enforce()
                if ddp:  # sums of this rank's slice, with the global batch's length
                    pending.append((loss_sum.detach(), (out.argmax(1) == y).sum(), n_global))
                else:
                    pending.append((loss.detach(), (out.argmax(1) == y).sum(), len(y)))
                t += 1
                bar.update(1)
                if t in save_points and on_save is not None:
                    on_save(t)
                if t % eval_every == 0 or t == end:
                    done = global_pending()
                    check_finite(t, done)
                    last = record(t, done)
                    pending = []
                    bar.set_postfix(test_acc=f"{last['test_accuracy']:.3f}")
                    if best is not None:
                        best.update(model, last)
                stop = out_of_patience()
                if t == end or stop:
                    break
            if t % ipe == 0 and t < end and not stop:
                done = global_pending()
                check_finite(t, done)
                if state_path is not None and distributed.is_main():
                    # under torchrun: every rank's sums, which rank 0 alone takes back on resuming
                    kept = [(l * n, c, n) for l, c, n in done] if ddp else pending
                    atomic_save({"model": model.state_dict(), **optimizers.state_dict(), "iteration": t,
                                 **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                                 "extensions": [ext.state_dict() for ext in extensions],
                                 "pending": [(l.cpu(), c.cpu(), n) for l, c, n in kept],
                                 "best": best.state() if best is not None else None}, state_path)
                if on_epoch_end is not None:
                    on_epoch_end(t // ipe)
    bar.close()
    if execution.channels_last:  # checkpoints and the code after training see contiguous weights
        model.to(memory_format=torch.contiguous_format)
    if best is not None:
        model.load_state_dict({k: v.to(device) for k, v in best.weights.items()})
        last = dict(best.row)
    last["stopped_at"] = t
    return last
