"""Trajectory length (Raghu et al. 2017, as used by Sahu et al., "Not all lotteries are made equal"):
how much a network stretches a circle.

For two inputs x0, x1 the closed arc x(t) = cos(t) x0 + sin(t) x1, t in [0, 2 pi), is sampled at N
points and pushed through the network; its length at the logits (optionally after every
convolution and linear layer) is the sum of the distances between consecutive outputs, the last
joined back to the first. The result is averaged over M random pairs of test inputs, with the
spread. The relative change when N doubles says whether N is large enough.

``python -m analysis.trajectory A.pt [B.pt ...]`` also reports TL_gain = (TL_B - TL_A) / TL_A x 100
of every later checkpoint against the first (Sahu et al.), on the same pairs, and plots the length
against the density with one series per run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from training.engine.checkpoint import atomic_write_text, load, read_checkpoint
from training.cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from training.errors import UserError
from training.sparsity.masks import PRUNABLE_TYPES
from training.engine.provenance import provenance
from training.engine.runs import resolve_device
from training.engine.seeding import generator

from .figure_io import (
    checkpoint_density,
    checkpoint_label,
    line_style,
    pyplot,
    run_name,
    save_png,
    unique_labels,
)


def arc(x0: torch.Tensor, x1: torch.Tensor, points: int) -> torch.Tensor:
    """N points of the closed arc cos(t) x0 + sin(t) x1, t = 2 pi i / N: shape (N, *x0.shape)."""
    t = torch.arange(points, dtype=torch.float64) * (2 * math.pi / points)
    c, s = torch.cos(t).to(x0.dtype), torch.sin(t).to(x0.dtype)
    shape = (points,) + (1,) * x0.dim()
    return c.view(shape).to(x0.device) * x0 + s.view(shape).to(x0.device) * x1


def closed_length(outputs: torch.Tensor) -> float:
    """Length of the closed polygon through the rows of ``outputs`` (flattened per point)."""
    flat = outputs.detach().reshape(len(outputs), -1).double()
    return float((torch.roll(flat, -1, dims=0) - flat).norm(dim=1).sum())


@torch.no_grad()
def arc_lengths(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, points: int, layers: bool = False,
                batch: int = 2048) -> dict[str, float]:
    """Lengths of the image of the arc through x0, x1 at the logits (and at each layer if asked)."""
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = []
    if layers:
        for name, module in model.named_modules():
            if isinstance(module, PRUNABLE_TYPES):
                hooks.append(module.register_forward_hook(
                    lambda m, i, o, name=name: captured.setdefault(name, []).append(o.detach())))
    model.eval()
    path = arc(x0, x1, points)
    try:
        logits = torch.cat([model(path[i : i + batch]) for i in range(0, points, batch)])
    finally:
        for h in hooks:
            h.remove()
    lengths = {"logits": closed_length(logits)}
    for name, parts in captured.items():
        lengths[name] = closed_length(torch.cat(parts))
    return lengths


def check_options(pairs: int, points: int) -> None:
    """Refuse ``--pairs`` below 1 and ``--points`` below 3 (a closed polygon needs three corners)."""
    if pairs < 1 or points < 3:
        raise UserError(f"need --pairs >= 1 and --points >= 3, got {pairs} and {points}")


def trajectory_length(model: nn.Module, inputs: torch.Tensor, pairs: int = 16, points: int = 1000,
                      seed: int = 0, layers: bool = False) -> dict:
    """Mean and spread over ``pairs`` random input pairs of the arc length, and its convergence:
    the relative change of the mean when the number of points doubles."""
    check_options(pairs, points)
    if len(inputs) < 2:
        raise UserError("need at least two inputs to draw arcs between")
    gen = generator(seed, "trajectory-pairs")
    idx = torch.stack([torch.randperm(len(inputs), generator=gen)[:2] for _ in range(pairs)])
    per_pair = [arc_lengths(model, inputs[i], inputs[j], points, layers) for i, j in idx.tolist()]
    doubled = [arc_lengths(model, inputs[i], inputs[j], 2 * points)["logits"] for i, j in idx.tolist()]
    logits = np.array([p["logits"] for p in per_pair])
    result = {"mean": float(logits.mean()), "std": float(logits.std(ddof=1)) if pairs > 1 else 0.0,
              "pairs": pairs, "points": points, "per_pair": logits.tolist(),
              "relative_change_when_points_double":
                  float(abs(np.mean(doubled) - logits.mean()) / logits.mean()) if logits.mean() > 0 else 0.0}
    if layers:
        result["layers"] = {name: float(np.mean([p[name] for p in per_pair])) for name in per_pair[0] if name != "logits"}
    return result


def gain(sparse: float, dense: float) -> Optional[float]:
    """Sahu et al.'s TL_gain (and A_gain), in percent: (sparse - dense) / dense x 100; None when
    ``dense`` is 0 (no relative change is defined)."""
    if dense == 0:
        return None
    return (sparse - dense) / dense * 100


OUTPUTS = ("trajectory.json", "trajectory.png")


def describe(path: str | Path) -> dict:
    """What the plot and the report need to know of the checkpoint at ``path``, read without
    building the model: its label, its run (``run``: ``ALGORITHM-HASH6``, or the file name for a
    file no run wrote), kind, level, density (fraction) and dataset. Raises ``UserError`` for a
    file that is not a checkpoint."""
    ckpt = read_checkpoint(Path(path))
    meta = ckpt.get("meta") or {}
    run = run_name(path, ckpt)
    run_key = f"{meta.get('algorithm', 'run')}-{meta['run_hash']}" if "run_hash" in meta else str(path)
    return {"checkpoint": str(path), "label": checkpoint_label(path, ckpt), "run": run, "run_key": run_key,
            "kind": meta.get("kind", Path(path).stem), "level": meta.get("level"), "density": checkpoint_density(ckpt),
            "dataset": ckpt.get("dataset")}


def analyze(paths: list[str], pairs: int = 16, points: int = 1000, seed: int = 0, layers: bool = False,
            device: str = "auto", data_dir: Optional[str] = None,
            described: Optional[list[dict]] = None) -> list[dict]:
    """Trajectory length of each checkpoint (``trajectory_length``'s fields, lengths in the units of
    the logits) with its ``describe`` fields, and ``tl_gain_vs_first`` (percent) of every later
    checkpoint of the same dataset against the first checkpoint given."""
    check_options(pairs, points)
    dev = resolve_device(device)
    described = described or [describe(p) for p in paths]
    results = []
    for path, info in zip(paths, described):
        loaded = load(path, dev, data_dir)
        r = trajectory_length(loaded.model, loaded.dataset.test.x, pairs, points, seed, layers)
        r.update({k: v for k, v in info.items() if k != "dataset"})
        if results and info["dataset"] == described[0]["dataset"]:
            tl_gain = gain(r["mean"], results[0]["mean"])
            if tl_gain is not None:
                r["tl_gain_vs_first"] = tl_gain
        results.append(r)
        del loaded
    return results


def series(results: list[dict]) -> list[dict]:
    """The plot's series: one per run (and per checkpoint kind when several kinds of one run are
    given), in the order first met, each with a unique ``label`` and its ``points`` sorted from
    dense to sparse. Checkpoints of different runs never share a series."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r.get("run_key", r["run"]), r["kind"]), []).append(r)
    kinds_per_run: dict[str, set] = {}
    for run, kind in groups:
        kinds_per_run.setdefault(run, set()).add(kind)
    out = []
    for (run, kind), members in groups.items():
        name = members[0]["run"] + (f" {kind}" if len(kinds_per_run[run]) > 1 else "")
        out.append({"label": name, "points": sorted(members, key=lambda r: -r["density"])})
    for s, label in zip(out, unique_labels([s["label"] for s in out])):
        s["label"] = label
    return out


