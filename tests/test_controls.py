"""Controls on an IMP run's ticket: each keeps the mask (or its layer counts) and changes one thing."""
import pytest
import torch

from tests.conftest import tiny_config
from training.engine.checkpoint import read_checkpoint
from training.algorithms.controls import random_mask_like, run_control
from training.errors import UserError
from training.algorithms.imp import run_imp
from training.models import build_model
from training.engine.steps import Step


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir):
    cfg = tiny_config(train_for="2ep")
    cfg.pruning.rewind = "3it"
    return run_imp(cfg, levels=2, out=tmp_path_factory.mktemp("runs"), progress=False)


def init_of(branch):
    ckpt = read_checkpoint(branch.dir / "level_0" / "init.pt")
    return ckpt["state_dict"], ckpt["mask"], ckpt["step"]["iteration"]


def test_controls(source):
    mask = read_checkpoint(source.dir / "level_1" / "final.pt")["mask"]
    w_k = read_checkpoint(source.dir / "level_0" / "rewind.pt")["state_dict"]
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731

    reinit = run_control(source.dir, "reinit", 1, seed=7, progress=False)
    state, m, start = init_of(reinit)
    fresh = build_model("mnist1d_mlp", 10, (1, 40), 7).state_dict()
    assert same(m, mask) and start == 0
    for kind in ("init", "final"):  # W^0 was drawn from seed 7: that is the model seed recorded
        assert read_checkpoint(reinit.dir / "level_0" / f"{kind}.pt")["model"]["seed"] == 7
    for n in mask:
        assert torch.equal(state[n], fresh[n] * mask[n]) and not torch.equal(state[n], w_k[n] * mask[n])

    prune = run_control(source.dir, "random-prune", 1, seed=7, progress=False)
    state, m, start = init_of(prune)
    assert start == 3 and not same(m, mask)
    # random-prune starts from the run's W^k: the model seed stays the run's
    assert read_checkpoint(prune.dir / "level_0" / "init.pt")["model"]["seed"] == source.config.training.seed
    for n in mask:
        assert int(m[n].sum()) == int(mask[n].sum())
        assert torch.equal(state[n], w_k[n] * m[n])

    state, m, _ = init_of(run_control(source.dir, "reshuffle", 1, seed=7, progress=False))
    assert same(m, mask)
    for n in mask:
        assert torch.equal(torch.sort(state[n][mask[n]]).values, torch.sort(w_k[n][mask[n]]).values)
        assert not torch.equal(state[n][mask[n]], w_k[n][mask[n]])
        assert bool((state[n][~mask[n]] == 0).all())

    state, m, _ = init_of(run_control(source.dir, "signed-constant", 1, progress=False))
    assert same(m, mask)
    for n in mask:
        kept = state[n][mask[n]]
        assert torch.allclose(kept.abs(), torch.full_like(kept, w_k[n].std().item()))
        assert torch.equal(torch.sign(kept), torch.sign(w_k[n][mask[n]]))

    branch = run_control(source.dir, "scratch-b", 1, seed=7, progress=False)
    final = read_checkpoint(branch.dir / "level_0" / "final.pt")
    dense_length = Step.parse("2ep").iterations(10)
    assert same(final["mask"], mask) and final["step"]["iteration"] > dense_length


def test_random_mask_keeps_layer_counts():
    mask = {"a": torch.rand(5, 7) > 0.3, "b": torch.rand(11) > 0.8}
    other = random_mask_like(mask, 3)
    assert all(int(other[k].sum()) == int(mask[k].sum()) for k in mask)
    assert random_mask_like(mask, 3)["a"].equal(other["a"])


def test_bad_control_input(source, tmp_path):
    with pytest.raises(UserError, match="unknown control"):
        run_control(source.dir, "dropout", 1)
    with pytest.raises(UserError, match="no finished level 5"):
        run_control(source.dir, "reinit", 5)
    with pytest.raises(UserError, match="not a run folder"):
        run_control(tmp_path, "reinit", 1)


@pytest.mark.parametrize("text", ["{oops", "[]", '{"algorithm": "imp"}'])
def test_a_damaged_run_config_is_one_line(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match="config.json cannot be read"):
        run_control(tmp_path, "reinit", 1)
