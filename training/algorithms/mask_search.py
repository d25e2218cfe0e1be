"""The driver that the learned-mask searches share: continuous sparsification (``cs``) and iterative
stochastic sparsification (``iss``), Savarese et al., "Winning the lottery with continuous
sparsification", Alg. 3 and Alg. 2.

Both run the same plan; a ``MaskSearch`` supplies what differs (how a round starts, the training
extension that forms the weights, and what a finished round's ticket is):

1. level 0: the dense network from W^0, its W^k and the dense baseline, bit-identical to IMP's level 0
   (with ``--freeze-weights``: W^0 evaluated as it is);
2. round R: train the weights and the mask scores from the round's start (``MaskSearch.start``),
   save the search network (``level_R/search.pt``) and its scores (``level_R/scores.pt``);
3. round R's ticket: trained like an IMP level from W^k with the pruned weights held at zero
   (frozen: evaluated untrained), then ``summary.json`` with the search cost of every ticket.

Every step resumes: a finished round is never searched again, a killed round resumes from its
``search_state.pt``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from training.algorithms.imp import train_level_zero, train_ticket
from training.engine import distributed
from training.engine import checkpoint as ckpt_io
from training.engine.cost import training_cost
from training.engine.extensions import Extension
from training.engine.loop import train
from training.engine.metrics_log import MetricsLog
from training.engine.runs import Run, resolve_device
from training.engine.steps import Step
from training.errors import UserError
from training.hparams import Config, TrainingHparams, dumps
from training.sparsity.masks import apply_mask, dense_mask, plain_weights_and_mask, prunable_names

SCORES_FORMAT = "lth-toolkit/cs-scores"  # the name predates ISS; both write it


class MaskSearch:
    """What a learned-mask algorithm supplies to ``run_mask_search``. ``name`` names the run folder
    (``NAME-HASH``), the hyperparameters' key in ``config.json`` and the checkpoints' metadata
    (``NAME_search``, ``NAME_round``); ``hp`` is the algorithm's hyperparameter dataclass (with
    ``canonical()``, ``rewind``, ``freeze_weights``, ``mask_layers`` and ``dense_layers``)."""

    name: str = ""
    hp: Any = None
    extra_column: Optional[tuple[str, str]] = None  # (header, key of summary's ``search``) in the printed table

    def start(self, run: Run, r: int, previous: Optional[dict], k: int
              ) -> tuple[Optional[dict[str, torch.Tensor]], int, Optional[dict[str, torch.Tensor]]]:
        """Round ``r``'s start: the weights (None: W^0, the new model's), the iteration it starts at,
        and the mask scores (None: s_0), given the previous round's ``scores.pt`` (None in round 1)."""
        raise NotImplementedError

    def extension(self, model: nn.Module, run: Run, r: int, names: list[str],
                  scores: Optional[dict[str, torch.Tensor]]) -> Extension:
        """The training extension that forms ``names``' weights from their mask scores."""
        raise NotImplementedError

    def finish(self, run: Run, r: int, ext: Extension) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
        """After round ``r``'s training: its final scores, its ticket (name -> bool) and what the
        round's record adds (densities of the search, ...)."""
        raise NotImplementedError


def check_frozen(hp: Any) -> None:
    """``UserError`` for a rewinding flag with ``--freeze-weights`` (the weights never move, so W^k = W^0)."""
    if not hp.freeze_weights:
        return
    if Step.parse(hp.rewind, "-k/--rewind").value != 0:
        raise UserError(f"-k/--rewind {hp.rewind} means nothing with --freeze-weights: the weights never leave W^0; "
                        "drop -k")
    if getattr(hp, "search_rewind", False):
        raise UserError("--search-rewind means nothing with --freeze-weights: the weights never leave W^0")


def freeze_parameters(model: nn.Module) -> None:
    """Take every parameter of ``model`` out of training (``requires_grad`` off): no optimizer holds it,
    so it stays bit-identical to its current value (call before the mask forms are attached)."""
    for p in model.parameters():
        p.requires_grad_(False)


