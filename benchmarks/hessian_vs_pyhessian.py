"""PyHessian 0.1 against ``analysis`` on the same checkpoint and data, in one process.

Full-data mode (several batches): the top eigenvalue to the same tolerance, the trace with the
same number of probes, and the density with the same Lanczos steps and probes. PyHessian's
``density()`` calls ``torch.eig``, removed from torch; for this comparison only it is given
``torch.linalg.eigh`` in the old return format. Also prints the cost of one Hessian-vector product
relative to one gradient on a single batch. Targets: >= 3x on the density and the trace; an HVP
at most 2.5 gradients.

    python benchmarks/hessian_vs_pyhessian.py                 # trains a small MNIST-1D CNN first
    python benchmarks/hessian_vs_pyhessian.py runs/imp-*/level_2/final.pt --samples 2000
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from analysis.hessian import hessian_batches
from analysis.hvp import HessianOperator
from analysis.lanczos import hutchinson_trace, slq, top_eigenvalues
from training.checkpoint import load
from training.runs import resolve_device


def _eig_compat(T, eigenvectors=True):
    values, vectors = torch.linalg.eigh(T)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def _checkpoint(path: str | None) -> str:
    if path:
        return path
    from training.hparams import Config, DatasetHparams, ModelHparams, TrainingHparams
    from training.imp import run_train

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint (default: train a small one)")
    parser.add_argument("--samples", type=int, default=2000, help="training examples used (default 2000)")
    parser.add_argument("--batch-size", type=int, default=250, help="batch size: several batches (default 250)")
    parser.add_argument("--probes", type=int, default=16, help="trace probes (default 16)")
    parser.add_argument("--slq-probes", type=int, default=2, help="density probes (default 2)")
    parser.add_argument("--steps", type=int, default=30, help="Lanczos steps for the density (default 30)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the operator then batches probes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pyhessian import hessian as PyHessian

    device = resolve_device(args.device)
    loaded = load(_checkpoint(args.checkpoint), device)
    model, data = loaded.model, loaded.dataset
    batches = hessian_batches(data.train, args.samples, args.batch_size, 0)
    criterion = torch.nn.CrossEntropyLoss()
    op = HessianOperator(model, batches)
    print(f"{loaded.checkpoint['model']['name']}: {op.dim:,} parameters, {op.examples} examples in {len(batches)} "
          f"batches, device {device}, HVP strategy {op.strategy}")

    torch.manual_seed(0)
    engine = PyHessian(copy.deepcopy(model), criterion, dataloader=batches, cuda=device.type == "cuda")
    (py_top, _), py_top_s = timed(lambda: engine.eigenvalues(top_n=1, tol=1e-3))
    ours_top, ours_top_s = timed(lambda: top_eigenvalues(op, op.dim, k=1, max_steps=100, tol=1e-3, device=device))
    print(f"top eigenvalue  PyHessian {py_top[0]:.5g} in {py_top_s:.2f} s | ours {ours_top.values[0]:.5g} "
          f"(residual {ours_top.residuals[0]:.1e}) in {ours_top_s:.2f} s | ratio {py_top_s / ours_top_s:.1f}x")

    py_trace, py_trace_s = timed(lambda: engine.trace(maxIter=args.probes, tol=0.0))
    ours_trace, ours_trace_s = timed(lambda: hutchinson_trace(op, op.dim, args.probes,
                                                              generator=torch.Generator().manual_seed(0),
                                                              device=device))
    print(f"trace ({args.probes} probes)  PyHessian {np.mean(py_trace):.5g} in {py_trace_s:.2f} s | ours "
          f"{ours_trace.mean:.5g} +- {ours_trace.std_error:.2g} in {ours_trace_s:.2f} s | "
          f"ratio {py_trace_s / ours_trace_s:.1f}x (target >= 3x)")

    original = getattr(torch, "eig", None)
    torch.eig = _eig_compat
    try:
        _, py_density_s = timed(lambda: engine.density(iter=args.steps, n_v=args.slq_probes))
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original
    _, ours_density_s = timed(lambda: slq(op, op.dim, args.slq_probes, args.steps,
                                          generator=torch.Generator().manual_seed(0), device=device))
    print(f"density ({args.slq_probes} probes x {args.steps} steps)  PyHessian {py_density_s:.2f} s | ours "
          f"{ours_density_s:.2f} s | ratio {py_density_s / ours_density_s:.1f}x (target >= 3x)")

    x, y = batches[0]
    params = [p for p in op.model.parameters() if p.requires_grad]
    single = HessianOperator(model, [(x, y)])
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
    print(f"one batch of {len(y)}: gradient {1e3 * grad_s / reps:.2f} ms, HVP {1e3 * hvp_s / reps:.2f} ms "
          f"= {hvp_s / grad_s:.2f} gradients (target <= 2.5); with 8 vectors per pass "
          f"{hvp8_s / grad_s / 8:.2f} gradients per HVP")


if __name__ == "__main__":
    main()
