"""Datasets as tensors, read from local files in their standard formats; no network, ever.

- ``mnist1d``: generated with ``mnist1d.data.make_dataset`` and cached as ``.npz`` in the data folder.
- ``mnist``: the four idx files (optionally ``.gz``) in ``DATA/mnist/``.
- ``cifar10`` / ``cifar100``: the python-pickle batches in ``DATA/cifar-10-batches-py/`` and
  ``DATA/cifar-100-python/``, read with an unpickler that only builds numpy arrays.

The data folder is ``--data-dir``, else ``$LTH_DATA_DIR``, else ``./data``.
Small datasets live on the training device; batching and augmentation run there too.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from training.errors import UserError
from training.hparams import DatasetHparams, check_fraction
from training.engine.seeding import generator

if TYPE_CHECKING:
    from training.imagenet import ImageFolderSplit, ImageFolderTrainBatches

DATA_DIR_ENV = "LTH_DATA_DIR"
VALIDATION_SPLIT_SEED = 0  # fixed so that every run of a dataset holds out the same examples


def data_dir(path: Optional[str | os.PathLike] = None) -> Path:
    """Return the data folder: ``path``, else ``$LTH_DATA_DIR``, else ``./data``."""
    return Path(path or os.environ.get(DATA_DIR_ENV) or "data").expanduser().absolute()


def _data_dir_source(path: Optional[str | os.PathLike]) -> str:
    """How the user named the data folder, for error messages."""
    if path:
        return "--data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return f"${DATA_DIR_ENV}"
    return "the data folder"


def check_data_dir(folder: Path, source: str, create: bool) -> None:
    """Raise ``UserError`` (one line naming ``source``) unless ``folder`` is a readable folder.

    With ``create`` (a dataset this toolkit generates and caches there) a missing folder is
    created and must be writable; otherwise a missing folder is left to the dataset's own "not
    found" message, which says which files to put where."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{source} {folder} is a file, not a folder; give the folder that holds the datasets")
    if create:
        from training.cli import writable_dir

        writable_dir(folder, source)
    if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"{source} {folder} cannot be read (permission denied)")


@dataclass
class Split:
    x: torch.Tensor  # float32, (N, *input_shape)
    y: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        """Where the split's tensors are (a streamed split, ``training.imagenet``, has one too)."""
        return self.x.device

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    val: Optional[Split]
    num_classes: int
    input_shape: tuple[int, ...]
    augment: bool

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(
            self.name, self.train.to(device), self.test.to(device),
            None if self.val is None else self.val.to(device),
            self.num_classes, self.input_shape, self.augment,
        )


# ---------------------------------------------------------------------------------------------
# Readers for the on-disk formats