def figure(results: list[dict]):
    """The trajectory-length plot: length at the logits (mean +- std over the arcs) against the
    weights remaining in percent, one line per run, each point marked with its level."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = series(results)
    for i, s in enumerate(groups):
        x = [100 * r["density"] for r in s["points"]]
        y = [r["mean"] for r in s["points"]]
        ax.errorbar(x, y, yerr=[r["std"] for r in s["points"]], marker="o", capsize=3, label=s["label"],
                    **line_style(i))
        for r, xi, yi in zip(s["points"], x, y):
            if r.get("level") is not None:
                ax.annotate(f"L{r['level']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=line_style(i)["color"])
    densities = [100 * r["density"] for r in results]
    log = min(densities) > 0 and max(densities) / min(densities) > 10
    if log:
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()
    r0 = results[0]
    ax.set(xlabel="weights remaining (% of prunable weights" + (", log scale)" if log else ")"),
           ylabel="trajectory length at the logits\n(logit units, mean ± std over arcs)",
           title=f"trajectory length of closed arcs through pairs of test inputs "
                 f"({r0['pairs']} pairs, {r0['points']} points per arc)")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    where = {"loc": "best"} if len(groups) <= 3 else {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    ax.legend(fontsize=8, title="run (points marked\nwith their level)", title_fontsize=8,
              ncol=1 if len(groups) <= 20 else 2, **where)
    fig.tight_layout()
    return fig


def _plot(results: list[dict], path: Path) -> None:
    save_png(figure(results), path, dpi=120)


def remove_outputs(out: Path, names: tuple[str, ...]) -> None:
    """Delete the files an earlier call wrote under these names, so that ``out`` never holds
    results that look like this call's but are not."""
    for name in names:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


