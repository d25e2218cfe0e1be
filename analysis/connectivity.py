"""Linear mode connectivity and instability (Frankle et al. 2020, "Linear mode connectivity and the
lottery ticket hypothesis"; the lecture slides "From model pruning to sparse updates and the LTH").

``python -m analysis.connectivity A.pt B.pt`` evaluates loss and error on the training and test
sets along theta(alpha) = (1 - alpha) theta_A + alpha theta_B (every floating-point tensor of the
state dict, batch-norm statistics included), and reports the error barrier: the maximum error
along the path minus the mean of the two endpoints' errors. Masked checkpoints must share their
mask; pruned weights are zero at both ends, so the path stays inside the mask.

``python -m analysis.connectivity --instability K1.pt K2.pt ...``: from each rewind checkpoint
W_k, train two copies that differ only in data order and augmentation (seeds 1 and 2), with the
checkpoint's own training setup and mask, and measure their test-error barrier. A network is
stable at k when the barrier is below 2% (the paper's threshold). The copies are training
branches (``training.engine.branches``): checkpointed, resumable, stored under the checkpoint's run.
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

from training.engine.branches import branch_root, train_branch
from training.engine.checkpoint import atomic_write_text, load, read_checkpoint
from training.cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from training.data import Dataset, Split, eval_batches
from training.errors import UserError
from training.engine.loop import evaluate
from training.engine.provenance import provenance
from training.engine.runs import resolve_device

from .figure_io import checkpoint_label, line_style, pyplot, run_name, save_png, unique_labels

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
    result.update({"a": str(path_a), "b": str(path_b), "label_a": checkpoint_label(path_a, a.checkpoint),
                   "label_b": checkpoint_label(path_b, b.checkpoint), "points": points})
    return result


def instability(path: str | Path, seeds: Sequence[int] = (1, 2), points: int = 30, recompute_bn: bool = False,
                device: str = "auto", data_dir: Optional[str] = None, progress: bool = True,
                train_samples: Optional[int] = None) -> dict:
    """Train two copies of the rewind checkpoint at ``path`` (data-order seeds ``seeds``) to the end
    of its run's schedule and measure their barrier; return a JSON-ready dict (errors and barriers
    as fractions, ``stable``: test barrier below 2%).

    Each copy is a training branch (``training.engine.branches``) stored under the checkpoint's run as
    ``RUN/branches/instability-HASH/``: a second call reads the trained copies instead of training
    again, and a killed call resumes. The copies keep the checkpoint's mask and what it says about
    the weights outside it (zero, or frozen at their values for RISE checkpoints)."""
    seeds = list(seeds)
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise UserError(f"--seeds needs two different seeds, got {seeds}")
    finals = [train_branch(path, "instability", seed, data_dir=data_dir, device=device, progress=progress)
              for seed in seeds]
    dev = resolve_device(device)
    a = load(finals[0], dev, data_dir)
    b = load(finals[1], dev, data_dir, with_data=False)
    ckpt = read_checkpoint(path)
    result = interpolate(a.model, b.model, a.dataset, points, recompute_bn, train_samples)
    result.update({"checkpoint": str(path), "label": checkpoint_label(path, ckpt),
                   "run": str(ckpt["meta"].get("run_hash")),
                   "run_label": run_name(path, ckpt),
                   "level": ckpt["meta"].get("level"),
                   "k_iteration": int(ckpt["step"]["iteration"]),
                   "k_epoch": ckpt["step"]["epoch"], "seeds": seeds, "copies": [str(f) for f in finals],
                   "density": ckpt["meta"].get("density"), "masked_weights": ckpt["meta"].get("masked_weights", "zero"),
                   "stable": result["test_barrier"] < STABLE_BARRIER})
    return result


def _plot(results: list[dict], path: Path, instability_mode: bool) -> None:
    """Test error (%) along the path against the interpolation coefficient alpha, one line per
    pair; with ``instability_mode``, the test error barrier (%) against the rewind point k, one
    line per run and level (the rewind points of one network), and the 2% stability threshold."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if instability_mode:
        labels = unique_labels([f"{r['label']} (k = {r['k_iteration']} it)" for r in results])
    else:
        labels = unique_labels([f"{r['label_a']} -> {r['label_b']}" for r in results])
    for i, (r, label) in enumerate(zip(results, labels)):
        axes[0].plot(r["alpha"], 100 * np.array(r["test_error"]), marker=".", label=label, **line_style(i))
    axes[0].set(xlabel="interpolation coefficient alpha (0: first network, 1: second)", ylabel="test error (%)",
                title="test error along the linear path" + (" between the two copies" if instability_mode else ""))
    axes[0].legend(fontsize=7)
    if instability_mode:
        runs: dict[tuple, list[dict]] = {}
        for r in results:
            runs.setdefault((r["run"], r["level"]), []).append(r)
        run_labels = unique_labels([f"{group[0]['run_label']} L{group[0]['level']} ({100 * group[0]['density']:.1f}%)"
                                    if group[0]["density"] is not None else group[0]["run_label"]
                                    for group in runs.values()])
        for i, (group, label) in enumerate(zip(runs.values(), run_labels)):
            group = sorted(group, key=lambda r: r["k_iteration"])
            axes[1].plot([r["k_iteration"] for r in group], [100 * r["test_barrier"] for r in group], marker="o",
                         label=label, **line_style(i))
        axes[1].axhline(100 * STABLE_BARRIER, color="k", ls=":", label="stability threshold (2%)")
        axes[1].set(xlabel="rewind point k (iterations)", ylabel="test error barrier (%)",
                    title="instability: barrier between two copies trained from k")
        per_epoch = {round(r["k_iteration"] / r["k_epoch"], 6) for r in results if r["k_epoch"]}
        if len(per_epoch) == 1:  # one epoch length: the same axis in epochs on top
            ipe = per_epoch.pop()
            top = axes[1].secondary_xaxis("top", functions=(lambda it: it / ipe, lambda ep: ep * ipe))
            top.set_xlabel("rewind point k (epochs)")
        axes[1].legend(fontsize=7)
    else:
        for i, (r, label) in enumerate(zip(results, labels)):
            axes[1].plot(r["alpha"], r["test_loss"], marker=".", label=label, **line_style(i))
        axes[1].set(xlabel="interpolation coefficient alpha (0: first network, 1: second)",
                    ylabel="test loss (cross-entropy, nats)", title="test loss along the linear path")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def main(argv: Optional[list[str]] = None) -> int:
    p = ArgumentParser(
        prog="python -m analysis.connectivity",
        description="Linear mode connectivity between two checkpoints, or the instability of rewind points\n"
                    "(Frankle et al., \"Linear mode connectivity and the lottery ticket hypothesis\").",
        epilog="examples:\n  python -m analysis.connectivity RUN_A/level_0/final.pt RUN_B/level_0/final.pt\n"
               "  python -m analysis.connectivity --instability RUN/level_0/step_*.pt\n"
               "RUN is a run folder, e.g. RUN=$(ls -td runs/train-* | head -1).\n"
               "--instability trains two copies of each checkpoint as resumable training branches under its\n"
               "run (RUN/branches/instability-HASH/); a second call reads them instead of training again.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="two checkpoints, or rewind checkpoints with --instability")
    p.add_argument("--instability", action="store_true", help="train two copies from each checkpoint and compare")
    p.add_argument("--points", type=int, default=30, help="points on the path, endpoints included (default 30)")
    p.add_argument("--recompute-bn", action="store_true",
                   help="recompute batch-norm statistics at every point (off by default, as in the paper)")
    p.add_argument("--train-samples", type=int, help="evaluate the training loss on the first N examples only")
    p.add_argument("--seeds", default="1,2", help="data-order seeds of the two copies (default 1,2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--out", default="connectivity-out", help="output folder (default connectivity-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while --instability trains")
    add_threads_flag(p)
    args = p.parse_args(argv)
    hint = "interrupted: run the same command again to resume its training branches" if args.instability else None
    return run_command(lambda: _main(args), hint or "interrupted")


def _main(args: argparse.Namespace) -> None:
    check_threads(args.threads)
    if args.points < 2:
        raise UserError(f"--points must be at least 2 (the endpoints), got {args.points}")
    if args.train_samples is not None and args.train_samples < 1:
        raise UserError(f"--train-samples must be at least 1, got {args.train_samples}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds must be two integers separated by a comma, got {args.seeds!r}") from None
    if args.instability and (len(seeds) != 2 or seeds[0] == seeds[1]):
        raise UserError(f"--seeds needs two different seeds, got {args.seeds!r}")
    if not args.instability and len(args.checkpoints) != 2:
        raise UserError(f"give two checkpoints to interpolate between (got {len(args.checkpoints)}), "
                        "or use --instability")
    resolve_device(args.device)
    out = writable_dir(args.out)
    if args.instability:
        for checkpoint in args.checkpoints:  # every copy can be stored before the first one trains
            branch_root(checkpoint)
    else:
        for checkpoint in args.checkpoints:  # a mistyped path must not cost the previous results
            read_checkpoint(checkpoint)
    json_path, png_path = out / "connectivity.json", out / "connectivity.png"
    for stale in (json_path, png_path):  # an earlier call's results must not pass for this call's
        stale.unlink(missing_ok=True)
    threads = set_threads(args.threads)  # also the threads of the --instability copies' training
    start = time.perf_counter()
    if args.instability:
        results = [instability(c, seeds, args.points, args.recompute_bn, args.device, args.data_dir,
                               not args.no_progress, args.train_samples) for c in args.checkpoints]
        results.sort(key=lambda r: (r["run"], r["k_iteration"]))
        for r in results:
            print(f"{r['label']}: k = {r['k_iteration']} it ({r['k_epoch']:.2f} ep), test error barrier "
                  f"{100 * r['test_barrier']:.2f}% -> {'stable' if r['stable'] else 'unstable'}")
    else:
        results = [connect(*args.checkpoints, args.points, args.recompute_bn, args.device, args.data_dir,
                           args.train_samples)]
        r = results[0]
        print(f"test error barrier {100 * r['test_barrier']:.2f}%, train error barrier "
              f"{100 * r['train_barrier']:.2f}% ({args.points} points)")
    print(f"batch-norm statistics {'recomputed at every point' if args.recompute_bn else 'interpolated, not recomputed'}"
          f"; {time.perf_counter() - start:.1f} s")
    record = {"results": results, "provenance": {**provenance(), "threads": threads}}
    atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
    _plot(results, png_path, args.instability)
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    sys.exit(main())
