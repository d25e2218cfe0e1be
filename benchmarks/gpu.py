"""The paper-scale path on one GPU, measured (issue #15): training speed of ResNet-20 and ResNet-32 on
CIFAR-shaped data, masked against dense, fp32 against bf16, eager against ``torch.compile``; one
30-epoch IMP level at the best setting; the Hessian against PyHessian 0.1; and how far the speed
is from what the GPU's FLOPs and memory bandwidth allow.

    python benchmarks/gpu.py                       # at most about 10 minutes on one GPU
    python benchmarks/gpu.py --device cpu --quick  # a smoke test of every part, seconds on a CPU

Writes ``benchmarks/results/gpu-<device name>.json`` (``--out`` for another folder) and prints a
table; ``--quick`` writes to ``$TMPDIR/lth-gpu-benchmark/`` (default ``/tmp``) instead: a smoke test
measures nothing, so it stays out of the checkout. Without a GPU (and without ``--device cpu``) it
prints one ``error:`` line and exits 2: nothing was measured. Every training measurement runs the
toolkit's own training loop (``training.engine.loop.train``: batches and augmentation on the
device, masks enforced after every step, one evaluation per epoch) on synthetic CIFAR-shaped data
(random images, random labels: the speed does not depend on what is learnt). Images per second are
measured over the epochs after the first (compilation and cuDNN's autotuning happen in the first).
Targets (ResNet-20 on one H100): at least 25,000 training images per second, masked / dense time
per step at most 1.05, the Hessian's trace and density at least 5x faster than PyHessian's.

Parts run in order of importance, each only when the time left (``--budget-s``, default 480 s)
allows; a part skipped is recorded as such in the JSON, never silently left out.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

from training.cli import ArgumentParser, run_command, writable_dir  # noqa: E402
from training.data import Dataset, Split  # noqa: E402
from training.engine.cost import layer_macs  # noqa: E402
from training.engine.loop import apply_execution, check_execution, train  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.hparams import ExecutionHparams, TrainingHparams  # noqa: E402
from training.models import build_model  # noqa: E402
from training.sparsity.masks import prunable_names  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_FOLDER = "lth-gpu-benchmark"  # under the temporary folder: where --quick writes without --out
DENSITY = 0.10  # the masked runs keep 10 % of the prunable weights
# peak dense throughput (FLOP/s: fp32 without tensor cores, bf16 with) and memory bandwidth (B/s)
# from the vendors' data sheets, for GPUs whose properties torch does not report in full
GPU_SPECS = {
    "H200": {"fp32": 67e12, "bf16": 989e12, "bandwidth": 4.8e12},
    "H100": {"fp32": 67e12, "bf16": 989e12, "bandwidth": 3.35e12},  # SXM
    "A100": {"fp32": 19.5e12, "bf16": 312e12, "bandwidth": 2.0e12},
    "L40S": {"fp32": 91.6e12, "bf16": 362e12, "bandwidth": 0.864e12},
    "A10": {"fp32": 31.2e12, "bf16": 125e12, "bandwidth": 0.6e12},
}


class Rows:
    """What ``train`` logs, kept in memory (the ``MetricsLog`` interface it uses)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self.rows.append(dict(row))

    def keep_only(self, keep) -> None:
        self.rows = [r for r in self.rows if keep(r)]


