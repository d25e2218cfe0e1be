"""SNIP and SynFlow against hand-computed values; iterative SynFlow's exact count, no layer collapse."""
import pytest
import torch
from torch import nn

from training.engine.checkpoint import load
from training.engine.cost import layer_macs, per_example_cost
from training.errors import UserError
from training.engine.loop import evaluate
from training.sparsity.masks import dense_mask
from training.models import build_model
from training.sparsity.pruning import prune
from training.sparsity.saliency import ScoreContext, snip_scores, synflow_scores


def test_synflow_by_hand():
    # bias-free linear -> ReLU -> linear; with |W| and input 1: R = 1^T |W2| |W1| 1
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        model[2].weight.copy_(torch.tensor([[-1.0, 2.0], [0.25, -4.0]]))
    W1, W2 = model[0].weight.detach().abs(), model[2].weight.detach().abs()
    scores = synflow_scores(dense_mask(model), ScoreContext(model, (2,)))
    expected_1 = W1 * W2.sum(dim=0)[:, None]  # |W1_ij| * sum_k |W2_ki|
    expected_2 = W2 * W1.sum(dim=1)[None, :]  # |W2_ki| * sum_j |W1_ij|
    assert torch.allclose(scores["0.weight"], expected_1) and torch.allclose(scores["2.weight"], expected_2)


def test_snip_by_hand():
    model = nn.Linear(2, 2, bias=False)
    W = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    with torch.no_grad():
        model.weight.copy_(W)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([0])
    z = W @ x[0]  # logits
    p = torch.exp(z) / torch.exp(z).sum()
    grad = (p - torch.tensor([1.0, 0.0]))[:, None] * x[0][None, :]  # dL/dW = (p - e_y) x^T
    scores = snip_scores(dense_mask(model), ScoreContext(model, (2,), [(x, y)]))
    assert torch.allclose(scores["weight"], (grad * W).abs(), atol=1e-7)


def test_iterative_synflow_hits_the_count_and_keeps_every_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10))
    mask = dense_mask(model)
    context = ScoreContext(model, (20,), synflow_rounds=20)
    new = prune(dict(model.named_parameters()), mask, 0.99, score="synflow", target_density=0.01, context=context)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in new.values()) == int(0.01 * total + 0.5)
    assert all(int(m.sum()) > 0 for m in new.values())  # no layer collapse at 99% sparsity


def test_network_scores_need_the_network():
    model = nn.Linear(3, 2)
    with pytest.raises(UserError, match="needs the network"):
        prune(dict(model.named_parameters()), dense_mask(model), 0.5, score="snip")


@pytest.mark.parametrize("score", ["snip", "synflow"])
def test_at_init_run_end_to_end(score, data_dir, tmp_path):
    import json

    from tests.conftest import tiny_config
    from training.algorithms.at_init import run_at_init

    cfg = tiny_config(train_for="2ep")
    cfg.pruning.score, cfg.pruning.target_density = score, 0.2
    run = run_at_init(cfg, out=tmp_path, progress=False)
    entry = json.loads((run.dir / "summary.json").read_text())["levels"][0]
    assert entry["weights_kept"] == int(0.2 * entry["weights_prunable"] + 0.5)
    # the recorded accuracy is the saved ticket's: evaluate final.pt again on the test split
    loaded = load(run.dir / "level_0" / "final.pt")
    assert evaluate(loaded.model, loaded.dataset.test)[1] == entry["test_accuracy"]
    # the cost counts the sparse weight gradients of 2 epochs of 400 examples, not the dense ones
    macs, examples = layer_macs(loaded.model, run.data.input_shape), 2 * len(run.data.train)
    assert entry["backprop_macs"] == examples * per_example_cost(macs, loaded.mask)["total"]
    assert entry["backprop_macs"] < examples * per_example_cost(macs)["total"]


def test_at_init_checkpoints_hold_zeros_at_pruned_positions(data_dir, tmp_path):
    """The file contract: init.pt is W^0 * M, read raw, without training.engine.checkpoint's help."""
    from tests.conftest import tiny_config
    from training.algorithms.at_init import run_at_init

    cfg = tiny_config(train_for="1ep")
    cfg.pruning.score, cfg.pruning.target_density = "magnitude", 0.1
    run = run_at_init(cfg, out=tmp_path, progress=False)
    for kind in ("init", "final"):
        raw = torch.load(run.dir / "level_0" / f"{kind}.pt", weights_only=True)
        pruned = 0
        for name, m in raw["mask"].items():
            assert bool((raw["state_dict"][name][~m] == 0).all()), f"{kind}.pt: pruned weights of {name} not zero"
            pruned += int((~m).sum())
        assert pruned > 0
    init = torch.load(run.dir / "level_0" / "init.pt", weights_only=True)
    w0 = build_model("mnist1d_mlp", 10, run.data.input_shape, seed=0).state_dict()  # kept weights are W^0's
    for name, m in init["mask"].items():
        assert torch.equal(init["state_dict"][name][m], w0[name][m])
