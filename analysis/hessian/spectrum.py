"""Hessian spectra of one checkpoint: ``analyze(path, settings)``, and the overlaid density plot.

For each checkpoint: the top eigenvalues (Lanczos, with measured residuals; values Lanczos did not
converge to are reported apart, never as top eigenvalues), the trace (Hutchinson, with its
standard error) and the spectral density (stochastic Lanczos quadrature), of the exact Hessian of
the mean training loss, in the full parameter space or the ticket's subspace.
``plot_densities`` draws the densities of many checkpoints on one log-scale plot, like Fig. 2 of
Tartaglione 2022, "The rise of the lottery heroes". ``pyhessian_crosscheck`` runs PyHessian 0.1 on
the same model and data. The command line (``python -m analysis.hessian``) is in ``cli.py``.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from training.engine.checkpoint import masked_weights_are_zero, model_from_checkpoint, read_checkpoint
from training.data import Dataset, Split, check_dataset_name, load_dataset
from training.errors import UserError
from training.hparams import DatasetHparams
from training.sparsity.masks import apply_mask
from training.engine.runs import resolve_device
from training.engine.seeding import generator

from ..figure_io import checkpoint_label, line_style, pyplot, save_png, unique_labels
from .linalg import gaussian_density, hutchinson_trace, slq, top_eigenvalues
from .operator import HessianOperator, active_dropout


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
    strategy: str = "auto"  # Hessian-vector products: auto, rop, loop or batched (analysis.hessian.operator)
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


def load_checked(path: Path, settings: Settings, dataset: Optional[str]) -> tuple[dict, nn.Module]:
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
    ckpt, model = load_checked(path, settings, dataset)
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
