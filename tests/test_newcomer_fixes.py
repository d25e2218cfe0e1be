"""What a newcomer's fresh-clone trial of the README found: the error of an unknown flag points to the
subcommand's own help, papers are named by author and title in docstrings, captions say "1 epoch",
and the README describes the API and the logged axes as the code has them."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_an_unknown_flag_points_to_the_commands_own_help(capsys):
    """argparse hands a subcommand's unknown arguments to the top-level parser, whose error would say
    `see python -m training --help`; the flags are listed in the command's own help."""
    from training.__main__ import main
    from training.errors import UserError
    from training.sweep import plan

    for argv, prog in [
        (["imp", "--bogus"], "python -m training imp"),
        (["at-init", "--score", "snip", "--bogus", "1"], "python -m training at-init"),
        (["control", "reinit", "runs/x", "--level", "1", "--out", "o"], "python -m training control"),
        (["--bogus"], "python -m training"),  # no command: the top-level help is the right one
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: unrecognized arguments: ") and err.count("\n") == 1, err
        assert err.endswith(f"(see {prog} --help)\n"), err
    # a sweep's parser raises instead of exiting, and still names the point and the flag
    with pytest.raises(UserError, match="^grid point seed=0: unrecognized arguments: --bogus$"):
        plan("imp", {"seed": ["0"]}, ["--bogus"])


def test_captions_count_epochs_in_english():
    from figures.supermask_ss_vs_cs import _epochs, _speed_phrase

    assert _epochs(1) == "1 epoch" and _epochs(12) == "12 epochs" and _epochs(float("inf")) == "never"
    assert _speed_phrase(True) == "CS learns faster"
    assert _speed_phrase(False) == "CS does not learn faster than SS"


def test_papers_are_named_by_author_not_by_seed_number():
    """Help texts, docstrings and captions name papers (e.g. "Tartaglione 2022, eq. 2"), never the
    project's internal seed numbers ("seed 000")."""
    found = []
    for package in ("training", "analysis", "figures", "theory", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\bseed 00\d\b", line):
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    assert not found, found


def test_readme_describes_load_as_the_loaded_object():
    from training.engine.checkpoint import Loaded

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    start = readme.index("`training.engine.checkpoint.load(path)` returns")
    text = readme[start:start + 400]
    assert "`Loaded`" in text
    named = set(re.findall(r"`\.(\w+)`", text))
    assert named == {f.name for f in dataclasses.fields(Loaded)}, named


def test_readme_names_the_x_axis_of_the_summary_metrics():
    loggers = (ROOT / "training" / "engine" / "loggers.py").read_text(encoding="utf-8")
    assert 'step_metric="summary/level"' in loggers
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "The `summary/*` metrics are logged at step = the level in TensorBoard and MLflow" in readme
    assert "against `summary/level` as their x axis" in readme


def test_gitignore_covers_what_the_readme_commands_write():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--out imported" in readme and "'pruned.pt'" in readme
    for entry in ("/imported/", "/pruned.pt", "/benchmarks/results/gpu-cpu.json"):
        assert entry in ignored, entry
