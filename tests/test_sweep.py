"""Sweeps: a grid of runs of one command, each in its own resumable folder, indexed in a CSV."""
import pandas as pd
import pytest
import torch

from tests.conftest import tiny_config
from training.engine.checkpoint import read_checkpoint
from training.errors import UserError
from training.algorithms.imp import run_imp
from training.sweep import parse_grid, points, run_grid

TINY = ["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--train-for", "2ep", "--batch-size", "40",
        "--lr", "0.05", "--weight-decay", "1e-4", "--eval-every", "1ep", "--levels", "2", "--no-progress"]


def test_grid_parsing_and_order():
    grid = parse_grid(["lr=0.01,0.1", "seed=0,1,2"])
    assert grid == {"lr": ["0.01", "0.1"], "seed": ["0", "1", "2"]}
    assert points(grid)[:2] == [{"lr": "0.01", "seed": "0"}, {"lr": "0.01", "seed": "1"}]
    assert len(points(grid)) == 6
    for bad in (["lr"], ["lr="], ["=1"], ["lr=1,,2"], ["lr=1", "lr=2"]):
        with pytest.raises(UserError, match="--grid"):
            parse_grid(bad)


def test_sweep_runs_are_the_runs_the_command_makes(tmp_path, data_dir):
    out = tmp_path / "runs"
    runs, index = run_grid("imp", {"seed": [0, 1]}, [*TINY, "--out", str(out)], progress=False)
    assert [r.status for r in runs] == ["done", "done"]
    direct = run_imp(tiny_config(train_for="2ep", seed=1), levels=2, out=tmp_path / "direct", progress=False)
    assert runs[1].folder.endswith(direct.dir.name)  # same settings, same hash-named folder
    a = read_checkpoint(f"{runs[1].folder}/level_1/final.pt")["state_dict"]
    b = read_checkpoint(direct.dir / "level_1" / "final.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the same weights
    table = pd.read_csv(index)
    assert list(table["seed"]) == [0, 1] and list(table["status"]) == ["done", "done"]
    assert list(table["levels"]) == [2, 2] and table["test_accuracy"].between(0.1, 1).all()


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, data_dir):
    runs, index = run_grid("imp", {"lr": ["1e30", "0.05"]}, [*TINY, "--out", str(tmp_path)], progress=False)
    assert [r.status for r in runs] == ["failed", "done"]
    assert "loss became" in runs[0].error  # the rate diverges at run time
    table = pd.read_csv(index)
    assert list(table["status"]) == ["failed", "done"] and "loss became" in table["error"][0]


