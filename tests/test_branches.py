"""Training branches: resumable, hash-named networks trained from a point of a run, and the
analysis tools that train through them (instability copies)."""
from pathlib import Path

import pytest
import torch

import training.engine.runs
from analysis.connectivity import instability
from tests.conftest import tiny_config
from training.engine.branches import train_branch
from training.engine.checkpoint import read_checkpoint
from training.errors import UserError
from training.algorithms.imp import run_imp
from training.algorithms.rise import run_rise


@pytest.fixture(scope="module")
def imp(tmp_path_factory, data_dir):
    return run_imp(tiny_config(train_for="2ep"), levels=2, out=tmp_path_factory.mktemp("runs"), progress=False)


def test_instability_twice_trains_nothing_the_second_time(imp, monkeypatch):
    rewind = imp.dir / "level_1" / "rewind.pt"
    first = instability(rewind, points=3, progress=False)
    copies = first["copies"]
    assert len(set(copies)) == 2 and all(str(imp.dir / "branches") in c for c in copies)
    stamps = [p.stat().st_mtime_ns for c in copies for p in Path(c).parent.iterdir()]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished branch was trained again")

    monkeypatch.setattr(training.engine.runs, "train", no_training)
    second = instability(rewind, points=3, progress=False)
    assert second["copies"] == copies and second["test_error"] == first["test_error"]
    assert [p.stat().st_mtime_ns for c in copies for p in Path(c).parent.iterdir()] == stamps
    # the two copies differ only in data order: same mask, same start, different weights
    a, b = (read_checkpoint(c) for c in copies)
    assert all(torch.equal(a["mask"][k], b["mask"][k]) for k in a["mask"])
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_rise_copies_keep_the_frozen_weights(tmp_path, data_dir):
    rise = run_rise(tiny_config(train_for="2ep"), out=tmp_path, progress=False)
    rewind = read_checkpoint(rise.dir / "level_1" / "rewind.pt")
    assert rewind["meta"]["masked_weights"] == "frozen"
    result = instability(rise.dir / "level_1" / "rewind.pt", points=3, progress=False)
    mask = rewind["mask"]
    for path in result["copies"]:
        copy = read_checkpoint(path)
        assert copy["meta"]["masked_weights"] == "frozen"
        for name, m in mask.items():
            outside = rewind["state_dict"][name][~m]
            assert bool((outside != 0).any())  # W^k, not pruned to zero
            assert torch.equal(copy["state_dict"][name][~m], outside)  # bit for bit
            assert not torch.equal(copy["state_dict"][name][m], rewind["state_dict"][name][m])  # trained inside


def test_killed_branch_resumes_and_matches_an_uninterrupted_one(imp):
    rewind = imp.dir / "level_1" / "rewind.pt"

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_branch(rewind, "killed", seed=5, progress=False, on_epoch_end=kill)
    [folder] = (imp.dir / "branches").glob("killed-*")
    assert (folder / "level_0" / "state.pt").exists() and not (folder / "level_0" / "final.pt").exists()
    resumed = train_branch(rewind, "killed", seed=5, progress=False)
    assert resumed.parent.parent == folder and not (folder / "level_0" / "state.pt").exists()
    whole = train_branch(rewind, "whole", seed=5, progress=False)
    a, b = read_checkpoint(resumed), read_checkpoint(whole)
    assert a["step"]["iteration"] == b["step"]["iteration"] == imp.total
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # the data-order seed is the branch's; the model seed stays the checkpoint's
    assert a["meta"]["seed"] == 5 and a["model"]["seed"] == read_checkpoint(rewind)["model"]["seed"]


def test_branch_of_a_file_outside_a_run_is_refused(imp, tmp_path):
    stray = tmp_path / "rewind.pt"
    stray.write_bytes((imp.dir / "level_1" / "rewind.pt").read_bytes())
    with pytest.raises(UserError, match="not a checkpoint inside a run folder"):
        train_branch(stray, "x", progress=False)
    # a run folder whose branches cannot be stored: one line, before anything trains
    run = tmp_path / "run"
    (run / "level_1").mkdir(parents=True)
    (run / "config.json").write_bytes((imp.dir / "config.json").read_bytes())
    (run / "level_1" / "rewind.pt").write_bytes((imp.dir / "level_1" / "rewind.pt").read_bytes())
    (run / "branches").write_text("not a folder")
    with pytest.raises(UserError, match="branch folder .* is a file"):
        train_branch(run / "level_1" / "rewind.pt", "x", progress=False)
