"""Command lines of analysis.trajectory and analysis.tickets: errors before work, Ctrl-C, no stale
outputs, plots grouped by run with unique labels, a stated accuracy baseline, help texts."""
import json
import shutil
from pathlib import Path

import pytest

import analysis.trajectory as trajectory
from analysis.figure_io import pyplot
from analysis.tickets import figure as tickets_figure
from analysis.tickets import main as tickets_main
from analysis.trajectory import figure as trajectory_figure
from analysis.trajectory import gain, series
from analysis.trajectory import main as trajectory_main

FAST = ["--pairs", "2", "--points", "40"]


@pytest.fixture(scope="module")
def search(runs, tmp_path_factory):
    """A ticket-search index over two replicates: copies of the tiny IMP run whose summaries are
    given validation accuracies (the first matches the dense network at level 1, the second
    does not), with the run folders named relative to the index's folder."""
    _, _, imp = runs
    root = tmp_path_factory.mktemp("search")
    replicates = []
    for i, val in enumerate(([0.5, 0.6], [0.5, 0.4])):
        run = root / f"imp-replicate{i}"
        shutil.copytree(imp.dir, run)
        summary = json.loads((run / "summary.json").read_text())
        for stage, v in zip(summary["levels"], val):
            stage["val_accuracy"] = v
        (run / "summary.json").write_text(json.dumps(summary))
        replicates.append({"run": f"elsewhere/{run.name}", "seed": i, "stages": summary["levels"]})
    index = root / "ticket-search-test.json"
    index.write_text(json.dumps({"algorithm": "ticket-search", "stages": 2, "replicates": replicates,
                                 "config": {"dataset": {"dataset": "mnist1d"}}}))
    return index


def _argv(tool, runs, search, out):
    _, _, imp = runs
    if tool == "trajectory":
        return trajectory_main, [str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_1" / "final.pt"),
                                 *FAST, "--out", str(out)]
    return tickets_main, [str(search), *FAST, "--out", str(out)]


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the output folder was checked")


@pytest.mark.parametrize("tool", ["trajectory", "tickets"])
@pytest.mark.parametrize("case", ["existing file", "under a regular file", "under /proc"])
def test_unwritable_out_is_one_line_before_any_work(tool, case, runs, search, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = {"existing file": blocker, "under a regular file": blocker / "out", "under /proc": Path("/proc/nope/x")}[case]
    monkeypatch.setattr(trajectory, "trajectory_length", _no_work)
    main, argv = _argv(tool, runs, search, out)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --out") and captured.err.count("\n") == 1
    assert captured.out == ""


@pytest.mark.parametrize("tool", ["trajectory", "tickets"])
def test_bad_options_are_refused_before_any_checkpoint_is_loaded(tool, runs, search, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trajectory, "load", _no_work)
    main, argv = _argv(tool, runs, search, tmp_path / "out")
    assert main(argv + ["--points", "2"]) == 2
    assert "--points" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["trajectory", "tickets"])
