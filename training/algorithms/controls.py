"""Controls on an existing run's ticket (Havinga & Sawhney, "An analysis of neural network pruning in
relation to the LTH"; Liu et al., "Rethinking the value of network pruning"; Zhou et al.,
"Deconstructing lottery tickets: zeros, signs, and the supermask"), like OpenLTH's branches.

Each control takes level L of a finished IMP run, changes one thing, and trains the result with the
run's own hyperparameters in ``RUN/branches/CONTROL-HASH/`` (a training branch, ``training.engine.branches``):

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

import dataclasses

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from training.engine.branches import BranchStart, train_run
from training.engine.checkpoint import read_checkpoint
from training.cli import add_threads_flag, check_threads, writable_dir
from training.commands import HAVINGA, Command
from training.engine.cost import layer_macs
from training.data import load_dataset
from training.errors import UserError
from training.hparams import Config
from training.sparsity.masks import Mask
from training.models import build_model
from training.engine.runs import Run, load_mask, read_run_config, resolve_device
from training.engine.seeding import generator
from training.engine.steps import Step, parse_steps



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


@dataclass
class ControlSource:
    """What a control starts from: the parent run's folder, level ``level``'s mask, the control's
    seed, and the branch run being made (its data, its rewind iteration)."""

    run_dir: Path
    level: int
    mask: Mask
    seed: int
    run: Run

    def rewind_weights(self) -> dict:
        """W^k, the parent's weights at its rewind point (``level_0/rewind.pt``)."""
        return read_checkpoint(self.run_dir / "level_0" / "rewind.pt")["state_dict"]


@dataclass(frozen=True)
class Control:
    """A control: ``start(source)`` returns the weights, mask and iteration the branch trains
    from. ``fresh_init``: the weights are a new initialisation drawn from the control's seed (it
    is recorded as the branch's model seed). ``rescale(config, mask, data_dir)``, when set,
    changes the training length in place before the branch is made and returns the identity entry
    that records the change."""

    name: str
    start: Callable[[ControlSource], tuple[dict, Mask, int]]
    fresh_init: bool = False
    rescale: Optional[Callable[[Config, Mask, Optional[str]], str]] = None


def _fresh_start(src: ControlSource) -> tuple[dict, Mask, int]:
    config = src.run.config
    state = build_model(config.model.model, src.run.data.num_classes, src.run.data.input_shape, src.seed).state_dict()
    return state, src.mask, 0


