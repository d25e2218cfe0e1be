"""Pruning at initialisation: score W^0 (SNIP, SynFlow, magnitude or random), prune once to the
target density, then train the sparse network from W^0. The comparison of the lecture slides
"From model pruning to sparse updates and the LTH": run it with each score beside an IMP ticket
of the same density."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from training.commands import Command, keep_to_fraction, prepare_run, run_flags
from training.hparams import Config, PruningHparams, check_pruning
from training.sparsity.masks import apply_mask, dense_mask, output_name
from training.sparsity.pruning import prune_by
from training.engine.runs import Run, resolve_device
from training.engine.seeding import derive_seed


def run_at_init(config: Config, *, out: str | Path = "runs", data_dir: Optional[str] = None, device: str = "auto",
                progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None) -> Run:
    """Prune W^0 by ``config.pruning.score`` to ``target_density`` (else 1 - fraction), train it."""
    pruning = config.pruning or PruningHparams()
    config.pruning = pruning
    check_pruning(pruning)
    density = pruning.target_density if pruning.target_density is not None else 1 - pruning.fraction
    run = Run(config, "at-init", Path(out), resolve_device(device), data_dir, progress, on_epoch_end=on_epoch_end,
              levels=1)
    if not run.level_done(0):
        model = run.new_model()

        def make_mask():
            uniform = pruning.output_fraction is None and not pruning.layer_fractions
            hp = replace(pruning, fraction=1 - density)
            return prune_by(hp, dict(model.named_parameters()), dense_mask(model), output_name(model),
                            seed=derive_seed(config.training.seed, "prune", 0),
                            target_density=density if uniform else None, context=run.score_context())

        mask = run.mask_for(0, make_mask)
        apply_mask(model, mask)  # init.pt holds W^0 * M: pruned weights are exactly zero in the file
        run.save(model, mask, 0, 0, "init")
        run.train_level(0, model, mask, start=0)
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run


def _flags(parser) -> None:
    parser.add_argument("--keep", type=float, default=None, metavar="R", help="percent of weights kept")


AT_INIT = Command(
    "at-init", "prune at initialisation (SNIP, SynFlow, magnitude, random), then train",
    "Score W^0, prune once to --target-density, train the sparse network from W^0 (pruning at initialisation, "
    "for comparison with IMP tickets).",
    "examples:\n  python -m training at-init --score synflow --target-density 0.1\n"
    "  python -m training at-init --score snip --target-density 0.1",
    run_flags(_flags),
    lambda args: prepare_run(args, run_at_init, adjust=keep_to_fraction))
