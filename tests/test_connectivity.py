"""Linear mode connectivity, error barriers and instability."""
import numpy as np
import pytest
import torch

from analysis.connectivity import connect, instability
from analysis.connectivity import main as connectivity_main
from training.engine.checkpoint import read_checkpoint
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
    from training.engine.checkpoint import load
    from training.engine.loop import evaluate

    _, _, imp = runs
    r = instability(imp.dir / "level_1" / "rewind.pt", points=5, progress=False)
    # the barrier is between the two trained copies of the ticket: its endpoints are their errors
    a, b = (load(c) for c in r["copies"])
    ticket_mask = read_checkpoint(imp.dir / "level_1" / "rewind.pt")["mask"]
    for copy in (a, b):
        assert all(torch.equal(copy.mask[k], ticket_mask[k]) for k in ticket_mask)
    assert r["test_error"][0] == pytest.approx(1 - evaluate(a.model, a.dataset.test)[1])
    assert r["test_error"][-1] == pytest.approx(1 - evaluate(b.model, a.dataset.test)[1])
    err = r["test_error"]
    assert r["test_barrier"] == pytest.approx(max(err) - (err[0] + err[-1]) / 2)
    assert r["k_iteration"] == 0 and r["stable"] == (r["test_barrier"] < 0.02)
    assert connectivity_main([str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_0" / "init.pt"),
                              "--points", "4", "--out", str(tmp_path)]) == 0
    assert "barrier" in capsys.readouterr().out and (tmp_path / "connectivity.png").exists()
    assert connectivity_main([str(imp.dir / "level_0" / "final.pt"), "--out", str(tmp_path)]) == 2


def test_cli_refuses_an_unwritable_out_before_training(runs, tmp_path, capsys, monkeypatch):
    import analysis.connectivity as conn

    _, _, imp = runs
    monkeypatch.setattr(conn, "train_branch", lambda *a, **k: pytest.fail("trained before checking --out"))
    monkeypatch.setattr(conn, "load", lambda *a, **k: pytest.fail("loaded before checking --out"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub", "/proc/nope/x"):
        assert conn.main(["--instability", str(imp.dir / "level_1" / "rewind.pt"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and len(err.strip().splitlines()) == 1
    assert conn.main(["--instability", str(imp.dir / "level_1" / "rewind.pt"), "--seeds", "1,x",
                      "--out", str(tmp_path / "o")]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_cli_ctrl_c_and_no_stale_results(runs, tmp_path, capsys, monkeypatch):
    import analysis.connectivity as conn

    _, _, imp = runs
    ends = [str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_0" / "init.pt")]
    assert conn.main([*ends, "--points", "3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "connectivity.json").exists()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conn, "connect", interrupt)
    assert conn.main([*ends, "--points", "3", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    # the earlier call's results are gone: nothing in --out passes for this call's
    assert not (tmp_path / "connectivity.json").exists() and not (tmp_path / "connectivity.png").exists()


def test_instability_plot_of_several_checkpoints(runs, tmp_path, capsys):
    import json

    logistic, _, imp = runs
    ckpts = [imp.dir / "level_1" / "rewind.pt", logistic.dir / "level_0" / "step_5.pt"]
    assert connectivity_main(["--instability", *map(str, ckpts), "--points", "3", "--no-progress",
                              "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "connectivity.json").read_text())["results"]
    labels = {r["label"] for r in results}
    assert len(labels) == 2 and any(label.startswith("imp-") and " L1 " in label for label in labels)
    assert "imp-" in capsys.readouterr().out and (tmp_path / "connectivity.png").stat().st_size > 0


def test_a_mistyped_checkpoint_keeps_the_previous_results(runs, tmp_path):
    _, _, imp = runs
    a, b = str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_0" / "init.pt")
    assert connectivity_main([a, b, "--points", "3", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "connectivity.json").read_text()
    assert connectivity_main([a, str(tmp_path / "nothere.pt"), "--out", str(tmp_path)]) == 2
    assert (tmp_path / "connectivity.json").read_text() == before
