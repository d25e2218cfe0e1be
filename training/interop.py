"""Masks that the rest of the PyTorch world reads: ``torch.nn.utils.prune`` and open_lth.

A toolkit mask is a dict from parameter name (as in ``state_dict``) to a bool tensor, True = kept
(``training.sparsity.masks``). This module moves it in and out of the two other forms in common use:

- ``torch.nn.utils.prune``: ``apply_mask(module, mask)`` prunes any ``nn.Module`` through
  ``prune.custom_from_mask``, so the module gets ``weight_orig`` (a parameter), ``weight_mask`` (a
  buffer) and the forward pre-hook that computes ``weight = weight_orig * weight_mask``;
  ``mask_from_pruned(module)`` and ``mask_from_state_dict(sd)`` read a mask back from such a module
  or from its state dict (``*_orig`` / ``*_mask`` keys); ``export_ticket(checkpoint, remove=...)``
  gives a toolkit checkpoint as a plain state dict and a mask, ``prune.remove`` applied or not.
- open_lth (Frankle et al., ``facebookresearch/open_lth``): a level's ``mask.pth`` is
  ``torch.save({parameter name: int tensor of 0/1})`` over the weights of every linear and
  convolution layer. ``python -m training import-mask MASK.pth --model NAME`` turns it (or any
  such dict, or a state dict pruned by ``torch.nn.utils.prune``) into an ordinary toolkit
  checkpoint that ``analysis.hessian``, ``analysis.supermask`` and ``analysis.connectivity`` read.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn
from torch.nn.utils import prune

from training.commands import Command
from training.errors import UserError
from training.sparsity.masks import Mask, prunable_names

if TYPE_CHECKING:
    from training.hparams import DatasetHparams

ORIG, MASK = "_orig", "_mask"  # the suffixes torch.nn.utils.prune gives a pruned tensor's two halves
OPEN_LTH = "open_lth"  # --name-map shorthand: open_lth's LeNet names (fc_layers.N, fc) to ours
OUTPUTS = ("mask.pt", "init.pt", "final.pt")  # every file import-mask may write to --out


# --- torch.nn.utils.prune ----------------------------------------------------------------------


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule that holds parameter ``name`` (``"features.0.weight"``) and the tensor's own
    name in it (``"weight"``); ``UserError`` when there is no such submodule."""
    path, _, leaf = name.rpartition(".")
    try:
        return (module.get_submodule(path) if path else module), leaf
    except AttributeError:
        raise UserError(f"mask entry {name!r} is not a parameter of the module "
                        f"(it has no submodule {path!r})") from None


def apply_mask(module: nn.Module, mask: Mask) -> nn.Module:
    """Prune ``module`` in place with ``torch.nn.utils.prune.custom_from_mask``, one call per entry
    of ``mask`` (parameter name -> bool tensor, True = kept), and return it.

    Afterwards each masked tensor ``W`` of a submodule is ``W_orig * W_mask`` (``W_orig`` the
    parameter the optimizer sees, ``W_mask`` a float 0/1 buffer), recomputed by a forward
    pre-hook, as with any ``torch.nn.utils.prune`` method. A module that is already pruned keeps its
    earlier masks: torch multiplies them together. Names and shapes are checked first (``UserError``
    on the first mismatch), so a bad mask leaves the module untouched."""
    plan = []
    for name, keep in mask.items():
        owner, leaf = _owner(module, name)
        current = getattr(owner, leaf + ORIG, None) if prune.is_pruned(owner) else None
        tensor = current if isinstance(current, torch.Tensor) else owner._parameters.get(leaf)
        if tensor is None:
            raise UserError(f"mask entry {name!r} is not a parameter of the module")
        if tuple(keep.shape) != tuple(tensor.shape):
            raise UserError(f"mask entry {name!r} has shape {tuple(keep.shape)}, parameter has {tuple(tensor.shape)}")
        plan.append((owner, leaf, keep.to(device=tensor.device, dtype=torch.bool)))
    for owner, leaf, keep in plan:
        prune.custom_from_mask(owner, leaf, keep)
    return module


