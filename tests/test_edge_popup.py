"""Edge-popup (Ramanujan et al., "What's hidden in a randomly weighted neural network?"): only the
scores train, every layer keeps exactly round(k * n) weights, every weight stays W^0, and the
result is an ordinary checkpoint that the loaders and the analysis tools read as the subnetwork."""
import json
import math

import pytest
import torch

from tests.conftest import tiny_config
from training.__main__ import main
from training.engine.checkpoint import load, read_checkpoint
from training.algorithms.edge_popup import EdgePopupHparams, attach_scores, freeze_random_weights, run_edge_popup
from training.errors import UserError
from training.engine.loop import evaluate
from training.sparsity.masks import prunable_names
from training.models import build_model
from training.engine.runs import load_mask


def config(model="mnist1d_mlp", **training):
    cfg = tiny_config(**{"lr": 0.1, "momentum": 0.9, "schedule": "cosine", **training})
    cfg.model.model = model
    return cfg


def ckpt(run, kind):
    return read_checkpoint(run.dir / "level_0" / f"{kind}.pt")


def test_every_layer_keeps_round_k_n_and_every_weight_stays_w0(data_dir, tmp_path):
    """On a batch-norm CNN: init.pt is the dense frozen network (signed Kaiming constants, zero biases,
    batch norm scale 1 and shift 0); final.pt keeps exactly round(k * n) weights per layer, holds
    W^0 bit for bit inside its mask and zero outside, and its mask is not the initial scores' top-k."""
    keep = 0.3
    run = run_edge_popup(config("mnist1d_cnn_bn", train_for="3ep"), EdgePopupHparams(keep=keep), out=tmp_path,
                         progress=False)
    init, final = ckpt(run, "init"), ckpt(run, "final")
    w0, w = init["state_dict"], final["state_dict"]
    assert init["mask"] is None and init["meta"]["density"] == 1.0
    names = prunable_names(build_model("mnist1d_cnn_bn", 10, (1, 40), 0))
    assert set(final["mask"]) == set(names)
    for name in names:
        m = final["mask"][name]
        assert int(m.sum()) == round(keep * m.numel()), name
        assert torch.equal(w[name], torch.where(m, w0[name], torch.zeros(()))), f"{name} is not W^0 * mask"
        std = math.sqrt(2 / math.prod(w0[name].shape[1:]))
        assert torch.allclose(w0[name].abs(), torch.full_like(w0[name], std)), f"{name}: not a signed Kaiming constant"
    for key, value in w0.items():
        if key not in names and "running" not in key and "num_batches" not in key:
            assert torch.equal(w[key], value), f"{key} changed"
            expected = 1.0 if key.startswith("features.") and key.endswith(".weight") else 0.0  # batch-norm scales
            assert torch.all(value == expected), f"{key}: biases are 0, batch-norm scale 1 and shift 0"
    assert final["meta"]["masked_weights"] == "zero" and final["meta"]["edge_popup"]["keep"] == keep
    saved = load_mask(run.dir / "level_0" / "mask.pt")
    assert all(torch.equal(saved[n], final["mask"][n]) for n in names)

    # the scores trained: the mask is not the top-k of the scores the run started from
    model = build_model("mnist1d_cnn_bn", 10, (1, 40), 0)
    freeze_random_weights(model, EdgePopupHparams(keep=keep), seed=0)
    assert all(torch.equal(model.state_dict()[k], w0[k]) for k in w0), "init.pt is not the seeded W^0"
    start = {name: form.binary() for name, form in attach_scores(model, keep, seed=0).items()}
    assert any(not torch.equal(start[n], final["mask"][n]) for n in names)
    assert json.loads((run.dir / "config.json").read_text())["edge_popup"] == {
        "keep": keep, "init": "signed_constant", "scale_fan": False}


def test_found_subnetwork_beats_random_ones_and_loads_as_the_subnetwork(data_dir, tmp_path):
    """The final checkpoint loads (training.engine.checkpoint.load) as the network the run evaluated, and
    analysis.supermask, reading W^0 from init.pt, scores that same subnetwork far above random masks
    with the same number of weights in every layer."""
    from analysis.supermask import supermask_report

    run = run_edge_popup(config(train_for="8ep"), EdgePopupHparams(keep=0.5, init="kaiming_normal"),
                         out=tmp_path, progress=False)
    accuracy = json.loads((run.dir / "summary.json").read_text())["levels"][0]["test_accuracy"]
    loaded = load(run.dir / "level_0" / "final.pt")
    assert evaluate(loaded.model, loaded.dataset.test)[1] == accuracy
    report = supermask_report(run.dir / "level_0" / "final.pt", seeds=3)
    assert report["w0_unmasked"] and report["density"] == 0.5
    assert report["supermask_accuracy"] == accuracy
    assert accuracy > report["random_mask_accuracy_mean"] + 0.1, report
    assert accuracy > 0.2  # 10 classes: chance is 0.1


