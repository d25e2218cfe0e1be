"""Supermasks and mask criteria (Zhou et al. 2019, "Deconstructing lottery tickets: zeros, signs, and the
supermask"; the lecture slides "From model pruning to sparse updates and the LTH"), and mask similarity.

W^0 is always read from the run's saved ``init.pt`` (``initial_weights``), never rebuilt from a seed.

- Supermask accuracy: the checkpoint's mask applied to the run's initial weights W^0, with no
  training, beside random masks with the same number of weights in every layer, over seeds.
- Mask criteria from W_init and W_final, keeping the top fraction of each layer by a score
  (``CRITERIA``): large_final |w_f|, small_final -|w_f|, large_init |w_i|, small_init -|w_i|,
  large_init_large_final min(|w_i|, |w_f|), magnitude_increase |w_f| - |w_i|, movement |w_f - w_i|,
  the sign-aware criteria of Zhou et al.'s code (large_final_same_sign, large_final_diff_sign,
  magnitude_increase_same_sign, magnitude_increase_diff_sign), and random. Ties are broken at random
  (seeded), as in their code.
- Untrained evaluation (the supermask study) under two mask-1 actions: kept weights at their W^0
  values (``init``) or at sign(w^0) times the standard deviation of the layer's W^0
  (``signed_constant``, Zhou et al.'s strongest supermasks), with the biases of the masked layers
  set to zero by default (``--biases``, see ``BIASES``), across kept fractions (``density_sweep``).
- With ``--train``, the accuracy after training from W^0 under each mask-0 action (``MASK_0``):
  pruned weights at zero, frozen at their initial values, or Zhou et al.'s
  ``freeze_init_zero_mask`` (frozen at zero if the weight moved toward zero during training,
  |w_f| < |w_i|, else at its initial value). These networks are training branches
  (``training.engine.branches``), stored and resumable under the run.
- Similarity: per-layer and global density, and the Jaccard overlap |A & B| / |A | B| of two masks.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from training.engine.branches import branch_root, train_branch
from training.engine.checkpoint import (
    atomic_write_text,
    load,
    masked_weights_are_zero,
    model_from_checkpoint,
    read_checkpoint,
)
from training.cli import (
    ArgumentParser,
    add_threads_flag,
    check_threads,
    run_command,
    set_threads,
    writable_dir,
)
from training.algorithms.controls import random_mask_like, signed_constants
from training.errors import UserError
from training.hparams import Config
from training.engine.loop import evaluate
from training.sparsity.masks import Mask, apply_mask, density, layer_densities, prunable_names
from training.sparsity.pruning import prune_group
from training.engine.runs import resolve_device
from training.engine.seeding import generator

from .figure_io import checkpoint_label, line_style, pyplot, save_png, unique_labels


def _same_sign(wi: torch.Tensor, wf: torch.Tensor) -> torch.Tensor:
    return torch.sign(wi) == torch.sign(wf)


# Each score ranks the weights of one layer; the highest are kept. The sign-aware criteria follow
# Zhou et al.'s code (get_weight_init.py): the weights on the other side get score 0, so
# magnitude_increase_same_sign ranks a same-sign weight that shrank below every sign-flipped one.
CRITERIA = {
    "large_final": lambda wi, wf: wf.abs(),
    "small_final": lambda wi, wf: -wf.abs(),
    "large_init": lambda wi, wf: wi.abs(),
    "small_init": lambda wi, wf: -wi.abs(),
    "large_init_large_final": lambda wi, wf: torch.minimum(wi.abs(), wf.abs()),
    "magnitude_increase": lambda wi, wf: wf.abs() - wi.abs(),
    "movement": lambda wi, wf: (wf - wi).abs(),
    "large_final_same_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), wf.abs(), torch.zeros_like(wf)),
    "large_final_diff_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), torch.zeros_like(wf), wf.abs()),
    "magnitude_increase_same_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), wf.abs() - wi.abs(),
                                                               torch.zeros_like(wf)),
    "magnitude_increase_diff_sign": lambda wi, wf: torch.where(_same_sign(wi, wf), torch.zeros_like(wf),
                                                               wf.abs() - wi.abs()),
}
# What the pruned weights do while the mask is trained (Zhou et al.'s mask-0 actions).
MASK_0 = ("zero", "init", "freeze_init_zero_mask")
ACTIONS = MASK_0  # the name this tuple had before freeze_init_zero_mask
# What the kept weights are when the mask is evaluated untrained (Zhou et al.'s mask-1 actions).
MASK_1 = ("init", "signed_constant")
MASK_1_LABELS = {"init": "kept weights at W^0", "signed_constant": "kept weights = sign(W^0) x std of the layer's W^0"}
# The biases of the masked layers in an untrained evaluation. Zhou et al. never mask biases and load
# them at their initial values, which are zero in their TensorFlow networks (tf.layers.Dense and
# Conv2D initialise biases to zero); PyTorch initialises them at random, so "zero" is their set-up.
BIASES = {
    "zero": "the masked layers' biases at zero, as in Zhou et al., whose networks start with zero biases",
    "init": "the masked layers' biases at their random W^0 values",
}
DEFAULT_BIASES = "zero"


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


def _check_criteria(criteria: Sequence[str], random_ok: bool = True) -> None:
    known = [*CRITERIA, "random"] if random_ok else list(CRITERIA)
    unknown = [c for c in criteria if c not in known]
    if unknown:
        raise UserError(f"unknown criterion {unknown[0]!r}; choose from: {', '.join(known)}")


def criterion_mask(w_init: dict, w_final: dict, names: list[str], criterion: str, keep: float, seed: int = 0) -> Mask:
    """Keep ``round(keep * size)`` weights of each layer with the highest criterion score; weights
    with equal scores are ordered at random (``seed``), as in Zhou et al.'s code, so that e.g. the
    sign-flipped weights that fill up large_final_same_sign are not chosen by position. ``random``
    keeps a random ``int(keep * size + 0.5)`` of each layer."""
    _check_criteria([criterion])
    if not 0 < keep < 1:
        raise UserError(f"--density must be in (0, 1), got {keep}")
    if criterion == "random":
        full = {n: torch.ones_like(w_init[n], dtype=torch.bool) for n in names}
        counts = {n: torch.zeros_like(full[n]) for n in names}
        for n in names:
            counts[n].view(-1)[: int(keep * full[n].numel() + 0.5)] = True
        return random_mask_like(counts, seed)
    gen = generator(seed, "criterion-ties")
    mask = {}
    for n in names:
        score = CRITERIA[criterion](w_init[n].float(), w_final[n].float()).detach().cpu().flatten()
        order = torch.randperm(score.numel(), generator=gen)
        kept = prune_group({n: score[order]}, {n: torch.ones_like(score, dtype=torch.bool)}, [n], 1 - keep)[n]
        flat = torch.empty_like(kept)
        flat[order] = kept
        mask[n] = flat.reshape(w_init[n].shape)
    return mask


def bias_names(state: dict, weights: Sequence[str]) -> list[str]:
    """The ``.bias`` entries of ``state`` that belong to the layers of the weights ``weights``."""
    out = []
    for name in weights:
        if name.endswith("weight") and f"{name[:-len('weight')]}bias" in state:
            out.append(f"{name[:-len('weight')]}bias")
    return out


def _check_biases(biases: str) -> None:
    if biases not in BIASES:
        raise UserError(f"--biases must be one of {', '.join(BIASES)}, got {biases!r}")


def untrained_network(model: torch.nn.Module, mask: Optional[Mask], biases: str = DEFAULT_BIASES,
                      mask_1: str = "init") -> torch.nn.Module:
    """A copy of ``model`` (e.g. at W^0) as the supermask study evaluates it: weights outside
    ``mask`` at zero (``None``: every weight kept), kept weights at their values (``mask_1="init"``)
    or at sign(w) times the standard deviation of the whole layer (``"signed_constant"``), and the
    biases of the masked layers at zero (``biases="zero"``) or untouched (``"init"``)."""
    _check_biases(biases)
    if mask_1 not in MASK_1:
        raise UserError(f"unknown mask-1 action {mask_1!r}; choose from: {', '.join(MASK_1)}")
    net = copy.deepcopy(model)
    layers = list(mask) if mask else prunable_names(net)
    state = net.state_dict()
    if mask_1 == "signed_constant":
        state = signed_constants(state, dict.fromkeys(layers))
    if biases == "zero":
        state = {**state, **{b: torch.zeros_like(state[b]) for b in bias_names(state, layers)}}
    net.load_state_dict(state)
    apply_mask(net, mask)
    return net


def supermask_accuracy(model, mask: Optional[Mask], data, biases: str = DEFAULT_BIASES, mask_1: str = "init") -> float:
    """Test accuracy (a fraction in [0, 1]) of ``model`` at its current weights (e.g. W^0) with
    ``mask`` applied (weights outside it set to zero), untrained; ``biases`` and ``mask_1`` as in
    ``untrained_network`` (the default: Zhou et al.'s zero biases, kept weights at W^0)."""
    return evaluate(untrained_network(model, mask, biases, mask_1), data.test)[1]


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


def _bias_fields(biases: str) -> dict:
    return {"biases": biases, "biases_note": BIASES[biases]}


def supermask_report(path: str | Path, seeds: int = 5, device: str = "auto", data_dir: Optional[str] = None,
                     biases: str = DEFAULT_BIASES) -> dict:
    """The checkpoint's mask on its run's W^0, untrained, against ``seeds`` random masks with the
    same number of weights in every layer, and the dense W^0; each masked network with its kept
    weights at W^0 and as signed constants (``*_signed_constant``), the biases of the masked layers
    as ``biases`` says. Accuracies are fractions in [0, 1]; the random and dense baselines are None
    when only a masked W^0 was saved (see ``initial_weights``)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    _check_biases(biases)
    dev = resolve_device(device)
    loaded = load(path, dev, data_dir)
    if not _prunes_something(loaded.mask):
        raise UserError(f"{path} prunes nothing; give a pruned checkpoint (a level >= 1 of an IMP run)")
    w0_file = initial_weights(path)
    w0 = _initial_model(loaded.checkpoint, w0_file, dev)
    acc = lambda mask, mask_1="init": supermask_accuracy(w0, mask, loaded.dataset, biases, mask_1)  # noqa: E731
    ticket = {m1: acc(loaded.mask, m1) for m1 in MASK_1}
    randoms = {m1: None for m1 in MASK_1}
    dense, note = None, None
    if w0_file.unmasked:
        masks = [{k: v.to(dev) for k, v in random_mask_like(loaded.mask, s).items()} for s in range(seeds)]
        randoms = {m1: [acc(m, m1) for m in masks] for m1 in MASK_1}
        dense = acc(None)
    else:
        note = MASKED_W0_NOTE.format(path=w0_file.path)
    out = {"checkpoint": str(path), "label": checkpoint_label(path, loaded.checkpoint),
           "num_classes": loaded.dataset.num_classes, "w0": str(w0_file.path), "w0_unmasked": w0_file.unmasked,
           **_bias_fields(biases), "density": density(loaded.mask)}
    for m1 in MASK_1:
        suffix = "" if m1 == "init" else f"_{m1}"
        r = randoms[m1]
        out.update({f"supermask_accuracy{suffix}": ticket[m1],
                    f"random_mask_accuracy{suffix}_mean": None if r is None else float(np.mean(r)),
                    f"random_mask_accuracy{suffix}_std": None if r is None else float(np.std(r)),
                    f"random_mask_accuracies{suffix}": r})
    out.update({"dense_init_accuracy": dense, "note": note, "layer_densities": layer_densities(loaded.mask)})
    return out


def _criteria_setup(final_path, device, data_dir):
    """The loaded checkpoint, W^0 (file and model), the two state dicts and the masked layers' names."""
    dev = resolve_device(device)
    loaded = load(final_path, dev, data_dir)
    w0_file = initial_weights(final_path)
    w0 = _initial_model(loaded.checkpoint, w0_file, dev)
    w_init = {k: v.detach() for k, v in w0.state_dict().items()}
    w_final = {k: v.detach() for k, v in loaded.model.state_dict().items()}
    names = list(loaded.mask) if loaded.mask is not None else prunable_names(w0)
    return dev, loaded, w0_file, w0, w_init, w_final, names


def mask_0_start(w_init: dict, w_final: dict, mask: Mask, action: str) -> tuple[dict, bool]:
    """The starting state dict and whether the pruned weights are frozen (not zeroed) for training
    ``mask`` from W^0 under the mask-0 ``action``: ``zero`` (pruned weights at zero), ``init``
    (frozen at W^0) or ``freeze_init_zero_mask`` (Zhou et al.: frozen at zero where the weight moved
    toward zero during training, |w_f| < |w_i|, else at its W^0 value)."""
    if action not in MASK_0:
        raise UserError(f"unknown mask-0 action {action!r}; choose from: {', '.join(MASK_0)}")
    if action != "freeze_init_zero_mask":
        return w_init, action == "init"
    state = dict(w_init)
    for name, m in mask.items():
        toward_zero = (w_init[name].abs() > w_final[name].abs()) & ~m.to(w_init[name].device)
        state[name] = torch.where(toward_zero, torch.zeros_like(w_init[name]), w_init[name])
    return state, True


def criteria_table(final_path: str | Path, keep: float, train_masks: bool = False, device: str = "auto",
                   data_dir: Optional[str] = None, progress: bool = False,
                   criteria: Optional[Sequence[str]] = None, biases: str = DEFAULT_BIASES) -> dict:
    """Zhou et al.'s criteria at density ``keep`` from the run's W^0 (``initial_weights``) and the
    checkpoint's weights. Each row has the untrained accuracy of the criterion's mask on W^0
    (``untrained_accuracy``; with signed constants: ``untrained_accuracy_signed_constant``; the
    biases of the masked layers as ``biases`` says) and, with ``train_masks``, the test accuracy
    after training it from W^0 for the run's whole schedule under each mask-0 action of ``MASK_0``
    (``trained_accuracy_ACTION``); accuracies are fractions in [0, 1]. Each trained network is a
    training branch (``training.engine.branches``) under the checkpoint's run, named
    ``criterion-CRITERION-ACTION``: a second call reads the finished branches instead of training.
    ``criteria`` limits the table to those criteria (default: all, and ``random``)."""
    criteria = [*CRITERIA, "random"] if criteria is None else list(criteria)
    _check_criteria(criteria)
    _check_biases(biases)
    if not 0 < keep < 1:
        raise UserError(f"--density must be in (0, 1), got {keep}")
    dev, loaded, w0_file, w0, w_init, w_final, names = _criteria_setup(final_path, device, data_dir)
    ckpt = loaded.checkpoint
    rows = []
    for criterion in criteria:
        mask = {k: v.to(dev) for k, v in criterion_mask(w_init, w_final, names, criterion, keep).items()}
        row = {"criterion": criterion}
        for m1 in MASK_1:
            row["untrained_accuracy" + ("" if m1 == "init" else f"_{m1}")] = supermask_accuracy(
                w0, mask, loaded.dataset, biases, m1)
        if train_masks:
            for action in MASK_0:
                weights, frozen = mask_0_start(w_init, w_final, mask, action)
                final = train_branch(final_path, f"criterion-{criterion}-{action}", mask=mask, weights=weights,
                                     start=0, frozen=frozen, data_dir=data_dir, device=device, progress=progress)
                trained = read_checkpoint(final)
                row[f"trained_accuracy_{action}"] = trained["meta"]["results"]["test_accuracy"]
                row[f"trained_checkpoint_{action}"] = str(final)
                row[f"trained_iterations_{action}"] = int(trained["step"]["iteration"])
        rows.append(row)
    config = Config.from_dict(ckpt["meta"]["config"]) if "config" in ckpt["meta"] else None
    return {"checkpoint": str(final_path), "label": checkpoint_label(final_path, ckpt), "density": keep,
            "num_classes": loaded.dataset.num_classes, "w0": str(w0_file.path), "w0_unmasked": w0_file.unmasked,
            **_bias_fields(biases), "trained": train_masks, "mask_0": list(MASK_0) if train_masks else [],
            "train_for": config.training.train_for if config else None, "rows": rows,
            "checkpoint_accuracy": (ckpt["meta"].get("results") or {}).get("test_accuracy")}


def parse_densities(text: str) -> list[float]:
    """``"0.05,0.1,0.5"`` -> ``[0.05, 0.1, 0.5]``, sorted, each in (0, 1); ``UserError`` otherwise."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--densities takes kept fractions separated by commas, e.g. 0.05,0.2,0.5; got {text!r}")
    bad = [v for v in values if not 0 < v < 1]
    if not values or bad:
        raise UserError(f"--densities: every kept fraction must be in (0, 1), got {text!r}")
    return sorted(set(values))


def density_sweep(final_path: str | Path, densities: Sequence[float], criteria: Optional[Sequence[str]] = None,
                  seeds: int = 3, biases: str = DEFAULT_BIASES, device: str = "auto",
                  data_dir: Optional[str] = None) -> dict:
    """Untrained supermask accuracy across kept fractions (Zhou et al. sweep the pruning rate): for
    every fraction in ``densities`` and every criterion (default: all of ``CRITERIA``), the test
    accuracy of the criterion's mask on the run's W^0 under each mask-1 action (``MASK_1``), beside
    ``seeds`` random masks keeping the same fraction of every layer. No training.

    Returns ``rows`` (one per evaluated network: ``density``, the kept fraction in (0, 1);
    ``criterion``; ``mask_1``; ``seed``, the random mask's seed or None; ``accuracy``, a fraction in
    [0, 1]: a ``pandas.DataFrame(result["rows"])`` reads it) and ``summary`` (per density, criterion
    and mask-1 action: mean, standard deviation and count), with the dense W^0's accuracy and the
    bias treatment."""
    criteria = list(CRITERIA) if criteria is None else [c for c in criteria if c != "random"]
    _check_criteria(criteria, random_ok=False)
    _check_biases(biases)
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    densities = [float(d) for d in densities]
    if not densities or any(not 0 < d < 1 for d in densities):
        raise UserError(f"--densities: every kept fraction must be in (0, 1), got {densities}")
    dev, loaded, w0_file, w0, w_init, w_final, names = _criteria_setup(final_path, device, data_dir)
    rows = []

    def add(d: float, criterion: str, seed: Optional[int], mask: Mask) -> None:
        mask = {k: v.to(dev) for k, v in mask.items()}
        for m1 in MASK_1:
            rows.append({"density": d, "criterion": criterion, "mask_1": m1, "seed": seed,
                         "accuracy": supermask_accuracy(w0, mask, loaded.dataset, biases, m1)})

    for d in densities:
        for criterion in criteria:
            add(d, criterion, None, criterion_mask(w_init, w_final, names, criterion, d))
        for s in range(seeds):
            add(d, "random", s, criterion_mask(w_init, w_final, names, "random", d, seed=s))
    summary = []
    for d in densities:
        for criterion in [*criteria, "random"]:
            for m1 in MASK_1:
                acc = [r["accuracy"] for r in rows
                       if r["density"] == d and r["criterion"] == criterion and r["mask_1"] == m1]
                summary.append({"density": d, "criterion": criterion, "mask_1": m1, "mean": float(np.mean(acc)),
                                "std": float(np.std(acc)), "n": len(acc)})
    ckpt = loaded.checkpoint
    return {"checkpoint": str(final_path), "label": checkpoint_label(final_path, ckpt), "model": ckpt["model"]["name"],
            "num_classes": loaded.dataset.num_classes, "w0": str(w0_file.path), "w0_unmasked": w0_file.unmasked,
            **_bias_fields(biases), "densities": densities, "criteria": criteria, "seeds": seeds,
            "mask_1": list(MASK_1), "rows": rows, "summary": summary,
            "dense_init_accuracy": supermask_accuracy(w0, None, loaded.dataset, biases),
            "checkpoint_accuracy": (ckpt["meta"].get("results") or {}).get("test_accuracy")}


def sweep_csv(result: dict) -> str:
    """``density_sweep``'s rows as CSV text: kept_fraction, criterion, mask_1, seed (empty for the
    criteria), test_accuracy (a fraction in [0, 1]), biases."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kept_fraction", "criterion", "mask_1", "seed", "test_accuracy", "biases"])
    for r in result["rows"]:
        writer.writerow([r["density"], r["criterion"], r["mask_1"], "" if r["seed"] is None else r["seed"],
                         r["accuracy"], result["biases"]])
    return buf.getvalue()


