"""Confidence intervals of the ticket-search metrics (Sahu et al., "Not all lotteries are made
equal"): percentile bootstrap over replicates, deterministic, wider with fewer replicates, drawn
as error bars, stated in the JSON, table and caption, and a warning when two models' intervals
overlap."""
import json
import random
import statistics

import pytest

from analysis.figure_io import pyplot
from analysis.tickets import bootstrap_interval, comparison_figure, figure, main, metrics, overlaps


def _replicates(n: int, seed: int, gain: float = 0.02, succeed: float = 0.6, noise: float = 0.01) -> list[dict]:
    """``n`` replicate records of three stages (dense + two sparse): a sparse stage matches the
    dense validation accuracy with probability ``succeed``; sparse test accuracy is the dense one
    plus ``gain`` plus noise; trajectory lengths around +10 % of the dense one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        val, test = 0.8, 0.7 + rng.gauss(0, 0.005)
        stages = [{"density": 1.0, "val_accuracy": val, "test_accuracy": test, "trajectory_length": 10.0}]
        for density in (0.8, 0.64):
            match = rng.random() < succeed
            stages.append({"density": density, "val_accuracy": val + (0.01 if match else -0.01) * rng.random(),
                           "test_accuracy": test + gain + rng.gauss(0, noise),
                           "trajectory_length": 11.0 + rng.gauss(0, 1.0)})
        out.append({"stages": stages})
    return out


def _intervals(m: dict) -> dict:
    return {"SR": (m["success_rate"], m["success_rate_ci"]), "LTS": (m["lts_score"], m["lts_score_ci"]),
            **{f"{field} {kind}": (m["rows"][kind][field][0], m["rows"][kind][f"{field}_ci"])
               for kind in ("Best Sparse", "Sparsest Matching")
               for field in ("accuracy_gain", "trajectory_length_gain")}}


def test_intervals_contain_the_point_estimate_and_are_deterministic():
    replicates = _replicates(30, seed=1)
    m = metrics(replicates)
    assert m["bootstrap"] == {"method": m["bootstrap"]["method"], "resamples": 2000, "confidence": 0.95, "seed": 0,
                              "replicates": 30}
    assert "percentile bootstrap over replicates" in m["bootstrap"]["method"]
    for name, (point, (low, high)) in _intervals(m).items():
        assert low < point < high, name
    assert metrics(replicates) == m  # fixed seed: the same numbers on every call
    other = metrics(replicates, seed=1)
    assert other["lts_score_ci"] != m["lts_score_ci"]  # the seed is what makes it deterministic


def test_bootstrap_interval_matches_the_normal_approximation_for_a_mean():
    values = [float(v) for v in range(100)]
    low, high = bootstrap_interval(values)
    half = 1.96 * statistics.stdev(values) / 10
    assert low == pytest.approx(49.5 - half, rel=0.05) and high == pytest.approx(49.5 + half, rel=0.05)
    assert bootstrap_interval(values, resamples=500, seed=3) == bootstrap_interval(values, resamples=500, seed=3)
    narrow = bootstrap_interval(values, confidence=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_interval([]) == (None, None)
    assert bootstrap_interval([1.0, 2.0], statistic=lambda v: None) == (None, None)


def test_intervals_widen_with_fewer_replicates():
    many = _replicates(60, seed=2)
    wide, narrow = metrics(many[:10]), metrics(many)
    for name, (_, ci) in _intervals(narrow).items():
        few = _intervals(wide)[name][1]
        assert few[1] - few[0] > ci[1] - ci[0], name


def _search(root, name: str, model: str, replicates: list[dict]):
    """A ticket-search index (and its replicate folders with summary.json) for ``model``."""
    entries = []
    for i, rep in enumerate(replicates):
        run = root / f"{name}-replicate{i}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"levels": rep["stages"]}))
        entries.append({"run": str(run), "seed": i})
    index = root / f"ticket-search-{name}.json"
    index.write_text(json.dumps({"algorithm": "ticket-search", "stages": 2, "replicates": entries,
                                 "config": {"dataset": {"dataset": "mnist1d"}, "model": {"model": model}}}))
    return index


def test_overlapping_models_get_one_warning_line_per_metric(tmp_path, capsys):
    a = _search(tmp_path, "a", "mnist1d_mlp", _replicates(12, seed=3))
    b = _search(tmp_path, "b", "lenet_300_100", _replicates(12, seed=4))
    assert main([str(a), str(b), "--no-trajectory", "--resamples", "300", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    data = json.loads((tmp_path / "out" / "tickets.json").read_text())
    assert [m["label"] for m in data["models"]] == ["mnist1d_mlp", "lenet_300_100"]
    assert {o["metric"] for o in data["overlaps"]} >= {"SR", "LTS", "A_gain of Best Sparse"}
    assert len(warnings) == len(data["overlaps"]) == len(data["warnings"])
    lts = next(w for w in warnings if w.startswith("warning: LTS:"))
    assert "mnist1d_mlp and lenet_300_100" in lts and "ranking" in lts and "not support" in lts
    assert data["provenance"]["threads"] >= 1
    assert data["bootstrap"]["resamples"] == 300
    # the table holds both models, with their intervals
    tsv = (tmp_path / "out" / "tickets.tsv").read_text().splitlines()
    assert tsv[0].startswith("Model\tReplicates\tNetwork Type") and len(tsv) == 7
    assert "300 resamples" in captured.out and "(12, 12)" in captured.out


def test_separated_models_get_no_warning(tmp_path, capsys):
    good = _search(tmp_path, "good", "mnist1d_mlp", _replicates(20, seed=5, gain=0.05, succeed=1.0, noise=0.002))
    bad = _search(tmp_path, "bad", "mnist1d_cnn", _replicates(20, seed=6, gain=-0.05, succeed=0.15, noise=0.002))
    assert main([str(good), str(bad), "--no-trajectory", "--resamples", "300", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    data = json.loads((tmp_path / "out" / "tickets.json").read_text())
    assert data["overlaps"] == [] and "warning" not in captured.err
    assert overlaps(data["models"]) == []


def _errorbar_spans(ax) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn with a bar on ``ax``, left to right."""
    spans = []
    for container in ax.containers:
        errorbar = getattr(container, "errorbar", None)
        if errorbar is None:
            continue
        for segment in errorbar.lines[2][0].get_segments():
            spans.append((segment[0][0], min(segment[:, 1]), max(segment[:, 1])))
    return [(low, high) for _, low, high in sorted(spans)]