def _read_mnist1d(folder: Path, samples: int) -> tuple[np.ndarray, ...]:
    path = folder / f"mnist1d_{samples}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = samples
        # make_dataset reseeds the global numpy and random generators; leave them as they were.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        folder.mkdir(parents=True, exist_ok=True)
        # a name of its own, so that two processes making the same cache never write one file
        tmp = folder / f".mnist1d_{samples}.{os.getpid()}.tmp.npz"
        try:
            np.savez(tmp, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    with np.load(path) as f:
        return f["x"], f["y"], f["x_test"], f["y_test"]


MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format: big-endian header, then raw unsigned bytes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise UserError(f"{path} is not an idx file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data")
    return body.reshape(dims)


def _find(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.exists():
            return candidate
    return None


def _read_mnist(root: Path) -> tuple[np.ndarray, ...]:
    for folder in (root / "mnist", root / "MNIST" / "raw", root):
        paths = {key: _find(folder, name) for key, name in MNIST_FILES.items()}
        if all(paths.values()):
            arrays = {key: read_idx(p) for key, p in paths.items()}
            return (arrays["train_x"][:, None], arrays["train_y"],
                    arrays["test_x"][:, None], arrays["test_y"])
    raise UserError(
        f"MNIST not found: put {', '.join(MNIST_FILES.values())} (or .gz) in {root / 'mnist'}"
        f" (set --data-dir or ${DATA_DIR_ENV})"
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds the dicts, bytes and numpy arrays of the CIFAR batches and nothing else."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise UserError(f"{path} is not a CIFAR python batch ({exc})") from None
    if len(data) != len(labels):
        raise UserError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def _read_cifar(root: Path, name: str) -> tuple[np.ndarray, ...]:
    subdir, train_files, test_files, key = CIFAR_LAYOUT[name]
    folder = root / subdir
    missing = [f for f in train_files + test_files if not (folder / f).exists()]
    if missing:
        raise UserError(
            f"{name} not found: expected {', '.join(train_files + test_files)} in {folder}"
            f" (the python version from the CIFAR website; set --data-dir or ${DATA_DIR_ENV})"
        )
    train = [_read_cifar_batch(folder / f, key) for f in train_files]
    test = [_read_cifar_batch(folder / f, key) for f in test_files]
    return (np.concatenate([d for d, _ in train]), np.concatenate([l for _, l in train]),
            np.concatenate([d for d, _ in test]), np.concatenate([l for _, l in test]))


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train x, train y, test x, test y


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset ``--dataset`` accepts: ``read(folder, hp)`` returns its raw arrays, inputs as
    (N, *shape); ``classes`` labels 0..classes-1; ``augment``: random crop and flip by default.
    ``cache(folder, hp)``: for a dataset this toolkit generates, the file it is cached in (a
    missing data folder is then created); ``check(hp)`` refuses the dataset's own bad settings
    before anything is read or made. ``load(folder, hp)``: for a dataset too large for memory
    (ImageNet), checks the files and returns the ``Dataset`` itself, its splits streamed from disk
    (``read`` is then unused)."""

    name: str
    read: Callable[[Path, DatasetHparams], Arrays]
    classes: int
    shape: tuple[int, ...]
    augment: bool = False
    cache: Optional[Callable[[Path, DatasetHparams], Path]] = None
    check: Optional[Callable[[DatasetHparams], None]] = None
    load: Optional[Callable[[Path, DatasetHparams], "Dataset"]] = None


def _mnist1d(folder: Path, hp: DatasetHparams) -> Arrays:
    x, y, xt, yt = _read_mnist1d(folder, hp.mnist1d_samples)
    return x[:, None, :], y, xt[:, None, :], yt


def _check_mnist1d(hp: DatasetHparams) -> None:
    if hp.mnist1d_samples < 20:
        raise UserError(f"--mnist1d-samples must be at least 20, got {hp.mnist1d_samples}")


def _streamed(folder: Path, hp: DatasetHparams) -> Arrays:
    raise TypeError(f"{hp.dataset} is streamed from disk: DatasetSpec.load builds it")


def _load_imagenet(folder: Path, hp: DatasetHparams) -> "Dataset":
    from training.imagenet import load_imagenet

    return load_imagenet(folder, hp)


DATASET_SPECS: dict[str, DatasetSpec] = {d.name: d for d in (
    DatasetSpec("mnist1d", _mnist1d, 10, (1, 40), cache=lambda folder, hp: folder / f"mnist1d_{hp.mnist1d_samples}.npz",
                check=_check_mnist1d),
    DatasetSpec("mnist", lambda folder, hp: _read_mnist(folder), 10, (1, 28, 28)),
    DatasetSpec("cifar10", lambda folder, hp: _read_cifar(folder, "cifar10"), 10, (3, 32, 32), augment=True),
    DatasetSpec("cifar100", lambda folder, hp: _read_cifar(folder, "cifar100"), 100, (3, 32, 32), augment=True),
    DatasetSpec("imagenet", _streamed, 1000, (3, 224, 224), augment=True, load=_load_imagenet),
)}


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name``; ``UserError`` (one line) for an unknown one."""
    if name not in DATASET_SPECS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_SPECS)}")
    return DATASET_SPECS[name]


def check_dataset_name(name: str) -> None:
    """``UserError`` (one line) unless ``name`` is a registered dataset."""
    dataset_spec(name)


def load_dataset(hp: DatasetHparams, root: Optional[str | os.PathLike] = None) -> Dataset:
    """Load the dataset described by ``hp`` from the data folder, normalised, on the CPU.

    Inputs are standardised per channel with the mean and std of the training split (after the
    validation split is held out), so no statistic is taken from held-out data.
    """
    spec = dataset_spec(hp.dataset)
    if hp.val_fraction:
        check_fraction(hp.val_fraction, "--val-fraction", allow_zero=True)
    if spec.check is not None:
        spec.check(hp)
    folder = data_dir(root)
    generate = spec.cache is not None and not spec.cache(folder, hp).is_file()
    check_data_dir(folder, _data_dir_source(root), create=generate)
    if spec.load is not None:
        return spec.load(folder, hp)
    x, y, xt, yt = spec.read(folder, hp)
    for inputs, split in ((x, "training"), (xt, "test")):
        if tuple(inputs.shape[1:]) != spec.shape:
            raise UserError(f"{hp.dataset} {split} inputs have shape {tuple(inputs.shape[1:])}, expected "
                            f"{spec.shape}: files are corrupt")

    num_classes = spec.classes
    for labels, split in ((y, "training"), (yt, "test")):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(f"{hp.dataset} {split} labels outside [0, {num_classes}): files are corrupt")
    x, xt = (torch.from_numpy(np.array(a, dtype=np.float32)) for a in (x, xt))
    y, yt = (torch.from_numpy(np.array(a, dtype=np.int64)) for a in (y, yt))

    val = None
    if hp.val_fraction:
        order = torch.randperm(len(y), generator=generator(VALIDATION_SPLIT_SEED, "val", hp.dataset))
        n_val = int(round(hp.val_fraction * len(y)))
        if n_val < 1 or n_val >= len(y):
            raise UserError(f"--val-fraction {hp.val_fraction} leaves an empty split of {len(y)} examples")
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        val = Split(x[val_idx], y[val_idx])
        x, y = x[train_idx], y[train_idx]

    dims = [0] + list(range(2, x.dim()))
    # at one thread: the sums' order, hence the statistics' last bits, would depend on the thread
    # count, which is not part of a GPU run's identity
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True).clamp_min(1e-8)
    finally:
        torch.set_num_threads(threads)

    def norm(split: Split) -> Split:
        return Split(((split.x - mean) / std).contiguous(), split.y)

    augment = spec.augment if hp.augment is None else bool(hp.augment)
    return Dataset(
        name=hp.dataset, train=norm(Split(x, y)), test=norm(Split(xt, yt)),
        val=None if val is None else norm(val), num_classes=num_classes,
        input_shape=tuple(x.shape[1:]), augment=augment,
    )