def _pruning_hooks(module: nn.Module):
    """``(submodule name, submodule, tensor name)`` for every tensor pruned by ``torch.nn.utils.prune``."""
    for path, sub in module.named_modules():
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                yield path, sub, hook._tensor_name


def mask_from_pruned(module: nn.Module) -> Mask:
    """The mask of a module pruned by ``torch.nn.utils.prune`` (by any of its methods, one or several
    times): ``{parameter name: bool tensor}`` from each pruned tensor's ``*_mask`` buffer, named as the
    parameter is in the unpruned module's ``state_dict`` (``"fc.weight"``, not ``"fc.weight_orig"``).
    Every pruned tensor is returned, biases included; an unpruned module gives ``{}``."""
    mask: Mask = {}
    for path, sub, leaf in _pruning_hooks(module):
        name = f"{path}.{leaf}" if path else leaf
        mask[name] = getattr(sub, leaf + MASK).detach() != 0
    return mask


def mask_from_state_dict(state: dict[str, torch.Tensor], masked: bool = True) -> tuple[dict[str, torch.Tensor], Mask]:
    """Split the state dict of a module pruned by ``torch.nn.utils.prune`` (keys ``NAME_orig`` and
    ``NAME_mask``) into a plain state dict, with ``NAME`` keys as the unpruned module has them, and a
    mask ``{NAME: bool tensor}``.

    The plain weight is ``NAME_orig * NAME_mask`` (what the pruned module computes, exact zeros where
    pruned) or, with ``masked=False``, ``NAME_orig`` unchanged. Keys of unpruned tensors are copied
    as they are; a state dict without pruned tensors gives ``(copy, {})``. Raises ``UserError`` when a
    ``NAME_orig`` has no ``NAME_mask`` (or the reverse), their shapes differ, the mask holds values
    other than 0 and 1, or ``NAME`` is also present as a plain key."""
    origs = {k[: -len(ORIG)] for k in state if k.endswith(ORIG)}
    masks = {k[: -len(MASK)] for k in state if k.endswith(MASK)}
    lonely = sorted((origs ^ masks))
    if lonely:
        name = lonely[0]
        have, lack = (ORIG, MASK) if name in origs else (MASK, ORIG)
        raise UserError(f"state dict has {name + have!r} but no {name + lack!r}: not a torch.nn.utils.prune state dict")
    plain: dict[str, torch.Tensor] = {}
    mask: Mask = {}
    for key, value in state.items():
        base = key[: -len(ORIG)] if key.endswith(ORIG) else key[: -len(MASK)] if key.endswith(MASK) else None
        if base is None or base not in origs:
            plain[key] = value
    for name in sorted(origs):
        if name in plain:
            raise UserError(f"state dict has both {name!r} and {name + ORIG!r}; which one is the weight?")
        orig, m = state[name + ORIG], state[name + MASK]
        if tuple(orig.shape) != tuple(m.shape):
            raise UserError(f"{name + MASK!r} has shape {tuple(m.shape)}, {name + ORIG!r} has {tuple(orig.shape)}")
        if bool(((m != 0) & (m != 1)).any()):
            raise UserError(f"{name + MASK!r} holds values other than 0 and 1")
        keep = m != 0
        mask[name] = keep
        plain[name] = torch.where(keep, orig, torch.zeros((), dtype=orig.dtype)) if masked else orig.clone()
    return plain, mask


def _checkpoint(checkpoint: Union[str, Path, dict]) -> dict:
    from training.engine.checkpoint import read_checkpoint

    return checkpoint if isinstance(checkpoint, dict) else read_checkpoint(Path(checkpoint))


