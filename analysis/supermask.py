"""Supermasks and mask criteria (Zhou et al. 2019; seed 001's slides), and mask similarity.

- Supermask accuracy: the checkpoint's mask applied to the run's initial weights W^0, with no
  training, beside random masks with the same number of weights in every layer, over seeds.
- Mask criteria from W_init and W_final, keeping the top fraction of each layer by a score:
  large_final |w_f|, small_final -|w_f|, large_init |w_i|, small_init -|w_i|,
  large_init_large_final min(|w_i|, |w_f|), magnitude_increase |w_f| - |w_i|,
  movement |w_f - w_i|, random. For each: the untrained accuracy at W^0 and, with ``--train``, the
  accuracy after training from W^0 under each mask-0 action: pruned weights at zero, or frozen at
  their initial values.
- Similarity: per-layer and global density, and the Jaccard overlap |A & B| / |A | B| of two masks.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from training.checkpoint import atomic_write_text, load, read_checkpoint
from training.controls import random_mask_like
from training.errors import UserError
from training.hparams import Config
from training.loop import evaluate, train
from training.masks import Mask, apply_mask, density, layer_densities
from training.models import build_model
from training.pruning import prune_group
from training.runs import resolve_device

from .figure_io import pyplot, save_png

CRITERIA = {
    "large_final": lambda wi, wf: wf.abs(),
    "small_final": lambda wi, wf: -wf.abs(),
    "large_init": lambda wi, wf: wi.abs(),
    "small_init": lambda wi, wf: -wi.abs(),
    "large_init_large_final": lambda wi, wf: torch.minimum(wi.abs(), wf.abs()),
    "magnitude_increase": lambda wi, wf: wf.abs() - wi.abs(),
    "movement": lambda wi, wf: (wf - wi).abs(),
}
ACTIONS = ("zero", "init")


def jaccard(a: Mask, b: Mask) -> float:
    """|A & B| / |A | B| over all masked weights (1 for identical masks)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise UserError("the two masks cover different layers or shapes; compare masks of one architecture")
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0


def compare(a: Mask, b: Mask) -> dict:
    """Densities of both masks, per layer and global, and their Jaccard overlap (global and per layer)."""
    return {"density_a": density(a), "density_b": density(b), "jaccard": jaccard(a, b),
            "layers": {k: {"density_a": float(a[k].float().mean()), "density_b": float(b[k].float().mean()),
                           "jaccard": jaccard({k: a[k]}, {k: b[k]})} for k in a}}


def criterion_mask(w_init: dict, w_final: dict, names: list[str], criterion: str, keep: float, seed: int = 0) -> Mask:
    """Keep ``round(keep * size)`` weights of each layer with the highest criterion score."""
    if criterion not in CRITERIA and criterion != "random":
        raise UserError(f"unknown criterion {criterion!r}; choose one of: {', '.join([*CRITERIA, 'random'])}")
    if not 0 < keep < 1:
        raise UserError(f"--density must be in (0, 1), got {keep}")
    if criterion == "random":
        full = {n: torch.ones_like(w_init[n], dtype=torch.bool) for n in names}
        counts = {n: torch.zeros_like(full[n]) for n in names}
        for n in names:
            counts[n].view(-1)[: int(keep * full[n].numel() + 0.5)] = True
        return random_mask_like(counts, seed)
    mask = {}
    for n in names:
        scores = {n: CRITERIA[criterion](w_init[n].float(), w_final[n].float())}
        full = {n: torch.ones_like(w_init[n], dtype=torch.bool)}
        mask.update(prune_group(scores, full, [n], 1 - keep))
    return mask


def supermask_accuracy(model, mask: Optional[Mask], data) -> float:
    """Test accuracy of ``model`` (at its current weights, e.g. W^0) with ``mask`` applied, untrained."""
    masked = copy.deepcopy(model)
    apply_mask(masked, mask)
    return evaluate(masked, data.test)[1]


def _initial_model(ckpt: dict, device):
    spec = ckpt["model"]
    return build_model(spec["name"], spec["num_classes"], tuple(spec["input_shape"]), spec.get("seed", 0)).to(device)


def supermask_report(path: str | Path, seeds: int = 5, device: str = "auto", data_dir: Optional[str] = None) -> dict:
    """The checkpoint's mask on W^0, untrained, against random masks of the same layer-wise counts."""
    dev = resolve_device(device)
    loaded = load(path, dev, data_dir)
    if loaded.mask is None or all(bool(m.all()) for m in loaded.mask.values()):
        raise UserError(f"{path} prunes nothing; give a pruned checkpoint (a level >= 1 of an IMP run)")
    w0 = _initial_model(loaded.checkpoint, dev)
    ticket = supermask_accuracy(w0, loaded.mask, loaded.dataset)
    randoms = [supermask_accuracy(w0, {k: v.to(dev) for k, v in random_mask_like(loaded.mask, s).items()},
                                  loaded.dataset) for s in range(seeds)]
    return {"checkpoint": str(path), "density": density(loaded.mask), "supermask_accuracy": ticket,
            "random_mask_accuracy_mean": float(np.mean(randoms)), "random_mask_accuracy_std": float(np.std(randoms)),
            "random_mask_accuracies": randoms, "dense_init_accuracy": supermask_accuracy(w0, None, loaded.dataset),
            "layer_densities": layer_densities(loaded.mask)}


