"""``python -m training compress CKPT_OR_RUN``: Deep Compression of a checkpoint (Han, Mao & Dally)."""
from __future__ import annotations

import argparse
import dataclasses

from training.cli import add_threads_flag, check_threads, set_threads
from training.commands import Command
from training.compression.pipeline import HAN, CompressionSettings, compress, format_report, plan, run
from training.errors import UserError


def _flags(parser: argparse.ArgumentParser) -> None:
    from training.hparams import add_dataclass_flags

    parser.add_argument("source", metavar="CKPT_OR_RUN", help="a checkpoint (.pt) or a run folder")
    parser.add_argument("--level", type=int, help="with a run folder: the level whose final.pt is compressed "
                        "(default: the last finished one)")
    parser.add_argument("--preset", help="settings of a paper's setup (python -m training list); flags override it")
    parser.add_argument("--out", default="runs", help="folder that holds the compress-HASH folder (default: runs)")
    parser.add_argument("--data-dir", help="dataset folder (default: $LTH_DATA_DIR, else ./data)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_threads_flag(parser, default=1, help="CPU threads for torch (default: 1, as the run commands: the numbers "
                     "do not depend on the machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or summary table")
    add_dataclass_flags(parser.add_argument_group("compression"), CompressionSettings)


def settings_from(args: argparse.Namespace) -> CompressionSettings:
    """Dataclass defaults, then the preset's values for these fields, then the flags given."""
    from training.presets import preset_values

    values = preset_values(args.preset) if args.preset else {}
    given = vars(args)
    kwargs = {}
    for f in dataclasses.fields(CompressionSettings):
        if f.name in given:
            kwargs[f.name] = given[f.name]
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return CompressionSettings(**kwargs)


def _prepare(args: argparse.Namespace):
    from training.engine.runs import resolve_device

    check_threads(args.threads)
    resolve_device(args.device)
    checked = plan(args.source, settings_from(args), args.level, args.out)

    def go():
        set_threads(args.threads)
        result = run(checked, data_dir=args.data_dir, device=args.device, progress=not args.no_progress)
        if not args.no_progress:
            print(format_report(result.report))
        return result

    return go


COMPRESS = Command(
    "compress", "Deep Compression of a ticket: prune, share weights by k-means, Huffman-code (Han, Mao & Dally)",
    f"Compress a checkpoint as {HAN} do: keep its mask (or prune a dense one with --prune-quality and retrain), "
    "quantise each layer by k-means weight sharing and fine-tune the shared values, store the kept weights with "
    "relative indices and Huffman-code both streams. Prints the paper's Table 2 accounting per layer and the size "
    "and test accuracy after each stage; writes OUT/compress-HASH/ with quantised.pt (an ordinary checkpoint every "
    "analysis tool reads), codebooks.pt, model.lthz (the compressed file), compression.json/.csv and stages.csv. "
    "A finished folder is read back; an interrupted one is computed again.",
    "examples:\n"
    "  python -m training compress runs/imp-f6ec9936304d --level 4     # an IMP ticket: quantise + Huffman\n"
    "  python -m training compress runs/train-HASH --prune-quality 1.0  # dense: Han et al.'s threshold, retrain\n"
    "  python -m training compress RUN --fc-bits 4 --layer-bits 'features.0.*=6'\n"
    "  python -m training train --preset deep_compression_lenet300 --data-dir ~/datasets   # then:\n"
    "  python -m training compress runs/train-HASH --preset deep_compression_lenet300 --data-dir ~/datasets",
    _flags, _prepare, resumable=False, sweepable=False)


__all__ = ["COMPRESS", "compress", "UserError"]