def evaluated_level(run: Run, level: int, mask: Optional[dict[str, torch.Tensor]], meta: Optional[dict] = None) -> None:
    """Write ``level_L``'s init.pt, rewind.pt and final.pt as W^0 under ``mask`` (None: dense), not
    trained (iteration 0), final.pt with its losses (nats) and accuracies (in [0, 1]) on the test,
    validation (if any) and training splits: a level of a ``--freeze-weights`` run."""
    from training.engine.loop import evaluate

    model = run.new_model()
    apply_mask(model, mask)
    meta = {"weights": "frozen at W^0 (--freeze-weights)", **(meta or {})}
    for kind in ("init", "rewind"):
        if not (run.level_dir(level) / f"{kind}.pt").exists():
            run.save(model, mask, 0, level, kind, meta)
    results: dict[str, float] = {}
    for split in ("test", "val", "train"):
        data = getattr(run.data, split)
        if data is not None:
            results[f"{split}_loss"], results[f"{split}_accuracy"] = evaluate(model, data, execution=run.config.execution)
    results["stopped_at"] = 0
    run.save(model, mask, 0, level, "final", {"results": results, "start_iteration": 0, **meta})


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def masked_names(model: nn.Module, hp: Any) -> list[str]:
    """The prunable weights of ``model`` that carry a mask (``--mask-layers`` minus ``--dense-layers``),
    in registration order; ``UserError`` for a pattern that names no prunable weight."""
    names = prunable_names(model)
    for flag, text in (("--mask-layers", hp.mask_layers), ("--dense-layers", hp.dense_layers)):
        for pattern in _patterns(text):
            if not fnmatch.filter(names, pattern):
                raise UserError(f"{flag} pattern {pattern!r} matches no prunable weight of this model "
                                f"({', '.join(names)})")
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in _patterns(hp.mask_layers))
              and not any(fnmatch.fnmatchcase(n, p) for p in _patterns(hp.dense_layers))]
    if not chosen:
        raise UserError("--mask-layers and --dense-layers leave no weight with a mask")
    return chosen


def check_layers(config: Config, hp: Any) -> None:
    """Refuse an unknown layer pattern before any folder exists (the model is built on the CPU)."""
    from training.data import dataset_spec
    from training.models import build_model

    spec = dataset_spec(config.dataset.dataset)
    masked_names(build_model(config.model.model, spec.classes, spec.shape, config.training.seed), hp)


