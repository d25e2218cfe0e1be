"""Checkpoints: round trip through weights_only=True, ready-model loading, refusal of bad files."""

import pytest
import torch

from tests.conftest import tiny_config
from training.checkpoint import atomic_save, load, read_checkpoint
from training.errors import UserError
from training.imp import run_imp


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