def pruned_model(checkpoint: Union[str, Path, dict]) -> nn.Module:
    """The network of a toolkit checkpoint (a path, or the dict ``read_checkpoint`` returns), pruned
    by ``torch.nn.utils.prune`` with the checkpoint's mask: its ``state_dict()`` has ``*_orig`` and
    ``*_mask`` keys. ``weight_orig`` holds the checkpoint's stored weights, so for a RISE checkpoint
    (weights outside the mask frozen, not zero) the pruned module computes the ticket ``W * M``, not
    the RISE network. A dense checkpoint comes back unpruned. On the CPU, in evaluation mode."""
    from training.engine.checkpoint import model_from_checkpoint

    ckpt = _checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint if not isinstance(checkpoint, dict) else "checkpoint")
    if ckpt["mask"] is not None:
        apply_mask(model, ckpt["mask"])
    return model.eval()


def export_ticket(checkpoint: Union[str, Path, dict], remove: bool = False) -> tuple[dict[str, torch.Tensor], Mask]:
    """A toolkit checkpoint (a path or a checkpoint dict) as ``(state_dict, mask)`` for code that
    knows nothing of this toolkit: a plain ``state_dict`` that ``model.load_state_dict`` of the same
    architecture accepts, and the mask ``{parameter name: bool tensor}`` (``{}`` for a dense
    checkpoint).

    ``remove=False``: the weights as the checkpoint stores them (zero where pruned, except RISE's
    frozen weights). ``remove=True``: the network is pruned with ``torch.nn.utils.prune`` and
    ``prune.remove`` is applied to every masked tensor, so the weights are ``W * M``, exact zeros where
    pruned, and no ``*_orig``/``*_mask`` keys remain. Tensors are on the CPU."""
    ckpt = _checkpoint(checkpoint)
    mask = {k: v.clone() for k, v in (ckpt["mask"] or {}).items()}
    if not remove:
        return {k: v.clone() for k, v in ckpt["state_dict"].items()}, mask
    model = pruned_model(ckpt)
    for _, sub, leaf in list(_pruning_hooks(model)):
        prune.remove(sub, leaf)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, mask


# --- import-mask: open_lth's mask.pth (or any 0/1 mask dict) into a toolkit checkpoint ---------


def parse_name_map(text: Optional[str]) -> list[tuple[str, str]]:
    """``"A=B,C=D"`` as ``[(A, B), (C, D)]``, longest source first: each renames a name's leading
    dotted components (``fc_layers.0=1`` turns ``fc_layers.0.weight`` into ``1.weight``). ``UserError``
    for an entry without ``=``, an empty side or a source given twice."""
    if not text:
        return []
    pairs: dict[str, str] = {}
    for entry in text.split(","):
        source, eq, target = (part.strip() for part in entry.partition("="))
        if not eq or not source or not target:
            raise UserError(f"--name-map entry {entry.strip()!r} is not SOURCE=TARGET (e.g. fc_layers.0=1)")
        if source in pairs:
            raise UserError(f"--name-map renames {source!r} twice")
        pairs[source] = target
    return sorted(pairs.items(), key=lambda p: -len(p[0]))


def open_lth_name_map(model: nn.Module, model_name: str) -> list[tuple[str, str]]:
    """The renaming of open_lth's fully-connected LeNet (``mnist_lenet_300_100``: ``fc_layers.0``,
    ``fc_layers.1``, ..., output ``fc``) onto ``model``'s linear layers, in order. ``UserError`` for a
    model with convolutions (open_lth's VGG and ResNet name their layers differently)."""
    if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules()):
        raise UserError(f"--name-map {OPEN_LTH} maps open_lth's fully-connected LeNet (fc_layers.N, fc); "
                        f"model {model_name!r} has convolutions: give --name-map SOURCE=TARGET,...")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return sorted([(f"fc_layers.{i}", name) for i, name in enumerate(linears[:-1])] + [("fc", linears[-1])],
                  key=lambda p: -len(p[0]))


