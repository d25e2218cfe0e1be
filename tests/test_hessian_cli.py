"""``python -m analysis.hessian`` as a user meets it: refusals before any work, honest labels for
what Lanczos did not converge to, estimators independent of each other, no stale files, readable
plots, no third-party noise."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import analysis.hessian.spectrum as hessian  # the CLI calls analyze, load_checked, plot_densities here
from analysis.hessian import main, make_parser, plot_densities

FAST = ["--samples", "100", "--no-progress"]


@pytest.fixture(scope="module")
def logistic(runs):
    """A dense logistic regression on MNIST-1D: 40 inputs, 10 classes, 410 parameters."""
    return runs[0].dir / "level_0" / "final.pt"


def _not_called(*args, **kwargs):
    raise AssertionError("the analysis ran although the command should have stopped first")


def _one_line_error(capsys, text: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and text in err, err
    return err


@pytest.mark.parametrize("where", ["under-proc", "a-file", "parent-is-a-file"])
def test_unwritable_out_is_refused_before_any_work(logistic, tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(hessian, "analyze", _not_called)
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"under-proc": "/proc/nope/x", "a-file": str(afile), "parent-is-a-file": str(afile / "sub")}[where]
    assert main([str(logistic), "--top-k", "1", "--out", out, *FAST]) == 2
    _one_line_error(capsys, "--out")


def test_ctrl_c_prints_interrupted_and_exits_130(logistic, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hessian, "analyze", interrupted)
    assert main([str(logistic), "--top-k", "1", "--out", str(tmp_path), *FAST]) == 130
    err = capsys.readouterr().err
    assert err == "interrupted\n"


@pytest.mark.parametrize("argv, text", [
    (["--top-k", "411"], "more than the 410 dimensions"),
    (["--top-k", "20000", "--eig-steps", "20000"], "more than the 410 dimensions"),
    (["--top-k", "0"], "--top-k 0 asks for nothing"),
    (["--top-k", "150"], "raise --eig-steps"),
])
def test_impossible_top_k_is_refused_before_the_work(logistic, tmp_path, capsys, monkeypatch, argv, text):
    monkeypatch.setattr(hessian, "analyze", _not_called)
    assert main([str(logistic), *argv, "--out", str(tmp_path), *FAST]) == 2
    _one_line_error(capsys, text)
    assert not (tmp_path / "hessian.json").exists()


def test_values_lanczos_did_not_converge_to_are_never_called_top(logistic, tmp_path, capsys):
    assert main([str(logistic), "--top-k", "20", "--eig-steps", "20", "--out", str(tmp_path), *FAST]) == 0
    captured = capsys.readouterr()
    result = json.loads((tmp_path / "hessian.json").read_text())["results"][0]
    assert len(result["ritz_values"]) == 20 and len(result["converged"]) == 20
    top = len(result["top_eigenvalues"])
    assert top < 20 and all(result["converged"][:top]) and not result["converged"][top]
    assert result["ritz_values"][:top] == result["top_eigenvalues"]
    assert "NOT converged" in captured.out and "not top eigenvalues" in captured.out
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and f"only the top {top} of the 20" in warning[0] and "--eig-steps" in warning[0]
    assert result["warnings"] and "--eig-steps" in result["warnings"][0]


def test_trace_does_not_depend_on_the_other_estimators(logistic, tmp_path):
    traces = []
    variants = ([], ["--top-k", "0"], ["--top-k", "2"], ["--top-k", "2", "--density", "--lanczos-steps", "5"])
    for extra in variants:
        out = tmp_path / str(len(traces))
        assert main([str(logistic), "--trace", "--probes", "8", *extra, "--out", str(out), *FAST]) == 0
        traces.append(json.loads((out / "hessian.json").read_text())["results"][0]["trace"])
    assert all(trace == traces[0] for trace in traces)  # --top-k 0 with --trace is not "nothing asked"


def _with_dropout(original):
    """model_from_checkpoint, with a dropout applied to the model's output."""
    def build(ckpt, path):
        model = original(ckpt, path)
        model.add_module("dropout", nn.Dropout(0.5))
        model.register_forward_hook(lambda module, inputs, output: module.dropout(output))
        return model
    return build


