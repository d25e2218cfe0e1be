"""Controls on an existing run's ticket (Havinga & Sawhney, "An analysis of neural network pruning in
relation to the LTH"; Liu et al., "Rethinking the value of network pruning"; Zhou et al.,
"Deconstructing lottery tickets: zeros, signs, and the supermask"), like OpenLTH's branches.

Each control takes level L of a finished IMP run, changes one thing, and trains the result with the
run's own hyperparameters in ``RUN/branches/CONTROL-HASH/`` (a training branch, ``training.branches``):

- ``reinit``          same mask, fresh random initialisation (``--seed``), trained from iteration 0.
- ``scratch-e``       Liu et al.'s Scratch-E: the pruned network from scratch for the same number of
                      iterations; for an unstructured mask this is ``reinit``'s experiment.
- ``scratch-b``       Scratch-B: as Scratch-E, trained longer to the dense run's compute budget: the
                      length (and the schedule's milestones and warm-up) scale by dense MACs / sparse
                      MACs per example, counting only kept weights in the sparse network.
- ``random-prune``    a random mask with the same number of weights kept in every layer, from the
                      run's rewind point W^k.
- ``reshuffle``       same mask; the surviving values of W^k are permuted within each layer.
- ``signed-constant`` same mask; each kept weight becomes sign(w) * std(layer) of W^k (Zhou et al.).

A fine-tuned parent (``imp --finetune E``, Liu et al.'s pruned-and-fine-tuned model) is accepted
like any IMP run: every control trains with the run's original (level-0) schedule and length, not
the E epochs of fine-tuning, so ``reinit``/``scratch-e`` are Liu et al.'s Scratch-E of level L's
architecture and ``scratch-b`` its Scratch-B. Such a run has k = 0, so W^k is W^0: ``random-prune``,
``reshuffle`` and ``signed-constant`` also train from iteration 0 of the original schedule, from W^0
under a random mask with the level's layer counts, from W^0's kept values permuted, or from W^0's
signed constants. None of the controls fine-tunes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .branches import BranchStart, train_run
from .checkpoint import read_checkpoint
from .cost import layer_macs
from .data import load_dataset
from .errors import UserError
from .hparams import Config
from .masks import Mask
from .models import build_model
from .runs import Run, load_mask, read_run_config, resolve_device
from .seeding import generator
from .steps import Step, parse_steps

CONTROLS = ("reinit", "scratch-e", "scratch-b", "random-prune", "reshuffle", "signed-constant")


def random_mask_like(mask: Mask, seed: int) -> Mask:
    """A random mask keeping exactly as many weights as ``mask`` in every layer."""
    gen = generator(seed, "random-mask")
    out = {}
    for name, m in mask.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=gen)[: int(m.sum())]] = True
        out[name] = flat.reshape(m.shape)
    return out


def reshuffle_kept(state: dict, mask: Mask, seed: int) -> dict:
    """``state`` with the kept values of each masked layer permuted among the kept positions."""
    gen = generator(seed, "reshuffle")
    out = dict(state)
    for name, m in mask.items():
        w = state[name].clone()
        kept = w[m]
        w[m] = kept[torch.randperm(len(kept), generator=gen)]
        out[name] = w
    return out


def signed_constants(state: dict, mask: Mask) -> dict:
    """``state`` with each kept weight replaced by sign(w) * std of its layer (Zhou et al.)."""
    out = dict(state)
    for name in mask:
        w = state[name]
        out[name] = torch.sign(w) * w.float().std().to(w.dtype)
    return out


def _scale_steps(text: str, factor: float, ipe: int) -> str:
    return ",".join(f"{int(round(s.iterations(ipe) * factor))}it" for s in parse_steps(text))


def sparse_budget_factor(model_name: str, num_classes: int, input_shape: tuple[int, ...], mask: Mask) -> float:
    """Dense MACs per example / MACs per example counting only the kept weights (Scratch-B)."""
    model = build_model(model_name, num_classes, input_shape, 0)
    macs = layer_macs(model, input_shape)
    first = next(iter(macs))
    dense = sum(3 * m for m in macs.values()) - macs[first]
    sparse = sum((3 - (name == first)) * m * int(mask[name].sum()) / mask[name].numel() for name, m in macs.items())
    return dense / sparse


def check_control(run_dir: str | Path, control: str, level: int, seed: Optional[int] = None) -> dict:
    """Check that ``control`` can run on level ``level`` of the IMP run in ``run_dir`` (nothing is
    written); return the run's ``config.json``. ``UserError`` (one line) otherwise."""
    if control not in CONTROLS:
        raise UserError(f"unknown control {control!r}; choose one of: {', '.join(CONTROLS)}")
    run_dir = Path(run_dir)
    if seed is not None and seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    saved = read_run_config(run_dir)
    if saved.get("algorithm") != "imp":
        raise UserError(f"controls apply to IMP/LOT runs; {run_dir} is a {saved.get('algorithm')!r} run")
    mask_path = run_dir / f"level_{level}" / "mask.pt"
    if not mask_path.exists() or not (run_dir / "level_0" / "rewind.pt").exists():
        raise UserError(f"{run_dir} has no finished level {level} (missing {mask_path.name} or level_0/rewind.pt)")
    return saved