def _chance(ax, num_classes: int) -> None:
    ax.axhline(100 / num_classes, color="k", ls=":", lw=1, label=f"chance (1/{num_classes} classes)")


def _bias_caption(result: dict) -> str:
    return f"biases: {result['biases']} = {result['biases_note']}"


def plot_supermask(results: list[dict], path: Path) -> None:
    """One group of bars per checkpoint: its mask on W^0 and random masks of the same layer-wise
    counts (mean, error bar: standard deviation over seeds), each with the kept weights at W^0 and
    as signed constants, and the dense W^0; test accuracy in %, the bias treatment in the title."""
    plt = pyplot()
    labels = unique_labels([r["label"] for r in results])
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(results) + 2), 4.6))
    x = np.arange(len(results))
    width = 0.16
    pct = lambda v: np.nan if v is None else 100 * v  # noqa: E731
    seeds = len(results[0]["random_mask_accuracies"] or [])
    bars = [("supermask_accuracy", None, "C0", None, "ticket's mask, kept weights at W^0"),
            ("supermask_accuracy_signed_constant", None, "C9", "//", "ticket's mask, kept weights = signed constants"),
            ("random_mask_accuracy_mean", "random_mask_accuracy_std", "C7", None,
             f"random masks, same layer counts, kept at W^0 (mean +- s.d., {seeds} seeds)"),
            ("random_mask_accuracy_signed_constant_mean", "random_mask_accuracy_signed_constant_std", "0.85", "//",
             "random masks, kept weights = signed constants"),
            ("dense_init_accuracy", None, "C2", None, "dense W^0 (nothing pruned)")]
    for i, (key, err, color, hatch, label) in enumerate(bars):
        ax.bar(x + (i - 2) * width, [pct(r[key]) for r in results], width, color=color, hatch=hatch,
               edgecolor="k" if hatch else None, linewidth=0.3,
               yerr=None if err is None else [pct(r[err]) for r in results], capsize=3, label=label)
    for i, r in enumerate(results):
        if r["random_mask_accuracy_mean"] is None:
            ax.text(x[i] + width, 14, "no baselines:\nW^0 saved only\nunder the mask", ha="center",
                    va="bottom", fontsize=6)
    _chance(ax, results[0]["num_classes"])
    ax.set_xticks(x, labels, rotation=20 if len(results) > 2 else 0, ha="right" if len(results) > 2 else "center",
                  rotation_mode="anchor", fontsize=8)
    ax.set(ylabel="test accuracy, untrained (%)", ylim=(0, 100), xlim=(-0.6, len(results) - 0.4),
           title="Supermask: the mask applied to the initial weights W^0, no training (Zhou et al.)\n"
                 + _bias_caption(results[0]))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    save_png(fig, path)