def test_train_mode_with_dropout_needs_allow_dropout(logistic, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hessian, "model_from_checkpoint", _with_dropout(hessian.model_from_checkpoint))
    argv = [str(logistic), "--trace", "--probes", "4", "--out", str(tmp_path), *FAST]
    assert main([*argv, "--mode", "train"]) == 2
    _one_line_error(capsys, "--allow-dropout")
    assert main([*argv, "--mode", "train", "--allow-dropout"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "random" in err
    result = json.loads((tmp_path / "hessian.json").read_text())["results"][0]
    assert result["deterministic"] is False and result["hvp_strategy"] == "loop"
    assert main([*argv, "--mode", "eval"]) == 0  # dropout is off in evaluation mode
    assert "warning" not in capsys.readouterr().err


def test_no_stale_density_plot_from_an_earlier_call(runs, logistic, tmp_path, capsys):
    ticket = runs[2].dir / "level_1" / "final.pt"
    assert main([str(logistic), "--density", "--lanczos-steps", "5", "--out", str(tmp_path), *FAST]) == 0
    assert (tmp_path / "hessian_density.png").exists()
    capsys.readouterr()
    assert main([str(ticket), "--space", "ticket", "--top-k", "1", "--out", str(tmp_path), *FAST]) == 0
    assert "removed" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hessian.json"]
    assert json.loads((tmp_path / "hessian.json").read_text())["results"][0]["space"] == "ticket"


def test_density_plot_of_many_checkpoints_has_unique_labels_and_styles(runs, logistic, tmp_path, monkeypatch):
    result = {"checkpoint": str(logistic), "space": "full", "mode": "eval",
              "density": {"grid": [-1.0, 0.0, 1.0], "density": [0.1, 0.5, 0.1]}}
    labels = ["imp-3fa2c1 L1 final 80.0%"] * 3 + [f"imp-3fa2c1 L{i} final {100 * 0.8 ** i:.1f}%" for i in range(2, 11)]
    results = [dict(result, label=label) for label in labels]
    figures = []
    monkeypatch.setattr(hessian, "save_png", lambda fig, path, dpi=120: figures.append(fig))
    plot_densities(results, tmp_path / "d.png")
    (ax,) = figures[0].axes
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("eigenvalue 0")]
    names = [line.get_label() for line in lines]
    assert len(lines) == 12 and len(set(names)) == 12 and names[1] == "imp-3fa2c1 L1 final 80.0% (2)"
    styles = {(line.get_color(), line.get_linestyle()) for line in lines}
    assert len(styles) == 12  # colours repeat after ten, the dash pattern then differs
    assert "eigenvalue" in ax.get_xlabel() and "(" in ax.get_xlabel()  # with its unit
    assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()


def test_analysis_labels_series_by_run_level_and_density(runs, tmp_path):
    imp = runs[2].dir
    assert main([str(imp / "level_0" / "final.pt"), str(imp / "level_1" / "final.pt"), "--density",
                 "--lanczos-steps", "5", "--out", str(tmp_path), *FAST]) == 0
    results = json.loads((tmp_path / "hessian.json").read_text())["results"]
    assert [r["label"].split()[1:3] for r in results] == [["L0", "final"], ["L1", "final"]]
    assert results[1]["label"].endswith("%") and results[0]["label"].startswith("imp-")


def test_pyhessian_noise_is_filtered_but_our_warnings_are_not(logistic, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main([str(logistic), "--top-k", "3", "--eig-steps", "3", "--backend", "pyhessian",
                     "--out", str(tmp_path), *FAST]) == 0
    assert not [w for w in seen if "create_graph" in str(w.message)], [str(w.message) for w in seen]
    err = capsys.readouterr().err
    assert "create_graph" not in err and "warning: " in err  # ours: 3 steps do not converge to 3 values
    assert "pyhessian" in json.loads((tmp_path / "hessian.json").read_text())["results"][0]


def test_help_names_papers_by_author_and_title():
    text = make_parser().format_help()
    assert "seed 0" not in text and "Tartaglione 2022" in text and "The rise of the lottery heroes" in text
    source = Path(hessian.__file__).read_text()
    assert "seed 00" not in source


def test_a_rise_checkpoint_is_labelled_with_both_densities(data_dir, tmp_path):
    """RISE trains R of the weights but uses all of them at inference: plots say both."""
    from analysis.figure_io import checkpoint_label
    from tests.conftest import tiny_config
    from training.algorithms.rise import run_rise
    from training.engine.checkpoint import read_checkpoint

    config = tiny_config(train_for="1ep")
    config.pruning.fraction = 0.9
    run = run_rise(config, out=tmp_path, progress=False)
    final = run.dir / "level_1" / "final.pt"
    label = checkpoint_label(final, read_checkpoint(final))
    assert label.endswith("10.0% trained, 100.0% non-zero"), label
    summary = json.loads((run.dir / "summary.json").read_text())["levels"][1]
    assert summary["density_trained"] == pytest.approx(0.1, abs=0.01) and summary["density_nonzero"] > 0.99
