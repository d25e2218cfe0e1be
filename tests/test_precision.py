"""``--precision``, ``--channels-last``, ``--compile`` and ``--deterministic`` (issue #15): masks stay
exactly zero, and RISE's frozen weights exactly frozen, under every setting; the settings are
checked before any work and recorded in ``config.json`` and ``summary.json``.

On the CPU, bf16 and fp16 autocast both run (torch 2.13), so the fp16 path with its gradient
scaler is tested for real; the GPU-only parts (tf32, cuDNN switches) are covered by the device
checks of ``benchmarks/gpu.py``."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from tests.conftest import tiny_config
from training.__main__ import main
from training.data import Dataset, Split
from training.engine.loop import apply_execution, check_execution, evaluate, train
from training.errors import UserError
from training.hparams import Config, ExecutionHparams, TrainingHparams
from training.sparsity.masks import count


@pytest.fixture(autouse=True)
def restore_threads():
    """Runs set the process's thread count (and deterministic mode): put them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


def images(n: int = 96, seed: int = 0) -> Dataset:
    """A small learnable image task: 2 classes told apart by the sign of the mean pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return Dataset("synthetic", Split(x[: n - 32], y[: n - 32]), Split(x[n - 32 :], y[n - 32 :]), None, 2,
                   (3, 8, 8), augment=False)


def conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))


def half_mask(model: nn.Module) -> dict:
    g = torch.Generator().manual_seed(1)
    return {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters() if p.dim() > 1}


def train_images(execution: ExecutionHparams, frozen: bool = False, iterations: str = "12it"):
    model, data = conv_net(), images()
    mask = half_mask(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    hp = TrainingHparams(batch_size=16, train_for=iterations, eval_every=iterations, lr=0.1, weight_decay=1e-3)
    values = {n: p.detach().clone() for n, p in model.named_parameters() if n in mask} if frozen else None
    metrics = train(model, data, hp, mask=mask, progress=False, frozen=values, execution=execution)
    return model, mask, start, metrics


@pytest.mark.parametrize("execution", [
    ExecutionHparams(precision="bf16"), ExecutionHparams(precision="fp16"), ExecutionHparams(channels_last=True),
    ExecutionHparams(precision="bf16", channels_last=True)], ids=["bf16", "fp16", "channels-last", "bf16+cl"])
@pytest.mark.parametrize("frozen", [False, True], ids=["zero", "rise-frozen"])
def test_masks_stay_exact_under_every_execution_setting(execution, frozen):
    model, mask, start, metrics = train_images(execution, frozen=frozen)
    reference, _, _, _ = train_images(ExecutionHparams(), frozen=frozen)
    state = model.state_dict()
    for name, keep in mask.items():
        held = state[name][~keep]
        if frozen:  # RISE: bit-identical to the starting values
            assert torch.equal(held, start[name][~keep]), name
        else:
            assert torch.count_nonzero(held) == 0, name
        assert state[name].is_contiguous(), name  # back from channels-last for checkpoints
    assert metrics["stopped_at"] == 12 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    # the setting did something: the trained weights are not fp32's (to the bit)
    assert any(not torch.equal(state[n], reference.state_dict()[n]) for n in mask)


def test_bf16_weights_stay_fp32_and_close_to_fp32_training():
    model, mask, _, _ = train_images(ExecutionHparams(precision="bf16"))
    reference, _, _, _ = train_images(ExecutionHparams())
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.dtype == torch.float32, name
        assert torch.allclose(p, q, atol=0.05), name


def test_fp16_scaler_state_is_saved_for_resume(tmp_path):
    """fp16's gradient scaler is part of the resume state (its scale changes as training runs)."""
    model, data = conv_net(), images()
    state = tmp_path / "state.pt"
    hp = TrainingHparams(batch_size=16, train_for="3ep", lr=0.1)
    calls = []

    def kill_after_first_epoch(epoch):
        calls.append(epoch)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, data, hp, progress=False, state_path=state, on_epoch_end=kill_after_first_epoch,
              execution=ExecutionHparams(precision="fp16"))
    saved = torch.load(state, weights_only=True)
    assert saved["scaler"]["scale"] > 0 and calls == [1]
    resumed = train(conv_net(), data, hp, progress=False, state_path=state,
                    execution=ExecutionHparams(precision="fp16"))
    straight = train(conv_net(), data, hp, progress=False, execution=ExecutionHparams(precision="fp16"))
    assert resumed["test_loss"] == straight["test_loss"]


