"""The cost of finding a matching ticket: IMP against continuous sparsification (Savarese et al.,
"Winning the lottery with continuous sparsification", which reports up to 5 times faster search in
training epochs), and the time of one training step of each, in one process.

1. Search cost. IMP (20 % of the remaining weights a level) and CS (one run per s_0; the mask
   initialisation sets the sparsity) on the MNIST-1D default, same model, seed and training
   settings, with a validation split. A ticket *matches* when its validation accuracy is at least
   the dense network's; the first matching ticket at or below ``--max-density`` in search order
   is chosen on validation, and its test accuracy is printed beside the dense one. The search cost
   of a ticket: IMP, the training of levels 0..L-1 (level L's mask is read off level L-1); CS, its
   search rounds 1..R (``summary.json``); in epochs and backpropagation MACs. Prints IMP / CS.
2. Step time. The same number of training steps of the same model, IMP's (a fixed 20 % mask
   re-applied after each step) against CS's (``w * sigmoid(beta * s)``, the L1 penalty, Adam on s),
   interleaved repeats; prints the median ratio CS / IMP (target: at most 1.3 on CPU).

    python benchmarks/ticket_search_cost.py                      # about 3 minutes on 2 CPU cores
    python benchmarks/ticket_search_cost.py --mask-inits 0.05,0,-0.02 --imp-levels 12
    python benchmarks/ticket_search_cost.py --skip-search        # the step time only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from training.cli import ArgumentParser, run_command, writable_dir
from training.errors import UserError


def level_epochs(folder: Path) -> dict[int, float]:
    """Epochs trained at each level of a run folder (``{level: epochs}``), from ``metrics.jsonl``."""
    spans: dict[int, list[float]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            span = spans.setdefault(int(entry["level"]), [float("inf"), float("-inf")])
            span[0], span[1] = min(span[0], entry["epoch"]), max(span[1], entry["epoch"])
    return {level: hi - lo for level, (lo, hi) in spans.items()}


def imp_tickets(folder: Path) -> tuple[dict, list[dict]]:
    """The dense level and every IMP ticket with its search cost (epochs, backprop MACs)."""
    entries = json.loads((folder / "summary.json").read_text())["levels"]
    epochs = level_epochs(folder)
    tickets, spent, macs = [], 0.0, 0.0
    for entry in entries:
        if entry["level"] > 0:
            tickets.append({**entry, "search_epochs": spent, "search_macs": macs, "run": folder.name})
        spent += epochs.get(entry["level"], 0.0)
        macs = entry["cumulative_backprop_macs"]
    return entries[0], tickets


def cs_tickets(folder: Path) -> tuple[dict, list[dict]]:
    """The dense level and every CS round's ticket with its recorded search cost."""
    entries = json.loads((folder / "summary.json").read_text())["levels"]
    return entries[0], [{**e, "search_epochs": e["search"]["cumulative_epochs"],
                         "search_macs": e["search"]["cumulative_backprop_macs"], "run": folder.name}
                        for e in entries if e["level"] > 0]


def first_match(dense: dict, tickets: list[dict], max_density: float) -> Optional[dict]:
    """The cheapest ticket at or below ``max_density`` whose validation accuracy is at least the dense one's."""
    ok = [t for t in tickets if t["density"] <= max_density and t["val_accuracy"] >= dense["val_accuracy"]]
    return min(ok, key=lambda t: t["search_epochs"]) if ok else None


