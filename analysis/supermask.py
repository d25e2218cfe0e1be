"""Supermasks and mask criteria (Zhou et al. 2019, "Deconstructing lottery tickets: zeros, signs, and the
supermask"; the lecture slides "From model pruning to sparse updates and the LTH"), and mask similarity.

W^0 is always read from the run's saved ``init.pt`` (``initial_weights``), never rebuilt from a seed.

- Supermask accuracy: the checkpoint's mask applied to the run's initial weights W^0, with no
  training, beside random masks with the same number of weights in every layer, over seeds.
- Mask criteria from W_init and W_final, keeping the top fraction of each layer by a score:
  large_final |w_f|, small_final -|w_f|, large_init |w_i|, small_init -|w_i|,
  large_init_large_final min(|w_i|, |w_f|), magnitude_increase |w_f| - |w_i|,
  movement |w_f - w_i|, random. For each: the untrained accuracy at W^0 and, with ``--train``, the
  accuracy after training from W^0 under each mask-0 action: pruned weights at zero, or frozen at
  their initial values. These networks are training branches (``training.branches``), stored and
  resumable under the run.
- Similarity: per-layer and global density, and the Jaccard overlap |A & B| / |A | B| of two masks.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from training.branches import branch_root, train_branch
from training.checkpoint import (
    atomic_write_text,
    load,
    masked_weights_are_zero,
    model_from_checkpoint,
    read_checkpoint,
)
from training.cli import ArgumentParser, run_command, writable_dir
from training.controls import random_mask_like
from training.errors import UserError
from training.hparams import Config
from training.loop import evaluate
from training.masks import Mask, apply_mask, density, layer_densities
from training.pruning import prune_group
from training.runs import resolve_device

from .figure_io import checkpoint_label, pyplot, save_png, unique_labels

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
    """Test accuracy (a fraction in [0, 1]) of ``model`` at its current weights (e.g. W^0) with
    ``mask`` applied (weights outside it set to zero), untrained."""
    masked = copy.deepcopy(model)
    apply_mask(masked, mask)
    return evaluate(masked, data.test)[1]


@dataclass
class InitialWeights:
    """W^0 of a checkpoint's run: its state dict, the file it was read from, and whether it is
    the full W^0 (``unmasked``) or only its values inside a mask (zero elsewhere)."""

    state: dict
    path: Path
    unmasked: bool


def _prunes_something(mask: Optional[Mask]) -> bool:
    return mask is not None and not all(bool(m.all()) for m in mask.values())


def initial_weights(path: str | Path) -> InitialWeights:
    """W^0 for the checkpoint ``RUN/level_L/KIND.pt``, read from the saved ``level_L/init.pt``
    beside it (for a branch: the branch's own ``level_0/init.pt``), never rebuilt from a seed.

    A run's ``level_L/init.pt`` holds W^0 under level L's mask: the pruned positions are zero.
    The criteria and the random-mask baselines need W^0 at those positions too. An IMP run's
    ``level_0/init.pt`` is W^0 before any pruning (level 0 is dense), so for a checkpoint of such
    a run the full W^0 is read from there. Where no dense W^0 of the same run exists (a branch,
    pruning at initialisation), the masked W^0 is returned with ``unmasked=False``."""
    path = Path(path)
    init_path = path.parent / "init.pt"
    if not init_path.exists():
        raise UserError(f"{path}: W^0 is read from the run's saved init.pt and {init_path} does not exist; "
                        "give a checkpoint inside its run folder (RUN/level_L/KIND.pt)")
    init = read_checkpoint(init_path)
    if int(init["step"]["iteration"]) != 0:
        # a branch that starts from a later point (random-prune, reshuffle, instability copies):
        # its init.pt holds those weights, and W^0 is its source run's (RUN/branches/NAME-HASH/level_0/)
        source = path.parent.parent.parent.parent / "level_0" / "init.pt"
        if source.exists() and read_checkpoint(source)["meta"].get("run_hash") == init["meta"].get("source_run"):
            return initial_weights(source)
        raise UserError(f"{init_path} starts at iteration {init['step']['iteration']}, so it is not W^0, and the "
                        "run it branched from is not in the folder above it; give a checkpoint of that run")
    if not _prunes_something(init["mask"]) or not masked_weights_are_zero(init):
        return InitialWeights(init["state_dict"], init_path, True)
    level0 = path.parent.parent / "level_0" / "init.pt"
    if level0.exists() and level0.resolve() != init_path.resolve():
        dense = read_checkpoint(level0)
        if (dense["meta"].get("run_hash") == init["meta"].get("run_hash") and not _prunes_something(dense["mask"])
                and dense["model"] == init["model"]):
            return InitialWeights(dense["state_dict"], level0, True)
    return InitialWeights(init["state_dict"], init_path, False)


def _initial_model(ckpt: dict, w0: InitialWeights, device) -> torch.nn.Module:
    return model_from_checkpoint({"model": ckpt["model"], "state_dict": w0.state, "mask": None}, w0.path).to(device)


MASKED_W0_NOTE = ("W^0 is saved only under this run's mask ({path}); the random-mask and dense baselines "
                  "would see zeros where it pruned, so they are left out")


def supermask_report(path: str | Path, seeds: int = 5, device: str = "auto", data_dir: Optional[str] = None) -> dict:
    """The checkpoint's mask on its run's W^0, untrained, against ``seeds`` random masks with the
    same number of weights in every layer, and the dense W^0. Accuracies are fractions in [0, 1];
    the random and dense baselines are None when only a masked W^0 was saved (see
    ``initial_weights``)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    dev = resolve_device(device)
    loaded = load(path, dev, data_dir)
    if not _prunes_something(loaded.mask):
        raise UserError(f"{path} prunes nothing; give a pruned checkpoint (a level >= 1 of an IMP run)")
    w0_file = initial_weights(path)
    w0 = _initial_model(loaded.checkpoint, w0_file, dev)
    ticket = supermask_accuracy(w0, loaded.mask, loaded.dataset)
    randoms, dense, note = None, None, None
    if w0_file.unmasked:
        randoms = [supermask_accuracy(w0, {k: v.to(dev) for k, v in random_mask_like(loaded.mask, s).items()},
                                      loaded.dataset) for s in range(seeds)]
        dense = supermask_accuracy(w0, None, loaded.dataset)
    else:
        note = MASKED_W0_NOTE.format(path=w0_file.path)
    return {"checkpoint": str(path), "label": checkpoint_label(path, loaded.checkpoint),
            "num_classes": loaded.dataset.num_classes, "w0": str(w0_file.path), "w0_unmasked": w0_file.unmasked,
            "density": density(loaded.mask), "supermask_accuracy": ticket,
            "random_mask_accuracy_mean": None if randoms is None else float(np.mean(randoms)),
            "random_mask_accuracy_std": None if randoms is None else float(np.std(randoms)),
            "random_mask_accuracies": randoms, "dense_init_accuracy": dense, "note": note,
            "layer_densities": layer_densities(loaded.mask)}


def criteria_table(final_path: str | Path, keep: float, train_masks: bool = False, device: str = "auto",
                   data_dir: Optional[str] = None, progress: bool = False,
                   criteria: Optional[Sequence[str]] = None) -> dict:
    """Zhou et al.'s criteria at density ``keep`` from the run's W^0 (``initial_weights``) and the
    checkpoint's weights. Each row has the untrained accuracy of the criterion's mask on W^0 and,
    with ``train_masks``, the test accuracy after training it from W^0 for the run's whole
    schedule, pruned weights at zero (``trained_accuracy_zero``) or frozen at W^0
    (``trained_accuracy_init``); accuracies are fractions in [0, 1]. Each trained network is a
    training branch (``training.branches``) under the checkpoint's run, named
    ``criterion-CRITERION-ACTION``: a second call reads the finished branches instead of training.
    ``criteria`` limits the table to those criteria (default: all, and ``random``)."""
    criteria = [*CRITERIA, "random"] if criteria is None else list(criteria)
    unknown = [c for c in criteria if c not in CRITERIA and c != "random"]
    if unknown:
        raise UserError(f"unknown criterion {unknown[0]!r}; choose from: {', '.join([*CRITERIA, 'random'])}")
    if not 0 < keep < 1:
        raise UserError(f"--density must be in (0, 1), got {keep}")
    dev = resolve_device(device)
    loaded = load(final_path, dev, data_dir)
    ckpt = loaded.checkpoint
    w0_file = initial_weights(final_path)
    w0 = _initial_model(ckpt, w0_file, dev)
    w_init = {k: v.detach() for k, v in w0.state_dict().items()}
    w_final = {k: v.detach() for k, v in loaded.model.state_dict().items()}
    names = list(loaded.mask) if loaded.mask is not None else [
        n for n in w_init if n.endswith("weight") and w_init[n].dim() > 1]
    rows = []
    for criterion in criteria:
        mask = {k: v.to(dev) for k, v in criterion_mask(w_init, w_final, names, criterion, keep).items()}
        row = {"criterion": criterion, "untrained_accuracy": supermask_accuracy(w0, mask, loaded.dataset)}
        if train_masks:
            for action in ACTIONS:
                final = train_branch(final_path, f"criterion-{criterion}-{action}", mask=mask, weights=w_init,
                                     start=0, frozen=action == "init", data_dir=data_dir, device=device,
                                     progress=progress)
                trained = read_checkpoint(final)
                row[f"trained_accuracy_{action}"] = trained["meta"]["results"]["test_accuracy"]
                row[f"trained_checkpoint_{action}"] = str(final)
                row[f"trained_iterations_{action}"] = int(trained["step"]["iteration"])
        rows.append(row)
    config = Config.from_dict(ckpt["meta"]["config"]) if "config" in ckpt["meta"] else None
    return {"checkpoint": str(final_path), "label": checkpoint_label(final_path, ckpt), "density": keep,
            "num_classes": loaded.dataset.num_classes, "w0": str(w0_file.path), "w0_unmasked": w0_file.unmasked,
            "trained": train_masks, "train_for": config.training.train_for if config else None, "rows": rows,
            "checkpoint_accuracy": (ckpt["meta"].get("results") or {}).get("test_accuracy")}


def _chance(ax, num_classes: int) -> None:
    ax.axhline(100 / num_classes, color="k", ls=":", lw=1, label=f"chance (1/{num_classes} classes)")


def plot_supermask(results: list[dict], path: Path) -> None:
    """One group of bars per checkpoint: its mask on W^0, random masks of the same layer-wise
    counts (mean, error bar: standard deviation over seeds) and the dense W^0; test accuracy in %."""
    plt = pyplot()
    labels = unique_labels([r["label"] for r in results])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(results) + 2), 4.4))
    x = np.arange(len(results))
    width = 0.27
    pct = lambda v: np.nan if v is None else 100 * v  # noqa: E731
    ax.bar(x - width, [pct(r["supermask_accuracy"]) for r in results], width, color="C0",
           label="ticket's mask on W^0")
    ax.bar(x, [pct(r["random_mask_accuracy_mean"]) for r in results], width, color="C7",
           yerr=[pct(r["random_mask_accuracy_std"]) for r in results], capsize=3,
           label=f"random masks, same layer counts (mean +- s.d., {len(results[0]['random_mask_accuracies'] or [])} seeds)")
    ax.bar(x + width, [pct(r["dense_init_accuracy"]) for r in results], width, color="C2", label="dense W^0")
    for i, r in enumerate(results):
        if r["random_mask_accuracy_mean"] is None:
            ax.text(x[i] + width / 2, 14, "no baselines:\nW^0 saved only\nunder the mask", ha="center",
                    va="bottom", fontsize=6)
    _chance(ax, results[0]["num_classes"])
    ax.set_xticks(x, labels, rotation=20 if len(results) > 2 else 0, ha="right" if len(results) > 2 else "center",
                  rotation_mode="anchor", fontsize=8)
    ax.set(ylabel="test accuracy, untrained (%)", ylim=(0, 100), xlim=(-0.6, len(results) - 0.4),
           title="Supermask: the mask applied to the initial weights W^0, no training")
    ax.legend(fontsize=7, loc="upper right")
    save_png(fig, path)