def rename(names: list[str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    """``{old: new}`` for ``names`` under the longest-matching ``pairs`` (unmatched names unchanged)."""
    out = {}
    for name in names:
        new = name
        for source, target in pairs:
            if name == source or name.startswith(source + "."):
                new = target + name[len(source):]
                break
        out[name] = new
    return out


def _renamed(state: dict, pairs: list[tuple[str, str]], what: str) -> tuple[dict, dict[str, str]]:
    """``state`` under the new names, and ``{new name: old name}`` for the error messages."""
    names = rename(list(state), pairs)
    clashes = [n for n in set(names.values()) if list(names.values()).count(n) > 1]
    if clashes:
        raise UserError(f"--name-map gives two entries of the {what} the same name {sorted(clashes)[0]!r}")
    return {names[k]: v for k, v in state.items()}, {new: old for old, new in names.items()}


def _tensor_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items()):
        raise UserError(f"{path} is not a {what}: expected a dict from parameter name to tensor "
                        f"(torch.save(state_dict)), got {type(obj).__name__}"
                        + (" (empty)" if isinstance(obj, dict) and not obj else ""))
    return obj


def read_mask_file(path: Union[str, Path]) -> Mask:
    """The mask in ``path`` as ``{name: bool tensor}``, names as the file has them. Reads open_lth's
    ``mask.pth`` (name -> 0/1 tensor of any dtype), a toolkit mask file or checkpoint, and the state
    dict of a module pruned by ``torch.nn.utils.prune`` (its ``*_mask`` entries). Only tensors and
    plain values are unpickled (``weights_only``); every failure is a one-line ``UserError``."""
    from training.engine.checkpoint import FORMAT, safe_load
    from training.engine.runs import MASK_FORMAT

    path = Path(path)
    obj = safe_load(path, "mask file")
    if isinstance(obj, dict) and obj.get("format") in (FORMAT, MASK_FORMAT):
        if obj.get("mask") is None:
            raise UserError(f"{path} is a dense toolkit checkpoint: it has no mask")
        obj = obj["mask"]
    obj = _tensor_dict(obj, path, "mask file")
    if any(k.endswith(MASK) for k in obj):
        return mask_from_state_dict(obj)[1]
    bad = [k for k, v in obj.items() if bool(((v != 0) & (v != 1)).any())]
    if bad:
        raise UserError(f"{path}: mask entry {bad[0]!r} holds values other than 0 and 1"
                        + (f" (and {len(bad) - 1} more entries)" if len(bad) > 1 else ""))
    return {k: v != 0 for k, v in obj.items()}


def read_weights_file(path: Union[str, Path], what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path``: ``torch.save(model.state_dict())`` (open_lth's
    ``model_epE_itI.pth``), a state dict pruned by ``torch.nn.utils.prune`` (turned into plain
    weights, zero where pruned), or a toolkit checkpoint (its ``state_dict``)."""
    from training.engine.checkpoint import FORMAT, safe_load

    path = Path(path)
    obj = safe_load(path, what)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj.get("state_dict")
    state = _tensor_dict(obj, path, what)
    return mask_from_state_dict(state)[0] if any(k.endswith(ORIG) for k in state) else state


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _entry(name: str, sources: Optional[dict[str, str]]) -> str:
    """``'1.weight'``, or ``'fc_layers.0.weight' (mapped to '1.weight')`` when ``--name-map`` renamed
    it: the error then names the key as the user's file has it."""
    source = (sources or {}).get(name, name)
    return repr(name) if source == name else f"{source!r} (mapped to {name!r})"


def mask_problems(mask: Mask, model: nn.Module, sources: Optional[dict[str, str]] = None) -> list[str]:
    """Why ``mask`` does not fit ``model``, one phrase per entry (empty when it fits): a name that
    is not a parameter, a parameter the toolkit never masks (biases, normalisation), a shape.
    ``sources`` (``{model name: the file's name}``, for entries renamed by ``--name-map``) makes each
    phrase name the file's key too."""
    params = dict(model.named_parameters())
    prunable = set(prunable_names(model))
    problems = []
    for name, keep in mask.items():
        entry = _entry(name, sources)
        if name not in params:
            problems.append(f"{entry} is not a parameter of the model")
        elif name not in prunable:
            problems.append(f"{entry} is not a linear or convolution weight (the toolkit masks only those)")
        elif keep.shape != params[name].shape:
            problems.append(f"{entry} has shape {_shape(keep)}, the model's {_shape(params[name])}")
    return problems


def _names(keys: list[str], most: int = 4) -> str:
    return ", ".join(map(repr, keys[:most])) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _one_line(problems: list[str], head: str, hint: str) -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return f"{head}: {shown}{hint}"


def _build(model_name: str, dataset: str, seed: int) -> nn.Module:
    from training.data import dataset_spec
    from training.models import build_model

    spec = dataset_spec(dataset)
    return build_model(model_name, spec.classes, spec.shape, seed)


def _check_dataset(hp: DatasetHparams) -> None:
    """The checks ``load_dataset`` makes before reading anything, without reading anything."""
    from training.data import dataset_spec
    from training.hparams import check_fraction

    spec = dataset_spec(hp.dataset)
    if hp.val_fraction:
        check_fraction(hp.val_fraction, "--val-fraction", allow_zero=True)
    if spec.check is not None:
        spec.check(hp)


def _unused_map_sources(pairs: list[tuple[str, str]], names: list[str]) -> list[str]:
    return [s for s, _ in pairs if not any(n == s or n.startswith(s + ".") for n in names)]


def _flags(parser: argparse.ArgumentParser) -> None:
    from training.cli import add_threads_flag
    from training.hparams import add_flags

    parser.add_argument("mask", help="the mask: open_lth's mask.pth ({parameter name: 0/1 tensor}), a toolkit "
                                     "mask.pt, or the state dict of a model pruned by torch.nn.utils.prune")
    parser.add_argument("--model", required=True, help="the toolkit's model with that architecture "
                                                        "(python -m training list), e.g. lenet_300_100")
    parser.add_argument("--weights", help="the trained weights (torch.save(state_dict), e.g. open_lth's "
                                          "model_ep40_it0.pth): written as final.pt")
    parser.add_argument("--init", help="the weights the ticket starts from, W^0 (e.g. open_lth's "
                                       "model_ep0_it0.pth): written as init.pt. Without --init and --weights, "
                                       "init.pt holds the toolkit's own initialisation from --seed")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed when no weights are given "
                                                            "(default 0)")
    parser.add_argument("--name-map", help="rename the file's layers: SOURCE=TARGET,... on leading name "
                                           f"components (fc_layers.0=1,fc_layers.1=3,fc=5), or '{OPEN_LTH}' for "
                                           "open_lth's LeNet (fc_layers.N, fc) onto the model's linear layers")
    parser.add_argument("--out", default="imported", help="output folder (default: imported)")
    add_threads_flag(parser)
    add_flags(parser, ["dataset"])  # the data the network was trained on: its input shape and classes
    _describe_dataset_flag(parser)


def dataset_help() -> str:
    """``--dataset``'s help for import-mask: every registered dataset with the input shape and
    classes it gives the model (what decides whether a mask fits), and the default."""
    from training.data import DATASET_SPECS
    from training.hparams import DatasetHparams

    listed = ", ".join(f"{name} ({'x'.join(map(str, spec.shape))}, {spec.classes} classes)"
                       for name, spec in DATASET_SPECS.items())
    return (f"the dataset the network was trained on, which sets the model's input shape and classes: {listed} "
            f"(default: {DatasetHparams().dataset}); no data are read")


def _describe_dataset_flag(parser: argparse.ArgumentParser) -> None:
    """Replace the shared ``--dataset`` help, which names only some datasets, by ``dataset_help()``."""
    for action in parser._actions:
        if "--dataset" in action.option_strings:
            action.help = dataset_help()


def _prepare(args: argparse.Namespace):
    from training.cli import check_threads, set_threads, writable_dir
    from training.hparams import DatasetHparams
    from training.models import check_model_name

    check_threads(args.threads)
    check_model_name(args.model)
    known = set(DatasetHparams.__dataclass_fields__)
    hp = DatasetHparams(**{k: v for k, v in vars(args).items() if k in known})  # flags given, else defaults
    _check_dataset(hp)
    dataset = hp.dataset
    if args.seed < 0:
        raise UserError(f"--seed must be at least 0, got {args.seed}")
    builtin = args.name_map is not None and args.name_map.strip() == OPEN_LTH
    given = [] if builtin else parse_name_map(args.name_map)
    raw = read_mask_file(args.mask)
    if given:
        unused = _unused_map_sources(given, list(raw))
        if unused:
            raise UserError(f"--name-map source {unused[0]!r} names no entry of {args.mask} "
                            f"(its entries: {_names(list(raw), 6)})")
    model = _build(args.model, dataset, args.seed)
    pairs = open_lth_name_map(model, args.model) if builtin else given
    mask, mask_sources = _renamed(raw, pairs, "mask")
    problems = mask_problems(mask, model, mask_sources)
    if problems:
        raise UserError(_one_line(problems, f"{args.mask} does not fit model {args.model!r} on {dataset}",
                                  "; check --model, --dataset and --name-map"))
    expected = model.state_dict()
    states = {}
    for flag, path in (("--init", args.init), ("--weights", args.weights)):
        if path is None:
            continue
        state, sources = _renamed(read_weights_file(path, "weights file"), pairs, "weights")
        missing = [k for k in expected if k not in state]
        extra = [sources[k] for k in state if k not in expected]  # as the file names them
        problems = [f"{word} {_names(keys)}" for word, keys in (("missing", missing), ("unknown", extra)) if keys]
        problems += [f"{_entry(k, sources)} has shape {_shape(state[k])}, the model's {_shape(expected[k])}"
                     for k in expected if k in state and state[k].shape != expected[k].shape]
        if problems:
            raise UserError(_one_line(problems, f"{flag} {path} does not fit model {args.model!r} on {dataset}",
                                      "; check --model, --dataset and --name-map"))
        states[flag] = state
    out = writable_dir(args.out)

    def go() -> None:
        set_threads(args.threads)
        written = import_mask(mask, args.model, hp, out, init=states.get("--init"),
                              weights=states.get("--weights"), seed=args.seed,
                              source={"mask": str(args.mask), "init": args.init, "weights": args.weights,
                                      "name_map": args.name_map})
        kept, total = sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())
        print(f"{args.mask}: {len(mask)} masked layers, {kept} of {total} weights kept "
              f"({100 * kept / total:.2f}%), model {args.model} on {dataset}")
        if "--init" not in states and "--weights" not in states:
            print(f"no --init or --weights: init.pt holds the toolkit's initialisation of {args.model} "
                  f"from seed {args.seed}, not the source's weights")
        for path in written:
            print(f"wrote {path}")

    return go


