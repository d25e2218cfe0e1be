"""Iterative stochastic sparsification (Savarese et al., "Winning the lottery with continuous
sparsification", Alg. 2): the straight-through gradient, the removal of fallen scores, seeded
sampling, resume, the checkpoints read by the analysis tools, supermasks on frozen weights, and
bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from tests.conftest import tiny_config
from training.engine.checkpoint import load, read_checkpoint
from training.models import build_model
from training.engine.seeding import generator
from training.algorithms.stochastic_sparsification import (
    BernoulliMask,
    ISSHparams,
    StochasticSparsification,
    remove_fallen,
    run_iss,
    sample_ticket,
)

ROOT = Path(__file__).resolve().parents[1]


def tiny():
    config = tiny_config(train_for="2ep")
    config.pruning = None
    return config


ISS_TINY = ISSHparams(mask_init=0.5, mask_lr=5.0)


def test_the_straight_through_gradient_is_the_gradient_wrt_the_sampled_mask_times_sigmoid_prime():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    s = torch.randn(3, 5) * 2
    s[0, 0], s[2, 4] = -math.inf, 40.0  # removed for good; certainly drawn
    form = BernoulliMask(s)
    parametrize.register_parametrization(layer, "weight", form)
    form.noise = torch.rand(3, 5)
    x = torch.randn(7, 5)
    loss = (layer(x) ** 2).sum() + 0.3 * layer(x).sum()
    loss.backward()
    # by hand: the sampled mask as a leaf, the same loss, its gradient
    m = (form.noise < torch.sigmoid(s)).float().requires_grad_(True)
    out = F.linear(x, w * m, b)
    ((out ** 2).sum() + 0.3 * out.sum()).backward()
    p = torch.sigmoid(s)
    torch.testing.assert_close(form.scores.grad, m.grad * p * (1 - p), rtol=1e-6, atol=0)
    assert form.scores.grad[0, 0] == 0 and m[0, 0] == 0 and m[2, 4] == 1
    assert torch.equal(layer.weight.detach(), w * m.detach())  # the forward is w * m exactly
    layer.eval()  # evaluation uses the mode [sigmoid(s) > 0.5]
    assert torch.equal(layer.weight.detach(), w * (s > 0))


def test_fallen_scores_become_minus_infinity_on_a_hand_made_tensor():
    s = torch.tensor([-math.inf, -3.0, 0.5, 0.999, 1.0, 1.5, 7.0])
    out = remove_fallen(s, 1.0)
    assert torch.equal(out, torch.tensor([-math.inf, -math.inf, -math.inf, -math.inf, 1.0, 1.5, 7.0]))
    assert torch.equal(remove_fallen(torch.tensor([-0.5, 0.0, -1.0]), -0.5), torch.tensor([-0.5, 0.0, -math.inf]))
    assert torch.sigmoid(out[0]) == 0  # never drawn again


def test_sampling_is_seeded_by_run_seed_round_and_iteration():
    def masks(seed, round, t):
        model = build_model("mnist1d_mlp", 10, (1, 40), seed=0)
        ext = StochasticSparsification(model, ISSHparams(mask_init=0.0), ["1.weight", "3.weight"], seed, round)
        ext.before_step(t)
        return [form.noise < form.probability() for form in ext.forms.values()]

    a, same = masks(0, 1, 5), masks(0, 1, 5)
    assert all(torch.equal(x, y) for x, y in zip(a, same))
    for other in (masks(0, 1, 6), masks(0, 2, 5), masks(1, 1, 5)):
        assert not any(torch.equal(x, y) for x, y in zip(a, other))
    assert 0.45 < float(a[0].float().mean()) < 0.55  # s = 0: each weight drawn with probability 1/2
    s = torch.tensor([-math.inf, -2.0, 0.0, 3.0]).repeat(5000)
    draw = sample_ticket(s, generator(0, "iss-ticket", 1))
    assert torch.equal(draw, sample_ticket(s, generator(0, "iss-ticket", 1)))
    rates = draw.view(5000, 4).float().mean(0)
    torch.testing.assert_close(rates, torch.sigmoid(s[:4]), atol=0.02, rtol=0)


def _checkpoints(run):
    out = {}
    for path in sorted(run.dir.glob("level_*/*.pt")):
        if path.stem in ("state", "search_state"):
            continue
        obj = torch.load(path, weights_only=True)
        tensors = obj.get("state_dict", obj.get("scores", obj.get("mask")))
        out[str(path.relative_to(run.dir))] = {k: v.clone() for k, v in tensors.items()}
    return out


def test_a_killed_iss_run_resumes_bit_identically_and_removes_what_fell(data_dir, tmp_path):
    whole = run_iss(tiny(), ISS_TINY, rounds=2, out=tmp_path / "a", progress=False)

    def kill(r, t):
        if r == 2 and t == 12:  # in the second epoch of round 2, after its resume state was written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_iss(tiny(), ISS_TINY, rounds=2, out=tmp_path / "b", progress=False, after_step=kill)
    killed_dir = next((tmp_path / "b").glob("iss-*"))
    assert (killed_dir / "level_2" / "search_state.pt").exists() and not (killed_dir / "level_2" / "final.pt").exists()
    resumed = run_iss(tiny(), ISS_TINY, rounds=2, out=tmp_path / "b", progress=False)
    a, b = _checkpoints(whole), _checkpoints(resumed)
    assert a.keys() == b.keys() and "level_2/search.pt" in a and "level_2/scores.pt" in a and "level_2/final.pt" in a
    for key in a:
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    # what fell below s_0 in round 1 is -inf after round 2; the rest is finite
    first = torch.load(whole.level_dir(1) / "scores.pt", weights_only=True)
    second = torch.load(whole.level_dir(2) / "scores.pt", weights_only=True)
    fallen = 0
    for name, s1 in first["scores"].items():
        removed = s1 < ISS_TINY.mask_init
        fallen += int(removed.sum())
        assert torch.all(second["scores"][name][removed] == -math.inf)
        assert torch.all(torch.isfinite(second["scores"][name][~removed]))
        assert torch.equal(first["mask"][name], s1 > 0) and not second["mask"][name][removed].any()
    assert fallen > 0 and first["info"]["removed_total"] == fallen == second["info"]["removed_total"] - \
        second["info"]["removed_now"]
    summary = json.loads((resumed.dir / "summary.json").read_text())
    levels = summary["levels"]
    assert [e["level"] for e in levels] == [0, 1, 2] and levels[2]["density"] < levels[1]["density"] <= 1
    assert levels[2]["search"]["soft_density"] == pytest.approx(1 - fallen / sum(s.numel() for s in first["scores"].values()))
    assert summary["search_cost"]["epochs"] == 4.0 and summary["search_cost"]["backprop_macs"] > 0


def test_the_ticket_trains_from_w_k_with_the_mask_held_at_zero_and_loads_in_the_analysis_tools(data_dir, tmp_path):
    from analysis.supermask import supermask_report

    run = run_iss(tiny(), ISSHparams(mask_init=0.5, mask_lr=5.0, rewind="3it"), rounds=2, out=tmp_path,
                  progress=False)
    w_k = read_checkpoint(run.level_dir(0) / "rewind.pt")["state_dict"]
    rewind = read_checkpoint(run.level_dir(2) / "rewind.pt")
    final = load(run.level_dir(2) / "final.pt", data_dir=data_dir)
    assert rewind["step"]["iteration"] == 3 and final.checkpoint["meta"]["start_iteration"] == 3
    scores = torch.load(run.level_dir(2) / "scores.pt", weights_only=True)
    for name, keep in rewind["mask"].items():
        assert torch.equal(keep, scores["mask"][name]) and torch.equal(keep, scores["scores"][name] > 0)
        assert torch.equal(rewind["state_dict"][name], w_k[name] * keep)
        assert torch.all(final.checkpoint["state_dict"][name][~keep] == 0)
    assert final.checkpoint["meta"]["density"] < 1 and final.checkpoint["meta"]["iss_round"] == 2
    report = supermask_report(run.level_dir(2) / "final.pt", seeds=1, device="cpu", data_dir=data_dir)
    assert report["w0_unmasked"] and 0 <= report["supermask_accuracy"] <= 1
    assert load(run.level_dir(2) / "search.pt", data_dir=data_dir).mask is not None


def test_frozen_weights_every_checkpoint_holds_w0_inside_the_mask_and_the_mask_is_learned(data_dir, tmp_path):
    from analysis.supermask import supermask_report

    hp = ISSHparams(mask_init=0.05, freeze_weights=True)  # SGD lr 100 on s, the paper's supermask setting
    assert hp.learning_rate() == 100.0
    run = run_iss(tiny(), hp, rounds=2, out=tmp_path, progress=False)
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
            assert torch.all(value[~keep] == 0), (path, name)  # outside the mask: zero
        seen += 1
    assert seen == 13  # level_0: init, rewind, final; rounds 1-2: search, scores, init, rewind, final
    s1 = torch.load(run.level_dir(1) / "scores.pt", weights_only=True)["scores"]
    assert all(not torch.all(s == hp.mask_init) for s in s1.values())
    masks = [read_checkpoint(run.level_dir(level) / "final.pt")["mask"] for level in (0, 1, 2)]
    assert all(m.all() for m in masks[0].values())
    assert any(not torch.equal(masks[1][n], masks[0][n]) for n in masks[0])  # the mask changes
    summary = json.loads((run.dir / "summary.json").read_text())["levels"]
    assert summary[2]["density"] < summary[1]["density"] < 1
    assert summary[2]["test_accuracy"] == read_checkpoint(run.level_dir(2) / "search.pt")["meta"]["iss_search"][
        "results"]["test_accuracy"]  # the supermask, evaluated untrained, is the search network's mode
    report = supermask_report(run.level_dir(2) / "final.pt", seeds=1, device="cpu", data_dir=data_dir, biases="init")
    assert report["supermask_accuracy"] == pytest.approx(summary[2]["test_accuracy"])  # the same network


@pytest.mark.parametrize("flags, message", [
    (["--lambda", "-1"], "--lambda"),
    (["--mask-lr", "0"], "--mask-lr"),
    (["--mask-layers", "nothing.*"], "--mask-layers"),
    (["--dense-layers", "nothing.*"], "--dense-layers"),
    (["--rounds", "0"], "--rounds"),
    (["-k", "30ep"], "rewind point 30ep"),
    (["--freeze-weights", "-k", "2ep"], "--freeze-weights"),
])
def test_bad_input_is_one_error_line_exit_2_before_any_folder(tmp_path, capsys, flags, message):
    from training.__main__ import main

    out = tmp_path / "runs"
    assert main(["iss", "--out", str(out), "--no-progress", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not out.exists()


def test_the_iss_command_is_registered_and_its_bad_input_fails_in_a_fresh_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training", "iss", "--out", str(tmp_path / "x"), "--lambda", "-1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --lambda") and not (tmp_path / "x").exists()


def test_the_iss_presets_reach_the_run(monkeypatch, tmp_path):
    """--preset iss_conv6_cifar10 sets the paper's ISS settings and its 30 rounds; a flag overrides
    the preset, and the supermask preset freezes the weights."""
    import training.algorithms.stochastic_sparsification as iss_module
    from training.__main__ import make_parser, prepare

    seen = {}

    def fake_run(config, iss, rounds, **common):
        seen.update(iss=iss, rounds=rounds, config=config)

    monkeypatch.setattr(iss_module, "run_iss", fake_run)
    import training.algorithms.mask_search as mask_search
    monkeypatch.setattr(mask_search, "check_rewind", lambda *a: None)  # no CIFAR-10 files here
    argv = ["iss", "--preset", "iss_conv6_cifar10", "--lambda", "1e-7", "--out", str(tmp_path), "--device", "cpu"]
    prepare("iss", make_parser().parse_args(argv))()
    assert (seen["iss"].mask_init, seen["iss"].mask_lr, seen["iss"].penalty, seen["rounds"]) == (1.0, 20.0, 1e-7, 30)
    assert (seen["config"].model.model, seen["config"].training.lr, seen["config"].training.batch_size) == ("conv6", 3e-4, 60)
    argv = ["iss", "--preset", "ss_supermask_conv6_cifar10", "--out", str(tmp_path), "--device", "cpu"]
    prepare("iss", make_parser().parse_args(argv))()
    assert seen["iss"].freeze_weights and seen["iss"].learning_rate() == 100.0 and seen["rounds"] == 1


@pytest.mark.parametrize("command, preset", [("cs", "iss_conv6_cifar10"), ("iss", "cs_conv6_cifar10"),
                                             ("imp", "iss_conv6_cifar10"), ("imp", "deep_compression_lenet300")])
def test_a_preset_made_for_another_command_is_one_line(command, preset, tmp_path, capsys):
    from training.__main__ import main

    assert main([command, "--preset", preset, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --preset {preset} is a setup for ") and err.endswith(f", not {command}\n")
    assert not (tmp_path / "x").exists()