HELP = """\
Trajectory length (Raghu et al. 2017) of each checkpoint: the length, in logit units, of the image
of a circle through two test inputs, averaged over --pairs random pairs (mean +- std), as
Sahu et al., "Not all lotteries are made equal", use it to compare tickets with their dense network.

reads:   the checkpoints given (each brings its model and its dataset: MNIST-1D is generated,
         MNIST/CIFAR are read from --data-dir)
prints:  one line per checkpoint: its label (run, level, kind, density), the length +- its spread,
         how much it changes when the points per arc double (small = --points is enough), and
         TL_gain = (TL - TL_first) / TL_first x 100 against the first checkpoint given (same dataset)
writes:  --out/trajectory.json (every number printed, the length of every arc, and the
         software and --threads count that computed them) and
         --out/trajectory.png (length against weights remaining in %, one line per run, each point
         marked with its level). Files an earlier call left there are removed first.
"""

EPILOG = """\
example (the dense network and two tickets of the newest IMP run):
  RUN=$(ls -td runs/imp-* | head -1)
  python -m analysis.trajectory $RUN/level_0/final.pt $RUN/level_1/final.pt $RUN/level_2/final.pt
Give checkpoints of several runs to compare them: each run is drawn as its own line.
"""


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.trajectory", description=HELP, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint files (.pt) of runs; TL_gain is against the first")
    p.add_argument("--pairs", type=int, default=16, help="random pairs of test inputs, one arc each (default 16)")
    p.add_argument("--points", type=int, default=1000, help="points on each arc, at least 3 (default 1000)")
    p.add_argument("--layers", action="store_true",
                   help="also measure the length after every conv/linear layer (in the JSON only)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the pairs (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    add_threads_flag(p)
    p.add_argument("--out", default="trajectory-out",
                   help="folder for trajectory.json and trajectory.png (default: trajectory-out)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; return the exit status (0, 2 for bad input, 130 on Ctrl-C)."""
    args = parser().parse_args(argv)

    def body() -> None:
        check_threads(args.threads)
        check_options(args.pairs, args.points)
        resolve_device(args.device)
        described = [describe(path) for path in args.checkpoints]
        out = writable_dir(args.out)
        remove_outputs(out, OUTPUTS)
        threads = set_threads(args.threads)
        results = analyze(args.checkpoints, args.pairs, args.points, args.seed, args.layers, args.device,
                          args.data_dir, described=described)
        first = results[0]["label"]
        for r in results:
            if "tl_gain_vs_first" in r:
                extra = f", TL_gain {r['tl_gain_vs_first']:+.2f}% vs {first}"
            elif r is results[0]:
                extra = ""
            elif results[0]["mean"] == 0:
                extra = ", no TL_gain (the first checkpoint's length is 0)"
            else:
                extra = ", no TL_gain (its dataset settings differ from the first checkpoint's)"
            print(f"{r['label']} ({r['checkpoint']}): trajectory length {r['mean']:.4g} +- {r['std']:.2g} "
                  f"over {r['pairs']} arcs (changes {100 * r['relative_change_when_points_double']:.3f}% "
                  f"when points double){extra}")
        record = {"results": results, "provenance": {**provenance(), "threads": threads}}
        atomic_write_text(out / "trajectory.json", json.dumps(record, indent=1) + "\n")
        _plot(results, out / "trajectory.png")
        print(f"wrote {out / 'trajectory.json'} and {out / 'trajectory.png'}")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
