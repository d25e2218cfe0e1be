"""Linear mode connectivity and instability (Frankle et al. 2020; seed 001's slides).

``python -m analysis.connectivity A.pt B.pt`` evaluates loss and error on the training and test
sets along theta(alpha) = (1 - alpha) theta_A + alpha theta_B (every floating-point tensor of the
state dict, batch-norm statistics included), and reports the error barrier: the maximum error
along the path minus the mean of the two endpoints' errors. Masked checkpoints must share their
mask; pruned weights are zero at both ends, so the path stays inside the mask.

``python -m analysis.connectivity --instability K1.pt K2.pt ...``: from each rewind checkpoint
W_k, train two copies that differ only in data order and augmentation (seeds 1 and 2), with the
checkpoint's own training setup and mask, and measure their test-error barrier. A network is
stable at k when the barrier is below 2% (the paper's threshold).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from training.checkpoint import atomic_write_text, load
from training.data import Dataset, Split, eval_batches
from training.errors import UserError
from training.hparams import Config
from training.loop import evaluate, train
from training.masks import apply_mask
from training.runs import resolve_device

from .figure_io import pyplot, save_png

STABLE_BARRIER = 0.02


def _check_compatible(a: dict, b: dict, path_a, path_b) -> None:
    shape = lambda c: (c["model"]["name"], c["model"]["num_classes"], list(c["model"]["input_shape"]))  # noqa: E731
    if shape(a) != shape(b):  # the init seed may differ: that is the point of comparing two runs
        raise UserError(f"{path_a} and {path_b} are different architectures ({a['model']['name']} vs "
                        f"{b['model']['name']}); interpolate checkpoints of one model")
    ma, mb = a["mask"], b["mask"]
    if (ma is None) != (mb is None) or (ma is not None and any(not torch.equal(ma[k], mb[k]) for k in ma)):
        raise UserError(f"{path_a} and {path_b} have different masks; interpolation needs the same mask "
                        "(e.g. two copies trained from one rewind point)")


@torch.no_grad()
def _recompute_bn(model: nn.Module, split: Split, batch_size: int = 500) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for x, _ in eval_batches(split, batch_size):
        model(x)
    model.eval()


def interpolate(model_a: nn.Module, model_b: nn.Module, data: Dataset, points: int = 30,
                recompute_bn: bool = False, train_samples: Optional[int] = None) -> dict:
    """Loss and error along the line from ``model_a`` to ``model_b``; returns a JSON-ready dict."""
    if points < 2:
        raise UserError(f"--points must be at least 2 (the endpoints), got {points}")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    model = copy.deepcopy(model_a)
    train_split = data.train if train_samples is None else Split(data.train.x[:train_samples], data.train.y[:train_samples])
    alphas = np.linspace(0.0, 1.0, points)
    rows = {"alpha": alphas.tolist(), "train_loss": [], "train_error": [], "test_loss": [], "test_error": []}
    for alpha in alphas:
        model.load_state_dict({k: (torch.lerp(sa[k], sb[k], float(alpha)) if sa[k].is_floating_point() else sa[k])
                               for k in sa})
        if recompute_bn:
            _recompute_bn(model, train_split)
        for name, split in (("train", train_split), ("test", data.test)):
            loss, acc = evaluate(model, split)
            rows[f"{name}_loss"].append(loss)
            rows[f"{name}_error"].append(1 - acc)
    for name in ("train", "test"):
        err = rows[f"{name}_error"]
        rows[f"{name}_barrier"] = max(err) - 0.5 * (err[0] + err[-1])
        loss = rows[f"{name}_loss"]
        rows[f"{name}_loss_barrier"] = max(loss) - 0.5 * (loss[0] + loss[-1])
    rows["recompute_bn"] = recompute_bn
    return rows


def connect(path_a: str | Path, path_b: str | Path, points: int = 30, recompute_bn: bool = False,
            device: str = "auto", data_dir: Optional[str] = None, train_samples: Optional[int] = None) -> dict:
    """``interpolate`` between two checkpoint files (same architecture and mask)."""
    dev = resolve_device(device)
    a = load(path_a, dev, data_dir)
    b = load(path_b, dev, data_dir, with_data=False)
    _check_compatible(a.checkpoint, b.checkpoint, path_a, path_b)
    result = interpolate(a.model, b.model, a.dataset, points, recompute_bn, train_samples)
    result.update({"a": str(path_a), "b": str(path_b), "points": points})
    return result


def instability(path: str | Path, seeds: Sequence[int] = (1, 2), points: int = 30, recompute_bn: bool = False,
                device: str = "auto", data_dir: Optional[str] = None, progress: bool = True,
                train_samples: Optional[int] = None) -> dict:
    """Train two copies of the rewind checkpoint at ``path`` (data-order seeds ``seeds``) to the end
    of its run's schedule and measure their barrier."""
    dev = resolve_device(device)
    loaded = load(path, dev, data_dir)
    ckpt = loaded.checkpoint
    config = ckpt["meta"].get("config")
    if config is None:
        raise UserError(f"{path} does not carry its training configuration; it was not written by a run")
    hp = Config.from_dict(config).training
    start = int(ckpt["step"]["iteration"])
    copies = []
    for seed in seeds:
        model = copy.deepcopy(loaded.model).to(dev)
        model.train()
        apply_mask(model, loaded.mask)
        trained_hp = copy.deepcopy(hp)
        trained_hp.seed = seed
        train(model, loaded.dataset, trained_hp, start=start, mask=loaded.mask, progress=progress)
        copies.append(model)
    result = interpolate(copies[0], copies[1], loaded.dataset, points, recompute_bn, train_samples)
    result.update({"checkpoint": str(path), "k_iteration": start, "k_epoch": ckpt["step"]["epoch"],
                   "seeds": list(seeds), "density": ckpt["meta"].get("density"),
                   "stable": result["test_barrier"] < STABLE_BARRIER})
    return result


