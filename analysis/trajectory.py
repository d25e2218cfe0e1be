"""Trajectory length (Raghu et al. 2017; seed 003): how much a network stretches a circle.

For two inputs x0, x1 the closed arc x(t) = cos(t) x0 + sin(t) x1, t in [0, 2 pi), is sampled at N
points and pushed through the network; its length at the logits (optionally after every
convolution and linear layer) is the sum of the distances between consecutive outputs, the last
joined back to the first. The result is averaged over M random pairs of test inputs, with the
spread. The relative change when N doubles says whether N is large enough.

``python -m analysis.trajectory A.pt [B.pt ...]`` also reports TL_gain = (TL_B - TL_A) / TL_A x 100
of every later checkpoint against the first (seed 003), on the same pairs.
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

from training.checkpoint import atomic_write_text, load
from training.errors import UserError
from training.masks import PRUNABLE_TYPES
from training.runs import resolve_device
from training.seeding import generator

from .figure_io import pyplot, save_png


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


def trajectory_length(model: nn.Module, inputs: torch.Tensor, pairs: int = 16, points: int = 1000,
                      seed: int = 0, layers: bool = False) -> dict:
    """Mean and spread over ``pairs`` random input pairs of the arc length, and its convergence:
    the relative change of the mean when the number of points doubles."""
    if pairs < 1 or points < 3:
        raise UserError(f"need --pairs >= 1 and --points >= 3, got {pairs} and {points}")
    if len(inputs) < 2:
        raise UserError("need at least two inputs to draw arcs between")
    gen = generator(seed, "trajectory-pairs")
    idx = torch.stack([torch.randperm(len(inputs), generator=gen)[:2] for _ in range(pairs)])
    per_pair = [arc_lengths(model, inputs[i], inputs[j], points, layers) for i, j in idx.tolist()]
    doubled = [arc_lengths(model, inputs[i], inputs[j], 2 * points)["logits"] for i, j in idx.tolist()]
    logits = np.array([p["logits"] for p in per_pair])
    result = {"mean": float(logits.mean()), "std": float(logits.std(ddof=1)) if pairs > 1 else 0.0,
              "pairs": pairs, "points": points, "per_pair": logits.tolist(),
              "relative_change_when_points_double": float(abs(np.mean(doubled) - logits.mean()) / logits.mean())}
    if layers:
        result["layers"] = {name: float(np.mean([p[name] for p in per_pair])) for name in per_pair[0] if name != "logits"}
    return result


def gain(sparse: float, dense: float) -> float:
    """Seed 003's TL_gain (and A_gain): (sparse - dense) / dense x 100."""
    return (sparse - dense) / dense * 100


def analyze(paths: list[str], pairs: int = 16, points: int = 1000, seed: int = 0, layers: bool = False,
            device: str = "auto", data_dir: Optional[str] = None) -> list[dict]:
    dev = resolve_device(device)
    results = []
    for path in paths:
        loaded = load(path, dev, data_dir)
        r = trajectory_length(loaded.model, loaded.dataset.test.x, pairs, points, seed, layers)
        r.update({"checkpoint": str(path), "level": loaded.checkpoint["meta"].get("level"),
                  "density": loaded.checkpoint["meta"].get("density")})
        if results:
            r["tl_gain_vs_first"] = gain(r["mean"], results[0]["mean"])
        results.append(r)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.trajectory",
                                description="Trajectory length of checkpoints (Raghu et al. 2017), and TL_gain "
                                            "of each against the first (seed 003).",
                                epilog="example:\n  python -m analysis.trajectory runs/imp-*/level_0/final.pt "
                                       "runs/imp-*/level_4/final.pt",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--pairs", type=int, default=16, help="random pairs of test inputs (default 16)")
    p.add_argument("--points", type=int, default=1000, help="points on each arc (default 1000)")
    p.add_argument("--layers", action="store_true", help="also measure after every conv/linear layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="trajectory-out")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        results = analyze(args.checkpoints, args.pairs, args.points, args.seed, args.layers, args.device,
                          args.data_dir)
        for r in results:
            extra = f", TL_gain {r['tl_gain_vs_first']:+.2f}%" if "tl_gain_vs_first" in r else ""
            print(f"{r['checkpoint']}: trajectory length {r['mean']:.4g} +- {r['std']:.2g} over {r['pairs']} arcs "
                  f"(changes {100 * r['relative_change_when_points_double']:.3f}% when points double){extra}")
        atomic_write_text(out / "trajectory.json", json.dumps({"results": results}, indent=1) + "\n")
        _plot(results, out / "trajectory.png")
        print(f"wrote {out / 'trajectory.json'} and {out / 'trajectory.png'}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _plot(results: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [100 * (r["density"] if r["density"] is not None else 1.0) for r in results]
    ax.errorbar(x, [r["mean"] for r in results], yerr=[r["std"] for r in results], marker="o", capsize=3)
    ax.set(xlabel="weights remaining (%)", ylabel="trajectory length (logits)", title="trajectory length")
    ax.invert_xaxis()
    fig.tight_layout()
    save_png(fig, path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
