"""Hessian spectra of checkpoints: ``python -m analysis.hessian ckpt.pt [more.pt ...]``.

For each checkpoint: the top eigenvalues (Lanczos, with residuals), the trace (Hutchinson, with its
standard error) and the spectral density (stochastic Lanczos quadrature), of the exact Hessian of
the mean training loss, in the full parameter space or the ticket's subspace. Writes
``hessian.json`` (every number and setting) and ``hessian_density.png`` (log scale, all
checkpoints overlaid, like seed 000's Fig. 2).

``analyze(path, settings)`` is the same computation for scripts and figures.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from training.checkpoint import (
    atomic_write_text,
    masked_weights_are_zero,
    model_from_checkpoint,
    read_checkpoint,
)
from training.data import Dataset, Split, check_dataset_name, load_dataset
from training.errors import UserError
from training.hparams import DatasetHparams
from training.masks import apply_mask
from training.runs import resolve_device
from training.seeding import generator

from .figure_io import pyplot, save_png
from .hvp import HessianOperator, tune_allocator
from .lanczos import gaussian_density, hutchinson_trace, slq, top_eigenvalues


@dataclass
class Settings:
    top_k: int = 5
    trace: bool = True
    density: bool = True
    space: str = "full"
    samples: Optional[int] = None  # None: the whole training split
    batch_size: int = 1000
    probes: int = 32  # Hutchinson probes for the trace
    slq_probes: int = 4
    lanczos_steps: int = 60
    eig_steps: int = 100
    eig_tol: float = 1e-4
    seed: int = 0
    mode: str = "eval"
    device: str = "auto"
    dtype: str = "float32"
    strategy: str = "auto"  # Hessian-vector products: auto, rop, loop or batched (analysis.hvp)

    def check(self) -> None:
        for name in ("probes", "slq_probes", "lanczos_steps", "eig_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be at least 0, got {self.top_k}")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples must be at least 1, got {self.samples}")
        if self.space not in ("full", "ticket"):
            raise UserError(f"unknown --space {self.space!r}; choose full or ticket")
        if self.dtype not in ("float32", "float64"):
            raise UserError(f"unknown --dtype {self.dtype!r}; choose float32 or float64")
        if self.strategy not in ("auto", "rop", "loop", "batched"):
            raise UserError(f"unknown --hvp {self.strategy!r}; choose auto, rop, loop or batched")


def hessian_batches(split: Split, samples: Optional[int], batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The examples the Hessian is taken over: all of ``split``, or ``samples`` of them chosen by a
    seeded permutation; cut into batches (no augmentation)."""
    idx = torch.arange(len(split))
    if samples is not None and samples < len(split):
        idx = torch.randperm(len(split), generator=generator(seed, "hessian-samples"))[:samples].sort().values
    idx = idx.to(split.x.device)
    return [(split.x[idx[i : i + batch_size]], split.y[idx[i : i + batch_size]])
            for i in range(0, len(idx), batch_size)]


def _dataset_for(ckpt: dict, path: Path, dataset: Optional[str], data_dir: Optional[str]) -> Dataset:
    description = ckpt.get("dataset") or {}
    if dataset is not None:
        check_dataset_name(dataset)
        hp = DatasetHparams(dataset=dataset)
    elif description.get("name"):
        known = set(DatasetHparams.__dataclass_fields__)
        hp = DatasetHparams(**{k: v for k, v in description.get("hparams", {}).items() if k in known})
        hp.dataset = description["name"]
    else:
        raise UserError(f"{path} does not say which dataset it was trained on; pass --dataset NAME")
    return load_dataset(hp, data_dir)


