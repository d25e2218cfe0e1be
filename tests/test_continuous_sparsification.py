"""Continuous sparsification (Savarese et al., "Winning the lottery with continuous sparsification",
Alg. 3): the temperature schedule, the reset rule, the binary ticket, the mask parameters'
optimizer, resume, the checkpoints read by the analysis tools, and bad input."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config
from training.engine.checkpoint import load, read_checkpoint
from training.algorithms.continuous_sparsification import (
    CSHparams,
    ContinuousSparsification,
    beta_at,
    reset_scores,
    run_cs,
)
from training.algorithms.mask_search import masked_names
from training.data import TrainBatches, load_dataset
from training.engine.loop import train
from training.sparsity.masks import SigmoidMask
from training.models import build_model
from training.engine.seeding import derive_seed

ROOT = Path(__file__).resolve().parents[1]


def tiny(**training):
    config = tiny_config(train_for="2ep", **training)
    config.pruning = None
    return config


CS_TINY = CSHparams(penalty=1e-3, mask_init=0.02, mask_lr=0.01)


def test_at_the_end_of_a_round_the_soft_mask_is_the_binary_mask_to_float_precision():
    hp = CSHparams()  # the default beta_T
    assert beta_at(960, 0, 960, 32, hp) == hp.beta_final
    g = torch.Generator().manual_seed(0)
    magnitude = 0.2 + torch.rand(1000, generator=g)  # |beta_T * s| >= 20: sigmoid is 0 or 1 in float32
    s = magnitude * torch.where(torch.rand(1000, generator=g) < 0.5, -1.0, 1.0)
    form = SigmoidMask(s, beta=beta_at(960, 0, 960, 32, hp))
    torch.testing.assert_close(form.soft(), form.binary().float(), rtol=0, atol=1e-8)
    assert torch.equal(form.binary(), s > 0)


@pytest.mark.slow
def test_with_the_default_settings_a_search_round_ends_with_a_binary_soft_mask(data_dir):
    """Round 1 of the default search (MNIST-1D CNN, 5,000 examples, 30 epochs, every CS setting at
    its default): every entry of sigmoid(beta_T * s_T) is within 1e-6 of b(s_T). With the paper's
    beta_T = 100 and Adam 3e-4 on s (the defaults before), 7,526 of 12,000 entries were not."""
    from training.hparams import DatasetHparams, ModelHparams, TrainingHparams

    data, hp, cs = load_dataset(DatasetHparams()), TrainingHparams(), CSHparams()
    model = build_model(ModelHparams().model, data.num_classes, data.input_shape, seed=hp.seed)
    ext = ContinuousSparsification(model, cs, hp, masked_names(model, cs))
    train(model, data, hp, progress=False, extensions=[ext])
    assert ext.beta(ext.end) == cs.beta_final == next(iter(ext.forms.values())).beta
    scores = ext.scores().values()
    entries = sum(s.numel() for s in scores)
    off = sum(int(((torch.sigmoid(cs.beta_final * s) - (s > 0).float()).abs() > 1e-6).sum()) for s in scores)
    removed = sum(int((s <= 0).sum()) for s in scores)
    assert entries > 10_000 and off == 0
    assert 0.3 * entries < removed < entries  # a real search: many weights removed, not all


def test_a_trained_round_ends_at_beta_final_and_its_ticket_rounds_the_soft_mask(data_dir, tmp_path):
    run = run_cs(tiny(), CS_TINY, rounds=1, out=tmp_path, progress=False)
    search = read_checkpoint(run.level_dir(1) / "search.pt")
    scores = torch.load(run.level_dir(1) / "scores.pt", weights_only=True)
    assert search["meta"]["cs_search"]["beta_final"] == CS_TINY.beta_final
    for name, s in scores["scores"].items():
        soft = torch.sigmoid(CS_TINY.beta_final * s)
        assert torch.equal(search["mask"][name], s > 0) and torch.equal(search["mask"][name], soft > 0.5)
        binary = (CS_TINY.beta_final * s).abs() >= 20
        torch.testing.assert_close(soft[binary], (s > 0)[binary].float(), rtol=0, atol=1e-8)
    ticket = read_checkpoint(run.level_dir(1) / "final.pt")["mask"]
    assert all(torch.equal(ticket[n], scores["mask"][n]) for n in scores["mask"])


def test_the_reset_rule_on_a_hand_made_tensor():
    s = torch.tensor([-0.5, -1e-3, 0.0, 1e-4, 0.02, 3.0])
    paper = reset_scores(s, CSHparams(mask_init=0.05, beta_final=100.0))
    torch.testing.assert_close(paper, torch.tensor([-50.0, -0.1, 0.0, 0.01, 0.05, 0.05]))
    code = reset_scores(s, CSHparams(mask_init=0.05, beta_final=100.0, reset="code"))
    torch.testing.assert_close(code, torch.tensor([-0.5, -1e-3, 0.0, 1e-4, 0.02, 0.05]))


def test_beta_schedule_per_iteration_and_per_epoch():
    hp = CSHparams(beta_final=100.0)
    # per iteration: beta_t = beta_T^(t/T), over the round [start, end)
    assert [beta_at(t, 0, 10, 5, hp) for t in (0, 5, 10)] == pytest.approx([1.0, 10.0, 100.0])
    assert beta_at(7, 2, 12, 5, hp) == pytest.approx(100 ** 0.5)
    # per epoch (the authors' code): constant within an epoch, epoch e of E at beta_T^(e/(E-1))
    epoch = CSHparams(beta_final=100.0, beta_schedule="epoch")
    values = [beta_at(t, 0, 15, 5, epoch) for t in range(16)]
    assert values[:5] == [1.0] * 5 and values[5:10] == pytest.approx([10.0] * 5)
    assert values[10:] == pytest.approx([100.0] * 6)
    shifted = CSHparams(beta_initial=2.0, beta_final=8.0)
    assert beta_at(5, 0, 10, 5, shifted) == pytest.approx(4.0)


def test_weight_decay_reaches_the_weights_not_the_mask_parameters(data_dir):
    hp = tiny(momentum=0.0, weight_decay=0.5).training
    data = load_dataset(tiny().dataset)
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    cs = CSHparams(mask_optimizer="sgd", penalty=0.0)
    ext = ContinuousSparsification(model, cs, hp, masked_names(model, cs))
    layer = model[3].parametrizations.weight
    form = ext.forms["3.weight"]
    s0, w0 = form.scores.detach().clone(), layer.original.detach().clone()
    by_hand = copy.deepcopy(model)
    torch.manual_seed(derive_seed(hp.seed, "dropout", 0, 0))
    x, y = next(iter(TrainBatches(data.train, hp.batch_size, hp.seed, data.augment).epoch(0)))
    F.cross_entropy(by_hand(x), y).backward()
    gs = by_hand[3].parametrizations.weight[0].scores.grad
    gw = by_hand[3].parametrizations.weight.original.grad
    train(model, data, hp, end=1, progress=False, extensions=[ext])
    torch.testing.assert_close(form.scores.detach(), s0 - hp.lr * gs, rtol=0, atol=1e-7)  # no decay on s
    torch.testing.assert_close(layer.original.detach(), w0 - hp.lr * (gw + 0.5 * w0), rtol=0, atol=1e-7)
    assert not torch.allclose(form.scores.detach(), s0 - hp.lr * (gs + 0.5 * s0), rtol=0, atol=1e-6)


def _checkpoints(run):
    out = {}
    for path in sorted(run.dir.glob("level_*/*.pt")):
        if path.stem in ("state", "search_state"):
            continue
        obj = torch.load(path, weights_only=True)
        tensors = obj.get("state_dict", obj.get("scores", obj.get("mask")))
        out[str(path.relative_to(run.dir))] = {k: v.clone() for k, v in tensors.items()}
    return out


def test_a_killed_cs_run_resumes_bit_identically(data_dir, tmp_path):
    cs = CSHparams(penalty=1e-3, mask_init=0.02, mask_lr=0.01, search_rewind=False)
    whole = run_cs(tiny(), cs, rounds=2, out=tmp_path / "a", progress=False)

    def kill(r, t):
        if r == 2 and t == 12:  # in the second epoch of round 2, after its resume state was written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cs(tiny(), cs, rounds=2, out=tmp_path / "b", progress=False, after_step=kill)
    killed_dir = next((tmp_path / "b").glob("cs-*"))
    assert (killed_dir / "level_2" / "search_state.pt").exists() and not (killed_dir / "level_2" / "final.pt").exists()
    resumed = run_cs(tiny(), cs, rounds=2, out=tmp_path / "b", progress=False)
    a, b = _checkpoints(whole), _checkpoints(resumed)
    assert a.keys() == b.keys() and "level_2/search.pt" in a and "level_2/final.pt" in a
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    summary = json.loads((resumed.dir / "summary.json").read_text())
    assert [e["level"] for e in summary["levels"]] == [0, 1, 2]
    assert summary["levels"][2]["search"]["cumulative_epochs"] == 4.0 and summary["search_cost"]["epochs"] == 4.0
    assert summary["search_cost"]["backprop_macs"] == summary["levels"][2]["search"]["cumulative_backprop_macs"] > 0
    rows = [json.loads(line) for line in (resumed.dir / "search.jsonl").read_text().splitlines()]
    assert [(r["level"], r["iteration"]) for r in rows] == [(1, 0), (1, 10), (1, 20), (2, 0), (2, 10), (2, 20)]


def test_each_rounds_ticket_trains_from_w_k_with_the_mask_held_at_zero_and_loads_in_the_analysis_tools(
        data_dir, tmp_path):
    from analysis.connectivity import connect
    from analysis.hessian.spectrum import Settings, analyze
    from analysis.supermask import supermask_report

    run = run_cs(tiny(), CSHparams(penalty=1e-3, mask_init=0.02, mask_lr=0.01, rewind="3it"), rounds=2,
                 out=tmp_path, progress=False)
    w_k = read_checkpoint(run.level_dir(0) / "rewind.pt")["state_dict"]
    for r in (1, 2):
        rewind = read_checkpoint(run.level_dir(r) / "rewind.pt")
        final = load(run.level_dir(r) / "final.pt", data_dir=data_dir)
        assert rewind["step"]["iteration"] == 3 and final.checkpoint["meta"]["start_iteration"] == 3
        for name, keep in rewind["mask"].items():
            assert torch.equal(rewind["state_dict"][name], w_k[name] * keep)
            assert torch.all(final.checkpoint["state_dict"][name][~keep] == 0)
        assert final.checkpoint["meta"]["density"] < 1
    ticket = run.level_dir(2) / "final.pt"
    assert analyze(ticket, Settings(top_k=2, trace=False, density=False, space="ticket", samples=100),
                   data_dir=data_dir)
    assert supermask_report(ticket, seeds=1, device="cpu", data_dir=data_dir)
    assert connect(run.level_dir(2) / "rewind.pt", ticket, points=3, device="cpu", data_dir=data_dir)
    assert load(run.level_dir(2) / "search.pt", data_dir=data_dir).mask is not None


@pytest.mark.parametrize("flags, message", [
    (["--beta-final", "0.5"], "--beta-final"),
    (["--lambda", "-1"], "--lambda"),
    (["--mask-layers", "nothing.*"], "--mask-layers"),
    (["--dense-layers", "nothing.*"], "--dense-layers"),
    (["--rounds", "0"], "--rounds"),
    (["-k", "30ep"], "rewind point 30ep"),
    (["--rewind", "5000it"], "rewind point 5000it"),
    (["--freeze-weights", "-k", "2ep"], "--freeze-weights"),
    (["--freeze-weights", "--search-rewind"], "--search-rewind means nothing with --freeze-weights"),
])
def test_bad_input_is_one_error_line_exit_2_before_any_folder(tmp_path, capsys, flags, message):
    from training.__main__ import main

    out = tmp_path / "runs"
    assert main(["cs", "--out", str(out), "--no-progress", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not out.exists()


def test_the_cs_command_is_registered_and_its_bad_input_fails_in_a_fresh_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", "cs", "--out", str(tmp_path / "x"), "--lambda", "-1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --lambda") and not (tmp_path / "x").exists()


def test_presets_carry_the_papers_settings():
    from training.presets import preset_values

    conv6 = preset_values("cs_conv6_cifar10")
    assert (conv6["model"], conv6["lr"], conv6["batch_size"], conv6["beta_final"], conv6["penalty"],
            conv6["rounds"]) == ("conv6", 3e-4, 60, 100.0, 1e-10, 4)
    resnet = preset_values("cs_resnet18_cifar10")
    assert (resnet["beta_final"], resnet["penalty"], resnet["rounds"], resnet["rewind"], resnet["search_rewind"],
            resnet["milestones"]) == (200.0, 1e-8, 5, "2ep", False, "56ep,71ep")
    model = build_model("resnet18", 10, (3, 32, 32), 0)
    names = masked_names(model, CSHparams(dense_layers=resnet["dense_layers"]))
    assert "fc.weight" not in names and not any("shortcut" in n for n in names) and "stem.0.weight" in names


def test_default_cs_runs_keep_their_names():
    # literals computed before --freeze-weights existed: a default-False field is left out of the hash
    from training.hparams import Config

    config = Config()
    config.pruning = None
    assert CSHparams().canonical() == CSHparams(freeze_weights=False).canonical() == "cs()"
    assert config.hash("cs", CSHparams().canonical()) == "b57f706bfc50"
    assert config.hash("cs", CSHparams(mask_init=0.02).canonical()) == "5a6b0248c6ae"
    assert config.hash("cs", CSHparams(freeze_weights=True).canonical()) != "b57f706bfc50"


def test_frozen_weights_every_checkpoint_holds_w0_inside_the_mask_and_the_mask_is_learned(data_dir, tmp_path):
    cs = CSHparams(penalty=1e-3, mask_init=0.02, mask_lr=0.05, freeze_weights=True)
    run = run_cs(tiny(), cs, rounds=2, out=tmp_path, progress=False)
    w0 = run.new_model().state_dict()
    seen = 0
    for path in sorted(run.dir.glob("level_*/*.pt")):
        if path.stem == "mask":
            continue
        obj = torch.load(path, weights_only=True)
        state, mask = (obj["weights"], None) if path.stem == "scores" else (obj["state_dict"], obj["mask"])
        assert state.keys() == w0.keys(), path
        for name, value in state.items():
            keep = mask[name] if mask is not None and name in mask else torch.ones_like(value, dtype=torch.bool)
            assert torch.equal(value[keep], w0[name][keep]), (path, name)  # bit for bit
            assert torch.all(value[~keep] == 0), (path, name)  # outside the mask: zero (full W^0 in scores.pt)
        seen += 1
    assert seen == 13  # level_0: init, rewind, final; rounds 1-2: search, scores, init, rewind, final
    scores = torch.load(run.level_dir(1) / "scores.pt", weights_only=True)["scores"]
    assert all(not torch.all(s == cs.mask_init) for s in scores.values())
    summary = json.loads((run.dir / "summary.json").read_text())["levels"]
    assert summary[0]["density"] == 1 and summary[1]["density"] < 1  # the mask changes
    final = read_checkpoint(run.level_dir(1) / "final.pt")
    assert final["meta"]["start_iteration"] == 0 and final["step"]["iteration"] == 0
    assert all(torch.equal(final["mask"][n], s > 0) for n, s in scores.items())


def test_a_frozen_search_counts_the_full_weight_gradient_and_old_defaults_are_refused(data_dir, tmp_path):
    """--freeze-weights trains no weight, yet each score's gradient is its effective weight's: the
    search's weight-gradient MACs equal the forward MACs (u_l = 1). A folder whose stored CS settings
    differ from today's defaults (same hash: the hash covers non-defaults only) is refused, untouched."""
    from training.errors import UserError

    cs = CSHparams(freeze_weights=True, penalty=1e-3, mask_lr=0.01)
    run = run_cs(tiny(), cs, rounds=1, out=tmp_path, progress=False)
    macs = torch.load(run.level_dir(1) / "scores.pt", weights_only=True)["info"]["backprop_macs"]
    assert macs["weight_grad"] == macs["forward"] > 0
    config = json.loads((run.dir / "config.json").read_text())
    config["cs"]["beta_final"] = 100.0  # as if written when beta_T's default was the paper's 100
    (run.dir / "config.json").write_text(json.dumps(config))
    before = {p: p.stat().st_mtime_ns for p in run.dir.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="beta_final stored 100.0, now 1000.0"):
        run_cs(tiny(), cs, rounds=2, out=tmp_path, progress=False)
    assert not (run.level_dir(2)).exists()
    # nothing trained or rewritten (config.json's provenance may record the refused start)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.name not in (".lock", "config.json"))
