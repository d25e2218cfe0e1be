"""Every figure of the gallery, end to end at the tiny scale, and the `python -m figures` CLI."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from figures.__main__ import main
from figures.registry import available, by_name


@pytest.fixture(scope="module")
def shared(tmp_path_factory, data_dir):
    """One runs folder and one gallery folder for every figure (figures share runs)."""
    root = tmp_path_factory.mktemp("figures")
    return root / "runs", root / "gallery"


@pytest.mark.parametrize("name", [by_name_ for by_name_ in by_name()])
def test_figure_at_tiny_scale(name, shared, capsys):
    runs, out = shared
    assert main([name, "--scale", "tiny", "--out", str(out), "--runs", str(runs), "--no-progress",
                 "--threads", "1"]) == 0
    for suffix in (".png", ".pdf", ".csv", ".json", ".md"):
        assert (out / f"{name}{suffix}").stat().st_size > 0, suffix
    frame = pd.read_csv(out / f"{name}.csv")
    assert len(frame) > 0 and frame.notna().any(axis=None)
    record = json.loads((out / f"{name}.json").read_text())
    assert record["scale"] == "tiny" and record["figure"] == name
    assert record["caption"]["verdict"] == "not checked at this scale"
    assert record["caption"]["claim"] and record["caption"]["ours"]
    assert "provenance" in record and record["provenance"]["torch"]
    for folder, cfg in record["runs"].items():  # every listed run exists and is what the JSON says
        folder = Path(folder)
        stored = json.loads(folder.read_text())["config"] if folder.is_file() else \
            json.loads((folder / "config.json").read_text())
        assert stored == cfg
    assert f"{name}.png" in (out / "index.html").read_text()
    assert f"({name}.png)" in (out / "index.md").read_text()
    assert "seed 00" not in (out / f"{name}.md").read_text().lower()


def test_replot_reuses_runs(shared, capsys):
    """A second call finds every run finished and trains nothing: the run folders' files are untouched."""
    runs, out = shared
    name = "ticket-vs-controls"
    assert main([name, "--scale", "tiny", "--out", str(out), "--runs", str(runs), "--no-progress"]) == 0
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*.pt")}
    assert main([name, "--scale", "tiny", "--out", str(out), "--runs", str(runs), "--no-progress"]) == 0
    assert before and before == {p: p.stat().st_mtime_ns for p in runs.rglob("*.pt")}


def test_list_names_every_figure(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name, figure in by_name().items():
        assert name in text and figure.reproduces[:30] in text
    assert "seed 00" not in text.lower()


def test_registry_order_is_the_issue_order():
    assert available()[0] in ("hessian_spectra", "lot_vs_rise", "ticket_vs_controls")
    assert len(by_name()) == len(available())


@pytest.mark.parametrize("argv, message", [
    (["no-such-figure"], "unknown figure 'no-such-figure'"),
    (["all", "ticket-vs-controls"], "stand alone"),
    (["ticket-vs-controls", "--scale", "huge"], "invalid choice"),
    (["ticket-vs-controls", "--threads", "0"], "--threads must be at least 1"),
    (["ticket-vs-controls", "--out", "/proc/nope/x"], "--out"),
    (["ticket-vs-controls", "--scale", "paper", "--data-dir", "DATA"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path):
    argv = [a.replace("DATA", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-m", "figures", *argv, "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
