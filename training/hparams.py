"""Hyperparameters: one dataclass per concern, and everything else follows from them.

The command-line flags are generated from the fields (with the field's help text), the run
folder's name is a hash of the canonical string of the fields that differ from their defaults
(so adding a field later keeps old run names valid), and ``config.json`` is the same dict.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from training.errors import UserError


def _f(default: Any, help: str, choices: Optional[list[str] | Callable[[], list[str]]] = None) -> Any:
    """A hyperparameter field: its default, its help text and its choices (a list, or a function
    returning one when the choices come from a registry)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _score_names() -> list[str]:
    from training.sparsity.pruning import SCORES

    return list(SCORES)


@dataclass
class DatasetHparams:
    dataset: str = _f("mnist1d", "dataset: mnist1d (generated offline), mnist, cifar10, cifar100, imagenet (read from "
                                  "--data-dir; python -m training list shows them)")
    val_fraction: float = _f(
        0.0, "fraction of the training set held out as a validation split, in [0, 1)"
    )
    augment: Optional[bool] = _f(
        None, "4-pixel padded random crop + horizontal flip (default: on for CIFAR, off otherwise)"
    )
    mnist1d_samples: int = _f(5000, "MNIST-1D: samples generated (80%% train / 20%% test)")


@dataclass
class ModelHparams:
    model: str = _f("mnist1d_cnn", "model name (python -m training list shows them all)")


