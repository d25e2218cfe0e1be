"""Mask operations and pruning scores: exact counts, nesting, determinism, LAMP's formula."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from training.errors import UserError
from training.sparsity.masks import (
    MaskEnforcer,
    apply_mask,
    count,
    dense_mask,
    density,
    is_nested,
    output_name,
    prunable_names,
)
from training.sparsity.pruning import lamp_scores, layer_rates, prune

shapes = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4)


def random_layers(shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    weights = {f"l{i}.weight": torch.randn(*s, generator=gen) for i, s in enumerate(shapes)}
    return weights, {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}


@given(shapes, st.floats(0.01, 0.99), st.sampled_from(["magnitude", "random", "lamp"]),
       st.sampled_from(["global", "layerwise"]), st.integers(0, 10_000))
def test_prune_removes_exact_count_and_nests(shapes, fraction, score, scope, seed):
    weights, mask = random_layers(shapes, seed)
    for _ in range(3):
        kept_before, _ = count(mask)
        new = prune(weights, mask, fraction, score=score, scope=scope, seed=seed)
        kept_after, _ = count(new)
        if scope == "global":
            expected = kept_before - int(fraction * kept_before + 0.5)
        else:
            expected = sum(int(m.sum()) - int(fraction * int(m.sum()) + 0.5) for m in mask.values())
        assert kept_after == expected
        assert is_nested(new, mask)
        mask = new


@given(shapes, st.floats(0.05, 0.95), st.integers(0, 1000))
def test_magnitude_pruning_removes_the_smallest_alive(shapes, fraction, seed):
    weights, mask = random_layers(shapes, seed)
    new = prune(weights, mask, fraction)
    flat_w = torch.cat([weights[k].abs().flatten() for k in mask])
    flat_new = torch.cat([new[k].flatten() for k in mask])
    if flat_new.any() and (~flat_new).any():
        assert flat_w[~flat_new].max() <= flat_w[flat_new].min()


def test_ties_are_broken_by_position():
    weights = {"a.weight": torch.ones(2, 3), "b.weight": torch.ones(4)}
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}
    new = prune(weights, mask, 0.5)
    assert new["a.weight"].flatten().tolist() == [False] * 5 + [True]
    assert new["b.weight"].tolist() == [True] * 4
    assert prune(weights, mask, 0.5)["a.weight"].equal(new["a.weight"])


def test_pruned_weights_are_never_revived():
    weights = {"w": torch.tensor([0.1, 5.0, 0.2, 3.0, 4.0])}
    mask = {"w": torch.tensor([True, False, True, True, True])}
    new = prune(weights, mask, 0.5)
    assert new["w"].tolist() == [False, False, False, True, True]  # 5.0 stays pruned


def test_lamp_matches_formula_by_hand():
    # layer a: |w| = 1, 2, 3 -> w^2 = 1, 4, 9; scores 1/(1+4+9), 4/(4+9), 9/9
    # layer b: |w| = 0.5, 4 with 4 already pruned -> the pruned weight does not count
    weights = {"a": torch.tensor([3.0, -1.0, 2.0]), "b": torch.tensor([0.5, 4.0])}
    mask = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([True, False])}
    scores = lamp_scores(weights, mask)
    assert torch.allclose(scores["a"], torch.tensor([1.0, 1 / 14, 4 / 13]))
    assert torch.allclose(scores["b"], torch.tensor([1.0, 0.0]))
    # global LAMP removes the lowest score first: the 1.0 in layer a, not the 0.5 in layer b
    new = prune(weights, mask, 0.25, score="lamp")
    assert new["a"].tolist() == [True, False, True] and new["b"].tolist() == [True, False]


def test_lamp_keeps_every_layers_largest_weight():
    gen = torch.Generator().manual_seed(0)
    weights = {"big": torch.randn(100, generator=gen) * 100, "small": torch.randn(50, generator=gen) * 1e-3}
    mask = {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}
    new = prune(weights, mask, 0.9, score="lamp")
    for k in weights:  # the largest weight of each layer has LAMP score 1, the maximum
        assert new[k][weights[k].abs().argmax()]


def test_output_and_per_layer_rates():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 5))
    assert output_name(model) == "4.weight"
    mask = dense_mask(model)
    weights = dict(model.named_parameters())
    new = prune(weights, mask, 0.2, scope="layerwise", output_name="4.weight", output_fraction=0.1,
                layer_fractions="0.*=0.5")
    assert int(new["0.weight"].sum()) == 100  # 200 * (1 - 0.5)
    assert int(new["2.weight"].sum()) == 320  # 400 * (1 - 0.2)
    assert int(new["4.weight"].sum()) == 90  # 100 * (1 - 0.1)
    kept = prune(weights, mask, 0.2, output_name="4.weight", output_fraction=0.0)
    assert bool(kept["4.weight"].all())


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_open_interval_is_refused(fraction):
    weights, mask = random_layers([(3, 3)], 0)
    with pytest.raises(UserError, match=r"\(0, 1\)"):
        prune(weights, mask, fraction)


def test_bad_layer_rule_and_score_are_refused():
    weights, mask = random_layers([(3, 3)], 0)
    with pytest.raises(UserError, match="matches no prunable layer"):
        layer_rates(mask, 0.2, "global", layer_fractions="conv*=0.1")
    with pytest.raises(UserError, match="NAME=FRACTION"):
        layer_rates(mask, 0.2, "global", layer_fractions="l0.weight")
    with pytest.raises(UserError, match="unknown pruning score"):
        prune(weights, mask, 0.2, score="taylor")


def test_prunable_names_skip_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert prunable_names(model) == ["0.weight", "3.weight"]


@given(st.integers(0, 1000), st.floats(0.1, 0.9))
def test_apply_mask_and_enforcer_zero_exactly_the_pruned(seed, fraction):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    mask = prune(dict(model.named_parameters()), dense_mask(model), fraction, score="random", seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MaskEnforcer(model, mask)()
    for name, m in mask.items():
        w = model.state_dict()[name]
        assert bool((w[~m] == 0).all()) and torch.equal(w[m], before[name][m])
    apply_mask(model, mask)
    assert math.isclose(density(mask), sum(int(m.sum()) for m in mask.values()) / 72)


def test_collapse_warnings_name_disconnected_and_starved_layers_but_not_channel_pruning():
    from training.sparsity.masks import collapse_warnings

    starved = torch.zeros(4, 3, dtype=torch.bool)
    starved[0, 0] = True  # one weight for 4 output units
    channels = torch.zeros(4, 3, dtype=torch.bool)
    channels[1] = True  # one whole output channel kept (l1-filter, slimming): units removed on purpose
    mask = {"dead.weight": torch.zeros(4, 3, dtype=torch.bool), "starved.weight": starved,
            "channels.weight": channels, "fine.weight": torch.ones(4, 3, dtype=torch.bool)}
    lines = collapse_warnings(mask)
    assert len(lines) == 2
    assert lines[0].startswith("layer 'dead.weight' keeps no weight of 12: the network is disconnected")
    assert lines[1].startswith("layer 'starved.weight' keeps 1 of 12 weights, fewer than its 4 output units")