# ---------------------------------------------------------------------------------------------
# Batching and augmentation on the device


def draw_crop_flip(gen: torch.Generator, n: int, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of ``n`` images' crops and flips, from the CPU generator ``gen``: offsets
    (2, n) in [0, 2 * pad] and flips (n,) as bools."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    return offsets, torch.rand(n, generator=gen) < 0.5


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) by ``pad`` zeros, crop back at ``offsets`` (2, N) and flip the images
    where ``flip`` (N,) is set; ``offsets`` and ``flip`` on ``x``'s device."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)[None, :]
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4,
                     part: Optional[tuple[int, slice]] = None) -> torch.Tensor:
    """Pad by ``pad`` zeros, crop back at a random offset and flip half the images horizontally.

    ``x`` is (N, C, H, W) on any device; the random numbers come from the CPU generator ``gen``
    so CPU and GPU runs see the same crops. ``part = (B, piece)``: ``x`` is the slice ``piece`` of
    a batch of B images (one rank's, under torchrun); the numbers of all B are drawn and those of
    ``piece`` used, so each image gets the crop and flip it gets in the whole batch.
    """
    drawn, piece = part if part is not None else (len(x), slice(None))
    offsets, flip = draw_crop_flip(gen, drawn, pad)
    return crop_flip(x, offsets[:, piece].to(x.device), flip[piece].to(x.device), pad)