def plot_criteria(result: dict, path: Path) -> None:
    """Test accuracy (%) of every criterion's mask: untrained on W^0 and, when trained, after
    training with mask-0 = zero and mask-0 = init (Zhou et al.)."""
    plt = pyplot()
    rows = result["rows"]
    series = [("untrained_accuracy", "untrained (mask on W^0)", "C0")]
    if result["trained"]:
        series += [("trained_accuracy_zero", "trained, pruned weights = 0 (mask-0 = zero)", "C1"),
                   ("trained_accuracy_init", "trained, pruned weights frozen at W^0 (mask-0 = init)", "C2")]
    fig, ax = plt.subplots(figsize=(10, 4.6))
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    for i, (key, label, color) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [100 * r[key] for r in rows], width, label=label, color=color)
    _chance(ax, result["num_classes"])
    if result.get("checkpoint_accuracy") is not None:  # the trained network the criteria start from
        ax.axhline(100 * result["checkpoint_accuracy"], color="k", ls="--", lw=1,
                   label=f"the checkpoint itself ({100 * result['checkpoint_accuracy']:.1f}%)")
    ax.set_xticks(x, [r["criterion"] for r in rows], rotation=25, ha="right", rotation_mode="anchor", fontsize=8)
    what = f"{result['label']}: masks keeping {100 * result['density']:.1f}% of each layer"
    how = (f"trained from W^0 for the run's schedule ({result['train_for']}, "
           f"{rows[0]['trained_iterations_zero']} it)" if result["trained"] else "untrained only (add --train)")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), xlabel="mask criterion (Zhou et al.)",
           title=f"{what}\n{how}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # outside: bars reach 100%
    save_png(fig, path)


