"""PyHessian 0.1 against ``analysis`` on the same checkpoint and data, in one process.

Full-data mode (several batches): the top eigenvalue to the same tolerance, the trace with the
same number of probes, and the density with the same Lanczos steps and probes. PyHessian's
``density()`` calls ``torch.eig``, removed from torch; for this comparison only it is given
``torch.linalg.eigh`` in the old return format. Also prints the cost of one Hessian-vector product
relative to one gradient on a single batch. Targets: >= 3x on the density and the trace; an HVP
at most 2.5 gradients. Each comparison runs ``--repeats`` times, interleaved, and medians are
printed (the machines are shared and noisy). Our operator caches each batch's forward and
backward pass on first use; that first pass is run once before the timings, and the cost of a
first HVP on a fresh batch is printed separately.

    python benchmarks/hessian_vs_pyhessian.py                 # trains a small MNIST-1D CNN first
    python benchmarks/hessian_vs_pyhessian.py runs/imp-*/level_2/final.pt --samples 2000
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from analysis.hessian import (
    THIRD_PARTY_NOISE,
    HessianOperator,
    hessian_batches,
    hutchinson_trace,
    slq,
    top_eigenvalues,
    tune_allocator,
)
from training.engine.checkpoint import load
from training.engine.runs import resolve_device


def _eig_compat(T, eigenvectors=True):
    values, vectors = torch.linalg.eigh(T)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def _checkpoint(path: str | None) -> str:
    if path:
        return path
    from training.hparams import Config, DatasetHparams, ModelHparams, TrainingHparams
    from training.algorithms.imp import run_train

    out = tempfile.mkdtemp()
    cfg = Config(DatasetHparams(), ModelHparams("mnist1d_cnn"), TrainingHparams(train_for="5ep"))
    run = run_train(cfg, out=out, progress=False)
    return str(run.dir / "level_0" / "final.pt")


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def compare(theirs, ours, repeats: int):
    """Run both ``repeats`` times, interleaved; return their last values and median seconds."""
    their_t, our_t = [], []
    for _ in range(repeats):
        their_value, t = timed(theirs)
        their_t.append(t)
        our_value, t = timed(ours)
        our_t.append(t)
    return their_value, float(np.median(their_t)), our_value, float(np.median(our_t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint (default: train a small one)")
    parser.add_argument("--samples", type=int, default=2000, help="training examples used (default 2000)")
    parser.add_argument("--batch-size", type=int, default=250, help="batch size: several batches (default 250)")
    parser.add_argument("--probes", type=int, default=16, help="trace probes (default 16)")
    parser.add_argument("--slq-probes", type=int, default=2, help="density probes (default 2)")
    parser.add_argument("--steps", type=int, default=30, help="Lanczos steps for the density (default 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; medians are printed (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--strategy", default="auto", choices=["auto", "rop", "loop", "batched"],
                        help="our Hessian-vector product (default auto: the R-operator on CPU where the model "
                             "allows, autograd on CUDA; see analysis.hessian.choose_strategy)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc thresholds alone (by default both sides run tuned)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = False if args.default_allocator else tune_allocator()
    for message in THIRD_PARTY_NOISE:  # PyHessian's own create_graph warning
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    from pyhessian import hessian as PyHessian

    device = resolve_device(args.device)
    loaded = load(_checkpoint(args.checkpoint), device)
    model, data = loaded.model, loaded.dataset
    batches = hessian_batches(data.train, args.samples, args.batch_size, 0)
    criterion = torch.nn.CrossEntropyLoss()
    op = HessianOperator(model, batches, strategy=args.strategy)
    print(f"{loaded.checkpoint['model']['name']}: {op.dim:,} parameters, {op.examples} examples in {len(batches)} "
          f"batches, device {device}, HVP strategy {op.strategy}, allocator {'tuned' if tuned else 'default'}")

    torch.manual_seed(0)
    engine = PyHessian(copy.deepcopy(model), criterion, dataloader=batches, cuda=device.type == "cuda")
    op(torch.zeros(1, op.dim, device=device))  # our forward passes are cached on first use: count that once
    (py_top, _), py_top_s, ours_top, ours_top_s = compare(
        lambda: engine.eigenvalues(top_n=1, tol=1e-3),
        lambda: top_eigenvalues(op, op.dim, k=1, max_steps=100, tol=1e-3, device=device), args.repeats)
    print(f"top eigenvalue  PyHessian {py_top[0]:.5g} in {py_top_s:.2f} s | ours {ours_top.values[0]:.5g} "
          f"(residual {ours_top.residuals[0]:.1e}) in {ours_top_s:.2f} s | ratio {py_top_s / ours_top_s:.1f}x")

    py_trace, py_trace_s, ours_trace, ours_trace_s = compare(
        lambda: engine.trace(maxIter=args.probes, tol=0.0),
        lambda: hutchinson_trace(op, op.dim, args.probes, generator=torch.Generator().manual_seed(0), device=device),
        args.repeats)
    print(f"trace ({args.probes} probes)  PyHessian {np.mean(py_trace):.5g} in {py_trace_s:.2f} s | ours "
          f"{ours_trace.mean:.5g} +- {ours_trace.std_error:.2g} in {ours_trace_s:.2f} s | "
          f"ratio {py_trace_s / ours_trace_s:.1f}x (target >= 3x)")

    original = getattr(torch, "eig", None)
    torch.eig = _eig_compat
    try:
        _, py_density_s, _, ours_density_s = compare(
            lambda: engine.density(iter=args.steps, n_v=args.slq_probes),
            lambda: slq(op, op.dim, args.slq_probes, args.steps, generator=torch.Generator().manual_seed(0),
                        device=device), args.repeats)
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original
    print(f"density ({args.slq_probes} probes x {args.steps} steps)  PyHessian {py_density_s:.2f} s | ours "
          f"{ours_density_s:.2f} s | ratio {py_density_s / ours_density_s:.1f}x (target >= 3x)")

    x, y = batches[0]
    params = [p for p in op.model.parameters() if p.requires_grad]
    single = HessianOperator(model, [(x, y)], strategy=args.strategy)
    v = torch.randn(1, single.dim, device=device)
    v8 = torch.randn(8, single.dim, device=device)

    def gradient():
        torch.autograd.grad(F.cross_entropy(op.model(x), y), params)

    # interleaved repeats, medians: these are millisecond timings on a shared machine
    reps, rounds = 30, 7
    for fn in (gradient, lambda: single(v), lambda: single(v8)):
        fn()
    grad_t, hvp_t, hvp8_t = [], [], []
    for _ in range(rounds):
        grad_t.append(timed(lambda: [gradient() for _ in range(reps)])[1])
        hvp_t.append(timed(lambda: [single(v) for _ in range(reps)])[1])
        hvp8_t.append(timed(lambda: [single(v8) for _ in range(reps)])[1])
    grad_s, hvp_s, hvp8_s = (float(np.median(t)) for t in (grad_t, hvp_t, hvp8_t))
    uncached = HessianOperator(model, [(x, y)], strategy=args.strategy, cache_bytes=0)
    uncached(v)
    first = [timed(lambda: [uncached(v) for _ in range(reps)])[1] for _ in range(rounds)]
    print(f"one batch of {len(y)}: gradient {1e3 * grad_s / reps:.2f} ms, HVP {1e3 * hvp_s / reps:.2f} ms "
          f"= {hvp_s / grad_s:.2f} gradients (target <= 2.5); with 8 vectors per pass "
          f"{hvp8_s / grad_s / 8:.2f} gradients per HVP; with no cache (forward and backward pass redone "
          f"every call) {np.median(first) / grad_s:.2f} gradients")


if __name__ == "__main__":
    main()