def import_mask(mask: Mask, model_name: str, dataset: DatasetHparams, out: Union[str, Path], *,
                init: Optional[dict] = None, weights: Optional[dict] = None, seed: int = 0,
                source: Optional[dict] = None) -> list[Path]:
    """Write ``mask`` (toolkit names, bool tensors; prunable weights of ``model_name`` missing from it
    are kept dense) as toolkit files in folder ``out`` and return their paths:

    - ``mask.pt``: the mask file (``training.engine.runs.save_mask``);
    - ``init.pt``: a checkpoint at iteration 0 with weights ``init`` (a state dict of the model), or,
      when neither ``init`` nor ``weights`` is given, the toolkit's initialisation from ``seed``;
    - ``final.pt``: a checkpoint with the trained ``weights``, when given.

    Weights are stored zero where the mask prunes (``masked_weights`` ``"zero"``). ``meta`` names the
    algorithm ``import-mask``, level 0, and a ``run_hash`` computed from the mask and weights, so the
    analysis tools label the series ``import-mask-HASH6``. Files of an earlier import that this one
    does not write are removed. Shapes must fit (``mask_problems``); no data are loaded."""
    from training.data import dataset_spec
    from training.engine.checkpoint import atomic_save, make_checkpoint
    from training.engine.runs import save_mask
    from training.sparsity import masks as toolkit_masks

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = dataset_spec(dataset.dataset)
    model = _build(model_name, dataset.dataset, seed)
    problems = mask_problems(mask, model)
    if problems:
        raise UserError(_one_line(problems, f"the mask does not fit model {model_name!r} on {dataset.dataset}", ""))
    params = dict(model.named_parameters())
    full = {n: (mask[n].to(torch.bool) if n in mask else torch.ones_like(params[n], dtype=torch.bool))
            for n in prunable_names(model)}
    digest = hashlib.sha256(f"{model_name}|{sorted(vars(dataset).items())}|{seed}".encode())
    for part in (full, init or {}, weights or {}):
        for name in sorted(part):
            digest.update(name.encode())
            digest.update(part[name].detach().cpu().contiguous().numpy().tobytes())
    run_hash = digest.hexdigest()[:12]
    plan = {"init.pt": init if init is not None else (None if weights is not None else model.state_dict())}
    if weights is not None:
        plan["final.pt"] = weights
    written = [out / "mask.pt"]
    save_mask(full, out / "mask.pt")
    for file, state in plan.items():
        if state is None:
            continue
        model.load_state_dict(state)
        toolkit_masks.apply_mask(model, full)
        kind = file[:-3]
        ckpt = make_checkpoint(model, model_name=model_name, num_classes=spec.classes, input_shape=spec.shape,
                               seed=seed, dataset=dataset, mask=full, iteration=0, iterations_per_epoch=1,
                               meta={"run_hash": run_hash, "algorithm": "import-mask", "level": 0, "kind": kind,
                                     "seed": seed, "masked_weights": "zero", "imported": source or {}})
        atomic_save(ckpt, out / file)
        written.append(out / file)
    for stale in OUTPUTS:  # an earlier import's final.pt must not pass for this import's
        if out / stale not in written:
            (out / stale).unlink(missing_ok=True)
    return written


