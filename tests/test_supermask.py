"""Supermasks, Zhou et al.'s mask criteria and mask comparison."""
import pytest
import torch

from training.engine.checkpoint import read_checkpoint
from training.errors import UserError


def test_supermask_with_everything_kept_is_the_init_network(runs):
    from analysis.supermask import supermask_accuracy, supermask_report
    from training.engine.checkpoint import load

    _, _, imp = runs
    loaded = load(imp.dir / "level_1" / "final.pt")
    w0 = build_model_from(loaded.checkpoint)
    everything = {k: torch.ones_like(v) for k, v in loaded.mask.items()}
    assert supermask_accuracy(w0, everything, loaded.dataset) == supermask_accuracy(w0, None, loaded.dataset)
    init = load(imp.dir / "level_0" / "init.pt")  # the run's own W^0 checkpoint
    from training.engine.loop import evaluate

    # with the biases at their W^0 values, the dense untrained network is exactly the run's W^0
    assert supermask_accuracy(w0, None, loaded.dataset, biases="init") == evaluate(init.model, init.dataset.test)[1]
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
    table = criteria_table(imp.dir / "level_0" / "final.pt", 0.5)
    assert {r["criterion"] for r in table["rows"]} == {*CRITERIA, "random"}


def test_criteria_trained_under_each_mask_0_action_are_branches(runs):
    """--train: each criterion's mask is trained from the run's W^0 with the pruned weights at zero
    (mask-0 = zero) or frozen at W^0 (mask-0 = init); the reported accuracy is the trained network's."""
    from analysis.supermask import criteria_table
    from training.engine.checkpoint import load
    from training.engine.loop import evaluate

    _, _, imp = runs
    table = criteria_table(imp.dir / "level_1" / "final.pt", 0.5, train_masks=True, criteria=["large_final"])
    [row] = table["rows"]
    w0 = read_checkpoint(imp.dir / "level_0" / "init.pt")["state_dict"]  # dense, unmasked
    assert table["w0"] == str(imp.dir / "level_0" / "init.pt") and table["w0_unmasked"]
    for action in ("zero", "init"):
        path = row[f"trained_checkpoint_{action}"]
        assert path.startswith(str(imp.dir / "branches" / f"criterion-large_final-{action}-"))
        trained = read_checkpoint(path)
        mask = trained["mask"]
        for name, m in mask.items():
            outside = trained["state_dict"][name][~m]
            expected = w0[name][~m] if action == "init" else torch.zeros_like(outside)
            assert torch.equal(outside, expected)
            assert bool((w0[name][~m] != 0).any())  # W^0 is the unmasked one, even for a level-1 checkpoint
        loaded = load(path)
        assert row[f"trained_accuracy_{action}"] == evaluate(loaded.model, loaded.dataset.test)[1]
    again = criteria_table(imp.dir / "level_1" / "final.pt", 0.5, train_masks=True, criteria=["large_final"])
    assert again["rows"] == table["rows"]


def test_supermask_reads_the_branch_w0_not_a_seed(runs, tmp_path):
    from analysis.supermask import initial_weights, supermask_accuracy, supermask_report
    from training.engine.checkpoint import load
    from training.algorithms.controls import run_control
    from training.models import build_model

    _, _, imp = runs
    branch = run_control(imp.dir, "reinit", 1, seed=7, progress=False)
    final = branch.dir / "level_0" / "final.pt"
    loaded = load(final)
    mask = loaded.mask
    w0 = initial_weights(final)
    assert w0.path == branch.dir / "level_0" / "init.pt" and not w0.unmasked
    seed7 = build_model("mnist1d_mlp", 10, (1, 40), 7)
    for name, m in mask.items():
        assert torch.equal(w0.state[name], seed7.state_dict()[name] * m)
    report = supermask_report(final, seeds=2)
    assert report["w0"] == str(branch.dir / "level_0" / "init.pt")
    assert report["supermask_accuracy"] == supermask_accuracy(seed7, mask, loaded.dataset)
    assert report["random_mask_accuracies"] is None and "zeros" in report["note"]
    # an IMP checkpoint's W^0 is the run's dense level_0/init.pt
    assert initial_weights(imp.dir / "level_1" / "final.pt").path == imp.dir / "level_0" / "init.pt"
    # a checkpoint without its init.pt beside it: one clear line
    (tmp_path / "level_1").mkdir()
    (tmp_path / "level_1" / "final.pt").write_bytes((imp.dir / "level_1" / "final.pt").read_bytes())
    with pytest.raises(UserError, match="init.pt"):
        supermask_report(tmp_path / "level_1" / "final.pt")


@pytest.mark.parametrize("mode", [[], ["--criteria"], ["--compare"]])
def test_cli_refuses_an_unwritable_out_before_any_work(runs, tmp_path, capsys, monkeypatch, mode):
    import analysis.supermask as sm

    _, _, imp = runs
    called = []
    monkeypatch.setattr(sm, "load", lambda *a, **k: called.append(a))
    monkeypatch.setattr(sm, "_mask_of", lambda *a, **k: called.append(a))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    ckpts = [str(imp.dir / "level_1" / "final.pt")] * (2 if mode == ["--compare"] else 1)
    for out in (a_file, a_file / "sub", "/proc/nope/x"):
        assert sm.main([*ckpts, *mode, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and len(err.strip().splitlines()) == 1
    assert called == []


def test_cli_plots_and_leaves_no_stale_results(runs, tmp_path, capsys):
    from analysis.supermask import main

    _, _, imp = runs
    ckpt = str(imp.dir / "level_1" / "final.pt")
    assert main([ckpt, ckpt, "--seeds", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "imp-" in out and (tmp_path / "supermask.png").exists()
    import json

    result = json.loads((tmp_path / "supermask.json").read_text())["results"]
    assert len(result[0]["random_mask_accuracies"]) == 2 and result[0]["label"].startswith("imp-")
    # a call that fails after the checks must not leave the earlier call's results behind
    assert main([str(imp.dir / "level_0" / "final.pt"), "--out", str(tmp_path)]) == 2
    assert "prunes nothing" in capsys.readouterr().err
    assert not (tmp_path / "supermask.json").exists() and not (tmp_path / "supermask.png").exists()
    assert main([ckpt, "--criteria", "--density", "0.3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "criteria.png").exists()


def test_a_mistyped_checkpoint_keeps_the_previous_results(runs, tmp_path):
    from analysis.supermask import main

    _, _, imp = runs
    ticket = str(imp.dir / "level_1" / "final.pt")
    assert main([ticket, "--seeds", "2", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "supermask.json").read_text()
    assert main([ticket, str(tmp_path / "nothere.pt"), "--out", str(tmp_path)]) == 2
    assert (tmp_path / "supermask.json").read_text() == before


def test_a_branch_that_starts_after_w0_reads_its_source_runs_w0(tmp_path, data_dir):
    from analysis.supermask import initial_weights
    from tests.conftest import tiny_config
    from training.algorithms.controls import run_control
    from training.algorithms.imp import run_imp

    late = tiny_config(train_for="2ep")
    late.pruning.rewind = "1ep"
    imp = run_imp(late, levels=2, out=tmp_path, progress=False)
    branch = run_control(imp.dir, "random-prune", 1, progress=False)
    assert read_checkpoint(branch.dir / "level_0" / "init.pt")["step"]["iteration"] > 0  # W^k, not W^0
    w0 = initial_weights(branch.dir / "level_0" / "final.pt")
    assert w0.path == imp.dir / "level_0" / "init.pt" and w0.unmasked
