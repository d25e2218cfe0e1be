"""Hessian analysis against explicit matrices, PyHessian, and end to end on a training checkpoint."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from analysis.hessian import (
    HessianOperator,
    Settings,
    analyze,
    gaussian_density,
    hutchinson_trace,
    main,
    slq,
    top_eigenvalues,
)
from training.errors import UserError
from tests.conftest import tiny_config
from training.algorithms.imp import run_imp, run_train


def small_problem(seed=0, n=24):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def explicit_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(theta):
        parts = [t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes)]
        return F.cross_entropy(functional_call(model, dict(zip(names, parts)), (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_operator_equals_explicit_hessian_and_batches_accumulate():
    model, x, y = small_problem()
    H = explicit_hessian(model, x, y)
    op = HessianOperator(model, [(x[:5], y[:5]), (x[5:17], y[5:17]), (x[17:], y[17:])], dtype=torch.float64)
    assert torch.allclose(op(torch.eye(op.dim, dtype=torch.float64)), H, atol=1e-12)
    one = HessianOperator(model, [(x, y)], dtype=torch.float64)
    V = torch.randn(5, op.dim, dtype=torch.float64)
    assert torch.allclose(op(V), one(V), atol=1e-12)  # weighted accumulation = one big batch
    assert torch.allclose(op(V), torch.stack([op(v) for v in V]), atol=1e-12)  # batched = single
    batched = HessianOperator(model, [(x[:5], y[:5]), (x[5:], y[5:])], dtype=torch.float64, strategy="batched")
    assert torch.allclose(batched(V), op(V), atol=1e-12)  # is_grads_batched = one vector at a time


def test_top_eigenvalues_trace_and_ticket_space_match_eigvalsh():
    model, x, y = small_problem(1)
    H = explicit_hessian(model, x, y).numpy()
    op = HessianOperator(model, [(x, y)], dtype=torch.float64)
    eig = top_eigenvalues(op, op.dim, k=3, max_steps=op.dim, tol=1e-10, dtype=torch.float64)
    exact = np.linalg.eigvalsh(H)[::-1][:3]
    assert np.allclose(eig.values, exact, atol=1e-8) and np.all(eig.residuals < 1e-6)
    batched = HessianOperator(model, [(x, y)], dtype=torch.float64, strategy="batched")  # 500 probes a pass
    trace = hutchinson_trace(batched, op.dim, probes=4000, batch=500, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
    assert abs(trace.mean - np.trace(H)) < 4 * trace.std_error

    mask = {"0.weight": torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) > 0.5,
            "2.weight": torch.rand(3, 6, generator=torch.Generator().manual_seed(3)) > 0.5}
    ticket = HessianOperator(model, [(x, y)], space="ticket", mask=mask, dtype=torch.float64)
    active = torch.cat([mask["0.weight"].flatten(), torch.ones(6, dtype=torch.bool),
                        mask["2.weight"].flatten(), torch.ones(3, dtype=torch.bool)]).numpy()
    H_ticket = H[np.ix_(active, active)]
    assert ticket.dim == int(active.sum())
    assert np.allclose(ticket(torch.eye(ticket.dim, dtype=torch.float64)).numpy(), H_ticket, atol=1e-12)
    top = top_eigenvalues(ticket, ticket.dim, k=2, max_steps=ticket.dim, tol=1e-10, dtype=torch.float64)
    assert np.allclose(top.values, np.linalg.eigvalsh(H_ticket)[::-1][:2], atol=1e-8)


@settings(max_examples=25)
@given(st.integers(5, 40), st.integers(0, 10_000))
def test_lanczos_and_slq_on_known_spectra(n, seed):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    spectrum = torch.sort(torch.randn(n, generator=gen, dtype=torch.float64) * 3).values
    A = Q @ torch.diag(spectrum) @ Q.T
    matvec = lambda V: V @ A  # noqa: E731
    eig = top_eigenvalues(matvec, n, k=2, max_steps=n, tol=1e-12, generator=gen, dtype=torch.float64)
    assert np.allclose(eig.values, spectrum.flip(0)[:2].numpy(), atol=1e-7)
    # SLQ with n steps is exact Gaussian quadrature: the weighted mean of the nodes is v^T A v / n
    quad = slq(matvec, n, probes=3, steps=n, generator=gen, dtype=torch.float64)
    assert np.allclose(quad.weights.sum(axis=1), 1.0)
    for p in range(3):
        if quad.steps == n:
            assert np.allclose(np.sort(quad.nodes[p]), spectrum.numpy(), atol=1e-6)
    grid, density = gaussian_density(quad)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-9)


def test_pyhessian_agrees_on_one_batch():
    from pyhessian import hessian as PyHessian

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    ours_op = HessianOperator(model, [(x, y)])
    ours = top_eigenvalues(ours_op, ours_op.dim, k=1, max_steps=200, tol=1e-8)
    trace = hutchinson_trace(ours_op, ours_op.dim, probes=400, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    engine = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    top, _ = engine.eigenvalues(top_n=1, maxIter=500, tol=1e-6)
    assert top[0] == pytest.approx(ours.values[0], rel=1e-3)
    py_trace = np.mean(engine.trace(maxIter=400, tol=0.0))
    assert py_trace == pytest.approx(trace.mean, rel=0.1)  # two Monte-Carlo estimates of one trace


def test_parameters_without_gradient_are_skipped():
    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)
            self.frozen = nn.Linear(2, 2)
            self.frozen.requires_grad_(False)

        def forward(self, x):
            return self.frozen(self.used(x))

    model = Partly()
    op = HessianOperator(model, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))])
    assert set(op.skipped) == {"unused.weight", "unused.bias", "frozen.weight", "frozen.bias"}
    assert op.dim == 8 and op(torch.randn(2, 8)).shape == (2, 8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs")
    run = run_imp(tiny_config(), levels=2, out=out, progress=False)
    dense = run_train(tiny_config(), out=out, progress=False)
    return run.dir / "level_1" / "final.pt", run.dir / "level_0" / "final.pt", dense.dir / "level_0" / "final.pt"


def test_cli_end_to_end_on_training_checkpoints(checkpoints, tmp_path, capsys):
    sparse, dense_level, _ = checkpoints
    argv = [str(sparse), str(dense_level), "--samples", "200", "--top-k", "3", "--trace", "--density",
            "--probes", "8", "--lanczos-steps", "20", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "top eigenvalues" in out and "trace" in out and "Hessian-vector products" in out
    data = json.loads((tmp_path / "hessian.json").read_text())
    assert len(data["results"]) == 2 and data["results"][0]["examples"] == 200
    assert data["results"][0]["settings"]["mode"] == "eval"
    first = data["results"][0]
    assert first["hvp_strategy"] == "rop" and first["quadratic_forms"] == 8  # the trace skips the products
    assert first["top_eigenvalues"] == sorted(first["top_eigenvalues"], reverse=True)
    assert np.trapezoid(first["density"]["density"], first["density"]["grid"]) == pytest.approx(1, abs=1e-6)
    assert (tmp_path / "hessian_density.png").exists()

    ticket = analyze(sparse, Settings(top_k=2, trace=False, density=False, space="ticket", samples=100))
    assert ticket["dim"] < ticket["parameters_total"]


def test_same_seed_same_numbers(checkpoints):
    s = Settings(top_k=2, density=False, probes=4, samples=100)
    a, b = analyze(checkpoints[0], s), analyze(checkpoints[0], s)
    assert a["top_eigenvalues"] == b["top_eigenvalues"] and a["trace"] == b["trace"]


def test_bad_input_one_line(checkpoints, tmp_path, capsys):
    sparse, _, dense = checkpoints
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nonsense")
    cases = [
        ([str(tmp_path / "missing.pt")], "does not exist"),
        ([str(bad)], "not a checkpoint"),
        ([str(dense), "--space", "ticket"], "dense"),
        ([str(sparse), "--probes", "0"], "--probes must be at least 1"),
        ([str(sparse), "--lanczos-steps", "0"], "--lanczos-steps must be at least 1"),
        ([str(sparse), "--dataset", "svhn"], "unknown dataset"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_checkpoint_without_dataset_needs_the_flag(checkpoints, tmp_path, capsys):
    ckpt = torch.load(checkpoints[0], weights_only=True)
    ckpt["dataset"] = None
    path = tmp_path / "nodata.pt"
    torch.save(ckpt, path)
    assert main([str(path), "--top-k", "1", "--samples", "50", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "pass --dataset" in capsys.readouterr().err
    assert main([str(path), "--top-k", "1", "--samples", "50", "--dataset", "mnist1d", "--out", str(tmp_path),
                 "--no-progress"]) == 0


def test_train_mode_uses_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    with torch.no_grad():  # running statistics far from the batch's, so the two modes differ
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(9.0)
    reference = __import__("copy").deepcopy(model).train()
    H_train = explicit_hessian(reference, x, y)
    op = HessianOperator(model, [(x, y)], mode="train", dtype=torch.float64)
    assert torch.allclose(op(torch.eye(op.dim, dtype=torch.float64)), H_train, atol=1e-10)
    assert torch.equal(model[1].running_mean, torch.full((5,), 3.0, dtype=torch.float64))  # untouched
    H_eval = explicit_hessian(__import__("copy").deepcopy(model).eval(), x, y)
    ev = HessianOperator(model, [(x, y)], mode="eval", dtype=torch.float64)
    assert torch.allclose(ev(torch.eye(ev.dim, dtype=torch.float64)), H_eval, atol=1e-10)
    assert not torch.allclose(H_train, H_eval, atol=1e-3)


def test_values_lanczos_did_not_converge_to_are_marked():
    n = 300
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    # three outliers over a bulk in [-1, 1]: 12 steps find the outliers, not 12 top eigenvalues
    bulk = torch.linspace(-1.0, 1.0, n - 3, dtype=torch.float64)
    spectrum = torch.cat([bulk, torch.tensor([20.0, 40.0, 80.0], dtype=torch.float64)])
    A = Q @ torch.diag(spectrum) @ Q.T
    eig = top_eigenvalues(lambda V: V @ A, n, k=12, max_steps=12, tol=1e-6, generator=gen, dtype=torch.float64)
    assert len(eig.values) == 12 and eig.converged.dtype == bool
    assert eig.converged_prefix == 3 and eig.converged[:3].all() and not eig.converged[3:].any()
    assert np.allclose(eig.values[:3], [80.0, 40.0, 20.0], atol=1e-9)
    assert np.all(eig.residuals[3:] > 1e-2)  # the rest are Ritz values inside the bulk, some negative
    full = top_eigenvalues(lambda V: V @ A, n, k=3, max_steps=n, tol=1e-8, generator=gen, dtype=torch.float64)
    assert full.converged.all() and full.converged_prefix == 3


class Noisy(nn.Module):
    """A model whose forward pass is random even in evaluation mode."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * (1 + torch.rand(()))


def test_operator_checks_its_determinism_once():
    model, x, y = small_problem()
    op = HessianOperator(model, [(x, y)], dtype=torch.float64)
    assert op.deterministic and op.determinism_error < 1e-12
    assert op.products == 0 and op.passes == 0  # the check is not counted
    with pytest.raises(UserError, match="not deterministic"):
        HessianOperator(Noisy().double(), [(x, y)], dtype=torch.float64)


def test_train_mode_with_active_dropout_is_refused_unless_allowed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    with pytest.raises(UserError, match="dropout"):
        HessianOperator(model, [(x, y)], mode="train", dtype=torch.float64)
    allowed = HessianOperator(model, [(x, y)], mode="train", dtype=torch.float64, allow_dropout=True)
    assert not allowed.deterministic and allowed.determinism_error > 1e-3
    assert allowed.strategy == "loop"  # the R-operator would treat dropout as the identity
    evaluated = HessianOperator(model, [(x, y)], mode="eval", dtype=torch.float64)  # dropout off: fine
    assert evaluated.deterministic and evaluated.strategy == "rop"
