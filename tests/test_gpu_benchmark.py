"""``benchmarks/gpu.py``: its quick CPU mode runs every part in seconds and writes the results file
with every field the GPU run fills; without a GPU it says so in one line and exits 2."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_mode_writes_every_field_to_the_temporary_folder(tmp_path):
    """Without --out, the smoke test writes under $TMPDIR, never into the checkout's benchmarks/results/."""
    in_checkout = SCRIPT.parent / "results" / "gpu-cpu.json"
    before = in_checkout.stat().st_mtime_ns if in_checkout.exists() else None
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    path = tmp_path / "lth-gpu-benchmark" / "gpu-cpu.json"
    assert f"results: {path}" in done.stdout
    assert (in_checkout.stat().st_mtime_ns if in_checkout.exists() else None) == before
    results = json.loads(path.read_text())
    rows = results["throughput"]
    assert {(r["masked"], r["precision"]) for r in rows} == {(False, "fp32"), (True, "fp32"), (False, "bf16"),
                                                              (True, "bf16")}
    for row in rows:
        assert row["images_per_second"] > 0 and row["step_ms"] > 0 and row["model"] == "resnet20"
    assert {r["setting"] for r in results["masked_over_dense"]} == {"resnet20 fp32", "resnet20 bf16"}
    assert all(r["masked_over_dense"] > 0 for r in results["masked_over_dense"])
    assert results["imp_level"]["seconds"] > 0 and results["best_resnet20"]["images_per_second"] > 0
    hessian = results["hessian"]
    for part in ("top_eigenvalue", "trace", "density"):
        assert hessian[part]["pyhessian_s"] > 0 and hessian[part]["ours_s"] > 0, part
    assert set(results["targets"]) == {"resnet20_images_per_second", "level_under_60_s", "masked_over_dense_max",
                                       "hessian_trace_speedup", "hessian_density_speedup"}
    assert results["skipped"] == [] and results["density_masked"] == 0.1
    for line in ("masked / dense time per step", "IMP level of ResNet-20", "faster than PyHessian"):
        assert line in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_one_line_and_exit_2(tmp_path, capsys):
    assert load_script().main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA GPU visible") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_out_and_the_defaults(tmp_path, monkeypatch):
    gpu = load_script()
    monkeypatch.setattr(gpu.tempfile, "gettempdir", lambda: str(tmp_path))
    assert gpu.default_out(quick=True) == tmp_path / "lth-gpu-benchmark"
    assert gpu.default_out(quick=False) == SCRIPT.parent / "results"  # a GPU measurement is kept with the code


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert load_script().main(["--device", "cpu", "--quick", "--out", str(blocker / "results")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: --out") and captured.err.count("\n") == 1
    assert "throughput" not in captured.out


def test_roofline_uses_the_data_sheet_and_flop_count():
    gpu = load_script()
    work = gpu.flops_and_bytes("resnet20", "bf16")
    assert 35e6 < work["forward_macs"] < 45e6  # ResNet-20: about 41 M multiply-accumulates per image
    limits = {"bf16": 989e12, "fp32": 67e12, "bandwidth": 3.35e12}
    roof = gpu.roofline(25_000.0, "resnet20", "bf16", limits)
    assert roof["images_per_second_by_flops"] == pytest.approx(989e12 / work["train_flops"])
    assert 0 < roof["measured_fraction_of_bound"] < 1
    assert gpu.roofline(1.0, "resnet20", "fp32", {"source": "none (CPU)"}) is None