def test_evaluate_follows_the_precision():
    model, data = conv_net(), images()
    fp32 = evaluate(model, data.test)
    bf16 = evaluate(model, data.test, execution=ExecutionHparams(precision="bf16"))
    assert fp32 != bf16 and abs(fp32[0] - bf16[0]) < 0.05
    assert evaluate(model, data.test, execution=ExecutionHparams()) == fp32


def test_default_execution_is_the_exact_fp32_loop():
    """No execution given and the default one given train the same weights, bit for bit."""
    a, _, _, _ = train_images(ExecutionHparams())
    model, data = conv_net(), images()
    mask = half_mask(model)
    hp = TrainingHparams(batch_size=16, train_for="12it", eval_every="12it", lr=0.1, weight_decay=1e-3)
    train(model, data, hp, mask=mask, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), model.state_dict().values()))


def test_check_execution_refuses_what_the_machine_cannot_run():
    cpu = torch.device("cpu")
    check_execution(ExecutionHparams(precision="bf16"), cpu)
    with pytest.raises(UserError, match="tf32"):
        check_execution(ExecutionHparams(precision="tf32"), cpu)
    with pytest.raises(UserError, match="unknown --precision"):
        check_execution(ExecutionHparams(precision="fp8"), cpu)
    with pytest.raises(UserError, match="--threads"):
        check_execution(ExecutionHparams(threads=0), cpu)


def test_deterministic_mode_is_applied_and_undone():
    apply_execution(ExecutionHparams(deterministic=True), torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()
    apply_execution(ExecutionHparams(threads=1), torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1


TINY = ["--model", "mnist1d_mlp", "--mnist1d-samples", "500", "--batch-size", "40", "--train-for", "2ep",
        "--no-progress"]


def test_cli_records_precision_and_keeps_masks_exact(data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["rise", *TINY, "-R", "50", "-k", "1ep", "--precision", "bf16", "--out", str(out)]) == 0
    folder = next(out.glob("rise-*"))
    config = json.loads((folder / "config.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    assert config["config"]["execution"]["precision"] == "bf16"
    stored = Config.from_dict(config["config"])
    assert stored.hash("rise") == config["hash"] == folder.name[len("rise-"):]
    assert dataclasses.replace(stored, execution=ExecutionHparams()).hash("rise") != config["hash"]
    assert summary["execution"] == config["config"]["execution"]
    ckpt = torch.load(folder / "level_1" / "final.pt", weights_only=True)
    rewind = torch.load(folder / "level_1" / "rewind.pt", weights_only=True)
    assert ckpt["meta"]["masked_weights"] == "frozen"
    for name, keep in ckpt["mask"].items():
        assert torch.equal(ckpt["state_dict"][name][~keep], rewind["state_dict"][name][~keep]), name
    assert count(ckpt["mask"])[0] < count(ckpt["mask"])[1]


def test_bad_precision_is_one_line_before_any_work(data_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["imp", *TINY, "--precision", "tf32", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --precision tf32 uses a GPU's TF32 matrix units") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_:
        main(["imp", *TINY, "--precision", "fp8", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: argument --precision: invalid choice: 'fp8'"), err
    assert err.count("\n") == 1 and not list(out.glob("imp-*"))


@pytest.mark.slow
def test_compile_keeps_masks_exact_and_the_state_dict_plain():
    """torch.compile of the model (one tiny compile: about 20 s on 2 CPU cores)."""
    try:
        torch.compile(nn.Linear(2, 2))(torch.ones(1, 2))
    except Exception as exc:  # no C compiler, unsupported Python, ...
        pytest.skip(f"torch.compile does not work here: {type(exc).__name__}: {exc}")
    model, mask, _, metrics = train_images(ExecutionHparams(compile=True), iterations="4it")
    eager, _, _, eager_metrics = train_images(ExecutionHparams(), iterations="4it")
    state = model.state_dict()
    assert not any(k.startswith("_orig_mod") for k in state)
    for name, keep in mask.items():
        assert torch.count_nonzero(state[name][~keep]) == 0, name
        assert torch.allclose(state[name], eager.state_dict()[name], atol=1e-4), name
    assert metrics["test_accuracy"] == pytest.approx(eager_metrics["test_accuracy"], abs=1 / 32)
