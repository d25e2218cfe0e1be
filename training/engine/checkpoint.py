"""Self-describing checkpoints, and the atomic file writes every part of a run uses.

A checkpoint is a plain dict that ``torch.load(path, weights_only=True)`` reads::

    format        "lth-toolkit/checkpoint"
    version       1
    model         {"name", "num_classes", "input_shape", "seed"}
    dataset       {"name", "hparams"}      (DatasetHparams fields; enough to load the data again)
    state_dict    the model's state dict (CPU tensors)
    mask          {parameter name: bool tensor} or None for a dense model
    step          {"iteration", "epoch", "iterations_per_epoch"}
    meta          {"run_hash", "algorithm", "level", "seed", "density", "kind", "masked_weights", ...}

``meta["masked_weights"]`` says what the weights outside the mask hold: ``"zero"`` (pruned) or
``"frozen"`` (RISE, Tartaglione 2022, eq. 2: trained only inside the mask, the rest kept at W^k).

``load(path)`` turns one back into a ready model and its dataset, so an analysis tool needs no
other argument.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from training.data import Dataset, load_dataset
from training.errors import UserError
from training.hparams import DatasetHparams
from training.sparsity.masks import Mask, apply_mask, check_mask, density, plain_weights_and_mask, weight_forms
from training.models import build_model

FORMAT = "lth-toolkit/checkpoint"
VERSION = 1
REQUIRED = ("model", "dataset", "state_dict", "mask", "step", "meta")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Under torchrun only rank 0 writes (``training.engine.distributed``): on the other ranks this
    does nothing, so every writer of a run's files writes them once."""
    from training.engine import distributed

    if not distributed.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give what open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV text with a header: every key of any row, in order of first appearance
    (a row without a key leaves its cell empty), as pandas reads it."""
    import csv
    import io

    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, names)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


ZIP_MAGIC = b"PK\x03\x04"


def _is_torch_zip(path: Path, head: bytes) -> bool:
    """Whether ``path`` is (or, cut short, was) a ``torch.save`` zip archive: torch writes
    ``ARCHIVE/data.pkl`` as its first entry."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("data.pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    if len(head) >= 30:  # truncated: no central directory, read the first local header instead
        name_length = int.from_bytes(head[26:28], "little")
        return head[30 : 30 + name_length].endswith(b"data.pkl")
    return False


