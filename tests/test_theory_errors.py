"""``python -m theory``: every bad input is one line and exit 2 before any work, Ctrl-C is quiet,
outputs are strict JSON written as a pair, plots keep one style per construction."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from theory import experiments
from theory.__main__ import main, make_parser

ROOT = Path(__file__).resolve().parents[1]
SMALL_NETWORK = ["--widths", "4,3,2", "--n", "6", "--sweep", "4", "--samples", "20"]


@pytest.fixture
def no_work(monkeypatch):
    """Make every experiment fail loudly if it starts: the command must refuse before that."""
    def started(*args, **kwargs):
        raise AssertionError("the experiment ran although the input is bad")

    for name in ("run_lueker", "run_diamond", "run_network"):
        monkeypatch.setattr(experiments, name, started)


def _refused(argv, capsys) -> str:
    assert main([*argv, "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return captured.err


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def _start(argv, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "theory", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


LONG_LUEKER = ["lueker", "--no-progress", "--trials", "4000", "--ns", ",".join(map(str, range(2, 49))),
               "--eps", "0.1,0.01,0.001,0.0001"]


@pytest.mark.parametrize("when", ["during the imports", "during the computation"])
def test_ctrl_c_prints_interrupted_and_exits_130(tmp_path, when):
    out = tmp_path / "out"
    proc = _start([*LONG_LUEKER, "--out", str(out)], tmp_path)
    start = time.monotonic()
    try:
        if when == "during the imports":
            time.sleep(0.3)  # numpy and numba take longer than this to import
        else:
            # the --out folder is created after the imports and the input checks, before the work
            while not out.exists():
                assert proc.poll() is None and time.monotonic() - start < 120, proc.communicate()
                time.sleep(0.05)
            time.sleep(max(0.5, 3 - (time.monotonic() - start)))
            assert proc.poll() is None, "the workload ended before Ctrl-C; make it longer"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().endswith("interrupted") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (out / "lueker.json").exists()


def test_ctrl_c_in_the_body_is_quiet(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_network", interrupted)
    assert main(["network", "--out", str(tmp_path), "--no-progress", *SMALL_NETWORK]) == 130
    assert capsys.readouterr().err == "interrupted\n"


# ---------------------------------------------------------------------------------------------
# Output folder


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, no_work):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, says in ((a_file, "is a file"), ("/proc/nope", "cannot be created"),
                      (a_file / "sub", "cannot be created")):
        for command, flags in (("lueker", ["--trials", "5"]), ("diamond", ["--trials", "5"]),
                               ("network", SMALL_NETWORK)):
            err = _refused([command, "--out", str(out), *flags], capsys)
            assert err.startswith(f"error: --out {out} {says}"), err


# ---------------------------------------------------------------------------------------------
# Numeric options


@pytest.mark.parametrize("argv,says", [
    (["network", "--eps", "nan"], "--eps must be a number in (0, 1), got nan"),
    (["network", "--eps", "-1"], "--eps must be a number in (0, 1)"),
    (["network", "--eps", "0"], "--eps must be a number in (0, 1)"),
    (["network", "--eps", "inf"], "--eps must be a number in (0, 1)"),
    (["network", "--eps", "1"], "--eps must be a number in (0, 1)"),
    (["network", "--samples", "-3"], "--samples must be an integer from 1 to 100,000, got -3"),
    (["network", "--samples", "0"], "--samples must be an integer from 1 to"),
    (["network", "--n", "0"], "--n must be an integer from 1 to 48"),
    (["network", "--n", "49"], "--n must be an integer from 1 to 48"),
    (["network", "--sweep", "4,0"], "--sweep values must be integers from 1 to 48, got 0"),
    (["network", "--sweep", ","], "--sweep needs at least one value"),
    (["network", "--widths", "5"], "--widths needs at least two widths"),
    (["network", "--widths", "5,-2"], "--widths values must be integers from 1 to"),
    (["network", "--widths", "100000,100000"], "--widths 100000,100000 with 24 units"),
    (["network", "--seed", "-1"], "--seed must be an integer from 0 to"),
    (["lueker", "--ns", "0,-4"], "--ns values must be integers from 1 to 10,000, got 0"),
    (["lueker", "--eps", "0.1,nan"], "--eps values must be numbers in (0, 1), got nan"),
    (["lueker", "--eps", "-1"], "--eps values must be numbers in (0, 1)"),
    (["lueker", "--eps", "1.5"], "--eps values must be numbers in (0, 1)"),
    (["lueker", "--eps", "inf"], "--eps values must be numbers in (0, 1)"),
    (["lueker", "--trials", "0"], "--trials must be an integer from 1 to"),
    (["lueker", "--trials", "-5"], "--trials must be an integer from 1 to"),
    (["lueker", "--n-max", "0"], "--n-max must be an integer from 1 to 10,000"),
    (["lueker", "--n-max", "20000"], "--n-max must be an integer from 1 to 10,000"),
    (["lueker", "--worst-ns", "25"], "--worst-ns values must be integers from 1 to 24, got 25"),
    (["lueker", "--worst-ns", "0"], "--worst-ns values must be integers from 1 to 24"),
    (["lueker", "--trials", "100000", "--n-max", "10000"], "needs 1,000,000,000 numbers"),
    (["diamond", "--ns", "0"], "--ns values must be integers from 1 to 48, got 0"),
    (["diamond", "--ns", "2,64"], "--ns values must be integers from 1 to 48, got 64"),
    (["diamond", "--trials", "0"], "--trials must be an integer from 1 to"),
    (["diamond", "--trials", "10000"], "--trials must be an integer from 1 to 3,000"),
])
def test_every_numeric_option_is_checked_first(argv, says, tmp_path, capsys, no_work):
    out = tmp_path / "out"
    err = _refused([*argv, "--out", str(out)], capsys)
    assert says in err, err
    assert not out.exists()  # refused before even the output folder was made


def test_json_is_strict():
    data = {"a": float("nan"), "b": [np.float64("inf"), -np.inf, 1.5, np.int64(3)], "c": (np.bool_(True), None)}
    assert experiments.strict_json(data) == {"a": None, "b": [None, None, 1.5, 3], "c": [True, None]}
    assert json.dumps(experiments.strict_json(data), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# --weights


def _bad_weight_files(folder: Path) -> dict:
    files = {}
    files["object array"] = folder / "objects.npz"
    np.savez(files["object array"], W0=np.array([{"code": 1}, None], dtype=object))
    files["pickle"] = folder / "weights.pkl"
    files["pickle"].write_bytes(pickle.dumps({"W0": np.zeros((2, 2))}))
    files["text"] = folder / "weights.txt"
    files["text"].write_text("W0 = [[1, 2], [3, 4]]\n")
    files["missing"] = folder / "missing.npz"
    files["folder"] = folder
    files["npy"] = folder / "one.npy"
    np.save(files["npy"], np.zeros((2, 2)))
    files["damaged zip"] = folder / "damaged.npz"
    files["damaged zip"].write_bytes(b"PK\x03\x04 not really a zip")
    files["1-D layer"] = folder / "flat.npz"
    np.savez(files["1-D layer"], W0=np.zeros(4))
    files["NaN"] = folder / "nan.npz"
    np.savez(files["NaN"], W0=np.full((2, 2), np.nan))
    files["strings"] = folder / "strings.npz"
    np.savez(files["strings"], W0=np.array([["a", "b"]]))
    files["shapes"] = folder / "shapes.npz"
    np.savez(files["shapes"], W0=np.zeros((3, 4)), W1=np.zeros((2, 5)))
    files["no W"] = folder / "other.npz"
    np.savez(files["no W"], weights=np.zeros((2, 2)))
    return files


def test_bad_weights_file_is_one_line_without_pickle_advice(tmp_path, capsys, no_work):
    for kind, path in _bad_weight_files(tmp_path).items():
        err = _refused(["network", "--weights", str(path), "--out", str(tmp_path / "out")], capsys)
        assert err.startswith(f"error: --weights {path} is not a readable .npz of 2-D number arrays W0, W1, ...:"), \
            (kind, err)
        assert "pickle" not in err.lower() and "trust" not in err and "unsafe" not in err, (kind, err)


# ---------------------------------------------------------------------------------------------
# Outputs: one pair per call, never mixed with an earlier call's


def test_an_interrupted_write_never_mixes_calls(tmp_path, monkeypatch):
    assert main(["network", "--out", str(tmp_path), "--no-progress", *SMALL_NETWORK]) == 0
    first_png = (tmp_path / "network.png").read_bytes()
    real_replace = os.replace

    def interrupted_before_the_json(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_before_the_json)
    assert main(["network", "--out", str(tmp_path), "--no-progress", *SMALL_NETWORK, "--n", "8"]) == 130
    # this call's PNG may stand alone, but never beside the earlier call's JSON
    assert (tmp_path / "network.png").read_bytes() != first_png
    assert not (tmp_path / "network.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["network.png"]  # no temporary files left
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["network", "--out", str(tmp_path), "--no-progress", *SMALL_NETWORK, "--n", "8"]) == 0
    assert json.loads((tmp_path / "network.json").read_text())["settings"]["n"] == 8


# ---------------------------------------------------------------------------------------------
# Plots and help


def _captured_figure(monkeypatch):
    figures = []
    real = experiments.write_outputs

    def capture(out, name, fig, data):
        figures.append(fig)
        return real(out, name, fig, data)

    monkeypatch.setattr(experiments, "write_outputs", capture)
    return figures


def _series(ax) -> dict:
    """{label: line} of an axis' labelled lines, checking that no label repeats."""
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    labels = [line.get_label() for line in lines]
    assert len(labels) == len(set(labels)), labels
    return dict(zip(labels, lines))


