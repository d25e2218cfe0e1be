"""ImageNet (ILSVRC 2012) from the standard folder layout, streamed from disk by worker processes.

``DATA/imagenet/train/<wnid>/*.JPEG`` and ``DATA/imagenet/val/<wnid>/*.JPEG`` (``DATA`` itself is
searched too); labels are the training class folders in sorted (wnid) order, and the ``val``
folder is the test split. ImageNet cannot be a tensor in memory, so its splits are
``ImageFolderSplit``s: each gives the training loop its own batches (``train_batches``,
``eval_batches``) as normalised float tensors on the split's device.

Augmentation is the standard one, written with PIL (torchvision does not import beside our
torch build): training images get a random resized crop to 224 (scale 0.08-1, aspect ratio
3/4-4/3, bilinear with antialiasing) and a horizontal flip half the time; evaluation images are
resized (shorter side 256) and centre-cropped to 224. Both are normalised with the ImageNet mean
and std on the device, after the uint8 batch has crossed from the workers.

Determinism: epoch ``e``'s order is ``randperm`` of ``generator(seed, "order", e)`` (as for the
tensor datasets), and each example's crop and flip come from a seed drawn for its position in
that order, so batches do not depend on the number of worker processes, on where a resumed
epoch restarts, or on the number of ranks: with ``rank``/``world_size`` every process takes a
contiguous slice of each global batch (``rank_slice``), and the slices of all ranks, concatenated
in rank order, are the single-process batch.

Workers: ``$LTH_DATA_WORKERS`` processes (default: the CPU count, at most 8). They change speed
only, never the batches, so they are not a hyperparameter and not part of a run's hash.
"""
from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from training.errors import UserError

MEAN = (0.485, 0.456, 0.406)  # ImageNet per-channel mean and std of pixel values in [0, 1]
STD = (0.229, 0.224, 0.225)
CROP = 224  # side of every image the network sees, in pixels
RESIZE = 256  # evaluation: shorter side before the centre crop, in pixels
SCALE = (0.08, 1.0)  # random resized crop: fraction of the image area
RATIO = (3 / 4, 4 / 3)  # random resized crop: width / height
EXTENSIONS = (".jpeg", ".jpg")  # case-insensitive; other files in the class folders are ignored
EVAL_BATCH = 250  # at most this many evaluation images per batch (BN is in eval mode: no effect on results)
WORKERS_ENV = "LTH_DATA_WORKERS"
LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"


# ---------------------------------------------------------------------------------------------
# The folder


@dataclass(frozen=True)
class ImageList:
    """One split's files: ``paths[i]`` (bytes, relative to ``root``) has label ``labels[i]``.

    numpy arrays rather than Python lists, so that forked workers do not copy them page by page
    as reference counts change."""

    root: str
    paths: np.ndarray  # bytes, relative to root
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[i]))

    def subset(self, indices: np.ndarray) -> "ImageList":
        return ImageList(self.root, self.paths[indices], self.labels[indices])


def find_root(folder: Path) -> Path:
    """The ImageNet folder under the data folder ``folder``: ``folder/imagenet``, else ``folder``
    itself if it has a ``train`` folder; ``UserError`` if neither."""
    for candidate in (folder / "imagenet", folder):
        if (candidate / "train").is_dir():
            return candidate
    raise UserError(f"ImageNet not found: expected {LAYOUT} in {folder / 'imagenet'} "
                    f"(set --data-dir or $LTH_DATA_DIR)")


def _images(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(EXTENSIONS) and not e.is_dir())


def _class_folders(split: Path) -> list[str]:
    with os.scandir(split) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _listing(root: Path, split: str, classes: list[str], label: dict[str, int]) -> ImageList:
    paths, labels = [], []
    for wnid in classes:
        names = _images(root / split / wnid)
        if not names:
            raise UserError(f"{root / split / wnid} has no images (*.JPEG); ImageNet needs {LAYOUT}")
        paths += [os.fsencode(f"{split}/{wnid}/{n}") for n in names]
        labels += [label[wnid]] * len(names)
    return ImageList(str(root), np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64))