def analyze(path: str | Path, settings: Settings = Settings(), data_dir: Optional[str] = None,
            dataset: Optional[str] = None, progress: bool = False) -> dict:
    """Compute what ``settings`` asks for on one checkpoint; returns a JSON-ready dict."""
    settings.check()
    path = Path(path)
    start = time.perf_counter()
    ckpt = read_checkpoint(path)
    device = resolve_device(settings.device)
    model = model_from_checkpoint(ckpt, path)
    mask = ckpt["mask"]
    if masked_weights_are_zero(ckpt):
        apply_mask(model, mask)  # the masked point W * M, where seed 000 takes its spectra
    data = _dataset_for(ckpt, path, dataset, data_dir).to(device)
    model.to(device)
    batches = hessian_batches(data.train, settings.samples, settings.batch_size, settings.seed)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    mask_on_device = None if mask is None else {k: v.to(device) for k, v in mask.items()}
    op = HessianOperator(model, batches, settings.space, mask_on_device, settings.mode, dtype, settings.strategy)

    from tqdm import tqdm

    planned = (settings.eig_steps + 1 if settings.top_k else 0) + \
        (math.ceil(settings.probes / 16) if settings.trace else 0) + (settings.lanczos_steps if settings.density else 0)
    bar = tqdm(total=planned, desc=path.name, unit="pass", disable=None if progress else True, leave=False)

    def matvec(V):
        out = op(V)
        bar.update(1)
        return out

    def quadratic_form(V):  # hutchinson_trace asks for v^T H v directly when the operator offers it
        out = op.quadratic_form(V)
        bar.update(1)
        return out

    matvec.quadratic_form = quadratic_form

    gen = generator(settings.seed, "hessian-probes")
    result: dict = {
        "checkpoint": str(path), "model": ckpt["model"]["name"], "dataset": data.name,
        "level": ckpt["meta"].get("level"), "kind": ckpt["meta"].get("kind"),
        "weight_density": ckpt["meta"].get("density"), "iteration": ckpt["step"].get("iteration"),
        "epoch": ckpt["step"].get("epoch"), "space": settings.space, "mode": settings.mode, "dim": op.dim,
        "parameters_total": op.full_dim, "examples": op.examples, "skipped_parameters": op.skipped,
        "settings": asdict(settings),
    }
    timings = {}
    if settings.top_k:
        t = time.perf_counter()
        eig = top_eigenvalues(matvec, op.dim, settings.top_k, settings.eig_steps, settings.eig_tol, gen, dtype, device)
        timings["top_eigenvalues"] = time.perf_counter() - t
        result["top_eigenvalues"] = eig.values.tolist()
        result["residuals"] = eig.residuals.tolist()
        result["eig_lanczos_steps"] = eig.steps
    if settings.trace:
        t = time.perf_counter()
        tr = hutchinson_trace(matvec, op.dim, settings.probes, 16, gen, dtype, device)
        timings["trace"] = time.perf_counter() - t
        result["trace"] = {"mean": tr.mean, "std_error": tr.std_error, "probes": tr.probes}
    if settings.density:
        t = time.perf_counter()
        quad = slq(matvec, op.dim, settings.slq_probes, settings.lanczos_steps, gen, dtype, device)
        grid, dens = gaussian_density(quad)
        timings["density"] = time.perf_counter() - t
        result["density"] = {"grid": grid.tolist(), "density": dens.tolist(), "nodes": quad.nodes.tolist(),
                             "weights": quad.weights.tolist(), "lanczos_steps": quad.steps,
                             "normalisation": f"integrates to 1 over the eigenvalues of the {op.dim}-dim operator"}
    bar.close()
    result.update({"hessian_vector_products": op.products, "quadratic_forms": op.quadratic_forms,
                   "data_passes": op.passes, "hvp_strategy": op.strategy, "timings": timings,
                   "seconds": time.perf_counter() - start})
    return result


def pyhessian_crosscheck(path: str | Path, settings: Settings, data_dir: Optional[str] = None,
                         dataset: Optional[str] = None) -> dict:
    """PyHessian 0.1's own top eigenvalue and trace on the same model and data (full space)."""
    from pyhessian import hessian as PyHessian

    path = Path(path)
    ckpt = read_checkpoint(path)
    device = resolve_device(settings.device)
    model = model_from_checkpoint(ckpt, path)
    if masked_weights_are_zero(ckpt):
        apply_mask(model, ckpt["mask"])
    data = _dataset_for(ckpt, path, dataset, data_dir).to(device)
    model.to(device)
    batches = hessian_batches(data.train, settings.samples, settings.batch_size, settings.seed)
    criterion = torch.nn.CrossEntropyLoss()
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    kwargs = {"data": batches[0]} if len(batches) == 1 else {"dataloader": batches}
    engine = PyHessian(copy.deepcopy(model), criterion, cuda=device.type == "cuda", **kwargs)
    values, _ = engine.eigenvalues(top_n=1)
    samples = engine.trace()
    return {"top_eigenvalue": float(values[0]), "trace": float(np.mean(samples)), "trace_probes": len(samples),
            "seconds": time.perf_counter() - start}


