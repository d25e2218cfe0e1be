"""Training branches: a network trained from a point of an existing run, stored under that run.

A branch takes a checkpoint of a run (its weights, its mask, its iteration), optionally changes the
mask, the weights or the data-order seed, and trains to the end of the run's schedule with the
run's own hyperparameters. It lives in ``RUN/branches/NAME-HASH/``, a run folder of its own (built
on ``training.engine.runs.Run``; the hash covers the source and every change), with a single level::

    level_0/mask.pt      the branch's mask
    level_0/init.pt      the weights it starts from, at the iteration it starts from
    level_0/state.pt     resume state while it trains
    level_0/final.pt     the trained network

So a branch resumes where it stopped when it is asked for again, and a finished branch is not
trained twice. The controls (``training.algorithms.controls``), the instability copies of
``analysis.connectivity --instability`` and the trained masks of ``analysis.supermask --criteria
--train`` are all branches.

Weights outside the mask are held at zero, or, when the source checkpoint says
``meta["masked_weights"] == "frozen"`` (RISE) or ``frozen=True`` is asked for, kept at their
starting values, bit for bit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from training.engine.checkpoint import masked_weights_are_zero, model_from_checkpoint, read_checkpoint
from training.cli import writable_dir
from training.errors import UserError
from training.hparams import Config
from training.engine.loop import check_lengths
from training.sparsity.masks import Mask, apply_mask
from training.engine.runs import Run, resolve_device

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclass
class BranchStart:
    """Where a branch starts: the weights (a state dict), the mask, the iteration, and whether the
    weights outside the mask stay frozen at their starting values (else they are zero)."""

    state: dict
    mask: Optional[Mask]
    iteration: int
    frozen: bool = False
    meta: dict = field(default_factory=dict)  # written into the branch's init.pt and final.pt


def train_run(run: Run, make_start: Callable[[], BranchStart]) -> Path:
    """Train the single level of branch ``run`` and return the path of its ``level_0/final.pt``.

    A finished branch returns at once. A branch whose ``level_0/init.pt`` exists (it was started
    before) continues from that file and its resume state; otherwise ``make_start()`` says where
    to start, and the mask and the starting weights are saved first."""
    final = run.level_dir(0) / "final.pt"
    if run.level_done(0):
        return final
    init_path = run.level_dir(0) / "init.pt"
    if init_path.exists():
        init = read_checkpoint(init_path)
        start = BranchStart(init["state_dict"], init["mask"], int(init["step"]["iteration"]),
                            not masked_weights_are_zero(init), {})
        extra = {k: v for k, v in init["meta"].items()
                 if k not in ("run_hash", "algorithm", "level", "kind", "seed", "config", "density")}
    else:
        start = make_start()
        extra = {**start.meta, "masked_weights": "frozen" if start.frozen else "zero"}
    model = model_from_checkpoint({"model": _model_spec(run), "state_dict": start.state, "mask": None},
                                  init_path).to(run.device)
    mask = None
    if start.mask is not None:
        mask = run.mask_for(0, lambda: {k: v.cpu() for k, v in start.mask.items()})
    frozen = None
    if start.frozen and mask is not None:
        frozen = {name: start.state[name].to(run.device) for name in mask}
    elif mask is not None:
        apply_mask(model, mask)
    if not init_path.exists():
        run.save(model, mask, start.iteration, 0, "init", extra)
    run.train_level(0, model, mask, start=start.iteration, frozen=frozen)
    run.write_summary()  # the runs index reads the branch's accuracy and densities from it
    return final


def _model_spec(run: Run) -> dict:
    seed = run.config.training.seed if run.model_seed is None else run.model_seed
    return {"name": run.config.model.model, "num_classes": run.data.num_classes,
            "input_shape": list(run.data.input_shape), "seed": seed}


def tensor_digest(tensors: dict) -> str:
    """12 hex digits identifying a dict of tensors (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).reshape(-1).numpy().tobytes())
    return h.hexdigest()[:12]


def source_run(checkpoint: str | Path) -> tuple[Path, dict]:
    """The run folder a checkpoint ``RUN/level_L/KIND.pt`` belongs to, and the checkpoint."""
    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    run_dir = path.parent.parent
    if "run_hash" not in ckpt["meta"] or "config" not in ckpt["meta"] or not (run_dir / "config.json").exists():
        raise UserError(f"{path} is not a checkpoint inside a run folder (RUN/level_L/KIND.pt with RUN/config.json);"
                        " a branch is trained with its run's settings and stored under that run")
    return run_dir, ckpt