def test_ctrl_c_is_quiet_and_leaves_no_stale_results(tool, runs, search, tmp_path, monkeypatch, capsys):
    main, argv = _argv(tool, runs, search, tmp_path)
    assert main(argv) == 0
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert written == (["trajectory.json", "trajectory.png"] if tool == "trajectory"
                       else ["tickets.json", "tickets.png", "tickets.tsv"])
    capsys.readouterr()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trajectory, "trajectory_length", interrupt)
    assert main(argv) == 130
    assert capsys.readouterr().err == "interrupted\n"
    # the earlier call's files would pass for this call's results: they must be gone
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_trajectory_draws_one_series_per_run(runs, tmp_path, capsys):
    logistic, logistic_b, imp = runs
    paths = [imp.dir / "level_1" / "final.pt", logistic.dir / "level_0" / "final.pt", imp.dir / "level_0" / "final.pt",
             logistic_b.dir / "level_0" / "final.pt"]
    assert trajectory_main([*map(str, paths), *FAST, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"imp-{imp.hash[:6]} L1 final 80.0% ")
    assert printed[1].startswith(f"train-{logistic.hash[:6]} L0 final 100.0% ")
    results = json.loads((tmp_path / "trajectory.json").read_text())["results"]
    groups = series(results)
    # the IMP run is one series from dense to sparse; each dense logistic run is its own point
    assert [s["label"] for s in groups] == [f"imp-{imp.hash[:6]}", f"train-{logistic.hash[:6]}",
                                            f"train-{logistic_b.hash[:6]}"]
    assert [[r["density"] for r in s["points"]] for s in groups] == [[1.0, 0.8], [1.0], [1.0]]
    fig = trajectory_figure(results)
    ax = fig.axes[0]
    drawn = {c.get_label(): list(c.lines[0].get_xdata()) for c in ax.containers}
    assert drawn == {groups[0]["label"]: [100.0, 80.0], groups[1]["label"]: [100.0], groups[2]["label"]: [100.0]}
    assert "%" in ax.get_xlabel() and "logit" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [s["label"] for s in groups]
    pyplot().close(fig)


def _fake(run, density, key=None, level=1):
    return {"run": run, "run_key": key or run, "kind": "final", "level": level, "density": density, "mean": 1.0,
            "std": 0.1, "pairs": 2, "points": 40, "checkpoint": f"{run}.pt", "label": run}


def test_many_series_have_unique_labels_and_distinct_styles():
    results = [_fake(f"imp-{i:06d}", d) for i in range(13) for d in (1.0, 0.5)]
    results += [_fake("imp-abcdef", 1.0, key="imp-abcdef111"), _fake("imp-abcdef", 1.0, key="imp-abcdef222")]
    fig = trajectory_figure(results)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 15 == len(set(labels)) and labels[-2:] == ["imp-abcdef", "imp-abcdef (2)"]
    styles = {(c.lines[0].get_color(), c.lines[0].get_linestyle()) for c in ax.containers}
    assert len(styles) == 15
    pyplot().close(fig)


def test_gain_of_a_zero_reference_is_undefined():
    assert gain(1.0, 0.0) is None and gain(1.1, 1.0) == pytest.approx(10.0)


def test_tickets_plot_starts_at_chance_and_explains_abbreviations(search, tmp_path, capsys):
    assert tickets_main([str(search), "--no-trajectory", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "tickets.json").read_text())
    assert result["chance_accuracy"] == pytest.approx(10.0) and result["successes"] == 1
    fig = tickets_figure(result)
    ax = fig.axes[0]
    chance = [line for line in ax.get_lines() if "chance" in line.get_label()]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [10.0, 10.0]
    bottom = ax.get_ylim()[0]
    assert bottom <= 10.0 and 10.0 - bottom < 0.05 * (ax.get_ylim()[1] - bottom)
    for bar in ax.patches:  # bars stand on the chance line
        assert bar.get_y() == pytest.approx(10.0)
    text = " ".join(t.get_text() for t in fig.texts)
    for words in ("SR = Success Rate", "LTS = Lottery Ticket Score", "A_gain", "TL_gain",
                  'Sahu et al., "Not all lotteries are made equal"'):
        assert words in text and words in out
    assert "seed 00" not in text + out
    pyplot().close(fig)


@pytest.mark.parametrize("tool", ["trajectory", "tickets"])
def test_help_says_what_is_read_written_and_printed(tool, capsys):
    main = trajectory_main if tool == "trajectory" else tickets_main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    files = ["trajectory.json", "trajectory.png"] if tool == "trajectory" else ["tickets.json", "tickets.tsv",
                                                                                "tickets.png"]
    for words in ["reads:", "prints:", "writes:", "example", f"python -m analysis.{tool} ", *files]:
        assert words in text
    assert "Sahu et al." in text and "seed 00" not in text
    if tool == "tickets":
        for words in ("SR      Success Rate", "LTS     Lottery Ticket Score", "A_gain  Accuracy Gain",
                      "TL_gain Trajectory Length Gain"):
            assert words in text
