"""Zhou et al.'s supermask set-up ("Deconstructing lottery tickets: zeros, signs, and the supermask"):
the sign-aware criteria, the signed-constant mask-1 action, the freeze_init_zero_mask mask-0 action,
the bias treatment, the sweep over kept fractions, and --threads."""
import json

import pandas as pd
import pytest
import torch

from training.engine.checkpoint import load, read_checkpoint
from training.errors import UserError
from training.engine.loop import evaluate


def _pair():
    """One layer of six weights: init and final values with known signs and magnitudes."""
    wi = {"w": torch.tensor([[0.5, -0.5, 0.2, -0.2, 0.1, 0.9]])}
    wf = {"w": torch.tensor([[0.9, 0.8, -0.3, -0.1, 0.05, -2.0]])}
    return wi, wf


def test_sign_criteria_follow_zhou_et_al():
    """large_final_same_sign ranks |w_f| among the weights whose sign did not change (the others
    score 0); large_final_diff_sign the reverse; magnitude_increase_same_sign |w_f| - |w_i| among
    same-sign weights, 0 for the sign-flipped ones."""
    from analysis.supermask import CRITERIA, criterion_mask

    for name in ("large_final_same_sign", "large_final_diff_sign", "magnitude_increase_same_sign",
                 "magnitude_increase_diff_sign"):
        assert name in CRITERIA
    wi, wf = _pair()
    same = [True, False, False, True, True, False]
    assert CRITERIA["large_final_same_sign"](wi["w"], wf["w"]).flatten().tolist() == pytest.approx(
        [0.9, 0, 0, 0.1, 0.05, 0])
    assert CRITERIA["large_final_diff_sign"](wi["w"], wf["w"]).flatten().tolist() == pytest.approx(
        [0, 0.8, 0.3, 0, 0, 2.0])
    assert CRITERIA["magnitude_increase_same_sign"](wi["w"], wf["w"]).flatten().tolist() == pytest.approx(
        [0.4, 0, 0, -0.1, -0.05, 0])
    assert CRITERIA["magnitude_increase_diff_sign"](wi["w"], wf["w"]).flatten().tolist() == pytest.approx(
        [0, 0.3, 0.1, 0, 0, 1.1])
    # keeping half: large_final keeps the three largest |w_f|, large_final_same_sign the three same-sign ones
    assert criterion_mask(wi, wf, ["w"], "large_final", 0.5)["w"].flatten().tolist() == [True, True, False,
                                                                                         False, False, True]
    assert criterion_mask(wi, wf, ["w"], "large_final_same_sign", 0.5)["w"].flatten().tolist() == same


def test_sign_flipped_weights_that_fill_a_same_sign_mask_are_drawn_at_random():
    """When fewer weights kept their sign than the mask keeps, the rest (all scoring 0) are drawn
    at random, as in Zhou et al.'s code, not taken by position."""
    from analysis.supermask import criterion_mask

    wi = {"w": torch.ones(1, 200)}
    wf = {"w": -torch.ones(1, 200)}
    wf["w"][0, :10] = 1.0  # ten weights kept their sign
    picks = [criterion_mask(wi, wf, ["w"], "large_final_same_sign", 0.25, seed=s)["w"][0] for s in range(3)]
    for m in picks:
        assert int(m.sum()) == 50 and bool(m[:10].all())
    assert not torch.equal(picks[0], picks[1])
    assert picks[0][10:].nonzero().flatten().float().mean() < 150  # not the last 40 positions
    assert torch.equal(picks[0], criterion_mask(wi, wf, ["w"], "large_final_same_sign", 0.25, seed=0)["w"][0])


