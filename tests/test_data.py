"""Dataset loaders on tiny files in the real on-disk formats, read through the same code."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from training.data import TrainBatches, load_dataset, random_crop_flip
from training.errors import UserError
from training.hparams import DatasetHparams


def write_idx(path, array, compress=False):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)


def make_mnist(folder, n_train=30, n_test=10, compress=False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_train), compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_test), compress)


def write_cifar_batch(path, n, label_key, classes, seed):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"tiny", b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             label_key: [int(v) for v in rng.integers(0, classes, n)], b"filenames": [b"x.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 4, b"labels", 10, i)
    write_cifar_batch(folder / "test_batch", 5, b"labels", 10, 9)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    make_mnist(tmp_path / "mnist", compress=compress)
    data = load_dataset(DatasetHparams("mnist"), tmp_path)
    assert data.train.x.shape == (30, 1, 28, 28) and data.test.x.shape == (10, 1, 28, 28)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10 and not data.augment
    assert data.train.x.mean().abs() < 1e-4 and (data.train.x.std() - 1).abs() < 1e-2
    raw = np.frombuffer((gzip.open if compress else open)(
        tmp_path / "mnist" / ("train-labels-idx1-ubyte" + (".gz" if compress else "")), "rb").read()[8:], np.uint8)
    assert data.train.y.tolist() == raw.tolist()


def test_missing_mnist_names_files_and_folder(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset(DatasetHparams("mnist"), tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "mnist") in message and "\n" not in message


def test_truncated_idx_file_is_reported(tmp_path):
    make_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        load_dataset(DatasetHparams("mnist"), tmp_path)


def test_cifar10_pickle_batches(tmp_path):
    make_cifar10(tmp_path)
    data = load_dataset(DatasetHparams("cifar10"), tmp_path)
    assert data.train.x.shape == (20, 3, 32, 32) and data.test.x.shape == (5, 3, 32, 32)
    assert data.augment and data.num_classes == 10
    first = pickle.load(open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="bytes")
    assert data.train.y[:4].tolist() == first[b"labels"]


def test_cifar100_pickle(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", 12, b"fine_labels", 100, 0)
    write_cifar_batch(folder / "test", 3, b"fine_labels", 100, 1)
    data = load_dataset(DatasetHparams("cifar100", augment=False), tmp_path)
    assert data.num_classes == 100 and len(data.train) == 12 and not data.augment


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        load_dataset(DatasetHparams("cifar10"), tmp_path)


def test_missing_cifar_names_expected_files(tmp_path):
    with pytest.raises(UserError, match=r"data_batch_1.*test_batch.*cifar-10-batches-py"):
        load_dataset(DatasetHparams("cifar10"), tmp_path)


def test_mnist1d_is_generated_offline_and_cached(tmp_path):
    hp = DatasetHparams("mnist1d", mnist1d_samples=200)
    state = np.random.get_state()[1].copy()
    data = load_dataset(hp, tmp_path)
    assert np.array_equal(state, np.random.get_state()[1])  # global numpy RNG untouched
    assert data.train.x.shape == (160, 1, 40) and data.test.x.shape == (40, 1, 40)
    assert (tmp_path / "mnist1d_200.npz").exists()
    again = load_dataset(hp, tmp_path)
    assert torch.equal(data.train.x, again.train.x)


def test_validation_split_is_disjoint_and_fixed(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=50)
    data = load_dataset(DatasetHparams("mnist", val_fraction=0.2), tmp_path)
    assert len(data.val) == 10 and len(data.train) == 40
    rows = lambda s: {tuple(r.tolist()) for r in s.x.flatten(1)}  # noqa: E731
    assert not rows(data.val) & rows(data.train)
    again = load_dataset(DatasetHparams("mnist", val_fraction=0.2), tmp_path)
    assert torch.equal(again.val.y, data.val.y)
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        load_dataset(DatasetHparams("mnist", val_fraction=1.0), tmp_path)


def test_unknown_dataset_lists_names(tmp_path):
    with pytest.raises(UserError, match="mnist1d, mnist, cifar10, cifar100, imagenet"):
        load_dataset(DatasetHparams("svhn"), tmp_path)


def test_crop_and_flip():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, gen, pad=0)  # no padding: each image is itself or its mirror
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = random_crop_flip(x, torch.Generator().manual_seed(1), pad=4)
    assert out.shape == x.shape
    for i in range(2):  # every crop is a window of the zero-padded image
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        windows = [padded[:, r:r + 6, c:c + 6] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_batches_depend_only_on_seed_and_epoch(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=25)
    data = load_dataset(DatasetHparams("mnist"), tmp_path)
    a = TrainBatches(data.train, 10, seed=3, augment=True)
    assert a.iterations_per_epoch == 3
    full = list(a.epoch(2))
    skipped = list(a.epoch(2, skip=1))
    assert len(full) == 3 and len(skipped) == 2
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full[1:], skipped))
    assert sorted(torch.cat([y for _, y in full]).tolist()) == sorted(data.train.y.tolist())
    assert not torch.equal(torch.cat([y for _, y in a.epoch(3)]), torch.cat([y for _, y in full]))


@pytest.mark.parametrize("dataset,where", [
    ("mnist1d", "names a file"), ("mnist1d", "under a file"), ("mnist1d", "under /proc"),
    ("mnist", "names a file"), ("cifar10", "names a file"),
])
def test_unusable_data_dir_gets_one_line(tmp_path, where, dataset, monkeypatch):
    import mnist1d.data

    def no_generation(*args, **kwargs):
        raise AssertionError("MNIST-1D was generated before the data folder was checked")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    folder = {"names a file": blocker, "under a file": blocker / "data", "under /proc": "/proc/nope/data"}[where]
    with pytest.raises(UserError) as info:
        load_dataset(DatasetHparams(dataset=dataset, mnist1d_samples=100), str(folder))
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    if where == "names a file":
        assert message.startswith(f"--data-dir {folder} is a file")
    else:  # MNIST-1D is generated there: the folder must be created and written
        assert message.startswith(f"--data-dir {folder} cannot be created")


def test_data_dir_from_the_environment_is_named_so(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("LTH_DATA_DIR", str(blocker))
    with pytest.raises(UserError, match=r"^\$LTH_DATA_DIR .* is a file"):
        load_dataset(DatasetHparams(mnist1d_samples=100))


def test_the_normalisation_does_not_depend_on_the_thread_count(data_dir):
    """A GPU run's identity leaves the CPU thread count out, so the data it trains on must not
    depend on it (the per-channel mean and std are sums whose order the thread count changes)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = load_dataset(DatasetHparams(), data_dir)
        torch.set_num_threads(4)
        four = load_dataset(DatasetHparams(), data_dir)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.train.x, four.train.x) and torch.equal(one.test.x, four.test.x)


