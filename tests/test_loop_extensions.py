"""The training loop's extension points (training.engine.extensions) and the learned-mask weight forms
(training.sparsity.masks): loss terms, parameter groups with their own optimizers, step hooks, resume,
and the export to plain weights + a binary mask."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config
from training.data import TrainBatches, load_dataset
from training.engine.extensions import BatchNormL1, Extension, ParamGroup
from training.engine.loop import check_lengths, train
from training.sparsity.masks import (
    SigmoidMask,
    TopKMask,
    apply_mask,
    dense_mask,
    parametrize_weights,
    plain_weights_and_mask,
)
from training.engine.metrics_log import MetricsLog
from training.models import build_model
from training.sparsity.pruning import prune
from training.engine.seeding import derive_seed


@pytest.fixture(scope="module")
def data(data_dir):
    return load_dataset(tiny_config().dataset)


def first_batch(data, hp):
    """The batch of the step from iteration 0, as ``train()`` draws it."""
    torch.manual_seed(derive_seed(hp.seed, "dropout", 0, 0))
    return next(iter(TrainBatches(data.train, hp.batch_size, hp.seed, data.augment).epoch(0)))


def test_no_extension_and_an_empty_one_train_exactly_like_a_hand_written_sgd_loop(data):
    """The loop with extension points adds nothing to a plain run: bit-identical weights."""
    hp = tiny_config(momentum=0.9, weight_decay=1e-3).training
    reference = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    mask = prune(dict(reference.named_parameters()), dense_mask(reference), 0.6, score="random", seed=3)
    models = [copy.deepcopy(reference) for _ in range(2)]
    opt = torch.optim.SGD(reference.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    batches = TrainBatches(data.train, hp.batch_size, hp.seed, data.augment)
    apply_mask(reference, mask)
    for epoch in range(3):
        torch.manual_seed(derive_seed(hp.seed, "dropout", 0, epoch))
        for x, y in batches.epoch(epoch):
            loss = F.cross_entropy(reference(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            apply_mask(reference, mask)
    train(models[0], data, hp, mask=mask, progress=False)
    train(models[1], data, hp, mask=mask, progress=False, extensions=[Extension()])
    for model in models:
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


class L1On(Extension):
    def __init__(self, weight, strength):
        self.weight, self.strength = weight, strength

    def loss(self):
        return self.strength * self.weight.abs().sum()


def test_a_loss_term_adds_its_gradient_to_the_step_and_train_loss_stays_the_cross_entropy(data, tmp_path):
    hp = tiny_config(momentum=0.0, weight_decay=0.0, lr=0.1).training
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=2)
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = first_batch(data, hp)
    by_hand = copy.deepcopy(model)
    ce = F.cross_entropy(by_hand(x), y)
    ce.backward()
    grads = {k: p.grad for k, p in by_hand.named_parameters()}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    train(model, data, hp, end=1, log=log, progress=False, extensions=[L1On(model[3].weight, 0.01)])
    after = dict(model.named_parameters())
    for name in w0:  # one SGD step: w1 = w0 - lr * (dCE/dw + 0.01 * sign(w0)) on the penalised weight only
        extra = 0.01 * torch.sign(w0[name]) if name == "3.weight" else 0
        torch.testing.assert_close(after[name].detach(), w0[name] - hp.lr * (grads[name] + extra), rtol=0, atol=1e-7)
    assert not torch.allclose(after["3.weight"], w0["3.weight"] - hp.lr * grads["3.weight"], rtol=0, atol=1e-5)
    row = [json.loads(line) for line in log.path.read_text().splitlines()][-1]
    assert row["iteration"] == 1 and row["train_loss"] == float(ce.detach().double())


class SoftMasks(Extension):
    """A test double of continuous sparsification: every prunable weight used as w * sigmoid(beta * s),
    s trained by its own Adam, beta = 1.05^t set before each step, an L1 term on the soft mask, and
    a record of the hook calls. ``kill_at``: raise after that step, as a killed job would stop."""

    def __init__(self, model, adam_lr=3e-4, kill_at=None):
        g = torch.Generator().manual_seed(7)
        self.forms = parametrize_weights(
            model, lambda name, w: SigmoidMask(torch.empty_like(w).uniform_(-0.03, 0.03, generator=g)))
        self.adam_lr, self.kill_at = adam_lr, kill_at
        self.before, self.after, self.betas = [], [], []

    def param_groups(self):
        return [ParamGroup([f.scores for f in self.forms.values()],
                           optimizer=lambda p: torch.optim.Adam(p, lr=self.adam_lr))]

    def loss(self):
        return 1e-4 * sum(f.soft().sum() for f in self.forms.values())

    def before_step(self, t):
        self.before.append(t)
        for f in self.forms.values():
            f.beta = 1.05 ** t

    def after_step(self, t):
        self.after.append(t)
        if t == self.kill_at:
            raise KeyboardInterrupt


def test_an_own_adam_group_steps_the_scores_with_its_own_rate_while_sgd_steps_the_weights(data):
    hp = tiny_config(momentum=0.0, weight_decay=0.0).training
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    ext = SoftMasks(model)
    form = ext.forms["3.weight"]
    s0, w0 = form.scores.detach().clone(), model[3].parametrizations.weight.original.detach().clone()
    seen = {}
    ext.after_step = lambda t: seen.update(gs=form.scores.grad.clone(),
                                           gw=model[3].parametrizations.weight.original.grad.clone())
    train(model, data, hp, end=1, progress=False, extensions=[ext])
    gs, gw = seen["gs"], seen["gw"]
    assert gs.abs().sum() > 0 and gw.abs().sum() > 0
    # Adam's first step: s1 = s0 - lr * g / (|g| + eps); SGD's: w1 = w0 - lr * g
    torch.testing.assert_close(form.scores.detach(), s0 - 3e-4 * gs / (gs.abs() + 1e-8), rtol=0, atol=1e-8)
    torch.testing.assert_close(model[3].parametrizations.weight.original.detach(), w0 - hp.lr * gw, rtol=0, atol=1e-8)


def test_a_killed_run_with_an_own_optimizer_resumes_bit_identically_and_hooks_see_every_step_once(data, tmp_path):
    hp = tiny_config(train_for="3ep").training
    ipe = -(-len(data.train) // hp.batch_size)
    total, _, _ = check_lengths(hp, ipe)
    kill_at = ipe + 3  # after the 4th step of the second epoch: the resume state is at its start
    whole = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    ext_whole = SoftMasks(whole)
    train(whole, data, hp, state_path=tmp_path / "a.pt", progress=False, extensions=[ext_whole])
    assert ext_whole.before == ext_whole.after == list(range(total))

    killed = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    ext_killed = SoftMasks(killed, kill_at=kill_at)
    state = tmp_path / "b.pt"
    with pytest.raises(KeyboardInterrupt):
        train(killed, data, hp, state_path=state, progress=False, extensions=[ext_killed])
    saved = torch.load(state, weights_only=True)
    assert saved["iteration"] == ipe and len(saved["own_optimizers"]) == 1
    assert saved["own_optimizers"][0]["state"][0]["exp_avg"].abs().sum() > 0  # Adam's moments are in it
    assert any(".parametrizations." in key and key.endswith(".scores") for key in saved["model"])

    resumed = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    ext_resumed = SoftMasks(resumed)
    train(resumed, data, hp, state_path=state, progress=False, extensions=[ext_resumed])
    assert ext_killed.before == ext_killed.after == list(range(kill_at + 1))
    assert ext_resumed.before == ext_resumed.after == list(range(ipe, total))
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_a_sigmoid_mask_trains_scores_and_weights_and_exports_plain_weights_and_s_above_zero(data):
    hp = tiny_config(train_for="1ep").training
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    ext = SoftMasks(model, adam_lr=1e-2)
    scores0 = {k: f.scores.detach().clone() for k, f in ext.forms.items()}
    raw0 = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(".original")}
    train(model, data, hp, progress=False, extensions=[ext])
    for name, form in ext.forms.items():
        assert not torch.equal(form.scores.detach(), scores0[name]), f"{name}: the scores did not train"
    for key, value in raw0.items():
        assert not torch.equal(model.state_dict()[key], value), f"{key}: the weights did not train"

    state, mask = plain_weights_and_mask(model)
    plain = build_model("mnist1d_mlp", 10, data.input_shape, seed=0)
    assert list(mask) == list(dense_mask(plain))
    plain.load_state_dict(state)  # strict: exactly the keys of the unparametrized model
    for name, form in ext.forms.items():
        owner = model[int(name.split(".")[0])]
        assert torch.equal(state[name], owner.parametrizations.weight.original.detach())
        assert torch.equal(mask[name], form.scores.detach() > 0) and 0 < mask[name].float().mean() < 1
    zeroed, _ = plain_weights_and_mask(model, zero_pruned=True)
    assert all(torch.equal(zeroed[n], state[n] * mask[n]) for n in mask)
    assert torch.equal(zeroed["1.bias"], state["1.bias"])


def test_top_k_scores_on_frozen_weights_keep_round_k_n_and_get_straight_through_gradients(data):
    """Edge-popup's points: only the scores train (the weights' optimizer has no weights left),
    every layer keeps round(k * n) weights, and the scores' gradient is dL/d(effective w) * w * sign(s)."""
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    forms = parametrize_weights(model, lambda name, w: TopKMask(0.01 * torch.randn(w.shape, generator=g), keep=0.3))
    raw = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(".scores")}

    x, y = first_batch(data, tiny_config().training)
    layer = model[5]
    w, s = layer.parametrizations.weight.original, forms["5.weight"].scores
    effective = (w * forms["5.weight"].binary()).requires_grad_()
    h = model[4](model[3](model[2](model[1](model[0](x)))))
    F.cross_entropy(F.linear(h, effective, layer.bias), y).backward()
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(s.grad, effective.grad * w * torch.sign(s), rtol=0, atol=1e-9)

    class Scores(Extension):
        def param_groups(self):
            return [ParamGroup([f.scores for f in forms.values()], options={"lr": 0.1, "weight_decay": 1e-4})]

    before = {k: f.scores.detach().clone() for k, f in forms.items()}
    masks_before = {k: f.binary() for k, f in forms.items()}
    train(model, data, tiny_config(train_for="2ep").training, progress=False, extensions=[Scores()])
    for key, value in raw.items():
        assert torch.equal(model.state_dict()[key], value), f"{key} changed"
    _, mask = plain_weights_and_mask(model)
    for name, form in forms.items():
        assert int(mask[name].sum()) == round(0.3 * mask[name].numel())
        assert not torch.equal(form.scores.detach(), before[name]), f"{name}: the scores did not train"
        assert not torch.equal(mask[name], masks_before[name]), f"{name}: no weight entered or left the top k"


