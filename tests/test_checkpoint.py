"""Checkpoints: round trip through weights_only=True, ready-model loading, refusal of bad files."""

import pytest
import torch

from tests.conftest import tiny_config
from training.engine.checkpoint import atomic_save, load, read_checkpoint
from training.errors import UserError
from training.algorithms.imp import run_imp


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory, data_dir):
    return run_imp(tiny_config(), levels=2, out=tmp_path_factory.mktemp("runs"), progress=False)


def test_checkpoint_is_plain_and_self_describing(imp_run):
    path = imp_run.dir / "level_1" / "final.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "lth-toolkit/checkpoint" and raw["version"] == 1
    assert raw["model"]["name"] == "mnist1d_mlp" and raw["dataset"]["name"] == "mnist1d"
    assert raw["meta"]["level"] == 1 and raw["meta"]["algorithm"] == "imp"
    assert raw["meta"]["density"] == pytest.approx(0.8, abs=1e-3)
    assert raw["step"]["iteration"] == 30 and raw["step"]["iterations_per_epoch"] == 10


def test_load_returns_ready_model_and_data(imp_run):
    path = imp_run.dir / "level_1" / "final.pt"
    loaded = load(path)
    assert not loaded.model.training and loaded.dataset is not None
    with torch.no_grad():
        acc = (loaded.model(loaded.dataset.test.x).argmax(1) == loaded.dataset.test.y).float().mean().item()
    assert acc == pytest.approx(loaded.checkpoint["meta"]["results"]["test_accuracy"], abs=1e-6)
    for name, m in loaded.mask.items():
        assert bool((dict(loaded.model.named_parameters())[name][~m] == 0).all())


def test_pickled_object_is_refused(tmp_path, imp_run):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    good = torch.load(imp_run.dir / "level_0" / "final.pt", weights_only=True)
    good["meta"]["evil"] = Payload()
    path = tmp_path / "evil.pt"
    torch.save(good, path)
    with pytest.raises(UserError, match="refusing to load"):
        read_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign", "missing", "folder"])
def test_bad_files_get_one_line(tmp_path, imp_run, damage):
    src = (imp_run.dir / "level_0" / "final.pt").read_bytes()
    path = tmp_path / "bad.pt"
    if damage == "truncate":
        path.write_bytes(src[: len(src) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        atomic_save({"weights": torch.zeros(3)}, path)
    elif damage == "folder":
        path = tmp_path
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_atomic_save_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temporary file left behind


@pytest.mark.parametrize("content,kind", [
    ('{"algorithm": "imp", "config": {}}', "a JSON text file"),
    ('{"level": 0}\n{"level": 1}\n', "a JSON-lines text file"),
    ("level,density\n0,1.0\n", "a text file"),
    (b"", "an empty file"),
    (b"\x93NUMPY\x01\x00", "a numpy .npy array file"),
])
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, content, kind):
    path = tmp_path / "config.json"
    (path.write_text if isinstance(content, str) else path.write_bytes)(content)
    with pytest.raises(UserError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a checkpoint: it seems to be {kind}")
    assert "corrupt" not in message and "truncated" not in message


def test_npz_archive_is_not_a_checkpoint(tmp_path):
    import numpy as np

    path = tmp_path / "weights.npz"
    np.savez(path, w=np.zeros(3))
    with pytest.raises(UserError, match="is not a checkpoint: it seems to be a numpy .npz archive"):
        read_checkpoint(path)


def test_corrupt_resume_state_says_how_to_recover(data_dir, tmp_path):
    class Killed(Exception):
        pass

    def kill(epoch):
        if epoch == 1:
            raise Killed

    cfg = lambda: tiny_config(train_for="3ep")  # noqa: E731
    with pytest.raises(Killed):
        run_imp(cfg(), levels=1, out=tmp_path, progress=False, on_epoch_end=kill)
    (state,) = tmp_path.glob("imp-*/level_0/state.pt")
    state.write_bytes(state.read_bytes()[:300])
    with pytest.raises(UserError) as info:
        run_imp(cfg(), levels=1, out=tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message and "corrupt or truncated" in message
    assert message.endswith(f"delete {state} to restart level 0 from its start")
    state.unlink()  # the advice works
    run = run_imp(cfg(), levels=1, out=tmp_path, progress=False)
    assert run.level_done(0)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from training.engine.checkpoint import atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.json")


def test_a_learned_mask_model_is_stored_as_plain_weights_and_its_binary_mask(tmp_path, data_dir):
    """Every algorithm's checkpoint reads like IMP's: raw weights under the plain model's names,
    zero outside the mask, and the mask s > 0 (ANDed with a given mask); load() rebuilds it."""
    from training.hparams import DatasetHparams
    from training.sparsity.masks import SigmoidMask, parametrize_weights
    from training.models import build_model
    from training.engine.checkpoint import make_checkpoint

    model = build_model("mnist1d_mlp", 10, (1, 40), 0)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    forms = parametrize_weights(model, lambda name, w: SigmoidMask(torch.randn(w.shape, generator=gen)))
    given = {name: torch.ones_like(f.scores, dtype=torch.bool) for name, f in forms.items()}
    first = next(iter(given))
    given[first][0] = False  # a given mask still counts
    ckpt = make_checkpoint(model, model_name="mnist1d_mlp", num_classes=10, input_shape=(1, 40), seed=0,
                           dataset=DatasetHparams(mnist1d_samples=500), mask=given, iteration=0,
                           iterations_per_epoch=1, meta={"masked_weights": "zero"})
    assert set(ckpt["state_dict"]) == set(raw)
    for name, form in forms.items():
        expected = (form.scores.detach() > 0) & given[name]
        assert torch.equal(ckpt["mask"][name], expected)
        assert torch.equal(ckpt["state_dict"][name], torch.where(expected, raw[name], torch.zeros(())))
    path = tmp_path / "learned.pt"
    atomic_save(ckpt, path)
    loaded = load(path)
    assert set(loaded.model.state_dict()) == set(raw)