def file_kind(path: Path) -> Optional[str]:
    """What ``path`` seems to hold when it is not a ``torch.save`` archive, in words ("a JSON text
    file", "an empty file", ...); ``None`` when it is a torch archive, whole or truncated, or
    unrecognised binary data (which may be a damaged checkpoint)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head:
        return "an empty file (0 bytes)"
    if head.startswith(ZIP_MAGIC):
        if _is_torch_zip(path, head):
            return None
        return "a numpy .npz archive" if b".npy" in head else "a zip archive that torch.save did not write"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file (pickle.dump, or torch.save's pre-1.6 format), not a torch.save zip archive"
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the end of the sample
            return None
        text = head[: exc.start].decode("utf-8")
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        whole = path.stat().st_size <= len(head)
        if whole:
            try:
                json.loads(text)
                return "a JSON text file"
            except ValueError:
                pass
        lines = [l for l in text.splitlines() if l.strip()]
        complete = lines if whole else lines[:-1]  # the sample may end inside the last line
        try:
            if len(complete) > 1 or (whole and complete):
                for line in complete:
                    json.loads(line)
                return "a JSON-lines text file"
        except ValueError:
            pass
        return "a text file" if whole else "a JSON text file"
    return "a text file"


def _recovery(path: Path, what: str) -> str:
    """How to get past an unreadable ``what`` at ``path``, for the end of an error message."""
    if what == "resume state":
        found = re.fullmatch(r"level_(\d+)", path.parent.name)
        level = f"level {found.group(1)}" if found else "its level"
        return f"; delete {path} to restart {level} from its start"
    return ""


def safe_load(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with each failure turned into a one-line error.

    A file that is not a torch archive at all (JSON, text, numpy, ...) is named as what it seems
    to be; "corrupt or truncated" is kept for torch archives that fail to load. For a ``what`` of
    ``"resume state"`` the message says how to recover (delete the file to restart the level)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give the path of a .pt file inside it")
    hint = _recovery(path, what)
    try:
        kind = file_kind(path)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror or exc}{hint}") from None
    if kind is not None:
        advice = hint or "; give a .pt file written by this toolkit"
        raise UserError(f"{path} is not a {what}: it seems to be {kind}{advice}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise UserError(f"{path} is corrupt or truncated and cannot be read as a {what} "
                        f"(not a complete torch.save archive){hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        culprit = f" ({found.group(1)})" if found else ""
        raise UserError(f"{path} holds pickled objects that are not plain tensors or values{culprit}; "
                        f"refusing to load it{hint}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{path} is corrupt or truncated and cannot be read as a {what} "
                        f"({type(exc).__name__}){hint}") from None


def make_checkpoint(model: nn.Module, *, model_name: str, num_classes: int, input_shape: tuple[int, ...],
                    seed: int, dataset: DatasetHparams, mask: Optional[Mask], iteration: int,
                    iterations_per_epoch: int, meta: dict) -> dict:
    """Build the checkpoint dict for ``model`` at ``iteration``.

    A model whose weights are formed by learned masks (``training.sparsity.masks.WeightForm``) is stored as
    every checkpoint is: its raw weights under the plain model's names (zero outside the mask unless
    ``meta["masked_weights"]`` says otherwise) and the binary mask, ANDed with ``mask``, so that every
    tool reads it."""
    if weight_forms(model):
        state, learned = plain_weights_and_mask(model)
        mask = learned if mask is None else {k: mask[k].to(learned[k].device) & learned[k] for k in mask}
        if meta.get("masked_weights", "zero") == "zero":
            state.update({k: torch.where(m, state[k], torch.zeros((), dtype=state[k].dtype, device=state[k].device))
                          for k, m in mask.items()})
    else:
        state = model.state_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name, "num_classes": int(num_classes), "input_shape": list(input_shape),
                  "seed": int(seed)},
        "dataset": {"name": dataset.dataset, "hparams": dict(vars(dataset))},
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
        "mask": None if mask is None else {k: v.detach().cpu().clone() for k, v in mask.items()},
        "step": {"iteration": int(iteration), "epoch": iteration / iterations_per_epoch,
                 "iterations_per_epoch": int(iterations_per_epoch)},
        "meta": {"density": 1.0 if mask is None else density(mask), **meta},
    }


def read_checkpoint(path: Path) -> dict:
    """Load and validate a checkpoint dict; raise ``UserError`` if it is not one of ours."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this toolkit (no '{FORMAT}' format tag)")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(f"{path} has checkpoint version {ckpt['version']}; this toolkit reads up to "
                        f"{VERSION}: upgrade the toolkit")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise UserError(f"{path} is missing the fields {', '.join(missing)}; it is damaged")
    return ckpt


@dataclass
class Loaded:
    model: nn.Module
    mask: Optional[Mask]
    dataset: Optional[Dataset]
    checkpoint: dict


def model_from_checkpoint(ckpt: dict, path: Path | str = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (on the CPU)."""
    spec = ckpt["model"]
    model = build_model(spec["name"], spec["num_classes"], tuple(spec["input_shape"]), spec.get("seed", 0))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit model {spec['name']!r} "
                        f"({str(exc).splitlines()[0][:200]})") from None
    if ckpt["mask"] is not None:
        check_mask(ckpt["mask"], model)
    return model


def masked_weights_are_zero(ckpt: dict) -> bool:
    """False for RISE checkpoints, whose weights outside the mask are frozen, not zero."""
    return ckpt["meta"].get("masked_weights", "zero") == "zero"


def load(path: Path | str, device: str | torch.device = "cpu", data_dir: Optional[str] = None,
         with_data: bool = True) -> Loaded:
    """Return the checkpoint at ``path`` as a ready model (eval mode, on ``device``), its mask and
    its dataset (unless ``with_data`` is False)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    mask = ckpt["mask"]
    if masked_weights_are_zero(ckpt):
        apply_mask(model, mask)
    model.to(device).eval()
    dataset = None
    if with_data:
        known = set(DatasetHparams.__dataclass_fields__)
        hp = DatasetHparams(**{k: v for k, v in ckpt["dataset"].get("hparams", {}).items() if k in known})
        dataset = load_dataset(hp, data_dir).to(device)
    if mask is not None:
        mask = {k: v.to(device) for k, v in mask.items()}
    return Loaded(model, mask, dataset, ckpt)