def plot_densities(results: list[dict], path: Path) -> None:
    """All densities on one log-scale plot; labelled by file, level, step and weight density."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if "density" not in r:
            continue
        label = Path(r["checkpoint"]).name
        if r.get("level") is not None:
            label += f" (level {r['level']}"
            if r.get("weight_density") is not None:
                label += f", {100 * r['weight_density']:.1f}% weights"
            label += f", epoch {r['epoch']:.2f})" if r.get("epoch") is not None else ")"
        ax.plot(r["density"]["grid"], np.maximum(r["density"]["density"], 1e-12), label=label)
    ax.set(yscale="log", ylim=(1e-6, None), xlabel="eigenvalue", ylabel="density (log scale)",
           title=f"Hessian eigenvalue density ({results[0]['space']} space, {results[0]['mode']} mode)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=130)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.hessian",
        description="Top eigenvalues, trace and spectral density of the loss Hessian of one or more checkpoints, "
                    "over the checkpoint's own training data. With no flags all three are computed.",
        epilog="examples:\n"
               "  python -m analysis.hessian runs/imp-*/level_3/rewind.pt\n"
               "  python -m analysis.hessian runs/imp-*/level_*/final.pt --density --out fig2   # overlaid densities\n"
               "  python -m analysis.hessian ckpt.pt --space ticket --samples 2000 --top-k 10\n"
               "  python -m analysis.hessian ckpt.pt --backend pyhessian    # cross-check with PyHessian 0.1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint files written by `python -m training`")
    d = Settings()
    p.add_argument("--top-k", type=int, default=None, help=f"number of top eigenvalues (default {d.top_k})")
    p.add_argument("--trace", action="store_true", help="compute the trace (with --top-k/--density: only those asked)")
    p.add_argument("--density", action="store_true", help="compute the spectral density")
    p.add_argument("--space", default=d.space, choices=["full", "ticket"],
                   help="full: all parameters; ticket: only the unpruned coordinates (P H P)")
    p.add_argument("--samples", type=int, help="use N training examples (seeded choice) instead of all")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per batch (default {d.batch_size})")
    p.add_argument("--probes", type=int, default=d.probes, help=f"Rademacher probes for the trace (default {d.probes})")
    p.add_argument("--slq-probes", type=int, default=d.slq_probes,
                   help=f"probes for the density, each a Lanczos run; all advance together, sharing each "
                        f"batch's cached forward pass (default {d.slq_probes})")
    p.add_argument("--lanczos-steps", type=int, default=d.lanczos_steps,
                   help=f"Lanczos steps per density probe (default {d.lanczos_steps})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for probes and --samples (default 0)")
    p.add_argument("--mode", default=d.mode, choices=["eval", "train"],
                   help="eval: batch norm running statistics, no dropout (default); train: batch statistics")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"], help="arithmetic (default float32)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    p.add_argument("--hvp", default=d.strategy, choices=["auto", "rop", "loop", "batched"],
                   help="how Hessian-vector products are computed: rop (R-operator with cached forward "
                        "passes), loop or batched (autograd double backward); auto picks rop where the "
                        "model allows (default auto)")
    p.add_argument("--dataset", help="dataset to use when a checkpoint does not name one")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--backend", default="ours", choices=["ours", "pyhessian"],
                   help="pyhessian: also run PyHessian 0.1's top eigenvalue and trace, for cross-checking")
    p.add_argument("--out", default="hessian-out", help="folder for hessian.json and the plot (default hessian-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    chosen = args.top_k is not None or args.trace or args.density
    settings = Settings(
        top_k=(args.top_k if args.top_k is not None else (0 if chosen else Settings.top_k)),
        trace=args.trace or not chosen, density=args.density or not chosen, space=args.space,
        samples=args.samples, batch_size=args.batch_size, probes=args.probes, slq_probes=args.slq_probes,
        lanczos_steps=args.lanczos_steps,
        seed=args.seed, mode=args.mode, device=args.device, dtype=args.dtype, strategy=args.hvp)
    out = Path(args.out)
    tune_allocator()
    try:
        settings.check()
        results = []
        for path in args.checkpoints:
            r = analyze(path, settings, args.data_dir, args.dataset, progress=not args.no_progress)
            if args.backend == "pyhessian":
                r["pyhessian"] = pyhessian_crosscheck(path, settings, args.data_dir, args.dataset)
            results.append(r)
            _print_summary(r)
        atomic_write_text(out / "hessian.json", json.dumps({"results": results}, indent=1) + "\n")
        written = [out / "hessian.json"]
        if settings.density:
            plot_densities(results, out / "hessian_density.png")
            written.append(out / "hessian_density.png")
        print("wrote " + " and ".join(str(p) for p in written))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_summary(r: dict) -> None:
    print(f"{r['checkpoint']}: {r['model']} on {r['dataset']}, {r['space']} space ({r['dim']:,} dims), "
          f"{r['mode']} mode, {r['examples']:,} examples")
    if r["skipped_parameters"]:
        print(f"  skipped (no gradient): {', '.join(r['skipped_parameters'])}")
    if "top_eigenvalues" in r:
        pairs = ", ".join(f"{v:.4g} (res {e:.1e})" for v, e in zip(r["top_eigenvalues"], r["residuals"]))
        print(f"  top eigenvalues: {pairs}")
    if "trace" in r:
        print(f"  trace: {r['trace']['mean']:.4g} +- {r['trace']['std_error']:.2g} ({r['trace']['probes']} probes)")
    if "pyhessian" in r:
        ph = r["pyhessian"]
        print(f"  PyHessian 0.1: top eigenvalue {ph['top_eigenvalue']:.4g}, trace {ph['trace']:.4g} "
              f"({ph['trace_probes']} probes), {ph['seconds']:.1f} s")
    print(f"  {r['hessian_vector_products']} Hessian-vector products and {r['quadratic_forms']} quadratic forms "
          f"({r['hvp_strategy']}) in {r['data_passes']} passes, {r['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
