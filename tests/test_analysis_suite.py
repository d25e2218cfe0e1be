"""Trajectory length and ticket-search metrics."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from torch import nn

from analysis.tickets import metrics, select, table
from analysis.trajectory import arc, arc_lengths, closed_length, gain
from analysis.trajectory import main as trajectory_main


def test_linear_network_traces_the_ellipse():
    torch.manual_seed(0)
    A = torch.randn(3, 5, dtype=torch.float64)
    model = nn.Linear(5, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(A)
    x0, x1 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    u, v = (A @ x0).numpy(), (A @ x1).numpy()
    perimeter, _ = quad(lambda t: np.linalg.norm(-math.sin(t) * u + math.cos(t) * v), 0, 2 * math.pi, limit=200)
    length = arc_lengths(model, x0, x1, points=4000)["logits"]
    assert length == pytest.approx(perimeter, rel=1e-3)
    # the polygon is closed: the last point joins the first (a unit square has length 4, not 3)
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert closed_length(square) == pytest.approx(4.0)
    # the arc starts at x0 and passes through x1 a quarter of the way round
    points = arc(x0, x1, 400)
    assert torch.allclose(points[0], x0) and torch.allclose(points[100], x1, atol=1e-12)


def test_trajectory_cli_reports_gain(runs, tmp_path, capsys):
    _, _, imp = runs
    argv = [str(imp.dir / "level_0" / "final.pt"), str(imp.dir / "level_1" / "final.pt"), "--pairs", "3",
            "--points", "200", "--out", str(tmp_path)]
    assert trajectory_main(argv) == 0
    data = json.loads((tmp_path / "trajectory.json").read_text())["results"]
    expected = gain(data[1]["mean"], data[0]["mean"])
    assert data[0]["mean"] != data[1]["mean"] and "tl_gain_vs_first" not in data[0]
    assert data[1]["tl_gain_vs_first"] == pytest.approx(expected)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].endswith(f"TL_gain {expected:+.2f}% vs {data[0]['label']}")
    assert "TL_gain" not in printed[0]


def stage(density, val, test, tl=None):
    return {"density": density, "val_accuracy": val, "test_accuracy": test, "trajectory_length": tl}


def test_ticket_metrics_reproduce_the_formulas():
    replicates = [
        {"stages": [stage(1.0, 0.80, 0.70, 10.0), stage(0.84, 0.82, 0.72, 11.0), stage(0.71, 0.81, 0.71, 9.0),
                    stage(0.59, 0.79, 0.69, 8.0)]},
        {"stages": [stage(1.0, 0.80, 0.75, 20.0), stage(0.84, 0.78, 0.74, 19.0), stage(0.71, 0.79, 0.73, 18.0)]},
        {"stages": [stage(1.0, 0.60, 0.50, 5.0), stage(0.84, 0.60, 0.55, 6.0), stage(0.71, 0.65, 0.60, 4.0)]},
    ]
    chosen = select(replicates[0]["stages"])
    assert chosen["Best Sparse"]["density"] == 0.84 and chosen["Sparsest Matching"]["density"] == 0.71
    assert select(replicates[1]["stages"])["Sparsest Matching"] is None  # no sparse stage matches: a failure
    m = metrics(replicates)
    assert m["success_rate"] == pytest.approx(200 / 3)
    # Best Sparse of the successes: replicate 1 stage 1 (0.72 vs 0.70), replicate 3 stage 2 (0.60 vs 0.50)
    gains = [(0.72 - 0.70) / 0.70 * 100, (0.60 - 0.50) / 0.50 * 100]
    assert m["rows"]["Best Sparse"]["accuracy_gain"][0] == pytest.approx(np.mean(gains))
    assert m["rows"]["Best Sparse"]["accuracy_gain"][1] == pytest.approx(np.std(gains, ddof=1))
    assert m["lts_score"] == pytest.approx(np.mean(gains) * (2 / 3))
    tl = [(11.0 - 10.0) / 10.0 * 100, (4.0 - 5.0) / 5.0 * 100]
    assert m["rows"]["Best Sparse"]["trajectory_length_gain"][0] == pytest.approx(np.mean(tl))
    # Sparsest Matching: replicate 1 stage 2 (0.71 -> +1.43%), replicate 3 stage 2 (same as its Best Sparse)
    sm = [(0.71 - 0.70) / 0.70 * 100, (0.60 - 0.50) / 0.50 * 100]
    assert m["rows"]["Sparsest Matching"]["accuracy_gain"][0] == pytest.approx(np.mean(sm))
    assert "Sparsest Matching" in table(m) and "67%" in table(m)
