"""The Hessian engine is one subpackage, ``analysis.hessian``: its public names import from it,
``python -m analysis.hessian`` still runs, and the old top-level modules are gone."""
import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import analysis.hessian as hessian

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ["analyze", "Settings", "main", "make_parser", "plot_densities", "hessian_batches", "THIRD_PARTY_NOISE",
          "pyhessian_crosscheck", "HessianOperator", "choose_strategy", "active_dropout", "tune_allocator",
          "RopEngine", "lanczos", "top_eigenvalues", "hutchinson_trace", "slq", "gaussian_density"]


def test_the_engine_is_a_package_with_one_module_per_part():
    package = Path(hessian.__file__).parent
    assert package == ROOT / "analysis" / "hessian"
    assert {p.name for p in package.glob("*.py")} == {
        "__init__.py", "__main__.py", "cli.py", "operator.py", "rop.py", "linalg.py", "spectrum.py"}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_import_from_the_package(name):
    assert name in hessian.__all__
    assert callable(getattr(hessian, name)) or name == "THIRD_PARTY_NOISE"


def test_public_names_are_the_implementations_not_copies():
    from analysis.hessian import linalg, operator, rop, spectrum
    assert hessian.analyze is spectrum.analyze and hessian.Settings is spectrum.Settings
    assert hessian.HessianOperator is operator.HessianOperator and hessian.RopEngine is rop.RopEngine
    assert hessian.lanczos is linalg.lanczos and hessian.slq is linalg.slq


@pytest.mark.parametrize("old", ["analysis.hvp", "analysis.lanczos", "analysis.rop"])
def test_old_module_paths_are_gone(old):
    assert importlib.util.find_spec(old) is None
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists()
    assert not (ROOT / "analysis" / "hessian.py").exists()  # the module became the package


def test_no_source_names_a_paper_by_seed_file():
    for path in Path(hessian.__file__).parent.glob("*.py"):
        assert "seed 00" not in path.read_text(), path


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_code_imports_the_old_paths():
    old = {"analysis.hvp", "analysis.lanczos", "analysis.rop"}
    for folder in ("analysis", "figures", "tests", "benchmarks", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not _imported_modules(path) & old, path


def test_python_m_analysis_hessian_help_works():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "analysis.hessian", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m analysis.hessian") and "--space" in done.stdout
    assert done.stderr == ""


def test_python_m_analysis_hessian_refuses_bad_input_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "analysis.hessian", str(tmp_path / "missing.pt"), "--top-k", "1",
                           "--out", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