def plot_similarity(result: dict, path: Path) -> None:
    """Jaccard overlap of the two masks per layer and globally, beside the overlap two independent
    random masks of the same densities would have."""
    plt = pyplot()
    names = [*result["layers"], "global"]
    rows = [*result["layers"].values(), result]
    expected = [a * b / (a + b - a * b) if a + b - a * b > 0 else 1.0
                for a, b in ((r["density_a"], r["density_b"]) for r in rows)]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 4.2))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["jaccard"] for r in rows], 0.4, label="the two masks", color="C0")
    ax.bar(x + 0.2, expected, 0.4, label="two random masks of the same densities", color="C7")
    ax.set_xticks(x, names, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set(ylabel="Jaccard overlap |A & B| / |A | B| (0 to 1)", ylim=(0, 1.05),
           title=f"Mask overlap (densities {100 * result['density_a']:.1f}% and {100 * result['density_b']:.1f}%)")
    ax.legend(fontsize=7)
    save_png(fig, path)


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(
        prog="python -m analysis.supermask",
        description="Supermask accuracy of a ticket's mask at initialisation, the mask criteria of Zhou et al.,\n"
                    "\"Deconstructing lottery tickets: zeros, signs, and the supermask\", and mask similarity.\n"
                    "W^0 is read from the run's saved init.pt.",
        epilog="examples:\n  python -m analysis.supermask RUN/level_4/final.pt\n"
               "  python -m analysis.supermask RUN/level_0/final.pt --criteria --density 0.2 --train\n"
               "  python -m analysis.supermask --compare A/level_3/mask.pt B/level_3/mask.pt\n"
               "RUN is a run folder, e.g. RUN=$(ls -td runs/imp-* | head -1)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+",
                   help="pruned checkpoints; one trained checkpoint with --criteria; two with --compare")
    p.add_argument("--criteria", action="store_true",
                   help="Zhou et al.'s criteria table (init: the run's W^0, final: the checkpoint)")
    p.add_argument("--density", type=float, default=0.2, help="fraction of each layer kept for --criteria (default 0.2)")
    p.add_argument("--train", action="store_true",
                   help="with --criteria: also train each mask from W^0 with pruned weights at zero and frozen at "
                        "W^0; the networks are resumable training branches under the run (RUN/branches/)")
    p.add_argument("--compare", action="store_true", help="densities and Jaccard overlap of two masks")
    p.add_argument("--seeds", type=int, default=5, help="random masks for the baseline (default 5)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--out", default="supermask-out", help="output folder (default supermask-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while --train trains")
    args = p.parse_args(argv)
    hint = "interrupted: run the same command again to resume its training branches" if args.train else None
    return run_command(lambda: _main(args), hint or "interrupted")


def _main(args: argparse.Namespace) -> None:
    if args.compare and args.criteria:
        raise UserError("--compare and --criteria are different analyses; give one")
    if args.compare and len(args.checkpoints) != 2:
        raise UserError("--compare takes two checkpoints or mask files")
    if args.criteria and len(args.checkpoints) != 1:
        raise UserError(f"--criteria takes one checkpoint, got {len(args.checkpoints)}")
    if args.train and not args.criteria:
        raise UserError("--train applies to --criteria")
    if not 0 < args.density < 1:
        raise UserError(f"--density must be in (0, 1), got {args.density}")
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    resolve_device(args.device)
    out = writable_dir(args.out)
    if args.train:
        branch_root(args.checkpoints[0])  # the trained networks can be stored before any trains
    for checkpoint in args.checkpoints:  # a mistyped path must not cost the previous results
        _mask_of(checkpoint) if args.compare else read_checkpoint(checkpoint)
    name = "similarity" if args.compare else "criteria" if args.criteria else "supermask"
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    for stale in (json_path, png_path):  # an earlier call's results must not pass for this call's
        stale.unlink(missing_ok=True)
    if args.compare:
        result = compare(*[_mask_of(c) for c in args.checkpoints])
        print(f"densities {100 * result['density_a']:.2f}% and {100 * result['density_b']:.2f}%, "
              f"Jaccard overlap {result['jaccard']:.4f}")
        plot = lambda: plot_similarity(result, png_path)  # noqa: E731
    elif args.criteria:
        result = criteria_table(args.checkpoints[0], args.density, args.train, args.device, args.data_dir,
                                progress=not args.no_progress)
        if not result["w0_unmasked"]:
            print(f"note: W^0 is saved only under this run's mask ({result['w0']}); the init-based criteria "
                  "see zeros where it pruned")
        print(f"{'criterion':<24} {'untrained':>9}" + ("  trained (zero)  trained (init)" if args.train else ""))
        for r in result["rows"]:
            line = f"{r['criterion']:<24} {100 * r['untrained_accuracy']:>8.2f}%"
            if args.train:
                line += f"  {100 * r['trained_accuracy_zero']:>13.2f}%  {100 * r['trained_accuracy_init']:>13.2f}%"
            print(line)
        plot = lambda: plot_criteria(result, png_path)  # noqa: E731
    else:
        result = {"results": [supermask_report(c, args.seeds, args.device, args.data_dir) for c in args.checkpoints]}
        for r in result["results"]:
            line = f"{r['label']}: {100 * r['density']:.2f}% of weights, untrained accuracy {100 * r['supermask_accuracy']:.2f}%"
            if r["w0_unmasked"]:
                line += (f" vs random masks {100 * r['random_mask_accuracy_mean']:.2f} +- "
                         f"{100 * r['random_mask_accuracy_std']:.2f}% (dense init {100 * r['dense_init_accuracy']:.2f}%)")
            print(line)
            if r["note"]:
                print(f"  note: {r['note']}")
        plot = lambda: plot_supermask(result["results"], png_path)  # noqa: E731
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    plot()
    print(f"wrote {json_path} and {png_path}")


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
