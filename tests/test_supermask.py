"""Supermasks, Zhou et al.'s mask criteria and mask comparison."""
import pytest
import torch

from training.checkpoint import read_checkpoint
from training.errors import UserError


def test_supermask_with_everything_kept_is_the_init_network(runs):
    from analysis.supermask import supermask_accuracy, supermask_report
    from training.checkpoint import load

    _, _, imp = runs
    loaded = load(imp.dir / "level_1" / "final.pt")
    w0 = build_model_from(loaded.checkpoint)
    everything = {k: torch.ones_like(v) for k, v in loaded.mask.items()}
    assert supermask_accuracy(w0, everything, loaded.dataset) == supermask_accuracy(w0, None, loaded.dataset)
    init = load(imp.dir / "level_0" / "init.pt")  # the run's own W^0 checkpoint
    from training.loop import evaluate

    assert supermask_accuracy(w0, None, loaded.dataset) == evaluate(init.model, init.dataset.test)[1]
    with pytest.raises(UserError, match="prunes nothing"):
        supermask_report(imp.dir / "level_0" / "final.pt")
    report = supermask_report(imp.dir / "level_1" / "final.pt", seeds=3)
    assert len(report["random_mask_accuracies"]) == 3 and report["density"] == pytest.approx(0.8, abs=1e-3)


def build_model_from(ckpt):
    from training.models import build_model

    spec = ckpt["model"]
    return build_model(spec["name"], spec["num_classes"], tuple(spec["input_shape"]), spec["seed"])


def test_jaccard_and_criteria(runs):
    from analysis.supermask import (
        CRITERIA,
        compare,
        criteria_table,
        criterion_mask,
        jaccard,
    )

    _, _, imp = runs
    mask = read_checkpoint(imp.dir / "level_1" / "final.pt")["mask"]
    assert jaccard(mask, mask) == 1.0
    dense = read_checkpoint(imp.dir / "level_0" / "final.pt")["mask"]
    assert compare(mask, dense)["jaccard"] == pytest.approx(0.8, abs=1e-3)  # nested: |A| / |B|
    w_i = read_checkpoint(imp.dir / "level_0" / "init.pt")["state_dict"]
    w_f = read_checkpoint(imp.dir / "level_0" / "final.pt")["state_dict"]
    for criterion in [*CRITERIA, "random"]:
        m = criterion_mask(w_i, w_f, list(mask), criterion, 0.25)
        for n in mask:
            assert int(m[n].sum()) == int(0.25 * m[n].numel() + 0.5)
    big = criterion_mask(w_i, w_f, list(mask), "large_final", 0.25)
    small = criterion_mask(w_i, w_f, list(mask), "small_final", 0.25)
    for n in mask:
        assert w_f[n][big[n]].abs().min() >= w_f[n][small[n]].abs().max()
    table = criteria_table(imp.dir / "level_0" / "final.pt", 0.5, train_masks=True)
    assert {r["criterion"] for r in table["rows"]} == {*CRITERIA, "random"}
    assert all(0 <= r["trained_accuracy_init"] <= 1 for r in table["rows"])