def describe(name: str, dense: dict, ticket: Optional[dict], tickets: list[dict], max_density: float) -> str:
    if ticket is None:
        near = [t for t in tickets if t["density"] <= max_density]
        best = max(near, key=lambda t: t["val_accuracy"]) if near else None
        text = f"{name}: no matching ticket found at or below {100 * max_density:g} % of the weights"
        if best is not None:
            text += (f" (best on validation: {100 * best['density']:.1f} % of the weights, val "
                     f"{100 * best['val_accuracy']:.1f} % against dense {100 * dense['val_accuracy']:.1f} %, test "
                     f"{100 * best['test_accuracy']:.1f} %, after {best['search_epochs']:.0f} search epochs)")
        return text
    return (f"{name}: matching ticket at {100 * ticket['density']:.1f} % of the weights ({ticket['run']}, level "
            f"{ticket['level']}): val {100 * ticket['val_accuracy']:.1f} % (dense {100 * dense['val_accuracy']:.1f} %), "
            f"test {100 * ticket['test_accuracy']:.1f} % (dense {100 * dense['test_accuracy']:.1f} %); search "
            f"{ticket['search_epochs']:.0f} epochs, {ticket['search_macs']:.3g} backprop MACs")


def search_cost(args: argparse.Namespace, runs: Path) -> None:
    from training.sweep import run_grid

    common = ["--model", args.model, "--val-fraction", str(args.val_fraction), "--seed", str(args.seed),
              "--threads", str(args.threads), "--no-progress", "--device", args.device, "--out", str(runs)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    start = time.perf_counter()
    (imp,), _ = run_grid("imp", {"levels": [args.imp_levels]}, [*common, "--fraction", "0.2", "-k", "0"],
                         progress=False)
    imp_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cs, _ = run_grid("cs", {"mask-init": args.mask_inits}, [*common, "--rounds", str(args.rounds), "-k", "0"],
                     progress=False)
    cs_seconds = time.perf_counter() - start
    for r in (imp, *cs):
        if r.status != "done":
            raise UserError(f"the run `{' '.join(r.argv)}` failed: {r.error}")
    dense, imp_all = imp_tickets(Path(imp.folder))
    cs_all: list[dict] = []
    for r in cs:
        cs_dense, found = cs_tickets(Path(r.folder))
        cs_all += [{**t, "mask_init": float(r.point["mask-init"])} for t in found]
    print(f"search: {args.model} on MNIST-1D, seed {args.seed}, validation fraction {args.val_fraction}; "
          f"dense val {100 * dense['val_accuracy']:.1f} %, test {100 * dense['test_accuracy']:.1f} % "
          f"(the CS runs' dense level: test {100 * cs_dense['test_accuracy']:.1f} %)")
    print(f"  IMP: {args.imp_levels} levels (down to {100 * imp_all[-1]['density']:.1f} %), {imp_seconds:.0f} s wall; "
          f"CS: s_0 in {', '.join(args.mask_inits)}, {args.rounds} rounds each, {cs_seconds:.0f} s wall")
    for t in cs_all:
        print(f"  CS s_0 = {t['mask_init']:g} round {t['level']}: {100 * t['density']:.1f} % of the weights, val "
              f"{100 * t['val_accuracy']:.1f} %, test {100 * t['test_accuracy']:.1f} %, {t['search_epochs']:.0f} "
              "search epochs")
    for t in imp_all:
        print(f"  IMP level {t['level']}: {100 * t['density']:.1f} % of the weights, val {100 * t['val_accuracy']:.1f} %, "
              f"test {100 * t['test_accuracy']:.1f} %, {t['search_epochs']:.0f} search epochs")
    imp_match = first_match(dense, imp_all, args.max_density)
    cs_match = first_match(dense, cs_all, args.max_density)
    print(describe("IMP", dense, imp_match, imp_all, args.max_density))
    print(describe("CS ", dense, cs_match, cs_all, args.max_density))
    if imp_match is not None and cs_match is not None:
        print(f"ratio IMP / CS search epochs: {imp_match['search_epochs'] / cs_match['search_epochs']:.2f}, backprop "
              f"MACs: {imp_match['search_macs'] / cs_match['search_macs']:.2f} (Savarese et al.: up to 5x in epochs; "
              "CS's cost is one s_0 run, the sweep over s_0 is not counted)")
    else:
        missing = " and ".join(n for n, m in (("IMP", imp_match), ("CS", cs_match)) if m is None)
        print(f"ratio IMP / CS: undefined ({missing} found no matching ticket at or below "
              f"{100 * args.max_density:g} %; Savarese et al. report up to 5x in epochs)")


def step_time(args: argparse.Namespace) -> None:
    import torch

    from training.algorithms.continuous_sparsification import ContinuousSparsification, CSHparams
    from training.algorithms.mask_search import masked_names
    from training.data import load_dataset
    from training.hparams import DatasetHparams, TrainingHparams
    from training.engine.loop import train
    from training.sparsity.masks import dense_mask
    from training.models import build_model
    from training.sparsity.pruning import prune
    from training.engine.runs import resolve_device

    device = resolve_device(args.device)
    data = load_dataset(DatasetHparams("mnist1d"), args.data_dir).to(device)
    # evaluate only at the start and the end, identically for both
    hp = TrainingHparams(train_for=f"{args.steps}it", eval_every=f"{args.steps}it")

    def once(kind: str) -> float:
        model = build_model(args.model, data.num_classes, data.input_shape, seed=0).to(device)
        if kind == "imp":
            mask = prune(dict(model.named_parameters()), dense_mask(model), 0.8, score="magnitude")
            run = lambda: train(model, data, hp, mask=mask, progress=False)  # noqa: E731
        else:
            cs = CSHparams()
            ext = ContinuousSparsification(model, cs, hp, masked_names(model, cs))
            run = lambda: train(model, data, hp, progress=False, extensions=[ext])  # noqa: E731
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once("imp"), once("cs")  # warm-up
    imp_times, cs_times, ratios = [], [], []
    for _ in range(args.repeats):
        i, c = once("imp"), once("cs")
        imp_times.append(i)
        cs_times.append(c)
        ratios.append(c / i)
    print(f"step time: {args.model}, {args.steps} steps x {args.repeats} repeats, device {device}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"  IMP (20 % mask) median {1e3 * statistics.median(imp_times) / args.steps:.3f} ms/step; "
          f"CS median {1e3 * statistics.median(cs_times) / args.steps:.3f} ms/step")
    print(f"ratio CS / IMP per step: {statistics.median(ratios):.3f} (target <= 1.3)")


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist1d_cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation split that chooses the ticket")
    parser.add_argument("--max-density", type=float, default=0.2, help="a matching ticket keeps at most this fraction")
    parser.add_argument("--imp-levels", type=int, default=10, help="IMP levels (20 %% a level: 10 reach 13.4 %%)")
    parser.add_argument("--mask-inits", default="0.05,0",
                        help="CS runs: comma-separated s_0 values (0.05: about 22 %% after 3 rounds, 0: about 12 %%)")
    parser.add_argument("--rounds", type=int, default=3, help="CS rounds per run")
    parser.add_argument("--runs", default="/tmp/ticket_search_cost/runs",
                        help="folder of the run folders (reused: a second call only re-reads them)")
    parser.add_argument("--steps", type=int, default=500, help="training steps per step-time measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-search", action="store_true", help="only the step time")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (runs and timing)")
    args = parser.parse_args(argv)

    def body() -> int:
        import torch

        from training.cli import check_threads

        check_threads(args.threads)
        args.mask_inits = [m.strip() for m in args.mask_inits.split(",") if m.strip()]
        try:
            [float(m) for m in args.mask_inits]
        except ValueError:
            raise UserError(f"--mask-inits must be comma-separated numbers, got {args.mask_inits}") from None
        if not args.mask_inits:
            raise UserError("--mask-inits needs at least one value")
        if not 0 < args.max_density <= 1:
            raise UserError(f"--max-density must be in (0, 1], got {args.max_density}")
        if not 0 < args.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1): matching tickets are chosen on validation, got "
                            f"{args.val_fraction}")
        for flag, value in (("--imp-levels", args.imp_levels), ("--rounds", args.rounds), ("--steps", args.steps),
                            ("--repeats", args.repeats)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        runs = writable_dir(args.runs, flag="--runs")
        torch.set_num_threads(args.threads)
        if not args.skip_search:
            search_cost(args, runs)
            sys.stdout.flush()
        step_time(args)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
