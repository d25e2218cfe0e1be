"""RISE-R (Tartaglione 2022, "The rise of the lottery heroes", Alg. 3 and eq. 2).

Level 0 trains the dense network from W^0 to T, passing through W^k (the k-iteration warm-up of
Alg. 2 and the dense training that finds the mask are this one run). The mask keeps R% of the
weights by magnitude (one shot, on level 0's trained weights). Level 1 trains from W^k again,
updating only the kept weights; every other weight stays at its value in W^k, bit for bit, after
every step (eq. 2). Unlike LOT, nothing is projected to zero.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from training.commands import TARTAGLIONE, Command, keep_to_fraction, prepare_run, run_flags
from training.hparams import Config, PruningHparams, check_pruning
from training.algorithms.imp import train_level_zero
from training.sparsity.masks import dense_mask, output_name
from training.sparsity.pruning import prune_by, score_named
from training.engine.runs import Run, resolve_device
from training.engine.seeding import derive_seed


def run_rise(config: Config, *, out: str | Path = "runs", data_dir: Optional[str] = None, device: str = "auto",
             progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None) -> Run:
    """Run (or resume) RISE-R with R = 1 - ``config.pruning.fraction``; return the run."""
    pruning = config.pruning or PruningHparams()
    config.pruning = pruning
    check_pruning(pruning)
    needs_network = score_named(pruning.score).needs_network

    def check(model) -> None:
        prune_by(pruning, dict(model.named_parameters()), dense_mask(model), output_name(model),
                 score="magnitude" if needs_network else None)

    run = Run(config, "rise", Path(out), resolve_device(device), data_dir, progress, on_epoch_end=on_epoch_end,
              validate=check, levels=2)
    reference = run.new_model()
    if not run.level_done(0):
        train_level_zero(run, run.new_model(), run.mask_for(0, lambda: dense_mask(reference)))
    if not run.level_done(1):
        def make_mask():
            trained = run.load_state(0, "final")
            context = run.score_context(trained) if needs_network else None
            return prune_by(pruning, trained, dense_mask(reference), output_name(reference),
                            seed=derive_seed(config.training.seed, "prune", 1), context=context)

        mask = run.mask_for(1, make_mask)
        w_k = run.load_state(0, "rewind")
        frozen = {name: w_k[name] for name in mask}
        model = run.new_model()
        extra = {"masked_weights": "frozen"}
        if not (run.level_dir(1) / "init.pt").exists():
            run.save(model, mask, 0, 1, "init", extra)
        model.load_state_dict(w_k)
        if not (run.level_dir(1) / "rewind.pt").exists():
            run.save(model, mask, run.rewind_iteration, 1, "rewind", extra)
        run.train_level(1, model, mask, start=run.rewind_iteration, frozen=frozen)
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run


def _flags(parser) -> None:
    parser.add_argument("-R", "--keep", type=float, metavar="R",
                        help="percent of the weights kept and trained (default: 20 unless --fraction is given)")


RISE = Command(
    "rise", "RISE-R (Tartaglione 2022, Alg. 3): retrain from W^k, non-kept weights frozen at W^k",
    "RISE-R (" + TARTAGLIONE + ", Alg. 3): train dense, keep R% of the weights by magnitude, then train from "
    "W^k updating only the kept weights while the others stay frozen at their W^k values (eq. 2).",
    "examples:\n  python -m training rise -R 10 -k 2ep\n"
    "  python -m training rise --fraction 0.75 -k 2ep      # the same as -R 25\n"
    "  python -m training rise --preset resnet32_cifar10 -R 25 -k 5ep --device cuda",
    run_flags(_flags),
    lambda args: prepare_run(args, run_rise, adjust=lambda a: keep_to_fraction(a, default_keep=20.0)))