MASK_0_LABELS = {"zero": "trained, pruned weights = 0 (mask-0 = zero)",
                 "init": "trained, pruned weights frozen at W^0 (mask-0 = init)",
                 "freeze_init_zero_mask": "trained, pruned weights frozen at 0 if they moved toward 0, "
                                          "else at W^0 (freeze_init_zero_mask)"}


def plot_criteria(result: dict, path: Path) -> None:
    """Test accuracy (%) of every criterion's mask: untrained on W^0 (kept weights at W^0 and as
    signed constants) and, when trained, after training under each mask-0 action (Zhou et al.)."""
    plt = pyplot()
    rows = result["rows"]
    series = [("untrained_accuracy", "untrained, kept weights at W^0", "C0"),
              ("untrained_accuracy_signed_constant", "untrained, kept weights = sign(W^0) x layer std", "C9")]
    if result["trained"]:
        series += [(f"trained_accuracy_{a}", MASK_0_LABELS[a], f"C{i + 1}") for i, a in enumerate(MASK_0)]
    fig, ax = plt.subplots(figsize=(12, 4.8))
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
           title=f"{what}\n{how}\nuntrained bars, {_bias_caption(result)}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # outside: bars reach 100%
    save_png(fig, path)


_BASE_COLORS = {name: f"C{i}" for i, name in enumerate(
    ["large_final", "small_final", "large_init", "small_init", "large_init_large_final", "magnitude_increase",
     "movement"])}  # C7 (grey) is left to the random baseline


