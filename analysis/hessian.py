"""Hessian spectra of checkpoints: ``python -m analysis.hessian ckpt.pt [more.pt ...]``.

For each checkpoint: the top eigenvalues (Lanczos, with measured residuals; values Lanczos did not
converge to are reported apart, never as top eigenvalues), the trace (Hutchinson, with its
standard error) and the spectral density (stochastic Lanczos quadrature), of the exact Hessian of
the mean training loss, in the full parameter space or the ticket's subspace. Writes
``hessian.json`` (every number and setting) and, with a density, ``hessian_density.png`` (log
scale, all checkpoints overlaid, like Fig. 2 of Tartaglione 2022, "The rise of the lottery
heroes"). Files of an earlier call that this call did not produce are removed from ``--out``.

``analyze(path, settings)`` is the same computation for scripts and figures.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from training.checkpoint import (
    atomic_write_text,
    masked_weights_are_zero,
    model_from_checkpoint,
    read_checkpoint,
)
from training.cli import ArgumentParser, add_threads_flag, check_threads, run_command, set_threads, writable_dir
from training.data import Dataset, Split, check_dataset_name, load_dataset
from training.errors import UserError
from training.hparams import DatasetHparams
from training.masks import apply_mask
from training.provenance import provenance
from training.runs import resolve_device
from training.seeding import generator

from .figure_io import checkpoint_label, line_style, pyplot, save_png, unique_labels
from .hvp import HessianOperator, active_dropout, tune_allocator
from .lanczos import gaussian_density, hutchinson_trace, slq, top_eigenvalues

JSON_NAME, DENSITY_NAME = "hessian.json", "hessian_density.png"
OUTPUTS = (JSON_NAME, DENSITY_NAME)  # every file a call may write to --out


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
    allow_dropout: bool = False  # accept --mode train with active dropout (a random operator)

    def check(self) -> None:
        """Raise ``UserError`` (one line, naming the flag) for settings that cannot be run."""
        for name in ("probes", "slq_probes", "lanczos_steps", "eig_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be at least 0, got {self.top_k}")
        if not (self.top_k or self.trace or self.density):
            raise UserError("--top-k 0 asks for nothing; add --trace or --density, or ask for at least 1 eigenvalue")
        if not 0 < self.eig_tol < 1:
            raise UserError(f"--eig-tol must be between 0 and 1, got {self.eig_tol}")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples must be at least 1, got {self.samples}")
        if self.space not in ("full", "ticket"):
            raise UserError(f"unknown --space {self.space!r}; choose full or ticket")
        if self.mode not in ("eval", "train"):
            raise UserError(f"unknown --mode {self.mode!r}; choose eval or train")
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


def estimator_generators(seed: int) -> dict[str, torch.Generator]:
    """One random generator per estimator, each derived from ``seed`` and its own name, so that
    an estimate does not depend on which other estimators ran before it."""
    return {name: generator(seed, f"hessian-{name}") for name in ("lanczos", "trace", "slq")}


def _dataset_hparams(ckpt: dict, path: Path, dataset: Optional[str]) -> DatasetHparams:
    description = ckpt.get("dataset") or {}
    if dataset is not None:
        check_dataset_name(dataset)
        return DatasetHparams(dataset=dataset)
    if description.get("name"):
        known = set(DatasetHparams.__dataclass_fields__)
        hp = DatasetHparams(**{k: v for k, v in description.get("hparams", {}).items() if k in known})
        hp.dataset = description["name"]
        return hp
    raise UserError(f"{path} does not say which dataset it was trained on; pass --dataset NAME")


def _dataset_for(ckpt: dict, path: Path, dataset: Optional[str], data_dir: Optional[str]) -> Dataset:
    return load_dataset(_dataset_hparams(ckpt, path, dataset), data_dir)


def _too_many(path: Path, settings: Settings, dim: int) -> Optional[str]:
    if settings.top_k > dim:
        return (f"--top-k {settings.top_k} is more than the {dim:,} dimensions of the Hessian of {path} "
                f"({settings.space} space); ask for at most {dim:,}")
    return None


def _load(path: Path, settings: Settings, dataset: Optional[str]) -> tuple[dict, nn.Module]:
    """Read and check one checkpoint without touching its data; returns (checkpoint, model at
    W * M). Raises ``UserError`` for anything the analysis would refuse later, so that ``main``
    can check every checkpoint before the first computation starts."""
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    mask = ckpt.get("mask")
    if masked_weights_are_zero(ckpt):
        apply_mask(model, mask)  # the masked point W * M, where Tartaglione 2022 takes its spectra
    _dataset_hparams(ckpt, path, dataset)
    if settings.space == "ticket" and (mask is None or all(bool(m.all()) for m in mask.values())):
        raise UserError(f"--space ticket needs a pruned checkpoint; {path} is dense (no pruned weights)")
    dropout = active_dropout(model)
    if settings.mode == "train" and dropout and not settings.allow_dropout:
        raise UserError(f"--mode train with active dropout in {path} ({', '.join(dropout)}) makes the Hessian "
                        "random and not symmetric; use --mode eval, or --allow-dropout to accept that")
    # an upper bound on the operator's dimension (parameters the loss does not reach drop out later)
    params = dict(model.named_parameters())
    bound = sum(p.numel() for p in params.values() if p.requires_grad)
    if settings.space == "ticket":
        bound -= sum(int((~m.bool()).sum()) for n, m in mask.items() if n in params and params[n].requires_grad)
    problem = _too_many(path, settings, bound)
    if problem:
        raise UserError(problem)
    if settings.top_k > settings.eig_steps:  # k Ritz values need k Lanczos steps
        raise UserError(f"--top-k {settings.top_k} needs at least {settings.top_k} Lanczos steps; "
                        f"raise --eig-steps (now {settings.eig_steps})")
    return ckpt, model


def analyze(path: str | Path, settings: Settings = Settings(), data_dir: Optional[str] = None,
            dataset: Optional[str] = None, progress: bool = False) -> dict:
    """Compute what ``settings`` asks for on one checkpoint; returns a JSON-ready dict.

    ``top_eigenvalues`` (with ``residuals``) holds only the values Lanczos converged to, from the
    top without a gap; all the Ritz values asked for are in ``ritz_values``, ``ritz_residuals`` and
    ``converged``. ``warnings`` lists what the reader must know (non-converged values, a random
    operator). Eigenvalues and the trace are in loss units (nats) per squared parameter unit; the
    density integrates to 1 over the eigenvalue axis.
    """
    settings.check()
    path = Path(path)
    start = time.perf_counter()
    ckpt, model = _load(path, settings, dataset)
    device = resolve_device(settings.device)
    mask = ckpt.get("mask")
    data = _dataset_for(ckpt, path, dataset, data_dir).to(device)
    model.to(device)
    batches = hessian_batches(data.train, settings.samples, settings.batch_size, settings.seed)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    mask_on_device = None if mask is None else {k: v.to(device) for k, v in mask.items()}
    op = HessianOperator(model, batches, settings.space, mask_on_device, settings.mode, dtype, settings.strategy,
                         allow_dropout=settings.allow_dropout)
    problem = _too_many(path, settings, op.dim)
    if problem:
        raise UserError(problem + (f" (skipped, no gradient: {', '.join(op.skipped)})" if op.skipped else ""))
    notes = []
    if not op.deterministic:
        notes.append(f"{path}: the operator is random (dropout in train mode): two products of one vector differ "
                     f"by {op.determinism_error:.1e} (relative); every number below is a noisy estimate")

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

    gens = estimator_generators(settings.seed)
    result: dict = {
        "checkpoint": str(path), "label": checkpoint_label(path, ckpt), "model": ckpt["model"]["name"],
        "dataset": data.name, "level": ckpt["meta"].get("level"), "kind": ckpt["meta"].get("kind"),
        "weight_density": ckpt["meta"].get("density"), "iteration": ckpt["step"].get("iteration"),
        "epoch": ckpt["step"].get("epoch"), "space": settings.space, "mode": settings.mode, "dim": op.dim,
        "parameters_total": op.full_dim, "examples": op.examples, "skipped_parameters": op.skipped,
        "deterministic": op.deterministic, "determinism_error": op.determinism_error,
        "settings": asdict(settings),
    }
    timings = {}
    if settings.top_k:
        t = time.perf_counter()
        eig = top_eigenvalues(matvec, op.dim, settings.top_k, settings.eig_steps, settings.eig_tol,
                              gens["lanczos"], dtype, device)
        timings["top_eigenvalues"] = time.perf_counter() - t
        top = eig.converged_prefix
        result["top_eigenvalues"] = eig.values[:top].tolist()
        result["residuals"] = eig.residuals[:top].tolist()
        result["ritz_values"] = eig.values.tolist()
        result["ritz_residuals"] = eig.residuals.tolist()
        result["converged"] = eig.converged.tolist()
        result["eig_lanczos_steps"] = eig.steps
        if top < settings.top_k:
            notes.append(f"{path}: Lanczos converged to only the top {top} of the {settings.top_k} eigenvalues asked "
                         f"in {eig.steps} steps; the other Ritz values are marked not converged (raise --eig-steps)")
    if settings.trace:
        t = time.perf_counter()
        tr = hutchinson_trace(matvec, op.dim, settings.probes, 16, gens["trace"], dtype, device)
        timings["trace"] = time.perf_counter() - t
        result["trace"] = {"mean": tr.mean, "std_error": tr.std_error, "probes": tr.probes}
    if settings.density:
        t = time.perf_counter()
        quad = slq(matvec, op.dim, settings.slq_probes, settings.lanczos_steps, gens["slq"], dtype, device)
        grid, dens = gaussian_density(quad)
        timings["density"] = time.perf_counter() - t
        result["density"] = {"grid": grid.tolist(), "density": dens.tolist(), "nodes": quad.nodes.tolist(),
                             "weights": quad.weights.tolist(), "lanczos_steps": quad.steps,
                             "normalisation": f"integrates to 1 over the eigenvalues of the {op.dim}-dim operator"}
    bar.close()
    result.update({"hessian_vector_products": op.products, "quadratic_forms": op.quadratic_forms,
                   "data_passes": op.passes, "hvp_strategy": op.strategy, "timings": timings,
                   "seconds": time.perf_counter() - start, "warnings": notes})
    return result


# third-party warnings that say nothing about the user's analysis
THIRD_PARTY_NOISE = (
    r"Using backward\(\) with create_graph=True",  # PyHessian 0.1 calls backward(create_graph=True)
)


def pyhessian_crosscheck(path: str | Path, settings: Settings, data_dir: Optional[str] = None,
                         dataset: Optional[str] = None) -> dict:
    """PyHessian 0.1's own top eigenvalue and trace on the same model and data (full space).
    PyHessian's internal warnings (its ``backward(create_graph=True)``) are silenced."""
    with warnings.catch_warnings():
        for message in THIRD_PARTY_NOISE:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
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
    """All densities on one log-scale plot, one series per checkpoint, labelled by run, level, kind
    and weight density (``checkpoint_label``; repeats made unique), each with its own colour and
    dash pattern; a dotted line marks eigenvalue 0."""
    plt = pyplot()

    with_density = [r for r in results if "density" in r]
    labels = unique_labels([r.get("label") or Path(r["checkpoint"]).name for r in with_density])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (r, label) in enumerate(zip(with_density, labels)):
        ax.plot(r["density"]["grid"], np.maximum(r["density"]["density"], 1e-12), label=label, linewidth=1.2,
                **line_style(i))
    ax.axvline(0.0, color="0.5", linestyle=":", linewidth=0.8, label="eigenvalue 0")
    spaces = sorted({r["space"] for r in with_density})
    modes = sorted({r["mode"] for r in with_density})
    ax.set(yscale="log", ylim=(1e-6, None),
           xlabel="Hessian eigenvalue λ (nats per squared parameter unit)",
           ylabel="spectral density (per unit λ, log scale)",
           title=f"Hessian eigenvalue density of the mean training loss "
                 f"({'/'.join(spaces)} space, {'/'.join(modes)} mode)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              title="checkpoint (run L<level> kind weights)", title_fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=130)


def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m analysis.hessian",
        description="Top eigenvalues, trace and spectral density of the loss Hessian of one or more checkpoints, "
                    "over the checkpoint's own training data. With no flags all three are computed.",
        epilog="examples:\n"
               "  RUN=$(ls -td runs/imp-* | head -1)       # the latest IMP run\n"
               "  python -m analysis.hessian $RUN/level_3/rewind.pt\n"
               "  python -m analysis.hessian $RUN/level_*/final.pt --density --out fig2   # overlaid densities,\n"
               "      as in Fig. 2 of Tartaglione 2022, \"The rise of the lottery heroes\"\n"
               "  python -m analysis.hessian $RUN/level_4/final.pt --space ticket --samples 2000 --top-k 10\n"
               "  python -m analysis.hessian $RUN/level_4/final.pt --backend pyhessian   # cross-check with PyHessian 0.1\n"
               "\n"
               "Eigenvalues Lanczos did not converge to within --eig-steps are printed and stored apart\n"
               "(ritz_values, converged in hessian.json), never as top eigenvalues, with a warning.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint files written by `python -m training`")
    d = Settings()
    p.add_argument("--top-k", type=int, default=None,
                   help=f"number of top eigenvalues, at most the Hessian's dimension (default {d.top_k})")
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
    p.add_argument("--eig-steps", type=int, default=d.eig_steps,
                   help=f"most Lanczos steps for the top eigenvalues, at least --top-k (default {d.eig_steps})")
    p.add_argument("--eig-tol", type=float, default=d.eig_tol,
                   help=f"relative residual at which a top eigenvalue counts as converged (default {d.eig_tol:g})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed for --samples and the probes; each estimator draws from its own stream, so a "
                        "result does not depend on which others were asked (default 0)")
    p.add_argument("--mode", default=d.mode, choices=["eval", "train"],
                   help="eval: batch norm running statistics, no dropout (default); train: batch statistics "
                        "(refused with active dropout unless --allow-dropout)")
    p.add_argument("--allow-dropout", action="store_true",
                   help="accept --mode train on a model with dropout: each product then draws new dropout "
                        "masks, so the operator is random and not symmetric (a warning says so)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "float64"], help="arithmetic (default float32)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default auto)")
    p.add_argument("--hvp", default=d.strategy, choices=["auto", "rop", "loop", "batched"],
                   help="how Hessian-vector products are computed: rop (R-operator with cached forward "
                        "passes), loop or batched (autograd double backward); auto picks rop on CPU where the "
                        "model allows, batched on CUDA (rop has not been measured on a GPU) (default auto)")
    p.add_argument("--dataset", help="dataset to use when a checkpoint does not name one")
    p.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    p.add_argument("--backend", default="ours", choices=["ours", "pyhessian"],
                   help="pyhessian: also run PyHessian 0.1's top eigenvalue and trace, for cross-checking")
    p.add_argument("--out", default="hessian-out",
                   help=f"folder for {JSON_NAME} and {DENSITY_NAME}; files of an earlier call that this call "
                        f"does not write are removed (default hessian-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_flag(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    check_threads(args.threads)
    chosen = args.top_k is not None or args.trace or args.density
    settings = Settings(
        top_k=(args.top_k if args.top_k is not None else (0 if chosen else Settings.top_k)),
        trace=args.trace or not chosen, density=args.density or not chosen, space=args.space,
        samples=args.samples, batch_size=args.batch_size, probes=args.probes, slq_probes=args.slq_probes,
        lanczos_steps=args.lanczos_steps, eig_steps=args.eig_steps, eig_tol=args.eig_tol, seed=args.seed, mode=args.mode,
        device=args.device, dtype=args.dtype, strategy=args.hvp, allow_dropout=args.allow_dropout)
    settings.check()
    out = writable_dir(args.out)
    for path in args.checkpoints:  # every checkpoint checked before the first computation
        _load(Path(path), settings, args.dataset)
    tune_allocator()
    threads = set_threads(args.threads)
    results = []
    for path in args.checkpoints:
        r = analyze(path, settings, args.data_dir, args.dataset, progress=not args.no_progress)
        if args.backend == "pyhessian":
            r["pyhessian"] = pyhessian_crosscheck(path, settings, args.data_dir, args.dataset)
        results.append(r)
        _print_summary(r)
    record = {"results": results, "provenance": {**provenance(), "threads": threads}}
    atomic_write_text(out / JSON_NAME, json.dumps(record, indent=1) + "\n")
    written = [out / JSON_NAME]
    if settings.density:
        plot_densities(results, out / DENSITY_NAME)
        written.append(out / DENSITY_NAME)
    print("wrote " + " and ".join(str(p) for p in written))
    for name in OUTPUTS:
        stale = out / name
        if stale not in written and stale.exists():
            stale.unlink()
            print(f"removed {stale} (an earlier call's; this call did not produce it)")


def _print_summary(r: dict) -> None:
    print(f"{r['checkpoint']}: {r['model']} on {r['dataset']}, {r['space']} space ({r['dim']:,} dims), "
          f"{r['mode']} mode, {r['examples']:,} examples")
    if r["skipped_parameters"]:
        print(f"  skipped (no gradient): {', '.join(r['skipped_parameters'])}")
    if "ritz_values" in r:
        asked, top = len(r["ritz_values"]), len(r["top_eigenvalues"])
        pairs = [f"{v:.4g} (res {e:.1e})" for v, e in zip(r["top_eigenvalues"], r["residuals"])]
        if pairs:
            print(f"  top eigenvalues: {', '.join(pairs)}")
        rest = [f"{v:.4g} (res {e:.1e}{'' if ok else ', NOT converged'})"
                for v, e, ok in zip(r["ritz_values"][top:], r["ritz_residuals"][top:], r["converged"][top:])]
        if rest:
            print(f"  further Ritz values ({asked - top} of the {asked} asked; not top eigenvalues): {', '.join(rest)}")
    if "trace" in r:
        print(f"  trace: {r['trace']['mean']:.4g} +- {r['trace']['std_error']:.2g} ({r['trace']['probes']} probes)")
    if "pyhessian" in r:
        ph = r["pyhessian"]
        print(f"  PyHessian 0.1: top eigenvalue {ph['top_eigenvalue']:.4g}, trace {ph['trace']:.4g} "
              f"({ph['trace_probes']} probes), {ph['seconds']:.1f} s")
    print(f"  {r['hessian_vector_products']} Hessian-vector products and {r['quadratic_forms']} quadratic forms "
          f"({r['hvp_strategy']}) in {r['data_passes']} passes, {r['seconds']:.1f} s")
    for note in r.get("warnings", []):
        print(f"warning: {note}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
