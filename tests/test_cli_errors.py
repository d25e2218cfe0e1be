"""`python -m training`: unwritable output folders, milestones, flag names in messages, help texts,
and Ctrl-C (one line, exit status 130, no traceback)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.__main__ import main, make_parser

RUN_COMMANDS = ["imp", "lot", "rise", "cs", "iss", "edge-popup", "ticket-search", "at-init", "train"]
ROOT = Path(__file__).resolve().parent.parent


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_unwritable_out_is_one_line_before_any_work(command, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    # /proc refuses new folders; a file given as the folder; a folder whose parent is a file
    for out, words in [("/proc/nope/x", "cannot be created"), (str(a_file), "is a file"),
                       (str(a_file / "sub"), "cannot be created")]:
        # a data folder that does not exist yet: a refused command must not have generated data
        data = tmp_path / "data-never-made"
        code = main([command, "--out", out, "--no-progress", "--data-dir", str(data)])
        assert code == 2
        err = one_error_line(capsys)
        assert f"--out {out} {words}" in err
        assert not data.exists()


def test_milestone_after_the_end_of_training_is_refused(tmp_path, data_dir, capsys):
    code = main(["imp", "--out", str(tmp_path), "--no-progress", "--data-dir", data_dir, "--model", "mnist1d_mlp",
                 "--mnist1d-samples", "500", "--schedule", "step", "--milestones", "10ep,50ep", "--train-for", "30ep"])
    assert code == 2
    err = one_error_line(capsys)
    assert "--milestones point 50ep" in err and "not before the end of training" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["0", "1", "1.5"])
def test_at_init_names_target_density(value, tmp_path, data_dir, capsys):
    code = main(["at-init", "--target-density", value, "--out", str(tmp_path), "--no-progress", "--data-dir",
                 data_dir, "--model", "mnist1d_mlp", "--mnist1d-samples", "500"])
    assert code == 2
    err = one_error_line(capsys)
    assert "--target-density" in err and "(0, 1)" in err and f"got {float(value)}" in err
    assert "pruning fraction" not in err


def subcommands() -> list[str]:
    action = next(a for a in make_parser()._actions if a.dest == "command")
    return list(action.choices)


def test_every_subcommand_is_tested_for_help():
    assert set(subcommands()) == {*RUN_COMMANDS, "control", "runs", "list", "sweep", "compress", "import-mask"}


@pytest.mark.parametrize("command", [None, *subcommands()])
def test_help_has_no_literal_percent_pairs_and_names_papers(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"] if command is None else [command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "%%" not in out
    assert "seed 00" not in out.lower()
    if command is None:  # the top level introduces the two algorithms of Tartaglione 2022
        flat = " ".join(out.split())
        assert "I-LOT-R (" in flat and "RISE-R (" in flat and "The rise of the lottery heroes" in flat
    if command in ("imp", "lot", "rise", "ticket-search"):  # these mean percent: it shows as one sign
        assert "%" in out


def test_list_names_papers_and_the_demo_time():
    from training.presets import PRESETS

    sources = " ".join(p["source"] for p in PRESETS.values())
    assert "seed 00" not in sources and "minutes" not in sources
    assert "about 15 s" in PRESETS["mnist1d_demo"]["source"]


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "training", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_while_torch_imports_is_quiet(tmp_path):
    proc = _start(["list"], tmp_path)
    time.sleep(0.3)  # `import torch` takes longer than this: the signal lands during the imports
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "interrupted" and "Traceback" not in err


def test_ctrl_c_during_training_prints_the_resume_hint(tmp_path, data_dir):
    out_dir = tmp_path / "runs"
    proc = _start(["imp", "--out", str(out_dir), "--data-dir", data_dir, "--no-progress", "--model", "mnist1d_mlp",
                   "--mnist1d-samples", "500", "--batch-size", "40", "--train-for", "2000ep", "--levels", "1"],
                  tmp_path)
    deadline = time.monotonic() + 120
    while not any(out_dir.glob("imp-*/metrics.jsonl")):  # the first evaluation is logged: training runs
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted: run the same command again to resume" and "Traceback" not in err


def test_a_bad_rewind_step_is_refused_when_a_sweep_is_planned(tmp_path):
    """A sweep checks every point before the first run: a malformed -k must fail there, not after
    other runs have trained."""
    from training.errors import UserError
    from training.sweep import plan

    with pytest.raises(UserError, match="-k/--rewind '20xx' is not a step"):
        plan("imp", {"rewind": ["2ep", "20xx"]}, ["--out", str(tmp_path)])