def test_a_crashing_run_is_reported_too(tmp_path, data_dir, monkeypatch):
    import training.algorithms.imp

    def crash(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(training.algorithms.imp, "run_imp", crash)
    runs, _ = run_grid("imp", {"seed": [0, 1]}, [*TINY, "--out", str(tmp_path)], progress=False)
    assert [(r.status, r.error) for r in runs] == [("failed", "RuntimeError: something broke")] * 2


def test_bad_points_are_refused_before_any_run(tmp_path, data_dir):
    with pytest.raises(UserError, match=r"grid point lr=-1: --lr must be positive"):
        run_grid("imp", {"lr": ["0.1", "-1"]}, [*TINY, "--out", str(tmp_path)], progress=False)
    with pytest.raises(UserError, match="grid point levels=x"):
        run_grid("imp", {"levels": ["x"]}, [*TINY, "--out", str(tmp_path)], progress=False)
    with pytest.raises(UserError, match="grid point model=no_such_model: unknown model"):
        run_grid("imp", {"model": ["mnist1d_mlp", "no_such_model"]}, [*TINY, "--out", str(tmp_path)], progress=False)
    with pytest.raises(UserError, match="grid point level=1: .* is not a run folder"):
        run_grid("control", {"level": ["1"]}, ["reinit", str(tmp_path / "nothere")], progress=False)
    assert not list(tmp_path.glob("imp-*"))


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, data_dir, monkeypatch):
    import training.algorithms.imp

    calls = []
    real = training.algorithms.imp.run_imp

    def dies_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training.algorithms.imp, "run_imp", dies_on_the_second)
    base = [*TINY, "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        run_grid("imp", {"seed": [0, 1]}, base, progress=False)
    first = next(tmp_path.glob("imp-*"))
    stamp = (first / "level_1" / "final.pt").stat().st_mtime_ns
    monkeypatch.setattr(training.algorithms.imp, "run_imp", real)
    runs, _ = run_grid("imp", {"seed": [0, 1]}, base, progress=False)
    assert [r.status for r in runs] == ["done", "done"]
    assert (first / "level_1" / "final.pt").stat().st_mtime_ns == stamp  # the finished run was not retrained


def test_cli_prints_a_table_and_exits_by_status(tmp_path, data_dir, capsys):
    from training.__main__ import main

    assert main(["sweep", "imp", "--grid", "seed=0", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 runs done" in out and "sweep-" in out
    assert main(["sweep", "imp", "--grid", "lr=1e30", *TINY, "--out", str(tmp_path)]) == 1
    assert main(["sweep", "imp", "--grid", "lr", *TINY]) == 2
    assert capsys.readouterr().err.startswith("error: --grid takes FIELD=V1,V2")


def _finals(folder):
    from pathlib import Path

    return {p.relative_to(folder).as_posix(): read_checkpoint(p)["state_dict"]
            for p in sorted(Path(folder).glob("level_*/final.pt"))}


@pytest.mark.parametrize("backend", ["ray", "slurm"])
def test_ray_and_submitit_make_the_same_runs_as_local(backend, tmp_path, data_dir):
    pytest.importorskip({"ray": "ray", "slurm": "submitit"}[backend])
    base = [*TINY, "--threads", "1"]
    local, _ = run_grid("imp", {"seed": [0, 1]}, [*base, "--out", str(tmp_path / "local")], progress=False)
    try:  # on this 2-core machine Ray runs the two tasks at once, one CPU each
        other, index = run_grid("imp", {"seed": [0, 1]}, [*base, "--out", str(tmp_path / backend)],
                                backend=backend, progress=False, cpus_per_run=1)
    finally:
        if backend == "ray":
            import ray

            ray.shutdown()
    assert [r.status for r in other] == ["done", "done"]
    for a, b in zip(local, other):
        assert a.folder.rsplit("/", 1)[-1] == b.folder.rsplit("/", 1)[-1]
        fa, fb = _finals(a.folder), _finals(b.folder)
        assert list(fa) == ["level_0/final.pt", "level_1/final.pt"] and list(fa) == list(fb)
        assert all(torch.equal(fa[k][n], fb[k][n]) for k in fa for n in fa[k])
    assert list(pd.read_csv(index)["status"]) == ["done", "done"]


def test_a_backend_whose_extra_is_missing_names_the_pip_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r"pip install 'lth-toolkit\[ray\]'"):
        run_grid("imp", {"seed": [0]}, [*TINY, "--out", str(tmp_path)], backend="ray", progress=False)


def test_ticket_searches_from_different_first_seeds_keep_separate_indexes(tmp_path, data_dir):
    runs, _ = run_grid("ticket-search", {"seed": [0, 1]},
                       [*TINY[:TINY.index("--levels")], "--no-progress", "--stages", "2", "--out", str(tmp_path)],
                       progress=False)
    assert [r.status for r in runs] == ["done", "done"]
    assert runs[0].folder != runs[1].folder  # one index per search, not one overwriting the other


def test_points_sharing_a_run_folder_on_ray_run_one_after_the_other(tmp_path, data_dir):
    pytest.importorskip("ray")
    import ray

    base = [a for a in TINY if a not in ("--levels", "2")] + ["--out", str(tmp_path)]
    try:  # --levels is not part of the run's name: both points are one folder, 2 then 3 levels
        runs, _ = run_grid("imp", {"levels": [2, 3]}, base, backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert [r.status for r in runs] == ["done", "done"] and runs[0].folder == runs[1].folder
    assert {r.metrics["levels"] for r in runs} <= {2, 3} and max(r.metrics["levels"] for r in runs) == 3


def test_each_point_is_reported_at_the_level_its_own_command_asked_for(tmp_path, data_dir, capsys):
    """A point whose folder holds more levels (the demo's 5, here 3, made by another command) is
    reported at its own --levels' last level like the others, and the table flags the folder."""
    import json

    from training.sweep import print_table

    deeper = run_imp(tiny_config(train_for="2ep"), levels=3, out=tmp_path, progress=False)  # the seed-0 point's folder
    deeper.close()
    runs, index = run_grid("imp", {"seed": [0, 1]}, [*TINY, "--out", str(tmp_path)], progress=False)  # --levels 2
    assert runs[0].folder == str(deeper.dir)
    level_1 = json.loads((deeper.dir / "summary.json").read_text())["levels"][1]
    assert runs[0].metrics["test_accuracy"] == level_1["test_accuracy"]  # not level 2's
    assert [r.metrics["levels"] for r in runs] == [2, 2] and [r.metrics["at_level"] for r in runs] == [1, 1]
    assert runs[0].metrics["density"] == level_1["density"] == runs[1].metrics["density"]
    table = pd.read_csv(index)
    assert list(table["at_level"]) == [1, 1] and list(table["levels_in_folder"]) == [3, 2]
    assert list(table["test_accuracy"])[0] == level_1["test_accuracy"]
    print_table(runs, index)
    lines = capsys.readouterr().out.splitlines()
    assert "holds 3 levels" in lines[1] and "holds" not in lines[2]
