"""Masked vs dense training of the same model for the same steps, in one process.

Prints the median time ratio masked / dense over interleaved repeats. Target: at most 1.10 on CPU.

    python benchmarks/masked_overhead.py                       # MNIST-1D CNN, 20% density
    python benchmarks/masked_overhead.py --model mnist1d_mlp --steps 2000 --density 0.05
    python benchmarks/masked_overhead.py --model resnet20 --dataset cifar10 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.data import load_dataset
from training.hparams import DatasetHparams, TrainingHparams
from training.engine.loop import train
from training.sparsity.masks import dense_mask
from training.models import build_model
from training.sparsity.pruning import prune
from training.engine.runs import resolve_device


def time_training(model_name: str, data, hp: TrainingHparams, density: float | None, device) -> float:
    model = build_model(model_name, data.num_classes, data.input_shape, seed=0).to(device)
    mask = None
    if density is not None:
        mask = prune(dict(model.named_parameters()), dense_mask(model), 1 - density, score="random")
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, data, hp, mask=mask, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist1d_cnn")
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--data-dir")
    parser.add_argument("--steps", type=int, default=1000, help="training iterations per timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.2, help="fraction of weights kept in the masked run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset(DatasetHparams(args.dataset), args.data_dir).to(device)
    # evaluate only at the start and the end, identically in both runs
    hp = TrainingHparams(train_for=f"{args.steps}it", batch_size=args.batch_size, lr=0.01,
                         eval_every=f"{args.steps}it", weight_decay=1e-4)
    time_training(args.model, data, hp, args.density, device)  # warm-up
    ratios, dense_times, masked_times = [], [], []
    for _ in range(args.repeats):
        dense = time_training(args.model, data, hp, None, device)
        masked = time_training(args.model, data, hp, args.density, device)
        dense_times.append(dense)
        masked_times.append(masked)
        ratios.append(masked / dense)
    print(f"model {args.model} on {args.dataset}, {args.steps} steps x {args.repeats} repeats, device {device}, "
          f"density {args.density}")
    print(f"dense  median {statistics.median(dense_times):.3f} s   "
          f"({1e3 * statistics.median(dense_times) / args.steps:.3f} ms/step)")
    print(f"masked median {statistics.median(masked_times):.3f} s")
    print(f"ratio masked/dense: {statistics.median(ratios):.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