def test_plots_draw_the_intervals_as_error_bars(tmp_path):
    m = metrics(_replicates(15, seed=7))
    m.update(label="mnist1d_mlp", num_classes=10, chance_accuracy=10.0)
    fig = figure(m)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert _errorbar_spans(by_title["SR with 95% interval"]) == [pytest.approx(tuple(m["success_rate_ci"]))]
    assert _errorbar_spans(by_title["LTS with 95% interval"]) == [pytest.approx(tuple(m["lts_score_ci"]))]
    assert _errorbar_spans(by_title["A_gain with 95% intervals"]) == [
        pytest.approx(tuple(m["rows"][k]["accuracy_gain_ci"])) for k in ("Best Sparse", "Sparsest Matching")]
    gains = by_title["A_gain with 95% intervals"]
    assert "dense" in " ".join(t.get_text() for t in gains.get_legend().get_texts())
    assert "%" in gains.get_ylabel()
    text = " ".join(t.get_text() for t in fig.texts)
    assert "95% percentile-bootstrap" in text and "2,000 resamples" in text and "15 replicates" in text
    pyplot().close(fig)

    other = metrics(_replicates(8, seed=8, gain=0.0))
    other.update(label="linear", num_classes=10, chance_accuracy=10.0)
    fig = comparison_figure([m, other])
    sr = next(ax for ax in fig.axes if ax.get_title() == "SR with 95% interval")
    assert _errorbar_spans(sr) == [pytest.approx(tuple(r["success_rate_ci"])) for r in (m, other)]
    assert [t.get_text() for t in sr.get_xticklabels()] == ["mnist1d_mlp\n(15 replicates)", "linear\n(8 replicates)"]
    pyplot().close(fig)


def test_json_table_and_caption_state_the_intervals(tmp_path, capsys):
    index = _search(tmp_path, "one", "mnist1d_mlp", _replicates(10, seed=9))
    assert main([str(index), "--no-trajectory", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "tickets.json").read_text())
    assert data["bootstrap"]["replicates"] == 10 and data["bootstrap"]["resamples"] == 2000
    low, high = data["lts_score_ci"]
    assert low <= data["lts_score"] <= high
    assert len(data["success_rate_ci"]) == 2 and len(data["rows"]["Best Sparse"]["accuracy_gain_ci"]) == 2
    assert data["rows"]["Best Sparse"]["trajectory_length_gain_ci"] is None  # --no-trajectory
    assert data["provenance"]["threads"] >= 1 and data["model"] == "mnist1d_mlp"
    header = (tmp_path / "out" / "tickets.tsv").read_text().splitlines()[0]
    assert "SR (Success Rate) [CI]" in header and "LTS (Lottery Ticket Score) [CI]" in header
    assert f"{data['lts_score']:.4f} [{low:.4f}, {high:.4f}]" in out
    for text in (out, data["caption"]):
        assert "95% percentile-bootstrap" in text and "2,000 resamples" in text and "10 replicates" in text
        assert "50 ticket searches per architecture" in text


def test_help_says_how_many_searches_sahu_et_al_use(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Sahu et al. use 50 ticket searches per architecture" in text
    assert "few replicates give wide intervals" in text and "percentile bootstrap" in text


@pytest.mark.parametrize("flags, words", [(["--resamples", "10"], "--resamples"),
                                          (["--confidence", "1.5"], "--confidence")])
def test_bad_bootstrap_settings_are_refused_before_any_work(flags, words, tmp_path, capsys):
    index = _search(tmp_path, "one", "mnist1d_mlp", _replicates(4, seed=10))
    assert main([str(index), "--no-trajectory", *flags, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not (tmp_path / "out").exists()
