"""Run folders: where a run's files live, how each level is trained and recorded, and resume.

A run lives in ``OUT/ALGORITHM-HASH/`` (the hash covers every hyperparameter that differs from
its default)::

    config.json          the full configuration
    metrics.jsonl        one line per evaluation, written while training runs
    summary.json / .csv  one entry per finished level: density, accuracy, checkpoint paths
    level_L/mask.pt      the level's mask
    level_L/init.pt      W^0 (masked), level_L/rewind.pt: W^k (masked), level_L/final.pt: trained
    level_L/state.pt     resume state while the level trains (removed once final.pt exists)

Each stage checks whether its output exists and skips itself if so: a killed run started again
with the same command continues where it stopped.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .cost import training_cost
from .data import Dataset, load_dataset
from .errors import UserError
from .hparams import Config, dumps
from .loop import check_lengths, train
from .masks import Mask, check_mask, count
from .metrics_log import MetricsLog
from .models import build_model, check_model_name

MASK_FORMAT = "lth-toolkit/mask"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def save_mask(mask: Mask, path: Path) -> None:
    ckpt_io.atomic_save({"format": MASK_FORMAT, "mask": {k: v.cpu() for k, v in mask.items()}}, path)


def load_mask(path: Path) -> Mask:
    obj = ckpt_io.safe_load(path, "mask file")
    if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
        obj = {"format": MASK_FORMAT, "mask": obj["mask"]}
    if not isinstance(obj, dict) or obj.get("format") != MASK_FORMAT or not isinstance(obj.get("mask"), dict):
        raise UserError(f"{path} is not a mask file written by this toolkit")
    return obj["mask"]


@dataclass
class Run:
    """One run folder and everything needed to train its levels."""

    config: Config
    algorithm: str
    root: Path
    device: torch.device
    data_dir: Optional[str] = None
    progress: bool = True
    extra_identity: tuple[str, ...] = ()
    on_epoch_end: Optional[Callable[[int], None]] = None
    validate: Optional[Callable[[nn.Module], None]] = None
    model_seed: Optional[int] = None  # the seed W^0 was drawn from, when not the run's (reinit controls)
    data: Dataset = field(init=False)

    def __post_init__(self) -> None:
        check_model_name(self.config.model.model)
        self.hash = self.config.hash(self.algorithm, *self.extra_identity)
        self.dir = Path(self.root) / f"{self.algorithm}-{self.hash}"
        self.data = load_dataset(self.config.dataset, self.data_dir).to(self.device)
        hp = self.config.training
        self.iterations_per_epoch = -(-len(self.data.train) // max(1, hp.batch_size))
        rewind = self.config.pruning.rewind if self.config.pruning else "0"
        self.total, self.rewind_iteration, _ = check_lengths(hp, self.iterations_per_epoch, rewind)
        # everything that can be checked is checked before the run folder exists
        reference = build_model(self.config.model.model, self.data.num_classes, self.data.input_shape,
                                self.config.training.seed)
        if self.validate is not None:
            self.validate(reference)
        self.log = MetricsLog(self.dir / "metrics.jsonl")
        self.dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.atomic_write_text(self.dir / "config.json", dumps(
            {"algorithm": self.algorithm, "hash": self.hash, "identity": list(self.extra_identity),
             "config": self.config.to_dict()}))

    # --- models and checkpoints -------------------------------------------------------------

    def new_model(self) -> nn.Module:
        """W^0: the model initialised from the run seed, on the run's device."""
        return build_model(self.config.model.model, self.data.num_classes, self.data.input_shape,
                           self.config.training.seed).to(self.device)

    def level_dir(self, level: int) -> Path:
        return self.dir / f"level_{level}"

    def save(self, model: nn.Module, mask: Optional[Mask], iteration: int, level: int, kind: str,
             extra: Optional[dict] = None) -> Path:
        """Write checkpoint ``level_L/KIND.pt`` of ``model`` at ``iteration``; return its path.

        ``extra["masked_weights"]`` says what the weights outside the mask hold: ``"zero"``
        (pruned, the default) or ``"frozen"`` (RISE: kept at their W^k values)."""
        path = self.level_dir(level) / f"{kind}.pt"
        model_seed = self.config.training.seed if self.model_seed is None else self.model_seed
        meta = {"run_hash": self.hash, "algorithm": self.algorithm, "level": level, "kind": kind,
                "seed": self.config.training.seed, "config": self.config.to_dict(), "masked_weights": "zero",
                **(extra or {})}
        ckpt_io.atomic_save(ckpt_io.make_checkpoint(
            model, model_name=self.config.model.model, num_classes=self.data.num_classes,
            input_shape=self.data.input_shape, seed=model_seed, dataset=self.config.dataset,
            mask=mask, iteration=iteration, iterations_per_epoch=self.iterations_per_epoch, meta=meta), path)
        return path

    def load_state(self, level: int, kind: str) -> dict:
        return ckpt_io.read_checkpoint(self.level_dir(level) / f"{kind}.pt")["state_dict"]

    def score_context(self, state: Optional[dict] = None, examples: int = 1024):
        """The network at ``state`` (W^0 if None) and up to ``examples`` training examples (a fixed
        seeded choice), for the SNIP and SynFlow scores."""
        from .saliency import ScoreContext
        from .seeding import generator

        model = self.new_model()
        if state is not None:
            model.load_state_dict(state)
        n = len(self.data.train)
        idx = torch.randperm(n, generator=generator(self.config.training.seed, "score-batches"))[: min(n, examples)]
        idx = idx.to(self.data.train.x.device)
        size = self.config.training.batch_size
        batches = [(self.data.train.x[idx[i : i + size]], self.data.train.y[idx[i : i + size]])
                   for i in range(0, len(idx), size)]
        return ScoreContext(model, self.data.input_shape, batches)

    def level_done(self, level: int) -> bool:
        return (self.level_dir(level) / "final.pt").exists()

    def mask_for(self, level: int, make: Callable[[], Mask]) -> Mask:
        """The level's mask: read from ``level_L/mask.pt``, or made by ``make`` and saved there."""
        path = self.level_dir(level) / "mask.pt"
        if path.exists():
            mask = load_mask(path)
        else:
            mask = make()
            save_mask(mask, path)
        return {k: v.to(self.device) for k, v in mask.items()}

    # --- training a level -------------------------------------------------------------------

    def train_level(self, level: int, model: nn.Module, mask: Optional[Mask], start: int,
                    save_points: Iterable[int] = (), on_save: Optional[Callable[[int], None]] = None,
                    frozen: Optional[dict[str, torch.Tensor]] = None) -> dict:
        """Train ``model`` from ``start`` to the end, resuming from ``level_L/state.pt`` if present;
        write ``final.pt`` and return its metrics.

        Weights outside ``mask`` are held at zero, or at ``frozen``'s values (RISE)."""
        if mask is not None:
            check_mask(mask, model)
        state = self.level_dir(level) / "state.pt"
        metrics = train(model, self.data, self.config.training, start=start, end=self.total, mask=mask,
                        log=self.log, level=level, save_points=save_points, on_save=on_save, state_path=state,
                        progress=self.progress, on_epoch_end=self.on_epoch_end, frozen=frozen)
        results = {k: v for k, v in metrics.items() if k.startswith(("test_", "val_", "train_"))}
        results["stopped_at"] = metrics["stopped_at"]
        cost = training_cost(model, self.data.input_shape, mask, start, metrics["stopped_at"], len(self.data.train),
                             self.config.training.batch_size)
        # with early stopping the weights are those of the best validation evaluation
        self.save(model, mask, metrics.get("iteration", self.total), level, "final",
                  {"results": results, "backprop_macs": cost, "start_iteration": start,
                   "masked_weights": "zero" if frozen is None else "frozen"})
        if state.exists():
            os.unlink(state)
        return metrics

    # --- summary ----------------------------------------------------------------------------

    def summary(self) -> list[dict]:
        """One entry per finished level, read back from the ``final.pt`` checkpoints."""
        entries, level = [], 0
        while self.level_done(level):
            final = ckpt_io.read_checkpoint(self.level_dir(level) / "final.pt")
            kept, total = count(final["mask"]) if final["mask"] is not None else (None, None)
            rel = lambda kind: f"level_{level}/{kind}.pt"  # noqa: E731
            kinds = ["mask", "init", "rewind", "final"] + sorted(
                p.stem for p in self.level_dir(level).glob("step_*.pt"))
            macs = final["meta"].get("backprop_macs", {}).get("total")
            cumulative = (entries[-1]["cumulative_backprop_macs"] if entries else 0.0) + (macs or 0.0)
            entries.append({
                "level": level, "density": final["meta"]["density"], "weights_kept": kept,
                "weights_prunable": total, **final["meta"].get("results", {}),
                "backprop_macs": macs, "cumulative_backprop_macs": cumulative,
                "checkpoints": {k: rel(k) for k in kinds if (self.level_dir(level) / f"{k}.pt").exists()},
            })
            level += 1
        return entries

    def write_summary(self) -> list[dict]:
        entries = self.summary()
        ckpt_io.atomic_write_text(self.dir / "summary.json", dumps(
            {"run": self.hash, "algorithm": self.algorithm, "folder": str(self.dir), "levels": entries}))
        columns = ["level", "density", "weights_kept", "weights_prunable", "test_accuracy", "test_loss",
                   "val_accuracy", "val_loss", "train_accuracy", "train_loss", "backprop_macs",
                   "cumulative_backprop_macs"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(entries)
        ckpt_io.atomic_write_text(self.dir / "summary.csv", buffer.getvalue())
        return entries

    def print_summary(self, entries: list[dict]) -> None:
        has_val = any("val_accuracy" in e for e in entries)
        head = f"{'level':>5}  {'density':>8}  {'test acc':>8}" + (f"  {'val acc':>8}" if has_val else "")
        print(head + f"  {'backprop MACs (cumulative)':>26}")
        for e in entries:
            line = f"{e['level']:>5}  {100 * e['density']:>7.2f}%  {100 * e['test_accuracy']:>7.2f}%"
            if has_val:
                line += f"  {100 * e.get('val_accuracy', float('nan')):>7.2f}%"
            print(line + f"  {e['cumulative_backprop_macs']:>26.3e}")
        print(f"run folder: {self.dir}")