def test_signed_constant_mask_1_action(runs):
    """mask-1 = signed_constant: each kept weight of a masked layer becomes sign(w^0) times the
    standard deviation of that layer's W^0; pruned weights stay zero."""
    from analysis.supermask import criteria_table, supermask_accuracy, supermask_report, untrained_network

    _, _, imp = runs
    loaded = load(imp.dir / "level_1" / "final.pt")
    w0 = load(imp.dir / "level_0" / "init.pt").model
    net = untrained_network(w0, loaded.mask, biases="init", mask_1="signed_constant")
    state, start = net.state_dict(), w0.state_dict()
    for name, m in loaded.mask.items():
        expected = torch.sign(start[name]) * start[name].std() * m
        assert torch.allclose(state[name], expected)
        assert len(state[name][m].abs().unique()) == 1
    assert supermask_accuracy(w0, loaded.mask, loaded.dataset, "init", "signed_constant") == \
        evaluate(net, loaded.dataset.test)[1]
    report = supermask_report(imp.dir / "level_1" / "final.pt", seeds=2)
    assert report["supermask_accuracy_signed_constant"] == supermask_accuracy(w0, loaded.mask, loaded.dataset,
                                                                              mask_1="signed_constant")
    assert len(report["random_mask_accuracies_signed_constant"]) == 2
    table = criteria_table(imp.dir / "level_0" / "final.pt", 0.5, criteria=["large_final_same_sign", "random"])
    assert all(0 <= r["untrained_accuracy_signed_constant"] <= 1 for r in table["rows"])


def test_biases_are_zero_by_default_as_zhou_et_al_had_them(runs, tmp_path, capsys):
    """Zhou et al.'s networks start with zero biases and never mask them: the supermask study zeroes
    the masked layers' biases by default, keeps them at W^0 with --biases init, and says which."""
    from analysis.supermask import main, supermask_accuracy, supermask_report, untrained_network

    _, _, imp = runs
    ckpt = imp.dir / "level_1" / "final.pt"
    loaded = load(ckpt)
    w0 = load(imp.dir / "level_0" / "init.pt").model
    net = untrained_network(w0, loaded.mask)
    for name, value in net.state_dict().items():
        if name.endswith("bias"):
            assert not bool(value.any()) and bool(w0.state_dict()[name].any())
    by_hand = load(imp.dir / "level_0" / "init.pt").model
    with torch.no_grad():
        for name, p in by_hand.named_parameters():
            p.mul_(loaded.mask[name].float()) if name in loaded.mask else p.zero_()
    assert supermask_accuracy(w0, loaded.mask, loaded.dataset) == evaluate(by_hand, loaded.dataset.test)[1]
    zero, init = supermask_report(ckpt, seeds=1), supermask_report(ckpt, seeds=1, biases="init")
    assert (zero["biases"], init["biases"]) == ("zero", "init") and "Zhou" in zero["biases_note"]
    assert init["dense_init_accuracy"] == evaluate(load(imp.dir / "level_0" / "init.pt").model,
                                                   loaded.dataset.test)[1]
    with pytest.raises(UserError, match="--biases"):
        supermask_report(ckpt, biases="final")
    assert main([str(ckpt), "--seeds", "1", "--biases", "init", "--out", str(tmp_path)]) == 0
    assert "biases: init" in capsys.readouterr().out
    assert json.loads((tmp_path / "supermask.json").read_text())["biases"] == "init"
    assert main([str(ckpt), "--criteria", "--out", str(tmp_path)]) == 0
    assert "biases: zero" in capsys.readouterr().out
    assert json.loads((tmp_path / "criteria.json").read_text())["biases"] == "zero"
    with pytest.raises(SystemExit) as usage:  # argparse's choices, one line through the toolkit's parser
        main([str(ckpt), "--biases", "final", "--out", str(tmp_path)])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--biases" in err and len(err.strip().splitlines()) == 1


def test_freeze_init_zero_mask_mask_0_action(runs):
    """Zhou et al.'s freeze_init_zero_mask: a pruned weight is frozen at zero if it moved toward
    zero during training (|w_f| < |w_i|), else at its initial value; the kept weights train."""
    from analysis.supermask import MASK_0, criteria_table

    assert MASK_0 == ("zero", "init", "freeze_init_zero_mask")
    _, _, imp = runs
    table = criteria_table(imp.dir / "level_0" / "final.pt", 0.5, train_masks=True, criteria=["movement"])
    [row] = table["rows"]
    path = row["trained_checkpoint_freeze_init_zero_mask"]
    assert path.startswith(str(imp.dir / "branches" / "criterion-movement-freeze_init_zero_mask-"))
    trained = read_checkpoint(path)
    wi = read_checkpoint(imp.dir / "level_0" / "init.pt")["state_dict"]
    wf = read_checkpoint(imp.dir / "level_0" / "final.pt")["state_dict"]
    both = [0, 0]
    for name, m in trained["mask"].items():
        toward = wi[name].abs() > wf[name].abs()
        outside = trained["state_dict"][name][~m]
        assert torch.equal(outside, torch.where(toward, torch.zeros_like(wi[name]), wi[name])[~m])
        both[0] += int((toward & ~m).sum())
        both[1] += int((~toward & ~m).sum())
        assert not torch.equal(trained["state_dict"][name][m], wi[name][m])  # the kept weights trained
    assert min(both) > 0  # both rules were exercised
    loaded = load(path)
    assert row["trained_accuracy_freeze_init_zero_mask"] == evaluate(loaded.model, loaded.dataset.test)[1]