def _criterion_style(criterion: str, index: int) -> dict:
    """A sign-aware criterion is drawn in its base criterion's colour: same_sign dashed with
    triangles, diff_sign dotted with crosses; the others solid with dots."""
    for suffix, dash, marker in (("_same_sign", "--", "^"), ("_diff_sign", ":", "x")):
        if criterion.endswith(suffix) and criterion[: -len(suffix)] in _BASE_COLORS:
            return {"color": _BASE_COLORS[criterion[: -len(suffix)]], "linestyle": dash, "marker": marker}
    if criterion in _BASE_COLORS:
        return {"color": _BASE_COLORS[criterion], "linestyle": "-", "marker": "o"}
    return {**line_style(index), "marker": "o"}


def plot_sweep(result: dict, path: Path) -> None:
    """Untrained test accuracy (%) against the kept fraction (%, log scale) for every criterion,
    one panel per mask-1 action, beside random masks (mean +- s.d. over seeds), the dense W^0 and
    chance; the bias treatment in the title."""
    plt = pyplot()
    summary = result["summary"]
    kept = [100 * d for d in result["densities"]]
    fig, axes = plt.subplots(1, len(MASK_1), figsize=(12.5, 4.8), sharey=True)
    for ax, m1 in zip(axes, MASK_1):
        for i, criterion in enumerate(result["criteria"]):
            acc = [100 * s["mean"] for s in summary if s["criterion"] == criterion and s["mask_1"] == m1]
            ax.plot(kept, acc, ms=3.5, lw=1.3, label=criterion, **_criterion_style(criterion, i))
        rnd = [s for s in summary if s["criterion"] == "random" and s["mask_1"] == m1]
        mean = np.array([100 * s["mean"] for s in rnd])
        std = np.array([100 * s["std"] for s in rnd])
        ax.plot(kept, mean, color="k", lw=2, marker="s", ms=3,
                label=f"random masks, same fraction per layer (mean +- s.d., {result['seeds']} seeds)")
        ax.fill_between(kept, mean - std, mean + std, color="k", alpha=0.15, lw=0)
        ax.axhline(100 * result["dense_init_accuracy"], color="C8", ls="-.", lw=1.5,
                   label=f"dense W^0, 100% kept ({100 * result['dense_init_accuracy']:.1f}%)")
        _chance(ax, result["num_classes"])
        ax.set_xscale("log")
        ax.set_xticks(kept, [f"{k:g}" for k in kept])
        ax.minorticks_off()
        ax.set(xlabel="weights kept in every layer (%, log scale)", title=f"mask-1: {MASK_1_LABELS[m1]}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    top = max([100 * (s["mean"] + s["std"]) for s in summary] + [100 * result["dense_init_accuracy"]])
    axes[0].set(ylabel="test accuracy, untrained (%)", ylim=(0, min(100.0, max(25.0, 1.2 * top))))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.92), borderaxespad=0)
    fig.suptitle(f"{result['label']} ({result['model']}): untrained supermasks across kept fractions (Zhou et al.)\n"
                 f"{_bias_caption(result)}", fontsize=10)
    fig.tight_layout()
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
                    "W^0 is read from the run's saved init.pt. Untrained networks are evaluated with the\n"
                    "kept weights at W^0 and as signed constants, and (default) zero biases, as Zhou et al. did.",
        epilog="examples:\n  python -m analysis.supermask RUN/level_4/final.pt\n"
               "  python -m analysis.supermask RUN/level_0/final.pt --criteria --density 0.2 --train\n"
               "  python -m analysis.supermask RUN/level_0/final.pt --criteria --densities 0.05,0.1,0.2,0.5,0.8\n"
               "  python -m analysis.supermask --compare A/level_3/mask.pt B/level_3/mask.pt\n"
               "RUN is a run folder, e.g. RUN=$(ls -td runs/imp-* | head -1)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+",
                   help="pruned checkpoints; one trained checkpoint with --criteria; two with --compare")
    p.add_argument("--criteria", action="store_true",
                   help="Zhou et al.'s criteria table (init: the run's W^0, final: the checkpoint)")
    p.add_argument("--density", type=float,
                   help="fraction of each layer kept for --criteria (default 0.2)")
    p.add_argument("--densities",
                   help="with --criteria: untrained accuracy of every criterion at each of these kept fractions "
                        "(comma-separated, e.g. 0.05,0.1,0.2,0.5,0.8) beside --seeds random masks; writes "
                        "sweep.json, sweep.csv and sweep.png")
    p.add_argument("--train", action="store_true",
                   help="with --criteria: also train each mask from W^0 under each mask-0 action (pruned weights "
                        "at zero; frozen at W^0; Zhou et al.'s freeze_init_zero_mask: frozen at zero if they moved "
                        "toward zero, else at W^0); the networks are resumable training branches (RUN/branches/)")
    p.add_argument("--biases", choices=list(BIASES), default=DEFAULT_BIASES,
                   help="biases of the masked layers in untrained evaluations: zero (default; Zhou et al.'s "
                        "networks start with zero biases and never mask them) or init (their random W^0 values)")
    p.add_argument("--compare", action="store_true", help="densities and Jaccard overlap of two masks")
    p.add_argument("--seeds", type=int, default=5, help="random masks for the baseline (default 5)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--out", default="supermask-out", help="output folder (default supermask-out)")
    add_threads_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars while --train trains")
    args = p.parse_args(argv)
    hint = "interrupted: run the same command again to resume its training branches" if args.train else None
    return run_command(lambda: _main(args), hint or "interrupted")


