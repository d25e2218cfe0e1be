"""Early stopping on the validation split, and the ticket search (Sahu et al., "Not all lotteries are
made equal") over replicates."""
import json

import pytest
import torch

from tests.conftest import tiny_config
from training.__main__ import main
from training.engine.checkpoint import read_checkpoint
from training.algorithms.imp import run_imp
from training.algorithms.ticket_search import run_ticket_search


def config(**training):
    cfg = tiny_config(**{"train_for": "6ep", **training})
    cfg.dataset.val_fraction = 0.2
    return cfg


def test_final_weights_are_the_best_validation_evaluation(data_dir, tmp_path):
    cfg = config(early_stopping=0)
    run = run_imp(cfg, levels=1, out=tmp_path, progress=False)
    records = [json.loads(l) for l in (run.dir / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: (r["val_accuracy"], -r["iteration"]))  # earliest of the best
    final = read_checkpoint(run.dir / "level_0" / "final.pt")
    assert final["step"]["iteration"] == best["iteration"]
    assert final["meta"]["results"]["test_accuracy"] == best["test_accuracy"]
    assert final["meta"]["results"]["stopped_at"] == 48  # patience 0: all 6 epochs of 8 iterations (320 / 40)

    # the stored weights really are the ones evaluated at that iteration: retrain to it and compare
    assert 0 < best["iteration"] < 48  # trained past W^0, and not simply the last step
    cfg2 = config(train_for=f"{best['iteration']}it")
    again = run_imp(cfg2, levels=1, out=tmp_path / "again", progress=False)
    w = read_checkpoint(again.dir / "level_0" / "final.pt")["state_dict"]
    assert all(torch.equal(w[k], final["state_dict"][k]) for k in w)


def test_patience_stops_training_early(data_dir, tmp_path):
    run = run_imp(config(early_stopping=1, lr=0.5), levels=1, out=tmp_path, progress=False)
    final = read_checkpoint(run.dir / "level_0" / "final.pt")
    assert final["meta"]["results"]["stopped_at"] == 24
    assert final["meta"]["backprop_macs"]["examples"] < 6 * 320  # cost counts only what was trained


def test_early_stopping_before_the_rewind_point_still_saves_w_k(data_dir, tmp_path):
    # patience 1 at lr 0.5 runs out at iteration 24 (see test_patience_stops_training_early); k = 4ep = 32
    cfg = config(early_stopping=1, lr=0.5)
    cfg.pruning.rewind = "4ep"
    run = run_imp(cfg, levels=2, out=tmp_path, progress=False)
    rewind = read_checkpoint(run.dir / "level_0" / "rewind.pt")
    assert rewind["step"]["iteration"] == 32
    level0 = read_checkpoint(run.dir / "level_0" / "final.pt")["meta"]["results"]
    assert level0["stopped_at"] == 32  # trained on to k, then stopped (patience had run out)
    level1 = read_checkpoint(run.dir / "level_1" / "final.pt")
    assert level1["meta"]["start_iteration"] == 32 and 32 < level1["meta"]["results"]["stopped_at"] <= 48


class Killed(Exception):
    pass


def test_early_stopped_run_resumes_identically(data_dir, tmp_path):
    reference = run_imp(config(early_stopping=3), levels=2, out=tmp_path / "a", progress=False)
    calls = []

    def kill(epoch):
        calls.append(epoch)
        if len(calls) == 7:
            raise Killed

    with pytest.raises(Killed):
        run_imp(config(early_stopping=3), levels=2, out=tmp_path / "b", progress=False, on_epoch_end=kill)
    resumed = run_imp(config(early_stopping=3), levels=2, out=tmp_path / "b", progress=False)
    for level in (0, 1):
        a = read_checkpoint(reference.dir / f"level_{level}" / "final.pt")
        b = read_checkpoint(resumed.dir / f"level_{level}" / "final.pt")
        assert a["meta"]["results"] == b["meta"]["results"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_ticket_search_replicates(data_dir, tmp_path):
    from training.hparams import (
        Config,
        DatasetHparams,
        ModelHparams,
        PruningHparams,
        TrainingHparams,
    )
    from training.algorithms.ticket_search import DEFAULTS

    cfg = Config(DatasetHparams(mnist1d_samples=500, val_fraction=DEFAULTS["val_fraction"]),
                 ModelHparams("mnist1d_mlp"), TrainingHparams(train_for="2ep", batch_size=40, early_stopping=2),
                 PruningHparams(score="lamp", fraction=0.16))
    index = run_ticket_search(cfg, stages=3, replicates=2, out=tmp_path, progress=False)
    assert [r["seed"] for r in index["replicates"]] == [0, 1]
    for rep in index["replicates"]:
        densities = [s["density"] for s in rep["stages"]]
        assert densities[1] == pytest.approx(0.84, abs=1e-3) and densities[2] == pytest.approx(0.84 ** 2, abs=1e-3)
    assert json.loads(open(index["path"]).read())["stages"] == 3


def test_early_stopping_without_validation_is_refused(data_dir, tmp_path, capsys):
    code = main(["imp", "--out", str(tmp_path), "--no-progress", "--model", "mnist1d_mlp", "--mnist1d-samples", "500",
                 "--early-stopping", "3", "--levels", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a validation split" in err and err.count("\n") == 1