def run_control(run_dir: str | Path, control: str, level: int, seed: Optional[int] = None, *,
                data_dir: Optional[str] = None, device: str = "auto", progress: bool = True) -> Run:
    """Train control ``control`` on level ``level`` of the IMP run in ``run_dir``; return the branch run."""
    saved = check_control(run_dir, control, level, seed)
    run_dir = Path(run_dir)
    mask_path = run_dir / f"level_{level}" / "mask.pt"
    config = Config.from_dict(saved["config"])
    seed = config.training.seed + 1 if seed is None else seed
    mask = load_mask(mask_path)
    source = saved.get("hash") or run_dir.name.rsplit("-", 1)[-1]
    identity = (f"source={source}", f"level={level}", f"seed={seed}")
    root = run_dir / "branches"
    dev = resolve_device(device)

    if control == "scratch-b":
        data = load_dataset(config.dataset, data_dir)
        ipe = -(-len(data.train) // config.training.batch_size)
        factor = sparse_budget_factor(config.model.model, data.num_classes, data.input_shape, mask)
        hp = config.training
        hp.train_for = f"{int(round(Step.parse(hp.train_for).iterations(ipe) * factor))}it"
        hp.milestones = _scale_steps(hp.milestones, factor, ipe)
        hp.warmup = f"{int(round(Step.parse(hp.warmup).iterations(ipe) * factor))}it"
        identity += (f"factor={factor:.6f}",)
    fresh_init = control in ("reinit", "scratch-e", "scratch-b")
    # a fresh initialisation is drawn from the control's seed: record it as the model seed
    run = Run(config, control, root, dev, data_dir, progress, identity, model_seed=seed if fresh_init else None,
              out_flag="branch folder")

    def make_start() -> BranchStart:
        meta = {"control": control, "source_run": source, "source_level": level}
        if config.pruning is not None and config.pruning.finetune:
            meta["source_finetune_epochs"] = config.pruning.finetune  # the parent fine-tuned; this trains from scratch
        if fresh_init:
            state = build_model(config.model.model, run.data.num_classes, run.data.input_shape, seed).state_dict()
            return BranchStart(state, mask, 0, False, meta)
        w_k = read_checkpoint(run_dir / "level_0" / "rewind.pt")["state_dict"]
        if control == "random-prune":
            return BranchStart(w_k, random_mask_like(mask, seed), run.rewind_iteration, False, meta)
        if control == "reshuffle":
            return BranchStart(reshuffle_kept(w_k, mask, seed), mask, run.rewind_iteration, False, meta)
        return BranchStart(signed_constants(w_k, mask), mask, run.rewind_iteration, False, meta)

    train_run(run, make_start)
    return _finish(run, progress)


def _finish(run: Run, progress: bool) -> Run:
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run
