"""The command line: every bad input gets one line on stderr and exit status 2."""
import json
import subprocess
import sys

import pytest

from training.__main__ import main

BAD = [
    (["--model", "foo"], "unknown model 'foo'; choose one of: "),
    (["--dataset", "svhn"], "unknown dataset 'svhn'; choose one of: mnist1d"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--fraction", "1.5"], "must be in (0, 1), got 1.5"),
    (["--fraction", "0"], "must be in (0, 1), got 0.0"),
    (["--keep", "100"], "--keep (R) is a percentage in (0, 100)"),
    (["--keep", "10", "--fraction", "0.2"], "either --keep (R) or --fraction"),
    (["--rewind", "40ep"], "is not before the end of training"),
    (["--rewind", "soon"], "is not a step"),
    (["--train-for", "0it"], "--train-for 0it is empty"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--levels", "0"], "--levels must be at least 1"),
    (["--val-fraction", "1.2"], "--val-fraction must be in [0, 1)"),
    (["--model", "resnet20"], "needs image input"),
    (["--dataset", "cifar10", "--model", "resnet20"], "cifar10 not found: expected data_batch_1"),
    (["--layer-fractions", "foo=0.2"], "matches no prunable layer"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_gets_one_line(argv, message, tmp_path, data_dir, capsys):
    code = main(["imp", "--out", str(tmp_path), "--no-progress", "--data-dir", data_dir, *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not any(tmp_path.iterdir()), "a refused run must leave nothing on disk"


def test_nan_loss_exits_with_the_step(tmp_path, data_dir, capsys):
    code = main(["imp", "--out", str(tmp_path), "--no-progress", "--data-dir", data_dir, "--lr", "1e12",
                 "--momentum", "0", "--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--levels", "1"])
    err = capsys.readouterr().err
    # a diverged run, not bad input: exit status 1, the learning rate named, the summary marked
    assert code == 1 and "loss became" in err and "at iteration" in err and "at lr 1e+12" in err
    assert err.count("\n") == 1
    (folder,) = tmp_path.glob("imp-*")
    assert "loss became" in json.loads((folder / "summary.json").read_text())["diverged"]


def test_imp_end_to_end_through_the_cli(tmp_path, data_dir, capsys):
    argv = ["imp", "--out", str(tmp_path), "--data-dir", data_dir, "--model", "mnist1d_mlp", "--mnist1d-samples",
            "500", "--train-for", "2ep", "--batch-size", "50", "--levels", "2", "--keep", "50"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "density" in out and "run folder:" in out
    (folder,) = tmp_path.glob("imp-*")
    summary = json.loads((folder / "summary.json").read_text())
    assert [round(e["density"], 3) for e in summary["levels"]] == [1.0, 0.5]


def test_help_and_list_run_as_modules():
    outputs = {}
    for argv in (["imp", "--help"], ["train", "--help"], ["list"]):
        done = subprocess.run([sys.executable, "-m", "training", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs[argv[0]] = done.stdout
    assert "--rewind" in outputs["imp"] and "--save-at" in outputs["train"] and "mnist1d_demo" in outputs["list"]


def test_the_run_folder_is_the_last_line_even_without_progress(tmp_path, data_dir, capsys):
    """A script running with --no-progress can still read which folder the run wrote."""
    argv = ["imp", "--out", str(tmp_path), "--data-dir", data_dir, "--model", "mnist1d_mlp", "--mnist1d-samples",
            "500", "--train-for", "1ep", "--batch-size", "50", "--levels", "1", "--no-progress"]
    assert main(argv) == 0
    (folder,) = tmp_path.glob("imp-*")
    assert capsys.readouterr().out.splitlines() == [f"run folder: {folder}"]