def check_rewind(config: Config, hp: Any, data_dir: Optional[str]) -> None:
    """Refuse a rewind point k at or after the end of a round (before any run folder exists)."""
    from training.data import load_dataset
    from training.engine.loop import check_lengths

    k, length = Step.parse(hp.rewind, "-k/--rewind"), Step.parse(config.training.train_for, "--train-for")
    if k.value == 0 or (k.unit == length.unit and k.value < length.value):
        return
    size = len(load_dataset(config.dataset, data_dir).train) if k.unit != length.unit else 1
    check_lengths(config.training, -(-size // max(1, config.training.batch_size)), hp.rewind)


def read_scores(path: Path) -> dict:
    """A round's ``scores.pt`` (weights-only load); ``UserError`` when it is something else."""
    obj = ckpt_io.safe_load(path, "mask scores")
    if not isinstance(obj, dict) or obj.get("format") != SCORES_FORMAT:
        raise UserError(f"{path} is not a mask-search scores file; delete it to search the round again")
    return obj


def raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state under its plain names, raw weights (not multiplied by the mask)."""
    state, _ = plain_weights_and_mask(model)
    return state


class CallAfterStep(Extension):
    """An extension that calls ``fn(t)`` after every step (tests use it to kill a run)."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def after_step(self, t: int) -> None:
        self.fn(t)


def record_hparams(run: Run, key: str, hp: Any) -> None:
    """Add the algorithm's full hyperparameters (defaults included) to ``config.json`` under ``key``.
    The run's hash covers only the values that differ from the defaults, so a folder made before a
    default changed has the same name: ``UserError`` when a stored value differs from today's."""
    path = run.dir / "config.json"
    stored = json.loads(path.read_text())
    now = dataclasses.asdict(hp)
    diffs = [f"{name} stored {stored[key][name]!r}, now {value!r}" for name, value in now.items()
             if name in stored.get(key, {}) and stored[key][name] != value]
    if diffs:
        raise UserError(f"{run.dir} was made with other {key} settings ({'; '.join(diffs)}): a default has changed "
                        "since, so this command is no longer the one that made it; use another --out")
    if stored.get(key) != now:
        stored[key] = dataclasses.asdict(hp)
        ckpt_io.atomic_write_text(path, dumps(stored))


def search_flags(hp_class: type, title: str, prefix: str) -> Callable[[Any], None]:
    """The own flags of a learned-mask command: ``--rounds`` and one flag per field of ``hp_class``
    (``dest`` = ``prefix + field``), in a group called ``title``."""
    from training.hparams import add_dataclass_flags

    def add(parser: Any) -> None:
        parser.add_argument("--rounds", type=int, help="search rounds; each round's ticket is trained and recorded "
                                                       "(default: the preset's, else 3)")
        add_dataclass_flags(parser.add_argument_group(title), hp_class, dest_prefix=prefix)

    return add


def prepare_search(args: Any, hp_class: type, prefix: str, check_hp: Callable[[Any], None],
                   run_search: Callable[..., Run], sections: tuple[str, ...]) -> Callable[[], Any]:
    """The ``prepare`` of a learned-mask command: ``--rounds`` (the preset's, else 3), the algorithm's
    hyperparameters (dataclass defaults, then the preset's values, then the flags given, whose
    ``dest`` is ``prefix + field``), checked with ``check_hp``, then every check of a run command
    (``training.commands.prepare_run``) plus the layer patterns and the rewind point. Returns the
    function that runs ``run_search(config, hp, rounds, **common)``."""
    from training.commands import prepare_run
    from training.presets import preset_values

    values = preset_values(args.preset) if getattr(args, "preset", None) else {}
    if args.rounds is None:
        args.rounds = values.get("rounds", 3)
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    given = vars(args)
    hp = hp_class(**{f.name: given.get(f"{prefix}{f.name}", values.get(f.name, f.default))
                     for f in dataclasses.fields(hp_class)})
    check_hp(hp)
    return prepare_run(args, lambda config, **common: run_search(config, hp, args.rounds, **common), sections=sections,
                       check=lambda config: (check_layers(config, hp), check_rewind(config, hp, args.data_dir)))


# ---------------------------------------------------------------------------------------------
# The run


def run_mask_search(config: Config, search: MaskSearch, rounds: int, *, out: str | Path = "runs",
                    data_dir: Optional[str] = None, device: str = "auto", progress: bool = True,
                    on_epoch_end: Optional[Callable[[int], None]] = None,
                    after_step: Optional[Callable[[int, int], None]] = None) -> Run:
    """Run (or resume) ``rounds`` rounds of ``search`` and train each round's ticket; return the run
    with ``summary.json`` written (accuracies in [0, 1], costs in epochs and MACs). ``rounds`` is not
    part of the run's identity: asking for more later extends the same folder."""
    hp = search.hp
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    config.pruning = None
    search_hp = dataclasses.replace(config.training, early_stopping=None)

    def validate(model: nn.Module) -> None:
        masked_names(model, hp)
        check_rewind(config, hp, data_dir)

    # every round's ticket starts from level 0's W^k and the search, never from the previous ticket
    run = Run(config, search.name, Path(out), resolve_device(device), data_dir, progress, (hp.canonical(),),
              on_epoch_end, validate=validate, levels=rounds + 1, builds_on=lambda level: {0} - {level})
    k = Step.parse(hp.rewind, "-k/--rewind").iterations(run.iterations_per_epoch)
    record_hparams(run, search.name, hp)
    names = masked_names(run.new_model(), hp)
    search_log = MetricsLog(run.dir / "search.jsonl")

    if hp.freeze_weights and not run.level_done(0):
        evaluated_level(run, 0, run.mask_for(0, lambda: dense_mask(run.new_model())))
    if not run.level_done(0):
        model = run.new_model()
        train_level_zero(run, model, run.mask_for(0, lambda: dense_mask(model)), rewind=k)

    for r in range(1, rounds + 1):
        scores_path = run.level_dir(r) / "scores.pt"
        if not scores_path.exists():
            search_round(run, r, search, search_hp, names, k, search_log, after_step)
        if not run.level_done(r):
            mask = run.mask_for(r, lambda: {n: m.to(torch.bool) for n, m in read_scores(scores_path)["mask"].items()})
            if hp.freeze_weights:
                evaluated_level(run, r, mask, {f"{search.name}_round": r})
            else:
                train_ticket(run, r, mask, k, meta={f"{search.name}_round": r})
        write_summary(run)
    entries = write_summary(run)
    if progress:
        run.print_summary(entries)
        header, key = search.extra_column or ("", "")
        print(f"{'round':>5}  {'ticket density':>14}  {'ticket test acc':>15}  "
              + (f"{header:>12}  " if header else "") + f"{'search epochs (cumulative)':>26}")
        for e in entries[1:]:
            extra = f"{100 * e['search'][key]:>11.2f}%  " if header else ""
            print(f"{e['level']:>5}  {100 * e['density']:>13.2f}%  {100 * e['test_accuracy']:>14.2f}%  "
                  f"{extra}{e['search']['cumulative_epochs']:>26.1f}")
    return run


def search_round(run: Run, r: int, search: MaskSearch, hp: TrainingHparams, names: list[str], k: int,
                 log: MetricsLog, after_step: Optional[Callable[[int, int], None]]) -> None:
    """Search round ``r`` from ``search.start``; write ``search.pt`` (the network: raw weights, zero
    outside the ticket, and the ticket) and ``scores.pt`` (raw weights, scores, ticket, the round's
    record)."""
    model = run.new_model()
    if search.hp.freeze_weights:
        freeze_parameters(model)
    previous = read_scores(run.level_dir(r - 1) / "scores.pt") if r > 1 else None
    weights, start, scores = search.start(run, r, previous, k)
    if weights is not None:
        model.load_state_dict(weights)
    ext = search.extension(model, run, r, names, scores)
    hooks: list[Extension] = [ext]
    if after_step is not None:
        hooks.append(CallAfterStep(lambda t: after_step(r, t)))
    run.level_dir(r).mkdir(parents=True, exist_ok=True)
    metrics = train(model, run.data, hp, start=start, log=log, level=r, state_path=run.level_dir(r) / "search_state.pt",
                    progress=run.progress, extensions=hooks, execution=run.config.execution)
    cost = training_cost(model, run.data.input_shape, None, start, metrics["stopped_at"], len(run.data.train),
                         hp.batch_size)
    final, ticket, extra = search.finish(run, r, ext)
    info = {"round": r, "start_iteration": start, "end_iteration": metrics["stopped_at"],
            "epochs": (metrics["stopped_at"] - start) / run.iterations_per_epoch, "backprop_macs": cost, **extra,
            "results": {key: v for key, v in metrics.items() if key.startswith(("test_", "val_", "train_"))}}
    run.save(model, None, metrics["stopped_at"], r, "search", {f"{search.name}_search": info})
    raw = {name: p.detach().cpu().clone() for name, p in raw_state(model).items()}
    ckpt_io.atomic_save({"format": SCORES_FORMAT, "algorithm": search.name, "round": r,
                         "scores": {n: s.cpu() for n, s in final.items()},
                         "mask": {n: m.cpu() for n, m in ticket.items()}, "weights": raw, "info": info},
                        run.level_dir(r) / "scores.pt")
    state = run.level_dir(r) / "search_state.pt"
    if distributed.is_main() and state.exists():  # under torchrun rank 0 alone writes and removes files
        state.unlink()


def write_summary(run: Run) -> list[dict]:
    """``run.write_summary()`` plus the search cost: per ticket level R, ``search`` holds round R's
    epochs, backprop MACs, soft-mask density and the cumulative cost of finding the ticket (the k
    dense warm-up iterations plus rounds 1..R); top-level ``search_cost`` is the total so far.
    Returns the entries as written."""
    entries = run.write_summary()
    ipe = run.iterations_per_epoch
    epochs, macs = 0.0, 0.0
    for entry in entries:
        level = entry["level"]
        if level == 0:
            k = ckpt_io.read_checkpoint(run.level_dir(0) / "rewind.pt")["step"]["iteration"]
            warm = training_cost(run.new_model(), run.data.input_shape, None, 0, k, len(run.data.train),
                                 run.config.training.batch_size)
            epochs, macs = k / ipe, warm["total"]
            entry["role"] = "dense"
            continue
        info = read_scores(run.level_dir(level) / "scores.pt")["info"]
        epochs += info["epochs"]
        macs += info["backprop_macs"]["total"]
        entry["role"] = "ticket"
        entry["search"] = {"round": level, "epochs": info["epochs"], "backprop_macs": info["backprop_macs"]["total"],
                           "cumulative_epochs": epochs, "cumulative_backprop_macs": macs,
                           "soft_density": info["soft_density"], "soft_not_binary": info["soft_not_binary"],
                           "test_accuracy": info["results"].get("test_accuracy"),
                           "checkpoint": f"level_{level}/search.pt"}
    path = run.dir / "summary.json"
    stored = json.loads(path.read_text())
    stored["levels"] = entries
    stored["search_cost"] = {"epochs": epochs, "backprop_macs": macs,
                             "note": "k dense warm-up iterations (W^k) plus every finished search round; the ticket "
                                     "trainings and the dense baseline are not part of the search"}
    ckpt_io.atomic_write_text(path, dumps(stored))
    return entries
