"""Iterative magnitude pruning with rewinding (I-LOT-R: Tartaglione 2022, "The rise of the lottery
heroes", Alg. 1 and 2; Frankle & Carbin's IMP), and dense training.

Level 0 trains the dense network from W^0 for T iterations and keeps W^k, its weights after k
iterations. Each later level L prunes a fraction of the weights that level L-1 kept (scored on
level L-1's trained weights), resets the survivors to W^k and trains them from iteration k to T,
with the pruned weights held at exactly zero (Tartaglione 2022, eq. 1). ``rewind = 0`` is Frankle &
Carbin's IMP; ``k > 0`` is late rewinding, which is Alg. 2's k-epoch warm-up: the warm-up is the
first k iterations of level 0 and every level continues the same schedule from there.

``levels`` counts trained networks (level 0 is dense); the paper's I counts pruning iterations,
so ``python -m training lot -I I`` runs ``levels = I + 1``.

Fine-tuning (``PruningHparams.finetune`` = E > 0; Han et al. 2015, "Learning both weights and
connections"; Liu et al. 2019, "Rethinking the value of network pruning"): level 0 trains the
dense network as above; each later level L prunes level L-1's trained weights and, instead of
rewinding, trains those same weights on under the new mask for E epochs at a constant rate
(``finetune_lr``, by default the last rate of the run's schedule). Every other training
hyperparameter is the run's. Level L then holds ``init.pt`` (W^0 under its mask, as in every
run), ``rewind.pt`` (the weights fine-tuning starts from: level L-1's ``final.pt`` under the new
mask, at iteration 0 of the fine-tuning) and ``final.pt`` (after E epochs).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from training.commands import SAHU, TARTAGLIONE, Command, keep_to_fraction, prepare_run, run_flags
from training.errors import UserError
from training.hparams import Config, PruningHparams, TrainingHparams, check_pruning
from training.engine.loop import Schedule
from training.sparsity.masks import Mask, apply_mask, dense_mask, output_name
from training.sparsity.pruning import prune_by, score_named
from training.engine.runs import Run, resolve_device
from training.sparsity.saliency import ScoreContext
from training.engine.seeding import derive_seed
from training.engine.steps import Step, parse_steps


def run_imp(config: Config, levels: int = 5, *, out: str | Path = "runs", data_dir: Optional[str] = None,
            device: str = "auto", progress: bool = True,
            on_epoch_end: Optional[Callable[[int], None]] = None) -> Run:
    """Run (or resume) ``levels`` levels of IMP; return the run with its summary written.

    The number of levels is not part of the run's identity: asking for more levels later extends
    the same run folder.
    """
    if levels < 1:
        raise UserError(f"--levels must be at least 1, got {levels}")
    pruning = config.pruning or PruningHparams()
    config.pruning = pruning
    check_finetune(config, levels)
    score = score_named(pruning.score)

    def check_pruning_on(model) -> None:  # fail now, not after level 0 has trained
        check_levels(model)
        if score.kind == "structured":
            prune_by(pruning, {}, dense_mask(model), output_name(model), context=ScoreContext(model, ()))
            return
        prune_by(pruning, dict(model.named_parameters()), dense_mask(model), output_name(model),
                 target_density=pruning.target_density,
                 score="magnitude" if score.needs_network else None)

    def check_levels(model) -> None:
        """Refuse more levels than there are weights to prune: past some level, removing
        ``--fraction`` of what is left rounds to nothing."""
        if pruning.target_density is not None or score.kind == "structured":
            return
        kept = sum(int(m.numel()) for m in dense_mask(model).values())
        for level in range(1, levels):
            removed = round(pruning.fraction * kept)
            if removed == 0 or removed >= kept:
                raise UserError(f"--levels {levels} is more than this network can be pruned: at level {level}, "
                                f"{kept} weights remain and --fraction {pruning.fraction} of them rounds to "
                                f"{removed}; use --levels {level} or fewer")
            kept -= removed

    identity = ()
    if pruning.target_density is not None:
        if levels < 2:
            raise UserError("--target-density needs --levels >= 2 (2 is one-shot pruning)")
        identity = (f"levels={levels}",)  # the schedule depends on the number of levels

    run = Run(config, "imp", Path(out), resolve_device(device), data_dir, progress, identity, on_epoch_end,
              validate=check_pruning_on, levels=levels)
    k = run.rewind_iteration
    reference = run.new_model()
    out_layer = output_name(reference)

    for level in range(levels):
        if run.level_done(level):
            continue

        def make_mask(level: int = level):
            if level == 0:
                return dense_mask(reference)
            previous = run.mask_for(level - 1, lambda: dense_mask(reference))
            target = None if pruning.target_density is None else pruning.target_density ** (level / (levels - 1))
            trained = run.load_state(level - 1, "final")
            context = run.score_context(trained) if score.needs_network else None
            return prune_by(pruning, trained, previous, out_layer, seed=derive_seed(config.training.seed, "prune", level),
                            target_density=target, context=context)

        mask = run.mask_for(level, make_mask)
        if level == 0:
            train_level_zero(run, run.new_model(), mask)
        elif pruning.finetune:
            finetune_level(run, level, run.new_model(), mask)
        else:
            train_ticket(run, level, mask, k)
        run.write_summary()
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run


def check_finetune(config: Config, levels: Optional[int] = None) -> None:
    """Check the pruning settings of an IMP/LOT run, fine-tuning included; raise ``UserError`` (one
    line) for a combination that means nothing. Commands call it before any work starts."""
    pruning = config.pruning or PruningHparams()
    check_pruning(pruning, finetune_allowed=True)
    if not pruning.finetune:
        return
    if Step.parse(pruning.rewind, "--rewind").value != 0:
        raise UserError(f"--finetune continues from each level's trained weights, so there is no rewind point: "
                        f"drop --rewind {pruning.rewind} (-k)")
    if levels is not None and levels < 2:
        raise UserError(f"--finetune needs --levels >= 2 (level 0 trains the dense network; level 1 is the first "
                        f"fine-tuned one), got {levels}")
    if pruning.finetune_lr is None and config.training.schedule == "cosine":
        raise UserError("--finetune with --schedule cosine needs --finetune-lr: the cosine schedule's last rate, "
                        "the default, is about 0")


def finetune_hparams(hp: TrainingHparams, pruning: PruningHparams, iterations_per_epoch: int) -> TrainingHparams:
    """The training hyperparameters of a fine-tuned level: the run's, with ``pruning.finetune``
    epochs at a constant rate ``pruning.finetune_lr`` (None: the rate of the last iteration of
    the run's own schedule, in the units of ``--lr``) and no warm-up or milestones."""
    if pruning.finetune_lr is not None:
        lr = pruning.finetune_lr
    else:
        schedule = Schedule.build(hp, iterations_per_epoch)
        lr = schedule(schedule.total - 1)
    return dataclasses.replace(hp, train_for=f"{pruning.finetune}ep", schedule="constant", milestones="",
                               warmup="0", lr=lr)


def finetune_level(run: Run, level: int, model, mask: Mask) -> dict:
    """Fine-tune level ``level`` (>= 1): level L-1's trained weights under ``mask``, trained on for
    ``config.pruning.finetune`` epochs (``finetune_hparams``); write ``init.pt`` (W^0 under the
    mask), ``rewind.pt`` (the starting weights, iteration 0) and ``final.pt``, whose
    ``backprop_macs`` count the fine-tuning iterations. Returns the final metrics."""
    pruning = run.config.pruning
    hp = finetune_hparams(run.config.training, pruning, run.iterations_per_epoch)
    info = {"epochs": pruning.finetune, "lr": hp.lr, "from": f"level_{level - 1}/final.pt"}
    apply_mask(model, mask)
    if not (run.level_dir(level) / "init.pt").exists():
        run.save(model, mask, 0, level, "init")
    model.load_state_dict(run.load_state(level - 1, "final"))
    apply_mask(model, mask)
    if not (run.level_dir(level) / "rewind.pt").exists():
        run.save(model, mask, 0, level, "rewind", {"finetune": info})
    return run.train_level(level, model, mask, 0, hp=hp, end=pruning.finetune * run.iterations_per_epoch,
                           meta={"finetune": info})


def train_level_zero(run: Run, model, mask, rewind: Optional[int] = None) -> None:
    """Level 0 of a lottery run: dense training from W^0 to T, keeping W^k as ``rewind.pt`` (k: the
    run's rewind point, or ``rewind`` iterations for an algorithm that keeps its own).

    With early stopping, training goes on at least to k (``train`` never stops before its last save
    point), so ``rewind.pt`` always exists for the later levels."""
    if not (run.level_dir(0) / "init.pt").exists():
        run.save(model, mask, 0, 0, "init")

    def keep_rewind(t: int) -> None:
        run.save(model, mask, t, 0, "rewind")

    k = run.rewind_iteration if rewind is None else rewind
    run.train_level(0, model, mask, start=0, save_points={k}, on_save=keep_rewind)


def train_ticket(run: Run, level: int, mask: Mask, rewind: int, meta: Optional[dict] = None) -> None:
    """Level ``level`` of a lottery run: the ticket ``mask`` saved on W^0 (``init.pt``), then level
    0's W^k under the mask (``rewind.pt``, iteration ``rewind``) trained to the end with the pruned
    weights held at zero; ``meta`` is added to ``final.pt``'s metadata."""
    model = run.new_model()
    apply_mask(model, mask)
    if not (run.level_dir(level) / "init.pt").exists():
        run.save(model, mask, 0, level, "init")
    model.load_state_dict(run.load_state(0, "rewind"))
    apply_mask(model, mask)
    if not (run.level_dir(level) / "rewind.pt").exists():
        run.save(model, mask, rewind, level, "rewind")
    run.train_level(level, model, mask, start=rewind, meta=meta)


def run_train(config: Config, save_at: str = "", *, out: str | Path = "runs", data_dir: Optional[str] = None,
              device: str = "auto", progress: bool = True,
              on_epoch_end: Optional[Callable[[int], None]] = None) -> Run:
    """Train the dense network once (a level-0 run), saving ``level_0/step_T.pt`` at each point of
    ``save_at`` (e.g. ``"0,500it,2ep"``); return the run with its summary written."""
    config.pruning = None
    points = parse_steps(save_at, "--save-at")
    identity = ("save_at=" + ",".join(str(p) for p in points),) if points else ()
    run = Run(config, "train", Path(out), resolve_device(device), data_dir, progress, identity, on_epoch_end,
              save_at=tuple(points), levels=1)
    iterations = sorted({p.iterations(run.iterations_per_epoch) for p in points})
    if not run.level_done(0):
        model = run.new_model()
        run.save(model, None, 0, 0, "init")

        def keep(t: int) -> None:
            run.save(model, None, t, 0, f"step_{t}")

        run.train_level(0, model, None, start=0, save_points=iterations, on_save=keep)
    entries = run.write_summary()
    if progress:
        run.print_summary(entries)
    return run


# ---------------------------------------------------------------------------------------------
# Commands: ``imp`` and ``lot`` are one algorithm with two ways of counting (levels / iterations)


def _lottery_command(name: str, help: str, description: str, epilog: str,
                     own_flags: Callable, to_levels: Callable) -> Command:
    """An IMP/LOT command: its ``own_flags``, then ``to_levels(args)`` (checks them and sets
    ``args.levels``), -R/--keep as the kept percentage, and ``run_imp``."""

    def adjust(args) -> None:
        to_levels(args)
        keep_to_fraction(args)

    def prepare(args):
        return prepare_run(args, lambda config, **common: run_imp(config, args.levels, **common), adjust=adjust,
                           finetune_allowed=True, check=lambda config: check_finetune(config, args.levels))

    return Command(name, help, description, epilog, run_flags(own_flags), prepare)


def _imp_flags(parser) -> None:
    parser.add_argument("--levels", type=int, default=5,
                        help="number of trained networks: level 0 is dense, each later level is pruned (default: 5)")
    parser.add_argument("-R", "--keep", type=float, metavar="R",
                        help="keep R%% of the remaining weights per level; same as --fraction 1-R/100")


def _lot_flags(parser) -> None:
    parser.add_argument("-I", "--iterations", type=int, default=4, metavar="I",
                        help="pruning iterations; the run trains I + 1 networks (I = 1: one-shot) (default: 4)")
    parser.add_argument("-R", "--keep", type=float, metavar="R",
                        help="percent of the remaining weights kept at every iteration (default: 80, i.e. "
                             "--fraction 0.2)")


def _iterations_to_levels(args) -> None:
    if args.iterations < 1:
        raise UserError(f"-I (pruning iterations) must be at least 1, got {args.iterations}; "
                        "for the dense network alone use `python -m training train`")
    args.levels = args.iterations + 1


IMP = _lottery_command(
    "imp", "iterative magnitude pruning with rewinding (Frankle & Carbin)",
    "Train, prune a fraction of the remaining weights, rewind the survivors to step k, repeat (Frankle & "
    "Carbin's IMP; with k > 0, late rewinding). Writes a run folder with a checkpoint per level.",
    f"""\
examples:
  python -m training imp                                  # demo: MNIST-1D CNN, 5 levels, 20% pruned per level
  python -m training imp --levels 10 --rewind 2ep         # late rewinding / k-epoch warm-up (Tartaglione 2022, Alg. 2)
  python -m training imp --keep 10 --levels 2             # one-shot: train, keep 10%, train the ticket (= lot -R 10 -I 1)
  python -m training imp --preset resnet32_cifar10 --data-dir ~/datasets --device cuda
  python -m training imp --score lamp --fraction 0.16     # LAMP pruning ({SAHU})
  python -m training imp --target-density 0.2 --levels 2 --finetune 10   # prune once, fine-tune 10 epochs (Liu et al.)

--levels counts trained networks (level 0 is dense), so --levels L prunes L - 1 times.
--finetune E: each pruned level continues the previous level's trained weights for E epochs at
--finetune-lr (default: the schedule's last rate) instead of rewinding (Han et al.; Liu et al.).
Run the same command again to resume a killed run; add levels by raising --levels.
""",
    _imp_flags, lambda args: None)

LOT = _lottery_command(
    "lot", "I-LOT-R (Tartaglione 2022, Alg. 1/2): I pruning iterations keeping R%% each, rewinding to W^k",
    "I-LOT-R with warm-up (" + TARTAGLIONE + ", Alg. 1 and 2): train the dense network from W^0, keeping W^k, "
    "its weights after k steps (-k); then I times: keep the R% largest-magnitude remaining weights (-R), rewind "
    "them to W^k, train them with the others held at zero. I = 1 is the one-shot experiment.",
    f"""\
examples:
  python -m training lot -R 10 -I 1 -k 2ep     # 1-LOT: train, keep 10%, rewind to W^k, train the ticket
  python -m training lot -R 80 -I 5            # 5 iterations keeping 80% each (density 0.8^5 = 33%)
  python -m training lot --preset resnet32_cifar10 -R 25 -I 1 -k 5ep --device cuda

I counts pruning iterations as in {TARTAGLIONE}:
the run trains I + 1 networks (the dense one, then one ticket per iteration), so
`lot -R R -I I` is `imp --keep R --levels I+1` and writes the same run folder.
Run the same command again to resume; raise -I to add iterations.
""",
    _lot_flags, _iterations_to_levels)


def _train_flags(parser) -> None:
    parser.add_argument("--save-at", default="",
                        help="extra checkpoints, e.g. '0,500it,2ep' (saved as level_0/step_<iteration>.pt)")


TRAIN = Command(
    "train", "plain dense training (a level-0 run)",
    "Train the dense network once and save checkpoints at the given steps.",
    """\
examples:
  python -m training train --save-at 0,1ep,2ep,5ep       # dense run with checkpoints for rewinding
  python -m training train --model mnist1d_cnn --train-for 2000it
""",
    run_flags(_train_flags, ("dataset", "model", "training")),
    lambda args: prepare_run(args, lambda config, **common: run_train(config, args.save_at, **common),
                             sections=("dataset", "model", "training")))