class Killed(Exception):
    pass


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_killed_run_resumes_bit_identically(schedule, data_dir, tmp_path):
    hp = EdgePopupHparams(keep=0.4, scale_fan=True)
    reference = run_edge_popup(config(train_for="4ep", schedule=schedule), hp, out=tmp_path / "a", progress=False)

    def kill(epoch):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run_edge_popup(config(train_for="4ep", schedule=schedule), hp, out=tmp_path / "b", progress=False,
                       on_epoch_end=kill)
    assert (tmp_path / "b" / reference.dir.name / "level_0" / "state.pt").exists()
    resumed = run_edge_popup(config(train_for="4ep", schedule=schedule), hp, out=tmp_path / "b", progress=False)
    a, b = ckpt(reference, "final"), ckpt(resumed, "final")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["mask"][k], b["mask"][k]) for k in a["mask"])
    assert a["meta"]["results"] == b["meta"]["results"]


def test_the_command_runs_and_its_settings_name_the_run(data_dir, tmp_path, capsys):
    common = ["--out", str(tmp_path), "--data-dir", data_dir, "--mnist1d-samples", "500", "--train-for", "1ep",
              "--batch-size", "50", "--model", "mnist1d_mlp", "--no-progress"]
    assert main(["edge-popup", "--keep", "0.2", "--width", "0.5", *common]) == 0
    (folder,) = tmp_path.glob("edge-popup-*")
    stored = json.loads((folder / "config.json").read_text())
    assert stored["config"]["model"]["model"] == "mnist1d_mlp_x0.5" and stored["identity"] == ["keep=0.2"]
    assert stored["config"]["training"]["lr"] == 0.1 and stored["config"]["training"]["schedule"] == "cosine"
    final = read_checkpoint(folder / "level_0" / "final.pt")
    assert final["state_dict"]["1.weight"].shape == (50, 40)  # 100 hidden units at width 0.5
    assert int(final["mask"]["1.weight"].sum()) == 400
    # the defaults are not in the identity: another keep is another run, the same settings the same one
    assert main(["edge-popup", "--keep", "0.2", "--width", "0.5", *common]) == 0
    assert main(["edge-popup", "--width", "0.5", *common]) == 0
    assert len(list(tmp_path.glob("edge-popup-*"))) == 2


@pytest.mark.parametrize("flags, message", [
    (["--keep", "1"], "error: --keep must be in (0, 1), got 1\n"),
    (["--keep=-0.2"], "error: --keep must be in (0, 1), got -0.2\n"),
    (["--keep", "0"], "error: --keep must be in (0, 1), got 0\n"),
    (["--keep", "30"], "error: --keep must be in (0, 1), got 30 (a fraction, not a percentage: 0.3 keeps 30%)\n"),
    (["--keep", "nan"], "error: --keep must be in (0, 1), got nan\n"),
    (["--init", "xavier"], "error: unknown --init 'xavier'; choose one of: kaiming_normal, signed_constant\n"),
    (["--width", "0"], "error: --width must be a positive number, got 0\n"),
    (["--width", "2", "--model", "linear"], "error: model 'linear' has no width multiplier; use one of: "),
    (["--width", "2", "--model", "mnist1d_cnn_x2"], "error: give the width once: --model mnist1d_cnn_x2 "),
    (["--model", "mnist1d_cnn_x2.0"], "error: model 'mnist1d_cnn_x2.0': write it as mnist1d_cnn_x2\n"),
])
def test_bad_input_is_one_line_before_any_folder(flags, message, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["edge-popup", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()


def test_a_keep_that_leaves_a_layer_empty_is_refused_before_the_run_folder(data_dir, tmp_path):
    with pytest.raises(UserError, match=r"--keep 0.0004 keeps no weight of layer 5.weight \(1000 weights\)"):
        run_edge_popup(config(), EdgePopupHparams(keep=0.0004), out=tmp_path, progress=False)
    assert not list(tmp_path.glob("edge-popup-*"))
    assert main(["edge-popup", "--out", "/proc/nope/x"]) == 2


def test_width_multiplier_scales_hidden_layers_and_leaves_the_registered_models_alone():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the registered names are the width-1 networks, unchanged (counts from before the multiplier)
    assert count(build_model("mnist1d_cnn", 10, (1, 40), 0)) == 12_106
    assert count(build_model("mnist1d_mlp", 10, (1, 40), 0)) == 15_210
    wide = build_model("mnist1d_cnn_x2", 10, (1, 40), 0)
    assert [m.out_channels for m in wide.features if isinstance(m, torch.nn.Conv1d)] == [64, 64, 64]
    assert wide.classifier[-1].out_features == 10
    conv = build_model("conv4_x0.5", 10, (3, 32, 32), 0)
    assert [m.out_features for m in conv.classifier if isinstance(m, torch.nn.Linear)] == [128, 128, 10]
    with pytest.raises(UserError, match="write it as mnist1d_cnn$"):
        build_model("mnist1d_cnn_x1", 10, (1, 40), 0)