def check_image(path: str) -> None:
    """``UserError`` unless ``path`` decodes as an image (decoded at reduced size: quick)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (32, 32))
            img.load()
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's decoders raise all three
        raise UserError(f"{path} cannot be read as an image ({exc}); replace or remove it") from None


def scan(folder: Path) -> tuple[list[str], ImageList, ImageList]:
    """List and check the ImageNet folder under the data folder ``folder``.

    Returns (class wnids in label order, training files, validation files). Raises ``UserError``
    (one line) for a missing ``train``/``val``, no class folders, an empty class folder, ``val``
    classes that ``train`` lacks, or an image that does not decode. Only the first image of each
    class folder is decoded (at reduced size, in threads), so the check costs a directory listing
    and 2 x (number of classes) small decodes: 3.5 s for 104,000 files in 400 classes on a shared
    2-core machine, so seconds on the full 1.28M-image folder. Any other unreadable file is named
    when training reaches it."""
    root = find_root(folder)
    if not (root / "val").is_dir():
        raise UserError(f"{root / 'val'} not found: ImageNet needs {LAYOUT} (the validation images "
                        f"sorted into class folders)")
    classes = _class_folders(root / "train")
    if not classes:
        raise UserError(f"{root / 'train'} has no class folders: ImageNet needs {LAYOUT}")
    val_classes = _class_folders(root / "val")
    if not val_classes:
        raise UserError(f"{root / 'val'} has no class folders: ImageNet needs {LAYOUT} (the validation "
                        f"images sorted into class folders)")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise UserError(f"{root / 'val'} has {len(unknown)} class folder(s) that {root / 'train'} lacks "
                        f"(first: {unknown[0]}), so their labels are undefined")
    label = {wnid: i for i, wnid in enumerate(classes)}
    train, val = _listing(root, "train", classes, label), _listing(root, "val", val_classes, label)
    firsts = [images.path(int(i)) for images in (train, val)
              for i in np.unique(images.labels, return_index=True)[1]]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        list(pool.map(check_image, firsts))  # the first error (in file order) is raised
    return classes, train, val


# ---------------------------------------------------------------------------------------------
# Transforms (PIL in, uint8 CHW tensor out)


def random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """The crop of a random resized crop of a ``width`` x ``height`` image: (left, top, width,
    height) in pixels, area a uniform ``SCALE`` fraction of the image and aspect ratio log-uniform
    in ``RATIO``; after 10 failed draws, the largest centred crop with a ratio in ``RATIO``
    (torchvision's algorithm)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _to_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def train_transform(img, rng: random.Random) -> torch.Tensor:
    """Random resized crop to ``CROP`` x ``CROP`` and a horizontal flip with probability 1/2;
    returns uint8 (3, CROP, CROP)."""
    from PIL import Image

    left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
    out = img.resize((CROP, CROP), Image.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_tensor(out)


def eval_transform(img) -> torch.Tensor:
    """Resize the shorter side to ``RESIZE`` (bilinear, antialiased) and crop the centre
    ``CROP`` x ``CROP``; returns uint8 (3, CROP, CROP)."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        size = (RESIZE, int(RESIZE * h / w))
    else:
        size = (int(RESIZE * w / h), RESIZE)
    img = img.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - CROP) / 2.0)), int(round((size[1] - CROP) / 2.0))
    return _to_tensor(img.crop((left, top, left + CROP, top + CROP)))


class ImageFiles(TorchDataset):
    """Items are ``(index, augmentation seed)``; returns (uint8 image (3, CROP, CROP), label).
    A seed of -1 means the evaluation transform."""

    def __init__(self, images: ImageList):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        index, seed = item
        path = self.images.path(index)
        try:
            with Image.open(path) as raw:
                img = raw.convert("RGB")  # ImageNet holds a few greyscale and CMYK JPEGs
        except (OSError, ValueError, SyntaxError) as exc:
            raise UserError(f"{path} cannot be read as an image ({exc}); replace or remove it") from None
        x = eval_transform(img) if seed < 0 else train_transform(img, random.Random(seed))
        return x, int(self.images.labels[index])


# ---------------------------------------------------------------------------------------------
# Batches: the single-process run's global batches, a slice of each per rank


def rank_slice(length: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of a global batch of ``length`` examples (the pieces of
    ``torch.tensor_split(batch, world_size)``: the first ``length % world_size`` ranks take one
    more; a rank's slice is empty when the batch is shorter than ``world_size``)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    base, extra = divmod(length, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class GlobalBatchSampler(Sampler):
    """Yields this rank's slice of each global batch of an epoch as ``(index, augmentation seed)``
    pairs (seed -1 without augmentation). ``set_epoch(epoch, skip)`` picks the epoch and the
    number of its batches to skip (a resumed epoch); the main process iterates it, so workers
    never hold any sampler state."""

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool, augment: bool,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        rank_slice(0, rank, world_size)  # validates rank
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.augment, self.rank, self.world_size = shuffle, augment, rank, world_size
        self.batches_per_epoch = -(-n // batch_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def global_batches(self) -> Iterator[list[tuple[int, int]]]:
        """Every rank's examples of each batch of the current epoch, from batch ``skip`` on."""
        from training.engine.seeding import generator

        if self.shuffle:
            order = torch.randperm(self.n, generator=generator(self.seed, "order", self.epoch))
        else:
            order = torch.arange(self.n)
        if self.augment:  # one seed per position in the epoch: independent of skip, workers and ranks
            seeds = torch.randint(0, 2**62, (self.n,), generator=generator(self.seed, "augment", self.epoch))
        else:
            seeds = torch.full((self.n,), -1, dtype=torch.int64)
        for i in range(self.skip, self.batches_per_epoch):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield list(zip(order[part].tolist(), seeds[part].tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.global_batches():
            yield batch[rank_slice(len(batch), self.rank, self.world_size)]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.skip)


def data_workers() -> int:
    """Worker processes per loader: ``$LTH_DATA_WORKERS``, else the CPU count (at most 8)."""
    value = os.environ.get(WORKERS_ENV)
    if value is None or value == "":
        return min(8, os.cpu_count() or 1)
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise UserError(f"${WORKERS_ENV} must be a whole number of worker processes (0: load in the main "
                        f"process), got {value!r}")
    return workers


def _one_line(exc: UserError) -> UserError:
    """A ``UserError`` raised in a worker comes back with the worker's traceback in its message;
    keep the original one line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    for line in reversed(lines):
        if line.startswith(marker):
            return UserError(line[len(marker):])
    return UserError(lines[-1] if lines else "a data loader worker failed")


class Loader:
    """A DataLoader over ``ImageFiles`` driven by a ``GlobalBatchSampler``; yields normalised
    float32 (N, 3, CROP, CROP) inputs and int64 labels on ``device``. Its worker processes start
    on first use and stay for every later epoch."""

    def __init__(self, images: ImageList, sampler: GlobalBatchSampler, device: torch.device, workers: int):
        self.sampler, self.device = sampler, device
        pin = device.type == "cuda"
        self.loader = DataLoader(ImageFiles(images), batch_sampler=sampler, num_workers=workers,
                                 pin_memory=pin, persistent_workers=workers > 0,
                                 prefetch_factor=4 if workers > 0 else None)
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch, skip)
        iterator = iter(self.loader)
        while True:
            try:
                x, y = next(iterator)
            except StopIteration:
                return
            except UserError as exc:
                raise _one_line(exc) from None
            x = x.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
            yield x, y.to(self.device, non_blocking=True)


class ImageFolderTrainBatches:
    """What ``training.data.TrainBatches`` is for a tensor split: ``iterations_per_epoch`` and
    ``epoch(e, skip)``, the (rank's slice of the) shuffled, augmented batches of epoch ``e``."""

    def __init__(self, loader: Loader):
        self.loader = loader
        self.iterations_per_epoch = loader.sampler.batches_per_epoch

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield epoch ``epoch``'s batches, starting after the first ``skip`` of them."""
        return self.loader.epoch(epoch, skip)


@dataclass
class ImageFolderSplit:
    """A split of an image folder, streamed from disk: stands where ``training.data.Split`` holds
    tensors. ``augment`` only matters for ``train_batches``; evaluation never augments."""

    images: ImageList
    device: torch.device = torch.device("cpu")
    workers: Optional[int] = None  # None: data_workers()

    def __post_init__(self) -> None:
        self._loaders: dict[tuple, Loader] = {}

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> "ImageFolderSplit":
        return replace(self, device=torch.device(device))

    def _loader(self, batch_size: int, seed: int, shuffle: bool, augment: bool, rank: int,
                world_size: int) -> Loader:
        key = (batch_size, seed, shuffle, augment, rank, world_size)
        if key not in self._loaders:
            # one training and one evaluation loader at a time: a replaced one's workers exit
            for old in [k for k in self._loaders if k[2] == shuffle]:
                del self._loaders[old]
            sampler = GlobalBatchSampler(len(self), batch_size, seed, shuffle=shuffle, augment=augment,
                                         rank=rank, world_size=world_size)
            workers = data_workers() if self.workers is None else self.workers
            self._loaders[key] = Loader(self.images, sampler, self.device, workers)
        return self._loaders[key]

    def train_batches(self, batch_size: int, seed: int, augment: bool, rank: int = 0,
                      world_size: int = 1) -> ImageFolderTrainBatches:
        """Shuffled (by ``seed`` and the epoch) batches of ``batch_size`` examples, randomly
        resized, cropped and flipped if ``augment`` (else the evaluation transform); with
        ``world_size`` > 1, rank ``rank``'s slice of each."""
        return ImageFolderTrainBatches(self._loader(batch_size, seed, True, augment, rank, world_size))

    def eval_batches(self, batch_size: int = EVAL_BATCH, rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split in file order, evaluation transform, at most ``EVAL_BATCH`` per batch."""
        return self._loader(min(batch_size, EVAL_BATCH), 0, False, False, rank, world_size).epoch(0)


# ---------------------------------------------------------------------------------------------
# The dataset


def load_imagenet(folder: Path, hp) -> "Dataset":
    """The ``imagenet`` dataset under the data folder ``folder`` (``hp``: DatasetHparams), checked
    (``scan``) but not read: splits are ``ImageFolderSplit`` on the CPU, ``val/`` is the test split,
    ``--val-fraction`` holds out a fixed random part of ``train/`` (evaluation transform)."""
    from training.data import VALIDATION_SPLIT_SEED, Dataset
    from training.engine.seeding import generator

    data_workers()  # a bad $LTH_DATA_WORKERS is refused now, not when training starts
    classes, train, test = scan(folder)
    val = None
    if hp.val_fraction:
        order = torch.randperm(len(train), generator=generator(VALIDATION_SPLIT_SEED, "val", hp.dataset)).numpy()
        n_val = int(round(hp.val_fraction * len(train)))
        if n_val < 1 or n_val >= len(train):
            raise UserError(f"--val-fraction {hp.val_fraction} leaves an empty split of {len(train)} examples")
        val = ImageFolderSplit(train.subset(np.sort(order[:n_val])))
        train = train.subset(np.sort(order[n_val:]))
    return Dataset(name=hp.dataset, train=ImageFolderSplit(train), test=ImageFolderSplit(test), val=val,
                   num_classes=len(classes), input_shape=(3, CROP, CROP),
                   augment=True if hp.augment is None else bool(hp.augment))