@pytest.mark.parametrize("world_size, rank, skip", [(1, 0, 0), (1, 0, 2), (2, 1, 0), (3, 2, 1)])
def test_an_epochs_crops_drawn_at_once_are_those_drawn_batch_by_batch(world_size, rank, skip):
    """TrainBatches draws an epoch's crops and flips in one go (one copy to the device per epoch, no
    host round trip per step); each batch gets exactly what random_crop_flip would draw for it."""
    from training.data import Split
    from training.engine.seeding import generator
    from training.imagenet import rank_slice

    split = Split(torch.randn(103, 3, 8, 8), torch.arange(103) % 10)
    batches = TrainBatches(split, 20, 5, True, rank=rank, world_size=world_size)
    order = torch.randperm(103, generator=generator(5, "order", 3))
    aug = generator(5, "augment", 3)
    expected = []
    for i in range(batches.iterations_per_epoch):
        idx = order[i * 20:(i + 1) * 20]
        piece = rank_slice(len(idx), rank, world_size)
        x = random_crop_flip(split.x[idx[piece]], aug, part=(len(idx), piece))
        if i >= skip:
            expected.append((x, split.y[idx[piece]]))
    got = list(batches.epoch(3, skip))
    assert len(got) == len(expected) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                              for a, b in zip(got, expected))