class TrainBatches:
    """Shuffled mini-batches of a split: epoch ``e``'s order depends only on (seed, e).

    With ``world_size`` > 1 (torchrun), each batch is rank ``rank``'s contiguous slice of the
    single-process run's batch (``training.imagenet.rank_slice``; possibly empty for a final batch
    shorter than ``world_size``), augmented as in the single-process run; ``batch_length(i)`` is
    the length of the whole global batch ``i`` of an epoch."""

    def __init__(self, split: Split, batch_size: int, seed: int, augment: bool, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.split, self.batch_size, self.seed, self.augment = split, batch_size, seed, augment
        self.rank, self.world_size = rank, world_size
        self.iterations_per_epoch = -(-len(split) // batch_size)

    def batch_length(self, i: int) -> int:
        """The number of examples in global batch ``i`` of an epoch (all ranks' slices together)."""
        return min(self.batch_size, len(self.split) - i * self.batch_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield epoch ``epoch``'s batches (this rank's slices), starting after the first ``skip``."""
        order = torch.randperm(len(self.split), generator=generator(self.seed, "order", epoch))
        device = self.split.x.device
        order = order.to(device)
        if self.augment:
            # the whole epoch's crops and flips, drawn batch by batch from one CPU stream (as a batch
            # at a time would draw them) and copied to the device at once: no host copy per step
            gen = generator(self.seed, "augment", epoch)
            draws = [draw_crop_flip(gen, self.batch_length(i)) for i in range(self.iterations_per_epoch)]
            offsets = torch.cat([o for o, _ in draws], dim=1).to(device)
            flips = torch.cat([f for _, f in draws]).to(device)
        for i in range(skip, self.iterations_per_epoch):
            start = i * self.batch_size
            idx = order[start : start + self.batch_size]
            piece = slice(None)
            if self.world_size > 1:
                from training.imagenet import rank_slice

                piece = rank_slice(len(idx), self.rank, self.world_size)
                idx = idx[piece]
            x = self.split.x[idx]
            if self.augment:
                x = crop_flip(x, offsets[:, start : start + self.batch_size][:, piece],
                              flips[start : start + self.batch_size][piece])
            yield x, self.split.y[idx]


def train_batches(split: "Split | ImageFolderSplit", batch_size: int, seed: int,
                  augment: bool, rank: int = 0, world_size: int = 1) -> "TrainBatches | ImageFolderTrainBatches":
    """The training batches of ``split`` (rank ``rank``'s slice of each when ``world_size`` > 1):
    ``TrainBatches`` for tensors; a split streamed from disk (``training.imagenet.ImageFolderSplit``)
    brings its own, with the same ``iterations_per_epoch`` and ``epoch(e, skip)``."""
    if isinstance(split, Split):
        return TrainBatches(split, batch_size, seed, augment, rank, world_size)
    if world_size > 1:
        return split.train_batches(batch_size, seed, augment, rank, world_size)
    return split.train_batches(batch_size, seed, augment)


def eval_batches(split: "Split | ImageFolderSplit", batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``split`` in order, in batches of ``batch_size`` (a streamed split picks its own size)."""
    if not isinstance(split, Split):
        yield from split.eval_batches(batch_size)
        return
    for start in range(0, len(split), batch_size):
        yield split.x[start : start + batch_size], split.y[start : start + batch_size]


def describe(hp: DatasetHparams) -> dict:
    """The dataset description stored in checkpoints: enough to load the same data again."""
    return {"name": hp.dataset, "hparams": {k: v for k, v in vars(hp).items()}}