@dataclass
class TrainingHparams:
    optimizer: str = _f("sgd", "optimizer", ["sgd", "adam"])
    lr: float = _f(0.05, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(False, "Nesterov momentum (SGD)")
    weight_decay: float = _f(0.0, "L2 weight decay")
    batch_size: int = _f(128, "mini-batch size")
    train_for: str = _f("30ep", "training length per level: '30ep' (epochs) or '5000it' (iterations)")
    schedule: str = _f("constant", "learning-rate schedule", ["constant", "step", "cosine"])
    milestones: str = _f("", "step schedule: comma-separated points, e.g. '80ep,120ep'")
    gamma: float = _f(0.1, "step schedule: factor applied at each milestone")
    warmup: str = _f("0", "linear learning-rate warm-up length, e.g. '5ep' (any schedule)")
    eval_every: str = _f("1ep", "evaluate on the test (and validation) set this often")
    bn_l1: float = _f(0.0, "L1 penalty on batch-norm scales (network slimming, Liu et al.: 1e-5 to 1e-4)")
    early_stopping: Optional[int] = _f(
        None, "keep the weights of the best validation accuracy (needs --val-fraction); stop after N "
              "evaluations without improvement (0: train to the end). Training always continues at least "
              "to the rewind point k (and every --save-at point), so W^k is saved even when the best "
              "validation accuracy comes earlier")
    seed: int = _f(0, "seed for model init, data order, augmentation and random pruning")


@dataclass
class PruningHparams:
    score: str = _f("magnitude", "pruning score; snip and synflow score the network; l1-filter and slimming "
                    "remove whole channels", lambda: list(_score_names()))
    fraction: float = _f(0.2, "fraction of the remaining prunable weights removed per level, in (0, 1)")
    scope: str = _f("global", "rank scores across all layers or within each layer", ["global", "layerwise"])
    output_fraction: Optional[float] = _f(
        None, "prune the output layer at its own rate (0 keeps it dense; Frankle & Carbin: half)"
    )
    layer_fractions: str = _f(
        "", "per-layer rates, e.g. 'features.*=0.15,classifier.*=0.2' (glob on parameter names)"
    )
    rewind: str = _f("0", "rewind survivors to step k: 0 (Frankle & Carbin), '500it' or '2ep'")
    target_density: Optional[float] = _f(
        None, "reach this final density over the levels: round L keeps D^(L/n) of each group, n = levels - 1 "
              "(levels 2: one-shot; more: iterative, as compared by Havinga & Sawhney, \"An analysis of neural "
              "network pruning in relation to the LTH\"); in (0, 1); replaces --fraction")
    finetune: int = _f(
        0, "imp and lot: fine-tune instead of rewinding (Han et al. 2015; Liu et al., \"Rethinking the value of network pruning\"):"
           " every level after the first prunes the previous level's trained weights and trains them on, under the "
           "mask, for this many epochs at --finetune-lr (constant); 0: rewind as usual")
    finetune_lr: Optional[float] = _f(
        None, "learning rate of fine-tuning, constant (default: the rate of the last step of the run's schedule, "
              "the final small rate Liu et al. fine-tune with; give it with --schedule cosine, which ends near 0)")


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass
class ExecutionHparams:
    """How a run is executed, as far as it changes the numbers it computes (its identity).

    Which settings are part of a run's identity (its folder name ``ALGORITHM-HASH``):

    ==================  ===========  ==========================================================
    setting             default      in the identity
    ==================  ===========  ==========================================================
    hyperparameters     (dataclass)  when not at their defaults (dataset, model, training, pruning
                                     sections and an algorithm's own settings)
    ``--device`` type   cpu          when not cpu (``device=cuda``): kernels differ
    ``--threads``       1            on the CPU, when not 1: the thread count changes the order of
                                     floating-point sums, hence the weights. Not on a GPU, where
                                     the CPU threads only feed kernels and sum nothing of the model
    ``--precision``     fp32         when not fp32 (tf32: a GPU's TF32 matrix units; bf16, fp16:
                                     autocast, fp16 with a gradient scaler)
    ``--channels-last`` off          when on (also for a model without 2-D convolutions, where
                                     it changes nothing: the identity records the flag as given)
    ``--compile``       off          when on (fused kernels round differently)
    ``--deterministic`` off          when on (other kernels on a GPU; on the CPU, where every
                                     kernel is already deterministic, it changes nothing)
    world size          1            when more than 1 (``torchrun --nproc_per_node N``, times the
                                     nodes): the gradients and batch-norm statistics are summed
                                     over the ranks in another order, so the weights agree with
                                     the single-process run's to float tolerance, not bit for bit
    ``--out``, ``--data-dir``, ``--no-progress``, logging backends: never (where and how a run
    is shown, not what it computes)
    ==================  ===========  ==========================================================

    A default CPU run's identity is what it was before these settings existed, so old CPU run
    folders keep their names and resume (at ``threads``; they were made at torch's default count,
    and ``Run`` warns). A GPU run's identity now holds ``device``, so a GPU folder made before has
    another name. A run sets torch's thread count for the rest of its process. Same seed, same settings and the same machine give
    bit-identical weights on the CPU (tests/test_identity.py); on a GPU see ``--deterministic``.
    """

    device: str = "cpu"  # the device *type* the run trains on (``Run`` sets it from its device)
    threads: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    world_size: int = 1  # processes training the run together (torchrun; ``training.engine.distributed``)

    def identity(self) -> str:
        """``execution(name=value,...)`` of the settings above that are part of the identity and
        not at their defaults; ``""`` when none is (a default run)."""
        parts = []
        if self.device != "cpu":
            parts.append(f"device={self.device!r}")
        elif self.threads != 1:  # CPU threads change a CPU run's sums only
            parts.append(f"threads={self.threads!r}")
        for f in fields(self):
            if f.name not in ("device", "threads") and getattr(self, f.name) != f.default:
                parts.append(f"{f.name}={getattr(self, f.name)!r}")
        return f"execution({','.join(parts)})" if parts else ""


SECTIONS: dict[str, type] = {
    "dataset": DatasetHparams,
    "model": ModelHparams,
    "training": TrainingHparams,
    "pruning": PruningHparams,
}


@dataclass
class Config:
    """A complete experiment description; ``pruning`` is ``None`` for dense training."""

    dataset: DatasetHparams = field(default_factory=DatasetHparams)
    model: ModelHparams = field(default_factory=ModelHparams)
    training: TrainingHparams = field(default_factory=TrainingHparams)
    pruning: Optional[PruningHparams] = None
    # not a section: no flags generated from it (the run group has them) and not in SECTIONS
    execution: ExecutionHparams = field(default_factory=ExecutionHparams)

    def to_dict(self) -> dict:
        data = {name: (None if s is None else dataclasses.asdict(s)) for name, s in self._sections()}
        data["execution"] = dataclasses.asdict(self.execution)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        kwargs = {}
        for name, kind in SECTIONS.items():
            section = data.get(name)
            if section is None:
                continue
            known = {f.name for f in fields(kind)}
            kwargs[name] = kind(**{k: v for k, v in section.items() if k in known})
        execution = data.get("execution")
        if isinstance(execution, dict):  # absent in folders made before it existed: the defaults
            known = {f.name for f in fields(ExecutionHparams)}
            kwargs["execution"] = ExecutionHparams(**{k: v for k, v in execution.items() if k in known})
        return cls(**kwargs)

    def canonical(self) -> str:
        """Fields that differ from their defaults, in a fixed order, then the execution settings
        that are part of the identity (``ExecutionHparams.identity``): the identity of the run."""
        parts = []
        for name, section in self._sections():
            if section is None:
                continue
            changed = [
                f"{f.name}={getattr(section, f.name)!r}"
                for f in fields(section)
                if getattr(section, f.name) != f.default
            ]
            parts.append(f"{name}(" + ",".join(changed) + ")")
        execution = self.execution.identity()
        return "|".join(parts + ([execution] if execution else []))

    def hash(self, *extra: str) -> str:
        """Return 12 hex digits naming the run (``extra`` adds runner-level identity)."""
        text = "|".join([self.canonical(), *extra])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def _sections(self):
        return [(name, getattr(self, name)) for name in SECTIONS]


# ---------------------------------------------------------------------------------------------
# Command-line flags generated from the fields


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_optional_bool(text: str) -> Optional[bool]:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    if lowered in ("none", "default", "auto"):
        return None
    raise argparse.ArgumentTypeError(f"expected true, false or auto, got {text!r}")


SHORT_FLAGS = {"rewind": "-k"}  # Tartaglione 2022 ("The rise of the lottery heroes") writes the rewind point as k


def finite_float(text: str) -> float:
    """A float flag's value: any finite number (``inf`` and ``nan`` are refused by argparse)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


finite_float.__name__ = "finite number"  # argparse's message: "invalid finite number value: 'inf'"


def add_flags(parser: argparse.ArgumentParser, section_names: list[str], defaults: Optional[dict] = None) -> None:
    """Add one flag per field of the named sections; defaults are left unset (``SUPPRESS``). The
    help shows a field's default: the command's own (``defaults``, by field name) where it has one."""
    for name in section_names:
        add_dataclass_flags(parser.add_argument_group(f"{name} hyperparameters"), SECTIONS[name], defaults=defaults)


def add_dataclass_flags(group, kind: type, dest_prefix: str = "", defaults: Optional[dict] = None) -> None:
    """One flag per field of dataclass ``kind`` (fields made with ``_f``-style metadata: ``help``,
    optional ``choices`` and ``flag``, a short form) on argparse ``group``; each stored as
    ``dest_prefix + field name``, left unset when not given (``SUPPRESS``) so that presets and a
    command's own defaults can fill it. Used by the four sections and by algorithms' own settings."""
    hints = typing.get_type_hints(kind)
    for f in fields(kind):
        hint = hints[f.name]
        shown = (defaults or {}).get(f.name, f.default)
        help_text = f.metadata["help"] + ("" if shown is None else f" (default: {shown})")
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_text, dest=dest_prefix + f.name)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint == Optional[bool]:
            kwargs["type"] = _parse_optional_bool
            kwargs["metavar"] = "{true,false,auto}"
        else:
            base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
            kwargs["type"] = finite_float if base is float else base
            choices = f.metadata.get("choices")
            if choices:
                kwargs["choices"] = choices() if callable(choices) else choices
            else:
                kwargs["metavar"] = f.name.upper()
        short = f.metadata.get("flag") or SHORT_FLAGS.get(f.name)
        group.add_argument(*([short] if short else []), _flag(f.name), **kwargs)


def build_config(
    args: argparse.Namespace, section_names: list[str], preset: Optional[str] = None,
    base: Optional[dict] = None,
) -> Config:
    """Dataclass defaults, then ``base`` (a command's own defaults), then the preset's values,
    then the flags that were given."""
    from training.presets import preset_values

    values = {**(base or {}), **(preset_values(preset) if preset else {})}
    given = vars(args)
    sections = {}
    for name in section_names:
        kind = SECTIONS[name]
        kwargs = {}
        for f in fields(kind):
            if f.name in given:
                kwargs[f.name] = given[f.name]
            elif f.name in values:
                kwargs[f.name] = values[f.name]
        sections[name] = kind(**kwargs)
    return Config(**sections)


def field_names(section_names: list[str]) -> set[str]:
    return {f.name for name in section_names for f in fields(SECTIONS[name])}


def dumps(data: Any) -> str:
    """JSON text as written to every file of a run (sorted keys, two-space indent)."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def check_pruning(hp: "PruningHparams", finetune_allowed: bool = False) -> None:
    """Raise ``UserError`` naming the flag when ``--fraction`` or ``--target-density`` lies
    outside (0, 1), when ``-k`` is not a step, or when ``--finetune``/``--finetune-lr`` are given where they do not apply
    (``finetune_allowed``: IMP/LOT) or are out of range; commands call it before any work starts."""
    from training.engine.steps import Step

    check_fraction(hp.fraction, "--fraction")
    Step.parse(hp.rewind, "-k/--rewind")
    if hp.target_density is not None:
        check_fraction(hp.target_density, "--target-density (the final fraction of weights kept)")
    if not finetune_allowed and (hp.finetune or hp.finetune_lr is not None):
        raise UserError("--finetune and --finetune-lr apply to imp and lot only (fine-tuning the levels of an IMP run)")
    if hp.finetune < 0:
        raise UserError(f"--finetune (epochs of fine-tuning) must be at least 0, got {hp.finetune}")
    if hp.finetune_lr is not None:
        if not hp.finetune:
            raise UserError("--finetune-lr needs --finetune EPOCHS (without it the levels rewind and nothing is fine-tuned)")
        limit = 3.4028234663852886e38  # float32's largest: the optimizers multiply float32 tensors by it
        if not 0 < hp.finetune_lr <= limit:
            raise UserError(f"--finetune-lr must be positive and at most {limit:.3g}, got {hp.finetune_lr}")


def check_fraction(value: float, what: str, allow_zero: bool = False) -> None:
    """Raise ``UserError`` unless ``value`` lies in (0, 1) (or [0, 1) with ``allow_zero``)."""
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise UserError(f"{what} must be in {interval}, got {value}")
