"""The training loop: masks hold through momentum and weight decay, schedules, NaN handling."""
import json

import pytest
import torch

from tests.conftest import tiny_config
from training.data import load_dataset
from training.errors import UserError
from training.hparams import TrainingHparams
from training.engine.loop import Schedule, check_lengths, train
from training.sparsity.masks import dense_mask
from training.engine.metrics_log import MetricsLog
from training.models import build_model
from training.sparsity.pruning import prune


@pytest.mark.parametrize("optimizer,extra", [("sgd", dict(momentum=0.9, nesterov=True)), ("sgd", {}),
                                             ("adam", dict(lr=1e-2))])
def test_pruned_weights_stay_exactly_zero_every_step(data_dir, optimizer, extra):
    cfg = tiny_config(optimizer=optimizer, weight_decay=5e-3, **extra)
    data = load_dataset(cfg.dataset)
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    mask = prune(dict(model.named_parameters()), dense_mask(model), 0.7, score="random", seed=3)
    params = dict(model.named_parameters())
    start = {k: v.detach().clone() for k, v in params.items()}
    checked = []

    def check(t):
        for name, m in mask.items():
            assert bool((params[name][~m] == 0).all()), f"pruned weight moved at iteration {t}"
        checked.append(t)

    total, _, _ = check_lengths(cfg.training, -(-len(data.train) // cfg.training.batch_size))
    train(model, data, cfg.training, mask=mask, save_points=range(1, total + 1), on_save=check, progress=False)
    assert checked == list(range(1, total + 1))
    for name, m in mask.items():  # and the kept weights did train
        assert not torch.equal(params[name][m], start[name][m])


def test_step_schedule_and_cosine_warmup():
    hp = TrainingHparams(lr=0.1, train_for="10ep", schedule="step", milestones="4ep,8ep", gamma=0.1)
    s = Schedule.build(hp, iterations_per_epoch=10)
    assert s(0) == pytest.approx(0.1) and s(39) == pytest.approx(0.1)
    assert s(40) == pytest.approx(0.01) and s(80) == pytest.approx(0.001)
    hp = TrainingHparams(lr=1.0, train_for="100it", schedule="cosine", warmup="10it")
    s = Schedule.build(hp, iterations_per_epoch=10)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.5) and s(99) < 0.001


def test_lengths_are_validated():
    with pytest.raises(UserError, match="not before the end of training"):
        check_lengths(TrainingHparams(train_for="2ep"), 10, rewind="2ep")
    with pytest.raises(UserError, match="is not a step"):
        check_lengths(TrainingHparams(train_for="two epochs"), 10)
    with pytest.raises(UserError, match="needs --milestones"):
        check_lengths(TrainingHparams(schedule="step"), 10)


@pytest.mark.parametrize("milestones", ["50ep", "30ep", "10ep,300it"])
def test_milestones_at_or_after_the_end_are_refused(milestones):
    hp = TrainingHparams(train_for="30ep", schedule="step", milestones=milestones)
    with pytest.raises(UserError, match=r"^--milestones point \d+(ep|it) \(iteration \d+\) is not before the end"):
        check_lengths(hp, 10)


def test_milestone_just_before_the_end_decays_the_rate():
    hp = TrainingHparams(lr=0.1, train_for="30ep", schedule="step", milestones="10ep,299it", gamma=0.1)
    s = Schedule.build(hp, iterations_per_epoch=10)
    assert s(298) == pytest.approx(0.01) and s(299) == pytest.approx(0.001)


def test_nan_loss_in_the_first_epoch_stops_names_the_step_and_saves_no_bad_state(data_dir, tmp_path):
    cfg = tiny_config(lr=1e12, momentum=0.0, train_for="4ep")
    data = load_dataset(cfg.dataset)
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    state = tmp_path / "state.pt"
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(UserError, match=r"loss became (nan|inf) at iteration [1-8] \(epoch 0\.\d\d\) of level 0 at "
                                        r"lr [0-9.e+]+; training stopped\. Lower --lr") as info:
        train(model, data, cfg.training, state_path=state, log=log, progress=False)
    assert "\n" not in str(info.value) and "resume state" not in str(info.value)
    assert not state.exists()  # no epoch ended cleanly, so no resume state (and none holding NaN)
    rows = [json.loads(line) for line in log.path.read_text().splitlines()]  # valid JSON lines
    assert [r["iteration"] for r in rows] == [0]  # only the finite evaluation at W^0 was logged


def test_nan_mid_run_keeps_the_last_good_state(data_dir, tmp_path):
    cfg = tiny_config(train_for="5ep")
    data = load_dataset(cfg.dataset)
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    calls = {"n": 0}

    def poison(module, inputs, output):  # the 25th training forward pass returns NaN
        if module.training:
            calls["n"] += 1
            if calls["n"] == 25:
                return output * float("nan")
        return output

    model.register_forward_hook(poison)
    state = tmp_path / "state.pt"
    with pytest.raises(UserError, match=r"at iteration 25 \(epoch 2.50\).*last good resume state") as info:
        train(model, data, cfg.training, state_path=state, progress=False)
    assert str(state) in str(info.value)
    saved = torch.load(state, weights_only=True)
    assert saved["iteration"] == 20  # the epoch boundary before the bad step
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


@pytest.mark.parametrize("schedule", [dict(schedule="cosine"), dict(schedule="step", milestones="2ep", gamma=0.1)])
def test_a_resume_keeps_following_the_schedule(data_dir, tmp_path, schedule):
    """A run killed at an epoch boundary and resumed from its state.pt ends bit-identical to an
    uninterrupted one when the learning rate changes over time (the rate must not stay at the
    value it had when the state was saved)."""
    cfg = tiny_config(train_for="4ep", momentum=0.9, **schedule)
    data = load_dataset(cfg.dataset)
    whole = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    train(whole, data, cfg.training, progress=False)

    class Kill(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise Kill

    state = tmp_path / "state.pt"
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    with pytest.raises(Kill):
        train(model, data, cfg.training, state_path=state, progress=False, on_epoch_end=kill)
    resumed = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    train(resumed, data, cfg.training, state_path=state, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
