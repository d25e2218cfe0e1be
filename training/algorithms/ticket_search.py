"""Winning-ticket search (Sahu et al., "Not all lotteries are made equal", Alg. 1): K stages of
train, prune 16% by LAMP, rewind to theta_init, repeated over replicate seeds, with early
stopping on a validation split.

Each replicate is an ordinary IMP run (seed ``seed + r``, stage k = level k, all checkpoints
kept), so Best Sparse and Sparsest Matching models can be picked afterwards from the runs'
summaries. ``ticket_search.json`` indexes the replicates.
"""
from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Optional

from training.engine.checkpoint import atomic_write_text
from training.commands import SAHU, Command, prepare_run, run_flags
from training.errors import UserError
from training.hparams import Config, dumps
from training.algorithms.imp import run_imp

DEFAULTS = {"score": "lamp", "fraction": 0.16, "rewind": "0", "val_fraction": 0.1, "early_stopping": 5}


def run_ticket_search(config: Config, stages: int = 5, replicates: int = 1, *, out: str | Path = "runs",
                      data_dir: Optional[str] = None, device: str = "auto", progress: bool = True) -> dict:
    """Run (or resume) ``replicates`` IMP runs of ``stages`` stages; return the index it writes."""
    if stages < 1 or replicates < 1:
        raise UserError(f"--stages and --replicates must be at least 1, got {stages} and {replicates}")
    runs = []
    for r in range(replicates):
        cfg = copy.deepcopy(config)
        cfg.training.seed = config.training.seed + r
        run = run_imp(cfg, stages, out=out, data_dir=data_dir, device=device, progress=False)
        runs.append({"seed": cfg.training.seed, "run": str(run.dir), "stages": run.summary()})
        if progress:
            print(f"replicate {r + 1}/{replicates} (seed {cfg.training.seed}): {run.dir}")
    base = copy.deepcopy(config)
    base.training.seed = 0
    index = {"algorithm": "ticket-search", "stages": stages, "replicates": runs, "config": config.to_dict()}
    # replicates use seeds seed..seed+N-1: a search from another first seed is another search
    # (seed 0 adds nothing, so the default search keeps its name)
    first = (f"seed={config.training.seed}",) if config.training.seed else ()
    path = Path(out) / f"ticket-search-{base.hash('ticket-search', f'stages={stages}', *first)}.json"
    atomic_write_text(path, dumps(index))
    if progress:
        print(f"{'stage':>5}  {'density':>8}  {'test acc (mean +- std over replicates)':>38}")
        for k in range(stages):
            accs = [100 * rep["stages"][k]["test_accuracy"] for rep in runs]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"{k:>5}  {100 * runs[0]['stages'][k]['density']:>7.2f}%  {statistics.mean(accs):>30.2f}% +- {spread:.2f}")
    index["path"] = str(path)
    return index


def _flags(parser) -> None:
    parser.add_argument("--stages", type=int, default=5, help="K, the number of train-prune-rewind stages (default 5)")
    parser.add_argument("--replicates", type=int, default=1, help="independent searches, seeds seed..seed+N-1")


TICKET_SEARCH = Command(
    "ticket-search", "winning-ticket search (Sahu et al.): LAMP stages over replicate seeds",
    "Winning-ticket search of " + SAHU + " (Alg. 1): K stages of train / prune 16% by LAMP / rewind to the "
    "initial weights, with early stopping on a 10% validation split, repeated over --replicates seeds. Any flag "
    "overrides those defaults.",
    "examples:\n  python -m training ticket-search --replicates 3\n"
    "  python -m training ticket-search --preset resnet32_cifar10 --stages 5 --replicates 50 --device cuda",
    run_flags(_flags, defaults=DEFAULTS),
    lambda args: prepare_run(
        args, lambda config, **common: run_ticket_search(config, args.stages, args.replicates, **common),
        defaults=DEFAULTS))
