"""Fine-tuning as a mode of IMP (Han et al. 2015; Liu et al., "Rethinking the value of network
pruning"): a pruned level continues its parent's trained weights at a small constant rate."""
import json

import pytest
import torch

from tests.conftest import tiny_config
from training.__main__ import main
from training.engine.checkpoint import read_checkpoint
from training.algorithms.controls import run_control
from training.engine.cost import training_cost
from training.hparams import Config, PruningHparams
from training.algorithms.imp import run_imp
from training.sparsity.masks import is_nested
from training.models import build_model

IPE = 10  # tiny_config: 400 training examples, batch 40


def finetune_config(**pruning):
    """3 epochs at 0.05, dropping to 0.005 after epoch 2: the schedule's last rate is 0.005."""
    cfg = tiny_config(schedule="step", milestones="2ep", gamma=0.1)
    cfg.pruning.fraction = 0.5
    cfg.pruning.finetune = 2
    for k, v in pruning.items():
        setattr(cfg.pruning, k, v)
    return cfg


@pytest.fixture(scope="module")
def parent(tmp_path_factory, data_dir):
    return run_imp(finetune_config(), levels=3, out=tmp_path_factory.mktemp("runs"), progress=False)


def ckpt(run, level, kind):
    return read_checkpoint(run.dir / f"level_{level}" / f"{kind}.pt")


def rows(run, level):
    lines = (run.dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["level"] == level]


def test_finetuned_level_continues_the_pruned_trained_weights(parent):
    for level in (1, 2):
        before = ckpt(parent, level - 1, "final")["state_dict"]
        start, final = ckpt(parent, level, "rewind"), ckpt(parent, level, "final")
        mask = start["mask"]
        assert start["step"]["iteration"] == 0 and start["meta"]["finetune"]["from"] == f"level_{level - 1}/final.pt"
        for name, w in before.items():  # pruned positions zero, everything else the parent's trained values
            expected = w * mask[name] if name in mask else w
            assert torch.equal(start["state_dict"][name], expected), name
        for name in mask:
            assert not final["state_dict"][name][~mask[name]].any()
        assert any(not torch.equal(final["state_dict"][n], start["state_dict"][n]) for n in mask)
        # init.pt keeps its meaning in every run: W^0 under the level's mask
        w0 = build_model("mnist1d_mlp", 10, (1, 40), 0).state_dict()
        assert all(torch.equal(ckpt(parent, level, "init")["state_dict"][n], w0[n] * mask[n]) for n in mask)


def test_finetuning_length_rate_masks_and_cost(parent):
    assert [r["lr"] for r in rows(parent, 0)][-1] == pytest.approx(0.005)
    assert rows(parent, 0)[-1]["iteration"] == 3 * IPE
    for level in (1, 2):
        level_rows = rows(parent, level)
        assert level_rows[-1]["iteration"] == 2 * IPE  # --finetune 2 epochs, not the 3 of the schedule
        assert [r["lr"] for r in level_rows] == pytest.approx([0.005] * len(level_rows))  # default: the schedule's last rate
        final = ckpt(parent, level, "final")
        assert final["step"]["iteration"] == 2 * IPE and final["meta"]["finetune"]["lr"] == pytest.approx(0.005)
    masks = [ckpt(parent, level, "final")["mask"] for level in range(3)]
    assert is_nested(masks[2], masks[1]) and is_nested(masks[1], masks[0])
    assert sum(int(m.sum()) for m in masks[2].values()) < sum(int(m.sum()) for m in masks[1].values())
    summary = json.loads((parent.dir / "summary.json").read_text())["levels"]
    model = build_model("mnist1d_mlp", 10, (1, 40), 0)
    expected = training_cost(model, (1, 40), masks[1], 0, 2 * IPE, 400, 40)["total"]
    assert summary[1]["backprop_macs"] == pytest.approx(expected)
    assert summary[2]["cumulative_backprop_macs"] == pytest.approx(sum(e["backprop_macs"] for e in summary))


def test_finetune_rate_one_shot_and_resume(data_dir, tmp_path):
    cfg = finetune_config(finetune_lr=0.02, target_density=0.3)
    cfg.pruning.fraction = 0.2
    calls = []

    def kill_in_finetuning(epoch):  # level 0 ends epochs 1 and 2, level 1 then epoch 1 of 2
        calls.append(epoch)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_imp(cfg, levels=2, out=tmp_path / "a", progress=False, on_epoch_end=kill_in_finetuning)
    (folder,) = (tmp_path / "a").glob("imp-*")
    assert (folder / "level_1" / "state.pt").exists() and not (folder / "level_1" / "final.pt").exists()
    resumed = run_imp(finetune_config(finetune_lr=0.02, target_density=0.3, fraction=0.2), levels=2,
                      out=tmp_path / "a", progress=False)
    straight = run_imp(finetune_config(finetune_lr=0.02, target_density=0.3, fraction=0.2), levels=2,
                       out=tmp_path / "b", progress=False)
    a, b = ckpt(resumed, 1, "final"), ckpt(straight, 1, "final")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    assert [r["lr"] for r in rows(straight, 1)] == pytest.approx([0.02] * 3)
    kept, total = (sum(int(m.sum()) for m in a["mask"].values()), sum(m.numel() for m in a["mask"].values()))
    assert kept == pytest.approx(0.3 * total, abs=3)  # one-shot to the target density


