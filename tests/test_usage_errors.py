"""A mistake on any command line (unknown flag, wrong type, missing argument, unknown command) is
one line, ``error: ...``, and exit code 2: argparse's usage block is not printed."""
import importlib

import pytest

CASES = [
    ("training.__main__", ["imp", "--bogus"]),
    ("training.__main__", ["imp", "--levels", "abc"]),
    ("training.__main__", ["bogus"]),
    ("training.__main__", ["imp", "--score", "bogus"]),
    ("training.__main__", ["imp", "--lr", "inf"]),
    ("training.__main__", ["rise", "--gamma", "nan"]),
    ("training.__main__", ["control", "reinit", "RUN"]),
    ("analysis.hessian", ["x.pt", "--bogus"]),
    ("analysis.connectivity", ["a.pt", "b.pt", "--points", "many"]),
    ("analysis.trajectory", ["a.pt", "--points", "inf"]),
    ("analysis.tickets", []),
    ("analysis.supermask", ["a.pt", "--seeds", "x"]),
    ("theory.__main__", []),
    ("theory.__main__", ["lueker", "--ns", "nan"]),
    ("theory.__main__", ["network", "--samples", "inf"]),
]


@pytest.mark.parametrize("module, argv", CASES, ids=[" ".join([m.split(".")[0], *a]) for m, a in CASES])
def test_usage_mistakes_are_one_line(module, argv, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_a_rate_too_large_for_float32_is_refused_before_any_work(tmp_path, capsys):
    from training.__main__ import main

    assert main(["imp", "--lr", "1e300", "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.startswith("error: --lr must be positive and at most 3.4e+38")
    assert not any((tmp_path / "runs").glob("imp-*"))


def test_more_levels_than_weights_to_prune_is_refused_before_any_work(tmp_path, capsys):
    from training.__main__ import main

    assert main(["imp", "--levels", "1000000000000", "--out", str(tmp_path / "runs")]) == 2
    assert "is more than this network can be pruned" in capsys.readouterr().err
    assert not any((tmp_path / "runs").glob("imp-*"))


def test_negative_seeds_are_refused_as_in_theory(tmp_path, capsys):
    from training.__main__ import main

    assert main(["imp", "--seed", "-5", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --seed must be a non-negative integer")
    assert main(["control", "reinit", str(tmp_path), "--level", "1", "--seed", "-5"]) == 2
    assert capsys.readouterr().err.startswith("error: --seed must be a non-negative integer")


def test_theory_target_weights_and_widths_together_are_refused(tmp_path, capsys):
    import numpy as np

    from theory.__main__ import main

    np.savez(tmp_path / "t.npz", W0=np.zeros((3, 4)), W1=np.zeros((2, 3)))
    assert main(["network", "--weights", str(tmp_path / "t.npz"), "--widths", "3,3", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: give --weights or --widths, not both")