def test_untrained_accuracy_across_kept_fractions(runs, tmp_path, capsys):
    """density_sweep: every criterion at every kept fraction, random masks over seeds at the same
    fractions, both mask-1 actions; the CLI writes JSON, CSV (pandas reads it) and PNG."""
    import analysis.supermask as sm

    _, _, imp = runs
    final = imp.dir / "level_0" / "final.pt"
    result = sm.density_sweep(final, [0.5, 0.2], seeds=2)
    assert result["densities"] == [0.5, 0.2] and result["biases"] == "zero"
    rows = pd.DataFrame(result["rows"])
    assert len(rows) == 2 * 2 * (len(sm.CRITERIA) + 2)
    random = rows[(rows.criterion == "random") & (rows.density == 0.2) & (rows.mask_1 == "init")]
    assert sorted(random.seed) == [0, 1]
    [cell] = [s for s in result["summary"] if (s["criterion"], s["density"], s["mask_1"]) == ("random", 0.2, "init")]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(random.accuracy.mean())
    table = sm.criteria_table(final, 0.2, criteria=["large_final_same_sign"])
    same = rows[(rows.criterion == "large_final_same_sign") & (rows.density == 0.2)].set_index("mask_1").accuracy
    assert same["init"] == table["rows"][0]["untrained_accuracy"]
    assert same["signed_constant"] == table["rows"][0]["untrained_accuracy_signed_constant"]

    titles = []
    real_save = sm.save_png
    sm_save = lambda fig, path: (titles.append(fig._suptitle.get_text()), real_save(fig, path))  # noqa: E731
    sm.save_png = sm_save
    try:
        assert sm.main([str(final), "--criteria", "--densities", "0.1,0.5", "--seeds", "2",
                        "--out", str(tmp_path)]) == 0
    finally:
        sm.save_png = real_save
    out = capsys.readouterr().out
    assert "large_final_same_sign" in out and "biases: zero" in out
    assert "biases: zero" in titles[0]
    csv = pd.read_csv(tmp_path / "sweep.csv")
    assert set(csv.columns) >= {"kept_fraction", "criterion", "mask_1", "seed", "test_accuracy", "biases"}
    assert sorted(csv.kept_fraction.unique()) == [0.1, 0.5] and (tmp_path / "sweep.png").exists()
    assert json.loads((tmp_path / "sweep.json").read_text())["seeds"] == 2


@pytest.mark.parametrize("args, message", [
    (["--criteria", "--densities", "0,0.5"], "--densities"),
    (["--criteria", "--densities", "a,b"], "--densities"),
    (["--densities", "0.5"], "--densities applies to --criteria"),
    (["--criteria", "--densities", "0.5", "--train"], "untrained"),
    (["--criteria", "--densities", "0.5", "--density", "0.2"], "not both"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--criteria", "--densities", "0.5", "--out", "/proc/nope/x"], "--out"),
])
def test_sweep_and_threads_refuse_bad_input_before_any_work(runs, capsys, monkeypatch, args, message):
    import analysis.supermask as sm

    _, _, imp = runs
    called = []
    monkeypatch.setattr(sm, "load", lambda *a, **k: called.append(a))
    assert sm.main([str(imp.dir / "level_0" / "final.pt"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert called == []


def test_threads_are_set_before_any_work_and_recorded(runs, tmp_path, monkeypatch):
    import analysis.supermask as sm

    _, _, imp = runs
    before = torch.get_num_threads()
    seen = []
    real_load = sm.load
    monkeypatch.setattr(sm, "load", lambda *a, **k: (seen.append(torch.get_num_threads()), real_load(*a, **k))[1])
    try:
        assert sm.main([str(imp.dir / "level_1" / "final.pt"), "--seeds", "1", "--threads", "3",
                        "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {3}
    provenance = json.loads((tmp_path / "supermask.json").read_text())["provenance"]
    assert provenance["threads"] == 3 and "torch" in provenance