def test_default_runs_keep_their_names(data_dir, tmp_path):
    # literals computed with the code before --finetune existed: old run folders keep resuming
    assert Config(pruning=PruningHparams()).hash("imp") == "f6ec9936304d"
    assert tiny_config().hash("imp") == "6feb16e8d6c7"
    assert tiny_config().hash("imp", "levels=3") == "c675ce6e05ba"
    assert finetune_config().hash("imp") != finetune_config(finetune=0).hash("imp")
    # a folder written before the fields existed (its config.json lacks them) resumes and extends
    run = run_imp(tiny_config(train_for="1ep"), levels=1, out=tmp_path, progress=False)
    stored = json.loads((run.dir / "config.json").read_text())
    assert stored["config"]["pruning"]["finetune"] == 0
    for key in ("finetune", "finetune_lr"):
        del stored["config"]["pruning"][key]
    (run.dir / "config.json").write_text(json.dumps(stored))
    again = run_imp(tiny_config(train_for="1ep"), levels=2, out=tmp_path, progress=False)
    assert again.dir == run.dir and (run.dir / "level_1" / "final.pt").exists()


def test_controls_accept_a_finetuned_parent_with_the_original_schedule(parent):
    mask = ckpt(parent, 1, "final")["mask"]
    for name in ("reinit", "scratch-e", "scratch-b"):
        branch = run_control(parent.dir, name, 1, seed=7, progress=False)
        final = read_checkpoint(branch.dir / "level_0" / "final.pt")
        init = read_checkpoint(branch.dir / "level_0" / "init.pt")
        assert init["step"]["iteration"] == 0 and init["meta"]["source_finetune_epochs"] == 2
        assert all(torch.equal(final["mask"][n], mask[n]) for n in mask)
        lrs = [r["lr"] for r in rows(branch, 0)]
        assert max(lrs) == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.005)  # the level-0 step schedule
        if name == "scratch-b":
            assert final["step"]["iteration"] > 3 * IPE
        else:
            assert final["step"]["iteration"] == 3 * IPE  # the original length, not the 2 epochs of fine-tuning


BAD = [
    (["--finetune", "2", "-k", "2ep"], "drop --rewind 2ep"),
    (["--finetune-lr", "0.01"], "--finetune-lr needs --finetune EPOCHS"),
    (["--finetune", "-1"], "--finetune (epochs of fine-tuning) must be at least 0"),
    (["--finetune", "2", "--finetune-lr", "0"], "--finetune-lr must be positive"),
    (["--finetune", "2", "--levels", "1"], "--finetune needs --levels >= 2"),
    (["--finetune", "2", "--schedule", "cosine"], "needs --finetune-lr"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_meaningless_combinations_are_refused(argv, message, tmp_path, data_dir, capsys):
    code = main(["imp", "--out", str(tmp_path / "out"), "--no-progress", "--data-dir", data_dir,
                 "--mnist1d-samples", "500", "--levels", "2", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("command", ["rise", "at-init", "ticket-search"])
def test_finetune_belongs_to_imp_and_lot(command, tmp_path, data_dir, capsys):
    code = main([command, "--out", str(tmp_path), "--no-progress", "--data-dir", data_dir, "--finetune", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "apply to imp and lot only" in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_finetuning_after_network_slimming(data_dir, tmp_path):
    cfg = finetune_config(score="slimming", fraction=0.3, finetune=1)
    cfg.model.model = "mnist1d_cnn_bn"
    cfg.training.train_for, cfg.training.milestones, cfg.training.bn_l1 = "2ep", "1ep", 1e-4
    run = run_imp(cfg, levels=2, out=tmp_path, progress=False)
    parent_state, start = ckpt(run, 0, "final")["state_dict"], ckpt(run, 1, "rewind")
    # the batch norms' running statistics come along with the trained weights
    assert torch.equal(start["state_dict"]["features.1.running_mean"], parent_state["features.1.running_mean"])
    assert ckpt(run, 1, "final")["step"]["iteration"] == IPE
    kept = [int(m.flatten(1).any(dim=1).sum()) for n, m in start["mask"].items() if n.startswith("features")]
    assert sum(kept) == 96 - round(0.3 * 96)  # whole channels, ranked across the three layers


def test_a_branch_of_a_finetuned_level_continues_the_finetuning(parent):
    from training.engine.branches import train_branch

    final = read_checkpoint(train_branch(parent.dir / "level_1" / "rewind.pt", "copy", seed=5, progress=False))
    assert final["step"]["iteration"] == 2 * IPE  # the fine-tuning's 2 epochs, not the schedule's 3
    branch_dir = parent.dir / "branches" / final["meta"]["run_hash"].join(["copy-", ""])
    lrs = [json.loads(line)["lr"] for line in (branch_dir / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.005] * len(lrs))