def _scratch_b_budget(config: Config, mask: Mask, data_dir: Optional[str]) -> str:
    """Scale the training length, milestones and warm-up by dense MACs / sparse MACs per example."""
    data = load_dataset(config.dataset, data_dir)
    ipe = -(-len(data.train) // config.training.batch_size)
    factor = sparse_budget_factor(config.model.model, data.num_classes, data.input_shape, mask)
    hp = config.training
    hp.train_for = f"{int(round(Step.parse(hp.train_for).iterations(ipe) * factor))}it"
    hp.milestones = _scale_steps(hp.milestones, factor, ipe)
    hp.warmup = f"{int(round(Step.parse(hp.warmup).iterations(ipe) * factor))}it"
    return f"factor={factor:.6f}"


CONTROLS: dict[str, Control] = {c.name: c for c in (
    Control("reinit", _fresh_start, fresh_init=True),
    Control("scratch-e", _fresh_start, fresh_init=True),
    Control("scratch-b", _fresh_start, fresh_init=True, rescale=_scratch_b_budget),
    Control("random-prune", lambda src: (src.rewind_weights(), random_mask_like(src.mask, src.seed),
                                         src.run.rewind_iteration)),
    Control("reshuffle", lambda src: (reshuffle_kept(src.rewind_weights(), src.mask, src.seed), src.mask,
                                      src.run.rewind_iteration)),
    Control("signed-constant", lambda src: (signed_constants(src.rewind_weights(), src.mask), src.mask,
                                            src.run.rewind_iteration)),
)}


def control_named(name: str) -> Control:
    """The registered control ``name``; ``UserError`` (one line) for an unknown one."""
    if name not in CONTROLS:
        raise UserError(f"unknown control {name!r}; choose one of: {', '.join(CONTROLS)}")
    return CONTROLS[name]


def check_control(run_dir: str | Path, control: str, level: int, seed: Optional[int] = None) -> dict:
    """Check that ``control`` can run on level ``level`` of the IMP run in ``run_dir`` (nothing is
    written); return the run's ``config.json``. ``UserError`` (one line) otherwise."""
    control_named(control)
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
                data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
                threads: Optional[int] = None) -> Run:
    """Train control ``control`` on level ``level`` of the IMP run in ``run_dir`` with the run's
    execution settings (``threads``, when given, replaces its CPU thread count, and names another
    branch); return the branch run."""
    saved = check_control(run_dir, control, level, seed)
    run_dir = Path(run_dir)
    mask_path = run_dir / f"level_{level}" / "mask.pt"
    config = Config.from_dict(saved["config"])
    if threads is not None:
        config.execution = dataclasses.replace(config.execution, threads=threads)
    seed = config.training.seed + 1 if seed is None else seed
    mask = load_mask(mask_path)
    source = saved.get("hash") or run_dir.name.rsplit("-", 1)[-1]
    identity = (f"source={source}", f"level={level}", f"seed={seed}")
    root = run_dir / "branches"
    dev = resolve_device(device)
    kind = control_named(control)
    if kind.rescale is not None:
        identity += (kind.rescale(config, mask, data_dir),)
    # a fresh initialisation is drawn from the control's seed: record it as the model seed
    run = Run(config, control, root, dev, data_dir, progress, identity, model_seed=seed if kind.fresh_init else None,
              out_flag="branch folder", levels=1)

    def make_start() -> BranchStart:
        meta = {"control": control, "source_run": source, "source_level": level}
        if config.pruning is not None and config.pruning.finetune:
            meta["source_finetune_epochs"] = config.pruning.finetune  # the parent fine-tuned; this trains from scratch
        state, start_mask, iteration = kind.start(ControlSource(run_dir, level, mask, seed, run))
        return BranchStart(state, start_mask, iteration, False, meta)

    train_run(run, make_start)
    return _finish(run, progress)


def _finish(run: Run, progress: bool) -> Run:
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run


def _flags(parser) -> None:
    parser.add_argument("name", help="which control (see below)")
    parser.add_argument("run", help="the IMP run folder")
    parser.add_argument("--level", type=int, required=True, help="which level's mask")
    parser.add_argument("--seed", type=int, help="seed of the control's randomness (default: run seed + 1)")
    parser.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_threads_flag(parser, help="CPU threads for torch (default: the run's own); on the CPU another count than the "
                     "run's is another branch, since it changes the results")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")


def _prepare(args):
    check_threads(args.threads)
    resolve_device(args.device)
    check_control(args.run, args.name, args.level, args.seed)
    writable_dir(args.run, flag="RUN")  # the branch is written under RUN/branches/

    def go() -> Run:
        return run_control(args.run, args.name, args.level, args.seed, data_dir=args.data_dir, device=args.device,
                           progress=not args.no_progress, threads=args.threads)

    return go


CONTROL = Command(
    "control", "a control on an IMP run's ticket: reinit, random-prune, reshuffle, ...",
    "Train a control on level L of a finished IMP/LOT run (the controls compared by " + HAVINGA + "; Liu et al., "
    "\"Rethinking the value of network pruning\"; Zhou et al., \"Deconstructing lottery tickets\"); the branch "
    "lives in RUN/branches/.",
    f"controls: {', '.join(CONTROLS)}\n"
    "A fine-tuned run (imp --finetune) is a parent like any other: every control trains\n"
    "from iteration 0 with the run's original schedule and length (Scratch-E/B), not the\n"
    "fine-tuning's.\n"
    "example:\n  python -m training control reinit runs/imp-f6ec9936304d --level 4",
    _flags, _prepare)
