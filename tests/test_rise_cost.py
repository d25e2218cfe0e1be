"""RISE-R (frozen weights), its -R / --fraction flags, and the backpropagation cost counter."""
import json

import pytest
import torch
from torch import nn

from tests.conftest import tiny_config
from training.__main__ import main
from training.engine.checkpoint import load, read_checkpoint
from training.engine.cost import examples_processed, layer_macs, per_example_cost
from training.data import load_dataset
from training.engine.loop import check_lengths, train
from training.sparsity.masks import dense_mask
from training.models import build_model
from training.sparsity.pruning import prune
from training.algorithms.rise import run_rise
from training.engine.runs import load_mask


def test_frozen_weights_are_bit_identical_after_every_step(data_dir):
    cfg = tiny_config(momentum=0.9, nesterov=True, weight_decay=1e-2)
    data = load_dataset(cfg.dataset)
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # W^k: no zeros anywhere
    mask = prune(dict(model.named_parameters()), dense_mask(model), 0.8, score="random", seed=1)
    params = dict(model.named_parameters())
    w_k = {n: params[n].detach().clone() for n in mask}

    def check(t):
        for n, m in mask.items():
            assert torch.equal(params[n][~m], w_k[n][~m]), f"frozen weight drifted at iteration {t}"

    total, _, _ = check_lengths(cfg.training, -(-len(data.train) // cfg.training.batch_size))
    train(model, data, cfg.training, mask=mask, frozen=w_k, save_points=range(1, total + 1), on_save=check,
          progress=False)
    for n, m in mask.items():
        assert not torch.equal(params[n][m], w_k[n][m])  # the kept weights did train


def test_rise_run_keeps_w_k_outside_the_mask(data_dir, tmp_path):
    cfg = tiny_config()
    cfg.pruning.fraction, cfg.pruning.rewind = 0.9, "1ep"
    run = run_rise(cfg, out=tmp_path, progress=False)
    mask = load_mask(run.dir / "level_1" / "mask.pt")
    w_k = read_checkpoint(run.dir / "level_0" / "rewind.pt")["state_dict"]
    final = read_checkpoint(run.dir / "level_1" / "final.pt")
    assert final["meta"]["masked_weights"] == "frozen"
    for n, m in mask.items():
        assert torch.equal(final["state_dict"][n][~m], w_k[n][~m])
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    assert kept == total - int(0.9 * total + 0.5)
    loaded = load(run.dir / "level_1" / "final.pt", with_data=False)
    for n, p in loaded.model.named_parameters():  # loading must not zero the frozen weights
        if n in mask:
            assert torch.equal(p.detach()[~mask[n]], w_k[n][~mask[n]])
    summary = json.loads((run.dir / "summary.json").read_text())["levels"]
    assert summary[1]["cumulative_backprop_macs"] == pytest.approx(
        summary[0]["backprop_macs"] + summary[1]["backprop_macs"])


class Killed(Exception):
    pass


def test_rise_resumes_bit_identically(data_dir, tmp_path):
    def config():
        cfg = tiny_config(train_for="4ep")
        cfg.pruning.fraction, cfg.pruning.rewind = 0.8, "1ep"
        return cfg

    reference = run_rise(config(), out=tmp_path / "a", progress=False)
    calls = []

    def kill(epoch):
        calls.append(epoch)
        if len(calls) == 4:  # level 0 has 3 epoch boundaries; the 4th is inside level 1
            raise Killed

    with pytest.raises(Killed):
        run_rise(config(), out=tmp_path / "b", progress=False, on_epoch_end=kill)
    resumed = run_rise(config(), out=tmp_path / "b", progress=False)
    a = read_checkpoint(reference.dir / "level_1" / "final.pt")["state_dict"]
    b = read_checkpoint(resumed.dir / "level_1" / "final.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _rise_cli(tmp_path, data_dir, *flags):
    return main(["rise", *flags, "-k", "1ep", "--out", str(tmp_path), "--data-dir", data_dir, "--model",
                 "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep", "--batch-size", "50",
                 "--no-progress"])


def _kept_fraction(folder):
    mask = load_mask(folder / "level_1" / "mask.pt")
    return sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())


def test_rise_fraction_flag_and_default_r(data_dir, tmp_path, capsys):
    assert _rise_cli(tmp_path / "f", data_dir, "--fraction", "0.75") == 0, capsys.readouterr().err
    (folder,) = (tmp_path / "f").glob("rise-*")
    assert _kept_fraction(folder) == pytest.approx(0.25, abs=1e-3)
    # -R 25 is the same experiment: the same folder, nothing trained again
    assert _rise_cli(tmp_path / "f", data_dir, "-R", "25") == 0
    assert [p.name for p in (tmp_path / "f").glob("rise-*")] == [folder.name]
    # neither flag: R = 20
    assert _rise_cli(tmp_path / "d", data_dir) == 0
    (folder,) = (tmp_path / "d").glob("rise-*")
    assert _kept_fraction(folder) == pytest.approx(0.20, abs=1e-3)
    assert _rise_cli(tmp_path / "both", data_dir, "-R", "25", "--fraction", "0.75") == 2
    assert "either --keep (R) or --fraction" in capsys.readouterr().err


def test_cost_hand_count_mlp_and_conv():
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    macs = layer_macs(mlp, (4,))
    assert macs == {"0.weight": 12, "2.weight": 6}
    dense = per_example_cost(macs)
    assert dense == {"forward": 18, "input_grad": 6, "weight_grad": 18, "total": 42}
    half = {"0.weight": torch.tensor([True, False] * 6).reshape(3, 4), "2.weight": torch.tensor([True] * 3 + [False] * 3).reshape(2, 3)}
    lot = per_example_cost(macs, half)  # LOT: the mask; RISE: the kept set (same count)
    assert lot == {"forward": 18, "input_grad": 6, "weight_grad": 9, "total": 33}

    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    macs = layer_macs(conv, (1, 6, 6))
    assert macs == {"0.weight": 2 * 9 * 16, "3.weight": 32 * 3}  # 18 weights x 16 output positions


def test_rise_weight_gradient_cost_is_r_times_dense():
    model = build_model("lenet_300_100", 10, (1, 28, 28), 0)
    macs = layer_macs(model, (1, 28, 28))
    for keep in (0.1, 0.25, 0.5):
        mask = prune(dict(model.named_parameters()), dense_mask(model), 1 - keep)
        kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
        ratio = per_example_cost(macs, mask)["weight_grad"] / per_example_cost(macs)["weight_grad"]
        assert ratio == pytest.approx(kept, rel=1e-12) and kept == pytest.approx(keep, abs=1e-5)


def test_examples_processed_counts_short_last_batches():
    assert examples_processed(0, 10, 95, 10) == 95  # one epoch, last batch of 5
    assert examples_processed(5, 15, 95, 10) == 45 + 50
    assert examples_processed(0, 25, 95, 10) == 95 * 2 + 50
