"""ImageNet from the standard folder layout, on a tiny folder of generated JPEGs (3 classes,
4 training and 2 validation images each, 64 x 48 pixels) read through the real code."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from training.__main__ import main
from training.data import DATASET_SPECS, load_dataset
from training.errors import UserError
from training.hparams import DatasetHparams
from training.imagenet import (
    CROP, MEAN, RATIO, STD, GlobalBatchSampler, ImageFolderSplit, eval_transform, random_resized_crop_box,
    rank_slice, scan,
)
from training.presets import preset_values

WNIDS = ("n01440764", "n01443537", "n01484850")


def make_imagenet(data, train=4, val=2, size=(64, 48)):
    """``data/imagenet/{train,val}/<wnid>/<wnid>_<i>.JPEG``: class c's images are noise around
    a grey level of 40 + 80 c, so the classes are learnable."""
    rng = np.random.default_rng(0)
    root = data / "imagenet"
    for split, n in (("train", train), ("val", val)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(40 + 80 * c + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture
def fake(tmp_path):
    make_imagenet(tmp_path)
    return tmp_path


def imagenet(folder, **hp):
    data = load_dataset(DatasetHparams(dataset="imagenet", **hp), folder)
    for split in (data.train, data.test, data.val):
        if split is not None:
            split.workers = 0  # in-process loading: the same batches (tested below), no start-up time
    return data


def test_the_reader_yields_normalised_224_crops_with_labels_in_wnid_order(fake):
    data = imagenet(fake)
    assert (data.num_classes, data.input_shape, len(data.train), len(data.test)) == (3, (3, CROP, CROP), 12, 6)
    assert data.augment and DATASET_SPECS["imagenet"].classes == 1000
    batches = data.train.train_batches(5, seed=0, augment=True)
    assert batches.iterations_per_epoch == 3
    seen = [(x, y) for x, y in batches.epoch(0)]
    assert [len(y) for _, y in seen] == [5, 5, 2]
    assert all(x.shape[1:] == (3, CROP, CROP) and x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in seen)
    assert sorted(torch.cat([y for _, y in seen]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    x, y = next(iter(data.test.eval_batches()))
    assert y.tolist() == [0, 0, 1, 1, 2, 2]  # file order; labels are the sorted wnids' positions
    # class c is grey level 40 + 80c: normalised with the ImageNet mean and std, channel by channel
    for c in range(3):
        expected = (torch.tensor([40.0 + 80 * c] * 3) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
        assert torch.allclose(x[2 * c].mean(dim=(1, 2)), expected, atol=0.06)


def test_augmentation_is_seeded_and_evaluation_is_deterministic(fake):
    data = imagenet(fake)
    first = [x for x, _ in data.train.train_batches(4, seed=3, augment=True).epoch(1)]
    again = [x for x, _ in imagenet(fake).train.train_batches(4, seed=3, augment=True).epoch(1)]
    other = [x for x, _ in data.train.train_batches(4, seed=4, augment=True).epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # a resumed epoch (skip) sees exactly the batches the uninterrupted one saw
    resumed = [x for x, _ in data.train.train_batches(4, seed=3, augment=True).epoch(1, skip=2)]
    assert len(resumed) == 1 and torch.equal(resumed[0], first[2])
    a = torch.cat([x for x, _ in data.test.eval_batches()])
    b = torch.cat([x for x, _ in data.test.eval_batches(batch_size=4)])
    assert torch.equal(a, b)
    # without augmentation the training images get the evaluation transform
    plain = torch.cat([x for x, _ in data.train.train_batches(12, seed=3, augment=False).epoch(0)])
    order = [i for i, seed in next(iter(GlobalBatchSampler(12, 12, 3, shuffle=True, augment=False)))]
    assert torch.equal(plain, torch.cat([x for x, _ in data.train.eval_batches()])[order])


def test_worker_processes_load_the_same_batches(fake):
    data = imagenet(fake)
    inline = [x for x, _ in data.train.train_batches(5, seed=1, augment=True).epoch(0)]
    data.train.workers = 2
    batches = data.train.train_batches(5, seed=1, augment=True)
    for epoch in (0, 0):  # the persistent workers serve a second pass identically
        assert all(torch.equal(a, b) for a, b in zip(inline, [x for x, _ in batches.epoch(epoch)]))


def test_random_resized_crop_box_follows_the_standard_ranges():
    rng = random.Random(0)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(64, 48, rng)
        assert 0 <= left and left + w <= 64 and 0 <= top and top + h <= 48
        assert 0.08 * 64 * 48 * 0.8 <= w * h <= 64 * 48
    # an image too elongated for any allowed ratio falls back to the largest centred crop in range
    assert random_resized_crop_box(400, 10, random.Random(0)) == (193, 0, round(10 * RATIO[1]), 10)


def test_evaluation_resizes_the_shorter_side_to_256_and_crops_the_centre():
    img = Image.new("RGB", (512, 300))
    img.paste((255, 0, 0), (0, 0, 512, 300))
    img.paste((0, 255, 0), (236, 0, 276, 300))  # a 40-pixel green stripe in the middle
    out = eval_transform(img)
    assert out.shape == (3, CROP, CROP) and out.dtype == torch.uint8
    # 512 x 300 -> 436 x 256 -> centre 224: the stripe (34 px wide after resizing) sits in the middle
    row = out[1, 112]
    assert row[112] == 255 and row[0] == 0 and row[-1] == 0
    assert 30 <= int((row > 128).sum()) <= 38


def test_rank_slices_of_every_global_batch_concatenate_to_the_single_process_batch():
    for world in (2, 3):
        single = list(GlobalBatchSampler(10, 4, 7, shuffle=True, augment=True))
        ranks = [GlobalBatchSampler(10, 4, 7, shuffle=True, augment=True, rank=r, world_size=world)
                 for r in range(world)]
        per_rank = [list(s) for s in ranks]
        assert len(single) == 3 and all(len(p) == 3 for p in per_rank)
        for i, batch in enumerate(single):
            assert sum((p[i] for p in per_rank), []) == batch
    assert [rank_slice(3, r, 2) for r in (0, 1)] == [slice(0, 2), slice(2, 3)]
    assert rank_slice(1, 1, 2) == slice(1, 1)  # a global batch shorter than the world: an empty slice
    with pytest.raises(ValueError):
        rank_slice(4, 2, 2)


def test_rank_slices_of_real_batches_concatenate_to_the_single_process_images(fake):
    data = imagenet(fake)
    single = [(x, y) for x, y in data.train.train_batches(5, seed=2, augment=True).epoch(1)]
    parts = [list(data.train.train_batches(5, seed=2, augment=True, rank=r, world_size=2).epoch(1)) for r in (0, 1)]
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), x)
        assert torch.equal(torch.cat([parts[0][i][1], parts[1][i][1]]), y)


def test_val_fraction_holds_out_training_files(fake):
    data = imagenet(fake, val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 6)
    held = set(data.val.images.paths.tolist())
    assert not held & set(data.train.images.paths.tolist())
    assert held == set(imagenet(fake, val_fraction=0.25).val.images.paths.tolist())


def corrupt_first(folder, split, wnid):
    (sorted((folder / "imagenet" / split / wnid).iterdir())[0]).write_bytes(b"not a jpeg at all")


@pytest.mark.parametrize("damage, message", [
    (lambda d: __import__("shutil").rmtree(d / "imagenet" / "val"), "val not found"),
    (lambda d: __import__("shutil").rmtree(d / "imagenet"), "ImageNet not found: expected train/<wnid>/*.JPEG"),
    (lambda d: [__import__("shutil").rmtree(p) for p in (d / "imagenet" / "train").iterdir()],
     "train has no class folders"),
    (lambda d: (d / "imagenet" / "val" / "n09999999").mkdir(), "1 class folder(s) that"),
    (lambda d: [p.unlink() for p in (d / "imagenet" / "train" / WNIDS[1]).iterdir()],
     f"train/{WNIDS[1]} has no images"),
    (lambda d: corrupt_first(d, "train", WNIDS[2]), "cannot be read as an image"),
    (lambda d: corrupt_first(d, "val", WNIDS[0]), "cannot be read as an image"),
])
def test_a_broken_folder_is_one_line(fake, damage, message):
    damage(fake)
    with pytest.raises(UserError) as err:
        load_dataset(DatasetHparams(dataset="imagenet"), fake)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_broken_folder_stops_a_run_before_any_work(fake, tmp_path, capsys):
    corrupt_first(fake, "train", WNIDS[1])
    out = tmp_path / "runs"
    code = main(["imp", "--dataset", "imagenet", "--data-dir", str(fake), "--model", "linear", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert f"{WNIDS[1]}_0.JPEG cannot be read as an image" in err
    assert not out.exists() or not any(out.iterdir())  # no run folder


def test_an_unreadable_image_found_while_training_is_one_line(fake):
    (fake / "imagenet" / "train" / WNIDS[0] / f"{WNIDS[0]}_3.JPEG").write_bytes(b"\xff\xd8 truncated")
    data = imagenet(fake)  # the check decodes only the first image of each class
    for workers in (0, 2):
        data.train.workers = workers
        with pytest.raises(UserError) as err:
            for _ in data.train.train_batches(12, seed=workers, augment=True).epoch(0):
                pass
        assert str(err.value).startswith(f"{fake / 'imagenet' / 'train' / WNIDS[0] / WNIDS[0]}_3.JPEG cannot be "
                                         "read as an image (")
        assert str(err.value).endswith("); replace or remove it")
        assert "\n" not in str(err.value) and "Traceback" not in str(err.value)


def test_the_worker_count_comes_from_the_environment(fake, monkeypatch):
    from training.imagenet import data_workers

    monkeypatch.setenv("LTH_DATA_WORKERS", "3")
    assert data_workers() == 3
    monkeypatch.setenv("LTH_DATA_WORKERS", "many")
    with pytest.raises(UserError, match=r"\$LTH_DATA_WORKERS must be a whole number"):
        load_dataset(DatasetHparams(dataset="imagenet"), fake)  # refused when the data is checked


def test_the_resnet18_imagenet_preset_is_tartaglione_2022s_setup():
    assert preset_values("resnet18_imagenet") == {
        "dataset": "imagenet", "model": "resnet18_imagenet", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
        "batch_size": 1024, "weight_decay": 5e-5, "train_for": "90ep", "schedule": "step",
        "milestones": "30ep,60ep", "gamma": 0.1,
    }


def test_scan_lists_every_image_once(fake):
    classes, train, val = scan(fake)
    assert classes == list(WNIDS) and len(train) == 12 and len(val) == 6
    assert len(set(train.paths.tolist())) == 12 and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert isinstance(imagenet(fake).train, ImageFolderSplit)


def test_a_tiny_lottery_run_on_the_fake_folder(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_DATA_WORKERS", "0")
    out = tmp_path / "runs"
    assert main(["imp", "--dataset", "imagenet", "--data-dir", str(fake), "--model", "linear", "--batch-size", "4",
                 "--train-for", "2ep", "--levels", "2", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads(next(out.iterdir()).joinpath("summary.json").read_text())
    levels = summary["levels"]
    assert [row["level"] for row in levels] == [0, 1] and levels[1]["density"] < 1
    assert all(row["test_accuracy"] > 1 / 3 for row in levels)  # 3 classes: chance is 1/3