def synthetic_cifar(train_images: int, test_images: int, device: torch.device, seed: int = 0) -> Dataset:
    """Random CIFAR-shaped images (3x32x32, normalised) and labels of 10 classes, on ``device``,
    with CIFAR's augmentation (random crop and flip) switched on as for a real CIFAR run."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(train_images + test_images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (train_images + test_images,), generator=g)
    return Dataset("synthetic-cifar", Split(x[:train_images], y[:train_images]),
                   Split(x[train_images:], y[train_images:]), None, 10, (3, 32, 32), augment=True).to(device)


def random_mask(model: nn.Module, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keep a random ``density`` of each prunable weight tensor (the cost of a mask does not
    depend on which weights it keeps)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: (torch.rand(params[n].shape, generator=g) < density).to(params[n].device) for n in prunable_names(model)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_training(model_name: str, data: Dataset, device: torch.device, execution: ExecutionHparams,
                     masked: bool, epochs: int, batch_size: int) -> dict:
    """Train ``epochs`` epochs; return images per second over the epochs after the first, the
    seconds of the first (compilation, autotuning) and the peak GPU memory in GiB."""
    apply_execution(execution, device)
    model = build_model(model_name, 10, (3, 32, 32), seed=0).to(device)
    mask = random_mask(model, DENSITY) if masked else None
    hp = TrainingHparams(lr=0.1, momentum=0.9, weight_decay=5e-5, batch_size=batch_size, train_for=f"{epochs}ep",
                         eval_every="1ep")
    rows = Rows()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    train(model, data, hp, mask=mask, log=rows, progress=False, execution=execution)
    sync(device)
    wall = time.perf_counter() - start
    ipe = -(-len(data.train) // batch_size)
    # rows: the evaluation at iteration 0, then one per epoch, each with the seconds since the start
    first, last = rows.rows[1], rows.rows[-1]
    images = (last["iteration"] - first["iteration"]) * batch_size
    seconds = last["seconds"] - first["seconds"]
    return {"images_per_second": images / seconds if seconds > 0 else math.nan,
            "step_ms": 1e3 * seconds / max(1, last["iteration"] - first["iteration"]),
            "first_epoch_s": first["seconds"], "wall_s": wall, "iterations_per_epoch": ipe,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def level_time(model_name: str, device: torch.device, execution: ExecutionHparams, epochs: int, train_images: int,
               test_images: int, batch_size: int) -> dict:
    """One IMP level as ``imp`` trains it (masked at 10 %, evaluated every epoch): wall seconds."""
    data = synthetic_cifar(train_images, test_images, device, seed=1)
    result = measure_training(model_name, data, device, execution, True, epochs, batch_size)
    return {"epochs": epochs, "train_images": train_images, "seconds": result["wall_s"],
            "images_per_second": result["images_per_second"], "execution": vars(execution)}


def flops_and_bytes(model_name: str, precision: str) -> dict:
    """Per training image of ``model_name``: FLOPs (3 x forward MACs x 2: forward, input gradient,
    weight gradient) and an estimate of the memory traffic (every activation written once
    forward and read about three times backward, in the precision's bytes)."""
    model = build_model(model_name, 10, (3, 32, 32), seed=0)
    macs = sum(layer_macs(model, (3, 32, 32)).values())
    elements = 0

    def count(module, inputs, output):
        nonlocal elements
        if isinstance(output, torch.Tensor):
            elements += output[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    width = 2 if precision in ("bf16", "fp16") else 4
    return {"train_flops": 6.0 * macs, "forward_macs": macs, "activation_elements": elements,
            "train_bytes_estimate": 4.0 * elements * width}


def gpu_limits(device: torch.device) -> dict:
    """Peak FLOP/s (fp32, bf16) and memory bandwidth of the GPU: its name matched against
    ``GPU_SPECS``; the bandwidth from torch's properties where it reports the memory's clock and bus."""
    if device.type != "cuda":
        return {"source": "none (CPU)"}
    props = torch.cuda.get_device_properties(device)
    spec = next((v for k, v in GPU_SPECS.items() if k in props.name), None)
    limits: dict[str, Any] = {"name": props.name, "sms": props.multi_processor_count,
                              "memory_gib": props.total_memory / 2**30}
    clock, bus = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if clock and bus:  # kHz and bits; HBM and GDDR transfer twice per clock
        limits["bandwidth_from_properties"] = 2 * clock * 1e3 * bus / 8
    if spec:
        limits.update(spec, source="data sheet")
    else:
        limits["source"] = "unknown GPU: no FLOP/s figure"
    return limits


def roofline(ips: float, model_name: str, precision: str, limits: dict) -> Optional[dict]:
    """Images per second the GPU's FLOPs and bandwidth allow, and the measured fraction of it."""
    flops_key = "bf16" if precision in ("bf16", "fp16") else "fp32"
    if flops_key not in limits:
        return None
    work = flops_and_bytes(model_name, precision)
    bandwidth = limits.get("bandwidth") or limits.get("bandwidth_from_properties")
    by_flops = limits[flops_key] / work["train_flops"]
    by_bytes = bandwidth / work["train_bytes_estimate"] if bandwidth else math.inf
    bound = min(by_flops, by_bytes)
    return {**work, "images_per_second_by_flops": by_flops, "images_per_second_by_bandwidth": by_bytes,
            "bound": "bandwidth" if by_bytes < by_flops else "flops", "measured_fraction_of_bound": ips / bound}


def hessian(device: torch.device, quick: bool) -> dict:
    """PyHessian 0.1 against ``analysis.hessian`` on ResNet-20 (eval mode, synthetic CIFAR-shaped
    batches): top eigenvalue, trace and density as ``benchmarks/hessian_vs_pyhessian.py`` times them."""
    from hessian_vs_pyhessian import _eig_compat, compare  # noqa: E402 (this folder)

    from analysis.hessian import THIRD_PARTY_NOISE, HessianOperator, hutchinson_trace, slq, top_eigenvalues

    for message in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    from pyhessian import hessian as PyHessian

    samples, batch, probes, slq_probes, steps, repeats, iters = ((16, 16, 2, 1, 3, 1, 3) if quick
                                                                 else (2048, 512, 16, 2, 30, 3, 100))
    model = build_model("resnet20", 10, (3, 32, 32), seed=0).to(device).eval()
    data = synthetic_cifar(samples, 0, device, seed=2)
    batches = [(data.train.x[i : i + batch], data.train.y[i : i + batch]) for i in range(0, samples, batch)]
    op = HessianOperator(model, batches)
    torch.manual_seed(0)
    engine = PyHessian(copy.deepcopy(model).eval(), nn.CrossEntropyLoss(), dataloader=batches,
                       cuda=device.type == "cuda")
    op(torch.zeros(1, op.dim, device=device))
    out: dict[str, Any] = {"model": "resnet20", "parameters": op.dim, "examples": samples, "strategy": op.strategy}
    (theirs, _), their_s, ours, our_s = compare(lambda: engine.eigenvalues(top_n=1, tol=1e-3, maxIter=iters),
                                                lambda: top_eigenvalues(op, op.dim, k=1, max_steps=iters, tol=1e-3,
                                                                        device=device), repeats)
    out["top_eigenvalue"] = {"pyhessian": theirs[0], "ours": float(ours.values[0]), "pyhessian_s": their_s,
                             "ours_s": our_s, "speedup": their_s / our_s}
    theirs, their_s, ours, our_s = compare(
        lambda: engine.trace(maxIter=probes, tol=0.0),
        lambda: hutchinson_trace(op, op.dim, probes, generator=torch.Generator().manual_seed(0), device=device),
        repeats)
    out["trace"] = {"probes": probes, "pyhessian": float(sum(theirs) / len(theirs)), "ours": float(ours.mean),
                    "pyhessian_s": their_s, "ours_s": our_s, "speedup": their_s / our_s}
    original = getattr(torch, "eig", None)
    torch.eig = _eig_compat
    try:
        _, their_s, _, our_s = compare(
            lambda: engine.density(iter=steps, n_v=slq_probes),
            lambda: slq(op, op.dim, slq_probes, steps, generator=torch.Generator().manual_seed(0), device=device),
            repeats)
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original
    out["density"] = {"probes": slq_probes, "steps": steps, "pyhessian_s": their_s, "ours_s": our_s,
                      "speedup": their_s / our_s}
    return out


def file_name(device: torch.device) -> str:
    """``gpu-<device name>.json``, the name in lower case with runs of other characters as ``-``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".json"


def default_out(quick: bool) -> Path:
    """The results folder without ``--out``: ``benchmarks/results/`` for a measurement, the temporary
    folder's ``lth-gpu-benchmark/`` for a ``--quick`` smoke test (so that it leaves the checkout clean)."""
    return Path(tempfile.gettempdir()) / QUICK_FOLDER if quick else RESULTS


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/gpu.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick: a smoke test)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and no compilation: checks every part runs")
    parser.add_argument("--out", help=f"folder of the results file (default: {RESULTS}; with --quick, "
                                      f"{Path(tempfile.gettempdir()) / QUICK_FOLDER})")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds the measurements may take; parts that no longer fit are skipped (default 480)")
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if args.device not in ("cuda", "cpu") and not args.device.startswith("cuda:"):
        raise UserError(f"--device must be cuda or cpu, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("no CUDA GPU visible: benchmarks/gpu.py measures a GPU; run it on a machine with one "
                        "(or --device cpu --quick for a smoke test of the script)")
    device = torch.device(args.device)
    out = writable_dir(default_out(args.quick) if args.out is None else args.out)
    quick = args.quick
    models = ["resnet20"] if quick else ["resnet20", "resnet32"]
    precisions = ["fp32", "bf16"]
    compiles = [False] if quick or device.type == "cpu" else [False, True]
    train_images, test_images, batch, epochs = (32, 16, 16, 2) if quick else (10_000, 1_000, 128, 3)
    for precision in precisions:
        check_execution(ExecutionHparams(precision=precision), device)
    clock = time.perf_counter()
    left = lambda: args.budget_s - (time.perf_counter() - clock)  # noqa: E731
    limits = gpu_limits(device)
    results: dict[str, Any] = {"device": limits.get("name", "cpu"), "torch": torch.__version__, "quick": quick,
                               "batch_size": batch, "density_masked": DENSITY, "limits": limits, "throughput": [],
                               "skipped": []}
    data = synthetic_cifar(train_images, test_images, device)

    def throughput(model_name: str, precision: str, compile_: bool, channels_last: bool = False) -> None:
        for masked in (False, True):
            execution = ExecutionHparams(device=device.type, precision=precision, compile=compile_,
                                         channels_last=channels_last)
            label = (f"{model_name} {'masked' if masked else 'dense'} {precision}"
                     f"{' compile' if compile_ else ''}{' channels-last' if channels_last else ''}")
            needed = 90 if compile_ else 15
            if not quick and left() < needed:
                results["skipped"].append(f"throughput {label}: out of time")
                continue
            row = measure_training(model_name, data, device, execution, masked, epochs, batch)
            row.update(model=model_name, masked=masked, precision=precision, compile=compile_,
                       channels_last=channels_last, label=label)
            results["throughput"].append(row)
            print(f"  {label:<48} {row['images_per_second']:>10,.0f} img/s  step {row['step_ms']:.2f} ms", flush=True)

    print(f"{results['device']}: training throughput (batch {batch}, masked = {DENSITY:.0%} of the weights)")
    for model_name in models:  # eager first: the core numbers
        for precision in precisions:
            throughput(model_name, precision, False)
    hessian_result = None
    if quick or left() > 120:
        hessian_result = hessian(device, quick)
        results["hessian"] = hessian_result
    else:
        results["skipped"].append("hessian: out of time")
    for model_name in models:
        for precision in precisions:
            for compile_ in compiles:
                if compile_:
                    throughput(model_name, precision, True)
        if device.type == "cuda":
            throughput(model_name, "bf16", any(compiles), channels_last=True)

    # masked / dense time per step, for each setting measured both ways
    ratios = []
    by_key: dict[tuple, dict] = {}
    for row in results["throughput"]:
        by_key[(row["model"], row["precision"], row["compile"], row["channels_last"], row["masked"])] = row
    for (m, p, c, cl, masked), row in by_key.items():
        dense = by_key.get((m, p, c, cl, False))
        if masked and dense:
            ratios.append({"setting": row["label"].replace(" masked", ""), "masked_over_dense": row["step_ms"] / dense["step_ms"]})
    results["masked_over_dense"] = ratios

    # the best setting of ResNet-20 (masked, since an IMP level after the first is masked)
    candidates = [r for r in results["throughput"] if r["model"] == "resnet20" and r["masked"]]
    best = max(candidates, key=lambda r: r["images_per_second"])
    results["best_resnet20"] = {k: best[k] for k in ("label", "images_per_second", "precision", "compile",
                                                     "channels_last")}
    results["roofline_resnet20"] = roofline(best["images_per_second"], "resnet20", best["precision"], limits)
    level_execution = ExecutionHparams(device=device.type, precision=best["precision"], compile=best["compile"],
                                       channels_last=best["channels_last"])
    level_epochs, level_images = (1, 32) if quick else (30, 50_000)
    estimate = level_epochs * level_images / best["images_per_second"] * 1.2 + (60 if best["compile"] else 10)
    if quick or left() > estimate:
        results["imp_level"] = level_time("resnet20", device, level_execution, level_epochs, level_images,
                                          16 if quick else 10_000, batch)
    else:
        seconds = level_epochs * level_images / best["images_per_second"]
        results["imp_level"] = {"epochs": level_epochs, "train_images": level_images, "seconds": seconds,
                                "extrapolated": True, "execution": vars(level_execution)}
        results["skipped"].append("imp level: out of time, extrapolated from the measured throughput")
    results["targets"] = {
        "resnet20_images_per_second": {"target": 25_000, "measured": best["images_per_second"]},
        "level_under_60_s": {"target": 60, "measured": results["imp_level"]["seconds"]},
        "masked_over_dense_max": {"target": 1.05, "measured": max((r["masked_over_dense"] for r in ratios),
                                                                  default=None)},
        "hessian_trace_speedup": {"target": 5, "measured": hessian_result["trace"]["speedup"] if hessian_result else None},
        "hessian_density_speedup": {"target": 5,
                                    "measured": hessian_result["density"]["speedup"] if hessian_result else None},
    }
    results["seconds"] = time.perf_counter() - clock
    path = out / file_name(device)
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print_table(results)
    print(f"results: {path}")


def print_table(results: dict) -> None:
    print(f"\n{'setting':<48} {'img/s':>10} {'step ms':>8} {'1st epoch s':>11} {'peak GiB':>8}")
    for r in results["throughput"]:
        peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        print(f"{r['label']:<48} {r['images_per_second']:>10,.0f} {r['step_ms']:>8.2f} {r['first_epoch_s']:>11.1f} "
              f"{peak:>8}")
    for r in results["masked_over_dense"]:
        print(f"masked / dense time per step, {r['setting']}: {r['masked_over_dense']:.3f} (target <= 1.05)")
    level = results["imp_level"]
    print(f"one {level['epochs']}-epoch IMP level of ResNet-20 ({level['train_images']:,} images, "
          f"{results['best_resnet20']['label']}): {level['seconds']:.1f} s"
          f"{' (extrapolated)' if level.get('extrapolated') else ''} (target < 60 s)")
    roof = results.get("roofline_resnet20")
    if roof:
        print(f"ResNet-20 roofline: {roof['images_per_second_by_flops']:,.0f} img/s by FLOPs, "
              f"{roof['images_per_second_by_bandwidth']:,.0f} by bandwidth ({roof['bound']}-bound); measured "
              f"{roof['measured_fraction_of_bound']:.1%} of it")
    h = results.get("hessian")
    if h:
        print(f"Hessian, ResNet-20 ({h['examples']} examples): top eigenvalue {h['top_eigenvalue']['speedup']:.1f}x, "
              f"trace {h['trace']['speedup']:.1f}x, density {h['density']['speedup']:.1f}x faster than PyHessian "
              f"(target >= 5x for trace and density)")
    for line in results["skipped"]:
        print(f"skipped: {line}")


if __name__ == "__main__":
    sys.exit(main())
