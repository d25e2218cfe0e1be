"""Deep Compression of a toolkit checkpoint (Han, Mao & Dally, "Deep Compression: compressing deep
neural networks with pruning, trained quantization and Huffman coding", ICLR 2016): prune (keep
the source's mask, or Han et al.'s rule: per layer, drop the weights whose magnitude is at most
quality x the layer's weight standard deviation, then retrain under the mask), share weights by
k-means per layer and fine-tune the shared values, store sparse with relative indices and
Huffman-code both streams; report the size and test accuracy after each stage, per layer, as the
paper's Table 2 does.

Output folder ``OUT/compress-HASH/`` (HASH: the source's weights and mask and every setting)::

    pruned.pt           the pruned and retrained network (only with --prune-quality), a checkpoint
    quantised.pt        the result as an ordinary checkpoint: decoded shared values and the mask
    codebooks.pt        per layer its codebook, assignments and bit widths (torch.load, weights_only)
    model.lthz          the compressed file (header + Huffman-coded streams); decoded and checked
                        bit for bit against quantised.pt
    compression.json    everything: settings, per-layer and per-stage tables, file sizes, accuracies
    compression.csv     one row per layer and a total row (Table 2's columns)
    stages.csv          one row per stage: dense, pruned, +quantised, +Huffman

A finished folder is read back instead of recomputed; an interrupted one is computed again from
the start (a few seconds to minutes: cheap enough to redo).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from training.compression import storage
from training.compression.quantise import (bits_per_layer, check_bits, check_threshold, layer_kind, parse_layer_bits,
                                           share_weights, threshold_mask)
from training.errors import UserError

HAN = 'Han, Mao & Dally, "Deep Compression", ICLR 2016'
STAGES = ("dense", "pruned", "quantised", "huffman")
STAGE_LABELS = {"dense": "dense float32", "pruned": "pruned (P)", "quantised": "+quantised (P+Q)",
                "huffman": "+Huffman (P+Q+H)"}


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help, "choices": None})


@dataclass
class CompressionSettings:
    """What ``compress`` does; every field is a flag of ``python -m training compress``."""

    prune_quality: Optional[float] = _f(
        None, "prune first with Han et al.'s rule: per layer, keep the weights whose magnitude exceeds this "
              "many standard deviations of the layer's (kept) weights, then retrain under the mask; needed "
              "for a dense checkpoint")
    retrain: int = _f(10, "epochs of retraining under the pruning mask after --prune-quality")
    retrain_lr: Optional[float] = _f(
        None, "learning rate of retraining, constant (default: the rate of the last step of the source run's "
              "schedule)")
    conv_bits: int = _f(8, "bits per shared-weight code of convolutions, as Han et al.")
    fc_bits: int = _f(5, "bits per shared-weight code of fully connected layers, as Han et al.")
    layer_bits: str = _f("", "per-layer weight bits by glob on parameter names, e.g. 'classifier.*=4' "
                             "(first match wins)")
    conv_index_bits: int = _f(8, "bits per relative index of convolutions, as Han et al.")
    fc_index_bits: int = _f(5, "bits per relative index of fully connected layers, as Han et al.")
    centroid_epochs: int = _f(5, "epochs of fine-tuning the shared values (mask and assignments fixed)")
    centroid_lr: Optional[float] = _f(
        None, "learning rate of the shared values, constant (default: a tenth of the retraining rate)")


def check_settings(s: CompressionSettings) -> None:
    """``UserError`` (one line) for a setting outside its range."""
    check_threshold(s.prune_quality)
    for name in ("conv_bits", "fc_bits", "conv_index_bits", "fc_index_bits"):
        check_bits(getattr(s, name), "--" + name.replace("_", "-"))
    for name in ("retrain", "centroid_epochs"):
        if getattr(s, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} (epochs) must be at least 0, got {getattr(s, name)}")
    for name in ("retrain_lr", "centroid_lr"):
        value = getattr(s, name)
        if value is not None and not (math.isfinite(value) and 0 < value <= 3.4e38):
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")


def resolve_source(source: str | Path, level: Optional[int] = None) -> Path:
    """The checkpoint to compress: ``source`` itself, or for a run folder its ``level_L/final.pt``
    (default: its last finished level). ``UserError`` (one line) otherwise."""
    from training.engine.runs import read_run_config

    path = Path(source)
    if not path.exists():
        raise UserError(f"{path} does not exist; give a checkpoint (.pt) or a run folder")
    if not path.is_dir():
        if level is not None:
            raise UserError(f"--level picks a level of a run folder; {path} is a checkpoint file")
        return path
    read_run_config(path)
    done = sorted(int(d.name[6:]) for d in path.glob("level_*")
                  if d.name[6:].isdigit() and (d / "final.pt").exists())
    if not done:
        raise UserError(f"run folder {path} has no finished level (no level_L/final.pt)")
    if level is None:
        level = done[-1]
    elif level not in done:
        raise UserError(f"--level {level} is not a finished level of {path}; finished: {', '.join(map(str, done))}")
    return path / f"level_{level}" / "final.pt"


@dataclass
class Plan:
    """A checked compression: the source checkpoint, its mask, the bit widths, the output folder."""

    source: Path
    checkpoint: dict
    mask: dict
    weight_bits: dict[str, int]
    index_bits: dict[str, int]
    settings: CompressionSettings
    dir: Path


def plan(source: str | Path, settings: CompressionSettings, level: Optional[int] = None,
         out: str | Path = "runs") -> Plan:
    """Check everything before any work (source, settings, bit widths and globs, a writable
    ``out``); return the plan. ``UserError`` (one line) otherwise."""
    from training.cli import writable_dir
    from training.engine.branches import tensor_digest
    from training.engine.checkpoint import masked_weights_are_zero, model_from_checkpoint, read_checkpoint
    from training.sparsity.masks import dense_mask

    check_settings(settings)
    path = resolve_source(source, level)
    ckpt = read_checkpoint(path)
    if not masked_weights_are_zero(ckpt):
        raise UserError(f"{path} keeps the weights outside its mask frozen (RISE), not zero: storing only the mask's "
                        "weights would change the network; compress an IMP/LOT/CS ticket instead")
    model = model_from_checkpoint(ckpt, path)
    mask = ckpt["mask"] if ckpt["mask"] is not None else dense_mask(model)
    if settings.prune_quality is None and all(bool(m.all()) for m in mask.values()):
        raise UserError(f"{path} is dense (no weight pruned) and no pruning rule was given; add --prune-quality Q "
                        "(Han et al.'s threshold: Q standard deviations of each layer's weights) or give a pruned "
                        "checkpoint")
    names = list(mask)
    rules = parse_layer_bits(settings.layer_bits, names)
    weight_bits = bits_per_layer(model, names, settings.conv_bits, settings.fc_bits, rules)
    index_bits = bits_per_layer(model, names, settings.conv_index_bits, settings.fc_index_bits, [])
    root = writable_dir(out)
    # the training configuration too: retraining and centroid fine-tuning use its batch size,
    # optimizer and data, so two sources with equal weights but other settings are other folders
    identity = json.dumps({"weights": tensor_digest(ckpt["state_dict"]),
                           "mask": tensor_digest({k: v.to(torch.uint8) for k, v in mask.items()}),
                           "settings": dataclasses.asdict(settings),
                           "config": (ckpt.get("meta") or {}).get("config")}, sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return Plan(path, ckpt, mask, weight_bits, index_bits, settings, root / f"compress-{digest}")


@dataclass
class Compressed:
    """A finished compression: its folder and its report (``compression.json``'s contents)."""

    dir: Path
    report: dict


def _phase_hparams(training, epochs: int, lr: Optional[float], iterations_per_epoch: int):
    """The run's training hyperparameters for ``epochs`` epochs at constant rate ``lr`` (None: the
    last rate of the run's schedule), without early stopping."""
    from training.algorithms.imp import finetune_hparams
    from training.hparams import PruningHparams

    hp = finetune_hparams(training, PruningHparams(finetune=max(epochs, 1), finetune_lr=lr), iterations_per_epoch)
    return dataclasses.replace(hp, early_stopping=None, eval_every=f"{max(epochs, 1)}ep")


def run(p: Plan, *, data_dir: Optional[str] = None, device: str = "auto", progress: bool = True) -> Compressed:
    """Carry out plan ``p`` (or read back its finished folder); return the result."""
    from training.engine.checkpoint import atomic_save, atomic_write_text, load, make_checkpoint
    from training.engine.loop import evaluate, train
    from training.engine.runs import FolderLock, resolve_device
    from training.hparams import Config, DatasetHparams
    from training.models import build_model
    from training.sparsity.masks import apply_mask, plain_weights_and_mask

    report_path = p.dir / "compression.json"
    if report_path.exists():
        return Compressed(p.dir, json.loads(report_path.read_text()))
    clock = time.perf_counter()
    dev = resolve_device(device)
    loaded = load(p.source, dev, data_dir)  # a missing dataset is refused before the folder exists
    p.dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(p.dir)
    try:
        model, data, ckpt = loaded.model, loaded.dataset, p.checkpoint
        meta = ckpt["meta"]
        config = Config.from_dict(meta["config"]) if isinstance(meta.get("config"), dict) else Config()
        ipe = -(-len(data.train) // max(1, config.training.batch_size))
        s = p.settings
        accuracy: dict[str, float] = {"source": evaluate(model, data.test)[1]}
        mask = {k: v.to(dev) for k, v in p.mask.items()}
        spec = ckpt["model"]
        known = set(DatasetHparams.__dataclass_fields__)
        dataset_hp = DatasetHparams(**{k: v for k, v in ckpt["dataset"].get("hparams", {}).items() if k in known})

        def checkpoint_of(net, kind: str, results: dict, extra: dict) -> dict:
            return make_checkpoint(net, model_name=spec["name"], num_classes=spec["num_classes"],
                                   input_shape=tuple(spec["input_shape"]), seed=spec.get("seed", 0),
                                   dataset=dataset_hp, mask=mask, iteration=int(ckpt["step"]["iteration"]),
                                   iterations_per_epoch=int(ckpt["step"]["iterations_per_epoch"]),
                                   meta={"run_hash": p.dir.name.rsplit("-", 1)[-1], "algorithm": "compress",
                                         "level": meta.get("level", 0), "kind": kind, "seed": meta.get("seed", 0),
                                         "config": config.to_dict(), "masked_weights": "zero",
                                         "results": results, "source": str(p.source), **extra})

        retrain_hp = _phase_hparams(config.training, s.retrain, s.retrain_lr, ipe)
        if (s.retrain or s.centroid_epochs) and s.retrain_lr is None and retrain_hp.lr < 0.01 * config.training.lr:
            print(f"warning: the source run's schedule ends at lr {retrain_hp.lr:.3g} ({config.training.lr:g} at its "
                  f"peak), so retraining and centroid fine-tuning barely move the weights; give --retrain-lr "
                  f"(and --centroid-lr)", file=sys.stderr)
        if s.prune_quality is not None:
            mask = threshold_mask(model.state_dict(), mask, s.prune_quality)
            apply_mask(model, mask)
            accuracy["pruned_before_retraining"] = evaluate(model, data.test)[1]
            if s.retrain:
                train(model, data, retrain_hp, mask=mask, progress=progress)
            loss, accuracy["pruned"] = evaluate(model, data.test)
            atomic_save(checkpoint_of(model, "pruned", {"test_accuracy": accuracy["pruned"], "test_loss": loss},
                                      {"prune_quality": s.prune_quality, "retrain_epochs": s.retrain}),
                        p.dir / "pruned.pt")
        else:
            accuracy["pruned"] = accuracy["source"]

        forms = share_weights(model, mask, p.weight_bits)
        accuracy["quantised_before_finetuning"] = evaluate(model, data.test)[1]
        if s.centroid_epochs:
            lr = s.centroid_lr if s.centroid_lr is not None else retrain_hp.lr / 10
            # no weight decay on the shared values: Han et al. fine-tune the centroids by the loss alone
            centroid_hp = dataclasses.replace(_phase_hparams(config.training, s.centroid_epochs, lr, ipe), weight_decay=0.0)
            train(model, data, centroid_hp, progress=progress)
        accuracy["quantised"] = evaluate(model, data.test)[1]

        state, _ = plain_weights_and_mask(model)
        state = {k: v.cpu() for k, v in state.items()}
        for name, form in forms.items():
            state[name] = form.decoded().cpu()
        plain = build_model(spec["name"], spec["num_classes"], tuple(spec["input_shape"]), spec.get("seed", 0))
        plain.load_state_dict(state)
        settings = dataclasses.asdict(s)
        atomic_save(checkpoint_of(plain, "quantised", {"test_accuracy": accuracy["quantised"]},
                                  {"compression": {"settings": settings, "weight_bits": p.weight_bits}}),
                    p.dir / "quantised.pt")
        atomic_save({"format": "lth-toolkit/codebooks", "layers": {
            name: {"codebook": form.codebook.detach().cpu().clone(), "assign": form.assign.cpu().clone(),
                   "mask": form.keep.cpu().clone(), "weight_bits": p.weight_bits[name],
                   "index_bits": p.index_bits[name]} for name, form in forms.items()}}, p.dir / "codebooks.pt")

        codes = [storage.encode_layer(name, form.keep, form.codebook, form.assign, p.weight_bits[name],
                                      p.index_bits[name]) for name, form in forms.items()]
        others = storage.other_tensors(state, set(forms))
        header = {"model": spec, "dataset": ckpt["dataset"], "source": str(p.source)}
        file_bytes = storage.write_lthz(p.dir / "model.lthz", codes, others, header)
        _, decoded, decoded_mask = storage.read_lthz(p.dir / "model.lthz")
        exact = check_bit_exact(state, {k: v.cpu() for k, v in mask.items()}, decoded, decoded_mask)
        plain.load_state_dict(decoded)
        plain.to(dev).eval()
        accuracy["huffman"] = evaluate(plain, data.test)[1]

        report = make_report(p, codes, others, state, plain, accuracy, file_bytes)
        report["decoded_bit_exact"] = exact
        report["seconds"] = round(time.perf_counter() - clock, 1)
        write_tables(p.dir, report)
        atomic_write_text(report_path, json.dumps(report, indent=1, allow_nan=False) + "\n")
        return Compressed(p.dir, report)
    finally:
        lock.release()


def check_bit_exact(state: dict, mask: dict, decoded: dict, decoded_mask: dict) -> bool:
    """True when every tensor decoded from the file equals the quantised one bit for bit (float
    tensors compared as their integer bit patterns) and the masks agree; ``CompressionBug``
    (a one-line error naming the tensor) otherwise. Not an ``assert``: ``python -O`` keeps it."""
    if decoded.keys() != state.keys():
        raise CompressionBug("the .lthz file does not hold the same tensors as the quantised network")
    for name, value in state.items():
        a, b = value.contiguous(), decoded[name].contiguous()
        same = a.dtype == b.dtype and a.shape == b.shape and (
            torch.equal(a.view(torch.int32), b.view(torch.int32)) if a.dtype == torch.float32 else torch.equal(a, b))
        if not same:
            raise CompressionBug(f"{name} decoded from the .lthz file differs from the quantised weights")
    for name, keep in mask.items():
        if not torch.equal(keep.bool(), decoded_mask[name]):
            raise CompressionBug(f"{name}: the mask decoded from the .lthz file differs")
    return True


class CompressionBug(UserError):
    """The written file does not decode to what was encoded: a bug in the toolkit (please report it);
    the folder is left unfinished."""


def make_report(p: Plan, codes: list, others: dict, state: dict, model, accuracy: dict, file_bytes: int) -> dict:
    """The Table-2 accounting: per-layer rows (plus ``total``) and per-stage rows; sizes in bits
    and bytes, rates as fractions of the dense float32 size, accuracies as fractions."""
    other_bits = storage.tensor_bits(others)
    dense_total = storage.dense_bits(state)
    rows, sums = [], {k: 0.0 for k in ("dense", "pruned", "quantised", "huffman", "codebook")}
    totals = dict(weights=0, kept=0, fillers=0, entries=0, wq=0.0, wh=0.0, iq=0.0, ih=0.0)
    for code in codes:
        bits = storage.layer_bits(code)
        for k in sums:
            sums[k] += bits[k]
        entries = code.entries
        rows.append(dict(layer=code.name, kind=layer_kind(model, code.name), weights=code.numel, kept=code.kept,
                         fraction_kept=code.kept / code.numel, fillers=code.fillers, centroids=len(code.codebook),
                         weight_bits=code.weight_bits, weight_bits_huffman=bits["weight_bits_huffman"],
                         index_bits=code.index_bits, index_bits_huffman=bits["index_bits_huffman"],
                         codebook_bits=bits["codebook"], bits_dense=bits["dense"], bits_pruned=bits["pruned"],
                         bits_quantised=bits["quantised"], bits_huffman=bits["huffman"],
                         rate_pruned=bits["pruned"] / bits["dense"], rate_quantised=bits["quantised"] / bits["dense"],
                         rate_huffman=bits["huffman"] / bits["dense"]))
        totals["weights"] += code.numel
        totals["kept"] += code.kept
        totals["fillers"] += code.fillers
        totals["entries"] += entries
        totals["wq"] += code.weight_bits * entries
        totals["wh"] += code.weight_stream[1]
        totals["iq"] += code.index_bits * entries
        totals["ih"] += code.index_stream[1]
    n = max(totals["entries"], 1)
    stage_bits = {"dense": float(dense_total), **{k: sums[k] + other_bits for k in ("pruned", "quantised", "huffman")}}
    rows.append(dict(layer="total", kind="", weights=totals["weights"], kept=totals["kept"],
                     fraction_kept=totals["kept"] / max(totals["weights"], 1), fillers=totals["fillers"],
                     centroids=sum(len(c.codebook) for c in codes), weight_bits=totals["wq"] / n,
                     weight_bits_huffman=totals["wh"] / n, index_bits=totals["iq"] / n,
                     index_bits_huffman=totals["ih"] / n, codebook_bits=sums["codebook"],
                     bits_dense=float(dense_total), bits_pruned=stage_bits["pruned"],
                     bits_quantised=stage_bits["quantised"], bits_huffman=stage_bits["huffman"],
                     rate_pruned=stage_bits["pruned"] / dense_total, rate_quantised=stage_bits["quantised"] / dense_total,
                     rate_huffman=stage_bits["huffman"] / dense_total, other_bits=float(other_bits)))
    acc = {"dense": accuracy["source"], "pruned": accuracy["pruned"], "quantised": accuracy["quantised"],
           "huffman": accuracy["huffman"]}
    stages = [dict(stage=k, label=STAGE_LABELS[k], bits=stage_bits[k], bytes=stage_bits[k] / 8,
                   rate=stage_bits[k] / dense_total, factor=dense_total / stage_bits[k], test_accuracy=acc[k])
              for k in STAGES]
    stages[-1]["file_bytes"] = file_bytes
    return {"paper": HAN, "source": str(p.source), "folder": str(p.dir),
            "model": p.checkpoint["model"]["name"], "settings": dataclasses.asdict(p.settings),
            "weight_bits": p.weight_bits, "index_bits": p.index_bits, "layers": rows, "stages": stages,
            "accuracy": accuracy, "other_tensors_bits": other_bits,
            "file": {"path": str(p.dir / "model.lthz"), "bytes": file_bytes,
                     "computed_bytes": stage_bits["huffman"] / 8,
                     "overhead_bytes": file_bytes - stage_bits["huffman"] / 8},
            "decoded_bit_exact": None}  # set by run() from check_bit_exact


def write_tables(folder: Path, report: dict) -> None:
    """``compression.csv`` (per layer and total) and ``stages.csv`` (per stage) for pandas."""
    from training.engine.checkpoint import atomic_write_text, csv_text

    atomic_write_text(folder / "compression.csv", csv_text(report["layers"]))
    atomic_write_text(folder / "stages.csv", csv_text(report["stages"]))


def format_report(report: dict) -> str:
    """The printed tables: per layer as the paper's Table 2, then per stage with test accuracy."""
    width = max(12, *(len(r["layer"]) for r in report["layers"]))
    lines = [f"{'layer':<{width}}  {'weights':>8}  {'kept':>6}  {'weight bits P+Q/+H':>18}  "
             f"{'index bits P+Q/+H':>17}  {'rate P+Q / +H':>17}  {'fillers':>7}"]
    for r in report["layers"]:
        huffman_rate = f"{100 * r['rate_huffman']:.2f}%"
        lines.append(f"{r['layer']:<{width}}  {r['weights']:>8}  {100 * r['fraction_kept']:>5.1f}%  "
                     f"{r['weight_bits']:>8.1f} / {r['weight_bits_huffman']:<7.2f}  "
                     f"{r['index_bits']:>7.1f} / {r['index_bits_huffman']:<7.2f}  "
                     f"{100 * r['rate_quantised']:>6.2f}% / {huffman_rate:<7}  {r['fillers']:>7}")
    lines.append(f"(total: biases and other tensors stored as float32, {report['other_tensors_bits'] / 8:.0f} bytes)")
    lines.append("")
    lines.append(f"{'stage':<18}  {'size':>10}  {'of dense':>8}  {'factor':>7}  {'test acc':>8}")
    for st in report["stages"]:
        lines.append(f"{st['label']:<18}  {st['bytes'] / 1000:>7.2f} kB  {100 * st['rate']:>7.2f}%  "
                     f"{st['factor']:>6.1f}x  {100 * st['test_accuracy']:>7.2f}%")
    f = report["file"]
    lines.append(f"file {f['path']}: {f['bytes']} bytes (computed {f['computed_bytes']:.0f}; header, code tables "
                 f"and byte padding {f['overhead_bytes']:.0f}); decoded weights equal the quantised ones bit for bit")
    return "\n".join(lines)


def compress(source: str | Path, settings: Optional[CompressionSettings] = None, level: Optional[int] = None, *,
             out: str | Path = "runs", data_dir: Optional[str] = None, device: str = "auto",
             progress: bool = True) -> Compressed:
    """Compress checkpoint (or run folder) ``source`` with ``settings``; return the result, whose
    ``report`` holds the tables (and whose folder holds the files listed in this module's doc)."""
    return run(plan(source, settings or CompressionSettings(), level, out), data_dir=data_dir, device=device,
               progress=progress)