def branch_root(checkpoint: str | Path) -> Path:
    """The folder where branches of ``checkpoint`` are stored, ``RUN/branches``, created and checked
    writable; raises ``UserError`` (one line) otherwise. Commands call it for every checkpoint
    before training any branch."""
    run_dir, _ = source_run(checkpoint)
    return writable_dir(run_dir / "branches", flag="branch folder")


def train_branch(checkpoint: str | Path, name: str, seed: Optional[int] = None, *, mask: Optional[Mask] = None,
                 weights: Optional[dict] = None, start: Optional[int] = None, frozen: Optional[bool] = None,
                 data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
                 on_epoch_end: Optional[Callable[[int], None]] = None) -> Path:
    """Train a branch from ``checkpoint`` to the end of its run's schedule; return the path of the
    branch's final checkpoint, ``RUN/branches/NAME-HASH/level_0/final.pt``.

    By default the branch starts from the checkpoint's weights, mask and iteration, with its
    run's data-order seed; from a fine-tuned level's ``rewind.pt`` (``imp --finetune``) it trains
    with that level's fine-tuning length and rate. ``seed`` replaces the data-order (and augmentation) seed; the model
    seed recorded in the branch stays the checkpoint's. ``mask`` and ``weights`` (a full state
    dict) replace the checkpoint's, ``start`` its iteration. ``frozen`` keeps the weights outside
    the mask at their starting values instead of zero; by default it follows the checkpoint's
    ``meta["masked_weights"]`` (``"frozen"`` for RISE). Asking again for the same branch resumes
    it, or returns at once when it has finished."""
    if not _NAME.match(name):
        raise UserError(f"branch name {name!r} must be letters, digits and . _ = + -")
    run_dir, ckpt = source_run(checkpoint)
    branch_root(checkpoint)
    config = Config.from_dict(ckpt["meta"]["config"])
    finetune = ckpt["meta"].get("finetune")
    if finetune is not None:  # the start of a fine-tuned level (imp --finetune): the branch continues the fine-tuning
        config.training = dataclasses.replace(config.training, train_for=f"{int(finetune['epochs'])}ep",
                                              schedule="constant", milestones="", warmup="0", lr=float(finetune["lr"]))
    if seed is not None:
        config.training.seed = int(seed)
    frozen = (not masked_weights_are_zero(ckpt)) if frozen is None else bool(frozen)
    use_mask = ckpt["mask"] if mask is None else {k: v.detach().cpu().bool() for k, v in mask.items()}
    state = ckpt["state_dict"] if weights is None else {k: v.detach().cpu() for k, v in weights.items()}
    iteration = int(ckpt["step"]["iteration"]) if start is None else int(start)
    rel = f"{Path(checkpoint).parent.name}/{Path(checkpoint).name}"
    identity = (f"source={ckpt['meta']['run_hash']}", f"checkpoint={rel}", f"seed={config.training.seed}",
                f"masked={'frozen' if frozen else 'zero'}")
    if mask is not None:
        identity += (f"mask={tensor_digest(use_mask)}",)
    if weights is not None:
        identity += (f"weights={tensor_digest(state)}",)
    if start is not None:
        identity += (f"start={iteration}",)
    rewind = config.pruning.rewind if config.pruning else "0"
    total, _, _ = check_lengths(config.training, int(ckpt["step"]["iterations_per_epoch"]), rewind)
    if iteration > total:
        raise UserError(f"{checkpoint} is at iteration {iteration}, after the end of its run's schedule "
                        f"({total} it); there is nothing left to train")
    run = Run(config, name, run_dir / "branches", resolve_device(device), data_dir, progress, identity,
              on_epoch_end=on_epoch_end, model_seed=int(ckpt["model"].get("seed", 0)), out_flag="branch folder", levels=1)
    with run:  # the branch folder's lock is released as soon as the branch is done
        meta = {"branch_of": str(Path(checkpoint)), "source_run": ckpt["meta"]["run_hash"]}
        return train_run(run, lambda: BranchStart(state, use_mask, iteration, frozen, meta))