def _main(args: argparse.Namespace) -> None:
    from training.engine.provenance import provenance

    if args.compare and args.criteria:
        raise UserError("--compare and --criteria are different analyses; give one")
    if args.compare and len(args.checkpoints) != 2:
        raise UserError("--compare takes two checkpoints or mask files")
    if args.criteria and len(args.checkpoints) != 1:
        raise UserError(f"--criteria takes one checkpoint, got {len(args.checkpoints)}")
    if args.train and not args.criteria:
        raise UserError("--train applies to --criteria")
    densities = None
    if args.densities is not None:
        if not args.criteria:
            raise UserError("--densities applies to --criteria")
        if args.density is not None:
            raise UserError("give --density (one table) or --densities (a sweep), not both")
        if args.train:
            raise UserError("--train trains the masks of one --density; the --densities sweep is untrained")
        densities = parse_densities(args.densities)
    keep = 0.2 if args.density is None else args.density
    if not 0 < keep < 1:
        raise UserError(f"--density must be in (0, 1), got {keep}")
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    check_threads(args.threads)
    resolve_device(args.device)
    out = writable_dir(args.out)
    if args.train:
        branch_root(args.checkpoints[0])  # the trained networks can be stored before any trains
    for checkpoint in args.checkpoints:  # a mistyped path must not cost the previous results
        _mask_of(checkpoint) if args.compare else read_checkpoint(checkpoint)
    name = ("similarity" if args.compare else "sweep" if densities else "criteria" if args.criteria
            else "supermask")
    json_path, png_path, csv_path = out / f"{name}.json", out / f"{name}.png", out / f"{name}.csv"
    for stale in (json_path, png_path, csv_path):  # an earlier call's results must not pass for this call's
        stale.unlink(missing_ok=True)
    threads = set_threads(args.threads)
    bias_line = f"biases: {args.biases} = {BIASES[args.biases]} (--biases to change)"
    if args.compare:
        result = compare(*[_mask_of(c) for c in args.checkpoints])
        print(f"densities {100 * result['density_a']:.2f}% and {100 * result['density_b']:.2f}%, "
              f"Jaccard overlap {result['jaccard']:.4f}")
        plot = lambda: plot_similarity(result, png_path)  # noqa: E731
    elif densities:
        result = density_sweep(args.checkpoints[0], densities, seeds=args.seeds, biases=args.biases,
                               device=args.device, data_dir=args.data_dir)
        print(f"untrained test accuracy (%) on W^0; {bias_line}")
        for m1 in MASK_1:
            print(f"mask-1: {MASK_1_LABELS[m1]}")
            print(f"{'criterion':<29}" + "".join(f"{f'{100 * d:g}% kept':>13}" for d in densities))
            for criterion in [*result["criteria"], "random"]:
                cells = [s for s in result["summary"] if s["criterion"] == criterion and s["mask_1"] == m1]
                text = [f"{100 * c['mean']:.2f}" + (f" +- {100 * c['std']:.1f}" if criterion == "random" else "")
                        for c in cells]
                print(f"{criterion:<29}" + "".join(f"{t:>13}" for t in text))
        print(f"dense W^0: {100 * result['dense_init_accuracy']:.2f}%; random: mean +- s.d. over {args.seeds} seeds")
        atomic_write_text(csv_path, sweep_csv(result))
        plot = lambda: plot_sweep(result, png_path)  # noqa: E731
    elif args.criteria:
        result = criteria_table(args.checkpoints[0], keep, args.train, args.device, args.data_dir,
                                progress=not args.no_progress, biases=args.biases)
        if not result["w0_unmasked"]:
            print(f"note: W^0 is saved only under this run's mask ({result['w0']}); the init-based criteria "
                  "see zeros where it pruned")
        print(f"untrained: {bias_line}")
        head = f"{'criterion':<29} {'untrained':>9} {'signed const':>12}"
        if args.train:
            head += "".join(f"  {'trained, ' + a}" for a in MASK_0)
        print(head)
        for r in result["rows"]:
            line = (f"{r['criterion']:<29} {100 * r['untrained_accuracy']:>8.2f}% "
                    f"{100 * r['untrained_accuracy_signed_constant']:>11.2f}%")
            if args.train:
                line += "".join(f"  {100 * r[f'trained_accuracy_{a}']:>{len('trained, ' + a) - 1}.2f}%" for a in MASK_0)
            print(line)
        plot = lambda: plot_criteria(result, png_path)  # noqa: E731
    else:
        result = {"results": [supermask_report(c, args.seeds, args.device, args.data_dir, args.biases)
                              for c in args.checkpoints], **_bias_fields(args.biases)}
        print(bias_line)
        for r in result["results"]:
            line = (f"{r['label']}: {100 * r['density']:.2f}% of weights, untrained accuracy "
                    f"{100 * r['supermask_accuracy']:.2f}% (signed constants "
                    f"{100 * r['supermask_accuracy_signed_constant']:.2f}%)")
            if r["w0_unmasked"]:
                line += (f" vs random masks {100 * r['random_mask_accuracy_mean']:.2f} +- "
                         f"{100 * r['random_mask_accuracy_std']:.2f}% (signed constants "
                         f"{100 * r['random_mask_accuracy_signed_constant_mean']:.2f}%; dense init "
                         f"{100 * r['dense_init_accuracy']:.2f}%)")
            print(line)
            if r["note"]:
                print(f"  note: {r['note']}")
        plot = lambda: plot_supermask(result["results"], png_path)  # noqa: E731
    result["provenance"] = {**provenance(), "threads": threads}
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    plot()
    written = [json_path, *([csv_path] if densities else []), png_path]
    print(f"wrote {', '.join(map(str, written))}")


def _mask_of(path: str) -> Mask:
    from training.engine.runs import load_mask

    obj = read_checkpoint(path) if not Path(path).name == "mask.pt" else None
    if obj is not None:
        if obj["mask"] is None:
            raise UserError(f"{path} has no mask")
        return obj["mask"]
    return load_mask(Path(path))


if __name__ == "__main__":
    sys.exit(main())
