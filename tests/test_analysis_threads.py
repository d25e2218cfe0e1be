"""``--threads`` on every analysis and theory command that computes: accepted, recorded in the
JSON's provenance, and a count below 1 refused with one line (exit 2) before any work."""
import json

import numba
import pytest
import torch

import analysis.connectivity as connectivity
import analysis.hessian as hessian
import analysis.tickets as tickets
import analysis.trajectory as trajectory
import theory.__main__ as theory
from theory import experiments


@pytest.fixture(autouse=True)
def keep_thread_counts():
    """--threads changes the process's torch and numba thread counts: put them back."""
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


@pytest.fixture(scope="module")
def index(runs, tmp_path_factory):
    """A one-replicate ticket-search index over the tiny IMP run (validation accuracies added)."""
    _, _, imp = runs
    summary = json.loads((imp.dir / "summary.json").read_text())
    for stage, val in zip(summary["levels"], (0.5, 0.6)):
        stage["val_accuracy"] = val
    root = tmp_path_factory.mktemp("threads-search")
    run = root / "replicate0"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    path = root / "ticket-search-threads.json"
    path.write_text(json.dumps({"algorithm": "ticket-search", "replicates": [{"run": str(run)}],
                                "config": {"dataset": {"dataset": "mnist1d"}, "model": {"model": "mnist1d_mlp"}}}))
    return path


def _commands(runs, index):
    """(main, argv without --out, JSON written) of every command that computes."""
    logistic, _, imp = runs
    final, init = str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_0" / "init.pt")
    return {
        "hessian": (hessian.main, [str(logistic.dir / "level_0" / "final.pt"), "--top-k", "1", "--eig-steps", "3",
                                   "--samples", "50", "--no-progress"], "hessian.json"),
        "connectivity": (connectivity.main, [final, init, "--points", "3"], "connectivity.json"),
        "trajectory": (trajectory.main, [final, "--pairs", "2", "--points", "20"], "trajectory.json"),
        "tickets": (tickets.main, [str(index), "--no-trajectory", "--resamples", "100"], "tickets.json"),
        "theory lueker": (theory.main, ["lueker", "--ns", "4", "--eps", "0.1", "--trials", "5", "--n-max", "4",
                                        "--worst-ns", "4", "--no-progress"], "lueker.json"),
        "theory diamond": (theory.main, ["diamond", "--ns", "2", "--trials", "3", "--no-progress"], "diamond.json"),
        "theory network": (theory.main, ["network", "--widths", "3,2", "--n", "4", "--sweep", "4", "--samples", "5",
                                         "--no-progress"], "network.json"),
    }


COMMANDS = ["hessian", "connectivity", "trajectory", "tickets", "theory lueker", "theory diamond", "theory network"]


@pytest.mark.parametrize("command", COMMANDS)
def test_threads_is_accepted_and_recorded(command, runs, index, tmp_path, capsys):
    main, argv, written = _commands(runs, index)[command]
    assert main([*argv, "--threads", "1", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    data = json.loads((tmp_path / written).read_text())
    assert data["provenance"]["threads"] == 1
    if command.startswith("theory"):
        assert data["provenance"]["numba"] == numba.__version__
    else:
        assert data["provenance"]["torch"] == torch.__version__


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("value", ["0", "-2"])
def test_threads_below_one_is_refused_before_any_work(command, value, runs, index, tmp_path, capsys):
    main, argv, _ = _commands(runs, index)[command]
    out = tmp_path / "out"
    assert main([*argv, "--threads", value, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: --threads must be at least 1, got {value}\n"
    assert captured.out == "" and not out.exists()


def test_theory_refuses_more_threads_than_numba_has(tmp_path, capsys):
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    assert theory.main(["diamond", "--ns", "2", "--trials", "3", "--threads", str(too_many),
                        "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --threads must be from 1 to") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_threads(command, runs, index, capsys):
    main, argv, _ = _commands(runs, index)[command]
    with pytest.raises(SystemExit):
        main([*argv[:1], "--help"] if command.startswith("theory") else ["--help"])
    assert "--threads" in capsys.readouterr().out


def test_theory_provenance_defaults_to_numba_count():
    assert experiments.provenance_record()["threads"] == numba.get_num_threads()