def criteria_table(final_path: str | Path, keep: float, train_masks: bool = False, device: str = "auto",
                   data_dir: Optional[str] = None, progress: bool = False) -> dict:
    """Zhou et al.'s criteria at density ``keep`` from the run's W^0 and the checkpoint's weights."""
    dev = resolve_device(device)
    loaded = load(final_path, dev, data_dir)
    ckpt = loaded.checkpoint
    w0 = _initial_model(ckpt, dev)
    w_init = {k: v.detach() for k, v in w0.state_dict().items()}
    w_final = {k: v.detach() for k, v in loaded.model.state_dict().items()}
    names = list(loaded.mask) if loaded.mask is not None else [
        n for n in w_init if n.endswith("weight") and w_init[n].dim() > 1]
    hp = Config.from_dict(ckpt["meta"]["config"]).training if train_masks else None
    rows = []
    for criterion in [*CRITERIA, "random"]:
        mask = {k: v.to(dev) for k, v in criterion_mask(w_init, w_final, names, criterion, keep).items()}
        row = {"criterion": criterion, "untrained_accuracy": supermask_accuracy(w0, mask, loaded.dataset)}
        if train_masks:
            for action in ACTIONS:
                model = copy.deepcopy(w0)
                frozen = {n: w_init[n] for n in mask} if action == "init" else None
                result = train(model, loaded.dataset, copy.deepcopy(hp), mask=mask, frozen=frozen, progress=progress)
                row[f"trained_accuracy_{action}"] = result["test_accuracy"]
        rows.append(row)
    return {"checkpoint": str(final_path), "density": keep, "trained": train_masks, "rows": rows}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.supermask",
        description="Supermask accuracy of a ticket's mask at initialisation, Zhou et al.'s mask criteria, "
                    "and mask similarity.",
        epilog="examples:\n  python -m analysis.supermask runs/imp-*/level_4/final.pt\n"
               "  python -m analysis.supermask runs/imp-*/level_0/final.pt --criteria --density 0.2 --train\n"
               "  python -m analysis.supermask --compare A/level_3/mask.pt B/level_3/mask.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="a pruned checkpoint; a trained one with --criteria; two with --compare")
    p.add_argument("--criteria", action="store_true", help="Zhou et al.'s criteria table (init: the run's W^0)")
    p.add_argument("--density", type=float, default=0.2, help="fraction of each layer kept for --criteria (default 0.2)")
    p.add_argument("--train", action="store_true", help="with --criteria: also train under each mask-0 action")
    p.add_argument("--compare", action="store_true", help="densities and Jaccard overlap of two masks")
    p.add_argument("--seeds", type=int, default=5, help="random masks for the baseline (default 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="supermask-out")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        if args.compare:
            if len(args.checkpoints) != 2:
                raise UserError("--compare takes two checkpoints or mask files")
            masks = [_mask_of(c) for c in args.checkpoints]
            result = compare(*masks)
            print(f"densities {100 * result['density_a']:.2f}% and {100 * result['density_b']:.2f}%, "
                  f"Jaccard overlap {result['jaccard']:.4f}")
            name = "similarity"
            fig_rows = [(k, v["jaccard"]) for k, v in result["layers"].items()]
        elif args.criteria:
            result = criteria_table(args.checkpoints[0], args.density, args.train, args.device, args.data_dir)
            print(f"{'criterion':<24} {'untrained':>9}" + ("  trained (zero)  trained (init)" if args.train else ""))
            for r in result["rows"]:
                line = f"{r['criterion']:<24} {100 * r['untrained_accuracy']:>8.2f}%"
                if args.train:
                    line += f"  {100 * r['trained_accuracy_zero']:>13.2f}%  {100 * r['trained_accuracy_init']:>13.2f}%"
                print(line)
            name = "criteria"
            fig_rows = [(r["criterion"], r["untrained_accuracy"]) for r in result["rows"]]
        else:
            result = {"results": [supermask_report(c, args.seeds, args.device, args.data_dir) for c in args.checkpoints]}
            for r in result["results"]:
                print(f"{r['checkpoint']}: {100 * r['density']:.2f}% of weights, untrained accuracy "
                      f"{100 * r['supermask_accuracy']:.2f}% vs random masks {100 * r['random_mask_accuracy_mean']:.2f}"
                      f" +- {100 * r['random_mask_accuracy_std']:.2f}% (dense init {100 * r['dense_init_accuracy']:.2f}%)")
            name = "supermask"
            fig_rows = [(Path(r["checkpoint"]).parent.name, r["supermask_accuracy"]) for r in result["results"]]
        atomic_write_text(out / f"{name}.json", json.dumps(result, indent=1) + "\n")
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(fig_rows)), 3.8))
        ax.bar([r[0] for r in fig_rows], [r[1] for r in fig_rows])
        ax.set(ylabel="Jaccard overlap" if args.compare else "accuracy", title=name)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        save_png(fig, out / f"{name}.png")
        print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _mask_of(path: str) -> Mask:
    from training.runs import load_mask

    obj = read_checkpoint(path) if not Path(path).name == "mask.pt" else None
    if obj is not None:
        if obj["mask"] is None:
            raise UserError(f"{path} has no mask")
        return obj["mask"]
    return load_mask(Path(path))


if __name__ == "__main__":
    sys.exit(main())
