"""The theory command line writes JSON and PNG, and refuses bad input with one line."""
import json

import numpy as np

from theory.__main__ import main


def test_each_command_writes_json_and_png(tmp_path, capsys):
    runs = {
        "lueker": ["--ns", "4,8,12", "--eps", "0.1,0.01", "--trials", "30", "--n-max", "24", "--worst-ns", "4,6"],
        "diamond": ["--ns", "2,4,8", "--trials", "30"],
        "network": ["--widths", "6,4,2", "--n", "8", "--sweep", "4,8", "--samples", "50"],
    }
    for command, flags in runs.items():
        assert main([command, "--out", str(tmp_path), "--no-progress", *flags]) == 0
        data = json.loads((tmp_path / f"{command}.json").read_text())
        assert data["experiment"] == command
        assert (tmp_path / f"{command}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_network_reads_given_weights(tmp_path):
    path = tmp_path / "target.npz"
    np.savez(path, W0=np.full((3, 4), 0.1), W1=np.full((2, 3), -0.2))
    assert main(["network", "--weights", str(path), "--n", "10", "--sweep", "6", "--samples", "20",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "network.json").read_text())
    assert data["settings"]["widths"] == [4, 3, 2] and data["result"]["target_parameters"] == 18


def test_bad_input_one_line(tmp_path, capsys):
    for argv in (["lueker", "--eps", "1.5"], ["lueker", "--trials", "0"], ["network", "--widths", "5"],
                 ["network", "--weights", str(tmp_path / "missing.npz")], ["network", "--n", "99"]):
        assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