def _plot(results: list[dict], path: Path, instability_mode: bool) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = (f"k = {r['k_iteration']} it" if instability_mode else f"{Path(r['a']).name} -> {Path(r['b']).name}")
        axes[0].plot(r["alpha"], 100 * np.array(r["test_error"]), marker=".", label=label)
    axes[0].set(xlabel="interpolation alpha", ylabel="test error (%)", title="linear interpolation")
    axes[0].legend(fontsize=7)
    if instability_mode:
        ks = [r["k_iteration"] for r in results]
        axes[1].plot(ks, [100 * r["test_barrier"] for r in results], "o-")
        axes[1].axhline(100 * STABLE_BARRIER, color="k", ls="--", label="2% threshold")
        axes[1].set(xlabel="rewind point k (iterations)", ylabel="test error barrier (%)", title="instability")
        axes[1].legend()
    else:
        for r in results:
            axes[1].plot(r["alpha"], r["test_loss"], marker=".")
        axes[1].set(xlabel="interpolation alpha", ylabel="test loss", title="loss along the path")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.connectivity",
        description="Linear mode connectivity between two checkpoints, or instability of rewind points.",
        epilog="examples:\n  python -m analysis.connectivity runs/A/level_0/final.pt runs/B/level_0/final.pt\n"
               "  python -m analysis.connectivity --instability runs/train-*/level_0/step_*.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="two checkpoints, or rewind checkpoints with --instability")
    p.add_argument("--instability", action="store_true", help="train two copies from each checkpoint and compare")
    p.add_argument("--points", type=int, default=30, help="points on the path, endpoints included (default 30)")
    p.add_argument("--recompute-bn", action="store_true",
                   help="recompute batch-norm statistics at every point (off by default, as in the paper)")
    p.add_argument("--train-samples", type=int, help="evaluate the training loss on the first N examples only")
    p.add_argument("--seeds", default="1,2", help="data-order seeds of the two copies (default 1,2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="connectivity-out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        start = time.perf_counter()
        if args.instability:
            seeds = [int(s) for s in args.seeds.split(",")]
            if len(seeds) != 2:
                raise UserError(f"--seeds needs two seeds, got {args.seeds!r}")
            results = [instability(c, seeds, args.points, args.recompute_bn, args.device, args.data_dir,
                                   not args.no_progress, args.train_samples) for c in args.checkpoints]
            results.sort(key=lambda r: r["k_iteration"])
            for r in results:
                print(f"k = {r['k_iteration']:>6} it ({r['k_epoch']:.2f} ep): test error barrier "
                      f"{100 * r['test_barrier']:.2f}% -> {'stable' if r['stable'] else 'unstable'}")
        else:
            if len(args.checkpoints) != 2:
                raise UserError(f"give two checkpoints to interpolate between (got {len(args.checkpoints)}), "
                                "or use --instability")
            results = [connect(*args.checkpoints, args.points, args.recompute_bn, args.device, args.data_dir,
                               args.train_samples)]
            r = results[0]
            print(f"test error barrier {100 * r['test_barrier']:.2f}%, train error barrier "
                  f"{100 * r['train_barrier']:.2f}% ({args.points} points)")
        print(f"batch-norm statistics {'recomputed at every point' if args.recompute_bn else 'interpolated, not recomputed'}"
              f"; {time.perf_counter() - start:.1f} s")
        atomic_write_text(out / "connectivity.json", json.dumps({"results": results}, indent=1) + "\n")
        _plot(results, out / "connectivity.png", args.instability)
        print(f"wrote {out / 'connectivity.json'} and {out / 'connectivity.png'}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