def test_diamond_uses_one_colour_per_construction(tmp_path, monkeypatch):
    figures = _captured_figure(monkeypatch)
    experiments.run_diamond(tmp_path, [1, 2, 4, 8], trials=20, progress=False, single_ns=(64,))
    left, right = (_series(ax) for ax in figures[0].axes)
    constructions = [label for label in left if "diamond" in label or "single" in label]
    assert len(constructions) == 3 and set(constructions) <= set(right)
    for label in constructions:
        assert left[label].get_color() == right[label].get_color(), label
    assert len({left[label].get_color() for label in constructions}) == 3


def test_network_sweep_of_one_point_is_drawn_with_a_baseline(tmp_path, monkeypatch):
    figures = _captured_figure(monkeypatch)
    r = experiments.run_network(tmp_path, None, [4, 3, 2], 6, 0.01, sweep=[5], samples=20, progress=False)
    ax = figures[0].axes[1]
    series = _series(ax)
    assert {"ReLU diamond (Pensia et al.)", "single product (Malach et al.)", "everything pruned (output 0)"} \
        <= set(series)
    low, high = ax.get_xlim()
    assert low < 5 < high and high - low >= 2  # the single point sits inside a readable range
    for label in ("ReLU diamond (Pensia et al.)", "single product (Malach et al.)"):
        assert series[label].get_marker() not in (None, "", "None") and series[label].get_markersize() >= 5
    ymin, ymax = ax.get_ylim()
    values = [row["output_error"] for row in r["sweep"]] + [r["zero_network_error"]]
    assert 0 < ymin < min(values) and max(values) < ymax
    assert r["zero_network_error"] > 0
    for axis in figures[0].axes:
        assert "(" in axis.get_xlabel() and "(" in axis.get_ylabel(), (axis.get_xlabel(), axis.get_ylabel())


def test_help_names_papers_not_seed_files():
    parser = make_parser()
    texts = [parser.format_help()]
    sub = next(a for a in parser._actions if a.dest == "command")
    texts += [p.format_help() for p in sub.choices.values()]
    joined = " ".join(" ".join(texts).split())
    assert "seed 0" not in joined
    for name in ("Lueker", "Malach et al.", "Pensia et al.", "From model pruning to sparse updates and the LTH"):
        assert name in joined, name
    assert "Optimal lottery tickets via SubsetSum" in joined and "pruning is all you need" in joined


def test_ctrl_c_inside_a_numba_kernel_load_is_quiet(capsys):
    """Ctrl-C while numba unpickles a cached kernel arrives as a SystemError caused by it."""
    from theory.cli import run_command

    def body():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("returned a result with an exception set") from exc

    assert run_command(body) == 130
    assert capsys.readouterr().err == "interrupted\n"

    def broken():
        raise SystemError("a real bug")

    with pytest.raises(SystemError):
        run_command(broken)