class Temperature(Extension):
    """A parameter outside the model, in a group of the weights' optimizer with its own rate and no decay."""

    def __init__(self):
        self.tau = torch.nn.Parameter(torch.tensor(1.0))

    def param_groups(self):
        return [ParamGroup([self.tau], options={"weight_decay": 0.0, "momentum": 0.0}, lr=lambda t: 0.25 * (t + 1))]

    def loss(self):
        return (self.tau - 3.0) ** 2

    def state_dict(self):
        return {"tau": self.tau.detach().clone()}

    def load_state_dict(self, state):
        self.tau.data.copy_(state["tau"])


def test_a_group_in_the_weights_optimizer_takes_its_own_rate_and_settings(data):
    hp = tiny_config(momentum=0.9, weight_decay=0.1).training
    model = build_model("mnist1d_mlp", 10, data.input_shape, seed=1)
    ext = Temperature()
    train(model, data, hp, end=2, progress=False, extensions=[ext])
    tau = 1.0 - 0.25 * 2 * (1.0 - 3.0)  # step 0 at rate 0.25: 2.0
    tau = tau - 0.5 * 2 * (tau - 3.0)  # step 1 at rate 0.5, no momentum, no decay: 3.0
    assert float(ext.tau.detach()) == pytest.approx(tau, abs=1e-6)


def test_bn_l1_as_a_loss_term_gives_the_old_subgradient_bit_for_bit():
    """The loop used to add bn_l1 * sign(gamma) to gamma.grad after backward; BatchNormL1's loss term
    must give the same gradients, including sign(0) = 0 at a zero scale."""
    model = build_model("mnist1d_cnn_bn", 10, (1, 40), seed=0)
    with torch.no_grad():
        model.features[1].weight[:3] = 0.0
        model.features[4].weight[::2] *= -1
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 40, generator=g), torch.randint(0, 10, (16,), generator=g)

    F.cross_entropy(model(x), y).backward()  # the old path
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=1e-2)
    term = BatchNormL1(twin, 1e-2)
    (F.cross_entropy(twin(x), y) + term.loss()).backward()  # the new path
    assert len(term.scales) == 3
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad), name