IMPORT_MASK = Command(
    "import-mask", "import a mask from open_lth (mask.pth) or torch.nn.utils.prune as a toolkit checkpoint",
    "Turn a mask written elsewhere into toolkit files that every analysis tool reads: open_lth's mask.pth "
    "({parameter name: 0/1 tensor}), or the state dict of a model pruned by torch.nn.utils.prune (*_orig, *_mask "
    "keys). Names and shapes are checked against --model (and the dataset) before anything is written. --out "
    "receives mask.pt, init.pt (W^0: --init, or the toolkit's initialisation from --seed) and, with --weights, "
    "final.pt. Layers of the model missing from the mask are kept dense.",
    "examples:\n"
    "  python -m training import-mask open_lth_data/lottery_X/replicate_1/level_3/main/mask.pth \\\n"
    "      --model lenet_300_100 --dataset mnist --name-map open_lth \\\n"
    "      --init .../level_3/main/model_ep0_it0.pth --weights .../level_3/main/model_ep40_it0.pth --out imported\n"
    "  python -m analysis.hessian imported/final.pt --top-k 5\n"
    "  python -m analysis.supermask imported/init.pt       # W^0 is read from imported/init.pt\n"
    "\n"
    "Python: training.interop.apply_mask(module, mask) prunes any nn.Module with\n"
    "torch.nn.utils.prune.custom_from_mask; mask_from_pruned, mask_from_state_dict and\n"
    "export_ticket(checkpoint, remove=True) go the other way.",
    _flags, _prepare, resumable=False, sweepable=False)
