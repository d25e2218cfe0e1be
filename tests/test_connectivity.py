"""Linear mode connectivity, error barriers and instability."""
import numpy as np
import pytest

from analysis.connectivity import connect, instability
from analysis.connectivity import main as connectivity_main
from training.checkpoint import read_checkpoint
from training.errors import UserError


def test_barrier_with_itself_is_zero_and_endpoints_match(runs):
    logistic, _, imp = runs
    final = logistic.dir / "level_0" / "final.pt"
    r = connect(final, final, points=5)
    assert r["test_barrier"] == 0 and r["train_barrier"] == 0
    sparse = imp.dir / "level_1" / "final.pt"
    r = connect(sparse, sparse, points=3)
    expected = read_checkpoint(sparse)["meta"]["results"]["test_accuracy"]
    assert 1 - r["test_error"][0] == pytest.approx(expected) and 1 - r["test_error"][-1] == pytest.approx(expected)


def test_convex_problem_loss_stays_below_the_chord(runs):
    logistic, logistic_b, _ = runs
    r = connect(logistic.dir / "level_0" / "step_5.pt", logistic_b.dir / "level_0" / "final.pt", points=11)
    for name in ("train", "test"):
        loss = np.array(r[f"{name}_loss"])
        chord = loss[0] + np.array(r["alpha"]) * (loss[-1] - loss[0])
        assert np.all(loss <= chord + 1e-6)


def test_incompatible_checkpoints_are_refused(runs):
    logistic, _, imp = runs
    with pytest.raises(UserError, match="different architectures"):
        connect(logistic.dir / "level_0" / "final.pt", imp.dir / "level_0" / "final.pt")
    with pytest.raises(UserError, match="different masks"):
        connect(imp.dir / "level_0" / "final.pt", imp.dir / "level_1" / "final.pt")


def test_instability_of_a_ticket_and_cli(runs, tmp_path, capsys):
    _, _, imp = runs
    r = instability(imp.dir / "level_1" / "rewind.pt", points=5, progress=False)
    assert r["k_iteration"] == 0 and r["stable"] == (r["test_barrier"] < 0.02) and r["test_barrier"] >= -1e-12
    assert connectivity_main([str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_0" / "init.pt"),
                              "--points", "4", "--out", str(tmp_path)]) == 0
    assert "barrier" in capsys.readouterr().out and (tmp_path / "connectivity.png").exists()
    assert connectivity_main([str(imp.dir / "level_0" / "final.pt"), "--out", str(tmp_path)]) == 2
