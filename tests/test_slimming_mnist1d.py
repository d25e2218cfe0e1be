"""Network slimming (Liu et al. 2017) and L1-filter pruning end to end on MNIST-1D, offline, with
the batch-norm CNN ``mnist1d_cnn_bn``."""
import json

import pytest
import torch

from tests.conftest import tiny_config
from training.__main__ import main
from training.sparsity.channels import channel_pairs
from training.engine.checkpoint import read_checkpoint
from training.errors import UserError
from training.algorithms.imp import run_imp
from training.sparsity.masks import dense_mask
from training.models import build_model


def test_the_model_is_mnist1d_cnn_with_a_batch_norm_after_every_convolution(capsys):
    plain, bn = build_model("mnist1d_cnn", 10, (1, 40), 0), build_model("mnist1d_cnn_bn", 10, (1, 40), 0)
    # the same prunable layers, of the same shapes (the batch norms shift the names of the later convolutions)
    assert [m.shape for m in dense_mask(plain).values()] == [m.shape for m in dense_mask(bn).values()]
    assert list(dense_mask(bn)) == ["features.0.weight", "features.3.weight", "features.6.weight", "classifier.0.weight"]
    pairs = channel_pairs(bn)
    assert [p.norm for p in pairs] == ["features.1.weight", "features.4.weight", "features.7.weight"]
    assert all(isinstance(bn.features[i], torch.nn.BatchNorm1d) for i in (1, 4, 7))
    assert main(["list"]) == 0
    assert "mnist1d_cnn_bn " in capsys.readouterr().out


def removed_channels(state, mask, pair):
    """Output channels of ``pair.producer`` that the mask removed, after checking that each one's
    filter and every next-layer weight reading it are zero in ``state``."""
    dead = torch.nonzero(~mask[pair.producer].flatten(1).any(dim=1)).flatten()
    for c in dead:
        assert not state[pair.producer][c].any()
        consumer = state[pair.consumer]
        cols = consumer[:, c] if pair.per_channel == 1 else consumer.view(consumer.shape[0], -1, pair.per_channel)[:, c]
        assert not cols.any()
    return dead


@pytest.mark.parametrize("score", ["slimming", "l1-filter"])
def test_structured_imp_on_the_batch_norm_cnn(score, data_dir, tmp_path, capsys):
    argv = ["imp", "--model", "mnist1d_cnn_bn", "--score", score, "--fraction", "0.5", "--levels", "2",
            "--mnist1d-samples", "500", "--train-for", "1ep", "--batch-size", "40", "--out", str(tmp_path),
            "--data-dir", data_dir, "--no-progress"]
    if score == "slimming":
        argv += ["--bn-l1", "1e-4"]
    assert main(argv) == 0, capsys.readouterr().err
    (folder,) = tmp_path.glob("imp-*")
    final = read_checkpoint(folder / "level_1" / "final.pt")
    assert json.loads((folder / "config.json").read_text())["config"]["training"]["bn_l1"] == (1e-4 if score == "slimming" else 0)
    pairs = channel_pairs(build_model("mnist1d_cnn_bn", 10, (1, 40), 0))
    dead = [removed_channels(final["state_dict"], final["mask"], pair) for pair in pairs]
    if score == "slimming":  # ranked across layers: half of all 96 channels go
        assert sum(len(d) for d in dead) == 48
    else:  # per layer: half of each layer's 32 filters
        assert [len(d) for d in dead] == [16, 16, 16]
    summary = json.loads((folder / "summary.json").read_text())["levels"]
    assert summary[1]["density"] < 0.6 and 0 <= summary[1]["test_accuracy"] <= 1

    # what a removed channel's batch norm still produces reaches nothing: changing it changes no output
    model = build_model("mnist1d_cnn_bn", 10, (1, 40), 0)
    model.load_state_dict(final["state_dict"])
    model.eval()
    x = torch.randn(16, 1, 40)
    with torch.no_grad():
        before = model(x)
        for pair, d in zip(pairs, dead):
            norm = dict(model.named_modules())[pair.norm.rsplit(".", 1)[0]]
            norm.bias[d] += 5.0
            norm.weight[d] += 3.0
        assert torch.allclose(model(x), before, atol=1e-5)


def test_slimming_still_refused_without_batch_norm(data_dir, tmp_path):
    cfg = tiny_config()
    cfg.model.model = "mnist1d_cnn"
    cfg.pruning.score = "slimming"
    with pytest.raises(UserError, match="use mnist1d_cnn_bn"):
        run_imp(cfg, levels=2, out=tmp_path, progress=False)
